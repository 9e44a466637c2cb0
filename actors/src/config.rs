//! How a node is sized, with Ray's defaults, checked before anything starts.

use crate::error::Error;
use crate::faults::Faults;
use crate::supervision::Strategy;
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
    /// Custom resources this node offers (Ray's `resources`): tasks, actors
    /// and placement groups' bundles that need them go to a node that has them.
    pub resources: crate::messages::Resources,
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
            resources: Default::default(),
        }
    }
}

impl NodeConfig {
    /// Checks every bound; the error names the setting and the value given.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        if self.num_workers == 0 {
            return bad("num_workers must be at least 1".into());
        }
        if self.max_workers < self.num_workers {
            return bad(format!(
                "max_workers ({}) must be at least num_workers ({})",
                self.max_workers, self.num_workers
            ));
        }
        if self.mailbox_capacity == 0 {
            return bad("mailbox_capacity must be at least 1 (every call would fail)".into());
        }
        if self.async_threads == 0 {
            return bad("async_threads must be at least 1".into());
        }
        crate::groups::check_resources(&self.resources)?;
        if self.resources.contains_key(crate::groups::CPU) {
            return bad("CPUs are not a custom resource: give them with num_cpus".into());
        }
        Ok(())
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
