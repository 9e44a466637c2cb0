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

/// A counter of many writers. Adds and subtracts wrap per stripe (a thread
/// may take back what another added); the sum is exact. Its operations are
/// `Relaxed`: it publishes no data, and a read is a snapshot of a moving
/// count (memory in use, progress made).
#[derive(Debug, Default)]
pub(super) struct Striped {
    stripes: [Padded<AtomicU64>; STRIPES],
}

impl Striped {
    pub(super) fn add(&self, n: u64) {
        self.stripes[my_stripe()].fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn sub(&self, n: u64) {
        self.stripes[my_stripe()].fetch_sub(n, Ordering::Relaxed);
    }

    pub(super) fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .fold(0u64, |acc, s| acc.wrapping_add(s.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn adds_and_subtracts_from_many_threads_sum_exactly() {
        let c = Arc::new(Striped::default());
        // Each thread takes back, on its own stripe, what another added.
        let adders: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.add(3)))
            })
            .collect();
        for t in adders {
            t.join().unwrap();
        }
        assert_eq!(c.sum(), 120_000);
        let subtracters: Vec<_> = (0..3)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.sub(2)))
            })
            .collect();
        for t in subtracters {
            t.join().unwrap();
        }
        assert_eq!(c.sum(), 60_000);
    }
}
