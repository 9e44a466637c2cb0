//! Actor restarts: crashes, max_restarts, max_task_retries, kill and restart.

mod common;

use common::failing::*;
use common::LONG;
use parking_lot::Mutex;
use rayx::prelude::*;
use rayx::{Faults, SupervisionEvent, Trigger};
use std::sync::Arc;

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
    .max_restarts(Retries::Infinite)
    .max_task_retries(Retries::Infinite)
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
        .max_restarts(Retries::Infinite)
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
