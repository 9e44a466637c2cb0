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
//! # Ok::<(), Box<dyn std::error::Error>>(())
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
//! - **Bounded waits.** A caller waits for a value at most its timeout
//!   ([`Cache::get_or_compute_timeout`]; [`CacheBuilder::compute_timeout`],
//!   60 s, for [`Cache::get_or_compute`]), then fails with
//!   [`CacheError::Timeout`]. The computation goes on: whoever reads its
//!   result first (a caller still waiting, or a later miss of the key, which
//!   waits for the same task) stores it. A computation claimed
//!   `compute_timeout` ago is forgotten by its shard (it hangs, or everyone
//!   gave up on it): the next miss computes again, and the old result is not
//!   stored; a caller still waiting for it when its time is up (one with a
//!   longer timeout) looks again, and so computes it anew. So a computation
//!   that never ends holds its key for at most `compute_timeout`, and no
//!   caller waits forever.
//! - **Failures.** A shard restarts with an empty store (its keys miss and
//!   are computed again, on it); calls interrupted by its crash are sent again
//!   (`max_task_retries` is unlimited; every call is safe to repeat). A shard
//!   that died for good leaves the ring: its keys move to the other shards,
//!   as misses; the other keys stay where they are. A call that meets a
//!   removed shard or a moving ring follows the new ring, with backoff, for
//!   up to 30 s; past it, it fails with [`CacheError::Unavailable`]
//!   (retryable: [`CacheError::is_retryable`]).
//! - **Lifetime.** The cache belongs to the client that [`start`](CacheBuilder::start)
//!   returned, as a Ray actor belongs to its owner: when the owner's last
//!   clone is dropped (or any client calls [`Cache::destroy`]) its shards are
//!   killed and its keys deleted from the store; clients decoded elsewhere
//!   then get [`CacheError::Destroyed`]. A [detached](CacheBuilder::detached)
//!   cache stays until `destroy` or the runtime's end. At rest a cache holds
//!   two keys in the store (`members` and the published `ring/{epoch}`), and
//!   a third (`change/{epoch}`) while a membership change is under way: a
//!   change's reservation is deleted once its ring is published, as the
//!   published epoch fences it from then on.
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
//! unable to change (and its reservation in the store until `destroy`). The client's calls block (use it from threads, tasks
//! and sync actors, not from an async actor's handler). Values are copied
//! into the reply of each hit. A value goes to its shard in one message,
//! at most 64 MiB between nodes: a larger `put` fails with
//! `InvalidArgument`, and a larger computed value is returned to its caller
//! but not kept (each miss computes it again).
//!
//! [`get_or_compute`]: Cache::get_or_compute

mod lru;
mod ring;
mod shard;

use crate::actor::{AsyncCall, Dispatches};
use crate::{
    ActorHandle, Data, Error, Message, ObjectRef, RemoteFunction, Retries, Runtime, Scheduling,
    WeakRuntime,
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

/// How long a call follows a moving ring (its shard removed, the ring
/// changed again meanwhile) before it gives up with
/// [`CacheError::Unavailable`].
const RING_WAIT: Duration = Duration::from_secs(30);
/// How long a client waits for a ring a shard has announced to be published.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);
/// How long `get_or_compute` waits for a value, and a computation counts as
/// running, unless the builder says otherwise.
const DEFAULT_COMPUTE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the cache's operations return.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// Why a cache operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// [`Cache::get_or_compute`] waited its timeout for the key's computation
    /// (its own or another caller's). The computation goes on: a later call
    /// of the key waits for it, until it has run for the builder's
    /// `compute_timeout`; then the next miss computes again.
    #[error("cache `{cache}`: no value was computed within {timeout:?}; the computation goes on: call again, or with a longer timeout")]
    Timeout {
        /// The cache.
        cache: String,
        /// How long the call waited.
        timeout: Duration,
    },
    /// The key's shard could not be reached for 30 s while
    /// the ring kept changing (shards added or removed, or a shard gone for
    /// good) or was not published. The call may or may not have taken
    /// effect; every call is safe to repeat.
    #[error("cache `{cache}` is unavailable: {cause}; call again")]
    Unavailable {
        /// The cache.
        cache: String,
        /// What the call met last.
        cause: String,
    },
    /// The cache was destroyed ([`Cache::destroy`], or its creator dropped
    /// its last client): its shards and its keys in the store are gone.
    #[error("cache `{cache}` was destroyed (by destroy(), or its creator dropped its last client); start a new one")]
    Destroyed {
        /// The cache.
        cache: String,
    },
    /// rayx failed: a setting out of range (`InvalidArgument`), the
    /// computation's task failed (`TaskFailed`), the runtime shut down...
    #[error(transparent)]
    Rayx(#[from] Error),
}

impl CacheError {
    /// Whether the same call may succeed if made again: a timeout, or a
    /// ring that kept changing.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CacheError::Timeout { .. } | CacheError::Unavailable { .. }
        )
    }
}

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
    compute_timeout: Duration,
    scheduling: Scheduling,
    max_restarts: Retries,
    detached: bool,
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
    /// Shards to start with (default 4; zero is refused at `start`).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }
    /// Each shard's budget in bytes (default 64 MiB; zero is refused at
    /// `start`). An entry larger than it is not stored.
    pub fn capacity_per_shard(mut self, bytes: u64) -> Self {
        self.config.capacity = bytes;
        self
    }
    /// How long a computed value lives (default `None`: until evicted; a
    /// zero TTL is refused at `start`, as it would store nothing).
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
    /// next miss takes it over (default 10 s; zero is refused at `start`).
    pub fn claim_lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }
    /// How long [`Cache::get_or_compute`] waits for a value (default 60 s;
    /// zero is refused at `start`), and how long a computation counts as
    /// running: past it, its shard forgets it and the next miss of its key
    /// computes again (its late result is not stored).
    pub fn compute_timeout(mut self, timeout: Duration) -> Self {
        self.config.compute_timeout = timeout;
        self
    }
    /// Keeps the cache (its shards and its keys in the store) when its
    /// creator's last client is dropped, until [`Cache::destroy`] or the
    /// runtime stops (Ray's detached actors).
    pub fn detached(mut self) -> Self {
        self.config.detached = true;
        self
    }

    /// Starts the shards and publishes the ring. Settings that make no
    /// sense (zero shards, capacity, TTL, lease or compute timeout) are
    /// refused with `InvalidArgument`.
    pub fn start(self) -> Result<Cache<K, V>> {
        let refuse = |what: &str| {
            Err(Error::InvalidArgument(format!("cache `{}`: {what}", self.name)).into())
        };
        super::check_service_name("cache", &self.name)?;
        if self.shards == 0 {
            return refuse("a cache needs at least one shard");
        }
        if self.config.capacity == 0 {
            return refuse("capacity_per_shard must be more than zero bytes");
        }
        if self.config.ttl == Some(Duration::ZERO) {
            return refuse("a ttl must be more than zero (None keeps values until evicted)");
        }
        if self.config.lease.is_zero() {
            return refuse("claim_lease must be more than zero");
        }
        if self.config.compute_timeout.is_zero() {
            return refuse("compute_timeout must be more than zero");
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
        Ok(Cache::from_parts(
            self.rt,
            self.name,
            self.config,
            ring,
            true,
        ))
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
        compute_timeout: config.compute_timeout,
        members_key: config.key("members"),
        change_key: config.key("change"),
    };
    let builder = rt
        .async_actor_of(CacheShard::new, shard)
        .scheduling(config.scheduling)
        .max_restarts(config.max_restarts)
        .max_task_retries(Retries::Infinite);
    Ok(if config.detached {
        builder.detached().spawn()?
    } else {
        builder.spawn()?
    })
}

/// Publishes `ring` as the cache's newest, dropping the ring before and the
/// reservation of this one.
///
/// The reservation `change/{epoch}` fenced the epoch while it was being
/// changed to; once published, `members` (whose epoch only grows: epoch
/// e+1 is reserved only by a client holding ring e, i.e. after e was
/// published) fences it instead: [`Cache::commit`] checks it after
/// reserving, so a client with an older ring that takes the deleted
/// reservation again learns it lost. So a cache keeps three keys at rest
/// (`members`, `ring/{epoch}`, and `change/{epoch + 1}` while a change is
/// under way), however often its ring changes.
fn publish(rt: &Runtime, config: &Config, ring: &Ring) -> Result<()> {
    rt.kv_put(
        &config.key(&format!("ring/{}", ring.epoch)),
        &rt.encode(ring)?,
        true,
    )?;
    rt.kv_put(&config.key("members"), &members_bytes(ring)?, true)?;
    if ring.epoch > 1 {
        rt.kv_delete(&config.key(&format!("ring/{}", ring.epoch - 1)))?;
        rt.kv_delete(&config.key(&format!("change/{}", ring.epoch)))?;
    }
    Ok(())
}

/// The epoch of the published ring; `None` once the cache is destroyed.
fn published_epoch(rt: &Runtime, config: &Config) -> Result<Option<u64>> {
    Ok(rt
        .kv_get(&config.key("members"))?
        .and_then(|b| rmp_serde::from_slice::<(u64, Vec<u64>)>(&b).ok())
        .map(|(e, _)| e))
}

/// Destroys a cache: deletes `members` first (from then on no client
/// changes the ring, and calls find the cache destroyed), kills the shards of
/// the newest ring and of `known`, then deletes the other keys. False if it
/// was destroyed already.
fn destroy(rt: &Runtime, config: &Config, known: &Ring) -> Result<bool> {
    let Some(epoch) = published_epoch(rt, config)? else {
        return Ok(false);
    };
    let ring_key = config.key(&format!("ring/{epoch}"));
    let newest = rt
        .kv_get(&ring_key)?
        .and_then(|b| rt.decode::<Ring>(&b).ok());
    rt.kv_delete(&config.key("members"))?;
    for m in newest.iter().flat_map(|r| &r.members).chain(&known.members) {
        if let Some(h) = &m.handle {
            h.kill();
        }
    }
    rt.kv_delete(&ring_key)?;
    // Pruned when ring `epoch` was published, unless that client died first;
    // and the next change's, if one was under way.
    rt.kv_delete(&config.key(&format!("change/{epoch}")))?;
    rt.kv_delete(&config.key(&format!("change/{}", epoch + 1)))?;
    Ok(true)
}

/// A ring as the shards know it: its epoch and its members' ids.
fn members_bytes(ring: &Ring) -> Result<Vec<u8>> {
    rmp_serde::to_vec(&(ring.epoch, ring.ids()))
        .map_err(|e| Error::Serialization(e.to_string()).into())
}

/// A client of a sharded cache of `V`s by `K`: `Clone + Send + Sync`, and
/// serializable, so tasks and actors (on any node) can take one. See the
/// [module documentation](self) for what it guarantees.
///
/// The cache belongs to the client [`CacheBuilder::start`] returned (its
/// owner): dropping the owner's last clone destroys it, as
/// [`destroy`](Cache::destroy) does, unless it is
/// [detached](CacheBuilder::detached). Clients decoded elsewhere (in tasks,
/// actors) are borrowers: they must not outlive it, and their calls then fail
/// with [`CacheError::Destroyed`].
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
    /// Made by `start` (not decoded): the cache goes with it.
    owner: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Best effort: a runtime already shut down took a local store with
        // it (a cluster's driver should drop its caches before it stops).
        if self.owner && !self.config.detached {
            if let Some(rt) = self.rt.upgrade() {
                let _ = destroy(&rt, &self.config, &self.ring.read());
            }
        }
    }
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
        Ok(Cache::from_parts(
            &rt,
            wire.name,
            wire.config,
            wire.ring,
            false,
        ))
    }
}

impl<K, V> Cache<K, V> {
    fn from_parts(rt: &Runtime, name: String, config: Config, ring: Ring, owner: bool) -> Self {
        Cache {
            inner: Arc::new(Inner {
                rt: rt.downgrade(),
                name,
                config,
                ring: RwLock::new(Arc::new(ring)),
                owner,
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
                compute_timeout: DEFAULT_COMPUTE_TIMEOUT,
                scheduling: Scheduling::Default,
                max_restarts: Retries::Infinite,
                detached: false,
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
        let (_, found) = self.route(hash, ring_deadline(), None, |epoch| Get {
            epoch,
            key: key.clone(),
        })?;
        Ok(found.map(|v| rt.decode(&v.0)).transpose()?)
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
        let (_, stored) = self.route(hash, ring_deadline(), None, |epoch| Put {
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
        let (_, deleted) = self.route(hash, ring_deadline(), None, |epoch| Delete {
            epoch,
            key: key.clone(),
        })?;
        Ok(deleted)
    }

    /// The value under `key`; on a miss, `f(key)` computed as a rayx task —
    /// one task for all the callers that miss the key at once — and stored
    /// (for the builder's `ttl`). `f` is a function registered with
    /// [`remote!`](crate::remote). A failed task fails every caller that
    /// waited for it, with the task's error, and nothing is stored. Waits at
    /// most the builder's [`compute_timeout`](CacheBuilder::compute_timeout)
    /// (60 s by default), as
    /// [`get_or_compute_timeout`](Cache::get_or_compute_timeout) does.
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
    /// # Ok::<(), rayx::services::cache::CacheError>(())
    /// ```
    pub fn get_or_compute<F>(&self, key: &K, f: F) -> Result<V>
    where
        F: RemoteFunction<(K,), V> + Clone,
    {
        self.get_or_compute_timeout(key, f, self.inner.config.compute_timeout)
    }

    /// [`get_or_compute`](Cache::get_or_compute), waiting at most `timeout`
    /// for the value, whoever computes it; then it fails with
    /// [`CacheError::Timeout`]. The computation is not stopped: the callers
    /// still waiting for it, and those that miss the key later, get its
    /// result (the first to read it stores it) — until it has run for the
    /// builder's `compute_timeout`, when its shard forgets it: the next miss,
    /// or a caller still waiting, computes again. A zero `timeout` is refused (`InvalidArgument`):
    /// [`get`](Cache::get) is the lookup that never waits.
    ///
    /// ```
    /// # use rayx::prelude::*;
    /// # use rayx::services::cache::{Cache, CacheError};
    /// fn slow(x: u64) -> u64 { std::thread::sleep(Duration::from_secs(1)); x }
    /// rayx::remote!(slow);
    ///
    /// let rt = rayx::init()?;
    /// let cache: Cache<u64, u64> = Cache::builder(&rt, "patient").shards(1).start()?;
    /// let late = cache.get_or_compute_timeout(&1, slow, Duration::from_millis(50));
    /// assert!(matches!(late, Err(CacheError::Timeout { .. })), "{late:?}");
    /// # Ok::<(), CacheError>(())
    /// ```
    pub fn get_or_compute_timeout<F>(&self, key: &K, f: F, timeout: Duration) -> Result<V>
    where
        F: RemoteFunction<(K,), V> + Clone,
    {
        if timeout.is_zero() {
            return Err(Error::InvalidArgument(format!(
                "cache `{}`: get_or_compute_timeout needs a timeout of more than zero (get never waits)",
                self.inner.name
            ))
            .into());
        }
        let rt = self.rt()?;
        let blob = Blob(rt.encode(key)?);
        let hash = ring::key_hash(&blob.0);
        let deadline = deadline_in(timeout);
        let timed_out = || CacheError::Timeout {
            cache: self.inner.name.clone(),
            timeout,
        };
        let lease = self.inner.config.lease;
        let mut count = true;
        let mut backoff = Backoff::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            let claimed = self.route(hash, deadline, Some(lease.min(left)), |epoch| Claim {
                epoch,
                key: blob.clone(),
                count,
            });
            count = false;
            let (member, claimed) = match claimed {
                // Parked past the lease (look again, and take the claim
                // over) or past the deadline (the loop's check says so).
                Err(CacheError::Rayx(Error::GetTimeout { .. })) => continue,
                other => other?,
            };
            let Some(shard) = &member.handle else {
                continue;
            };
            let (claim, task, left) = match claimed {
                Claimed::Hit(v) => return Ok(rt.decode(&v.0)?),
                Claimed::Retry => continue,
                Claimed::Compute { claim } => {
                    let task = rt.task(f.clone()).remote(key.clone());
                    // Fire and forget: the fill below comes after it (one
                    // caller's calls run in order).
                    drop(shard.call(Computing {
                        key: blob.clone(),
                        claim,
                        pending: retype(&rt, &task)?,
                    }));
                    (claim, task, self.inner.config.compute_timeout)
                }
                Claimed::Wait {
                    claim,
                    pending,
                    left,
                } => (claim, retype(&rt, &pending)?, left),
            };
            let until = deadline.min(deadline_in(left));
            match self.settle(&rt, shard, &blob, claim, &task, until) {
                Ok(Some(v)) => return Ok(v),
                // The computation ran out of time (the shard forgot it: the
                // next claim computes again), or this caller did (the loop's
                // check says so).
                Ok(None) => {
                    backoff.pause(deadline);
                }
                // Its claimer's process is gone with the result: compute again.
                Err(CacheError::Rayx(e)) if lost(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a computation's result and reports it to the shard: stored if
    /// the claim still holds, dropped if the computation failed. `None` if
    /// it is still running at `until`: it is left running (not abandoned:
    /// other callers may read its result).
    fn settle(
        &self,
        rt: &Runtime,
        shard: &ActorHandle<CacheShard>,
        key: &Blob,
        claim: u64,
        task: &ObjectRef<V>,
        until: Instant,
    ) -> Result<Option<V>> {
        match task.get_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(v) => {
                drop(shard.call(Fill {
                    key: key.clone(),
                    claim,
                    value: Blob(rt.encode(&v)?),
                    ttl: self.inner.config.ttl,
                }));
                Ok(Some(v))
            }
            Err(Error::GetTimeout { .. }) => Ok(None),
            Err(e) => {
                drop(shard.call(Abandon {
                    key: key.clone(),
                    claim,
                }));
                Err(e.into())
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
                Err(e) => return Err(e.into()),
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
        let deadline = ring_deadline();
        let mut backoff = Backoff::new();
        loop {
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
            let committed = self.commit(&rt, &old, new, deadline);
            if let Ok(true) = committed {
                return Ok(ShardId(id));
            }
            handle.kill();
            committed?;
            if !backoff.pause(deadline) {
                return Err(self.unavailable("other clients kept changing the ring"));
            }
        }
    }

    /// Stops a shard; its keys move to the others (as misses).
    pub fn remove_shard(&self, shard: ShardId) -> Result<()> {
        let rt = self.rt()?;
        let deadline = ring_deadline();
        let mut backoff = Backoff::new();
        loop {
            let old = self.ring();
            let Some(gone) = old.members.iter().find(|m| m.id == shard.0) else {
                return Err(Error::InvalidArgument(format!(
                    "cache `{}` has no {shard}",
                    self.inner.name
                ))
                .into());
            };
            if old.members.len() == 1 {
                return Err(Error::InvalidArgument(format!(
                    "cache `{}`: its last shard cannot be removed",
                    self.inner.name
                ))
                .into());
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
            if self.commit(&rt, &old, new, deadline)? {
                if let Some(h) = &gone.handle {
                    h.kill();
                }
                return Ok(());
            }
            if !backoff.pause(deadline) {
                return Err(self.unavailable("other clients kept changing the ring"));
            }
        }
    }

    /// Destroys the cache now, from any of its clients: kills its shards and
    /// deletes its keys from the runtime's key-value store. Later calls of
    /// every client fail with [`CacheError::Destroyed`]; destroying twice is
    /// no error. (The owner's last drop does the same unless the cache is
    /// [detached](CacheBuilder::detached).) A ring change that another client
    /// publishes while the cache is destroyed may leave its keys behind.
    ///
    /// ```
    /// # use rayx::services::cache::{Cache, CacheError};
    /// let rt = rayx::init()?;
    /// let cache: Cache<u32, u32> = Cache::builder(&rt, "brief").shards(2).start()?;
    /// cache.put(&1, &1, None)?;
    /// cache.destroy()?;
    /// assert!(matches!(cache.get(&1), Err(CacheError::Destroyed { .. })));
    /// # Ok::<(), CacheError>(())
    /// ```
    pub fn destroy(&self) -> Result<()> {
        let rt = self.rt()?;
        destroy(&rt, &self.inner.config, &self.ring())?;
        Ok(())
    }

    /// Where this cache's keys are in the runtime's key-value store
    /// (`{prefix}/members`, `{prefix}/ring/{epoch}`, `{prefix}/change/{epoch}`).
    #[cfg(feature = "testing")]
    pub fn store_prefix(&self) -> &str {
        &self.inner.config.prefix
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
    fn commit(&self, rt: &Runtime, old: &Ring, new: Ring, deadline: Instant) -> Result<bool> {
        let config = &self.inner.config;
        // The reservation holds the new members: a shard that restarts before
        // the ring is published starts at this epoch, not the one before.
        let change = config.key(&format!("change/{}", new.epoch));
        let mut reserved = rt.kv_put(&change, &members_bytes(&new)?, false)?;
        if reserved {
            // A reservation is deleted once its ring is published (see
            // `publish`): taken again by a client with an older ring, the
            // published epoch says it is stale.
            match published_epoch(rt, config)? {
                None => {
                    rt.kv_delete(&change)?;
                    return Err(self.destroyed());
                }
                Some(e) if e >= new.epoch => {
                    rt.kv_delete(&change)?;
                    reserved = false;
                }
                Some(_) => {}
            }
        }
        if !reserved {
            self.refresh(rt, new.epoch, deadline)?;
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
        publish(rt, config, &new)?;
        self.adopt(Arc::new(new));
        Ok(true)
    }

    /// Routes a call to the shard that owns `hash`, following the ring as it
    /// moves (with backoff, until `deadline`) and leaving dead shards out;
    /// the shard and its answer. `wait` bounds each call (a claim parks).
    fn route<M, R>(
        &self,
        hash: u64,
        deadline: Instant,
        wait: Option<Duration>,
        mut make: impl FnMut(u64) -> M,
    ) -> Result<(Member, R)>
    where
        M: Message<Reply = Served<R>>,
        R: Data + Clone,
        CacheShard: Dispatches<M, AsyncCall>,
    {
        let rt = self.rt()?;
        let mut backoff = Backoff::new();
        loop {
            let ring = self.ring();
            let member = ring.owner(hash).ok_or_else(|| self.no_shards())?.clone();
            let met = match &member.handle {
                // Its handle did not decode here: it is gone.
                None => {
                    self.forget(&rt, &ring, member.id, deadline)?;
                    format!("{} was gone", ShardId(member.id))
                }
                Some(handle) => {
                    let reply = handle.call(make(ring.epoch));
                    let answer = match wait {
                        Some(t) => reply.get_timeout(t),
                        None => reply.get(),
                    };
                    match answer {
                        Ok(Served::Done(r)) => return Ok((member, r)),
                        Ok(Served::Moved { epoch }) if epoch > ring.epoch => {
                            self.refresh(&rt, epoch, deadline)?;
                            format!("the ring moved to epoch {epoch}")
                        }
                        // The shard is behind (it restarted): tell it the
                        // newest ring there is — never this call's, which
                        // may be older by now.
                        Ok(Served::Moved { epoch }) => {
                            self.refresh(&rt, 0, deadline)?;
                            let _ = tell(handle, &self.ring()).get();
                            format!("{} was behind, at epoch {epoch}", ShardId(member.id))
                        }
                        // Its calls are sent again after a crash: a call that
                        // fails this way met a shard that is gone for good
                        // (removed from the ring, or dead).
                        Err(Error::ActorDied { cause, .. }) => {
                            self.forget(&rt, &ring, member.id, deadline)?;
                            format!("{} was gone ({cause})", ShardId(member.id))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            if !backoff.pause(deadline) {
                return Err(self.unavailable(&format!("the ring kept changing; last, {met}")));
            }
        }
    }

    /// Takes a dead shard out of the ring, unless the ring moved on already
    /// (a shard removed with `remove_shard` is out of the published ring).
    fn forget(&self, rt: &Runtime, seen: &Ring, id: u64, deadline: Instant) -> Result<()> {
        self.refresh(rt, 0, deadline)?;
        let now = self.ring();
        if now.epoch != seen.epoch || !now.members.iter().any(|m| m.id == id) {
            return Ok(());
        }
        if now.members.len() == 1 {
            return Err(Error::ActorDied {
                actor: format!("cache `{}` {}", self.inner.name, ShardId(id)),
                cause: "the cache's last shard died".into(),
            }
            .into());
        }
        let new = Ring {
            epoch: now.epoch + 1,
            next_id: now.next_id,
            members: now.members.iter().filter(|m| m.id != id).cloned().collect(),
        };
        self.commit(rt, &now, new, deadline).map(drop)
    }

    /// Takes the newest published ring, waiting until it is at least at
    /// `epoch` (a shard announced it; its publisher is about to), for at most
    /// `PUBLISH_WAIT` and until `deadline`.
    fn refresh(&self, rt: &Runtime, epoch: u64, deadline: Instant) -> Result<()> {
        let config = &self.inner.config;
        let deadline = deadline.min(Instant::now() + PUBLISH_WAIT);
        let mut backoff = Backoff::new();
        loop {
            let Some(published) = published_epoch(rt, config)? else {
                return Err(self.destroyed());
            };
            if published > self.ring().epoch {
                // Gone if a newer one replaced it meanwhile: look again.
                if let Some(bytes) = rt.kv_get(&config.key(&format!("ring/{published}")))? {
                    self.adopt(Arc::new(rt.decode::<Ring>(&bytes)?));
                }
                continue;
            }
            if self.ring().epoch >= epoch {
                return Ok(());
            }
            if !backoff.pause(deadline) {
                return Err(self.unavailable(&format!(
                    "ring epoch {epoch} was announced but not published in time (did the client changing it die?)"
                )));
            }
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
        Ok(self.inner.rt.upgrade().ok_or(Error::ShutDown)?)
    }

    fn no_shards(&self) -> CacheError {
        Error::InvalidArgument(format!("cache `{}` has no shards", self.inner.name)).into()
    }

    fn unavailable(&self, cause: &str) -> CacheError {
        CacheError::Unavailable {
            cache: self.inner.name.clone(),
            cause: cause.to_string(),
        }
    }

    fn destroyed(&self) -> CacheError {
        CacheError::Destroyed {
            cache: self.inner.name.clone(),
        }
    }
}

/// When a call that follows a moving ring gives up.
fn ring_deadline() -> Instant {
    deadline_in(RING_WAIT)
}

/// `timeout` from now (a timeout too long to add is as good as none).
fn deadline_in(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Pauses between attempts: 50 µs, doubling to 10 ms.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_micros(50))
    }

    /// Sleeps before the next attempt; false (at once) if `deadline` passed.
    fn pause(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(self.0.min(left));
        self.0 = (self.0 * 2).min(Duration::from_millis(10));
        true
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
    Ok(rt.decode(&id)?)
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
