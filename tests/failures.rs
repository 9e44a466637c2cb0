//! Failures: task retries, worker deaths, actor restarts, supervision, chaos.

mod common;

use common::{eventually, LONG};
use parking_lot::Mutex;
use rayx::prelude::*;
use rayx::{FaultPoint, Faults, SupervisionEvent, Trigger};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

/// Attempts per key, so a task can fail its first tries and then succeed.
static ATTEMPTS: LazyLock<Mutex<HashMap<u64, u32>>> = LazyLock::new(Default::default);
static KEYS: AtomicU64 = AtomicU64::new(1);

fn key() -> u64 {
    KEYS.fetch_add(1, Ordering::Relaxed)
}
fn attempt(key: u64) -> u32 {
    let mut a = ATTEMPTS.lock();
    let n = a.entry(key).or_default();
    *n += 1;
    *n
}

fn flaky(key: u64, fail_first: u32) -> u32 {
    let n = attempt(key);
    if n <= fail_first {
        panic!("transient failure {n}");
    }
    n
}
fn fatal(key: u64) -> u32 {
    attempt(key);
    panic!("fatal failure");
}
fn double(x: u64) -> u64 {
    x * 2
}
/// Marks `key` started, then works until cancelled (at most a minute); counts
/// the attempt and panics on seeing the cancel if `panic_on_cancel`.
fn until_cancelled(key: u64, panic_on_cancel: bool) -> u32 {
    let n = attempt(key);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !rayx::cancelled() {
        assert!(std::time::Instant::now() < deadline, "never cancelled");
        std::thread::yield_now();
    }
    SAW_CANCEL.lock().push(key);
    if panic_on_cancel {
        panic!("stopping: cancelled");
    }
    n
}
/// Starts `until_cancelled(child)` and waits for it.
fn parent_of(child: u64) -> u32 {
    let rt = Runtime::current().expect("in a task");
    let r = rt.task(until_cancelled).remote((child, false));
    r.get().unwrap_or(0)
}
fn held(gate: u64) -> u64 {
    common::pass(gate)
}
/// Marks `key` started, then blocks on the gate, ignoring any cancel.
fn stuck_on(key: u64, gate: u64) -> u64 {
    attempt(key);
    common::pass(gate)
}
static SAW_CANCEL: LazyLock<Mutex<Vec<u64>>> = LazyLock::new(Default::default);
fn saw_cancel(key: u64) -> bool {
    SAW_CANCEL.lock().contains(&key)
}
fn started(key: u64) -> bool {
    ATTEMPTS.lock().contains_key(&key)
}
rayx::remote!(
    flaky,
    fatal,
    double,
    until_cancelled,
    parent_of,
    held,
    stuck_on,
    big,
    sum_of
);

/// Counts its runs under `key`; returns a large value (it lands in the store).
fn big(key: u64, fill: u8) -> Vec<u8> {
    attempt(key);
    vec![fill; 4096]
}
/// Counts its runs under `key`; sums its argument.
fn sum_of(key: u64, v: Vec<u8>) -> u64 {
    attempt(key);
    v.iter().map(|&b| b as u64).sum()
}

fn rt2() -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .start()
        .expect("runtime")
}

fn with_faults(faults: Faults) -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .faults(faults)
        .start()
        .expect("runtime")
}

#[test]
fn panics_are_not_retried_by_default() {
    let rt = rt2();
    let k = key();
    assert!(matches!(
        rt.task(flaky).remote((k, 1)).get(),
        Err(Error::TaskFailed { .. })
    ));
    assert_eq!(ATTEMPTS.lock()[&k], 1);
}

#[test]
fn retry_exceptions_retries_panics_within_max_retries() {
    let rt = rt2();
    let k = key();
    let r = rt.task(flaky).retry_exceptions(true).remote((k, 2));
    assert_eq!(
        r.get().unwrap(),
        3,
        "two failures, then the third attempt succeeds"
    );
}

#[test]
fn the_final_error_lists_every_attempt() {
    let rt = rt2();
    let k = key();
    let r = rt
        .task(flaky)
        .name("always")
        .retry_exceptions(true)
        .max_retries(2)
        .remote((k, 100));
    match r.get() {
        Err(Error::RetriesExhausted { task, attempts }) => {
            assert_eq!(task, "always");
            assert_eq!(attempts.len(), 3);
            for (i, a) in attempts.iter().enumerate() {
                assert!(a.contains(&format!("transient failure {}", i + 1)), "{a}");
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn retry_exceptions_can_match_the_panic() {
    let rt = rt2();
    let k = key();
    let r = rt
        .task(flaky)
        .retry_exceptions_matching(["transient"])
        .remote((k, 1));
    assert_eq!(r.get().unwrap(), 2);
    let k = key();
    let r = rt
        .task(fatal)
        .retry_exceptions_matching(["transient"])
        .remote(k);
    assert!(matches!(r.get(), Err(Error::TaskFailed { .. })));
    assert_eq!(
        ATTEMPTS.lock()[&k],
        1,
        "a panic that does not match is not retried"
    );
}

#[test]
fn a_task_whose_worker_dies_runs_again() {
    let rt = with_faults(Faults {
        kill_worker: Trigger::EveryNth(2),
        ..Faults::default()
    });
    let events = rt.events();
    let refs: Vec<_> = (0..10)
        .map(|i| rt.task(double).max_retries(-1).remote(i))
        .collect();
    assert_eq!(
        rt.get(&refs, Some(LONG)).unwrap(),
        (0..10).map(|i| i * 2).collect::<Vec<_>>()
    );
    let mut failed = 0;
    let mut restarted = 0;
    while let Ok(e) = events.recv_timeout(LONG) {
        match e {
            SupervisionEvent::Failed { child, cause } if child.starts_with("worker-") => {
                assert!(cause.contains("injected fault"));
                failed += 1;
            }
            SupervisionEvent::Restarted { child, .. } if child.starts_with("worker-") => {
                restarted += 1
            }
            _ => {}
        }
        if failed >= 5 && restarted >= 5 {
            break;
        }
    }
    assert!(
        failed >= 5 && restarted >= 5,
        "failed {failed}, restarted {restarted}"
    );
    let (live, _) = rt.worker_counts();
    assert_eq!(live, 2, "every dead worker was replaced");
}

#[test]
fn a_lost_result_is_computed_again() {
    // The worker dies after running the task, before reporting: the result is lost.
    let rt = with_faults(Faults {
        kill_worker: Trigger::EveryNth(2),
        kill_worker_at: FaultPoint::AfterRun,
        ..Faults::default()
    });
    let k = key();
    let first = rt.task(flaky).remote((k, 0));
    let second = rt.task(flaky).remote((k, 0));
    let got = [first.get().unwrap(), second.get().unwrap()];
    assert_eq!(
        ATTEMPTS.lock()[&k],
        3,
        "one task ran twice: its first result was lost"
    );
    assert_eq!(got.iter().max(), Some(&3));
}

#[test]
fn max_retries_zero_fails_with_worker_crashed() {
    let rt = with_faults(Faults {
        kill_worker: Trigger::EveryNth(1),
        ..Faults::default()
    });
    match rt.task(double).max_retries(0).remote(1).get() {
        Err(Error::WorkerCrashed { cause, .. }) => assert!(cause.contains("injected fault")),
        other => panic!("unexpected {other:?}"),
    }
    match rt.task(double).max_retries(2).remote(1).get() {
        Err(Error::RetriesExhausted { attempts, .. }) => {
            assert_eq!(attempts.len(), 3);
            assert!(attempts.iter().all(|a| a.contains("died")));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn chaos_ten_thousand_tasks_with_one_percent_of_workers_killed() {
    let rt = with_faults(Faults {
        kill_worker: Trigger::EveryNth(100),
        kill_worker_at: FaultPoint::AfterRun,
        ..Faults::default()
    });
    let events = rt.events();
    let refs: Vec<_> = (0..10_000u64)
        .map(|i| rt.task(double).max_retries(10).remote(i))
        .collect();
    let values = rt.get(&refs, Some(LONG * 4)).unwrap();
    for (i, v) in values.into_iter().enumerate() {
        assert_eq!(v, 2 * i as u64);
    }
    // The router reports each worker death as it handles it.
    let mut failures = 0;
    while failures < 99 {
        match events.recv_timeout(LONG) {
            Ok(SupervisionEvent::Failed { child, .. }) if child.starts_with("worker-") => {
                failures += 1
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        failures >= 99,
        "about 1% of executions were killed: {failures}"
    );
}

#[test]
fn a_worker_pool_that_fails_too_fast_gives_up_and_stops_the_runtime() {
    let rt = rayx::Builder::new()
        .num_workers(1)
        .worker_restart_intensity(2, std::time::Duration::from_secs(3600))
        .faults(Faults {
            kill_worker: Trigger::EveryNth(1),
            ..Faults::default()
        })
        .start()
        .unwrap();
    let events = rt.events();
    let r = rt.task(double).max_retries(-1).remote(1);
    assert_eq!(r.get_timeout(LONG), Err(Error::ShutDown));
    let gave_up = events
        .try_iter()
        .any(|e| matches!(e, SupervisionEvent::GaveUp { ref child, .. } if child == "worker pool"));
    assert!(gave_up);
    assert!(eventually(LONG, || rt.is_shut_down()));
}

// Actors.

struct Counter {
    n: u64,
    restarted: bool,
    log: Option<Arc<Mutex<Vec<u32>>>>,
}
impl Actor for Counter {}

/// A counter that logs the calls it runs and always comes back, resending
/// interrupted calls (`max_restarts` and `max_task_retries` -1).
fn immortal_logger(rt: &Runtime, log: &Arc<Mutex<Vec<u32>>>) -> ActorHandle<Counter> {
    let log = log.clone();
    rt.actor(move || Counter {
        n: 0,
        restarted: false,
        log: Some(log.clone()),
    })
    .max_restarts(-1)
    .max_task_retries(-1)
    .spawn()
    .unwrap()
}

fn counter() -> Counter {
    Counter {
        n: 0,
        restarted: false,
        log: None,
    }
}

#[derive(Serialize, Deserialize)]
struct Incr;
impl Message for Incr {
    type Reply = (u64, bool);
}
impl Handler<Incr> for Counter {
    fn handle(&mut self, _: Incr, ctx: &mut ActorContext<Self>) -> (u64, bool) {
        self.restarted = ctx.was_restarted();
        self.n += 1;
        (self.n, self.restarted)
    }
}

#[derive(Serialize, Deserialize)]
struct Boom;
impl Message for Boom {
    type Reply = ();
}
impl Handler<Boom> for Counter {
    fn handle(&mut self, _: Boom, _: &mut ActorContext<Self>) {
        panic!("counter exploded");
    }
}

/// Panics the first time it is handled for its key, succeeds after.
#[derive(Serialize, Deserialize)]
struct BoomOnce(u64);
impl Message for BoomOnce {
    type Reply = u32;
}
impl Handler<BoomOnce> for Counter {
    fn handle(&mut self, BoomOnce(k): BoomOnce, _: &mut ActorContext<Self>) -> u32 {
        let n = attempt(k);
        if n == 1 {
            panic!("first try fails");
        }
        n
    }
}

#[derive(Serialize, Deserialize)]
struct Log(u32);
impl Message for Log {
    type Reply = u32;
}
impl Handler<Log> for Counter {
    fn handle(&mut self, Log(seq): Log, _: &mut ActorContext<Self>) -> u32 {
        if let Some(log) = &self.log {
            log.lock().push(seq);
        }
        seq
    }
}

#[test]
fn actors_do_not_restart_by_default() {
    let rt = rt2();
    let c = rt.actor(counter).spawn().unwrap();
    assert!(c.call(Boom).get().is_err());
    match c.call(Incr).get() {
        Err(Error::ActorDied { cause, .. }) => {
            assert!(cause.contains("counter exploded"), "{cause}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_actor_restarts_within_max_restarts_then_gives_up() {
    let rt = rt2();
    let events = rt.events();
    let c = rt
        .actor(counter)
        .name("phoenix")
        .max_restarts(2)
        .spawn()
        .unwrap();
    assert_eq!(c.call(Incr).get().unwrap(), (1, false));
    for round in 1..=2 {
        match c.call(Boom).get() {
            Err(Error::ActorDied { cause, .. }) => assert!(cause.contains("restarts"), "{cause}"),
            other => panic!("unexpected {other:?}"),
        }
        // A fresh state from the constructor, which knows it is a restart.
        assert_eq!(c.call(Incr).get().unwrap(), (1, true), "round {round}");
    }
    assert!(c.call(Boom).get().is_err());
    match c.call(Incr).get() {
        Err(Error::ActorDied { cause, .. }) => {
            assert!(cause.contains("after 2 restarts"), "{cause}")
        }
        other => panic!("unexpected {other:?}"),
    }
    let seen: Vec<_> = events
        .try_iter()
        .filter(|e| !matches!(e, SupervisionEvent::Started { .. }))
        .collect();
    let restarts = seen
        .iter()
        .filter(|e| matches!(e, SupervisionEvent::Restarted { child, .. } if child == "phoenix"))
        .count();
    assert_eq!(restarts, 2);
    assert!(seen.iter().any(
        |e| matches!(e, SupervisionEvent::GaveUp { child, restarts: 2 } if child == "phoenix")
    ));
}

#[test]
fn at_most_once_calls_interrupted_by_a_crash_fail() {
    let rt = rt2();
    let c = rt.actor(counter).max_restarts(1).spawn().unwrap();
    let k = key();
    let crashed = c.call(BoomOnce(k));
    assert!(matches!(crashed.get(), Err(Error::ActorDied { .. })));
    assert_eq!(
        c.call(BoomOnce(k)).get().unwrap(),
        2,
        "later calls reach the restarted actor"
    );
}

#[test]
fn at_least_once_calls_are_sent_again_in_order() {
    let rt = rt2();
    let log = Arc::new(Mutex::new(Vec::new()));
    let c = immortal_logger(&rt, &log);
    let k = key();
    let before: Vec<_> = (0..10).map(|i| c.call(Log(i))).collect();
    let crashing = c.call(BoomOnce(k));
    let after: Vec<_> = (10..20).map(|i| c.call(Log(i))).collect();
    assert_eq!(crashing.get().unwrap(), 2, "sent again after the restart");
    assert_eq!(rt.get(&before, None).unwrap(), (0..10).collect::<Vec<_>>());
    assert_eq!(rt.get(&after, None).unwrap(), (10..20).collect::<Vec<_>>());
    assert_eq!(*log.lock(), (0..20).collect::<Vec<_>>());
}

#[test]
fn restart_and_kill() {
    let rt = rt2();
    let c = rt.actor(counter).max_restarts(5).spawn().unwrap();
    assert_eq!(c.call(Incr).get().unwrap(), (1, false));
    c.restart();
    assert_eq!(
        c.call(Incr).get().unwrap(),
        (1, true),
        "restart() ran the constructor again"
    );
    c.kill();
    assert!(
        matches!(c.call(Incr).get(), Err(Error::ActorDied { .. })),
        "kill() is for good"
    );
    let once = rt.actor(counter).spawn().unwrap();
    once.restart();
    assert!(
        matches!(once.call(Incr).get(), Err(Error::ActorDied { .. })),
        "no restarts allowed"
    );
}

#[test]
fn a_panicking_constructor_is_final_even_with_restarts() {
    let rt = rt2();
    let c = rt
        .actor(|| -> Counter { panic!("cannot build") })
        .max_restarts(-1)
        .spawn()
        .unwrap();
    match c.call(Incr).get() {
        Err(Error::ActorDied { cause, .. }) => assert!(cause.contains("constructor"), "{cause}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn chaos_an_actor_crashed_repeatedly_answers_every_call_in_order() {
    let rt = with_faults(Faults {
        crash_actor: Trigger::EveryNth(7),
        ..Faults::default()
    });
    let events = rt.events();
    let log = Arc::new(Mutex::new(Vec::new()));
    let c = immortal_logger(&rt, &log);
    let replies: Vec<_> = (0..1000).map(|i| c.call(Log(i))).collect();
    assert_eq!(
        rt.get(&replies, Some(LONG)).unwrap(),
        (0..1000).collect::<Vec<_>>()
    );
    assert_eq!(
        *log.lock(),
        (0..1000).collect::<Vec<_>>(),
        "each call ran once, in order"
    );
    let restarts = events
        .try_iter()
        .filter(|e| matches!(e, SupervisionEvent::Restarted { .. }))
        .count();
    assert!(restarts >= 140, "crashed about every 7th call: {restarts}");
}

// Cancellation.

#[test]
fn a_cancelled_queued_task_never_runs() {
    let rt = rayx::Builder::new().num_workers(1).start().unwrap();
    let g = common::gate();
    let busy = rt.task(held).remote(g);
    let k = key();
    let queued = rt.task(flaky).remote((k, 0));
    rt.cancel(&queued);
    assert!(matches!(
        queued.get(),
        Err(Error::Cancelled { forced: false, .. })
    ));
    common::open(g);
    assert_eq!(busy.get().unwrap(), g);
    // Run queue order: the cancelled task was taken (and skipped) before this one.
    assert_eq!(rt.task(double).remote(4).get().unwrap(), 8);
    assert!(!started(k), "the cancelled task never ran");
}

#[test]
fn a_running_task_sees_its_cancel() {
    let rt = rt2();
    let k = key();
    let r = rt.task(until_cancelled).remote((k, false));
    assert!(eventually(LONG, || started(k)));
    rt.cancel(&r);
    assert!(matches!(r.get(), Err(Error::Cancelled { .. })));
    assert!(
        eventually(LONG, || saw_cancel(k)),
        "the task saw rayx::cancelled()"
    );
    assert!(!rayx::cancelled(), "outside a task nothing is cancelled");
}

#[test]
fn cancelling_a_finished_task_changes_nothing() {
    let rt = rt2();
    let r = rt.task(double).remote(21);
    assert_eq!(r.get().unwrap(), 42);
    rt.cancel(&r);
    assert_eq!(r.get().unwrap(), 42);
}

#[test]
fn a_cancel_reaches_the_tasks_a_task_submitted() {
    let rt = rt2();
    let child = key();
    let parent = rt.task(parent_of).remote(child);
    assert!(eventually(LONG, || started(child)), "the child is running");
    rt.cancel(&parent);
    assert!(matches!(parent.get(), Err(Error::Cancelled { .. })));
    assert!(
        eventually(LONG, || saw_cancel(child)),
        "the child saw the cancel"
    );
}

#[test]
fn a_cancelled_task_is_never_retried() {
    let rt = rt2();
    let k = key();
    let r = rt
        .task(until_cancelled)
        .retry_exceptions(true)
        .max_retries(-1)
        .remote((k, true));
    assert!(eventually(LONG, || started(k)));
    rt.cancel(&r);
    assert!(eventually(LONG, || saw_cancel(k)));
    // Give a retry every chance to show up: one more task through each worker.
    let after: Vec<_> = (0..4).map(|i| rt.task(double).remote(i)).collect();
    rt.get(&after, Some(LONG)).unwrap();
    assert_eq!(ATTEMPTS.lock()[&k], 1, "ran once");
}

#[test]
fn a_forced_cancel_abandons_and_replaces_the_worker() {
    let rt = rayx::Builder::new().num_workers(1).start().unwrap();
    let (k, g) = (key(), common::gate());
    let stuck = rt.task(stuck_on).remote((k, g));
    assert!(
        eventually(LONG, || started(k)),
        "the task is running on the only worker"
    );
    let behind = rt.task(double).remote(1);
    rt.cancel_with(&stuck, true, true);
    assert_eq!(
        stuck.get(),
        Err(Error::Cancelled {
            task: stuck_name(&stuck),
            forced: true
        })
    );
    // A replacement worker runs what was queued behind the stuck task.
    assert_eq!(behind.get_timeout(LONG).unwrap(), 2);
    assert_eq!(
        rt.worker_counts(),
        (2, 1),
        "the abandoned worker counts as blocked"
    );
    common::open(g);
    // The abandoned worker retires once its code returns.
    assert!(
        eventually(LONG, || rt.worker_counts() == (1, 0)),
        "{:?}",
        rt.worker_counts()
    );
}

fn stuck_name<T>(r: &ObjectRef<T>) -> String {
    format!("task-{:x}", r.id().0)
}

// Lost objects and lineage.

/// A runtime that keeps lineage (the drop_object fault is on, but never fires
/// unless asked) and stores values over 1 KiB in the object store.
fn lineage_rt(drop_object: Trigger) -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .inline_threshold(1024)
        .faults(Faults {
            drop_object,
            ..Faults::default()
        })
        .start()
        .unwrap()
}

#[test]
fn a_lost_object_is_rebuilt_by_running_its_task_again() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let k = key();
    let r = rt.task(big).remote((k, 7));
    assert_eq!(r.get().unwrap(), vec![7; 4096]);
    assert!(rt.memory().lineage_bytes > 0);
    assert!(rt.lose_object(&r));
    assert_eq!(rt.memory().store_bytes, 0, "the value is gone");
    assert_eq!(r.get().unwrap(), vec![7; 4096], "rebuilt");
    assert_eq!(ATTEMPTS.lock()[&k], 2, "by running its task a second time");
    drop(r);
    assert!(eventually(LONG, || rt.memory()
        == rayx::MemoryUsage {
            store_capacity: rt.memory().store_capacity,
            ..Default::default()
        }));
}

#[test]
fn rebuilding_reaches_lost_arguments_too() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let (ka, kb) = (key(), key());
    let a = rt.task(big).remote((ka, 1));
    let b = rt.task(big).remote((kb, 2));
    let sum = rt.task(sum_of).remote((key(), &a));
    assert_eq!(sum.get().unwrap(), 4096);
    // Lose `a`; a new task that needs it waits while it is rebuilt.
    assert!(rt.lose_object(&a));
    assert_eq!(rt.task(sum_of).remote((key(), &a)).get().unwrap(), 4096);
    assert_eq!(ATTEMPTS.lock()[&ka], 2);
    // Lose `b` and the task built on it: reading that task's result runs it
    // again, and it first rebuilds `b`, its lost argument.
    let kh = key();
    let head = rt.task(sum_of).remote((kh, &b));
    assert_eq!(head.get().unwrap(), 2 * 4096);
    assert!(rt.lose_object(&b));
    assert!(rt.lose_object(&head));
    drop(b);
    assert_eq!(head.get().unwrap(), 2 * 4096);
    let runs = ATTEMPTS.lock();
    assert_eq!((runs[&kb], runs[&kh]), (2, 2));
}

#[test]
fn objects_lost_as_they_land_are_rebuilt_transparently() {
    let rt = lineage_rt(Trigger::EveryNth(3));
    let keys: Vec<u64> = (0..30).map(|_| key()).collect();
    let refs: Vec<_> = keys
        .iter()
        .map(|&k| rt.task(big).max_retries(-1).remote((k, 9)))
        .collect();
    for r in &refs {
        assert_eq!(r.get_timeout(LONG).unwrap(), vec![9; 4096]);
    }
    let reruns: u32 = keys.iter().map(|k| ATTEMPTS.lock()[k] - 1).sum();
    assert!(
        reruns >= 10,
        "about a third were lost and rebuilt: {reruns}"
    );
}

#[test]
fn a_lost_put_object_cannot_be_rebuilt() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let r = rt.put(vec![5u8; 4096]).unwrap();
    assert!(rt.lose_object(&r));
    match r.get() {
        Err(Error::ObjectLost { id }) => assert_eq!(id, r.id().to_string()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn rebuilding_stays_within_max_retries_and_the_lineage_budget() {
    let rt = lineage_rt(Trigger::EveryNth(u64::MAX));
    let r = rt.task(big).max_retries(1).remote((key(), 1));
    r.get().unwrap();
    assert!(rt.lose_object(&r));
    r.get().unwrap();
    assert!(rt.lose_object(&r));
    match r.get() {
        Err(Error::ObjectReconstructionFailed { cause, .. }) => {
            assert!(cause.contains("max_retries"), "{cause}")
        }
        other => panic!("unexpected {other:?}"),
    }

    let tight = rayx::Builder::new()
        .inline_threshold(1024)
        .max_lineage_bytes(10)
        .faults(Faults {
            drop_object: Trigger::EveryNth(u64::MAX),
            ..Faults::default()
        })
        .start()
        .unwrap();
    let r = tight.task(big).remote((key(), 1));
    r.get().unwrap();
    assert!(tight.lose_object(&r));
    match r.get() {
        Err(Error::ObjectReconstructionFailed { cause, .. }) => {
            assert!(cause.contains("max_lineage_bytes"), "{cause}")
        }
        other => panic!("unexpected {other:?}"),
    }
}

// The supervision tree.

/// Collects events until `last` arrives (or the wait runs out); returns them.
fn events_until(
    events: &std::sync::mpsc::Receiver<SupervisionEvent>,
    last: &SupervisionEvent,
) -> Vec<SupervisionEvent> {
    let mut seen = Vec::new();
    while let Ok(e) = events.recv_timeout(LONG) {
        let done = &e == last;
        seen.push(e);
        if done {
            break;
        }
    }
    seen
}

fn restarted(seen: &[SupervisionEvent]) -> Vec<String> {
    seen.iter()
        .filter_map(|e| match e {
            SupervisionEvent::Restarted { child, .. } if !child.starts_with("worker-") => {
                Some(child.clone())
            }
            _ => None,
        })
        .collect()
}

fn supervised(strategy: rayx::Strategy, max: usize) -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .supervision(strategy, max, std::time::Duration::from_secs(3600))
        .start()
        .unwrap()
}

#[test]
fn rest_for_one_restarts_the_failed_system_actor_and_those_after_it() {
    let rt = supervised(rayx::Strategy::RestForOne, 10);
    let events = rt.events();
    rt.inject_system_failure("object-store").unwrap();
    let last = SupervisionEvent::Restarted {
        child: "router".into(),
        attempt: 1,
    };
    let seen = events_until(&events, &last);
    assert!(seen.iter().any(|e| matches!(e, SupervisionEvent::Failed { child, cause } if child == "object-store" && cause.contains("injected"))));
    assert_eq!(restarted(&seen), vec!["object-store", "router"]);
    // The restarted router runs work on fresh workers.
    let refs: Vec<_> = (0..1000u64).map(|i| rt.task(double).remote(i)).collect();
    assert_eq!(
        rt.get(&refs, Some(LONG)).unwrap(),
        (0..1000).map(|i| i * 2).collect::<Vec<_>>()
    );
    assert!(
        eventually(LONG, || rt.worker_counts() == (2, 0)),
        "{:?}",
        rt.worker_counts()
    );
}

#[test]
fn one_for_one_restarts_only_the_failed_system_actor() {
    let rt = supervised(rayx::Strategy::OneForOne, 10);
    let events = rt.events();
    rt.inject_system_failure("object-store").unwrap();
    let first = SupervisionEvent::Restarted {
        child: "object-store".into(),
        attempt: 1,
    };
    let mut seen = events_until(&events, &first);
    rt.inject_system_failure("owner").unwrap();
    let last = SupervisionEvent::Restarted {
        child: "owner".into(),
        attempt: 2,
    };
    seen.extend(events_until(&events, &last));
    assert_eq!(restarted(&seen), vec!["object-store", "owner"]);
    assert_eq!(rt.task(double).remote(4).get().unwrap(), 8);
}

#[test]
fn one_for_all_restarts_every_system_actor() {
    let rt = supervised(rayx::Strategy::OneForAll, 10);
    let events = rt.events();
    rt.inject_system_failure("router").unwrap();
    let last = SupervisionEvent::Restarted {
        child: "router".into(),
        attempt: 1,
    };
    let seen = events_until(&events, &last);
    assert_eq!(restarted(&seen), vec!["owner", "object-store", "router"]);
    let refs: Vec<_> = (0..100u64).map(|i| rt.task(double).remote(i)).collect();
    assert_eq!(rt.get(&refs, Some(LONG)).unwrap().len(), 100);
}

#[test]
fn a_supervisor_past_its_restart_intensity_gives_up_and_the_runtime_stops() {
    let rt = supervised(rayx::Strategy::RestForOne, 1);
    let events = rt.events();
    let g = common::gate();
    let pending = rt.task(held).remote(g);
    rt.inject_system_failure("router").unwrap();
    let first = SupervisionEvent::Restarted {
        child: "router".into(),
        attempt: 1,
    };
    assert!(events_until(&events, &first).contains(&first));
    rt.inject_system_failure("owner").unwrap();
    let gave_up = SupervisionEvent::GaveUp {
        child: "supervisor".into(),
        restarts: 1,
    };
    assert!(events_until(&events, &gave_up).contains(&gave_up));
    assert_eq!(pending.get_timeout(LONG), Err(Error::ShutDown));
    assert!(eventually(LONG, || rt.is_shut_down()));
    common::open(g);
}

#[test]
fn only_system_actors_can_be_failed() {
    let rt = rt2();
    assert!(matches!(
        rt.inject_system_failure("nobody"),
        Err(Error::InvalidArgument(_))
    ));
}

// Owners.

fn read_through(r: ObjectRef<u64>) -> Result<u64, String> {
    r.get().map_err(|e| e.to_string())
}
fn to_u64_plus(x: u64) -> u64 {
    x + 1
}
rayx::remote!(read_through, to_u64_plus);

#[test]
fn refs_whose_owner_died_fail_with_owner_died() {
    let owner = rt2();
    let borrower = rt2();
    let g = common::gate();
    let owned = owner.task(held).remote(g);
    // A task of another runtime waits for it as an argument, another holds the ref.
    let dependent = borrower.task(to_u64_plus).remote(&owned);
    let reader = borrower.task(read_through).remote(owned.clone());
    owner.shutdown();
    match dependent.get_timeout(LONG) {
        Err(e) => assert!(matches!(e.root_cause(), Error::OwnerDied { .. }), "{e:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let text = reader.get_timeout(LONG).unwrap().unwrap_err();
    assert!(text.contains("owner"), "{text}");
    // Seen from the driver, whose runtime it was, it is the shutdown.
    assert_eq!(owned.get_timeout(LONG), Err(Error::ShutDown));
    common::open(g);
}
