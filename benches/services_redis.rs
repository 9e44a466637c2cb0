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
#[path = "common/rates.rs"]
mod rates;

use rates::{latency, measure, next, process_cpu};
use redis::{Commands, Connection, Script};
use std::process::{Child, Command, Stdio};
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

    /// The server's CPU time so far.
    fn cpu(&self) -> Duration {
        process_cpu(self.child.id())
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
    /// Measures `op` from `clients` threads, each with its own connection,
    /// and prints the metric.
    fn run<F>(&self, server: &Server, name: &str, clients: usize, op: F)
    where
        F: Fn(&mut Connection, usize, &mut u64) -> u64 + Send + Sync + 'static,
    {
        let m = measure(
            self.quick,
            clients,
            &|| server.cpu(),
            |_| server.connect().expect("connect to redis"),
            op,
        );
        println!(
            "{name} per second {:.2} +- {:.2} cpu {:.3} us/op (client {:.3}, redis-server {:.3})",
            m.mean,
            m.sd,
            m.here_us + m.there_us,
            m.here_us,
            m.there_us
        );
    }
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
    let mut seed = 42;
    latency("cache get hit latency", n, |_| {
        let key = format!("cache:{}", next(&mut seed) % 1000);
        let v: Option<Vec<u8>> = c.get(key).expect("GET");
        assert!(v.is_some(), "a hit");
    });
}
