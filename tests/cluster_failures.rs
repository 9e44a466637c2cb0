//! Failures and strangers, with real OS processes on loopback: nodes killed
//! with SIGKILL, hung with SIGSTOP, cut off by a proxy that goes silent (a
//! partition is silence, not a reset), wrong tokens, and hostile bytes.
//!
//! Its own runner (harness = false): `cargo test --test cluster_failures [filter]`.
//! The tests run one after another; each starts its own cluster.

mod common;

use common::raw_peer::{frame, hello, read_frame, read_until_closed, shake};
use rayx::prelude::*;
use rayx::testing::{Cluster, Proxy};
use rayx::{NodeId, SupervisionEvent};
use serde_bytes::ByteBuf;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The fast health profile of the tests: heartbeats every 100 ms, dead after
/// 10 missed (1 s of silence).
const PERIOD: Duration = Duration::from_millis(100);
const MISSES: u32 = 10;

// ---- what the nodes run -------------------------------------------------------

fn where_am_i(i: u64) -> (u64, u64) {
    (i, Runtime::current().expect("in a task").node_id().0)
}

fn square(x: u64) -> u64 {
    x * x
}

/// Works for `ms` (a task that is still running when its node dies).
fn slow_where(i: u64, ms: u64) -> (u64, u64) {
    std::thread::sleep(Duration::from_millis(ms));
    where_am_i(i)
}

/// An object this node owns, returned inside the result.
fn own_blob(n: usize) -> ObjectRef<ByteBuf> {
    let rt = Runtime::current().expect("in a task");
    rt.put(ByteBuf::from(vec![7u8; n])).unwrap()
}

/// Whether the head answers this node's ask (for the cluster's status).
fn head_answers(_: ()) -> Result<(), String> {
    let rt = Runtime::current().expect("in a task");
    rt.cluster_status().map(drop).map_err(|e| e.to_string())
}

fn call_by_name(name: String, k: u64) -> u64 {
    let rt = Runtime::current().expect("in a task");
    let c = rt.get_actor::<Counter>(&name).expect("named actor");
    c.call(Add(k)).get().expect("call")
}

/// A large result (held on the node that ran it until it is read), tagged
/// with its node.
fn big_result(n: usize) -> (u64, ByteBuf) {
    let node = Runtime::current().expect("in a task").node_id().0;
    (node, ByteBuf::from(vec![(n % 251) as u8; n]))
}

/// From a task: `n` actors named through the head, each looked up there by
/// name and called once (two asks to the head apiece), each counted in
/// `progress`; the sum of what they answered.
fn name_actors_here(n: u64, progress: ActorHandle<Counter>) -> u64 {
    let rt = Runtime::current().expect("in a task");
    (0..n)
        .map(|i| {
            let name = format!("reset-{i}");
            let _made = rt
                .actor_of(new_counter, i)
                .name(name.as_str())
                .spawn()
                .expect("placed by the head");
            let found = rt.get_actor::<Counter>(&name).expect("found at the head");
            let answer = found.call(Add(1)).get().expect("a call");
            progress.call(Add(1)).get().expect("progress told");
            answer
        })
        .sum()
}

/// The OS process a node runs in.
fn pid_here(_: ()) -> u32 {
    std::process::id()
}

/// Reads a borrowed value where the task runs.
fn len_of(r: ObjectRef<ByteBuf>) -> usize {
    r.get().expect("a borrowed value stays readable").len()
}

/// Breaks this node's links to its peers (a network blip seen from here).
fn blip_here(_: ()) -> usize {
    let rt = Runtime::current().expect("in a task");
    rt.reset_peer_links().expect("in a cluster")
}

rayx::remote!(
    where_am_i,
    square,
    slow_where,
    own_blob,
    call_by_name,
    head_answers,
    name_actors_here,
    big_result,
    pid_here,
    len_of,
    blip_here,
    counter_on,
    lists_node,
    call_through,
    look_up_and_add
);

/// Looks the late counter up by name here and adds 1 through it.
fn look_up_and_add(name: String) -> String {
    let rt = Runtime::current().expect("in a task");
    match rt.get_actor::<Late>(&name) {
        Ok(counter) => format!("{:?}", counter.call(Add(1)).get()),
        Err(e) => format!("lookup: {e}"),
    }
}

/// Whether this node lists `node` among the live ones.
fn lists_node(node: u64) -> bool {
    let rt = Runtime::current().expect("in a task");
    rt.nodes().iter().any(|n| n.id == NodeId(node))
}

/// Calls the counter from this node; its reply, or why not.
fn call_through(counter: ActorHandle<Counter>) -> String {
    format!("{:?}", counter.call(Add(0)).get())
}

/// A counter on `node` (hard affinity), not started again if it dies.
fn counter_at(rt: &Runtime, node: NodeId) -> ActorHandle<Counter> {
    rt.actor_of(new_counter, 0)
        .node_affinity(node, false)
        .spawn()
        .expect("the counter starts")
}

/// A counter on `node` (soft affinity), started again once if its node
/// dies, its calls retried once.
fn restartable_counter(rt: &Runtime, node: NodeId) -> ActorHandle<Counter> {
    rt.actor_of(new_counter, 0)
        .max_restarts(1)
        .max_task_retries(1)
        .node_affinity(node, true)
        .spawn()
        .expect("the counter starts")
}

/// Starts a counter on `node` (restarted once if its node dies) and returns
/// its handle: this task's node is its creator.
fn counter_on(node: u64) -> ActorHandle<Counter> {
    let rt = Runtime::current().expect("in a task");
    restartable_counter(&rt, NodeId(node))
}

pub struct Counter {
    n: u64,
}
impl Actor for Counter {}

#[derive(Serialize, Deserialize)]
pub struct Add(u64);
impl Message for Add {
    type Reply = u64;
}
impl Handler<Add> for Counter {
    fn handle(&mut self, Add(k): Add, _: &mut ActorContext<Self>) -> u64 {
        self.n += k;
        self.n
    }
}

/// Adds after working `ms`: calls still in flight when the node dies.
#[derive(Serialize, Deserialize)]
pub struct SlowAdd(u64, u64);
impl Message for SlowAdd {
    type Reply = u64;
}
impl Handler<SlowAdd> for Counter {
    fn handle(&mut self, SlowAdd(k, ms): SlowAdd, _: &mut ActorContext<Self>) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        self.n += k;
        self.n
    }
}

#[derive(Serialize, Deserialize)]
pub struct Where;
impl Message for Where {
    type Reply = u64;
}
impl Handler<Where> for Counter {
    fn handle(&mut self, _: Where, _: &mut ActorContext<Self>) -> u64 {
        Runtime::current().expect("on a node").node_id().0
    }
}

fn new_counter(n: u64) -> Counter {
    Counter { n }
}

/// A reply too large to travel inline (held on the actor's node for its
/// caller until the reply's ref goes).
#[derive(Serialize, Deserialize)]
pub struct Big(usize);
impl Message for Big {
    type Reply = ByteBuf;
}
impl Handler<Big> for Counter {
    fn handle(&mut self, Big(n): Big, _: &mut ActorContext<Self>) -> ByteBuf {
        ByteBuf::from(vec![3u8; n])
    }
}

/// A message whose drop calls another actor (user code that runs wherever
/// the engine lets go of the message).
#[derive(Serialize, Deserialize)]
pub struct Parcel(u64, Option<ActorHandle<Counter>>);
impl Drop for Parcel {
    fn drop(&mut self) {
        if let Some(h) = self.1.take() {
            drop(h.call(Add(1)));
        }
    }
}
impl Message for Parcel {
    type Reply = u64;
}
impl Handler<Parcel> for Counter {
    fn handle(&mut self, p: Parcel, _: &mut ActorContext<Self>) -> u64 {
        std::thread::sleep(Duration::from_millis(p.0));
        self.n
    }
}

rayx::remote_actor!(Counter, new_counter, [Add, SlowAdd, Where, Big, Parcel]);

/// Holds a handle to a counter and calls it from its own node.
pub struct Relay(Option<ActorHandle<Counter>>);
impl Actor for Relay {}
#[derive(Serialize, Deserialize)]
pub struct Forward(u64);
impl Message for Forward {
    type Reply = Result<u64, String>;
}
impl Handler<Forward> for Relay {
    fn handle(&mut self, Forward(k): Forward, _: &mut ActorContext<Self>) -> Result<u64, String> {
        let counter = self.0.as_ref().ok_or("it let go of the counter")?;
        counter.call(Add(k)).get().map_err(|e| e.to_string())
    }
}
fn new_relay(c: ActorHandle<Counter>) -> Relay {
    Relay(Some(c))
}

/// Lets go of the counter's handle.
#[derive(Serialize, Deserialize)]
pub struct Unhand;
impl Message for Unhand {
    type Reply = ();
}
impl Handler<Unhand> for Relay {
    fn handle(&mut self, _: Unhand, _: &mut ActorContext<Self>) {
        self.0 = None;
    }
}
rayx::remote_actor!(Relay, new_relay, [Forward, Unhand]);

/// Keeps the refs it is given, and gives them back inside a large reply.
pub struct Keeper(Vec<ObjectRef<ByteBuf>>);
impl Actor for Keeper {}
#[derive(Serialize, Deserialize)]
pub struct Keep(Vec<ObjectRef<ByteBuf>>);
impl Message for Keep {
    type Reply = usize;
}
impl Handler<Keep> for Keeper {
    fn handle(&mut self, Keep(refs): Keep, _: &mut ActorContext<Self>) -> usize {
        self.0.extend(refs);
        self.0.len()
    }
}
#[derive(Serialize, Deserialize)]
pub struct GiveBack(usize);
impl Message for GiveBack {
    type Reply = (Vec<ObjectRef<ByteBuf>>, ByteBuf);
}
impl Handler<GiveBack> for Keeper {
    fn handle(
        &mut self,
        GiveBack(n): GiveBack,
        _: &mut ActorContext<Self>,
    ) -> <GiveBack as Message>::Reply {
        (self.0.clone(), ByteBuf::from(vec![4u8; n]))
    }
}
fn new_keeper(_: ()) -> Keeper {
    Keeper(Vec::new())
}
rayx::remote_actor!(Keeper, new_keeper, [Keep, GiveBack]);

/// A constructor argument slow to decode: a node takes `ms` to start an
/// actor made with it (the actor's arrival there, not its constructor).
#[derive(Clone)]
pub struct SlowArg(u64);
impl Serialize for SlowArg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}
impl<'de> Deserialize<'de> for SlowArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ms = u64::deserialize(d)?;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(SlowArg(ms))
    }
}
/// A counter whose argument is slow to decode.
pub struct Late(u64);
impl Actor for Late {}
impl Handler<Add> for Late {
    fn handle(&mut self, Add(k): Add, _: &mut ActorContext<Self>) -> u64 {
        self.0 += k;
        self.0
    }
}
fn new_late(_: SlowArg) -> Late {
    Late(0)
}
rayx::remote_actor!(Late, new_late, [Add]);

/// An actor whose state, as it goes, asks the head (a blocking request)
/// and records the answer in the head's key-value store.
pub struct Asker(rayx::WeakRuntime);
impl Actor for Asker {}
impl Handler<Ping> for Asker {
    fn handle(&mut self, _: Ping, _: &mut ActorContext<Self>) {}
}
impl Drop for Asker {
    fn drop(&mut self) {
        if let Some(rt) = self.0.upgrade() {
            if let Ok(Some(v)) = rt.kv_get("asker/before") {
                let _ = rt.kv_put("asker/after", &v, true);
            }
        }
    }
}
fn new_asker(_: ()) -> Asker {
    Asker(Runtime::current().expect("on a node").downgrade())
}
rayx::remote_actor!(Asker, new_asker, [Ping]);

/// Creates a counter on node `on` (restarted once if that node dies) and
/// keeps its handle: the maker's node is the counter's creator.
pub struct Maker(ActorHandle<Counter>);
impl Actor for Maker {}
#[derive(Serialize, Deserialize)]
pub struct Made;
impl Message for Made {
    type Reply = ActorHandle<Counter>;
}
impl Handler<Made> for Maker {
    fn handle(&mut self, _: Made, _: &mut ActorContext<Self>) -> ActorHandle<Counter> {
        self.0.clone()
    }
}
#[derive(Serialize, Deserialize)]
pub struct KillMade;
impl Message for KillMade {
    type Reply = ();
}
impl Handler<KillMade> for Maker {
    fn handle(&mut self, _: KillMade, _: &mut ActorContext<Self>) {
        self.0.kill();
    }
}
fn new_maker(on: u64) -> Maker {
    let rt = Runtime::current().expect("on a node");
    Maker(restartable_counter(&rt, NodeId(on)))
}
rayx::remote_actor!(Maker, new_maker, [Made, KillMade]);

/// An actor whose constructor takes `ms` (still being created when its node
/// dies).
pub struct Slowborn;
impl Actor for Slowborn {}

#[derive(Serialize, Deserialize)]
pub struct Ping;
impl Message for Ping {
    type Reply = ();
}
impl Handler<Ping> for Slowborn {
    fn handle(&mut self, _: Ping, _: &mut ActorContext<Self>) {}
}

fn new_slowborn(ms: u64) -> Slowborn {
    std::thread::sleep(Duration::from_millis(ms));
    Slowborn
}
rayx::remote_actor!(Slowborn, new_slowborn, [Ping]);

// ---- helpers ------------------------------------------------------------------

fn fast_cluster(nodes: usize) -> Cluster {
    Cluster::builder()
        .nodes(nodes)
        .health_check(PERIOD, MISSES)
        .start()
        .expect("a cluster starts")
}

/// Waits until `reader`'s pull of a large object has taken in some bytes.
fn wait_for_its_pull<T>(rt: &Runtime, reader: &std::thread::JoinHandle<T>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.pulls_landing() != Some(1) {
        assert!(
            !reader.is_finished(),
            "the read ended before its pull was seen"
        );
        assert!(Instant::now() < deadline, "the pull never began");
        std::thread::yield_now();
    }
}

/// Waits (up to `within`) for the event that `node` died; its cause.
fn death_of(events: &rayx::Events, node: NodeId, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(SupervisionEvent::NodeDied { node: n, cause }) if n == node.to_string() => {
                return cause
            }
            Ok(_) => {}
            Err(e) => panic!("no NodeDied event for {node} within {within:?}: {e:?}"),
        }
    }
}

/// One more node, joined through a proxy in front of the head (which can
/// reset, stall or silence its connection to the head).
fn node_behind_a_proxy(c: &mut Cluster) -> (Proxy, NodeId) {
    let proxy = Proxy::start(c.address()).unwrap();
    let node = c.add_node_via(proxy.address()).unwrap();
    // Listed by the head once admitted; joined once the head's welcome
    // came back through the proxy, and its asks are answered.
    assert_eq!(head_answers_on(c.driver(), node), Ok(Ok(())));
    (proxy, node)
}

/// A cluster of no node processes whose every connection uses TLS, with a
/// certificate made for it in a directory of its own (`name`'s; the caller
/// removes it).
fn tls_cluster(name: &str) -> (Cluster, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("rayx-tls-{name}-{}", std::process::id()));
    let files = rayx_actors::cluster::tls::TlsFiles::in_dir(&dir);
    assert!(rayx_actors::cluster::tls::generate(&files).unwrap());
    let c = Cluster::builder()
        .nodes(0)
        .health_check(PERIOD, MISSES)
        .tls(&files.cert, &files.key)
        .start()
        .unwrap();
    (c, dir)
}

/// Waits (10 s at most) until `proxy` has forwarded `n` connections.
fn wait_for_connections(proxy: &Proxy, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.accepted() < n {
        assert!(
            Instant::now() < deadline,
            "{} connections, not {n}",
            proxy.accepted()
        );
        std::thread::park_timeout(Duration::from_millis(1));
    }
}

/// Whether a task on `node` has the head's answer to an ask, over the
/// node's link to the head.
fn head_answers_on(rt: &Runtime, node: NodeId) -> rayx::Result<Result<(), String>> {
    rt.task(head_answers)
        .node_affinity(node, false)
        .remote(())
        .get_timeout(Duration::from_secs(10))
}

/// No node died among the events so far.
fn no_node_died(events: &rayx::Events) {
    while let Some(e) = events.try_recv() {
        assert!(
            !matches!(&e, SupervisionEvent::NodeDied { .. }),
            "no node died: {e:?}"
        );
    }
}

/// Waits (a bounded wait) until the head sees at least `n` tasks on `node`.
fn wait_for_load(rt: &Runtime, node: NodeId, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt
        .cluster_status()
        .unwrap()
        .nodes
        .iter()
        .any(|s| s.info.id == node && s.report.load >= n)
    {
        assert!(Instant::now() < deadline, "{node} never ran {n} tasks");
        std::thread::park_timeout(PERIOD);
    }
}

/// A process this test started outside a `Cluster`, killed if the test
/// fails (it would outlive it otherwise).
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A standalone head (`rayx start --head`) on a port of its own, with a
/// database and the fast health profile, for the tests that kill and restart it.
struct StandaloneHead {
    dir: std::path::PathBuf,
    storage: std::path::PathBuf,
    port: String,
    address: String,
    token: &'static str,
}

impl StandaloneHead {
    fn new(tag: &str, token: &'static str) -> StandaloneHead {
        let dir = std::env::temp_dir().join(format!("rayx-{tag}-{}", std::process::id()));
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port().to_string()
        };
        StandaloneHead {
            storage: dir.join("head.redb"),
            dir,
            address: format!("127.0.0.1:{port}"),
            port,
            token,
        }
    }

    /// The fast health profile, for the head and the processes that join it.
    fn health() -> [(&'static str, String); 2] {
        [
            (
                "RAYX_HEALTH_CHECK_PERIOD_MS",
                PERIOD.as_millis().to_string(),
            ),
            ("RAYX_HEALTH_CHECK_FAILURE_THRESHOLD", MISSES.to_string()),
        ]
    }

    /// A worker node process of this binary joining it, with `cpus` CPUs
    /// and more environment.
    fn node(&self, cpus: &str, env: &[(&str, &str)]) -> Reap {
        Reap(
            std::process::Command::new(std::env::current_exe().unwrap())
                .env("RAYX_ROLE", "node")
                .env("RAYX_ADDRESS", &self.address)
                .env("RAYX_TOKEN", self.token)
                .env("RAYX_NUM_CPUS", cpus)
                .env("RAYX_EXIT_WITH_PARENT", "1")
                .envs(Self::health())
                .envs(env.iter().copied())
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// A driver (no CPUs) joining it.
    fn driver(&self) -> Runtime {
        rayx::Builder::new()
            .address(&self.address)
            .token(self.token)
            .num_cpus(0.0)
            .health_check(PERIOD, MISSES)
            .start()
            .expect("a driver joins")
    }

    /// Starts it (again, on the same database and port).
    fn start(&self) -> Reap {
        self.start_with(&[])
    }

    /// Starts it with more environment.
    fn start_with(&self, env: &[(&str, &str)]) -> Reap {
        Reap(
            std::process::Command::new(env!("CARGO_BIN_EXE_rayx"))
                .args(["start", "--head", "--port", &self.port, "--storage"])
                .arg(&self.storage)
                .env("RAYX_TOKEN", self.token)
                .envs(Self::health())
                .envs(env.iter().copied())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// `rayx stop`: the cluster ends in order; waits for the head to exit.
    fn stop(&self, mut head: Reap) {
        let stopped = std::process::Command::new(env!("CARGO_BIN_EXE_rayx"))
            .args(["stop", "--address", &self.address])
            .env("RAYX_TOKEN", self.token)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(stopped.success());
        head.0.wait().unwrap();
    }
}

impl Drop for StandaloneHead {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pid_of(c: &Cluster, i: usize) -> i32 {
    c.nodes()[i].pid() as i32
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a child process of this test; no memory is shared.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

// ---- node deaths ----------------------------------------------------------------

/// kill -9 one of three nodes while 10,000 tasks run: every result correct.
fn a_node_killed_mid_job_loses_no_result() {
    let mut c = fast_cluster(3);
    let rt = c.driver().clone();
    let events = rt.events();
    let victim = c.nodes()[0].id;
    // Tasks of about a millisecond each: ~2 s of work over six CPUs.
    let refs: Vec<_> = (0..10_000u64)
        .map(|i| rt.task(slow_where).remote((i, 1)))
        .collect();
    // Part of the job is done, part is queued or running: now the kill.
    rt.wait(&refs, 1_000, Some(Duration::from_secs(60)))
        .expect("a thousand finish");
    c.kill_node(0).unwrap();
    let (done, _) = rt.wait(&refs, refs.len(), Some(Duration::ZERO)).unwrap();
    assert!(done.len() < refs.len(), "the kill came mid-job");
    let results = rt
        .get(&refs, Some(Duration::from_secs(120)))
        .expect("every task finishes despite the kill");
    let mut nodes = std::collections::BTreeSet::new();
    for (i, (j, node)) in results.into_iter().enumerate() {
        assert_eq!(j, i as u64, "task {i}");
        nodes.insert(node);
    }
    assert!(nodes.len() >= 2, "the job ran on several nodes: {nodes:?}");
    let cause = death_of(&events, victim, Duration::from_secs(10));
    assert!(
        cause.contains("connection closed") && cause.contains("nothing listens"),
        "a kill is found at once, not at the heartbeat limit: {cause}"
    );
    let status = rt.cluster_status().unwrap();
    let dead = status.nodes.iter().find(|n| n.info.id == victim).unwrap();
    assert!(!dead.alive, "{dead:?}");
}

/// A task whose node dies once too often fails as a worker's death does:
/// `WorkerCrashed` without retries, `RetriesExhausted` with every attempt's
/// cause — each naming its node.
fn a_task_out_of_retries_names_the_dead_nodes() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let once = rt
        .task(slow_where)
        .node_affinity(first, true)
        .max_retries(0)
        .remote((1, 5_000));
    let twice = rt
        .task(slow_where)
        .node_affinity(first, true)
        .max_retries(1)
        .remote((2, 5_000));
    wait_for_load(&rt, first, 2);
    c.kill_node(0).unwrap();
    match once.get_timeout(Duration::from_secs(30)) {
        Err(Error::WorkerCrashed { cause, .. }) => {
            assert!(cause.contains(&first.to_string()), "{cause}")
        }
        other => panic!("expected WorkerCrashed: {other:?}"),
    }
    // Its one retry runs on the other node, which dies too.
    wait_for_load(&rt, second, 1);
    c.kill_node(1).unwrap();
    match twice.get_timeout(Duration::from_secs(30)) {
        Err(Error::RetriesExhausted { attempts, .. }) => {
            assert_eq!(attempts.len(), 2, "{attempts:?}");
            assert!(attempts[0].contains(&first.to_string()), "{attempts:?}");
            assert!(attempts[1].contains(&second.to_string()), "{attempts:?}");
        }
        other => panic!("expected RetriesExhausted: {other:?}"),
    }
}

/// A named actor with restarts, on a node that dies: the same handle keeps
/// answering from another node; calls in flight go again, in order.
fn a_named_actor_restarts_on_another_node_and_keeps_answering() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let counter = rt
        .actor_of(|n: u64| Counter { n }, 0)
        .name("survivor")
        .max_restarts(1)
        .max_task_retries(5)
        .node_affinity(first, true)
        .spawn()
        .unwrap();
    assert_eq!(counter.node_id(), first);
    // A handle held on the second node, from before the restart.
    let relay = rt
        .actor_of(new_relay, counter.clone())
        .node_affinity(second, false)
        .spawn()
        .unwrap();
    assert_eq!(relay.call(Forward(0)).get().unwrap(), Ok(0));
    assert_eq!(counter.call(Add(1)).get().unwrap(), 1);
    // Twenty calls of 50 ms each; the node dies while they run.
    let ks: Vec<u64> = (1..=20).collect();
    let replies: Vec<_> = ks.iter().map(|k| counter.call(SlowAdd(*k, 50))).collect();
    rt.wait(&replies[..1], 1, Some(Duration::from_secs(30)))
        .unwrap();
    c.kill_node(0).unwrap();
    let got = rt
        .get(&replies, Some(Duration::from_secs(60)))
        .expect("every call is answered, before or after the restart");
    // In order: a prefix ran on the first node (its state started at 1),
    // the rest again on the second (its state started anew at 0).
    let split = (0..=ks.len())
        .find(|&s| {
            let mut before = 1;
            let mut after = 0;
            ks.iter().zip(&got).enumerate().all(|(i, (k, r))| {
                if i < s {
                    before += k;
                    *r == before
                } else {
                    after += k;
                    *r == after
                }
            })
        })
        .unwrap_or_else(|| panic!("replies are not two in-order runs: {got:?}"));
    assert!(split < ks.len(), "some calls went again: {got:?}");
    assert_eq!(counter.node_id(), second, "the handle follows the actor");
    assert_eq!(counter.call(Where).get().unwrap(), second.0);
    // The handle on the second node, where the actor now is, reaches it too.
    let here = counter.call(Add(0)).get().unwrap();
    assert_eq!(relay.call(Forward(2)).get().unwrap(), Ok(here + 2));
    // Its name moved with it: a lookup here, and from a task on its node.
    let named = rt.get_actor::<Counter>("survivor").unwrap();
    assert_eq!(named.node_id(), second);
    let n = counter.call(Add(0)).get().unwrap();
    assert_eq!(
        rt.task(call_by_name)
            .remote(("survivor".to_string(), 5))
            .get()
            .unwrap(),
        n + 5
    );
}

/// A counter on `first` (restarted once if its node dies), and a relay on
/// `second` holding a handle to it.
fn counter_and_relay(
    rt: &Runtime,
    first: NodeId,
    second: NodeId,
) -> (ActorHandle<Counter>, ActorHandle<Relay>) {
    let counter = restartable_counter(rt, first);
    let relay = rt
        .actor_of(new_relay, counter.clone())
        .node_affinity(second, false)
        .spawn()
        .unwrap();
    (counter, relay)
}

/// An unnamed actor started again on the node of a handle made while it
/// lived elsewhere: that handle holds it there, so it lives on after every
/// other handle is dropped.
fn a_handle_holds_its_actor_on_the_node_it_restarted_on() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let (counter, relay) = counter_and_relay(&rt, first, second);
    assert_eq!(relay.call(Forward(1)).get().unwrap(), Ok(1));
    c.kill_node(0).unwrap();
    // Answered once it was started again on the second node.
    assert_eq!(relay.call(Forward(1)).get().unwrap(), Ok(1));
    assert_eq!(counter.node_id(), second);
    // The driver lets go of its handle; its release reaches the second node
    // on the link the next call takes, before that call.
    drop(counter);
    assert_eq!(relay.call(Forward(1)).get().unwrap(), Ok(2));
}

/// Waits until no actor is left: none in the head's directory, none on any
/// live node.
fn wait_for_no_actors(rt: &Runtime) {
    let gone = common::eventually(common::LONG, || {
        let status = rt.cluster_status().unwrap();
        status.actors.is_empty()
            && status
                .nodes
                .iter()
                .filter(|n| n.alive)
                .all(|n| n.report.actors == 0)
    });
    let status = rt.cluster_status().unwrap();
    assert!(
        gone,
        "actors left: {:?} in the head, {:?} on the nodes",
        status.actors,
        status
            .nodes
            .iter()
            .map(|n| (n.info.id, n.alive, n.report.actors))
            .collect::<Vec<_>>()
    );
}

/// The creator lets go of its handle while another node still holds one;
/// the actor's node dies and it starts again elsewhere: it lives while that
/// handle does, and ends with it (its creator's hold, gone before the
/// restart, is not counted again there).
fn an_actor_started_again_ends_with_its_last_handle() {
    let mut c = fast_cluster(3);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let (counter, relay) = counter_and_relay(&rt, first, second);
    drop(counter);
    assert_eq!(relay.call(Forward(1)).get().unwrap(), Ok(1));
    c.kill_node(0).unwrap();
    // Started again (its state from 0), held by the relay's handle alone.
    assert_eq!(relay.call(Forward(1)).get().unwrap(), Ok(1));
    assert_eq!(relay.call(Forward(1)).get().unwrap(), Ok(2));
    drop(relay);
    wait_for_no_actors(&rt);
}

/// The same when the creator is a task on a node, the actor moves because
/// its node drains, and the only other handle is the driver's.
fn an_actor_moved_by_a_drain_ends_with_its_last_handle() {
    let c = fast_cluster(3);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let counter = rt
        .task(counter_on)
        .node_affinity(second, false)
        .remote(first.0)
        .get()
        .unwrap();
    assert_eq!(counter.call(Add(1)).get().unwrap(), 1);
    rt.drain_node(first, Duration::from_secs(20)).unwrap();
    assert!(
        common::eventually(common::LONG, || rt.nodes().iter().all(|n| n.id != first)),
        "the drained node left"
    );
    // The drained node's actor started again elsewhere (its state from 0).
    assert_eq!(counter.call(Add(1)).get().unwrap(), 1);
    assert_ne!(counter.node_id(), first);
    drop(counter);
    wait_for_no_actors(&rt);
}

/// An actor started again on its creator's node is killed there through
/// the creator's handle (the kill was sent to that node as to a peer, and
/// went nowhere).
fn an_actor_started_again_on_its_creators_node_is_killed_there() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let maker = rt
        .actor_of(new_maker, first.0)
        .node_affinity(second, false)
        .spawn()
        .unwrap();
    let counter = maker.call(Made).get().unwrap();
    assert_eq!(counter.call(Add(1)).get().unwrap(), 1);
    c.kill_node(0).unwrap();
    // Started again beside its creator: the placement's first choice.
    assert_eq!(counter.call(Where).get().unwrap(), second.0);
    maker.call(KillMade).get().unwrap();
    let after = counter.call(Add(1)).get_timeout(common::LONG);
    assert!(matches!(after, Err(Error::ActorDied { .. })), "{after:?}");
}

/// A handle passed on the moment its actor's node dies, decoded where the
/// news of where the actor went may not have come yet: it follows the actor
/// there (it was refused as a handle to a dead node).
fn a_handle_passed_on_as_its_actors_node_dies_follows_it() {
    let mut c = fast_cluster(3);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let counter = restartable_counter(&rt, first);
    assert_eq!(counter.call(Add(1)).get().unwrap(), 1);
    c.kill_node(0).unwrap();
    let relay = rt
        .actor_of(new_relay, counter.clone())
        .node_affinity(second, false)
        .spawn()
        .expect("the handle decodes on the relay's node");
    drop(counter);
    // Started again (from 0), held by the relay's handle alone.
    assert_eq!(relay.call(Forward(1)).get().unwrap(), Ok(1));
    drop(relay);
    wait_for_no_actors(&rt);
}

/// A handle to an actor that was gone before its node died is refused
/// where it is decoded after the death: no news of a restart is coming (it
/// was taken, and its calls waited 30 s for that news).
fn a_handle_to_an_actor_gone_before_its_node_died_is_refused() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let counter = counter_at(&rt, first);
    assert_eq!(counter.call(Add(1)).get().unwrap(), 1);
    counter.kill();
    assert!(
        common::eventually(common::LONG, || rt
            .cluster_status()
            .unwrap()
            .actors
            .is_empty()),
        "the head forgot the killed actor"
    );
    c.kill_node(0).unwrap();
    let heard = common::eventually(common::LONG, || {
        !rt.task(lists_node)
            .node_affinity(second, false)
            .remote(first.0)
            .get()
            .unwrap()
    });
    assert!(heard, "the second node heard of the death");
    let got = rt
        .task(call_through)
        .node_affinity(second, false)
        .remote(counter.clone())
        .get();
    let err = got.expect_err("the handle is refused where it is decoded");
    assert!(err.to_string().contains("died"), "{err}");
}

/// The head forgets an actor that ended for good, with the constructor's
/// argument it kept to start it again: there the last handle to an actor on
/// the head's own node, which ends with it and tells the head (the head took
/// its own lock again and deadlocked).
fn an_actor_the_head_forgets_may_let_go_of_the_last_handle_to_another() {
    let c = fast_cluster(1);
    let rt = c.driver().clone();
    let first = c.nodes()[0].id;
    // On the driver, which hosts the head.
    let kept = rt.actor(|| new_counter(0)).spawn().unwrap();
    let relay = rt
        .actor_of(new_relay, kept.clone())
        .max_restarts(1)
        .node_affinity(first, false)
        .spawn()
        .unwrap();
    assert_eq!(relay.call(Forward(1)).get().unwrap(), Ok(1));
    drop(kept);
    // Its release reaches the head before the answer, and so before the
    // relay's end: the head's kept argument is the last handle then.
    relay.call(Unhand).get().unwrap();
    relay.kill();
    drop(relay);
    // The head still answers (from another thread: a wedged head would
    // never return), and forgets both actors.
    let (tx, rx) = std::sync::mpsc::channel();
    let asker = rt.clone();
    std::thread::spawn(move || {
        let gone = common::eventually(common::LONG, || {
            let status = asker.cluster_status().unwrap();
            status.actors.is_empty()
                && status
                    .nodes
                    .iter()
                    .all(|n| !n.alive || n.report.actors == 0)
        });
        let _ = tx.send(gone);
    });
    let gone = rx.recv_timeout(common::LONG * 2);
    assert_eq!(gone, Ok(true), "the head answers and both actors ended");
}

/// An actor let go by its last holder ends off its node's network thread:
/// its state's drop may ask the head and wait for the answer, which only
/// that thread reads (the node stalled, stopped sending heartbeats and was
/// declared dead).
fn an_actor_whose_drop_asks_the_head_ends_without_stalling_its_node() {
    let c = fast_cluster(1);
    let rt = c.driver().clone();
    let first = c.nodes()[0].id;
    rt.kv_put("asker/before", b"1", true).unwrap();
    let asker = rt
        .actor_of(new_asker, ())
        .node_affinity(first, false)
        .spawn()
        .unwrap();
    asker.call(Ping).get().unwrap();
    drop(asker);
    let answered = common::eventually(common::LONG, || rt.kv_get("asker/after").unwrap().is_some());
    assert!(answered, "the actor's drop got its answer from the head");
    assert_eq!(
        rt.task(where_am_i)
            .node_affinity(first, false)
            .remote(7)
            .get()
            .unwrap(),
        (7, first.0),
        "its node still serves"
    );
}

/// While an actor starts again on another node, a call through its
/// creator's handle, a handle looked up by name, and a lookup on the node it
/// is starting on all wait for it and reach it there. (The lookups named
/// the new node before the actor was there, and a call made once the death
/// was known used up a retry it never took: both failed ActorDied.)
fn an_actor_reached_while_it_starts_again_answers_there() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let events = rt.events();
    let counter = rt
        .actor_of(new_late, SlowArg(1_000))
        .name("slow-to-arrive")
        .max_restarts(1)
        .node_affinity(first, true)
        .spawn()
        .unwrap();
    assert_eq!(counter.call(Add(1)).get().unwrap(), 1);
    c.kill_node(0).unwrap();
    death_of(&events, first, common::LONG);
    // At once: the restart on the second node takes a second to arrive.
    let through_creator = counter.call(Add(1));
    let found = rt.get_actor::<Late>("slow-to-arrive").unwrap();
    let through_lookup = found.call(Add(1));
    let on_its_node = rt
        .task(look_up_and_add)
        .node_affinity(second, false)
        .remote("slow-to-arrive".to_string());
    let mut got = vec![
        through_creator.get_timeout(common::LONG).unwrap(),
        through_lookup.get_timeout(common::LONG).unwrap(),
    ];
    let there = on_its_node.get_timeout(common::LONG).unwrap();
    let n: u64 = there
        .strip_prefix("Ok(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("on its node: {there}"));
    got.push(n);
    got.sort();
    assert_eq!(got, [1, 2, 3], "each call reached the restarted actor once");
    assert_eq!(counter.node_id(), second);
}

/// A handle looked up by name while its actor's creation is on its way
/// holds the actor once it starts (its hold reached the node first and was
/// lost: the actor ended with its creator's handle, under the live one).
fn a_name_looked_up_while_its_actor_is_created_holds_it() {
    let c = fast_cluster(1);
    let rt = c.driver().clone();
    let first = c.nodes()[0].id;
    let spawner = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            rt.actor_of(new_late, SlowArg(1_000))
                .name("arriving")
                .node_affinity(first, false)
                .spawn()
                .unwrap()
        })
    };
    // Placed by the head: its name answers while the creation takes a second.
    let mut found = None;
    let named = common::eventually(common::LONG, || {
        found = rt.get_actor::<Late>("arriving").ok();
        found.is_some()
    });
    assert!(named, "the name was never answered");
    let made = spawner.join().unwrap();
    assert_eq!(made.call(Add(1)).get().unwrap(), 1);
    drop(made);
    let found = found.expect("looked up");
    assert_eq!(
        found.call(Add(1)).get().unwrap(),
        2,
        "the looked-up handle holds it"
    );
}

/// A call in flight when its actor's node dies fails; its message, whose
/// `Drop` calls another actor, is let go outside the engine's locks (the
/// death's handling deadlocked on its own lock).
fn a_failed_calls_message_may_call_as_it_drops() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let doomed = counter_at(&rt, first);
    let other = counter_at(&rt, second);
    let reply = doomed.call(Parcel(60_000, Some(other.clone())));
    c.kill_node(0).unwrap();
    let failed = reply.get_timeout(common::LONG);
    assert!(matches!(failed, Err(Error::ActorDied { .. })), "{failed:?}");
    // The message's call arrives (wherever the message's last copy went),
    // and the driver still calls.
    assert!(
        common::eventually(common::LONG, || other.call(Add(0)).get() == Ok(1)),
        "the message's drop called the other actor"
    );
}

/// Calls made between a node's death and the news of where its actor went
/// wait for the news, and go there in order; and if the node the actor was
/// moving to dies too, the interrupted calls follow it to the third.
fn calls_follow_an_actor_through_two_deaths() {
    let mut c = fast_cluster(3);
    let rt = c.driver().clone();
    let (first, third) = (c.nodes()[0].id, c.nodes()[2].id);
    let counter = rt
        .actor_of(new_counter, 0)
        .max_restarts(3)
        .max_task_retries(5)
        .node_affinity(first, true)
        .spawn()
        .unwrap();
    let ks: Vec<u64> = (1..=10).collect();
    let mut replies: Vec<_> = ks.iter().map(|k| counter.call(SlowAdd(*k, 100))).collect();
    rt.wait(&replies[..1], 1, Some(Duration::from_secs(30)))
        .unwrap();
    // Its node dies, and the node it is likely to move to right after.
    c.kill_node(0).unwrap();
    c.kill_node(1).unwrap();
    // Calls made at once, before anyone heard where it went.
    let more: Vec<u64> = (11..=40).collect();
    replies.extend(more.iter().map(|k| counter.call(Add(*k))));
    let got = rt
        .get(&replies, Some(Duration::from_secs(60)))
        .expect("no call is lost");
    // Each reply goes on from the one before, or starts over (a restart
    // resets the state to 0): in order, nothing else.
    let mut prev = 0;
    for (k, r) in ks.iter().chain(&more).zip(&got) {
        assert!(
            *r == prev + k || *r == *k,
            "reply {r} after {prev} for +{k}: {got:?}"
        );
        prev = *r;
    }
    assert_eq!(counter.node_id(), third);
    assert_eq!(counter.call(Where).get().unwrap(), third.0);
}

/// Without restarts, calls to an actor whose node died fail `ActorDied`,
/// naming the node.
fn an_actor_without_restarts_fails_naming_its_node() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let first = c.nodes()[0].id;
    let counter = rt
        .actor_of(|n: u64| Counter { n }, 0)
        .node_affinity(first, false)
        .spawn()
        .unwrap();
    assert_eq!(counter.call(Add(2)).get().unwrap(), 2);
    let slow = counter.call(SlowAdd(1, 2_000));
    c.kill_node(0).unwrap();
    for r in [slow.get(), counter.call(Add(1)).get()] {
        match r {
            Err(Error::ActorDied { cause, .. }) => {
                assert!(cause.contains(&first.to_string()), "{cause}")
            }
            other => panic!("expected ActorDied: {other:?}"),
        }
    }
}

// ---- leaving in order -----------------------------------------------------------

/// A cluster of `nodes` whose nodes drain for a minute at most when told to
/// stop: a test's node must go because its work is done, well before.
fn draining_cluster(nodes: usize) -> Cluster {
    Cluster::builder()
        .nodes(nodes)
        .health_check(PERIOD, MISSES)
        .node_env("RAYX_DRAIN_TIMEOUT_MS", "60000")
        .start()
        .expect("a cluster starts")
}

/// Tells node process `i` (node `node`) to stop with SIGTERM, and waits
/// until the head lists it draining (or left already: a drain with nothing
/// to wait for is over in milliseconds).
fn tell_to_stop(c: &Cluster, i: usize, node: NodeId) {
    signal(c.nodes()[i].pid() as i32, libc::SIGTERM);
    wait_draining(c, node);
}

/// Waits until the head lists `node` draining, or left already.
fn wait_draining(c: &Cluster, node: NodeId) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let said = |n: &rayx::NodeStatus| {
        n.info.id == node
            && ((n.alive && n.draining) || n.cause.as_deref() == Some("left: it stopped in order"))
    };
    while !c.driver().cluster_status().unwrap().nodes.iter().any(said) {
        assert!(
            Instant::now() < deadline,
            "the head never listed it draining"
        );
        std::thread::park_timeout(PERIOD);
    }
}

/// Node process `i` (node `node`) exits by itself, status 0, once its work
/// is done (within 20 s: its drain may last a minute), and the head lists it
/// as left.
fn exits_in_order(c: &mut Cluster, i: usize, node: NodeId) {
    let status = c
        .wait_exit(i, Duration::from_secs(20))
        .expect("the node exits by itself once its work is done");
    assert!(status.success(), "{status}");
    let status = c.driver().cluster_status().unwrap();
    let gone = status.nodes.iter().find(|n| n.info.id == node).unwrap();
    assert!(!gone.alive);
    assert_eq!(gone.cause.as_deref(), Some("left: it stopped in order"));
}

/// A node told to stop (SIGTERM) leaves in order, as Ray drains a node: the
/// head lists it draining and no new work goes there; the task it runs
/// finishes there, once; the large result it holds is pulled by its owner
/// before it goes, not made again; it exits by itself, listed as left, not
/// failed. Its actor that may restart once restarts elsewhere without using
/// that restart up (Ray's preemption): it survives a crash of its next node
/// too. Its actor without restarts is gone, saying its node left.
fn a_node_told_to_stop_leaves_in_order() {
    let mut c = draining_cluster(3);
    let rt = c.driver().clone();
    let leaving = c.nodes()[0].id;
    let size = 4 << 20;
    let held = rt
        .task(big_result)
        .node_affinity(leaving, false)
        .remote(size);
    let keeps = rt
        .actor_of(|n: u64| Counter { n }, 5)
        .max_restarts(1)
        .max_task_retries(3)
        .node_affinity(leaving, true)
        .spawn()
        .unwrap();
    let fragile = rt
        .actor_of(|n: u64| Counter { n }, 0)
        .node_affinity(leaving, false)
        .spawn()
        .unwrap();
    assert_eq!(keeps.call(Add(1)).get().unwrap(), 6);
    assert_eq!(fragile.call(Add(1)).get().unwrap(), 1);
    // Large values held there for this driver, already read and still
    // referenced (kept there until their refs go): no reason to wait.
    let read = rt
        .task(big_result)
        .node_affinity(leaving, false)
        .remote(size);
    assert_eq!(read.get().unwrap().1.len(), size);
    let reply = fragile.call(Big(size));
    assert_eq!(reply.get().unwrap().len(), size);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.object_locations(std::slice::from_ref(&held)) != vec![Some(leaving)] {
        assert!(Instant::now() < deadline, "the result was never held there");
        std::thread::park_timeout(PERIOD);
    }
    let running = rt
        .task(slow_where)
        .node_affinity(leaving, false)
        .remote((1, 1_500));
    wait_for_load(&rt, leaving, 1);

    tell_to_stop(&c, 0, leaving);
    let (_, placed) = rt
        .task(where_am_i)
        .node_affinity(leaving, true)
        .remote(2)
        .get()
        .unwrap();
    assert_ne!(placed, leaving.0, "new work went to a draining node");
    assert_eq!(
        running.get_timeout(Duration::from_secs(30)),
        Ok((1, leaving.0)),
        "the running task finishes where it ran"
    );
    exits_in_order(&mut c, 0, leaving);
    assert_eq!(
        rt.object_locations(std::slice::from_ref(&held)),
        vec![Some(rt.node_id())],
        "the result was pulled here before its node went"
    );
    let (made_on, bytes) = held.get().unwrap();
    assert_eq!((made_on, bytes.len()), (leaving.0, size), "not made again");
    assert_eq!(
        (read.get().unwrap().1.len(), reply.get().unwrap().len()),
        (size, size)
    );

    match fragile.call(Add(1)).get() {
        Err(Error::ActorDied { cause, .. }) => {
            assert!(
                cause.contains(&format!("{leaving} left the cluster")),
                "{cause}"
            )
        }
        other => panic!("expected ActorDied: {other:?}"),
    }
    assert_eq!(keeps.call(Add(1)).get().unwrap(), 6, "restarted anew");
    let next = keeps.node_id();
    let i = c
        .nodes()
        .iter()
        .position(|n| n.id == next)
        .expect("on a node process");
    c.kill_node(i).unwrap();
    let after = keeps
        .call(Add(2))
        .get()
        .expect("its one restart was still there");
    assert_eq!(after, 7);
    assert_ne!(keeps.node_id(), next);
}

/// A connection reset of a draining node's link to the head is no leaving:
/// the node joins again and drains on; the task it runs finishes there, once
/// (a node declared gone would have it run again, and with a hard affinity
/// fail); then it leaves in order.
fn a_reset_during_a_drain_is_no_leaving() {
    let mut c = draining_cluster(0);
    let rt = c.driver().clone();
    let (proxy, node) = node_behind_a_proxy(&mut c);
    let running = rt
        .task(slow_where)
        .node_affinity(node, false)
        .remote((1, 1_500));
    wait_for_load(&rt, node, 1);
    tell_to_stop(&c, 0, node);
    let before = proxy.accepted();
    assert!(proxy.reset() >= 1, "the node's link to the head");
    wait_for_connections(&proxy, before + 1);
    assert_eq!(
        running.get_timeout(Duration::from_secs(30)),
        Ok((1, node.0)),
        "it ran once, where it was sent"
    );
    exits_in_order(&mut c, 0, node);
}

/// The head tells a worker node to drain — `Runtime::drain_node`, or `rayx
/// drain NODE` — and it leaves in order, as on SIGTERM: its running task
/// finishes there, once. The head and unknown nodes are refused, saying why.
fn a_node_drained_by_the_head_leaves_in_order() {
    let mut c = draining_cluster(2);
    let rt = c.driver().clone();
    let (first, second) = (c.nodes()[0].id, c.nodes()[1].id);
    let running = rt
        .task(slow_where)
        .node_affinity(first, false)
        .remote((1, 1_500));
    wait_for_load(&rt, first, 1);
    rt.drain_node(first, Duration::from_secs(60)).unwrap();
    wait_draining(&c, first);
    assert_eq!(
        running.get_timeout(Duration::from_secs(30)),
        Ok((1, first.0))
    );
    exits_in_order(&mut c, 0, first);

    for (node, why) in [
        (rt.node_id(), "is the head"),
        (NodeId(0x5eed), "no live node"),
        (first, "no live node"),
    ] {
        match rt.drain_node(node, Duration::from_secs(1)) {
            Err(Error::InvalidArgument(e)) => assert!(e.contains(why), "{e}"),
            other => panic!("draining {node}: {other:?}"),
        }
    }

    let drained = std::process::Command::new(env!("CARGO_BIN_EXE_rayx"))
        .args(["drain", &second.to_string(), "--timeout", "60"])
        .args(["--address", &rt.cluster_address().unwrap()])
        .env("RAYX_TOKEN", rt.cluster_token().unwrap())
        .output()
        .unwrap();
    assert!(drained.status.success(), "{drained:?}");
    exits_in_order(&mut c, 1, second);
}

/// A node told to stop the moment it joined (its process may still be
/// finishing its start) leaves in order too: its signals are caught from
/// before it joins, not left to their default (death by the signal).
fn a_node_told_to_stop_as_it_joins_leaves_in_order() {
    let mut c = draining_cluster(1);
    let node = c.nodes()[0].id;
    tell_to_stop(&c, 0, node);
    exits_in_order(&mut c, 0, node);
}

/// A reply that holds a ref, pulled and not read yet, is readable after its
/// node was told to stop: the refs inside are borrowed only when it is read,
/// and until then the node's pins keep them, so the drain waits for the
/// reply to be let go (here: read, then dropped) before the node leaves.
fn a_drain_waits_for_the_refs_its_replies_hold() {
    let mut c = draining_cluster(1);
    let rt = c.driver().clone();
    let node = c.nodes()[0].id;
    let keeper = rt
        .actor_of(new_keeper, ())
        .node_affinity(node, false)
        .spawn()
        .unwrap();
    let x = rt.put(ByteBuf::from(vec![9u8; 1 << 20])).unwrap();
    assert_eq!(keeper.call(Keep(vec![x.clone()])).get().unwrap(), 1);
    drop(x);
    let size = 4 << 20;
    let reply = keeper.call(GiveBack(size));
    rt.wait(
        std::slice::from_ref(&reply),
        1,
        Some(Duration::from_secs(30)),
    )
    .unwrap();
    tell_to_stop(&c, 0, node);
    // Not gone while its pins are all that keeps `x` (a bounded look for
    // what must not happen: it would leave within milliseconds).
    assert!(
        c.wait_exit(0, Duration::from_secs(2)).is_none(),
        "the node left while a reply it sent held a ref not read"
    );
    let (inner, bytes) = reply.get().unwrap();
    assert_eq!(bytes.len(), size);
    assert_eq!(inner[0].get().unwrap().len(), 1 << 20);
    drop((reply, inner));
    exits_in_order(&mut c, 0, node);
}

/// An object whose owner died fails `OwnerDied` on its borrower.
fn an_object_whose_owner_died_fails_owner_died() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let first = c.nodes()[0].id;
    let inner = rt
        .task(own_blob)
        .node_affinity(first, false)
        .remote(1 << 20)
        .get()
        .unwrap();
    c.kill_node(0).unwrap();
    match inner.get_timeout(Duration::from_secs(30)) {
        Err(Error::OwnerDied { .. }) => {}
        other => panic!("expected OwnerDied: {:?}", other.map(|b| b.len())),
    }
    // Killed while the value is on its way (pulled in 4 MiB chunks, some
    // landed): the read fails the same.
    let second = c.nodes()[1].id;
    let size = 256 << 20;
    let big = rt
        .task(own_blob)
        .node_affinity(second, false)
        .remote(size)
        .get()
        .unwrap();
    let reader =
        std::thread::spawn(move || big.get_timeout(Duration::from_secs(30)).map(|b| b.len()));
    wait_for_its_pull(&rt, &reader);
    c.kill_node(1).unwrap();
    match reader.join().unwrap() {
        Err(Error::OwnerDied { .. }) => {}
        other => panic!("expected OwnerDied: {other:?}"),
    }
}

/// A pull whose bulk link breaks while the node holding the value lives (a
/// connection reset, not a death) goes again on a new link and lands intact:
/// a borrowed object read from its owner, and a task's result held where it
/// ran. A byte buffer goes on from the byte it reached. Nothing is declared
/// dead, and nothing stays behind.
fn a_pull_whose_link_breaks_goes_again() {
    let c = fast_cluster(1);
    let rt = c.driver().clone();
    let node = c.nodes()[0].id;
    let size = 256 << 20;
    let owned = rt
        .task(own_blob)
        .node_affinity(node, false)
        .remote(size)
        .get()
        .unwrap();
    let held = rt.task(big_result).node_affinity(node, false).remote(size);
    let reads: [Box<dyn FnOnce() -> (usize, bool) + Send>; 2] = [
        Box::new(move || {
            let b = owned.get_timeout(Duration::from_secs(60)).expect("read");
            (b.len(), b.iter().all(|x| *x == 7))
        }),
        Box::new(move || {
            let (_, b) = held.get_timeout(Duration::from_secs(60)).expect("read");
            (b.len(), b.iter().all(|x| *x == (size % 251) as u8))
        }),
    ];
    for (i, read) in reads.into_iter().enumerate() {
        let reader = std::thread::spawn(read);
        wait_for_its_pull(&rt, &reader);
        assert_eq!(rt.reset_bulk_links(), Some(1), "one bulk link was open");
        assert_eq!(reader.join().unwrap(), (size, true));
        assert_eq!(
            rt.pulls_again(),
            Some(i as u64 + 1),
            "the broken pull went again"
        );
        // The byte buffer goes on from the byte it reached; the tuple (a
        // typed encoding, which may differ when encoded again) from the
        // first. Nothing is kept after.
        assert_eq!(rt.pulls_resumed(), Some((1, 0)), "read {i}");
    }
    assert!(rt.cluster_status().unwrap().nodes.iter().all(|n| n.alive));
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.memory().objects != 0 {
        assert!(
            Instant::now() < deadline,
            "objects stayed: {:?}",
            rt.memory()
        );
        std::thread::park_timeout(PERIOD);
    }
}

/// A network blip (every link between the driver and its only node broken,
/// both processes alive): the task that was running there answers over a
/// new link, and one submitted right after waits for the node to be reached
/// again and runs there, rather than fail `Unschedulable` because no
/// reachable node has a CPU.
fn tasks_wait_out_a_broken_link_to_a_live_node() {
    let c = fast_cluster(1);
    let rt = c.driver().clone();
    let node = c.nodes()[0].id;
    let running = rt.task(slow_where).remote((1, 1_000));
    wait_for_load(&rt, node, 1);
    assert!(rt.reset_peer_links().unwrap() >= 1, "a link was open");
    let next = rt.task(slow_where).remote((2, 0));
    for (i, t) in [(1, running), (2, next)] {
        assert_eq!(
            t.get_timeout(Duration::from_secs(30)),
            Ok((i, node.0)),
            "ran on the node once it was reached again"
        );
    }
    assert!(rt.cluster_status().unwrap().nodes.iter().all(|n| n.alive));
}

/// Network blips under load: the driver's links to its nodes, and one
/// node's links to the other, broken again and again while calls (from the
/// driver, and from an actor on the other node), tasks, borrowed values and
/// their pulls are under way. Nothing is lost or done twice: every call
/// applies once and its callers see their calls in order, every task's
/// result comes back, borrowed values stay readable, nobody is declared
/// dead, and every process's objects are freed at the end.
fn network_blips_lose_and_repeat_nothing() {
    let c = fast_cluster(2);
    let rt = c.driver().clone();
    let (n0, n1) = (c.nodes()[0].id, c.nodes()[1].id);
    let counter = counter_at(&rt, n0);
    let relay = rt
        .actor_of(new_relay, counter.clone())
        .node_affinity(n1, false)
        .spawn()
        .unwrap();
    let blob = rt.put(ByteBuf::from(vec![5u8; 256 << 10])).unwrap();
    let (mut calls, mut relayed, mut reads, mut blips) = (vec![], vec![], vec![], 0);
    for round in 0..20 {
        calls.extend((0..50).map(|_| counter.call(Add(1))));
        relayed.push(relay.call(Forward(1)));
        reads
            .extend([n0, n1].map(|n| rt.task(len_of).node_affinity(n, false).remote(blob.clone())));
        if round % 2 == 0 {
            blips += rt.reset_peer_links().unwrap();
        } else {
            blips += rt
                .task(blip_here)
                .node_affinity(n1, false)
                .remote(())
                .get_timeout(Duration::from_secs(30))
                .unwrap();
        }
    }
    assert!(blips >= 20, "links were broken: {blips}");
    let seen: Vec<u64> = calls
        .iter()
        .map(|r| r.get_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the driver's calls applied in order"
    );
    for r in relayed {
        assert!(r.get_timeout(Duration::from_secs(30)).unwrap().is_ok());
    }
    assert_eq!(
        counter.call(Add(0)).get().unwrap(),
        20 * 50 + 20,
        "every call applied once"
    );
    for r in reads {
        assert_eq!(r.get_timeout(Duration::from_secs(30)), Ok(256 << 10));
    }
    assert!(rt.cluster_status().unwrap().nodes.iter().all(|n| n.alive));
    drop((calls, blob, counter, relay));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = rt.cluster_status().unwrap().nodes;
        if rt.memory().objects == 0 && nodes.iter().all(|n| n.report.memory.objects == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "objects stayed: {nodes:?}");
        std::thread::park_timeout(PERIOD);
    }
}

/// The connection between a node and the head closed again and again (a
/// proxy that drops it; both processes live) while a task on the node asks
/// the head to place and find named actors, and the head places the driver's
/// actors there: the node rejoins each time on a new connection and goes on
/// where it was, is never declared dead, and every ask is answered, once.
fn resets_of_the_link_to_the_head_lose_nothing() {
    let mut c = fast_cluster(1);
    let rt = c.driver().clone();
    let events = rt.events();
    let (proxy, node) = node_behind_a_proxy(&mut c);
    let progress = rt.actor_of(new_counter, 0).spawn().unwrap();
    let n = 60;
    let asked = rt
        .task(name_actors_here)
        .node_affinity(node, false)
        .remote((n, progress.clone()));
    let done = || {
        rt.wait(std::slice::from_ref(&asked), 1, Some(Duration::ZERO))
            .unwrap()
            .0
            .len()
            == 1
    };
    let (mut resets, mut placed) = (0, vec![]);
    loop {
        let made = progress.call(Add(0)).get().unwrap();
        if made == n || done() {
            break;
        }
        resets += proxy.reset();
        // The node goes on over a new connection: one more actor made
        // through the head after the reset.
        let deadline = Instant::now() + Duration::from_secs(30);
        while progress.call(Add(0)).get().unwrap() == made && !done() {
            assert!(Instant::now() < deadline, "no ask answered after a reset");
            std::thread::park_timeout(Duration::from_millis(1));
        }
        if made.is_multiple_of(10) {
            // Placed by the head while the node's link to it was down.
            let a = rt.actor_of(new_counter, 10).node_affinity(node, false);
            placed.push(a.spawn().expect("placed on the node"));
        }
    }
    assert_eq!(
        asked.get_timeout(Duration::from_secs(30)),
        Ok((1..=n).sum::<u64>()),
        "every named actor made, found and called once"
    );
    for a in &placed {
        assert_eq!(a.call(Add(1)).get_timeout(Duration::from_secs(30)), Ok(11));
    }
    let status = rt.cluster_status().unwrap();
    assert!(status.nodes.iter().all(|s| s.alive), "{:?}", status.nodes);
    no_node_died(&events);
    assert!(resets as u64 >= n / 2, "the link was reset: {resets}");
}

/// One direction of a node's connection to the head stalls (what goes that
/// way is dropped, nothing is closed, the other way still carries): the
/// side whose frames go unacknowledged, or the node that hears nothing,
/// opens a new connection within half the health limit, so the node is
/// never declared dead. Both directions, one after the other.
fn a_join_link_stalled_one_way_is_replaced_in_time() {
    let mut c = fast_cluster(1);
    let rt = c.driver().clone();
    let events = rt.events();
    let (proxy, node) = node_behind_a_proxy(&mut c);
    for toward_the_head in [true, false] {
        let before = proxy.accepted();
        proxy.stall(toward_the_head);
        wait_for_connections(&proxy, before + 1);
        // That link carries both ways (and is not stalled next).
        assert_eq!(head_answers_on(&rt, node), Ok(Ok(())));
    }
    no_node_died(&events);
}

/// A rejoin whose handshake stalls (its connection carries nothing) gives
/// way to another within half the health limit, while the head still waits
/// for the node: it is never declared dead.
fn a_rejoin_stalled_in_its_handshake_tries_again_in_time() {
    let mut c = fast_cluster(1);
    let rt = c.driver().clone();
    let events = rt.events();
    let (proxy, node) = node_behind_a_proxy(&mut c);
    let before = proxy.accepted();
    proxy.stall_new(1);
    assert!(proxy.reset() >= 1, "the node's connection to the head");
    // The stalled attempt, then the next.
    wait_for_connections(&proxy, before + 2);
    assert_eq!(head_answers_on(&rt, node), Ok(Ok(())));
    no_node_died(&events);
}

/// A node whose first attempt to join goes unanswered (its connection
/// carries nothing) tries again, within half the health limit, and joins.
fn an_unanswered_first_join_is_tried_again() {
    let mut c = fast_cluster(0);
    let proxy = Proxy::start(c.address()).unwrap();
    proxy.stall_new(1);
    let node = c.add_node_via(proxy.address()).unwrap();
    assert_eq!(proxy.accepted(), 2, "the stalled attempt, then the next");
    assert_eq!(head_answers_on(c.driver(), node), Ok(Ok(())));
    drop(c);
    // With TLS the attempt stalls in the TLS handshake: tried again too.
    let (mut c, dir) = tls_cluster("stall");
    let proxy = Proxy::start(c.address()).unwrap();
    proxy.stall_new(1);
    let node = c.add_node_via(proxy.address()).unwrap();
    assert_eq!(
        proxy.accepted(),
        2,
        "the stalled TLS attempt, then the next"
    );
    assert_eq!(head_answers_on(c.driver(), node), Ok(Ok(())));
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A slow way back from the head (300 ms a step; half the health limit is
/// 500 ms, a whole join takes longer) slows each step of a join but stalls
/// none: the node joins, and joins again after a reset, never declared dead.
fn a_slow_connection_to_the_head_still_joins_and_rejoins() {
    let mut c = fast_cluster(0);
    let events = c.driver().events();
    let proxy = Proxy::start(c.address()).unwrap();
    proxy.delay_back(Duration::from_millis(300));
    let node = c.add_node_via(proxy.address()).unwrap();
    assert_eq!(head_answers_on(c.driver(), node), Ok(Ok(())));
    let before = proxy.accepted();
    assert!(proxy.reset() >= 1, "the node's connection to the head");
    wait_for_connections(&proxy, before + 1);
    assert_eq!(head_answers_on(c.driver(), node), Ok(Ok(())));
    no_node_died(&events);
}

/// A task sent to a node the moment the head lists it — before the
/// head's welcome came back to the node — may ask the head: the ask waits
/// for the join rather than fail.
fn a_task_on_a_node_still_joining_may_ask_the_head() {
    let mut c = Cluster::start(0).unwrap();
    let proxy = Proxy::start(c.address()).unwrap();
    // The welcome reaches the node a second after the head listed it; the
    // task, sent straight to the node, is there first.
    proxy.delay_back(Duration::from_secs(1));
    let node = c.add_node_via(proxy.address()).unwrap();
    assert_eq!(head_answers_on(c.driver(), node), Ok(Ok(())));
}

/// A driver that shuts down in order just as its connection to the head
/// resets still says so, over the new connection: its job is finished, and
/// it left rather than died.
fn a_driver_stopping_during_a_reset_still_finishes_its_job() {
    use rayx_actors::cluster::wire::JobState;
    let c = fast_cluster(1);
    let rt = c.driver().clone();
    let proxy = Proxy::start(c.address()).unwrap();
    for _ in 0..3 {
        let driver = rayx::Builder::new()
            .address(proxy.address())
            .token(rt.cluster_token().unwrap())
            .num_cpus(0.0)
            .health_check(PERIOD, MISSES)
            .start()
            .expect("a second driver joins");
        let me = driver.node_id();
        assert!(proxy.reset() >= 1, "its connection to the head");
        driver.shutdown();
        let status = rt.cluster_status().unwrap();
        let job = status.jobs.iter().find(|j| j.id == me).expect("its job");
        assert_eq!(job.state, JobState::Finished, "{job:?}");
    }
}

/// An actor being created on a node that dies meanwhile fails `NodeDied`
/// when the node is declared dead, not at the request's 30 s timeout.
fn an_actor_created_on_a_node_that_dies_fails_at_its_death() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let node = c.nodes()[0].id;
    // Hung first, so that the creation is never answered: a node answers as
    // soon as the actor is set up, before its constructor runs, so a slow
    // constructor alone left a race the answer sometimes won (1 run in ~40).
    signal(pid_of(&c, 0), libc::SIGSTOP);
    let spawning = {
        let rt = rt.clone();
        std::thread::spawn(move || {
            let asked = Instant::now();
            let made = rt
                .actor_of(new_slowborn, 20_000)
                .node_affinity(node, false)
                .spawn()
                .map(drop);
            (made, asked.elapsed())
        })
    };
    // Placed there by the head: its creation is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt
        .cluster_status()
        .unwrap()
        .actors
        .iter()
        .any(|(p, _)| p.node == node)
    {
        assert!(Instant::now() < deadline, "the actor was never placed");
        std::thread::park_timeout(Duration::from_millis(1));
    }
    c.kill_node(0).unwrap();
    let (made, took) = spawning.join().unwrap();
    assert!(matches!(made, Err(Error::NodeDied { .. })), "{made:?}");
    assert!(took < Duration::from_secs(15), "failed after {took:?}");
}

/// A task's large result whose only copy died with its node is made again on
/// the next read (lineage); without retries the read fails, saying why.
fn a_result_whose_only_copy_died_is_rebuilt() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let first = c.nodes()[0].id;
    let n = 1 << 20;
    let kept = rt.task(big_result).node_affinity(first, true).remote(n);
    let lost = rt
        .task(big_result)
        .node_affinity(first, true)
        .max_retries(0)
        .remote(n);
    // Both ran and are held there, unread.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.object_locations(&[kept.clone(), lost.clone()]) != [Some(first), Some(first)] {
        assert!(
            Instant::now() < deadline,
            "the results never landed on {first}"
        );
        std::thread::park_timeout(PERIOD);
    }
    c.kill_node(0).unwrap();
    let (ran_on, bytes) = kept
        .get_timeout(Duration::from_secs(60))
        .expect("rebuilt from lineage");
    assert_ne!(ran_on, first.0, "made again on a live node");
    assert_eq!(bytes.len(), n);
    assert!(bytes.iter().all(|b| *b == (n % 251) as u8));
    assert_eq!(rt.object_locations(&[kept]), [Some(rt.node_id())]);
    match lost.get_timeout(Duration::from_secs(60)) {
        Err(Error::ObjectReconstructionFailed { cause, .. }) => {
            assert!(cause.contains(&first.to_string()), "{cause}")
        }
        other => panic!(
            "expected ObjectReconstructionFailed: {:?}",
            other.map(|v| v.0)
        ),
    }
}

// ---- partitions and hangs ----------------------------------------------------------

/// A node cut off by a silent proxy (no reset): declared dead within the
/// health limit, its running tasks redone elsewhere, and it stops itself.
fn a_partitioned_node_is_declared_dead_and_its_work_redone() {
    let mut c = fast_cluster(1);
    let rt = c.driver().clone();
    let events = rt.events();
    let (proxy, cut) = node_behind_a_proxy(&mut c);
    // Tasks of 3 s on the node to be cut off (soft: they may go elsewhere).
    let refs: Vec<_> = (0..4u64)
        .map(|i| {
            rt.task(slow_where)
                .node_affinity(cut, true)
                .remote((i, 3_000))
        })
        .collect();
    let started = Instant::now();
    // Give the tasks a moment to reach it: wait until the head sees its load.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt
        .cluster_status()
        .unwrap()
        .nodes
        .iter()
        .all(|n| n.info.id != cut || n.report.load == 0)
    {
        assert!(
            Instant::now() < deadline,
            "the tasks never reached the node"
        );
        std::thread::park_timeout(PERIOD);
    }
    proxy.silence();
    let silenced = Instant::now();
    let cause = death_of(&events, cut, Duration::from_secs(15));
    let detected = silenced.elapsed();
    assert!(cause.contains("heartbeat"), "{cause}");
    assert!(
        detected < PERIOD * MISSES + Duration::from_secs(5),
        "declared dead after {detected:?}"
    );
    for (i, (j, node)) in rt
        .get(&refs, Some(Duration::from_secs(60)))
        .unwrap()
        .into_iter()
        .enumerate()
    {
        assert_eq!(i as u64, j);
        assert_ne!(node, cut.0, "task {i} was redone on a live node");
    }
    assert!(started.elapsed() >= Duration::from_secs(3));
    // It heard nothing from the head either: it stops by itself.
    // (After trying to rejoin for its window, 10 s here.)
    assert!(
        c.wait_exit(1, Duration::from_secs(40)).is_some(),
        "the cut-off node exits"
    );
    let status = rt.cluster_status().unwrap();
    let dead = status.nodes.iter().find(|n| n.info.id == cut).unwrap();
    assert!(
        !dead.alive
            && dead
                .cause
                .as_deref()
                .is_some_and(|c| c.contains("heartbeat")),
        "{dead:?}"
    );
    // And the cluster serves on.
    assert_eq!(rt.task(square).remote(9).get().unwrap(), 81);
}

/// A hung node (SIGSTOP) is declared dead; when it wakes it is told so and
/// exits, and its id may not join again.
fn a_hung_node_is_declared_dead_and_may_not_come_back() {
    let mut c = fast_cluster(2);
    let rt = c.driver().clone();
    let events = rt.events();
    let hung = c.nodes()[0].id;
    let pid = pid_of(&c, 0);
    signal(pid, libc::SIGSTOP);
    let cause = death_of(&events, hung, Duration::from_secs(15));
    assert!(cause.contains("heartbeat"), "{cause}");
    let refs: Vec<_> = (0..20u64).map(|i| rt.task(where_am_i).remote(i)).collect();
    for (_, node) in rt.get(&refs, Some(Duration::from_secs(30))).unwrap() {
        assert_ne!(node, hung.0);
    }
    signal(pid, libc::SIGCONT);
    assert!(
        c.wait_exit(0, Duration::from_secs(20)).is_some(),
        "a node declared dead exits when it wakes"
    );
    // Its id is dead for good: a join with it is refused, saying so.
    let token = rt.cluster_token().unwrap();
    let mut s = TcpStream::connect(c.address()).unwrap();
    let registry = Vec::new();
    shake(
        &mut s,
        &token,
        &common::raw_peer::hello_as(
            hung,
            rayx_actors::cluster::wire::Lane::Join,
            rayx_actors::cluster::wire::PROTOCOL_VERSION,
            registry,
        ),
    );
    match read_until_closed(&mut s).as_slice() {
        [rayx_actors::cluster::wire::Msg::Refused { reason }] => {
            assert!(reason.contains("declared dead"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// A hung node declared dead stays out when it wakes even once its death is
/// no longer remembered (the head and every node keep one death here, and
/// another node died since): its rejoin is refused, and it exits.
fn a_hung_node_whose_death_was_forgotten_still_may_not_come_back() {
    let mut c = Cluster::builder()
        .nodes(2)
        .health_check(PERIOD, MISSES)
        .driver(rayx::Builder::new().dead_nodes_kept(1))
        .node_env("RAYX_DEAD_NODES_KEPT", "1")
        .start()
        .unwrap();
    let rt = c.driver().clone();
    let events = rt.events();
    let (hung, other) = (c.nodes()[0].id, c.nodes()[1].id);
    let pid = pid_of(&c, 0);
    signal(pid, libc::SIGSTOP);
    death_of(&events, hung, Duration::from_secs(15));
    c.kill_node(1).unwrap();
    death_of(&events, other, Duration::from_secs(15));
    let listed = |node: NodeId| {
        let status = rt.cluster_status().unwrap();
        status.nodes.iter().any(|n| n.info.id == node)
    };
    assert!(!listed(hung), "its death is forgotten");
    signal(pid, libc::SIGCONT);
    assert!(
        c.wait_exit(0, Duration::from_secs(20)).is_some(),
        "a node declared dead exits when it wakes"
    );
    assert!(!listed(hung), "not taken back as a new node");
}

// ---- the head ---------------------------------------------------------------------

/// A standalone head (`rayx start --head`) killed with SIGKILL during a job
/// and started again on its database: running work between nodes goes on
/// while it is down, the nodes and the driver rejoin, the job finishes, and
/// the head's tables (key-value store, named actors) are as they were.
fn the_head_killed_and_restarted_during_a_job_the_job_finishes() {
    let sh = StandaloneHead::new("head", "head-restart-test-token");
    let mut head = sh.start();
    let mut nodes: Vec<Reap> = (0..3).map(|_| sh.node("2", &[])).collect();
    let rt = sh.driver();
    assert!(
        rt.wait_for_nodes(5, Duration::from_secs(60)),
        "head, three nodes, driver"
    );
    // Which node is which process.
    let ids: Vec<NodeId> = nodes
        .iter()
        .map(|n| {
            rt.nodes()
                .into_iter()
                .filter(|i| i.cpus > 0.0)
                .map(|i| i.id)
                .find(|id| {
                    rt.task(pid_here)
                        .node_affinity(*id, false)
                        .remote(())
                        .get()
                        .unwrap()
                        == n.0.id()
                })
                .expect("each node process is a node")
        })
        .collect();
    rt.kv_put("config", b"kept", true).unwrap();
    let keeper = rt
        .actor_of(new_counter, 5)
        .name("keeper")
        .node_affinity(ids[2], false)
        .spawn()
        .unwrap();
    assert_eq!(keeper.call(Add(1)).get().unwrap(), 6);
    // An actor that will lose its node while the head is down.
    let mover = rt
        .actor_of(new_counter, 0)
        .name("mover")
        .detached()
        .max_restarts(3)
        .node_affinity(ids[0], true)
        .spawn()
        .unwrap();
    assert_eq!(mover.call(Where).get().unwrap(), ids[0].0);
    let refs: Vec<_> = (0..300u64)
        .map(|i| rt.task(slow_where).remote((i, 20)))
        .collect();
    rt.wait(&refs, 30, Some(Duration::from_secs(60))).unwrap();
    head.0.kill().unwrap();
    head.0.wait().unwrap();
    // While it is down, calls between live nodes go on; and two nodes die
    // (the mover's among them), which only the head can declare.
    assert_eq!(keeper.call(Add(1)).get().unwrap(), 7);
    // An ask fails at once, not at its 30 s timeout: nothing listens at the
    // head's address, so the head is gone (not a connection reset).
    let asked = Instant::now();
    match rt.kv_get("config") {
        Err(Error::ClusterUnreachable { .. }) => {}
        other => panic!("expected ClusterUnreachable: {other:?}"),
    }
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "failed after {:?}",
        asked.elapsed()
    );
    for n in &mut nodes[..2] {
        n.0.kill().unwrap();
        n.0.wait().unwrap();
    }
    head = sh.start();
    let results = rt
        .get(&refs, Some(Duration::from_secs(120)))
        .expect("the job finishes");
    for (i, (j, _)) in results.into_iter().enumerate() {
        assert_eq!(j, i as u64);
    }
    // The driver rejoins the head started again (a bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        match rt.cluster_status() {
            Ok(s) if s.nodes.iter().filter(|n| n.alive).count() == 3 => break s,
            _ => {
                assert!(Instant::now() < deadline, "the cluster came back");
                std::thread::park_timeout(PERIOD);
            }
        }
    };
    let old_head = status.nodes.iter().find(|n| n.info.head && !n.alive);
    assert!(
        old_head.is_some_and(|n| n
            .cause
            .as_deref()
            .is_some_and(|c| c.contains("started again"))),
        "{status:?}"
    );
    assert_eq!(rt.kv_get("config").unwrap().as_deref(), Some(&b"kept"[..]));
    let found = rt
        .get_actor::<Counter>("keeper")
        .expect("names survive the head");
    assert_eq!(found.call(Add(1)).get().unwrap(), 8);
    // The mover's node died while the head was down: declared dead once its
    // time to rejoin is over, it starts again on the live node — not on the
    // other node that died, which the restarted head lists but never heard.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let moved = rt
            .get_actor::<Counter>("mover")
            .is_ok_and(|m| m.node_id() == ids[2]);
        if moved {
            break;
        }
        assert!(Instant::now() < deadline, "the mover never came back");
        std::thread::park_timeout(PERIOD);
    }
    assert_eq!(mover.call(Where).get().unwrap(), ids[2].0);
    let more: Vec<_> = (0..20u64).map(|i| rt.task(square).remote(i)).collect();
    assert_eq!(rt.get(&more, None).unwrap()[19], 361);
    // An orderly stop ends the cluster and removes the database.
    sh.stop(head);
    for mut n in nodes.into_iter().skip(2) {
        n.0.wait().unwrap();
    }
    assert!(
        !sh.storage.exists(),
        "an orderly stop removes the head's file"
    );
}

/// The head's job table: a driver that shuts down in order is a finished
/// job, one killed is a failed one, naming why; both survive the head's
/// restart (its database).
/// A head started again on its database with fewer dead nodes allowed than
/// it had keeps the latest deaths — in the order they died, not joined — and
/// deletes the others' records.
fn a_head_started_again_keeps_its_latest_deaths() {
    use rayx_actors::cluster::wire::{Answer, Ask, ClusterStatus};
    let sh = StandaloneHead::new("deadbound", "deadbound-token");
    let (address, token) = (sh.address.clone(), sh.token);
    let status = || -> Option<ClusterStatus> {
        match rayx_actors::cluster::admin_ask(&address, Some(token), None, Ask::Status) {
            Ok(Answer::Status(s)) => Some(s),
            _ => None,
        }
    };
    let wait_for = |what: &str, done: &dyn Fn(&ClusterStatus) -> bool| -> ClusterStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = status().filter(|s| done(s)) {
                return s;
            }
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::park_timeout(PERIOD);
        }
    };
    let dead = |s: &ClusterStatus| -> BTreeSet<NodeId> {
        s.nodes
            .iter()
            .filter(|n| !n.alive)
            .map(|n| n.info.id)
            .collect()
    };
    let mut head = sh.start();
    let driver = || sh.driver();
    // The first to join is the last to go.
    let first = driver();
    let last_to_die = first.node_id();
    for _ in 0..3 {
        driver().shutdown();
    }
    first.shutdown();
    let before = wait_for("four drivers dead", &|s| dead(s).len() == 4);
    assert!(dead(&before).contains(&last_to_die));
    let old_head = before.nodes.iter().find(|n| n.info.head).unwrap().info.id;
    head.0.kill().unwrap();
    head.0.wait().unwrap();
    let mut head = sh.start_with(&[("RAYX_DEAD_NODES_KEPT", "2")]);
    let after = wait_for("the head is back", &|_| true);
    // The old head died last (at this start), the first driver before it.
    assert_eq!(dead(&after), BTreeSet::from([old_head, last_to_die]));
    // The others' records are gone: a head started again with room for
    // them does not find them.
    let second_head = after.nodes.iter().find(|n| n.alive).unwrap().info.id;
    head.0.kill().unwrap();
    head.0.wait().unwrap();
    let head = sh.start();
    let again = wait_for("the head is back again", &|_| true);
    assert_eq!(
        dead(&again),
        BTreeSet::from([old_head, last_to_die, second_head])
    );
    sh.stop(head);
}

/// A group placed on a node that had not taken it (stopped) when the head
/// was killed: the head started again has it placed, and tells every node so
/// as they rejoin, so the driver that created it sees it ready (it saw it
/// pending for good: the head's news had the version the driver knew).
fn a_group_placed_before_the_head_was_killed_is_ready_after() {
    use std::process::Command;
    let sh = StandaloneHead::new("groups", "groups-restart-token");
    let (address, token) = (sh.address.clone(), sh.token);
    let mut head = sh.start();
    let node = sh.node("1", &[("RAYX_RESOURCES", "disk=1")]);
    let rt = sh.driver();
    assert!(
        rt.wait_for_nodes(3, Duration::from_secs(60)),
        "head, node, driver"
    );
    let pid = node.0.id() as i32;
    signal(pid, libc::SIGSTOP);
    let pg = rt
        .placement_group([[("disk", 1.0)]])
        .name("kept")
        .detached()
        .create()
        .unwrap();
    assert_eq!(
        pg.wait(Duration::from_millis(200)),
        Ok(false),
        "not taken yet"
    );
    assert!(pg.bundle_nodes()[0].is_some(), "placed");
    // And one with no room at all: pending before, pending after.
    let waits = rt
        .placement_group([[("gpu", 1.0)]])
        .name("waits")
        .detached()
        .create()
        .unwrap();
    head.0.kill().unwrap();
    head.0.wait().unwrap();
    head = sh.start();
    signal(pid, libc::SIGCONT);
    assert_eq!(pg.wait(Duration::from_secs(30)), Ok(true));
    assert_eq!(rt.get_placement_group("kept").map(|g| g.id()), Ok(pg.id()));
    // `rayx status` lists it, and the node's resources.
    let status = Command::new(env!("CARGO_BIN_EXE_rayx"))
        .args(["status", "--address", &address])
        .env("RAYX_TOKEN", token)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    assert!(text.contains("resources: disk=1"), "{text}");
    let line = format!("{} Created Pack named default/kept", pg.id());
    assert!(text.contains(&line), "{text}");
    let line = format!("{} Pending Pack named default/waits", waits.id());
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("bundle 0: gpu=1 not placed"), "{text}");
    rt.remove_placement_group(&waits).unwrap();
    assert!(text.contains("bundle 0: disk=1 on node-"), "{text}");
    rt.remove_placement_group(&pg).unwrap();
    drop(rt);
    sh.stop(head);
    drop(node);
}

fn jobs_are_kept_by_the_head_through_its_restart() {
    use rayx_actors::cluster::wire::{Answer, Ask, ClusterStatus, JobState};
    use std::process::{Command, Stdio};
    let sh = StandaloneHead::new("jobs", "jobs-test-token");
    let (address, token) = (sh.address.clone(), sh.token);
    let driver = |mode: &str| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("RAYX_TEST_DRIVER", mode)
            .env("RAYX_ADDRESS", &address)
            .env("RAYX_TOKEN", token)
            .env_remove("RAYX_ROLE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd
    };
    let status = || -> ClusterStatus {
        match rayx_actors::cluster::admin_ask(&address, Some(token), None, Ask::Status).unwrap() {
            Answer::Status(s) => s,
            other => panic!("{other:?}"),
        }
    };
    let mut head = sh.start();
    // A driver that runs a task and shuts down in order.
    let out = driver("finish").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // One killed while it runs.
    let mut doomed = driver("hang").spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(doomed.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "joined");
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        let jobs = status().jobs;
        if jobs.len() == 2 && jobs.iter().all(|j| j.state != JobState::Running) {
            break jobs;
        }
        assert!(Instant::now() < deadline, "the jobs never ended: {jobs:?}");
        std::thread::park_timeout(PERIOD);
    };
    assert_eq!(jobs[0].state, JobState::Finished, "{jobs:?}");
    assert!(
        matches!(&jobs[1].state, JobState::Failed(why) if why.contains("driver died")),
        "{jobs:?}"
    );
    assert!(jobs.iter().all(|j| j.ended.is_some_and(|e| e >= j.started)));
    // The node table: the finished driver left, the killed one died.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (left, died) = loop {
        let nodes = status().nodes;
        let find = |id| nodes.iter().find(|n| n.info.id == id && !n.alive).cloned();
        if let (Some(l), Some(d)) = (find(jobs[0].id), find(jobs[1].id)) {
            break (l, d);
        }
        assert!(
            Instant::now() < deadline,
            "the drivers never left: {nodes:?}"
        );
        std::thread::park_timeout(PERIOD);
    };
    use rayx_actors::cluster::head::LEFT_CAUSE;
    assert_eq!(left.cause.as_deref(), Some(LEFT_CAUSE), "{left:?}");
    assert!(died.cause.is_some_and(|c| c != LEFT_CAUSE));
    // The head is killed and started again: the table is as it was.
    head.0.kill().unwrap();
    head.0.wait().unwrap();
    head = sh.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        match rayx_actors::cluster::admin_ask(&address, Some(token), None, Ask::Status) {
            Ok(Answer::Status(s)) => break s.jobs,
            _ => {
                assert!(Instant::now() < deadline, "the head came back");
                std::thread::park_timeout(PERIOD);
            }
        }
    };
    assert_eq!(again, jobs);
    sh.stop(head);
}

/// The test binary as a driver of `jobs_are_kept_by_the_head_through_its_restart`.
fn run_as_driver(mode: &str) {
    let rt = rayx::init().expect("the driver joins");
    assert_eq!(rt.task(square).remote(3).get().unwrap(), 9);
    if mode == "hang" {
        println!("joined");
        // Killed here by the test.
        loop {
            std::thread::park();
        }
    }
    rt.shutdown();
}

// ---- strangers ------------------------------------------------------------------

/// A node with a wrong token, or none, is refused with a clear reason on
/// both sides, and the token never crosses the wire.
fn a_wrong_or_missing_token_is_refused_on_both_sides() {
    let c = fast_cluster(1);
    let rt = c.driver().clone();
    for (env, says) in [
        (("RAYX_TOKEN", "not-the-token"), "wrong cluster token"),
        (("RAYX_AUTH", "none"), "requires a token"),
    ] {
        let out = c
            .node_command(c.address())
            .unwrap()
            .env_remove("RAYX_TOKEN")
            .env(env.0, env.1)
            // Its stdin is not a pipe from us: it must not exit on its EOF.
            .env_remove("RAYX_EXIT_WITH_PARENT")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{env:?}: the node is refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("authentication failed") && err.contains(says),
            "{env:?}: {err}"
        );
    }
    let rejected = rt.cluster_status().unwrap().rejections;
    assert!(
        rejected.get("authentication failed").copied().unwrap_or(0) >= 2,
        "the head says why too: {rejected:?}"
    );
    assert_eq!(rt.nodes().len(), 2, "nobody joined");
    // The token is never sent: a listener sees only nonces and proofs.
    let token = rt.cluster_token().unwrap();
    let sniff = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = sniff.local_addr().unwrap().to_string();
    let mut cmd = c.node_command(&at).unwrap();
    let mut child = cmd
        .env_remove("RAYX_EXIT_WITH_PARENT")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut s, _) = sniff.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    let hello_frame = read_frame(&mut s);
    seen.extend(format!("{hello_frame:?}").into_bytes());
    // Answer with a challenge carrying a bogus proof: the node must refuse.
    let challenge = rayx_actors::cluster::wire::Msg::Challenge {
        nonce: ByteBuf::from(vec![1u8; 32]),
        proof: Some(ByteBuf::from(vec![0u8; 32])),
    };
    s.write_all(&frame(
        &rayx_actors::cluster::wire::encode(&[challenge]).unwrap(),
    ))
    .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    seen.extend(rest);
    assert!(
        !seen.windows(token.len()).any(|w| w == token.as_bytes()),
        "the token crossed the wire"
    );
    let status = child.wait().unwrap();
    assert!(!status.success(), "a listener without the token is refused");
}

/// With TLS every connection is encrypted: work crosses nodes as before, a
/// wiretap between a node and the head sees nothing in the clear (without
/// TLS it sees the registry's names), and a node without the certificate is
/// refused, saying why.
fn tls_encrypts_every_connection() {
    let name = b"cluster_failures::where_am_i";
    // Without TLS, a wiretap reads the names in a join's hello.
    let mut plain = fast_cluster(0);
    let tap = Proxy::start(plain.address()).unwrap();
    plain.add_node_via(tap.address()).unwrap();
    assert!(
        tap.seen().windows(name.len()).any(|w| w == name),
        "the test's wiretap works"
    );
    drop(plain);
    let (mut c, dir) = tls_cluster("wiretap");
    let rt = c.driver().clone();
    let tap = Proxy::start(c.address()).unwrap();
    let tapped = c.add_node_via(tap.address()).unwrap();
    assert_eq!(
        rt.task(where_am_i)
            .node_affinity(tapped, false)
            .remote(7)
            .get()
            .unwrap(),
        (7, tapped.0)
    );
    let n = 4 << 20;
    let (on, bytes) = rt
        .task(big_result)
        .node_affinity(tapped, false)
        .remote(n)
        .get()
        .unwrap();
    assert_eq!((on, bytes.len()), (tapped.0, n));
    assert!(bytes.iter().all(|b| *b == (n % 251) as u8));
    let seen = tap.seen();
    assert!(!seen.is_empty(), "the join went through the tap");
    assert!(
        !seen.windows(name.len()).any(|w| w == name),
        "a name crossed in the clear"
    );
    // A node without the certificate is told the cluster uses TLS.
    let out = c
        .node_command(c.address())
        .unwrap()
        .env_remove("RAYX_TLS_CERT")
        .env_remove("RAYX_TLS_KEY")
        .env_remove("RAYX_EXIT_WITH_PARENT")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uses TLS"), "{err}");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Random bytes, oversized frames, a slow-loris hello and a flood of idle
/// A join hello that carries a live member's id but not the member's
/// address (another process with the token) is refused: it may not take the
/// member's place, or its session. The member serves on.
fn a_join_hello_with_a_members_id_is_refused() {
    use rayx_actors::cluster::wire::{Lane, Msg, PROTOCOL_VERSION};
    let c = fast_cluster(1);
    let rt = c.driver().clone();
    let events = rt.events();
    let member = c.nodes()[0].id;
    let mut s = TcpStream::connect(c.address()).unwrap();
    shake(
        &mut s,
        &rt.cluster_token().unwrap(),
        &common::raw_peer::hello_as(member, Lane::Join, PROTOCOL_VERSION, vec![]),
    );
    match read_until_closed(&mut s).as_slice() {
        [Msg::Refused { reason }] => assert!(reason.contains("a member already"), "{reason}"),
        other => panic!("expected a refusal: {other:?}"),
    }
    assert_eq!(
        rt.task(square)
            .node_affinity(member, false)
            .remote(4)
            .get_timeout(Duration::from_secs(10)),
        Ok(16)
    );
    no_node_died(&events);
}

/// connections: each closes only its own connection, and the cluster serves.
fn hostile_bytes_leave_the_cluster_serving() {
    let mut c = fast_cluster(1);
    let rt = c.driver().clone();
    let addr = c.address().to_string();
    let node_addr = rt
        .nodes()
        .into_iter()
        .find(|n| n.id == c.nodes()[0].id)
        .unwrap()
        .address;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for target in [&addr, &node_addr] {
        // Random bytes, with and without a plausible length prefix.
        for round in 0..50 {
            let mut s = TcpStream::connect(target).unwrap();
            let n = (next() % 4096) as usize + 1;
            let mut junk: Vec<u8> = (0..n).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                junk.splice(0..0, ((n as u32).min(1 << 16)).to_be_bytes());
            }
            let _ = s.write_all(&junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            read_until_closed(&mut s);
        }
        // Over the limit before authentication: refused unread.
        let mut s = TcpStream::connect(target).unwrap();
        s.write_all(&(64u32 << 20).to_be_bytes()).unwrap();
        match read_until_closed(&mut s).as_slice() {
            [rayx_actors::cluster::wire::Msg::Refused { reason }] => {
                assert!(reason.contains("limit"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // A slow loris: a hello one byte at a time, too slowly.
        let h = hello(
            rayx_actors::cluster::wire::Lane::Control,
            rayx_actors::cluster::wire::PROTOCOL_VERSION,
            vec![],
        );
        let mut s = TcpStream::connect(target).unwrap();
        let began = Instant::now();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut closed = false;
        for b in &h {
            if s.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            let mut one = [0u8; 1];
            match s.read(&mut one) {
                Ok(_) => {
                    closed = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        assert!(closed, "a slow loris is cut off");
        assert!(began.elapsed() < Duration::from_secs(15));
    }
    // A flood of idle connections past the handshake bound, to the head and
    // to the node, while a large result waits on the node, unread.
    let first = c.nodes()[0].id;
    let held = rt
        .task(big_result)
        .node_affinity(first, false)
        .remote(1 << 20);
    let deadline = Instant::now() + Duration::from_secs(30);
    while rt.object_locations(std::slice::from_ref(&held)) != [Some(first)] {
        assert!(Instant::now() < deadline, "the result never landed");
        std::thread::park_timeout(PERIOD);
    }
    let idle: Vec<TcpStream> = (0..300)
        .flat_map(|_| [TcpStream::connect(&addr), TcpStream::connect(&node_addr)])
        .map(Result::unwrap)
        .collect();
    // Work over the links already up goes on meanwhile; the held result is
    // read over a new link, and a new node joins: a flood of strangers cuts
    // off the oldest handshakes, not the newest.
    let refs: Vec<_> = (0..100u64).map(|i| rt.task(square).remote(i)).collect();
    let got = rt.get(&refs, Some(Duration::from_secs(30))).unwrap();
    assert_eq!(got, (0..100u64).map(|i| i * i).collect::<Vec<_>>());
    let (_, bytes) = held
        .get_timeout(Duration::from_secs(30))
        .expect("read during the flood");
    assert_eq!(bytes.len(), 1 << 20);
    c.add_node().expect("a node joins during the flood");
    drop(idle);
    let rejected = rt.cluster_status().unwrap().rejections;
    for kind in [
        "undecodable frame",
        "frame over the limit",
        "no handshake within 5s",
        "too many handshakes at once",
    ] {
        assert!(rejected.contains_key(kind), "{kind}: {rejected:?}");
    }
    assert!(c.nodes().len() == 2 && rt.nodes().len() == 3);
}

// ---- the runner ---------------------------------------------------------------

fn main() {
    rayx::testing::serve_if_node();
    if let Ok(mode) = std::env::var("RAYX_TEST_DRIVER") {
        return run_as_driver(&mode);
    }
    macro_rules! tests {
        ($($t:ident),* $(,)?) => { &[$((stringify!($t), $t as fn())),*] };
    }
    let tests: &[(&str, fn())] = tests![
        a_node_killed_mid_job_loses_no_result,
        a_task_out_of_retries_names_the_dead_nodes,
        a_named_actor_restarts_on_another_node_and_keeps_answering,
        a_handle_holds_its_actor_on_the_node_it_restarted_on,
        an_actor_started_again_ends_with_its_last_handle,
        an_actor_moved_by_a_drain_ends_with_its_last_handle,
        an_actor_started_again_on_its_creators_node_is_killed_there,
        a_handle_passed_on_as_its_actors_node_dies_follows_it,
        a_failed_calls_message_may_call_as_it_drops,
        a_handle_to_an_actor_gone_before_its_node_died_is_refused,
        an_actor_the_head_forgets_may_let_go_of_the_last_handle_to_another,
        an_actor_whose_drop_asks_the_head_ends_without_stalling_its_node,
        an_actor_reached_while_it_starts_again_answers_there,
        a_name_looked_up_while_its_actor_is_created_holds_it,
        calls_follow_an_actor_through_two_deaths,
        an_actor_without_restarts_fails_naming_its_node,
        a_node_told_to_stop_leaves_in_order,
        a_reset_during_a_drain_is_no_leaving,
        a_drain_waits_for_the_refs_its_replies_hold,
        a_node_told_to_stop_as_it_joins_leaves_in_order,
        a_node_drained_by_the_head_leaves_in_order,
        an_object_whose_owner_died_fails_owner_died,
        a_pull_whose_link_breaks_goes_again,
        tasks_wait_out_a_broken_link_to_a_live_node,
        network_blips_lose_and_repeat_nothing,
        resets_of_the_link_to_the_head_lose_nothing,
        a_join_link_stalled_one_way_is_replaced_in_time,
        a_rejoin_stalled_in_its_handshake_tries_again_in_time,
        a_task_on_a_node_still_joining_may_ask_the_head,
        a_slow_connection_to_the_head_still_joins_and_rejoins,
        an_unanswered_first_join_is_tried_again,
        a_driver_stopping_during_a_reset_still_finishes_its_job,
        an_actor_created_on_a_node_that_dies_fails_at_its_death,
        a_result_whose_only_copy_died_is_rebuilt,
        a_partitioned_node_is_declared_dead_and_its_work_redone,
        a_hung_node_is_declared_dead_and_may_not_come_back,
        a_hung_node_whose_death_was_forgotten_still_may_not_come_back,
        the_head_killed_and_restarted_during_a_job_the_job_finishes,
        jobs_are_kept_by_the_head_through_its_restart,
        a_group_placed_before_the_head_was_killed_is_ready_after,
        a_head_started_again_keeps_its_latest_deaths,
        a_wrong_or_missing_token_is_refused_on_both_sides,
        tls_encrypts_every_connection,
        hostile_bytes_leave_the_cluster_serving,
        a_join_hello_with_a_members_id_is_refused,
    ];
    common::run_tests(tests);
}
