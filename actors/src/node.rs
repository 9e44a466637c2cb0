//! A node: one process's engine. It owns the supervisor's system thread, the
//! object table, the run queue, the object store, the actor directory and the
//! function table, and is what the typed API in `rayx` drives.

use crate::actor_host::{ActorHost, ActorSpec, HostEnv};
use crate::directory::Directory;
use crate::error::Error;
use crate::faults::{FaultInjector, Faults};
use crate::functions::FunctionTable;
use crate::ids::ActorId;
use crate::messages::TaskSpec;
use crate::object_store::ObjectStore;
use crate::owner::{MemoryUsage, OwnerTable, Slot};
use crate::router::RunQueue;
use crate::supervisor::{
    EventBus, InjectFailure, Shutdown, Strategy, SupervisionEvent, Supervisor, CHILDREN,
};
use crate::value::Value;
use crate::worker::enter_thread;
use actix::{Actor, Addr};
use actix_rt::{Arbiter, ArbiterHandle, System};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a node is sized.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Workers kept running (Ray's CPUs); blocked workers are topped up.
    pub num_workers: usize,
    /// Worker threads at most, counting those started for blocked ones.
    pub max_workers: usize,
    /// Calls an actor's mailbox holds at most.
    pub mailbox_capacity: usize,
    /// Bytes the object store admits.
    pub object_store_memory: u64,
    /// Values up to this size are held inline by the owner (Ray: 100 KiB).
    pub inline_threshold: usize,
    /// Threads that run async actors.
    pub async_threads: usize,
    /// Faults to inject (none by default).
    pub faults: Faults,
    /// Bytes of lineage (task specs kept to rebuild lost objects) at most;
    /// Ray's default is 1 GB. Past it, new objects cannot be rebuilt.
    pub max_lineage_bytes: u64,
    /// The root supervisor's strategy and restart intensity (at most this many
    /// restarts of its children within this window, then it gives up and the
    /// node stops).
    pub supervision: (Strategy, usize, Duration),
    /// Restart intensity of the worker pool: at most this many worker restarts
    /// within this window, then the node gives up and stops.
    pub worker_restarts: (usize, Duration),
}

impl Default for NodeConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        NodeConfig {
            num_workers: cpus,
            max_workers: 1024,
            mailbox_capacity: usize::MAX,
            object_store_memory: default_store_memory(),
            inline_threshold: 100 * 1024,
            async_threads: 1,
            faults: Faults::default(),
            max_lineage_bytes: 1 << 30,
            supervision: (Strategy::RestForOne, 10, Duration::from_secs(10)),
            worker_restarts: (1000, Duration::from_secs(1)),
        }
    }
}

/// Ray's default: 30% of the machine's memory.
fn default_store_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(8 << 30);
    total / 10 * 3
}

/// One process's engine.
pub struct Node {
    pub(crate) table: Arc<OwnerTable>,
    pub(crate) run_queue: Arc<RunQueue>,
    pub(crate) store: Arc<ObjectStore>,
    pub(crate) functions: FunctionTable,
    pub(crate) events: Arc<EventBus>,
    pub(crate) faults: Arc<FaultInjector>,
    directory: Directory,
    config: NodeConfig,
    next_actor: AtomicU64,
    next_async: AtomicUsize,
    async_arbiters: Mutex<Vec<Arbiter>>,
    async_handles: Vec<ArbiterHandle>,
    system: System,
    supervisor: OnceLock<Addr<Supervisor>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    cancels_seen: AtomicBool,
}

impl Node {
    /// Starts a node on its own system thread.
    pub fn start(config: NodeConfig, functions: FunctionTable) -> Result<Arc<Node>, Error> {
        if config.num_workers == 0 {
            return Err(Error::InvalidArgument(
                "num_workers must be at least 1".into(),
            ));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rayx-supervisor".into())
            .spawn(move || {
                let system = System::new();
                let started = system.block_on(async move { Node::build(config, functions) });
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
        Ok(node)
    }

    fn build(config: NodeConfig, functions: FunctionTable) -> Result<Arc<Node>, Error> {
        let store = ObjectStore::new(config.object_store_memory);
        let run_queue = RunQueue::new(config.num_workers, config.max_workers);
        let faults = Arc::new(FaultInjector::new(config.faults));
        let table = OwnerTable::new(
            store.clone(),
            run_queue.clone(),
            config.inline_threshold,
            faults.clone(),
            config.max_lineage_bytes,
        );
        let mut arbiters = Vec::new();
        for _ in 0..config.async_threads.max(1) {
            arbiters.push(Arbiter::try_new().map_err(|e| Error::Startup(e.to_string()))?);
        }
        let node = Arc::new(Node {
            table,
            run_queue,
            store,
            functions,
            events: Arc::new(EventBus::default()),
            faults,
            directory: Directory::default(),
            next_actor: AtomicU64::new(1),
            next_async: AtomicUsize::new(0),
            async_handles: arbiters.iter().map(|a| a.handle()).collect(),
            async_arbiters: Mutex::new(arbiters),
            config,
            system: System::current(),
            supervisor: OnceLock::new(),
            thread: Mutex::new(None),
            closed: AtomicBool::new(false),
            cancels_seen: AtomicBool::new(false),
        });
        for handle in &node.async_handles {
            let n = node.clone();
            handle.spawn_fn(move || enter_thread(&n, None));
        }
        let supervisor = Supervisor::new(node.clone()).start();
        let _ = node.supervisor.set(supervisor);
        Ok(node)
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
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
        self.table.new_pending()
    }

    /// The live slot of an object.
    pub fn lookup(&self, id: crate::ids::ObjectId) -> Option<Arc<Slot>> {
        self.table.lookup(id)
    }

    /// Submits a task whose return slot is `ret`; `pins` are the slots its
    /// `Arg::Ref`s name. An unregistered function fails the return at once.
    pub fn submit_task(&self, spec: TaskSpec, ret: &Arc<Slot>, pins: Vec<Arc<Slot>>) {
        // A task submitted from a task is its child, for a recursive cancel.
        if let Some(parent) = crate::worker::current_task().and_then(|p| self.lookup(p)) {
            parent.add_child(ret);
        }
        if !self.functions.contains(&spec.function) {
            ret.complete(Err(Error::FunctionNotRegistered {
                name: spec.function.to_string(),
            }));
            return;
        }
        self.table.record_lineage(ret, &spec, &pins);
        self.table.submit_task(spec, pins);
    }

    /// Injected fault: makes a child of the root supervisor (`owner`,
    /// `object-store`, `router`) fail, so its strategy restarts it.
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

    /// Whether any task was ever cancelled here (until then, workers skip the
    /// check).
    pub(crate) fn cancels_seen(&self) -> bool {
        self.cancels_seen.load(Ordering::Acquire)
    }

    /// Cancels the task that makes `slot` (Ray's `cancel`): a queued task never
    /// runs; a running one sees `current_task_cancelled()`; with `force` its
    /// worker is abandoned and replaced; with `recursive` the tasks it submitted
    /// are cancelled too. Its object fails with `Cancelled` at once; a finished
    /// task is left as it is. Cancelled tasks are never retried.
    pub fn cancel(&self, slot: &Arc<Slot>, force: bool, recursive: bool) {
        self.cancels_seen.store(true, Ordering::Release);
        let error = Error::Cancelled {
            task: format!("task-{:x}", slot.id().0),
            forced: force,
        };
        let Some(children) = slot.cancel(error) else {
            return;
        };
        self.run_queue.cancel_running(slot.id(), force);
        if recursive {
            for child in children {
                self.cancel(&child, force, true);
            }
        }
    }

    /// Stores a value in the object table (large ones in the object store).
    pub fn put(&self, value: Value) -> Result<Arc<Slot>, Error> {
        self.check_open()?;
        self.table.put(value)
    }

    /// Starts an actor.
    pub fn spawn_actor(&self, spec: ActorSpec) -> Result<(Arc<ActorHost>, bool), Error> {
        self.check_open()?;
        let name = spec.name.clone().map(|n| (spec.namespace.clone(), n));
        let get_if_exists = spec.get_if_exists;
        let handles = &self.async_handles;
        let arbiter =
            handles[self.next_async.fetch_add(1, Ordering::Relaxed) % handles.len()].clone();
        let id = ActorId(self.next_actor.fetch_add(1, Ordering::Relaxed));
        let env = HostEnv {
            table: self.table.clone(),
            run_queue: self.run_queue.clone(),
            events: self.events.clone(),
            faults: self.faults.clone(),
        };
        self.directory.register(name, get_if_exists, || {
            ActorHost::new(id, spec, env, arbiter)
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

    /// The live actor with this id.
    pub fn actor_by_id(&self, id: ActorId) -> Option<Arc<ActorHost>> {
        self.directory.by_id(id)
    }

    /// Kills an actor; with `no_restart` false it restarts if its policy allows.
    pub fn kill_actor(&self, host: &Arc<ActorHost>, no_restart: bool) {
        if no_restart {
            host.kill("it was killed with kill()");
            self.directory.forget(host.id());
        } else {
            host.restart();
        }
    }

    /// Memory held by objects now.
    pub fn usage(&self) -> MemoryUsage {
        self.table.usage()
    }

    /// Live workers and how many are blocked in `get`.
    pub fn worker_counts(&self) -> (usize, usize) {
        self.run_queue.worker_counts()
    }

    /// Supervision events from now on.
    pub fn subscribe(&self) -> Receiver<SupervisionEvent> {
        self.events.subscribe()
    }

    /// Stops the node: pending objects fail with `ShutDown`, actors die, worker
    /// threads stop after their current job. Idempotent.
    pub fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.table.fail_all(Error::ShutDown);
        self.run_queue.close();
        self.directory.kill_all("the runtime shut down");
        for arbiter in self.async_arbiters.lock().drain(..) {
            arbiter.stop();
        }
        match self.supervisor.get() {
            Some(s) => s.do_send(Shutdown),
            None => self.system.stop(),
        }
        let on_own_thread = crate::worker::current_node().is_some_and(|n| std::ptr::eq(&*n, self));
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            if !on_own_thread && t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}
