//! Ray's `ray microbenchmark` (python/ray/_private/ray_perf.py), metric by metric,
//! in rayx: the same names, shapes, batch sizes and method (1 s warm-up, then 4
//! runs of at least 2 s; mean and population sd of `multiplier × calls/s`),
//! printed as Ray prints them, `NAME per second MEAN +- SD`, followed by the
//! CPU time of the whole process per operation (`cpu US us/op`: user + system
//! time from `getrusage` over the 4 runs, divided by `multiplier × calls`).
//!
//! Also measured in the same run: the floor (raw actix and crossbeam message
//! passing, memory-copy bandwidth), CPU at idle and under light traffic, and
//! scale (tasks queued behind busy workers; 1M queued tasks; memory per idle
//! actor). `benches/ray/ray_bench.py` measures the same extras for Ray.
//!
//! `cargo bench --bench microbenchmark`; `-- --quick` for CI (short runs, small
//! scale). `TESTS_TO_RUN` / `TESTS_TO_SKIP` filter metrics by substring, as in Ray.
//!
//! `-- --cluster` runs the same metrics across processes: this process is the
//! driver (and the head) and offers no CPUs; every task and actor runs in a
//! node process (this binary again) on loopback, as Ray's run in its workers.
//! Then the cluster's own measures: object transfer beside the loopback TCP
//! floor, and 100,000 tasks over two node processes, round after round.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/cpu.rs"]
mod cpu;
use cpu::cpu_time;
use rayx::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Counts live heap bytes and their peak while a scale run asks
/// ([`count_heap_from_zero`]), so the scale runs can report memory exactly
/// rather than through RSS, which freed-but-kept pages blur. Off, it costs one
/// read of a flag nobody writes: counting every allocation of every metric
/// made all threads that allocate write the same two counters, a contended
/// line the measured engine does not have.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed since counting began (negative when more
/// was freed than allocated: memory from before).
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn count(delta: isize) {
    // Relaxed: statistics read once the measured work has been joined.
    if COUNTING.load(Ordering::Relaxed) {
        let now = LIVE.fetch_add(delta, Ordering::Relaxed).wrapping_add(delta);
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

/// Starts counting the heap from zero (until [`stop_counting_heap`]).
fn count_heap_from_zero() {
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
}

fn stop_counting_heap() {
    COUNTING.store(false, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters are plain atomics and never affect the pointers returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

struct Bench {
    quick: bool,
    run: Option<String>,
    skip: Option<String>,
    /// In cluster mode, the node processes, whose CPU is reported beside the
    /// driver's (Ray's CPU column counts every process of its system).
    nodes: Vec<u32>,
}

impl Bench {
    fn selected(&self, name: &str) -> bool {
        self.run.as_ref().is_none_or(|p| name.contains(p.as_str()))
            && self
                .skip
                .as_ref()
                .is_none_or(|p| !name.contains(p.as_str()))
    }

    /// Ray's `timeit`, without its 10 s sleep before each metric.
    fn timeit(&self, name: &str, multiplier: f64, mut f: impl FnMut()) {
        if !self.selected(name) {
            return;
        }
        let (warm, run) = if self.quick { (0.02, 0.05) } else { (1.0, 2.0) };
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed().as_secs_f64() < warm {
            f();
            count += 1;
        }
        let step = count / 10 + 1;
        let mut stats = Vec::new();
        let (cpu0, nodes0, mut ops) = (cpu_time(), self.nodes_cpu(), 0.0);
        for _ in 0..4 {
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed().as_secs_f64() < run {
                for _ in 0..step {
                    f();
                }
                count += step;
            }
            stats.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
            ops += multiplier * count as f64;
        }
        let cpu_us = (cpu_time() - cpu0).as_secs_f64() * 1e6 / ops;
        let nodes = match (nodes0, self.nodes_cpu()) {
            (Some(a), Some(b)) => {
                format!(" node cpu {:.4} us/op", (b - a).as_secs_f64() * 1e6 / ops)
            }
            _ => String::new(),
        };
        let mean = stats.iter().sum::<f64>() / stats.len() as f64;
        let sd =
            (stats.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / stats.len() as f64).sqrt();
        println!("{name} per second {mean:.2} +- {sd:.2} cpu {cpu_us:.4} us/op{nodes}");
    }

    /// The node processes' CPU time so far (cluster mode), if readable.
    fn nodes_cpu(&self) -> Option<std::time::Duration> {
        if self.nodes.is_empty() {
            return None;
        }
        self.nodes.iter().map(|&p| cpu::process_cpu_time(p)).sum()
    }
}

// The remote functions and actors of ray_perf.py.

fn small_value() -> Vec<u8> {
    b"ok".to_vec()
}
fn do_put_small() {
    let rt = Runtime::current().expect("in a task");
    for _ in 0..100 {
        drop(rt.put(0i64).expect("put"));
    }
}
fn do_put(template: ObjectRef<rayx::Bytes>) {
    let rt = Runtime::current().expect("in a task");
    let template = template.get().expect("template");
    for _ in 0..10 {
        drop(rt.put_copy(&template).expect("put"));
    }
}
fn create_object_containing_ref() -> Vec<ObjectRef<i64>> {
    let rt = Runtime::current().expect("in a task");
    (0..10_000).map(|_| rt.put(1i64).expect("put")).collect()
}
fn work(actors: Vec<ActorHandle<BenchActor>>, n: usize) {
    let replies: Vec<_> = (0..n)
        .map(|i| actors[i % actors.len()].call(SmallValue))
        .collect();
    Runtime::current()
        .expect("in a task")
        .get(&replies, None)
        .expect("replies");
}
fn async_actor_work(actors: Vec<ActorHandle<AsyncBenchActor>>, n: usize) {
    let replies: Vec<_> = (0..n)
        .map(|i| actors[i % actors.len()].call(SmallValue))
        .collect();
    Runtime::current()
        .expect("in a task")
        .get(&replies, None)
        .expect("replies");
}
rayx::remote!(
    small_value,
    do_put_small,
    do_put,
    create_object_containing_ref,
    work,
    async_actor_work
);

#[derive(Serialize, Deserialize)]
struct SmallValue;
impl Message for SmallValue {
    type Reply = Vec<u8>;
}
#[derive(Serialize, Deserialize)]
struct SmallValueArg(ObjectRef<i64>);
impl Message for SmallValueArg {
    type Reply = Vec<u8>;
}
#[derive(Serialize, Deserialize)]
struct SmallValueWithArg(i64);
impl Message for SmallValueWithArg {
    type Reply = Vec<u8>;
}
#[derive(Serialize, Deserialize)]
struct SmallValueBatch(usize);
impl Message for SmallValueBatch {
    type Reply = ();
}
#[derive(Serialize, Deserialize)]
struct SmallValueBatchArg(usize);
impl Message for SmallValueBatchArg {
    type Reply = ();
}

struct BenchActor;
impl BenchActor {
    fn new() -> BenchActor {
        BenchActor
    }
}
impl Actor for BenchActor {}
impl Handler<SmallValue> for BenchActor {
    fn handle(&mut self, _: SmallValue, _: &mut ActorContext<Self>) -> Vec<u8> {
        b"ok".to_vec()
    }
}
impl Handler<SmallValueArg> for BenchActor {
    fn handle(&mut self, SmallValueArg(x): SmallValueArg, _: &mut ActorContext<Self>) -> Vec<u8> {
        // Ray resolves the ref argument before the call; so do we.
        let _ = x.get_shared();
        b"ok".to_vec()
    }
}
impl Handler<SmallValueBatch> for BenchActor {
    fn handle(&mut self, SmallValueBatch(n): SmallValueBatch, ctx: &mut ActorContext<Self>) {
        let rt = ctx.runtime();
        let refs: Vec<_> = (0..n).map(|_| rt.task(small_value).remote(())).collect();
        rt.get(&refs, None).expect("batch");
    }
}

struct AsyncBenchActor;
impl AsyncBenchActor {
    fn new() -> AsyncBenchActor {
        AsyncBenchActor
    }
}
impl Actor for AsyncBenchActor {
    const ASYNC: bool = true;
}
impl AsyncHandler<SmallValue> for AsyncBenchActor {
    async fn handle(self: Arc<Self>, _: SmallValue, _: AsyncContext<Self>) -> Vec<u8> {
        b"ok".to_vec()
    }
}
impl AsyncHandler<SmallValueWithArg> for AsyncBenchActor {
    async fn handle(self: Arc<Self>, _: SmallValueWithArg, _: AsyncContext<Self>) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// Ray's `Client`: calls its servers from inside an actor.
struct Client<S: Actor> {
    servers: Vec<ActorHandle<S>>,
}
impl<S: Actor> Client<S> {
    fn new(servers: Vec<ActorHandle<S>>) -> Client<S> {
        Client { servers }
    }
}
impl<S: Actor> Actor for Client<S> {}
impl Handler<SmallValueBatch> for Client<BenchActor> {
    fn handle(&mut self, SmallValueBatch(n): SmallValueBatch, ctx: &mut ActorContext<Self>) {
        let refs: Vec<_> = self
            .servers
            .iter()
            .flat_map(|s| (0..n).map(|_| s.call(SmallValue)))
            .collect();
        ctx.runtime().get(&refs, None).expect("batch");
    }
}
impl Handler<SmallValueBatchArg> for Client<BenchActor> {
    fn handle(&mut self, SmallValueBatchArg(n): SmallValueBatchArg, ctx: &mut ActorContext<Self>) {
        let rt = ctx.runtime();
        let x = rt.put(0i64).expect("put");
        let refs: Vec<_> = self
            .servers
            .iter()
            .flat_map(|s| (0..n).map(|_| s.call(SmallValueArg(x.clone()))))
            .collect();
        rt.get(&refs, None).expect("batch");
    }
}
impl Handler<SmallValueBatch> for Client<AsyncBenchActor> {
    fn handle(&mut self, SmallValueBatch(n): SmallValueBatch, ctx: &mut ActorContext<Self>) {
        let refs: Vec<_> = self
            .servers
            .iter()
            .flat_map(|s| (0..n).map(|_| s.call(SmallValue)))
            .collect();
        ctx.runtime().get(&refs, None).expect("batch");
    }
}

// Registered by name, so that in cluster mode the head can place them on the
// node process (the same binary).
rayx::remote_actor!(
    BenchActor,
    BenchActor::new,
    [SmallValue, SmallValueArg, SmallValueBatch]
);
rayx::remote_actor!(
    async AsyncBenchActor,
    AsyncBenchActor::new,
    [SmallValue, SmallValueWithArg]
);
rayx::remote_actor!(
    Client<BenchActor>,
    Client::<BenchActor>::new,
    [SmallValueBatch, SmallValueBatchArg]
);
rayx::remote_actor!(
    Client<AsyncBenchActor>,
    Client::<AsyncBenchActor>::new,
    [SmallValueBatch]
);

fn main() {
    // In cluster mode this binary is also the node process.
    rayx::testing::serve_if_node();
    let cluster_mode = std::env::args().any(|a| a == "--cluster");
    let bench = Bench {
        quick: std::env::args().any(|a| a == "--quick")
            || std::env::var_os("RAYX_BENCH_QUICK").is_some(),
        run: std::env::var("TESTS_TO_RUN").ok().filter(|s| !s.is_empty()),
        skip: std::env::var("TESTS_TO_SKIP")
            .ok()
            .filter(|s| !s.is_empty()),
        nodes: Vec::new(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cluster = cluster_mode.then(|| {
        // The driver (and head) offers no CPUs: tasks, actors and the objects
        // they make live in the node process, as Ray's do in its workers.
        rayx::testing::Cluster::builder()
            .nodes(1)
            .node_cpus(cores as f64)
            .node_resource("custom", 100.0)
            .start()
            .expect("cluster")
    });
    // Ray's `ray microbenchmark` starts Ray with 100 of a `custom` resource,
    // for its placement groups' bundles.
    let rt = match &cluster {
        Some(c) => c.driver().clone(),
        None => rayx::Builder::new()
            .resource("custom", 100.0)
            .start()
            .expect("runtime"),
    };
    let bench = Bench {
        nodes: cluster
            .as_ref()
            .map_or_else(Vec::new, |c| c.nodes().iter().map(|n| n.pid()).collect()),
        ..bench
    };
    let n_cpu = (cores / 2).max(1);
    println!(
        "# rayx microbenchmark: {} workers{}{}",
        cores,
        if cluster_mode {
            ", cluster mode (a driver process, and a node process on loopback running every task and actor)"
        } else {
            ""
        },
        if bench.quick { ", quick mode" } else { "" }
    );

    let value = rt.put(0i64).expect("put");
    bench.timeit("single client get calls (Plasma Store)", 1.0, || {
        value.get().expect("get");
    });
    bench.timeit("single client put calls (Plasma Store)", 1.0, || {
        drop(rt.put(0i64).expect("put"));
    });
    bench.timeit("multi client put calls (Plasma Store)", 1000.0, || {
        let refs: Vec<_> = (0..10).map(|_| rt.task(do_put_small).remote(())).collect();
        rt.get(&refs, None).expect("puts");
    });

    // Ray's put copies the caller's array (its bytes) into the object store,
    // whose memory it keeps from put to put; so does rayx's put_copy (rayx's
    // put moves a value in, with no copy).
    let len = if bench.quick {
        1 << 20
    } else {
        100 * 1024 * 1024
    };
    let arr: Vec<u8> = (0..len as i64).flat_map(i64::to_le_bytes).collect();
    // Ray's multipliers: it counts its 100 Mi int64 array (839 MB) as 0.8
    // "gigabytes" per put, and 8 per round of the multi-client metric.
    let gb = |elements: usize| 0.8 * elements as f64 / (100.0 * 1024.0 * 1024.0);
    bench.timeit("single client put gigabytes", gb(len), || {
        drop(rt.put_copy(&arr).expect("put"));
    });

    bench.timeit("single client tasks and get batch", 1.0, || {
        let refs: Vec<_> = (0..1000).map(|_| rt.task(small_value).remote(())).collect();
        rt.get(&refs, None).expect("batch");
    });

    let template = rt.put_copy(&arr[..arr.len() / 10]).expect("put");
    bench.timeit("multi client put gigabytes", gb(len / 10 * 100), || {
        let refs: Vec<_> = (0..10)
            .map(|_| rt.task(do_put).remote(template.clone()))
            .collect();
        rt.get(&refs, None).expect("puts");
    });

    let containing = rt.task(create_object_containing_ref).remote(());
    bench.timeit("single client get object containing 10k refs", 1.0, || {
        containing.get().expect("get");
    });

    bench.timeit("single client wait 1k refs", 1.0, || {
        let mut not_ready: Vec<_> = (0..1000).map(|_| rt.task(small_value).remote(())).collect();
        for _ in 0..1000 {
            let (_ready, rest) = rt.wait(not_ready, 1, None).expect("wait");
            not_ready = rest;
        }
    });

    bench.timeit("single client tasks sync", 1.0, || {
        rt.task(small_value).remote(()).get().expect("get");
    });
    bench.timeit("single client tasks async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| rt.task(small_value).remote(())).collect();
        rt.get(&refs, None).expect("batch");
    });

    let (n, m) = (10_000, 4);
    let actors: Vec<_> = (0..m)
        .map(|_| rt.actor_of(BenchActor::new, ()).spawn().expect("actor"))
        .collect();
    bench.timeit("multi client tasks async", (n * m) as f64, || {
        let refs: Vec<_> = actors.iter().map(|a| a.call(SmallValueBatch(n))).collect();
        rt.get(&refs, None).expect("batches");
    });

    let a = rt.actor_of(BenchActor::new, ()).spawn().expect("actor");
    bench.timeit("1:1 actor calls sync", 1.0, || {
        a.call(SmallValue).get().expect("call");
    });
    bench.timeit("1:1 actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| a.call(SmallValue)).collect();
        rt.get(&refs, None).expect("calls");
    });
    // Ray's threaded actor (max_concurrency=16 on a sync actor); rayx runs
    // concurrent calls on an async actor.
    let c = rt
        .async_actor_of(AsyncBenchActor::new, ())
        .max_concurrency(16)
        .spawn()
        .expect("actor");
    bench.timeit("1:1 actor calls concurrent", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| c.call(SmallValue)).collect();
        rt.get(&refs, None).expect("calls");
    });

    let n = 5000;
    let servers: Vec<_> = (0..n_cpu)
        .map(|_| rt.actor_of(BenchActor::new, ()).spawn().expect("actor"))
        .collect();
    let client = rt
        .actor_of(Client::<BenchActor>::new, servers.clone())
        .spawn()
        .expect("client");
    bench.timeit("1:n actor calls async", (n * servers.len()) as f64, || {
        client.call(SmallValueBatch(n)).get().expect("batch");
    });

    let m = 4;
    bench.timeit("n:n actor calls async", (m * n) as f64, || {
        let refs: Vec<_> = (0..m)
            .map(|_| rt.task(work).remote((servers.clone(), n)))
            .collect();
        rt.get(&refs, None).expect("work");
    });

    let n = 1000;
    let clients: Vec<_> = (0..n_cpu)
        .map(|_| {
            let server = rt.actor_of(BenchActor::new, ()).spawn().expect("actor");
            rt.actor_of(Client::<BenchActor>::new, vec![server])
                .spawn()
                .expect("client")
        })
        .collect();
    bench.timeit(
        "n:n actor calls with arg async",
        (n * clients.len()) as f64,
        || {
            let refs: Vec<_> = clients
                .iter()
                .map(|c| c.call(SmallValueBatchArg(n)))
                .collect();
            rt.get(&refs, None).expect("batches");
        },
    );

    let a = rt
        .async_actor_of(AsyncBenchActor::new, ())
        .spawn()
        .expect("actor");
    bench.timeit("1:1 async-actor calls sync", 1.0, || {
        a.call(SmallValue).get().expect("call");
    });
    bench.timeit("1:1 async-actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| a.call(SmallValue)).collect();
        rt.get(&refs, None).expect("calls");
    });
    bench.timeit("1:1 async-actor calls with args async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|i| a.call(SmallValueWithArg(i))).collect();
        rt.get(&refs, None).expect("calls");
    });

    let n = 5000;
    let servers: Vec<_> = (0..n_cpu)
        .map(|_| {
            rt.async_actor_of(AsyncBenchActor::new, ())
                .spawn()
                .expect("actor")
        })
        .collect();
    let client = rt
        .actor_of(Client::<AsyncBenchActor>::new, servers.clone())
        .spawn()
        .expect("client");
    bench.timeit(
        "1:n async-actor calls async",
        (n * servers.len()) as f64,
        || {
            client.call(SmallValueBatch(n)).get().expect("batch");
        },
    );
    let m = 4;
    bench.timeit("n:n async-actor calls async", (m * n) as f64, || {
        let refs: Vec<_> = (0..m)
            .map(|_| rt.task(async_actor_work).remote((servers.clone(), n)))
            .collect();
        rt.get(&refs, None).expect("work");
    });

    // Ray's shape: 100 groups of one `{custom: 0.001}` bundle created, each
    // waited for, then all removed. In cluster mode the head is in this
    // process and the `custom` resource on the node process: each group is
    // reserved there, and ready once that node has taken it.
    bench.timeit("placement group create/removal", 100.0, || {
        let pgs: Vec<_> = (0..100)
            .map(|_| {
                rt.placement_group([[("custom", 0.001)]])
                    .create()
                    .expect("placement group")
            })
            .collect();
        for pg in &pgs {
            assert_eq!(pg.wait(Duration::from_secs(30)), Ok(true), "ready");
        }
        for pg in &pgs {
            rt.remove_placement_group(pg).expect("removed");
        }
    });
    drop((
        value, template, containing, actors, a, c, client, clients, servers,
    ));
    if let Some(cluster) = cluster {
        // Driver and node together, at idle and under light traffic.
        light(&bench, &rt);
        drop(rt);
        cluster::extras(&bench, cluster);
        return;
    }
    rt.shutdown();

    floor(&bench, &arr);
    drop(arr);
    let rt = rayx::init().expect("runtime");
    light(&bench, &rt);
    rt.shutdown();
    scale(&bench);
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}
rayx::remote!(sleep_ms);

/// CPU when little happens: a runtime at idle, and one call or task every
/// 5 ms (a service under light traffic), as `cpu: NAME: X us ...` lines. In
/// cluster mode on `rt`, the driver's (which offers no CPUs: the actor and
/// tasks are on the node) with the node processes' CPU added.
fn light(bench: &Bench, rt: &Runtime) {
    let window = if bench.quick {
        Duration::from_millis(100)
    } else if bench.nodes.is_empty() {
        Duration::from_secs(3)
    } else {
        // The nodes' CPU comes in clock ticks (10 ms): a longer window.
        Duration::from_secs(6)
    };
    let cpu = || cpu_time() + bench.nodes_cpu().unwrap_or_default();
    let a = rt.actor_of(BenchActor::new, ()).spawn().expect("actor");
    a.call(SmallValue).get().expect("warm-up");
    rt.task(small_value).remote(()).get().expect("warm-up");

    let name = "cpu: idle runtime";
    if bench.selected(name) {
        let c0 = cpu();
        std::thread::sleep(window);
        let us = cpu().saturating_sub(c0).as_secs_f64() * 1e6 / window.as_secs_f64();
        println!("{name}: {us:.1} us of CPU per second");
    }
    let every = Duration::from_millis(5);
    let paced = |name: &str, op: &dyn Fn()| {
        if !bench.selected(name) {
            return;
        }
        let n = (window.as_secs_f64() / every.as_secs_f64()) as u32;
        let (c0, t0) = (cpu(), Instant::now());
        for i in 1..=n {
            op();
            if let Some(rest) = (t0 + every * i).checked_duration_since(Instant::now()) {
                std::thread::sleep(rest);
            }
        }
        let us = cpu().saturating_sub(c0).as_secs_f64() * 1e6 / n as f64;
        println!("{name}: {us:.1} us of CPU per call");
    };
    paced("cpu: one actor call every 5 ms", &|| {
        a.call(SmallValue).get().expect("call");
    });
    paced("cpu: one task every 5 ms", &|| {
        rt.task(small_value).remote(()).get().expect("task");
    });
}

/// What the parts cost: raw actix message passing and memory copies.
fn floor(bench: &Bench, arr: &[u8]) {
    use actix::prelude::*;

    struct Echo;
    impl actix::Actor for Echo {
        type Context = actix::Context<Self>;
        fn started(&mut self, ctx: &mut Self::Context) {
            ctx.set_mailbox_capacity(usize::MAX);
        }
    }
    #[derive(actix::Message)]
    #[rtype(result = "u64")]
    struct Ping(u64);
    impl actix::Handler<Ping> for Echo {
        type Result = u64;
        fn handle(&mut self, Ping(x): Ping, _: &mut Self::Context) -> u64 {
            x
        }
    }

    let sys = actix_rt::System::new();
    let arbiter = sys.block_on(async { actix_rt::Arbiter::new() });
    let addr = sys.block_on(async { Echo::start_in_arbiter(&arbiter.handle(), |_| Echo) });
    bench.timeit(
        "floor: actix send().await round trip to another arbiter",
        1.0,
        || {
            sys.block_on(async { addr.send(Ping(1)).await.expect("echo") });
        },
    );
    bench.timeit(
        "floor: actix send batch of 1000 to another arbiter",
        1000.0,
        || {
            sys.block_on(async {
                let requests: Vec<_> = (0..1000).map(|i| addr.send(Ping(i))).collect();
                for r in requests {
                    r.await.expect("echo");
                }
            });
        },
    );
    arbiter.stop();

    // The spinning floor: a thread serving a crossbeam channel, both sides
    // polling (`try_recv` in a loop) and never sleeping: the fastest a call can
    // cross threads, at the price of two cores.
    let (requests, serve) = crossbeam_channel::unbounded::<u64>();
    let (replies, answers) = crossbeam_channel::unbounded::<u64>();
    let server = std::thread::spawn(move || loop {
        match serve.try_recv() {
            Ok(x) => {
                let _ = replies.send(x);
            }
            Err(crossbeam_channel::TryRecvError::Empty) => std::hint::spin_loop(),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return,
        }
    });
    let answer = || loop {
        match answers.try_recv() {
            Ok(x) => return x,
            Err(_) => std::hint::spin_loop(),
        }
    };
    bench.timeit(
        "floor: crossbeam channel round trip to another thread, both spinning",
        1.0,
        || {
            requests.send(1).expect("server");
            answer();
        },
    );
    bench.timeit(
        "floor: crossbeam channel batch of 1000 to another thread, both spinning",
        1000.0,
        || {
            for i in 0..1000 {
                requests.send(i).expect("server");
            }
            for _ in 0..1000 {
                answer();
            }
        },
    );
    drop(requests);
    server.join().expect("server");

    let bytes = std::mem::size_of_val(arr);
    bench.timeit(
        "floor: memory copy gigabytes (clone into fresh pages)",
        bytes as f64 / 1e9,
        || {
            drop(std::hint::black_box(arr.to_vec()));
        },
    );
    let source = vec![7u8; bytes];
    bench.timeit(
        "floor: memory copy gigabytes (into fresh huge pages)",
        bytes as f64 / 1e9,
        || {
            // As the engine's landing buffers: a new mapping asked for 2 MiB pages.
            let mut fresh = rayx_actors::pages::zeroed(bytes);
            fresh.copy_from_slice(&source);
            drop(std::hint::black_box(fresh));
        },
    );
    drop(source);
    let mut warm = vec![0u8; arr.len()];
    bench.timeit(
        "floor: memory copy gigabytes (into a warm buffer)",
        bytes as f64 / 1e9,
        || {
            warm.copy_from_slice(arr);
            std::hint::black_box(&warm);
        },
    );
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Submits `tasks` no-op tasks on a fresh runtime, first making every worker
/// busy for `busy_ms` (if not 0), gets them all, and prints the time and the
/// peak memory of it.
fn submit_and_get_all(name: &str, tasks: usize, busy_ms: u64) {
    let rt = rayx::init().expect("runtime");
    // Reset the peak marks, so the peaks are this run's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    count_heap_from_zero();
    let start = Instant::now();
    let busy: Vec<_> = (0..rt.num_workers())
        .filter(|_| busy_ms > 0)
        .map(|_| rt.task(sleep_ms).remote(busy_ms))
        .collect();
    let refs: Vec<_> = (0..tasks)
        .map(|_| rt.task(small_value).remote(()))
        .collect();
    let submitted = start.elapsed();
    let values = rt.get(&refs, None).expect("all tasks");
    let total = start.elapsed();
    rt.get(&busy, None).expect("busy tasks");
    stop_counting_heap();
    assert_eq!(values.len(), tasks);
    println!(
        "{name}: {:.2} s (submitted in {:.2} s); peak heap {:.0} MiB above the start, peak RSS {:.0} MiB",
        total.as_secs_f64(),
        submitted.as_secs_f64(),
        mib(PEAK.load(Ordering::Relaxed).max(0) as usize),
        peak_rss_kib() as f64 / 1024.0
    );
    drop((refs, values));
    rt.shutdown();
}

/// Scale: tasks queued behind busy workers (the shape both systems are
/// measured on, with benches/ray/ray_bench.py: every worker busy in a 0.5 s
/// task, then no-op tasks submitted and all got; the time includes the
/// 0.5 s), 1M queued tasks, and memory per idle actor.
fn scale(bench: &Bench) {
    struct Idle;
    impl Actor for Idle {}
    #[derive(Serialize, Deserialize)]
    struct Touch;
    impl Message for Touch {
        type Reply = ();
    }
    impl Handler<Touch> for Idle {
        fn handle(&mut self, _: Touch, _: &mut ActorContext<Self>) {}
    }

    let (tasks, actors) = if bench.quick {
        (10_000, 1_000)
    } else {
        (1_000_000, 10_000)
    };
    let queued = if bench.quick { 10_000 } else { 100_000 };
    let name = format!("scale: {queued} tasks queued behind busy workers, then got");
    if bench.selected(&name) {
        submit_and_get_all(&name, queued, 500);
    }
    let name = format!("scale: submit {tasks} no-op tasks and get them all");
    if bench.selected(&name) {
        submit_and_get_all(&name, tasks, 0);
    }
    let name = format!("scale: memory per idle actor ({actors} actors)");
    if bench.selected(&name) {
        let rt = rayx::init().expect("runtime");
        count_heap_from_zero();
        let handles: Vec<_> = (0..actors)
            .map(|_| rt.actor(|| Idle).spawn().expect("actor"))
            .collect();
        let touched: Vec<_> = handles.iter().map(|h| h.call(Touch)).collect();
        rt.get(&touched, Some(Duration::from_secs(120)))
            .expect("every actor started");
        drop(touched);
        let grown = LIVE.load(Ordering::Relaxed);
        stop_counting_heap();
        println!(
            "{name}: {:.0} bytes of heap per actor (handle included)",
            grown.max(0) as f64 / actors as f64
        );
        drop(handles);
        rt.shutdown();
    }
}
