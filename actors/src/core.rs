//! What the system actors and actor hosts of one node share: its tables and
//! settings, handed to each when it starts (a system actor reaches another only
//! through messages or these tables).

use crate::config::NodeConfig;
use crate::events::EventBus;
use crate::faults::FaultInjector;
use crate::functions::FunctionTable;
use crate::ids::NodeId;
use crate::object_store::ObjectStore;
use crate::object_table::{set_current_table, OwnerTable};
use crate::pages::Pool;
use crate::run_queue::RunQueue;
use std::sync::{Arc, OnceLock};

type Hook = Box<dyn Fn() + Send + Sync>;
type ActorHook = Box<dyn Fn(crate::ids::ActorId) + Send + Sync>;

/// The tables and settings of one node.
pub struct Core {
    /// The node's id.
    pub node: NodeId,
    /// Its settings.
    pub config: NodeConfig,
    /// Its objects.
    pub table: Arc<OwnerTable>,
    /// Jobs for its workers, and the pool's counts.
    pub run_queue: Arc<RunQueue>,
    /// The budget for large objects.
    pub store: Arc<ObjectStore>,
    /// Warm memory for large byte buffers the node fills itself (pulled
    /// objects landing, copied puts), kept a while after they are freed, as
    /// Ray's object store keeps its memory: up to a quarter of the store.
    pub pool: Arc<Pool>,
    /// Remote functions by name.
    pub functions: FunctionTable,
    /// Supervision events.
    pub events: Arc<EventBus>,
    /// Faults to inject.
    pub faults: Arc<FaultInjector>,
    /// The placement groups this node knows.
    pub groups: crate::groups::Groups,
    thread_init: OnceLock<Hook>,
    stop: OnceLock<Hook>,
    actor_died: OnceLock<ActorHook>,
    actor_collected: OnceLock<ActorHook>,
}

impl Core {
    /// Builds the tables of a node.
    pub fn new(node: NodeId, config: NodeConfig, functions: FunctionTable) -> Arc<Core> {
        let events = Arc::new(EventBus::default());
        let store = ObjectStore::new(config.object_store_memory);
        let pool = Pool::for_store(config.object_store_memory);
        let run_queue = RunQueue::new(config.num_workers, config.max_workers, events.clone());
        let faults = Arc::new(FaultInjector::new(config.faults));
        let table = OwnerTable::new(
            node,
            store.clone(),
            run_queue.clone(),
            config.inline_threshold,
            faults.clone(),
            config.max_lineage_bytes,
        );
        Arc::new(Core {
            node,
            config,
            table,
            run_queue,
            store,
            pool,
            functions,
            events,
            faults,
            groups: Default::default(),
            thread_init: OnceLock::new(),
            stop: OnceLock::new(),
            actor_died: OnceLock::new(),
            actor_collected: OnceLock::new(),
        })
    }

    /// Sets what each of the node's threads runs first (the node marks the
    /// thread as its own) and how the node stops when its root gives up.
    pub fn set_hooks(&self, thread_init: Hook, stop: Hook) {
        let _ = self.thread_init.set(thread_init);
        let _ = self.stop.set(stop);
    }

    /// Sets what the node does when one of its actors dies for good (its
    /// directory forgets it, so a detached one is freed).
    pub fn set_actor_hook(&self, died: ActorHook) {
        let _ = self.actor_died.set(died);
    }

    /// Sets what the node does when an actor is collected (its last handle
    /// went): the cluster's head forgets it.
    pub fn set_collected_hook(&self, collected: ActorHook) {
        let _ = self.actor_collected.set(collected);
    }

    /// An actor was collected.
    pub fn actor_collected(&self, id: crate::ids::ActorId) {
        if let Some(collected) = self.actor_collected.get() {
            collected(id);
        }
    }

    /// An actor died for good.
    pub fn actor_died(&self, id: crate::ids::ActorId) {
        if let Some(died) = self.actor_died.get() {
            died(id);
        }
    }

    /// Marks the calling thread as one of this node's.
    pub fn enter_thread(&self) {
        set_current_table(&self.table);
        if let Some(init) = self.thread_init.get() {
            init();
        }
    }

    /// Stops the node (its root supervisor gave up).
    pub fn stop_node(&self) {
        if let Some(stop) = self.stop.get() {
            stop();
        }
    }
}
