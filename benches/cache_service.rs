//! The distributed cache (`rayx::services::cache`) in one process: gets per
//! second on hits from one client and from several at once, the latency of
//! single hits (p50/p99/p99.9), get_or_compute on hits, puts, and
//! get_or_compute on misses (a task each). Each line gives operations per
//! second and the process's CPU time per operation (getrusage).
//!
//! The workload matches `redis-benchmark -t get,set -d 100 -r 10000`: keys
//! are 10,000 `u64`s, values 100-byte buffers, all cached before the gets.
//!
//! `cargo bench --bench cache_service`; `-- --quick` for a short run.

#[path = "common/cpu.rs"]
mod cpu;

use cpu::cpu_time;
use rayx::services::cache::Cache;
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};

const KEYS: u64 = 10_000;
const VALUE_BYTES: usize = 100;

fn value_of(k: u64) -> ByteBuf {
    ByteBuf::from(vec![(k % 251) as u8; VALUE_BYTES])
}
rayx::remote!(value_of);

/// Runs `op` from `clients` threads for about `secs`; ops/s and CPU µs/op.
fn throughput(clients: usize, secs: f64, op: impl Fn(u64) + Sync) -> (f64, f64) {
    let cpu0 = cpu_time();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let op = &op;
                s.spawn(move || {
                    let mut n = 0u64;
                    let mut k = c as u64 * 7919;
                    while Instant::now() < deadline {
                        for _ in 0..64 {
                            op(k % KEYS);
                            k += 1;
                        }
                        n += 64;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let wall = start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    (total as f64 / wall, cpu / total as f64 * 1e6)
}

fn line(name: &str, (rate, cpu_us): (f64, f64)) {
    println!("{name:<48} {rate:>12.0} ops/s {cpu_us:>9.2} µs CPU/op");
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let secs = if quick { 0.3 } else { 3.0 };
    let rt = rayx::init().expect("a runtime");
    let cache: Cache<u64, ByteBuf> = Cache::builder(&rt, "bench")
        .shards(4)
        .capacity_per_shard(64 << 20)
        .start()
        .expect("the cache");
    for k in 0..KEYS {
        cache.put(&k, &value_of(k), None).expect("put");
    }
    println!(
        "rayx cache: {} shards, {KEYS} keys, {VALUE_BYTES}-byte values, {} workers, {} cores",
        cache.shards().len(),
        rt.num_workers(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let get = |k: u64| {
        let v = cache.get(&k).expect("get");
        assert!(v.is_some_and(|v| v.len() == VALUE_BYTES), "a hit");
    };
    line("get (hit), 1 client", throughput(1, secs, get));
    line("get (hit), 4 clients", throughput(4, secs, get));
    line("get (hit), 16 clients", throughput(16, secs, get));
    line(
        "get_or_compute (hit), 1 client",
        throughput(1, secs, |k| {
            let v = cache.get_or_compute(&k, value_of).expect("get_or_compute");
            assert_eq!(v.len(), VALUE_BYTES);
        }),
    );
    line(
        "put, 1 client",
        throughput(1, secs, |k| {
            cache.put(&k, &value_of(k), None).expect("put");
        }),
    );
    line(
        "put, 4 clients",
        throughput(4, secs, |k| {
            cache.put(&k, &value_of(k), None).expect("put");
        }),
    );

    // Misses that compute: a fresh cache, each key computed once by a task.
    let cold: Cache<u64, ByteBuf> = Cache::builder(&rt, "cold").shards(4).start().unwrap();
    let misses = if quick { 2_000 } else { 20_000 };
    let cpu0 = cpu_time();
    let start = Instant::now();
    for k in 0..misses {
        cold.get_or_compute(&k, value_of).expect("computed");
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    line(
        "get_or_compute (miss: a task), 1 client",
        (misses as f64 / wall, cpu / misses as f64 * 1e6),
    );

    // Latency of single hits, one at a time.
    let samples = if quick { 20_000 } else { 200_000 };
    let mut lat: Vec<Duration> = Vec::with_capacity(samples);
    for i in 0..samples as u64 {
        let k = (i * 7919) % KEYS;
        let t = Instant::now();
        let v = cache.get(&k).expect("get");
        lat.push(t.elapsed());
        assert!(v.is_some());
    }
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{:<48} p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs ({samples} gets)",
        "get (hit) latency, 1 client",
        q(0.50).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        q(0.999).as_secs_f64() * 1e6,
    );
    let t = cache.stats().expect("stats").total;
    println!(
        "counts: {} hits, {} misses, {} evictions, {} entries, {} bytes",
        t.hits, t.misses, t.evictions, t.entries, t.bytes
    );
}
