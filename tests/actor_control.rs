//! Actor control: kill, restart and stop are signals the actor's own run loop
//! applies between messages, so any handler — sync or async — may send them to
//! its own actor; calls can be cancelled; weak handles; messages kept for retry.

mod common;

use common::{eventually, gate, open, pass, LONG};
use rayx::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn rt2() -> Runtime {
    rayx::Builder::new().num_workers(2).start().unwrap()
}

/// A sync actor that counts its calls and can act on itself.
struct Selfish {
    calls: u64,
}
impl Actor for Selfish {}

#[derive(Serialize, Deserialize)]
enum Do {
    Count,
    KillMe,
    RestartMe,
    StopMe,
    RestartByName(String),
}
impl Message for Do {
    type Reply = (u64, bool);
}
impl Handler<Do> for Selfish {
    fn handle(&mut self, msg: Do, ctx: &mut ActorContext<Self>) -> (u64, bool) {
        self.calls += 1;
        match msg {
            Do::Count => {}
            Do::KillMe => ctx.handle().kill(),
            Do::RestartMe => ctx.handle().restart(),
            Do::StopMe => ctx.stop(),
            Do::RestartByName(name) => ctx
                .runtime()
                .get_actor::<Selfish>(&name)
                .expect("by name")
                .restart(),
        }
        (self.calls, ctx.was_restarted())
    }
}

#[test]
fn a_sync_handler_may_kill_restart_or_stop_its_own_actor() {
    let rt = rt2();
    let a = rt
        .actor(|| Selfish { calls: 0 })
        .name("selfish")
        .max_restarts(5)
        .spawn()
        .unwrap();
    assert_eq!(a.call(Do::Count).get(), Ok((1, false)));
    // The call that restarts finishes, then the restart applies.
    assert_eq!(a.call(Do::RestartMe).get_timeout(LONG), Ok((2, false)));
    assert_eq!(a.call(Do::Count).get_timeout(LONG), Ok((1, true)));
    assert_eq!(
        a.call(Do::RestartByName("selfish".into()))
            .get_timeout(LONG),
        Ok((2, true))
    );
    assert_eq!(a.call(Do::Count).get_timeout(LONG), Ok((1, true)));
    // Kill from inside: this call answers, later ones fail.
    assert_eq!(a.call(Do::KillMe).get_timeout(LONG), Ok((2, true)));
    assert!(matches!(
        a.call(Do::Count).get_timeout(LONG),
        Err(Error::ActorDied { .. })
    ));
    let b = rt.actor(|| Selfish { calls: 0 }).spawn().unwrap();
    assert_eq!(b.call(Do::StopMe).get_timeout(LONG), Ok((1, false)));
    match b.call(Do::Count).get_timeout(LONG) {
        Err(Error::ActorDied { cause, .. }) => assert!(cause.contains("stopped itself"), "{cause}"),
        other => panic!("unexpected {other:?}"),
    }
}

/// An async actor that can act on itself before its first await.
struct AsyncSelfish {
    calls: AtomicUsize,
}
impl Actor for AsyncSelfish {
    const ASYNC: bool = true;
}

#[derive(Serialize, Deserialize)]
enum AsyncDo {
    Count,
    KillByName(String),
    RestartByName(String),
    Stop,
    ShutDownTheRuntime,
    Park(u64),
}
impl Message for AsyncDo {
    type Reply = usize;
}
impl AsyncHandler<AsyncDo> for AsyncSelfish {
    async fn handle(self: Arc<Self>, msg: AsyncDo, ctx: AsyncContext<Self>) -> usize {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match msg {
            AsyncDo::Count => {}
            AsyncDo::KillByName(name) => ctx
                .runtime()
                .get_actor::<AsyncSelfish>(&name)
                .expect("by name")
                .kill(),
            AsyncDo::RestartByName(name) => ctx
                .runtime()
                .get_actor::<AsyncSelfish>(&name)
                .expect("by name")
                .restart(),
            AsyncDo::Stop => ctx.stop(),
            AsyncDo::ShutDownTheRuntime => ctx.runtime().shutdown(),
            // Blocks the actor's thread: a handler stuck in synchronous code.
            AsyncDo::Park(g) => {
                pass(g);
            }
        }
        n
    }
}

fn async_selfish() -> AsyncSelfish {
    AsyncSelfish {
        calls: AtomicUsize::new(0),
    }
}

#[test]
fn an_async_handler_may_kill_restart_or_stop_its_own_actor() {
    let rt = rt2();
    let a = rt
        .async_actor(async_selfish)
        .name("async-selfish")
        .max_restarts(3)
        .spawn()
        .unwrap();
    let other = rt.async_actor(async_selfish).spawn().unwrap();
    assert_eq!(
        a.call(AsyncDo::RestartByName("async-selfish".into()))
            .get_timeout(LONG),
        Ok(1)
    );
    // A fresh incarnation counts from one again.
    assert_eq!(a.call(AsyncDo::Count).get_timeout(LONG), Ok(1));
    assert_eq!(
        a.call(AsyncDo::KillByName("async-selfish".into()))
            .get_timeout(LONG),
        Ok(2)
    );
    assert!(matches!(
        a.call(AsyncDo::Count).get_timeout(LONG),
        Err(Error::ActorDied { .. })
    ));
    // Other async actors on the same thread go on.
    assert_eq!(other.call(AsyncDo::Count).get_timeout(LONG), Ok(1));
    assert_eq!(other.call(AsyncDo::Stop).get_timeout(LONG), Ok(2));
    assert!(matches!(
        other.call(AsyncDo::Count).get_timeout(LONG),
        Err(Error::ActorDied { .. })
    ));
}

#[test]
fn an_async_handler_may_shut_its_runtime_down() {
    let rt = rt2();
    let a = rt.async_actor(async_selfish).spawn().unwrap();
    let r = a.call(AsyncDo::ShutDownTheRuntime);
    assert!(eventually(LONG, || rt.is_shut_down()));
    // Its own reply may be the shutdown, or the answer if it landed first.
    assert!(matches!(r.get_timeout(LONG), Ok(1) | Err(Error::ShutDown)));
    drop(rt);
}

#[test]
fn shutdown_does_not_wait_for_a_handler_stuck_in_synchronous_code() {
    let rt = rt2();
    let a = rt.async_actor(async_selfish).spawn().unwrap();
    let g = gate();
    let stuck = a.call(AsyncDo::Park(g));
    assert!(eventually(LONG, || a.queued() == 0));
    // If shutdown waited for the handler, it would never return: the gate
    // opens only after it does.
    rt.shutdown();
    open(g);
    assert!(matches!(
        stuck.get_timeout(LONG),
        Err(Error::ShutDown) | Ok(1)
    ));
}

#[test]
fn a_weak_handle_does_not_keep_its_actor_alive() {
    let rt = rt2();
    let a = rt.actor(|| Selfish { calls: 0 }).spawn().unwrap();
    let weak = a.downgrade();
    assert_eq!(
        weak.upgrade().unwrap().call(Do::Count).get(),
        Ok((1, false))
    );
    drop(a);
    // The worker that ran the call lets go of the actor once its batch is over.
    assert!(eventually(LONG, || weak.upgrade().is_none()));
}

// Messages kept to send again after a crash (issue 7, defect 6).

struct Keeper;
impl Actor for Keeper {}
#[derive(Serialize, Deserialize)]
struct WithSkipped {
    kept: u32,
    #[serde(skip)]
    local_only: Option<Arc<u32>>,
}
impl Message for WithSkipped {
    type Reply = Option<u32>;
}
impl Handler<WithSkipped> for Keeper {
    fn handle(&mut self, m: WithSkipped, _: &mut ActorContext<Self>) -> Option<u32> {
        m.local_only.map(|v| *v + m.kept)
    }
}

#[test]
fn a_message_kept_for_a_retry_reaches_the_handler_as_it_was_sent() {
    let rt = rt2();
    let k = rt
        .actor(|| Keeper)
        .max_restarts(3)
        .max_task_retries(3)
        .spawn()
        .unwrap();
    let reply = k.call(WithSkipped {
        kept: 1,
        local_only: Some(Arc::new(41)),
    });
    assert_eq!(
        reply.get(),
        Ok(Some(42)),
        "no serde round trip without a retry"
    );
}

// Cancelled calls (issue 7, defect 7).

struct Tally {
    runs: Arc<AtomicUsize>,
}
impl Actor for Tally {}
#[derive(Serialize, Deserialize)]
struct Hold(u64);
impl Message for Hold {
    type Reply = usize;
}
impl Handler<Hold> for Tally {
    fn handle(&mut self, Hold(g): Hold, _: &mut ActorContext<Self>) -> usize {
        if g != 0 {
            pass(g);
        }
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }
}

#[test]
fn a_cancelled_queued_call_never_runs() {
    let rt = rt2();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let t = rt
        .actor(move || Tally {
            runs: counter.clone(),
        })
        .spawn()
        .unwrap();
    let g = gate();
    let first = t.call(Hold(g));
    let queued = t.call(Hold(0));
    rt.cancel(&queued);
    assert!(matches!(queued.get(), Err(Error::Cancelled { .. })));
    open(g);
    assert_eq!(first.get_timeout(LONG), Ok(1));
    // A later call runs after the cancelled one would have: it saw one run.
    assert_eq!(t.call(Hold(0)).get_timeout(LONG), Ok(2));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "the cancelled call never ran"
    );
}

struct Sleeper {
    finished: Arc<AtomicUsize>,
}
impl Actor for Sleeper {
    const ASYNC: bool = true;
}
#[derive(Serialize, Deserialize)]
struct Nap;
impl Message for Nap {
    type Reply = ();
}
impl AsyncHandler<Nap> for Sleeper {
    async fn handle(self: Arc<Self>, _: Nap, _: AsyncContext<Self>) {
        // Waits forever unless its future is dropped.
        std::future::pending::<()>().await;
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}
#[derive(Serialize, Deserialize)]
struct Poke;
impl Message for Poke {
    type Reply = usize;
}
impl AsyncHandler<Poke> for Sleeper {
    async fn handle(self: Arc<Self>, _: Poke, _: AsyncContext<Self>) -> usize {
        self.finished.load(Ordering::SeqCst)
    }
}

#[test]
fn a_cancelled_waiting_async_call_has_its_future_dropped() {
    let rt = rt2();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    let s = rt
        .async_actor(move || Sleeper {
            finished: f.clone(),
        })
        .max_concurrency(1)
        .spawn()
        .unwrap();
    let nap = s.call(Nap);
    // With max_concurrency 1, this runs only once the nap's slot is free.
    let poke = s.call(Poke);
    assert!(eventually(LONG, || s.queued() <= 1));
    rt.cancel(&nap);
    assert!(matches!(nap.get(), Err(Error::Cancelled { .. })));
    assert_eq!(poke.get_timeout(LONG), Ok(0), "the nap never finished");
}

// Detached actors and the runtime's lifetime (issue 7, defect 13).

struct Detached {
    stopped: Arc<std::sync::atomic::AtomicBool>,
}
impl Actor for Detached {
    fn stopped(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_detached_actor_whose_factory_captured_the_runtime_does_not_keep_it_alive() {
    let rt = rt2();
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (captured, flag) = (rt.clone(), stopped.clone());
    let d = rt
        .actor(move || {
            let _ = &captured;
            Detached {
                stopped: flag.clone(),
            }
        })
        .name("detached")
        .detached()
        .spawn()
        .unwrap();
    // Found by name as soon as it is spawned (its constructor may run later).
    assert!(eventually(LONG, || rt
        .get_actor::<Detached>("detached")
        .is_ok()));
    drop(d);
    assert!(
        rt.get_actor::<Detached>("detached").is_ok(),
        "detached: alive with no handle"
    );
    let node = rt.clone();
    drop(rt);
    // `node` is the last user handle; once it goes the runtime stops and the
    // detached actor with it.
    assert!(!node.is_shut_down());
    drop(node);
    assert!(eventually(LONG, || stopped.load(Ordering::SeqCst)));
}

// Found in review: deaths of detached actors, panicking destructors of
// cancelled calls, groups that gave up, stale calls of a restarted actor.

#[test]
fn a_detached_actor_is_freed_however_it_dies() {
    let rt = rt2();
    let crashed = rt.actor(|| Keeper).detached().spawn().unwrap();
    let weak = crashed.downgrade();
    // Keeper's handler does not panic; crash it with a restart past its limit.
    crashed.restart();
    assert!(eventually(LONG, || crashed.is_dead()));
    drop(crashed);
    assert!(
        eventually(LONG, || weak.upgrade().is_none()),
        "freed after a crash"
    );
    let group = rt
        .supervisor("zero")
        .max_restarts(0, std::time::Duration::from_secs(3600))
        .start();
    let a = rt
        .actor(|| Keeper)
        .detached()
        .supervisor(&group)
        .spawn()
        .unwrap();
    let b = rt
        .actor(|| Keeper)
        .detached()
        .supervisor(&group)
        .spawn()
        .unwrap();
    let wb = b.downgrade();
    a.restart();
    assert!(eventually(LONG, || b.is_dead()), "stopped by its group");
    assert!(group.gave_up());
    drop((a, b));
    assert!(
        eventually(LONG, || wb.upgrade().is_none()),
        "freed after its group stopped it"
    );
    // A group that gave up takes no new actors.
    assert!(matches!(
        rt.actor(|| Keeper).supervisor(&group).spawn(),
        Err(Error::InvalidArgument(_))
    ));
}

struct Bomb;
impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("a destructor panicked");
        }
    }
}
struct Napper;
impl Actor for Napper {
    const ASYNC: bool = true;
}
#[derive(Serialize, Deserialize)]
struct NapWithBomb(bool);
impl Message for NapWithBomb {
    type Reply = u8;
}
impl AsyncHandler<NapWithBomb> for Napper {
    async fn handle(
        self: Arc<Self>,
        NapWithBomb(forever): NapWithBomb,
        _: AsyncContext<Self>,
    ) -> u8 {
        if forever {
            let bomb = Bomb;
            std::future::pending::<()>().await;
            std::mem::forget(bomb);
        }
        1
    }
}

#[test]
fn a_cancelled_call_whose_destructor_panics_leaves_its_actor_serving() {
    let rt = rt2();
    let a = rt
        .async_actor(|| Napper)
        .max_concurrency(1)
        .spawn()
        .unwrap();
    let stuck = a.call(NapWithBomb(true));
    assert!(eventually(LONG, || a.queued() == 0));
    rt.cancel(&stuck);
    assert!(matches!(stuck.get(), Err(Error::Cancelled { .. })));
    assert_eq!(a.call(NapWithBomb(false)).get_timeout(LONG), Ok(1));
}

#[test]
fn a_runtime_decode_that_panics_leaves_the_thread_as_it_was() {
    struct Explodes;
    impl<'de> Deserialize<'de> for Explodes {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            panic!("a user Deserialize panicked")
        }
    }
    impl Serialize for Explodes {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u8(0)
        }
    }
    let rt = rt2();
    let bytes = rt.encode(&1u8).unwrap();
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = rt.decode::<Explodes>(&bytes);
    }));
    assert!(decoded.is_err());
    assert!(
        Runtime::current().is_none(),
        "the driver thread is not a runtime thread"
    );
}

struct FailsFirst {
    attempts: Arc<AtomicUsize>,
}
impl Actor for FailsFirst {}
#[derive(Serialize, Deserialize)]
struct Carry(ObjectRef<u64>);
impl Message for Carry {
    type Reply = u64;
}
impl Handler<Carry> for FailsFirst {
    fn handle(&mut self, Carry(r): Carry, _: &mut ActorContext<Self>) -> u64 {
        if self.attempts.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("the first attempt crashes");
        }
        r.get().unwrap()
    }
}

/// The copy of a message kept for a retry holds the objects it refers to,
/// though the caller let go of its own ref.
#[test]
fn a_retried_call_keeps_the_objects_its_message_refers_to() {
    let rt = rt2();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let a = rt
        .actor(move || FailsFirst {
            attempts: counter.clone(),
        })
        .max_restarts(1)
        .max_task_retries(1)
        .spawn()
        .unwrap();
    let call = a.call(Carry(rt.put(77u64).unwrap()));
    assert_eq!(call.get_timeout(LONG), Ok(77));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    drop(call);
    assert!(eventually(LONG, || rt.memory().objects == 0));
}

/// A restartable detached actor keeps its factory; one that needs the runtime
/// holds a `WeakRuntime` there, and the runtime still stops with its users.
#[test]
fn a_weak_runtime_in_a_restartable_actors_factory_does_not_keep_it_alive() {
    let rt = rt2();
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let built = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (weak, flag, done) = (rt.downgrade(), stopped.clone(), built.clone());
    let d = rt
        .actor(move || {
            assert!(weak.upgrade().is_some(), "running while the runtime runs");
            done.store(true, Ordering::SeqCst);
            Detached {
                stopped: flag.clone(),
            }
        })
        .detached()
        .max_restarts(Retries::Infinite)
        .spawn()
        .unwrap();
    // `stopped` runs only for an actor that was built.
    assert!(eventually(LONG, || built.load(Ordering::SeqCst)));
    drop(d);
    drop(rt);
    assert!(eventually(LONG, || stopped.load(Ordering::SeqCst)));
}
