//! The peer of rayx's services, measured the same way on the same machine:
//! Redis (the distribution's `redis-server`, started by this benchmark on a
//! free loopback port, no persistence) doing what a Redis user does for the
//! same jobs:
//!
//! - **lock**: `SET name token NX PX lease` to acquire and a compare-and-delete
//!   script to release (the single-instance pattern of the Redis docs); a
//!   contended acquire retries at once (Redis has no queue of waiters);
//! - **transactions**: `WATCH` the keys, `MGET` them, `MULTI`, one `SET` per
//!   key, `EXEC`; a transaction whose keys changed is retried (optimistic, as
//!   rayx's store is);
//! - **cache**: `GET` of a key that is there (a hit), and the latency of one.
//!
//! Each metric prints `NAME per second MEAN +- SD`, then the CPU time per
//! operation of the client (this process) and of the Redis server (from
//! `/proc`), as the other benchmarks do. Clients are threads of this process,
//! one connection each. `cargo bench --bench services_redis` (`-- --quick`:
//! short runs). Without `redis-server` on the PATH it says so and exits.

#[path = "common/cpu.rs"]
mod cpu;

use cpu::cpu_time;
use redis::{Commands, Connection, Script};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Option<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = server.connect() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return Some(server);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?.get_connection()
    }

    /// The server's CPU time so far (utime + stime from /proc, in clock ticks).
    fn cpu(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which is in parentheses).
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
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    quick: bool,
}

impl Bench {
    /// Runs `clients` threads, each making a connection and calling `op` in a
    /// loop (each call returns how many operations it completed), for a
    /// warm-up and then 4 timed runs; prints the mean and sd of the total rate
    /// and the CPU per operation of client and server.
    fn run<F>(&self, server: &Server, name: &str, clients: usize, op: F)
    where
        F: Fn(&mut Connection, usize, &mut u64) -> u64 + Send + Sync + 'static,
    {
        let (warm, run, runs) = if self.quick {
            (Duration::from_millis(200), Duration::from_millis(500), 2)
        } else {
            (Duration::from_secs(1), Duration::from_secs(2), 4)
        };
        let op = Arc::new(op);
        let mut rates = Vec::new();
        let mut total_ops = 0u64;
        let mut client_cpu = Duration::ZERO;
        let mut server_cpu = Duration::ZERO;
        for round in 0..=runs {
            let length = if round == 0 { warm } else { run };
            let stop = Arc::new(AtomicBool::new(false));
            let done = Arc::new(AtomicU64::new(0));
            let (c0, s0) = (cpu_time(), server.cpu());
            let start = Instant::now();
            let threads: Vec<_> = (0..clients)
                .map(|i| {
                    let (stop, done, op) = (stop.clone(), done.clone(), op.clone());
                    let mut conn = server.connect().expect("connect to redis");
                    std::thread::spawn(move || {
                        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                        let mut n = 0;
                        while !stop.load(Ordering::Relaxed) {
                            n += op(&mut conn, i, &mut seed);
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
                client_cpu += cpu_time() - c0;
                server_cpu += server.cpu() - s0;
            }
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let sd =
            (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64).sqrt();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / total_ops.max(1) as f64;
        println!(
            "{name} per second {mean:.2} +- {sd:.2} cpu {:.3} us/op (client {:.3}, redis-server {:.3})",
            per(client_cpu + server_cpu),
            per(client_cpu),
            per(server_cpu)
        );
    }
}

fn next(seed: &mut u64) -> u64 {
    // xorshift64*: enough to pick keys.
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

const RELEASE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

/// One acquire/release pair on `lock`; 0 if the lock was taken by another.
fn lock_pair(conn: &mut Connection, lock: &str, token: &str, release: &Script) -> u64 {
    let got: Option<String> = redis::cmd("SET")
        .arg(lock)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .query(conn)
        .expect("SET NX");
    if got.is_none() {
        return 0;
    }
    let released: i64 = release.key(lock).arg(token).invoke(conn).expect("release");
    assert_eq!(released, 1, "the lock was ours");
    1
}

/// One read-modify-write transaction of `keys` random keys of 1,000, retried
/// until it commits.
fn transaction(conn: &mut Connection, keys: usize, seed: &mut u64) -> u64 {
    let mut names: Vec<String> = Vec::with_capacity(keys);
    while names.len() < keys {
        let k = format!("acct:{}", next(seed) % 1000);
        if !names.contains(&k) {
            names.push(k);
        }
    }
    loop {
        redis::cmd("WATCH")
            .arg(&names)
            .query::<()>(conn)
            .expect("WATCH");
        let values: Vec<Option<i64>> = redis::cmd("MGET").arg(&names).query(conn).expect("MGET");
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (k, v) in names.iter().zip(&values) {
            pipe.set(k, v.unwrap_or(0) + 1).ignore();
        }
        let committed: Option<()> = pipe.query(conn).expect("EXEC");
        if committed.is_some() {
            return 1;
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let Some(server) = Server::start() else {
        println!(
            "# redis-server not found or did not start: install it (apt-get install redis-server)"
        );
        return;
    };
    let version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "# Redis peer of rayx's services: {version}; loopback TCP, no persistence{}",
        if quick { "; quick mode" } else { "" }
    );
    let bench = Bench { quick };
    let release = Arc::new(Script::new(RELEASE));

    let r = release.clone();
    bench.run(
        &server,
        "lock acquire/release uncontended",
        1,
        move |c, i, _| lock_pair(c, "lock:solo", &format!("t{i}"), &r),
    );
    let r = release.clone();
    bench.run(
        &server,
        "lock acquire/release 8 clients one lock",
        8,
        move |c, i, _| lock_pair(c, "lock:shared", &format!("t{i}"), &r),
    );
    let r = release.clone();
    bench.run(
        &server,
        "lock acquire/release 8 clients 8 locks",
        8,
        move |c, i, _| lock_pair(c, &format!("lock:{i}"), &format!("t{i}"), &r),
    );

    for keys in [2, 8] {
        bench.run(
            &server,
            &format!("transactions {keys} keys 1 client"),
            1,
            move |c, _, s| transaction(c, keys, s),
        );
        bench.run(
            &server,
            &format!("transactions {keys} keys 8 clients"),
            8,
            move |c, _, s| transaction(c, keys, s),
        );
    }

    {
        let mut c = server.connect().expect("connect");
        for k in 0..1000 {
            let _: () = c.set(format!("cache:{k}"), vec![7u8; 100]).expect("SET");
        }
    }
    bench.run(&server, "cache get hit 1 client", 1, |c, _, s| {
        let v: Option<Vec<u8>> = c.get(format!("cache:{}", next(s) % 1000)).expect("GET");
        assert!(v.is_some(), "a hit");
        1
    });
    bench.run(&server, "cache get hit 8 clients", 8, |c, _, s| {
        let v: Option<Vec<u8>> = c.get(format!("cache:{}", next(s) % 1000)).expect("GET");
        assert!(v.is_some(), "a hit");
        1
    });

    // Latency of one hit, one client.
    let mut c = server.connect().expect("connect");
    let n = if quick { 5_000 } else { 100_000 };
    let mut lat: Vec<u64> = Vec::with_capacity(n);
    let mut seed = 42;
    for _ in 0..n {
        let key = format!("cache:{}", next(&mut seed) % 1000);
        let t = Instant::now();
        let v: Option<Vec<u8>> = c.get(key).expect("GET");
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(v.is_some());
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "cache get hit latency p50 {:.1} us p99 {:.1} us p99.9 {:.1} us ({n} gets)",
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
}
