//! The object table of one node (Ray's owner's reference table): every object this
//! node owns — pending, ready, failed or lost — with its waiters, the tasks waiting
//! on it, its lineage, and the task that will make it while that task is queued.
//!
//! A value is held while a [`LocalRef`] to it lives (a driver's `ObjectRef`, a
//! queued task's argument); when the last one goes, the value is freed. The slot
//! itself may live on, without its value, as lineage of another object (Ray keeps
//! an argument's lineage, not its value, while a result that used it can still be
//! rebuilt); reading it then rebuilds it.
//!
//! The table is sharded: completions and look-ups from many workers never meet
//! on one lock. It reaches the run queue only through [`Dispatch`], and a worker
//! blocked in `get` only through [`WaitHooks`], so it sits below both.

use crate::error::Error;
use crate::faults::{Chance, FaultInjector};
use crate::ids::{ActorId, IdMap, NodeId, ObjectId};
use crate::messages::{Arg, TaskSpec};
use crate::object_store::ObjectStore;
use crate::value::Value;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
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
/// How often a worker blocked in `get` checks whether the pool can still make
/// progress (every worker blocked at `max_workers` with work queued).
const STARVATION_CHECK: Duration = Duration::from_millis(100);

/// Memory held by a node's objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryUsage {
    /// Live objects (pending, ready, or kept as lineage) the owner tracks.
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

/// Where a task whose arguments are ready goes to run (the run queue).
pub trait Dispatch: Send + Sync {
    /// Queues the task that makes `task` (its job is in the slot).
    fn dispatch(&self, task: Arc<Slot>);
}

/// What a worker thread does when it waits for an object, installed per thread
/// with [`install_wait_hooks`]. Other threads just park.
pub trait WaitHooks {
    /// The node whose worker this is: only its own tasks run here inline.
    fn node(&self) -> NodeId;
    /// Runs the task that makes `slot` on this thread, instead of waiting for
    /// another worker to start it: recursion needs threads in proportion to its
    /// depth, not its width.
    fn run_inline(&self, slot: Arc<Slot>, job: TaskJob);
    /// This worker starts waiting: the pool may start another.
    fn block_begin(&self);
    /// This worker stops waiting.
    fn block_end(&self);
    /// `Some(max_workers)` if no thread can run queued work any more: every
    /// worker the pool may have is blocked and work is queued.
    fn starved(&self) -> Option<usize>;
}

thread_local! {
    static HOOKS: RefCell<Option<Rc<dyn WaitHooks>>> = const { RefCell::new(None) };
}

/// Installs this thread's [`WaitHooks`] (a worker does, when it starts).
pub fn install_wait_hooks(hooks: Rc<dyn WaitHooks>) {
    HOOKS.with(|h| *h.borrow_mut() = Some(hooks));
}

fn wait_hooks() -> Option<Rc<dyn WaitHooks>> {
    HOOKS.with(|h| h.borrow().clone())
}

/// A stretch in which a worker waits for an object and does not count as
/// running, so the pool may start another (Ray releases a blocked worker's CPU).
struct Blocked<'a>(Option<&'a Rc<dyn WaitHooks>>, bool);

impl<'a> Blocked<'a> {
    fn new(hooks: Option<&'a Rc<dyn WaitHooks>>) -> Self {
        Blocked(hooks, false)
    }
    fn set(&mut self, blocked: bool) {
        if let Some(h) = self.0 {
            if blocked != self.1 {
                if blocked {
                    h.block_begin()
                } else {
                    h.block_end()
                }
            }
        }
        self.1 = blocked;
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

struct Shard {
    index: Mutex<IdMap<ObjectId, Weak<Slot>>>,
    inline_bytes: AtomicU64,
}

/// The object table of one node.
pub struct OwnerTable {
    node: NodeId,
    shards: Box<[Shard]>,
    next_seq: AtomicU64,
    store: Arc<ObjectStore>,
    inline_threshold: usize,
    dispatch: Arc<dyn Dispatch>,
    closed: AtomicBool,
    faults: Arc<FaultInjector>,
    max_lineage_bytes: u64,
    lineage_bytes: AtomicU64,
    cancels_seen: AtomicBool,
}

impl OwnerTable {
    /// An empty table of `node`'s objects.
    pub fn new(
        node: NodeId,
        store: Arc<ObjectStore>,
        dispatch: Arc<dyn Dispatch>,
        inline_threshold: usize,
        faults: Arc<FaultInjector>,
        max_lineage_bytes: u64,
    ) -> Arc<Self> {
        let shards = (0..SHARDS)
            .map(|_| Shard {
                index: Mutex::new(IdMap::default()),
                inline_bytes: AtomicU64::new(0),
            })
            .collect();
        Arc::new(OwnerTable {
            node,
            shards,
            next_seq: AtomicU64::new(1),
            store,
            inline_threshold,
            dispatch,
            closed: AtomicBool::new(false),
            faults,
            max_lineage_bytes,
            lineage_bytes: AtomicU64::new(0),
            cancels_seen: AtomicBool::new(false),
        })
    }

    /// The node whose objects these are.
    pub fn node(&self) -> NodeId {
        self.node
    }

    fn shard(&self, id: ObjectId) -> &Shard {
        &self.shards[(id.seq as usize) % SHARDS]
    }

    /// Whether the node has shut down.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether any task or call was ever cancelled here (until then, workers
    /// skip the check).
    pub fn cancels_seen(&self) -> bool {
        self.cancels_seen.load(Ordering::Acquire)
    }

    /// Notes that cancels happen here from now on.
    pub fn note_cancel(&self) {
        self.cancels_seen.store(true, Ordering::Release);
    }

    /// Registers a pending object (a task's or a call's return).
    pub fn new_pending(self: &Arc<Self>) -> Arc<Slot> {
        let id = ObjectId {
            node: self.node,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        let slot = Arc::new(Slot::new(id, self.clone()));
        self.shard(id)
            .index
            .lock()
            .insert(id, Arc::downgrade(&slot));
        // SeqCst pairs with `fail_all`'s store: either it sees this slot in the
        // index, or we see the table closed.
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

    /// The live slot of an object, if any reference to it remains.
    pub fn lookup(&self, id: ObjectId) -> Option<Arc<Slot>> {
        self.shard(id).index.lock().get(&id).and_then(Weak::upgrade)
    }

    /// Fails every pending object with `error` (at shutdown). From the moment
    /// this starts, every completion is `error` too, so no pending object ends
    /// with another outcome because its shard was reached late.
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

    /// Keeps `spec` as the lineage of `ret` (always, as Ray does, while `ret`
    /// lives): only for a task that may run again (`max_retries` not 0) whose
    /// inline arguments are small, and within `max_lineage_bytes`.
    pub fn record_lineage(&self, ret: &Slot, spec: &TaskSpec, deps: &[LocalRef]) {
        if spec.options.max_retries.is_none() {
            return;
        }
        let inline: u64 = spec
            .args
            .iter()
            .map(|a| match a {
                Arg::Value(v) => v.size() as u64,
                Arg::Ref(_) => 0,
            })
            .sum();
        if inline > self.inline_threshold as u64 {
            ret.inner.lock().lineage = Lineage::Unkept(
                "its arguments were passed by value and are too large to keep; pass them as refs",
            );
            return;
        }
        let bytes = 64 + inline + 16 * deps.len() as u64;
        let mut used = self.lineage_bytes.load(Ordering::Relaxed);
        loop {
            if used + bytes > self.max_lineage_bytes {
                ret.inner.lock().lineage =
                    Lineage::Unkept("its lineage was not kept: max_lineage_bytes was reached");
                return;
            }
            match self.lineage_bytes.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        ret.inner.lock().lineage = Lineage::Kept(Box::new(Kept {
            spec: spec.clone(),
            deps: deps.iter().map(|d| d.slot().clone()).collect(),
            bytes,
            rebuilds: 0,
        }));
    }

    /// Submits the task that makes `ret`: dispatched at once if its arguments are
    /// ready, else when the last one is. `pins` hold its `Arg::Ref` arguments
    /// until it has run.
    pub fn submit_task(self: &Arc<Self>, ret: Arc<Slot>, spec: TaskSpec, pins: Vec<LocalRef>) {
        if self.closed.load(Ordering::SeqCst) {
            ret.complete(Err(Error::ShutDown));
            return;
        }
        let job = TaskJob {
            spec,
            pins,
            failures: Vec::new(),
        };
        if job.pins.is_empty() {
            if ret.set_job(job) {
                self.dispatch.dispatch(ret);
            }
            return;
        }
        let deps: Vec<Arc<Slot>> = job.pins.iter().map(|p| p.slot().clone()).collect();
        let waiting = Arc::new(PendingTask {
            remaining: AtomicUsize::new(deps.len() + 1),
            job: Mutex::new(Some(job)),
            ret,
        });
        for dep in &deps {
            if let Some(done) = dep.add_dependent(&waiting) {
                waiting.dependency_done(done.err());
            }
        }
        waiting.dependency_done(None);
    }

    /// Runs a task again (a retry): its job goes back into its slot and queue.
    pub fn resubmit(&self, ret: Arc<Slot>, job: TaskJob) {
        if ret.set_job(job) {
            self.dispatch.dispatch(ret);
        }
    }
}

/// A reference that holds an object's value (Ray's local reference): a
/// driver's `ObjectRef`, a queued task's argument. When the last one goes the
/// value is freed, even while the slot lives on as another object's lineage.
pub struct LocalRef(Arc<Slot>);

impl LocalRef {
    /// A new holder of `slot`'s value.
    pub fn new(slot: Arc<Slot>) -> LocalRef {
        // Relaxed, as Arc's own increment: a new holder is made from one that
        // exists (or from a fresh slot), so the count cannot be racing to zero.
        slot.local_refs.fetch_add(1, Ordering::Relaxed);
        LocalRef(slot)
    }

    /// The slot.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.0
    }
}

impl Clone for LocalRef {
    fn clone(&self) -> Self {
        LocalRef::new(self.0.clone())
    }
}

impl std::ops::Deref for LocalRef {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.0
    }
}

impl Drop for LocalRef {
    fn drop(&mut self) {
        // AcqRel, as Arc's decrement: the last holder sees every other holder's
        // use. When nobody else holds the slot, dropping it frees everything.
        if self.0.local_refs.fetch_sub(1, Ordering::AcqRel) == 1 && Arc::strong_count(&self.0) > 1 {
            self.0.out_of_scope();
        }
    }
}

/// A task with its argument objects pinned.
pub struct TaskJob {
    /// The task.
    pub spec: TaskSpec,
    /// Holders of its `Arg::Ref`s' values, until it has run.
    pub pins: Vec<LocalRef>,
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
    ret: Arc<Slot>,
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
                drop(job);
                self.ret.complete(Err(err));
            }
            return;
        }
        // AcqRel: the last argument's completion sees every earlier one's.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(job) = self.job.lock().take() {
                self.ret.table.resubmit(self.ret.clone(), job);
            }
        }
    }
}

enum State {
    Pending,
    Ready(Value),
    Failed(Error),
    /// The value was lost (or freed while the slot lives as lineage); the next
    /// reader rebuilds it from its lineage, or fails.
    Lost,
}

/// How an object can be rebuilt.
enum Lineage {
    /// A `put` object or a call's reply: it cannot be rebuilt.
    None,
    /// A task's result whose lineage was not kept, and why.
    Unkept(&'static str),
    /// The task that made it (boxed: most objects carry none).
    Kept(Box<Kept>),
}

/// A task kept to rebuild its result: its spec, with its arguments' slots
/// (their lineage, not their values).
struct Kept {
    spec: TaskSpec,
    deps: Vec<Arc<Slot>>,
    bytes: u64,
    rebuilds: u64,
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
    /// The task that makes this object, while it is queued and not started.
    job: Option<TaskJob>,
    /// The actor whose call makes this object, for a cancel to reach it.
    actor: Option<ActorId>,
}

/// What a cancel found: the tasks to cancel too, and the actor running the call.
pub struct Cancelled {
    /// Tasks the cancelled task submitted.
    pub children: Vec<Arc<Slot>>,
    /// The actor, if the object is an actor call's reply.
    pub actor: Option<ActorId>,
}

/// One object: pending, ready, failed or lost, with whoever waits for it.
pub struct Slot {
    id: ObjectId,
    status: AtomicU8,
    cancelled: AtomicBool,
    local_refs: AtomicUsize,
    inner: Mutex<Inner>,
    table: Arc<OwnerTable>,
}

impl Slot {
    fn new(id: ObjectId, table: Arc<OwnerTable>) -> Slot {
        Slot {
            id,
            status: AtomicU8::new(PENDING),
            cancelled: AtomicBool::new(false),
            local_refs: AtomicUsize::new(0),
            inner: Mutex::new(Inner {
                state: State::Pending,
                held: Held::Nothing,
                waiters: Vec::new(),
                next_token: 0,
                dependents: Vec::new(),
                children: Vec::new(),
                lineage: Lineage::None,
                job: None,
                actor: None,
            }),
            table,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The table that owns it.
    pub fn table(&self) -> &Arc<OwnerTable> {
        &self.table
    }

    /// Whether the task or call that makes this object was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the task cancelled and fails the object with `error`; a queued task
    /// is dropped with its arguments. `None` if the object was already done: a
    /// finished task cannot be cancelled.
    pub fn cancel(&self, error: Error) -> Option<Cancelled> {
        if self.is_done() {
            return None;
        }
        self.table.note_cancel();
        // Release pairs with the Acquire in `is_cancelled`: whoever sees the flag
        // sees the cancel as done from here on.
        self.cancelled.store(true, Ordering::Release);
        let (children, actor, job) = {
            let mut inner = self.inner.lock();
            (
                std::mem::take(&mut inner.children),
                inner.actor,
                inner.job.take(),
            )
        };
        drop(job);
        self.complete(Err(error));
        Some(Cancelled {
            children: children.iter().filter_map(Weak::upgrade).collect(),
            actor,
        })
    }

    /// Records a task submitted by the task that makes this object.
    pub fn add_child(&self, child: &Arc<Slot>) {
        let mut inner = self.inner.lock();
        if matches!(inner.state, State::Pending) {
            inner.children.retain(|c| c.strong_count() > 0);
            inner.children.push(Arc::downgrade(child));
        }
    }

    /// Records that an actor call makes this object.
    pub fn set_actor(&self, actor: ActorId) {
        self.inner.lock().actor = Some(actor);
    }

    /// Puts the task that makes this object in it, ready to run; false (and
    /// the job dropped) if the object is already done, e.g. cancelled.
    fn set_job(&self, job: TaskJob) -> bool {
        let mut inner = self.inner.lock();
        if matches!(inner.state, State::Ready(_) | State::Failed(_)) {
            drop(inner);
            drop(job);
            return false;
        }
        inner.job = Some(job);
        true
    }

    /// Takes the queued task that makes this object, to run it. `None` if it
    /// was taken already (by a worker, or by a getter running it inline).
    pub fn take_job(&self) -> Option<TaskJob> {
        self.inner.lock().job.take()
    }

    /// Sets the outcome and wakes every waiter; a second outcome is ignored.
    /// Once the node is shutting down every outcome is `ShutDown`.
    pub fn complete(&self, result: Result<Value, Error>) {
        if self.status.load(Ordering::Acquire) == DONE {
            return;
        }
        let result = if self.table.is_closed() {
            Err(Error::ShutDown)
        } else {
            result
        };
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
        let job = inner.job.take();
        // Release pairs with the Acquire loads of `status`: a reader that sees
        // DONE finds the state above under the lock.
        self.status.store(DONE, Ordering::Release);
        let waiters = std::mem::take(&mut inner.waiters);
        let dependents = std::mem::take(&mut inner.dependents);
        drop(inner);
        drop(job);
        for (_, w) in waiters {
            w.wake();
        }
        for d in dependents {
            d.dependency_done(
                result
                    .as_ref()
                    .err()
                    .map(|e| self.as_seen_by(e, &d.ret.table)),
            );
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

    /// The last holder of the value went while the slot lives on as another
    /// object's lineage: free the value (Ray frees an object out of scope; one
    /// with lineage is rebuilt if it is needed again, a `put` cannot be).
    fn out_of_scope(&self) {
        let mut inner = self.inner.lock();
        if self.local_refs.load(Ordering::Acquire) != 0 || !matches!(inner.state, State::Ready(_)) {
            return;
        }
        inner.state = State::Lost;
        let held = std::mem::replace(&mut inner.held, Held::Nothing);
        self.status.store(LOST, Ordering::Release);
        drop(inner);
        self.release(held);
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
        let id = self.id.to_string();
        let rebuild = match &mut inner.lineage {
            Lineage::Kept(kept) if kept.spec.options.max_retries.allows(kept.rebuilds + 1) => {
                kept.rebuilds += 1;
                Ok((kept.spec.clone(), kept.deps.clone()))
            }
            Lineage::Kept(kept) => Err(Error::ObjectReconstructionFailed {
                id,
                cause: format!(
                    "task `{}` was already run again max_retries ({}) times",
                    kept.spec.display_name(),
                    kept.spec.options.max_retries
                ),
            }),
            Lineage::None => Err(Error::ObjectLost { id }),
            Lineage::Unkept(why) => Err(Error::ObjectReconstructionFailed {
                id,
                cause: why.to_string(),
            }),
        };
        inner.state = State::Pending;
        self.status.store(PENDING, Ordering::Release);
        drop(inner);
        match rebuild {
            Ok((spec, deps)) => {
                let Some(me) = self.table.lookup(self.id) else {
                    return;
                };
                tracing::debug!(
                    "rayx: rebuilding lost {} by running {} again",
                    self.id,
                    spec.display_name()
                );
                let pins = deps.into_iter().map(LocalRef::new).collect();
                self.table.submit_task(me, spec, pins);
            }
            Err(error) => self.complete(Err(error)),
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
        match (e, current_table()) {
            (Error::ShutDown, Some(table)) => self.as_seen_by(e, &table),
            (e, _) => e.clone(),
        }
    }

    /// Whether the outcome is known.
    pub fn is_done(&self) -> bool {
        self.status.load(Ordering::Acquire) == DONE
    }

    /// On a worker: runs the task that makes this object here if nobody has
    /// started it. True if it did.
    fn run_here(self: &Arc<Self>, hooks: Option<&Rc<dyn WaitHooks>>) -> bool {
        let Some(hooks) = hooks.filter(|h| h.node() == self.table.node) else {
            return false;
        };
        match self.take_job() {
            Some(job) => {
                hooks.run_inline(self.clone(), job);
                true
            }
            None => false,
        }
    }

    /// Blocks until the outcome is known or `timeout` passes (a timeout too
    /// long to add to now is none). On a worker thread, a task nobody has
    /// started is run right here; otherwise the worker counts as blocked, so
    /// the pool can start another.
    pub fn wait(self: &Arc<Self>, timeout: Option<Duration>) -> Result<Value, Error> {
        if let Some(r) = self.try_get() {
            return r;
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let hooks = wait_hooks();
        self.recover();
        if self.run_here(hooks.as_ref()) {
            if let Some(r) = self.try_get() {
                return r;
            }
        }
        for _ in 0..SPINS {
            if self.is_done() {
                break;
            }
            std::hint::spin_loop();
        }
        if let Some(r) = self.try_get() {
            return r;
        }
        let mut blocked = Blocked::new(hooks.as_ref());
        blocked.set(true);
        let waker = thread_waker();
        let token = self.register(&waker);
        let mut starved_checks = 0;
        let outcome = loop {
            if let Some(r) = self.try_get() {
                break r;
            }
            self.recover();
            if hooks.is_some() && self.inner.lock().job.is_some() {
                // Queued again (a retry, a rebuild): run it here.
                blocked.set(false);
                self.run_here(hooks.as_ref());
                blocked.set(true);
                continue;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break Err(Error::GetTimeout {
                    timeout: timeout.unwrap_or_default(),
                });
            }
            match (&hooks, deadline) {
                (Some(h), _) => {
                    match h.starved() {
                        Some(max_workers) => {
                            starved_checks += 1;
                            if starved_checks >= 3 {
                                break Err(Error::WorkerLimitReached { max_workers });
                            }
                        }
                        None => starved_checks = 0,
                    }
                    let nap =
                        deadline.map_or(STARVATION_CHECK, |d| (d - now).min(STARVATION_CHECK));
                    std::thread::park_timeout(nap);
                }
                (None, Some(d)) => std::thread::park_timeout(d - now),
                (None, None) => std::thread::park(),
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
            State::Failed(e) => Some(Err(self.as_seen_by(e, &task.ret.table))),
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

thread_local! {
    static CURRENT_TABLE: RefCell<Weak<OwnerTable>> = const { RefCell::new(Weak::new()) };
}

/// Marks this thread as one of the node owning `table` (its workers and actor
/// threads), so errors read here are seen as that node sees them.
pub fn set_current_table(table: &Arc<OwnerTable>) {
    CURRENT_TABLE.with(|t| *t.borrow_mut() = Arc::downgrade(table));
}

/// The table of the node whose thread this is, if any.
pub fn current_table() -> Option<Arc<OwnerTable>> {
    CURRENT_TABLE.with(|t| t.borrow().upgrade())
}

/// Blocks on several slots until `num_ready` are done or the deadline passes;
/// returns the positions of the first `num_ready` done slots, in input order
/// (fewer if the deadline passed first). Slots past the last one counted are
/// not looked at. On a worker, tasks nobody has started are run here first.
pub fn wait_slots(slots: &[&Arc<Slot>], num_ready: usize, timeout: Option<Duration>) -> Vec<usize> {
    let first_done = |slots: &[&Arc<Slot>]| -> Vec<usize> {
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
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let hooks = wait_hooks();
    for s in slots {
        if first_done(slots).len() >= num_ready {
            break;
        }
        s.run_here(hooks.as_ref());
    }
    let mut blocked = Blocked::new(hooks.as_ref());
    blocked.set(true);
    let waker = thread_waker();
    let tokens: Vec<Option<u64>> = slots.iter().map(|s| s.register(&waker)).collect();
    for s in slots {
        s.recover();
    }
    let mut done = first_done(slots);
    while done.len() < num_ready {
        let now = Instant::now();
        match deadline {
            Some(d) if now >= d => break,
            Some(d) => std::thread::park_timeout(d - now),
            None => std::thread::park(),
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
