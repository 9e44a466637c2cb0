//! The transactional key-value store (`rayx::services::kv`): its operations,
//! atomic multi-shard commits, conflicts, and the bank-transfer invariant and
//! a serializability check of recorded histories under shard and coordinator
//! crashes.

mod common;

use common::bank::{self, account, marker, Rng};
use common::LONG;
use rayx::prelude::*;
use rayx::services::kv::{Committed, KvError, KvFaults, KvStore};
use rayx::{Faults, SupervisionEvent, Trigger};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn rt_with(faults: Faults) -> Runtime {
    rayx::Builder::new()
        .num_workers(2)
        .faults(faults)
        .start()
        .expect("runtime")
}

fn rt() -> Runtime {
    rt_with(Faults::default())
}

/// `n` keys named `PREFIX-i`, each on a shard of its own.
fn keys_on_distinct_shards(store: &KvStore, prefix: &str, n: usize) -> Vec<String> {
    let mut seen = BTreeSet::new();
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|k| seen.insert(store.shard_of(k)))
        .take(n)
        .collect()
}

/// Restarts seen on `events` so far.
fn restarts(events: &rayx::Events) -> usize {
    events
        .try_iter()
        .filter(|e| matches!(e, SupervisionEvent::Restarted { .. }))
        .count()
}

#[test]
fn get_put_delete() {
    let rt = rt();
    let store = KvStore::builder("basics").shards(3).open(&rt).unwrap();
    assert_eq!(store.get::<String>("nobody").unwrap(), None);
    store.put("greeting", "hello").unwrap();
    store.put("list", &vec![1u32, 2, 3]).unwrap();
    assert_eq!(
        store.get::<String>("greeting").unwrap().as_deref(),
        Some("hello")
    );
    assert_eq!(store.get::<Vec<u32>>("list").unwrap(), Some(vec![1, 2, 3]));
    store.put("greeting", "bye").unwrap();
    assert_eq!(
        store.get::<String>("greeting").unwrap().as_deref(),
        Some("bye")
    );
    assert!(store.delete("greeting").unwrap());
    assert!(!store.delete("greeting").unwrap(), "already gone");
    assert_eq!(store.get::<String>("greeting").unwrap(), None);
    match store.get::<u32>("list") {
        Err(KvError::Codec { key, .. }) => assert_eq!(key, "list"),
        other => panic!("a list read as a number: {other:?}"),
    }
    // Opening it again finds the same shards and data; another count is refused.
    let again = KvStore::builder("basics").shards(3).open(&rt).unwrap();
    assert_eq!(again.get::<Vec<u32>>("list").unwrap(), Some(vec![1, 2, 3]));
    assert!(matches!(
        KvStore::builder("basics").shards(5).open(&rt),
        Err(KvError::Runtime(Error::InvalidArgument(_)))
    ));
}

#[test]
fn a_transaction_reads_its_own_writes_and_versions_count_commits() {
    let rt = rt();
    let store = KvStore::builder("versions").shards(2).open(&rt).unwrap();
    let mut t = store.begin();
    assert_eq!(t.get::<i32>("k").unwrap(), None);
    t.put("k", &1).unwrap();
    assert_eq!(t.get::<i32>("k").unwrap(), Some(1));
    let c = t.commit().unwrap();
    assert_eq!(c.reads, vec![("k".to_string(), 0)]);
    assert_eq!(c.writes, vec![("k".to_string(), 1)]);
    let mut t = store.begin();
    t.delete("k");
    assert_eq!(t.get::<i32>("k").unwrap(), None);
    assert_eq!(t.commit().unwrap().writes, vec![("k".to_string(), 2)]);
    // A delete keeps the version: the next write is version 3, not 1.
    let mut t = store.begin();
    t.put("k", &7).unwrap();
    assert_eq!(t.commit().unwrap().writes, vec![("k".to_string(), 3)]);
    // A transaction dropped without commit leaves nothing.
    let mut t = store.begin();
    t.put("k", &99).unwrap();
    drop(t);
    assert_eq!(store.get::<i32>("k").unwrap(), Some(7));
}

#[test]
fn a_multi_shard_transaction_commits_atomically() {
    let rt = rt();
    let store = KvStore::builder("atomic").shards(4).open(&rt).unwrap();
    let keys = keys_on_distinct_shards(&store, "k", 4);
    let mut t = store.begin();
    for (i, k) in keys.iter().enumerate() {
        t.put(k, &(i as u64 * 10)).unwrap();
    }
    let c = t.commit().unwrap();
    assert_eq!(c.writes.len(), 4);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(store.get::<u64>(k).unwrap(), Some(i as u64 * 10));
    }
    // One stale read anywhere aborts the whole transaction: nothing applied.
    let mut t = store.begin();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let before: Vec<Option<u64>> = t.get_many(&refs).unwrap();
    store.put(&keys[3], &333u64).unwrap();
    for k in &keys {
        t.put(k, &1u64).unwrap();
    }
    match t.commit() {
        Err(KvError::Conflict { key, .. }) => assert_eq!(key, keys[3]),
        other => panic!("expected a conflict on {}: {other:?}", keys[3]),
    }
    for (i, k) in keys.iter().enumerate().take(3) {
        assert_eq!(store.get::<u64>(k).unwrap(), before[i], "{k} unchanged");
    }
    assert_eq!(store.get::<u64>(&keys[3]).unwrap(), Some(333));
}

#[test]
fn a_conflict_aborts_with_the_typed_error_and_transact_retries_it() {
    let rt = rt();
    let store = KvStore::builder("conflict").shards(2).open(&rt).unwrap();
    store.put("counter", &0u64).unwrap();

    // Two transactions read the same version; the second to commit loses.
    let mut a = store.begin();
    let mut b = store.begin();
    let va: u64 = a.get("counter").unwrap().unwrap();
    let vb: u64 = b.get("counter").unwrap().unwrap();
    a.put("counter", &(va + 1)).unwrap();
    b.put("counter", &(vb + 1)).unwrap();
    a.commit().unwrap();
    let b_id = b.id();
    match b.commit() {
        Err(e @ KvError::Conflict { .. }) => {
            assert!(e.is_retryable());
            assert_eq!(
                e,
                KvError::Conflict {
                    txn: b_id,
                    key: "counter".into()
                }
            );
            assert!(e.to_string().contains("run it again"), "{e}");
        }
        other => panic!("expected a conflict: {other:?}"),
    }

    // transact runs the closure again: the first run is overtaken by a
    // write made from inside it.
    let runs = AtomicU64::new(0);
    let total = store
        .transact(|t| {
            let n: u64 = t.get("counter")?.unwrap_or(0);
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                store.put("counter", &100u64)?;
            }
            t.put("counter", &(n + 1))?;
            Ok(n + 1)
        })
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(total, 101);
    assert_eq!(store.get::<u64>("counter").unwrap(), Some(101));

    // Past max_attempts it gives up, with the last conflict.
    let stubborn = KvStore::builder("conflict")
        .shards(2)
        .max_attempts(3)
        .open(&rt)
        .unwrap();
    match stubborn.transact(|t| {
        let n: u64 = t.get("counter")?.unwrap_or(0);
        store.put("counter", &(n + 1000))?;
        t.put("counter", &n)
    }) {
        Err(KvError::GaveUp { attempts: 3, last }) => {
            assert!(matches!(*last, KvError::Conflict { .. }), "{last}")
        }
        other => panic!("expected GaveUp: {other:?}"),
    }
}

#[test]
fn a_call_after_shutdown_fails_at_once_with_shut_down() {
    let rt = rt();
    let store = KvStore::builder("shut down").shards(2).open(&rt).unwrap();
    let keys = keys_on_distinct_shards(&store, "k", 2);
    let (a, b) = (keys[0].as_str(), keys[1].as_str());
    store.put(a, &1).unwrap();
    // Transactions of each kind, read before the runtime stops.
    let mut two_shards = store.begin();
    let mut one_shard = store.begin();
    let mut read_only = store.begin();
    for t in [&mut two_shards, &mut one_shard, &mut read_only] {
        let _: Vec<Option<i32>> = t.get_many(&[a, b]).unwrap();
    }
    two_shards.put(a, &2).unwrap();
    two_shards.put(b, &2).unwrap();
    one_shard.put(a, &3).unwrap();
    rt.shutdown();

    let shut_down = || KvError::Runtime(Error::ShutDown);
    let runs = AtomicU64::new(0);
    let got = store.transact(|t| {
        runs.fetch_add(1, Ordering::SeqCst);
        t.get::<i32>(a)
    });
    assert_eq!(got, Err(shut_down()), "not retried until it gives up");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "run once");
    assert_eq!(store.get::<i32>(a), Err(shut_down()));
    assert_eq!(store.put(a, &4), Err(shut_down()));
    assert_eq!(store.delete(a), Err(shut_down()));
    assert_eq!(two_shards.commit(), Err(shut_down()));
    assert_eq!(one_shard.commit(), Err(shut_down()));
    assert_eq!(read_only.commit(), Err(shut_down()));
    assert_eq!(store.begin().get::<i32>(a), Err(shut_down()));
    // A cause that cannot pass is not worth a retry, however it is wrapped.
    let wrapped = KvError::Unavailable {
        shard: 0,
        source: Error::ShutDown,
    };
    assert!(!wrapped.is_retryable());
    assert!(!shut_down().is_retryable());

    // The runtime dropped rather than shut down: the same.
    let rt = self::rt();
    let store = KvStore::builder("dropped").shards(2).open(&rt).unwrap();
    store.put("k", &1).unwrap();
    drop(rt);
    assert_eq!(store.get::<i32>("k"), Err(shut_down()));
}

#[test]
fn store_names_with_slashes_keep_their_keys_apart() {
    let rt = rt();
    let open = |name: &str| KvStore::builder(name).shards(1).open(&rt).unwrap();
    // A key of one store spelled like another store's shard count...
    let s = open("s");
    s.put("k/shards", "hello").unwrap();
    let s_d_k = open("s/d/k");
    assert_eq!(
        s.get::<String>("k/shards").unwrap().as_deref(),
        Some("hello")
    );
    assert_eq!(s_d_k.get::<String>("shards").unwrap(), None);
    // ...and the other way: a store's shard count spelled like a key.
    let _t_d_k = open("t/d/k");
    let t = open("t");
    assert_eq!(t.get::<String>("k/shards").unwrap(), None);
    // Data keys, both ways.
    let u = open("u");
    let u_d_v = open("u/d/v");
    u.put("v/d/x", &1).unwrap();
    assert_eq!(u_d_v.get::<i32>("x").unwrap(), None);
    u_d_v.put("x", &2).unwrap();
    assert_eq!(u.get::<i32>("v/d/x").unwrap(), Some(1));
    assert_eq!(u_d_v.get::<i32>("x").unwrap(), Some(2));
    // A name spelling the escape of another.
    let (p_q, p_esc_q) = (open("p/q"), open("p%2Fq"));
    p_q.put("x", &1).unwrap();
    p_esc_q.put("x", &2).unwrap();
    assert_eq!(p_q.get::<i32>("x").unwrap(), Some(1));
    assert_eq!(p_esc_q.get::<i32>("x").unwrap(), Some(2));
}

/// The message of an open refused for an invalid argument.
fn refused(open: Result<KvStore, KvError>) -> String {
    match open {
        Err(KvError::Runtime(Error::InvalidArgument(why))) => why,
        other => panic!("expected InvalidArgument: {other:?}"),
    }
}

#[test]
fn settings_that_cannot_work_are_refused_at_open() {
    let rt = rt();
    let b = || KvStore::builder("settings");
    let why = refused(b().lock_ttl(Duration::ZERO).open(&rt));
    assert!(why.contains("lock_ttl"), "{why}");
    let why = refused(b().max_attempts(0).open(&rt));
    assert!(why.contains("max_attempts"), "{why}");
    let why = refused(b().call_timeout(Duration::ZERO).open(&rt));
    assert!(why.contains("call_timeout"), "{why}");
    let why = refused(b().shards(0).open(&rt));
    assert!(why.contains("shards"), "{why}");
    let long = "n".repeat(rayx::services::MAX_SERVICE_NAME + 1);
    let why = refused(KvStore::builder(long).open(&rt));
    assert!(why.contains("a store's name"), "{why}");
    // A refused open left nothing behind: the store opens with any count.
    let store = b().shards(3).open(&rt).unwrap();
    store.put("k", &1).unwrap();
    assert_eq!(store.get::<i32>("k").unwrap(), Some(1));
}

#[test]
fn reopening_with_other_shard_settings_is_refused_and_client_settings_are_its_own() {
    let rt = rt();
    let ttl = Duration::from_millis(500);
    let b = || KvStore::builder("reopen").shards(2).lock_ttl(ttl);
    let store = b().open(&rt).unwrap();
    store.put("counter", &0u64).unwrap();
    let why = refused(KvStore::builder("reopen").shards(2).open(&rt));
    assert!(why.contains("lock_ttl 500ms, not 2s"), "{why}");
    let why = refused(b().detached().open(&rt));
    assert!(why.contains("detached false, not true"), "{why}");
    let why = refused(
        b().faults(KvFaults {
            shard_mid_apply: 5,
            ..KvFaults::default()
        })
        .open(&rt),
    );
    assert!(why.contains("faults"), "{why}");
    // The client's settings are the opener's: two attempts here.
    let impatient = b()
        .max_attempts(2)
        .call_timeout(Duration::from_secs(5))
        .open(&rt)
        .unwrap();
    match impatient.transact(|t| {
        let n: u64 = t.get("counter")?.unwrap_or(0);
        store.put("counter", &(n + 1))?;
        t.put("counter", &n)
    }) {
        Err(KvError::GaveUp { attempts: 2, .. }) => {}
        other => panic!("expected GaveUp after 2 attempts: {other:?}"),
    }
    assert_eq!(store.get::<u64>("counter").unwrap(), Some(2));
}

/// What became of a transfer, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Fate {
    Committed,
    /// Not enough money: nothing written.
    Declined,
    /// Its coordinator stopped (an injected crash): committed or not.
    InDoubt,
    /// Gave up (after retryable failures): not committed.
    Failed,
}

/// Moves `amount` from `from` to `to` with its marker ([`bank::transfer`]).
fn transfer(store: &KvStore, id: u64, from: usize, to: usize, amount: i64) -> Fate {
    match bank::transfer(store, id, from, to, amount) {
        Ok(true) => Fate::Committed,
        Ok(false) => Fate::Declined,
        Err(KvError::InDoubt { .. }) => Fate::InDoubt,
        Err(KvError::GaveUp { .. }) => Fate::Failed,
        Err(e) => panic!("transfer {id}: unexpected {e}"),
    }
}

/// `n` random transfers with ids `first..first + n`, from a rayx task.
fn transfer_batch(store: KvStore, accounts: usize, first: u64, n: u64) -> Vec<(u64, Fate)> {
    run_transfers(&store, accounts, first, n)
}
rayx::remote!(transfer_batch);

fn run_transfers(store: &KvStore, accounts: usize, first: u64, n: u64) -> Vec<(u64, Fate)> {
    let mut rng = Rng(first * 7919 + 1);
    (first..first + n)
        .map(|id| {
            let from = rng.next(accounts as u64) as usize;
            let to = (from + 1 + rng.next(accounts as u64 - 1) as usize) % accounts;
            let amount = 1 + rng.next(40) as i64;
            (id, transfer(store, id, from, to, amount))
        })
        .collect()
}

/// Reads every account in one read-only transaction.
fn audit(store: &KvStore, accounts: usize) -> Result<Vec<i64>, KvError> {
    let keys: Vec<String> = (0..accounts).map(account).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    store.transact(|t| {
        let v: Vec<Option<i64>> = t.get_many(&refs)?;
        Ok(v.into_iter().map(|b| b.unwrap_or(0)).collect())
    })
}

/// The bank: `threads` threads and `tasks` rayx tasks each make `per`
/// transfers over `accounts` accounts, while an auditor checks the total;
/// then every marker is matched against what the clients were told, and the
/// balances against a replay of exactly the transfers whose markers exist.
fn bank(store: &KvStore, rt: &Runtime, accounts: usize, threads: u64, tasks: u64, per: u64) {
    const START: i64 = 1000;
    let total = START * accounts as i64;
    store
        .transact(|t| {
            for i in 0..accounts {
                t.put(&account(i), &START)?;
            }
            Ok(())
        })
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let auditor = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut audits = 0u64;
            while !stop.load(Ordering::SeqCst) {
                if let Ok(balances) = audit(&store, accounts) {
                    assert_eq!(
                        balances.iter().sum::<i64>(),
                        total,
                        "an audit saw a partial transfer: {balances:?}"
                    );
                    audits += 1;
                }
            }
            audits
        })
    };
    let refs: Vec<_> = (0..tasks)
        .map(|i| {
            rt.task(transfer_batch)
                .remote((store.clone(), accounts, (threads + i) * per, per))
        })
        .collect();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || run_transfers(&store, accounts, i * per, per))
        })
        .collect();
    let mut fates: HashMap<u64, Fate> = HashMap::new();
    for h in handles {
        fates.extend(h.join().expect("a transfer thread panicked"));
    }
    for batch in rt.get(&refs, Some(LONG * 10)).expect("transfer tasks") {
        fates.extend(batch);
    }
    stop.store(true, Ordering::SeqCst);
    let audits = auditor.join().expect("the auditor panicked");
    assert_eq!(
        fates.len() as u64,
        (threads + tasks) * per,
        "every transfer reported"
    );

    // What is in the store now (reads resolve any decided transaction).
    let balances = audit(store, accounts).unwrap();
    assert_eq!(
        balances.iter().sum::<i64>(),
        total,
        "total balance constant"
    );
    let mut replay = vec![START; accounts];
    let mut count = HashMap::<Fate, u64>::new();
    let mut in_doubt_committed = 0;
    for (&id, &fate) in &fates {
        *count.entry(fate).or_default() += 1;
        let m: Option<(usize, usize, i64)> = store.get(&marker(id)).unwrap();
        match (fate, m) {
            (Fate::Committed, Some(_)) => {}
            (Fate::Committed, None) => panic!("transfer {id} was reported committed and is lost"),
            (Fate::InDoubt, Some(_)) => in_doubt_committed += 1,
            (Fate::InDoubt, None) => {}
            (_, Some(_)) => panic!("transfer {id} was reported {fate:?} and is in the store"),
            (_, None) => {}
        }
        if let Some((from, to, amount)) = m {
            replay[from] -= amount;
            replay[to] += amount;
        }
    }
    assert_eq!(
        balances, replay,
        "balances are the replay of exactly the transfers whose markers exist (none lost, none doubled)"
    );
    println!(
        "bank: {count:?}, in doubt but committed {in_doubt_committed}, audits {audits}, balances {balances:?}"
    );
    assert!(count.get(&Fate::Committed).copied().unwrap_or(0) > 0);
}

#[test]
fn a_read_only_audit_never_sees_a_partial_transfer() {
    let rt = rt();
    let store = KvStore::builder("audit").shards(4).open(&rt).unwrap();
    bank(&store, &rt, 8, 2, 0, 150);
}

#[test]
fn bank_transfers_keep_the_total_under_shard_and_coordinator_crashes() {
    let rt = rt_with(Faults {
        crash_actor: Trigger::Probability { p: 0.003, seed: 11 },
        ..Faults::default()
    });
    let events = rt.events();
    let store = KvStore::builder("bank")
        .shards(4)
        .lock_ttl(Duration::from_millis(100))
        .faults(KvFaults {
            shard_after_prepare: 53,
            shard_after_decision: 47,
            shard_mid_apply: 61,
            coordinator_after_prepare: 97,
            coordinator_after_decision: 89,
            coordinator_mid_commit: 83,
        })
        .open(&rt)
        .unwrap();
    bank(&store, &rt, 20, 4, 4, 400);
    assert!(restarts(&events) > 0, "shards crashed and restarted");
}

#[test]
fn a_coordinator_that_stops_leaves_all_or_nothing() {
    let rt = rt();
    for (point, faults, applied) in [
        (
            "after prepare",
            KvFaults {
                coordinator_after_prepare: 1,
                ..KvFaults::default()
            },
            false,
        ),
        (
            "after deciding",
            KvFaults {
                coordinator_after_decision: 1,
                ..KvFaults::default()
            },
            true,
        ),
        (
            "mid commit",
            KvFaults {
                coordinator_mid_commit: 1,
                ..KvFaults::default()
            },
            true,
        ),
    ] {
        let name = format!("coordinator {point}");
        let store = KvStore::builder(&name)
            .shards(3)
            .lock_ttl(Duration::from_millis(50))
            .faults(faults)
            .open(&rt)
            .unwrap();
        let keys = keys_on_distinct_shards(&store, "k", 3);
        for k in &keys {
            store.put(k, &1u32).unwrap(); // one shard each: no coordinator
        }
        let mut t = store.begin();
        for k in &keys {
            let v: u32 = t.get(k).unwrap().unwrap();
            t.put(k, &(v + 1)).unwrap();
        }
        assert!(
            matches!(t.commit(), Err(KvError::InDoubt { .. })),
            "{point}"
        );
        // Each shard settles it the same way: by the decision, or by its TTL.
        let want = if applied { 2 } else { 1 };
        for k in &keys {
            assert_eq!(store.get::<u32>(k).unwrap(), Some(want), "{point}: {k}");
        }
        // And the keys are usable again (a lock left behind expires).
        for k in &keys {
            store.put(k, &10u32).unwrap();
            assert_eq!(store.get::<u32>(k).unwrap(), Some(10), "{point}: {k}");
        }
    }
}

#[test]
fn shards_crashing_at_each_commit_point_lose_nothing() {
    let rt = rt();
    let events = rt.events();
    let store = KvStore::builder("shard crashes")
        .shards(2)
        .faults(KvFaults {
            shard_after_prepare: 3,
            shard_after_decision: 2,
            shard_mid_apply: 4,
            ..KvFaults::default()
        })
        .open(&rt)
        .unwrap();
    let keys = keys_on_distinct_shards(&store, "k", 2);
    let (a, b) = (&keys[0], &keys[1]);
    store
        .transact(|t| {
            t.put(a, &1000i64)?;
            t.put(b, &0i64)
        })
        .unwrap();
    for i in 0..60 {
        // Alternately one shard (one-round commits) and both (two-phase).
        let same_shard = i % 2 == 0;
        store
            .transact(|t| {
                let x: i64 = t.get(a)?.unwrap();
                t.put(a, &(x - 1))?;
                if same_shard {
                    t.put(&format!("{a}-log"), &i)
                } else {
                    let y: i64 = t.get(b)?.unwrap();
                    t.put(b, &(y + 1))
                }
            })
            .unwrap();
    }
    assert_eq!(
        store.get::<i64>(a).unwrap(),
        Some(940),
        "60 debits, each once"
    );
    assert_eq!(
        store.get::<i64>(b).unwrap(),
        Some(30),
        "30 credits, each once"
    );
    assert!(restarts(&events) >= 10, "the shards crashed along the way");
}

#[test]
fn shard_state_survives_restarts() {
    let rt = rt_with(Faults {
        crash_actor: Trigger::EveryNth(5),
        ..Faults::default()
    });
    let events = rt.events();
    let store = KvStore::builder("restarts").shards(2).open(&rt).unwrap();
    for i in 0..40u32 {
        store.put(&format!("k{i}"), &i).unwrap();
    }
    for i in 0..40u32 {
        let key = format!("k{i}");
        let v = store.transact(|t| t.get::<u32>(&key)).unwrap();
        assert_eq!(v, Some(i));
    }
    assert!(restarts(&events) >= 5);
}

/// Checks a history for serializability: every version of a key is written
/// by one committed transaction, versions have no gaps, and the graph of
/// write-write, write-read and read-write (anti-)dependencies between
/// committed transactions has no cycle (Adya's G0, G1 and G2).
fn check_serializable(history: &[Committed]) {
    let mut writer: HashMap<(&str, u64), usize> = HashMap::new();
    let mut latest: HashMap<&str, u64> = HashMap::new();
    for (i, c) in history.iter().enumerate() {
        for (k, v) in &c.writes {
            assert!(
                writer.insert((k, *v), i).is_none(),
                "two commits wrote {k} version {v}"
            );
            let l = latest.entry(k).or_default();
            *l = (*l).max(*v);
        }
    }
    for (k, &max) in &latest {
        for v in 1..=max {
            assert!(
                writer.contains_key(&(*k, v)),
                "{k} version {v} has no committed writer"
            );
        }
    }
    let mut edges: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); history.len()];
    for (i, c) in history.iter().enumerate() {
        for (k, v) in &c.reads {
            if *v > 0 {
                let w = *writer
                    .get(&(k.as_str(), *v))
                    .unwrap_or_else(|| panic!("{} read {k} v{v}, never committed", c.txn));
                if w != i {
                    edges[w].insert(i); // wr
                }
            }
            if let Some(&next) = writer.get(&(k.as_str(), v + 1)) {
                if next != i {
                    edges[i].insert(next); // rw
                }
            }
        }
        for (k, v) in &c.writes {
            if *v > 1 {
                edges[writer[&(k.as_str(), v - 1)]].insert(i); // ww
            }
        }
    }
    // Kahn's algorithm: a serial order exists iff every node is taken.
    let mut indegree = vec![0usize; history.len()];
    for e in &edges {
        for &j in e {
            indegree[j] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..history.len()).filter(|&i| indegree[i] == 0).collect();
    let mut ordered = 0;
    while let Some(i) = ready.pop() {
        ordered += 1;
        for &j in &edges[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    assert_eq!(
        ordered,
        history.len(),
        "the dependency graph has a cycle: not serializable"
    );
}

#[test]
fn the_history_checker_accepts_a_serial_history_and_rejects_a_write_skew() {
    let rt = rt();
    let store = KvStore::builder("checker").shards(1).open(&rt).unwrap();
    let t = |reads: &[(&str, u64)], writes: &[(&str, u64)]| Committed {
        txn: store.begin().id(),
        reads: reads.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        writes: writes.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    };
    let serial = [
        t(&[("x", 0), ("y", 0)], &[("x", 1)]),
        t(&[("x", 1), ("y", 0)], &[("y", 1)]),
    ];
    check_serializable(&serial);
    // Both read x and y at 0, each wrote one: no serial order has that.
    let skew = [
        t(&[("x", 0), ("y", 0)], &[("x", 1)]),
        t(&[("x", 0), ("y", 0)], &[("y", 1)]),
    ];
    assert!(std::panic::catch_unwind(|| check_serializable(&skew)).is_err());
    // A lost update: two commits made the same version.
    let lost = [t(&[("x", 0)], &[("x", 1)]), t(&[("x", 0)], &[("x", 1)])];
    assert!(std::panic::catch_unwind(|| check_serializable(&lost)).is_err());
}

/// Runs `attempt` until it succeeds, after a retryable failure backing off
/// as [`KvStore::transact`] does (50 µs doubling to 20 ms, jittered): workers
/// that retry at once keep each other's transactions conflicting and the
/// shards from the CPU. Panics on any other failure, and after 500 attempts
/// (some 10 s), so a livelock fails the test instead of stretching it.
fn with_backoff<T>(rng: &mut Rng, mut attempt: impl FnMut() -> Result<T, KvError>) -> T {
    for n in 0..500u32 {
        match attempt() {
            Ok(v) => return v,
            Err(e) if e.is_retryable() => {
                let base = 50u64 << n.min(9);
                let micros = base.min(20_000) * (512 + rng.next(1024)) / 1024;
                std::thread::sleep(Duration::from_micros(micros));
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    panic!("a transaction still conflicted after 500 attempts")
}

#[test]
fn concurrent_transactions_under_crashes_are_serializable() {
    let rt = rt_with(Faults {
        crash_actor: Trigger::Probability { p: 0.005, seed: 3 },
        ..Faults::default()
    });
    let store = KvStore::builder("history")
        .shards(3)
        .lock_ttl(Duration::from_millis(100))
        .faults(KvFaults {
            shard_after_prepare: 41,
            shard_after_decision: 37,
            shard_mid_apply: 43,
            ..KvFaults::default()
        })
        .open(&rt)
        .unwrap();
    let keys: Vec<String> = (0..8).map(|i| format!("h{i}")).collect();
    let history = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4u64)
        .map(|w| {
            let (store, keys, history) = (store.clone(), keys.clone(), history.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(w * 104_729 + 7);
                // Its own, so retries leave the workload as it was.
                let mut jitter = Rng(w * 7_727 + 5);
                for _ in 0..150 {
                    let n = 1 + rng.next(3) as usize;
                    let picked: Vec<&str> = (0..n)
                        .map(|_| keys[rng.next(keys.len() as u64) as usize].as_str())
                        .collect();
                    let writes = rng.next(4) != 0; // a quarter read-only
                    let target = picked[rng.next(picked.len() as u64) as usize];
                    let committed = with_backoff(&mut jitter, || {
                        let mut t = store.begin();
                        let vals = t.get_many::<u64>(&picked)?;
                        if writes {
                            let sum: u64 = vals.iter().flatten().copied().max().unwrap_or(0);
                            t.put(target, &(sum + 1))?;
                        }
                        t.commit()
                    });
                    history.lock().push(committed);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a worker panicked");
    }
    let history = history.lock();
    assert_eq!(history.len(), 600);
    check_serializable(&history);
    // And the store ends where the history says (crashes still come: a
    // read the crash cut short is made again).
    let mut rng = Rng(7);
    for k in &keys {
        let last = history
            .iter()
            .flat_map(|c| c.writes.iter())
            .filter(|(w, _)| w == k)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(0);
        let c = with_backoff(&mut rng, || {
            let mut t = store.begin();
            let _: Option<u64> = t.get(k)?;
            t.commit()
        });
        assert_eq!(c.reads, vec![(k.clone(), last)], "{k}");
    }
}

/// The store's keys as registers: each key's value is the last put's.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Register(Option<i64>);

#[derive(Clone, Debug)]
enum RegisterOp {
    Get(String),
    Put(String, i64),
}

impl common::linearizability::Model for Register {
    type Op = RegisterOp;
    /// What a get returned (a put returns nothing).
    type Ret = Option<i64>;
    fn step(&self, op: &RegisterOp, ret: &Option<i64>) -> Option<Register> {
        match op {
            RegisterOp::Get(_) => (*ret == self.0).then(|| self.clone()),
            RegisterOp::Put(_, v) => Some(Register(Some(*v))),
        }
    }
}

/// Concurrent gets and puts of a few keys, from threads and with shard
/// crashes, recorded with their call and return times: each key's history is
/// linearizable (a get returns the value of the put linearized last before
/// it, in an order that respects real time). A put that failed may still have
/// taken effect, at any time after its call: it is recorded as never having
/// returned. A failed get is left out (it had no effect).
#[test]
fn single_key_gets_and_puts_are_linearizable_under_shard_crashes() {
    use common::linearizability::{check, check_partitioned, Clock, Operation};
    let rt = rt_with(Faults {
        crash_actor: Trigger::Probability { p: 0.02, seed: 5 },
        ..Faults::default()
    });
    let events = rt.events();
    let store = KvStore::builder("registers").shards(2).open(&rt).unwrap();
    let keys: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    let clock = Clock::default();
    let next_value = Arc::new(AtomicU64::new(1));
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let (store, keys, next_value) = (store.clone(), keys.clone(), next_value.clone());
            std::thread::spawn(move || {
                let mut history = Vec::new();
                let mut seed = 0x2545_f491_4f6c_dd1du64 ^ (client as u64 + 1);
                for _ in 0..60 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let key = keys[(seed % keys.len() as u64) as usize].clone();
                    let call = clock.now();
                    if seed.is_multiple_of(3) {
                        // Values are unique, so a get names the put it saw.
                        let v = next_value.fetch_add(1, Ordering::Relaxed) as i64;
                        let done = store.put(&key, &v);
                        let returned = if done.is_ok() { clock.now() } else { u64::MAX };
                        history.push(Operation {
                            client,
                            op: RegisterOp::Put(key, v),
                            ret: None,
                            call,
                            returned,
                        });
                    } else if let Ok(got) = store.get::<i64>(&key) {
                        history.push(Operation {
                            client,
                            op: RegisterOp::Get(key),
                            ret: got,
                            call,
                            returned: clock.now(),
                        });
                    }
                }
                history
            })
        })
        .collect();
    let history: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    let gets = history
        .iter()
        .filter(|o| matches!(o.op, RegisterOp::Get(_)))
        .count();
    assert!(
        gets > 100,
        "too few gets succeeded to check anything: {gets}"
    );
    assert!(restarts(&events) >= 2, "the shards crashed along the way");
    check_partitioned(&Register(None), &history, |op| match op {
        RegisterOp::Get(k) | RegisterOp::Put(k, _) => k.clone(),
    })
    .unwrap_or_else(|e| panic!("the store's keys are not linearizable registers: {e}"));

    // The check can fail: a get that returns a value overwritten before it
    // was called is refused.
    let stale = vec![
        Operation {
            client: 0,
            op: RegisterOp::Put("k".into(), 1),
            ret: None,
            call: 0,
            returned: 1,
        },
        Operation {
            client: 0,
            op: RegisterOp::Put("k".into(), 2),
            ret: None,
            call: 2,
            returned: 3,
        },
        Operation {
            client: 1,
            op: RegisterOp::Get("k".into()),
            ret: Some(1),
            call: 4,
            returned: 5,
        },
    ];
    assert!(
        check(&Register(None), &stale).is_err(),
        "a stale read passed"
    );
}

/// `n` bytes that encode as `n` bytes and a short header.
fn bytes_of(n: usize) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![7u8; n])
}

/// What a shard cannot keep in one record of the runtime's store is refused
/// for good when it alone is too large, and aborted (to run again) when it
/// only does not fit beside other transactions prepared there at the time.
#[test]
fn writes_too_large_to_keep_are_refused_or_aborted_and_nothing_stays_locked() {
    let rt = rt();
    let mib = 1 << 20;
    // One write over the store's record: refused, permanent.
    let store = KvStore::builder("sizes").shards(2).open(&rt).unwrap();
    match store.put("huge", &bytes_of(rayx::MAX_KV_VALUE + 1)) {
        Err(e @ KvError::Runtime(Error::InvalidArgument(_))) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("cannot be kept"), "{e}");
        }
        other => panic!("a write over the limit: {other:?}"),
    }
    store.put("huge", &1u8).unwrap();
    // Two transactions left prepared on shard 0 (their coordinator stopped
    // after the vote), 12 MiB each: a third of 12 MiB does not fit beside
    // them until the lock TTL ends them.
    let ttl = Duration::from_millis(300);
    let slow = KvStore::builder("crowd")
        .shards(2)
        .lock_ttl(ttl)
        .faults(KvFaults {
            coordinator_after_prepare: 1,
            ..KvFaults::default()
        })
        .open(&rt)
        .unwrap();
    let on = |shard: usize, tag: &str| {
        (0..)
            .map(|i| format!("{tag}-{i}"))
            .find(|k| slow.shard_of(k) == shard)
            .unwrap()
    };
    for t in 0..2 {
        let mut txn = slow.begin();
        txn.put(&on(0, &format!("big{t}")), &bytes_of(12 * mib))
            .unwrap();
        txn.put(&on(1, &format!("small{t}")), &1u8).unwrap();
        assert!(matches!(txn.commit(), Err(KvError::InDoubt { .. })));
    }
    // A write of one key commits on its shard alone, past the fault; one
    // attempt at a time (`put` runs again at once, up to max_attempts).
    let other = on(0, "other");
    let write = || {
        let mut txn = slow.begin();
        txn.put(&other, &bytes_of(12 * mib))?;
        txn.commit()
    };
    match write() {
        Err(e @ KvError::Aborted { .. }) => {
            assert!(e.is_retryable());
            assert!(e.to_string().contains("could not keep it"), "{e}");
        }
        other => panic!("a write crowded out: {other:?}"),
    }
    // Run again, it passes once the two are aborted at the TTL.
    let deadline = std::time::Instant::now() + LONG;
    while let Err(e) = write() {
        assert!(e.is_retryable(), "{e}");
        assert!(std::time::Instant::now() < deadline, "never fit: {e}");
        std::thread::yield_now();
    }
    assert_eq!(
        slow.get::<serde_bytes::ByteBuf>(&other)
            .unwrap()
            .map(|b| b.len()),
        Some(12 * mib)
    );
    // A commit whose decision (every key it writes) is over the record:
    // refused at once, and its keys are free again at once.
    let wide = KvStore::builder("wide")
        .shards(4)
        .lock_ttl(LONG)
        .open(&rt)
        .unwrap();
    let keys: Vec<String> = (0..700)
        .map(|i| format!("{i:05}{}", "k".repeat(60_000)))
        .collect();
    let mut txn = wide.begin();
    for k in &keys {
        txn.put(k, &1u8).unwrap();
    }
    match txn.commit() {
        Err(e @ KvError::Runtime(Error::InvalidArgument(_))) => {
            assert!(e.to_string().contains("cannot be stored"), "{e}")
        }
        other => panic!("a decision over the limit: {:?}", other.map(|_| ())),
    }
    let mut again = wide.begin();
    again.put(&keys[0], &2u8).unwrap();
    again.put(&keys[699], &2u8).unwrap();
    again.commit().expect("its keys are not locked");
    assert_eq!(wide.get::<u8>(&keys[1]).unwrap(), None);
}
