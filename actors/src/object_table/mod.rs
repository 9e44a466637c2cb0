//! The object table of one node (Ray's owner's reference table): every object this
//! node owns — pending, ready, failed or lost — with its waiters, the tasks waiting
//! on it, its lineage, and the task that will make it while that task is queued.
//!
//! A value is held while a counted ref to its [`Slot`] lives (a driver's
//! `ObjectRef`, a queued task's argument); when the last one goes, the value is freed. The slot
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
use crate::spin::Site;
use crate::value::Value;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::{Duration, Instant};

mod slot;
mod stripes;
mod wait;

pub use slot::{Cancelled, Slot};
use slot::{Dep, DepLineage, Kept, Lineage, Lineal, NewLineage, State, Unkept};
use stripes::{Padded, Striped};
pub use wait::{install_wait_hooks, wait_batch, wait_slots, WaitHooks};

const SHARDS: usize = 64;
/// Object numbers a thread takes from the table's counter at once.
const ID_BLOCK: u64 = 256;
/// Tables made in this process, to tell them apart (from 1: a thread's
/// block of numbers starts as no table's).
static TABLES: AtomicU64 = AtomicU64::new(1);

/// Whether any table of the process ever had an object held elsewhere
/// (borrowed, or a result held on the node that ran it): until then a `wait`
/// asks no slot for its value, and touches only the slots it must. A hint
/// that only ever turns on: a process that joined a cluster keeps asking.
static ELSEWHERE_SEEN: AtomicBool = AtomicBool::new(false);

/// Notes that objects may be held elsewhere from now on. Release pairs with
/// [`elsewhere_seen_anywhere`]'s Acquire: a wait that reads it false began
/// before any slot was marked (a slot marked later is asked for by the wait
/// that blocks on it, when it registers).
fn note_elsewhere() {
    if !ELSEWHERE_SEEN.load(Ordering::Relaxed) {
        ELSEWHERE_SEEN.store(true, Ordering::Release);
    }
}

/// Whether any table of the process ever had an object held elsewhere.
fn elsewhere_seen_anywhere() -> bool {
    ELSEWHERE_SEEN.load(Ordering::Acquire)
}

thread_local! {
    /// This thread's block of object numbers: its table's serial, the next,
    /// the end.
    static ID_BLOCKS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}
const PENDING: u8 = 0;
const DONE: u8 = 1;
/// Lost: no value, and no rebuild started yet.
const LOST: u8 = 2;
/// How often a worker blocked in `get` checks whether the pool can still make
/// progress (every worker blocked at `max_workers` with work queued).
const STARVATION_CHECK: Duration = Duration::from_millis(100);
/// How long a blocked worker waits, with every worker blocked at
/// `max_workers`, work queued and no object completing anywhere, before its
/// `get` gives up with `WorkerLimitReached`.
const STARVATION_WINDOW: Duration = Duration::from_secs(1);

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
    /// Spins until `done()` as the node's [`SpinPolicy`](crate::spin) allows
    /// a waiter at `site` to; true if done (otherwise the caller sleeps).
    fn spin_until(&self, site: Site, done: &mut dyn FnMut() -> bool) -> bool;
    /// Whether as many getters spin as the spin policy allows (a hint).
    fn getters_crowded(&self) -> bool;
}

/// One shard of the table's index, on cache lines of its own (two: the line
/// beside it is prefetched with it): neighbouring ids fall in neighbouring
/// shards, and threads making and dropping neighbouring objects must not
/// contend for one line.
#[repr(align(128))]
struct Shard {
    index: Mutex<IdMap<ObjectId, Weak<Slot>>>,
}

/// The object table of one node.
pub struct OwnerTable {
    node: NodeId,
    /// This table among the process's (for threads' blocks of numbers).
    serial: u64,
    shards: Box<[Shard]>,
    /// Written by every submission and put, so on lines of its own: the
    /// fields workers read per task (`closed`, `cancels_seen`) stay shared.
    next_seq: Padded<AtomicU64>,
    store: Arc<ObjectStore>,
    inline_threshold: usize,
    dispatch: Arc<dyn Dispatch>,
    closed: AtomicBool,
    faults: Arc<FaultInjector>,
    max_lineage_bytes: u64,
    /// Written by every submission and every drop of a kept task.
    lineage_bytes: Padded<AtomicU64>,
    /// Bytes of small values held inline, counted by whichever thread
    /// completes or frees them.
    inline_bytes: Striped,
    /// Objects completed: progress, for starvation checks.
    completed: Striped,
    cancels_seen: AtomicBool,
    /// Hears the id of each borrowed object whose last local ref went.
    borrow_hook: std::sync::OnceLock<BorrowHook>,
    /// Asks a borrowed object's owner for its value (the first time it is wanted).
    fetch_hook: std::sync::OnceLock<Box<dyn Fn(ObjectId) + Send + Sync>>,
}

/// Called when a borrowed object's last local ref goes (`None`: the cluster
/// tells its owner), or an object that a node keeps refs for goes (`Some`:
/// the cluster tells that node).
pub type BorrowHook = Box<dyn Fn(ObjectId, Option<NodeId>) + Send + Sync>;

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
            })
            .collect();
        Arc::new(OwnerTable {
            node,
            serial: TABLES.fetch_add(1, Ordering::Relaxed),
            shards,
            next_seq: Padded(AtomicU64::new(1)),
            store,
            inline_threshold,
            dispatch,
            closed: AtomicBool::new(false),
            faults,
            max_lineage_bytes,
            lineage_bytes: Padded(AtomicU64::new(0)),
            inline_bytes: Striped::default(),
            completed: Striped::default(),
            cancels_seen: AtomicBool::new(false),
            borrow_hook: std::sync::OnceLock::new(),
            fetch_hook: std::sync::OnceLock::new(),
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
    /// skip the check). Acquire pairs with `note_cancel`'s Release; a worker
    /// that reads it stale runs a task that was just cancelled, whose object
    /// the cancel has already failed, so its result is ignored.
    pub fn cancels_seen(&self) -> bool {
        self.cancels_seen.load(Ordering::Acquire)
    }

    /// Notes that cancels happen here from now on.
    pub fn note_cancel(&self) {
        self.cancels_seen.store(true, Ordering::Release);
    }

    /// Registers a pending object: a task's return, a `put`, or — with
    /// `call_of` — the reply of a call to that actor (for a cancel to reach it).
    pub fn new_pending(self: &Arc<Self>, call_of: Option<ActorId>) -> Arc<Slot> {
        let id = match call_of {
            // A call's reply: numbered in the order calls are made, which is
            // the order calls interrupted by a node's death are sent again.
            Some(_) => ObjectId {
                node: self.node,
                seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            },
            None => self.next_id(),
        };
        self.index(Slot::new(id, self.clone(), call_of))
    }

    /// A new object id: from a block of [`ID_BLOCK`] numbers this thread
    /// took from the table's counter, so threads making objects at once do
    /// not pass the counter's cache line between them on every object.
    fn next_id(&self) -> ObjectId {
        let seq = ID_BLOCKS.with(|b| {
            let (node, next, end) = b.get();
            if node == self.serial && next < end {
                b.set((node, next + 1, end));
                return next;
            }
            let start = self.next_seq.fetch_add(ID_BLOCK, Ordering::Relaxed);
            b.set((self.serial, start + 1, start + ID_BLOCK));
            start
        });
        ObjectId {
            node: self.node,
            seq,
        }
    }

    /// Puts a new slot in the index; one made after the table closed fails
    /// at once. Inlined, as `Slot::new` is: a slot passed by value to a call
    /// is copied first (360 bytes, a tenth of a `put`).
    #[inline(always)]
    fn index(&self, slot: Slot) -> Arc<Slot> {
        let slot = Arc::new(slot);
        self.shard(slot.id)
            .index
            .lock()
            .insert(slot.id, Arc::downgrade(&slot));
        // SeqCst pairs with `fail_all`'s store: either it sees this slot in the
        // index, or we see the table closed.
        if self.closed.load(Ordering::SeqCst) {
            slot.complete(Err(Error::ShutDown));
        }
        slot
    }

    /// A pending slot for another node's object `id`, borrowed here: the
    /// cluster completes it with the owner's value, and `set_borrow_hook`'s
    /// hook hears when its last local ref goes.
    pub fn new_borrowed(self: &Arc<Self>, id: ObjectId) -> Arc<Slot> {
        note_elsewhere();
        let mut slot = Slot::new(id, self.clone(), None);
        slot.borrowed = true;
        slot.unfetched = crate::handshake::Elsewhere::new(true);
        self.index(slot)
    }

    /// Sets what hears of borrowed objects whose last local ref went.
    pub fn set_borrow_hook(&self, hook: BorrowHook) {
        let _ = self.borrow_hook.set(hook);
    }

    /// Sets what asks a borrowed object's owner for its value.
    pub fn set_fetch_hook(&self, hook: Box<dyn Fn(ObjectId) + Send + Sync>) {
        let _ = self.fetch_hook.set(hook);
    }

    /// Stores a value put by the caller. Fails when the object store is full.
    pub fn put(self: &Arc<Self>, value: Value) -> Result<Arc<Slot>, Error> {
        let size = value.size();
        if size <= self.inline_threshold && !self.closed.load(Ordering::SeqCst) {
            // A small value: its slot is made ready before anyone can see
            // it — no pending state, no lock, no waiters to look for. (Made
            // as the table closes, it stays ready: `fail_all` fails pending
            // objects only.)
            self.completed.add(1);
            let slot = Slot::filled(self.next_id(), self.clone(), value, size as u64);
            return Ok(self.index(slot));
        }
        let slot = self.new_pending(None);
        slot.complete(Ok(value));
        match slot.try_get() {
            Some(Err(e)) => Err(e),
            _ => Ok(slot),
        }
    }

    /// Stores a value whose room in the object store (`admitted` bytes, its
    /// measured size) the caller admitted before making it, so that nothing
    /// else can take that room in between. A value that is not stored after
    /// all (small enough to be held inline, or of another size) gives the
    /// room back and is put as any other.
    pub fn put_admitted(self: &Arc<Self>, value: Value, admitted: u64) -> Result<Arc<Slot>, Error> {
        let size = value.size();
        if size <= self.inline_threshold || size as u64 != admitted {
            self.store.release(admitted);
            return self.put(value);
        }
        let slot = self.new_pending(None);
        slot.complete_admitted(value, admitted);
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

    /// How many objects have completed here: moves while anything progresses.
    fn progress(&self) -> u64 {
        self.completed.sum()
    }

    /// The memory the node's objects hold now.
    pub fn usage(&self) -> MemoryUsage {
        let mut u = MemoryUsage::default();
        for shard in self.shards.iter() {
            u.objects += shard.index.lock().len() as u64;
        }
        u.inline_bytes = self.inline_bytes.sum();
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
    fn lineage_of(&self, spec: &TaskSpec, deps: &[Arc<Slot>]) -> NewLineage {
        if spec.options.max_retries.is_none() {
            return Err(Unkept::NoRetries);
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
            return Err(Unkept::LargeArguments);
        }
        let bytes = 64 + inline + 32 * deps.len() as u64;
        // One add, taken back if it went past the budget: no compare-exchange
        // loop for submitters to contend on.
        if self.lineage_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > self.max_lineage_bytes {
            self.lineage_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return Err(Unkept::OverBudget);
        }
        let deps = deps
            .iter()
            .map(|d| Dep {
                id: d.id(),
                slot: Arc::downgrade(d),
                // An argument owned by another runtime is not rebuilt here.
                lineage: if d.id().node != self.node {
                    DepLineage::Lost
                } else {
                    let mut inner = d.inner.lock();
                    match inner.share_lineage() {
                        Some(k) => DepLineage::Kept(k.clone()),
                        None => match inner.lineage {
                            Lineage::Unkept(why) => DepLineage::Unkept(why),
                            _ => DepLineage::Lost,
                        },
                    }
                },
            })
            .collect();
        Ok(Lineal { deps, bytes })
    }

    /// The slot of a kept task's argument, to run that task again: the live
    /// one, or — if it was freed — a lost one again under its id, with its
    /// lineage, that rebuilds itself when the task waits for it.
    fn revive(self: &Arc<Self>, dep: &Dep) -> Arc<Slot> {
        if let Some(slot) = dep.slot.upgrade() {
            return slot;
        }
        let slot = Arc::new(Slot::new(dep.id, self.clone(), None));
        if dep.id.node != self.node {
            // Another runtime's object, gone: it cannot be rebuilt here.
            slot.complete(Err(Error::ObjectLost {
                id: dep.id.to_string(),
            }));
            return slot;
        }
        let mut index = self.shard(dep.id).index.lock();
        if let Some(live) = index.get(&dep.id).and_then(Weak::upgrade) {
            return live;
        }
        {
            let mut inner = slot.inner.lock();
            inner.state = State::Lost;
            // Freed, not failed: rebuilding it does not use up its retries.
            inner.freed = true;
            inner.lineage = match &dep.lineage {
                DepLineage::Kept(k) => Lineage::Kept(k.clone()),
                DepLineage::Unkept(why) => Lineage::Unkept(*why),
                DepLineage::Lost => Lineage::None,
            };
        }
        slot.status.store(LOST, Ordering::Release);
        index.insert(dep.id, Arc::downgrade(&slot));
        slot
    }

    /// Lets go of a kept task's lineage; when this was its last holder, its
    /// bytes go back to the budget and its arguments' lineage is let go the
    /// same way — iteratively: a chain of a million tasks frees without deep
    /// recursion.
    fn release_lineage(&self, kept: Arc<Kept>) {
        if let Ok(mut kept) = Arc::try_unwrap(kept) {
            self.release_own(&mut kept.deps, kept.bytes);
        }
    }

    /// Lets go of a kept task nothing else holds (its `bytes` and `deps`),
    /// as `release_lineage` does.
    fn release_own(&self, deps: &mut Vec<Dep>, bytes: u64) {
        let budget = &self.lineage_bytes;
        budget.fetch_sub(bytes, Ordering::Relaxed);
        slot::release_deps(deps, |bytes| {
            budget.fetch_sub(bytes, Ordering::Relaxed);
        });
    }

    /// Submits the task that makes `ret`: dispatched at once if its arguments are
    /// ready, else when the last one is. `pins` hold its `Arg::Ref` arguments
    /// until it has run. A new task's lineage is kept with `ret` (always, as Ray
    /// does, while `ret` lives): for a task that may run again (`max_retries`
    /// not 0) whose inline arguments are small, within `max_lineage_bytes`; a
    /// rebuild (`new` false) has its lineage already.
    pub fn submit_task(
        self: &Arc<Self>,
        ret: Arc<Slot>,
        spec: TaskSpec,
        pins: Vec<Arc<Slot>>,
        new: bool,
    ) {
        if self.closed.load(Ordering::SeqCst) {
            ret.complete(Err(Error::ShutDown));
            return;
        }
        let lineage = new.then(|| self.lineage_of(&spec, &pins));
        let job = TaskJob {
            spec,
            pins,
            failures: Vec::new(),
        };
        if job.pins.is_empty() {
            if ret.set_job(job, lineage) {
                self.dispatch.dispatch(ret);
            }
            return;
        }
        if let Some(lineage) = lineage {
            ret.keep_lineage(lineage, &job.spec);
        }
        let deps: Vec<Arc<Slot>> = job.pins.clone();
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
        if ret.set_job(job, None) {
            self.dispatch.dispatch(ret);
        }
    }
}

/// A task with its argument objects pinned.
pub struct TaskJob {
    /// The task.
    pub spec: TaskSpec,
    /// The slots of its `Arg::Ref`s, held (with their values) until it has run.
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
                    // Ready when the task was dispatched, but it may have been
                    // lost since: then it is rebuilt from its lineage first
                    // (its task run here, on this worker), or fails.
                    match pin.try_get().unwrap_or_else(|| pin.wait(None)) {
                        Ok(v) => Ok(v),
                        Err(e) => Err(Error::dependency_failed(
                            self.spec.display_name().to_string(),
                            e,
                        )),
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
            // Taken out before it is dropped: its arguments may run user code
            // as they go, which may complete another of its arguments.
            let job = self.job.lock().take();
            if let Some(job) = job {
                let err = Error::dependency_failed(job.spec.display_name().to_string(), cause);
                drop(job);
                // Not a nested call: a failure runs down a long chain of
                // dependents in a loop, not a recursion as deep as the chain.
                Slot::fail_later(&self.ret, err);
            }
            return;
        }
        // AcqRel: the last argument's completion sees every earlier one's.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            let job = self.job.lock().take();
            if let Some(job) = job {
                self.ret.table.resubmit(self.ret.clone(), job);
            }
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
