//! An actor host: one user actor's mailbox, state and lifecycle.
//!
//! Calls go into a lock-free FIFO mailbox. A sync actor is scheduled on the
//! worker pool as one job that runs a batch of calls with the state held, so
//! calls from one caller run in the order they were made and a busy actor takes
//! many calls per wake-up. An async actor lives on an async arbiter, where its
//! calls run as futures, up to `max_concurrency` at a time.
//!
//! A panic in a handler crashes the actor (its state may be half-updated, as with
//! a poisoned lock). Within `max_restarts` the actor restarts: the constructor runs
//! again, the crashed call is sent again if `max_task_retries` allows (before any
//! queued call, so order holds) and otherwise fails with `ActorDied`, as do the
//! queued calls under at-most-once (`max_task_retries = 0`). Past `max_restarts`,
//! or when the constructor itself panics, the actor is dead for good.

use crate::error::Error;
use crate::faults::{Chance, FaultInjector};
use crate::ids::ActorId;
use crate::messages::ActorCall;
use crate::owner::OwnerTable;
use crate::router::{Job, RunQueue};
use crate::supervisor::{EventBus, SupervisionEvent};
use crate::value::Value;
use crate::worker::catch_user;
use actix_rt::ArbiterHandle;
use crossbeam_queue::SegQueue;
use parking_lot::Mutex;
use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Calls a sync actor runs per turn on a worker before yielding to other jobs.
const BATCH: usize = 256;

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
pub type AsyncDispatch = fn(SharedState, Value) -> LocalFuture;
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
}

/// What a handler may do to its own actor.
pub struct HostContext<'a> {
    host: &'a ActorHost,
    stop: bool,
}

impl HostContext<'_> {
    /// The actor's id.
    pub fn actor_id(&self) -> ActorId {
        self.host.id
    }
    /// The actor's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.host.name.as_deref()
    }
    /// Stops the actor after this call; queued calls fail with `ActorDied`.
    pub fn stop(&mut self) {
        self.stop = true;
    }
    /// How many times the actor has been restarted (0 in its first life).
    pub fn restarts(&self) -> u64 {
        self.host.restarts.load(Ordering::Acquire)
    }
}

/// How an actor comes back after a crash (Ray's defaults: no restart, no retry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestartPolicy {
    /// Restarts allowed; -1 for no limit.
    pub max_restarts: i64,
    /// Times a call interrupted by a crash is sent again; -1 for no limit. With 0
    /// (at-most-once), calls in flight or queued at a crash fail with `ActorDied`.
    pub max_task_retries: i64,
}

impl RestartPolicy {
    fn may_restart(&self, done: u64) -> bool {
        self.max_restarts < 0 || done < self.max_restarts as u64
    }
    fn may_retry(&self, retries: u32) -> bool {
        self.max_task_retries < 0 || (retries as i64) < self.max_task_retries
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
}

enum Cell<S> {
    Unstarted,
    Running(S),
    Dead,
}

/// The actor's life and the calls to send again after a crash, ahead of the
/// mailbox.
struct Life<S> {
    cell: Cell<S>,
    retry: VecDeque<CallJob>,
}

impl<S> Life<S> {
    fn new() -> Self {
        Life {
            cell: Cell::Unstarted,
            retry: VecDeque::new(),
        }
    }
}

enum Kind {
    Sync {
        cell: Mutex<Life<Box<dyn ActorState>>>,
        factory: SyncFactory,
    },
    Async {
        cell: Mutex<Life<SharedState>>,
        factory: AsyncFactory,
        arbiter: ArbiterHandle,
        max_concurrency: usize,
        in_flight: AtomicUsize,
    },
}

/// One user actor.
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
    scheduled: AtomicBool,
    dead: AtomicBool,
    death: Mutex<Option<String>>,
    restart: RestartPolicy,
    restarts: AtomicU64,
    restart_requested: AtomicBool,
    table: Arc<OwnerTable>,
    run_queue: Arc<RunQueue>,
    events: Arc<EventBus>,
    faults: Arc<FaultInjector>,
    kind: Kind,
}

/// What a host needs from its node.
pub(crate) struct HostEnv {
    pub(crate) table: Arc<OwnerTable>,
    pub(crate) run_queue: Arc<RunQueue>,
    pub(crate) events: Arc<EventBus>,
    pub(crate) faults: Arc<FaultInjector>,
}

impl ActorHost {
    pub(crate) fn new(
        id: ActorId,
        spec: ActorSpec,
        env: HostEnv,
        async_arbiter: ArbiterHandle,
    ) -> Arc<Self> {
        let kind = match spec.kind {
            ActorKind::Sync(factory) => Kind::Sync {
                cell: Mutex::new(Life::new()),
                factory,
            },
            ActorKind::Async {
                factory,
                max_concurrency,
            } => Kind::Async {
                cell: Mutex::new(Life::new()),
                factory,
                arbiter: async_arbiter,
                max_concurrency: max_concurrency.max(1),
                in_flight: AtomicUsize::new(0),
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
            scheduled: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            death: Mutex::new(None),
            restart: spec.restart,
            restarts: AtomicU64::new(0),
            restart_requested: AtomicBool::new(false),
            table: env.table,
            run_queue: env.run_queue,
            events: env.events,
            faults: env.faults,
            kind,
        });
        host.events.publish(SupervisionEvent::Started {
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
        let reply = job.call.reply_to;
        if self.is_dead() {
            self.table.complete(reply, Err(self.died_error()));
            return;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.table.complete(
                reply,
                Err(Error::MailboxFull {
                    actor: self.label(),
                    capacity: self.capacity,
                }),
            );
            return;
        }
        self.mailbox.push(job);
        self.schedule();
    }

    fn schedule(self: &Arc<Self>) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        match &self.kind {
            Kind::Sync { .. } => self.run_queue.submit(Job::Actor(self.clone())),
            Kind::Async { arbiter, .. } => {
                let host = self.clone();
                if !arbiter.spawn(async move { host.pump() }) {
                    // The arbiter is gone (shutdown): let the next call see it.
                    // A swap, not a store: it pairs with the caller's swap in `schedule`, so
                    // either the caller sees `false` and schedules us again, or we see its
                    // message in the mailbox below. (A plain store may pass the mailbox read.)
                    self.scheduled.swap(false, Ordering::AcqRel);
                }
            }
        }
    }

    /// Kills the actor for good: the running call finishes, queued and later
    /// calls fail with `ActorDied` and `cause`, and the state is dropped.
    pub fn kill(self: &Arc<Self>, cause: &str) {
        self.die(cause.to_string());
        match &self.kind {
            Kind::Sync { cell, .. } => {
                if let Some(mut life) = cell.try_lock() {
                    stop_sync(&mut life.cell);
                    self.fail_retries(&mut life.retry);
                }
            }
            Kind::Async { cell, .. } => {
                let mut life = cell.lock();
                life.cell = Cell::Dead;
                self.fail_retries(&mut life.retry);
            }
        }
        self.fail_queued(&self.died_error());
        self.events.publish(SupervisionEvent::Stopped {
            child: self.label(),
            reason: cause.to_string(),
        });
        // A batch running now sees the flag after its call and fails the rest.
        self.schedule();
    }

    /// Kills the actor so that it restarts, if its `max_restarts` allows (Ray's
    /// `kill(no_restart=False)`); otherwise it dies for good.
    pub fn restart(self: &Arc<Self>) {
        self.restart_requested.store(true, Ordering::Release);
        match &self.kind {
            Kind::Sync { cell, .. } => {
                // Wait (a little) for a running call to finish, so the restart
                // splits the calls made before it from those made after. A
                // handler still running then gets the restart when it returns.
                if let Some(mut life) = cell.try_lock_for(std::time::Duration::from_secs(1)) {
                    self.take_restart_request(&mut life);
                }
            }
            Kind::Async { cell, .. } => {
                let mut life = cell.lock();
                self.take_restart_request(&mut life);
            }
        }
        self.schedule();
    }

    fn take_restart_request<S>(&self, life: &mut Life<S>) {
        if self.restart_requested.swap(false, Ordering::AcqRel) && !self.is_dead() {
            self.crash(life, "it was restarted with restart()".into(), None);
        }
    }

    fn fail_queued(&self, error: &Error) {
        while let Some(job) = self.take() {
            self.table.complete(job.call.reply_to, Err(error.clone()));
        }
    }

    fn fail_retries(&self, retry: &mut VecDeque<CallJob>) {
        for job in retry.drain(..) {
            self.table
                .complete(job.call.reply_to, Err(self.died_error()));
        }
    }

    /// The actor crashed (a panic, an injected fault, a restart request): restart
    /// it within its policy or let it die; `in_flight` is the call it was running.
    fn crash<S>(&self, life: &mut Life<S>, cause: String, in_flight: Option<CallJob>) {
        // Drop the broken state first: its destructor runs, `stopped` does not.
        let _ = catch_user(|| drop(std::mem::replace(&mut life.cell, Cell::Unstarted)));
        self.events.publish(SupervisionEvent::Failed {
            child: self.label(),
            cause: cause.clone(),
        });
        // Events go out before any reply, so whoever sees a reply sees them too.
        let done = self.restarts.load(Ordering::Acquire);
        if !self.restart.may_restart(done) {
            life.cell = Cell::Dead;
            let why = if self.restart.max_restarts == 0 {
                cause
            } else {
                format!(
                    "{cause} (after {done} restarts, max_restarts is {})",
                    self.restart.max_restarts
                )
            };
            self.events.publish(SupervisionEvent::GaveUp {
                child: self.label(),
                restarts: done,
            });
            self.die(why);
            if let Some(job) = in_flight {
                self.table
                    .complete(job.call.reply_to, Err(self.died_error()));
            }
            self.fail_retries(&mut life.retry);
            return;
        }
        self.restarts.store(done + 1, Ordering::Release);
        self.events.publish(SupervisionEvent::Restarted {
            child: self.label(),
            attempt: done + 1,
        });
        if self.restart.max_task_retries == 0 {
            // At-most-once: what was queued when it crashed fails too. This comes
            // before the interrupted call's reply, so a call made after that reply
            // is not mistaken for one queued at the crash.
            let error = Error::ActorDied {
                actor: self.label(),
                cause: format!(
                    "{cause}; the actor restarts, but calls queued at the crash are not sent again (max_task_retries 0)"
                ),
            };
            self.fail_queued(&error);
            for job in life.retry.drain(..) {
                self.table.complete(job.call.reply_to, Err(error.clone()));
            }
        }
        if let Some(mut job) = in_flight {
            if self.restart.may_retry(job.retries) {
                job.retries += 1;
                life.retry.push_front(job);
            } else {
                let error = Error::ActorDied {
                    actor: self.label(),
                    cause: format!(
                        "{cause}; the actor restarts, but the call is not sent again ({} retries, max_task_retries {})",
                        job.retries, self.restart.max_task_retries
                    ),
                };
                self.table.complete(job.call.reply_to, Err(error));
            }
        }
    }

    /// Takes the message out of a call to run it, keeping a copy only if the
    /// call may be sent again after a crash.
    fn split(&self, mut job: CallJob) -> (Value, CallJob) {
        let keep = if self.restart.may_retry(job.retries) && self.restart.max_restarts != 0 {
            job.call.message.clone()
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

    /// Runs the constructor if the actor has none running; a panic there is final.
    fn construct<S>(&self, life: &mut Life<S>, factory: impl FnOnce() -> S) {
        if !matches!(life.cell, Cell::Unstarted) || self.is_dead() {
            return;
        }
        match catch_user(factory) {
            Ok(state) => life.cell = Cell::Running(state),
            Err(cause) => {
                life.cell = Cell::Dead;
                self.die(format!("its constructor {cause}"));
                self.fail_retries(&mut life.retry);
                self.events.publish(SupervisionEvent::Failed {
                    child: self.label(),
                    cause: format!("its constructor {cause}"),
                });
            }
        }
    }

    /// Runs a batch of calls of a sync actor (on a worker).
    pub(crate) fn run_batch(self: Arc<Self>) {
        let Kind::Sync { cell, factory } = &self.kind else {
            return;
        };
        let mut life = cell.lock();
        self.take_restart_request(&mut life);
        for _ in 0..BATCH {
            if self.is_dead() {
                stop_sync(&mut life.cell);
                self.fail_retries(&mut life.retry);
            }
            self.construct(&mut life, factory);
            let Some(job) = life.retry.pop_front().or_else(|| self.take()) else {
                break;
            };
            let (Cell::Running(state), Dispatch::Sync(dispatch)) = (&mut life.cell, job.dispatch)
            else {
                self.table
                    .complete(job.call.reply_to, Err(self.died_error()));
                continue;
            };
            if self.faults.fires(Chance::CrashActor) {
                self.crash(&mut life, "crashed by an injected fault".into(), Some(job));
                continue;
            }
            let mut ctx = HostContext {
                host: &self,
                stop: false,
            };
            let (message, keep) = self.split(job);
            match catch_user(|| dispatch(state.as_any_mut(), message, &mut ctx)) {
                Ok(result) => {
                    let stop = ctx.stop;
                    self.table.complete(keep.call.reply_to, result);
                    if stop {
                        stop_sync(&mut life.cell);
                        self.die("it stopped itself".into());
                    }
                }
                Err(cause) => {
                    let cause = format!("{} {cause}", keep.call.method);
                    self.crash(&mut life, cause, Some(keep));
                }
            }
            self.take_restart_request(&mut life);
        }
        if self.is_dead() {
            stop_sync(&mut life.cell);
            self.fail_retries(&mut life.retry);
        }
        let more = !life.retry.is_empty();
        drop(life);
        // A swap, not a store: it pairs with the caller's swap in `schedule`, so
        // either the caller sees `false` and schedules us again, or we see its
        // message in the mailbox below. (A plain store may pass the mailbox read.)
        self.scheduled.swap(false, Ordering::AcqRel);
        if more || !self.mailbox.is_empty() {
            self.schedule();
        }
    }

    fn die(&self, cause: String) {
        let mut death = self.death.lock();
        if death.is_none() {
            tracing::debug!("rayx: actor {} died: {cause}", self.label());
            *death = Some(cause);
        }
        self.dead.store(true, Ordering::Release);
    }

    /// Starts queued calls of an async actor (on its arbiter thread).
    fn pump(self: Arc<Self>) {
        let Kind::Async {
            cell,
            factory,
            max_concurrency,
            in_flight,
            ..
        } = &self.kind
        else {
            return;
        };
        // A swap, not a store: it pairs with the caller's swap in `schedule`, so
        // either the caller sees `false` and schedules us again, or we see its
        // message in the mailbox below. (A plain store may pass the mailbox read.)
        self.scheduled.swap(false, Ordering::AcqRel);
        let mut life = cell.lock();
        self.take_restart_request(&mut life);
        self.construct(&mut life, factory);
        while in_flight.load(Ordering::Acquire) < *max_concurrency {
            let Some(job) = life.retry.pop_front().or_else(|| self.take()) else {
                break;
            };
            let state = match (&life.cell, job.dispatch) {
                (Cell::Running(s), Dispatch::Async(_)) if !self.is_dead() => s.clone(),
                _ => {
                    self.table
                        .complete(job.call.reply_to, Err(self.died_error()));
                    continue;
                }
            };
            if self.faults.fires(Chance::CrashActor) {
                self.crash(&mut life, "crashed by an injected fault".into(), Some(job));
                self.construct(&mut life, factory);
                continue;
            }
            let Dispatch::Async(dispatch) = job.dispatch else {
                continue;
            };
            in_flight.fetch_add(1, Ordering::AcqRel);
            let (message, job) = self.split(job);
            // Most handlers finish without waiting: run them to completion here,
            // and make a task only of one that has to wait. A future polled here
            // with a no-op waker registers the task's waker when the task polls it.
            let result = match catch_user(|| dispatch(state, message)) {
                Err(cause) => Err(cause),
                Ok(fut) => {
                    let mut fut = CatchUnwind(fut);
                    match Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop())) {
                        Poll::Ready(result) => result,
                        Poll::Pending => {
                            self.clone().spawn_call(fut, job);
                            continue;
                        }
                    }
                }
            };
            in_flight.fetch_sub(1, Ordering::AcqRel);
            match result {
                Ok(reply) => self.table.complete(job.call.reply_to, reply),
                Err(cause) => {
                    let cause = format!("{} {cause}", job.call.method);
                    self.crash(&mut life, cause, Some(job));
                    self.construct(&mut life, factory);
                }
            }
        }
        let idle = self.mailbox.is_empty() && life.retry.is_empty();
        drop(life);
        if idle && in_flight.load(Ordering::Acquire) == 0 {
            self.linger();
        }
    }

    /// Runs an async call that has to wait as a task on the actor's thread.
    fn spawn_call(self: Arc<Self>, fut: CatchUnwind, job: CallJob) {
        actix_rt::spawn(async move {
            let result = fut.await;
            let Kind::Async {
                cell, in_flight, ..
            } = &self.kind
            else {
                return;
            };
            match result {
                Ok(reply) => self.table.complete(job.call.reply_to, reply),
                Err(cause) => {
                    let cause = format!("{} {cause}", job.call.method);
                    self.crash(&mut cell.lock(), cause, Some(job));
                }
            }
            let left = in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
            let more = !self.mailbox.is_empty() || !cell.lock().retry.is_empty();
            if more {
                self.pump();
            } else if left == 0 {
                self.linger();
            }
        });
    }

    /// Keeps watching an idle async actor's mailbox for a moment, on its own
    /// thread: a caller that sends its next call right after a reply then finds
    /// the actor awake instead of paying for a thread wake-up.
    fn linger(self: &Arc<Self>) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        actix_rt::spawn(Linger {
            host: self.clone(),
            until: std::time::Instant::now() + LINGER,
        });
    }
}

/// How long an idle async actor keeps watching its mailbox.
const LINGER: std::time::Duration = std::time::Duration::from_micros(50);

/// Watches an idle async actor's mailbox until mail comes or time runs out;
/// owns the actor's `scheduled` flag meanwhile, so callers do not wake the thread.
struct Linger {
    host: Arc<ActorHost>,
    until: std::time::Instant,
}

impl Future for Linger {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let host = &self.host;
        if !host.mailbox.is_empty() {
            host.clone().pump();
            return Poll::Ready(());
        }
        if std::time::Instant::now() >= self.until || host.is_dead() {
            host.scheduled.swap(false, Ordering::AcqRel);
            if !host.mailbox.is_empty() && !host.scheduled.swap(true, Ordering::AcqRel) {
                host.clone().pump();
            }
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn stop_sync(cell: &mut Cell<Box<dyn ActorState>>) {
    if let Cell::Running(mut state) = std::mem::replace(cell, Cell::Dead) {
        let _ = catch_user(|| state.stopped());
    }
}

impl Drop for ActorHost {
    fn drop(&mut self) {
        if let Kind::Sync { cell, .. } = &mut self.kind {
            stop_sync(&mut cell.get_mut().cell);
        }
        let error = Error::ActorDied {
            actor: self.label(),
            cause: "every handle to it was dropped".into(),
        };
        while let Some(job) = self.mailbox.pop() {
            self.table.complete(job.call.reply_to, Err(error.clone()));
        }
    }
}

/// Polls a future with panics caught.
struct CatchUnwind(LocalFuture);

impl Future for CatchUnwind {
    type Output = Result<Result<Value, Error>, String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = &mut self.0;
        match catch_user(|| fut.as_mut().poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
            Err(cause) => Poll::Ready(Err(cause)),
        }
    }
}
