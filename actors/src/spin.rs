//! The spin policy: when a thread with nothing to do spins, and when it sleeps.
//!
//! Three kinds of thread wait on a node: a getter waiting for an object
//! ([`Site::Get`]), a worker whose run queue is empty ([`Site::IdleWorker`]),
//! and an async actor whose mailbox is empty ([`Site::IdleActor`]). Sleeping
//! costs the waker a system call and the sleeper a wake-up of tens of
//! microseconds; spinning costs a core for as long as it lasts. One rule
//! decides for all three (and for a fourth, the network thread, below). A
//! thread spins only when
//!
//! 1. **no work is queued**: queued work means every core is, or is about to
//!    be, needed to run it. An idle worker or actor then has work or leaves
//!    the core to those that do; a getter (whose object may be that very
//!    work) keeps watching but yields its core between polls, so a runnable
//!    worker always runs first;
//! 2. **few spin at once**: at most half the node's cores have a spinning
//!    getter, and at most half an idle worker or actor spinning, however many
//!    clients wait at once; an idle worker can spin beside a spinning getter
//!    (request–reply is exactly that pair). With both halves taken every core
//!    may spin, for one budget at most, beside the work; a getter that finds
//!    its places taken is one of many clients, and `Runtime::get` then sleeps
//!    for a batch's last ref instead of each. On one core nothing spins: what
//!    a spinner waits for cannot run meanwhile;
//! 3. **spinning has recently paid off at this site on this thread**: each
//!    thread keeps a budget per site that grows to twice what the wait took
//!    (never shrinking, up to [`MAX`]) when a wait ended while spinning, and
//!    halves (down to nothing) when the spin ran out and the thread slept
//!    anyway. With no budget the thread sleeps at once,
//!    and every [`PROBE_EVERY`]th wait spins a probe ([`PROBE`] for a getter,
//!    a round trip to an awake thread with room; [`MIN`] for an idle worker
//!    or actor) to find out whether spinning pays again.
//!
//! A fourth site, [`Site::Net`], is a cluster node's network thread after a
//! control message came in: it polls its sockets for a moment instead of
//! sleeping in the kernel, so that the answer to what it just passed on (or
//! the next request of a caller in request–reply) finds it awake. Waking a
//! thread asleep in another process costs the sender of every message a
//! system call that waits for the sleeper's core to wake: on this project's
//! 2-core VM a blocking TCP ping-pong between two processes makes about 11k
//! round trips a second, one that polls about 125k
//! (`benches/loopback_pingpong.py`). Rule 3 holds, with a budget of up to
//! [`NET_MAX`] (a round trip to another process with the far side asleep,
//! with room) and probes of that length (a probe must be able to catch an
//! answer), one in [`NET_PROBE_EVERY`] waits. Rule 2 allows one such thread
//! (there is one per node) on two cores or more. Rule 1 does not stop it:
//! the message that starts it has usually just queued work (a peer's call).
//! Instead it offers its core to any other runnable thread between polls (a
//! worker here, or a thread of another process on the same core), and stops
//! as soon as one such offer took its core for longer than a poll should
//! ([`CONTENDED`]): the cores are busy, and a thread waiting for the core
//! cannot be woken by a message the way a sleeping one is.
//!
//! So under full load nobody takes a core from work (rule 1; the network
//! thread gives its core up at once), under light traffic (a call
//! every few milliseconds) the budget decays to nothing after a few waits and
//! each wait costs a probe at most (rule 3), at idle nothing runs, and in
//! request–reply ping-pong the answer comes within the spin and the thread
//! never sleeps.
//!
//! The spinner counts publish no data: they are hints read to decide, so
//! their operations are `Relaxed` (a stale read lets one more or one fewer
//! thread spin for one budget).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The longest a thread spins before it sleeps (a budget that paid off).
pub const MAX: Duration = Duration::from_micros(50);
/// The smallest budget that is kept.
pub const MIN: Duration = Duration::from_micros(2);
/// The spin of a getter's probe.
pub const PROBE: Duration = Duration::from_micros(16);
/// With no budget, one wait in this many probes.
pub const PROBE_EVERY: u32 = 16;
/// A network thread's offer of its core that took longer than this means
/// another thread ran: the cores are busy, and the linger ends.
pub const CONTENDED: Duration = Duration::from_micros(50);
/// The longest a network thread polls before it sleeps, and its probe.
pub const NET_MAX: Duration = Duration::from_micros(250);
/// With no budget, one network thread's wait in this many probes: its probe
/// is long ([`NET_MAX`]), so it comes more rarely.
pub const NET_PROBE_EVERY: u32 = 64;

/// Where a thread waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// A `get` or `wait` for an object.
    Get = 0,
    /// A worker with an empty run queue.
    IdleWorker = 1,
    /// An async actor with an empty mailbox.
    IdleActor = 2,
    /// A cluster node's network thread after a message came in.
    Net = 3,
}

const SITES: usize = 4;

impl Site {
    /// A probe's spin: for a getter, a round trip to an awake thread with
    /// room ([`PROBE`]); for an idle worker or actor, [`MIN`] (work that comes
    /// at all under load comes at once).
    fn probe(self) -> Duration {
        match self {
            Site::Get => PROBE,
            Site::IdleWorker | Site::IdleActor => MIN,
            Site::Net => NET_MAX,
        }
    }

    /// With no budget, one wait in this many probes.
    fn probe_every(self) -> u32 {
        match self {
            Site::Net => NET_PROBE_EVERY,
            Site::Get | Site::IdleWorker | Site::IdleActor => PROBE_EVERY,
        }
    }

    /// The longest budget at this site.
    fn max(self) -> Duration {
        match self {
            Site::Net => NET_MAX,
            Site::Get | Site::IdleWorker | Site::IdleActor => MAX,
        }
    }
}

/// A site's record on one thread.
#[derive(Clone, Copy)]
struct Record {
    /// Nanoseconds to spin next time; 0: sleep at once (but probe).
    budget_ns: u32,
    /// Waits since the last probe, while the budget is 0.
    since_probe: u32,
}

thread_local! {
    static RECORDS: [Cell<Record>; SITES] = const {
        const fn fresh(max: Duration) -> Cell<Record> {
            Cell::new(Record { budget_ns: max.as_nanos() as u32, since_probe: 0 })
        }
        [fresh(MAX), fresh(MAX), fresh(MAX), fresh(NET_MAX)]
    };
}

/// A node's spin policy: the cores it may spin on and who spins now.
#[derive(Debug)]
pub struct SpinPolicy {
    /// Spinning getters, and spinning idle workers and actors, allowed at
    /// once: half the cores each.
    max_each: usize,
    getters: AtomicUsize,
    idlers: AtomicUsize,
    net: AtomicUsize,
}

impl Default for SpinPolicy {
    fn default() -> Self {
        SpinPolicy::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
    }
}

/// A spin in progress, granted by [`SpinPolicy::begin`]; hand it back with
/// [`SpinPolicy::end`].
#[derive(Debug)]
#[must_use = "a spin must be ended with SpinPolicy::end"]
pub struct Spin {
    site: Site,
    started: Instant,
    deadline: Instant,
}

impl Spin {
    /// Whether its budget ran out.
    pub fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

impl SpinPolicy {
    /// The policy for a machine of `cores` cores.
    pub fn new(cores: usize) -> Self {
        SpinPolicy {
            max_each: cores / 2,
            getters: AtomicUsize::new(0),
            idlers: AtomicUsize::new(0),
            net: AtomicUsize::new(0),
        }
    }

    /// A spin at `site` if the rule allows one now (`work_queued`: the node has
    /// jobs no worker has taken); `None`: sleep at once.
    pub fn begin(&self, site: Site, work_queued: bool) -> Option<Spin> {
        if work_queued {
            return None;
        }
        let budget = RECORDS.with(|r| {
            let cell = &r[site as usize];
            let mut rec = cell.get();
            let budget = if rec.budget_ns > 0 {
                rec.budget_ns
            } else {
                rec.since_probe += 1;
                if rec.since_probe < site.probe_every() {
                    0
                } else {
                    rec.since_probe = 0;
                    site.probe().as_nanos() as u32
                }
            };
            cell.set(rec);
            budget
        });
        if budget == 0 {
            return None;
        }
        // Relaxed: a hint (see the module docs).
        let count = self.count(site);
        if count.fetch_add(1, Ordering::Relaxed) >= self.max_each {
            count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let started = Instant::now();
        Some(Spin {
            site,
            started,
            deadline: started + Duration::from_nanos(budget as u64),
        })
    }

    /// Ends a spin: `paid` if the wait ended while spinning.
    pub fn end(&self, spin: Spin, paid: bool) {
        self.count(spin.site).fetch_sub(1, Ordering::Relaxed);
        let spent = spin.started.elapsed();
        RECORDS.with(|r| {
            let cell = &r[spin.site as usize];
            let mut rec = cell.get();
            rec.budget_ns = next_budget(rec.budget_ns, paid, spent, spin.site.max());
            rec.since_probe = 0;
            cell.set(rec);
        });
    }

    /// Spins at `site` until `done()` or the budget runs out; true if done.
    /// While `work_queued()`, yields the core between rounds of polls (rule 1).
    /// Sleeps nothing: the caller sleeps if this returns false.
    pub fn spin_until(
        &self,
        site: Site,
        work_queued: &dyn Fn() -> bool,
        done: &mut dyn FnMut() -> bool,
    ) -> bool {
        let Some(spin) = self.begin(site, false) else {
            return false;
        };
        let mut paid = false;
        'spin: loop {
            // Read the clock once per 64 polls (a poll is a few nanoseconds).
            for _ in 0..64 {
                if done() {
                    paid = true;
                    break 'spin;
                }
                std::hint::spin_loop();
            }
            if spin.expired() {
                break;
            }
            if work_queued() {
                std::thread::yield_now();
            }
        }
        self.end(spin, paid);
        paid
    }

    fn count(&self, site: Site) -> &AtomicUsize {
        match site {
            Site::Get => &self.getters,
            Site::IdleWorker | Site::IdleActor => &self.idlers,
            Site::Net => &self.net,
        }
    }

    /// Whether as many getters spin as allowed: a getter refused now is one of
    /// many clients waiting at once.
    pub fn getters_crowded(&self) -> bool {
        self.getters.load(Ordering::Relaxed) >= self.max_each
    }

    /// Threads spinning now.
    #[cfg(test)]
    fn spinning(&self) -> usize {
        self.getters.load(Ordering::Relaxed)
            + self.idlers.load(Ordering::Relaxed)
            + self.net.load(Ordering::Relaxed)
    }
}

/// The budget after a spin: when it paid, twice what the wait took if that is
/// more (at least [`MIN`], at most the site's `max`); when it did not, halved
/// (nothing below [`MIN`]).
fn next_budget(budget_ns: u32, paid: bool, spent: Duration, max: Duration) -> u32 {
    let min = MIN.as_nanos() as u32;
    let max = max.as_nanos() as u32;
    if paid {
        // What it took, with room to spare, and never less than before.
        let took = spent.as_nanos().min(max as u128) as u32;
        budget_ns.max(took.saturating_mul(2)).max(min).min(max)
    } else {
        let half = budget_ns / 2;
        if half < min {
            0
        } else {
            half
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_halves_to_nothing_when_spinning_does_not_pay() {
        let mut b = MAX.as_nanos() as u32;
        let mut steps = 0;
        while b > 0 {
            b = next_budget(b, false, MAX, MAX);
            steps += 1;
        }
        // 50 µs halves below 2 µs in five steps.
        assert_eq!(steps, 5);
        assert_eq!(next_budget(0, false, MIN, MAX), 0);
    }

    #[test]
    fn budget_grows_when_spinning_pays() {
        let min = MIN.as_nanos() as u32;
        assert_eq!(next_budget(min, true, Duration::from_micros(3), MAX), 6_000);
        assert_eq!(
            next_budget(6_000, true, Duration::from_micros(1), MAX),
            6_000
        );
        assert_eq!(
            next_budget(6_000, true, Duration::from_secs(1), MAX),
            MAX.as_nanos() as u32
        );
    }

    #[test]
    fn no_spin_while_work_is_queued_or_cores_are_taken() {
        std::thread::spawn(|| {
            let policy = SpinPolicy::new(2);
            assert!(policy.begin(Site::Get, true).is_none());
            let getter = policy.begin(Site::Get, false).expect("a free core");
            // One spinning getter on two cores: the other core is for work.
            assert!(policy.begin(Site::Get, false).is_none());
            // An idle worker may spin beside it (request–reply), not a third.
            let worker = policy.begin(Site::IdleWorker, false).expect("a core");
            assert!(policy.begin(Site::IdleActor, false).is_none());
            // On one core nothing spins.
            assert!(SpinPolicy::new(1).begin(Site::Get, false).is_none());
            policy.end(getter, true);
            policy.end(worker, true);
            let again = policy.begin(Site::Get, false).expect("free again");
            policy.end(again, true);
            assert_eq!(policy.spinning(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_idle_site_stops_spinning_and_probes() {
        // On a fresh thread: its own records.
        std::thread::spawn(|| {
            let policy = SpinPolicy::new(4);
            let mut spins = 0;
            for _ in 0..100 {
                if policy.spin_until(Site::IdleActor, &|| false, &mut || false) {
                    unreachable!("never done");
                }
                if RECORDS.with(|r| r[Site::IdleActor as usize].get().budget_ns) > 0 {
                    spins += 1;
                }
            }
            // Four waits decay the budget; then one probe per PROBE_EVERY waits.
            assert!(spins <= 4, "spun {spins} times");
            let probes = (0..PROBE_EVERY * 3)
                .filter(|_| {
                    policy
                        .begin(Site::IdleActor, false)
                        .map(|s| policy.end(s, false))
                        .is_some()
                })
                .count();
            assert_eq!(probes, 3);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_network_thread_polls_long_enough_to_catch_a_round_trip() {
        // On a fresh thread: its own records.
        std::thread::spawn(|| {
            let policy = SpinPolicy::new(2);
            // A fresh network thread may poll NET_MAX, longer than any
            // other site: a round trip to another process, far side asleep.
            let first = policy.begin(Site::Net, false).expect("a budget");
            assert_eq!(first.deadline - first.started, NET_MAX);
            assert!(NET_MAX > MAX);
            // Only one at a time on two cores, and it does not take the
            // place of an idle worker beside it.
            assert!(policy.begin(Site::Net, false).is_none());
            let worker = policy.begin(Site::IdleWorker, false).expect("a core");
            policy.end(worker, true);
            policy.end(first, false);
            // A poll that paid grows the budget up to NET_MAX, not MAX.
            let net = NET_MAX.as_nanos() as u32;
            assert_eq!(
                next_budget(0, true, Duration::from_micros(100), NET_MAX),
                200_000
            );
            assert_eq!(next_budget(0, true, Duration::from_millis(1), NET_MAX), net);
            // Polls that do not pay decay it to nothing; then one wait in
            // NET_PROBE_EVERY polls NET_MAX again, long enough to catch a reply.
            while RECORDS.with(|r| r[Site::Net as usize].get().budget_ns) > 0 {
                let s = policy.begin(Site::Net, false).expect("a budget");
                policy.end(s, false);
            }
            let probes: Vec<Duration> = (0..NET_PROBE_EVERY * 2)
                .filter_map(|_| {
                    let s = policy.begin(Site::Net, false)?;
                    let length = s.deadline - s.started;
                    policy.end(s, false);
                    Some(length)
                })
                .collect();
            assert_eq!(probes, vec![NET_MAX; 2]);
            assert_eq!(policy.spinning(), 0);
            // On one core it never polls.
            assert!(SpinPolicy::new(1).begin(Site::Net, false).is_none());
        })
        .join()
        .unwrap();
    }
}
