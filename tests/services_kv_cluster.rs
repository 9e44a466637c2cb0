//! The transactional key-value store in a cluster: shards placed on node
//! processes, nodes killed with SIGKILL while transfers run. The shards
//! restart on the nodes left, reload from the head's key-value store, and
//! the bank-transfer invariant holds.
//!
//! Its own runner (harness = false): `cargo test --test services_kv_cluster`.

mod common;

use common::bank::{account, marker, transfer, Rng};
use common::{eventually, LONG};
use rayx::services::kv::{KvError, KvStore};
use rayx::testing::Cluster;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ACCOUNTS: usize = 12;
const START: i64 = 1000;

/// The nodes the store's shards are on, as the head places them.
fn shard_nodes(rt: &rayx::Runtime) -> Vec<rayx::NodeId> {
    rt.cluster_status()
        .unwrap()
        .actors
        .into_iter()
        .filter(|(_, name)| {
            name.as_ref()
                .is_some_and(|(ns, n)| ns == "rayx.kv" && n.starts_with("cluster-bank/"))
        })
        .map(|(place, _)| place.node)
        .collect()
}

fn bank_transfers_survive_node_kills() {
    let mut c = Cluster::builder()
        .nodes(3)
        // Room for every shard on the one node left at the end.
        .node_cpus(8.0)
        .health_check(Duration::from_millis(100), 10)
        .start()
        .expect("a cluster starts");
    let rt = c.driver().clone();
    let store = KvStore::builder("cluster-bank")
        .shards(4)
        .lock_ttl(Duration::from_millis(300))
        .max_attempts(1000)
        .open(&rt)
        .unwrap();
    store
        .transact(|t| {
            for i in 0..ACCOUNTS {
                t.put(&account(i), &START)?;
            }
            Ok(())
        })
        .unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    const THREADS: u64 = 4;
    const PER: u64 = 150;
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, committed) = (store.clone(), committed.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(t * 7919 + 3);
                let mut next = |n: u64| rng.next(n);
                let mut fates = Vec::new();
                for i in 0..PER {
                    let id = t * PER + i;
                    let from = next(ACCOUNTS as u64) as usize;
                    let to = (from + 1 + next(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
                    let fate = transfer(&store, id, from, to, 1 + next(30) as i64);
                    if let Ok(true) = fate {
                        committed.fetch_add(1, Ordering::SeqCst);
                    }
                    fates.push((id, fate));
                }
                fates
            })
        })
        .collect();
    // Two nodes that hold shards die while the transfers run: each shard
    // there restarts on a node left and reloads from the head.
    for after in [100, 250] {
        assert!(
            eventually(LONG * 4, || committed.load(Ordering::SeqCst) >= after),
            "{after} transfers committed"
        );
        let hosts = shard_nodes(&rt);
        let victim = (0..c.nodes().len())
            .find(|&i| c.is_running(i) && hosts.contains(&c.nodes()[i].id))
            .expect("a live node holds a shard");
        c.kill_node(victim).unwrap();
    }
    let mut fates: HashMap<u64, Result<bool, KvError>> = HashMap::new();
    for h in clients {
        fates.extend(h.join().expect("a client panicked"));
    }
    let mut replay = vec![START; ACCOUNTS];
    let mut counts = [0u64; 3];
    for (&id, fate) in &fates {
        let m: Option<(usize, usize, i64)> = store.get(&marker(id)).unwrap();
        match (fate, m) {
            (Ok(true), Some(_)) => counts[0] += 1,
            (Ok(true), None) => panic!("transfer {id} was reported committed and is lost"),
            (Ok(false), None) => counts[1] += 1,
            (Err(_), None) => counts[2] += 1,
            (_, Some(_)) => panic!("transfer {id} was reported {fate:?} and is in the store"),
        }
        if let Some((from, to, amount)) = m {
            replay[from] -= amount;
            replay[to] += amount;
        }
    }
    let keys: Vec<String> = (0..ACCOUNTS).map(account).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let balances: Vec<i64> = store
        .transact(|t| {
            let v: Vec<Option<i64>> = t.get_many(&refs)?;
            Ok(v.into_iter().map(|b| b.unwrap_or(0)).collect())
        })
        .unwrap();
    println!(
        "cluster bank: committed {}, declined {}, gave up {}; balances {balances:?}",
        counts[0], counts[1], counts[2]
    );
    assert_eq!(balances.iter().sum::<i64>(), START * ACCOUNTS as i64);
    assert_eq!(balances, replay, "none lost, none doubled");
    assert!(counts[0] > 250);
    let live: Vec<rayx::NodeId> = rt.nodes().iter().map(|n| n.id).collect();
    let hosts = shard_nodes(&rt);
    assert_eq!(hosts.len(), 4, "every shard is placed: {hosts:?}");
    assert!(
        hosts.iter().all(|h| live.contains(h)),
        "every shard lives on a live node: {hosts:?} of {live:?}"
    );
}

fn main() {
    rayx::testing::serve_if_node();
    common::run_tests(&[(
        "bank_transfers_survive_node_kills",
        bank_transfers_survive_node_kills as fn(),
    )]);
}
