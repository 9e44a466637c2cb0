//! The cache shard actor: one slice of the key space, its LRU store, its
//! counters, and the single-flight table of computations in progress.
//!
//! It is an async actor so that a miss arriving while another caller is
//! between "compute it" and "here is my task" can wait inside the shard
//! (parked) instead of polling; every other call finishes without waiting.
//! It never decodes a value: keys and values arrive encoded, and the refs of
//! computations travel as `ObjectRef<Computed>`, retyped by the client.

use super::lru::{Found, Lru};
use super::ring;
use super::{Counts, ShardId, ShardStats};
use crate::{Actor, AsyncContext, AsyncHandler, Message, ObjectRef, Runtime};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Bytes that encode as one msgpack bin (a `Vec<u8>` would be a list of
/// numbers).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Blob(pub Vec<u8>);

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(Blob(out))
            }
        }
        d.deserialize_byte_buf(Visit)
    }
}

/// The value type of a computation's ref as the shard holds it: the shard
/// never reads it, and the client retypes it to the cache's value type.
#[derive(Serialize, Deserialize)]
pub(crate) enum Computed {}

/// A shard's answer: served, or "your ring is not mine" with the shard's
/// epoch (the client refreshes its ring, or tells the shard the newer one).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum Served<T> {
    Done(T),
    Moved { epoch: u64 },
}

/// The outcome of a miss-or-compute lookup.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum Claimed {
    /// The value.
    Hit(Blob),
    /// Nobody computes it: the caller does, under this claim.
    Compute { claim: u64 },
    /// Someone computes it already: its task's result, worth waiting for
    /// `left` more (then the shard forgets the computation).
    Wait {
        claim: u64,
        pending: ObjectRef<Computed>,
        left: Duration,
    },
    /// The computation waited for was dropped (the key was written or
    /// deleted, the claimer gave up, the shard restarted): look again.
    Retry,
}

/// The value under `key`, if any (a miss never waits).
#[derive(Serialize, Deserialize)]
pub(crate) struct Get {
    pub epoch: u64,
    pub key: Blob,
}
impl Message for Get {
    type Reply = Served<Option<Blob>>;
}

/// Stores `value` under `key`; replies whether it is stored (false: larger
/// than the shard's capacity, or a zero TTL).
#[derive(Serialize, Deserialize)]
pub(crate) struct Put {
    pub epoch: u64,
    pub key: Blob,
    pub value: Blob,
    pub ttl: Option<Duration>,
}
impl Message for Put {
    type Reply = Served<bool>;
}

/// Removes `key`; replies whether it was there.
#[derive(Serialize, Deserialize)]
pub(crate) struct Delete {
    pub epoch: u64,
    pub key: Blob,
}
impl Message for Delete {
    type Reply = Served<bool>;
}

/// The value under `key`, or who computes it. `count` is false when the
/// caller looks again (its first look was counted).
#[derive(Serialize, Deserialize)]
pub(crate) struct Claim {
    pub epoch: u64,
    pub key: Blob,
    pub count: bool,
}
impl Message for Claim {
    type Reply = Served<Claimed>;
}

/// The claimer's task for `claim`: the callers parked on it get the ref.
#[derive(Serialize, Deserialize)]
pub(crate) struct Computing {
    pub key: Blob,
    pub claim: u64,
    pub pending: ObjectRef<Computed>,
}
impl Message for Computing {
    type Reply = bool;
}

/// The value computed under `claim`: stored if the claim is still the key's.
#[derive(Serialize, Deserialize)]
pub(crate) struct Fill {
    pub key: Blob,
    pub claim: u64,
    pub value: Blob,
    pub ttl: Option<Duration>,
}
impl Message for Fill {
    type Reply = bool;
}

/// The computation under `claim` failed or was lost: nothing is cached.
#[derive(Serialize, Deserialize)]
pub(crate) struct Abandon {
    pub key: Blob,
    pub claim: u64,
}
impl Message for Abandon {
    type Reply = ();
}

/// The ring's members at `epoch`: a newer one is adopted and the keys the
/// shard no longer owns are dropped.
#[derive(Serialize, Deserialize)]
pub(crate) struct SetRing {
    pub epoch: u64,
    pub ids: Vec<u64>,
}
impl Message for SetRing {
    type Reply = ();
}

/// The shard's counters.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stats;
impl Message for Stats {
    type Reply = ShardStats;
}

/// How a shard starts (and restarts: the constructor runs again).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ShardConfig {
    pub id: u64,
    pub capacity: u64,
    pub epoch: u64,
    pub ids: Vec<u64>,
    /// How long a claim may stay without its task before a caller takes it over.
    pub lease: Duration,
    /// How long a computation counts as running: past it, it is forgotten and
    /// the next miss computes again.
    pub compute_timeout: Duration,
    /// Where the cache's published membership is kept in the runtime's
    /// key-value store.
    pub members_key: String,
    /// Where the reservations of membership changes are (`{change_key}/{epoch}`).
    pub change_key: String,
}

/// One shard of a [`Cache`](super::Cache).
pub(crate) struct CacheShard {
    id: u64,
    state: Mutex<State>,
}

impl Actor for CacheShard {
    const ASYNC: bool = true;
}

crate::remote_actor!(
    async CacheShard,
    CacheShard::new,
    [Get, Put, Delete, Claim, Computing, Fill, Abandon, SetRing, Stats]
);

struct State {
    id: u64,
    epoch: u64,
    ids: Vec<u64>,
    store: Lru,
    pending: HashMap<Blob, Pending>,
    counts: Counts,
    lease: Duration,
    compute_timeout: Duration,
    /// The claims made, oldest first, to forget the computations that ran
    /// past `compute_timeout` (a claim settled meanwhile is skipped).
    claims: VecDeque<(Instant, Blob, u64)>,
    next_claim: u64,
}

/// A computation in progress: its claim, and its task once the claimer said.
struct Pending {
    claim: u64,
    since: Instant,
    task: Option<ObjectRef<Computed>>,
    parked: Vec<Waiter>,
}

impl CacheShard {
    /// A shard with an empty store. A restarted one (or one added while the
    /// ring moved on) takes the newest membership from the key-value store,
    /// so a client with an older ring is told to refresh.
    pub(crate) fn new(config: ShardConfig) -> CacheShard {
        let (mut epoch, mut ids) = (config.epoch, config.ids);
        if let Some((e, members)) = Runtime::current()
            .and_then(|rt| newest_ring(&rt, &config.members_key, &config.change_key))
            .filter(|(e, _)| *e > epoch)
        {
            (epoch, ids) = (e, members);
        }
        // Claims of an earlier incarnation must not match this one's.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        CacheShard {
            id: config.id,
            state: Mutex::new(State {
                id: config.id,
                epoch,
                ids,
                store: Lru::new(config.capacity),
                pending: HashMap::new(),
                counts: Counts::default(),
                lease: config.lease,
                compute_timeout: config.compute_timeout,
                claims: VecDeque::new(),
                next_claim: ring::key_hash(&seed.to_le_bytes()) ^ config.id,
            }),
        }
    }
}

/// The newest ring in the key-value store: the published one, or the one
/// being changed to (reserved, its shards being told, not yet published).
fn newest_ring(rt: &Runtime, members_key: &str, change_key: &str) -> Option<(u64, Vec<u64>)> {
    let read = |key: &str| {
        rt.kv_get(key)
            .ok()
            .flatten()
            .and_then(|b| rmp_serde::from_slice::<(u64, Vec<u64>)>(&b).ok())
    };
    let published = read(members_key)?;
    read(&format!("{change_key}/{}", published.0 + 1)).or(Some(published))
}

impl State {
    fn moved<T>(&self, epoch: u64) -> Option<Served<T>> {
        (epoch != self.epoch).then_some(Served::Moved { epoch: self.epoch })
    }

    fn reclaim(&mut self, now: Instant) {
        self.counts.expirations += self.store.reclaim_expired(now);
        self.forget_hung(now);
    }

    /// Forgets the computations claimed `compute_timeout` ago or more: they
    /// hang (or their callers all gave up), and must not hold their key (or
    /// their task's result) forever. Their callers still waiting keep the
    /// ref; a late result does not match the key's claim and is not stored.
    fn forget_hung(&mut self, now: Instant) {
        while let Some((since, _, _)) = self.claims.front() {
            if now.duration_since(*since) < self.compute_timeout {
                break;
            }
            if let Some((_, key, claim)) = self.claims.pop_front() {
                if self.pending.get(&key).is_some_and(|p| p.claim == claim) {
                    // Its parked callers (if any) look again.
                    self.pending.remove(&key);
                }
            }
        }
    }

    /// Looks `key` up, counting the hit or miss when `count`.
    fn lookup(&mut self, key: &Blob, count: bool, now: Instant) -> Option<Blob> {
        self.reclaim(now);
        let found = match self.store.get(&key.0, now) {
            Found::Hit(v) => Some(Blob(v.to_vec())),
            Found::Expired => {
                self.counts.expirations += 1;
                None
            }
            Found::Miss => None,
        };
        if count {
            match found {
                Some(_) => self.counts.hits += 1,
                None => self.counts.misses += 1,
            }
        }
        found
    }

    fn store(&mut self, key: Blob, value: Blob, ttl: Option<Duration>, now: Instant) -> bool {
        if ttl == Some(Duration::ZERO) {
            // Expired on arrival: nothing to keep, and no older value either.
            self.store.remove(&key.0);
            return false;
        }
        let expires = ttl.and_then(|t| now.checked_add(t));
        let inserted = self.store.insert(Arc::from(key.0), value.0, expires);
        self.counts.evictions += inserted.evicted;
        inserted.stored
    }

    fn new_claim(&mut self) -> u64 {
        self.next_claim = self.next_claim.wrapping_add(1);
        self.counts.computations += 1;
        self.next_claim
    }

    fn claim(&mut self, key: Blob, count: bool, now: Instant) -> Result<Claimed, Parked> {
        if let Some(v) = self.lookup(&key, count, now) {
            return Ok(Claimed::Hit(v));
        }
        if let Some(p) = self.pending.get_mut(&key) {
            if let Some(task) = &p.task {
                return Ok(Claimed::Wait {
                    claim: p.claim,
                    pending: task.clone(),
                    left: self
                        .compute_timeout
                        .saturating_sub(now.duration_since(p.since)),
                });
            }
            if now.duration_since(p.since) < self.lease {
                let (waiter, parked) = park();
                p.parked.push(waiter);
                return Err(parked);
            }
            // The claimer never said which task computes it (it died, or
            // stalled past the lease): this caller takes over, and the callers
            // parked on the old claim look again (the insert below drops it).
        }
        let claim = self.new_claim();
        self.claims.push_back((now, key.clone(), claim));
        self.pending.insert(
            key,
            Pending {
                claim,
                since: now,
                task: None,
                parked: Vec::new(),
            },
        );
        Ok(Claimed::Compute { claim })
    }

    fn computing(&mut self, key: &Blob, claim: u64, task: ObjectRef<Computed>) -> bool {
        let compute_timeout = self.compute_timeout;
        match self.pending.get_mut(key) {
            Some(p) if p.claim == claim && p.task.is_none() => {
                let left = compute_timeout.saturating_sub(p.since.elapsed());
                for waiter in p.parked.drain(..) {
                    waiter.send(Woken::Task {
                        claim,
                        task: task.clone(),
                        left,
                    });
                }
                p.task = Some(task);
                true
            }
            _ => false,
        }
    }

    /// Ends the computation of `key` if `claim` is still its own.
    fn settle(&mut self, key: &Blob, claim: u64) -> bool {
        if self.pending.get(key).is_some_and(|p| p.claim == claim) {
            // Its parked callers (there are none once the task is known) look again.
            self.pending.remove(key);
            return true;
        }
        false
    }

    fn set_ring(&mut self, epoch: u64, ids: Vec<u64>) {
        if epoch <= self.epoch {
            return;
        }
        self.epoch = epoch;
        self.ids = ids;
        let (id, ids) = (self.id, &self.ids);
        let owns = |key: &[u8]| ring::owner(ids.iter().copied(), ring::key_hash(key)) == Some(id);
        self.store.retain(owns);
        self.pending.retain(|k, _| owns(&k.0));
    }
}

impl AsyncHandler<Get> for CacheShard {
    async fn handle(self: Arc<Self>, m: Get, _: AsyncContext<Self>) -> Served<Option<Blob>> {
        let mut s = self.state.lock();
        if let Some(moved) = s.moved(m.epoch) {
            return moved;
        }
        Served::Done(s.lookup(&m.key, true, Instant::now()))
    }
}

impl AsyncHandler<Put> for CacheShard {
    async fn handle(self: Arc<Self>, m: Put, _: AsyncContext<Self>) -> Served<bool> {
        let mut s = self.state.lock();
        if let Some(moved) = s.moved(m.epoch) {
            return moved;
        }
        let now = Instant::now();
        s.reclaim(now);
        // A write ends the computation in progress: its result is older.
        s.pending.remove(&m.key);
        Served::Done(s.store(m.key, m.value, m.ttl, now))
    }
}

impl AsyncHandler<Delete> for CacheShard {
    async fn handle(self: Arc<Self>, m: Delete, _: AsyncContext<Self>) -> Served<bool> {
        let mut s = self.state.lock();
        if let Some(moved) = s.moved(m.epoch) {
            return moved;
        }
        s.pending.remove(&m.key);
        Served::Done(s.store.remove(&m.key.0))
    }
}

impl AsyncHandler<Claim> for CacheShard {
    async fn handle(self: Arc<Self>, m: Claim, _: AsyncContext<Self>) -> Served<Claimed> {
        let parked = {
            let mut s = self.state.lock();
            if let Some(moved) = s.moved(m.epoch) {
                return moved;
            }
            match s.claim(m.key, m.count, Instant::now()) {
                Ok(claimed) => return Served::Done(claimed),
                Err(parked) => parked,
            }
        };
        // A parked call holds only its slot, not the shard: a crashed
        // incarnation's state is freed, which wakes it to look again.
        drop(self);
        Served::Done(match parked.await {
            Woken::Task { claim, task, left } => Claimed::Wait {
                claim,
                pending: task,
                left,
            },
            Woken::Retry => Claimed::Retry,
        })
    }
}

impl AsyncHandler<Computing> for CacheShard {
    async fn handle(self: Arc<Self>, m: Computing, _: AsyncContext<Self>) -> bool {
        self.state.lock().computing(&m.key, m.claim, m.pending)
    }
}

impl AsyncHandler<Fill> for CacheShard {
    async fn handle(self: Arc<Self>, m: Fill, _: AsyncContext<Self>) -> bool {
        let mut s = self.state.lock();
        if !s.settle(&m.key, m.claim) {
            return false;
        }
        let now = Instant::now();
        s.reclaim(now);
        s.store(m.key, m.value, m.ttl, now)
    }
}

impl AsyncHandler<Abandon> for CacheShard {
    async fn handle(self: Arc<Self>, m: Abandon, _: AsyncContext<Self>) {
        self.state.lock().settle(&m.key, m.claim);
    }
}

impl AsyncHandler<SetRing> for CacheShard {
    async fn handle(self: Arc<Self>, m: SetRing, _: AsyncContext<Self>) {
        self.state.lock().set_ring(m.epoch, m.ids);
    }
}

impl AsyncHandler<Stats> for CacheShard {
    async fn handle(self: Arc<Self>, _: Stats, _: AsyncContext<Self>) -> ShardStats {
        let mut s = self.state.lock();
        s.reclaim(Instant::now());
        let mut counts = s.counts;
        counts.entries = s.store.len() as u64;
        counts.bytes = s.store.bytes();
        ShardStats {
            shard: ShardId(self.id),
            capacity: s.store.capacity(),
            counts,
        }
    }
}

/// What wakes a parked caller.
enum Woken {
    Task {
        claim: u64,
        task: ObjectRef<Computed>,
        left: Duration,
    },
    Retry,
}

#[derive(Default)]
struct Wake {
    outcome: Option<Woken>,
    waker: Option<Waker>,
}

/// The shard's end of a parked call. Dropped unsent (the computation was
/// dropped, or the whole state was), it wakes its caller to look again.
struct Waiter(Arc<Mutex<Wake>>);

/// The parked call's end: resolves when its [`Waiter`] sends or goes.
struct Parked(Arc<Mutex<Wake>>);

fn park() -> (Waiter, Parked) {
    let wake = Arc::new(Mutex::new(Wake::default()));
    (Waiter(wake.clone()), Parked(wake))
}

impl Waiter {
    fn send(self, woken: Woken) {
        self.0.lock().outcome = Some(woken);
        // Drop wakes the caller.
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let waker = {
            let mut wake = self.0.lock();
            wake.outcome.get_or_insert(Woken::Retry);
            wake.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Future for Parked {
    type Output = Woken;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woken> {
        let mut wake = self.0.lock();
        match wake.outcome.take() {
            Some(woken) => Poll::Ready(woken),
            None => {
                wake.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
