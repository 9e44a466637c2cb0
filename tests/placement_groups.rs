//! Placement groups and custom resources in one runtime (the runtime is the
//! whole cluster): reservation by strategy, readiness, work in bundles,
//! removal, names and bad input. The cluster's side is tests/cluster_groups.rs.

mod common;

use common::eventually;
use rayx::prelude::*;
use rayx::{PlacementGroupState, PlacementStrategy};

fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Decodes a group's handle and runs `add` in the group: what the task got.
fn add_in_decoded(handle: Vec<u8>) -> String {
    let rt = Runtime::current().expect("in a task");
    let pg: rayx::PlacementGroup = rmp_serde::from_slice(&handle).expect("decodes");
    let got = rt
        .task(add)
        .num_cpus(0.0)
        .placement_group(&pg, None)
        .remote((1, 1))
        .get_timeout(Duration::from_secs(10));
    format!("{got:?}")
}

fn len_of(b: serde_bytes::ByteBuf) -> usize {
    b.len()
}

rayx::remote!(add, add_in_decoded, len_of);

struct Keeper(u64);
impl Actor for Keeper {}

#[derive(Serialize, Deserialize)]
struct Get;
impl Message for Get {
    type Reply = u64;
}
impl Handler<Get> for Keeper {
    fn handle(&mut self, _: Get, _: &mut ActorContext<Self>) -> u64 {
        self.0
    }
}

fn runtime(cpus: usize, disk: f64) -> Runtime {
    rayx::Builder::new()
        .num_workers(cpus)
        .resource("disk", disk)
        .start()
        .expect("runtime")
}

const SECOND: Duration = Duration::from_secs(1);
const LONG_WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_group_that_fits_is_ready_and_runs_work_in_its_bundles() {
    let rt = runtime(2, 2.0);
    let pg = rt
        .placement_group([[("CPU", 1.0), ("disk", 1.0)], [("CPU", 1.0), ("disk", 1.0)]])
        .create()
        .unwrap();
    assert_eq!(pg.ready().get_timeout(10 * SECOND), Ok(()));
    assert_eq!(pg.wait(Duration::ZERO), Ok(true));
    assert_eq!(pg.wait(Duration::MAX), Ok(true), "a timeout of forever");
    assert_eq!(pg.state(), PlacementGroupState::Created);
    assert_eq!(pg.bundle_count(), 2);
    assert_eq!(pg.bundle_nodes(), vec![Some(rt.node_id()); 2]);
    for bundle in [Some(0), Some(1), None] {
        let r = rt.task(add).placement_group(&pg, bundle).remote((1, 2));
        assert_eq!(r.get(), Ok(3));
    }
    // A task that needs more than its bundle holds fails, naming what.
    match rt
        .task(add)
        .num_cpus(2.0)
        .placement_group(&pg, Some(0))
        .remote((1, 2))
        .get()
    {
        Err(Error::Unschedulable { reason, .. }) => {
            assert!(
                reason.contains("bundle 0") && reason.contains("CPU"),
                "{reason}"
            )
        }
        other => panic!("2 CPUs in a 1-CPU bundle: {other:?}"),
    }
    match rt
        .task(add)
        .placement_group(&pg, Some(5))
        .remote((1, 2))
        .get()
    {
        Err(Error::Unschedulable { reason, .. }) => {
            assert!(reason.contains("has 2 bundles"), "{reason}")
        }
        other => panic!("no bundle 5: {other:?}"),
    }
    // What the group reserves is not for work outside it.
    match rt.task(add).resource("disk", 1.0).remote((1, 2)).get() {
        Err(Error::Unschedulable { reason, .. }) => assert!(reason.contains("disk"), "{reason}"),
        other => panic!("both disks are reserved: {other:?}"),
    }
    rt.remove_placement_group(&pg).unwrap();
    assert_eq!(
        rt.task(add).resource("disk", 1.0).remote((1, 2)).get(),
        Ok(3)
    );
}

#[test]
fn a_group_waits_for_room_and_gets_it_when_another_goes() {
    let rt = runtime(2, 1.0);
    let first = rt.placement_group([[("disk", 1.0)]]).create().unwrap();
    assert_eq!(first.wait(5 * SECOND), Ok(true));
    let second = rt
        .placement_group([[("disk", 1.0)]])
        .name("second")
        .create()
        .unwrap();
    let ready = second.ready();
    assert_eq!(second.wait(Duration::ZERO), Ok(false));
    assert_eq!(second.state(), PlacementGroupState::Pending);
    assert!(matches!(
        ready.get_timeout(Duration::from_millis(50)),
        Err(Error::GetTimeout { .. })
    ));
    // Work for a group not placed yet waits for it, as Ray's does...
    let early: Vec<_> = (0..3)
        .map(|i| {
            rt.task(add)
                .num_cpus(0.0)
                .placement_group(&second, if i == 0 { Some(0) } else { None })
                .remote((i, 1))
        })
        .collect();
    assert!(matches!(
        early[0].get_timeout(Duration::from_millis(50)),
        Err(Error::GetTimeout { .. })
    ));
    // ...unless its bundle can never take it: that fails at once.
    match rt
        .task(add)
        .num_cpus(0.0)
        .resource("disk", 2.0)
        .placement_group(&second, Some(0))
        .remote((1, 1))
        .get_timeout(10 * SECOND)
    {
        Err(Error::Unschedulable { reason, .. }) => {
            assert!(reason.contains("bundle 0"), "{reason}")
        }
        other => panic!("more than its bundle holds: {other:?}"),
    }
    rt.remove_placement_group(&first).unwrap();
    assert_eq!(ready.get_timeout(10 * SECOND), Ok(()));
    for (i, r) in early.iter().enumerate() {
        assert_eq!(r.get_timeout(10 * SECOND), Ok(i as u64 + 1), "task {i}");
    }
    assert_eq!(rt.get_placement_group("second").unwrap().id(), second.id());
    // A strict-pack group wider than the node never fits: removing it fails
    // its readiness.
    let wide = rt
        .placement_group([[("CPU", 2.0)], [("CPU", 2.0)]])
        .strategy(PlacementStrategy::StrictPack)
        .create()
        .unwrap();
    let never = wide.ready();
    let waiting = rt.task(add).placement_group(&wide, None).remote((1, 1));
    rt.remove_placement_group(&wide).unwrap();
    assert!(matches!(
        never.get_timeout(10 * SECOND),
        Err(Error::PlacementGroupRemoved { .. })
    ));
    // Work that waited for it fails as work that comes after its removal.
    match waiting.get_timeout(10 * SECOND) {
        Err(Error::Unschedulable { reason, .. }) => assert!(reason.contains("removed"), "{reason}"),
        other => panic!("its group was removed while it waited: {other:?}"),
    }
    assert!(wide.wait(Duration::ZERO).is_err());
    rt.remove_placement_group(&wide)
        .expect("removing twice is no error");
    assert!(rt.placement_group_table().iter().all(|g| g.id != wide.id()));
}

#[test]
fn an_actor_in_a_group_goes_with_it_and_no_new_work_goes_in() {
    let rt = runtime(2, 1.0);
    let pg = rt.placement_group([[("disk", 1.0)]]).create().unwrap();
    pg.ready().get().unwrap();
    let keeper = rt
        .actor(|| Keeper(7))
        .num_cpus(0.0)
        .resource("disk", 1.0)
        .placement_group(&pg, Some(0))
        .spawn()
        .unwrap();
    assert_eq!(keeper.call(Get).get(), Ok(7));
    rt.remove_placement_group(&pg).unwrap();
    match keeper.call(Get).get() {
        Err(Error::ActorDied { .. }) => {}
        other => panic!("its group was removed: {other:?}"),
    }
    match rt.task(add).placement_group(&pg, None).remote((1, 1)).get() {
        Err(Error::Unschedulable { reason, .. }) => assert!(reason.contains("removed"), "{reason}"),
        other => panic!("a removed group: {other:?}"),
    }
    match rt
        .actor(|| Keeper(1))
        .num_cpus(0.0)
        .placement_group(&pg, None)
        .spawn()
    {
        Err(Error::Unschedulable { reason, .. }) => assert!(reason.contains("removed"), "{reason}"),
        other => panic!("an actor into a removed group: {:?}", other.map(|_| ())),
    }
}

#[test]
fn bad_bundles_and_names_are_refused_with_their_cause() {
    let rt = runtime(1, 1.0);
    let no_bundles: Vec<Vec<(&str, f64)>> = Vec::new();
    assert!(matches!(
        rt.placement_group(no_bundles).create(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        rt.placement_group([[("disk", -1.0)]]).create(),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        rt.placement_group([[("disk", f64::NAN)]]).create(),
        Err(Error::InvalidArgument(_))
    ));
    rt.placement_group([[("disk", 0.5)]])
        .name("taken")
        .create()
        .unwrap();
    match rt.placement_group([[("disk", 0.5)]]).name("taken").create() {
        Err(Error::InvalidArgument(why)) => assert!(why.contains("taken"), "{why}"),
        other => panic!("a name taken: {other:?}"),
    }
    assert!(rt.get_placement_group("nobody").is_err());
    match rt.task(add).resource("gpu", 1.0).remote((1, 1)).get() {
        Err(Error::Unschedulable { reason, .. }) => assert!(reason.contains("gpu"), "{reason}"),
        other => panic!("no gpu here: {other:?}"),
    }
    assert!(matches!(
        rayx::Builder::new().resource("CPU", 4.0).start(),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn two_runtimes_keep_their_groups_apart() {
    let a = runtime(1, 1.0);
    let b = runtime(1, 1.0);
    let on_a = a.placement_group([[("disk", 1.0)]]).create().unwrap();
    let on_b = b.placement_group([[("disk", 1.0)]]).create().unwrap();
    assert_eq!(on_a.wait(5 * SECOND), Ok(true));
    assert_eq!(on_b.wait(5 * SECOND), Ok(true), "b's disk is its own");
    assert_ne!(on_a.id(), on_b.id());
}

#[test]
fn readiness_refs_dropped_while_a_group_waits_are_freed() {
    let rt = runtime(1, 1.0);
    let never = rt.placement_group([[("disk", 2.0)]]).create().unwrap();
    let before = rt.memory().objects;
    for _ in 0..1000 {
        drop(never.ready());
    }
    let kept = never.ready();
    assert_eq!(rt.memory().objects, before + 1, "only the ref still held");
    rt.remove_placement_group(&never).unwrap();
    assert!(matches!(
        kept.get_timeout(10 * SECOND),
        Err(Error::PlacementGroupRemoved { .. })
    ));
}

#[test]
fn a_wait_ends_when_the_runtime_shuts_down() {
    let rt = runtime(1, 1.0);
    let never = rt.placement_group([[("disk", 2.0)]]).create().unwrap();
    let task = rt
        .task(add)
        .num_cpus(0.0)
        .placement_group(&never, None)
        .remote((1, 1));
    let waiter = std::thread::spawn(move || never.wait(Duration::from_secs(3600)));
    rt.shutdown();
    assert_eq!(waiter.join().unwrap(), Err(Error::ShutDown));
    assert_eq!(
        task.get_timeout(Duration::from_secs(10)),
        Err(Error::ShutDown)
    );
}

#[test]
fn resource_amounts_are_checked_on_every_task() {
    let rt = runtime(1, 1.0);
    for amount in [-1.0, f64::NAN, f64::INFINITY] {
        match rt.task(add).resource("gpu", amount).remote((1, 1)).get() {
            Err(Error::InvalidArgument(why)) => assert!(why.contains("gpu"), "{why}"),
            other => panic!("{amount} gpu: {other:?}"),
        }
    }
    for cpus in [-1.0, f64::NAN] {
        match rt.task(add).num_cpus(cpus).remote((1, 1)).get() {
            Err(Error::InvalidArgument(why)) => assert!(why.contains("num_cpus"), "{why}"),
            other => panic!("{cpus} CPUs: {other:?}"),
        }
        assert!(matches!(
            rt.actor(|| Keeper(1)).num_cpus(cpus).spawn().map(|_| ()),
            Err(Error::InvalidArgument(_))
        ));
    }
    let too_many = vec![[("disk", 0.0001)]; rayx_actors::groups::MAX_BUNDLES + 1];
    assert!(matches!(
        rt.placement_group(too_many).create(),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_stale_handle_to_a_long_removed_group_holds_no_work() {
    let rt = runtime(1, 1.0);
    let gone = rt.placement_group([[("disk", 2.0)]]).create().unwrap();
    let handle = rmp_serde::to_vec(&gone).unwrap();
    rt.remove_placement_group(&gone).unwrap();
    // The runtime's view remembers the latest 10,000 removals: push this
    // one out of it, so that the handle brings the group back as pending.
    for _ in 0..10_001 {
        let g = rt.placement_group([[("disk", 1.0)]]).create().unwrap();
        rt.remove_placement_group(&g).unwrap();
    }
    let got = rt
        .task(add_in_decoded)
        .remote(handle)
        .get_timeout(LONG_WAIT);
    let got = got.expect("the task ends");
    assert!(got.contains("Unschedulable"), "{got}");
}

#[test]
fn held_tasks_run_with_their_arguments_once_room_appears_and_leave_nothing() {
    let rt = runtime(1, 1.0);
    let first = rt.placement_group([[("disk", 1.0)]]).create().unwrap();
    assert_eq!(first.wait(10 * SECOND), Ok(true));
    let second = rt.placement_group([[("disk", 1.0)]]).create().unwrap();
    assert_eq!(second.wait(Duration::ZERO), Ok(false));
    let in_second = |bundle| rt.task(add).num_cpus(0.0).placement_group(&second, bundle);
    let refs: Vec<_> = (0..2_000u64)
        .map(|i| in_second(if i % 2 == 0 { Some(0) } else { None }).remote((i, 1)))
        .collect();
    // An argument held by ref (its only other holder lets go), one inline,
    // and one that is another held task's result.
    let big = rt
        .put(serde_bytes::ByteBuf::from(vec![7u8; 3 << 20]))
        .unwrap();
    let by_ref = rt
        .task(len_of)
        .num_cpus(0.0)
        .placement_group(&second, None)
        .remote(&big);
    drop(big);
    let inline = rt
        .task(len_of)
        .num_cpus(0.0)
        .placement_group(&second, None)
        .remote(serde_bytes::ByteBuf::from(vec![1u8; 200_000]));
    let chained = in_second(Some(0)).remote((&refs[3], 10));
    let cancelled = in_second(None).remote((5, 5));
    rt.cancel(&cancelled);
    rt.remove_placement_group(&first).unwrap();
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(r.get_timeout(LONG_WAIT), Ok(i as u64 + 1), "task {i}");
    }
    assert_eq!(by_ref.get_timeout(LONG_WAIT), Ok(3 << 20));
    assert_eq!(inline.get_timeout(LONG_WAIT), Ok(200_000));
    assert_eq!(chained.get_timeout(LONG_WAIT), Ok(14));
    assert!(
        matches!(
            cancelled.get_timeout(LONG_WAIT),
            Err(Error::Cancelled { .. })
        ),
        "cancelled while it waited, it stays cancelled"
    );
    drop((refs, by_ref, inline, chained, cancelled));
    assert!(
        eventually(LONG_WAIT, || rt.memory().objects == 0),
        "{:?}",
        rt.memory()
    );
}
