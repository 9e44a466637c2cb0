//! A lock service's shard: the actor that holds the locks whose names hash
//! to it, their FIFO queues of waiting acquires, the lease timer, and what
//! it persists to survive its restart (see the parent module's docs).

use super::NAMESPACE;
use crate::{
    Actor, AsyncContext, AsyncHandler, Error, Message, NodeId, Runtime, SupervisionEvent,
    WeakRuntime,
};
use parking_lot::{Mutex, MutexGuard};
use rayx_actors::ids::ActorId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{oneshot, Notify};

/// Tokens a shard takes from the store at once.
const TOKEN_BLOCK: u64 = 4096;
/// When the stored lease bound must grow, it grows past what the lease
/// needs by the lease or this, whichever is longer: a busy shard writes it
/// about once per step, not on every grant.
const BOUND_STEP: Duration = Duration::from_secs(1);
/// How far apart the wall clocks of the nodes a shard runs on may be (or
/// one node's clock may be stepped forward) without a quiet period ending
/// too soon.
const CLOCK_SLACK: Duration = Duration::from_secs(1);

/// What a shard is built from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ShardSpec {
    pub(super) service: String,
    pub(super) shard: u32,
    pub(super) max_lease: Duration,
}

/// One shard of a lock service: the locks whose names hash to it.
pub(super) struct LockShard {
    /// This incarnation's state. Only the actor holds it strongly: waiting
    /// calls and the sweeper hold weak references, so it dies with the
    /// incarnation (see the docs of `services::lock`).
    state: Arc<Mutex<Shard>>,
}

impl LockShard {
    pub(super) fn new(spec: ShardSpec) -> LockShard {
        LockShard {
            state: Arc::new(Mutex::new(Shard::new(spec))),
        }
    }
}

impl Actor for LockShard {
    const ASYNC: bool = true;
}

crate::remote_actor!(async LockShard, LockShard::new, [Acquire, Release, Renew, HolderNodeDied]);

/// Acquire `name`: now, or (`wait`) after waiting up to that long; `None`
/// only tries.
#[derive(Serialize, Deserialize)]
pub(super) struct Acquire {
    pub(super) name: String,
    pub(super) lease: Duration,
    pub(super) wait: Option<Duration>,
    pub(super) node: NodeId,
}
impl Message for Acquire {
    type Reply = Result<Grant, Refusal>;
}

/// Release `name` if `token` holds it.
#[derive(Serialize, Deserialize)]
pub(super) struct Release {
    pub(super) name: String,
    pub(super) token: u64,
}
impl Message for Release {
    type Reply = Result<(), Refusal>;
}

/// Extend the lease of `token` on `name` to `lease` from now.
#[derive(Serialize, Deserialize)]
pub(super) struct Renew {
    pub(super) name: String,
    pub(super) token: u64,
    pub(super) lease: Duration,
}
impl Message for Renew {
    type Reply = Result<(), Refusal>;
}

/// A node died: free its holders' locks. The node as `NodeDied` names it.
#[derive(Serialize, Deserialize)]
struct HolderNodeDied {
    node: String,
}
impl Message for HolderNodeDied {
    type Reply = usize;
}

/// A grant: its token, and how long the call waited in the shard for it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Grant {
    pub(super) token: u64,
    pub(super) waited: Duration,
}

/// Why a shard did not do what it was asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Refusal {
    /// Held (a try), or not granted in time.
    Busy,
    /// The incarnation the call waited on is gone: send it again.
    Restarted,
    /// Not held with that token.
    NotHeld,
    /// The lease is zero or longer than `max`.
    InvalidLease { max: Duration },
    /// The store could not be read or written.
    Unavailable(Error),
}

struct Shard {
    spec: ShardSpec,
    /// Set by the incarnation's first call (see `prepare`).
    rt: Option<WeakRuntime>,
    locks: HashMap<String, Lock>,
    /// Lease ends, earliest first, with their lock.
    deadlines: BTreeMap<(Instant, u64), String>,
    next_token: u64,
    /// The token high-water mark as this incarnation last read or wrote it:
    /// no token at or past it was granted; the next block starts here.
    block_end: u64,
    /// The bound on every lease granted so far, as persisted.
    bound: LeaseBound,
    /// After a restart, nothing is granted before this.
    quiet_until: Option<Instant>,
    /// When the sweeper wakes next, if it sleeps until a time.
    sweep_at: Option<Instant>,
    wake: Arc<Notify>,
    sweeper: Option<tokio::task::AbortHandle>,
    next_waiter: u64,
}

#[derive(Default)]
struct Lock {
    holder: Option<Holder>,
    waiters: VecDeque<Waiter>,
}

struct Holder {
    token: u64,
    deadline: Instant,
    node: NodeId,
}

struct Waiter {
    id: u64,
    lease: Duration,
    node: NodeId,
    since: Instant,
    tx: oneshot::Sender<Result<Grant, Refusal>>,
}

impl Drop for Shard {
    fn drop(&mut self) {
        // The incarnation is gone; its waiters see their senders dropped.
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.abort();
        }
        self.record_idle();
    }
}

/// What bounds the leases granted by all incarnations of a shard so far,
/// as stored (written before a grant or renewal it must cover).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct LeaseBound {
    /// No lease ends after this, by the wall clock (ms since the Unix epoch).
    ends_by_ms: u64,
    /// The longest lease granted.
    longest: Duration,
}

impl LeaseBound {
    /// How long leases granted before `now_ms` may still run: until the
    /// stored end (plus the clocks' slack), and never longer than the
    /// longest granted, nor than `max_lease` (which no grant exceeded, a
    /// service's `max_lease` being fixed by its first start) — those two
    /// hold whatever the clocks say.
    fn outstanding(&self, now_ms: u64, max_lease: Duration) -> Duration {
        if self.ends_by_ms == 0 {
            return Duration::ZERO; // nothing was ever granted
        }
        let by_clock = Duration::from_millis(self.ends_by_ms.saturating_sub(now_ms));
        by_clock
            .saturating_add(CLOCK_SLACK)
            .min(self.longest)
            .min(max_lease)
    }
}

struct Keys {
    tokens: String,
    leases: String,
    idle: String,
}

impl ShardSpec {
    fn keys(&self) -> Keys {
        let base = format!("{NAMESPACE}/{}/{}", self.service, self.shard);
        Keys {
            tokens: format!("{base}/tokens"),
            leases: format!("{base}/leases"),
            idle: format!("{base}/idle_at"),
        }
    }
}

fn read_u64(rt: &Runtime, key: &str) -> Result<Option<u64>, Error> {
    rt.kv_get(key)?
        .map(|bytes| {
            let bytes: [u8; 8] = bytes
                .try_into()
                .map_err(|_| Error::Serialization(format!("{key}: not a u64")))?;
            Ok(u64::from_le_bytes(bytes))
        })
        .transpose()
}

fn read_bound(rt: &Runtime, key: &str) -> Result<LeaseBound, Error> {
    match rt.kv_get(key)? {
        Some(bytes) => {
            rmp_serde::from_slice(&bytes).map_err(|e| Error::Serialization(format!("{key}: {e}")))
        }
        None => Ok(LeaseBound::default()),
    }
}

/// The wall clock, in ms since the Unix epoch: it is what two incarnations
/// on different nodes, or in different processes, can compare.
fn wall_ms() -> Result<u64, Error> {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| {
            Error::InvalidArgument(
                "the system clock reads before 1970: leases cannot be bounded".into(),
            )
        })?;
    Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// `d` in whole ms, rounded up.
fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

impl Shard {
    fn new(spec: ShardSpec) -> Shard {
        Shard {
            spec,
            rt: None,
            locks: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_token: 0,
            block_end: 0,
            bound: LeaseBound::default(),
            quiet_until: None,
            sweep_at: None,
            wake: Arc::new(Notify::new()),
            sweeper: None,
            next_waiter: 0,
        }
    }

    /// Readies this incarnation on its first call: reads what the last one
    /// persisted, starts the sweeper and, in a cluster, the watch for dead
    /// nodes. A failure leaves it unready; the next call tries again.
    fn prepare(
        &mut self,
        state: &Arc<Mutex<Shard>>,
        ctx: &AsyncContext<LockShard>,
    ) -> Result<(), Error> {
        if self.rt.is_some() {
            return Ok(());
        }
        let rt = ctx.runtime();
        let keys = self.spec.keys();
        let mark = read_u64(&rt, &keys.tokens)?.unwrap_or(0);
        let bound = read_bound(&rt, &keys.leases)?;
        // An earlier incarnation that ended with nothing outstanding recorded
        // the mark it ended at; a grant since would have moved the mark.
        let idle = read_u64(&rt, &keys.idle)? == Some(mark);
        let quiet = if idle {
            Duration::ZERO
        } else {
            bound.outstanding(wall_ms()?, self.spec.max_lease)
        };
        self.next_token = mark.max(1);
        self.block_end = mark;
        self.bound = bound;
        if !quiet.is_zero() {
            // Leases of an earlier incarnation may run this long: wait them out.
            let until = Instant::now().checked_add(quiet).ok_or_else(|| {
                Error::InvalidArgument(format!("a quiet period of {quiet:?} overflows the clock"))
            })?;
            self.quiet_until = Some(until);
            self.sweep_at = Some(until);
        }
        let sweeper = tokio::task::spawn_local(sweep(Arc::downgrade(state), self.wake.clone()));
        self.sweeper = Some(sweeper.abort_handle());
        if rt.cluster_address().is_some() {
            watch_node_deaths(&rt, ctx);
        }
        self.rt = Some(rt.downgrade());
        Ok(())
    }

    fn runtime(&self) -> Result<Runtime, Error> {
        self.rt
            .as_ref()
            .and_then(WeakRuntime::upgrade)
            .ok_or(Error::ShutDown)
    }

    fn quiet(&self, now: Instant) -> bool {
        self.quiet_until.is_some_and(|t| now < t)
    }

    fn check_lease(&self, lease: Duration) -> Result<(), Refusal> {
        if lease.is_zero() || lease > self.spec.max_lease {
            return Err(self.invalid_lease());
        }
        Ok(())
    }

    fn invalid_lease(&self) -> Refusal {
        Refusal::InvalidLease {
            max: self.spec.max_lease,
        }
    }

    /// When a lease of `lease` from `now` ends: checked before anything is
    /// stored for it.
    fn deadline(&self, lease: Duration, now: Instant) -> Result<Instant, Refusal> {
        self.check_lease(lease)?;
        now.checked_add(lease).ok_or_else(|| self.invalid_lease())
    }

    /// Makes the stored bound cover a lease of `lease` from `now` (taken
    /// before this is called), before it takes effect: a restarted shard
    /// waits out what the bound says may still run (the docs of
    /// `services::lock`). Writes only when the bound must grow.
    fn cover(&mut self, lease: Duration) -> Result<(), Error> {
        let ends = wall_ms()?.saturating_add(ceil_ms(lease));
        if ends <= self.bound.ends_by_ms && lease <= self.bound.longest {
            return Ok(());
        }
        let bound = LeaseBound {
            ends_by_ms: if ends > self.bound.ends_by_ms {
                ends.saturating_add(ceil_ms(lease.max(BOUND_STEP)))
            } else {
                self.bound.ends_by_ms
            },
            longest: self.bound.longest.max(lease),
        };
        let bytes = rmp_serde::to_vec(&bound).map_err(|e| Error::Serialization(e.to_string()))?;
        self.runtime()?
            .kv_put(&self.spec.keys().leases, &bytes, true)?;
        self.bound = bound;
        Ok(())
    }

    /// Takes a token, persisting a new block first when this one is used up.
    fn take_token(&mut self) -> Result<u64, Error> {
        if self.next_token >= self.block_end {
            let end = self.next_token + TOKEN_BLOCK;
            self.runtime()?
                .kv_put(&self.spec.keys().tokens, &end.to_le_bytes(), true)?;
            self.block_end = end;
        }
        let token = self.next_token;
        self.next_token += 1;
        Ok(token)
    }

    /// Extends the lease of `token` on `name` to `lease` from `now`, if it
    /// has not ended.
    fn renew(
        &mut self,
        name: &str,
        token: u64,
        lease: Duration,
        now: Instant,
    ) -> Result<(), Refusal> {
        let deadline = self.deadline(lease, now)?;
        let old = match self.locks.get(name).and_then(|l| l.holder.as_ref()) {
            Some(h) if h.token == token && h.deadline > now => h.deadline,
            _ => return Err(Refusal::NotHeld),
        };
        self.cover(lease).map_err(Refusal::Unavailable)?;
        if let Some(h) = self.locks.get_mut(name).and_then(|l| l.holder.as_mut()) {
            h.deadline = deadline;
        }
        self.deadlines.remove(&(old, token));
        self.deadlines.insert((deadline, token), name.to_string());
        self.arm(deadline);
        Ok(())
    }

    /// Makes `node` the holder of the free lock `name` for `lease`.
    fn grant(
        &mut self,
        name: &str,
        lease: Duration,
        node: NodeId,
        now: Instant,
    ) -> Result<u64, Refusal> {
        let deadline = self.deadline(lease, now)?;
        self.cover(lease).map_err(Refusal::Unavailable)?;
        let token = self.take_token().map_err(Refusal::Unavailable)?;
        self.locks.entry(name.to_string()).or_default().holder = Some(Holder {
            token,
            deadline,
            node,
        });
        self.deadlines.insert((deadline, token), name.to_string());
        self.arm(deadline);
        Ok(token)
    }

    /// Makes sure the sweeper wakes by `at`.
    fn arm(&mut self, at: Instant) {
        if self.sweep_at.is_none_or(|t| at < t) {
            self.sweep_at = Some(at);
            self.wake.notify_one();
        }
    }

    /// Frees `name` if `token` holds it; true if it did.
    fn free(&mut self, name: &str, token: u64) -> bool {
        let Some(lock) = self.locks.get_mut(name) else {
            return false;
        };
        match &lock.holder {
            Some(h) if h.token == token => {
                self.deadlines.remove(&(h.deadline, token));
                lock.holder = None;
                true
            }
            _ => false,
        }
    }

    /// Gives the free lock `name` to its first waiter whose caller is still
    /// there (FIFO); forgets the lock if nobody wants it.
    fn hand_off(&mut self, name: &str, now: Instant) {
        if self.quiet(now) {
            return;
        }
        loop {
            let Some(lock) = self.locks.get_mut(name) else {
                return;
            };
            if lock.holder.is_some() {
                return;
            }
            let Some(waiter) = lock.waiters.pop_front() else {
                self.locks.remove(name);
                return;
            };
            if waiter.tx.is_closed() {
                continue; // its caller gave up
            }
            let reply = self
                .grant(name, waiter.lease, waiter.node, now)
                .map(|token| Grant {
                    token,
                    waited: now.saturating_duration_since(waiter.since),
                });
            let token = reply.as_ref().ok().map(|g| g.token);
            if waiter.tx.send(reply).is_err() {
                // Its caller went away just now: take the grant back.
                if let Some(token) = token {
                    self.free(name, token);
                }
            }
        }
    }

    /// Ends the leases due by `now` and, once the quiet period is over, grants
    /// what waited for it; returns when to look again.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, token), name) = entry.remove_entry();
            if self.free(&name, token) {
                self.hand_off(&name, now);
            }
        }
        if self.quiet_until.is_some_and(|t| t <= now) {
            self.quiet_until = None;
            let waiting: Vec<String> = self.locks.keys().cloned().collect();
            for name in waiting {
                self.hand_off(&name, now);
            }
        }
        let next = self.deadlines.keys().next().map(|(t, _)| *t);
        match (next, self.quiet_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// As the incarnation ends (stopped, or crashed): if no lease it knows
    /// of may still run — none of its own, and its quiet period for earlier
    /// ones over — records so with the token mark, and the next incarnation
    /// grants at once. Any later grant takes a new token block first, which
    /// moves the mark and voids the record (the docs of `services::lock`).
    fn record_idle(&self) {
        let now = Instant::now();
        let held = self
            .deadlines
            .keys()
            .next_back()
            .is_some_and(|(t, _)| *t > now);
        if self.rt.is_none() || held || self.quiet(now) {
            return;
        }
        let Ok(rt) = self.runtime() else {
            return; // best effort: without the record the next one waits
        };
        let (key, mark) = (self.spec.keys().idle, self.block_end.to_le_bytes());
        if rt.cluster_address().is_none() {
            let _ = rt.kv_put(&key, &mark, true);
            return;
        }
        // The head's store is a round trip away, and the state may be dropped
        // on the thread that would carry the answer (a remote holder's
        // release of the last handle arrives on the network thread). The
        // record may land late: the mark keeps it from voiding a later grant.
        let _ = std::thread::Builder::new()
            .name("rayx-lock-idle".into())
            .spawn(move || rt.kv_put(&key, &mark, true));
    }
}

/// The shard's timer: sleeps until the earliest lease end (or the end of the
/// quiet period), or until a grant with an earlier one wakes it.
async fn sweep(state: Weak<Mutex<Shard>>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(state) = state.upgrade() else {
                return;
            };
            let mut shard = state.lock();
            let next = shard.expire(Instant::now());
            shard.sweep_at = next;
            next
        };
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at.into(), wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }
}

/// Shards whose node-death watch runs in this process (one per actor, not
/// per incarnation: it outlives restarts).
static WATCHED: LazyLock<Mutex<HashSet<ActorId>>> = LazyLock::new(Default::default);

/// Tells the shard of every node reported dead, from a thread of its own
/// (the events arrive on a blocking queue), until the shard or the runtime
/// is gone.
fn watch_node_deaths(rt: &Runtime, ctx: &AsyncContext<LockShard>) {
    let actor = ctx.actor_id();
    if !WATCHED.lock().insert(actor) {
        return;
    }
    let events = rt.events();
    let me = ctx.weak_handle();
    let spawned = std::thread::Builder::new()
        .name("rayx-lock-watch".into())
        .spawn(move || {
            loop {
                match events.recv_timeout(Duration::from_secs(1)) {
                    Ok(SupervisionEvent::NodeDied { node, .. }) => match me.upgrade() {
                        Some(shard) => drop(shard.call(HolderNodeDied { node })),
                        None => break,
                    },
                    Ok(_) => {}
                    Err(crate::RecvError::Timeout)
                        if me.upgrade().is_some_and(|h| !h.is_dead()) => {}
                    Err(_) => break,
                }
            }
            WATCHED.lock().remove(&actor);
        });
    if spawned.is_err() {
        WATCHED.lock().remove(&actor);
    }
}

impl LockShard {
    /// The incarnation's state, readied by its first call.
    fn ready(&self, ctx: &AsyncContext<Self>) -> Result<MutexGuard<'_, Shard>, Refusal> {
        let mut shard = self.state.lock();
        shard
            .prepare(&self.state, ctx)
            .map_err(Refusal::Unavailable)?;
        Ok(shard)
    }
}

impl AsyncHandler<Acquire> for LockShard {
    async fn handle(
        self: Arc<Self>,
        msg: Acquire,
        ctx: AsyncContext<Self>,
    ) -> Result<Grant, Refusal> {
        let arrived = Instant::now();
        let (rx, id, wait) = {
            let mut shard = self.ready(&ctx)?;
            shard.check_lease(msg.lease)?;
            let free = shard
                .locks
                .get(&msg.name)
                .is_none_or(|l| l.holder.is_none() && l.waiters.is_empty());
            if free && !shard.quiet(arrived) {
                let token = shard.grant(&msg.name, msg.lease, msg.node, arrived)?;
                return Ok(Grant {
                    token,
                    waited: Duration::ZERO,
                });
            }
            let wait = match msg.wait {
                Some(wait) if !wait.is_zero() => wait,
                _ => return Err(Refusal::Busy),
            };
            let (tx, rx) = oneshot::channel();
            let id = shard.next_waiter;
            shard.next_waiter += 1;
            shard
                .locks
                .entry(msg.name.clone())
                .or_default()
                .waiters
                .push_back(Waiter {
                    id,
                    lease: msg.lease,
                    node: msg.node,
                    since: arrived,
                    tx,
                });
            (rx, id, wait)
        };
        let mut waiting = Waiting {
            state: Arc::downgrade(&self.state),
            name: msg.name,
            id,
            rx: Some(rx),
        };
        // A waiting call must not keep this incarnation alive (docs of `services::lock`).
        drop(self);
        let granted = match waiting.rx.as_mut() {
            Some(rx) => tokio::time::timeout(wait, rx).await,
            None => return Err(Refusal::Busy),
        };
        match granted {
            Ok(Ok(reply)) => {
                waiting.rx = None;
                reply
            }
            Ok(Err(_)) => {
                waiting.rx = None;
                Err(Refusal::Restarted)
            }
            Err(_) => waiting.withdraw(),
        }
    }
}

/// An acquire waiting in a lock's queue. Dropped unfinished (its call was
/// cancelled), it leaves the queue, or hands back a grant that came too late.
struct Waiting {
    state: Weak<Mutex<Shard>>,
    name: String,
    id: u64,
    rx: Option<oneshot::Receiver<Result<Grant, Refusal>>>,
}

impl Waiting {
    /// Its time is up: leaves the queue, unless the grant came at the same
    /// moment (then it is the reply after all).
    fn withdraw(&mut self) -> Result<Grant, Refusal> {
        let Some(mut rx) = self.rx.take() else {
            return Err(Refusal::Busy);
        };
        let Some(state) = self.state.upgrade() else {
            return Err(Refusal::Restarted);
        };
        let mut shard = state.lock();
        if let Some(lock) = shard.locks.get_mut(&self.name) {
            lock.waiters.retain(|w| w.id != self.id);
        }
        match rx.try_recv() {
            Ok(reply) => reply,
            Err(_) => Err(Refusal::Busy),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let mut shard = state.lock();
        if let Some(lock) = shard.locks.get_mut(&self.name) {
            lock.waiters.retain(|w| w.id != self.id);
        }
        if let Ok(Ok(grant)) = rx.try_recv() {
            if shard.free(&self.name, grant.token) {
                shard.hand_off(&self.name, Instant::now());
            }
        }
    }
}

impl AsyncHandler<Release> for LockShard {
    async fn handle(self: Arc<Self>, msg: Release, ctx: AsyncContext<Self>) -> Result<(), Refusal> {
        let mut shard = self.ready(&ctx)?;
        if !shard.free(&msg.name, msg.token) {
            return Err(Refusal::NotHeld);
        }
        shard.hand_off(&msg.name, Instant::now());
        Ok(())
    }
}

impl AsyncHandler<Renew> for LockShard {
    async fn handle(self: Arc<Self>, msg: Renew, ctx: AsyncContext<Self>) -> Result<(), Refusal> {
        self.ready(&ctx)?
            .renew(&msg.name, msg.token, msg.lease, Instant::now())
    }
}

impl AsyncHandler<HolderNodeDied> for LockShard {
    async fn handle(self: Arc<Self>, msg: HolderNodeDied, ctx: AsyncContext<Self>) -> usize {
        let Ok(mut shard) = self.ready(&ctx) else {
            return 0;
        };
        let dead = |n: &NodeId| n.to_string() == msg.node;
        let mut freed = Vec::new();
        for (name, lock) in shard.locks.iter_mut() {
            // Its waiters' calls fail with their node; they wait for nothing.
            lock.waiters.retain(|w| !dead(&w.node));
            if let Some(h) = lock.holder.as_ref().filter(|h| dead(&h.node)) {
                freed.push((name.clone(), h.token));
            }
        }
        let now = Instant::now();
        for (name, token) in &freed {
            shard.free(name, *token);
            shard.hand_off(name, now);
        }
        freed.len()
    }
}
