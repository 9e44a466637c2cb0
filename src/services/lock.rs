//! A lock service: named locks with leases and fencing tokens, FIFO among
//! waiters, that survives the restart of its own actors without granting a
//! lock twice.
//!
//! ```
//! use rayx::services::lock::LockService;
//! use std::time::Duration;
//!
//! let rt = rayx::init()?;
//! let locks = LockService::start(&rt, "doc-locks")?;
//! let lease = Duration::from_secs(10);
//!
//! let first = locks.acquire("orders", lease, Duration::from_secs(5))?;
//! assert!(locks.try_acquire("orders", lease)?.is_none(), "held: no second holder");
//! let token = first.token();
//! first.release()?;
//!
//! let second = locks.try_acquire("orders", lease)?.expect("free again");
//! assert!(second.token() > token, "every grant has a larger fencing token");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How it is built
//!
//! The service is one or more **shards** ([`LockServiceBuilder::shards`]), each
//! an async rayx actor registered with [`remote_actor!`](crate::remote_actor),
//! so in a cluster the head places them on any node and starts them again
//! elsewhere when their node dies. A lock lives on the shard its name hashes
//! to. An async actor, because a blocking acquire is a call that waits: its
//! handler parks on a oneshot channel in the lock's FIFO queue while the
//! shard's other calls (releases, other locks) go on; a shard allows as many
//! waiting calls as there are callers (its `max_concurrency` has no practical
//! limit), so a release never queues behind waiters. Leases end by one timer
//! per shard (the *sweeper*), asleep until the earliest deadline. In a
//! cluster, a shard's first call after it starts reads the store on the head,
//! blocking the shard's thread for that round trip (once per incarnation, and
//! once per token block).
//!
//! # Holders that die
//!
//! A holder loses its lock when its lease ends, or at once when its death is
//! known: the [`LockGuard`] releases on drop, which covers a task that panics
//! (unwinding drops it) and an actor that is killed or crashes (its state is
//! dropped); and in a cluster each shard watches `rt.events()` and frees the
//! locks of holders (and drops the waiters) on a node reported dead
//! ([`SupervisionEvent::NodeDied`]; the head's own loss counts too, so a
//! partition from the head frees its holders early — their tokens still
//! fence them). A holder that is only slow (a long pause) is not dead: its
//! lease ends, the lock goes to the next waiter, and the old holder's writes
//! are refused by a resource that checks the [fencing token](LockGuard::token)
//! — see `examples/fencing.rs`.
//!
//! # Surviving a restart: persisted, with a recovery quiet period
//!
//! A shard keeps three records in the runtime's key-value store
//! ([`Runtime::kv_put`]; the head's, persisted, in a cluster), each written
//! before it takes effect:
//!
//! - **the token high-water mark.** Tokens are handed out from blocks of
//!   4,096; the end of a block is stored before its first token is granted, and
//!   a new incarnation starts at the stored end. So a token is never granted
//!   twice and tokens never go back, across any number of restarts, at one
//!   store write per 4,096 grants. Every incarnation's first grant takes a new
//!   block, so the mark moves whenever anything has been granted.
//! - **a bound on the leases granted**: the wall-clock time by which every
//!   lease granted so far has ended, and the longest lease granted. A grant
//!   or renewal whose lease would outlast the stored time stores a later one
//!   first, a step beyond what it needs (the lease, at least a second), so a
//!   busy shard writes it about once per step, not per grant.
//! - **an idle record**: an incarnation that ends (stopped with its last
//!   handle, or crashed) holding no unexpired lease, and past its own quiet
//!   period, stores the token mark it ends at: nothing granted up to that mark
//!   is outstanding.
//!
//! A new incarnation does not know who held what. If the idle record names
//! the current token mark, nothing has been granted since a shard ended with
//! nothing outstanding, and it grants at once: a clean stop and start costs
//! nothing. Otherwise it grants nothing for a *quiet period*: until the stored
//! time plus one second (the slack for clocks of different nodes, or a clock
//! stepped forward), but never longer than the longest lease granted, nor than
//! `max_lease` — every earlier lease was granted before this incarnation began
//! and none was longer, whatever the clocks say (which is why `max_lease`
//! cannot change: see [`LockServiceBuilder::start`]). Acquires made meanwhile
//! wait in FIFO order and are granted when it ends; `try_acquire` finds the
//! lock busy. The idle record cannot open a quiet period too early even when
//! it is stored late (in a cluster it is stored from a thread of its own): a
//! grant after it moved the mark, and a record naming an old mark is ignored.
//!
//! Why not write the holders through instead? That is a store write on every
//! grant and every release — in a cluster a round trip to the head on the
//! shard's thread — to save a pause that only follows a crash. Leases bound
//! how long a dead incarnation's grants can matter, so the quiet period costs
//! nothing until something has failed. A holder granted by the old
//! incarnation keeps its lock until its lease ends; its `renew` and `release`
//! find it unknown ([`LockError::NotHeld`]).
//!
//! An old incarnation must not grant anything once it is replaced. A waiting
//! call holds only a weak reference to its shard's state, so when the engine
//! drops the state of a crashed or restarted actor the state really goes: its
//! waiters are woken and sent again to the new incarnation by their clients,
//! and its sweeper is stopped. Two live incarnations could only exist across a
//! partition (a node declared dead that still runs); the key-value store has
//! no compare-and-set, so there the old one may still grant from its current
//! token block — always smaller tokens than the new one's, which a fenced
//! resource then refuses — and may store a lower lease bound than the new
//! one's (a later crash then waits less than it should): there the tokens
//! are the guard.

#[cfg(doc)]
use crate::SupervisionEvent;
use crate::{ActorHandle, Error, NodeId, ObjectRef, Retries, Runtime, Scheduling, WeakRuntime};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod shard;
use shard::{Acquire, Grant, LockShard, Refusal, Release, Renew, ShardSpec};

/// How long a blocking call waits for the service beyond its own timeout
/// before it calls the service unavailable.
const REPLY_SLACK: Duration = Duration::from_secs(30);
/// The longest lease a service grants unless told otherwise; it bounds the
/// quiet period after a restart.
const DEFAULT_MAX_LEASE: Duration = Duration::from_secs(60);
/// The largest `max_lease` a service accepts: a day. A lock held longer is
/// renewed; and a shard that restarts may pause grants for up to `max_lease`.
const MAX_LEASE_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// What can go wrong with a lock.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LockError {
    /// The lock was not granted within the timeout.
    #[error("lock `{name}` was not granted within {timeout:?}: another holder kept it; try again or wait longer")]
    Timeout {
        /// The lock.
        name: String,
        /// How long the acquire waited.
        timeout: Duration,
    },
    /// The lock is not held with this token: its lease ended (or the service
    /// restarted and does not know the holder), or it was released already.
    #[error("lock `{name}` is not held with token {token}: its lease ended or it was released; acquire it again (another holder may have it)")]
    NotHeld {
        /// The lock.
        name: String,
        /// The token of the grant that is gone.
        token: u64,
    },
    /// The lease asked for is zero or longer than the service allows.
    #[error("a lease of {lease:?} is refused: it must be more than zero and at most the service's max_lease, {max:?}")]
    InvalidLease {
        /// The lease asked for.
        lease: Duration,
        /// The service's `max_lease`.
        max: Duration,
    },
    /// The service's `max_lease` is zero or longer than a day.
    #[error("a max_lease of {max_lease:?} is refused: it must be more than zero and at most {limit:?} (a restarted shard may pause grants that long); renew longer holds")]
    InvalidMaxLease {
        /// The `max_lease` asked for.
        max_lease: Duration,
        /// The largest accepted.
        limit: Duration,
    },
    /// The service runs with other settings than this start asked for.
    #[error("lock service `{service}` runs with {setting} {running}, not {asked}: a service keeps the shards and max_lease of its first start; start it with those, or under another name")]
    SettingsDiffer {
        /// The service.
        service: String,
        /// Which setting differs: `shards` or `max_lease`.
        setting: &'static str,
        /// Its value in the running service.
        running: String,
        /// Its value in this start.
        asked: String,
    },
    /// The service could not be reached, or could not persist what a grant
    /// needs (its store); nothing was granted.
    #[error("lock service `{service}` is unavailable: {cause}")]
    Unavailable {
        /// The service.
        service: String,
        /// What rayx said.
        #[source]
        cause: Error,
    },
    /// Starting or finding the service failed.
    #[error(transparent)]
    Rayx(#[from] Error),
}

/// A lock service: named locks with leases and fencing tokens.
/// `Clone + Send + Sync`, and serializable, so tasks and actors (on any node)
/// can take it as an argument. See the [module docs](self) for the design.
#[derive(Clone)]
pub struct LockService {
    client: Arc<Client>,
}

struct Client {
    service: String,
    max_lease: Duration,
    shards: Vec<ActorHandle<LockShard>>,
    /// The node holders made through this client live on.
    node: NodeId,
    /// To cancel a waiting acquire whose caller went away.
    rt: WeakRuntime,
}

impl std::fmt::Debug for LockService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockService")
            .field("service", &self.client.service)
            .field("shards", &self.client.shards.len())
            .finish()
    }
}

/// Options of a lock service before it starts.
#[derive(Debug, Clone)]
pub struct LockServiceBuilder {
    service: String,
    shards: u32,
    max_lease: Duration,
    detached: bool,
    scheduling: Scheduling,
}

impl LockServiceBuilder {
    /// Shards the locks by name over `n` actors (default 1); in a cluster
    /// the head may place them on different nodes.
    pub fn shards(mut self, n: u32) -> Self {
        self.shards = n;
        self
    }
    /// The longest lease a holder may ask for (default 60 s; more than zero
    /// and at most a day, else [`LockError::InvalidMaxLease`]). After a
    /// crash a shard grants nothing for up to this long (the module docs say
    /// why), so keep it near the leases you use.
    pub fn max_lease(mut self, max: Duration) -> Self {
        self.max_lease = max;
        self
    }
    /// Where in a cluster its shards may start (default: where the head
    /// places them; they need no CPUs).
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.scheduling = scheduling;
        self
    }
    /// Keeps the service's actors alive with no handle left (until killed or
    /// the runtime stops), so other programs can [`connect`](LockService::connect).
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }
    /// Starts the service, or joins the one already running under this name.
    /// The first start under a name fixes its `shards` and `max_lease`; a
    /// later start that asks for others is refused
    /// ([`LockError::SettingsDiffer`]). `detached` and `scheduling` apply to
    /// the shards this start starts; joining keeps those running.
    pub fn start(self, rt: &Runtime) -> Result<LockService, LockError> {
        super::check_service_name("lock service", &self.service)?;
        if self.shards == 0 {
            return Err(
                Error::InvalidArgument("a lock service needs at least one shard".into()).into(),
            );
        }
        if self.max_lease.is_zero() || self.max_lease > MAX_LEASE_LIMIT {
            return Err(LockError::InvalidMaxLease {
                max_lease: self.max_lease,
                limit: MAX_LEASE_LIMIT,
            });
        }
        // Names hash over the number of shards, and a restarted shard's quiet
        // period relies on no lease ever exceeding max_lease: both stay as
        // the first start stored them (one key, so one start's pair wins whole).
        let asked = Settings {
            shards: self.shards,
            max_lease: self.max_lease,
        };
        rt.kv_put(&settings_key(&self.service), &asked.encode()?, false)?;
        let running = read_settings(rt, &self.service)?;
        let differ = |setting, running: String, asked: String| LockError::SettingsDiffer {
            service: self.service.clone(),
            setting,
            running,
            asked,
        };
        if running.shards != asked.shards {
            let (r, a) = (running.shards.to_string(), asked.shards.to_string());
            return Err(differ("shards", r, a));
        }
        if running.max_lease != asked.max_lease {
            let (r, a) = (running.max_lease, asked.max_lease);
            return Err(differ("max_lease", format!("{r:?}"), format!("{a:?}")));
        }
        let handles = (0..running.shards)
            .map(|shard| {
                let spec = ShardSpec {
                    service: self.service.clone(),
                    shard,
                    max_lease: self.max_lease,
                };
                let builder = rt
                    .async_actor_of(LockShard::new, spec)
                    .namespace(NAMESPACE)
                    .name(shard_name(&self.service, shard))
                    .get_if_exists()
                    // A restart is safe (see the module docs), and a call
                    // interrupted by a crash is sent again: none has an effect
                    // that outlives the incarnation it ran on.
                    .max_restarts(Retries::Infinite)
                    .max_task_retries(Retries::Infinite)
                    // Waiting acquires are calls in flight: no limit may
                    // make a release queue behind them.
                    .max_concurrency(usize::MAX)
                    .num_cpus(0.0)
                    .scheduling(self.scheduling);
                if self.detached {
                    builder.detached().spawn()
                } else {
                    builder.spawn()
                }
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(LockService::new(
            rt,
            self.service,
            running.max_lease,
            handles,
        ))
    }
}

impl LockService {
    /// Prepares a lock service named `service` (names are per runtime, or per
    /// cluster).
    pub fn builder(service: impl Into<String>) -> LockServiceBuilder {
        LockServiceBuilder {
            service: service.into(),
            shards: 1,
            max_lease: DEFAULT_MAX_LEASE,
            detached: false,
            scheduling: Scheduling::Default,
        }
    }

    /// Starts a lock service with one shard and the default `max_lease`
    /// (60 s), or joins the one running under this name.
    pub fn start(rt: &Runtime, service: impl Into<String>) -> Result<LockService, LockError> {
        Self::builder(service).start(rt)
    }

    /// The lock service already running under `service` (started by another
    /// program of the cluster, say).
    pub fn connect(rt: &Runtime, service: &str) -> Result<LockService, LockError> {
        let settings = read_settings(rt, service)?;
        let handles = (0..settings.shards)
            .map(|shard| rt.get_actor_in::<LockShard>(NAMESPACE, &shard_name(service, shard)))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(LockService::new(
            rt,
            service.to_string(),
            settings.max_lease,
            handles,
        ))
    }

    fn new(
        rt: &Runtime,
        service: String,
        max_lease: Duration,
        shards: Vec<ActorHandle<LockShard>>,
    ) -> Self {
        LockService {
            client: Arc::new(Client {
                service,
                max_lease,
                shards,
                node: rt.node_id(),
                rt: rt.downgrade(),
            }),
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.client.service
    }

    /// Acquires `name` for `lease`, waiting up to `timeout` behind earlier
    /// waiters (FIFO). A zero `timeout` only tries. Blocks the thread: in
    /// async code use [`acquire_async`](Self::acquire_async).
    pub fn acquire(
        &self,
        name: &str,
        lease: Duration,
        timeout: Duration,
    ) -> Result<LockGuard, LockError> {
        self.check_lease(lease)?;
        let deadline = deadline_after(timeout);
        loop {
            let sent = Instant::now();
            let left = deadline.saturating_duration_since(sent);
            let reply = self.call_acquire(name, lease, Some(left));
            let result = match reply.get_timeout(left.saturating_add(REPLY_SLACK)) {
                Err(e @ Error::GetTimeout { .. }) => {
                    // Withdraw the call, so a late grant is handed back.
                    self.cancel(&reply);
                    Err(e)
                }
                other => other,
            };
            if let ControlFlow::Break(done) =
                self.settle(name, lease, timeout, sent, deadline, result)
            {
                return done;
            }
        }
    }

    /// Acquires `name` like [`acquire`](Self::acquire), as a future that
    /// runs on any executor. The service enforces `timeout`; dropping the
    /// future withdraws the request (a lock granted meanwhile is released).
    pub fn acquire_async(
        &self,
        name: impl Into<String>,
        lease: Duration,
        timeout: Duration,
    ) -> impl Future<Output = Result<LockGuard, LockError>> + Send + 'static {
        let this = self.clone();
        let name = name.into();
        async move {
            this.check_lease(lease)?;
            let deadline = deadline_after(timeout);
            loop {
                let sent = Instant::now();
                let left = deadline.saturating_duration_since(sent);
                let mut call = Withdrawn {
                    reply: Some(this.call_acquire(&name, lease, Some(left))),
                    service: this.clone(),
                };
                let result = match &call.reply {
                    Some(reply) => reply.await,
                    None => Err(Error::ShutDown),
                };
                call.reply = None;
                if let ControlFlow::Break(done) =
                    this.settle(&name, lease, timeout, sent, deadline, result)
                {
                    return done;
                }
            }
        }
    }

    /// Acquires `name` for `lease` if it is free now and nobody is waiting
    /// for it; `None` if it is held.
    pub fn try_acquire(&self, name: &str, lease: Duration) -> Result<Option<LockGuard>, LockError> {
        self.check_lease(lease)?;
        let sent = Instant::now();
        let result = self.call_acquire(name, lease, None).get();
        match self.settle(name, lease, Duration::ZERO, sent, sent, result) {
            ControlFlow::Break(Err(LockError::Timeout { .. })) => Ok(None),
            ControlFlow::Break(done) => done.map(Some),
            // Only a waiting call can outlive its incarnation.
            ControlFlow::Continue(()) => Ok(None),
        }
    }

    /// Refuses a lease the service would refuse, without a call (the shard
    /// checks again).
    fn check_lease(&self, lease: Duration) -> Result<(), LockError> {
        let max = self.client.max_lease;
        if lease.is_zero() || lease > max {
            return Err(LockError::InvalidLease { lease, max });
        }
        Ok(())
    }

    fn shard(&self, name: &str) -> &ActorHandle<LockShard> {
        let hash = super::fnv1a(name.as_bytes());
        &self.client.shards[(hash % self.client.shards.len() as u64) as usize]
    }

    fn call_acquire(
        &self,
        name: &str,
        lease: Duration,
        wait: Option<Duration>,
    ) -> ObjectRef<Result<Grant, Refusal>> {
        self.shard(name).call(Acquire {
            name: name.to_string(),
            lease,
            wait,
            node: self.client.node,
        })
    }

    fn call_release(&self, name: &str, token: u64) -> ObjectRef<Result<(), Refusal>> {
        self.shard(name).call(Release {
            name: name.to_string(),
            token,
        })
    }

    fn cancel<T>(&self, reply: &ObjectRef<T>) {
        if let Some(rt) = self.client.rt.upgrade() {
            rt.cancel(reply);
        }
    }

    /// What an acquire's reply means: a guard, an error, or (`Continue`)
    /// send it again — its shard restarted while it waited.
    fn settle(
        &self,
        name: &str,
        lease: Duration,
        timeout: Duration,
        sent: Instant,
        deadline: Instant,
        result: Result<Result<Grant, Refusal>, Error>,
    ) -> ControlFlow<Result<LockGuard, LockError>> {
        let timed_out = || LockError::Timeout {
            name: name.to_string(),
            timeout,
        };
        ControlFlow::Break(match result {
            // The lease started no earlier than the call was sent plus the
            // time it waited in the shard.
            Ok(Ok(grant)) => match sent
                .checked_add(grant.waited)
                .and_then(|t| t.checked_add(lease))
            {
                Some(expires_at) => Ok(LockGuard {
                    service: self.clone(),
                    name: name.to_string(),
                    token: grant.token,
                    expires_at,
                    released: false,
                }),
                // A lease this process's clock cannot time: handed back.
                None => {
                    drop(self.call_release(name, grant.token));
                    Err(LockError::InvalidLease {
                        lease,
                        max: self.client.max_lease,
                    })
                }
            },
            Ok(Err(Refusal::Restarted)) if Instant::now() < deadline => {
                return ControlFlow::Continue(())
            }
            Ok(Err(Refusal::Restarted | Refusal::Busy)) => Err(timed_out()),
            Ok(Err(refusal)) => Err(self.refused(name, 0, lease, refusal)),
            Err(cause) => Err(self.unavailable(cause)),
        })
    }

    fn refused(&self, name: &str, token: u64, lease: Duration, refusal: Refusal) -> LockError {
        match refusal {
            Refusal::InvalidLease { max } => LockError::InvalidLease { lease, max },
            Refusal::Unavailable(cause) => self.unavailable(cause),
            Refusal::Busy | Refusal::Restarted | Refusal::NotHeld => LockError::NotHeld {
                name: name.to_string(),
                token,
            },
        }
    }

    fn unavailable(&self, cause: Error) -> LockError {
        LockError::Unavailable {
            service: self.client.service.clone(),
            cause,
        }
    }
}

impl Serialize for LockService {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = &self.client;
        (&c.service, c.max_lease, &c.shards).serialize(s)
    }
}

impl<'de> Deserialize<'de> for LockService {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (service, max_lease, shards) =
            <(String, Duration, Vec<ActorHandle<LockShard>>)>::deserialize(d)?;
        // Handles decode only where a runtime is current, so this one is.
        let rt = Runtime::current().ok_or_else(|| {
            serde::de::Error::custom(
                "a LockService can be decoded only in a rayx worker or with Runtime::decode",
            )
        })?;
        Ok(LockService::new(&rt, service, max_lease, shards))
    }
}

/// A waiting acquire of `acquire_async`, withdrawn if its future is dropped.
struct Withdrawn {
    reply: Option<ObjectRef<Result<Grant, Refusal>>>,
    service: LockService,
}

impl Drop for Withdrawn {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            self.service.cancel(&reply);
        }
    }
}

fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    // A timeout too long to add to now waits for a century instead.
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A granted lock. Dropping it releases the lock (without waiting for the
/// service); [`release`](Self::release) releases it and says whether it was
/// still held.
///
/// ```
/// # use rayx::services::lock::LockService;
/// # use std::time::Duration;
/// # let rt = rayx::init()?;
/// # let locks = LockService::start(&rt, "doc-guard")?;
/// let guard = locks.acquire("report", Duration::from_secs(5), Duration::from_secs(5))?;
/// assert_eq!(guard.name(), "report");
/// drop(guard); // released: the next acquire gets it
/// let again = locks.acquire("report", Duration::from_secs(5), Duration::from_secs(5))?;
/// # drop(again);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LockGuard {
    service: LockService,
    name: String,
    token: u64,
    expires_at: Instant,
    released: bool,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("token", &self.token)
            .finish()
    }
}

impl LockGuard {
    /// The fencing token of this grant: larger than every earlier grant's of
    /// this lock, across restarts of the service. Send it with every write
    /// to the guarded resource, which refuses tokens older than the newest
    /// it has seen.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the lease ends at the earliest, by this process's clock: the
    /// service may give the lock to another holder after it.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Extends the lease to `lease` from now (a keep-alive);
    /// [`LockError::NotHeld`] if it has already ended.
    pub fn renew(&mut self, lease: Duration) -> Result<(), LockError> {
        self.service.check_lease(lease)?;
        let sent = Instant::now();
        let expires_at = sent
            .checked_add(lease)
            .ok_or_else(|| LockError::InvalidLease {
                lease,
                max: self.service.client.max_lease,
            })?;
        let reply = self.service.shard(&self.name).call(Renew {
            name: self.name.clone(),
            token: self.token,
            lease,
        });
        match reply.get_timeout(REPLY_SLACK) {
            Ok(Ok(())) => {
                self.expires_at = expires_at;
                Ok(())
            }
            Ok(Err(r)) => Err(self.service.refused(&self.name, self.token, lease, r)),
            Err(cause) => Err(self.service.unavailable(cause)),
        }
    }

    /// Releases the lock now; [`LockError::NotHeld`] if its lease had ended.
    pub fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        let reply = self.service.call_release(&self.name, self.token);
        match reply.get_timeout(REPLY_SLACK) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(r)) => Err(self
                .service
                .refused(&self.name, self.token, Duration::ZERO, r)),
            Err(cause) => Err(self.service.unavailable(cause)),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released {
            // Fire and forget: a panicking task or a dying actor must not wait.
            drop(self.service.call_release(&self.name, self.token));
        }
    }
}

/// The namespace of the shards' names and of the service's keys in the store.
const NAMESPACE: &str = "rayx.lock";

fn shard_name(service: &str, shard: u32) -> String {
    format!("{service}/{shard}")
}

/// What the first start of a service fixes, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Settings {
    shards: u32,
    max_lease: Duration,
}

impl Settings {
    fn encode(&self) -> Result<Vec<u8>, Error> {
        rmp_serde::to_vec(self).map_err(|e| Error::Serialization(e.to_string()))
    }
}

fn settings_key(service: &str) -> String {
    format!("{NAMESPACE}/{service}/settings")
}

fn read_settings(rt: &Runtime, service: &str) -> Result<Settings, Error> {
    let bytes = rt
        .kv_get(&settings_key(service))?
        .ok_or_else(|| Error::ActorNotFound {
            namespace: NAMESPACE.to_string(),
            name: format!("{service} (no lock service was started under this name)"),
        })?;
    rmp_serde::from_slice(&bytes)
        .map_err(|e| Error::Serialization(format!("lock service `{service}`: settings: {e}")))
}
