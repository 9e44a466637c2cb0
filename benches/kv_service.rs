//! The transactional key-value store (`rayx::services::kv`): transactions per
//! second, each a read-modify-write of 2 or 8 random keys (read them all,
//! write each back plus one, commit), from several client threads at once,
//! at low contention (100,000 keys) and high contention (16 keys); beside
//! them single-key `get` and `put` (the store's one-operation transactions).
//! Each line prints committed transactions (or operations) per second, the
//! CPU time of the whole process per committed one (user + system, from
//! `getrusage`), and the share of attempts that conflicted and ran again.
//!
//! `cargo bench --bench kv_service`; `-- --quick` for short runs.
//! Outside a cluster: shards write through to the runtime's own key-value
//! store (in memory), so this measures the protocol and the actors, not a
//! disk or a network.

#[path = "common/cpu.rs"]
mod cpu;
use cpu::cpu_time;
use rayx::services::kv::KvStore;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: u64 = 8;
const SHARDS: usize = 4;

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[derive(Clone, Copy)]
enum Work {
    /// A transaction: read `keys` random distinct keys, write each + 1.
    Txn { keys: usize },
    /// One `get` of a random key.
    Get,
    /// One `put` of a random key.
    Put,
}

/// Runs `work` from `CLIENTS` threads for `secs` after `warmup`; prints one line.
fn measure(store: &KvStore, label: &str, work: Work, space: u64, warmup: f64, secs: f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (store, stop, counting) = (store.clone(), stop.clone(), counting.clone());
            let (done, attempts) = (done.clone(), attempts.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 ^ ((c + 1) * 7919));
                let names: Vec<String> = (0..space).map(|i| format!("k{i}")).collect();
                while !stop.load(Ordering::Relaxed) {
                    let tries = AtomicU64::new(0);
                    match work {
                        Work::Txn { keys } => {
                            let mut picked: Vec<&str> = Vec::with_capacity(keys);
                            while picked.len() < keys {
                                let k = names[rng.next(space) as usize].as_str();
                                if !picked.contains(&k) {
                                    picked.push(k);
                                }
                            }
                            store
                                .transact(|t| {
                                    tries.fetch_add(1, Ordering::Relaxed);
                                    let vals: Vec<Option<u64>> = t.get_many(&picked)?;
                                    for (k, v) in picked.iter().zip(vals) {
                                        t.put(k, &(v.unwrap_or(0) + 1))?;
                                    }
                                    Ok(())
                                })
                                .expect("transaction");
                        }
                        Work::Get => {
                            tries.fetch_add(1, Ordering::Relaxed);
                            let k = &names[rng.next(space) as usize];
                            store.get::<u64>(k).expect("get");
                        }
                        Work::Put => {
                            tries.fetch_add(1, Ordering::Relaxed);
                            let k = &names[rng.next(space) as usize];
                            store.put(k, &rng.next(1000)).expect("put");
                        }
                    }
                    if counting.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                        attempts.fetch_add(tries.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    counting.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs_f64(secs));
    counting.store(false, Ordering::SeqCst);
    let elapsed = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("client thread");
    }
    let n = done.load(Ordering::Relaxed).max(1);
    let a = attempts.load(Ordering::Relaxed);
    println!(
        "{label:<44} {:>10.0} /s   cpu {:>7.1} us/op   conflicts {:>5.1}% of attempts",
        n as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n as f64,
        100.0 * a.saturating_sub(n) as f64 / a.max(1) as f64,
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (warmup, secs) = if quick { (0.2, 0.5) } else { (1.0, 4.0) };
    let rt = rayx::init().expect("runtime");
    println!(
        "kv_service: {CLIENTS} client threads, {SHARDS} shards, {} workers, {} cores",
        rt.num_workers(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let store = KvStore::builder("bench")
        .shards(SHARDS)
        .max_attempts(10_000)
        .open(&rt)
        .expect("store");
    const LOW: u64 = 100_000;
    const HIGH: u64 = 16;
    measure(&store, "get (1 key)", Work::Get, LOW, warmup, secs);
    measure(&store, "put (1 key)", Work::Put, LOW, warmup, secs);
    for keys in [2, 8] {
        for (contention, space) in [("low", LOW), ("high", HIGH)] {
            let label = format!("txn {keys} keys rmw, {contention} contention ({space} keys)");
            measure(&store, &label, Work::Txn { keys }, space, warmup, secs);
        }
    }
}
