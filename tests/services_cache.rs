//! The distributed cache (`rayx::services::cache`): get/put/delete, LRU by
//! bytes, TTL, counts, single flight under concurrency, rendezvous moves,
//! shard crashes (injected faults, restarts, kills), bounded waits, ring
//! changes back to back, the cache's lifetime (its keys in the store), and a
//! recorded concurrent history checked against what the cache guarantees.

mod common;

use common::{eventually, gate, open, pass, LONG};
use parking_lot::Mutex;
use rayx::prelude::*;
use rayx::services::cache::{Cache, CacheError, ShardId};
use rayx::{Faults, Trigger};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

// ---- the functions the cache computes with ------------------------------------

/// How often each key was computed (keys are unique per test: tests run at once).
static RUNS: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Default::default);
/// Gates a computation waits on, by key.
static GATES: LazyLock<Mutex<HashMap<String, u64>>> = LazyLock::new(Default::default);

fn runs(key: &str) -> u64 {
    RUNS.lock().get(key).copied().unwrap_or(0)
}

fn count(key: &str) -> u64 {
    let mut r = RUNS.lock();
    let n = r.entry(key.to_string()).or_default();
    *n += 1;
    *n
}

/// The value of `key`: `key` reversed, with the run's number.
fn compute(key: String) -> String {
    let n = count(&key);
    let gate = GATES.lock().get(&key).copied();
    if let Some(g) = gate {
        pass(g);
    }
    format!("{}#{n}", key.chars().rev().collect::<String>())
}

/// Fails its first run of each key (a task returning `Err`), succeeds after.
fn fail_once(key: String) -> Result<String, String> {
    let n = count(&key);
    let gate = GATES.lock().get(&key).copied();
    if let Some(g) = gate {
        pass(g);
    }
    if n == 1 {
        return Err(format!("no value for {key} yet"));
    }
    Ok(format!("{key}#{n}"))
}

/// Calls the cache from inside a task (the cache travels as an argument).
fn compute_via_task(cache: Cache<String, String>, key: String) -> String {
    cache
        .get_or_compute(&key, compute)
        .expect("get_or_compute in a task")
}

/// A computation that never waits.
fn instant(key: String) -> String {
    format!("instant {key}")
}

/// A computation of a number that never waits.
fn ident(x: u64) -> u64 {
    x
}

rayx::remote!(
    compute,
    fail_once,
    compute_via_task,
    stamped,
    instant,
    ident
);

fn rt() -> Runtime {
    rayx::Builder::new().num_workers(2).start().unwrap()
}

/// A runtime whose every actor crashes before a call with probability `p`.
fn crashing_rt(p: f64, seed: u64) -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .faults(Faults {
            crash_actor: Trigger::Probability { p, seed },
            ..Faults::default()
        })
        .start()
        .unwrap()
}

fn s(x: &str) -> String {
    x.to_string()
}

/// The cache's value of `key` as `compute` makes it (its n-th run).
fn expected(key: &str, n: u64) -> String {
    format!("{}#{n}", key.chars().rev().collect::<String>())
}

// ---- basics ---------------------------------------------------------------------

#[test]
fn get_put_delete() {
    let rt = rt();
    let cache: Cache<String, Vec<u32>> = Cache::builder(&rt, "basics").shards(3).start().unwrap();
    assert_eq!(cache.shards(), vec![ShardId(0), ShardId(1), ShardId(2)]);
    assert_eq!(cache.get(&s("a")).unwrap(), None);
    assert!(cache.put(&s("a"), &vec![1, 2, 3], None).unwrap());
    assert_eq!(cache.get(&s("a")).unwrap(), Some(vec![1, 2, 3]));
    assert!(cache.put(&s("a"), &vec![4], None).unwrap(), "overwrite");
    assert_eq!(cache.get(&s("a")).unwrap(), Some(vec![4]));
    for i in 0..50u32 {
        cache.put(&format!("k{i}"), &vec![i], None).unwrap();
    }
    for i in 0..50u32 {
        assert_eq!(cache.get(&format!("k{i}")).unwrap(), Some(vec![i]));
    }
    assert!(cache.delete(&s("a")).unwrap());
    assert!(!cache.delete(&s("a")).unwrap(), "already gone");
    assert_eq!(cache.get(&s("a")).unwrap(), None);
    // A zero TTL stores nothing and removes what was there.
    assert!(!cache.put(&s("k1"), &vec![9], Some(Duration::ZERO)).unwrap());
    assert_eq!(cache.get(&s("k1")).unwrap(), None);
    let stats = cache.stats().unwrap();
    assert_eq!(stats.shards.len(), 3);
    assert_eq!(stats.total.entries, 49);
    // Each shard is used (rendezvous spreads 49 keys over 3).
    assert!(
        stats.shards.iter().all(|s| s.counts.entries > 5),
        "{stats:?}"
    );
}

#[test]
fn lru_evicts_by_bytes_least_recently_used_first() {
    let rt = rt();
    // One shard of 40 bytes: a one-byte key (u8) and a 9-byte value
    // (a msgpack bin header of 2 and 7 bytes... measured below).
    let cache: Cache<u8, serde_bytes::ByteBuf> = Cache::builder(&rt, "lru")
        .shards(1)
        .capacity_per_shard(40)
        .start()
        .unwrap();
    let v = serde_bytes::ByteBuf::from(vec![7u8; 8]); // 10 bytes encoded, 11 with the key
    for k in 0..3u8 {
        assert!(cache.put(&k, &v, None).unwrap());
    }
    let stats = cache.stats().unwrap();
    assert_eq!((stats.total.entries, stats.total.bytes), (3, 33));
    assert!(cache.get(&0).unwrap().is_some(), "0 is now the most recent");
    assert!(cache.put(&3, &v, None).unwrap());
    assert_eq!(
        cache.get(&1).unwrap(),
        None,
        "1 was the least recently used"
    );
    for k in [0u8, 2, 3] {
        assert!(cache.get(&k).unwrap().is_some(), "{k} stays");
    }
    // A value that needs two entries' room evicts the two least recent: 0, 2.
    let big = serde_bytes::ByteBuf::from(vec![1u8; 25]);
    assert!(cache.put(&4, &big, None).unwrap());
    assert_eq!(cache.get(&0).unwrap(), None);
    assert_eq!(cache.get(&2).unwrap(), None);
    assert!(cache.get(&3).unwrap().is_some());
    // Larger than the shard: not stored.
    let huge = serde_bytes::ByteBuf::from(vec![1u8; 64]);
    assert!(!cache.put(&5, &huge, None).unwrap());
    let stats = cache.stats().unwrap();
    assert_eq!(stats.total.evictions, 3);
    assert_eq!(stats.total.entries, 2);
    assert!(stats.total.bytes <= 40);
}

#[test]
fn expired_entries_miss_and_are_reclaimed() {
    let rt = rt();
    let cache: Cache<String, String> = Cache::builder(&rt, "ttl").shards(2).start().unwrap();
    cache
        .put(&s("brief"), &s("x"), Some(Duration::from_millis(100)))
        .unwrap();
    cache.put(&s("forever"), &s("y"), None).unwrap();
    cache
        .put(&s("long"), &s("z"), Some(Duration::from_secs(3600)))
        .unwrap();
    // Real time must pass: poll the condition, bounded.
    assert!(eventually(LONG, || cache
        .get(&s("brief"))
        .unwrap()
        .is_none()));
    assert_eq!(cache.get(&s("forever")).unwrap(), Some(s("y")));
    assert_eq!(cache.get(&s("long")).unwrap(), Some(s("z")));
    let stats = cache.stats().unwrap();
    assert_eq!(stats.total.expirations, 1);
    assert_eq!(
        stats.total.entries, 2,
        "the expired entry's bytes are reclaimed"
    );

    // An expired entry is reclaimed without being read, at the shard's next call.
    cache
        .put(&s("unread"), &s("x"), Some(Duration::from_millis(50)))
        .unwrap();
    assert!(eventually(LONG, || cache
        .stats()
        .unwrap()
        .total
        .expirations
        == 2));
    assert_eq!(cache.stats().unwrap().total.entries, 2);

    // A computed value lives for the builder's TTL.
    let key = s("ttl-computed");
    let short: Cache<String, String> = Cache::builder(&rt, "ttl-computed")
        .shards(1)
        .ttl(Some(Duration::from_millis(100)))
        .start()
        .unwrap();
    assert_eq!(
        short.get_or_compute(&key, compute).unwrap(),
        expected(&key, 1)
    );
    assert!(eventually(LONG, || short.get(&key).unwrap().is_none()));
    assert_eq!(
        short.get_or_compute(&key, compute).unwrap(),
        expected(&key, 2)
    );
}

#[test]
fn counts_hits_misses_and_computations() {
    let rt = rt();
    let cache: Cache<String, String> = Cache::builder(&rt, "counts").shards(2).start().unwrap();
    let key = s("counts-a");
    assert_eq!(cache.get(&key).unwrap(), None); // miss
    assert_eq!(
        cache.get_or_compute(&key, compute).unwrap(),
        expected(&key, 1)
    ); // miss, computed
    assert_eq!(
        cache.get_or_compute(&key, compute).unwrap(),
        expected(&key, 1)
    ); // hit
    assert_eq!(cache.get(&key).unwrap(), Some(expected(&key, 1))); // hit
    let t = cache.stats().unwrap().total;
    assert_eq!(
        (t.hits, t.misses, t.computations, t.entries),
        (2, 2, 1, 1),
        "{t:?}"
    );
    assert_eq!(runs(&key), 1);
}

// ---- single flight --------------------------------------------------------------

#[test]
fn concurrent_misses_of_one_key_run_the_function_once() {
    let rt = rt();
    let cache: Cache<String, String> = Cache::builder(&rt, "flight").shards(4).start().unwrap();
    let key = s("flight-one");
    let g = gate();
    GATES.lock().insert(key.clone(), g);
    let threads = 12;
    let tasks = 6;
    let callers: Vec<_> = (0..threads)
        .map(|_| {
            let (c, k) = (cache.clone(), key.clone());
            std::thread::spawn(move || c.get_or_compute(&k, compute))
        })
        .collect();
    // Callers inside tasks too (each gets the cache by serialization).
    let in_tasks: Vec<_> = (0..tasks)
        .map(|_| {
            rt.task(compute_via_task)
                .remote((cache.clone(), key.clone()))
        })
        .collect();
    // Every caller has missed (and waits) before the computation may finish.
    let all = (threads + tasks) as u64;
    assert!(eventually(LONG, || cache.stats().unwrap().total.misses == all));
    open(g);
    for c in callers {
        assert_eq!(c.join().unwrap().unwrap(), expected(&key, 1));
    }
    for r in in_tasks {
        assert_eq!(r.get().unwrap(), expected(&key, 1));
    }
    assert_eq!(runs(&key), 1, "one computation for {all} misses");
    let t = cache.stats().unwrap().total;
    assert_eq!((t.computations, t.misses, t.entries), (1, all, 1));
    assert_eq!(cache.get(&key).unwrap(), Some(expected(&key, 1)));
    // The computation's object is freed once everyone has read it.
    assert!(
        eventually(LONG, || rt.memory().objects == 0),
        "{:?}",
        rt.memory()
    );
}

#[test]
fn a_failed_computation_fails_every_waiter_and_is_not_cached() {
    let rt = rt();
    let cache: Cache<String, Result<String, String>> =
        Cache::builder(&rt, "fail").shards(2).start().unwrap();
    let key = s("fail-one");
    let g = gate();
    GATES.lock().insert(key.clone(), g);
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let (c, k) = (cache.clone(), key.clone());
            std::thread::spawn(move || c.get_or_compute(&k, fail_once))
        })
        .collect();
    assert!(eventually(LONG, || cache.stats().unwrap().total.misses == 6));
    open(g);
    for c in callers {
        match c.join().unwrap() {
            Err(CacheError::Rayx(Error::TaskFailed { cause, .. })) => {
                assert!(cause.contains("no value"), "{cause}")
            }
            other => panic!("every waiter sees the failure: {other:?}"),
        }
    }
    assert_eq!(runs(&key), 1);
    assert_eq!(cache.get(&key).unwrap(), None, "a failure is not cached");
    assert_eq!(
        cache.get_or_compute(&key, fail_once).unwrap(),
        Ok(format!("{key}#2")),
        "the next miss computes again"
    );
    assert_eq!(cache.get(&key).unwrap(), Some(Ok(format!("{key}#2"))));
}

#[test]
fn a_write_during_a_computation_wins_over_its_result() {
    let rt = rt();
    let cache: Cache<String, String> = Cache::builder(&rt, "race").shards(2).start().unwrap();
    for (i, write) in ["put", "delete"].into_iter().enumerate() {
        let key = format!("race-{i}");
        let g = gate();
        GATES.lock().insert(key.clone(), g);
        let caller = {
            let (c, k) = (cache.clone(), key.clone());
            std::thread::spawn(move || c.get_or_compute(&k, compute))
        };
        assert!(
            eventually(LONG, || runs(&key) == 1),
            "the computation started"
        );
        match write {
            "put" => assert!(cache.put(&key, &s("written"), None).unwrap()),
            _ => assert!(!cache.delete(&key).unwrap()),
        }
        open(g);
        // The caller gets its computation's result, but the cache keeps the write.
        assert_eq!(caller.join().unwrap().unwrap(), expected(&key, 1));
        let after = cache.get(&key).unwrap();
        match write {
            "put" => assert_eq!(after, Some(s("written"))),
            _ => assert_eq!(after, None),
        }
    }
}

// ---- bounded waits --------------------------------------------------------------

/// Runs `call` on a thread; its result, or a panic if it has not returned
/// within `LONG` (it is blocked: the bug the caller tests for).
fn within_long<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.recv_timeout(LONG)
        .expect("the call is still blocked after LONG")
}

#[test]
fn a_caller_waits_for_another_computation_at_most_its_timeout() {
    let rt = rt();
    let cache: Cache<String, String> = Cache::builder(&rt, "bounded")
        .shards(1)
        .claim_lease(Duration::from_secs(1))
        .compute_timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    let key = s("bounded-hang");
    // The first caller's computation hangs until the gate opens (at the end).
    let g = gate();
    GATES.lock().insert(key.clone(), g);
    let first = {
        let (c, k) = (cache.clone(), key.clone());
        std::thread::spawn(move || c.get_or_compute(&k, compute))
    };
    assert!(
        eventually(LONG, || runs(&key) == 1),
        "the computation started"
    );
    // A second caller, with another (instant) function and its own timeout,
    // gives up while the computation still hangs.
    let second = {
        let (c, k) = (cache.clone(), key.clone());
        within_long(move || c.get_or_compute_timeout(&k, instant, Duration::from_millis(100)))
    };
    match second {
        Err(e @ CacheError::Timeout { .. }) => assert!(e.is_retryable(), "{e}"),
        other => panic!("the second caller times out: {other:?}"),
    }
    // The claimer too, at the builder's compute_timeout.
    let first = within_long(move || first.join().unwrap());
    assert!(
        matches!(first, Err(CacheError::Timeout { .. })),
        "{first:?}"
    );
    // A caller with a longer timeout waits for the hung computation only as
    // long as it counts as running, then computes the key again.
    let third = {
        let (c, k) = (cache.clone(), key.clone());
        within_long(move || c.get_or_compute_timeout(&k, instant, LONG))
    };
    assert_eq!(third.unwrap(), format!("instant {key}"));
    // The hung computation's late result does not replace it.
    open(g);
    assert_eq!(cache.get(&key).unwrap(), Some(format!("instant {key}")));
    assert!(matches!(
        cache.get_or_compute_timeout(&key, instant, Duration::ZERO),
        Err(CacheError::Rayx(Error::InvalidArgument(_)))
    ));
}

// ---- settings ---------------------------------------------------------------------

#[test]
fn nonsensical_settings_are_refused_at_start() {
    let rt = rt();
    let refused = |b: rayx::services::cache::CacheBuilder<'_, u32, u32>, what: &str| match b.start()
    {
        Err(CacheError::Rayx(Error::InvalidArgument(m))) => m,
        other => panic!("{what} is refused: {other:?}"),
    };
    refused(Cache::builder(&rt, "zero").shards(0), "no shards");
    let long = "c".repeat(rayx::services::MAX_SERVICE_NAME + 1);
    let m = refused(Cache::builder(&rt, long), "a name too long");
    assert!(m.contains("a cache's name"), "{m}");
    let m = refused(
        Cache::builder(&rt, "zero").capacity_per_shard(0),
        "capacity 0",
    );
    assert!(m.contains("capacity_per_shard"), "{m}");
    let m = refused(
        Cache::builder(&rt, "zero").ttl(Some(Duration::ZERO)),
        "ttl 0",
    );
    assert!(m.contains("ttl"), "{m}");
    let m = refused(
        Cache::builder(&rt, "zero").claim_lease(Duration::ZERO),
        "lease 0",
    );
    assert!(m.contains("claim_lease"), "{m}");
    let m = refused(
        Cache::builder(&rt, "zero").compute_timeout(Duration::ZERO),
        "compute_timeout 0",
    );
    assert!(m.contains("compute_timeout"), "{m}");
    // The smallest sensible settings start.
    let c: Cache<u32, u32> = Cache::builder(&rt, "one")
        .shards(1)
        .capacity_per_shard(1)
        .ttl(Some(Duration::from_nanos(1)))
        .claim_lease(Duration::from_nanos(1))
        .compute_timeout(Duration::from_nanos(1))
        .start()
        .unwrap();
    assert!(!c.put(&1, &1, None).unwrap(), "larger than the shard");
}

// ---- rendezvous -----------------------------------------------------------------

#[test]
fn adding_or_removing_a_shard_moves_only_its_keys() {
    let rt = rt();
    let cache: Cache<u32, u32> = Cache::builder(&rt, "moves").shards(4).start().unwrap();
    let keys: Vec<u32> = (0..2000).collect();
    for &k in &keys {
        cache.put(&k, &(k * 10), None).unwrap();
    }
    let before: Vec<ShardId> = keys.iter().map(|k| cache.shard_of(k).unwrap()).collect();

    let added = cache.add_shard().unwrap();
    assert_eq!(added, ShardId(4));
    let after: Vec<ShardId> = keys.iter().map(|k| cache.shard_of(k).unwrap()).collect();
    let moved: Vec<usize> = (0..keys.len()).filter(|&i| before[i] != after[i]).collect();
    assert!(
        moved.iter().all(|&i| after[i] == added),
        "keys move only to the new shard"
    );
    let share = moved.len() as f64 / keys.len() as f64;
    assert!(
        (0.14..0.26).contains(&share),
        "about 1/5 moved, not {share}"
    );
    // The keys that stayed still hit; the moved ones miss (nothing is copied).
    for (i, k) in keys.iter().enumerate() {
        let got = cache.get(k).unwrap();
        if before[i] == after[i] {
            assert_eq!(got, Some(k * 10), "key {k} stayed");
        } else {
            assert_eq!(got, None, "key {k} moved");
        }
    }
    let stats = cache.stats().unwrap();
    assert_eq!(stats.total.entries as usize, keys.len() - moved.len());

    // Removing an original shard moves its keys and only them.
    let victim = ShardId(1);
    let held: Vec<u32> = keys
        .iter()
        .copied()
        .filter(|k| cache.shard_of(k).unwrap() == victim)
        .collect();
    let others_before: BTreeMap<u32, ShardId> = keys
        .iter()
        .filter(|k| !held.contains(k))
        .map(|&k| (k, cache.shard_of(&k).unwrap()))
        .collect();
    cache.remove_shard(victim).unwrap();
    assert!(!cache.shards().contains(&victim));
    for (k, shard) in &others_before {
        assert_eq!(cache.shard_of(k).unwrap(), *shard, "key {k} did not move");
    }
    let share = held.len() as f64 / keys.len() as f64;
    assert!(
        (0.14..0.26).contains(&share),
        "the shard held about 1/5, not {share}"
    );
    for k in &held {
        assert_eq!(
            cache.get(k).unwrap(),
            None,
            "key {k} of the removed shard misses"
        );
        cache.put(k, &(k * 10), None).unwrap();
    }
    for &k in &keys {
        let got = cache.get(&k).unwrap();
        assert!(got.is_none() || got == Some(k * 10), "never a wrong value");
    }
    assert!(matches!(
        cache.remove_shard(victim),
        Err(CacheError::Rayx(Error::InvalidArgument(_)))
    ));
}

#[test]
fn a_ring_change_reaches_clients_in_other_tasks() {
    // A client decoded in a task has its own copy of the ring: a shard tells
    // it the ring moved, and it follows.
    let rt = rt();
    let cache: Cache<String, String> = Cache::builder(&rt, "follow").shards(2).start().unwrap();
    let stale: Cache<String, String> = rt.decode(&rt.encode(&cache).unwrap()).unwrap();
    cache.add_shard().unwrap();
    cache.add_shard().unwrap();
    cache.remove_shard(ShardId(0)).unwrap();
    for i in 0..100 {
        let k = format!("follow-{i}");
        stale.put(&k, &k, None).unwrap();
        assert_eq!(cache.get(&k).unwrap(), Some(k.clone()));
    }
    assert_eq!(stale.shards(), cache.shards());
}

// ---- failures ---------------------------------------------------------------------

#[test]
fn a_restarted_shard_loses_only_its_keys_which_are_computed_again() {
    let rt = rt();
    let cache: Cache<String, String> = Cache::builder(&rt, "restart").shards(3).start().unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("restart-{i}")).collect();
    for k in &keys {
        assert_eq!(cache.get_or_compute(k, compute).unwrap(), expected(k, 1));
    }
    let victim = cache.shard_of(&keys[0]).unwrap();
    let events = rt.events();
    cache.restart_shard(victim);
    // Wait for the restart itself, not for time.
    let deadline = Instant::now() + LONG;
    while !matches!(
        events.recv_timeout(LONG),
        Ok(rayx::SupervisionEvent::Restarted { .. })
    ) {
        assert!(Instant::now() < deadline, "the shard never restarted");
    }
    for k in &keys {
        let on_victim = cache.shard_of(k).unwrap() == victim;
        let n = if on_victim { 2 } else { 1 };
        assert_eq!(
            cache.get_or_compute(k, compute).unwrap(),
            expected(k, n),
            "{k}"
        );
        assert_eq!(runs(k), n);
    }
    assert_eq!(
        cache.shards().len(),
        3,
        "a restarted shard stays in the ring"
    );
}

#[test]
fn a_dead_shard_leaves_the_ring_and_its_keys_move() {
    let rt = rt();
    let cache: Cache<String, String> = Cache::builder(&rt, "dead").shards(3).start().unwrap();
    let keys: Vec<String> = (0..60).map(|i| format!("dead-{i}")).collect();
    for k in &keys {
        cache.get_or_compute(k, compute).unwrap();
    }
    let victim = cache.shard_of(&keys[0]).unwrap();
    let on_victim: Vec<bool> = keys
        .iter()
        .map(|k| cache.shard_of(k).unwrap() == victim)
        .collect();
    cache.kill_shard(victim);
    for (k, &lost) in keys.iter().zip(&on_victim) {
        let n = if lost { 2 } else { 1 };
        assert_eq!(
            cache.get_or_compute(k, compute).unwrap(),
            expected(k, n),
            "{k}"
        );
        assert_ne!(cache.shard_of(k).unwrap(), victim);
    }
    assert_eq!(cache.shards().len(), 2);
}

#[test]
fn injected_shard_crashes_never_give_a_wrong_value() {
    // Every actor of this runtime crashes before 3% of its calls; the shards
    // restart (empty) and the interrupted calls are sent again.
    let rt = crashing_rt(0.03, 11);
    let events = rt.events();
    let cache: Cache<String, String> = Cache::builder(&rt, "crashes").shards(3).start().unwrap();
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let c = cache.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let k = format!("crash-{}", (i * 7 + t) % 40);
                    let v = c.get_or_compute(&k, compute).unwrap();
                    let runs = runs(&k);
                    // Some run of this key's computation, never another key's.
                    let n: u64 = v.rsplit('#').next().unwrap().parse().unwrap();
                    assert!(n >= 1 && n <= runs, "{k}: {v} after {runs} runs");
                    assert_eq!(v, expected(&k, n));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let restarts = events
        .try_iter()
        .filter(|e| matches!(e, rayx::SupervisionEvent::Restarted { .. }))
        .count();
    assert!(restarts > 0, "the faults fired");
    assert_eq!(cache.shards().len(), 3);
}

#[test]
fn calls_follow_ring_changes_made_back_to_back() {
    // One thread adds a shard and removes the oldest, without pause, while
    // three write, read and compute (one writer per key). No call fails, and
    // none reads a value its writer replaced.
    let rt = rt();
    let cache: Cache<u64, u64> = Cache::builder(&rt, "churn").shards(3).start().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let changer = {
        let (c, done) = (cache.clone(), done.clone());
        std::thread::spawn(move || {
            let mut changes = 0;
            while !done.load(Ordering::Relaxed) {
                let added = c.add_shard().expect("add_shard");
                let oldest = c.shards()[0];
                assert_ne!(oldest, added);
                c.remove_shard(oldest).expect("remove_shard");
                changes += 2;
            }
            changes
        })
    };
    let workers: Vec<_> = (0..3u64)
        .map(|w| {
            let c = cache.clone();
            std::thread::spawn(move || {
                for i in 1..=150u64 {
                    let k = w * 1000 + i % 7;
                    let v = w * 1_000_000 + i;
                    c.put(&k, &v, None)
                        .unwrap_or_else(|e| panic!("put {k}: {e}"));
                    let got = c.get(&k).unwrap_or_else(|e| panic!("get {k}: {e}"));
                    assert!(got.is_none() || got == Some(v), "{k}: {got:?}, not {v}");
                    let got = c
                        .get_or_compute(&k, ident)
                        .unwrap_or_else(|e| panic!("get_or_compute {k}: {e}"));
                    assert!(got == v || got == k, "{k}: {got}, not {v}");
                }
            })
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
    done.store(true, Ordering::Relaxed);
    let changes = changer.join().unwrap();
    for r in results {
        r.unwrap();
    }
    assert!(changes >= 2, "the ring changed");
    assert_eq!(cache.shards().len(), 3);
}

// ---- lifetime -----------------------------------------------------------------------

/// The keys a cache may have left in the store under `prefix` (epochs up to 40).
fn keys_left(rt: &Runtime, prefix: &str) -> Vec<String> {
    let mut keys = vec![format!("{prefix}/members")];
    for e in 0..=40 {
        keys.push(format!("{prefix}/ring/{e}"));
        keys.push(format!("{prefix}/change/{e}"));
    }
    keys.into_iter()
        .filter(|k| rt.kv_get(k).unwrap().is_some())
        .collect()
}

#[test]
fn a_dropped_cache_leaves_nothing_in_the_store() {
    let rt = rt();
    let mut prefixes = Vec::new();
    for i in 0..40u64 {
        let c: Cache<u64, u64> = Cache::builder(&rt, "dropped").shards(2).start().unwrap();
        c.put(&i, &i, None).unwrap();
        let added = c.add_shard().unwrap();
        assert_eq!(c.get_or_compute(&(i + 100), ident).unwrap(), i + 100);
        c.remove_shard(added).unwrap();
        // A borrower (decoded, as in a task) dropped before the owner.
        let borrower: Cache<u64, u64> = rt.decode(&rt.encode(&c).unwrap()).unwrap();
        borrower.get(&i).unwrap();
        drop(borrower);
        prefixes.push(c.store_prefix().to_string());
    }
    for p in &prefixes {
        assert_eq!(keys_left(&rt, p), Vec::<String>::new(), "cache {p}");
    }
}

#[test]
fn a_cache_keeps_a_bounded_set_of_keys_however_often_its_ring_changes() {
    let rt = rt();
    let cache: Cache<u64, u64> = Cache::builder(&rt, "changes").shards(2).start().unwrap();
    for _ in 0..10 {
        let added = cache.add_shard().unwrap();
        cache.remove_shard(added).unwrap();
    }
    // A borrower with an old ring changes it too: its stale reservation of a
    // pruned epoch is refused and it follows the published ring.
    let stale: Cache<u64, u64> = rt.decode(&rt.encode(&cache).unwrap()).unwrap();
    cache.add_shard().unwrap();
    let added = cache.add_shard().unwrap();
    cache.remove_shard(added).unwrap();
    let p = cache.store_prefix().to_string();
    let epoch = 24;
    assert_eq!(
        keys_left(&rt, &p),
        vec![format!("{p}/members"), format!("{p}/ring/{epoch}")]
    );
    // Ids 2..=11 came and went, 12 stays, 13 went: the borrower's is 14.
    assert_eq!(stale.add_shard().unwrap(), ShardId(14));
    assert_eq!(
        stale.shards(),
        [0, 1, 12, 14].map(ShardId).to_vec(),
        "on the published ring"
    );
    for k in 0..100 {
        cache.put(&k, &k, None).unwrap();
        assert_eq!(stale.get(&k).unwrap(), Some(k));
    }
    assert_eq!(
        keys_left(&rt, &p),
        vec![format!("{p}/members"), format!("{p}/ring/{}", epoch + 1)]
    );
}

#[test]
fn destroy_deletes_the_keys_and_detached_caches_outlive_their_owner() {
    let rt = rt();
    let cache: Cache<u64, u64> = Cache::builder(&rt, "destroyed").shards(2).start().unwrap();
    let borrower: Cache<u64, u64> = rt.decode(&rt.encode(&cache).unwrap()).unwrap();
    cache.put(&1, &1, None).unwrap();
    let p = cache.store_prefix().to_string();
    cache.destroy().unwrap();
    assert_eq!(keys_left(&rt, &p), Vec::<String>::new());
    for r in [borrower.get(&1), cache.get(&1)] {
        assert!(matches!(r, Err(CacheError::Destroyed { .. })), "{r:?}");
    }
    assert!(matches!(
        borrower.add_shard(),
        Err(CacheError::Destroyed { .. })
    ));
    cache.destroy().unwrap();
    drop(cache);
    assert_eq!(
        keys_left(&rt, &p),
        Vec::<String>::new(),
        "nothing recreated"
    );

    // A detached cache stays when its owner goes; a borrower destroys it.
    let owner: Cache<u64, u64> = Cache::builder(&rt, "detached")
        .shards(2)
        .detached()
        .start()
        .unwrap();
    owner.put(&7, &70, None).unwrap();
    let borrower: Cache<u64, u64> = rt.decode(&rt.encode(&owner).unwrap()).unwrap();
    let p = owner.store_prefix().to_string();
    drop(owner);
    assert_eq!(borrower.get(&7).unwrap(), Some(70));
    assert_eq!(keys_left(&rt, &p).len(), 2);
    borrower.destroy().unwrap();
    assert_eq!(keys_left(&rt, &p), Vec::<String>::new());
}

// ---- a checked history ----------------------------------------------------------

/// One operation as a client saw it: when it began and ended (ns since the
/// test began), and what it did or found.
#[derive(Debug, Clone)]
struct Op {
    start: u64,
    end: u64,
    key: u32,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Put(String),
    Delete,
    Get(Option<String>),
    Compute(String),
}

static STAMP: AtomicU64 = AtomicU64::new(0);
static CLOCK: LazyLock<Instant> = LazyLock::new(Instant::now);
/// A computation that ran: its key, when it started and when it finished.
type Ran = (u32, u64, u64);
/// Computations that ran, by the value they made.
static COMPUTED: LazyLock<Mutex<HashMap<String, Ran>>> = LazyLock::new(Default::default);

fn now_ns() -> u64 {
    CLOCK.elapsed().as_nanos() as u64
}

/// A computation whose every value is unique, recording when it ran.
fn stamped(key: u32) -> String {
    let start = now_ns();
    let v = format!("c{key}-{}", STAMP.fetch_add(1, Ordering::Relaxed));
    COMPUTED.lock().insert(v.clone(), (key, start, now_ns()));
    v
}

/// Checks the cache's guarantee: a value read (by `get` or `get_or_compute`)
/// was written for its key by a write that began before the read ended, and
/// no write of the key both began after that write ended and ended before
/// the read began. Writes are puts, deletes and computations (which begin
/// when their key is claimed and end when their task finishes; their value is
/// readable from when the task starts).
fn check(history: &[Op]) -> Result<usize, String> {
    struct W {
        start: u64,
        end: u64,
    }
    let mut writes: HashMap<u32, Vec<W>> = HashMap::new();
    let mut by_value: HashMap<&str, Ran> = HashMap::new();
    let computed = COMPUTED.lock().clone();
    for op in history {
        match &op.kind {
            Kind::Put(v) => {
                by_value.insert(v, (op.key, op.start, op.end));
                writes.entry(op.key).or_default().push(W {
                    start: op.start,
                    end: op.end,
                });
            }
            Kind::Delete => writes.entry(op.key).or_default().push(W {
                start: op.start,
                end: op.end,
            }),
            _ => {}
        }
    }
    // A computation began when its key was claimed: no later than the start
    // of the earliest call that returned its value (its claimer's did).
    let mut claimed: HashMap<&str, u64> = HashMap::new();
    for op in history {
        if let Kind::Compute(v) = &op.kind {
            let t = claimed.entry(v).or_insert(op.start);
            *t = (*t).min(op.start);
        }
    }
    for (v, &(key, ran, end)) in &computed {
        // Readable only once its task ran; a write from its claim on.
        by_value.insert(v, (key, ran, end));
        let start = claimed.get(v.as_str()).copied().unwrap_or(ran).min(ran);
        writes.entry(key).or_default().push(W { start, end });
    }
    let mut reads = 0;
    for op in history {
        let value = match &op.kind {
            Kind::Get(Some(v)) | Kind::Compute(v) => v,
            _ => continue,
        };
        reads += 1;
        let &(key, w_start, w_end) = by_value
            .get(value.as_str())
            .ok_or_else(|| format!("{op:?} read a value nobody wrote"))?;
        if key != op.key {
            return Err(format!("{op:?} read the value of key {key}"));
        }
        if w_start >= op.end {
            return Err(format!("{op:?} read a value written after it ended"));
        }
        let newer = writes[&key]
            .iter()
            .find(|w| w.start > w_end && w.end < op.start);
        if let Some(w) = newer {
            return Err(format!(
                "{op:?} read a value ({w_start}..{w_end}) that a write ({}..{}) had replaced before it began",
                w.start, w.end
            ));
        }
    }
    Ok(reads)
}

/// Where a history's ring changes are: clients arrive at change `n` and
/// wait; the changer starts it when all have arrived, which lets them go on.
#[derive(Default)]
struct Phase {
    /// (clients arrived at the change being waited for, changes started)
    state: Mutex<(u64, u64)>,
    moved: parking_lot::Condvar,
}

impl Phase {
    /// A client's arrival at change `n`; returns once it has started.
    fn arrive_and_wait(&self, n: u64) {
        let mut s = self.state.lock();
        s.0 += 1;
        self.moved.notify_all();
        let deadline = Instant::now() + LONG;
        while s.1 < n {
            assert!(
                !self.moved.wait_until(&mut s, deadline).timed_out(),
                "change {n} never started"
            );
        }
    }

    /// The changer: waits until `clients` arrived at change `n`, starts it.
    fn start_when_arrived(&self, n: u64, clients: u64) {
        let mut s = self.state.lock();
        let deadline = Instant::now() + LONG;
        while s.0 < clients {
            assert!(
                !self.moved.wait_until(&mut s, deadline).timed_out(),
                "the clients never reached change {n}"
            );
        }
        *s = (0, n);
        self.moved.notify_all();
    }
}

#[test]
fn a_concurrent_history_with_crashes_and_ring_changes_checks_out() {
    let rt = crashing_rt(0.01, 5);
    let cache: Cache<u32, String> = Cache::builder(&rt, "history")
        .shards(3)
        .capacity_per_shard(200) // small: evictions happen too
        .start()
        .unwrap();
    let history = Arc::new(Mutex::new(Vec::new()));
    // The ring changes while the clients run: each change waits until every
    // client has made 100 more operations and waits for it, then the clients
    // go on as the change starts.
    const CLIENTS: u64 = 4;
    const CHANGES: u64 = 3;
    let phase = Arc::new(Phase::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (c, h, phase) = (cache.clone(), history.clone(), phase.clone());
            std::thread::spawn(move || {
                let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for i in 0..400 {
                    if i % 100 == 0 && (1..=CHANGES).contains(&(i / 100)) {
                        phase.arrive_and_wait(i / 100);
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let key = (x % 6) as u32;
                    let start = now_ns();
                    let kind = match x % 10 {
                        0..=2 => {
                            let v = format!("p{key}-{t}-{i}");
                            c.put(&key, &v, None).unwrap();
                            Kind::Put(v)
                        }
                        3 => {
                            c.delete(&key).unwrap();
                            Kind::Delete
                        }
                        4..=6 => Kind::Get(c.get(&key).unwrap()),
                        _ => Kind::Compute(c.get_or_compute(&key, stamped).unwrap()),
                    };
                    h.lock().push(Op {
                        start,
                        end: now_ns(),
                        key,
                        kind,
                    });
                }
            })
        })
        .collect();
    let mut added = None;
    for change in 1..=CHANGES {
        phase.start_when_arrived(change, CLIENTS);
        match change {
            1 => added = Some(cache.add_shard().unwrap()),
            2 => cache.remove_shard(ShardId(0)).unwrap(),
            _ => cache.remove_shard(added.unwrap()).unwrap(),
        }
    }
    for c in clients {
        c.join().unwrap();
    }
    let history = history.lock().clone();
    let reads = check(&history).unwrap_or_else(|e| panic!("history violates the guarantee: {e}"));
    let hits = history
        .iter()
        .filter(|o| matches!(&o.kind, Kind::Get(Some(_))))
        .count();
    assert!(
        reads > 100 && hits > 20,
        "the history has reads to check: {reads}, {hits} hits"
    );
}

#[test]
fn the_checker_catches_a_stale_read() {
    // The checker itself: a read of a value a completed put had replaced.
    let h = vec![
        Op {
            start: 0,
            end: 10,
            key: 1,
            kind: Kind::Put(s("old")),
        },
        Op {
            start: 20,
            end: 30,
            key: 1,
            kind: Kind::Put(s("new")),
        },
        Op {
            start: 40,
            end: 50,
            key: 1,
            kind: Kind::Get(Some(s("old"))),
        },
    ];
    assert!(check(&h).unwrap_err().contains("replaced"));
    let h = vec![
        Op {
            start: 0,
            end: 10,
            key: 1,
            kind: Kind::Put(s("old")),
        },
        Op {
            start: 20,
            end: 30,
            key: 1,
            kind: Kind::Delete,
        },
        Op {
            start: 25,
            end: 50,
            key: 1,
            kind: Kind::Get(Some(s("old"))),
        },
    ];
    assert!(
        check(&h).is_ok(),
        "concurrent with the delete: either is fine"
    );
    let h = vec![
        Op {
            start: 0,
            end: 10,
            key: 2,
            kind: Kind::Put(s("two")),
        },
        Op {
            start: 20,
            end: 30,
            key: 1,
            kind: Kind::Get(Some(s("two"))),
        },
    ];
    assert!(check(&h).unwrap_err().contains("key 2"));
}
