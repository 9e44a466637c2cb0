//! The services' benchmarks' common method (rayx's and Redis's measured the
//! same way): client threads calling an operation in a loop for a warm-up and
//! then timed runs; the rate's mean and population sd, and CPU time per
//! operation of this process and of another (the node, or the Redis server).

use super::cpu::cpu_time;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one metric measured.
pub struct Measured {
    pub mean: f64,
    pub sd: f64,
    /// CPU per operation of this process and of the other one, in µs.
    pub here_us: f64,
    pub there_us: f64,
}

/// CPU time (user + system) of process `pid` so far, from /proc.
pub fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
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

/// xorshift64*: enough to pick keys.
pub fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Runs `clients` threads, each with its own `state(i)`, calling `op` in a
/// loop (each call returns how many operations it completed): a warm-up, then
/// 4 runs of 2 s (quick: 2 of 0.5 s). `there` reads the other process's CPU.
pub fn measure<S, F>(
    quick: bool,
    clients: usize,
    there: &dyn Fn() -> Duration,
    state: impl Fn(usize) -> S,
    op: F,
) -> Measured
where
    S: Send + 'static,
    F: Fn(&mut S, usize, &mut u64) -> u64 + Send + Sync + 'static,
{
    let (warm, run, runs) = if quick {
        (Duration::from_millis(200), Duration::from_millis(500), 2)
    } else {
        (Duration::from_secs(1), Duration::from_secs(2), 4)
    };
    let op = Arc::new(op);
    let mut rates = Vec::new();
    let mut total_ops = 0u64;
    let (mut here, mut there_cpu) = (Duration::ZERO, Duration::ZERO);
    for round in 0..=runs {
        let length = if round == 0 { warm } else { run };
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (c0, t0) = (cpu_time(), there());
        let start = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|i| {
                let (stop, done, op) = (stop.clone(), done.clone(), op.clone());
                let mut s = state(i);
                std::thread::spawn(move || {
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += op(&mut s, i, &mut seed);
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
            here += cpu_time() - c0;
            there_cpu += there() - t0;
        }
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64).sqrt();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / total_ops.max(1) as f64;
    Measured {
        mean,
        sd,
        here_us: per(here),
        there_us: per(there_cpu),
    }
}

/// The latency of `n` single calls of `op`: p50, p99 and p99.9 printed as
/// `NAME p50 .. us p99 .. us p99.9 .. us (N gets)`.
pub fn latency(name: &str, n: usize, mut op: impl FnMut(usize)) {
    let mut lat: Vec<u64> = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        op(i);
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "{name} p50 {:.1} us p99 {:.1} us p99.9 {:.1} us ({n} gets)",
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
}
