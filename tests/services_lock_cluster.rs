//! The lock service across processes: a holder whose node dies loses its
//! lock at once, not when its lease ends.
//!
//! Its own runner (harness = false): node processes run this binary again.

mod common;

use common::LONG;
use rayx::prelude::*;
use rayx::services::lock::LockService;
use rayx::testing::Cluster;
use rayx::SupervisionEvent;

const LEASE: Duration = Duration::from_secs(60);

/// Takes the lock and keeps it past this task: the guard is never dropped,
/// so only its lease or its node's death can free it.
fn hold_and_keep(locks: LockService) -> u64 {
    let guard = locks
        .acquire("a", LEASE, LONG)
        .expect("acquire on the node");
    let token = guard.token();
    std::mem::forget(guard);
    token
}
rayx::remote!(hold_and_keep);

fn a_holder_whose_node_dies_loses_its_lock() {
    let mut cluster = Cluster::builder()
        .nodes(1)
        .health_check(Duration::from_millis(100), 10)
        .start()
        .unwrap();
    let driver = cluster.driver().clone();
    let events = driver.events();
    // The shard on the driver's node, which stays up.
    let locks = LockService::builder("node-death")
        .scheduling(Scheduling::NodeAffinity {
            node: driver.node_id(),
            soft: false,
        })
        .start(&driver)
        .unwrap();
    let node = cluster.nodes()[0].id;
    let token = driver
        .task(hold_and_keep)
        .node_affinity(node, false)
        .remote(locks.clone())
        .get()
        .unwrap();
    assert!(
        locks.try_acquire("a", LEASE).unwrap().is_none(),
        "the node holds it"
    );
    cluster.kill_node(0).unwrap();
    let died = std::iter::from_fn(|| events.recv_timeout(LONG).ok())
        .any(|e| matches!(e, SupervisionEvent::NodeDied { node: n, .. } if n == node.to_string()));
    assert!(died, "the driver saw the node die");
    // Freed at once: granted long before the holder's minute-long lease ends.
    let g = locks.acquire("a", LEASE, Duration::from_secs(20)).unwrap();
    assert!(g.token() > token);
}

fn main() {
    rayx::testing::serve_if_node();
    common::run_tests(&[(
        "a_holder_whose_node_dies_loses_its_lock",
        a_holder_whose_node_dies_loses_its_lock,
    )]);
}
