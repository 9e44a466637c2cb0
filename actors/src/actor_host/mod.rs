//! An actor host: one user actor's mailbox, state and lifecycle.
//!
//! Calls go into a lock-free FIFO mailbox. A sync actor is scheduled on the
//! worker pool as one job that runs a batch of calls with the state held, so
//! calls from one caller run in the order they were made and a busy actor takes
//! many calls per wake-up. An async actor lives on an async arbiter, where its
//! calls run as futures, up to `max_concurrency` at a time.
//!
//! Kill, restart and stop are **signals**: whoever sends one sets a flag and
//! schedules the host, and the host's own run loop applies it between messages,
//! ahead of queued calls. Nobody takes the actor's state lock from outside, so a
//! handler may kill, restart or stop its own actor.
//!
//! A panic in a handler crashes the actor (its state may be half-updated, as with
//! a poisoned lock). Within `max_restarts` the actor restarts: the constructor runs
//! again, the crashed call is sent again if `max_task_retries` allows (before any
//! queued call, so order holds) and otherwise fails with `ActorDied`, as do the
//! queued calls under at-most-once (`max_task_retries = 0`). Past `max_restarts`,
//! or when the constructor itself panics, the actor is dead for good.

use crate::actor_group::{ActorGroup, Membership, Supervised};
use crate::core::Core;
use crate::error::Error;
use crate::events::SupervisionEvent;
use crate::faults::Chance;
use crate::handshake::ScheduleFlag;
use crate::ids::{ActorId, IdMap, ObjectId};
use crate::messages::{ActorCall, Retries};
use crate::object_table::Slot;
use crate::run_queue::{ActorRun, Job};
use crate::spin::{Site, Spin};
use crate::value::Value;
use crate::worker::{catch_user, with_current_task};
use actix_rt::ArbiterHandle;
use crossbeam_queue::SegQueue;
use parking_lot::Mutex;
use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

mod async_run;
mod restart;
mod sync_run;

use async_run::CallCancel;
use sync_run::stop_sync;

/// Calls a sync actor runs per turn on a worker before yielding to other jobs.
const BATCH: usize = 256;

/// Signal bits, applied by the run loop between messages: a restart asked for
/// with `restart()` (a failure, as Ray's `kill(no_restart=False)`), and one
/// its supervision group orders (a sibling failed).
const RESTART: u8 = 1;
const SUPERVISED_RESTART: u8 = 2;
/// Set by `kill` after the actor is marked dead: the run loop drops its state.
const KILL: u8 = 4;

/// A sync actor's state, type-erased.
pub trait ActorState: Send + 'static {
    /// The actor, to downcast in a dispatch function.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Called once when the actor stops (killed, collected, shut down).
    fn stopped(&mut self);
}

/// An async actor's shared state, type-erased.
pub type SharedState = Arc<dyn Any + Send + Sync>;
/// A future an async handler returns; it runs on the actor's arbiter thread.
pub type LocalFuture = Pin<Box<dyn Future<Output = Result<Value, Error>>>>;
/// Runs one message on a sync actor.
pub type SyncDispatch = fn(&mut dyn Any, Value, &mut HostContext<'_>) -> Result<Value, Error>;
/// Starts one message on an async actor.
pub type AsyncDispatch = fn(SharedState, Value, CallInfo) -> LocalFuture;
/// Builds a sync actor (again, on restart).
pub type SyncFactory = Box<dyn Fn() -> Box<dyn ActorState> + Send + Sync>;
/// Builds an async actor.
pub type AsyncFactory = Box<dyn Fn() -> SharedState + Send + Sync>;

/// How a call's message is run: resolved by the typed caller in-process; a peer
/// would resolve it from the method name.
#[derive(Clone, Copy)]
pub enum Dispatch {
    /// On a sync actor.
    Sync(SyncDispatch),
    /// On an async actor.
    Async(AsyncDispatch),
}

/// A call in the mailbox.
pub struct CallJob {
    /// The call, as a peer would receive it.
    pub call: ActorCall,
    /// How to run it here.
    pub dispatch: Dispatch,
    /// Times it was sent again after a crash.
    pub retries: u32,
    /// Its reply object.
    pub reply: Arc<Slot>,
    /// Makes the copy of the message kept to send it again after a crash: a
    /// typed copy, so the objects it refers to stay held. Without it the copy
    /// is the message's encoding.
    pub copy: Option<CopyMessage>,
}

/// Copies a call's message for a retry (given by the typed caller).
pub type CopyMessage = fn(&Value) -> Result<Value, Error>;

/// What a sync handler may see and do to its own actor.
pub struct HostContext<'a> {
    host: &'a Arc<ActorHost>,
}

impl HostContext<'_> {
    /// The actor's host.
    pub fn host(&self) -> &Arc<ActorHost> {
        self.host
    }
}

/// What an async handler sees of its actor, for its whole run.
#[derive(Clone)]
pub struct CallInfo {
    /// The actor's host (weak: a running call does not keep its actor alive).
    pub host: Weak<ActorHost>,
    /// The actor's id.
    pub actor_id: ActorId,
    /// Restarts the actor had when the call started.
    pub restarts: u64,
}

/// How an actor comes back after a crash (Ray's defaults: no restart, no retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestartPolicy {
    /// Restarts allowed.
    pub max_restarts: Retries,
    /// Times a call interrupted by a crash is sent again. With none
    /// (at-most-once), calls in flight or queued at a crash fail with `ActorDied`.
    pub max_task_retries: Retries,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            max_restarts: Retries::NONE,
            max_task_retries: Retries::NONE,
        }
    }
}

impl RestartPolicy {
    fn may_restart(&self, done: u64) -> bool {
        self.max_restarts.allows(done + 1)
    }
    fn may_retry(&self, retries: u32) -> bool {
        self.max_task_retries.allows(retries as u64 + 1)
    }
}

/// What kind of actor to host.
pub enum ActorKind {
    /// Handlers take `&mut self`, one call at a time, on the worker pool.
    Sync(SyncFactory),
    /// Handlers are futures, up to `max_concurrency` at once, on an arbiter.
    Async {
        /// Builds the actor.
        factory: AsyncFactory,
        /// Calls in flight at most.
        max_concurrency: usize,
    },
}

/// Everything needed to start an actor.
pub struct ActorSpec {
    /// Its name, for look-up; unique within the namespace.
    pub name: Option<String>,
    /// The namespace of the name.
    pub namespace: String,
    /// Return the existing actor of that name instead of failing.
    pub get_if_exists: bool,
    /// Live until killed, even with no handle left.
    pub detached: bool,
    /// Calls queued at most (`usize::MAX`: unbounded).
    pub mailbox_capacity: usize,
    /// The Rust type, to check typed look-ups.
    pub type_id: TypeId,
    /// The Rust type's name, for messages.
    pub type_name: &'static str,
    /// Sync or async, with its constructor.
    pub kind: ActorKind,
    /// How it comes back after a crash.
    pub restart: RestartPolicy,
    /// The supervision group it belongs to, if any: then the group's restart
    /// intensity and strategy decide whether it comes back, not `restart`'s
    /// `max_restarts`.
    pub group: Option<Arc<ActorGroup>>,
}

enum Cell<S> {
    Unstarted,
    Running(S),
    Dead,
}

/// The actor's life, its constructor, and the calls to send again after a
/// crash, ahead of the mailbox. Only the host's run loop locks it.
struct Life<S, F> {
    cell: Cell<S>,
    retry: VecDeque<CallJob>,
    /// Kept only while the actor may need it again (a restart): whatever it
    /// captured (a runtime handle, say) is released once it cannot.
    factory: Option<F>,
}

impl<S, F> Life<S, F> {
    fn new(factory: F) -> Self {
        Life {
            cell: Cell::Unstarted,
            retry: VecDeque::new(),
            factory: Some(factory),
        }
    }
}

enum Kind {
    Sync {
        cell: Mutex<Life<Box<dyn ActorState>, SyncFactory>>,
    },
    Async {
        cell: Mutex<Life<SharedState, AsyncFactory>>,
        arbiter: ArbiterHandle,
        max_concurrency: usize,
        in_flight: AtomicUsize,
        /// Calls that are waiting on something, by reply, for a cancel.
        waiting: Mutex<IdMap<ObjectId, Arc<CallCancel>>>,
    },
}

/// One user actor.
///
/// Memory orderings: `scheduled` is the [`ScheduleFlag`] handshake (modelled
/// with loom). `queued` is only a bound on the mailbox: its fetch-add is what
/// makes the bound exact, no data rides on it. `dead` is stored with Release
/// after the cause is written and read with Acquire, so whoever sees the actor
/// dead reads why. `signals` is set with an AcqRel fetch-or after the signal's
/// data (a supervisor's cause, under its own lock) and taken with an AcqRel swap
/// by the run loop, which then sees that data.
pub struct ActorHost {
    id: ActorId,
    name: Option<String>,
    namespace: String,
    type_id: TypeId,
    type_name: &'static str,
    detached: bool,
    mailbox: SegQueue<CallJob>,
    queued: AtomicUsize,
    capacity: usize,
    scheduled: ScheduleFlag,
    signals: AtomicU8,
    dead: AtomicBool,
    death: Mutex<Option<String>>,
    restart: RestartPolicy,
    restarts: AtomicU64,
    membership: OnceLock<Membership>,
    supervised_cause: Mutex<Option<String>>,
    core: Arc<Core>,
    kind: Kind,
}

impl ActorHost {
    /// Starts hosting an actor: its constructor runs on the node's threads.
    pub fn new(id: ActorId, spec: ActorSpec, core: Arc<Core>, arbiter: ArbiterHandle) -> Arc<Self> {
        let kind = match spec.kind {
            ActorKind::Sync(factory) => Kind::Sync {
                cell: Mutex::new(Life::new(factory)),
            },
            ActorKind::Async {
                factory,
                max_concurrency,
            } => Kind::Async {
                cell: Mutex::new(Life::new(factory)),
                arbiter,
                max_concurrency: max_concurrency.max(1),
                in_flight: AtomicUsize::new(0),
                waiting: Mutex::new(IdMap::default()),
            },
        };
        let host = Arc::new(ActorHost {
            id,
            name: spec.name,
            namespace: spec.namespace,
            type_id: spec.type_id,
            type_name: spec.type_name,
            detached: spec.detached,
            mailbox: SegQueue::new(),
            queued: AtomicUsize::new(0),
            capacity: spec.mailbox_capacity,
            scheduled: ScheduleFlag::default(),
            signals: AtomicU8::new(0),
            dead: AtomicBool::new(false),
            death: Mutex::new(None),
            restart: spec.restart,
            restarts: AtomicU64::new(0),
            membership: OnceLock::new(),
            supervised_cause: Mutex::new(None),
            core,
            kind,
        });
        if let Some(group) = spec.group {
            let me: Arc<dyn Supervised> = host.clone();
            let _ = host.membership.set(group.join(Arc::downgrade(&me)));
        }
        host.core.events.publish(SupervisionEvent::Started {
            child: host.label(),
        });
        // Ray runs the constructor at creation, not at the first call.
        host.schedule();
        host
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.id
    }
    /// The actor's name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// The namespace of its name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// The Rust type of the actor.
    pub fn actor_type(&self) -> TypeId {
        self.type_id
    }
    /// The Rust type's name.
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
    /// Whether it lives on with no handle left.
    pub fn is_detached(&self) -> bool {
        self.detached
    }
    /// Whether it is async.
    pub fn is_async(&self) -> bool {
        matches!(self.kind, Kind::Async { .. })
    }
    /// Whether it has died.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
    /// Calls waiting in the mailbox.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
    /// Restarts so far (0 in its first life).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Acquire)
    }
    /// The node it lives on.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}({})", self.type_name, self.id))
    }

    fn died_error(&self) -> Error {
        Error::ActorDied {
            actor: self.label(),
            cause: self
                .death
                .lock()
                .clone()
                .unwrap_or_else(|| "unknown cause".into()),
        }
    }

    /// Queues a call; its reply object fails at once if the actor is dead or
    /// its mailbox is full.
    pub fn call(self: &Arc<Self>, job: CallJob) {
        if self.is_dead() {
            job.reply.complete(Err(self.died_error()));
            return;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            job.reply.complete(Err(Error::MailboxFull {
                actor: self.label(),
                capacity: self.capacity,
            }));
            return;
        }
        self.mailbox.push(job);
        self.schedule();
    }

    fn schedule(self: &Arc<Self>) {
        if self.scheduled.claim() {
            self.submit();
        }
    }

    /// Runs the host's loop (it holds the `scheduled` flag).
    fn submit(self: &Arc<Self>) {
        match &self.kind {
            Kind::Sync { .. } => self.core.run_queue.submit(Job::Actor(self.clone())),
            Kind::Async { arbiter, .. } => {
                let host = self.clone();
                if !arbiter.spawn(async move { host.pump() }) {
                    // The arbiter is gone (shutdown): let the next call see it.
                    self.scheduled.release(|| false);
                }
            }
        }
    }

    /// Kills the actor for good (a signal): the running call finishes, queued
    /// and later calls fail with `ActorDied` and `cause`, and the run loop drops
    /// the state before it would run another call.
    pub fn kill(self: &Arc<Self>, cause: &str) {
        if self.is_dead() {
            return;
        }
        self.die(cause.to_string());
        self.fail_queued(&self.died_error());
        self.core.events.publish(SupervisionEvent::Stopped {
            child: self.label(),
            reason: cause.to_string(),
        });
        self.signals.fetch_or(KILL, Ordering::AcqRel);
        self.schedule();
    }

    /// Whether the run loop has work: mail, or a signal to apply. What a
    /// consumer re-checks after giving up the `scheduled` flag: a signal sent
    /// while it held the flag is data like a call in the mailbox.
    fn has_work(&self) -> bool {
        !self.mailbox.is_empty() || self.signals.load(Ordering::Acquire) != 0
    }

    /// Kills the actor so that it restarts, if its `max_restarts` allows (Ray's
    /// `kill(no_restart=False)`); otherwise it dies for good. A signal: the run
    /// loop applies it before the next call. Calls queued now are treated as
    /// interrupted by the crash (failed under at-most-once); calls made after
    /// this returns reach the new incarnation.
    pub fn restart(self: &Arc<Self>) {
        if self.is_dead() {
            return;
        }
        // Under a supervision group the group decides whether it comes back;
        // either way the calls queued now are not sent again under at-most-once.
        let may_come_back =
            self.membership.get().is_some() || self.restart.may_restart(self.restarts());
        if self.restart.max_task_retries.is_none() && may_come_back {
            self.fail_queued(&Error::ActorDied {
                actor: self.label(),
                cause: "it was restarted with restart(); calls queued then are not sent again (max_task_retries 0)".into(),
            });
        }
        self.signals.fetch_or(RESTART, Ordering::AcqRel);
        self.schedule();
    }

    /// Cancels a call: a queued one never runs (its reply already failed); a
    /// running async one that is waiting has its future dropped.
    pub fn cancel_call(&self, reply: ObjectId) {
        if let Kind::Async { waiting, .. } = &self.kind {
            if let Some(c) = waiting.lock().remove(&reply) {
                c.cancel();
            }
        }
    }

    fn fail_queued(&self, error: &Error) {
        while let Some(job) = self.take() {
            job.reply.complete(Err(error.clone()));
        }
    }

    fn fail_retries(&self, retry: &mut VecDeque<CallJob>) {
        for job in retry.drain(..) {
            job.reply.complete(Err(self.died_error()));
        }
    }

    /// Takes the message out of a call to run it. If the call may be sent again
    /// after a crash, the copy kept for that is its encoding: the handler gets
    /// the message itself, never a serde round trip of it.
    fn split(&self, mut job: CallJob) -> (Value, CallJob) {
        let may_restart = self.membership.get().is_some() || !self.restart.max_restarts.is_none();
        let keep = if self.restart.may_retry(job.retries) && may_restart {
            let copy = match job.copy {
                Some(copy) => copy(&job.call.message),
                None => job.call.message.to_bytes().map(Value::Encoded),
            };
            match copy {
                Ok(copy) => copy,
                Err(e) => {
                    tracing::warn!(
                        "rayx: a {} cannot be kept to send again after a crash: {e}",
                        job.call.method
                    );
                    Value::Taken
                }
            }
        } else {
            Value::Taken
        };
        (std::mem::replace(&mut job.call.message, keep), job)
    }

    fn take(&self) -> Option<CallJob> {
        let job = self.mailbox.pop()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(job)
    }

    /// The run loop's next call, shared by the sync and the async loop.
    /// Signals are applied first. A dead actor's state is dropped here (`stop`
    /// runs on it), what waited fails, and there is no call. Else, if `room`
    /// says a call may start, the next one: a retried call first, then the
    /// mailbox; cancelled calls are skipped (their replies already failed),
    /// and one the fault injector crashes the actor on is handled here.
    fn next_to_run<S, F: Fn() -> S>(
        &self,
        life: &mut Life<S, F>,
        stop: impl Fn(S),
        room: impl Fn() -> bool,
    ) -> Option<CallJob> {
        loop {
            self.apply_signals(life);
            if self.is_dead() {
                if let Cell::Running(state) = std::mem::replace(&mut life.cell, Cell::Dead) {
                    let _ = catch_user(|| stop(state));
                }
                life.factory = None;
                self.fail_retries(&mut life.retry);
                self.fail_queued(&self.died_error());
                return None;
            }
            self.construct(life);
            if !room() {
                return None;
            }
            let job = life.retry.pop_front().or_else(|| self.take())?;
            if self.core.table.cancels_seen() && job.reply.is_cancelled() {
                continue;
            }
            if !matches!(life.cell, Cell::Running(_)) {
                job.reply.complete(Err(self.died_error()));
                continue;
            }
            if self.core.faults.fires(Chance::CrashActor) {
                let cause = "crashed by an injected fault".to_string();
                self.crash(life, cause, Some(job), true);
                continue;
            }
            return Some(job);
        }
    }

    fn die(&self, cause: String) {
        let mut death = self.death.lock();
        if death.is_none() {
            tracing::debug!("rayx: actor {} died: {cause}", self.label());
            *death = Some(cause);
        }
        // Release pairs with `is_dead`'s Acquire: who sees it dead sees the cause.
        let was_dead = self.dead.swap(true, Ordering::AcqRel);
        drop(death);
        if !was_dead {
            // However it died (killed, crashed past its limit, stopped by its
            // group): the directory forgets it, so a detached one is freed.
            self.core.actor_died(self.id);
        }
    }
}

impl Supervised for ActorHost {
    fn restart_by_supervisor(self: Arc<Self>, cause: &str) {
        if self.is_dead() {
            return;
        }
        if self.restart.max_task_retries.is_none() {
            self.fail_queued(&Error::ActorDied {
                actor: self.label(),
                cause: format!(
                    "{cause}; calls queued then are not sent again (max_task_retries 0)"
                ),
            });
        }
        *self.supervised_cause.lock() = Some(cause.to_string());
        self.signals.fetch_or(SUPERVISED_RESTART, Ordering::AcqRel);
        self.schedule();
    }

    fn stop_by_supervisor(self: Arc<Self>, cause: &str) {
        self.kill(cause);
    }
}

impl ActorRun for ActorHost {
    fn run_batch(self: Arc<Self>) {
        self.sync_batch();
    }
}

impl Drop for ActorHost {
    fn drop(&mut self) {
        if let Kind::Sync { cell } = &mut self.kind {
            stop_sync(&mut cell.get_mut().cell);
        }
        let error = Error::ActorDied {
            actor: self.label(),
            cause: "every handle to it was dropped".into(),
        };
        while let Some(job) = self.mailbox.pop() {
            job.reply.complete(Err(error.clone()));
        }
        self.core.actor_collected(self.id);
    }
}
