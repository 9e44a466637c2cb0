//! A worker's `wait` (it runs unstarted tasks itself, only until enough refs
//! are ready) and the object table's counts read while many threads count.
mod common;

use common::LONG;
use rayx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

fn one_worker() -> Runtime {
    rayx::Builder::new()
        .num_workers(1)
        .max_workers(1)
        .start()
        .expect("runtime starts")
}

// ---- A: a worker's wait runs a task past num_returns (duplicate refs) -------

static A_LATE_RAN: AtomicBool = AtomicBool::new(false);
/// A task that is done at once.
fn echo(x: u64) -> u64 {
    x
}
fn a_late(x: u64) -> u64 {
    A_LATE_RAN.store(true, Ordering::SeqCst);
    x
}
/// Waits for 2 of [quick, quick, late]: running `quick` alone makes 2 ready.
/// Returns (ready, whether `late` had run when the wait returned).
fn a_outer(_: u8) -> (usize, bool) {
    let rt = Runtime::current().expect("in a task");
    let quick = rt.task(echo).remote(1);
    let late = rt.task(a_late).remote(2);
    let (ready, _) = rt
        .wait(
            vec![quick.clone(), quick.clone(), late.clone()],
            2,
            Some(LONG),
        )
        .expect("wait");
    (ready.len(), A_LATE_RAN.load(Ordering::SeqCst))
}

// ---- B: same, without duplicates: a nested get makes the 2nd ref ready ------

static B_LATE_RAN: AtomicBool = AtomicBool::new(false);
fn b_reader(refs: Vec<ObjectRef<u64>>) -> u64 {
    refs.iter().map(|r| r.get().expect("leaf")).sum()
}
fn b_late(x: u64) -> u64 {
    B_LATE_RAN.store(true, Ordering::SeqCst);
    x
}
/// Waits for 2 of [reader, leaf, late]: running `reader` runs `leaf` too
/// (its get), so 2 are ready and `late` need not run.
fn b_outer(_: u8) -> (usize, bool) {
    let rt = Runtime::current().expect("in a task");
    let leaf = rt.task(echo).remote(1);
    let reader = rt.task(b_reader).remote(vec![leaf.clone()]);
    let late = rt.task(b_late).remote(3);
    let (ready, _) = rt
        .wait(
            vec![reader.clone(), leaf.clone(), late.clone()],
            2,
            Some(LONG),
        )
        .expect("wait");
    (ready.len(), B_LATE_RAN.load(Ordering::SeqCst))
}

// ---- D: recursion through wait with num_returns > 1 ---------------------------

fn tree(depth: u32) -> u64 {
    if depth == 0 {
        return 1;
    }
    let rt = Runtime::current().expect("in a task");
    let kids: Vec<_> = (0..3).map(|_| rt.task(tree).remote(depth - 1)).collect();
    let (ready, pending) = rt.wait(&kids, 2, Some(LONG)).expect("wait 2");
    assert_eq!((ready.len(), pending.len()), (2, 1), "wait 2 of 3");
    let (ready, pending) = rt.wait(&kids, 3, Some(LONG)).expect("wait 3");
    assert_eq!((ready.len(), pending.len()), (3, 0), "wait 3 of 3");
    rt.get(&kids, Some(LONG)).expect("get").into_iter().sum()
}

rayx::remote!(echo, a_late, a_outer, b_reader, b_late, b_outer, tree);

/// What an outer task's wait for 2 refs saw: 2 ready, and the third
/// (`late`) task not run inline.
fn assert_late_not_run((ready, late_ran): (usize, bool), refs: &str) {
    assert_eq!(ready, 2);
    assert!(
        !late_ran,
        "wait(num_returns=2) on {refs} ran `late` inline though 2 were ready before it"
    );
}

#[test]
fn a_workers_wait_runs_no_task_once_num_returns_are_ready_duplicate_refs() {
    let rt = one_worker();
    let seen = rt.task(a_outer).remote(0).get_timeout(LONG).unwrap();
    assert_late_not_run(seen, "[quick, quick, late]");
}

#[test]
fn a_workers_wait_runs_no_task_once_num_returns_are_ready_nested_get() {
    let rt = one_worker();
    let seen = rt.task(b_outer).remote(0).get_timeout(LONG).unwrap();
    assert_late_not_run(seen, "[reader, leaf, late]");
}

#[test]
fn recursion_through_wait_with_several_returns_finishes() {
    for workers in [1, 2] {
        let rt = rayx::Builder::new().num_workers(workers).start().unwrap();
        assert_eq!(
            rt.task(tree).remote(4).get_timeout(LONG),
            Ok(81),
            "num_workers({workers})"
        );
    }
}

// ---- C: the extra inline run is a stall when that task waits for the caller --

static C_OPEN: (parking_lot::Mutex<bool>, parking_lot::Condvar) =
    (parking_lot::Mutex::new(false), parking_lot::Condvar::new());
fn c_quick(_: u64) -> bool {
    true
}
/// Waits (at most 3 s) for the caller to open the latch after its wait.
fn c_waits_for_caller(_: u64) -> bool {
    let mut open = C_OPEN.0.lock();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !*open {
        if C_OPEN.1.wait_until(&mut open, deadline).timed_out() {
            return false;
        }
    }
    true
}
fn c_outer(_: u8) -> bool {
    let rt = Runtime::current().expect("in a task");
    let quick = rt.task(c_quick).remote(1);
    let later = rt.task(c_waits_for_caller).remote(2);
    let (ready, _) = rt
        .wait(
            vec![quick.clone(), quick.clone(), later.clone()],
            2,
            Some(LONG),
        )
        .expect("wait");
    assert_eq!(ready.len(), 2);
    *C_OPEN.0.lock() = true;
    C_OPEN.1.notify_all();
    later.get().expect("later")
}

rayx::remote!(c_quick, c_waits_for_caller, c_outer);

#[test]
fn a_workers_wait_does_not_run_a_task_that_waits_for_its_caller() {
    let rt = one_worker();
    let t = std::time::Instant::now();
    let saw_open = rt.task(c_outer).remote(0).get_timeout(LONG).unwrap();
    assert!(
        saw_open,
        "the task queued after the refs waited for was run inside the wait, and waited 3 s for the caller ({:?})",
        t.elapsed()
    );
}

// ---- E: memory().inline_bytes read while objects are put on one thread and
// freed on another ------------------------------------------------------------

#[test]
fn inline_bytes_never_reads_as_a_wrapped_count() {
    use std::sync::mpsc::sync_channel;
    use std::time::{Duration, Instant};
    let rt = rayx::Builder::new().num_workers(1).start().unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..3 {
        // The producer counts first (takes the lower stripe), then its consumer.
        let (tx, rx) = sync_channel::<ObjectRef<u64>>(0);
        let (ready_tx, ready_rx) = sync_channel::<()>(1);
        let (rt1, stop1) = (rt.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            drop(rt1.put(0u64).unwrap());
            ready_tx.send(()).unwrap();
            while !stop1.load(Ordering::Relaxed) {
                if tx.send(rt1.put(7u64).unwrap()).is_err() {
                    break;
                }
            }
        }));
        ready_rx.recv().unwrap();
        let rt2 = rt.clone();
        threads.push(std::thread::spawn(move || {
            drop(rt2.put(0u64).unwrap());
            for r in rx {
                drop(r);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut worst = 0u64;
    let mut reads = 0u64;
    while Instant::now() < deadline && worst < (1 << 62) {
        let m = rt.memory();
        reads += 1;
        worst = worst.max(m.inline_bytes);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        worst < (1 << 40),
        "memory().inline_bytes read {worst} (= -{}) in {reads} reads",
        worst.wrapping_neg()
    );
}

fn double(x: u64) -> u64 {
    2 * x
}
rayx::remote!(double);

#[test]
fn memory_returns_to_zero_after_work_spread_over_threads() {
    let rt = rayx::Builder::new().num_workers(2).start().unwrap();
    for _ in 0..5 {
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let rt = rt.clone();
                std::thread::spawn(move || {
                    let mut refs = Vec::new();
                    for i in 0..500u64 {
                        refs.push(rt.put(i * t).unwrap());
                        refs.push(rt.task(double).remote(i));
                    }
                    refs
                })
            })
            .collect();
        let refs: Vec<ObjectRef<u64>> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        // Freed by 3 threads, none of which counted them.
        let mut chunks: Vec<Vec<ObjectRef<u64>>> = vec![Vec::new(), Vec::new(), Vec::new()];
        for (i, r) in refs.into_iter().enumerate() {
            chunks[i % 3].push(r);
        }
        let droppers: Vec<_> = chunks
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    for r in &c {
                        r.get_timeout(LONG).unwrap();
                    }
                    drop(c)
                })
            })
            .collect();
        for d in droppers {
            d.join().unwrap();
        }
        assert!(
            common::eventually(LONG, || {
                let m = rt.memory();
                (m.objects, m.inline_bytes) == (0, 0)
            }),
            "{:?}",
            rt.memory()
        );
    }
}

// ---- Actor handlers that wait outside rayx, and tasks ------------------------
//
// A sync actor's handler asleep in user code (a lock, a channel, I/O) for long
// while work is queued counts as blocked, as a `get` does: the pool starts
// another worker (in Ray an actor has a process of its own). A task keeps its
// worker, asleep or computing (a Ray task keeps its CPU).

/// One worker (the pool may grow past it, as for a `get`).
fn one_worker_that_may_grow() -> Runtime {
    rayx::Builder::new()
        .num_workers(1)
        .start()
        .expect("runtime starts")
}

fn opener(g: u64) -> u64 {
    common::open(g);
    g
}
rayx::remote!(opener);

struct Waiter;
impl Actor for Waiter {}
impl Waiter {
    fn new() -> Self {
        Waiter
    }
}
#[derive(Serialize, Deserialize)]
struct WaitGate(u64);
impl Message for WaitGate {
    type Reply = u64;
}
impl Handler<WaitGate> for Waiter {
    fn handle(&mut self, WaitGate(g): WaitGate, _: &mut ActorContext<Self>) -> u64 {
        common::pass(g)
    }
}

#[derive(Serialize, Deserialize)]
struct Ping;
impl Message for Ping {
    type Reply = u64;
}
impl Handler<Ping> for Waiter {
    fn handle(&mut self, _: Ping, _: &mut ActorContext<Self>) -> u64 {
        7
    }
}

/// Calls `waiter` and waits for the answer.
fn ping(waiter: ActorHandle<Waiter>) -> u64 {
    waiter.call(Ping).get().expect("pinged")
}
rayx::remote!(ping);

/// The pool is back to its one worker, none counted as blocked (the extra
/// worker retires once idle).
fn back_to_one_worker(rt: &Runtime) {
    assert!(
        common::eventually(LONG, || rt.worker_counts() == (1, 0)),
        "{:?}",
        rt.worker_counts()
    );
}

// Linux only: elsewhere the router cannot read a thread's time, and nothing
// counts as blocked for waiting long.
#[cfg(target_os = "linux")]
#[test]
fn a_handler_asleep_outside_rayx_does_not_hold_tasks_back() {
    let rt = one_worker_that_may_grow();
    let waiter = rt.actor_of(Waiter::new, ()).spawn().unwrap();
    let g = common::gate();
    // The handler takes the one worker and sleeps on the gate, which only the
    // task opens: without another worker the gate never opens (the gate gives
    // up after 60 s and the call fails).
    let waiting = waiter.call(WaitGate(g));
    let opened = rt.task(opener).remote(g);
    assert_eq!(opened.get_timeout(LONG).unwrap(), g);
    assert_eq!(waiting.get_timeout(LONG).unwrap(), g);
    back_to_one_worker(&rt);
}

static WOKE: AtomicBool = AtomicBool::new(false);
fn gated_then_mark(g: u64) -> u64 {
    common::pass(g);
    WOKE.store(true, Ordering::SeqCst);
    g
}
/// Whether `gated_then_mark` had finished when this started.
fn after_gated(_: u8) -> bool {
    WOKE.load(Ordering::SeqCst)
}
rayx::remote!(gated_then_mark, after_gated);

#[test]
fn a_task_asleep_outside_rayx_keeps_its_worker() {
    let rt = one_worker_that_may_grow();
    let g = common::gate();
    let waiting = rt.task(gated_then_mark).remote(g);
    let next = rt.task(after_gated).remote(0);
    // Three looks of the router (200 ms apart) would have started a worker
    // for `next` by now, were tasks counted.
    assert!(
        matches!(
            next.get_timeout(std::time::Duration::from_millis(700)),
            Err(Error::GetTimeout { .. })
        ),
        "a task started beside the sleeping one"
    );
    assert_eq!(rt.worker_counts(), (1, 0));
    common::open(g);
    assert_eq!(waiting.get_timeout(LONG).unwrap(), g);
    assert!(
        next.get_timeout(LONG).unwrap(),
        "ran after the sleeping task"
    );
}

/// Computes for 1 s (five looks of the router): it never sleeps.
fn compute_for_a_second() -> u64 {
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < std::time::Duration::from_secs(1) {
        n = std::hint::black_box(n.wrapping_add(1));
    }
    n
}

static SPUN: AtomicBool = AtomicBool::new(false);
fn spin(_: u8) -> u64 {
    let n = compute_for_a_second();
    SPUN.store(true, Ordering::SeqCst);
    n
}
/// Whether `spin` had finished when this started.
fn after_spin(_: u8) -> bool {
    SPUN.load(Ordering::SeqCst)
}
rayx::remote!(spin, after_spin);

#[test]
fn a_computing_task_keeps_its_core_and_nothing_starts_beside_it() {
    let rt = one_worker_that_may_grow();
    let spun = rt.task(spin).remote(0);
    let next = rt.task(after_spin).remote(0);
    assert!(
        next.get_timeout(LONG).unwrap(),
        "the queued task started beside the computing one"
    );
    spun.get_timeout(LONG).unwrap();
    assert_eq!(rt.worker_counts(), (1, 0));
}

/// At `max_workers`, with one worker asleep in a handler and the other in a
/// `get` on a call queued behind it, the `get` waits: the sleeper wakes by
/// itself, so nothing is starved (found by a helper: the `get` failed with
/// `WorkerLimitReached` after a second, the sleeper counted as stuck).
#[cfg(target_os = "linux")]
#[test]
fn a_get_waits_for_a_handler_asleep_at_max_workers() {
    let rt = rayx::Builder::new()
        .num_workers(1)
        .max_workers(2)
        .start()
        .expect("runtime starts");
    let (a, b) = (
        rt.actor_of(Waiter::new, ()).spawn().unwrap(),
        rt.actor_of(Waiter::new, ()).spawn().unwrap(),
    );
    let g = common::gate();
    let waiting = a.call(WaitGate(g));
    // Runs on the second worker once the router saw `a` asleep; its call to
    // `b` waits for a worker: the sleeper's.
    let pinged = rt.task(ping).remote(b.clone());
    // The starvation window is 1 s: a `get` counted as starved fails by then.
    assert!(
        matches!(
            pinged.get_timeout(std::time::Duration::from_millis(2500)),
            Err(Error::GetTimeout { .. })
        ),
        "the get failed while the handler slept: {:?}",
        pinged.get_timeout(std::time::Duration::ZERO)
    );
    assert_eq!(rt.worker_counts(), (2, 2), "one asleep, one in get");
    common::open(g);
    assert_eq!(waiting.get_timeout(LONG).unwrap(), g);
    assert_eq!(pinged.get_timeout(LONG).unwrap(), 7);
}

static HANDLER_SPUN: AtomicBool = AtomicBool::new(false);
#[derive(Serialize, Deserialize)]
struct Compute;
impl Message for Compute {
    type Reply = u64;
}
impl Handler<Compute> for Waiter {
    fn handle(&mut self, _: Compute, _: &mut ActorContext<Self>) -> u64 {
        // Not `spin`: its flag is the task test's.
        let n = compute_for_a_second();
        HANDLER_SPUN.store(true, Ordering::SeqCst);
        n
    }
}
/// Whether the `Compute` handler had finished when this started.
fn after_compute(_: u8) -> bool {
    HANDLER_SPUN.load(Ordering::SeqCst)
}
rayx::remote!(after_compute);

/// A handler that computes keeps its core: the task queued behind it starts
/// after it (found by a helper: with tasks no longer watched, nothing else
/// tests the router's reading of a thread's time).
#[cfg(target_os = "linux")]
#[test]
fn a_computing_handler_keeps_its_core_and_nothing_starts_beside_it() {
    let rt = one_worker_that_may_grow();
    let w = rt.actor_of(Waiter::new, ()).spawn().unwrap();
    let computed = w.call(Compute);
    let next = rt.task(after_compute).remote(0);
    assert!(
        next.get_timeout(LONG).unwrap(),
        "a task started beside the computing handler"
    );
    computed.get_timeout(LONG).unwrap();
    assert_eq!(rt.worker_counts(), (1, 0));
}

#[derive(Serialize, Deserialize)]
struct EnterThenWait(u64, u64);
impl Message for EnterThenWait {
    type Reply = u64;
}
impl Handler<EnterThenWait> for Waiter {
    /// Opens `entered`, then sleeps on `g`.
    fn handle(
        &mut self,
        EnterThenWait(entered, g): EnterThenWait,
        _: &mut ActorContext<Self>,
    ) -> u64 {
        common::open(entered);
        common::pass(g)
    }
}

/// A router that fails while it looks leaves the look flag up; the next
/// router still looks, so a handler asleep on the new pool frees its worker
/// for a queued task (found by a helper: without the new router's first
/// look, nobody looks again).
#[cfg(target_os = "linux")]
#[test]
fn a_restarted_router_looks_after_one_that_failed_while_looking() {
    let rt = one_worker_that_may_grow();
    let a = rt.actor_of(Waiter::new, ()).spawn().unwrap();
    let (g1, g2) = (common::gate(), common::gate());
    let first = a.call(WaitGate(g1));
    let queued = rt.task(opener).remote(g2);
    // The router marked `a` asleep and started a worker for the task, which
    // opened g2: it was looking.
    assert_eq!(queued.get_timeout(LONG).unwrap(), g2);
    let events = rt.events();
    rt.inject_system_failure("router").unwrap();
    loop {
        match events.recv_timeout(LONG) {
            Ok(rayx::SupervisionEvent::Restarted { child, .. }) if child == "router" => break,
            Ok(_) => {}
            Err(e) => panic!("the router was not restarted: {e:?}"),
        }
    }
    // The new pool's one worker takes a handler that sleeps on a gate only a
    // task queued behind it opens.
    let b = rt.actor_of(Waiter::new, ()).spawn().unwrap();
    let (entered, g3) = (common::gate(), common::gate());
    let second = b.call(EnterThenWait(entered, g3));
    common::pass(entered);
    let opened = rt.task(opener).remote(g3);
    assert_eq!(opened.get_timeout(LONG).unwrap(), g3);
    assert_eq!(second.get_timeout(LONG).unwrap(), g3);
    common::open(g1);
    assert_eq!(first.get_timeout(LONG).unwrap(), g1);
}

#[derive(Serialize, Deserialize)]
struct SleepThenPing(u64, ActorHandle<Waiter>);
impl Message for SleepThenPing {
    type Reply = Result<u64, String>;
}
impl Handler<SleepThenPing> for Waiter {
    fn handle(
        &mut self,
        SleepThenPing(g, b): SleepThenPing,
        _: &mut ActorContext<Self>,
    ) -> Result<u64, String> {
        common::pass(g);
        b.call(Ping).get_timeout(LONG).map_err(|e| format!("{e:?}"))
    }
}
fn try_ping(waiter: ActorHandle<Waiter>) -> Result<u64, String> {
    waiter
        .call(Ping)
        .get_timeout(LONG)
        .map_err(|e| format!("{e:?}"))
}
rayx::remote!(try_ping);

/// A handler the router saw asleep that then waits in `get`, beside the
/// other worker in a `get`, at `max_workers`, with both calls they wait for
/// queued behind them: nothing can run, and a `get` fails with
/// `WorkerLimitReached` (after the 1 s starvation window) instead of hanging
/// (found by a helper: the handler still counted as "wakes by itself").
#[cfg(target_os = "linux")]
#[test]
fn a_handler_that_slept_then_waits_in_get_at_max_workers_is_starved() {
    let rt = rayx::Builder::new()
        .num_workers(1)
        .max_workers(2)
        .start()
        .expect("runtime starts");
    let (a, b, c) = (
        rt.actor_of(Waiter::new, ()).spawn().unwrap(),
        rt.actor_of(Waiter::new, ()).spawn().unwrap(),
        rt.actor_of(Waiter::new, ()).spawn().unwrap(),
    );
    let g = common::gate();
    let slept = a.call(SleepThenPing(g, b.clone()));
    let pinged = rt.task(try_ping).remote(c.clone());
    // `a` asleep (counted), the task's worker in its get.
    assert!(
        common::eventually(LONG, || rt.worker_counts() == (2, 2)),
        "{:?}",
        rt.worker_counts()
    );
    common::open(g);
    // The first `get` to fail frees its worker, and the other one's call may
    // then run.
    let outcomes = [
        slept.get_timeout(LONG).unwrap(),
        pinged.get_timeout(LONG).unwrap(),
    ];
    let starved = |o: &Result<u64, String>| matches!(o, Err(e) if e.contains("WorkerLimitReached"));
    assert!(
        outcomes.iter().any(starved) && outcomes.iter().all(|o| starved(o) || *o == Ok(7)),
        "{outcomes:?}"
    );
}
