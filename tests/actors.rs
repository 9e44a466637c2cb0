//! Actors: ordering, async actors, names, kill, handles, lifetimes, failures.

mod common;

use common::{eventually, gate, open, pass, LONG};
use rayx::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

fn rt2() -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .start()
        .expect("runtime starts")
}

struct Log {
    seen: Vec<(u32, u32)>,
    dropped: Option<Arc<AtomicBool>>,
}
impl Actor for Log {
    fn stopped(&mut self) {
        if let Some(flag) = &self.dropped {
            flag.store(true, Ordering::SeqCst);
        }
    }
}
impl Log {
    fn new() -> Self {
        Log {
            seen: Vec::new(),
            dropped: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Record(u32, u32);
impl Message for Record {
    type Reply = usize;
}
impl Handler<Record> for Log {
    fn handle(&mut self, Record(caller, seq): Record, _: &mut ActorContext<Self>) -> usize {
        self.seen.push((caller, seq));
        self.seen.len()
    }
}

#[derive(Serialize, Deserialize)]
struct Seen;
impl Message for Seen {
    type Reply = Vec<(u32, u32)>;
}
impl Handler<Seen> for Log {
    fn handle(&mut self, _: Seen, _: &mut ActorContext<Self>) -> Vec<(u32, u32)> {
        self.seen.clone()
    }
}

#[derive(Serialize, Deserialize)]
struct Hold(u64);
impl Message for Hold {
    type Reply = u64;
}
impl Handler<Hold> for Log {
    fn handle(&mut self, Hold(g): Hold, _: &mut ActorContext<Self>) -> u64 {
        pass(g)
    }
}

#[derive(Serialize, Deserialize)]
struct Crash;
impl Message for Crash {
    type Reply = ();
}
impl Handler<Crash> for Log {
    fn handle(&mut self, _: Crash, _: &mut ActorContext<Self>) {
        panic!("log crashed on purpose");
    }
}

#[derive(Serialize, Deserialize)]
struct StopSelf;
impl Message for StopSelf {
    type Reply = String;
}
impl Handler<StopSelf> for Log {
    fn handle(&mut self, _: StopSelf, ctx: &mut ActorContext<Self>) -> String {
        ctx.stop();
        ctx.name().unwrap_or("anonymous").to_string()
    }
}

#[test]
fn a_thousand_calls_run_in_order() {
    let rt = rt2();
    let log = rt.actor(Log::new).spawn().unwrap();
    let replies: Vec<ObjectRef<usize>> = (0..1000).map(|i| log.call(Record(0, i))).collect();
    assert_eq!(
        rt.get(&replies, None).unwrap(),
        (1..=1000).collect::<Vec<_>>()
    );
    let seen = log.call(Seen).get().unwrap();
    assert_eq!(seen, (0..1000).map(|i| (0, i)).collect::<Vec<_>>());
}

#[test]
fn calls_from_each_caller_keep_their_order() {
    let rt = rt2();
    let log = rt.actor(Log::new).spawn().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|caller| {
            let log = log.clone();
            std::thread::spawn(move || {
                let calls: Vec<_> = (0..500).map(|i| log.call(Record(caller, i))).collect();
                let last = calls.last().unwrap();
                last.get_timeout(LONG).unwrap()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = log.call(Seen).get().unwrap();
    assert_eq!(seen.len(), 2000);
    for caller in 0..4 {
        let mine: Vec<u32> = seen
            .iter()
            .filter(|(c, _)| *c == caller)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(mine, (0..500).collect::<Vec<_>>(), "caller {caller}");
    }
}

#[test]
fn named_actors_are_found_and_unique() {
    let rt = rt2();
    let a = rt.actor(Log::new).name("log").spawn().unwrap();
    a.call(Record(9, 9)).get().unwrap();
    let found = rt.get_actor::<Log>("log").unwrap();
    assert_eq!(found.id(), a.id());
    assert_eq!(found.call(Seen).get().unwrap(), vec![(9, 9)]);

    match rt.actor(Log::new).name("log").spawn() {
        Err(Error::ActorNameTaken { name, .. }) => assert_eq!(name, "log"),
        other => panic!("unexpected {other:?}"),
    }
    let same = rt
        .actor(Log::new)
        .name("log")
        .get_if_exists()
        .spawn()
        .unwrap();
    assert_eq!(same.id(), a.id());

    let other_ns = rt
        .actor(Log::new)
        .name("log")
        .namespace("other")
        .spawn()
        .unwrap();
    assert_ne!(other_ns.id(), a.id());
    assert_eq!(
        rt.get_actor_in::<Log>("other", "log").unwrap().id(),
        other_ns.id()
    );

    assert!(matches!(
        rt.get_actor::<Log>("nobody"),
        Err(Error::ActorNotFound { .. })
    ));
    assert!(matches!(
        rt.get_actor::<Pinger>("log"),
        Err(Error::TypeMismatch { .. })
    ));
}

#[test]
fn kill_fails_queued_and_later_calls() {
    let rt = rt2();
    let log = rt.actor(Log::new).name("doomed").spawn().unwrap();
    let g = gate();
    let running = log.call(Hold(g));
    assert!(
        eventually(LONG, || log.queued() == 0),
        "the held call is running"
    );
    let queued = log.call(Record(0, 0));
    log.kill();
    open(g);
    // The running call finishes; what was queued, and what comes later, fails.
    assert_eq!(running.get_timeout(LONG).unwrap(), g);
    for r in [queued, log.call(Record(0, 1))] {
        match r.get_timeout(LONG) {
            Err(Error::ActorDied { actor, cause }) => {
                assert_eq!(actor, "doomed");
                assert!(cause.contains("kill"), "{cause}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(log.is_dead());
    assert!(matches!(
        rt.get_actor::<Log>("doomed"),
        Err(Error::ActorNotFound { .. })
    ));
    // The name is free again.
    assert!(rt.actor(Log::new).name("doomed").spawn().is_ok());
}

#[test]
fn a_panicking_handler_kills_the_actor_with_its_cause() {
    let rt = rt2();
    let log = rt.actor(Log::new).spawn().unwrap();
    let before = log.call(Record(0, 0));
    let crash = log.call(Crash);
    let after = log.call(Record(0, 1));
    assert_eq!(before.get().unwrap(), 1);
    for r in [crash.get().unwrap_err(), after.get().unwrap_err()] {
        match r {
            Error::ActorDied { cause, .. } => {
                assert!(cause.contains("log crashed on purpose"), "{cause}")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // The runtime carries on.
    let other = rt.actor(Log::new).spawn().unwrap();
    assert_eq!(other.call(Record(1, 1)).get().unwrap(), 1);
}

#[test]
fn a_panicking_constructor_fails_every_call() {
    let rt = rt2();
    let log = rt
        .actor(|| -> Log { panic!("no state today") })
        .spawn()
        .unwrap();
    match log.call(Seen).get() {
        Err(Error::ActorDied { cause, .. }) => assert!(cause.contains("no state today"), "{cause}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_actor_can_stop_itself() {
    let rt = rt2();
    let log = rt.actor(Log::new).name("quitter").spawn().unwrap();
    assert_eq!(log.call(StopSelf).get().unwrap(), "quitter");
    assert!(matches!(log.call(Seen).get(), Err(Error::ActorDied { .. })));
}

#[test]
fn state_is_freed_when_killed_or_unreferenced() {
    let rt = rt2();
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let killed = rt
        .actor(move || Log {
            seen: vec![],
            dropped: Some(f.clone()),
        })
        .spawn()
        .unwrap();
    killed.call(Record(0, 0)).get().unwrap();
    killed.kill();
    assert!(
        eventually(LONG, || flag.load(Ordering::SeqCst)),
        "killed actor's state dropped"
    );

    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let held = rt.put(vec![0u8; 1 << 20]).unwrap();
    let h = held.clone();
    let dropped = rt
        .actor(move || {
            let _keep = h.clone();
            Log {
                seen: vec![],
                dropped: Some(f.clone()),
            }
        })
        .spawn()
        .unwrap();
    dropped.call(Record(0, 0)).get().unwrap();
    drop(dropped);
    assert!(
        eventually(LONG, || flag.load(Ordering::SeqCst)),
        "unreferenced actor's state dropped"
    );
    drop(held);
    assert!(eventually(LONG, || rt.memory().objects == 0));
}

#[test]
fn a_detached_actor_lives_without_handles() {
    let rt = rt2();
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let h = rt
        .actor(move || Log {
            seen: vec![],
            dropped: Some(f.clone()),
        })
        .name("keeper")
        .detached()
        .spawn()
        .unwrap();
    h.call(Record(3, 3)).get().unwrap();
    drop(h);
    let again = rt.get_actor::<Log>("keeper").unwrap();
    assert_eq!(again.call(Seen).get().unwrap(), vec![(3, 3)]);
    assert!(!flag.load(Ordering::SeqCst));
    rt.kill(&again);
    drop(again);
    assert!(eventually(LONG, || flag.load(Ordering::SeqCst)));
}

// Handles passed into tasks and other actors.

fn record_from_task(log: ActorHandle<Log>, n: u32) -> usize {
    let calls: Vec<_> = (0..n).map(|i| log.call(Record(7, i))).collect();
    let last = calls.last().expect("n > 0");
    last.get().expect("reply")
}
rayx::remote!(record_from_task);

struct Forwarder {
    to: ActorHandle<Log>,
}
impl Actor for Forwarder {}

#[derive(Serialize, Deserialize)]
struct Forward(u32);
impl Message for Forward {
    type Reply = usize;
}
impl Handler<Forward> for Forwarder {
    fn handle(&mut self, Forward(i): Forward, _: &mut ActorContext<Self>) -> usize {
        self.to.call(Record(8, i)).get().expect("forwarded reply")
    }
}

#[test]
fn handles_pass_into_tasks_and_actors() {
    let rt = rt2();
    let log = rt.actor(Log::new).spawn().unwrap();
    assert_eq!(
        rt.task(record_from_task)
            .remote((log.clone(), 10))
            .get()
            .unwrap(),
        10
    );
    let to = log.clone();
    let fwd = rt
        .actor(move || Forwarder { to: to.clone() })
        .spawn()
        .unwrap();
    assert_eq!(fwd.call(Forward(0)).get().unwrap(), 11);
    let bytes = rt.encode(&log).unwrap();
    let back: ActorHandle<Log> = rt.decode(&bytes).unwrap();
    assert_eq!(back.call(Seen).get().unwrap().len(), 11);
}

// Async actors.

struct Pinger {
    in_flight: AtomicUsize,
    max_seen: AtomicUsize,
    all_in: tokio::sync::Notify,
    expect: usize,
}
impl Actor for Pinger {
    const ASYNC: bool = true;
}

#[derive(Serialize, Deserialize)]
struct Ping;
impl Message for Ping {
    type Reply = usize;
}
impl AsyncHandler<Ping> for Pinger {
    async fn handle(self: Arc<Self>, _: Ping, _: AsyncContext<Self>) -> usize {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_seen.fetch_max(now, Ordering::SeqCst);
        if now >= self.expect {
            self.all_in.notify_waiters();
        } else {
            // Wait until `expect` calls are in flight at once.
            let notified = self.all_in.notified();
            if self.in_flight.load(Ordering::SeqCst) < self.expect {
                notified.await;
            }
        }
        tokio::task::yield_now().await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        now
    }
}

fn pinger(expect: usize) -> impl Fn() -> Pinger + Send + Sync + 'static {
    move || Pinger {
        in_flight: AtomicUsize::new(0),
        max_seen: AtomicUsize::new(0),
        all_in: tokio::sync::Notify::new(),
        expect,
    }
}

#[derive(Serialize, Deserialize)]
struct MaxSeen;
impl Message for MaxSeen {
    type Reply = usize;
}
impl AsyncHandler<MaxSeen> for Pinger {
    async fn handle(self: Arc<Self>, _: MaxSeen, _: AsyncContext<Self>) -> usize {
        self.max_seen.load(Ordering::SeqCst)
    }
}

#[test]
fn async_actor_runs_calls_concurrently() {
    let rt = rt2();
    // Each call waits until 16 are in flight: this finishes only if they overlap.
    let p = rt
        .async_actor(pinger(16))
        .max_concurrency(16)
        .spawn()
        .unwrap();
    let replies: Vec<ObjectRef<usize>> = (0..16).map(|_| p.call(Ping)).collect();
    assert_eq!(
        rt.get(&replies, Some(LONG)).unwrap().into_iter().max(),
        Some(16)
    );
    assert_eq!(p.call(MaxSeen).get().unwrap(), 16);
}

#[test]
fn async_actor_respects_max_concurrency() {
    let rt = rt2();
    let p = rt
        .async_actor(pinger(2))
        .max_concurrency(2)
        .spawn()
        .unwrap();
    let replies: Vec<ObjectRef<usize>> = (0..50).map(|_| p.call(Ping)).collect();
    rt.get(&replies, Some(LONG)).unwrap();
    assert_eq!(p.call(MaxSeen).get().unwrap(), 2);
}

/// A sync message to an async actor does not compile (see the `compile_fail`
/// example on `Actor::ASYNC`); bad concurrency settings are typed errors.
#[test]
fn bad_concurrency_settings_are_typed_errors() {
    let rt = rt2();
    let p = rt.async_actor(pinger(1)).spawn().unwrap();
    assert!(rt.actor(Log::new).max_concurrency(4).spawn().is_err());
    assert!(matches!(
        rt.async_actor(pinger(1)).max_concurrency(0).spawn(),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(p.call(Ping).get().unwrap(), 1);
}

#[test]
fn a_full_mailbox_is_a_typed_error() {
    let rt = rayx::Builder::new()
        .num_workers(2)
        .mailbox_capacity(2)
        .start()
        .unwrap();
    let log = rt.actor(Log::new).spawn().unwrap();
    let g = gate();
    let running = log.call(Hold(g));
    assert!(
        eventually(LONG, || log.queued() == 0),
        "the held call is running"
    );
    let q1 = log.call(Record(0, 0));
    let q2 = log.call(Record(0, 1));
    match log.call(Record(0, 2)).get_timeout(LONG) {
        Err(Error::MailboxFull { capacity, .. }) => assert_eq!(capacity, 2),
        other => panic!("unexpected {other:?}"),
    }
    open(g);
    assert_eq!(running.get().unwrap(), g);
    assert_eq!((q1.get().unwrap(), q2.get().unwrap()), (1, 2));
}

#[test]
fn back_to_back_calls_from_many_threads_are_never_stranded() {
    // Liveness under back-to-back calls. (The race this guards against — a host
    // clearing its scheduled flag as a call lands, stranding the call — showed
    // in the release-mode benchmark; this debug-mode test rarely reaches it.)
    let rt = rt2();
    let log = rt.actor(Log::new).spawn().unwrap();
    let pinger = rt.async_actor(pinger(1)).spawn().unwrap();
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (log, pinger) = (log.clone(), pinger.clone());
            std::thread::spawn(move || {
                for i in 0..3000 {
                    log.call(Record(t, i))
                        .get_timeout(LONG)
                        .expect("sync call answered");
                    pinger
                        .call(Ping)
                        .get_timeout(LONG)
                        .expect("async call answered");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(log.call(Seen).get().unwrap().len(), 9000);
}
