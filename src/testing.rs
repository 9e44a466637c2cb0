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
    env: Vec<(String, String)>,
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
    health: Option<(Duration, u32)>,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    env: Vec<(String, String)>,
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
    /// Failure detection of the head and every node (see
    /// [`Builder::health_check`]); tests use a fast profile such as 100 ms × 10.
    pub fn health_check(mut self, period: Duration, misses: u32) -> Self {
        self.health = Some((period, misses));
        self
    }
    /// TLS for every connection, with this certificate and key (the nodes
    /// get them as `RAYX_TLS_CERT` and `RAYX_TLS_KEY`).
    pub fn tls(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }
    /// An amount of a custom resource every node process offers (their
    /// `RAYX_RESOURCES`); the driver offers none unless its builder says.
    pub fn node_resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        let item = format!("{}={amount}", name.into());
        match self.env.iter_mut().find(|(k, _)| k == "RAYX_RESOURCES") {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&item);
            }
            None => self.env.push(("RAYX_RESOURCES".to_string(), item)),
        }
        self
    }
    /// Sets an environment variable in every node process.
    pub fn node_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Starts the head here and the node processes, and waits until every
    /// node joined. The nodes get the head's token (`RAYX_TOKEN`).
    pub fn start(self) -> Result<Cluster> {
        let mut driver = self.driver;
        let mut env = self.env;
        if let Some((cert, key)) = &self.tls {
            driver = driver.tls(cert, key);
            env.push((
                "RAYX_TLS_CERT".to_string(),
                cert.to_string_lossy().into_owned(),
            ));
            env.push((
                "RAYX_TLS_KEY".to_string(),
                key.to_string_lossy().into_owned(),
            ));
        }
        if let Some((period, misses)) = self.health {
            driver = driver.health_check(period, misses);
            env.push((
                "RAYX_HEALTH_CHECK_PERIOD_MS".to_string(),
                period.as_millis().to_string(),
            ));
            env.push((
                "RAYX_HEALTH_CHECK_FAILURE_THRESHOLD".to_string(),
                misses.to_string(),
            ));
        }
        let driver = driver.head().start()?;
        let address = driver
            .cluster_address()
            .ok_or_else(|| Error::Startup("the head has no address".into()))?;
        match driver.cluster_token() {
            Some(t) => env.push(("RAYX_TOKEN".to_string(), t)),
            None => env.push(("RAYX_AUTH".to_string(), "none".to_string())),
        }
        let mut cluster = Cluster {
            driver,
            address,
            nodes: Vec::new(),
            node_cpus: self.node_cpus,
            args: self.args,
            env,
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
            health: None,
            tls: None,
            env: Vec::new(),
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

    /// The command that starts a node process joining `address` (the head's,
    /// or a [`Proxy`]'s in front of it), with the cluster's token and
    /// health settings; a test may change its environment before spawning it.
    pub fn node_command(&self, address: &str) -> Result<Command> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::Startup(format!("cannot find this binary: {e}")))?;
        let mut cmd = Command::new(exe);
        cmd.args(&self.args)
            .env("RAYX_ROLE", "node")
            .env("RAYX_ADDRESS", address)
            .env("RAYX_NUM_CPUS", self.node_cpus.to_string())
            .env("RAYX_EXIT_WITH_PARENT", "1")
            .env_remove("RAYX_TOKEN")
            .env_remove("RAYX_AUTH")
            .env_remove("RAYX_TLS")
            .env_remove("RAYX_TLS_CERT")
            .env_remove("RAYX_TLS_KEY")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped());
        Ok(cmd)
    }

    /// Starts one more node process and waits until it joined.
    pub fn add_node(&mut self) -> Result<NodeId> {
        let address = self.address.clone();
        self.add_node_via(&address)
    }

    /// Starts one more node process that joins through `address` (a
    /// [`Proxy`] to the head, which can partition it) and waits until it joined.
    pub fn add_node_via(&mut self, address: &str) -> Result<NodeId> {
        let command = self.node_command(address)?;
        self.add_node_from(command)
    }

    /// Starts one more node process from `command` (a [`node_command`](Self::node_command)
    /// a test changed, e.g. its `RAYX_RESOURCES`) and waits until it joined.
    pub fn add_node_from(&mut self, mut command: Command) -> Result<NodeId> {
        let before: Vec<NodeId> = self.driver.nodes().iter().map(|n| n.id).collect();
        let child = command
            .spawn()
            .map_err(|e| Error::Startup(format!("cannot start a node process: {e}")))?;
        let mut node = NodeProcess {
            id: NodeId(0),
            child,
        };
        // A node that joins, not one more in the count: a node killed a
        // moment ago may still be counted.
        let joined = self
            .driver
            .node()
            .cluster()
            .and_then(|c| c.wait_for_new_node(&before, JOIN_TIMEOUT));
        match joined {
            Some(id) => node.id = id,
            None => {
                let _ = node.child.kill();
                let _ = node.child.wait();
                return Err(Error::Startup(format!(
                    "a node process did not join within {JOIN_TIMEOUT:?}"
                )));
            }
        }
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

    /// Waits up to `timeout` for node process `i` to exit by itself; its
    /// exit status, or `None` if it still runs.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let node = self.nodes.get_mut(i)?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = node.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            // Polling a child's exit: there is no event to wait on portably.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TCP proxy on loopback in front of one address, for partition tests: it
/// forwards bytes both ways until [`silence`](Proxy::silence), then forwards
/// nothing and closes nothing — the peers see silence, not a reset, as in a
/// network partition. Connections stay open until the proxy is dropped, or
/// [`reset`](Proxy::reset) closes them as a middlebox would.
pub struct Proxy {
    address: String,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: Seen,
    /// Every connection forwarded since the last reset.
    open: std::sync::Arc<parking_lot::Mutex<Vec<Forwarded>>>,
    /// Connections it forwarded so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// How many of the next connections carry nothing either way.
    stall_new: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// How long (µs) new connections hold what comes back from the target.
    delay_back: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// A connection a proxy forwards: both ends, and whether each direction
/// (toward the target, and back) is stalled.
struct Forwarded {
    ends: [std::net::TcpStream; 2],
    stalled: [std::sync::Arc<std::sync::atomic::AtomicBool>; 2],
}

/// What a proxy forwarded, both ways (the first [`RECORDED`] bytes).
type Seen = std::sync::Arc<parking_lot::Mutex<Vec<u8>>>;

/// Bytes a proxy keeps of what it forwards, for a test to look at.
pub const RECORDED: usize = 64 << 20;

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proxy({})", self.address)
    }
}

impl Proxy {
    /// A proxy listening on a loopback port the OS picks, forwarding to `target`.
    pub fn start(target: &str) -> Result<Proxy> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::Startup(format!("proxy: {e}")))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::Startup(format!("proxy: {e}")))?
            .to_string();
        let silent = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Seen::default();
        let open: Arc<parking_lot::Mutex<Vec<Forwarded>>> = Arc::default();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stall_new = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let delay_back = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (target, s, st, sn, op, ac, new, late) = (
            target.to_string(),
            silent.clone(),
            stop.clone(),
            seen.clone(),
            open.clone(),
            accepted.clone(),
            stall_new.clone(),
            delay_back.clone(),
        );
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    return;
                }
                let Ok(inbound) = inbound else { continue };
                let Ok(outbound) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let clones = (
                    inbound.try_clone(),
                    outbound.try_clone(),
                    inbound.try_clone(),
                    outbound.try_clone(),
                );
                let (Ok(i2), Ok(o2), Ok(i3), Ok(o3)) = clones else {
                    continue;
                };
                let stalled: [Arc<AtomicBool>; 2] = Default::default();
                if new
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_ok()
                {
                    // Before its pipes start: the spawns order it for them.
                    stalled
                        .iter()
                        .for_each(|s| s.store(true, Ordering::Relaxed));
                }
                op.lock().push(Forwarded {
                    ends: [i3, o3],
                    stalled: stalled.clone(),
                });
                ac.fetch_add(1, Ordering::Release);
                let [up, down] = stalled;
                // Acquire pairs with `delay_back`'s Release.
                let back = Duration::from_micros(late.load(Ordering::Acquire));
                for (from, to, stalled, delay) in [
                    (inbound, o2, up, Duration::ZERO),
                    (outbound, i2, down, back),
                ] {
                    let (s, st, sn) = (s.clone(), st.clone(), sn.clone());
                    std::thread::spawn(move || pipe(from, to, [&s, &stalled], delay, &st, &sn));
                }
            }
        });
        Ok(Proxy {
            address,
            silent,
            stop,
            seen,
            open,
            accepted,
            stall_new,
            delay_back,
        })
    }

    /// Where to connect instead of the target.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The bytes it forwarded so far, both ways interleaved (the first
    /// [`RECORDED`]): what a wiretap on the network would see.
    pub fn seen(&self) -> Vec<u8> {
        self.seen.lock().clone()
    }

    /// How many connections it has forwarded so far.
    pub fn accepted(&self) -> usize {
        // Acquire pairs with the accept loop's Release: a connection counted
        // is one `reset` can close.
        self.accepted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Closes every connection it forwards now, both ways, as a middlebox
    /// that drops them would; new ones are forwarded as before. How many
    /// connections it closed.
    pub fn reset(&self) -> usize {
        let open = std::mem::take(&mut *self.open.lock());
        for s in open.iter().flat_map(|f| &f.ends) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        open.len()
    }

    /// Stalls one direction (`toward_target`, or back) of every connection
    /// it forwards now: what comes that way is dropped and nothing is
    /// closed, while the other direction and new connections pass — a
    /// break only one side of a connection could see.
    pub fn stall(&self, toward_target: bool) {
        for f in self.open.lock().iter() {
            // Release pairs with the pipe's Acquire load, as `silence`'s.
            f.stalled[usize::from(!toward_target)]
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The next `count` connections it accepts carry nothing either way,
    /// and are not closed: a handshake on one waits for an answer that
    /// never comes. Later ones pass.
    pub fn stall_new(&self, count: usize) {
        // Release pairs with the accept loop's Acquire.
        self.stall_new
            .store(count, std::sync::atomic::Ordering::Release);
    }

    /// Connections it accepts from now on hold what comes back from the
    /// target for `delay` before they forward it (a slow return path).
    pub fn delay_back(&self, delay: Duration) {
        // Release pairs with the accept loop's Acquire.
        self.delay_back.store(
            u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Release,
        );
    }

    /// From now on nothing passes either way, and nothing is closed.
    pub fn silence(&self) {
        // Release pairs with the pipes' Acquire loads: a pipe that sees it
        // forwards nothing read after.
        self.silent
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        // Wake the accept loop so it sees the stop.
        let _ = std::net::TcpStream::connect(&self.address);
    }
}

/// Forwards `from` to `to`, each read `delay` after it came, until either
/// closes, or `stop`; nothing while either of `silent` (the proxy's, this
/// connection's direction's) is set.
fn pipe(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    silent: [&std::sync::atomic::AtomicBool; 2],
    delay: Duration,
    stop: &std::sync::atomic::AtomicBool,
    seen: &Seen,
) {
    let silent = || {
        silent
            .iter()
            .any(|s| s.load(std::sync::atomic::Ordering::Acquire))
    };
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                if !silent() {
                    let _ = to.shutdown(std::net::Shutdown::Write);
                }
                // Silent: the close is swallowed too; hold both ends open.
                while !stop.load(Ordering::Acquire) && silent() {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Ok(n) => {
                if silent() {
                    continue;
                }
                if !delay.is_zero() {
                    // The delay itself, not a wait for an event.
                    std::thread::sleep(delay);
                }
                {
                    let mut seen = seen.lock();
                    let room = RECORDED.saturating_sub(seen.len()).min(n);
                    seen.extend_from_slice(&buf[..room]);
                }
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
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
