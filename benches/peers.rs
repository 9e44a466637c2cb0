//! rayx against the Rust libraries a user would pick instead, on their own
//! ground, each with its defaults, in one run on one machine:
//!
//! - **parallel tasks** — rayx tasks, rayon's `par_iter`, plain threads with a
//!   crossbeam channel, and `tokio::spawn`: 100,000 tasks of 10 µs of CPU and
//!   2,000 of 1 ms, submitted at once and all collected. Reported as parallel
//!   efficiency: the work's serial time over cores × wall time.
//! - **actor calls** — rayx, ractor, kameo and actix, with a thread serving a
//!   crossbeam channel as the floor: sequential request–reply, pipelined
//!   batches of 1,000 from one client, and fan-in of 4 clients (OS threads, or
//!   async tasks on a tokio runtime) sending batches of 100 to one actor.
//!
//! Each line is the median of 5 runs with the spread (min–max) and the CPU
//! time per operation of the whole process (user + system, from
//! `getrusage`), so a library that buys speed by spinning shows it:
//!
//! `peer | WORKLOAD | LIBRARY | MEDIAN/s | MIN..MAX | CPU µs/op | EFFICIENCY`
//!
//! `cargo bench --bench peers`; `-- --quick` for a short run (CI).
//! `TESTS_TO_RUN` / `TESTS_TO_SKIP` filter workloads by substring, `LIBRARIES`
//! libraries (e.g. `LIBRARIES=rayx,rayon`).

#[path = "common/cpu.rs"]
mod cpu;
use cpu::cpu_time;
use rayx::prelude::*;
use std::future::IntoFuture;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;

// ---------------------------------------------------------------- measuring

struct Config {
    quick: bool,
    runs: usize,
    run: Option<String>,
    skip: Option<String>,
    libraries: Option<Vec<String>>,
    cores: usize,
}

impl Config {
    fn selected(&self, workload: &str) -> bool {
        self.run
            .as_ref()
            .is_none_or(|p| workload.contains(p.as_str()))
            && self
                .skip
                .as_ref()
                .is_none_or(|p| !workload.contains(p.as_str()))
    }
    /// How long a timed run of calls lasts.
    fn window(&self) -> Duration {
        if self.quick {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(600)
        }
    }
}

/// One run: operations done, wall time, CPU time.
struct Run {
    ops: u64,
    wall: Duration,
    cpu: Duration,
}

fn timed(f: impl FnOnce() -> u64) -> Run {
    let (c0, t0) = (cpu_time(), Instant::now());
    let ops = f();
    Run {
        wall: t0.elapsed(),
        cpu: cpu_time() - c0,
        ops,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `one_run` `cfg.runs` times (after one warm-up) and prints its line.
/// `serial`: the work's serial time per operation, for the efficiency column.
fn report(
    cfg: &Config,
    workload: &str,
    library: &str,
    serial: Option<Duration>,
    mut one_run: impl FnMut() -> Run,
) {
    if !cfg
        .libraries
        .as_ref()
        .is_none_or(|l| l.iter().any(|x| library.starts_with(x.as_str())))
    {
        return;
    }
    let _ = one_run();
    let runs: Vec<Run> = (0..cfg.runs).map(|_| one_run()).collect();
    let rates: Vec<f64> = runs
        .iter()
        .map(|r| r.ops as f64 / r.wall.as_secs_f64())
        .collect();
    let cpu = median(
        runs.iter()
            .map(|r| r.cpu.as_secs_f64() * 1e6 / r.ops as f64)
            .collect(),
    );
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    let rate = median(rates);
    let efficiency = serial.map_or("-".to_string(), |s| {
        format!("{:.1}%", 100.0 * rate * s.as_secs_f64() / cfg.cores as f64)
    });
    println!(
        "peer | {workload} | {library} | {rate:.0} | {lo:.0}..{hi:.0} | {cpu:.3} | {efficiency}"
    );
}

// ---------------------------------------------------------------- tasks

/// `iters` steps of a little arithmetic: CPU work the optimizer cannot drop.
fn burn(iters: u64) -> u64 {
    let mut x = iters;
    for i in 0..iters {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}
rayx::remote!(burn);

/// The `burn` steps that take `target` on one thread, and their measured time.
fn calibrate(target: Duration) -> (u64, Duration) {
    // Warm the core up first (clock, caches), then find the steps twice.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        black_box(burn(10_000));
    }
    let (iters, _) = find_steps(target);
    let per = serial_time(iters);
    let iters = (iters as f64 * target.as_secs_f64() / per.as_secs_f64()) as u64;
    (iters, serial_time(iters))
}

fn find_steps(target: Duration) -> (u64, Duration) {
    let mut iters = 1000u64;
    loop {
        let t = Instant::now();
        for _ in 0..100 {
            black_box(burn(iters));
        }
        let per = t.elapsed() / 100;
        if per >= target / 2 {
            let iters = (iters as f64 * target.as_secs_f64() / per.as_secs_f64()) as u64;
            return (iters, serial_time(iters));
        }
        iters *= 2;
    }
}

/// The time of one `burn(iters)` on one thread (median of 7 batches).
fn serial_time(iters: u64) -> Duration {
    let per: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..50 {
                black_box(burn(iters));
            }
            t.elapsed().as_secs_f64() / 50.0
        })
        .collect();
    Duration::from_secs_f64(median(per))
}

fn tasks(cfg: &Config, workload: &str, n: u64, each: Duration) {
    if !cfg.selected(workload) {
        return;
    }
    let n = if cfg.quick { n / 20 } else { n };
    let (iters, serial) = calibrate(each);
    let cores = cfg.cores;
    println!(
        "# {workload}: burn({iters}) takes {:.2} us on one thread (the efficiency's serial time)",
        serial.as_secs_f64() * 1e6
    );

    let rt = rayx::init().expect("runtime");
    report(cfg, workload, "rayx", Some(serial), || {
        timed(|| {
            let refs: Vec<_> = (0..n).map(|_| rt.task(burn).remote(iters)).collect();
            black_box(rt.get(&refs, None).expect("tasks"));
            n
        })
    });
    rt.shutdown();

    report(cfg, workload, "rayon", Some(serial), || {
        use rayon::prelude::*;
        timed(|| {
            let sum: u64 = (0..n).into_par_iter().map(|_| burn(iters)).sum();
            black_box(sum);
            n
        })
    });

    {
        let (jobs, take) = crossbeam_channel::unbounded::<u64>();
        let (done, results) = crossbeam_channel::unbounded::<u64>();
        let threads: Vec<_> = (0..cores)
            .map(|_| {
                let (take, done) = (take.clone(), done.clone());
                std::thread::spawn(move || {
                    for iters in take {
                        let _ = done.send(burn(iters));
                    }
                })
            })
            .collect();
        report(cfg, workload, "threads + channel", Some(serial), || {
            timed(|| {
                for _ in 0..n {
                    jobs.send(iters).expect("send");
                }
                for _ in 0..n {
                    black_box(results.recv().expect("result"));
                }
                n
            })
        });
        drop(jobs);
        for t in threads {
            t.join().expect("thread");
        }
    }

    let tokio_rt = tokio::runtime::Builder::new_multi_thread()
        .build()
        .expect("tokio");
    report(cfg, workload, "tokio::spawn", Some(serial), || {
        timed(|| {
            tokio_rt.block_on(async {
                let handles: Vec<_> = (0..n)
                    .map(|_| tokio::spawn(async move { burn(iters) }))
                    .collect();
                for h in handles {
                    black_box(h.await.expect("task"));
                }
            });
            n
        })
    });
    println!(
        "# {workload}: burn({iters}) takes {:.2} us on one thread after the runs",
        serial_time(iters).as_secs_f64() * 1e6
    );
}

// ---------------------------------------------------------------- calls

/// How a client reaches the actor under test.
trait Caller: Send + Sync + 'static {
    /// One call, waited for (from a plain thread).
    fn call(&self);
    /// `n` calls sent at once, then all waited for (from a plain thread).
    fn batch(&self, n: usize);
    /// `n` calls sent at once, awaited (from an async task).
    fn batch_async(self: Arc<Self>, n: usize) -> futures::future::BoxFuture<'static, ()>;
}

/// Each call workload, for one library.
fn calls(cfg: &Config, library: &str, caller: Arc<dyn Caller>) {
    let window = cfg.window();
    let until = |t: Instant| t.elapsed() < window;

    let w = "sequential calls";
    if cfg.selected(w) {
        report(cfg, w, library, None, || {
            timed(|| {
                let (t, mut ops) = (Instant::now(), 0);
                while until(t) {
                    for _ in 0..100 {
                        caller.call();
                    }
                    ops += 100;
                }
                ops
            })
        });
    }

    let w = "pipelined calls";
    if cfg.selected(w) {
        report(cfg, w, library, None, || {
            timed(|| {
                let (t, mut ops) = (Instant::now(), 0);
                while until(t) {
                    caller.batch(1000);
                    ops += 1000;
                }
                ops
            })
        });
    }

    let w = "fan-in, 4 thread clients";
    if cfg.selected(w) {
        report(cfg, w, library, None, || {
            timed(|| {
                let t = Instant::now();
                std::thread::scope(|s| {
                    let clients: Vec<_> = (0..CLIENTS)
                        .map(|_| {
                            s.spawn(|| {
                                let mut ops = 0;
                                while until(t) {
                                    caller.batch(100);
                                    ops += 100;
                                }
                                ops
                            })
                        })
                        .collect();
                    clients.into_iter().map(|c| c.join().expect("client")).sum()
                })
            })
        });
    }

    let w = "fan-in, 4 async clients";
    if cfg.selected(w) {
        let clients_rt = tokio::runtime::Builder::new_multi_thread()
            .build()
            .expect("tokio");
        report(cfg, w, library, None, || {
            timed(|| {
                let t = Instant::now();
                clients_rt.block_on(async {
                    let clients: Vec<_> = (0..CLIENTS)
                        .map(|_| {
                            let caller = caller.clone();
                            tokio::spawn(async move {
                                let mut ops = 0;
                                while t.elapsed() < window {
                                    caller.clone().batch_async(100).await;
                                    ops += 100;
                                }
                                ops
                            })
                        })
                        .collect();
                    let mut ops = 0;
                    for c in clients {
                        ops += c.await.expect("client");
                    }
                    ops
                })
            })
        });
    }
}

// rayx

#[derive(Serialize, Deserialize)]
struct Ping;
impl Message for Ping {
    type Reply = u64;
}
struct Pong;
impl Actor for Pong {}
impl Handler<Ping> for Pong {
    fn handle(&mut self, _: Ping, _: &mut ActorContext<Self>) -> u64 {
        1
    }
}

struct RayxCaller {
    rt: Runtime,
    actor: ActorHandle<Pong>,
}
impl Caller for RayxCaller {
    fn call(&self) {
        black_box(self.actor.call(Ping).get().expect("call"));
    }
    fn batch(&self, n: usize) {
        let refs: Vec<_> = (0..n).map(|_| self.actor.call(Ping)).collect();
        black_box(self.rt.get(&refs, None).expect("calls"));
    }
    fn batch_async(self: Arc<Self>, n: usize) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let refs: Vec<_> = (0..n).map(|_| self.actor.call(Ping)).collect();
            for r in futures::future::join_all(refs.into_iter().map(IntoFuture::into_future)).await
            {
                black_box(r.expect("call"));
            }
        })
    }
}

// ractor

enum RactorMsg {
    Ping(ractor::RpcReplyPort<u64>),
}
struct RactorPong;
impl ractor::Actor for RactorPong {
    type Msg = RactorMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(
        &self,
        _: ractor::ActorRef<RactorMsg>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _: ractor::ActorRef<RactorMsg>,
        RactorMsg::Ping(reply): RactorMsg,
        _: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        let _ = reply.send(1);
        Ok(())
    }
}

// kameo

struct KameoPing;
#[derive(kameo::Actor)]
struct KameoPong;
impl kameo::message::Message<KameoPing> for KameoPong {
    type Reply = u64;
    async fn handle(
        &mut self,
        _: KameoPing,
        _: &mut kameo::message::Context<Self, Self::Reply>,
    ) -> u64 {
        1
    }
}

// actix

struct ActixPing;
impl actix::Message for ActixPing {
    type Result = u64;
}
struct ActixPong;
impl actix::Actor for ActixPong {
    type Context = actix::Context<Self>;
}
impl actix::Handler<ActixPing> for ActixPong {
    type Result = u64;
    fn handle(&mut self, _: ActixPing, _: &mut actix::Context<Self>) -> u64 {
        1
    }
}

/// What ractor, kameo and actix share here: an async `ask` of one call.
trait Ask: Send + Sync + 'static {
    fn ask(&self) -> impl std::future::Future<Output = u64> + Send;
}
impl Ask for ractor::ActorRef<RactorMsg> {
    async fn ask(&self) -> u64 {
        ractor::call!(self, RactorMsg::Ping).expect("call")
    }
}
impl Ask for kameo::actor::ActorRef<KameoPong> {
    async fn ask(&self) -> u64 {
        self.ask(KameoPing).await.expect("call")
    }
}
impl Ask for actix::Addr<ActixPong> {
    async fn ask(&self) -> u64 {
        self.send(ActixPing).await.expect("call")
    }
}

/// A library's actor, reached from plain threads by blocking on its tokio
/// runtime (`rt`), or on a plain executor (actix, whose actor lives on its
/// own arbiter).
struct AskCaller<A> {
    rt: Option<tokio::runtime::Handle>,
    actor: A,
}
impl<A: Ask> AskCaller<A> {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => futures::executor::block_on(f),
        }
    }
}
impl<A: Ask> Caller for AskCaller<A> {
    fn call(&self) {
        black_box(self.block_on(self.actor.ask()));
    }
    fn batch(&self, n: usize) {
        let calls = (0..n).map(|_| self.actor.ask());
        black_box(self.block_on(futures::future::join_all(calls)));
    }
    fn batch_async(self: Arc<Self>, n: usize) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let calls = (0..n).map(|_| self.actor.ask());
            black_box(futures::future::join_all(calls).await);
        })
    }
}

// The floor: a thread serving a crossbeam channel, a reply channel per call.

type Reply = crossbeam_channel::Sender<u64>;
struct ThreadCaller {
    requests: crossbeam_channel::Sender<Reply>,
}
impl ThreadCaller {
    fn start() -> (Arc<ThreadCaller>, std::thread::JoinHandle<()>) {
        let (requests, serve) = crossbeam_channel::unbounded::<Reply>();
        let server = std::thread::spawn(move || {
            for reply in serve {
                let _ = reply.send(1);
            }
        });
        (Arc::new(ThreadCaller { requests }), server)
    }
    fn send(&self) -> crossbeam_channel::Receiver<u64> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.requests.send(reply).expect("server");
        answer
    }
}
impl Caller for ThreadCaller {
    fn call(&self) {
        black_box(self.send().recv().expect("reply"));
    }
    fn batch(&self, n: usize) {
        let answers: Vec<_> = (0..n).map(|_| self.send()).collect();
        for a in answers {
            black_box(a.recv().expect("reply"));
        }
    }
    fn batch_async(self: Arc<Self>, n: usize) -> futures::future::BoxFuture<'static, ()> {
        // A blocking receive inside an async task: the floor is for threads.
        Box::pin(async move { self.batch(n) })
    }
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let quick =
        std::env::args().any(|a| a == "--quick") || std::env::var_os("RAYX_BENCH_QUICK").is_some();
    let cfg = Config {
        quick,
        runs: if quick { 1 } else { 5 },
        run: std::env::var("TESTS_TO_RUN").ok().filter(|s| !s.is_empty()),
        skip: std::env::var("TESTS_TO_SKIP")
            .ok()
            .filter(|s| !s.is_empty()),
        libraries: std::env::var("LIBRARIES")
            .ok()
            .filter(|s| !s.is_empty())
            .map(|s| s.split(',').map(str::to_string).collect()),
        cores,
    };
    println!(
        "# rayx and its peers: {cores} cores, median of {} runs{}",
        cfg.runs,
        if quick { ", quick mode" } else { "" }
    );
    println!("# peer | workload | library | median per second | min..max | CPU µs per op | parallel efficiency");

    tasks(&cfg, "tasks of 10 µs", 100_000, Duration::from_micros(10));
    tasks(&cfg, "tasks of 1 ms", 2_000, Duration::from_millis(1));

    let call_workloads = [
        "sequential calls",
        "pipelined calls",
        "fan-in, 4 thread clients",
        "fan-in, 4 async clients",
    ];
    if !call_workloads.iter().any(|w| cfg.selected(w)) {
        return;
    }

    {
        let rt = rayx::init().expect("runtime");
        let actor = rt.actor(|| Pong).spawn().expect("actor");
        calls(
            &cfg,
            "rayx",
            Arc::new(RayxCaller {
                rt: rt.clone(),
                actor,
            }),
        );
        rt.shutdown();
    }
    {
        // ractor and kameo run on tokio's default multi-thread runtime.
        let tokio_rt = tokio::runtime::Runtime::new().expect("tokio");
        let handle = tokio_rt.handle().clone();
        let (actor, _) = tokio_rt
            .block_on(ractor::Actor::spawn(None, RactorPong, ()))
            .expect("ractor actor");
        calls(
            &cfg,
            "ractor",
            Arc::new(AskCaller {
                rt: Some(handle.clone()),
                actor: actor.clone(),
            }),
        );
        actor.stop(None);
        let actor = tokio_rt.block_on(async {
            use kameo::actor::Spawn;
            KameoPong::spawn(KameoPong)
        });
        calls(
            &cfg,
            "kameo",
            Arc::new(AskCaller {
                rt: Some(handle),
                actor,
            }),
        );
    }
    {
        // actix: the actor on its system's arbiter thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let system = std::thread::spawn(move || {
            let sys = actix::System::new();
            sys.block_on(async {
                use actix::Actor as _;
                let _ = tx.send((ActixPong.start(), actix::System::current()));
            });
            sys.run().expect("actix system");
        });
        let (actor, sys) = rx.recv().expect("actix actor");
        calls(&cfg, "actix", Arc::new(AskCaller { rt: None, actor }));
        sys.stop();
        system.join().expect("actix system");
    }
    {
        let (caller, server) = ThreadCaller::start();
        calls(
            &cfg,
            "floor: thread + crossbeam channel (blocking recv)",
            caller.clone(),
        );
        drop(caller);
        server.join().expect("server");
    }
}
