//! Helpers shared by the integration tests: gates to hold a task or handler at a
//! known point, and a bounded wait for a condition.
#![allow(dead_code)]

pub mod bank;
pub mod failing;
pub mod linearizability;
pub mod raw_peer;

use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

type Gate = Arc<(Mutex<bool>, Condvar)>;
static GATES: LazyLock<Mutex<HashMap<u64, Gate>>> = LazyLock::new(Default::default);
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A new closed gate.
pub fn gate() -> u64 {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    GATES
        .lock()
        .insert(id, Arc::new((Mutex::new(false), Condvar::new())));
    id
}

fn get(id: u64) -> Gate {
    GATES.lock().get(&id).cloned().expect("unknown gate")
}

/// Opens the gate: every waiter goes on.
pub fn open(id: u64) {
    let g = get(id);
    *g.0.lock() = true;
    g.1.notify_all();
}

/// Blocks until the gate opens (at most 60 s, then panics so a bug cannot hang CI).
pub fn pass(id: u64) -> u64 {
    let g = get(id);
    let mut open = g.0.lock();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !*open {
        if g.1.wait_until(&mut open, deadline).timed_out() {
            panic!("gate {id} never opened");
        }
    }
    id
}

/// Waits until `cond` holds, checking as it goes; false after `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    cond()
}

/// A bound on how long a test waits for something that should happen at once.
pub const LONG: Duration = Duration::from_secs(30);

/// The runner of the test binaries with `harness = false` (the cluster
/// tests, whose binaries are also their node processes): runs the tests
/// whose names contain a filter argument (all without one), one after
/// another, and exits 101 if any failed. `--list` lists them.
pub fn run_tests(tests: &[(&str, fn())]) {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(test);
        let took = started.elapsed();
        match outcome {
            Ok(()) => println!("test {name} ... ok ({took:.1?})"),
            Err(_) => {
                println!("test {name} ... FAILED ({took:.1?})");
                failed.push(*name);
            }
        }
    }
    println!(
        "\ncluster tests: {} passed, {} failed",
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(101);
    }
}
