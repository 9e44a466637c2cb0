//! Starting a runtime (`init`, `Builder`) and its API in Ray's words: tasks,
//! objects and actors (the methods of [`Runtime`] that need them).

use crate::actor::{ActorBuilder, ActorHandle, SupervisorBuilder};
use crate::cluster::Construct;
use crate::object_ref::{ObjectRef, RefList};
use crate::remote::{function_table, RemoteFunction, TaskBuilder};
use crate::{Actor, Data, Error, Result, Runtime};
use rayx_actors::cluster::tls::{self, TlsFiles};
use rayx_actors::cluster::wire::{Answer, Ask};
use rayx_actors::cluster::{auth, ClusterConfig, Health, Role};
use rayx_actors::faults::Faults;
use rayx_actors::object_table::{wait_batch, wait_slots};
use rayx_actors::supervision::Strategy;
use rayx_actors::value::Value;
use rayx_actors::{Node, NodeConfig};
use std::time::Duration;

/// What [`Runtime::wait`] returns: `(ready, not_ready)`, each in input order.
pub type Waited<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Starts a runtime on this machine with one worker per core.
///
/// ```
/// let rt = rayx::init()?;
/// assert!(rt.num_workers() >= 1);
/// # Ok::<(), rayx::Error>(())
/// ```
pub fn init() -> Result<Runtime> {
    Builder::new().start()
}

/// The test-only link delay (see `ClusterConfig::link_delay`): with the
/// `testing` feature, `RAYX_TEST_LINK_DELAY_MS` if set; otherwise none.
fn test_link_delay() -> Duration {
    #[cfg(feature = "testing")]
    if let Some(ms) = std::env::var("RAYX_TEST_LINK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Duration::from_millis(ms);
    }
    Duration::ZERO
}

/// Sizes a runtime before it starts.
///
/// ```
/// let rt = rayx::Builder::new().num_workers(2).object_store_memory(1 << 30).start()?;
/// assert_eq!(rt.num_workers(), 2);
/// # Ok::<(), rayx::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    config: NodeConfig,
    head: bool,
    address: Option<String>,
    listen: Option<String>,
    cpus: Option<f64>,
    standalone: bool,
    token: Option<String>,
    no_auth: bool,
    health: Option<Health>,
    storage: Option<std::path::PathBuf>,
    tls: Option<TlsFiles>,
    dead_nodes_kept: Option<usize>,
    drain_timeout: Option<Duration>,
}

/// How long a worker node told to stop (SIGTERM or SIGINT) drains at most:
/// under the 30 s that supervisors (systemd, Kubernetes) wait before SIGKILL.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

impl Builder {
    /// Defaults: a worker per core, an object store of 30% of memory.
    pub fn new() -> Self {
        Self::default()
    }
    /// Workers kept running (Ray's `num_cpus`).
    pub fn num_workers(mut self, n: usize) -> Self {
        self.config.num_workers = n;
        self
    }
    /// Worker threads at most, counting those started while others block in `get`.
    pub fn max_workers(mut self, n: usize) -> Self {
        self.config.max_workers = n;
        self
    }
    /// Calls an actor's mailbox holds at most; more fail with `MailboxFull`.
    pub fn mailbox_capacity(mut self, n: usize) -> Self {
        self.config.mailbox_capacity = n;
        self
    }
    /// Bytes the object store admits for large objects.
    pub fn object_store_memory(mut self, bytes: u64) -> Self {
        self.config.object_store_memory = bytes;
        self
    }
    /// Values larger than this go to the object store (default 100 KiB).
    pub fn inline_threshold(mut self, bytes: usize) -> Self {
        self.config.inline_threshold = bytes;
        self
    }
    /// Threads that run async actors (default 1).
    pub fn async_threads(mut self, n: usize) -> Self {
        self.config.async_threads = n;
        self
    }
    /// Faults to inject, for tests and drills (none by default).
    pub fn faults(mut self, faults: Faults) -> Self {
        self.config.faults = faults;
        self
    }
    /// Bytes of lineage kept to rebuild lost objects (Ray's
    /// `RAY_max_lineage_bytes`, 1 GB by default). Lineage is kept for every task
    /// that may be retried, while its result is referenced.
    pub fn max_lineage_bytes(mut self, bytes: u64) -> Self {
        self.config.max_lineage_bytes = bytes;
        self
    }
    /// The root supervisor's strategy over the system actors (the router) and
    /// its restart intensity: at most `max` restarts within
    /// `within`, then it gives up and the runtime stops. Default: rest-for-one,
    /// 10 in 10 s.
    pub fn supervision(mut self, strategy: Strategy, max: usize, within: Duration) -> Self {
        self.config.supervision = (strategy, max, within);
        self
    }
    /// The worker pool's restart intensity: at most `max` worker restarts
    /// within `within` (default 1000 in 1 s); one more and the runtime stops.
    pub fn worker_restart_intensity(mut self, max: usize, within: Duration) -> Self {
        self.config.worker_restarts = (max, within);
        self
    }
    /// Starts a cluster: this runtime hosts its head (Ray's GCS) and is its
    /// first node. Other processes join with its
    /// [`cluster_address`](Runtime::cluster_address).
    pub fn head(mut self) -> Self {
        self.head = true;
        self
    }
    /// Makes this head standalone (`rayx start --head`): it runs no user
    /// code and takes the registry of the first node that joins.
    #[doc(hidden)]
    pub fn standalone_head(mut self) -> Self {
        self.head = true;
        self.standalone = true;
        self
    }
    /// Joins the cluster whose head is at `address` (`host:port`); without
    /// this, `RAYX_ADDRESS` says. Joining fails with the address and the cause
    /// if the head cannot be reached: a head refusing connections (still
    /// starting) is tried again for 10 s, a silent one is given 5 s.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }
    /// Where this node's link listens (default `127.0.0.1:0`: loopback, a
    /// port the OS picks; give `0.0.0.0:PORT` to take other machines).
    pub fn listen(mut self, address: impl Into<String>) -> Self {
        self.listen = Some(address.into());
        self
    }
    /// CPUs this node offers the cluster (default: its workers; 0 for a
    /// driver that runs no tasks itself). Without this call, `RAYX_NUM_CPUS`
    /// says, if set.
    pub fn num_cpus(mut self, cpus: f64) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// An amount of a custom resource this node offers (Ray's
    /// `--resources`), for tasks, actors and placement groups' bundles that
    /// need it. Without any such call, `RAYX_RESOURCES` says, if set
    /// (`name=amount,...`, or Ray's JSON form `{"name": amount, ...}`).
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.config.resources.insert(name.into(), amount);
        self
    }

    /// The cluster token this process proves (and, for a head, asks of
    /// every connection). Without this call: `RAYX_TOKEN`, else the token
    /// file (`RAYX_TOKEN_FILE`, else `~/.rayx/token`), which a head makes
    /// (readable by its user only) when there is none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self.no_auth = false;
        self
    }
    /// Turns authentication off (as `RAYX_AUTH=none` does): allowed only
    /// on a loopback listener, and every process of the cluster must do it.
    pub fn no_auth(mut self) -> Self {
        self.no_auth = true;
        self.token = None;
        self
    }
    /// Failure detection: heartbeats every `period`, and a node (or the
    /// head) silent for `misses` periods is dead. Default: Ray's 3 s and 5
    /// misses; without this call `RAYX_HEALTH_CHECK_PERIOD_MS` and
    /// `RAYX_HEALTH_CHECK_FAILURE_THRESHOLD` say, if set.
    pub fn health_check(mut self, period: Duration, misses: u32) -> Self {
        self.health = Some(Health { period, misses });
        self
    }

    /// How many dead nodes this process remembers — the head in its node
    /// table and `rayx status`, a node for its peers — the latest deaths;
    /// the oldest beyond it are forgotten (unknown, as if never seen), so
    /// drivers that come and go leave no growth. Default 1000 (Ray's
    /// `maximum_gcs_dead_node_cached_count`); without this call
    /// `RAYX_DEAD_NODES_KEPT` says, if set. Zero is refused.
    pub fn dead_nodes_kept(mut self, n: usize) -> Self {
        self.dead_nodes_kept = Some(n);
        self
    }

    /// For a worker node ([`serve`](Self::serve)): how long it drains at
    /// most when told to stop by SIGTERM or SIGINT (Ray's drain). It leaves
    /// in order: the cluster places no new work on it, the tasks it runs for
    /// others finish and are answered, and the owners of the results it
    /// holds pull them; then it stops, and its actors restart elsewhere
    /// without using up one of their `max_restarts` (Ray's preemption). A
    /// second signal stops it at once. Default 20 s; without this call
    /// `RAYX_DRAIN_TIMEOUT_MS` says, if set.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = Some(timeout);
        self
    }

    /// For a head: writes its tables (nodes, actors, names, the key-value
    /// store) through to a database at `path` (redb), so that a head killed
    /// and started again on the same file and address has its cluster back;
    /// the nodes rejoin. An orderly stop removes the file. Without this call
    /// `RAYX_HEAD_STORAGE` says, if set; else the head keeps them in memory.
    pub fn head_storage(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.storage = Some(path.into());
        self
    }

    /// Encrypts every connection of the cluster with TLS, under the cluster
    /// certificate `cert` and its key `key` (PEM; `rayx start --head --tls`
    /// makes them). Every process of the cluster needs the same two files.
    /// Without this call: `RAYX_TLS_CERT` and `RAYX_TLS_KEY`, or `RAYX_TLS=1`
    /// for `~/.rayx/cluster.crt` and `cluster.key` (which a head makes when
    /// they are not there).
    pub fn tls(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls = Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    fn resolve_tls(&self, head: bool) -> Result<Option<TlsFiles>> {
        if let Some(t) = &self.tls {
            return Ok(Some(t.clone()));
        }
        let files = tls::files_from_env();
        if std::env::var("RAYX_TLS").is_ok_and(|v| v == "1") && files.is_none() {
            return Err(Error::Startup(
                "RAYX_TLS=1 but there is no home folder".into(),
            ));
        }
        if let Some(f) = files
            .as_ref()
            .filter(|f| head && Some(*f) == tls::default_files().as_ref())
        {
            // A head makes the default certificate when there is none.
            tls::generate(f)?;
        }
        Ok(files)
    }

    fn resolve_token(&self, head: bool) -> Result<Option<String>> {
        if self.no_auth || auth::disabled_by_env() {
            return Ok(None);
        }
        if let Some(t) = &self.token {
            return Ok(Some(t.clone()));
        }
        auth::from_env(head)
    }

    fn resolve_health(&self) -> Result<Health> {
        if let Some(h) = self.health {
            return Ok(h);
        }
        let mut h = Health::default();
        let num = |name: &str| -> Result<Option<u64>> {
            match std::env::var(name) {
                Ok(v) => v.parse::<u64>().map(Some).map_err(|_| {
                    Error::InvalidArgument(format!("{name} is not a whole number: {v:?}"))
                }),
                Err(_) => Ok(None),
            }
        };
        if let Some(ms) = num("RAYX_HEALTH_CHECK_PERIOD_MS")? {
            h.period = Duration::from_millis(ms.max(1));
        }
        if let Some(n) = num("RAYX_HEALTH_CHECK_FAILURE_THRESHOLD")? {
            h.misses = n.clamp(1, u32::MAX as u64) as u32;
        }
        Ok(h)
    }

    fn resolve_drain_timeout(&self) -> Result<Duration> {
        match (self.drain_timeout, std::env::var("RAYX_DRAIN_TIMEOUT_MS")) {
            (Some(t), _) => Ok(t),
            (None, Ok(v)) => v.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                Error::InvalidArgument(format!(
                    "RAYX_DRAIN_TIMEOUT_MS is not a whole number: {v:?}"
                ))
            }),
            (None, Err(_)) => Ok(DRAIN_TIMEOUT),
        }
    }

    fn resolve_dead_nodes_kept(&self) -> Result<usize> {
        let n = match (self.dead_nodes_kept, std::env::var("RAYX_DEAD_NODES_KEPT")) {
            (Some(n), _) => n,
            (None, Ok(v)) => v.parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!("RAYX_DEAD_NODES_KEPT is not a whole number: {v:?}"))
            })?,
            (None, Err(_)) => rayx_actors::cluster::head::DEAD_NODES_KEPT,
        };
        if n == 0 {
            return Err(Error::InvalidArgument(
                "dead_nodes_kept must be at least 1 (a node must know a death to act on it)".into(),
            ));
        }
        Ok(n)
    }

    fn cluster(&self, node_role: bool) -> Result<Option<ClusterConfig>> {
        let address = self
            .address
            .clone()
            .or_else(|| std::env::var("RAYX_ADDRESS").ok().filter(|a| !a.is_empty()));
        let cpus = match self.cpus {
            Some(c) => Some(c),
            None => match std::env::var("RAYX_NUM_CPUS") {
                Ok(c) => Some(c.parse::<f64>().map_err(|_| {
                    Error::InvalidArgument(format!("RAYX_NUM_CPUS is not a number: {c:?}"))
                })?),
                Err(_) => None,
            },
        };
        let listen = self
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:0".to_string());
        if self.head {
            return Ok(Some(ClusterConfig {
                role: Role::Head,
                address: None,
                listen,
                cpus,
                standalone: self.standalone,
                token: self.resolve_token(true)?,
                health: self.resolve_health()?,
                storage: self.storage.clone().or_else(|| {
                    std::env::var_os("RAYX_HEAD_STORAGE")
                        .filter(|p| !p.is_empty())
                        .map(Into::into)
                }),
                tls: self.resolve_tls(true)?,
                link_delay: test_link_delay(),
                dead_nodes_kept: self.resolve_dead_nodes_kept()?,
            }));
        }
        match address {
            Some(address) => Ok(Some(ClusterConfig {
                role: if node_role { Role::Node } else { Role::Driver },
                address: Some(address),
                listen,
                cpus,
                standalone: false,
                token: self.resolve_token(false)?,
                health: self.resolve_health()?,
                storage: None,
                tls: self.resolve_tls(false)?,
                link_delay: test_link_delay(),
                dead_nodes_kept: self.resolve_dead_nodes_kept()?,
            })),
            None if node_role => Err(Error::InvalidArgument(
                "a worker node needs the head's address: set RAYX_ADDRESS or Builder::address"
                    .into(),
            )),
            None => Ok(None),
        }
    }

    fn start_node(mut self, node_role: bool) -> Result<std::sync::Arc<Node>> {
        if self.config.resources.is_empty() {
            if let Ok(text) = std::env::var("RAYX_RESOURCES") {
                self.config.resources = parse_resources(&text).map_err(|e| {
                    Error::InvalidArgument(format!("RAYX_RESOURCES ({text:?}): {e}"))
                })?;
            }
        }
        let cluster = self.cluster(node_role)?;
        Node::start_in_cluster(
            self.config,
            function_table()?,
            crate::cluster::actor_types()?,
            cluster,
        )
    }

    /// Starts the runtime. In a process started as a worker node
    /// (`RAYX_ROLE=node`), this joins the cluster at `RAYX_ADDRESS`, serves
    /// until the head stops it, and exits the process: the rest of `main`
    /// is the driver's.
    pub fn start(self) -> Result<Runtime> {
        if std::env::var("RAYX_ROLE").is_ok_and(|r| r == "node") {
            let result = self.serve();
            if let Err(e) = &result {
                eprintln!("rayx: this node stops: {e}");
            }
            std::process::exit(if result.is_ok() { 0 } else { 1 });
        }
        let node = self.start_node(false)?;
        Ok(Runtime::owning(node))
    }

    /// Joins the cluster as a worker node and serves its tasks and actors
    /// until the head stops it (or is lost), or until SIGTERM or SIGINT:
    /// then it leaves in order (see [`drain_timeout`](Self::drain_timeout))
    /// and returns.
    pub fn serve(self) -> Result<()> {
        if std::env::var("RAYX_EXIT_WITH_PARENT").is_ok_and(|v| v == "1") {
            // The parent holds our stdin: when it dies, even by SIGKILL, the
            // pipe closes and this node goes with it (no orphans).
            std::thread::spawn(|| {
                use std::io::Read;
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
                std::process::exit(0);
            });
        }
        let grace = self.resolve_drain_timeout()?;
        let signals = StopSignals::install()?;
        let node = self.start_node(true)?;
        signals.watch(&node, grace)?;
        node.wait_stopped();
        Ok(())
    }
}

impl Runtime {
    /// Prepares a call of a remote function registered with [`remote!`](crate::remote).
    pub fn task<F, Args, R>(&self, f: F) -> TaskBuilder<'_, F, Args, R>
    where
        F: RemoteFunction<Args, R>,
    {
        TaskBuilder::new(self, f)
    }

    /// Stores a value as an object owned by this process (Ray's `put`).
    ///
    /// ```
    /// let rt = rayx::init()?;
    /// let r = rt.put(vec![1u8, 2, 3])?;
    /// assert_eq!(r.get()?, vec![1, 2, 3]);
    /// # Ok::<(), rayx::Error>(())
    /// ```
    pub fn put<T: Data>(&self, value: T) -> Result<ObjectRef<T>> {
        self.node().put(Value::new(value)).map(ObjectRef::from_slot)
    }

    /// Stores a copy of `data` as a [`Bytes`](crate::Bytes) object, as Ray's
    /// `put` stores a copy of the caller's buffer: the caller keeps `data`.
    ///
    /// A large copy (1 MiB or more) lands in the runtime's warm memory when
    /// it kept a buffer of a like size: that of an earlier large byte object,
    /// kept for 10 s after the object and every reader's share were gone, as
    /// Ray's object store keeps its memory. The warm memory holds up to a
    /// quarter of `object_store_memory` (so a buffer larger than that is never
    /// kept). Copying into a buffer written before runs at memory speed; a
    /// fresh one pays a page fault per page first (see BENCHMARKS.md's
    /// memory-copy floors). A copy of 32 MiB or more is split over the cores
    /// no task is using (all of them busy: the caller's alone), as Ray's
    /// store copies a large put over several threads. A copy the store has
    /// no room for fails with [`Error::ObjectStoreFull`] before it is made.
    /// Read it with `get`, which shares the bytes without a copy.
    /// [`put`](Self::put) moves a value in with no copy at all.
    ///
    /// ```
    /// let rt = rayx::init()?;
    /// let frame = vec![7u8; 4 << 20];
    /// let r = rt.put_copy(&frame)?;
    /// assert_eq!(r.get()?.as_ref(), &frame[..]);
    /// # Ok::<(), rayx::Error>(())
    /// ```
    pub fn put_copy(&self, data: &[u8]) -> Result<ObjectRef<crate::Bytes>> {
        self.node().put_copy(data).map(ObjectRef::from_slot)
    }

    /// Gets several objects, in input order; `timeout` bounds the whole wait.
    ///
    /// ```
    /// # use rayx::prelude::*;
    /// let rt = rayx::init()?;
    /// let refs = vec![rt.put(1)?, rt.put(2)?];
    /// assert_eq!(rt.get(&refs, None)?, vec![1, 2]);
    /// # Ok::<(), rayx::Error>(())
    /// ```
    pub fn get<T: Data + Clone>(
        &self,
        refs: &[ObjectRef<T>],
        timeout: Option<Duration>,
    ) -> Result<Vec<T>> {
        // A timeout too long to add to now is none.
        let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
        // With many clients waiting at once, one sleep for the batch.
        wait_batch(refs.len(), |i| refs[i].slot(), deadline);
        refs.iter()
            .map(|r| {
                let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
                match r.get_timeout_inner(left) {
                    Err(Error::GetTimeout { .. }) => Err(Error::GetTimeout {
                        timeout: timeout.unwrap_or_default(),
                    }),
                    other => other,
                }
            })
            .collect()
    }

    /// Waits until `num_returns` of `refs` are ready or `timeout` passes; returns
    /// `(ready, not_ready)`, both in input order (Ray's `wait`). Pass `&refs` to
    /// keep yours (the refs are cloned), or `refs` to hand them over (moved).
    ///
    /// ```
    /// # use rayx::prelude::*;
    /// let rt = rayx::init()?;
    /// let refs = vec![rt.put(1)?, rt.put(2)?];
    /// let (ready, pending) = rt.wait(&refs, 2, Some(Duration::from_secs(5)))?;
    /// assert_eq!((ready.len(), pending.len()), (2, 0));
    /// # Ok::<(), rayx::Error>(())
    /// ```
    pub fn wait<T>(
        &self,
        refs: impl RefList<T>,
        num_returns: usize,
        timeout: Option<Duration>,
    ) -> Result<Waited<T>> {
        let refs = refs.into_refs();
        if num_returns > refs.len() {
            return Err(Error::InvalidArgument(format!(
                "num_returns ({num_returns}) is more than the number of refs ({})",
                refs.len()
            )));
        }
        let slots: Vec<&_> = refs.iter().map(|r| r.slot()).collect();
        let done = wait_slots(&slots, num_returns, timeout)?;
        drop(slots);
        let mut ready = Vec::with_capacity(done.len());
        let mut pending = Vec::with_capacity(refs.len() - done.len());
        let mut next = done.iter().peekable();
        for (i, r) in refs.into_iter().enumerate() {
            // Ray returns at most num_returns ready refs; the rest count as not ready.
            if next.peek() == Some(&&i) {
                next.next();
                ready.push(r);
            } else {
                pending.push(r);
            }
        }
        Ok((ready, pending))
    }

    /// Cancels the task that makes `r` (Ray's `cancel(ref)`, recursive, not
    /// forced): a queued task never runs, a running one sees
    /// [`cancelled()`](crate::cancelled) and may stop early, the tasks it
    /// submitted are cancelled too, and `get` fails with `Cancelled` at once.
    /// A task that already finished is left as it is.
    pub fn cancel<T>(&self, r: &ObjectRef<T>) {
        self.cancel_with(r, false, true);
    }

    /// [`cancel`](Self::cancel) with Ray's options: `force` gives up on the
    /// worker running the task (its thread cannot be killed: it is abandoned,
    /// replaced, and retires when the task's code returns); `recursive` also
    /// cancels the tasks it submitted.
    pub fn cancel_with<T>(&self, r: &ObjectRef<T>, force: bool, recursive: bool) {
        self.node().cancel(r.slot(), force, recursive);
    }

    /// Prepares a sync actor: handlers take `&mut self`, one call at a time.
    pub fn actor<A: Actor>(
        &self,
        factory: impl Fn() -> A + Send + Sync + 'static,
    ) -> ActorBuilder<'_, A> {
        ActorBuilder::sync(self, factory)
    }

    /// Prepares a sync actor of a type registered with
    /// [`remote_actor!`](crate::remote_actor), built by `ctor` from `arg`:
    /// in a cluster the head may place it on any node.
    pub fn actor_of<A: Actor, Mk, F: Construct<Mk, A>>(
        &self,
        ctor: F,
        arg: F::Arg,
    ) -> ActorBuilder<'_, A> {
        let remote = Value::new(arg.clone());
        ActorBuilder::sync(self, move || ctor.construct(arg.clone())).with_remote(remote)
    }

    /// Like [`actor_of`](Self::actor_of), for an async actor (registered with
    /// `remote_actor!(async ...)`).
    pub fn async_actor_of<A: Actor + Sync, Mk, F: Construct<Mk, A>>(
        &self,
        ctor: F,
        arg: F::Arg,
    ) -> ActorBuilder<'_, A> {
        let remote = Value::new(arg.clone());
        ActorBuilder::asynchronous(self, move || ctor.construct(arg.clone())).with_remote(remote)
    }

    /// Prepares an async actor: handlers are futures, many in flight at once.
    pub fn async_actor<A: Actor + Sync>(
        &self,
        factory: impl Fn() -> A + Send + Sync + 'static,
    ) -> ActorBuilder<'_, A> {
        ActorBuilder::asynchronous(self, factory)
    }

    /// Prepares a supervision group for actors (see [`Supervisor`](crate::Supervisor)).
    pub fn supervisor(&self, name: impl Into<String>) -> SupervisorBuilder<'_> {
        SupervisorBuilder::new(self, name.into())
    }

    /// The live actor named `name` in the default namespace (Ray's `get_actor`).
    pub fn get_actor<A: Actor>(&self, name: &str) -> Result<ActorHandle<A>> {
        self.get_actor_in(crate::actor::DEFAULT_NAMESPACE, name)
    }

    /// The live actor named `name` in `namespace`.
    pub fn get_actor_in<A: Actor>(&self, namespace: &str, name: &str) -> Result<ActorHandle<A>> {
        rayx_actors::cluster::wire::check_names(namespace, name)?;
        let node = self.node();
        let local = node.get_actor(namespace, name);
        match (local, node.cluster()) {
            (Ok(host), _) => ActorHandle::from_host(node.clone(), host),
            (Err(e), None) => Err(e),
            // Named actors are cluster-wide: the head knows where it runs.
            (Err(_), Some(cluster)) => match cluster.ask(Ask::LookupActor {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })? {
                Answer::Actor(place) => crate::actor::handle_at(
                    node,
                    place.actor,
                    place.node,
                    place.type_name,
                    Some(name.to_string()),
                ),
                other => Err(Error::Serialization(format!("unexpected answer {other:?}"))),
            },
        }
    }

    /// Kills an actor: queued and later calls fail with `ActorDied`.
    pub fn kill<A>(&self, actor: &ActorHandle<A>) {
        actor.kill();
    }

    /// Fault injection: loses the value of a ready object, as if the node
    /// holding it died. The next read rebuilds it by running its task again (if
    /// lineage is kept, see [`Builder::max_lineage_bytes`]), or fails with
    /// `ObjectLost` (a `put`) or `ObjectReconstructionFailed`. False if the
    /// object had no value yet.
    #[cfg(feature = "testing")]
    pub fn lose_object<T>(&self, r: &ObjectRef<T>) -> bool {
        self.node().lose_object(r.slot())
    }

    /// In a cluster, how often this process's network thread lingered after
    /// a control message (polling its sockets rather than sleeping), and how
    /// often the next message came while it did: `(begun, paid)`. `None`
    /// outside a cluster.
    #[cfg(feature = "testing")]
    pub fn network_lingers(&self) -> Option<(u64, u64)> {
        self.node().cluster().map(|c| c.lingers())
    }

    /// In a cluster, the other nodes this process knows, each with whether
    /// it is alive: the live ones and the dead it remembers (see
    /// [`Builder::dead_nodes_kept`]). `None` outside a cluster.
    #[cfg(feature = "testing")]
    pub fn peers_known(&self) -> Option<Vec<(crate::NodeId, bool)>> {
        self.node().cluster().map(|c| c.peers_known())
    }

    /// In a cluster, the pulls of large objects into this process under way
    /// that have taken in some of their bytes. `None` outside a cluster.
    #[cfg(feature = "testing")]
    pub fn pulls_landing(&self) -> Option<usize> {
        self.node().cluster().map(|c| c.pulls_landing())
    }

    /// In a cluster, the pulls into this process that went again after
    /// their link failed while the node holding the value lived. `None`
    /// outside a cluster.
    #[cfg(feature = "testing")]
    pub fn pulls_again(&self) -> Option<u64> {
        self.node().cluster().map(|c| c.pulls_again())
    }

    /// In a cluster, how many pulls went on from the byte an attempt whose
    /// link broke had reached (rather than the first), and the bytes this
    /// process keeps now for such attempts. `None` outside a cluster.
    #[cfg(feature = "testing")]
    pub fn pulls_resumed(&self) -> Option<(u64, usize)> {
        self.node().cluster().map(|c| c.pulls_resumed())
    }

    /// In a cluster, breaks this process's bulk links (those large objects
    /// are pulled on) as a connection reset would; returns how many were
    /// open. Pulls under way go again on new links. `None` outside a cluster.
    #[cfg(feature = "testing")]
    pub fn reset_bulk_links(&self) -> Option<usize> {
        self.node().cluster().map(|c| c.reset_bulk_links())
    }

    /// In a cluster, breaks every link of this process to other nodes (not
    /// to the head) as a network blip would; returns how many were open.
    /// `None` outside a cluster.
    #[cfg(feature = "testing")]
    pub fn reset_peer_links(&self) -> Option<usize> {
        self.node().cluster().map(|c| c.reset_peer_links())
    }

    /// The warm memory this runtime keeps for large byte buffers (pulls
    /// landing, [`put_copy`](Self::put_copy)): `(bytes kept, buffers taken
    /// from it so far)`.
    #[cfg(feature = "testing")]
    pub fn warm_memory(&self) -> (usize, u64) {
        self.node().warm_memory()
    }
}

/// SIGTERM and SIGINT, caught from before the node starts (a signal during
/// its join is not the default's death), and handled once it has.
struct StopSignals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::Startup(format!("no runtime for signals: {e}")))?;
        let (term, int) = {
            let _in = rt.enter();
            let handler = |kind| {
                signal(kind).map_err(|e| Error::Startup(format!("cannot handle signals: {e}")))
            };
            (
                handler(SignalKind::terminate())?,
                handler(SignalKind::interrupt())?,
            )
        };
        Ok(StopSignals { rt, term, int })
    }

    /// On the first signal (also one that came before), `node` drains for
    /// up to `grace` and shuts down; a second exits at once.
    fn watch(mut self, node: &std::sync::Arc<Node>, grace: Duration) -> Result<()> {
        let node = std::sync::Arc::downgrade(node);
        std::thread::Builder::new()
            .name("rayx-signals".into())
            .spawn(move || {
                let mut next = || {
                    let StopSignals { rt, term, int } = &mut self;
                    rt.block_on(async {
                        tokio::select! {
                            _ = term.recv() => {}
                            _ = int.recv() => {}
                        }
                    })
                };
                next();
                eprintln!("rayx: told to stop: this node leaves in order (within {grace:?})");
                std::thread::spawn(move || {
                    let Some(node) = node.upgrade() else { return };
                    if let Some(c) = node.cluster() {
                        let left = c.drain(grace);
                        if !left.is_empty() {
                            eprintln!(
                                "rayx: the drain ran out of time with {left}; they are lost \
                                 with this node (retried or rebuilt by their owners)"
                            );
                        }
                    }
                    node.shutdown();
                });
                next();
                eprintln!("rayx: told to stop again: this node stops now");
                std::process::exit(1);
            })
            .map_err(|e| Error::Startup(format!("cannot start the signal thread: {e}")))?;
        Ok(())
    }
}

/// Reads resources given as `name=amount,...` or as Ray's JSON object
/// `{"name": amount, ...}`.
pub(crate) fn parse_resources(text: &str) -> std::result::Result<crate::Resources, String> {
    let body = text.trim();
    let body = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .unwrap_or(body);
    let mut out = crate::Resources::new();
    for part in body.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, amount) = part
            .split_once(['=', ':'])
            .ok_or_else(|| format!("`{part}` is not name=amount"))?;
        let name = name.trim().trim_matches('"').trim();
        let amount: f64 = amount.trim().parse().map_err(|_| {
            format!(
                "the amount of `{name}` is not a number: `{}`",
                amount.trim()
            )
        })?;
        if name.is_empty() {
            return Err(format!("`{part}` names no resource"));
        }
        out.insert(name.to_string(), amount);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_resources;

    #[test]
    fn resources_read_as_pairs_or_as_ray_s_json() {
        let want = crate::resources([("custom", 4.0), ("gpu", 0.5)]);
        assert_eq!(parse_resources("custom=4,gpu=0.5"), Ok(want.clone()));
        assert_eq!(parse_resources(r#"{"custom": 4, "gpu": 0.5}"#), Ok(want));
        assert_eq!(parse_resources(" "), Ok(Default::default()));
        assert!(parse_resources("custom")
            .unwrap_err()
            .contains("name=amount"));
        assert!(parse_resources("custom=lots")
            .unwrap_err()
            .contains("not a number"));
        assert!(parse_resources("=1")
            .unwrap_err()
            .contains("names no resource"));
    }
}
