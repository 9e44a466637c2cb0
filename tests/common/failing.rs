//! Tasks that fail on purpose, shared by the failure tests: attempts counted per
//! key, panics on chosen attempts, tasks that wait for a cancel or a gate.
#![allow(dead_code)]

use parking_lot::Mutex;
use rayx::prelude::*;
use rayx::Faults;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// Attempts per key, so a task can fail its first tries and then succeed.
pub static ATTEMPTS: LazyLock<Mutex<HashMap<u64, u32>>> = LazyLock::new(Default::default);
static KEYS: AtomicU64 = AtomicU64::new(1);

pub fn key() -> u64 {
    KEYS.fetch_add(1, Ordering::Relaxed)
}
pub fn attempt(key: u64) -> u32 {
    let mut a = ATTEMPTS.lock();
    let n = a.entry(key).or_default();
    *n += 1;
    *n
}

pub fn flaky(key: u64, fail_first: u32) -> u32 {
    let n = attempt(key);
    if n <= fail_first {
        panic!("transient failure {n}");
    }
    n
}
pub fn fatal(key: u64) -> u32 {
    attempt(key);
    panic!("fatal failure");
}
pub fn double(x: u64) -> u64 {
    x * 2
}
/// Marks `key` started, then works until cancelled (at most a minute); counts
/// the attempt and panics on seeing the cancel if `panic_on_cancel`.
pub fn until_cancelled(key: u64, panic_on_cancel: bool) -> u32 {
    let n = attempt(key);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !rayx::cancelled() {
        assert!(std::time::Instant::now() < deadline, "never cancelled");
        std::thread::yield_now();
    }
    SAW_CANCEL.lock().push(key);
    if panic_on_cancel {
        panic!("stopping: cancelled");
    }
    n
}
/// Starts `until_cancelled(child)` and waits for it.
pub fn parent_of(child: u64) -> u32 {
    let rt = Runtime::current().expect("in a task");
    let r = rt.task(until_cancelled).remote((child, false));
    r.get().unwrap_or(0)
}
pub fn held(gate: u64) -> u64 {
    super::pass(gate)
}
/// Marks `key` started, then blocks on the gate, ignoring any cancel.
pub fn stuck_on(key: u64, gate: u64) -> u64 {
    attempt(key);
    super::pass(gate)
}
pub static SAW_CANCEL: LazyLock<Mutex<Vec<u64>>> = LazyLock::new(Default::default);
pub fn saw_cancel(key: u64) -> bool {
    SAW_CANCEL.lock().contains(&key)
}
pub fn started(key: u64) -> bool {
    ATTEMPTS.lock().contains_key(&key)
}
rayx::remote!(
    flaky,
    fatal,
    double,
    until_cancelled,
    parent_of,
    held,
    stuck_on,
    big,
    sum_of
);

/// Counts its runs under `key`; returns a large value (it lands in the store).
pub fn big(key: u64, fill: u8) -> Vec<u8> {
    attempt(key);
    vec![fill; 4096]
}
/// Counts its runs under `key`; sums its argument.
pub fn sum_of(key: u64, v: Vec<u8>) -> u64 {
    attempt(key);
    v.iter().map(|&b| b as u64).sum()
}

pub fn rt2() -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .start()
        .expect("runtime")
}

pub fn with_faults(faults: Faults) -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .faults(faults)
        .start()
        .expect("runtime")
}
