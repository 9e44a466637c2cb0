//! rayx's services measured as `benches/services_redis.rs` measures Redis:
//! the same metric names, the same shapes (client threads, one lock or eight,
//! read-modify-write transactions of 2 and 8 keys out of 1,000, gets of
//! 100-byte values out of 1,000 keys), the same method (a warm-up, then 4
//! timed runs; mean and population sd), and CPU time per operation.
//!
//! `cargo bench --bench services -- --cluster` is the side-by-side with Redis:
//! the services' actors run in a node process and the clients are threads of
//! the driver process, on loopback TCP, as Redis's server and clients are.
//! CPU per operation is then the driver's plus the node's (from `/proc`).
//! Without `--cluster` everything runs in one process (a service used by the
//! program that started it). `-- --quick` for short runs; `TESTS_TO_RUN`
//! filters metrics by substring. After each service's lines shaped as Redis's
//! come a few of its own with no Redis counterpart (4 lock shards; single-key
//! gets and puts and transactions on 16 hot keys; get_or_compute, puts, and
//! misses that each run a task).

#[path = "common/cpu.rs"]
mod cpu;
#[path = "common/rates.rs"]
mod rates;

use rates::{latency, measure, next, process_cpu};
use rayx::services::cache::Cache;
use rayx::services::kv::KvStore;
use rayx::services::lock::LockService;
use rayx::{Runtime, Scheduling};
use serde_bytes::ByteBuf;
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(30);
const KEYS: u64 = 1000;

/// The cached value of a key: 100 bytes, computed by a task on a miss.
fn value_of(_key: String) -> ByteBuf {
    ByteBuf::from(vec![7u8; 100])
}
rayx::remote!(value_of);

struct Bench {
    quick: bool,
    run: Option<String>,
    /// The node process's id in cluster mode (its CPU is counted too).
    node_pid: Option<u32>,
}

impl Bench {
    fn selected(&self, name: &str) -> bool {
        self.run.as_ref().is_none_or(|r| name.contains(r.as_str()))
    }

    /// Measures `op` from `clients` threads and prints the metric.
    fn run<F>(&self, name: &str, clients: usize, op: F)
    where
        F: Fn(usize, &mut u64) -> u64 + Send + Sync + 'static,
    {
        if !self.selected(name) {
            return;
        }
        let pid = self.node_pid;
        let node_cpu = move || pid.map_or(Duration::ZERO, process_cpu);
        let m = measure(
            self.quick,
            clients,
            &node_cpu,
            |_| (),
            move |_, i, seed| op(i, seed),
        );
        if pid.is_some() {
            println!(
                "{name} per second {:.2} +- {:.2} cpu {:.3} us/op (driver {:.3}, node {:.3})",
                m.mean,
                m.sd,
                m.here_us + m.there_us,
                m.here_us,
                m.there_us
            );
        } else {
            println!(
                "{name} per second {:.2} +- {:.2} cpu {:.3} us/op",
                m.mean, m.sd, m.here_us
            );
        }
    }
}

fn locks(bench: &Bench, rt: &Runtime, placement: &Scheduling) {
    let service = LockService::builder("bench-locks")
        .shards(1)
        .scheduling(*placement)
        .start(rt)
        .expect("lock service");
    // Warm the shard (its first call reads the store).
    drop(service.acquire("warm", LEASE, TIMEOUT).expect("warm-up"));
    let pair = |service: &LockService, lock: &str| {
        let guard = service.acquire(lock, LEASE, TIMEOUT).expect("acquire");
        guard.release().expect("release");
        1
    };
    let s = service.clone();
    bench.run("lock acquire/release uncontended", 1, move |_, _| {
        pair(&s, "lock:solo")
    });
    let s = service.clone();
    bench.run("lock acquire/release 8 clients one lock", 8, move |_, _| {
        pair(&s, "lock:shared")
    });
    let s = service.clone();
    bench.run("lock acquire/release 8 clients 8 locks", 8, move |i, _| {
        pair(&s, &format!("lock:{i}"))
    });
    // rayx's own (no Redis line): the 8 locks over 4 shards.
    let four = LockService::builder("bench-locks-4")
        .shards(4)
        .scheduling(*placement)
        .start(rt)
        .expect("lock service");
    for i in 0..8 {
        drop(
            four.acquire(&format!("lock:{i}"), LEASE, TIMEOUT)
                .expect("warm-up"),
        );
    }
    bench.run(
        "lock acquire/release 8 clients 8 locks 4 shards",
        8,
        move |i, _| pair(&four, &format!("lock:{i}")),
    );
}

fn transactions(bench: &Bench, rt: &Runtime, placement: &Scheduling) {
    let store = KvStore::builder("bench-accounts")
        .shards(4)
        .scheduling(*placement)
        .open(rt)
        .expect("store");
    for k in 0..KEYS {
        store.put(&format!("acct:{k}"), &0i64).expect("put");
    }
    // rayx's own (no Redis line): single-key operations, and transactions
    // on 16 hot keys (many conflicts, run again by `transact`).
    let s = store.clone();
    bench.run("kv get 8 clients", 8, move |_, seed| {
        s.get::<i64>(&format!("acct:{}", next(seed) % KEYS))
            .expect("get");
        1
    });
    let s = store.clone();
    bench.run("kv put 8 clients", 8, move |_, seed| {
        s.put(&format!("acct:{}", next(seed) % KEYS), &0i64)
            .expect("put");
        1
    });
    for keys in [2usize, 8] {
        for (clients, space, what) in [(1usize, KEYS, ""), (8, KEYS, ""), (8, 16, " 16 hot keys")] {
            let store = store.clone();
            let name = format!(
                "transactions {keys} keys {clients} client{}{what}",
                if clients > 1 { "s" } else { "" }
            );
            bench.run(&name, clients, move |_, seed| {
                let mut names: Vec<String> = Vec::with_capacity(keys);
                while names.len() < keys {
                    let k = format!("acct:{}", next(seed) % space);
                    if !names.contains(&k) {
                        names.push(k);
                    }
                }
                store
                    .transact(|txn| {
                        for k in &names {
                            let v: i64 = txn.get(k)?.unwrap_or(0);
                            txn.put(k, &(v + 1))?;
                        }
                        Ok(())
                    })
                    .expect("transaction");
                1
            });
        }
    }
}

fn cache(bench: &Bench, rt: &Runtime, placement: &Scheduling) {
    let cache: Cache<String, ByteBuf> = Cache::builder(rt, "bench-cache")
        .shards(4)
        .scheduling(*placement)
        .start()
        .expect("cache");
    for k in 0..KEYS {
        cache
            .put(&format!("cache:{k}"), &value_of(String::new()), None)
            .expect("put");
    }
    for clients in [1usize, 8] {
        let c = cache.clone();
        let name = format!(
            "cache get hit {clients} client{}",
            if clients > 1 { "s" } else { "" }
        );
        bench.run(&name, clients, move |_, seed| {
            let v = c.get(&format!("cache:{}", next(seed) % KEYS)).expect("get");
            assert!(v.is_some(), "a hit");
            1
        });
    }
    // rayx's own (no Redis line): get_or_compute on hits, puts, and misses
    // that each run the computation as a task.
    let c = cache.clone();
    bench.run("cache get_or_compute hit 1 client", 1, move |_, seed| {
        let key = format!("cache:{}", next(seed) % KEYS);
        c.get_or_compute(&key, value_of).expect("get_or_compute");
        1
    });
    let c = cache.clone();
    bench.run("cache put 8 clients", 8, move |_, seed| {
        let key = format!("cache:{}", next(seed) % KEYS);
        c.put(&key, &value_of(key.clone()), None).expect("put");
        1
    });
    let c = cache.clone();
    let fresh = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    bench.run(
        "cache get_or_compute miss (a task) 1 client",
        1,
        move |_, _| {
            let n = fresh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.get_or_compute(&format!("miss:{n}"), value_of)
                .expect("computed");
            1
        },
    );
    if bench.selected("cache get hit latency") {
        let n = if bench.quick { 5_000 } else { 100_000 };
        let mut seed = 42;
        latency("cache get hit latency", n, |_| {
            let key = format!("cache:{}", next(&mut seed) % KEYS);
            assert!(cache.get(&key).expect("get").is_some(), "a hit");
        });
    }
}

fn main() {
    // In cluster mode this binary is also the node process.
    rayx::testing::serve_if_node();
    let cluster_mode = std::env::args().any(|a| a == "--cluster");
    let quick = std::env::args().any(|a| a == "--quick");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cluster = cluster_mode.then(|| {
        rayx::testing::Cluster::builder()
            .nodes(1)
            .node_cpus(cores as f64)
            .start()
            .expect("cluster")
    });
    let (rt, placement, node_pid) = match &cluster {
        Some(c) => {
            let node = &c.nodes()[0];
            (
                c.driver().clone(),
                // Every shard on the node process: the driver only calls.
                Scheduling::NodeAffinity {
                    node: node.id,
                    soft: false,
                },
                Some(node.pid()),
            )
        }
        None => (rayx::init().expect("runtime"), Scheduling::Default, None),
    };
    println!(
        "# rayx services: {cores} cores{}{}",
        if cluster_mode {
            ", cluster mode (the services' actors in a node process, the clients in the driver process, loopback TCP)"
        } else {
            ", one process"
        },
        if quick { ", quick mode" } else { "" }
    );
    let bench = Bench {
        quick,
        run: std::env::var("TESTS_TO_RUN").ok().filter(|s| !s.is_empty()),
        node_pid,
    };
    locks(&bench, &rt, &placement);
    transactions(&bench, &rt, &placement);
    cache(&bench, &rt, &placement);
}
