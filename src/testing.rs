//! A cluster for tests, users' included: a head in this process (the driver)
//! and node processes that re-run the current binary in node mode, on
//! loopback with ports the OS picks.
//!
//! The binary must start its nodes: `rayx::init()` (or any `Builder::start`)
//! serves as a node when `RAYX_ROLE=node`, so a program whose `main` starts a
//! runtime first needs nothing more; a test target does it with
//! `harness = false` and [`serve_if_node`] as the first line of its `main`.
//! Node processes die with the process that started them, even when it is
//! killed (they watch a pipe from it).

use crate::{Builder, Error, NodeId, Result, Runtime};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a node process may take to start and join.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves as a cluster node if this process was started as one
/// (`RAYX_ROLE=node`), and exits when the head stops it; otherwise returns
/// at once.
pub fn serve_if_node() {
    if std::env::var("RAYX_ROLE").is_ok_and(|r| r == "node") {
        let _ = Builder::new().start();
    }
}

/// One node process.
#[derive(Debug)]
pub struct NodeProcess {
    /// Its node id.
    pub id: NodeId,
    child: Child,
}

impl NodeProcess {
    /// Its OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A head in this process and node processes.
pub struct Cluster {
    driver: Runtime,
    address: String,
    nodes: Vec<NodeProcess>,
    node_cpus: f64,
    args: Vec<String>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("address", &self.address)
            .field("nodes", &self.nodes)
            .finish()
    }
}

/// Options of a test cluster.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    nodes: usize,
    node_cpus: f64,
    driver: Builder,
    args: Vec<String>,
}

impl ClusterBuilder {
    /// Node processes to start (default 1).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }
    /// CPUs each node process offers (default 2).
    pub fn node_cpus(mut self, cpus: f64) -> Self {
        self.node_cpus = cpus;
        self
    }
    /// How the driver (and head) starts; by default it offers no CPUs, so
    /// tasks and actors run on the node processes.
    pub fn driver(mut self, driver: Builder) -> Self {
        self.driver = driver;
        self
    }
    /// Arguments the node processes get (e.g. to pick a test's entry).
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }
    /// Starts the head here and the node processes, and waits until every
    /// node joined.
    pub fn start(self) -> Result<Cluster> {
        let driver = self.driver.head().start()?;
        let address = driver
            .cluster_address()
            .ok_or_else(|| Error::Startup("the head has no address".into()))?;
        let mut cluster = Cluster {
            driver,
            address,
            nodes: Vec::new(),
            node_cpus: self.node_cpus,
            args: self.args,
        };
        for _ in 0..self.nodes {
            cluster.add_node()?;
        }
        Ok(cluster)
    }
}

impl Cluster {
    /// Options: nodes, their CPUs, the driver's builder.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 1,
            node_cpus: 2.0,
            driver: Builder::new().num_cpus(0.0),
            args: Vec::new(),
        }
    }

    /// A head here and `nodes` node processes of 2 CPUs each.
    pub fn start(nodes: usize) -> Result<Cluster> {
        Cluster::builder().nodes(nodes).start()
    }

    /// The driver: a runtime in this process, which hosts the head.
    pub fn driver(&self) -> &Runtime {
        &self.driver
    }

    /// The head's address (`RAYX_ADDRESS` for other processes).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The node processes, in the order they started.
    pub fn nodes(&self) -> &[NodeProcess] {
        &self.nodes
    }

    /// Starts one more node process and waits until it joined.
    pub fn add_node(&mut self) -> Result<NodeId> {
        let before: Vec<NodeId> = self.driver.nodes().iter().map(|n| n.id).collect();
        let exe = std::env::current_exe()
            .map_err(|e| Error::Startup(format!("cannot find this binary: {e}")))?;
        let child = Command::new(exe)
            .args(&self.args)
            .env("RAYX_ROLE", "node")
            .env("RAYX_ADDRESS", &self.address)
            .env("RAYX_NUM_CPUS", self.node_cpus.to_string())
            .env("RAYX_EXIT_WITH_PARENT", "1")
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Startup(format!("cannot start a node process: {e}")))?;
        let mut node = NodeProcess {
            id: NodeId(0),
            child,
        };
        if !self.driver.wait_for_nodes(before.len() + 1, JOIN_TIMEOUT) {
            let _ = node.child.kill();
            let _ = node.child.wait();
            return Err(Error::Startup(format!(
                "a node process did not join within {JOIN_TIMEOUT:?}"
            )));
        }
        node.id = self
            .driver
            .nodes()
            .iter()
            .map(|n| n.id)
            .find(|id| !before.contains(id))
            .ok_or_else(|| Error::Startup("the new node is not in the cluster".into()))?;
        let id = node.id;
        self.nodes.push(node);
        Ok(id)
    }

    /// Kills node process `i` with SIGKILL and reaps it.
    pub fn kill_node(&mut self, i: usize) -> Result<NodeId> {
        let node = self
            .nodes
            .get_mut(i)
            .ok_or_else(|| Error::InvalidArgument(format!("no node process {i}")))?;
        node.child
            .kill()
            .map_err(|e| Error::InvalidArgument(format!("cannot kill node {i}: {e}")))?;
        let _ = node.child.wait();
        Ok(node.id)
    }

    /// Whether node process `i` is still running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes
            .get_mut(i)
            .is_some_and(|n| matches!(n.child.try_wait(), Ok(None)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.driver.shutdown();
        for n in &mut self.nodes {
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}
