//! A sharded cache with single-flight computation: [`Cache`].
//!
//! ```
//! use rayx::prelude::*;
//! use rayx::services::cache::Cache;
//!
//! fn render(page: u32) -> String { format!("<h1>page {page}</h1>") }
//! rayx::remote!(render);
//!
//! let rt = rayx::init()?;
//! let cache: Cache<u32, String> = Cache::builder(&rt, "pages")
//!     .shards(4)
//!     .capacity_per_shard(1 << 20)
//!     .start()?;
//! assert_eq!(cache.get(&7)?, None);
//! assert_eq!(cache.get_or_compute(&7, render)?, "<h1>page 7</h1>"); // a task ran
//! assert_eq!(cache.get(&7)?.as_deref(), Some("<h1>page 7</h1>"));  // now a hit
//! cache.put(&8, &"custom".to_string(), Some(Duration::from_secs(60)))?;
//! assert!(cache.delete(&8)?);
//! let stats = cache.stats()?;
//! assert_eq!((stats.total.hits, stats.total.misses, stats.total.computations), (1, 2, 1));
//! # Ok::<(), rayx::Error>(())
//! ```
//!
//! # How it is built
//!
//! - **Shards** are async actors registered with
//!   [`remote_actor!`](crate::remote_actor), so in a cluster the head places
//!   them on any node ([`CacheBuilder::scheduling`], e.g. `Scheduling::Spread`)
//!   and restarts them elsewhere when their node dies. Each holds an LRU store
//!   of encoded keys and values within a byte budget (an entry weighs its
//!   key's and its value's encoded bytes; a hit, an insert and an eviction are
//!   O(1)), expiries (an expired entry is a miss and its bytes are reclaimed at
//!   the shard's next call, via a min-heap: O(log n)), and counters.
//! - **Routing** is rendezvous (highest-random-weight) hashing of the key's
//!   encoding over the shards' ids: adding a shard moves to it only the keys
//!   it now wins (about 1/(n+1)), removing one moves only its own keys.
//!   Keys are equal when their encodings are.
//! - **Membership** is a ring of shards with an epoch, published in the
//!   runtime's key-value store ([`Runtime::kv_put`]; the head's in a cluster).
//!   Every call carries the caller's epoch; a shard at another epoch answers
//!   "moved" and the client refreshes its ring (or, if the shard is behind —
//!   it restarted — tells it the newer one). A change reserves the next epoch
//!   in the store, tells every shard the new ring (each drops the keys it no
//!   longer owns) and only then publishes it, so no client routes by a ring
//!   that a shard would contradict. A shard that died for good is removed the
//!   same way by the first client that finds it dead.
//! - **Single flight.** [`Cache::get_or_compute`] asks the key's shard to
//!   claim the key. On the first miss the shard records a pending
//!   computation and tells that caller to compute; the caller submits the
//!   function as one rayx task and hands the shard the task's `ObjectRef`.
//!   Later misses get that same ref (a miss arriving in the microseconds
//!   between the claim and the ref waits inside the shard, parked, not
//!   polling); all of them read the task's result, and the shard stores the
//!   first value sent back under that claim. A failed task is reported to
//!   every waiter and nothing is cached. A claim whose ref never arrives
//!   within the lease ([`CacheBuilder::claim_lease`], 10 s: its caller died)
//!   is taken over by the next miss.
//! - **Failures.** A shard restarts with an empty store (its keys miss and
//!   are computed again, on it); calls interrupted by its crash are sent again
//!   (`max_task_retries` is unlimited; every call is safe to repeat). A shard
//!   that died for good leaves the ring: its keys move to the other shards,
//!   as misses; the other keys stay where they are.
//!
//! # What a reader sees
//!
//! Writes are [`put`](Cache::put), [`delete`](Cache::delete) and the store of
//! a computed value. The cache guarantees, per key:
//!
//! - a [`get`](Cache::get) returns either nothing or a value written for
//!   that key by a write that began before the get ended;
//! - that write is not older than any write of the key that completed
//!   before the get began: once a `put` or `delete` returned, no later get
//!   returns what it replaced (a computation still running when a write
//!   completes is not stored);
//! - a miss is always allowed (eviction, expiry, a lost shard).
//!
//! [`get_or_compute`] returns the stored value (as a get would), or the
//! result of a computation of the key claimed after every write of the key
//! that completed before the call began. Concurrent misses
//! of one key on a live shard run the function once; it runs again only
//! after that computation failed or was dropped (the key was written or
//! deleted meanwhile, its shard restarted, its claimer vanished).
//!
//! # Limits
//!
//! Membership changes ([`add_shard`](Cache::add_shard),
//! [`remove_shard`](Cache::remove_shard)) from two clients at once are
//! ordered by the reservation of the next epoch: the loser takes the
//! winner's ring and tries again on it. A client that dies between
//! reserving an epoch and publishing it leaves the ring
//! unable to change. The client's calls block (use it from threads, tasks
//! and sync actors, not from an async actor's handler). Values are copied
//! into the reply of each hit.
//!
//! [`get_or_compute`]: Cache::get_or_compute

mod lru;
mod ring;
mod shard;

use crate::actor::{AsyncCall, Dispatches};
use crate::{
    ActorHandle, Data, Error, Message, ObjectRef, RemoteFunction, Result, Retries, Runtime,
    Scheduling, WeakRuntime,
};
use parking_lot::RwLock;
use ring::{Member, Ring};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shard::{
    Abandon, Blob, CacheShard, Claim, Claimed, Computing, Delete, Fill, Get, Put, Served, SetRing,
    ShardConfig, Stats,
};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a call is tried again after its ring moved or its shard died.
const ATTEMPTS: usize = 16;
/// How long a client waits for a ring a shard has announced to be published.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// The id of one shard of a cache (never reused within the cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId(pub u64);

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}", self.0)
    }
}

/// What a shard (or the whole cache) counted and holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Lookups that found a live value.
    pub hits: u64,
    /// Lookups that found none (a caller woken to look again counts once).
    pub misses: u64,
    /// Entries evicted to make room (least recently used first).
    pub evictions: u64,
    /// Entries dropped because their time was up.
    pub expirations: u64,
    /// Computations started by `get_or_compute` (one per claim).
    pub computations: u64,
    /// Entries held now.
    pub entries: u64,
    /// Bytes held now (keys' and values' encodings).
    pub bytes: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
        self.computations += o.computations;
        self.entries += o.entries;
        self.bytes += o.bytes;
    }
}

/// One shard's counters (since it last started) and budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardStats {
    /// The shard.
    pub shard: ShardId,
    /// Its byte budget.
    pub capacity: u64,
    /// What it counted and holds.
    pub counts: Counts,
}

/// Every shard's counters, and their sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Per shard, in the ring's order.
    pub shards: Vec<ShardStats>,
    /// The sum over the shards.
    pub total: Counts,
}

/// What every client of one cache shares: how its shards start, and where its
/// ring is published.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Config {
    capacity: u64,
    ttl: Option<Duration>,
    lease: Duration,
    scheduling: Scheduling,
    max_restarts: Retries,
    /// This cache's keys in the runtime's key-value store.
    prefix: String,
}

impl Config {
    fn key(&self, what: &str) -> String {
        format!("{}/{what}", self.prefix)
    }
}

/// Options of a cache before it starts.
pub struct CacheBuilder<'r, K, V> {
    rt: &'r Runtime,
    name: String,
    shards: usize,
    config: Config,
    _types: PhantomData<fn(K) -> V>,
}

impl<K: Data + Clone, V: Data + Clone> CacheBuilder<'_, K, V> {
    /// Shards to start with (default 4).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }
    /// Each shard's budget in bytes (default 64 MiB). An entry larger than it
    /// is not stored.
    pub fn capacity_per_shard(mut self, bytes: u64) -> Self {
        self.config.capacity = bytes;
        self
    }
    /// How long a computed value lives (default: until evicted).
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.config.ttl = ttl;
        self
    }
    /// Where in a cluster the shards start (e.g. `Scheduling::Spread`).
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.config.scheduling = scheduling;
        self
    }
    /// How often a shard restarts after a crash (default unlimited); past it
    /// the shard is dead and leaves the ring.
    pub fn max_restarts(mut self, n: impl Into<Retries>) -> Self {
        self.config.max_restarts = n.into();
        self
    }
    /// How long a claimed computation may go without its task before the
    /// next miss takes it over (default 10 s).
    pub fn claim_lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Starts the shards and publishes the ring.
    pub fn start(self) -> Result<Cache<K, V>> {
        if self.shards == 0 {
            return Err(Error::InvalidArgument(
                "a cache needs at least one shard".into(),
            ));
        }
        if self.config.lease.is_zero() {
            return Err(Error::InvalidArgument(
                "claim_lease must be more than zero".into(),
            ));
        }
        let ids: Vec<u64> = (0..self.shards as u64).collect();
        let members = ids
            .iter()
            .map(|&id| {
                Ok(Member {
                    id,
                    handle: Some(spawn_shard(self.rt, &self.config, id, 1, &ids)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let ring = Ring {
            epoch: 1,
            next_id: ids.len() as u64,
            members,
        };
        publish(self.rt, &self.config, &ring)?;
        Ok(Cache::from_parts(self.rt, self.name, self.config, ring))
    }
}

fn spawn_shard(
    rt: &Runtime,
    config: &Config,
    id: u64,
    epoch: u64,
    ids: &[u64],
) -> Result<ActorHandle<CacheShard>> {
    let shard = ShardConfig {
        id,
        capacity: config.capacity,
        epoch,
        ids: ids.to_vec(),
        lease: config.lease,
        members_key: config.key("members"),
        change_key: config.key("change"),
    };
    rt.async_actor_of(CacheShard::new, shard)
        .scheduling(config.scheduling)
        .max_restarts(config.max_restarts)
        .max_task_retries(Retries::Infinite)
        .spawn()
}

/// Publishes `ring` as the cache's newest, dropping the one before.
fn publish(rt: &Runtime, config: &Config, ring: &Ring) -> Result<()> {
    rt.kv_put(
        &config.key(&format!("ring/{}", ring.epoch)),
        &rt.encode(ring)?,
        true,
    )?;
    rt.kv_put(&config.key("members"), &members_bytes(ring)?, true)?;
    if ring.epoch > 1 {
        rt.kv_delete(&config.key(&format!("ring/{}", ring.epoch - 1)))?;
    }
    Ok(())
}

/// A ring as the shards know it: its epoch and its members' ids.
fn members_bytes(ring: &Ring) -> Result<Vec<u8>> {
    rmp_serde::to_vec(&(ring.epoch, ring.ids())).map_err(|e| Error::Serialization(e.to_string()))
}

/// A client of a sharded cache of `V`s by `K`: `Clone + Send + Sync`, and
/// serializable, so tasks and actors (on any node) can take one. See the
/// [module documentation](self) for what it guarantees.
pub struct Cache<K, V> {
    inner: Arc<Inner>,
    _types: PhantomData<fn(K) -> V>,
}

struct Inner {
    /// Weak: a cache kept in an actor's state must not keep its runtime up.
    rt: WeakRuntime,
    name: String,
    config: Config,
    ring: RwLock<Arc<Ring>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ring = self.inner.ring.read().clone();
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("epoch", &ring.epoch)
            .field("shards", &ring.ids())
            .finish()
    }
}

/// How a cache client travels: its name, its shards' settings and its ring.
#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    config: Config,
    ring: Ring,
}

impl<K, V> Serialize for Cache<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire {
            name: self.inner.name.clone(),
            config: self.inner.config.clone(),
            ring: (**self.inner.ring.read()).clone(),
        }
        .serialize(s)
    }
}

impl<'de, K, V> Deserialize<'de> for Cache<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        let rt = Runtime::current().ok_or_else(|| {
            serde::de::Error::custom(
                "a Cache can be decoded only in a rayx worker or with Runtime::decode",
            )
        })?;
        Ok(Cache::from_parts(&rt, wire.name, wire.config, wire.ring))
    }
}

impl<K, V> Cache<K, V> {
    fn from_parts(rt: &Runtime, name: String, config: Config, ring: Ring) -> Self {
        Cache {
            inner: Arc::new(Inner {
                rt: rt.downgrade(),
                name,
                config,
                ring: RwLock::new(Arc::new(ring)),
            }),
            _types: PhantomData,
        }
    }
}

impl<K: Data + Clone, V: Data + Clone> Cache<K, V> {
    /// Prepares a cache named `name` (for errors and debugging; two caches
    /// may share a name).
    pub fn builder<'r>(rt: &'r Runtime, name: impl Into<String>) -> CacheBuilder<'r, K, V> {
        let name = name.into();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // Unique across the cluster's processes: the node id, a clock, a counter.
        let uid = ring::key_hash(
            &[
                rt.node_id().0.to_le_bytes(),
                nanos.to_le_bytes(),
                NEXT.fetch_add(1, Ordering::Relaxed).to_le_bytes(),
            ]
            .concat(),
        );
        CacheBuilder {
            rt,
            shards: 4,
            config: Config {
                capacity: 64 << 20,
                ttl: None,
                lease: Duration::from_secs(10),
                scheduling: Scheduling::Default,
                max_restarts: Retries::Infinite,
                prefix: format!("rayx.cache/{name}/{uid:016x}"),
            },
            name,
            _types: PhantomData,
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The value under `key`, if the cache holds a live one (never waits for
    /// a computation in progress).
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        let rt = self.rt()?;
        let key = Blob(rt.encode(key)?);
        let hash = ring::key_hash(&key.0);
        let (_, found) = self.route(hash, None, |epoch| Get {
            epoch,
            key: key.clone(),
        })?;
        found.map(|v| rt.decode(&v.0)).transpose()
    }

    /// Stores `value` under `key`, for `ttl` if given (else until evicted);
    /// true if it is stored (false: it is larger than a shard's capacity, or
    /// `ttl` is zero — and then what the key held is gone too). A computation
    /// of `key` in progress is not stored when it ends.
    pub fn put(&self, key: &K, value: &V, ttl: Option<Duration>) -> Result<bool> {
        let rt = self.rt()?;
        let key = Blob(rt.encode(key)?);
        let value = Blob(rt.encode(value)?);
        let hash = ring::key_hash(&key.0);
        let (_, stored) = self.route(hash, None, |epoch| Put {
            epoch,
            key: key.clone(),
            value: value.clone(),
            ttl,
        })?;
        Ok(stored)
    }

    /// Removes `key`; true if the cache held it. A computation of `key` in
    /// progress is not stored when it ends.
    pub fn delete(&self, key: &K) -> Result<bool> {
        let rt = self.rt()?;
        let key = Blob(rt.encode(key)?);
        let hash = ring::key_hash(&key.0);
        let (_, deleted) = self.route(hash, None, |epoch| Delete {
            epoch,
            key: key.clone(),
        })?;
        Ok(deleted)
    }

    /// The value under `key`; on a miss, `f(key)` computed as a rayx task —
    /// one task for all the callers that miss the key at once — and stored
    /// (for the builder's `ttl`). `f` is a function registered with
    /// [`remote!`](crate::remote). A failed task fails every caller that
    /// waited for it, with the task's error, and nothing is stored.
    ///
    /// ```
    /// # use rayx::prelude::*;
    /// # use rayx::services::cache::Cache;
    /// fn slow_square(x: u64) -> u64 { std::thread::sleep(Duration::from_millis(50)); x * x }
    /// rayx::remote!(slow_square);
    ///
    /// let rt = rayx::init()?;
    /// let cache: Cache<u64, u64> = Cache::builder(&rt, "squares").shards(2).start()?;
    /// let callers: Vec<_> = (0..8)
    ///     .map(|_| { let c = cache.clone(); std::thread::spawn(move || c.get_or_compute(&12, slow_square)) })
    ///     .collect();
    /// for c in callers { assert_eq!(c.join().unwrap()?, 144); }
    /// assert_eq!(cache.stats()?.total.computations, 1, "eight misses, one task");
    /// # Ok::<(), rayx::Error>(())
    /// ```
    pub fn get_or_compute<F>(&self, key: &K, f: F) -> Result<V>
    where
        F: RemoteFunction<(K,), V> + Clone,
    {
        let rt = self.rt()?;
        let blob = Blob(rt.encode(key)?);
        let hash = ring::key_hash(&blob.0);
        let lease = self.inner.config.lease;
        let mut count = true;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let claimed = self.route(hash, Some(lease), |epoch| Claim {
                epoch,
                key: blob.clone(),
                count,
            });
            count = false;
            let (member, claimed) = match claimed {
                // Parked past the lease: look again (and take the claim over).
                Err(e @ Error::GetTimeout { .. }) => {
                    last = Some(e);
                    continue;
                }
                other => other?,
            };
            let Some(shard) = &member.handle else {
                continue;
            };
            match claimed {
                Claimed::Hit(v) => return rt.decode(&v.0),
                Claimed::Retry => {}
                Claimed::Compute { claim } => {
                    let task = rt.task(f.clone()).remote(key.clone());
                    // Fire and forget: the fill below comes after it (one
                    // caller's calls run in order).
                    drop(shard.call(Computing {
                        key: blob.clone(),
                        claim,
                        pending: retype(&rt, &task)?,
                    }));
                    return self.settle(&rt, shard, &blob, claim, &task);
                }
                Claimed::Wait { claim, pending } => {
                    let task: ObjectRef<V> = retype(&rt, &pending)?;
                    match self.settle(&rt, shard, &blob, claim, &task) {
                        // Its claimer's process is gone with the result: compute again.
                        Err(e) if lost(&e) => last = Some(e),
                        other => return other,
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidArgument(format!(
            "cache `{}`: the key kept moving or its computation kept being dropped ({ATTEMPTS} attempts)",
            self.inner.name
        ))))
    }

    /// Reads a computation's result and reports it to the shard: stored if
    /// the claim still holds, dropped if the computation failed.
    fn settle(
        &self,
        rt: &Runtime,
        shard: &ActorHandle<CacheShard>,
        key: &Blob,
        claim: u64,
        task: &ObjectRef<V>,
    ) -> Result<V> {
        match task.get() {
            Ok(v) => {
                drop(shard.call(Fill {
                    key: key.clone(),
                    claim,
                    value: Blob(rt.encode(&v)?),
                    ttl: self.inner.config.ttl,
                }));
                Ok(v)
            }
            Err(e) => {
                drop(shard.call(Abandon {
                    key: key.clone(),
                    claim,
                }));
                Err(e)
            }
        }
    }

    /// Every shard's counters, and their sum.
    pub fn stats(&self) -> Result<CacheStats> {
        let ring = self.ring();
        let replies: Vec<_> = ring
            .members
            .iter()
            .filter_map(|m| m.handle.as_ref().map(|h| h.call(Stats)))
            .collect();
        let mut stats = CacheStats {
            shards: Vec::with_capacity(replies.len()),
            total: Counts::default(),
        };
        for reply in replies {
            match reply.get() {
                Ok(s) => {
                    stats.total += s.counts;
                    stats.shards.push(s);
                }
                // A shard that died holds nothing; it leaves the ring at its
                // next routed call.
                Err(Error::ActorDied { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }

    /// The shards, in the ring's order.
    pub fn shards(&self) -> Vec<ShardId> {
        self.ring().members.iter().map(|m| ShardId(m.id)).collect()
    }

    /// The shard that holds `key` now.
    pub fn shard_of(&self, key: &K) -> Result<ShardId> {
        let rt = self.rt()?;
        let hash = ring::key_hash(&rt.encode(key)?);
        self.ring()
            .owner(hash)
            .map(|m| ShardId(m.id))
            .ok_or_else(|| self.no_shards())
    }

    /// Starts one more shard; the keys it now owns move to it (as misses).
    pub fn add_shard(&self) -> Result<ShardId> {
        let rt = self.rt()?;
        for _ in 0..ATTEMPTS {
            let old = self.ring();
            let id = old.next_id;
            let epoch = old.epoch + 1;
            let mut ids = old.ids();
            ids.push(id);
            let handle = spawn_shard(&rt, &self.inner.config, id, epoch, &ids)?;
            let mut members = old.members.clone();
            members.push(Member {
                id,
                handle: Some(handle.clone()),
            });
            let new = Ring {
                epoch,
                next_id: id + 1,
                members,
            };
            if self.commit(&rt, &old, new)? {
                return Ok(ShardId(id));
            }
            handle.kill();
        }
        Err(self.changing())
    }

    /// Stops a shard; its keys move to the others (as misses).
    pub fn remove_shard(&self, shard: ShardId) -> Result<()> {
        let rt = self.rt()?;
        for _ in 0..ATTEMPTS {
            let old = self.ring();
            let Some(gone) = old.members.iter().find(|m| m.id == shard.0) else {
                return Err(Error::InvalidArgument(format!(
                    "cache `{}` has no {shard}",
                    self.inner.name
                )));
            };
            if old.members.len() == 1 {
                return Err(Error::InvalidArgument(format!(
                    "cache `{}`: its last shard cannot be removed",
                    self.inner.name
                )));
            }
            let new = Ring {
                epoch: old.epoch + 1,
                next_id: old.next_id,
                members: old
                    .members
                    .iter()
                    .filter(|m| m.id != shard.0)
                    .cloned()
                    .collect(),
            };
            if self.commit(&rt, &old, new)? {
                if let Some(h) = &gone.handle {
                    h.kill();
                }
                return Ok(());
            }
        }
        Err(self.changing())
    }

    /// Kills a shard so that it restarts (as a crash would), within the
    /// cache's `max_restarts`.
    #[cfg(feature = "testing")]
    pub fn restart_shard(&self, shard: ShardId) {
        if let Some(h) = self.handle_of(shard) {
            h.restart();
        }
    }

    /// Kills a shard for good, leaving it in the ring (as a crash past its
    /// restarts would): the next client to route to it removes it.
    #[cfg(feature = "testing")]
    pub fn kill_shard(&self, shard: ShardId) {
        if let Some(h) = self.handle_of(shard) {
            h.kill();
        }
    }

    /// The node a shard runs on now.
    pub fn node_of(&self, shard: ShardId) -> Option<crate::NodeId> {
        self.handle_of(shard).map(|h| h.node_id())
    }

    fn handle_of(&self, shard: ShardId) -> Option<ActorHandle<CacheShard>> {
        self.ring()
            .members
            .iter()
            .find(|m| m.id == shard.0)
            .and_then(|m| m.handle.clone())
    }

    /// Moves the ring from `old` to `new` (the next epoch): reserves the
    /// epoch, tells every shard of both rings, then publishes. False if
    /// another client took the epoch first (this one now has its ring).
    fn commit(&self, rt: &Runtime, old: &Ring, new: Ring) -> Result<bool> {
        let config = &self.inner.config;
        // The reservation holds the new members: a shard that restarts before
        // the ring is published starts at this epoch, not the one before.
        let reserved = rt.kv_put(
            &config.key(&format!("change/{}", new.epoch)),
            &members_bytes(&new)?,
            false,
        )?;
        if !reserved {
            self.refresh(rt, new.epoch)?;
            return Ok(false);
        }
        let mut told: Vec<u64> = Vec::new();
        let mut replies = Vec::new();
        for m in old.members.iter().chain(new.members.iter()) {
            if let (Some(h), false) = (&m.handle, told.contains(&m.id)) {
                told.push(m.id);
                replies.push(tell(h, &new));
            }
        }
        // A dead shard cannot answer, and holds nothing a client could read.
        for r in replies {
            let _ = r.get();
        }
        // The reservation stays: a client with an older ring must not take
        // the epoch again.
        publish(rt, config, &new)?;
        self.adopt(Arc::new(new));
        Ok(true)
    }

    /// Routes a call to the shard that owns `hash`, following the ring as it
    /// moves and leaving dead shards out; the shard and its answer.
    fn route<M, R>(
        &self,
        hash: u64,
        timeout: Option<Duration>,
        mut make: impl FnMut(u64) -> M,
    ) -> Result<(Member, R)>
    where
        M: Message<Reply = Served<R>>,
        R: Data + Clone,
        CacheShard: Dispatches<M, AsyncCall>,
    {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let ring = self.ring();
            let member = ring.owner(hash).ok_or_else(|| self.no_shards())?.clone();
            let Some(handle) = &member.handle else {
                // Its handle did not decode here: it is gone.
                self.forget(&ring, member.id)?;
                continue;
            };
            let reply = handle.call(make(ring.epoch));
            let answer = match timeout {
                Some(t) => reply.get_timeout(t),
                None => reply.get(),
            };
            match answer {
                Ok(Served::Done(r)) => return Ok((member, r)),
                Ok(Served::Moved { epoch }) if epoch > ring.epoch => {
                    self.refresh(&self.rt()?, epoch)?
                }
                // The shard is behind (it restarted): tell it the newest ring
                // there is — never this call's, which may be older by now.
                Ok(Served::Moved { .. }) => {
                    self.refresh(&self.rt()?, 0)?;
                    let _ = tell(handle, &self.ring()).get();
                }
                // Its calls are sent again after a crash: a call that fails
                // this way met a shard that is gone for good.
                Err(e @ Error::ActorDied { .. }) => {
                    self.forget(&ring, member.id)?;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| self.changing()))
    }

    /// Takes a dead shard out of the ring (unless the ring moved on already).
    fn forget(&self, seen: &Ring, id: u64) -> Result<()> {
        let rt = self.rt()?;
        let now = self.ring();
        if now.epoch != seen.epoch || !now.members.iter().any(|m| m.id == id) {
            return Ok(());
        }
        if now.members.len() == 1 {
            return Err(Error::ActorDied {
                actor: format!("cache `{}` {}", self.inner.name, ShardId(id)),
                cause: "the cache's last shard died".into(),
            });
        }
        let new = Ring {
            epoch: now.epoch + 1,
            next_id: now.next_id,
            members: now.members.iter().filter(|m| m.id != id).cloned().collect(),
        };
        self.commit(&rt, &now, new).map(drop)
    }

    /// Takes the newest published ring, waiting until it is at least at
    /// `epoch` (a shard announced it; its publisher is about to).
    fn refresh(&self, rt: &Runtime, epoch: u64) -> Result<()> {
        let config = &self.inner.config;
        let deadline = Instant::now() + PUBLISH_WAIT;
        let mut pause = Duration::from_micros(50);
        loop {
            let published = rt
                .kv_get(&config.key("members"))?
                .and_then(|b| rmp_serde::from_slice::<(u64, Vec<u64>)>(&b).ok())
                .map(|(e, _)| e);
            if let Some(e) = published.filter(|&e| e > self.ring().epoch) {
                // Gone if a newer one replaced it meanwhile: look again.
                if let Some(bytes) = rt.kv_get(&config.key(&format!("ring/{e}")))? {
                    self.adopt(Arc::new(rt.decode::<Ring>(&bytes)?));
                }
                continue;
            }
            if self.ring().epoch >= epoch {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::InvalidArgument(format!(
                    "cache `{}`: ring epoch {epoch} was announced but not published within {PUBLISH_WAIT:?} (did the client changing it die?)",
                    self.inner.name
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    fn adopt(&self, ring: Arc<Ring>) {
        let mut current = self.inner.ring.write();
        if ring.epoch > current.epoch {
            *current = ring;
        }
    }

    fn ring(&self) -> Arc<Ring> {
        self.inner.ring.read().clone()
    }

    fn rt(&self) -> Result<Runtime> {
        self.inner.rt.upgrade().ok_or(Error::ShutDown)
    }

    fn no_shards(&self) -> Error {
        Error::InvalidArgument(format!("cache `{}` has no shards", self.inner.name))
    }

    fn changing(&self) -> Error {
        Error::InvalidArgument(format!(
            "cache `{}`: its ring kept changing ({ATTEMPTS} attempts)",
            self.inner.name
        ))
    }
}

/// Tells a shard the ring (outside `route`, whose bounds would claim the call).
fn tell(shard: &ActorHandle<CacheShard>, ring: &Ring) -> ObjectRef<()> {
    shard.call(SetRing {
        epoch: ring.epoch,
        ids: ring.ids(),
    })
}

/// The same object as a ref of another type (a ref is its id on the wire).
fn retype<T: 'static, U: 'static>(rt: &Runtime, r: &ObjectRef<T>) -> Result<ObjectRef<U>> {
    let id = rmp_serde::to_vec(r).map_err(|e| Error::Serialization(e.to_string()))?;
    rt.decode(&id)
}

/// Whether a computation's result is gone with a process, rather than failed:
/// worth computing again.
fn lost(e: &Error) -> bool {
    matches!(
        e,
        Error::OwnerDied { .. }
            | Error::OwnerUnknown { .. }
            | Error::ObjectLost { .. }
            | Error::ObjectReconstructionFailed { .. }
            | Error::NodeDied { .. }
    )
}

// The ring's members travel as their ids and their handles' encodings; a
// handle that does not decode where it arrives (its shard is gone) is `None`.
impl Serialize for Member {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let handle = match &self.handle {
            Some(h) => Some(Blob(
                rmp_serde::to_vec(h).map_err(serde::ser::Error::custom)?,
            )),
            None => None,
        };
        (self.id, handle).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (id, handle) = <(u64, Option<Blob>)>::deserialize(d)?;
        Ok(Member {
            id,
            handle: handle.and_then(|b| rmp_serde::from_slice(&b.0).ok()),
        })
    }
}
