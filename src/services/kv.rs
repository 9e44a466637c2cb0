//! A sharded transactional key-value store: keys hashed over shard actors,
//! transactions over any keys of any shards that commit atomically with
//! serializable isolation, and survive the crash of a shard or of their
//! coordinator at any point of the commit.
//!
//! ```
//! use rayx::services::kv::KvStore;
//!
//! let rt = rayx::init()?;
//! let bank = KvStore::builder("doc-bank").shards(2).open(&rt)?;
//! bank.put("alice", &100i64)?;
//! bank.put("bob", &0i64)?;
//! // Read-modify-write of two keys, run again if another transaction
//! // got in between.
//! bank.transact(|txn| {
//!     let alice: i64 = txn.get("alice")?.unwrap_or(0);
//!     let bob: i64 = txn.get("bob")?.unwrap_or(0);
//!     txn.put("alice", &(alice - 30))?;
//!     txn.put("bob", &(bob + 30))?;
//!     Ok(())
//! })?;
//! assert_eq!(bank.get::<i64>("alice")?, Some(70));
//! assert_eq!(bank.get::<i64>("bob")?, Some(30));
//! # Ok::<(), rayx::services::kv::KvError>(())
//! ```
//!
//! # Design
//!
//! **Shards.** A store is `n` shard actors (registered with
//! [`remote_actor!`](crate::remote_actor), so in a cluster the head places
//! them and restarts them elsewhere; `max_restarts` is infinite). A key lives
//! on shard `fnv1a(key) % n`. Each key has a version, 0 before its first
//! write and one more at each committed write (a delete keeps it). The
//! shards' settings (count, lock TTL, detached) are fixed by the open that
//! starts them: a later open that asks for others is refused, naming the
//! difference; a client's own (`max_attempts`, `call_timeout`) are per
//! handle (see [`KvStoreBuilder`]).
//!
//! **Isolation: optimistic, validated, no waiting.** A transaction reads
//! committed values and records their versions; its writes stay in the
//! client until commit. At commit each shard involved *prepares* it: the
//! versions read must still be current and no other prepared transaction may
//! hold its keys (a prepared transaction holds the keys it writes exclusively
//! and the keys it reads shared). If not, it fails at once with
//! [`KvError::Conflict`] naming the key — no transaction ever waits for a
//! lock, so there is no deadlock. Locks are held from prepare to decision,
//! after every read, so commits are two-phase locked: serializable in the
//! order of their decisions. A read-only transaction only validates (one
//! round, no locks): all its reads precede every validation, and a key with
//! a prepared writer fails validation, so its reads were all current at the
//! first validation's instant. [`KvStore::transact`] runs a closure in a
//! transaction and runs it again after a conflict, with backoff.
//!
//! **Atomic commit: two-phase, the client coordinating.** On one shard, one
//! call: the shard prepares, stores the decision, applies. On several: the
//! client sends Prepare to each (in parallel), then, if every vote is yes,
//! stores the decision **Commit** under the transaction's id in the runtime's
//! key-value store with put-if-absent, then sends Commit to each shard and,
//! once every shard has applied it, deletes the decision. If a vote is no, it
//! sends Abort (no decision is needed: only the coordinator ever writes
//! Commit). Transaction ids are 128 bits: a random per-process half and a
//! counter.
//!
//! **Durability.** Shards write through to the runtime's key-value store
//! ([`Runtime::kv_put`](crate::Runtime::kv_put): the head's, persisted, in a
//! cluster; outside one the runtime's own, which outlives every actor): each
//! committed key with its version; and, before a shard votes yes, its
//! prepared transactions with their reads and their writes *at the versions
//! they will commit at* (so applying twice is harmless). A restarted shard
//! reloads its prepared transactions (keys load on first use) and their locks.
//!
//! **Recovery rule.** The decision record is the single truth of a
//! transaction's outcome, and its first writer wins (put-if-absent).
//! A shard that holds a prepared transaction longer than the lock TTL (default
//! 2 s; counted from its own restart for one it reloaded) stores **Abort** for
//! it put-if-absent and applies whichever decision won. A shard that meets a
//! lock (a read, or a conflicting prepare) whose transaction is already
//! decided applies that decision first, and so does a shard that reloads.
//! What each crash leaves:
//!
//! | crash of | at | left | resolved by |
//! |---|---|---|---|
//! | a shard | before storing its intent | nothing; the call fails | the coordinator aborts the others (a retry runs the whole transaction again) |
//! | a shard | after storing its intent | a prepared transaction, reloaded with its locks | the coordinator's Abort, or its Commit if all voted yes (the reload or a later Commit applies it), or the TTL |
//! | a shard | halfway through applying | some keys at their new versions, the intent still stored | the reload applies it again, at the same versions |
//! | a one-shard commit | between its intent and its decision | an undecided intent; the client's call failed | the client stores Abort put-if-absent (it cannot lose: the shard is gone) and reports [`KvError::Unavailable`]; the shard drops it |
//! | a one-shard commit | after its decision | a decided Commit | the client's put-if-absent Abort loses, so it reports committed; the reload applies it |
//! | the coordinator | before its decision | prepared transactions, undecided | each shard's TTL: Abort wins; nothing was applied anywhere |
//! | the coordinator | after its decision | Commit stored, some shards applied | each other shard applies it when it meets the lock, when it reloads, or at the TTL (its Abort loses) |
//!
//! A coordinator that is slow rather than dead finds the shards' Abort when
//! it tries to store Commit, and reports [`KvError::Aborted`] (retried by
//! `transact`). A client that cannot learn the outcome (the key-value store
//! itself unreachable while it decides) reports [`KvError::InDoubt`], which
//! `transact` does not retry.
//!
//! **Failures that cannot pass** — the runtime shut down, a shard's type not
//! registered on a node, a reply that does not decode — are not retried:
//! they return at once as [`KvError::Runtime`], never as a retryable
//! [`KvError::Unavailable`].
//!
//! **Sizes.** What a shard keeps is kept in records of the runtime's store,
//! each at most [`MAX_KV_VALUE`](crate::MAX_KV_VALUE) (32 MiB): a key's value
//! with its version; the writes of the transactions prepared on a shard, all
//! together; a transaction's decision, which lists the keys it writes. A
//! transaction whose own writes on one shard, or whose keys, are too large
//! for one record is refused for good ([`KvError::Runtime`] with
//! `InvalidArgument`, its keys let go at once); one whose writes only do not
//! fit beside those of the transactions prepared on the shard at the time is
//! aborted ([`KvError::Aborted`], which `transact` runs again). A store's name
//! takes up to [`MAX_SERVICE_NAME`](super::MAX_SERVICE_NAME) bytes.
//!
//! **Names.** Every key the store keeps in the runtime's store is under
//! `rayx.kv/STORE/`, the store's name escaped so that it holds no `/`: no
//! store's keys meet another's, whatever the names (`/` included) and keys.

mod shard;

use crate::{ActorHandle, Error, NodeId, Retries, Runtime, Scheduling, WeakRuntime};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use shard::{
    decision_key, decode, encode, meta_key, Answer, CommitOne, Decide, Outcome, Prepare, Read,
    Settings, Shard, ShardConfig, Validate, Versioned, Vote, WriteOp,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

/// What the store's operations return.
pub type Result<T, E = KvError> = std::result::Result<T, E>;

/// Why a transaction or an operation of the store failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KvError {
    /// Another transaction changed or holds a key this one used; nothing was
    /// applied. Run it again ([`KvStore::transact`] does).
    #[error("transaction {txn} conflicted on key `{key}` (it changed since it was read, or another transaction holds it); nothing was applied: run it again")]
    Conflict {
        /// The transaction.
        txn: TxnId,
        /// The key it conflicted on.
        key: String,
    },
    /// The transaction was aborted by recovery (a shard stopped waiting for
    /// its decision), or a shard had no room to keep its writes beside those
    /// of the transactions prepared there at the time; nothing was applied.
    /// Run it again.
    #[error("transaction {txn} was aborted: {reason}; nothing was applied: run it again")]
    Aborted {
        /// The transaction.
        txn: TxnId,
        /// Why.
        reason: String,
    },
    /// A shard could not be reached or could not reach its storage, for a
    /// reason that may pass (it crashed and restarts, its node died, a call
    /// timed out), and the transaction did not commit. Run it again once the
    /// shard is back. A cause that cannot pass (the runtime shut down, a type
    /// not registered) is [`KvError::Runtime`] instead.
    #[error(
        "shard {shard} is unavailable ({source}); the transaction did not commit: run it again"
    )]
    Unavailable {
        /// The shard's index.
        shard: usize,
        /// What failed.
        source: Error,
    },
    /// Whether the transaction committed is not known here (its decision
    /// could not be stored or read); the store will settle it either way,
    /// atomically. Read its keys to learn the outcome before running it again.
    #[error("the outcome of transaction {txn} is unknown: {cause}; it is committed on every shard or on none: read its keys before running it again")]
    InDoubt {
        /// The transaction.
        txn: TxnId,
        /// Why.
        cause: String,
    },
    /// [`KvStore::transact`] ran out of attempts.
    #[error("transaction gave up after {attempts} attempts; the last: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<KvError>,
    },
    /// A value could not be encoded, or a stored value did not decode as the
    /// type asked for.
    #[error("value of key `{key}`: {cause}; read it as the type it was written as")]
    Codec {
        /// The key.
        key: String,
        /// The encoder's or decoder's message.
        cause: String,
    },
    /// The runtime failed for good (it shut down, or a shard's type is not
    /// registered), or the store could not be opened as asked (an
    /// [`Error::InvalidArgument`] names the setting); running the
    /// transaction again cannot help, and it did not commit.
    #[error(transparent)]
    Runtime(#[from] Error),
}

impl KvError {
    /// Whether running the transaction again may succeed and cannot apply it
    /// twice: conflicts, aborts and shards unavailable for a reason that may
    /// pass.
    pub fn is_retryable(&self) -> bool {
        match self {
            KvError::Conflict { .. } | KvError::Aborted { .. } => true,
            KvError::Unavailable { source, .. } => !is_permanent(source),
            _ => false,
        }
    }

    /// A failed call to `shard`: [`KvError::Unavailable`] if its cause may
    /// pass, else the cause itself, so that nobody waits for it to pass.
    fn unavailable(shard: usize, source: Error) -> KvError {
        if is_permanent(&source) {
            KvError::Runtime(source)
        } else {
            KvError::Unavailable { shard, source }
        }
    }
}

/// Whether a call that failed with `e` fails again however often it is
/// made: the runtime is gone, or the call itself is wrong (a type or
/// function not registered, a message that does not fit). Everything else
/// (a shard that crashed and restarts, a node that died, a timeout, its
/// storage unreachable) may pass.
fn is_permanent(e: &Error) -> bool {
    matches!(
        e.root_cause(),
        Error::ShutDown
            | Error::FunctionNotRegistered { .. }
            | Error::TypeMismatch { .. }
            | Error::ArityMismatch { .. }
            | Error::Serialization(_)
            | Error::InvalidArgument(_)
            | Error::Startup(_)
            | Error::Unauthenticated { .. }
            | Error::RegistryMismatch { .. }
    )
}

/// A transaction's id: unique across processes (a random half drawn once
/// per process, and a counter).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxnId {
    origin: u64,
    seq: u64,
}

impl TxnId {
    fn next() -> TxnId {
        static ORIGIN: LazyLock<u64> = LazyLock::new(|| NodeId::random().0);
        static SEQ: AtomicU64 = AtomicU64::new(1);
        TxnId {
            origin: *ORIGIN,
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}.{}", self.origin, self.seq)
    }
}

impl std::fmt::Debug for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TxnId({self})")
    }
}

/// A transaction's decision, as stored under its id.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Decision {
    /// Committed; each key written, with the version it commits at.
    Commit(Vec<(String, u64)>),
    Abort,
}

impl Decision {
    fn is_commit(&self) -> bool {
        matches!(self, Decision::Commit(_))
    }
}

/// What a committed transaction read and wrote: each key with its version
/// (a read's version is the one it saw; a write's, the one it made). Enough
/// to check a history for serializability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// The transaction.
    pub txn: TxnId,
    /// Keys read (from the store, not its own writes) and their versions.
    pub reads: Vec<(String, u64)>,
    /// Keys written and the versions they committed at.
    pub writes: Vec<(String, u64)>,
}

/// Faults a test can inject into a store (the `testing` feature): each
/// number `n` makes the event happen at every `n`-th arrival at its point
/// (0: never). A shard counts per incarnation; a coordinator per store.
#[cfg(feature = "testing")]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KvFaults {
    /// A shard panics after storing a prepared intent, before voting.
    pub shard_after_prepare: u64,
    /// A shard panics after storing a one-shard commit's decision, before
    /// applying it.
    pub shard_after_decision: u64,
    /// A shard panics after applying the first write of a commit.
    pub shard_mid_apply: u64,
    /// The coordinator stops after every shard voted yes, before deciding
    /// (the call returns [`KvError::InDoubt`], as a crashed client would
    /// return nothing).
    pub coordinator_after_prepare: u64,
    /// The coordinator stops after storing Commit, before telling any shard.
    pub coordinator_after_decision: u64,
    /// The coordinator stops after telling one shard to commit.
    pub coordinator_mid_commit: u64,
}

/// Options of a store before it opens.
///
/// Two kinds: the shards' (`shards`, `lock_ttl`, `detached`), fixed by the
/// open that starts them, which a later open must repeat while they run (it
/// is refused, naming the difference, otherwise); and the client's
/// (`max_attempts`, `call_timeout`), which each open chooses for the handle
/// it returns. Settings that cannot work are refused:
///
/// ```
/// use rayx::services::kv::{KvError, KvStore};
/// use std::time::Duration;
///
/// let rt = rayx::init()?;
/// let zero_ttl = KvStore::builder("doc-ttl").lock_ttl(Duration::ZERO).open(&rt);
/// assert!(matches!(zero_ttl, Err(KvError::Runtime(rayx::Error::InvalidArgument(_)))));
/// let store = KvStore::builder("doc-ttl").lock_ttl(Duration::from_secs(1)).open(&rt)?;
/// // The shards run with a 1 s TTL: another one is refused...
/// assert!(KvStore::builder("doc-ttl").open(&rt).is_err());
/// // ...while a client's own settings are its own.
/// let patient = KvStore::builder("doc-ttl")
///     .lock_ttl(Duration::from_secs(1))
///     .max_attempts(1000)
///     .open(&rt)?;
/// # drop((store, patient));
/// # Ok::<(), KvError>(())
/// ```
#[derive(Clone, Debug)]
pub struct KvStoreBuilder {
    name: String,
    shards: usize,
    lock_ttl: Duration,
    max_attempts: u32,
    call_timeout: Duration,
    detached: bool,
    scheduling: Scheduling,
    #[cfg(feature = "testing")]
    faults: KvFaults,
}

impl KvStoreBuilder {
    /// Shards (default 4; 1 to `u32::MAX`). A store keeps its shard count:
    /// opening it again with another fails.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }
    /// How long a shard holds a prepared transaction without a decision
    /// before it aborts it (default 2 s; more than zero). Short: a slow
    /// coordinator's transactions abort; long: a dead one's keys stay locked
    /// that long. The shards' setting: fixed while they run.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }
    /// Attempts [`KvStore::transact`] makes (default 100; at least 1). This
    /// client's setting.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// How long a call to a shard may take before the shard counts as
    /// unavailable (default 30 s; more than zero). This client's setting.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }
    /// Keeps the shards alive when every handle is gone, until the runtime
    /// stops (Ray's detached actors); by default they go with the last
    /// handle. The shards' setting: fixed while they run.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }
    /// Where the shards this open starts may run (default: the head's
    /// placement, Ray's hybrid policy); e.g. `Scheduling::Spread` over the
    /// cluster's nodes. Shards already running stay where they are.
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.scheduling = scheduling;
        self
    }
    /// Faults to inject, for tests (the shards' are fixed while they run).
    #[cfg(feature = "testing")]
    pub fn faults(mut self, faults: KvFaults) -> Self {
        self.faults = faults;
        self
    }

    /// Starts the store's shards, or finds them if the store is open already
    /// (shards are named actors `NAME/i` in the namespace `rayx.kv`). Fails
    /// with [`Error::InvalidArgument`] if a setting cannot work, or differs
    /// from the one the store has or its running shards were started with.
    pub fn open(self, rt: &Runtime) -> Result<KvStore> {
        self.check()?;
        let meta = meta_key(&self.name);
        let count = self.shards.to_string();
        if !rt.kv_put(&meta, count.as_bytes(), false)? {
            let stored = rt.kv_get(&meta)?.unwrap_or_default();
            if stored != count.as_bytes() {
                return Err(Error::InvalidArgument(format!(
                    "store `{}` has {} shards, not {}: open it with its own count",
                    self.name,
                    String::from_utf8_lossy(&stored),
                    self.shards
                ))
                .into());
            }
        }
        let mut shards = Vec::with_capacity(self.shards);
        for index in 0..self.shards {
            let mut b = rt
                .actor_of(Shard::new, self.shard_config(index as u32))
                .name(format!("{}/{index}", self.name))
                .namespace("rayx.kv")
                .get_if_exists()
                .scheduling(self.scheduling)
                .max_restarts(Retries::Infinite);
            if self.detached {
                b = b.detached();
            }
            shards.push(b.spawn()?);
        }
        let store = KvStore {
            name: self.name.clone(),
            shards,
            max_attempts: self.max_attempts,
            call_timeout: self.call_timeout,
            rt: Some(rt.downgrade()),
            #[cfg(feature = "testing")]
            faults: self.faults.clone(),
            #[cfg(feature = "testing")]
            arrivals: std::sync::Arc::default(),
        };
        store.check_running(&self.shard_config(0))?;
        Ok(store)
    }

    /// Refuses the settings that cannot work.
    fn check(&self) -> Result<()> {
        let refuse = |why: String| Err(KvError::Runtime(Error::InvalidArgument(why)));
        super::check_service_name("store", &self.name)?;
        if self.shards == 0 || self.shards > u32::MAX as usize {
            return refuse(format!(
                "a store needs 1 to {} shards, not {}",
                u32::MAX,
                self.shards
            ));
        }
        if self.lock_ttl.is_zero() {
            return refuse(format!(
                "store `{}`: lock_ttl must be more than zero (a shard would abort every prepared transaction before its coordinator could decide it)",
                self.name
            ));
        }
        if self.max_attempts == 0 {
            return refuse(format!(
                "store `{}`: max_attempts must be at least 1 (transact would run nothing)",
                self.name
            ));
        }
        if self.call_timeout.is_zero() {
            return refuse(format!(
                "store `{}`: call_timeout must be more than zero (a zero timeout only looks, so every call to a shard would fail)",
                self.name
            ));
        }
        Ok(())
    }

    /// What shard `index` is started with.
    fn shard_config(&self, index: u32) -> ShardConfig {
        ShardConfig {
            store: self.name.clone(),
            index,
            lock_ttl: self.lock_ttl,
            detached: self.detached,
            #[cfg(feature = "testing")]
            faults: self.faults.clone(),
        }
    }
}

/// A client of a transactional store: `Clone + Send + Sync`, and
/// serializable, so tasks and actors can take it as an argument (there it
/// uses the runtime it runs in).
#[derive(Clone, Serialize, Deserialize)]
pub struct KvStore {
    name: String,
    shards: Vec<ActorHandle<Shard>>,
    max_attempts: u32,
    call_timeout: Duration,
    #[serde(skip, default = "runtime_here")]
    rt: Option<WeakRuntime>,
    #[cfg(feature = "testing")]
    faults: KvFaults,
    #[cfg(feature = "testing")]
    #[serde(skip)]
    arrivals: std::sync::Arc<[AtomicU64; 3]>,
}

fn runtime_here() -> Option<WeakRuntime> {
    Runtime::current().map(|rt| rt.downgrade())
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("name", &self.name)
            .field("shards", &self.shards.len())
            .finish()
    }
}

fn encode_value<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<ByteBuf> {
    rmp_serde::to_vec(value)
        .map(ByteBuf::from)
        .map_err(|e| KvError::Codec {
            key: key.to_string(),
            cause: e.to_string(),
        })
}

fn decode_value<T: DeserializeOwned>(key: &str, value: &Option<ByteBuf>) -> Result<Option<T>> {
    value
        .as_ref()
        .map(|b| {
            rmp_serde::from_slice(b).map_err(|e| KvError::Codec {
                key: key.to_string(),
                cause: e.to_string(),
            })
        })
        .transpose()
}

impl KvStore {
    /// Options for the store `name` (default: 4 shards).
    pub fn builder(name: impl Into<String>) -> KvStoreBuilder {
        KvStoreBuilder {
            name: name.into(),
            shards: 4,
            lock_ttl: Duration::from_secs(2),
            max_attempts: 100,
            call_timeout: Duration::from_secs(30),
            detached: false,
            scheduling: Scheduling::Default,
            #[cfg(feature = "testing")]
            faults: KvFaults::default(),
        }
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its number of shards.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
    }

    /// The shard `key` lives on.
    pub fn shard_of(&self, key: &str) -> usize {
        (super::fnv1a(key.as_bytes()) % self.shards.len() as u64) as usize
    }

    /// The value of `key`, as last committed (`None`: absent); read again
    /// if its shard was unavailable, as [`transact`](Self::transact) does.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.transact(|txn| txn.get(key))
    }

    /// Stores `value` under `key` (a transaction of one write, run again
    /// after a conflict).
    pub fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.transact(|txn| txn.put(key, value))
    }

    /// Deletes `key`; true if it was there.
    pub fn delete(&self, key: &str) -> Result<bool> {
        self.transact(|txn| {
            let existed = txn.exists(key)?;
            txn.delete(key);
            Ok(existed)
        })
    }

    /// Starts a transaction.
    pub fn begin(&self) -> Txn<'_> {
        Txn {
            store: self,
            id: TxnId::next(),
            reads: BTreeMap::new(),
            writes: BTreeMap::new(),
        }
    }

    /// Runs `f` in a transaction and commits it; after a conflict, an abort or
    /// an unavailable shard (nothing applied), runs it again in a new one, up
    /// to the store's `max_attempts`, with exponential backoff. `f` may run
    /// several times: it should have no effects outside the transaction.
    /// A failure that cannot pass (the runtime shut down) returns at once.
    pub fn transact<R>(&self, mut f: impl FnMut(&mut Txn<'_>) -> Result<R>) -> Result<R> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut txn = self.begin();
            let seq = txn.id.seq;
            let out = f(&mut txn).and_then(|r| txn.commit().map(|_| r));
            match out {
                Err(e) if e.is_retryable() => {
                    // A call that was under way when the runtime stopped may
                    // fail with a cause that looks passing (its actor died).
                    if self.runtime_gone() {
                        return Err(KvError::Runtime(Error::ShutDown));
                    }
                    if attempt >= self.max_attempts {
                        return Err(KvError::GaveUp {
                            attempts: attempt,
                            last: Box::new(e),
                        });
                    }
                    std::thread::sleep(backoff(attempt, seq));
                }
                other => return other,
            }
        }
    }

    /// Refuses a store whose shards run with other settings than `want` (an
    /// earlier open started them, and they keep their settings while they
    /// run, restarts included); names each difference.
    fn check_running(&self, want: &ShardConfig) -> Result<()> {
        let calls: Vec<_> = self.shards.iter().map(|s| s.call(Settings)).collect();
        for (shard, reply) in calls.into_iter().enumerate() {
            let mut attempt = 1;
            let mut reply = reply.get_timeout(self.call_timeout);
            let running = loop {
                let e = match reply {
                    Ok(cfg) => break cfg,
                    Err(e) => KvError::unavailable(shard, e),
                };
                // A shard that crashes restarts: ask it again, as transact would.
                if !e.is_retryable() || attempt >= self.max_attempts {
                    return Err(e);
                }
                std::thread::sleep(backoff(attempt, shard as u64));
                attempt += 1;
                reply = self.shards[shard]
                    .call(Settings)
                    .get_timeout(self.call_timeout);
            };
            let mut diffs = Vec::new();
            if running.lock_ttl != want.lock_ttl {
                diffs.push(format!(
                    "lock_ttl {:?}, not {:?}",
                    running.lock_ttl, want.lock_ttl
                ));
            }
            if running.detached != want.detached {
                diffs.push(format!(
                    "detached {}, not {}",
                    running.detached, want.detached
                ));
            }
            #[cfg(feature = "testing")]
            if running.faults != want.faults {
                diffs.push(format!(
                    "faults {:?}, not {:?}",
                    running.faults, want.faults
                ));
            }
            if !diffs.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "store `{}` runs with {}: open it with the settings its shards were started with (they keep them until every handle is gone, or the runtime stops if detached)",
                    self.name,
                    diffs.join(", ")
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Whether the runtime this client was made in has stopped.
    fn runtime_gone(&self) -> bool {
        self.rt.as_ref().is_some_and(|rt| rt.upgrade().is_none())
    }

    fn runtime(&self) -> Result<Runtime> {
        self.rt
            .as_ref()
            .and_then(WeakRuntime::upgrade)
            .ok_or(KvError::Runtime(Error::ShutDown))
    }

    /// Reads keys from their shards, in parallel; in `keys`' order.
    fn read(&self, keys: &[String]) -> Result<Vec<Versioned>> {
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            by_shard.entry(self.shard_of(k)).or_default().push(i);
        }
        let calls: Vec<_> = by_shard
            .into_iter()
            .map(|(shard, idx)| {
                let keys = idx.iter().map(|&i| keys[i].clone()).collect();
                (shard, idx, self.shards[shard].call(Read { keys }))
            })
            .collect();
        let mut out = vec![Versioned::default(); keys.len()];
        for (shard, idx, reply) in calls {
            match reply.get_timeout(self.call_timeout) {
                Ok(Answer::Done(values)) => {
                    for (i, v) in idx.into_iter().zip(values) {
                        out[i] = v;
                    }
                }
                Ok(Answer::Unavailable(source)) | Err(source) => {
                    return Err(KvError::unavailable(shard, source))
                }
            }
        }
        Ok(out)
    }

    /// Stores `decision` for `txn` unless one is there; the decision that
    /// stands. `None`: it could not be learned.
    fn decide(&self, txn: TxnId, decision: &Decision) -> Result<Decision> {
        let rt = self.runtime()?;
        let key = decision_key(&self.name, txn);
        let in_doubt = |cause: String| KvError::InDoubt { txn, cause };
        let bytes = encode(decision)?;
        let stored = rt.kv_put(&key, &bytes, false);
        if let Ok(true) = stored {
            return Ok(decision.clone());
        }
        if let (Err(e @ Error::InvalidArgument(_)), true) = (&stored, decision.is_commit()) {
            // A Commit refused as it is (its keys too large for one record)
            // before anything was stored: it stands nowhere, and never will.
            // (An Abort, a few bytes under a key every open checked, is
            // never refused so.)
            return Err(KvError::Runtime(Error::InvalidArgument(format!(
                "the decision of transaction {txn} (the keys it writes) cannot be stored: {e}"
            ))));
        }
        match rt.kv_get(&key) {
            Ok(Some(b)) => decode(&b).map_err(|e| in_doubt(e.to_string())),
            Ok(None) => Err(in_doubt(match stored {
                Err(e) => format!("its decision could not be stored: {e}"),
                Ok(_) => "its decision vanished".to_string(),
            })),
            Err(e) => Err(in_doubt(format!("its decision could not be read: {e}"))),
        }
    }

    /// Deletes a decision no shard needs any more (every shard applied it,
    /// or it is an abort this coordinator will not contradict).
    fn forget(&self, txn: TxnId) {
        if let Ok(rt) = self.runtime() {
            // Best effort: a leftover decision is only a small leak.
            let _ = rt.kv_delete(&decision_key(&self.name, txn));
        }
    }

    /// Tells shards the decision and waits for them; true if all applied it.
    fn tell(&self, txn: TxnId, shards: impl Iterator<Item = usize>, commit: bool) -> bool {
        let calls: Vec<_> = shards
            .map(|s| self.shards[s].call(Decide { txn, commit }))
            .collect();
        // Every reply is waited for, so the shards are done when this returns.
        let failed = calls
            .into_iter()
            .filter(|r| !matches!(r.get_timeout(self.call_timeout), Ok(Answer::Done(()))))
            .count();
        failed == 0
    }

    /// Whether the injected coordinator fault at `point` fires now.
    #[cfg(feature = "testing")]
    fn coordinator_stops(&self, point: usize) -> bool {
        let every = match point {
            0 => self.faults.coordinator_after_prepare,
            1 => self.faults.coordinator_after_decision,
            _ => self.faults.coordinator_mid_commit,
        };
        every > 0
            && (self.arrivals[point].fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every)
    }

    #[cfg(not(feature = "testing"))]
    fn coordinator_stops(&self, _: usize) -> bool {
        false
    }
}

/// The backoff before attempt `attempt + 1`: 50 µs doubling to 20 ms, times
/// a jitter in [0.5, 1.5) drawn from the transaction's id.
fn backoff(attempt: u32, seed: u64) -> Duration {
    let base = 50u64 << attempt.min(9);
    let jitter = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
    Duration::from_micros(base.min(20_000) * (512 + jitter) / 1024)
}

/// A transaction: reads see the store as committed (and the transaction's
/// own writes), writes are buffered until [`commit`](Txn::commit). Dropped
/// without committing, it leaves nothing behind.
pub struct Txn<'s> {
    store: &'s KvStore,
    id: TxnId,
    /// The first read of each key: its version and value (later reads of the
    /// key see the same).
    reads: BTreeMap<String, Versioned>,
    writes: BTreeMap<String, Option<ByteBuf>>,
}

impl std::fmt::Debug for Txn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("id", &self.id)
            .field("reads", &self.reads.len())
            .field("writes", &self.writes.len())
            .finish()
    }
}

/// One shard's part of a commit.
#[derive(Default)]
struct Part {
    reads: Vec<(String, u64)>,
    writes: Vec<WriteOp>,
}

impl Txn<'_> {
    /// The transaction's id.
    pub fn id(&self) -> TxnId {
        self.id
    }

    /// The value of `key` (`None`: absent), as this transaction sees it.
    pub fn get<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>> {
        Ok(self.get_many(&[key])?.pop().flatten())
    }

    /// The values of `keys`, fetched from their shards in parallel.
    pub fn get_many<T: DeserializeOwned>(&mut self, keys: &[&str]) -> Result<Vec<Option<T>>> {
        let missing: Vec<String> = keys
            .iter()
            .filter(|k| !self.writes.contains_key(**k) && !self.reads.contains_key(**k))
            .map(|k| k.to_string())
            .collect();
        if !missing.is_empty() {
            let values = self.store.read(&missing)?;
            for (k, v) in missing.into_iter().zip(values) {
                self.reads.entry(k).or_insert(v);
            }
        }
        keys.iter()
            .map(|k| match self.writes.get(*k) {
                Some(w) => decode_value(k, w),
                None => decode_value(k, &self.reads.get(*k).and_then(|v| v.value.clone())),
            })
            .collect()
    }

    /// Whether `key` has a value, as this transaction sees it.
    pub fn exists(&mut self, key: &str) -> Result<bool> {
        Ok(self.get::<serde::de::IgnoredAny>(key)?.is_some())
    }

    /// Writes `value` under `key` at commit.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        let bytes = encode_value(key, value)?;
        self.writes.insert(key.to_string(), Some(bytes));
        Ok(())
    }

    /// Deletes `key` at commit.
    pub fn delete(&mut self, key: &str) {
        self.writes.insert(key.to_string(), None);
    }

    /// Commits: atomically on every shard, or not at all. A conflict fails
    /// with [`KvError::Conflict`] and leaves nothing behind.
    pub fn commit(self) -> Result<Committed> {
        let mut parts: BTreeMap<usize, Part> = BTreeMap::new();
        for (key, v) in &self.reads {
            let part = parts.entry(self.store.shard_of(key)).or_default();
            part.reads.push((key.clone(), v.version));
        }
        for (key, value) in &self.writes {
            let part = parts.entry(self.store.shard_of(key)).or_default();
            part.writes.push(WriteOp {
                key: key.clone(),
                value: value.clone(),
            });
        }
        let reads: Vec<(String, u64)> = self
            .reads
            .iter()
            .map(|(k, v)| (k.clone(), v.version))
            .collect();
        let committed = |writes| Committed {
            txn: self.id,
            reads: reads.clone(),
            writes,
        };
        if self.writes.is_empty() {
            // One read is trivially serializable.
            if self.reads.len() > 1 {
                self.validate(parts)?;
            }
            return Ok(committed(Vec::new()));
        }
        let writes = if parts.len() == 1 {
            self.commit_one(parts)?
        } else {
            self.commit_many(parts)?
        };
        Ok(committed(writes))
    }

    fn conflict(&self, key: String) -> KvError {
        KvError::Conflict { txn: self.id, key }
    }

    /// `shard` had no room to keep this transaction's writes beside those of
    /// the transactions prepared there now: aborted, to run again.
    fn crowded(&self, shard: usize, reason: String) -> KvError {
        KvError::Aborted {
            txn: self.id,
            reason: format!("shard {shard} could not keep it: {reason}"),
        }
    }

    /// `shard`'s vote (or the failed call for it): its versions if yes, else
    /// the error this transaction fails with.
    fn counted(&self, shard: usize, vote: Result<Vote, Error>) -> Result<Vec<u64>> {
        Err(match vote {
            Ok(Vote::Yes(versions)) => return Ok(versions),
            Ok(Vote::Conflict(key)) => self.conflict(key),
            Ok(Vote::Crowded(reason)) => self.crowded(shard, reason),
            Ok(Vote::TooLarge(why)) => KvError::Runtime(Error::InvalidArgument(why)),
            Ok(Vote::Unavailable(source)) | Err(source) => KvError::unavailable(shard, source),
        })
    }

    /// A read-only transaction: every shard checks its reads, in parallel.
    fn validate(&self, parts: BTreeMap<usize, Part>) -> Result<()> {
        let calls: Vec<_> = parts
            .into_iter()
            .map(|(shard, p)| {
                let call = Validate {
                    txn: self.id,
                    reads: p.reads,
                };
                (shard, self.store.shards[shard].call(call))
            })
            .collect();
        let mut failed = None;
        for (shard, reply) in calls {
            if let Err(e) = self.counted(shard, reply.get_timeout(self.store.call_timeout)) {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// All keys on one shard: one call.
    fn commit_one(&self, parts: BTreeMap<usize, Part>) -> Result<Vec<(String, u64)>> {
        let Some((shard, part)) = parts.into_iter().next() else {
            return Ok(Vec::new());
        };
        let keys: Vec<String> = part.writes.iter().map(|w| w.key.clone()).collect();
        let call = CommitOne {
            txn: self.id,
            reads: part.reads,
            writes: part.writes,
        };
        let source = match self.store.shards[shard]
            .call(call)
            .get_timeout(self.store.call_timeout)
        {
            Ok(Outcome::Committed(versions)) => {
                self.store.forget(self.id);
                return Ok(keys.into_iter().zip(versions).collect());
            }
            Ok(Outcome::Conflict(key)) => return Err(self.conflict(key)),
            Ok(Outcome::Crowded(reason)) => return Err(self.crowded(shard, reason)),
            // The shard kept nothing of it: no fence is needed.
            Ok(Outcome::TooLarge(why)) => {
                return Err(KvError::Runtime(Error::InvalidArgument(why)))
            }
            Ok(Outcome::Aborted) => {
                return Err(KvError::Aborted {
                    txn: self.id,
                    reason: "its decision was already Abort".into(),
                })
            }
            Ok(Outcome::Unavailable(source)) | Err(source) => source,
        };
        // The call failed somewhere between nothing done and all done. Fence
        // it: Abort put-if-absent either wins (the shard can no longer
        // commit it) or finds the shard's Commit. The fence stays: the call
        // may still be running.
        match self.store.decide(self.id, &Decision::Abort)? {
            Decision::Commit(versions) => {
                self.store.tell(self.id, std::iter::once(shard), true);
                Ok(versions)
            }
            Decision::Abort => {
                self.store.tell(self.id, std::iter::once(shard), false);
                Err(KvError::unavailable(shard, source))
            }
        }
    }

    /// Keys on several shards: two-phase commit, coordinated here.
    fn commit_many(&self, parts: BTreeMap<usize, Part>) -> Result<Vec<(String, u64)>> {
        let shards: Vec<usize> = parts.keys().copied().collect();
        let calls: Vec<_> = parts
            .into_iter()
            .map(|(shard, p)| {
                let keys: Vec<String> = p.writes.iter().map(|w| w.key.clone()).collect();
                let call = Prepare {
                    txn: self.id,
                    reads: p.reads,
                    writes: p.writes,
                };
                (shard, keys, self.store.shards[shard].call(call))
            })
            .collect();
        let mut written = Vec::new();
        let mut failed = None;
        for (shard, keys, reply) in calls {
            match self.counted(shard, reply.get_timeout(self.store.call_timeout)) {
                Ok(versions) => written.extend(keys.into_iter().zip(versions)),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(err) = failed {
            // No decision is stored: only this coordinator could store Commit.
            // A shard whose vote was lost may hold the intent: it is told too.
            self.store.tell(self.id, shards.iter().copied(), false);
            return Err(err);
        }
        let in_doubt = |cause: &str| KvError::InDoubt {
            txn: self.id,
            cause: cause.into(),
        };
        if self.store.coordinator_stops(0) {
            return Err(in_doubt(
                "injected: the coordinator stopped before deciding",
            ));
        }
        match self
            .store
            .decide(self.id, &Decision::Commit(written.clone()))
        {
            Ok(Decision::Commit(_)) => {}
            Err(e @ KvError::Runtime(Error::InvalidArgument(_))) => {
                // Its Commit was refused before anything was stored (see
                // `decide`): it did not commit, and the shards let its keys
                // go now rather than at the lock TTL.
                self.store.tell(self.id, shards.iter().copied(), false);
                return Err(e);
            }
            Err(e) => return Err(e),
            Ok(Decision::Abort) => {
                self.store.tell(self.id, shards.iter().copied(), false);
                // It will never write Commit: the abort can go.
                self.store.forget(self.id);
                return Err(KvError::Aborted {
                    txn: self.id,
                    reason: "a shard stopped waiting for its decision (lock TTL) and aborted it"
                        .into(),
                });
            }
        }
        if self.store.coordinator_stops(1) {
            return Err(in_doubt("injected: the coordinator stopped after deciding"));
        }
        if self.store.coordinator_stops(2) {
            self.store
                .tell(self.id, shards.iter().copied().take(1), true);
            return Err(in_doubt(
                "injected: the coordinator stopped while committing",
            ));
        }
        if self.store.tell(self.id, shards.iter().copied(), true) {
            self.store.forget(self.id);
        }
        // Committed: a shard that did not answer applies the stored decision
        // when it reloads or meets the lock.
        Ok(written)
    }
}
