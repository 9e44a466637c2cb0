//! Cancellation of tasks: queued, running, recursive, forced.

mod common;

use common::failing::*;
use common::{eventually, LONG};
use rayx::prelude::*;
use std::sync::Arc;

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
        .max_retries(Retries::Infinite)
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
    r.id().to_string()
}

fn saw_cancel_flag(_: u64) -> bool {
    rayx::cancelled()
}
rayx::remote!(saw_cancel_flag);

/// Issue 7, defect 3: a forced cancel racing the end of its task must not land
/// on the task the worker starts next (its result thrown away, or a spurious
/// `cancelled()`). The handshake is proven by the loom model of `RunningTask`;
/// this drives the real race many times.
#[test]
fn a_cancel_never_lands_on_the_next_task_of_the_same_worker() {
    let rt = rayx::Builder::new().num_workers(1).start().unwrap();
    for i in 0..2_000u64 {
        let first = rt.task(double).remote(i);
        let next = rt.task(saw_cancel_flag).remote(i);
        rt.cancel_with(&first, i % 2 == 0, false);
        assert!(
            matches!(
                first.get_timeout(LONG),
                Ok(_) | Err(Error::Cancelled { .. })
            ),
            "round {i}"
        );
        assert_eq!(next.get_timeout(LONG), Ok(false), "round {i}");
    }
}

/// Issue 7, defect 8: a cancel racing dispatch ends the object `Cancelled`,
/// never `TaskFailed`.
#[test]
fn a_cancel_racing_dispatch_is_always_cancelled() {
    let rt = rayx::Builder::new().num_workers(1).start().unwrap();
    for i in 0..5_000u64 {
        let r = rt.task(double).remote(i);
        rt.cancel(&r);
        match r.get_timeout(LONG) {
            Ok(v) => assert_eq!(v, 2 * i),
            Err(Error::Cancelled { forced: false, .. }) => {}
            other => panic!("round {i}: {other:?}"),
        }
    }
}

static INNER_REF: parking_lot::Mutex<Option<ObjectRef<u64>>> = parking_lot::Mutex::new(None);

/// Submits `stuck_on(key, gate)` and waits for it (running it inline, since
/// nobody has started it); returns 42 whatever the inner task's outcome.
fn outer_of_stuck(key: u64, gate: u64) -> u64 {
    let rt = Runtime::current().expect("in a task");
    let inner = rt.task(stuck_on).remote((key, gate));
    *INNER_REF.lock() = Some(inner.clone());
    let _ = inner.get();
    42
}
rayx::remote!(outer_of_stuck);

/// A forced cancel of a task that its caller runs inline abandons the worker,
/// but the caller's own result is still reported, and the pool carries on.
#[test]
fn a_forced_cancel_of_an_inline_task_keeps_its_callers_result() {
    let rt = rayx::Builder::new().num_workers(1).start().unwrap();
    let (k, g) = (key(), common::gate());
    let outer = rt.task(outer_of_stuck).remote((k, g));
    assert!(
        eventually(LONG, || started(k)),
        "the inner task runs inline"
    );
    let inner = INNER_REF
        .lock()
        .take()
        .expect("the outer task published it");
    rt.cancel_with(&inner, true, false);
    assert!(matches!(
        inner.get(),
        Err(Error::Cancelled { forced: true, .. })
    ));
    common::open(g);
    assert_eq!(outer.get_timeout(LONG), Ok(42));
    assert_eq!(rt.task(double).remote(21).get_timeout(LONG), Ok(42));
    assert!(
        eventually(LONG, || rt.worker_counts() == (1, 0)),
        "{:?}",
        rt.worker_counts()
    );
}

/// A forced cancel of a task on a worker of a router that was restarted
/// meanwhile does not uncount that worker twice (the count wrapped below zero
/// and every worker retired).
#[test]
fn a_forced_cancel_after_a_router_restart_keeps_the_pool_counted() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    let events = rt.events();
    let (k, g) = (key(), common::gate());
    let stuck = rt.task(stuck_on).remote((k, g));
    assert!(eventually(LONG, || started(k)));
    rt.inject_system_failure("router").unwrap();
    let restarted = rayx::SupervisionEvent::Restarted {
        child: "router".into(),
        attempt: 1,
    };
    assert!(std::iter::from_fn(|| events.recv_timeout(LONG).ok()).any(|e| e == restarted));
    rt.cancel_with(&stuck, true, false);
    common::open(g);
    let refs: Vec<_> = (0..200u64).map(|i| rt.task(double).remote(i)).collect();
    assert_eq!(rt.get(&refs, Some(LONG)).unwrap().len(), 200);
    assert!(
        eventually(LONG, || rt.worker_counts() == (2, 0)),
        "{:?}",
        rt.worker_counts()
    );
}

/// An async actor whose handler awaits before it submits a child task.
struct Spawner;
impl Actor for Spawner {
    const ASYNC: bool = true;
}

#[derive(Serialize, Deserialize)]
struct SubmitAfterAwait(u64);
impl Message for SubmitAfterAwait {
    type Reply = u32;
}
impl AsyncHandler<SubmitAfterAwait> for Spawner {
    async fn handle(self: Arc<Self>, m: SubmitAfterAwait, _: AsyncContext<Self>) -> u32 {
        // The call is parked here and polled again later, on the actor's
        // thread, by the runtime.
        tokio::task::yield_now().await;
        let rt = Runtime::current().expect("in an actor");
        let child = rt.task(until_cancelled).remote((m.0, false));
        (&child).await.unwrap_or(0)
    }
}

#[test]
fn a_cancel_reaches_the_tasks_an_async_call_submitted_after_an_await() {
    let rt = rt2();
    let spawner = rt.async_actor(|| Spawner).spawn().unwrap();
    let child = key();
    let call = spawner.call(SubmitAfterAwait(child));
    assert!(eventually(LONG, || started(child)), "the child is running");
    rt.cancel(&call);
    assert!(matches!(call.get(), Err(Error::Cancelled { .. })));
    assert!(
        eventually(LONG, || saw_cancel(child)),
        "the child, submitted after the call's first await, saw the cancel"
    );
}
