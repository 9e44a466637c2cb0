//! The owner: the table of objects this node owns, their values, their waiters and
//! the tasks that wait on them. A value is freed when the last reference to its
//! slot is dropped, wherever that reference lives (a driver's `ObjectRef`, a
//! pending task's arguments, another object, an actor's state).
//!
//! The table is sharded: completions and lookups from many workers never meet on
//! one lock. The `Owner` actor answers the control plane (usage, fail-all).

use crate::error::Error;
use crate::faults::{Chance, FaultInjector, Trigger};
use crate::ids::{IdMap, ObjectId};
use crate::messages::{Arg, TaskSpec};
use crate::object_store::ObjectStore;
use crate::router::{Job, RunQueue};
use crate::supervisor::{supervised_child, ChildLink, Supervisor};
use crate::value::Value;
use crate::worker::BlockingSection;
use actix::{Actor, Addr, Context, Handler, Message, MessageResult};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant};

const SHARDS: usize = 64;
const PENDING: u8 = 0;
const DONE: u8 = 1;
/// Lost: no value, and no rebuild started yet.
const LOST: u8 = 2;
/// Polls of a pending slot before a getter parks: a round trip to a spinning
/// worker is far cheaper than a thread wake-up.
const SPINS: u32 = 2_000;

/// Memory held by a node's objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// Live objects (pending or ready) the owner tracks.
    pub objects: u64,
    /// Bytes of small values held inline by the owner.
    pub inline_bytes: u64,
    /// Objects in the object store.
    pub store_objects: u64,
    /// Bytes in the object store.
    pub store_bytes: u64,
    /// The object store's capacity in bytes.
    pub store_capacity: u64,
    /// Bytes of task specs kept as lineage, to rebuild lost objects.
    pub lineage_bytes: u64,
}

struct Shard {
    index: Mutex<IdMap<ObjectId, Weak<Slot>>>,
    inline_bytes: AtomicU64,
}

/// The object table of one node.
pub struct OwnerTable {
    shards: Box<[Shard]>,
    next_id: AtomicU64,
    store: Arc<ObjectStore>,
    inline_threshold: usize,
    run_queue: Arc<RunQueue>,
    closed: std::sync::atomic::AtomicBool,
    faults: Arc<FaultInjector>,
    /// Lineage is kept only where an object can be lost; in one process only
    /// an injected fault loses one.
    keep_lineage: bool,
    max_lineage_bytes: u64,
    lineage_bytes: AtomicU64,
}

impl OwnerTable {
    pub(crate) fn new(
        store: Arc<ObjectStore>,
        run_queue: Arc<RunQueue>,
        inline_threshold: usize,
        faults: Arc<FaultInjector>,
        max_lineage_bytes: u64,
    ) -> Arc<Self> {
        let keep_lineage = faults.faults().drop_object != Trigger::Never;
        let shards = (0..SHARDS)
            .map(|_| Shard {
                index: Mutex::new(IdMap::default()),
                inline_bytes: AtomicU64::new(0),
            })
            .collect();
        Arc::new(OwnerTable {
            shards,
            next_id: AtomicU64::new(1),
            store,
            inline_threshold,
            run_queue,
            closed: std::sync::atomic::AtomicBool::new(false),
            faults,
            keep_lineage,
            max_lineage_bytes,
            lineage_bytes: AtomicU64::new(0),
        })
    }

    fn shard(&self, id: ObjectId) -> &Shard {
        &self.shards[(id.0 as usize) % SHARDS]
    }

    /// A fresh id for an object or a task.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a pending object (a task's or a call's return).
    pub fn new_pending(self: &Arc<Self>) -> Arc<Slot> {
        let id = ObjectId(self.next_id());
        let slot = self.insert(Slot::new(id, self.clone()));
        // Checked after the insert: either fail_all sees this slot, or we see it closed.
        if self.closed.load(Ordering::SeqCst) {
            slot.complete(Err(Error::ShutDown));
        }
        slot
    }

    /// Stores a value put by the caller. Fails when the object store is full.
    pub fn put(self: &Arc<Self>, value: Value) -> Result<Arc<Slot>, Error> {
        let slot = self.new_pending();
        slot.complete(Ok(value));
        match slot.try_get() {
            Some(Err(e)) => Err(e),
            _ => Ok(slot),
        }
    }

    fn insert(&self, slot: Slot) -> Arc<Slot> {
        let slot = Arc::new(slot);
        self.shard(slot.id)
            .index
            .lock()
            .insert(slot.id, Arc::downgrade(&slot));
        slot
    }

    /// The live slot of an object, if any reference to it remains.
    pub fn lookup(&self, id: ObjectId) -> Option<Arc<Slot>> {
        self.shard(id).index.lock().get(&id).and_then(Weak::upgrade)
    }

    /// Reports a task's outcome; a result nobody references any more is dropped.
    pub fn complete(&self, id: ObjectId, result: Result<Value, Error>) {
        if let Some(slot) = self.lookup(id) {
            slot.complete(result);
        }
    }

    /// Fails every pending object with `error` (used at shutdown).
    pub fn fail_all(&self, error: Error) {
        self.closed.store(true, Ordering::SeqCst);
        for shard in self.shards.iter() {
            let slots: Vec<Arc<Slot>> = shard
                .index
                .lock()
                .values()
                .filter_map(Weak::upgrade)
                .collect();
            for slot in slots {
                slot.complete(Err(error.clone()));
            }
        }
    }

    /// The memory the node's objects hold now.
    pub fn usage(&self) -> MemoryUsage {
        let mut u = MemoryUsage::default();
        for shard in self.shards.iter() {
            u.objects += shard.index.lock().len() as u64;
            u.inline_bytes += shard.inline_bytes.load(Ordering::Relaxed);
        }
        let (objects, bytes) = self.store.usage();
        u.store_objects = objects;
        u.store_bytes = bytes;
        u.store_capacity = self.store.capacity();
        u.lineage_bytes = self.lineage_bytes.load(Ordering::Relaxed);
        u
    }

    /// Keeps `spec` as the lineage of `ret`, if lineage is kept here and fits
    /// the budget (`max_lineage_bytes`); otherwise `ret` cannot be rebuilt.
    pub(crate) fn record_lineage(&self, ret: &Slot, spec: &TaskSpec, pins: &[Arc<Slot>]) {
        if !self.keep_lineage {
            return;
        }
        let bytes = 64
            + spec
                .args
                .iter()
                .map(|a| match a {
                    Arg::Value(v) => v.size() as u64,
                    Arg::Ref(_) => 8,
                })
                .sum::<u64>();
        let mut used = self.lineage_bytes.load(Ordering::Relaxed);
        loop {
            if used + bytes > self.max_lineage_bytes {
                ret.inner.lock().lineage = Lineage::Evicted;
                return;
            }
            match self.lineage_bytes.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        let rebuilds_left = spec.options.max_retries as i64;
        ret.inner.lock().lineage = Lineage::Kept(Box::new(Kept {
            spec: spec.clone(),
            pins: pins.to_vec(),
            bytes,
            rebuilds_left,
        }));
    }

    /// Submits a task: dispatched at once if its arguments are ready, else when
    /// the last one is. `pins` are the slots of its `Arg::Ref` arguments; they are
    /// held until the task has run, so its inputs stay counted.
    pub fn submit_task(self: &Arc<Self>, spec: TaskSpec, pins: Vec<Arc<Slot>>) {
        if self.closed.load(Ordering::SeqCst) {
            self.complete(spec.task_id.return_id(), Err(Error::ShutDown));
            return;
        }
        let job = TaskJob {
            spec,
            pins,
            failures: Vec::new(),
        };
        if job.pins.is_empty() {
            self.run_queue.submit(Job::Task(job));
            return;
        }
        let waiting = Arc::new(PendingTask {
            remaining: AtomicUsize::new(job.pins.len() + 1),
            job: Mutex::new(None),
            table: self.clone(),
        });
        let pins = job.pins.clone();
        *waiting.job.lock() = Some(job);
        for pin in &pins {
            if let Some(done) = pin.add_dependent(&waiting) {
                waiting.dependency_done(done.err());
            }
        }
        waiting.dependency_done(None);
    }
}

/// A task with the slots of its arguments pinned.
pub struct TaskJob {
    /// The task.
    pub spec: TaskSpec,
    /// The slots its `Arg::Ref`s name, held until it has run.
    pub pins: Vec<Arc<Slot>>,
    /// Why each earlier attempt failed.
    pub failures: Vec<String>,
}

impl TaskJob {
    /// The argument values, in order; an argument that failed fails the task.
    /// Inline values are taken out unless the task may run again, in which case
    /// they are shared (a pointer copy).
    pub fn resolve_args(&mut self, keep: bool) -> Result<Vec<Value>, Error> {
        let args: Vec<Arg> = if keep {
            self.spec.args.clone()
        } else {
            std::mem::take(&mut self.spec.args)
        };
        args.into_iter()
            .map(|arg| match arg {
                Arg::Value(v) => Ok(v),
                Arg::Ref(id) => {
                    let pin = self
                        .pins
                        .iter()
                        .find(|p| p.id == id)
                        .ok_or_else(|| Error::ObjectLost { id: id.to_string() })?;
                    match pin.try_get() {
                        Some(Ok(v)) => Ok(v),
                        Some(Err(e)) => Err(Error::DependencyFailed {
                            task: self.spec.display_name().to_string(),
                            cause: Box::new(e),
                        }),
                        None => Err(Error::ObjectLost { id: id.to_string() }),
                    }
                }
            })
            .collect()
    }
}

/// A task waiting for its arguments.
struct PendingTask {
    remaining: AtomicUsize,
    job: Mutex<Option<TaskJob>>,
    table: Arc<OwnerTable>,
}

impl PendingTask {
    /// One argument is done; `failed` carries its error if it failed.
    fn dependency_done(&self, failed: Option<Error>) {
        if let Some(cause) = failed {
            if let Some(job) = self.job.lock().take() {
                let err = Error::DependencyFailed {
                    task: job.spec.display_name().to_string(),
                    cause: Box::new(cause),
                };
                self.table.complete(job.spec.task_id.return_id(), Err(err));
            }
            return;
        }
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(job) = self.job.lock().take() {
                self.table.run_queue.submit(Job::Task(job));
            }
        }
    }
}

enum State {
    Pending,
    Ready(Value),
    Failed(Error),
    /// The value was lost (an injected fault); the next reader rebuilds it
    /// from its lineage, or fails.
    Lost,
}

/// How an object can be rebuilt.
enum Lineage {
    /// A `put` object, or no lineage is kept here: it cannot be rebuilt.
    None,
    /// It had lineage, but the lineage budget was full.
    Evicted,
    /// The task that made it (boxed: most objects carry none).
    Kept(Box<Kept>),
}

/// A task kept to rebuild its result: its spec, with its argument slots.
struct Kept {
    spec: TaskSpec,
    pins: Vec<Arc<Slot>>,
    bytes: u64,
    rebuilds_left: i64,
}

#[derive(Clone, Copy)]
enum Held {
    Nothing,
    Inline(u64),
    Stored(u64),
}

struct Inner {
    state: State,
    held: Held,
    waiters: Vec<(u64, Waker)>,
    next_token: u64,
    dependents: Vec<Arc<PendingTask>>,
    children: Vec<Weak<Slot>>,
    lineage: Lineage,
}

/// One object: pending, ready or failed, with whoever waits for it.
pub struct Slot {
    id: ObjectId,
    status: AtomicU8,
    cancelled: std::sync::atomic::AtomicBool,
    inner: Mutex<Inner>,
    table: Arc<OwnerTable>,
}

impl Slot {
    fn new(id: ObjectId, table: Arc<OwnerTable>) -> Slot {
        Slot {
            id,
            status: AtomicU8::new(PENDING),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            inner: Mutex::new(Inner {
                state: State::Pending,
                held: Held::Nothing,
                waiters: Vec::new(),
                next_token: 0,
                dependents: Vec::new(),
                children: Vec::new(),
                lineage: Lineage::None,
            }),
            table,
        }
    }

    /// Whether the task that makes this object was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the task cancelled and fails the object with `error`; returns the
    /// tasks it submitted, to cancel too. False (and no children) if the object
    /// was already done: a finished task cannot be cancelled.
    pub fn cancel(&self, error: Error) -> Option<Vec<Arc<Slot>>> {
        if self.is_done() {
            return None;
        }
        self.cancelled.store(true, Ordering::Release);
        let children = std::mem::take(&mut self.inner.lock().children);
        self.complete(Err(error));
        Some(children.iter().filter_map(Weak::upgrade).collect())
    }

    /// Records a task submitted by the task that makes this object.
    pub fn add_child(&self, child: &Arc<Slot>) {
        let mut inner = self.inner.lock();
        if matches!(inner.state, State::Pending) {
            inner.children.retain(|c| c.strong_count() > 0);
            inner.children.push(Arc::downgrade(child));
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// Sets the outcome and wakes every waiter; a second outcome is ignored.
    pub fn complete(&self, result: Result<Value, Error>) {
        if self.status.load(Ordering::Acquire) == DONE {
            return;
        }
        let (result, held) = match result {
            Ok(v) => match self.account(&v) {
                Ok(held) => (Ok(v), held),
                Err(e) => (Err(e), Held::Nothing),
            },
            Err(e) => (Err(e), Held::Nothing),
        };
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Pending | State::Lost) {
            drop(inner);
            self.release(held);
            return;
        }
        if matches!(held, Held::Stored(_)) && self.table.faults.fires(Chance::DropObject) {
            // Injected fault: the stored value is lost as soon as it lands.
            inner.state = State::Lost;
            self.status.store(LOST, Ordering::Release);
            let someone_waits = !inner.waiters.is_empty() || !inner.dependents.is_empty();
            drop(inner);
            self.release(held);
            if someone_waits {
                self.recover();
            }
            return;
        }
        inner.state = match &result {
            Ok(v) => State::Ready(v.clone()),
            Err(e) => State::Failed(e.clone()),
        };
        inner.held = held;
        self.status.store(DONE, Ordering::Release);
        let waiters = std::mem::take(&mut inner.waiters);
        let dependents = std::mem::take(&mut inner.dependents);
        drop(inner);
        for (_, w) in waiters {
            w.wake();
        }
        for d in dependents {
            d.dependency_done(result.as_ref().err().map(|e| self.as_seen_by(e, &d.table)));
        }
    }

    fn account(&self, v: &Value) -> Result<Held, Error> {
        let size = v.size() as u64;
        if size as usize > self.table.inline_threshold {
            self.table.store.admit(size)?;
            Ok(Held::Stored(size))
        } else {
            self.table
                .shard(self.id)
                .inline_bytes
                .fetch_add(size, Ordering::Relaxed);
            Ok(Held::Inline(size))
        }
    }

    fn release(&self, held: Held) {
        match held {
            Held::Nothing => {}
            Held::Inline(n) => {
                self.table
                    .shard(self.id)
                    .inline_bytes
                    .fetch_sub(n, Ordering::Relaxed);
            }
            Held::Stored(n) => self.table.store.release(n),
        }
    }

    /// Rebuilds a lost object by running the task that made it again (its
    /// lost arguments are rebuilt the same way when that task waits for them),
    /// within the task's `max_retries`; an object that cannot be rebuilt fails
    /// with `ObjectLost` (a `put`) or `ObjectReconstructionFailed`.
    pub fn recover(&self) {
        if self.status.load(Ordering::Acquire) != LOST {
            return;
        }
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Lost) {
            return;
        }
        let rebuild = match &mut inner.lineage {
            Lineage::Kept(kept) if kept.rebuilds_left != 0 => {
                if kept.rebuilds_left > 0 {
                    kept.rebuilds_left -= 1;
                }
                Some((kept.spec.clone(), kept.pins.clone()))
            }
            _ => None,
        };
        let id = self.id.to_string();
        let error = match &inner.lineage {
            Lineage::None => Error::ObjectLost { id },
            Lineage::Evicted => Error::ObjectReconstructionFailed {
                id,
                cause: "its lineage was not kept: max_lineage_bytes was reached".into(),
            },
            Lineage::Kept(kept) => Error::ObjectReconstructionFailed {
                id,
                cause: format!(
                    "task `{}` was already run again max_retries ({}) times",
                    kept.spec.display_name(),
                    kept.spec.options.max_retries
                ),
            },
        };
        inner.state = State::Pending;
        self.status.store(PENDING, Ordering::Release);
        drop(inner);
        match rebuild {
            Some((spec, pins)) => {
                tracing::debug!(
                    "rayx: rebuilding lost {} by running {} again",
                    self.id,
                    spec.display_name()
                );
                self.table.submit_task(spec, pins);
            }
            None => self.complete(Err(error)),
        }
    }

    /// Injected fault: drops a ready value as if the node holding it died.
    /// Returns false if there was no value to lose.
    pub fn lose(&self) -> bool {
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Ready(_)) {
            return false;
        }
        inner.state = State::Lost;
        let held = std::mem::replace(&mut inner.held, Held::Nothing);
        self.status.store(LOST, Ordering::Release);
        drop(inner);
        self.release(held);
        true
    }

    /// The outcome, if there is one yet.
    pub fn try_get(&self) -> Option<Result<Value, Error>> {
        if self.status.load(Ordering::Acquire) != DONE {
            return None;
        }
        match &self.inner.lock().state {
            State::Pending | State::Lost => None,
            State::Ready(v) => Some(Ok(v.clone())),
            State::Failed(e) => Some(Err(self.as_seen_here(e))),
        }
    }

    /// An error as a reader owned by `table` sees it: this object's runtime
    /// shutting down is, to another runtime, its owner dying.
    fn as_seen_by(&self, e: &Error, table: &Arc<OwnerTable>) -> Error {
        match e {
            Error::ShutDown if !Arc::ptr_eq(&self.table, table) => Error::OwnerDied {
                id: self.id.to_string(),
            },
            e => e.clone(),
        }
    }

    /// An error as the runtime of the calling thread sees it.
    fn as_seen_here(&self, e: &Error) -> Error {
        match (e, crate::worker::current_node()) {
            (Error::ShutDown, Some(node)) => self.as_seen_by(e, &node.table),
            (e, _) => e.clone(),
        }
    }

    /// Whether the outcome is known.
    pub fn is_done(&self) -> bool {
        self.status.load(Ordering::Acquire) == DONE
    }

    /// Blocks until the outcome is known or `timeout` passes. On a worker thread
    /// the worker counts as blocked, so the router can start another.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<Value, Error> {
        if let Some(r) = self.try_get() {
            return r;
        }
        self.recover();
        let deadline = timeout.map(|t| Instant::now() + t);
        for _ in 0..SPINS {
            if self.is_done() {
                break;
            }
            std::hint::spin_loop();
        }
        if let Some(r) = self.try_get() {
            return r;
        }
        let _blocked = BlockingSection::enter();
        let waker = thread_waker();
        let token = self.register(&waker);
        let outcome = loop {
            if let Some(r) = self.try_get() {
                break r;
            }
            self.recover();
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Err(Error::GetTimeout {
                            timeout: timeout.unwrap_or_default(),
                        });
                    }
                    std::thread::park_timeout(d - now);
                }
            }
        };
        if let Some(t) = token {
            self.deregister(t);
        }
        outcome
    }

    /// Registers `waker`; `None` when the outcome is already known.
    pub fn register(&self, waker: &Waker) -> Option<u64> {
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Pending | State::Lost) {
            return None;
        }
        inner.next_token += 1;
        let token = inner.next_token;
        inner.waiters.push((token, waker.clone()));
        Some(token)
    }

    /// Removes a waker registered under `token` (a timeout or a dropped future).
    pub fn deregister(&self, token: u64) {
        self.inner.lock().waiters.retain(|(t, _)| *t != token);
    }

    /// Polls for the outcome, keeping at most one waker per `token`.
    pub fn poll(
        &self,
        cx: &mut TaskContext<'_>,
        token: &mut Option<u64>,
    ) -> Poll<Result<Value, Error>> {
        if let Some(r) = self.try_get() {
            return Poll::Ready(r);
        }
        let mut inner = self.inner.lock();
        let lost = match &inner.state {
            State::Ready(v) => return Poll::Ready(Ok(v.clone())),
            State::Failed(e) => return Poll::Ready(Err(self.as_seen_here(e))),
            State::Pending => false,
            State::Lost => true,
        };
        match token {
            Some(t) => {
                if let Some((_, w)) = inner.waiters.iter_mut().find(|(k, _)| k == t) {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                }
            }
            None => {
                inner.next_token += 1;
                let t = inner.next_token;
                inner.waiters.push((t, cx.waker().clone()));
                *token = Some(t);
            }
        }
        drop(inner);
        if lost {
            self.recover();
        }
        Poll::Pending
    }

    /// Adds a task waiting on this object; returns the outcome instead if known.
    fn add_dependent(&self, task: &Arc<PendingTask>) -> Option<Result<(), Error>> {
        let mut inner = self.inner.lock();
        match &inner.state {
            State::Pending => {
                inner.dependents.push(task.clone());
                None
            }
            State::Lost => {
                // A task needs it: rebuild it, and run the task after.
                inner.dependents.push(task.clone());
                drop(inner);
                self.recover();
                None
            }
            State::Ready(_) => Some(Ok(())),
            State::Failed(e) => Some(Err(e.clone())),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Lineage::Kept(kept) = &self.inner.get_mut().lineage {
            self.table
                .lineage_bytes
                .fetch_sub(kept.bytes, Ordering::Relaxed);
        }
        let held = self.inner.get_mut().held;
        self.release(held);
        let mut index = self.table.shard(self.id).index.lock();
        if index.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
            index.remove(&self.id);
        }
    }
}

/// Blocks on several slots until `num_ready` are done or the deadline passes;
/// returns the positions of the first `num_ready` done slots, in input order
/// (fewer if the deadline passed first). Slots past the last one counted are
/// not looked at.
pub fn wait_slots(slots: &[&Slot], num_ready: usize, timeout: Option<Duration>) -> Vec<usize> {
    let first_done = |slots: &[&Slot]| -> Vec<usize> {
        let mut done = Vec::with_capacity(num_ready);
        for (i, s) in slots.iter().enumerate() {
            if done.len() == num_ready {
                break;
            }
            if s.is_done() {
                done.push(i);
            }
        }
        done
    };
    let done = first_done(slots);
    if done.len() >= num_ready || timeout == Some(Duration::ZERO) {
        return done;
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let _blocked = BlockingSection::enter();
    let waker = thread_waker();
    let tokens: Vec<Option<u64>> = slots.iter().map(|s| s.register(&waker)).collect();
    for s in slots {
        s.recover();
    }
    let mut done = first_done(slots);
    while done.len() < num_ready {
        match deadline {
            None => std::thread::park(),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break;
                }
                std::thread::park_timeout(d - now);
            }
        }
        done = first_done(slots);
    }
    for (slot, token) in slots.iter().zip(tokens) {
        if let Some(t) = token {
            slot.deregister(t);
        }
    }
    done
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

fn thread_waker() -> Waker {
    Waker::from(Arc::new(ThreadWaker(std::thread::current())))
}

/// The owner actor: the control plane of the object table.
pub struct Owner {
    table: Arc<OwnerTable>,
    link: ChildLink,
}

impl Owner {
    pub(crate) fn new(table: Arc<OwnerTable>, supervisor: Addr<Supervisor>) -> Self {
        Owner {
            table,
            link: ChildLink::new("owner", supervisor),
        }
    }
}

impl Actor for Owner {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.link.report();
    }
}

supervised_child!(Owner);

/// Asks the owner for the node's memory usage.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "MemoryUsage")]
pub struct GetUsage;

impl Handler<GetUsage> for Owner {
    type Result = MessageResult<GetUsage>;
    fn handle(&mut self, _: GetUsage, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.table.usage())
    }
}
