//! A bank on the transactional key-value store: 20 accounts over 4 shards,
//! thousands of transfers from 8 threads at once, each a transaction that
//! moves money between two accounts and writes the transfer's receipt; an
//! auditor reads every balance in read-only transactions meanwhile. At the
//! end the total is what it was, and the balances are the replay of exactly
//! the receipts in the store.
//!
//! `cargo run --release --example bank`

use rayx::services::kv::{KvError, KvStore};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const ACCOUNTS: usize = 20;
const START: i64 = 1_000;
const THREADS: u64 = 8;
const TRANSFERS: u64 = 500; // per thread

fn account(i: usize) -> String {
    format!("account-{i:02}")
}

fn receipt(id: u64) -> String {
    format!("receipt-{id}")
}

/// Moves `amount` if `from` has it; true if it did.
fn transfer(bank: &KvStore, id: u64, from: usize, to: usize, amount: i64) -> Result<bool, KvError> {
    let (a, b) = (account(from), account(to));
    bank.transact(|txn| {
        let balances: Vec<Option<i64>> = txn.get_many(&[&a, &b])?;
        let (x, y) = (balances[0].unwrap_or(0), balances[1].unwrap_or(0));
        if x < amount {
            return Ok(false);
        }
        txn.put(&a, &(x - amount))?;
        txn.put(&b, &(y + amount))?;
        txn.put(&receipt(id), &(from, to, amount))?;
        Ok(true)
    })
}

fn balances(bank: &KvStore) -> Result<Vec<i64>, KvError> {
    let keys: Vec<String> = (0..ACCOUNTS).map(account).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    bank.transact(|txn| {
        let v: Vec<Option<i64>> = txn.get_many(&keys)?;
        Ok(v.into_iter().map(|b| b.unwrap_or(0)).collect())
    })
}

fn main() -> Result<(), KvError> {
    let rt = rayx::init()?;
    let bank = KvStore::builder("bank").shards(4).open(&rt)?;
    bank.transact(|txn| {
        for i in 0..ACCOUNTS {
            txn.put(&account(i), &START)?;
        }
        Ok(())
    })?;
    let total = START * ACCOUNTS as i64;
    let started = std::time::Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let auditor = {
        let (bank, stop) = (bank.clone(), stop.clone());
        std::thread::spawn(move || -> Result<u64, KvError> {
            let mut audits = 0;
            while !stop.load(Ordering::Relaxed) {
                let sum: i64 = balances(&bank)?.iter().sum();
                assert_eq!(sum, total, "an audit saw money appear or vanish");
                audits += 1;
            }
            Ok(audits)
        })
    };
    let clients: Vec<_> = (0..THREADS)
        .map(|t| {
            let bank = bank.clone();
            std::thread::spawn(move || -> Result<Vec<u64>, KvError> {
                let mut seed = t * 7919 + 17;
                let mut next = |n: u64| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % n
                };
                let mut done = Vec::new();
                for i in 0..TRANSFERS {
                    let id = t * TRANSFERS + i;
                    let from = next(ACCOUNTS as u64) as usize;
                    let to = (from + 1 + next(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
                    if transfer(&bank, id, from, to, 1 + next(50) as i64)? {
                        done.push(id);
                    }
                }
                Ok(done)
            })
        })
        .collect();
    let mut committed = Vec::new();
    for c in clients {
        committed.extend(c.join().expect("a client panicked")?);
    }
    stop.store(true, Ordering::Relaxed);
    let audits = auditor.join().expect("the auditor panicked")?;
    let elapsed = started.elapsed();

    let end = balances(&bank)?;
    let mut replay = vec![START; ACCOUNTS];
    let mut receipts = 0;
    for id in 0..THREADS * TRANSFERS {
        if let Some((from, to, amount)) = bank.get::<(usize, usize, i64)>(&receipt(id))? {
            replay[from] -= amount;
            replay[to] += amount;
            receipts += 1;
        }
    }
    println!(
        "{} transfers tried from {THREADS} threads in {elapsed:.2?}: {} committed, {} declined (not enough money)",
        THREADS * TRANSFERS,
        committed.len(),
        THREADS * TRANSFERS - committed.len() as u64
    );
    println!("{audits} audits during the run, each saw the total {total}");
    println!("balances: {end:?}");
    println!(
        "total now {} (was {total}); receipts in the store {receipts} (committed {}); balances == replay of the receipts: {}",
        end.iter().sum::<i64>(),
        committed.len(),
        end == replay
    );
    assert_eq!(end.iter().sum::<i64>(), total);
    assert_eq!(receipts, committed.len());
    assert_eq!(end, replay);
    Ok(())
}
