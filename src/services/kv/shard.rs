//! The shard actor of the transactional store: its keys, each with a version
//! and at most one prepared writer or any prepared readers; the transactions
//! prepared on it; and their write-through to the runtime's key-value store,
//! from which a restarted shard reloads.
//!
//! What is kept in the runtime's store (`rt.kv_put`), under `rayx.kv/STORE/`,
//! where `STORE` is the store's name with `%` written `%25` and `/` written
//! `%2F` (so it holds no `/`, and the first `/` after it ends it: a store's
//! keys never meet another store's, whatever the names and keys):
//! - `d/KEY`: a key's committed version and value (a delete keeps its version,
//!   so versions never repeat);
//! - `sN/intents`: shard N's prepared transactions, each with its reads and its
//!   writes at the versions they will commit at (written before a shard votes
//!   yes, rewritten when one finishes);
//! - `t/TXN`: a transaction's decision, written once with put-if-absent by its
//!   coordinator (Commit or Abort) or by a shard recovering it (Abort): the
//!   first writer wins and everyone follows the record.

use super::{Decision, TxnId};
use crate::{Actor, ActorContext, Error, Handler, Message, Runtime, MAX_KV_VALUE};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The prefix of every runtime-store key of `store`: `rayx.kv/STORE/`, with
/// `STORE` escaped so that it holds no `/`. What follows the prefix is
/// unambiguous too: a data key is the only kind that starts with `d/`, and
/// the user's key is all the rest, so keys need no escaping.
fn store_prefix(store: &str) -> String {
    let mut out = String::with_capacity("rayx.kv//".len() + store.len());
    out.push_str("rayx.kv/");
    for c in store.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out.push('/');
    out
}

/// The runtime-store key of a data key of `store`.
pub(super) fn data_key(store: &str, key: &str) -> String {
    format!("{}d/{key}", store_prefix(store))
}

/// The runtime-store key of a transaction's decision.
pub(super) fn decision_key(store: &str, txn: TxnId) -> String {
    format!("{}t/{txn}", store_prefix(store))
}

/// The runtime-store key of a shard's prepared transactions.
fn intents_key(store: &str, shard: u32) -> String {
    format!("{}s{shard}/intents", store_prefix(store))
}

/// The runtime-store key of a store's shard count.
pub(super) fn meta_key(store: &str) -> String {
    format!("{}shards", store_prefix(store))
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    rmp_serde::to_vec(value).map_err(|e| Error::Serialization(e.to_string()))
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Serialization(e.to_string()))
}

/// What a shard is started with (its constructor's argument). Fixed for
/// its life, restarts included: a later open of the store must ask for the
/// same (see [`Settings`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct ShardConfig {
    pub(super) store: String,
    pub(super) index: u32,
    /// How long a prepared transaction may wait for its decision before the
    /// shard aborts it (if nobody decided first).
    pub(super) lock_ttl: Duration,
    /// Whether the shard outlives its handles.
    pub(super) detached: bool,
    #[cfg(feature = "testing")]
    pub(super) faults: super::KvFaults,
}

/// A key's committed version and value (`None`: absent or deleted).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Versioned {
    pub(super) version: u64,
    pub(super) value: Option<ByteBuf>,
}

/// One buffered write of a transaction (`None` deletes).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct WriteOp {
    pub(super) key: String,
    pub(super) value: Option<ByteBuf>,
}

/// A write as prepared: the version it commits at is fixed at prepare (the
/// key is locked until then), so applying it again after a crash is a no-op.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct IntentWrite {
    key: String,
    version: u64,
    value: Option<ByteBuf>,
}

/// A prepared transaction as a shard keeps it, in memory and in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Intent {
    reads: Vec<String>,
    writes: Vec<IntentWrite>,
}

impl Intent {
    fn versions(&self) -> Vec<u64> {
        self.writes.iter().map(|w| w.version).collect()
    }
}

/// The configuration the shard runs with, for an open to compare with its
/// own (an open that finds the shards running gets them as they are).
#[derive(Serialize, Deserialize)]
pub(super) struct Settings;
impl Message for Settings {
    type Reply = ShardConfig;
}

/// Reads keys at their committed versions (a lock whose transaction is
/// already decided is resolved first).
#[derive(Serialize, Deserialize)]
pub(super) struct Read {
    pub(super) keys: Vec<String>,
}
impl Message for Read {
    type Reply = Answer<Vec<Versioned>>;
}

/// Checks that a read-only transaction's reads are still current (no locks).
#[derive(Serialize, Deserialize)]
pub(super) struct Validate {
    pub(super) txn: TxnId,
    pub(super) reads: Vec<(String, u64)>,
}
impl Message for Validate {
    type Reply = Vote;
}

/// Phase one of a commit over several shards: validate, lock, persist, vote.
#[derive(Serialize, Deserialize)]
pub(super) struct Prepare {
    pub(super) txn: TxnId,
    pub(super) reads: Vec<(String, u64)>,
    pub(super) writes: Vec<WriteOp>,
}
impl Message for Prepare {
    type Reply = Vote;
}

/// A commit on one shard, in one round: prepare, decide, apply.
#[derive(Serialize, Deserialize)]
pub(super) struct CommitOne {
    pub(super) txn: TxnId,
    pub(super) reads: Vec<(String, u64)>,
    pub(super) writes: Vec<WriteOp>,
}
impl Message for CommitOne {
    type Reply = Outcome;
}

/// Phase two: apply (`commit`) or drop a prepared transaction. Idempotent: a
/// transaction not prepared here is done already.
#[derive(Serialize, Deserialize)]
pub(super) struct Decide {
    pub(super) txn: TxnId,
    pub(super) commit: bool,
}
impl Message for Decide {
    type Reply = Answer<()>;
}

/// A reply, or the storage error that kept the shard from giving it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Answer<T> {
    Done(T),
    Unavailable(Error),
}

/// A shard's vote on a transaction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Vote {
    /// Prepared (or valid): the versions its writes will commit at.
    Yes(Vec<u64>),
    /// This key changed since it was read, or another transaction holds it.
    Conflict(String),
    Unavailable(Error),
    /// Its writes fit, but not beside those of the transactions prepared
    /// here now (why): nothing of it is kept; it may pass once they end.
    Crowded(String),
    /// Its writes on this shard alone are too large to keep (why): nothing
    /// of it is kept, and it can never pass.
    TooLarge(String),
}

/// How a one-shard commit ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) enum Outcome {
    /// Committed; the versions of its writes.
    Committed(Vec<u64>),
    /// Its decision was already Abort (its client fenced a call it lost).
    Aborted,
    Conflict(String),
    Unavailable(Error),
    /// As [`Vote::Crowded`].
    Crowded(String),
    /// As [`Vote::TooLarge`].
    TooLarge(String),
}

/// One key in a shard's memory.
#[derive(Debug, Default)]
struct Entry {
    version: u64,
    value: Option<ByteBuf>,
    /// The prepared transaction that will write it.
    writer: Option<TxnId>,
    /// Prepared transactions that read it (they keep it from changing).
    readers: Vec<TxnId>,
}

struct Prepared {
    intent: Intent,
    /// When this incarnation of the shard took it: prepared here, or reloaded.
    since: Instant,
}

/// A shard actor. Its memory is a cache of the runtime's store plus the locks
/// of its prepared transactions (themselves stored): any storage error drops
/// the memory, and the next call reloads it.
pub(super) struct Shard {
    cfg: ShardConfig,
    state: Option<State>,
}

impl Shard {
    pub(super) fn new(cfg: ShardConfig) -> Shard {
        Shard { cfg, state: None }
    }

    /// Runs `op` on the shard's state, loading it first if this incarnation
    /// has none, and resolving transactions that waited past the lock TTL.
    fn with_state<R>(
        &mut self,
        ctx: &ActorContext<'_, Self>,
        op: impl FnOnce(&mut State) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let st = match self.state.take() {
            Some(st) => st,
            None => State::load(ctx.runtime(), &self.cfg)?,
        };
        let st = self.state.insert(st);
        let out = st.expire_stale().and_then(|()| op(st));
        if out.is_err() || st.broken {
            // Memory and store may differ now: the store is the truth.
            self.state = None;
        }
        out
    }
}

impl Actor for Shard {}

crate::remote_actor!(
    Shard,
    Shard::new,
    [Settings, Read, Validate, Prepare, CommitOne, Decide]
);

impl Handler<Settings> for Shard {
    fn handle(&mut self, _: Settings, _: &mut ActorContext<'_, Self>) -> ShardConfig {
        self.cfg.clone()
    }
}

impl Handler<Read> for Shard {
    fn handle(&mut self, m: Read, ctx: &mut ActorContext<'_, Self>) -> Answer<Vec<Versioned>> {
        match self.with_state(ctx, |st| st.read(&m.keys)) {
            Ok(v) => Answer::Done(v),
            Err(e) => Answer::Unavailable(e),
        }
    }
}

impl Handler<Validate> for Shard {
    fn handle(&mut self, m: Validate, ctx: &mut ActorContext<'_, Self>) -> Vote {
        match self.with_state(ctx, |st| st.conflict(m.txn, &m.reads, &[])) {
            Ok(None) => Vote::Yes(Vec::new()),
            Ok(Some(key)) => Vote::Conflict(key),
            Err(e) => Vote::Unavailable(e),
        }
    }
}

impl Handler<Prepare> for Shard {
    fn handle(&mut self, m: Prepare, ctx: &mut ActorContext<'_, Self>) -> Vote {
        match self.with_state(ctx, |st| {
            let vote = st.prepare(m.txn, m.reads, m.writes)?;
            if let Vote::Yes(_) = vote {
                st.crash_point(CrashPoint::AfterPrepare);
            }
            Ok(vote)
        }) {
            Ok(vote) => vote,
            Err(e) => Vote::Unavailable(e),
        }
    }
}

impl Handler<CommitOne> for Shard {
    fn handle(&mut self, m: CommitOne, ctx: &mut ActorContext<'_, Self>) -> Outcome {
        match self.with_state(ctx, |st| st.commit_one(m)) {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Unavailable(e),
        }
    }
}

impl Handler<Decide> for Shard {
    fn handle(&mut self, m: Decide, ctx: &mut ActorContext<'_, Self>) -> Answer<()> {
        match self.with_state(ctx, |st| st.finish(m.txn, m.commit)) {
            Ok(()) => Answer::Done(()),
            Err(e) => Answer::Unavailable(e),
        }
    }
}

/// Where a test can make a shard panic (with the `testing` feature).
#[derive(Clone, Copy)]
enum CrashPoint {
    /// Its intent stored, its vote not sent.
    AfterPrepare = 0,
    /// A one-shard commit's decision stored, nothing applied.
    AfterDecision = 1,
    /// The first write of a commit stored, the rest not.
    MidApply = 2,
}

struct State {
    rt: Runtime,
    store: String,
    intents_key: String,
    ttl: Duration,
    keys: HashMap<String, Entry>,
    prepared: HashMap<TxnId, Prepared>,
    /// Set when the store may hold more than memory does (a commit decided
    /// but not fully applied): the memory is dropped after this call.
    broken: bool,
    #[cfg(feature = "testing")]
    faults: super::KvFaults,
    #[cfg(feature = "testing")]
    arrivals: [u64; 3],
}

impl State {
    /// Loads the prepared transactions (keys load on first use) and applies
    /// those already decided.
    fn load(rt: Runtime, cfg: &ShardConfig) -> Result<State, Error> {
        let mut st = State {
            rt,
            store: cfg.store.clone(),
            intents_key: intents_key(&cfg.store, cfg.index),
            ttl: cfg.lock_ttl,
            keys: HashMap::new(),
            prepared: HashMap::new(),
            broken: false,
            #[cfg(feature = "testing")]
            faults: cfg.faults.clone(),
            #[cfg(feature = "testing")]
            arrivals: [0; 3],
        };
        let Some(bytes) = st.rt.kv_get(&st.intents_key)? else {
            return Ok(st);
        };
        let intents: Vec<(TxnId, Intent)> = decode(&bytes)?;
        let now = Instant::now();
        for (txn, intent) in intents {
            st.lock(txn, &intent)?;
            st.prepared.insert(txn, Prepared { intent, since: now });
        }
        let txns: Vec<TxnId> = st.prepared.keys().copied().collect();
        for txn in txns {
            if let Some(d) = st.decision(txn)? {
                st.finish(txn, d.is_commit())?;
            }
        }
        Ok(st)
    }

    /// The key's entry, loaded from the store on first use.
    fn entry(&mut self, key: &str) -> Result<&mut Entry, Error> {
        if !self.keys.contains_key(key) {
            let entry = match self.rt.kv_get(&data_key(&self.store, key))? {
                Some(bytes) => {
                    let v: Versioned = decode(&bytes)?;
                    Entry {
                        version: v.version,
                        value: v.value,
                        ..Entry::default()
                    }
                }
                None => Entry::default(),
            };
            return Ok(self.keys.entry(key.to_owned()).or_insert(entry));
        }
        Ok(self
            .keys
            .get_mut(key)
            .expect("the key is in memory: checked just above"))
    }

    fn decision(&self, txn: TxnId) -> Result<Option<Decision>, Error> {
        match self.rt.kv_get(&decision_key(&self.store, txn))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn read(&mut self, keys: &[String]) -> Result<Vec<Versioned>, Error> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(writer) = self.entry(key)?.writer {
                // Its coordinator may have decided and died: follow the record.
                self.resolve_if_decided(writer)?;
            }
            let e = self.entry(key)?;
            out.push(Versioned {
                version: e.version,
                value: e.value.clone(),
            });
        }
        Ok(out)
    }

    /// The first key `txn` cannot commit on: read at an older version, or
    /// held by another prepared transaction (returned too).
    fn first_conflict(
        &mut self,
        txn: TxnId,
        reads: &[(String, u64)],
        writes: &[WriteOp],
    ) -> Result<Option<(String, Option<TxnId>)>, Error> {
        for (key, version) in reads {
            let e = self.entry(key)?;
            if let Some(w) = e.writer.filter(|w| *w != txn) {
                return Ok(Some((key.clone(), Some(w))));
            }
            if e.version != *version {
                return Ok(Some((key.clone(), None)));
            }
        }
        for w in writes {
            let e = self.entry(&w.key)?;
            let holder = e
                .writer
                .filter(|o| *o != txn)
                .or_else(|| e.readers.iter().copied().find(|r| *r != txn));
            if let Some(holder) = holder {
                return Ok(Some((w.key.clone(), Some(holder))));
            }
        }
        Ok(None)
    }

    /// The key `txn` conflicts on, if any. A lock whose transaction is
    /// already decided is resolved rather than counted; a lock of one in
    /// flight is a conflict at once (no waiting, so no deadlock).
    fn conflict(
        &mut self,
        txn: TxnId,
        reads: &[(String, u64)],
        writes: &[WriteOp],
    ) -> Result<Option<String>, Error> {
        loop {
            match self.first_conflict(txn, reads, writes)? {
                None => return Ok(None),
                Some((key, Some(holder))) => {
                    if !self.resolve_if_decided(holder)? {
                        return Ok(Some(key));
                    }
                }
                Some((key, None)) => return Ok(Some(key)),
            }
        }
    }

    /// Applies `txn`'s decision if there is one; true if it was resolved.
    fn resolve_if_decided(&mut self, txn: TxnId) -> Result<bool, Error> {
        if !self.prepared.contains_key(&txn) {
            return Ok(false);
        }
        match self.decision(txn)? {
            Some(d) => {
                self.finish(txn, d.is_commit())?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn lock(&mut self, txn: TxnId, intent: &Intent) -> Result<(), Error> {
        for key in &intent.reads {
            let e = self.entry(key)?;
            if !e.readers.contains(&txn) {
                e.readers.push(txn);
            }
        }
        for w in &intent.writes {
            self.entry(&w.key)?.writer = Some(txn);
        }
        Ok(())
    }

    /// Validates, locks and stores `txn`'s intent; votes.
    fn prepare(
        &mut self,
        txn: TxnId,
        reads: Vec<(String, u64)>,
        writes: Vec<WriteOp>,
    ) -> Result<Vote, Error> {
        if let Some(p) = self.prepared.get(&txn) {
            return Ok(Vote::Yes(p.intent.versions()));
        }
        if let Some(key) = self.conflict(txn, &reads, &writes)? {
            return Ok(Vote::Conflict(key));
        }
        let mut planned = Vec::with_capacity(writes.len());
        for w in writes {
            // Locked from here to the decision: nothing else moves its version.
            let version = self.entry(&w.key)?.version + 1;
            planned.push(IntentWrite {
                key: w.key,
                version,
                value: w.value,
            });
        }
        let intent = Intent {
            reads: reads.into_iter().map(|(k, _)| k).collect(),
            writes: planned,
        };
        let versions = intent.versions();
        self.lock(txn, &intent)?;
        self.prepared.insert(
            txn,
            Prepared {
                intent,
                since: Instant::now(),
            },
        );
        // Stored before the vote: a shard that restarts still holds its locks.
        match self.save_intents() {
            Ok(()) => Ok(Vote::Yes(versions)),
            // The prepared intents are stored as one record, which this one
            // makes too large: the store refused it as a whole (before
            // storing anything), so it is let go here too, answered as a vote
            // (an error would reload the memory, and with it restart the
            // others' lock TTL).
            Err(Error::InvalidArgument(refused)) => {
                let p = self.prepared.remove(&txn).expect("prepared above");
                self.release(txn, &p.intent);
                let own = encode(&[(&txn, &p.intent)])?.len();
                let others = self.prepared.len();
                if own > MAX_KV_VALUE || others == 0 {
                    return Ok(Vote::TooLarge(format!(
                        "the writes of transaction {txn} on one shard ({own} bytes encoded) \
                         cannot be kept: {refused}"
                    )));
                }
                Ok(Vote::Crowded(format!(
                    "its writes on one shard ({own} bytes encoded) do not fit beside those of \
                     the {others} transactions prepared there now (at most {MAX_KV_VALUE} together)"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// A transaction all of whose keys are on this shard: prepared, decided
    /// and applied in one call. The decision is stored (put-if-absent) so a
    /// client whose call failed can learn the outcome, or fence it.
    fn commit_one(&mut self, m: CommitOne) -> Result<Outcome, Error> {
        let CommitOne { txn, reads, writes } = m;
        let keys: Vec<String> = writes.iter().map(|w| w.key.clone()).collect();
        let versions = match self.prepare(txn, reads, writes)? {
            Vote::Yes(v) => v,
            Vote::Conflict(key) => return Ok(Outcome::Conflict(key)),
            Vote::Unavailable(e) => return Ok(Outcome::Unavailable(e)),
            Vote::Crowded(why) => return Ok(Outcome::Crowded(why)),
            Vote::TooLarge(why) => return Ok(Outcome::TooLarge(why)),
        };
        self.crash_point(CrashPoint::AfterPrepare);
        let decision = Decision::Commit(keys.into_iter().zip(versions.iter().copied()).collect());
        let key = decision_key(&self.store, txn);
        if !self.rt.kv_put(&key, &encode(&decision)?, false)? {
            // Decided already: only a client that lost its call writes first,
            // and it writes Abort.
            if let Some(Decision::Commit(_)) = self.decision(txn)? {
                self.finish_decided(txn);
                return Ok(Outcome::Committed(versions));
            }
            self.finish(txn, false)?;
            return Ok(Outcome::Aborted);
        }
        self.crash_point(CrashPoint::AfterDecision);
        self.finish_decided(txn);
        Ok(Outcome::Committed(versions))
    }

    /// Applies a transaction whose Commit is stored: it is committed whatever
    /// happens here, so a storage error only drops the memory (the reload
    /// applies it).
    fn finish_decided(&mut self, txn: TxnId) {
        if self.finish(txn, true).is_err() {
            self.broken = true;
        }
    }

    /// Applies (`commit`) or drops `txn`, releases its locks and stores the
    /// intents left. A no-op if `txn` is not prepared here.
    fn finish(&mut self, txn: TxnId, commit: bool) -> Result<(), Error> {
        let Some(p) = self.prepared.remove(&txn) else {
            return Ok(());
        };
        if commit {
            for (i, w) in p.intent.writes.iter().enumerate() {
                let record = Versioned {
                    version: w.version,
                    value: w.value.clone(),
                };
                self.rt
                    .kv_put(&data_key(&self.store, &w.key), &encode(&record)?, true)?;
                let e = self.entry(&w.key)?;
                e.version = w.version;
                e.value = w.value.clone();
                if i == 0 {
                    self.crash_point(CrashPoint::MidApply);
                }
            }
        }
        self.release(txn, &p.intent);
        // Last: until this lands a restart finds the intent and applies it
        // again, at the same versions.
        self.save_intents()
    }

    /// Lets go of the keys `txn` locked for `intent`.
    fn release(&mut self, txn: TxnId, intent: &Intent) {
        for key in &intent.reads {
            if let Some(e) = self.keys.get_mut(key) {
                e.readers.retain(|r| *r != txn);
            }
        }
        for w in &intent.writes {
            if let Some(e) = self.keys.get_mut(&w.key) {
                if e.writer == Some(txn) {
                    e.writer = None;
                }
            }
        }
    }

    /// Aborts what waited for its decision longer than the lock TTL, unless
    /// it was decided first: the abort is stored put-if-absent, so either it
    /// wins (and the coordinator, if alive, can no longer commit) or the
    /// coordinator's decision stands and is applied.
    fn expire_stale(&mut self) -> Result<(), Error> {
        if self.prepared.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let stale: Vec<TxnId> = self
            .prepared
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) > self.ttl)
            .map(|(t, _)| *t)
            .collect();
        for txn in stale {
            let key = decision_key(&self.store, txn);
            self.rt.kv_put(&key, &encode(&Decision::Abort)?, false)?;
            let commit = self.decision(txn)?.is_some_and(|d| d.is_commit());
            self.finish(txn, commit)?;
        }
        Ok(())
    }

    fn save_intents(&mut self) -> Result<(), Error> {
        if self.prepared.is_empty() {
            self.rt.kv_delete(&self.intents_key)?;
            return Ok(());
        }
        let intents: Vec<(&TxnId, &Intent)> =
            self.prepared.iter().map(|(t, p)| (t, &p.intent)).collect();
        self.rt
            .kv_put(&self.intents_key, &encode(&intents)?, true)?;
        Ok(())
    }

    #[cfg(feature = "testing")]
    fn crash_point(&mut self, point: CrashPoint) {
        let every = match point {
            CrashPoint::AfterPrepare => self.faults.shard_after_prepare,
            CrashPoint::AfterDecision => self.faults.shard_after_decision,
            CrashPoint::MidApply => self.faults.shard_mid_apply,
        };
        let n = &mut self.arrivals[point as usize];
        *n += 1;
        if every > 0 && (*n).is_multiple_of(every) {
            panic!("rayx.kv: injected shard crash");
        }
    }

    #[cfg(not(feature = "testing"))]
    fn crash_point(&mut self, _: CrashPoint) {}
}
