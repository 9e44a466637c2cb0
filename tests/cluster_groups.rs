//! Placement groups and custom resources across real OS processes on
//! loopback: this binary is the driver (and the head), and re-runs itself as
//! node processes. Nodes die by SIGKILL.
//!
//! Its own runner (harness = false): `cargo test --test cluster_groups [filter]`.

mod common;

use rayx::prelude::*;
use rayx::testing::Cluster;
use rayx::{PlacementGroup, PlacementGroupState, PlacementStrategy};
use std::collections::BTreeSet;
use std::time::Instant;

const LONG: Duration = Duration::from_secs(30);

fn where_am_i(i: u64) -> (u64, u64) {
    (i, Runtime::current().expect("in a task").node_id().0)
}

/// Runs `where_am_i` in bundle `bundle` of a group this task was handed.
fn run_in_group(pg: PlacementGroup, bundle: u64) -> u64 {
    let rt = Runtime::current().expect("in a task");
    rt.task(where_am_i)
        .placement_group(&pg, Some(bundle as usize))
        .remote(bundle)
        .get()
        .expect("a task in a group handed over")
        .1
}

/// The state of the named group, as a node sees it.
fn named_group_state(name: String) -> String {
    let rt = Runtime::current().expect("in a task");
    match rt.get_placement_group(&name) {
        Ok(pg) => {
            let ready = pg.wait(LONG);
            format!("{ready:?} {:?}", pg.state())
        }
        Err(e) => format!("{e}"),
    }
}

/// Creates two groups from this node: one that goes with it, one detached.
fn make_groups(_: ()) -> (PlacementGroup, PlacementGroup) {
    let rt = Runtime::current().expect("in a task");
    let mine = rt.placement_group([[("disk", 1.0)]]).create().unwrap();
    let kept = rt
        .placement_group([[("disk", 1.0)]])
        .detached()
        .create()
        .unwrap();
    (mine, kept)
}

/// Has `make_groups` run on `node` by a task of its own: the groups are
/// still its submitter's job's.
fn make_groups_nested(node: u64) -> (PlacementGroup, PlacementGroup) {
    let rt = Runtime::current().expect("in a task");
    rt.task(make_groups)
        .node_affinity(NodeId(node), false)
        .remote(())
        .get()
        .expect("nested")
}

/// Runs until the file `path` exists (a test's way to hold a node busy).
fn busy_until(path: String) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(&path).exists() && Instant::now() < deadline {
        std::thread::park_timeout(Duration::from_millis(10));
    }
    Runtime::current().expect("in a task").node_id().0
}

/// What a node makes of a group handle read from the key-value store,
/// encoded there before the group was removed: whether it sees the group
/// removed (within the wait), and whether it lists it.
fn read_stale_handle(key: String) -> (String, bool) {
    let rt = Runtime::current().expect("in a task");
    let bytes = rt.kv_get(&key).unwrap().expect("stored");
    let pg: PlacementGroup = rmp_serde::from_slice(&bytes).expect("decodes");
    let deadline = Instant::now() + LONG;
    let seen = loop {
        match pg.wait(Duration::from_millis(20)) {
            Err(e) => break e.to_string(),
            Ok(_) if Instant::now() > deadline => break "still live".to_string(),
            Ok(_) => {}
        }
    };
    let listed = rt.placement_group_table().iter().any(|g| g.id == pg.id());
    (seen, listed)
}

/// What a node makes of a group handle handed to it: its wait now.
fn wait_now(pg: PlacementGroup) -> String {
    format!("{:?}", pg.wait(Duration::ZERO))
}

rayx::remote!(
    where_am_i,
    run_in_group,
    named_group_state,
    make_groups,
    make_groups_nested,
    busy_until,
    read_stale_handle,
    wait_now
);

pub struct Counter {
    n: u64,
}
impl Actor for Counter {}

fn new_counter(n: u64) -> Counter {
    Counter { n }
}

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

#[derive(Serialize, Deserialize)]
pub struct Where;
impl Message for Where {
    type Reply = u64;
}
impl Handler<Where> for Counter {
    fn handle(&mut self, _: Where, _: &mut ActorContext<Self>) -> u64 {
        Runtime::current().expect("in an actor").node_id().0
    }
}

/// Makes a placement group from inside the actor.
#[derive(Serialize, Deserialize)]
pub struct MakeGroup;
impl Message for MakeGroup {
    type Reply = PlacementGroup;
}
impl Handler<MakeGroup> for Counter {
    fn handle(&mut self, _: MakeGroup, _: &mut ActorContext<Self>) -> PlacementGroup {
        let rt = Runtime::current().expect("in an actor");
        rt.placement_group([[("disk", 0.5)]]).create().unwrap()
    }
}

rayx::remote_actor!(Counter, new_counter, [Add, Where, MakeGroup]);

/// An async actor that makes a placement group after an `.await` parked its
/// call (the call is polled again later by the actor's thread).
pub struct AsyncMaker;
impl Actor for AsyncMaker {
    const ASYNC: bool = true;
}

fn new_async_maker(_: ()) -> AsyncMaker {
    AsyncMaker
}

impl AsyncHandler<MakeGroup> for AsyncMaker {
    async fn handle(
        self: std::sync::Arc<Self>,
        _: MakeGroup,
        _: AsyncContext<Self>,
    ) -> PlacementGroup {
        tokio::task::yield_now().await;
        let rt = Runtime::current().expect("in an actor");
        rt.placement_group([[("disk", 0.5)]]).create().unwrap()
    }
}

rayx::remote_actor!(async AsyncMaker, new_async_maker, [MakeGroup]);

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

fn node_ids(c: &Cluster) -> BTreeSet<u64> {
    c.nodes().iter().map(|n| n.id.0).collect()
}

/// A ready STRICT_SPREAD group of two one-disk bundles.
fn one_disk_on_each_of_two_nodes(rt: &Runtime) -> PlacementGroup {
    let pg = rt
        .placement_group([[("disk", 1.0)], [("disk", 1.0)]])
        .strategy(PlacementStrategy::StrictSpread)
        .create()
        .unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    pg
}

fn placed(pg: &PlacementGroup) -> Vec<u64> {
    pg.bundle_nodes()
        .into_iter()
        .map(|n| n.expect("placed").0)
        .collect()
}

fn groups_reserve_bundles_by_strategy_across_nodes() {
    let c = Cluster::builder()
        .nodes(2)
        .node_resource("disk", 1.0)
        .start()
        .unwrap();
    let rt = c.driver();
    let both = [("CPU", 1.0), ("disk", 1.0)];
    let pg = rt
        .placement_group([both, both])
        .strategy(PlacementStrategy::StrictSpread)
        .create()
        .unwrap();
    assert_eq!(pg.ready().get_timeout(LONG), Ok(()));
    let nodes = placed(&pg);
    assert_eq!(
        nodes.iter().copied().collect::<BTreeSet<_>>(),
        node_ids(&c),
        "a bundle on each node: {nodes:?}"
    );
    for (i, node) in nodes.iter().enumerate() {
        let (_, ran) = rt
            .task(where_am_i)
            .placement_group(&pg, Some(i))
            .remote(i as u64)
            .get()
            .unwrap();
        assert_eq!(ran, *node, "bundle {i}'s task ran on its node");
    }
    // A node runs work in a group it was handed, on the bundle's node.
    let ran = rt
        .task(run_in_group)
        .num_cpus(0.0)
        .placement_group(&pg, Some(0))
        .remote((pg.clone(), 1))
        .get()
        .unwrap();
    assert_eq!(ran, nodes[1]);
    // Every disk is reserved: work outside the group finds none.
    match rt
        .task(where_am_i)
        .resource("disk", 1.0)
        .remote(0)
        .get_timeout(LONG)
    {
        Err(Error::Unschedulable { reason, .. }) => assert!(reason.contains("disk"), "{reason}"),
        other => panic!("both disks are reserved: {other:?}"),
    }
    // A group with no room waits, and is known by name on every node.
    let waiting = rt
        .placement_group([[("disk", 1.0)]])
        .name("waiting")
        .create()
        .unwrap();
    let ready = waiting.ready();
    assert_eq!(waiting.wait(Duration::ZERO), Ok(false));
    let status = rt.cluster_status().unwrap();
    assert_eq!(status.groups.len(), 2, "{:?}", status.groups);
    assert!(status
        .groups
        .iter()
        .any(|g| g.id == waiting.id() && g.state == PlacementGroupState::Pending));
    let seen = rt
        .task(named_group_state)
        .num_cpus(0.0)
        .remote("waiting".to_string());
    rt.remove_placement_group(&pg).unwrap();
    assert_eq!(ready.get_timeout(LONG), Ok(()), "room came when pg went");
    assert_eq!(seen.get_timeout(LONG).unwrap(), "Ok(true) Created");
    assert_eq!(
        rt.task(where_am_i)
            .num_cpus(0.0)
            .resource("disk", 1.0)
            .remote(0)
            .get_timeout(LONG)
            .map(|_| ()),
        Ok(()),
        "one disk is free again"
    );
}

fn an_actor_in_a_group_lives_on_its_bundle_and_goes_with_the_group() {
    let c = Cluster::builder()
        .nodes(2)
        .node_resource("disk", 1.0)
        .start()
        .unwrap();
    let rt = c.driver();
    let pg = rt.placement_group([[("disk", 1.0)]]).create().unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    let counter = rt
        .actor_of(new_counter, 5)
        .num_cpus(0.0)
        .resource("disk", 1.0)
        .placement_group(&pg, Some(0))
        .spawn()
        .unwrap();
    assert_eq!(counter.call(Where).get(), Ok(placed(&pg)[0]));
    assert_eq!(counter.call(Add(1)).get(), Ok(6));
    rt.remove_placement_group(&pg).unwrap();
    wait_until("the group's actor is killed", || {
        matches!(counter.call(Add(1)).get(), Err(Error::ActorDied { .. }))
    });
    match rt
        .actor_of(new_counter, 0)
        .num_cpus(0.0)
        .placement_group(&pg, None)
        .spawn()
    {
        Err(Error::Unschedulable { reason, .. }) => assert!(reason.contains("removed"), "{reason}"),
        other => panic!("an actor into a removed group: {:?}", other.map(|_| ())),
    }
    assert!(rt.cluster_status().unwrap().groups.is_empty());
}

fn a_dead_nodes_bundles_are_placed_again_and_its_actors_restart_there() {
    let mut c = Cluster::builder()
        .nodes(3)
        .node_resource("disk", 1.0)
        .health_check(Duration::from_millis(100), 10)
        .start()
        .unwrap();
    let rt = c.driver().clone();
    let pg = one_disk_on_each_of_two_nodes(&rt);
    let before = placed(&pg);
    let counter = rt
        .actor_of(new_counter, 0)
        .num_cpus(0.0)
        .max_restarts(1)
        .max_task_retries(1)
        .placement_group(&pg, Some(1))
        .spawn()
        .unwrap();
    assert_eq!(counter.call(Where).get(), Ok(before[1]));
    let i = c.nodes().iter().position(|n| n.id.0 == before[1]).unwrap();
    c.kill_node(i).unwrap();
    wait_until("bundle 1 is placed again and reserved", || {
        pg.state() == PlacementGroupState::Created
            && pg.bundle_nodes()[1].is_some_and(|n| n.0 != before[1])
    });
    let after = placed(&pg);
    assert_eq!(after[0], before[0], "bundle 0 stayed");
    assert_ne!(after[1], after[0], "still one node per bundle");
    assert_eq!(
        counter.call(Where).get_timeout(LONG),
        Ok(after[1]),
        "the actor started again on its bundle's new node"
    );
}

fn a_group_goes_with_the_job_that_made_it_unless_detached() {
    let mut c = Cluster::builder()
        .nodes(2)
        .node_resource("disk", 3.0)
        .health_check(Duration::from_millis(100), 10)
        .start()
        .unwrap();
    let rt = c.driver().clone();
    // A second program's task on node 0 makes the groups: they go with that
    // program (the task's submitter), not with the node that ran the task.
    let job = rayx::Builder::new()
        .address(c.address())
        .token(rt.cluster_token().unwrap())
        .num_cpus(0.0)
        .start()
        .unwrap();
    let (mine, kept) = job
        .task(make_groups)
        .node_affinity(c.nodes()[0].id, false)
        .remote(())
        .get()
        .unwrap();
    // So do groups made by a task that task submits, and by an actor the
    // job made.
    let (nested, nested_kept) = job
        .task(make_groups_nested)
        .num_cpus(0.0)
        .node_affinity(c.nodes()[0].id, false)
        .remote(c.nodes()[1].id.0)
        .get()
        .unwrap();
    let maker = job
        .actor_of(new_counter, 0)
        .num_cpus(0.0)
        .node_affinity(c.nodes()[1].id, false)
        .spawn()
        .unwrap();
    let in_actor = maker.call(MakeGroup).get().unwrap();
    // And by an async actor's handler, after an `.await`.
    let async_maker = job
        .async_actor_of(new_async_maker, ())
        .num_cpus(0.0)
        .node_affinity(c.nodes()[1].id, false)
        .spawn()
        .unwrap();
    let in_async_actor = async_maker.call(MakeGroup).get().unwrap();
    for g in [
        &mine,
        &kept,
        &nested,
        &nested_kept,
        &in_actor,
        &in_async_actor,
    ] {
        assert_eq!(g.wait(LONG), Ok(true));
    }
    rt.remove_placement_group(&nested_kept).unwrap();
    let (mine, kept) = (mine.id(), kept.id());
    let table = || -> Vec<(rayx::PlacementGroupId, PlacementGroupState)> {
        let mut t: Vec<_> = rt
            .placement_group_table()
            .iter()
            .map(|g| (g.id, g.state))
            .collect();
        t.sort_by_key(|g| g.0);
        t
    };
    assert_eq!(table().len(), 5);
    assert_ne!(mine, kept);
    job.shutdown();
    wait_until("the job's own group is removed", || {
        table() == vec![(kept, PlacementGroupState::Created)]
    });
    // A detached group outlives the node its bundle is on, too.
    let on = rt.placement_group_table()[0].nodes[0].expect("placed");
    let i = c.nodes().iter().position(|n| n.id == on).unwrap();
    c.kill_node(i).unwrap();
    let other = c.nodes()[1 - i].id;
    wait_until("the detached group is reserved on the live node", || {
        rt.placement_group_table().iter().any(|g| {
            g.id == kept && g.state == PlacementGroupState::Created && g.nodes == [Some(other)]
        })
    });
}

fn a_removed_group_stays_removed_on_a_node_that_joined_later() {
    let mut c = Cluster::builder()
        .nodes(1)
        .node_resource("disk", 1.0)
        .start()
        .unwrap();
    let rt = c.driver().clone();
    let pg = rt.placement_group([[("disk", 1.0)]]).create().unwrap();
    assert_eq!(pg.ready().get_timeout(LONG), Ok(()));
    // A handle encoded while the group lived, kept as bytes.
    rt.kv_put("stale", &rmp_serde::to_vec(&pg).unwrap(), true)
        .unwrap();
    rt.remove_placement_group(&pg).unwrap();
    // Two nodes join after the removal: neither heard of the group.
    let mut late = [NodeId(0); 2];
    for l in &mut late {
        let mut cmd = c.node_command(c.address()).unwrap();
        cmd.env("RAYX_RESOURCES", "disk=1");
        *l = c.add_node_from(cmd).unwrap();
    }
    // The old bytes, on one of them: it asks the head, and hears that the
    // group was removed.
    let (seen, listed) = rt
        .task(read_stale_handle)
        .num_cpus(0.0)
        .node_affinity(late[1], false)
        .remote("stale".to_string())
        .get_timeout(LONG)
        .unwrap();
    assert!(seen.contains("was removed"), "{seen}");
    assert!(!listed, "a removed group is not listed");
    // Handed over now to the other, the handle says the group was removed.
    let seen = rt
        .task(wait_now)
        .num_cpus(0.0)
        .node_affinity(late[0], false)
        .remote(pg.clone())
        .get_timeout(LONG)
        .unwrap();
    assert!(seen.contains("PlacementGroupRemoved"), "{seen}");
    // Every disk is free for work outside any group, the late node's too.
    for node in [c.nodes()[0].id, late[0], late[1]] {
        let ran = rt
            .task(where_am_i)
            .num_cpus(0.0)
            .resource("disk", 1.0)
            .node_affinity(node, false)
            .remote(0)
            .get_timeout(LONG);
        assert_eq!(ran.map(|(_, n)| n), Ok(node.0));
    }
}

fn a_draining_nodes_bundles_move_at_once() {
    let c = Cluster::builder()
        .nodes(3)
        .node_resource("disk", 1.0)
        .start()
        .unwrap();
    let rt = c.driver().clone();
    let pg = one_disk_on_each_of_two_nodes(&rt);
    let before = placed(&pg);
    // Bundle 1's node is kept busy, so it drains for as long as the test
    // holds it.
    let file = std::env::temp_dir().join(format!("rayx-drain-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let busy = rt
        .task(busy_until)
        .num_cpus(0.0)
        .placement_group(&pg, Some(1))
        .remote(file.to_string_lossy().into_owned());
    let draining = NodeId(before[1]);
    wait_until("the busy task runs", || {
        rt.cluster_status()
            .unwrap()
            .nodes
            .iter()
            .any(|n| n.info.id == draining && n.report.load > 0)
    });
    rt.drain_node(draining, Duration::from_secs(60)).unwrap();
    wait_until(
        "bundle 1 moved off the draining node and is reserved",
        || {
            pg.state() == PlacementGroupState::Created
                && pg.bundle_nodes()[1].is_some_and(|n| n != draining && n.0 != before[0])
        },
    );
    let (_, ran) = rt
        .task(where_am_i)
        .num_cpus(0.0)
        .placement_group(&pg, Some(1))
        .remote(1)
        .get_timeout(LONG)
        .unwrap();
    assert_eq!(
        Some(NodeId(ran)),
        pg.bundle_nodes()[1],
        "work goes where it went"
    );
    std::fs::write(&file, b"done").unwrap();
    assert_eq!(
        busy.get_timeout(LONG),
        Ok(draining.0),
        "the drain let it finish"
    );
    let _ = std::fs::remove_file(&file);
}

fn a_group_with_no_room_is_placed_when_a_node_with_room_joins() {
    let mut c = Cluster::builder().nodes(1).start().unwrap();
    let rt = c.driver().clone();
    let pg = rt
        .placement_group([[("gpu", 1.0), ("CPU", 1.0)]])
        .create()
        .unwrap();
    let ready = pg.ready();
    assert_eq!(pg.wait(Duration::from_millis(100)), Ok(false));
    // Work for it waits, as Ray's does: here, and in a task on a node.
    let early = rt.task(where_am_i).placement_group(&pg, Some(0)).remote(1);
    let nested = rt.task(run_in_group).remote((pg.clone(), 0));
    let mut cmd = c.node_command(c.address()).unwrap();
    cmd.env("RAYX_RESOURCES", r#"{"gpu": 1}"#);
    let joined = c.add_node_from(cmd).unwrap();
    assert_eq!(ready.get_timeout(LONG), Ok(()));
    assert_eq!(pg.bundle_nodes(), vec![Some(joined)]);
    assert_eq!(early.get_timeout(LONG), Ok((1, joined.0)));
    assert_eq!(nested.get_timeout(LONG), Ok(joined.0));
    let status = rt.cluster_status().unwrap();
    let node = status.nodes.iter().find(|n| n.info.id == joined).unwrap();
    assert_eq!(node.info.resources, rayx::resources([("gpu", 1.0)]));
}

/// A node started with one `gpu`.
fn add_gpu_node(c: &mut Cluster) -> NodeId {
    let mut cmd = c.node_command(c.address()).unwrap();
    cmd.env("RAYX_RESOURCES", r#"{"gpu": 1}"#);
    c.add_node_from(cmd).unwrap()
}

/// A cluster of one node without a gpu and one with, and a ready group of
/// one `{gpu: 1, CPU: 1}` bundle (on the gpu node, which it returns).
fn one_gpu_bundle() -> (Cluster, Runtime, PlacementGroup, NodeId) {
    let mut c = Cluster::builder()
        .nodes(1)
        .health_check(Duration::from_millis(100), 10)
        .start()
        .unwrap();
    let rt = c.driver().clone();
    let first = add_gpu_node(&mut c);
    let pg = rt
        .placement_group([[("gpu", 1.0), ("CPU", 1.0)]])
        .create()
        .unwrap();
    pg.ready().get_timeout(LONG).unwrap();
    (c, rt, pg, first)
}

fn a_task_whose_bundle_is_placed_again_waits_for_its_new_node() {
    let (mut c, rt, pg, first) = one_gpu_bundle();
    assert_eq!(pg.bundle_nodes(), vec![Some(first)]);
    // Submitted while the group is created, held by an argument until its
    // bundle's node is dead and no node has a gpu: placed then, it waits.
    let gate = std::env::temp_dir().join(format!("rayx-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let arg = rt
        .task(busy_until)
        .node_affinity(c.nodes()[0].id, false)
        .remote(gate.to_string_lossy().into_owned());
    let held = rt
        .task(where_am_i)
        .placement_group(&pg, Some(0))
        .remote(&arg);
    let i = c.nodes().iter().position(|n| n.id == first).unwrap();
    c.kill_node(i).unwrap();
    wait_until("the group is being placed again", || {
        pg.state() == PlacementGroupState::Rescheduling
    });
    std::fs::write(&gate, b"open").unwrap();
    assert_eq!(arg.get_timeout(LONG), Ok(c.nodes()[0].id.0));
    assert!(
        matches!(
            held.get_timeout(Duration::from_millis(300)),
            Err(Error::GetTimeout { .. })
        ),
        "it waits for its bundle (no node has a gpu)"
    );
    let second = add_gpu_node(&mut c);
    assert_eq!(held.get_timeout(LONG), Ok((c.nodes()[0].id.0, second.0)));
    let _ = std::fs::remove_file(&gate);
}

fn a_retried_task_waits_for_its_bundle_to_be_placed_again() {
    let (mut c, rt, pg, first) = one_gpu_bundle();
    let gate = std::env::temp_dir().join(format!("rayx-retry-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let task = rt
        .task(busy_until)
        .placement_group(&pg, Some(0))
        .max_retries(3)
        .remote(gate.to_string_lossy().into_owned());
    wait_until("the task runs on the gpu node", || {
        rt.cluster_status()
            .unwrap()
            .nodes
            .iter()
            .any(|n| n.info.id == first && n.report.load > 0)
    });
    let i = c.nodes().iter().position(|n| n.id == first).unwrap();
    c.kill_node(i).unwrap();
    wait_until("the group is being placed again", || {
        pg.state() == PlacementGroupState::Rescheduling
    });
    // Its retry has no node to go to (none has a gpu): it waits, not fails.
    assert!(
        matches!(
            task.get_timeout(Duration::from_millis(300)),
            Err(Error::GetTimeout { .. })
        ),
        "the retry waits for its bundle"
    );
    std::fs::write(&gate, b"open").unwrap();
    let second = add_gpu_node(&mut c);
    assert_eq!(task.get_timeout(LONG), Ok(second.0));
    let _ = std::fs::remove_file(&gate);
}

fn main() {
    rayx::testing::serve_if_node();
    macro_rules! tests {
        ($($t:ident),* $(,)?) => { &[$((stringify!($t), $t as fn())),*] };
    }
    let tests: &[(&str, fn())] = tests![
        groups_reserve_bundles_by_strategy_across_nodes,
        an_actor_in_a_group_lives_on_its_bundle_and_goes_with_the_group,
        a_dead_nodes_bundles_are_placed_again_and_its_actors_restart_there,
        a_group_goes_with_the_job_that_made_it_unless_detached,
        a_group_with_no_room_is_placed_when_a_node_with_room_joins,
        a_task_whose_bundle_is_placed_again_waits_for_its_new_node,
        a_retried_task_waits_for_its_bundle_to_be_placed_again,
        a_removed_group_stays_removed_on_a_node_that_joined_later,
        a_draining_nodes_bundles_move_at_once,
    ];
    common::run_tests(tests);
}
