//! Exhaustive models of the engine's six thread handshakes
//! (`actors/src/handshake.rs`), checked with loom.
//!
//! The models compile `handshake.rs` itself, not a copy: the `sync` module below
//! stands in for the crate's `src/sync.rs` (loom's atomics, fence and a mutex
//! with parking_lot's `lock()` signature), so the file's `crate::sync` resolves to
//! loom here. Loom runs every interleaving of each model's threads (up to a
//! preemption bound where one is given) and, for each load, every store the
//! memory model lets it read; `loom::cell::UnsafeCell` also reports accesses not
//! ordered by happens-before. No `--cfg loom` is needed:
//! `cargo test -p rayx-actors --test loom --release` (a few seconds; about half a
//! minute unoptimised). `LOOM_MAX_PREEMPTIONS=N` sets the bound of every model,
//! for a deeper run.
//!
//! What each model proves:
//!
//! - `idle_set_one_worker_two_submitters`, `idle_set_two_workers_one_submitter`:
//!   a job pushed to the run queue is never left there while every worker is
//!   asleep and none was woken (the fence pair of `after_push` and `park`); and
//!   every worker that parked is handed out by exactly one `after_push` or is
//!   still on the idle list, never both, never twice.
//! - `idle_set_watching_worker_two_submitters`,
//!   `idle_set_two_watching_workers_one_submitter`: the same, with workers that
//!   watch the queue before they sleep while submitters leave their jobs to a
//!   watcher (the fence pairs of `after_push` with `watch_end` and `park`).
//! - `idle_set_a_stopped_watcher_hands_work_on`: a watcher of a stopped pool
//!   that leaves hands on the work left to it: no job is stranded.
//! - `idle_set_workers_that_block_one_submitter`,
//!   `idle_set_watching_workers_that_block`: workers that take one job each and
//!   then block for good (a `get` on a call whose actor's job is queued behind
//!   theirs): every job is still taken while a worker sleeps, because each
//!   worker that takes a job and leaves more wakes the next (`after_push`,
//!   as `RunQueue::take` does).
//!   With the rule the run queue had before (a watcher that saw more than one
//!   job woke one sleeper, and nobody else did), the watching model fails: it
//!   is the hang that the cluster-mode benchmark showed under load.
//! - `idle_set_remove_races_after_push`: a parked worker taking itself off the
//!   list and a submitter waking it agree: exactly one of them gets it.
//! - `schedule_flag_two_producers`: with two producers pushing and claiming the
//!   flag, every message is consumed (none is left behind by the consumer's
//!   `release`), at most one consumer runs at a time, successive consumer runs
//!   are ordered by happens-before (their shared state is a loom `UnsafeCell`,
//!   so a data race would be reported), and the flag ends released.
//! - `running_task_abandon_never_lands_on_next_task` and
//!   `running_task_abandon_each_task`: a forced cancel of task 1 abandons the
//!   worker only while it runs task 1: the worker retires after task 1 if and
//!   only if that cancel succeeded, and never after task 2 (and likewise for a
//!   cancel of task 2).
//! - `running_task_nested`: with task 2 nested in task 1, cancels of 1 and of 2
//!   abandon the worker at most once between them, a nested `end` never retires,
//!   and the top-level `end` retires iff a cancel succeeded.
//! - `elsewhere_marker_and_a_waiter`, `elsewhere_marker_and_two_waiters`: a slot
//!   marked "held on another node" while getters register (each also asking
//!   before it registers, as a borrowed value's getter does): the value is asked
//!   for exactly once.
//!
//! - `busy_a_job_that_blocks_beside_a_router`, `busy_two_jobs_beside_a_router`:
//!   a worker that waits in `get` (counted as blocked while it waits) beside
//!   the router marking its job long (counting it first, and taking the count
//!   back if the mark fails; counted so until the job ends): the worker is
//!   never uncounted below nothing, counted at most once past the router's
//!   count made before its mark, and uncounted when its jobs are done; a mark
//!   never lands on the next job.
//! - `lookout_one_submitter_and_the_router`, `lookout_two_submitters_and_the_router`:
//!   submitters that push a job and find every worker busy, beside the router
//!   that finds the queue empty and stops looking: once all are done, a queued
//!   job always has exactly one looker (the router went on, or one submitter
//!   started it). It fails without the router's fence in `Lookout::stop`.
//!
//! Each model fails on a broken copy of the protocol: either `SeqCst` fence of
//! `IdleSet` removed (the leaving model: `watch_end`'s fence removed, or the
//! leaver not handing on), `park` ignoring `has_work`, `remove` finding and removing
//! under two lock sections; `release`'s swap made a store or Release-only,
//! `claim` made Relaxed, Release-only or a load then a store; `end`'s
//! compare-exchange made a store, `begin` dropping the abandoned mark, `abandon`
//! made a load then a `fetch_or`; a getter of `Elsewhere` that does not ask again
//! once registered; the router counting a `Busy` worker after its mark instead
//! of before; `Lookout::stop` without its fence.
//!
//! Limits: loom treats SeqCst loads, stores and read-modify-writes as AcqRel
//! (its SeqCst *fences* are modelled), so nothing here may lean on SeqCst
//! accesses; `IdleSet` does not. `RunningTask` is one word changed only by
//! read-modify-writes, so its results do not depend on its orderings, and these
//! models (which hand no other data between worker and canceller) would pass
//! with all of them Relaxed: what its Acquire/Release orderings publish is the
//! callers' business.

#![allow(dead_code)]

/// Loom's versions of what `src/sync.rs` names, for `handshake.rs`.
mod sync {
    pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

    /// `loom::sync::Mutex` with parking_lot's signature: `lock()` returns the
    /// guard itself (loom's mutex is never poisoned in a passing model).
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
            self.0.lock().unwrap()
        }
    }
}

#[path = "../src/handshake.rs"]
mod handshake;

use handshake::{Busy, Elsewhere, IdleSet, Lookout, RunningTask, ScheduleFlag};
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// Runs `model` under every interleaving with at most `preemptions` preemptions
/// (`None`: no bound, all interleavings), unless `LOOM_MAX_PREEMPTIONS` sets
/// another bound; prints how many executions that was (shown with
/// `--nocapture`).
fn check(preemptions: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = preemptions;
    }
    let bound = builder.preemption_bound;
    let executions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = executions.clone();
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model()
    });
    let executions = executions.load(std::sync::atomic::Ordering::Relaxed);
    println!("{executions} executions, preemption bound {bound:?}");
}

/// Takes one item off a queue modelled as a count of queued items; false if it
/// looked empty. Like crossbeam's `steal`/`pop`, it may see "empty" from a
/// stale read: the handshakes must cope with that.
fn pop(count: &AtomicUsize, order: Ordering) -> bool {
    let mut now = count.load(order);
    while now > 0 {
        match count.compare_exchange(now, now - 1, order, order) {
            Ok(_) => return true,
            Err(seen) => now = seen,
        }
    }
    false
}

/// Takes everything off the queue; how many items that was.
fn drain(count: &AtomicUsize, order: Ordering) -> usize {
    let mut taken = 0;
    while pop(count, order) {
        taken += 1;
    }
    taken
}

// ---------------------------------------------------------------------------
// IdleSet: the run queue's submit/sleep handshake.
//
// The run queue is crossbeam's `Injector`, whose push is a SeqCst
// compare-exchange on its tail index and whose emptiness check loads head and
// tail with SeqCst: the model's queue is a count pushed with `fetch_add(SeqCst)`
// and read with SeqCst. (Loom treats SeqCst accesses as AcqRel, so the
// models lean on `handshake.rs`'s SeqCst fences, which loom does model, and not
// on the queue's orderings.)
// ---------------------------------------------------------------------------

const QUEUE: Ordering = Ordering::SeqCst;

/// `workers` workers drain the queue and park when it looks empty (a parked
/// worker's thread ends); `submitters` submitters push one job each and wake
/// the sleeper `after_push` hands them. Afterwards, each woken worker drains the
/// queue again (as a woken worker does), and the queue must then be empty.
fn idle_set_model(workers: usize, submitters: usize) {
    idle_set_model_watching(workers, submitters, false)
}

/// As [`idle_set_model`]; with `watch`, a worker whose queue looks empty first
/// watches it (one look while counted as watching, then `watch_end`'s
/// re-check), as an idle worker spins before it sleeps, and submitters leave
/// their job to a watcher instead of waking a sleeper.
fn idle_set_model_watching(workers: usize, submitters: usize, watch: bool) {
    idle_set_model_leaving(workers, submitters, watch, 0)
}

/// As [`idle_set_model_watching`], plus `leavers` workers of a stopped pool:
/// each watches once and leaves without taking work, handing on (with
/// `after_push`) what it saw, as a stopped worker does.
fn idle_set_model_leaving(workers: usize, submitters: usize, watch: bool, leavers: usize) {
    let queue = Arc::new(AtomicUsize::new(0));
    let idle = Arc::new(IdleSet::<usize>::default());
    let leaver_threads: Vec<_> = (0..leavers)
        .map(|_| {
            let (queue, idle) = (queue.clone(), idle.clone());
            thread::spawn(move || {
                idle.watch_begin();
                let seen = queue.load(QUEUE) > 0;
                if idle.watch_end(|| queue.load(QUEUE) > 0) || seen {
                    idle.after_push()
                } else {
                    None
                }
            })
        })
        .collect();

    let worker_threads: Vec<_> = (0..workers)
        .map(|id| {
            let (queue, idle) = (queue.clone(), idle.clone());
            thread::spawn(move || {
                let mut popped = 0;
                loop {
                    popped += drain(&queue, QUEUE);
                    if watch {
                        idle.watch_begin();
                        let seen = queue.load(QUEUE) > 0;
                        if idle.watch_end(|| queue.load(QUEUE) > 0) || seen {
                            continue;
                        }
                    }
                    if idle.park(id, id, || queue.load(QUEUE) > 0) {
                        return popped;
                    }
                }
            })
        })
        .collect();
    let submitter_threads: Vec<_> = (0..submitters)
        .map(|_| {
            let (queue, idle) = (queue.clone(), idle.clone());
            thread::spawn(move || {
                queue.fetch_add(1, QUEUE);
                idle.after_push()
            })
        })
        .collect();

    let popped: usize = worker_threads.into_iter().map(|t| t.join().unwrap()).sum();
    let woken: Vec<usize> = submitter_threads
        .into_iter()
        .chain(leaver_threads)
        .filter_map(|t| t.join().unwrap())
        .collect();

    // Every worker's thread ended parked: it was handed out to exactly one
    // submitter, or it is still on the list.
    for id in 0..workers {
        let times_woken = woken.iter().filter(|&&w| w == id).count();
        let still_parked = idle.remove(id);
        assert!(times_woken <= 1, "worker {id} woken {times_woken} times");
        assert!(
            (times_woken == 1) != still_parked,
            "worker {id}: woken {times_woken} times, still parked: {still_parked}"
        );
    }
    assert!(idle.is_empty(), "the count disagrees with the list");

    // A woken worker drains the queue again; one still asleep does not.
    let drained_by_woken = if woken.is_empty() {
        0
    } else {
        drain(&queue, QUEUE)
    };
    assert_eq!(
        queue.load(QUEUE),
        0,
        "a job was left in the queue with every worker asleep and none woken \
         (workers popped {popped}, woken: {woken:?})"
    );
    assert_eq!(popped + drained_by_woken, submitters);
}

#[test]
fn idle_set_one_worker_two_submitters() {
    check(Some(3), || idle_set_model(1, 2));
}

#[test]
fn idle_set_two_workers_one_submitter() {
    check(Some(3), || idle_set_model(2, 1));
}

#[test]
fn idle_set_watching_worker_two_submitters() {
    check(Some(2), || idle_set_model_watching(1, 2, true));
}

#[test]
fn idle_set_a_stopped_watcher_hands_work_on() {
    check(Some(2), || idle_set_model_leaving(1, 1, true, 1));
}

#[test]
fn idle_set_two_watching_workers_one_submitter() {
    check(Some(2), || idle_set_model_watching(2, 1, true));
}

/// A worker of a router that stops parks as the pool retires
/// (`RunQueue::retire_pool`: its sleepers off the idle list, its workers told
/// to stop), then the next router's worker starts (after the retire: the
/// supervisor starts it once the old router has stopped) and parks, while a
/// submitter pushes a job. The old worker's thread ends once it is parked (its
/// arbiter was stopped), so a wake-up handed to it is lost. With `fixed`, the
/// retire tells the workers to stop before it clears the idle list, and a
/// worker re-reads its stop flag after it parks: stopped, it takes itself off
/// the list, or hands the work on if a submitter took it off (and sent it a
/// wake-up it will never run). Without: the old worker can stay on the list
/// for good, on top of the new worker, and the next job's wake-up goes to it.
fn idle_set_model_pool_stops(fixed: bool) {
    const OLD: usize = 0;
    const NEW: usize = 1;
    let queue = Arc::new(AtomicUsize::new(0));
    let idle = Arc::new(IdleSet::<usize>::default());
    let stop = Arc::new(loom::sync::atomic::AtomicBool::new(false));

    let old = {
        let (queue, idle, stop) = (queue.clone(), idle.clone(), stop.clone());
        thread::spawn(move || {
            let mut popped = 0;
            loop {
                // `Worker::drain`: stop checks, then park.
                if stop.load(Ordering::Acquire) {
                    return (popped, None);
                }
                if idle.park(OLD, OLD, || queue.load(QUEUE) > 0) {
                    if fixed && stop.load(Ordering::Acquire) && !idle.remove(OLD) {
                        return (popped, idle.after_push());
                    }
                    return (popped, None);
                }
                if stop.load(Ordering::Acquire) {
                    return (popped, None);
                }
                popped += drain(&queue, QUEUE);
            }
        })
    };
    let router = {
        let (queue, idle, stop) = (queue.clone(), idle.clone(), stop.clone());
        thread::spawn(move || {
            if fixed {
                stop.store(true, Ordering::Release);
                drop(idle.remove_where(|id| id == OLD));
            } else {
                drop(idle.remove_where(|id| id == OLD));
                stop.store(true, Ordering::Release);
            }
            // The new pool's worker.
            let mut popped = 0;
            loop {
                popped += drain(&queue, QUEUE);
                if idle.park(NEW, NEW, || queue.load(QUEUE) > 0) {
                    return popped;
                }
            }
        })
    };
    let submitter = {
        let (queue, idle) = (queue.clone(), idle.clone());
        thread::spawn(move || {
            queue.fetch_add(1, QUEUE);
            idle.after_push()
        })
    };
    let (old_popped, handed) = old.join().unwrap();
    let new_popped = router.join().unwrap();
    let woken = submitter.join().unwrap();
    assert!(
        !idle.remove(OLD),
        "the old pool's worker was left on the idle list"
    );
    let new_woken = [woken, handed].iter().filter(|w| **w == Some(NEW)).count();
    assert!(new_woken <= 1, "the new worker woken twice");
    assert_eq!(
        idle.remove(NEW),
        new_woken == 0,
        "new worker: parked xor woken"
    );
    let drained = if new_woken == 1 {
        drain(&queue, QUEUE)
    } else {
        0
    };
    assert_eq!(
        queue.load(QUEUE),
        0,
        "a job was left with the new worker asleep (woken: {woken:?}, handed on: {handed:?})"
    );
    assert_eq!(old_popped + new_popped + drained, 1);
}

#[test]
fn idle_set_a_worker_parking_as_its_pool_stops_leaves_the_list() {
    check(Some(2), || idle_set_model_pool_stops(true));
}

#[test]
#[should_panic]
fn idle_set_a_worker_parking_as_its_pool_stops_broken() {
    check(Some(2), || idle_set_model_pool_stops(false));
}

/// `workers` workers, each of which takes at most one job and then blocks for
/// good, and one submitter that pushes `jobs` jobs one after another. A worker
/// whose queue looks empty watches it (with `watch`) and then parks. Afterwards
/// each woken worker, in turn, takes a job and blocks (waking the next as it
/// does). With no more jobs than workers, no job may be left in the queue.
fn idle_set_model_blocking(workers: usize, jobs: usize, watch: bool) {
    let queue = Arc::new(AtomicUsize::new(0));
    let idle = Arc::new(IdleSet::<usize>::default());
    let worker_threads: Vec<_> = (0..workers)
        .map(|id| {
            let (queue, idle) = (queue.clone(), idle.clone());
            thread::spawn(move || loop {
                if pop(&queue, QUEUE) {
                    // Took a job, and blocks in it for good.
                    // More left: wake the next (`RunQueue::take`).
                    let next = (queue.load(QUEUE) > 0).then(|| idle.after_push()).flatten();
                    return (true, next);
                }
                if watch {
                    idle.watch_begin();
                    let seen = queue.load(QUEUE) > 0;
                    if idle.watch_end(|| queue.load(QUEUE) > 0) || seen {
                        continue;
                    }
                }
                if idle.park(id, id, || queue.load(QUEUE) > 0) {
                    return (false, None);
                }
            })
        })
        .collect();
    let submitter = {
        let (queue, idle) = (queue.clone(), idle.clone());
        thread::spawn(move || {
            (0..jobs)
                .filter_map(|_| {
                    queue.fetch_add(1, QUEUE);
                    idle.after_push()
                })
                .collect::<Vec<_>>()
        })
    };

    let mut woken = submitter.join().unwrap();
    let mut blocked = 0;
    for t in worker_threads {
        let (took, woke) = t.join().unwrap();
        blocked += usize::from(took);
        woken.extend(woke);
    }
    // The woken workers run, one after another: each takes a job if one is
    // there (and wakes the next if more are), then blocks.
    let mut next = 0;
    while next < woken.len() {
        if pop(&queue, QUEUE) {
            blocked += 1;
            if queue.load(QUEUE) > 0 {
                woken.extend(idle.after_push());
            }
        }
        next += 1;
    }
    let mut sorted = woken.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), woken.len(), "a worker woken twice: {woken:?}");
    assert_eq!(
        queue.load(QUEUE),
        0,
        "a job was left in the queue while a worker slept and every other \
         worker was blocked (blocked {blocked}, woken {woken:?}, asleep {})",
        idle.len()
    );
    assert_eq!(blocked, jobs);
}

#[test]
fn idle_set_workers_that_block_one_submitter() {
    check(Some(3), || idle_set_model_blocking(2, 2, false));
}

/// Bound 1: about 9,000 executions, a few seconds unoptimised, and enough to
/// fail the old rule (bound 0 is not). Bound 2 passes too, in about four
/// minutes unoptimised (`LOOM_MAX_PREEMPTIONS=2`).
#[test]
fn idle_set_watching_workers_that_block() {
    check(Some(1), || idle_set_model_blocking(3, 3, true));
}

/// A parked worker takes itself off the list (as it does when it stops) while a
/// submitter's `after_push` may pop it: exactly one of them gets it.
#[test]
fn idle_set_remove_races_after_push() {
    check(None, || {
        let idle = Arc::new(IdleSet::<usize>::default());

        let worker = {
            let idle = idle.clone();
            thread::spawn(move || {
                assert!(idle.park(7, 7, || false), "park with no work must park");
                idle.remove(7)
            })
        };
        let submitter = {
            let idle = idle.clone();
            thread::spawn(move || idle.after_push())
        };

        let removed = worker.join().unwrap();
        let woken = submitter.join().unwrap();
        assert!(matches!(woken, None | Some(7)));
        assert!(
            removed != woken.is_some(),
            "remove returned {removed}, after_push returned {woken:?}"
        );
        assert!(idle.is_empty());
    });
}

// ---------------------------------------------------------------------------
// ScheduleFlag: an actor host's mailbox and `scheduled` flag.
//
// The mailbox is crossbeam's `SegQueue`: its push publishes with a SeqCst
// compare-exchange on the tail index and a Release store of the slot's state;
// its pop and emptiness check read with Acquire (or SeqCst). The model uses the
// weaker Release push / Acquire reads, which admits every behaviour the stronger
// orderings do, so the flag's own orderings must carry the handshake.
// ---------------------------------------------------------------------------

/// The host's run loop, on the thread that claimed the flag: drains the
/// mailbox, releases the flag, and runs again if `release` says mail arrived.
/// `handled` is the host's own state: only the flag orders its accesses.
fn run_host(
    mailbox: &AtomicUsize,
    flag: &ScheduleFlag,
    running: &AtomicUsize,
    handled: &UnsafeCell<usize>,
) {
    loop {
        assert_eq!(
            running.fetch_add(1, Ordering::Relaxed),
            0,
            "two consumers at once"
        );
        while pop(mailbox, Ordering::Acquire) {
            handled.with_mut(|n| unsafe { *n += 1 });
        }
        running.fetch_sub(1, Ordering::Relaxed);
        if !flag.release(|| mailbox.load(Ordering::Acquire) > 0) {
            return;
        }
    }
}

#[test]
fn schedule_flag_two_producers() {
    check(Some(4), || {
        let mailbox = Arc::new(AtomicUsize::new(0));
        let flag = Arc::new(ScheduleFlag::default());
        let running = Arc::new(AtomicUsize::new(0));
        let handled = Arc::new(UnsafeCell::new(0usize));

        let producers: Vec<_> = (0..2)
            .map(|_| {
                let (mailbox, flag) = (mailbox.clone(), flag.clone());
                let (running, handled) = (running.clone(), handled.clone());
                thread::spawn(move || {
                    mailbox.fetch_add(1, Ordering::Release);
                    if flag.claim() {
                        run_host(&mailbox, &flag, &running, &handled);
                    }
                })
            })
            .collect();
        for producer in producers {
            producer.join().unwrap();
        }

        assert_eq!(
            mailbox.load(Ordering::Acquire),
            0,
            "a message was left in the mailbox with the host idle"
        );
        assert_eq!(handled.with(|n| unsafe { *n }), 2);
        assert!(
            !flag.is_set(),
            "the flag stayed claimed with no host running"
        );
    });
}

// ---------------------------------------------------------------------------
// RunningTask: a forced cancel abandons a worker only while it runs that task.
// ---------------------------------------------------------------------------

/// The worker runs task 1 then task 2; returns whether each `end` said retire.
fn run_tasks_1_then_2(rt: &RunningTask) -> (bool, bool) {
    let outer = rt.begin(1);
    assert_eq!(outer, 0);
    let retire1 = rt.end(outer);
    let outer = rt.begin(2);
    assert_eq!(outer, 0);
    let retire2 = rt.end(outer);
    (retire1, retire2)
}

#[test]
fn running_task_abandon_never_lands_on_next_task() {
    check(None, || {
        let rt = Arc::new(RunningTask::default());
        let worker = {
            let rt = rt.clone();
            thread::spawn(move || run_tasks_1_then_2(&rt))
        };
        let canceller = {
            let rt = rt.clone();
            thread::spawn(move || rt.abandon(1))
        };
        let (retire1, retire2) = worker.join().unwrap();
        let hit = canceller.join().unwrap();

        assert_eq!(
            retire1, hit,
            "retire after task 1 iff the cancel of 1 landed"
        );
        assert!(
            !retire2,
            "the cancel of task 1 abandoned the worker in task 2"
        );
        assert_eq!(rt.current(), None);
    });
}

/// Cancels of both tasks, on two threads: each retire matches its own cancel.
#[test]
fn running_task_abandon_each_task() {
    check(Some(4), || {
        let rt = Arc::new(RunningTask::default());
        let worker = {
            let rt = rt.clone();
            thread::spawn(move || run_tasks_1_then_2(&rt))
        };
        let cancellers: Vec<_> = [1, 2]
            .into_iter()
            .map(|task| {
                let rt = rt.clone();
                thread::spawn(move || rt.abandon(task))
            })
            .collect();
        let (retire1, retire2) = worker.join().unwrap();
        let hits: Vec<bool> = cancellers.into_iter().map(|t| t.join().unwrap()).collect();

        assert_eq!(
            retire1, hits[0],
            "retire after task 1 iff the cancel of 1 landed"
        );
        assert_eq!(
            retire2, hits[1],
            "retire after task 2 iff the cancel of 2 landed"
        );
        assert_eq!(rt.current(), None);
    });
}

/// Task 2 runs nested in task 1 (a worker blocked in `get` runs the task it
/// waits for); cancels of 1 and of 2 race with it on two threads.
#[test]
fn running_task_nested() {
    check(Some(4), || {
        let rt = Arc::new(RunningTask::default());
        let worker = {
            let rt = rt.clone();
            thread::spawn(move || {
                let top = rt.begin(1);
                assert_eq!(top, 0);
                let outer = rt.begin(2);
                assert_eq!(outer, 1, "the nested task must return to task 1");
                assert!(!rt.end(outer), "a nested end must not retire the worker");
                rt.end(top)
            })
        };
        let cancellers: Vec<_> = [1, 2]
            .into_iter()
            .map(|task| {
                let rt = rt.clone();
                thread::spawn(move || rt.abandon(task))
            })
            .collect();
        let retire = worker.join().unwrap();
        let hits: Vec<bool> = cancellers.into_iter().map(|t| t.join().unwrap()).collect();

        assert!(
            !(hits[0] && hits[1]),
            "the worker was abandoned twice (by the cancels of 1 and of 2)"
        );
        assert_eq!(
            retire,
            hits[0] || hits[1],
            "retire iff a cancel landed (cancels of 1, 2: {hits:?})"
        );
        assert_eq!(rt.current(), None);
    });
}

// ---------------------------------------------------------------------------
// Elsewhere: a value marked as held on another node is asked for exactly once.
// ---------------------------------------------------------------------------

/// The marker and `getters` threads, each getter asking before it
/// registers and after: the value must be asked for exactly once.
fn elsewhere_model(getters: usize) {
    let flag = Arc::new(Elsewhere::new(false));
    // The slot's waiters, behind the slot's lock.
    let waiters = Arc::new(sync::Mutex::new(0usize));
    let asked = Arc::new(AtomicUsize::new(0));
    let marker = {
        let (flag, waiters, asked) = (flag.clone(), waiters.clone(), asked.clone());
        thread::spawn(move || {
            flag.mark();
            let wanted = *waiters.lock() > 0;
            if wanted && flag.take() {
                asked.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let getters: Vec<_> = (0..getters)
        .map(|_| {
            let (flag, waiters, asked) = (flag.clone(), waiters.clone(), asked.clone());
            thread::spawn(move || {
                if flag.take() {
                    asked.fetch_add(1, Ordering::Relaxed);
                }
                *waiters.lock() += 1;
                if flag.take() {
                    asked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    marker.join().unwrap();
    for g in getters {
        g.join().unwrap();
    }
    assert_eq!(
        asked.load(Ordering::Relaxed),
        1,
        "the value was asked for once"
    );
}

#[test]
fn elsewhere_marker_and_a_waiter() {
    check(None, || elsewhere_model(1));
}

#[test]
fn elsewhere_marker_and_two_waiters() {
    check(Some(3), || elsewhere_model(2));
}

/// The pool's count of blocked workers, for one worker: uncounting below
/// nothing, or counting past the worker's own count and the router's count
/// made before its mark, fails the model.
struct Counted(AtomicUsize);

impl Counted {
    fn count(&self) {
        assert!(
            self.0.fetch_add(1, Ordering::Relaxed) < 2,
            "counted past two"
        );
    }
    fn uncount(&self) {
        assert!(
            self.0.fetch_sub(1, Ordering::Relaxed) > 0,
            "uncounted below nothing"
        );
    }
}

/// A worker running `jobs` jobs, waiting in `get` in each (`blocks` times),
/// beside a router that looks `looks` times and marks the job it saw long
/// (counting the worker first, and taking the count back if the mark fails):
/// the count never drops below nothing, and is back to nothing once the jobs
/// are done; so is the count of marked workers not in `get` (the pool's
/// `long`), which the worker moves out of while it waits in `get`. (With the count made after the mark, the worker can uncount
/// before the router counts: the model fails. Loom does not reorder the
/// counts of Relaxed read-modify-writes, so the Release/Acquire pair that
/// orders them in `Busy` is argued there, not shown here.)
fn busy_model(jobs: usize, blocks: usize, looks: usize) {
    let busy = Arc::new(Busy::default());
    let counted = Arc::new(Counted(AtomicUsize::new(0)));
    // Of `counted`, the marked workers not in `get` (the pool's `long`).
    let asleep = Arc::new(Counted(AtomicUsize::new(0)));
    let worker = {
        let (busy, counted, asleep) = (busy.clone(), counted.clone(), asleep.clone());
        thread::spawn(move || {
            for _ in 0..jobs {
                busy.begin();
                for _ in 0..blocks {
                    if busy.block() {
                        counted.count();
                    } else {
                        asleep.uncount();
                    }
                    if busy.unblock() {
                        counted.uncount();
                    } else {
                        asleep.count();
                    }
                }
                if busy.end() {
                    counted.uncount();
                    asleep.uncount();
                }
            }
        })
    };
    for _ in 0..looks {
        // The router compares two looks; here any job it sees running may be
        // marked (the comparison only decides whether it tries).
        if let Some(seen) = busy.running() {
            asleep.count();
            counted.count();
            if !busy.mark_long(seen) {
                counted.uncount();
                asleep.uncount();
            }
        }
    }
    worker.join().unwrap();
    assert_eq!(
        counted.0.load(Ordering::Relaxed),
        0,
        "counted after the jobs"
    );
    assert_eq!(asleep.0.load(Ordering::Relaxed), 0, "asleep after the jobs");
    assert!(busy.running().is_none(), "no job runs");
}

#[test]
fn busy_a_job_that_blocks_beside_a_router() {
    check(None, || busy_model(1, 2, 2));
}

#[test]
fn busy_two_jobs_beside_a_router() {
    check(Some(3), || busy_model(2, 1, 2));
}

/// `submitters` threads push a job each and, finding every worker busy,
/// start the router looking if it is not; the router, looking now, finds the
/// queue empty (or not) and stops (or goes on). Once all are done, if a job
/// is queued someone looks: the router went on, or exactly one submitter
/// started it; never two lookers at once.
fn lookout_model(submitters: usize) {
    let lookout = Arc::new(Lookout::default());
    assert!(lookout.wanted(), "the router starts looking");
    let queued = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..submitters)
        .map(|_| {
            let (lookout, queued, started) = (lookout.clone(), queued.clone(), started.clone());
            thread::spawn(move || {
                queued.fetch_add(1, Ordering::Relaxed);
                // `IdleSet::after_push`'s fence, which every submit makes.
                loom::sync::atomic::fence(Ordering::SeqCst);
                if lookout.wanted() {
                    started.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let went_on = if queued.load(Ordering::Relaxed) > 0 {
        true
    } else {
        lookout.stop(|| queued.load(Ordering::Relaxed) > 0)
    };
    for t in threads {
        t.join().unwrap();
    }
    let lookers = started.load(Ordering::Relaxed) + usize::from(went_on);
    assert!(lookers <= 1, "two lookers");
    assert_eq!(lookers, 1, "jobs queued and nobody looks");
}

#[test]
fn lookout_one_submitter_and_the_router() {
    check(None, || lookout_model(1));
}

#[test]
fn lookout_two_submitters_and_the_router() {
    check(Some(2), || lookout_model(2));
}
