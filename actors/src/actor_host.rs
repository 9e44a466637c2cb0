//! An actor host: one user actor's mailbox, state and lifecycle.
//!
//! Calls go into a lock-free FIFO mailbox. A sync actor is scheduled on the
//! worker pool as one job that runs a batch of calls with the state held, so
//! calls from one caller run in the order they were made and a busy actor takes
//! many calls per wake-up. An async actor lives on an async arbiter, where its
//! calls run as futures, up to `max_concurrency` at a time.
//!
//! A panic in a handler kills the actor (its state may be half-updated, as with a
//! poisoned lock): that call and every queued one fail with `ActorDied` and the
//! panic's message. Restarts hook in here (`Cell::Unstarted` re-runs the
//! constructor).

use crate::error::Error;
use crate::ids::ActorId;
use crate::messages::ActorCall;
use crate::owner::OwnerTable;
use crate::router::{Job, RunQueue};
use crate::value::Value;
use crate::worker::catch_user;
use actix_rt::ArbiterHandle;
use crossbeam_queue::SegQueue;
use parking_lot::Mutex;
use std::any::{Any, TypeId};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

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
}

enum Cell<S> {
    Unstarted,
    Running(S),
    Dead,
}

enum Kind {
    Sync {
        cell: Mutex<Cell<Box<dyn ActorState>>>,
        factory: SyncFactory,
    },
    Async {
        cell: Mutex<Cell<SharedState>>,
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
    table: Arc<OwnerTable>,
    run_queue: Arc<RunQueue>,
    kind: Kind,
}

impl ActorHost {
    pub(crate) fn new(
        id: ActorId,
        spec: ActorSpec,
        table: Arc<OwnerTable>,
        run_queue: Arc<RunQueue>,
        async_arbiter: ArbiterHandle,
    ) -> Arc<Self> {
        let kind = match spec.kind {
            ActorKind::Sync(factory) => Kind::Sync {
                cell: Mutex::new(Cell::Unstarted),
                factory,
            },
            ActorKind::Async {
                factory,
                max_concurrency,
            } => Kind::Async {
                cell: Mutex::new(Cell::Unstarted),
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
            table,
            run_queue,
            kind,
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
                    self.scheduled.store(false, Ordering::Release);
                }
            }
        }
    }

    /// Kills the actor: the running call finishes, queued and later calls fail
    /// with `ActorDied` and `cause`, and the state is dropped.
    pub fn kill(self: &Arc<Self>, cause: &str) {
        {
            let mut death = self.death.lock();
            if death.is_none() {
                *death = Some(cause.to_string());
            }
        }
        self.dead.store(true, Ordering::Release);
        match &self.kind {
            Kind::Sync { cell, .. } => {
                if let Some(mut guard) = cell.try_lock() {
                    stop_sync(&mut guard);
                }
            }
            Kind::Async { cell, .. } => {
                *cell.lock() = Cell::Dead;
            }
        }
        // Fail whatever is queued (a running batch does it as well).
        while let Some(job) = self.mailbox.pop() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.table
                .complete(job.call.reply_to, Err(self.died_error()));
        }
    }

    fn take(&self) -> Option<CallJob> {
        let job = self.mailbox.pop()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(job)
    }

    /// Runs a batch of calls of a sync actor (on a worker).
    pub(crate) fn run_batch(self: Arc<Self>) {
        let Kind::Sync { cell, factory } = &self.kind else {
            return;
        };
        let mut guard = cell.lock();
        if matches!(*guard, Cell::Unstarted) && !self.is_dead() {
            match catch_user(factory) {
                Ok(state) => *guard = Cell::Running(state),
                Err(cause) => {
                    *guard = Cell::Dead;
                    self.die(format!("its constructor {cause}"));
                }
            }
        }
        for _ in 0..BATCH {
            if self.is_dead() {
                stop_sync(&mut guard);
            }
            let Some(job) = self.take() else { break };
            let reply = job.call.reply_to;
            let (Cell::Running(state), Dispatch::Sync(dispatch)) = (&mut *guard, job.dispatch)
            else {
                self.table.complete(reply, Err(self.died_error()));
                continue;
            };
            let mut ctx = HostContext {
                host: &self,
                stop: false,
            };
            let message = job.call.message;
            match catch_user(|| dispatch(state.as_any_mut(), message, &mut ctx)) {
                Ok(result) => {
                    let stop = ctx.stop;
                    self.table.complete(reply, result);
                    if stop {
                        self.die("it stopped itself".into());
                    }
                }
                Err(cause) => {
                    *guard = Cell::Dead;
                    self.die(format!("{} {cause}", job.call.method));
                    self.table.complete(reply, Err(self.died_error()));
                }
            }
        }
        if self.is_dead() {
            stop_sync(&mut guard);
        }
        drop(guard);
        self.scheduled.store(false, Ordering::Release);
        if !self.mailbox.is_empty() {
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
        self.scheduled.store(false, Ordering::Release);
        let state = {
            let mut guard = cell.lock();
            if matches!(*guard, Cell::Unstarted) && !self.is_dead() {
                match catch_user(factory) {
                    Ok(state) => *guard = Cell::Running(state),
                    Err(cause) => {
                        *guard = Cell::Dead;
                        self.die(format!("its constructor {cause}"));
                    }
                }
            }
            match &*guard {
                Cell::Running(s) if !self.is_dead() => Some(s.clone()),
                _ => None,
            }
        };
        while in_flight.load(Ordering::Acquire) < *max_concurrency {
            let Some(job) = self.take() else { break };
            let reply = job.call.reply_to;
            let (Some(state), Dispatch::Async(dispatch)) = (&state, job.dispatch) else {
                self.table.complete(reply, Err(self.died_error()));
                continue;
            };
            in_flight.fetch_add(1, Ordering::AcqRel);
            let method = job.call.method;
            let started = catch_user(|| dispatch(state.clone(), job.call.message));
            let host = self.clone();
            actix_rt::spawn(async move {
                let result = match started {
                    Ok(fut) => CatchUnwind(fut).await,
                    Err(cause) => Err(cause),
                };
                match result {
                    Ok(r) => host.table.complete(reply, r),
                    Err(cause) => {
                        host.die(format!("{method} {cause}"));
                        if let Kind::Async { cell, .. } = &host.kind {
                            *cell.lock() = Cell::Dead;
                        }
                        host.table.complete(reply, Err(host.died_error()));
                    }
                }
                let left = match &host.kind {
                    Kind::Async { in_flight, .. } => in_flight.fetch_sub(1, Ordering::AcqRel) - 1,
                    Kind::Sync { .. } => 0,
                };
                if !host.mailbox.is_empty() {
                    host.pump();
                } else if left == 0 {
                    host.linger();
                }
            });
        }
        if self.mailbox.is_empty() && in_flight.load(Ordering::Acquire) == 0 {
            self.linger();
        }
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
            host.scheduled.store(false, Ordering::Release);
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
            stop_sync(cell.get_mut());
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
