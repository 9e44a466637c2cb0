//! The chaos run: node processes killed (SIGKILL) and new ones started at
//! random while a mixed workload of tasks, actor calls and objects runs, for
//! a bounded time. It counts operations done, nodes killed, typed failures,
//! and wrong results — which must be none.
//!
//! `cargo test --test chaos` runs it for 10 s; `RAYX_CHAOS_SECONDS=120 cargo
//! test --release --test chaos` for longer (the figures in the notes). The
//! seed is printed and taken from `RAYX_CHAOS_SEED`, so a run can be replayed.

use rayx::prelude::*;
use rayx::testing::Cluster;
use serde_bytes::ByteBuf;
use std::time::{Duration, Instant};

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// A checksum of a large object passed by ref.
fn checksum(b: ByteBuf) -> u64 {
    b.iter()
        .enumerate()
        .fold(0u64, |s, (i, x)| s.wrapping_add((i as u64 + 1) * *x as u64))
}

/// A large result (held where it ran until read; rebuilt if that node dies).
fn make_blob(n: usize, seed: u8) -> ByteBuf {
    ByteBuf::from(
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<u8>>(),
    )
}

rayx::remote!(square, checksum, make_blob);

pub struct Tally {
    n: u64,
}
impl Actor for Tally {}

#[derive(Serialize, Deserialize)]
pub struct Add(u64);
impl Message for Add {
    type Reply = u64;
}
impl Handler<Add> for Tally {
    fn handle(&mut self, Add(k): Add, _: &mut ActorContext<Self>) -> u64 {
        self.n += k;
        self.n
    }
}

fn new_tally(n: u64) -> Tally {
    Tally { n }
}

rayx::remote_actor!(Tally, new_tally, [Add]);

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Default, Debug)]
struct Figures {
    tasks: u64,
    calls: u64,
    objects: u64,
    kills: u64,
    failures: u64,
    wrong: u64,
}

fn reference_checksum(n: usize, seed: u8) -> u64 {
    checksum(make_blob(n, seed))
}

fn chaos() {
    let seconds: u64 = std::env::var("RAYX_CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("RAYX_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    println!("chaos: {seconds} s, seed {seed} (RAYX_CHAOS_SEED replays it)");
    let mut rng = Rng(seed);
    let mut c = Cluster::builder()
        .nodes(3)
        .health_check(Duration::from_millis(100), 10)
        .start()
        .expect("a cluster of three nodes starts");
    let rt = c.driver().clone();
    let mut f = Figures::default();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut next_kill = Instant::now() + Duration::from_millis(500 + rng.next() % 1500);
    let mut live: Vec<usize> = (0..3).collect();
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        // Tasks (retried without limit: a node death is a system failure).
        let xs: Vec<u64> = (0..200).map(|_| rng.next() % 1_000_000).collect();
        let tasks: Vec<_> = xs
            .iter()
            .map(|x| rt.task(square).max_retries(Retries::Infinite).remote(*x))
            .collect();
        // An actor that restarts without limit, calls retried without limit;
        // each reply goes on from the one before, or starts over at 0 (a
        // restart resets its state), never anything else.
        let tally = rt
            .actor_of(new_tally, 0)
            .max_restarts(Retries::Infinite)
            .max_task_retries(Retries::Infinite)
            .spawn();
        let ks: Vec<u64> = (0..50).map(|_| 1 + rng.next() % 1000).collect();
        let calls = tally
            .as_ref()
            .map(|t| ks.iter().map(|k| t.call(Add(*k))).collect::<Vec<_>>());
        // Objects: a 1 MiB put read by a task elsewhere, and a 1 MiB result.
        let (n, s) = (1 << 20, (round % 251) as u8);
        let put = rt.put(make_blob(n, s)).expect("put");
        let read = rt
            .task(checksum)
            .max_retries(Retries::Infinite)
            .remote(&put);
        let made = rt
            .task(make_blob)
            .max_retries(Retries::Infinite)
            .remote((n, s));
        if Instant::now() >= next_kill {
            // Kill one node and start another: three stay in the cluster.
            let i = live.remove((rng.next() % live.len() as u64) as usize);
            c.kill_node(i).expect("kill");
            f.kills += 1;
            match c.add_node() {
                Ok(_) => live.push(c.nodes().len() - 1),
                Err(e) => println!("chaos: a new node did not join: {e}"),
            }
            next_kill = Instant::now() + Duration::from_millis(500 + rng.next() % 2500);
        }
        let timeout = Some(Duration::from_secs(120));
        match rt.get(&tasks, timeout) {
            Ok(rs) => {
                for (x, r) in xs.iter().zip(rs) {
                    f.tasks += 1;
                    f.wrong += u64::from(r != square(*x));
                }
            }
            Err(e) => {
                println!("chaos: tasks failed: {e}");
                f.failures += 1;
            }
        }
        match calls {
            Ok(calls) => {
                let mut prev = 0u64;
                for (k, r) in ks.iter().zip(calls) {
                    match r.get_timeout(Duration::from_secs(120)) {
                        Ok(r) => {
                            f.calls += 1;
                            if r != prev + k && r != *k {
                                println!("chaos: reply {r} after {prev} for +{k}");
                                f.wrong += 1;
                            }
                            prev = r;
                        }
                        Err(e) => {
                            println!("chaos: a call failed: {e}");
                            f.failures += 1;
                        }
                    }
                }
            }
            Err(e) => {
                println!("chaos: an actor did not start: {e}");
                f.failures += 1;
            }
        }
        let want = reference_checksum(n, s);
        for (what, got) in [
            ("read", read.get_timeout(Duration::from_secs(120))),
            (
                "made",
                made.get_timeout(Duration::from_secs(120))
                    .map(|b| checksum(b.clone())),
            ),
        ] {
            match got {
                Ok(sum) => {
                    f.objects += 1;
                    if sum != want {
                        println!("chaos: {what}: checksum {sum}, want {want}");
                        f.wrong += 1;
                    }
                }
                Err(e) => {
                    println!("chaos: {what} failed: {e}");
                    f.failures += 1;
                }
            }
        }
    }
    println!(
        "chaos: {seconds} s, {} rounds: {} operations ({} tasks, {} actor calls, {} objects), \
         {} nodes killed (and as many started), {} typed failures, {} wrong results",
        round,
        f.tasks + f.calls + f.objects,
        f.tasks,
        f.calls,
        f.objects,
        f.kills,
        f.failures,
        f.wrong
    );
    assert_eq!(f.wrong, 0, "no result may be wrong: {f:?}");
    assert!(f.kills > 0 || seconds < 2, "the run killed nodes: {f:?}");
}

fn main() {
    rayx::testing::serve_if_node();
    if std::env::args().any(|a| a == "--list") {
        println!("chaos: test");
        return;
    }
    let started = Instant::now();
    chaos();
    println!("test chaos ... ok ({:.1?})", started.elapsed());
}
