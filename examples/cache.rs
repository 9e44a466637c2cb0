//! The distributed cache: a slow function cached by key, eight callers
//! missing one key at once (one task computes it), a TTL, a shard added
//! (only its keys move), and the counters.
//!
//! Run: `cargo run --release --example cache`

use rayx::prelude::*;
use rayx::services::cache::Cache;
use std::sync::atomic::{AtomicU64, Ordering};

static COMPUTED: AtomicU64 = AtomicU64::new(0);

/// A slow lookup: what the cache saves us from repeating.
fn profile(user: u64) -> String {
    COMPUTED.fetch_add(1, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100));
    format!("user {user}: {} followers", user * 37 % 1000)
}
rayx::remote!(profile);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = rayx::init()?;
    let cache: Cache<u64, String> = Cache::builder(&rt, "profiles")
        .shards(3)
        .capacity_per_shard(16 << 10)
        .ttl(Some(Duration::from_secs(300)))
        .scheduling(Scheduling::Spread) // over the nodes, in a cluster
        .start()?;

    // Eight callers miss user 42 at once: one task computes it.
    let t = std::time::Instant::now();
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            std::thread::spawn(move || cache.get_or_compute(&42, profile))
        })
        .collect();
    for c in callers {
        c.join().expect("a caller")?;
    }
    println!(
        "8 concurrent misses of user 42: {} computation(s), {:.0?}",
        COMPUTED.load(Ordering::Relaxed),
        t.elapsed()
    );
    let t = std::time::Instant::now();
    let v = cache.get_or_compute(&42, profile)?;
    println!("then a hit: {v:?} in {:.1?}", t.elapsed());

    // Puts, with and without a TTL.
    for user in 0..200 {
        cache.put(&user, &format!("user {user}: preloaded"), None)?;
    }
    cache.put(
        &1000,
        &"a guest".to_string(),
        Some(Duration::from_millis(50)),
    )?;
    std::thread::sleep(Duration::from_millis(100));
    println!("guest after its TTL: {:?}", cache.get(&1000)?);

    // Another shard takes about a quarter of the keys (they miss once).
    let before: Vec<_> = (0..200)
        .map(|u| cache.shard_of(&u))
        .collect::<Result<_, _>>()?;
    let added = cache.add_shard()?;
    let now: Vec<_> = (0..200)
        .map(|u| cache.shard_of(&u))
        .collect::<Result<_, _>>()?;
    let to_new = before.iter().zip(&now).filter(|(b, n)| b != n).count();
    println!("added {added}: {to_new} of 200 keys moved to it, the others stayed");

    let stats = cache.stats()?;
    for s in &stats.shards {
        println!(
            "  {}: {} entries, {} of {} bytes, {} hits, {} misses, {} evictions",
            s.shard,
            s.counts.entries,
            s.counts.bytes,
            s.capacity,
            s.counts.hits,
            s.counts.misses,
            s.counts.evictions
        );
    }
    let t = stats.total;
    println!(
        "total: {} hits, {} misses, {} computations, {} expirations",
        t.hits, t.misses, t.computations, t.expirations
    );
    Ok(())
}
