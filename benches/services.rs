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
//! filters metrics by substring.

#[path = "common/cpu.rs"]
mod cpu;

use cpu::cpu_time;
use rayx::services::cache::Cache;
use rayx::services::kv::KvStore;
use rayx::services::lock::LockService;
use rayx::{Runtime, Scheduling};
use serde_bytes::ByteBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(30);
const KEYS: u64 = 1000;

struct Bench {
    quick: bool,
    run: Option<String>,
    /// The node process's id in cluster mode (its CPU is counted too).
    node_pid: Option<u32>,
}

fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

impl Bench {
    fn selected(&self, name: &str) -> bool {
        self.run.as_ref().is_none_or(|r| name.contains(r.as_str()))
    }

    fn node_cpu(&self) -> Duration {
        self.node_pid.map_or(Duration::ZERO, process_cpu)
    }

    /// Runs `clients` threads calling `op` in a loop (each call returns how
    /// many operations it completed): a warm-up, then timed runs; prints the
    /// rate's mean and sd and the CPU per operation.
    fn run<F>(&self, name: &str, clients: usize, op: F)
    where
        F: Fn(usize, &mut u64) -> u64 + Send + Sync + 'static,
    {
        if !self.selected(name) {
            return;
        }
        let (warm, run, runs) = if self.quick {
            (Duration::from_millis(200), Duration::from_millis(500), 2)
        } else {
            (Duration::from_secs(1), Duration::from_secs(2), 4)
        };
        let op = Arc::new(op);
        let mut rates = Vec::new();
        let mut total_ops = 0u64;
        let (mut driver_cpu, mut node_cpu) = (Duration::ZERO, Duration::ZERO);
        for round in 0..=runs {
            let length = if round == 0 { warm } else { run };
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let (c0, n0) = (cpu_time(), self.node_cpu());
            let start = Instant::now();
            let threads: Vec<_> = (0..clients)
                .map(|i| {
                    let (stop, done, op) = (stop.clone(), done.clone(), op.clone());
                    std::thread::spawn(move || {
                        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                        let mut n = 0;
                        while !stop.load(Ordering::Relaxed) {
                            n += op(i, &mut seed);
                        }
                        done.fetch_add(n, Ordering::Relaxed);
                    })
                })
                .collect();
            std::thread::sleep(length);
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                t.join().expect("client thread");
            }
            let elapsed = start.elapsed();
            let n = done.load(Ordering::Relaxed);
            if round > 0 {
                rates.push(n as f64 / elapsed.as_secs_f64());
                total_ops += n;
                driver_cpu += cpu_time() - c0;
                node_cpu += self.node_cpu() - n0;
            }
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let sd =
            (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64).sqrt();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / total_ops.max(1) as f64;
        if self.node_pid.is_some() {
            println!(
                "{name} per second {mean:.2} +- {sd:.2} cpu {:.3} us/op (driver {:.3}, node {:.3})",
                per(driver_cpu + node_cpu),
                per(driver_cpu),
                per(node_cpu)
            );
        } else {
            println!(
                "{name} per second {mean:.2} +- {sd:.2} cpu {:.3} us/op",
                per(driver_cpu)
            );
        }
    }
}

fn next(seed: &mut u64) -> u64 {
    // xorshift64*: enough to pick keys.
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
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
    for keys in [2usize, 8] {
        for clients in [1usize, 8] {
            let store = store.clone();
            let name = format!(
                "transactions {keys} keys {clients} client{}",
                if clients > 1 { "s" } else { "" }
            );
            bench.run(&name, clients, move |_, seed| {
                let mut names: Vec<String> = Vec::with_capacity(keys);
                while names.len() < keys {
                    let k = format!("acct:{}", next(seed) % KEYS);
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
            .put(&format!("cache:{k}"), &ByteBuf::from(vec![7u8; 100]), None)
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
    if bench.selected("cache get hit latency") {
        let n = if bench.quick { 5_000 } else { 100_000 };
        let mut lat: Vec<u64> = Vec::with_capacity(n);
        let mut seed = 42;
        for _ in 0..n {
            let key = format!("cache:{}", next(&mut seed) % KEYS);
            let t = Instant::now();
            let v = cache.get(&key).expect("get");
            lat.push(t.elapsed().as_nanos() as u64);
            assert!(v.is_some());
        }
        lat.sort_unstable();
        let pct =
            |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
        println!(
            "cache get hit latency p50 {:.1} us p99 {:.1} us p99.9 {:.1} us ({n} gets)",
            pct(0.50),
            pct(0.99),
            pct(0.999)
        );
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
