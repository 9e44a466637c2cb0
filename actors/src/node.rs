//! A node: one runtime's engine, wired. It builds the tables ([`Core`]), starts
//! the root supervisor on its own system thread and the async actor threads, keeps
//! the actor directory, and is what the typed API in `rayx` drives.

use crate::actor_host::{ActorHost, ActorSpec, CallJob, RestartPolicy};
use crate::actor_types::ActorTypes;
use crate::cluster::wire::ActorCreate;
use crate::cluster::wire::{Answer, Ask};
use crate::cluster::{ClusterConfig, ClusterNode, Host, LetGo};
use crate::config::NodeConfig;
use crate::core::Core;
use crate::directory::{Directory, Entry};
use crate::error::Error;
use crate::events::Events;
use crate::functions::FunctionTable;
use crate::groups::{self, Free, GroupInfo, GroupState};
use crate::ids::{ActorId, GroupId, IdMap, NodeId, ObjectId};
use crate::messages::{ActorCall, TaskSpec};
use crate::object_table::{MemoryUsage, Slot};
use crate::supervisor::{InjectFailure, Shutdown, Supervisor, CHILDREN};
use crate::value::Value;
use actix::{Actor, Addr};
use actix_rt::{Arbiter, ArbiterHandle, System};
use parking_lot::{Condvar, Mutex};
use std::any::Any;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::thread::JoinHandle;

/// The runtimes of this process by id, so a ref or handle decoded in one
/// runtime finds its owner in another. Weak: it keeps no runtime alive.
static NODES: LazyLock<Mutex<HashMap<NodeId, Weak<Node>>>> = LazyLock::new(Default::default);

thread_local! {
    static CURRENT_NODE: RefCell<Weak<Node>> = const { RefCell::new(Weak::new()) };
}

/// The node whose worker (or actor thread) this is, if any.
pub fn current_node() -> Option<Arc<Node>> {
    CURRENT_NODE.with(|n| n.borrow().upgrade())
}

/// The runtime of this process with this id, if it is running.
pub fn by_id(id: NodeId) -> Option<Arc<Node>> {
    known_node(id)
}

/// Runs `f` with `node` as this thread's node (to decode refs and handles).
pub fn with_node<R>(node: &Arc<Node>, f: impl FnOnce() -> R) -> R {
    /// Puts the previous node back, also if `f` panics.
    struct Restore(Weak<Node>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = std::mem::take(&mut self.0);
            CURRENT_NODE.with(|n| *n.borrow_mut() = previous);
        }
    }
    let _restore = Restore(
        CURRENT_NODE.with(|n| std::mem::replace(&mut *n.borrow_mut(), Arc::downgrade(node))),
    );
    f()
}

impl Entry for ActorHost {
    fn id(&self) -> ActorId {
        ActorHost::id(self)
    }
    fn is_dead(&self) -> bool {
        ActorHost::is_dead(self)
    }
    fn is_detached(&self) -> bool {
        ActorHost::is_detached(self)
    }
    fn kill(self: &Arc<Self>, cause: &str) {
        ActorHost::kill(self, cause)
    }
}

/// An actor other nodes hold handles to.
struct Hosted {
    /// Holds the actor alive.
    _host: Arc<ActorHost>,
    /// Each node's holds.
    holders: HashMap<NodeId, u32>,
    /// Started again here after its node died: the nodes whose count of
    /// their holds (`HoldsMoved`) has not come yet. The actor lives while
    /// any is awaited, and what such a node sent before its count is in
    /// the count (a node sends its count and its holds in the order it
    /// takes them): not counted again.
    awaiting: HashSet<NodeId>,
    /// Started again detached: its creator holds it for good.
    pinned: bool,
}

impl Hosted {
    fn new(host: Arc<ActorHost>) -> Hosted {
        Hosted {
            _host: host,
            holders: HashMap::new(),
            awaiting: HashSet::new(),
            pinned: false,
        }
    }

    /// `by` takes a hold (`true`) or lets one go: counted unless `by`'s
    /// count is awaited, which holds it already.
    fn change(&mut self, by: NodeId, hold: bool) {
        if self.awaiting.contains(&by) {
            return;
        }
        let n = self.holders.entry(by).or_default();
        if hold {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        if *n == 0 {
            self.holders.remove(&by);
        }
    }

    /// `by`'s count of its holds after a move came.
    fn counted(&mut self, by: NodeId, holds: u32) {
        self.awaiting.remove(&by);
        if holds == 0 {
            self.holders.remove(&by);
        } else {
            self.holders.insert(by, holds);
        }
    }

    /// Nothing holds it, and no node's count is awaited.
    fn unheld(&self) -> bool {
        !self.pinned && self.awaiting.is_empty() && self.holders.is_empty()
    }
}

/// Holds per node for an actor not started here yet, and since when.
type EarlyHolds = (HashMap<NodeId, u32>, std::time::Instant);

/// How long holds for an actor not started here yet are kept for it.
const EARLY_HOLDS_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

/// One runtime's engine.
pub struct Node {
    core: Arc<Core>,
    directory: Directory<ActorHost>,
    next_actor: AtomicU64,
    next_async: AtomicUsize,
    async_arbiters: Mutex<Vec<Arbiter>>,
    async_handles: Vec<ArbiterHandle>,
    system: System,
    supervisor: OnceLock<Addr<Supervisor>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    actor_types: ActorTypes,
    cluster: OnceLock<Arc<ClusterNode>>,
    /// Actors of this node that other nodes hold handles to, with how many
    /// holds each node has: kept while any node holds one (handles here keep
    /// it alive as they always do).
    hosted: Mutex<IdMap<ActorId, Hosted>>,
    /// Holds that came for an actor not started here yet (a handle looked up
    /// by name while its creation was on its way): counted when it starts,
    /// forgotten after [`EARLY_HOLDS_KEPT`] if it never does.
    early: Mutex<IdMap<ActorId, EarlyHolds>>,
    stopped: (Mutex<bool>, Condvar),
    /// The key-value store of a runtime that is not part of a cluster (in a
    /// cluster the head keeps it): it outlives every actor of the runtime.
    local_kv: Mutex<HashMap<String, Vec<u8>>>,
    /// The placement groups of a runtime outside a cluster.
    local_groups: Mutex<LocalGroups>,
    next_group: AtomicU64,
}

/// The placement groups of a runtime outside a cluster: the node is its
/// own head.
#[derive(Default)]
struct LocalGroups {
    /// Live groups, in the order they were created.
    live: Vec<GroupInfo>,
    names: HashMap<(String, String), GroupId>,
    version: u64,
}

impl Node {
    /// Starts a node on its own system thread.
    pub fn start(config: NodeConfig, functions: FunctionTable) -> Result<Arc<Node>, Error> {
        Node::start_in_cluster(config, functions, ActorTypes::new(), None)
    }

    /// Starts a node with its actor types, as part of a cluster if
    /// `cluster` says so (joining fails with the head's address and the
    /// cause, within the handshake deadline).
    pub fn start_in_cluster(
        config: NodeConfig,
        functions: FunctionTable,
        actor_types: ActorTypes,
        cluster: Option<ClusterConfig>,
    ) -> Result<Arc<Node>, Error> {
        config.validate()?;
        let mut registry = functions.names();
        registry.extend(actor_types.names());
        registry.sort();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rayx-supervisor".into())
            .spawn(move || {
                let system = System::new();
                let started =
                    system.block_on(async move { Node::build(config, functions, actor_types) });
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    let _ = system.run();
                }
            })
            .map_err(|e| Error::Startup(e.to_string()))?;
        let node = rx
            .recv()
            .map_err(|_| Error::Startup("the supervisor thread died while starting".into()))??;
        *node.thread.lock() = Some(thread);
        if let Some(cluster) = cluster {
            // Started from a thread of its own: the caller may be inside an
            // async runtime, where the network runtime cannot block to start.
            let core = node.core.clone();
            let host: Arc<dyn Host> = node.clone();
            let host = Arc::downgrade(&host);
            let wired = node.clone();
            let ready: crate::cluster::Ready = Box::new(move |c| {
                let _ = wired.cluster.set(c.clone());
            });
            let started = std::thread::spawn(move || {
                ClusterNode::start(cluster, core, registry, host, ready)
            })
            .join()
            .map_err(|_| Error::Startup("the cluster failed to start".into()))?;
            match started {
                Ok(_) => {}
                Err(e) => {
                    node.shutdown();
                    return Err(e);
                }
            }
        }
        Ok(node)
    }

    fn build(
        config: NodeConfig,
        functions: FunctionTable,
        actor_types: ActorTypes,
    ) -> Result<Arc<Node>, Error> {
        let id = NodeId::random();
        let async_threads = config.async_threads;
        let core = Core::new(id, config, functions);
        let mut arbiters = Vec::new();
        for _ in 0..async_threads {
            arbiters.push(Arbiter::try_new().map_err(|e| Error::Startup(e.to_string()))?);
        }
        let node = Arc::new(Node {
            core: core.clone(),
            directory: Directory::default(),
            next_actor: AtomicU64::new(1),
            next_async: AtomicUsize::new(0),
            async_handles: arbiters.iter().map(|a| a.handle()).collect(),
            async_arbiters: Mutex::new(arbiters),
            system: System::current(),
            supervisor: OnceLock::new(),
            thread: Mutex::new(None),
            closed: AtomicBool::new(false),
            actor_types,
            cluster: OnceLock::new(),
            hosted: Mutex::default(),
            early: Mutex::default(),
            stopped: (Mutex::new(false), Condvar::new()),
            local_kv: Mutex::new(HashMap::new()),
            local_groups: Mutex::default(),
            next_group: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&node);
        let for_threads = weak.clone();
        core.set_hooks(
            Box::new(move || CURRENT_NODE.with(|n| *n.borrow_mut() = for_threads.clone())),
            Box::new(move || {
                if let Some(node) = weak.upgrade() {
                    node.shutdown();
                }
            }),
        );
        let for_actors = Arc::downgrade(&node);
        core.set_actor_hook(Box::new(move |id| {
            if let Some(node) = for_actors.upgrade() {
                node.directory.forget(id);
                let hosted = node.hosted.lock().remove(&id);
                drop(hosted);
                if let Some(c) = node.cluster.get() {
                    c.actor_gone(id);
                }
            }
        }));
        // The pool's wait for what it keeps runs on this node's system
        // thread, only while it keeps something.
        let pool = Arc::downgrade(&core.pool);
        let system = System::current().arbiter().clone();
        core.pool.set_timer(Box::new(move || {
            let pool = pool.clone();
            system.spawn(async move {
                let mut wait = crate::pages::POOL_IDLE;
                loop {
                    actix_rt::time::sleep(wait).await;
                    match pool.upgrade().and_then(|p| p.expire_or_disarm()) {
                        Some(next) => wait = next,
                        None => break,
                    }
                }
            });
        }));
        let for_collected = Arc::downgrade(&node);
        core.set_collected_hook(Box::new(move |id| {
            if let Some(node) = for_collected.upgrade() {
                if let Some(c) = node.cluster.get() {
                    c.actor_gone(id);
                }
            }
        }));
        for handle in &node.async_handles {
            let core = core.clone();
            handle.spawn_fn(move || core.enter_thread());
        }
        let supervisor = Supervisor::new(core).start();
        let _ = node.supervisor.set(supervisor);
        NODES.lock().insert(id, Arc::downgrade(&node));
        Ok(node)
    }

    /// The node's id (unique across runtimes and processes).
    pub fn id(&self) -> NodeId {
        self.core.node
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.core.config
    }

    /// The node's tables.
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Whether `shutdown` has run.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.is_closed() {
            Err(Error::ShutDown)
        } else {
            Ok(())
        }
    }

    /// Registers the pending return object of a task about to be submitted.
    pub fn new_pending(&self) -> Arc<Slot> {
        self.core.table.new_pending(None)
    }

    /// Registers the pending reply of a call to `actor` about to be made.
    pub fn new_pending_call(&self, actor: ActorId) -> Arc<Slot> {
        self.core.table.new_pending(Some(actor))
    }

    /// The live slot of an object owned here.
    pub fn lookup(&self, id: ObjectId) -> Option<Arc<Slot>> {
        self.core.table.lookup(id)
    }

    /// The live slot of an object owned by any runtime of this process (a ref
    /// decoded here may name another runtime's object); a typed error if its
    /// owner is not here or no longer has it.
    pub fn resolve(&self, id: ObjectId) -> Result<Arc<Slot>, Error> {
        let owner = if id.node == self.id() {
            None
        } else {
            match known_node(id.node) {
                Some(n) => Some(n),
                // Another process's object: borrowed through the cluster.
                None => match self.cluster.get() {
                    Some(c) => return c.borrow(id),
                    None => {
                        return Err(Error::OwnerUnknown {
                            id: id.to_string(),
                            owner: id.node.to_string(),
                        })
                    }
                },
            }
        };
        let node = owner.as_deref().unwrap_or(self);
        node.lookup(id).ok_or_else(|| {
            if node.is_closed() {
                Error::OwnerDied { id: id.to_string() }
            } else {
                Error::ObjectLost { id: id.to_string() }
            }
        })
    }

    /// Submits a task whose return slot is `ret`; `pins` hold the objects its
    /// `Arg::Ref`s name. An unregistered function fails the return at once.
    pub fn submit_task(&self, spec: TaskSpec, ret: &Arc<Slot>, pins: Vec<Arc<Slot>>) {
        // A task submitted from a task is its child, for a recursive cancel.
        crate::worker::add_child_of_current_task(ret);
        if !self.core.functions.contains(&spec.function) {
            ret.complete(Err(Error::FunctionNotRegistered {
                name: spec.function.to_string(),
            }));
            return;
        }
        if let Err(e) = groups::check_need(spec.options.num_cpus, &spec.options.resources) {
            ret.complete(Err(e));
            return;
        }
        let mut spec = spec;
        if let Some(owner) = crate::worker::inherited_owner() {
            // A task a peer's task submits runs for that peer too (a group
            // it makes goes with that peer's job).
            spec.options.owner.get_or_insert(owner);
        }
        let Some((spec, pins)) = self.wait_for_group(spec, ret, pins) else {
            return;
        };
        if self.cluster().is_none() {
            // This runtime is the whole cluster: work that needs what it
            // lacks, or a group it cannot use, fails here.
            if let Err(reason) = self.fits_here(&spec.options) {
                ret.complete(Err(Error::Unschedulable {
                    task: spec.display_name().to_string(),
                    reason,
                }));
                return;
            }
        }
        let table = &self.core.table;
        table.submit_task(ret.clone(), spec, pins, true);
    }

    /// Holds back a task for a placement group that is not created yet (as
    /// Ray's waits): it is submitted once the group is created, or fails with
    /// `PlacementGroupRemoved` (or `ShutDown`). The task back if it goes on
    /// now: outside a group, or the group is created (or can never take it,
    /// which the placement says).
    fn wait_for_group(
        &self,
        spec: TaskSpec,
        ret: &Arc<Slot>,
        pins: Vec<Arc<Slot>>,
    ) -> Option<(TaskSpec, Vec<Arc<Slot>>)> {
        let crate::messages::Scheduling::PlacementGroup { group, bundle } = spec.options.scheduling
        else {
            return Some((spec, pins));
        };
        let options = &spec.options;
        let waits = (self.core.groups).waits(group, bundle, options.num_cpus, &options.resources);
        // Outside a cluster this runtime's own table says what lives: a
        // stale handle decoded long after its group's removal (past what
        // the view remembers) brings back news no head will correct.
        let live_here = || {
            self.cluster().is_some() || self.local_groups.lock().live.iter().any(|g| g.id == group)
        };
        if !waits || !live_here() {
            return Some((spec, pins));
        }
        let table = self.core.table.clone();
        let name = spec.display_name().to_string();
        self.core
            .groups
            .hold(group, name, ret.clone(), move |held| {
                // Cancelled while it waited: nothing to run. Else placed as any
                // task is, now that its bundle has a node: by the cluster's
                // placement, or here (this runtime is the one node).
                if !held.is_done() {
                    table.submit_task(held, spec, pins, true);
                }
            });
        None
    }

    /// Injected fault: makes a child of the root supervisor (`router`) fail, so
    /// its strategy restarts it.
    pub fn inject_system_failure(&self, child: &str) -> Result<(), Error> {
        self.check_open()?;
        if !CHILDREN.contains(&child) {
            return Err(Error::InvalidArgument(format!(
                "no system actor named `{child}`; the root supervises {CHILDREN:?}"
            )));
        }
        match self.supervisor.get() {
            Some(s) => s.do_send(InjectFailure(child.to_string())),
            None => return Err(Error::ShutDown),
        }
        Ok(())
    }

    /// Injected fault: loses a ready object's value, as if the node holding it
    /// died. The next read rebuilds it from lineage (or fails). False if the
    /// object had no value to lose.
    pub fn lose_object(&self, slot: &Slot) -> bool {
        slot.lose()
    }

    /// Cancels the task or actor call that makes `slot` (Ray's `cancel`): a
    /// queued one never runs; a running task sees `current_task_cancelled()`;
    /// a waiting async call's future is dropped; with `force` a task's worker is
    /// abandoned and replaced; with `recursive` the tasks it submitted are
    /// cancelled too. The object fails with `Cancelled` at once; a finished one
    /// is left as it is. Cancelled tasks and calls are never retried.
    pub fn cancel(&self, slot: &Arc<Slot>, force: bool, recursive: bool) {
        if slot.id().node != self.id() {
            // Another runtime's task or call: its owner cancels it.
            if let Some(owner) = known_node(slot.id().node) {
                owner.cancel(slot, force, recursive);
            }
            return;
        }
        let error = Error::Cancelled {
            task: slot.id().to_string(),
            forced: force,
        };
        let Some(cancelled) = slot.cancel(error) else {
            return;
        };
        match cancelled.actor {
            Some(actor) => {
                if let Some(host) = self.actor_by_id(actor) {
                    host.cancel_call(slot.id());
                }
            }
            None if force => self.core.run_queue.abandon_running(slot.id()),
            None => {}
        }
        if recursive {
            for child in cancelled.children {
                self.cancel(&child, force, true);
            }
        }
    }

    /// Stores a value in the object table (large ones in the object store).
    pub fn put(&self, value: Value) -> Result<Arc<Slot>, Error> {
        self.check_open()?;
        self.core.table.put(value)
    }

    /// The warm memory kept for large byte buffers: its bytes, and how many
    /// buffers were taken from it so far.
    pub fn warm_memory(&self) -> (usize, u64) {
        self.core.pool.stats()
    }

    /// Stores a copy of `data` as a `bytes::Bytes` object. A large one is
    /// copied into the node's warm memory (a buffer an earlier one freed, if
    /// the pool kept one of its size), and its buffer goes back there when
    /// the object and every reader's share of it are gone.
    pub fn put_copy(&self, data: &[u8]) -> Result<Arc<Slot>, Error> {
        self.check_open()?;
        if data.len() < crate::pages::POOL_FROM {
            return self
                .core
                .table
                .put(Value::new(bytes::Bytes::copy_from_slice(data)));
        }
        // Room in the store first, held while the copy is made and handed
        // to the put: a copy that cannot be stored is refused before its
        // buffer is taken, and copies under way never hold more than the
        // store admits.
        let size = data.len() as u64;
        self.core.store.admit(size)?;
        // take's buffer holds data.len() bytes, each overwritten here.
        let mut buf = self.core.pool.take(data.len());
        // A large copy takes the cores no job is using (its caller's too: a
        // worker's own job counts in the load), as Ray's store copies a large
        // put with several threads: one core does not reach the memory's
        // bandwidth. With every core busy it is the caller's alone.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spare = (cores + 1).saturating_sub(self.core.run_queue.load());
        crate::pages::copy(&mut buf, data, spare);
        let bytes = crate::pages::Landed::share(buf, &self.core.pool);
        self.core.table.put_admitted(Value::new(bytes), size)
    }

    /// A fresh actor id, unique across processes (it names this node).
    pub fn new_actor_id(&self) -> ActorId {
        ActorId {
            node: self.id(),
            seq: self.next_actor.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Starts an actor.
    pub fn spawn_actor(&self, spec: ActorSpec) -> Result<(Arc<ActorHost>, bool), Error> {
        let id = self.new_actor_id();
        self.spawn_actor_as(id, spec)
    }

    /// Starts an actor under an id minted already (by its creator, maybe on
    /// another node).
    pub fn spawn_actor_as(
        &self,
        id: ActorId,
        spec: ActorSpec,
    ) -> Result<(Arc<ActorHost>, bool), Error> {
        self.check_open()?;
        let name = spec.name.clone().map(|n| (spec.namespace.clone(), n));
        let get_if_exists = spec.get_if_exists;
        let handles = &self.async_handles;
        let arbiter =
            handles[self.next_async.fetch_add(1, Ordering::Relaxed) % handles.len()].clone();
        let core = self.core.clone();
        self.directory.register(name, get_if_exists, || {
            ActorHost::new(id, spec, core, arbiter)
        })
    }

    /// The live actor named `name` in `namespace`.
    pub fn get_actor(&self, namespace: &str, name: &str) -> Result<Arc<ActorHost>, Error> {
        self.check_open()?;
        self.directory
            .by_name(namespace, name)
            .ok_or_else(|| Error::ActorNotFound {
                name: name.to_string(),
                namespace: namespace.to_string(),
            })
    }

    /// The live actor with this id, on this node.
    pub fn actor_by_id(&self, id: ActorId) -> Option<Arc<ActorHost>> {
        self.directory.by_id(id)
    }

    /// The live actor with this id on any runtime of this process, with its
    /// node; a typed error if it is not there.
    pub fn resolve_actor(&self, id: ActorId) -> Result<(Arc<Node>, Arc<ActorHost>), Error> {
        if let Some(host) = self.actor_by_id(id) {
            // Here, whoever minted its id (a peer may have created it here).
            let me = known_node(self.id()).ok_or(Error::ShutDown)?;
            return Ok((me, host));
        }
        let node = known_node(id.node).ok_or_else(|| Error::OwnerUnknown {
            id: id.to_string(),
            owner: id.node.to_string(),
        })?;
        let host = node.actor_by_id(id).ok_or_else(|| Error::ActorDied {
            actor: id.to_string(),
            cause: "it is no longer alive on its node".into(),
        })?;
        Ok((node, host))
    }

    /// Kills an actor; with `no_restart` false it restarts if its policy allows.
    pub fn kill_actor(&self, host: &Arc<ActorHost>, no_restart: bool) {
        if no_restart {
            // Its death tells the directory to forget it (see `build`).
            host.kill("it was killed with kill()");
        } else {
            host.restart();
        }
    }

    /// Memory held by objects now.
    pub fn usage(&self) -> MemoryUsage {
        self.core.table.usage()
    }

    /// Live workers and how many are blocked in `get`.
    pub fn worker_counts(&self) -> (usize, usize) {
        self.core.run_queue.worker_counts()
    }

    /// Supervision events from now on.
    pub fn subscribe(&self) -> Events {
        self.core.events.subscribe()
    }

    /// Stops the node: pending objects fail with `ShutDown`, actors die, worker
    /// threads stop after their current job. Idempotent, and callable from the
    /// node's own threads (a handler may shut its runtime down).
    pub fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        NODES.lock().remove(&self.id());
        if let Some(c) = self.cluster.get() {
            c.shutdown();
        }
        // Let go outside the lock: an actor's stop runs user code, which may
        // let go of handles (and so reach this map).
        let hosted = std::mem::take(&mut *self.hosted.lock());
        drop(hosted);
        let core = &self.core;
        core.table.fail_all(Error::ShutDown);
        // Failed above; let go here.
        drop(core.groups.close());
        core.run_queue.close();
        // Kept buffers go now; one given back later is freed, not kept.
        core.pool.close();
        self.directory.kill_all("the runtime shut down");
        for arbiter in self.async_arbiters.lock().drain(..) {
            arbiter.stop();
        }
        match self.supervisor.get() {
            Some(s) => s.do_send(Shutdown),
            None => self.system.stop(),
        }
        {
            let (lock, cvar) = &self.stopped;
            *lock.lock() = true;
            cvar.notify_all();
        }
        let on_own_thread = current_node().is_some_and(|n| std::ptr::eq(&*n, self));
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            if !on_own_thread && t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Node {
    /// The node's part of its cluster, if it is in one.
    pub fn cluster(&self) -> Option<&Arc<ClusterNode>> {
        self.cluster.get()
    }

    /// A fresh placement group id, unique across the cluster.
    pub fn new_group_id(&self) -> GroupId {
        GroupId {
            node: self.id(),
            seq: self.next_group.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Creates a placement group (`info` as asked: its id, name, strategy
    /// and bundles): placed by the head, or here outside a cluster. The
    /// group as placed (or pending: no room yet).
    pub fn create_group(&self, info: GroupInfo) -> Result<GroupInfo, Error> {
        groups::check_bundles(&info.bundles)?;
        if let Some((namespace, name)) = &info.name {
            crate::cluster::wire::check_names(namespace, name)?;
        }
        // It goes with the node whose work made it: this one, or the one
        // that submitted the task making it (Ray's: a job's groups go with it).
        let owner = crate::worker::current_task_owner().unwrap_or(self.id());
        let placed = match self.cluster() {
            Some(c) => match c.ask(Ask::CreateGroup { info, owner })? {
                Answer::Group(g) => g,
                other => return Err(unexpected(&other)),
            },
            None => self.local_create_group(info)?,
        };
        self.apply_groups(vec![placed.clone()]);
        Ok(placed)
    }

    /// Removes a placement group: its reservations are returned and its
    /// actors killed. Removing a removed group does nothing.
    pub fn remove_group(&self, id: GroupId) -> Result<(), Error> {
        let news = match self.cluster() {
            Some(c) => match c.ask(Ask::RemoveGroup { group: id })? {
                Answer::Group(g) => vec![g],
                _ => Vec::new(),
            },
            None => self.local_remove_group(id),
        };
        self.apply_groups(news);
        Ok(())
    }

    /// The live placement group named so.
    pub fn lookup_group(&self, namespace: &str, name: &str) -> Result<GroupInfo, Error> {
        crate::cluster::wire::check_names(namespace, name)?;
        let found = match self.cluster() {
            Some(c) => match c.ask(Ask::LookupGroup {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })? {
                Answer::Group(g) => Some(g),
                other => return Err(unexpected(&other)),
            },
            None => {
                let l = self.local_groups.lock();
                l.names
                    .get(&(namespace.to_string(), name.to_string()))
                    .and_then(|id| l.live.iter().find(|g| g.id == *id))
                    .cloned()
            }
        };
        let g = found.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "no placement group named `{name}` in namespace `{namespace}`"
            ))
        })?;
        self.apply_groups(vec![g.clone()]);
        Ok(g)
    }

    /// Whether work with these options may run on this node: its custom
    /// resources, or its placement group's bundle (which must be here).
    pub fn fits_here(&self, options: &crate::messages::TaskOptions) -> Result<(), String> {
        use crate::messages::Scheduling;
        if let Scheduling::PlacementGroup { group, bundle } = options.scheduling {
            let info = self
                .core
                .groups
                .get(group)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("placement group {group} is not known to this runtime"))?;
            let need = groups::need(options.num_cpus, &options.resources);
            let nodes = groups::bundle_nodes(&info, bundle, &need)?;
            if !nodes.contains(&self.id()) {
                return Err(format!(
                    "its bundle of placement group {group} is on another node, and it starts \
                     only on this one (an actor made from a closure starts where it is \
                     created: register its type with remote_actor! and create it with actor_of)"
                ));
            }
            return Ok(());
        }
        if options.resources.is_empty() {
            // Most tasks: nothing to look up (this runs on every submit).
            return Ok(());
        }
        let mut free = self.core.config.resources.clone();
        groups::take(&mut free, &self.core.groups.reserved(self.id()));
        match groups::lacking(&free, &options.resources) {
            Some(l) => Err(format!("it needs {l}")),
            None => Ok(()),
        }
    }

    /// Takes in news of placement groups: kept in the view; the actors here
    /// of a group removed are killed.
    pub fn apply_groups(&self, news: Vec<GroupInfo>) {
        for info in news {
            let (actors, _) = self.core.groups.apply(info).finish();
            for a in actors {
                Host::kill_actor(self, a, true);
            }
        }
    }

    /// Notes an actor about to start here in `group` (killed with it); an
    /// error if the group is gone.
    pub fn join_group(&self, group: GroupId, actor: ActorId) -> Result<(), Error> {
        self.core
            .groups
            .add_actor(group, actor, |a| self.actor_by_id(a).is_some())
    }

    /// An actor of `group` started: if the group was removed meanwhile, it
    /// goes at once (the removal's kill may have come before it was there).
    pub fn check_group(&self, group: GroupId, actor: ActorId) -> Result<(), Error> {
        if self.core.groups.is_removed(group) {
            Host::kill_actor(self, actor, true);
            return Err(Error::PlacementGroupRemoved {
                group: group.to_string(),
            });
        }
        Ok(())
    }

    /// What this runtime has free for bundles, outside a cluster: its
    /// resources less what its placed groups reserve.
    fn local_free(&self, l: &LocalGroups) -> Vec<Free> {
        let config = &self.core.config;
        let mut free = groups::capacity(config.num_workers as f64, &config.resources);
        for g in l.live.iter().filter(|g| g.placed()) {
            for b in &g.bundles {
                groups::take(&mut free, b);
            }
        }
        vec![Free {
            id: self.id(),
            free,
        }]
    }

    fn local_create_group(&self, mut info: GroupInfo) -> Result<GroupInfo, Error> {
        let mut l = self.local_groups.lock();
        if let Some(key) = &info.name {
            if l.names.contains_key(key) {
                return Err(Error::InvalidArgument(format!(
                    "a placement group named `{}` already exists in namespace `{}`",
                    key.1, key.0
                )));
            }
        }
        info.nodes = vec![None; info.bundles.len()];
        info.state = GroupState::Pending;
        if let Ok(nodes) = groups::place_bundles(
            info.strategy,
            &info.bundles,
            &info.nodes,
            &self.local_free(&l),
        ) {
            info.nodes = nodes.into_iter().map(Some).collect();
            info.state = GroupState::Created;
        }
        l.version += 1;
        info.version = l.version;
        if let Some(key) = &info.name {
            l.names.insert(key.clone(), info.id);
        }
        l.live.push(info.clone());
        Ok(info)
    }

    /// Removes a group here; the news: its removal, and the waiting groups
    /// its room lets in.
    fn local_remove_group(&self, id: GroupId) -> Vec<GroupInfo> {
        let mut news = Vec::new();
        let mut l = self.local_groups.lock();
        let Some(i) = l.live.iter().position(|g| g.id == id) else {
            return news;
        };
        let mut gone = l.live.remove(i);
        if let Some(key) = &gone.name {
            l.names.remove(key);
        }
        l.version += 1;
        gone.version = l.version;
        gone.state = GroupState::Removed;
        news.push(gone);
        // Its room lets in the groups waiting, in order.
        for i in 0..l.live.len() {
            if l.live[i].state != GroupState::Pending {
                continue;
            }
            let free = self.local_free(&l);
            let g = &l.live[i];
            if let Ok(nodes) = groups::place_bundles(g.strategy, &g.bundles, &g.nodes, &free) {
                l.version += 1;
                let version = l.version;
                let g = &mut l.live[i];
                g.nodes = nodes.into_iter().map(Some).collect();
                g.state = GroupState::Created;
                g.version = version;
                news.push(g.clone());
            }
        }
        news
    }

    /// The key-value store of a runtime outside a cluster.
    pub fn local_kv(&self) -> &Mutex<HashMap<String, Vec<u8>>> {
        &self.local_kv
    }

    /// The actor types this node can start for peers.
    pub fn actor_types(&self) -> &ActorTypes {
        &self.actor_types
    }

    /// Blocks until the node shuts down (a cluster node serving until told
    /// to stop).
    pub fn wait_stopped(&self) {
        let (lock, cvar) = &self.stopped;
        let mut stopped = lock.lock();
        while !*stopped {
            cvar.wait(&mut stopped);
        }
    }

    /// Keeps a local actor alive while `by` holds handles to it.
    fn hold(&self, host: Arc<ActorHost>, by: NodeId) {
        let mut hosted = self.hosted.lock();
        let entry = hosted.entry(host.id()).or_insert_with(|| Hosted::new(host));
        entry.change(by, true);
    }

    /// Changes `by`'s holds on `actor` (see [`Hosted`]); what it lets go,
    /// if nothing holds the actor any more, is the caller's to drop. A
    /// release of an actor not hosted here changes nothing.
    fn change_holds(&self, actor: ActorId, change: impl FnOnce(&mut Hosted)) -> LetGo {
        let mut hosted = self.hosted.lock();
        let h = hosted.get_mut(&actor)?;
        change(h);
        if h.unheld() {
            hosted
                .remove(&actor)
                .map(|h| Box::new(h) as Box<dyn Any + Send>)
        } else {
            None
        }
    }
}

impl Host for Node {
    fn create_actor(
        &self,
        create: ActorCreate,
        awaiting: Option<Vec<NodeId>>,
    ) -> Result<(), Error> {
        let t = self
            .actor_types
            .get(&create.type_name)
            .cloned()
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "actor type `{}` is not registered with rayx::remote_actor! on this node",
                    create.type_name
                ))
            })?;
        if let Some(g) = create.group {
            self.join_group(g, create.actor)?;
        }
        // The argument may hold refs and handles: decoded as this node.
        let me = known_node(self.id()).ok_or(Error::ShutDown)?;
        let kind = with_node(&me, || (t.make)(create.args, create.max_concurrency))?;
        let (namespace, name) = match create.name {
            Some((ns, n)) => (ns, Some(n)),
            None => ("default".to_string(), None),
        };
        let spec = ActorSpec {
            name,
            namespace,
            get_if_exists: false,
            detached: create.detached,
            mailbox_capacity: self.config().mailbox_capacity,
            type_id: t.type_id,
            type_name: t.type_name,
            kind,
            restart: RestartPolicy {
                max_restarts: create.max_restarts,
                max_task_retries: create.max_task_retries,
            },
            group: None,
        };
        let (host, _) = self.spawn_actor_as(create.actor, spec)?;
        let creator = create.actor.node;
        // Holds that came before it: counted now if it starts here first;
        // after a restart, each node's count has them.
        let early = self.early.lock().remove(&create.actor);
        let mut hosted = self.hosted.lock();
        let entry = hosted
            .entry(create.actor)
            .or_insert_with(|| Hosted::new(host));
        match awaiting {
            // Its creator's handles hold it, and those that came first.
            None => {
                entry.change(creator, true);
                for (by, n) in early.map(|(holds, _)| holds).unwrap_or_default() {
                    for _ in 0..n {
                        entry.change(by, true);
                    }
                }
            }
            // Started again: each node counts its holds here as it learns of
            // the move, its creator's handles included while they live; the
            // restart holds it until then. A detached actor's creator holds
            // it for good.
            Some(nodes) => {
                entry.awaiting.extend(nodes);
                entry.pinned |= create.detached;
            }
        }
        drop(hosted);
        match create.group {
            Some(g) => self.check_group(g, create.actor),
            None => Ok(()),
        }
    }

    fn call_actor(&self, call: ActorCall, reply: Arc<Slot>) -> Result<(), Error> {
        let host = self
            .actor_by_id(call.actor)
            .ok_or_else(|| Error::ActorDied {
                actor: call.actor.to_string(),
                cause: "it is no longer alive on its node".into(),
            })?;
        let t = self.actor_types.get(host.type_name()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "actor type `{}` is not registered with rayx::remote_actor!: it cannot be called from another node",
                host.type_name()
            ))
        })?;
        let &(dispatch, copy) = t.methods.get(&*call.method).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "`{}` is not a registered message of actor type `{}`",
                call.method,
                host.type_name()
            ))
        })?;
        host.call(CallJob {
            call,
            dispatch,
            retries: 0,
            reply,
            copy: Some(copy),
        });
        Ok(())
    }

    fn kill_actor(&self, actor: ActorId, no_restart: bool) {
        if let Some(host) = self.actor_by_id(actor) {
            Node::kill_actor(self, &host, no_restart);
        }
        if no_restart {
            let gone = self.hosted.lock().remove(&actor);
            drop(gone);
        }
    }

    fn hold_actor(&self, actor: ActorId, by: NodeId) {
        if let Some(h) = self.hosted.lock().get_mut(&actor) {
            h.change(by, true);
            return;
        }
        if let Some(host) = self.actor_by_id(actor) {
            self.hold(host, by);
            return;
        }
        // Not started here yet: kept until it is.
        let now = std::time::Instant::now();
        let mut early = self.early.lock();
        early.retain(|_, (_, since)| now.duration_since(*since) < EARLY_HOLDS_KEPT);
        *early
            .entry(actor)
            .or_insert_with(|| (HashMap::new(), now))
            .0
            .entry(by)
            .or_default() += 1;
    }

    fn holds_moved(&self, actor: ActorId, by: NodeId, holds: u32) -> LetGo {
        self.change_holds(actor, |h| h.counted(by, holds))
    }

    fn holds_settled(&self, actor: ActorId) -> (Vec<NodeId>, LetGo) {
        let mut late = Vec::new();
        let gone = self.change_holds(actor, |h| late = h.awaiting.drain().collect());
        (late, gone)
    }

    fn release_actor(&self, actor: Option<ActorId>, by: NodeId) -> LetGo {
        let mut gone = Vec::new();
        {
            let mut hosted = self.hosted.lock();
            let ids: Vec<ActorId> = match actor {
                Some(a) => vec![a],
                None => hosted.keys().copied().collect(),
            };
            for id in ids {
                let Some(h) = hosted.get_mut(&id) else {
                    // A hold kept for an actor not started yet goes again.
                    if let Some((holds, _)) = self.early.lock().get_mut(&id) {
                        if let Some(n) = holds.get_mut(&by) {
                            *n = n.saturating_sub(1);
                        }
                    }
                    continue;
                };
                if actor.is_none() {
                    h.holders.remove(&by);
                    h.awaiting.remove(&by);
                } else {
                    h.change(by, false);
                }
                if h.unheld() {
                    gone.extend(hosted.remove(&id));
                }
            }
        }
        // Dropped by the caller, outside its locks and this one: it may be
        // the actor's last handle, and a collected actor's stop runs then.
        (!gone.is_empty()).then(|| Box::new(gone) as Box<dyn Any + Send>)
    }

    fn live_actors(&self) -> u32 {
        self.directory.live_count() as u32
    }

    fn stop(&self) {
        // Not on the network thread, which the shutdown stops.
        if let Some(me) = NODES.lock().get(&self.id()).and_then(Weak::upgrade) {
            std::thread::spawn(move || me.shutdown());
        }
    }
}

fn known_node(id: NodeId) -> Option<Arc<Node>> {
    NODES.lock().get(&id).and_then(Weak::upgrade)
}

/// The error of an answer of the wrong kind from the head.
fn unexpected(answer: &Answer) -> Error {
    Error::InvalidArgument(format!(
        "the head answered {answer:?}, not a placement group"
    ))
}
