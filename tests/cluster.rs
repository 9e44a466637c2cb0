//! A cluster of real OS processes on loopback: this binary is the driver (and
//! the head), and re-runs itself as node processes (its `main` serves as a
//! node first). Node processes are killed with SIGKILL, never asked nicely.
//!
//! Its own runner (harness = false): `cargo test --test cluster [filter]`.
//! The tests run one after another; each starts its own cluster.

mod common;

use common::raw_peer::{
    accept_shake, chunk_frame, control_frame, control_frame_acking, fake_node, frame, hello,
    join_control, read_frames_until, read_until_closed, send_task_on, shake,
};
use rayx::prelude::*;
use rayx::testing::Cluster;
use rayx::Builder;
use serde_bytes::ByteBuf;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::TcpStream;
use std::time::Instant;

// ---- what the nodes run -------------------------------------------------------

fn where_am_i(i: u64) -> (u64, u64) {
    (i, Runtime::current().expect("in a task").node_id().0)
}

fn square(x: u64) -> u64 {
    x * x
}

fn blob(n: usize, seed: u8) -> ByteBuf {
    ByteBuf::from(
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<u8>>(),
    )
}

fn checksum(b: ByteBuf) -> (usize, u64) {
    let sum = b
        .iter()
        .enumerate()
        .fold(0u64, |s, (i, x)| s.wrapping_add((i as u64 + 1) * *x as u64));
    (b.len(), sum)
}

fn shared_blob(n: usize, seed: u8) -> rayx::Bytes {
    rayx::Bytes::from(blob(n, seed).into_vec())
}

fn shared_checksum(b: rayx::Bytes) -> (usize, u64) {
    checksum(ByteBuf::from(b.to_vec()))
}

/// Reads `r` twice on this node: its checksum, and whether both reads share
/// one buffer (read in place, not copied).
fn read_twice_in_place(r: ObjectRef<rayx::Bytes>) -> ((usize, u64), bool) {
    let (a, b) = (r.get().expect("read"), r.get().expect("read again"));
    (shared_checksum(a.clone()), a.as_ptr() == b.as_ptr())
}

fn sum_refs(refs: Vec<ObjectRef<u64>>) -> u64 {
    refs.iter()
        .map(|r| r.get().expect("a borrowed ref resolves"))
        .sum()
}

fn fan_out(n: u64) -> u64 {
    // A task on a node submits tasks of its own (the node owns them).
    let rt = Runtime::current().expect("in a task");
    let refs: Vec<_> = (0..n).map(|i| rt.task(square).remote(i)).collect();
    rt.get(&refs, None).expect("nested tasks").into_iter().sum()
}

fn call_counter(c: ActorHandle<Counter>, k: u64) -> u64 {
    c.call(Add(k)).get().expect("a call from another node")
}

fn lookup_and_add(name: String, k: u64) -> u64 {
    let rt = Runtime::current().expect("in a task");
    let c = rt
        .get_actor::<Counter>(&name)
        .expect("named actors are cluster-wide");
    c.call(Add(k)).get().expect("call")
}

fn put_here(x: u64, big: usize) -> (ObjectRef<u64>, ObjectRef<ByteBuf>) {
    // Objects this node owns, returned inside the result: they must outlive
    // the task until the driver holds them.
    let rt = Runtime::current().expect("in a task");
    (rt.put(x).unwrap(), rt.put(blob(big, 1)).unwrap())
}

fn spawn_counter(start: u64) -> ActorHandle<Counter> {
    let rt = Runtime::current().expect("in a task");
    // On this node (the default policy may place it elsewhere when busy).
    rt.actor_of(Counter::new, start)
        .node_affinity(rt.node_id(), false)
        .spawn()
        .expect("spawn on a node")
}

fn fail_loudly(n: usize) -> u64 {
    panic!("{}", "p".repeat(n))
}

/// Tries the key-value store with a value of `n` bytes from this node.
fn kv_put_here(n: usize) -> String {
    let rt = Runtime::current().expect("in a task");
    format!("{:?}", rt.kv_put("heavy", &vec![1u8; n], true))
}

fn echo_shared(b: rayx::Bytes) -> rayx::Bytes {
    b
}
fn echo_buf(b: ByteBuf) -> ByteBuf {
    b
}
fn echo_numbers(v: Vec<u64>) -> Vec<u64> {
    v
}

rayx::remote!(
    fail_loudly,
    kv_put_here,
    echo_shared,
    echo_buf,
    echo_numbers,
    where_am_i,
    square,
    blob,
    checksum,
    shared_blob,
    shared_checksum,
    read_twice_in_place,
    sum_refs,
    fan_out,
    call_counter,
    lookup_and_add,
    put_here,
    spawn_counter,
    hand_over,
    build_with_refs,
    big_with_ref,
    put_many,
    take_and_read,
    have_taken_and_read,
    noted_square,
    noted_square_on,
    peers_here
);

pub struct Counter {
    n: u64,
    log: Vec<u64>,
}
impl Counter {
    fn new(start: u64) -> Counter {
        Counter {
            n: start,
            log: Vec::new(),
        }
    }
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
        self.log.push(k);
        self.n
    }
}

#[derive(Serialize, Deserialize)]
pub struct Log;
impl Message for Log {
    type Reply = (Vec<u64>, u64);
}
impl Handler<Log> for Counter {
    fn handle(&mut self, _: Log, _: &mut ActorContext<Self>) -> (Vec<u64>, u64) {
        let here = Runtime::current().expect("on a node").node_id().0;
        (self.log.clone(), here)
    }
}

/// Weighs what it is sent: its length in bytes.
#[derive(Serialize, Deserialize)]
pub struct Weigh(ByteBuf);
impl Message for Weigh {
    type Reply = usize;
}
impl Handler<Weigh> for Counter {
    fn handle(&mut self, Weigh(b): Weigh, _: &mut ActorContext<Self>) -> usize {
        b.len()
    }
}

rayx::remote_actor!(Counter, Counter::new, [Add, Log, Weigh]);

/// An actor whose constructor takes bytes.
pub struct Ballast(usize);
impl Ballast {
    fn new(b: ByteBuf) -> Ballast {
        Ballast(b.len())
    }
}
impl Actor for Ballast {}
#[derive(Serialize, Deserialize)]
pub struct Heft;
impl Message for Heft {
    type Reply = usize;
}
impl Handler<Heft> for Ballast {
    fn handle(&mut self, _: Heft, _: &mut ActorContext<Self>) -> usize {
        self.0
    }
}
rayx::remote_actor!(Ballast, Ballast::new, [Heft]);

/// Keeps the refs it is handed; reads them all on request.
pub struct Stash {
    kept: Vec<ObjectRef<u64>>,
    /// Refs to values that hold refs.
    boxes: Vec<ObjectRef<Vec<ObjectRef<u64>>>>,
}
impl Stash {
    fn new() -> Stash {
        Stash {
            kept: Vec::new(),
            boxes: Vec::new(),
        }
    }
}
impl Actor for Stash {}
#[derive(Serialize, Deserialize)]
pub struct Stow(Vec<ObjectRef<u64>>);
impl Message for Stow {
    type Reply = ();
}
impl Handler<Stow> for Stash {
    fn handle(&mut self, Stow(refs): Stow, _: &mut ActorContext<Self>) {
        self.kept.extend(refs);
    }
}
/// Reads every kept ref (the i-th holds i); the failures.
#[derive(Serialize, Deserialize)]
pub struct ReadStash;
impl Message for ReadStash {
    type Reply = Vec<String>;
}
impl Handler<ReadStash> for Stash {
    fn handle(&mut self, _: ReadStash, _: &mut ActorContext<Self>) -> Vec<String> {
        (0..)
            .zip(&self.kept)
            .filter_map(|(i, r)| misread(i, r))
            .collect()
    }
}

/// What went wrong reading `r`, which should hold `expected`; `None`: nothing.
fn misread(expected: u64, r: &ObjectRef<u64>) -> Option<String> {
    match r.get_timeout(Duration::from_secs(5)) {
        Ok(v) if v == expected => None,
        Ok(v) => Some(format!("#{expected}: read {v}")),
        Err(e) => Some(format!("#{expected}: {e}")),
    }
}

/// Asserts that none of `n` reads failed (`failed`: what went wrong).
fn assert_all_read(failed: &[String], n: u64) {
    assert!(
        failed.is_empty(),
        "{} of {n} reads failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}
/// A large reply holding a ref this actor's node owns (as `big_with_ref`).
#[derive(Serialize, Deserialize)]
pub struct BigWithRef(u64);
impl Message for BigWithRef {
    type Reply = (ObjectRef<u64>, ByteBuf);
}
impl Handler<BigWithRef> for Stash {
    fn handle(
        &mut self,
        BigWithRef(x): BigWithRef,
        _: &mut ActorContext<Self>,
    ) -> (ObjectRef<u64>, ByteBuf) {
        big_with_ref(x)
    }
}

/// Hands over every kept ref (the stash keeps none).
#[derive(Serialize, Deserialize)]
pub struct Give;
impl Message for Give {
    type Reply = Vec<ObjectRef<u64>>;
}
impl Handler<Give> for Stash {
    fn handle(&mut self, _: Give, _: &mut ActorContext<Self>) -> Vec<ObjectRef<u64>> {
        std::mem::take(&mut self.kept)
    }
}

/// Keeps refs, then (its node's borrows of them sent) marks `dir/stowed` and
/// waits until `dir/go` exists: the test holds the answer back meanwhile.
#[derive(Serialize, Deserialize)]
pub struct StowUntil(Vec<ObjectRef<u64>>, String);
impl Message for StowUntil {
    type Reply = ();
}
impl Handler<StowUntil> for Stash {
    fn handle(&mut self, StowUntil(refs, dir): StowUntil, _: &mut ActorContext<Self>) {
        self.kept.extend(refs);
        let dir = std::path::Path::new(&dir);
        std::fs::write(dir.join("stowed"), b"").expect("mark");
        wait_for_file(&dir.join("go"));
    }
}

/// Keeps a ref to a value that holds refs.
#[derive(Serialize, Deserialize)]
pub struct StowBox(ObjectRef<Vec<ObjectRef<u64>>>);
impl Message for StowBox {
    type Reply = ();
}
impl Handler<StowBox> for Stash {
    fn handle(&mut self, StowBox(b): StowBox, _: &mut ActorContext<Self>) {
        self.boxes.push(b);
    }
}
/// Reads the kept boxes, keeps the refs inside, and lets the boxes go.
#[derive(Serialize, Deserialize)]
pub struct Unbox;
impl Message for Unbox {
    type Reply = ();
}
impl Handler<Unbox> for Stash {
    fn handle(&mut self, _: Unbox, _: &mut ActorContext<Self>) {
        for b in std::mem::take(&mut self.boxes) {
            self.kept.extend(b.get().expect("a box"));
        }
    }
}

rayx::remote_actor!(
    Stash,
    Stash::new,
    [Stow, ReadStash, BigWithRef, Give, StowUntil, StowBox, Unbox]
);

/// Waits (at most 30 s) until `path` exists: an event between processes.
fn wait_for_file(path: &std::path::Path) {
    wait_until(&format!("{} exists", path.display()), || path.exists());
}

/// Squares `x`, marking `dir/squared` first.
fn noted_square(x: u64, dir: String) -> u64 {
    std::fs::write(std::path::Path::new(&dir).join("squared"), b"").expect("mark");
    x * x
}

/// Runs `noted_square` on `node`: its answer goes to this node.
/// The other nodes the node running it knows (live, and the dead it
/// remembers), each with whether it is alive, in order.
fn peers_here(_: ()) -> Vec<(NodeId, bool)> {
    let rt = Runtime::current().expect("in a task");
    let mut known = rt.peers_known().expect("in a cluster");
    known.sort();
    known
}

fn noted_square_on(node: u64, x: u64, dir: String) -> u64 {
    let rt = Runtime::current().expect("in a task");
    rt.task(noted_square)
        .node_affinity(NodeId(node), false)
        .remote((x, dir))
        .get()
        .expect("squared")
}

/// An actor whose constructor takes a ref and the value it should hold (to
/// read it later).
pub struct Built {
    kept: (u64, ObjectRef<u64>),
}
impl Built {
    fn new(kept: (u64, ObjectRef<u64>)) -> Built {
        Built { kept }
    }
}
impl Actor for Built {}
impl Handler<ReadStash> for Built {
    fn handle(&mut self, _: ReadStash, _: &mut ActorContext<Self>) -> Vec<String> {
        misread(self.kept.0, &self.kept.1).into_iter().collect()
    }
}
rayx::remote_actor!(Built, Built::new, [ReadStash]);

/// `n` times: puts a value, starts an actor on `other` whose constructor
/// argument holds it (this task keeps no ref), and asks the actor to read it.
fn build_with_refs(other: u64, n: u64) -> Vec<String> {
    let rt = Runtime::current().expect("in a task");
    let mut bad = Vec::new();
    for i in 0..n {
        let x = rt.put(i).unwrap();
        let built = rt
            .actor_of(Built::new, (i, x))
            .node_affinity(NodeId(other), false)
            .spawn()
            .expect("spawn");
        bad.extend(built.call(ReadStash).get().expect("read"));
    }
    bad
}

/// `n` values put here, the i-th holding i.
fn put_many(n: u64) -> Vec<ObjectRef<u64>> {
    let rt = Runtime::current().expect("in a task");
    (0..n).map(|i| rt.put(i).unwrap()).collect()
}

/// Takes the refs out of `stash` and reads them (the i-th holds i): the
/// failures.
fn take_and_read(stash: ActorHandle<Stash>) -> Vec<String> {
    let refs = stash.call(Give).get().expect("given");
    (0..)
        .zip(&refs)
        .filter_map(|(i, r)| misread(i, r))
        .collect()
}

/// Runs `take_and_read` on `node`: its answers come here, not to the driver.
fn have_taken_and_read(stash: ActorHandle<Stash>, node: u64) -> Vec<String> {
    let rt = Runtime::current().expect("in a task");
    rt.task(take_and_read)
        .node_affinity(NodeId(node), false)
        .remote(stash)
        .get()
        .expect("read")
}

/// A large result holding a ref this node owns.
fn big_with_ref(x: u64) -> (ObjectRef<u64>, ByteBuf) {
    let rt = Runtime::current().expect("in a task");
    (rt.put(x).unwrap(), blob(1 << 20, 3))
}

/// Puts `n` values one by one and hands each to `stash`, dropping its own ref
/// once the call is answered.
fn hand_over(stash: ActorHandle<Stash>, n: u64) -> u64 {
    let rt = Runtime::current().expect("in a task");
    for i in 0..n {
        let x = rt.put(i).unwrap();
        stash.call(Stow(vec![x])).get().expect("kept");
    }
    n
}

/// Keeps what it is sent: a ref and a handle, to use later.
pub struct Keeper {
    kept: Option<ObjectRef<u64>>,
    counter: Option<ActorHandle<Counter>>,
}
impl Keeper {
    fn new() -> Keeper {
        Keeper {
            kept: None,
            counter: None,
        }
    }
}
impl Actor for Keeper {}

#[derive(Serialize, Deserialize)]
pub struct Keep(ObjectRef<u64>, ActorHandle<Counter>);
impl Message for Keep {
    type Reply = ();
}
impl Handler<Keep> for Keeper {
    fn handle(&mut self, Keep(r, c): Keep, _: &mut ActorContext<Self>) {
        self.kept = Some(r);
        self.counter = Some(c);
    }
}

#[derive(Serialize, Deserialize)]
pub struct UseKept;
impl Message for UseKept {
    type Reply = (u64, u64);
}
impl Handler<UseKept> for Keeper {
    fn handle(&mut self, _: UseKept, _: &mut ActorContext<Self>) -> (u64, u64) {
        let v = self
            .kept
            .as_ref()
            .expect("kept")
            .get()
            .expect("the kept ref reads");
        let n = self
            .counter
            .as_ref()
            .expect("kept")
            .call(Add(1))
            .get()
            .expect("the kept handle calls");
        (v, n)
    }
}

#[derive(Serialize, Deserialize)]
pub struct Forget;
impl Message for Forget {
    type Reply = ();
}
impl Handler<Forget> for Keeper {
    fn handle(&mut self, _: Forget, _: &mut ActorContext<Self>) {
        self.kept = None;
        self.counter = None;
    }
}

rayx::remote_actor!(Keeper, Keeper::new, [Keep, UseKept, Forget]);

// ---- the tests ----------------------------------------------------------------

fn node_ids(c: &Cluster) -> Vec<u64> {
    c.nodes().iter().map(|n| n.id.0).collect()
}

fn tasks_run_on_every_node_and_their_results_come_back() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    assert_eq!(rt.nodes().len(), 3, "the driver and two nodes");
    let refs: Vec<_> = (0..400)
        .map(|i| rt.task(where_am_i).scheduling(Scheduling::Spread).remote(i))
        .collect();
    let out = rt.get(&refs, None).unwrap();
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, (echo, node)) in out.iter().enumerate() {
        assert_eq!(*echo, i as u64, "results come back in order, each its own");
        *per_node.entry(*node).or_default() += 1;
    }
    let nodes: BTreeSet<u64> = node_ids(&c).into_iter().collect();
    assert_eq!(
        per_node.keys().copied().collect::<BTreeSet<_>>(),
        nodes,
        "the driver offers no CPUs: both node processes ran tasks, nothing else did: {per_node:?}"
    );
    // Default placement: the driver has no CPUs, so work spills to the nodes.
    let squares: Vec<_> = (0..100u64).map(|i| rt.task(square).remote(i)).collect();
    assert_eq!(
        rt.get(&squares, None).unwrap(),
        (0..100u64).map(|i| i * i).collect::<Vec<_>>()
    );
    // A task on a node submits its own tasks there.
    assert_eq!(
        rt.task(fan_out).remote(10).get().unwrap(),
        (0..10u64).map(|i| i * i).sum::<u64>()
    );
}

fn node_affinity_is_hard_unless_soft() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    let target = c.nodes()[1].id;
    let refs: Vec<_> = (0..50)
        .map(|i| rt.task(where_am_i).node_affinity(target, false).remote(i))
        .collect();
    for (_, node) in rt.get(&refs, None).unwrap() {
        assert_eq!(node, target.0);
    }
    let nowhere = NodeId(12345);
    match rt
        .task(square)
        .node_affinity(nowhere, false)
        .remote(3)
        .get()
    {
        Err(Error::Unschedulable { reason, .. }) => {
            assert!(reason.contains("affinity"), "{reason}")
        }
        other => panic!("a hard affinity to no node must fail: {other:?}"),
    }
    assert_eq!(
        rt.task(square)
            .node_affinity(nowhere, true)
            .remote(3)
            .get()
            .unwrap(),
        9
    );
    match rt.task(square).num_cpus(64.0).remote(3).get() {
        Err(Error::Unschedulable { reason, .. }) => assert!(reason.contains("64"), "{reason}"),
        other => panic!("no node has 64 CPUs: {other:?}"),
    }
}

fn large_objects_move_between_nodes_intact_and_are_freed() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    let (n0, n1) = (c.nodes()[0].id, c.nodes()[1].id);
    // Driver to node: a 9 MB put, read on a node (pulled in chunks).
    let data = blob(9 << 20, 7);
    let expect = checksum(data.clone());
    let put = rt.put(data).unwrap();
    let seen = rt
        .task(checksum)
        .node_affinity(n0, false)
        .remote(&put)
        .get()
        .unwrap();
    assert_eq!(seen, expect);
    // Node to driver: a 20 MB result, pulled back.
    let made = rt.task(blob).node_affinity(n1, false).remote((20 << 20, 3));
    let got = made.get().unwrap();
    assert_eq!(checksum(got.clone()), checksum(blob(20 << 20, 3)));
    // Node to node: the result, owned by the driver, read on the other node.
    let there = rt
        .task(checksum)
        .node_affinity(n0, false)
        .remote(&made)
        .get()
        .unwrap();
    assert_eq!(there, checksum(got));
    drop((put, made));
    wait_until("every node's objects are freed", || {
        objects_freed_everywhere(rt)
    });
}

fn shared_byte_buffers_move_between_nodes_and_are_read_in_place() {
    let c = Cluster::start(1).unwrap();
    let rt = c.driver();
    let n0 = c.nodes()[0].id;
    // Driver to node: read twice there, from one landed buffer.
    let put = rt.put(shared_blob(12 << 20, 5)).unwrap();
    let (seen, in_place) = rt
        .task(read_twice_in_place)
        .node_affinity(n0, false)
        .remote(put.clone())
        .get()
        .unwrap();
    assert_eq!(seen, checksum(blob(12 << 20, 5)));
    assert!(in_place, "two reads on the node share one buffer");
    // A task that takes it by value reads the same bytes.
    let by_value = rt
        .task(shared_checksum)
        .node_affinity(n0, false)
        .remote(&put)
        .get()
        .unwrap();
    assert_eq!(by_value, seen);
    // A copy put into the driver's warm memory moves as any byte buffer.
    let copied = rt.put_copy(&blob(12 << 20, 6)).unwrap();
    assert_eq!(
        rt.task(shared_checksum)
            .node_affinity(n0, false)
            .remote(&copied)
            .get()
            .unwrap(),
        checksum(blob(12 << 20, 6))
    );
    drop(copied);
    // Node to driver: a 20 MB result, read twice here from one buffer.
    let made = rt
        .task(shared_blob)
        .node_affinity(n0, false)
        .remote((20 << 20, 9));
    let (a, b) = (made.get().unwrap(), made.get().unwrap());
    assert_eq!(a.as_ptr(), b.as_ptr(), "two gets share one buffer");
    assert_eq!(shared_checksum(a), checksum(blob(20 << 20, 9)));
    // Its buffer is kept once nobody reads it, and the next pull of a like
    // size lands in it: its own bytes, none of the last object's.
    drop((b, made));
    wait_until("the landed buffer is kept", || {
        rt.warm_memory().0 >= 20 << 20
    });
    let reused = rt.warm_memory().1;
    let next = rt
        .task(shared_blob)
        .node_affinity(n0, false)
        .remote((20 << 20, 11));
    assert_eq!(
        shared_checksum(next.get().unwrap()),
        checksum(blob(20 << 20, 11))
    );
    assert_eq!(rt.warm_memory().1, reused + 1, "landed in the kept buffer");
    // An empty buffer, and one small enough to travel inline.
    for n in [0, 1000] {
        let r = rt.put(shared_blob(n, 1)).unwrap();
        let there = rt
            .task(shared_checksum)
            .node_affinity(n0, false)
            .remote(&r)
            .get()
            .unwrap();
        assert_eq!(there, checksum(blob(n, 1)));
        let back = rt.task(shared_blob).node_affinity(n0, false).remote((n, 2));
        assert_eq!(back.get().unwrap(), shared_blob(n, 2));
    }
    drop((put, next));
    wait_until("every node's objects are freed", || {
        objects_freed_everywhere(rt)
    });
}

/// A message too large for one frame between nodes (64 MiB) is never
/// dropped on the way: a call, an actor's constructor arguments and a task's
/// failure each come back at once with their cause, and the node goes on.
fn what_is_too_large_to_send_fails_at_once_with_its_cause() {
    let c = Cluster::start(1).unwrap();
    let rt = c.driver();
    let n0 = c.nodes()[0].id;
    let over = 70 << 20;
    let started = Instant::now();
    let bound = std::time::Duration::from_secs(20);
    // A call whose message is over the frame limit fails; the actor lives on.
    let counter = rt
        .actor_of(Counter::new, 1)
        .node_affinity(n0, false)
        .spawn()
        .unwrap();
    let big = counter.call(Weigh(ByteBuf::from(vec![1u8; over])));
    match big.get_timeout(bound) {
        Err(Error::InvalidArgument(why)) => {
            assert!(why.contains("the message of"), "{why}");
            assert!(why.contains("over the limit"), "{why}");
        }
        other => panic!("a call over the frame limit: {other:?}"),
    }
    assert_eq!(
        counter.call(Weigh(ByteBuf::from(vec![1u8; 1 << 20]))).get(),
        Ok(1 << 20)
    );
    assert_eq!(counter.call(Add(1)).get(), Ok(2));
    // Constructor arguments over it: refused, not a node taken for dead.
    let spawned = rt
        .actor_of(Ballast::new, ByteBuf::from(vec![0u8; over]))
        .node_affinity(n0, false)
        .spawn();
    match spawned {
        Err(Error::InvalidArgument(why)) => assert!(why.contains("arguments of actor"), "{why}"),
        other => panic!(
            "an actor's arguments over the frame limit: {:?}",
            other.err()
        ),
    }
    // One with restarts: the head keeps its arguments to start it again.
    let spawned = rt
        .actor_of(Ballast::new, ByteBuf::from(vec![0u8; over]))
        .max_restarts(1)
        .node_affinity(n0, false)
        .spawn();
    match spawned {
        Err(Error::InvalidArgument(why)) => assert!(why.contains("arguments of actor"), "{why}"),
        other => panic!("a restartable actor's arguments over it: {:?}", other.err()),
    }
    // A failure whose text is over it arrives cut, as the same kind.
    let failed = rt.task(fail_loudly).node_affinity(n0, false).remote(over);
    match failed.get_timeout(bound) {
        Err(Error::TaskFailed { cause, .. }) => {
            assert!(
                cause.contains("more bytes cut)"),
                "{}",
                &cause[cause.len() - 200..]
            );
            assert!(cause.len() < 1 << 20, "{} bytes", cause.len());
        }
        other => panic!("a failure over the frame limit: {:?}", other.map(|_| ())),
    }
    // The limits of names and of the key-value store, on a node as here.
    let refused = rt
        .task(kv_put_here)
        .node_affinity(n0, false)
        .remote(rayx::MAX_KV_VALUE + 1)
        .get()
        .unwrap();
    assert!(refused.contains("InvalidArgument"), "{refused}");
    assert!(matches!(
        rt.kv_put("heavy", &vec![0u8; rayx::MAX_KV_VALUE + 1], true),
        Err(Error::InvalidArgument(_))
    ));
    let long = "n".repeat(rayx::MAX_NAME + 1);
    assert!(matches!(rt.kv_get(&long), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        rt.get_actor::<Counter>(&long),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        rt.actor_of(Counter::new, 0).name(long).spawn(),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(rt.kv_put("light", b"ok", true), Ok(true));
    assert_eq!(
        rt.task(square).node_affinity(n0, false).remote(7).get(),
        Ok(49)
    );
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    drop((counter, big, failed));
    wait_until("every node's objects are freed", || {
        objects_freed_everywhere(rt)
    });
}

/// No objects on the driver, nor on any node at its last report.
fn objects_freed_everywhere(rt: &Runtime) -> bool {
    rt.memory().objects == 0
        && rt
            .cluster_status()
            .unwrap()
            .nodes
            .iter()
            .all(|n| n.report.memory.objects == 0)
}

fn refs_inside_values_are_borrowed_from_their_owner() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    let refs: Vec<ObjectRef<u64>> = (1..=20u64).map(|i| rt.put(i).unwrap()).collect();
    let total = rt
        .task(sum_refs)
        .node_affinity(c.nodes()[0].id, false)
        .remote(refs.clone())
        .get()
        .unwrap();
    assert_eq!(total, 210);
    drop(refs);
    wait_until("the driver freed what the node borrowed", || {
        objects_freed_everywhere(rt)
    });
}

fn actors_live_on_other_nodes_and_take_calls_in_order() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    let target = c.nodes()[1].id;
    let counter = rt
        .actor_of(Counter::new, 100)
        .name("tally")
        .node_affinity(target, false)
        .spawn()
        .unwrap();
    assert_eq!(counter.node_id(), target);
    let replies: Vec<_> = (1..=200u64).map(|k| counter.call(Add(k))).collect();
    let got = rt.get(&replies, None).unwrap();
    let mut n = 100;
    for (k, r) in (1..=200u64).zip(got) {
        n += k;
        assert_eq!(r, n, "calls from one caller run in order");
    }
    let (log, ran_on) = counter.call(Log).get().unwrap();
    assert_eq!(log, (1..=200).collect::<Vec<_>>());
    assert_eq!(ran_on, target.0);
    // A handle passed to a task on the other node, and a lookup by name there.
    let other = c.nodes()[0].id;
    assert_eq!(
        rt.task(call_counter)
            .node_affinity(other, false)
            .remote((counter.clone(), 1))
            .get()
            .unwrap(),
        n + 1
    );
    assert_eq!(
        rt.task(lookup_and_add)
            .node_affinity(other, false)
            .remote(("tally".to_string(), 1))
            .get()
            .unwrap(),
        n + 2
    );
    let found = rt.get_actor::<Counter>("tally").unwrap();
    assert_eq!(found.call(Add(0)).get().unwrap(), n + 2);
    match rt.actor_of(Counter::new, 0).name("tally").spawn() {
        Err(Error::ActorNameTaken { .. }) => {}
        other => panic!("names are unique cluster-wide: {other:?}"),
    }
    // Spread places actors on both nodes.
    let spread: Vec<_> = (0..4)
        .map(|_| {
            rt.actor_of(Counter::new, 0)
                .scheduling(Scheduling::Spread)
                .spawn()
                .unwrap()
        })
        .collect();
    let homes: BTreeSet<u64> = spread.iter().map(|a| a.node_id().0).collect();
    assert_eq!(homes, node_ids(&c).into_iter().collect());
    counter.kill();
    match counter.call(Add(1)).get() {
        Err(Error::ActorDied { .. }) => {}
        other => panic!("a killed actor takes no calls: {other:?}"),
    }
    wait_until("the dead actor's name is free", || {
        rt.get_actor::<Counter>("tally").is_err()
    });
}

fn refs_and_handles_sent_in_results_and_calls_outlive_their_sender() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    let (n0, n1) = (c.nodes()[0].id, c.nodes()[1].id);
    // Refs a task returns, owned by its node: readable after the task ended.
    let (small, big) = rt
        .task(put_here)
        .node_affinity(n0, false)
        .remote((42, 3 << 20))
        .get()
        .unwrap();
    // Looking without waiting (Ray's `wait(timeout=0)` loop, `is_ready`)
    // sees a borrowed value arrive.
    wait_until("a zero-timeout wait sees the borrowed ref ready", || {
        !rt.wait(vec![small.clone()], 1, Some(Duration::ZERO))
            .unwrap()
            .0
            .is_empty()
    });
    let (other, _) = rt
        .task(put_here)
        .node_affinity(n0, false)
        .remote((7, 0))
        .get()
        .unwrap();
    wait_until("is_ready sees the borrowed ref ready", || other.is_ready());
    drop(other);
    assert_eq!(small.get().unwrap(), 42);
    assert_eq!(checksum(big.get().unwrap()), checksum(blob(3 << 20, 1)));
    // A handle a task returns, to an actor it started on its node.
    let counter = rt
        .task(spawn_counter)
        .node_affinity(n1, false)
        .remote(7)
        .get()
        .unwrap();
    assert_eq!(counter.node_id(), n1);
    assert_eq!(counter.call(Add(1)).get().unwrap(), 8);
    // A ref and a handle sent in a call, then dropped by the sender.
    let keeper = rt
        .actor_of(Keeper::new, ())
        .node_affinity(n0, false)
        .spawn()
        .unwrap();
    let value = rt.put(5u64).unwrap();
    keeper
        .call(Keep(value.clone(), counter.clone()))
        .get()
        .unwrap();
    drop((value, counter, small, big));
    assert_eq!(keeper.call(UseKept).get().unwrap(), (5, 9));
    keeper.call(Forget).get().unwrap();
    drop(keeper);
    wait_until(
        "every node's objects and actors are freed, and the head forgot the actors",
        || {
            let status = rt.cluster_status().unwrap();
            rt.memory().objects == 0
                && status.actors.is_empty()
                && status
                    .nodes
                    .iter()
                    .all(|n| n.report.memory.objects == 0 && n.report.actors == 0)
        },
    );
}

fn a_killed_node_s_tasks_run_again_elsewhere() {
    let mut c = Cluster::start(2).unwrap();
    let victim = c.nodes()[0].id;
    let rt = c.driver().clone();
    let refs: Vec<_> = (0..40)
        .map(|i| rt.task(where_am_i).scheduling(Scheduling::Spread).remote(i))
        .collect();
    rt.get(&refs, None).unwrap();
    c.kill_node(0).unwrap();
    wait_until("the head saw the node die", || {
        rt.nodes().iter().all(|n| n.id != victim)
    });
    let again: Vec<_> = (0..40).map(|i| rt.task(where_am_i).remote(i)).collect();
    for (_, node) in rt.get(&again, None).unwrap() {
        assert_ne!(node, victim.0, "a dead node runs nothing");
    }
    let status = rt.cluster_status().unwrap();
    let dead = status.nodes.iter().find(|n| n.info.id == victim).unwrap();
    assert!(!dead.alive && dead.cause.is_some(), "{dead:?}");
}

fn an_unreachable_head_fails_init_in_bounded_time() {
    let started = Instant::now();
    // A port nobody listens on: connection refused at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    match Builder::new().address(address.clone()).start() {
        Err(Error::ClusterUnreachable { address: a, cause }) => {
            assert_eq!(a, address);
            assert!(!cause.is_empty());
        }
        other => panic!("expected ClusterUnreachable: {other:?}"),
    }
    // A listener that never answers the hello: the handshake deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap().to_string();
    match Builder::new().address(address.clone()).start() {
        Err(Error::ClusterUnreachable { cause, .. }) => {
            assert!(cause.contains("handshake"), "{cause}")
        }
        other => panic!("expected ClusterUnreachable: {other:?}"),
    }
    // 10 s of retries of a refused head, then 5 s for a silent one.
    assert!(started.elapsed() < Duration::from_secs(30));
}

// ---- bad input from a peer ----------------------------------------------------

fn bad_bytes_close_one_connection_and_are_counted() {
    use rayx_actors::cluster::wire::{Lane, Msg, PROTOCOL_VERSION};
    let c = Cluster::start(1).unwrap();
    let rt = c.driver();
    let addr = c.address().to_string();
    let token = rt.cluster_token().expect("a test cluster authenticates");
    let before = rt
        .cluster_status()
        .unwrap()
        .rejections
        .values()
        .sum::<u64>();
    // Garbage instead of a hello.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&frame(&[0xc1, 0xc1, 0xc1])).unwrap();
    assert!(matches!(
        read_until_closed(&mut s).as_slice(),
        [Msg::Refused { .. }]
    ));
    // A frame that claims 2 GB: refused without reading (or allocating) it.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&0x7fff_ffffu32.to_be_bytes()).unwrap();
    match read_until_closed(&mut s).as_slice() {
        [Msg::Refused { reason }] => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A wrong protocol version.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&hello(Lane::Control, PROTOCOL_VERSION + 7, vec![]))
        .unwrap();
    match read_until_closed(&mut s).as_slice() {
        [Msg::Refused { reason }] => assert!(reason.contains("version"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A registry that differs: refused, naming the difference.
    let mut s = TcpStream::connect(&addr).unwrap();
    shake(
        &mut s,
        &token,
        &hello(Lane::Join, PROTOCOL_VERSION, vec!["fn only_mine".into()]),
    );
    match read_until_closed(&mut s).as_slice() {
        [Msg::Refused { reason }] => {
            assert!(
                reason.contains("registry") && reason.contains("only_mine"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // After a good hello, bytes that do not decode close that link.
    let mut s = TcpStream::connect(&addr).unwrap();
    shake(
        &mut s,
        &token,
        &hello(Lane::Control, PROTOCOL_VERSION, vec![]),
    );
    s.write_all(&frame(&[0x92, 0xc1, 0xff])).unwrap();
    assert!(matches!(
        read_until_closed(&mut s).as_slice(),
        [Msg::Welcome { .. }]
    ));
    // An unknown function from a peer is a typed task error.
    let (_s, answers) = run_an_unknown_function(&addr, &token);
    assert!(
        answers.iter().any(|m| matches!(m,
            Msg::TaskDone { result: Err(Error::FunctionNotRegistered { name }), .. } if name == "no::such::function")),
        "{answers:?}"
    );
    // Control frames out of sequence (a gap; an ack of what was never sent)
    // close that link, counted under one reason each whatever the numbers.
    for bad in [
        control_frame(5, &[Msg::Sync { id: 1 }]),
        control_frame_acking(1, 1_000, &[]),
        control_frame_acking(1, u64::MAX, &[]),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        shake(
            &mut s,
            &token,
            &hello(Lane::Control, PROTOCOL_VERSION, vec![]),
        );
        s.write_all(&control_frame(1, &[])).unwrap();
        s.write_all(&bad).unwrap();
        assert!(matches!(
            read_until_closed(&mut s).as_slice(),
            [Msg::Welcome { .. }, ..]
        ));
    }
    let after = rt.cluster_status().unwrap().rejections;
    assert!(after.values().sum::<u64>() >= before + 8, "{after:?}");
    assert_eq!(after.get("a gap in the messages"), Some(&1), "{after:?}");
    assert_eq!(
        after.get("an ack of a message never sent"),
        Some(&2),
        "{after:?}"
    );
    // And the cluster still works.
    assert_eq!(rt.task(square).remote(12).get().unwrap(), 144);
}

/// A control link that stays open but never acknowledges what the node sent
/// on it (a break only the other side saw, or a peer that stopped reading)
/// is taken for broken once frames have waited `STALE` for an ack: the node
/// closes it, and serves on.
fn a_link_that_never_acknowledges_is_closed() {
    use rayx_actors::cluster::session::STALE;
    use rayx_actors::cluster::wire::Msg;
    use std::io::Read;
    let c = Cluster::start(1).unwrap();
    let rt = c.driver();
    let token = rt.cluster_token().unwrap();
    let (mut s, answers) = run_an_unknown_function(c.address(), &token);
    assert!(
        answers.iter().any(|m| matches!(m, Msg::TaskDone { .. })),
        "{answers:?}"
    );
    // Its answer waits for an ack this peer never sends.
    let waited = Instant::now();
    s.set_read_timeout(Some(STALE + Duration::from_secs(20)))
        .unwrap();
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the node never closed it: {e}"
        ),
    }
    assert!(
        waited.elapsed() + Duration::from_secs(1) >= STALE,
        "closed after {:?}, before its frames were stale",
        waited.elapsed()
    );
    assert_eq!(rt.task(square).remote(5).get().unwrap(), 25);
}

/// As node 99 on a control link to `addr`: sends a task of a function
/// nobody registered, and reads until its answer; the link stays open.
fn run_an_unknown_function(
    addr: &str,
    token: &str,
) -> (TcpStream, Vec<rayx_actors::cluster::wire::Msg>) {
    use rayx_actors::cluster::wire::{Lane, Msg, PROTOCOL_VERSION};
    let mut s = TcpStream::connect(addr).unwrap();
    shake(
        &mut s,
        token,
        &hello(Lane::Control, PROTOCOL_VERSION, vec![]),
    );
    let spec = rayx_actors::messages::TaskSpec {
        task_id: rayx_actors::ids::TaskId(rayx_actors::ids::ObjectId {
            node: NodeId(99),
            seq: 1,
        }),
        function: "no::such::function".into(),
        args: vec![],
        options: Default::default(),
    };
    s.write_all(&control_frame(1, &[Msg::RunTask { spec, held: vec![] }]))
        .unwrap();
    let answers = read_frames_until(&mut s, |m| matches!(m, Msg::TaskDone { .. }));
    (s, answers)
}

/// The address a node's links listen on.
fn address_of(rt: &Runtime, node: NodeId) -> String {
    rt.nodes()
        .into_iter()
        .find(|n| n.id == node)
        .expect("a live node")
        .address
}

/// A fake peer (node 99) sends a task whose argument it "owns", then answers
/// the victim's pull with lying chunks: each attack must fail that pull (and
/// the task, with a typed error), never the node.
fn a_lying_peer_s_chunks_fail_its_pull_not_the_node() {
    use rayx_actors::cluster::wire::{Msg, Payload};
    use rayx_actors::ids::ObjectId;
    let mut c = Cluster::start(1).unwrap();
    let rt = c.driver().clone();
    let token = rt.cluster_token().unwrap();
    let victim = c.nodes()[0].id;
    let address = address_of(&rt, victim);
    // A 1 TiB object (refused before any allocation); a bin header, then a
    // chunk inside it out of order; the same chunk twice.
    for (round, attack) in ["huge", "underflow", "repeat"].into_iter().enumerate() {
        let (bulk, me) = fake_node(NodeId(99 + round as u64));
        let obj = ObjectId {
            node: me.id,
            seq: 7,
        };
        let mut s = join_control(&address, &token, &me);
        let checksum = rayx::__private::name_of(&checksum);
        send_task_on(&mut s, 1, me.id, checksum, obj, None);
        read_frames_until(&mut s, |m| matches!(m, Msg::Borrow { .. }));
        let ready = Msg::ObjectReady {
            object: obj,
            result: Ok(Payload::At {
                node: me.id,
                size: 105,
            }),
        };
        s.write_all(&control_frame(2, &[ready])).unwrap();
        let (mut b, _) = bulk.accept().unwrap();
        let welcome = Msg::Welcome {
            node: me.clone(),
            cluster: vec![],
        };
        accept_shake(&mut b, &token, welcome);
        match attack {
            "huge" => b
                .write_all(&chunk_frame(obj, 0, (1 << 40) - 1, &[1, 2, 3]))
                .unwrap(),
            "underflow" => {
                b.write_all(&chunk_frame(obj, 0, 105, &[0xc6, 0, 0, 0, 100]))
                    .unwrap();
                b.write_all(&chunk_frame(obj, 2, 105, &[9])).unwrap();
            }
            _ => {
                let mut d = vec![0xc4u8, 103];
                d.extend(std::iter::repeat_n(5u8, 51));
                b.write_all(&chunk_frame(obj, 0, 105, &d)).unwrap();
                b.write_all(&chunk_frame(obj, 0, 105, &d)).unwrap();
            }
        }
        let answers = read_frames_until(&mut s, |m| matches!(m, Msg::TaskDone { .. }));
        assert!(
            answers
                .iter()
                .any(|m| matches!(m, Msg::TaskDone { result: Err(_), .. })),
            "{attack}: the task fails with a typed error: {answers:?}"
        );
        assert!(c.is_running(0), "{attack}: the node lives");
        assert_eq!(
            rt.task(square)
                .node_affinity(victim, false)
                .remote(4)
                .get()
                .unwrap(),
            16,
            "{attack}: and serves"
        );
    }
}

/// A fake peer (node 120) sends a task whose argument it holds, saying so
/// (`held`): the node pulls it from the peer at once — no `Fetch`, one pull
/// for a small object — and the task runs on the bytes the peer sent.
fn a_task_s_held_argument_is_pulled_at_once() {
    use rayx_actors::cluster::link::read_bulk_frame;
    use rayx_actors::cluster::wire::{Msg, Payload, CHUNK};
    use rayx_actors::ids::ObjectId;
    use std::io::Read;
    use std::time::Duration;
    let c = Cluster::start(1).unwrap();
    let rt = c.driver().clone();
    let token = rt.cluster_token().unwrap();
    let address = address_of(&rt, c.nodes()[0].id);
    let (bulk, me) = fake_node(NodeId(120));
    let obj = ObjectId {
        node: me.id,
        seq: 7,
    };
    let mut s = join_control(&address, &token, &me);
    let bytes = blob(300 << 10, 3);
    // Its measure: the bytes, without their header.
    let checksum_name = rayx::__private::name_of(&checksum);
    send_task_on(
        &mut s,
        1,
        me.id,
        checksum_name,
        obj,
        Some(bytes.len() as u64),
    );
    // Nobody answers a fetch: only a pull at once opens the bulk link.
    let (opened, opening) = std::sync::mpsc::channel();
    std::thread::spawn(move || opened.send(bulk.accept().map(|(b, _)| b)));
    let mut b = opening
        .recv_timeout(Duration::from_secs(20))
        .expect("the node pulls a held argument at once")
        .unwrap();
    let welcome = Msg::Welcome {
        node: me.clone(),
        cluster: vec![],
    };
    accept_shake(&mut b, &token, welcome);
    b.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut len = [0u8; 4];
    b.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    b.read_exact(&mut body).unwrap();
    match read_bulk_frame(body.into()).unwrap().as_slice() {
        [Msg::Pull {
            object,
            offset: 0,
            len,
        }] => assert_eq!(
            (*object, *len),
            (obj, CHUNK as u64),
            "the whole first chunk"
        ),
        other => panic!("expected a pull from the start: {other:?}"),
    }
    // The answer as a node sends it: the header, then the bytes.
    let header = [0xc6u8, 0, 4, 0xb0, 0];
    assert_eq!(bytes.len(), 300 << 10);
    let total = (header.len() + bytes.len()) as u64;
    b.write_all(&chunk_frame(obj, 0, total, &header)).unwrap();
    b.write_all(&chunk_frame(obj, header.len() as u64, total, &bytes))
        .unwrap();
    let answers = read_frames_until(&mut s, |m| matches!(m, Msg::TaskDone { .. }));
    assert!(
        !answers.iter().any(|m| matches!(m, Msg::Fetch { .. })),
        "no fetch for a held argument: {answers:?}"
    );
    assert!(answers
        .iter()
        .any(|m| matches!(m, Msg::Borrow { object } if *object == obj)));
    let result = answers.iter().find_map(|m| match m {
        Msg::TaskDone {
            result: Ok(Payload::Inline(v)),
            ..
        } => Some(v.downcast::<(usize, u64)>().unwrap()),
        _ => None,
    });
    assert_eq!(result.as_deref(), Some(&checksum(bytes)), "{answers:?}");
    // A size of 0 is no word (an owner lists only values too large to go
    // inline): the node asks where the value is, as for any borrowed ref.
    let other = ObjectId {
        node: me.id,
        seq: 8,
    };
    send_task_on(&mut s, 2, me.id, checksum_name, other, Some(0));
    let asked = read_frames_until(&mut s, |m| matches!(m, Msg::Fetch { .. }));
    assert!(
        asked
            .iter()
            .any(|m| matches!(m, Msg::Fetch { object } if *object == other)),
        "a fetch for an argument held with a size of 0: {asked:?}"
    );
}

/// Objects whose sizes sit at the edges a transfer cuts at — inline or not,
/// a chunk and a header past it — move both ways intact: to a node as a
/// task's argument (by value and by ref), and back as the result it holds.
fn objects_at_the_inline_and_chunk_edges_arrive_intact() {
    const INLINE: usize = 100 << 10;
    const CHUNK: usize = rayx_actors::cluster::wire::CHUNK;
    let c = Cluster::start(1).unwrap();
    let rt = c.driver();
    let n = c.nodes()[0].id;
    fn both_ways<T>(
        rt: &Runtime,
        n: NodeId,
        echo: impl rayx::RemoteFunction<(T,), T> + Copy,
        v: T,
        what: &str,
    ) where
        T: rayx::Data + Clone + PartialEq,
    {
        let put = rt.put(v.clone()).unwrap();
        for (how, back) in [
            (
                "by value",
                rt.task(echo).node_affinity(n, false).remote(v.clone()),
            ),
            ("by ref", rt.task(echo).node_affinity(n, false).remote(&put)),
        ] {
            let got = back.get();
            assert!(
                matches!(&got, Ok(g) if *g == v),
                "{what} {how}, and back: {:?}",
                got.err()
            );
        }
    }
    for size in [
        0,
        1,
        INLINE - 6,
        INLINE,
        INLINE + 1,
        CHUNK - 5,
        CHUNK - 4,
        CHUNK,
        2 * CHUNK - 5,
        2 * CHUNK,
    ] {
        let seed = size as u8;
        let what = format!("{size} bytes");
        both_ways(
            rt,
            n,
            echo_shared,
            shared_blob(size, seed),
            &format!("rayx::Bytes of {what}"),
        );
        both_ways(
            rt,
            n,
            echo_buf,
            blob(size, seed ^ 1),
            &format!("ByteBuf of {what}"),
        );
    }
    // Measured at 8 bytes a number, encoded in 1: the measure is far past
    // the encoding's end.
    for count in [INLINE / 8 + 1, CHUNK + 1] {
        let numbers: Vec<u64> = (0..count as u64).map(|i| i % 100).collect();
        both_ways(
            rt,
            n,
            echo_numbers,
            numbers,
            &format!("{count} small numbers"),
        );
    }
}

fn a_zero_timeout_wait_sees_borrowed_refs_arrive_after_another_runtime_s_ref() {
    let c = Cluster::start(1).unwrap();
    let rt = c.driver();
    let n0 = c.nodes()[0].id;
    // A second, local runtime in the driver's process; its table never had
    // an object held elsewhere.
    let local = Builder::new().num_workers(1).start().unwrap();
    let mine = local.put(1u64).unwrap();
    // A ref owned by the node, borrowed here; nobody asked for its value yet.
    let (small, _big) = rt
        .task(put_here)
        .node_affinity(n0, false)
        .remote((42, 0))
        .get()
        .unwrap();
    // Ray's wait(timeout=0) loop over both.
    wait_until(
        "a zero-timeout wait sees the borrowed ref ready beside a local one",
        || {
            rt.wait(vec![mine.clone(), small.clone()], 2, Some(Duration::ZERO))
                .unwrap()
                .0
                .len()
                == 2
        },
    );
    assert_eq!(small.get().unwrap(), 42);
}

// ---- the runner ---------------------------------------------------------------

/// A cluster of two nodes whose first messages to each other went out at
/// once, so that both opened a link (each may then send on a different one):
/// the nodes (`RAYX_TEST_LINK_DELAY_MS`) wait before they connect and again
/// before they use a new link, so the opens cross every time. Rounds of a
/// task on each node calling an actor on the other — the first round is the
/// first traffic between the two nodes, from both sides at once — go on past
/// the moment each node takes its own new link in hand, when the old code
/// closed the link its peer had chosen: each node then took the other for
/// lost and dropped the messages waiting for it (a hold of the other node's
/// actor went unanswered for 30 s). Returns the two actors (on node 0, on
/// node 1) and the value each holds.
fn crossed_links() -> (Cluster, [(ActorHandle<Counter>, u64); 2]) {
    let c = Cluster::builder()
        .nodes(2)
        .node_env("RAYX_TEST_LINK_DELAY_MS", "300")
        .start()
        .unwrap();
    let rt = c.driver().clone();
    let (n0, n1) = (c.nodes()[0].id, c.nodes()[1].id);
    let spawn_on = |node, start| {
        rt.actor_of(Counter::new, start)
            .node_affinity(node, false)
            .spawn()
            .unwrap()
    };
    let (on0, on1) = (spawn_on(n0, 0), spawn_on(n1, 1000));
    let began = std::time::Instant::now();
    let (mut sum, mut rounds) = (0, 0u64);
    while began.elapsed() < Duration::from_millis(1500) {
        rounds += 1;
        let calls = [
            rt.task(call_counter)
                .node_affinity(n0, false)
                .remote((on1.clone(), rounds)),
            rt.task(call_counter)
                .node_affinity(n1, false)
                .remote((on0.clone(), rounds)),
        ];
        let got = rt
            .get(&calls, Some(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("round {rounds}: {e} (a message was lost)"));
        sum += rounds;
        assert_eq!(got, vec![1000 + sum, sum], "round {rounds}");
        if rounds == 1 {
            // The first traffic between the nodes waited for their links,
            // each delayed: the opens did cross as the test means them to.
            assert!(
                began.elapsed() >= Duration::from_millis(300),
                "the link delay did not apply ({:?})",
                began.elapsed()
            );
        }
    }
    assert!(rounds > 1);
    (c, [(on0, sum), (on1, 1000 + sum)])
}

fn two_nodes_opening_links_to_each_other_at_once_lose_nothing() {
    let (_c, actors) = crossed_links();
    for (actor, n) in actors {
        assert_eq!(actor.call(Add(0)).get().unwrap(), n);
    }
}

/// After a crossed open each node may send on a different link; an answer
/// must still follow, on one ordered link, the borrows its work made. Here
/// a task on node 0 puts a value and hands it to an actor on node 1, which
/// keeps it; the call's reply lets the task drop its own ref. The keeper's
/// borrow of the value must reach node 0 before that reply, or node 0 frees
/// a value node 1 still holds (with the reply on the request's link, about a
/// quarter of them were gone when the keeper read them).
fn answers_follow_their_borrows_after_a_crossed_open() {
    let (c, _) = crossed_links();
    let rt = c.driver();
    let (n0, n1) = (c.nodes()[0].id, c.nodes()[1].id);
    let keeper = rt
        .actor_of(Stash::new, ())
        .node_affinity(n1, false)
        .spawn()
        .unwrap();
    let n = 300;
    let handed = rt
        .task(hand_over)
        .node_affinity(n0, false)
        .remote((keeper.clone(), n));
    assert_eq!(handed.get_timeout(common::LONG).unwrap(), n);
    assert_all_read(
        &keeper.call(ReadStash).get_timeout(common::LONG).unwrap(),
        n,
    );
}

/// A constructor's argument decoded on the actor's node borrows the refs in
/// it; `ActorCreated` must reach the creator after those borrows reach their
/// owner, or the creator (its `spawn` returned, its own ref gone) lets the
/// owner free a value the new actor holds (found by a helper: about 9 in 10
/// were gone when `ActorCreated` skipped the queued borrows).
fn a_constructor_s_refs_are_borrowed_before_the_actor_is_reported_started() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    let (n0, n1) = (c.nodes()[0].id, c.nodes()[1].id);
    let n = 100;
    let failed = rt
        .task(build_with_refs)
        .node_affinity(n0, false)
        .remote((n1.0, n))
        .get_timeout(common::LONG)
        .unwrap();
    assert_all_read(&failed, n);
}

/// A large task result stays on the node that ran it until it is pulled;
/// a ref inside it is borrowed only when the pulled value is read. Its holder
/// must keep it (and the refs in it) while the result's ref lives, not only
/// until the pull (found by a helper: 7 to 29 of 30 inner refs were lost when
/// the holder was told to let go right after the pull).
fn refs_inside_a_large_pulled_result_stay_readable() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    let n1 = c.nodes()[1].id;
    read_refs_inside_large_values(|i| rt.task(big_with_ref).node_affinity(n1, false).remote(i));
    wait_until("every object freed once the refs are gone", || {
        objects_freed_everywhere(rt)
    });
}

/// Reads 30 large values, each holding a ref to its number, from `make`
/// (each value's own ref dropped before its inner ref is read); all must read.
fn read_refs_inside_large_values(make: impl Fn(u64) -> ObjectRef<(ObjectRef<u64>, ByteBuf)>) {
    let mut failed = Vec::new();
    for i in 0..30u64 {
        let r = make(i);
        let (inner, buf) = r.get_timeout(common::LONG).unwrap();
        assert_eq!(buf.len(), 1 << 20);
        drop(r);
        failed.extend(misread(i, &inner));
    }
    assert_all_read(&failed, 30);
}

/// The same for an actor call's large reply: it stays on the actor's node
/// until pulled, and that node must keep it (and the refs in it) while the
/// reply's ref lives (9 to 29 of 30 inner refs were lost when the caller told
/// it to let go right after the pull).
fn refs_inside_a_large_pulled_reply_stay_readable() {
    let c = Cluster::start(2).unwrap();
    let rt = c.driver();
    let n1 = c.nodes()[1].id;
    let actor = rt
        .actor_of(Stash::new, ())
        .node_affinity(n1, false)
        .spawn()
        .unwrap();
    read_refs_inside_large_values(|i| actor.call(BigWithRef(i)));
    drop(actor);
    wait_until("every object freed once the refs are gone", || {
        objects_freed_everywhere(rt)
    });
}

/// A driver and `nodes` nodes whose links open `delay_ms` late, with a
/// `Stash` on node `on`.
fn slow_links_with_stash(nodes: usize, delay_ms: &str, on: usize) -> (Cluster, ActorHandle<Stash>) {
    let c = Cluster::builder()
        .nodes(nodes)
        .node_env("RAYX_TEST_LINK_DELAY_MS", delay_ms)
        .start()
        .unwrap();
    let keeper = c
        .driver()
        .actor_of(Stash::new, ())
        .node_affinity(c.nodes()[on].id, false)
        .spawn()
        .unwrap();
    (c, keeper)
}

/// A ref passed on across three nodes: the driver borrows refs owned by
/// node 0 and hands them to an actor on node 1, then lets go of them once the
/// call is answered. Node 1's borrows travel on its own link to node 0 and
/// the driver's releases on the driver's: node 1 must not answer before node
/// 0 has its borrows, or node 0 frees values node 1 still holds. Here node
/// 1's link to node 0 opens late (the link delay hook), while its link to
/// the driver is open already.
fn a_ref_passed_on_across_three_nodes_stays_borrowed() {
    stow_refs_owned_by_node_0_on_node_1("300");
}

/// The driver stows 100 refs owned by node 0 in an actor on node 1, whose
/// links open `delay_ms` late, lets go of its own, and node 1 reads them.
fn stow_refs_owned_by_node_0_on_node_1(delay_ms: &str) {
    let (c, keeper) = slow_links_with_stash(2, delay_ms, 1);
    let rt = c.driver();
    let n0 = c.nodes()[0].id;
    // Node 1 has answered the driver (ActorCreated): that link is open.
    keeper
        .call(Stow(Vec::new()))
        .get_timeout(common::LONG)
        .unwrap();
    let n = 100;
    let made = rt.task(put_many).node_affinity(n0, false).remote(n);
    let refs = made.get_timeout(common::LONG).unwrap();
    drop(made);
    keeper
        .call(Stow(refs))
        .get_timeout(common::LONG)
        .expect("stowed");
    // The driver's refs are gone (released to node 0); node 1 keeps its own.
    assert_all_read(
        &keeper.call(ReadStash).get_timeout(common::LONG).unwrap(),
        n,
    );
}

/// The same across three nodes when the refs come back in a result: node 1
/// takes refs the driver owns out of an actor on node 0, whose reply pins
/// them until node 1 frees it. Node 1's `Free` must not reach node 0 before
/// the driver has node 1's borrows, or node 0 releases the last hold and the
/// driver frees the values. Node 1 never sent the driver anything before (its
/// task was node 0's), so its link there opens late.
fn refs_in_a_reply_from_a_third_node_stay_borrowed_after_it_is_freed() {
    let (c, keeper) = slow_links_with_stash(2, "300", 0);
    let rt = c.driver();
    let (n0, n1) = (c.nodes()[0].id, c.nodes()[1].id);
    let n = 100;
    let refs: Vec<ObjectRef<u64>> = (0..n).map(|i| rt.put(i).unwrap()).collect();
    keeper
        .call(Stow(refs))
        .get_timeout(common::LONG)
        .expect("stowed");
    let failed = rt
        .task(have_taken_and_read)
        .node_affinity(n0, false)
        .remote((keeper.clone(), n1.0))
        .get_timeout(common::LONG)
        .unwrap();
    assert_all_read(&failed, n);
}

/// Four processes: node 1 borrows refs owned by node 0 (its link to node 0
/// opening late) for a call from the driver, and before answering it
/// answers node 2 about something else. That answer sends node 0 a `Sync`;
/// the call's answer must still wait for that `Sync`'s confirmation (found
/// by a helper: node 1 forgot node 0 once its `Sync` was sent, so the call's
/// answer went at once and all 100 refs were freed).
fn an_answer_between_waits_for_the_borrows_it_did_not_make() {
    let (c, keeper) = slow_links_with_stash(3, "700", 1);
    let rt = c.driver();
    let (n0, n1, n2) = (c.nodes()[0].id, c.nodes()[1].id, c.nodes()[2].id);
    let dir = std::env::temp_dir().join(format!(
        "rayx-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.to_string_lossy().to_string();
    // Node 2's link to node 1 and node 1's answers to it open first.
    let warm = rt
        .task(noted_square_on)
        .node_affinity(n2, false)
        .remote((n1.0, 3, path.clone()));
    assert_eq!(warm.get_timeout(common::LONG).unwrap(), 9);
    std::fs::remove_file(dir.join("squared")).unwrap();
    let n = 100;
    let made = rt.task(put_many).node_affinity(n0, false).remote(n);
    let refs = made.get_timeout(common::LONG).unwrap();
    drop(made);
    let stowed = keeper.call(StowUntil(refs, path.clone()));
    wait_for_file(&dir.join("stowed"));
    let other = rt
        .task(noted_square_on)
        .node_affinity(n2, false)
        .remote((n1.0, 4, path));
    wait_for_file(&dir.join("squared"));
    std::fs::write(dir.join("go"), b"").unwrap();
    stowed.get_timeout(common::LONG).expect("stowed");
    drop(stowed);
    assert_eq!(other.get_timeout(common::LONG).unwrap(), 16);
    assert_all_read(
        &keeper.call(ReadStash).get_timeout(common::LONG).unwrap(),
        n,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A number to tell this test run's files from another's.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// As `a_ref_passed_on_across_three_nodes_stays_borrowed`, with node 1's link
/// to node 0 opening after about 2.2 s, longer than the barrier's timeout:
/// an owner whose link is still being opened has not had the `Sync` yet, so
/// the answer keeps waiting (found by a helper: all 100 refs were freed
/// when the timeout let the answer go).
fn an_answer_waits_for_a_link_slower_than_the_sync_timeout() {
    stow_refs_owned_by_node_0_on_node_1("1100");
}

/// A value holding refs, borrowed from its owner (the driver) by node 1 and
/// read there: node 1 borrows the refs inside (owned by node 0, its link
/// there opening late) and lets go of the value. Its release must wait for
/// those borrows too, or the driver frees the value, releases the refs in it,
/// and node 0 frees them before node 1's borrows arrive.
fn refs_inside_a_borrowed_value_outlive_its_release() {
    let (c, keeper) = slow_links_with_stash(2, "300", 1);
    let rt = c.driver();
    let n0 = c.nodes()[0].id;
    let n = 100;
    let made = rt.task(put_many).node_affinity(n0, false).remote(n);
    let refs = made.get_timeout(common::LONG).unwrap();
    drop(made);
    let boxed = rt.put(refs).unwrap();
    // Node 1 borrows the box (its link to the driver opened for its answer
    // to the actor's creation); the driver keeps no ref of its own.
    keeper
        .call(StowBox(boxed))
        .get_timeout(common::LONG)
        .expect("stowed");
    keeper
        .call(Unbox)
        .get_timeout(common::LONG)
        .expect("unboxed");
    assert_all_read(
        &keeper.call(ReadStash).get_timeout(common::LONG).unwrap(),
        n,
    );
}

/// The head lists the latest dead nodes only (here 3; 1000 by default, as
/// Ray's `maximum_gcs_dead_node_cached_count`), and every node remembers as
/// many among its peers: drivers that come and go leave no growth.
fn drivers_that_come_and_go_leave_no_growth() {
    const KEPT: usize = 3;
    let c = Cluster::builder()
        .nodes(1)
        .driver(Builder::new().dead_nodes_kept(KEPT))
        .node_env("RAYX_DEAD_NODES_KEPT", KEPT.to_string())
        .start()
        .unwrap();
    let rt = c.driver();
    let node = c.nodes()[0].id;
    let drivers: Vec<NodeId> = (0..8)
        .map(|_| {
            let d = Builder::new()
                .address(c.address())
                .token(rt.cluster_token().unwrap())
                .num_cpus(0.0)
                .start()
                .expect("a driver joins");
            let id = d.node_id();
            d.shutdown();
            id
        })
        .collect();
    let dead = || -> Vec<NodeId> {
        let status = rt.cluster_status().unwrap();
        status
            .nodes
            .iter()
            .filter(|n| !n.alive)
            .map(|n| n.info.id)
            .collect()
    };
    wait_until("the last driver is listed dead", || {
        dead().last() == drivers.last()
    });
    assert_eq!(dead(), drivers[drivers.len() - KEPT..], "the latest deaths");
    let status = rt.cluster_status().unwrap();
    assert_eq!(status.nodes.len(), 2 + KEPT, "the head, the node, the dead");
    assert_eq!(status.jobs.len(), 1 + drivers.len(), "every job is history");
    // The head's own node and the worker node each know the other, alive,
    // and the latest deaths.
    let known = |other: NodeId| -> Vec<(NodeId, bool)> {
        let mut k: Vec<_> = drivers[drivers.len() - KEPT..]
            .iter()
            .map(|d| (*d, false))
            .chain([(other, true)])
            .collect();
        k.sort();
        k
    };
    let mut here = rt.peers_known().unwrap();
    here.sort();
    assert_eq!(here, known(node));
    wait_until("the node forgot the oldest deaths", || {
        rt.task(peers_here)
            .node_affinity(node, false)
            .remote(())
            .get()
            .unwrap()
            == known(rt.node_id())
    });
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// A node's network thread polls its sockets for a moment after a control
/// message (the spin policy's network site) on two cores or more, and never
/// on one (what it waits for could not run meanwhile). How often the polling
/// pays depends on timing, so only its start is asserted; the speed it buys
/// is the benchmark's (`benches/results/2026-11-29-net-linger.txt`).
fn the_network_thread_lingers_after_a_message_only_with_a_core_to_spare() {
    let c = Cluster::start(1).unwrap();
    let rt = c.driver();
    let counter = rt.actor_of(Counter::new, 0).spawn().unwrap();
    for k in 1..=50u64 {
        assert_eq!(counter.call(Add(1)).get().unwrap(), k);
    }
    let (begun, paid) = rt.network_lingers().expect("in a cluster");
    assert!(paid <= begun);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        assert!(
            begun > 0,
            "50 replies came in and the network thread never lingered"
        );
    } else {
        assert_eq!(begun, 0, "lingered on one core");
    }
}

fn main() {
    rayx::testing::serve_if_node();
    macro_rules! tests {
        ($($t:ident),* $(,)?) => { &[$((stringify!($t), $t as fn())),*] };
    }
    let tests: &[(&str, fn())] = tests![
        tasks_run_on_every_node_and_their_results_come_back,
        node_affinity_is_hard_unless_soft,
        large_objects_move_between_nodes_intact_and_are_freed,
        shared_byte_buffers_move_between_nodes_and_are_read_in_place,
        refs_inside_values_are_borrowed_from_their_owner,
        actors_live_on_other_nodes_and_take_calls_in_order,
        refs_and_handles_sent_in_results_and_calls_outlive_their_sender,
        a_killed_node_s_tasks_run_again_elsewhere,
        an_unreachable_head_fails_init_in_bounded_time,
        bad_bytes_close_one_connection_and_are_counted,
        a_link_that_never_acknowledges_is_closed,
        a_lying_peer_s_chunks_fail_its_pull_not_the_node,
        a_task_s_held_argument_is_pulled_at_once,
        objects_at_the_inline_and_chunk_edges_arrive_intact,
        a_zero_timeout_wait_sees_borrowed_refs_arrive_after_another_runtime_s_ref,
        two_nodes_opening_links_to_each_other_at_once_lose_nothing,
        answers_follow_their_borrows_after_a_crossed_open,
        a_constructor_s_refs_are_borrowed_before_the_actor_is_reported_started,
        refs_inside_a_large_pulled_result_stay_readable,
        refs_inside_a_large_pulled_reply_stay_readable,
        a_ref_passed_on_across_three_nodes_stays_borrowed,
        refs_in_a_reply_from_a_third_node_stay_borrowed_after_it_is_freed,
        an_answer_between_waits_for_the_borrows_it_did_not_make,
        an_answer_waits_for_a_link_slower_than_the_sync_timeout,
        refs_inside_a_borrowed_value_outlive_its_release,
        the_network_thread_lingers_after_a_message_only_with_a_core_to_spare,
        what_is_too_large_to_send_fails_at_once_with_its_cause,
        drivers_that_come_and_go_leave_no_growth,
    ];
    common::run_tests(tests);
}
