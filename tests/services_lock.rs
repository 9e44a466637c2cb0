//! The lock service: grants, timeouts, FIFO order, fencing tokens, leases,
//! holders that die, restarts of the service under contention, and recorded
//! concurrent histories checked for linearizability and mutual exclusion.

mod common;

use common::linearizability::{check, check_partitioned, Clock, Model, Operation};
use common::LONG;
use parking_lot::Mutex;
use rayx::prelude::*;
use rayx::services::lock::{LockError, LockGuard, LockService};
use rayx::{Faults, SupervisionEvent, Trigger};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

const MINUTE: Duration = Duration::from_secs(60);

fn runtime() -> Runtime {
    rayx::Builder::new().num_workers(2).start().unwrap()
}

#[test]
fn acquire_release_and_try_acquire() {
    let rt = runtime();
    let locks = LockService::start(&rt, "basic").unwrap();
    let a = locks.acquire("a", MINUTE, LONG).unwrap();
    assert_eq!(a.name(), "a");
    assert!(locks.try_acquire("a", MINUTE).unwrap().is_none(), "held");
    let b = locks
        .try_acquire("b", MINUTE)
        .unwrap()
        .expect("another lock is free");
    let token = a.token();
    a.release().unwrap();
    let again = locks.try_acquire("a", MINUTE).unwrap().expect("released");
    assert!(again.token() > token);
    assert!(again.token() != b.token());
    let t = again.token();
    again.release().unwrap();
    let stale = locks.acquire("a", MINUTE, LONG).unwrap();
    stale.release().unwrap();
    drop(b);
    // The service is found by name too.
    let same = LockService::connect(&rt, "basic").unwrap();
    let g = same.acquire("a", MINUTE, LONG).unwrap();
    assert!(g.token() > t);
}

#[test]
fn a_lease_out_of_bounds_is_refused() {
    let rt = runtime();
    let locks = LockService::builder("bounds")
        .max_lease(Duration::from_secs(5))
        .start(&rt)
        .unwrap();
    for lease in [Duration::ZERO, Duration::from_secs(6)] {
        match locks.acquire("a", lease, LONG) {
            Err(LockError::InvalidLease { max, .. }) => assert_eq!(max, Duration::from_secs(5)),
            other => panic!("{lease:?}: {other:?}"),
        }
    }
}

#[test]
fn a_max_lease_past_a_day_is_refused_and_a_huge_lease_harms_nothing() {
    let rt = runtime();
    let events = rt.events();
    for max in [
        Duration::ZERO,
        Duration::from_secs(24 * 3600 + 1),
        Duration::MAX,
    ] {
        match LockService::builder("huge").max_lease(max).start(&rt) {
            Err(LockError::InvalidMaxLease { max_lease, limit }) => {
                assert_eq!((max_lease, limit), (max, Duration::from_secs(24 * 3600)));
            }
            other => panic!("max_lease {max:?}: {other:?}"),
        }
    }
    // A name its shards' records could not carry in their keys.
    let long = "l".repeat(rayx::services::MAX_SERVICE_NAME + 1);
    match LockService::builder(long).start(&rt) {
        Err(LockError::Rayx(Error::InvalidArgument(m))) => {
            assert!(m.contains("a lock service's name"), "{m}")
        }
        other => panic!("a name too long: {:?}", other.err()),
    }
    let day = Duration::from_secs(24 * 3600);
    let locks = LockService::builder("huge")
        .max_lease(day)
        .start(&rt)
        .unwrap();
    // Refused before anything is granted or stored: no shard crashes.
    for lease in [day + Duration::from_nanos(1), Duration::MAX] {
        assert!(
            matches!(
                locks.acquire("a", lease, LONG),
                Err(LockError::InvalidLease { max, .. }) if max == day
            ),
            "lease {lease:?}"
        );
    }
    let mut g = locks.acquire("a", day, LONG).unwrap();
    assert!(matches!(
        g.renew(Duration::MAX),
        Err(LockError::InvalidLease { .. })
    ));
    assert!(locks.try_acquire("a", day).unwrap().is_none(), "still held");
    let other = locks.try_acquire("b", Duration::from_secs(1)).unwrap();
    assert!(
        other.is_some(),
        "the shard grants at once: it never restarted"
    );
    g.release().unwrap();
    let failed = events
        .try_iter()
        .filter(|e| matches!(e, SupervisionEvent::Failed { child, .. } if child.contains("huge/")))
        .count();
    assert_eq!(failed, 0, "a shard failed");
}

#[test]
fn reopening_with_other_settings_is_refused() {
    let rt = runtime();
    let _first = LockService::builder("reopen")
        .max_lease(Duration::from_secs(5))
        .start(&rt)
        .unwrap();
    match LockService::builder("reopen")
        .max_lease(Duration::from_secs(600))
        .start(&rt)
    {
        Err(LockError::SettingsDiffer {
            service,
            setting,
            running,
            asked,
        }) => assert_eq!(
            (service.as_str(), setting, running.as_str(), asked.as_str()),
            ("reopen", "max_lease", "5s", "600s")
        ),
        other => panic!("{other:?}"),
    }
    match LockService::builder("reopen")
        .max_lease(Duration::from_secs(5))
        .shards(2)
        .start(&rt)
    {
        Err(LockError::SettingsDiffer { setting, .. }) => assert_eq!(setting, "shards"),
        other => panic!("{other:?}"),
    }
    // The same settings join the running service.
    let same = LockService::builder("reopen")
        .max_lease(Duration::from_secs(5))
        .start(&rt)
        .unwrap();
    assert!(matches!(
        same.acquire("x", Duration::from_secs(60), LONG),
        Err(LockError::InvalidLease { max, .. }) if max == Duration::from_secs(5)
    ));
}

#[test]
fn a_clean_stop_and_reopen_grants_at_once() {
    let rt = runtime();
    let hour = Duration::from_secs(3600);
    let start = || {
        LockService::builder("clean")
            .max_lease(hour)
            .start(&rt)
            .unwrap()
    };
    let locks = start();
    let g = locks.acquire("a", hour, LONG).unwrap();
    let token = g.token();
    g.release().unwrap();
    // The last handle: the shard stops, with nothing held.
    drop(locks);
    assert!(
        common::eventually(LONG, || LockService::connect(&rt, "clean").is_err()),
        "the shard stopped with its last handle"
    );
    // Its state goes just after its name; a reopen before that may find
    // nothing recorded and wait out the hour. A reopen after it does not.
    let mut again = None;
    assert!(
        common::eventually(LONG, || {
            again = start().try_acquire("a", hour).unwrap();
            again.is_some()
        }),
        "a reopened service refused the free lock"
    );
    assert!(again.unwrap().token() > token, "tokens never go back");
}

#[test]
fn a_crash_with_a_holder_keeps_the_quiet_period() {
    // The shard crashes before every second call it takes.
    let rt = rayx::Builder::new()
        .num_workers(2)
        .faults(Faults {
            crash_actor: Trigger::EveryNth(2),
            ..Faults::default()
        })
        .start()
        .unwrap();
    let locks = LockService::start(&rt, "crash-held").unwrap();
    let held = locks.acquire("a", MINUTE, LONG).unwrap();
    // Crashes the incarnation that granted `a`; the new one must not grant it.
    assert!(locks.try_acquire("a", MINUTE).unwrap().is_none());
    // Crashes that new one, still in its quiet period with nothing held of
    // its own: the next still waits out its predecessors' leases.
    assert!(locks.try_acquire("b", MINUTE).unwrap().is_none());
    drop(held);
}

#[test]
fn an_acquire_times_out_and_leaves_the_queue() {
    let rt = runtime();
    let locks = LockService::start(&rt, "timeout").unwrap();
    let held = locks.acquire("a", MINUTE, LONG).unwrap();
    let started = Instant::now();
    match locks.acquire("a", MINUTE, Duration::from_millis(100)) {
        Err(LockError::Timeout { name, timeout }) => {
            assert_eq!((name.as_str(), timeout), ("a", Duration::from_millis(100)));
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(matches!(
        locks.acquire("a", MINUTE, Duration::ZERO),
        Err(LockError::Timeout { .. })
    ));
    held.release().unwrap();
    // The waiter that timed out is gone: the lock is free, not handed to it.
    assert!(locks.try_acquire("a", MINUTE).unwrap().is_some());
}

/// Polls `fut` once: an `acquire_async` sends its call on its first poll.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn waiters_are_granted_in_fifo_order() {
    let rt = runtime();
    let locks = LockService::start(&rt, "fifo").unwrap();
    let held = locks.acquire("a", MINUTE, LONG).unwrap();
    // Sent one after another from this thread, so they arrive in this order.
    let mut waiters: Vec<_> = (0..8)
        .map(|_| Box::pin(locks.acquire_async("a", MINUTE, LONG)))
        .collect();
    for w in &mut waiters {
        assert!(poll_once(w).is_pending(), "held: it waits");
    }
    let order = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = waiters
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let order = order.clone();
            std::thread::spawn(move || {
                let guard = futures::executor::block_on(w).unwrap();
                order.lock().push((i, guard.token()));
                guard.release().unwrap();
            })
        })
        .collect();
    held.release().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let order = order.lock().clone();
    let who: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        who,
        (0..8).collect::<Vec<_>>(),
        "granted in the order they asked"
    );
    assert!(
        order.windows(2).all(|w| w[0].1 < w[1].1),
        "tokens increase: {order:?}"
    );
}

#[test]
fn tokens_increase_with_every_grant() {
    let rt = runtime();
    let locks = LockService::builder("tokens").shards(3).start(&rt).unwrap();
    let mut last = std::collections::HashMap::new();
    for round in 0..200 {
        let name = format!("lock-{}", round % 7);
        let g = locks.acquire(&name, MINUTE, LONG).unwrap();
        if let Some(prev) = last.insert(name.clone(), g.token()) {
            assert!(g.token() > prev, "{name}: {} after {prev}", g.token());
        }
        if round % 2 == 0 {
            g.release().unwrap();
        } else {
            drop(g);
        }
    }
}

#[test]
fn an_async_acquire_waits_and_is_granted() {
    let rt = runtime();
    let locks = LockService::start(&rt, "async").unwrap();
    let held = locks.acquire("a", MINUTE, LONG).unwrap();
    let mut waiting = Box::pin(locks.acquire_async("a", MINUTE, LONG));
    assert!(poll_once(&mut waiting).is_pending(), "held: it waits");
    // Awaited on a tokio runtime of its own, as a service would.
    let waiter = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(waiting)
    });
    let first = held.token();
    held.release().unwrap();
    let g = waiter.join().unwrap().unwrap();
    assert!(g.token() > first);
}

#[test]
fn a_dropped_async_acquire_is_withdrawn() {
    let rt = runtime();
    let locks = LockService::start(&rt, "withdrawn").unwrap();
    let held = locks.acquire("a", MINUTE, LONG).unwrap();
    let mut waiting = Box::pin(locks.acquire_async("a", MINUTE, MINUTE));
    assert!(poll_once(&mut waiting).is_pending());
    drop(waiting); // cancels its call: it leaves the queue, or hands a late grant back
    held.release().unwrap();
    // Not left with a holder nobody has: granted well before its minute-long lease.
    let g = locks.acquire("a", MINUTE, Duration::from_secs(20)).unwrap();
    g.release().unwrap();
}

#[test]
fn an_expired_lease_frees_the_lock() {
    let rt = runtime();
    let locks = LockService::start(&rt, "expiry").unwrap();
    let lease = Duration::from_millis(200);
    let mut stale = locks.acquire("a", lease, LONG).unwrap();
    // Blocks until the lease ends: the sweeper hands the lock to this waiter.
    let next = locks.acquire("a", MINUTE, LONG).unwrap();
    assert!(
        Instant::now() >= stale.expires_at(),
        "not before the lease ended"
    );
    assert!(next.token() > stale.token());
    assert!(matches!(
        stale.renew(MINUTE),
        Err(LockError::NotHeld { token, .. }) if token == stale.token()
    ));
    assert!(matches!(stale.release(), Err(LockError::NotHeld { .. })));
    // The stale guard's release changed nothing: `next` still holds it.
    assert!(locks.try_acquire("a", MINUTE).unwrap().is_none());
    next.release().unwrap();
}

#[test]
fn renewing_keeps_the_lock_past_its_first_lease() {
    let rt = runtime();
    let locks = LockService::start(&rt, "renew").unwrap();
    // Long enough that the renewal comes before it ends, even on a busy machine.
    let first = Duration::from_secs(1);
    let mut g = locks.acquire("a", first, LONG).unwrap();
    // The service granted it before this, so its first lease ends by then.
    let first_end = Instant::now() + first;
    g.renew(MINUTE).unwrap();
    assert!(g.expires_at() > first_end);
    assert!(common::eventually(LONG, || Instant::now() > first_end));
    assert!(
        locks.try_acquire("a", MINUTE).unwrap().is_none(),
        "still held past its first lease"
    );
    g.release().unwrap();
}

fn hold_and_panic(locks: LockService) -> u64 {
    let g = locks.acquire("a", MINUTE, LONG).unwrap();
    panic!("holding token {}", g.token());
}
rayx::remote!(hold_and_panic);

#[test]
fn a_task_that_panics_frees_its_lock() {
    let rt = runtime();
    let locks = LockService::start(&rt, "panicking-task").unwrap();
    let failed = rt.task(hold_and_panic).remote(locks.clone()).get();
    assert!(
        matches!(&failed, Err(Error::TaskFailed { cause, .. }) if cause.contains("holding token")),
        "{failed:?}"
    );
    // Its guard was dropped as it unwound: free long before the minute lease.
    let g = locks.acquire("a", MINUTE, Duration::from_secs(20)).unwrap();
    g.release().unwrap();
}

struct Holder {
    guard: Option<LockGuard>,
}
impl Actor for Holder {}

#[derive(Serialize, Deserialize)]
struct Take(LockService);
impl Message for Take {
    type Reply = u64;
}
impl Handler<Take> for Holder {
    fn handle(&mut self, Take(locks): Take, _: &mut ActorContext<Self>) -> u64 {
        let g = locks.acquire("a", MINUTE, LONG).unwrap();
        let token = g.token();
        self.guard = Some(g);
        token
    }
}

#[test]
fn a_killed_actor_frees_its_lock() {
    let rt = runtime();
    let locks = LockService::start(&rt, "killed-actor").unwrap();
    let holder = rt.actor(|| Holder { guard: None }).spawn().unwrap();
    let token = holder.call(Take(locks.clone())).get().unwrap();
    assert!(
        locks.try_acquire("a", MINUTE).unwrap().is_none(),
        "the actor holds it"
    );
    holder.kill();
    let g = locks.acquire("a", MINUTE, Duration::from_secs(20)).unwrap();
    assert!(g.token() > token);
}

// ---- histories ----

/// A critical section: what a holder did while it believed it held the lock.
#[derive(Debug, Clone)]
struct Section {
    lock: String,
    token: u64,
    /// After the acquire returned, and before the release was sent.
    start: Instant,
    end: Instant,
    /// The guard's (conservative) lease end.
    expires: Instant,
}

/// Mutual exclusion: sections of one lock never overlap, except after the
/// earlier holder's lease ended; and tokens follow the order of the sections
/// (with the same exception).
fn check_mutual_exclusion(sections: &[Section]) {
    let mut by_lock: std::collections::BTreeMap<&str, Vec<&Section>> = Default::default();
    for s in sections {
        by_lock.entry(&s.lock).or_default().push(s);
    }
    for (lock, mut list) in by_lock {
        list.sort_by_key(|s| s.token);
        for w in list.windows(2) {
            let (a, b) = (w[0], w[1]);
            assert!(a.token < b.token, "{lock}: token {} granted twice", a.token);
            // A holder stalled past its whole lease (a loaded machine) may
            // begin after the next one: only once its lease had ended.
            assert!(
                a.start < b.start || b.start >= a.expires,
                "{lock}: token {} began after {} while its lease ran",
                a.token,
                b.token
            );
            let overlapped = b.start < a.end;
            assert!(
                !overlapped || a.end > a.expires,
                "{lock}: tokens {} and {} held at once, and {} had not outrun its lease",
                a.token,
                b.token,
                a.token
            );
        }
    }
}

/// A lock's sequential specification: free or held with a token, and the
/// largest token granted so far (each grant's must be larger).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
struct LockModel {
    holder: Option<u64>,
    last: u64,
}

#[derive(Debug, Clone)]
enum LockOp {
    Acquire(String),
    TryAcquire(String),
    Release(String, u64),
}

#[derive(Debug, Clone)]
enum LockRet {
    Granted(u64),
    Busy,
    Released,
    NotHeld,
}

impl Model for LockModel {
    type Op = LockOp;
    type Ret = LockRet;
    fn step(&self, op: &LockOp, ret: &LockRet) -> Option<Self> {
        match (op, ret) {
            (LockOp::Acquire(_) | LockOp::TryAcquire(_), LockRet::Granted(t)) => {
                (self.holder.is_none() && *t > self.last).then_some(LockModel {
                    holder: Some(*t),
                    last: *t,
                })
            }
            (LockOp::TryAcquire(_), LockRet::Busy) => self.holder.is_some().then(|| self.clone()),
            (LockOp::Release(_, t), LockRet::Released) => {
                (self.holder == Some(*t)).then_some(LockModel {
                    holder: None,
                    last: self.last,
                })
            }
            (LockOp::Release(_, t), LockRet::NotHeld) => {
                (self.holder != Some(*t)).then(|| self.clone())
            }
            _ => None,
        }
    }
}

fn lock_of(op: &LockOp) -> String {
    match op {
        LockOp::Acquire(l) | LockOp::TryAcquire(l) | LockOp::Release(l, _) => l.clone(),
    }
}

type History = Vec<Operation<LockOp, LockRet>>;

/// Runs `clients` threads, each doing `rounds` of: take one of `locks`
/// (blocking or trying), hold it briefly, release it. Records every
/// operation with its call and return times, and every critical section.
fn record(
    locks: &LockService,
    clients: usize,
    rounds: usize,
    names: &[&str],
    lease: Duration,
) -> (History, Vec<Section>) {
    let clock = Clock::default();
    let history = Arc::new(Mutex::new(Vec::new()));
    let sections = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (locks, history, sections) = (locks.clone(), history.clone(), sections.clone());
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (client as u64 + 1);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                for _ in 0..rounds {
                    let name = names[next() as usize % names.len()].clone();
                    let trying = next() % 3 == 0;
                    let call = clock.now();
                    let (op, guard) = if trying {
                        (
                            LockOp::TryAcquire(name.clone()),
                            locks.try_acquire(&name, lease).unwrap(),
                        )
                    } else {
                        (
                            LockOp::Acquire(name.clone()),
                            Some(locks.acquire(&name, lease, LONG).unwrap()),
                        )
                    };
                    let returned = clock.now();
                    let ret = guard
                        .as_ref()
                        .map_or(LockRet::Busy, |g| LockRet::Granted(g.token()));
                    history.lock().push(Operation {
                        client,
                        op,
                        ret,
                        call,
                        returned,
                    });
                    let Some(guard) = guard else { continue };
                    let start = Instant::now();
                    for _ in 0..next() % 200 {
                        std::hint::spin_loop();
                    }
                    let section = Section {
                        lock: name.clone(),
                        token: guard.token(),
                        start,
                        end: Instant::now(),
                        expires: guard.expires_at(),
                    };
                    let token = guard.token();
                    let call = clock.now();
                    let ret = match guard.release() {
                        Ok(()) => LockRet::Released,
                        Err(LockError::NotHeld { .. }) => LockRet::NotHeld,
                        Err(e) => panic!("release: {e}"),
                    };
                    let returned = clock.now();
                    sections.lock().push(section);
                    history.lock().push(Operation {
                        client,
                        op: LockOp::Release(name, token),
                        ret,
                        call,
                        returned,
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let history = history.lock().clone();
    let sections = sections.lock().clone();
    (history, sections)
}

#[test]
fn concurrent_histories_are_linearizable() {
    let rt = runtime();
    let locks = LockService::builder("linearizable")
        .shards(2)
        .start(&rt)
        .unwrap();
    // Leases long enough never to end here: the plain lock model applies.
    let (history, sections) = record(&locks, 8, 40, &["x", "y", "z"], MINUTE);
    assert!(history.len() >= 8 * 40);
    check_partitioned(&LockModel::default(), &history, lock_of).unwrap();
    check_mutual_exclusion(&sections);
    // Every release found its grant: nothing expired.
    assert!(history.iter().all(|o| !matches!(o.ret, LockRet::NotHeld)));
}

#[test]
fn restarts_of_the_service_under_contention_never_grant_twice() {
    // Every 23rd call of any actor crashes it first (the shard restarts, the
    // call is sent again); the shard then waits out the longest lease.
    let rt = rayx::Builder::new()
        .num_workers(2)
        .faults(Faults {
            crash_actor: Trigger::EveryNth(23),
            ..Faults::default()
        })
        .start()
        .unwrap();
    let events = rt.events();
    let locks = LockService::builder("restarts")
        .max_lease(Duration::from_secs(1))
        .start(&rt)
        .unwrap();
    let (history, sections) = record(&locks, 6, 25, &["hot"], Duration::from_millis(250));
    check_mutual_exclusion(&sections);
    let tokens: Vec<u64> = history
        .iter()
        .filter_map(|o| match o.ret {
            LockRet::Granted(t) => Some(t),
            _ => None,
        })
        .collect();
    let unique: std::collections::HashSet<_> = tokens.iter().collect();
    assert_eq!(unique.len(), tokens.len(), "a token was granted twice");
    let restarts = events
        .try_iter()
        .filter(|e| matches!(e, SupervisionEvent::Restarted { child, .. } if child.contains("restarts/0")))
        .count();
    assert!(restarts >= 3, "the shard restarted {restarts} times");
    // A holder the new incarnation does not know finds it NotHeld; some did.
    let lost = history
        .iter()
        .filter(|o| matches!(o.ret, LockRet::NotHeld))
        .count();
    println!(
        "{} grants, {restarts} restarts, {lost} releases after a restart",
        tokens.len()
    );
}

// ---- the checker itself ----

fn op(
    client: usize,
    op: LockOp,
    ret: LockRet,
    call: u64,
    returned: u64,
) -> Operation<LockOp, LockRet> {
    Operation {
        client,
        op,
        ret,
        call,
        returned,
    }
}

#[test]
fn the_checker_accepts_a_concurrent_history_and_rejects_a_double_grant() {
    let a = || LockOp::Acquire("l".into());
    // Two acquires overlap in time; either order explains the results.
    let ok = vec![
        op(0, a(), LockRet::Granted(2), 0, 10),
        op(1, a(), LockRet::Granted(1), 1, 30),
        op(1, LockOp::Release("l".into(), 1), LockRet::Released, 2, 5),
        op(0, LockOp::Release("l".into(), 2), LockRet::Released, 31, 40),
    ];
    let order = check(&LockModel::default(), &ok).unwrap();
    assert_eq!(order, vec![1, 2, 0, 3]);
    // Both granted while neither released: no order explains it.
    let double = vec![
        op(0, a(), LockRet::Granted(1), 0, 10),
        op(1, a(), LockRet::Granted(2), 1, 11),
        op(0, LockOp::Release("l".into(), 1), LockRet::Released, 20, 21),
        op(1, LockOp::Release("l".into(), 2), LockRet::Released, 22, 23),
    ];
    let err = check(&LockModel::default(), &double).unwrap_err();
    assert!(err.contains("not linearizable"), "{err}");
    // A token that goes back, granted strictly after a larger one: rejected.
    let back = vec![
        op(0, a(), LockRet::Granted(5), 0, 1),
        op(0, LockOp::Release("l".into(), 5), LockRet::Released, 2, 3),
        op(1, a(), LockRet::Granted(4), 4, 5),
    ];
    assert!(check(&LockModel::default(), &back).is_err());
    // A try that saw the lock busy when nobody could have held it: rejected.
    let busy = vec![
        op(0, a(), LockRet::Granted(1), 0, 1),
        op(0, LockOp::Release("l".into(), 1), LockRet::Released, 2, 3),
        op(1, LockOp::TryAcquire("l".into()), LockRet::Busy, 4, 5),
    ];
    assert!(check(&LockModel::default(), &busy).is_err());
}

#[test]
fn the_checker_handles_hundreds_of_overlapping_operations() {
    // 8 clients, 50 rounds each, every operation overlapping its neighbours
    // by a lot: the memoized search stays fast.
    let mut history = Vec::new();
    let mut t = 0;
    let mut token = 0;
    for _ in 0..50 {
        for client in 0..8 {
            token += 1;
            history.push(op(
                client,
                LockOp::Acquire("l".into()),
                LockRet::Granted(token),
                t,
                t + 3,
            ));
            history.push(op(
                client,
                LockOp::Release("l".into(), token),
                LockRet::Released,
                t + 4,
                t + 7,
            ));
            history.push(op(
                (client + 1) % 8,
                LockOp::TryAcquire("l".into()),
                LockRet::Busy,
                t,
                t + 7,
            ));
            t += 5;
        }
    }
    let started = Instant::now();
    check(&LockModel::default(), &history).unwrap();
    println!(
        "{} operations checked in {:?}",
        history.len(),
        started.elapsed()
    );
}
