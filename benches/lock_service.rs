//! The lock service's throughput: acquire/release pairs per second, and the
//! CPU time of the whole process per pair (user + system, from `getrusage`).
//!
//! - uncontended: one client thread, one lock;
//! - contended: 8 client threads on one lock (every pair waits in the FIFO
//!   queue and is handed the lock by a release);
//! - 8 threads on 8 locks: one lock each, one shard;
//! - the same on 4 shards over 2 async threads.
//!
//! Each metric runs 5 times for about a second; printed as the
//! microbenchmark prints, `NAME per second MEAN +- SD`, then `cpu US us/op`.
//! Redis (`SET NX PX` / compare-and-delete) is measured beside it by hand on
//! the same machine (see BENCHMARKS.md).
//!
//! `cargo bench --bench lock_service`; `-- --quick` for short runs.

#[path = "common/cpu.rs"]
mod cpu;

use rayx::services::lock::LockService;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(30);

struct Setup {
    threads: usize,
    locks: usize,
    shards: u32,
    async_threads: usize,
}

/// Pairs per second over `run`, and CPU time per pair.
fn measure(setup: &Setup, run: Duration, service: &str) -> (f64, Duration) {
    let rt = rayx::Builder::new()
        .async_threads(setup.async_threads)
        .start()
        .expect("runtime");
    let locks = LockService::builder(service)
        .shards(setup.shards)
        .start(&rt)
        .expect("lock service");
    // Warm the shards (their first call reads the store).
    for l in 0..setup.locks {
        let name = format!("lock-{l}");
        drop(locks.acquire(&name, LEASE, TIMEOUT).expect("warm-up"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let pairs = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(setup.threads + 1));
    let threads: Vec<_> = (0..setup.threads)
        .map(|t| {
            let (locks, stop, pairs, start) =
                (locks.clone(), stop.clone(), pairs.clone(), start.clone());
            let name = format!("lock-{}", t % setup.locks);
            std::thread::spawn(move || {
                start.wait();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let g = locks.acquire(&name, LEASE, TIMEOUT).expect("acquire");
                    g.release().expect("release");
                    n += 1;
                }
                pairs.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let cpu0 = cpu::cpu_time();
    let t0 = Instant::now();
    start.wait();
    std::thread::sleep(run);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    let elapsed = t0.elapsed();
    let cpu = cpu::cpu_time() - cpu0;
    let n = pairs.load(Ordering::Relaxed).max(1);
    (n as f64 / elapsed.as_secs_f64(), cpu / n as u32)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, run) = if quick {
        (2, Duration::from_millis(200))
    } else {
        (5, Duration::from_secs(1))
    };
    let metrics = [
        (
            "lock acquire/release uncontended (1 thread, 1 lock)",
            Setup {
                threads: 1,
                locks: 1,
                shards: 1,
                async_threads: 1,
            },
        ),
        (
            "lock acquire/release contended (8 threads, 1 lock)",
            Setup {
                threads: 8,
                locks: 1,
                shards: 1,
                async_threads: 1,
            },
        ),
        (
            "lock acquire/release 8 threads, 8 locks, 1 shard",
            Setup {
                threads: 8,
                locks: 8,
                shards: 1,
                async_threads: 1,
            },
        ),
        (
            "lock acquire/release 8 threads, 8 locks, 4 shards on 2 async threads",
            Setup {
                threads: 8,
                locks: 8,
                shards: 4,
                async_threads: 2,
            },
        ),
    ];
    println!(
        "lock service benchmark: {runs} runs of {run:?} per metric, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (i, (name, setup)) in metrics.iter().enumerate() {
        let mut rates = Vec::new();
        let mut cpu = Duration::ZERO;
        for r in 0..runs {
            let (rate, per) = measure(setup, run, &format!("bench-{i}-{r}"));
            rates.push(rate);
            cpu += per;
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let sd =
            (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64).sqrt();
        println!(
            "{name} per second {mean:.2} +- {sd:.2}  cpu {:.2} us/op",
            (cpu / runs as u32).as_secs_f64() * 1e6
        );
    }
}
