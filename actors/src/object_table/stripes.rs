//! Counters written by every thread and read rarely: each thread adds to a
//! stripe of its own, on cache lines of their own, and a read sums them.
//! (A counter on one line costs every completion a cache-line transfer
//! between cores; a worker completing objects and the thread submitting the
//! next ones would pass it back and forth.)

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// A value on cache lines of its own (two: the line beside it is
/// prefetched with it).
#[repr(align(128))]
#[derive(Debug, Default)]
pub(super) struct Padded<T>(pub(super) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

const STRIPES: usize = 8;

/// The stripes handed to threads in turn, as they first count.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_stripe() -> usize {
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            // Relaxed: any distinct-enough number will do.
            s.set(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

/// A counter of many writers. Each add lands on the adding thread's stripe
/// and says which; what is taken back is taken from the stripe it was added
/// to, so no stripe ever holds less than zero and a sum read while others
/// count — stripe after stripe — never wraps below zero. Its operations are
/// `Relaxed`: it publishes no data, and a read is a snapshot of a moving
/// count (memory in use, progress made).
#[derive(Debug, Default)]
pub(super) struct Striped {
    stripes: [Padded<AtomicU64>; STRIPES],
}

impl Striped {
    /// Adds `n` on this thread's stripe; the stripe, to take it back from.
    pub(super) fn add(&self, n: u64) -> u8 {
        let stripe = my_stripe();
        self.stripes[stripe].fetch_add(n, Ordering::Relaxed);
        stripe as u8
    }

    /// Takes back `n` added on `stripe`.
    pub(super) fn sub_from(&self, stripe: u8, n: u64) {
        self.stripes[stripe as usize % STRIPES].fetch_sub(n, Ordering::Relaxed);
    }

    pub(super) fn sum(&self) -> u64 {
        self.stripes.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn adds_taken_back_on_other_threads_sum_exactly_and_never_below_zero() {
        let c = Arc::new(Striped::default());
        // Each thread adds on its own stripe; others take it back, from that
        // stripe, while a reader sums stripe after stripe.
        let (tx, rx) = std::sync::mpsc::channel::<u8>();
        let adders: Vec<_> = (0..4)
            .map(|_| {
                let (c, tx) = (c.clone(), tx.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        tx.send(c.add(3)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let taker = {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut taken = 0u64;
                for (i, stripe) in rx.into_iter().enumerate() {
                    if i % 2 == 0 {
                        c.sub_from(stripe, 3);
                        taken += 3;
                    }
                }
                taken
            })
        };
        while !taker.is_finished() {
            assert!(c.sum() <= 120_000, "a sum that wrapped below zero");
        }
        for t in adders {
            t.join().unwrap();
        }
        let taken = taker.join().unwrap();
        assert_eq!(taken, 60_000);
        assert_eq!(c.sum(), 60_000);
    }
}
