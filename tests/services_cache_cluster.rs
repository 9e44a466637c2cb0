//! The distributed cache across real node processes: shards spread over two
//! nodes, one node killed with SIGKILL; the cache keeps answering, the lost
//! shards' keys are computed again and the others stay cached.
//!
//! Its own runner (harness = false; node processes re-run this binary):
//! `cargo test --test services_cache_cluster`.

mod common;

use common::run_tests;
use rayx::prelude::*;
use rayx::services::cache::{Cache, ShardId};
use rayx::testing::Cluster;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A value that names the key, the node that computed it and which of that
/// node's computations it was: a value computed again differs.
fn stamp(key: u64) -> String {
    let node = Runtime::current().expect("in a task").node_id();
    format!("{key}:{node}:{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// A client on a node: the cache travels into the task.
fn read_on_node(cache: Cache<u64, String>, key: u64) -> String {
    cache
        .get_or_compute(&key, stamp)
        .expect("get_or_compute on a node")
}

rayx::remote!(stamp, read_on_node);

fn a_killed_nodes_shards_are_computed_again_elsewhere() {
    let mut c = Cluster::builder()
        .nodes(2)
        .health_check(Duration::from_millis(100), 10)
        .start()
        .unwrap();
    let rt = c.driver().clone();
    let cache: Cache<u64, String> = Cache::builder(&rt, "cluster")
        .shards(4)
        .scheduling(Scheduling::Spread)
        .start()
        .unwrap();
    let placed: BTreeMap<ShardId, NodeId> = cache
        .shards()
        .into_iter()
        .map(|s| (s, cache.node_of(s).unwrap()))
        .collect();
    let nodes: Vec<NodeId> = c.nodes().iter().map(|n| n.id).collect();
    assert!(
        nodes.iter().all(|n| placed.values().any(|p| p == n)),
        "spread over both nodes: {placed:?}"
    );

    let keys: Vec<u64> = (0..200).collect();
    let first: Vec<String> = keys
        .iter()
        .map(|k| cache.get_or_compute(k, stamp).unwrap())
        .collect();
    // A client inside a task on a node reads the same values.
    let via_node: Vec<String> = rt
        .get(
            &keys
                .iter()
                .map(|&k| rt.task(read_on_node).remote((cache.clone(), k)))
                .collect::<Vec<_>>(),
            Some(common::LONG),
        )
        .unwrap();
    assert_eq!(via_node, first);

    let dead = c.kill_node(0).unwrap();
    let lost: Vec<bool> = keys
        .iter()
        .map(|k| placed[&cache.shard_of(k).unwrap()] == dead)
        .collect();
    assert!(lost.iter().any(|&l| l) && lost.iter().any(|&l| !l));

    // The cache keeps answering: the lost shards restart on the live node,
    // empty, so their keys are computed again; the other keys are hits.
    for (i, k) in keys.iter().enumerate() {
        let v = cache.get_or_compute(k, stamp).unwrap();
        assert!(
            v.starts_with(&format!("{k}:")),
            "never another key's value: {v}"
        );
        if lost[i] {
            assert_ne!(v, first[i], "key {k} was on the killed node");
        } else {
            assert_eq!(v, first[i], "key {k} stayed cached");
        }
    }
    for s in cache.shards() {
        assert_ne!(cache.node_of(s), Some(dead), "{s} moved off the dead node");
    }
    let stats = cache.stats().unwrap();
    assert_eq!(stats.total.entries, keys.len() as u64);
}

fn main() {
    rayx::testing::serve_if_node();
    run_tests(&[(
        "a_killed_nodes_shards_are_computed_again_elsewhere",
        a_killed_nodes_shards_are_computed_again_elsewhere,
    )]);
}
