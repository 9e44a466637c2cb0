//! The cluster side of a node: its node links to the head and to its peers,
//! the head itself when this process hosts it, and the owner's and the
//! executor's halves of tasks, calls and objects that cross processes.
//!
//! - **Tasks.** The owner holds a task until its arguments are ready (as on one
//!   node); then the run queue offers it here ([`Spill`]) and the placement
//!   policy picks a node. A task for a peer goes out as `RunTask` with small
//!   arguments inline and large ones as refs the peer borrows and pulls; the
//!   owner keeps the job (and its pinned arguments) until `TaskDone`, and
//!   retries it elsewhere within `max_retries` if that peer dies.
//! - **Actors.** Placed by the head; calls go straight to the actor's node, in
//!   order per caller (one session per peer).
//! - **Sessions.** What a node sends a peer on the control lane is numbered
//!   and kept until the peer acknowledges it ([`session`]): a connection
//!   that breaks while both live is opened again and loses nothing. Only
//!   the head declares a peer dead, which ends its session.
//! - **Objects.** The owner keeps each object; a node holding a ref to another
//!   node's object is a borrower: it tells the owner (`Borrow`), which keeps
//!   the value until every borrower has released it, and sends it when ready —
//!   inline when small, else pulled on the bulk lane in chunks.
//! - **Wake-ups.** Completions of objects that peers wait for are pushed to one
//!   queue and drained by one task on the network thread: one wake-up per batch.

pub mod auth;
mod barrier;
pub mod head;
pub mod link;
pub mod placement;
pub mod session;
pub mod store;
pub mod tls;
pub mod transfer;
pub mod wire;

use crate::core::Core;
use crate::error::Error;
use crate::groups::{GroupInfo, GroupState, Resources, CPU};
use crate::ids::{ActorId, IdMap, NodeId, ObjectId, TaskId};
use crate::messages::{ActorCall, Arg, Scheduling, TaskSpec};
use crate::object_table::{Dispatch, Slot, TaskJob};
use crate::run_queue::Spill;
use crate::spin::Site;
use crate::value::Value;
use crossbeam_queue::SegQueue;
use head::Head;
use link::{Admit, Gate, Inbound, Link, NotSent};
use parking_lot::Mutex;
use placement::{place, place_work, Candidate, SPILL_THRESHOLD};
use session::Session;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Wake, Waker};
use std::time::Duration;
use transfer::{Pulls, Serving};
use wire::{ActorCreate, Answer, Ask, Hello, Lane, Msg, NodeInfo, Payload, Rejections, Report};

thread_local! {
    /// Whether this thread is a node's network thread (or its blocking pool).
    static ON_NET_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The most bytes of each text an error sent to another node keeps when the
/// whole error would be over the frame limit (see `ClusterNode::not_sent`).
const ERROR_TEXT: usize = 64 << 10;

/// How long a request to the head or a peer may take before it fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a pull whose link failed while its holder lives waits before it
/// goes again.
const PULL_AGAIN: Duration = Duration::from_millis(100);

/// How often a task waiting for a node whose link broke is offered again.
const PLACE_AGAIN: Duration = Duration::from_millis(100);

/// The longest pause between asks of a head out of reach whether a group
/// a handle named lives.
const CONFIRM_PAUSE: Duration = Duration::from_secs(10);

/// How long a joining node keeps trying a head that refuses connections
/// (one that is still starting).
pub const JOIN_RETRY: Duration = Duration::from_secs(10);
/// How often a node reports its load to the head, at least.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How the head and its nodes watch each other: each sends a heartbeat every
/// `period` (every second at least, for the load reports), and one silent
/// for `period × misses` is dead — a node to the head, the head to a node.
/// Ray's defaults: 3 s and 5 misses. A reset connection is noticed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Between checks.
    pub period: Duration,
    /// Checks missed in a row that make a peer dead.
    pub misses: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            period: Duration::from_secs(3),
            misses: 5,
        }
    }
}

impl Health {
    /// How long a peer may be silent before it is dead.
    pub fn limit(&self) -> Duration {
        self.period * self.misses.max(1)
    }
}

/// What a process is in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Hosts the head, and is a node too.
    Head,
    /// Joins a head and serves until told to stop.
    Node,
    /// Joins a head, serves, and submits work (a driver is a node).
    Driver,
}

/// How a process takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Its role.
    pub role: Role,
    /// The head to join (`host:port`); none for a head.
    pub address: Option<String>,
    /// Where its node link listens (default `127.0.0.1:0`: loopback, a port
    /// the OS picks).
    pub listen: String,
    /// The CPUs it offers the cluster (default: its workers).
    pub cpus: Option<f64>,
    /// A head that runs no user code (`rayx start --head`): it takes the
    /// registry of the first node that joins.
    pub standalone: bool,
    /// The cluster token every connection proves (see [`auth`]); `None`: no
    /// authentication, which only a loopback listener may have.
    pub token: Option<String>,
    /// Failure detection.
    pub health: Health,
    /// For a head: the database its tables are written through to, so that
    /// a head killed and started again on it has its cluster back (removed
    /// when the head stops in order). `None`: memory only.
    pub storage: Option<std::path::PathBuf>,
    /// TLS for every connection (the cluster certificate's files); `None`:
    /// plain TCP (authenticated by the token, not encrypted).
    pub tls: Option<tls::TlsFiles>,
    /// For tests: each link this node opens to a peer waits this long before
    /// it connects and again before this node sends on it, so that two
    /// nodes' first messages to each other cross (both open a link at once)
    /// every time. Zero (no wait) but in tests.
    #[doc(hidden)]
    pub link_delay: Duration,
    /// How many dead nodes it remembers, the latest deaths (at least 1;
    /// [`head::DEAD_NODES_KEPT`] by default).
    pub dead_nodes_kept: usize,
}

/// What the cluster asks of its node (the node implements it).
pub trait Host: Send + Sync + 'static {
    /// Starts an actor a peer placed here, held by its creator; or, started
    /// again after its node died (`awaiting`: the live nodes), held until
    /// each of those nodes has counted its holds ([`holds_moved`](Self::holds_moved))
    /// or is gone.
    fn create_actor(&self, create: ActorCreate, awaiting: Option<Vec<NodeId>>)
        -> Result<(), Error>;
    /// Puts a peer's call into a local actor's mailbox; `reply` is its reply.
    fn call_actor(&self, call: ActorCall, reply: Arc<Slot>) -> Result<(), Error>;
    /// Kills (or restarts) a local actor.
    fn kill_actor(&self, actor: ActorId, no_restart: bool);
    /// A node holds handles to a local actor (keep it while any does).
    fn hold_actor(&self, actor: ActorId, by: NodeId);
    /// A node's holds on an actor started again here, counted.
    fn holds_moved(&self, actor: ActorId, by: NodeId, holds: u32) -> LetGo;
    /// An actor started again here waits for no more counts: the nodes not
    /// heard from (returned) hold nothing.
    fn holds_settled(&self, actor: ActorId) -> (Vec<NodeId>, LetGo);
    /// A node dropped a handle to a local actor (`None`: every hold it had
    /// on any, as when it died).
    fn release_actor(&self, actor: Option<ActorId>, by: NodeId) -> LetGo;
    /// Live actors here.
    fn live_actors(&self) -> u32;
    /// The head told this node to stop.
    fn stop(&self);
}

/// Actors a change of holds let go, for the caller to drop outside its
/// locks: an actor's stop runs user code, which may take a hold again.
pub type LetGo = Option<Box<dyn std::any::Any + Send>>;

/// Whose hold on an actor of a peer changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The handles of the node that created it (not detached): one hold,
    /// counted where it starts, and where it starts again while they live.
    Creator,
    /// A handle decoded on this node: one hold each.
    Handle,
}

/// This node's holds on an actor of a peer.
#[derive(Default)]
struct Holds {
    /// Handles decoded here.
    handles: u32,
    /// This node created it and its handles live.
    creator: bool,
}

impl Holds {
    fn count(&self) -> u32 {
        self.handles + u32::from(self.creator)
    }
}

/// How long an actor started again after its node died waits for a node's
/// count of its holds there before it takes that node to hold none.
const HOLDS_MOVED_WAIT: Duration = REQUEST_TIMEOUT;

/// A peer as this node knows it.
struct Peer {
    info: NodeInfo,
    alive: bool,
    /// What this node sends it on the control lane, and what it received,
    /// kept across control links until it dies (see [`session`]).
    session: Arc<Session>,
    /// The control link this node opened or took first.
    control: Option<Arc<Link>>,
    /// Other control links: when both nodes opened one at once, each keeps
    /// both. Any open one carries the session (one writer at a time); they
    /// go with the peer.
    spare: Vec<Arc<Link>>,
    bulk: Option<Arc<Link>>,
    /// A control link is being opened (what waits for it is in the session).
    connecting: bool,
    /// How long the next attempt to open a lost control link waits.
    reconnect: Duration,
    /// The head announced it (else it only opened a link here): only a
    /// member's lost link is opened again unasked, until it is declared
    /// dead — a stranger's is not tried forever.
    member: bool,
    /// The load it last reported.
    reported: u32,
    /// Tasks this node sent it and has not heard back about.
    inflight: u32,
    /// Its control links were lost or one could not be opened: no new work
    /// is placed there until a link is up again, or until then — long
    /// enough for the head to say whether it died.
    unreachable_until: Option<std::time::Instant>,
    /// It leaves in order (the head said so): no new work goes there.
    draining: bool,
    /// Dead: its actors the head starts again elsewhere (a handle to one
    /// waits for the news of where it went; one to any other is dead).
    restarting: Vec<ActorId>,
}

impl Peer {
    /// Whether a control link to it is open (its own or a spare).
    fn linked(&self) -> bool {
        self.control
            .iter()
            .chain(&self.spare)
            .any(|l| !l.is_closed())
    }

    /// Whether this live peer's control link is still being opened: what
    /// this node sends it waits.
    fn opening(&self) -> bool {
        self.alive && !self.linked() && self.connecting
    }

    /// Its links: control, spare and bulk.
    fn links(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.control.iter().chain(&self.spare).chain(&self.bulk)
    }

    /// Keeps a control link this node does not send on (see `spare`).
    fn add_spare(&mut self, link: Arc<Link>) {
        self.spare.retain(|l| !l.is_closed());
        self.spare.push(link);
    }
}

/// A task this node owns, running on a peer.
struct InFlight {
    slot: Arc<Slot>,
    job: TaskJob,
    node: NodeId,
}

/// Who waits for a local object a peer asked about.
enum Reply {
    /// A task a peer sent: its `TaskDone`.
    Task { link: Arc<Link>, object: ObjectId },
    /// A call a peer sent: its `CallDone`.
    Call { link: Arc<Link>, object: ObjectId },
    /// An object a peer borrows: its `ObjectReady`.
    Lend { to: NodeId, object: ObjectId },
}

struct Waiting {
    slot: Arc<Slot>,
    reply: Reply,
    cluster: Weak<ClusterNode>,
}

impl Wake for Waiting {
    fn wake(self: Arc<Self>) {
        if let Some(c) = self.cluster.upgrade() {
            c.done.push(self);
            c.wake.notify_one();
        }
    }
}

/// An object of this node that peers borrow: held until all release it.
struct Lent {
    _slot: Arc<Slot>,
    by: HashMap<NodeId, u32>,
}

type Pending<T> = Mutex<HashMap<u64, SyncSender<Result<T, Error>>>>;
/// Pending requests with the node each went to.
type Acks = Mutex<HashMap<u64, (NodeId, SyncSender<Result<(), Error>>)>>;

/// What the head said of an actor whose node died.
#[derive(Debug, Clone)]
enum Moved {
    /// Started again on this node.
    To(NodeId),
    /// Gone for good, and why.
    Gone(String),
}

/// A task's large result, held on the node that ran it until this node (its
/// owner) wants it. If that node dies first, the result is lost and rebuilt
/// from its lineage (kept with its slot, within `max_lineage_bytes`).
struct HeldAt {
    node: NodeId,
    size: u64,
}

/// Borrows and releases waiting to be sent (`None`: a borrow cancelled by its
/// release before either went out).
#[derive(Default)]
struct Outbox {
    queued: Vec<Option<(NodeId, Msg)>>,
    /// Where each queued borrow is, so its release can cancel it.
    borrows: IdMap<ObjectId, usize>,
}

/// How long borrows and releases wait to go out together. Nothing waits for
/// them (a fetch, a result or a free sends them first), and a ref decoded and
/// dropped within it costs no message at all.
const OUTBOX_DELAY: Duration = Duration::from_millis(1);

/// Wires a cluster part into its node, before it joins.
pub type Ready = Box<dyn FnOnce(&Arc<ClusterNode>) + Send>;

/// A call to an actor on a peer, kept until its reply comes: the refs and
/// handles in its message stay alive meanwhile, and it can go again to the
/// actor's new node if its node dies.
struct RemoteCall {
    slot: Arc<Slot>,
    node: NodeId,
    call: ActorCall,
    /// Times it went again after a node death.
    attempts: u64,
    /// It went to `node` (a call made once its node was known dead waits
    /// for the news unsent, and its first sending uses no retry).
    sent: bool,
    /// When its node was declared dead (its fate is unknown until the head
    /// says where the actor went).
    lost: Option<std::time::Instant>,
}

/// One process's part of a cluster.
pub struct ClusterNode {
    me: NodeInfo,
    role: Role,
    core: Arc<Core>,
    host: OnceLock<Weak<dyn Host>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    net: tokio::runtime::Handle,
    registry: Vec<String>,
    head: Option<Head>,
    /// The link to the head (a node's or driver's): the latest, open or
    /// broken; it sends into `head_session` either way.
    head_link: Mutex<Option<Arc<Link>>>,
    /// Whether this node's first join is under way (with `head_link`'s
    /// lock held to change): an ask made meanwhile — by a task a peer sent
    /// the moment the head listed this node — waits on `head_linked`.
    joining: AtomicBool,
    head_linked: parking_lot::Condvar,
    /// What this node sends the head, kept across join links (see
    /// `session.rs`): a reset of that connection loses nothing.
    head_session: Mutex<Option<Arc<Session>>>,
    peers: Mutex<IdMap<NodeId, Peer>>,
    /// Dead peers still in `peers`, the oldest death first; the lock is
    /// taken with `peers`' held. Beyond `dead_kept` the oldest are
    /// forgotten.
    dead_peers: Mutex<std::collections::VecDeque<NodeId>>,
    dead_kept: usize,
    /// Signalled when a peer joins or dies.
    members: parking_lot::Condvar,
    tasks: Mutex<IdMap<ObjectId, InFlight>>,
    /// Calls to actors on peers, with their messages: the refs and handles in
    /// a message stay alive until the call is done (the receiver holds its own).
    calls: Mutex<IdMap<ObjectId, RemoteCall>>,
    /// Actors started again on another node after theirs died.
    moved: Mutex<IdMap<ActorId, Moved>>,
    /// Holds this node has on actors of peers, to count them again where a
    /// moved actor went.
    holding: Mutex<IdMap<ActorId, Holds>>,
    /// Borrows and releases not sent yet: many refs decoded or dropped at once
    /// go out as one batch, with one wake-up of the network thread.
    outbox: Mutex<Outbox>,
    /// Answers, frees and releases held back until the borrows before them
    /// reached their owners.
    barrier: barrier::Barrier,
    /// What results sent to peers refer to, kept until the result is freed.
    contained: Mutex<IdMap<ObjectId, Vec<crate::value::Pin>>>,
    asks: Pending<Answer>,
    gate: Arc<Gate>,
    /// See [`ClusterConfig::link_delay`].
    link_delay: Duration,
    health: Health,
    /// The head's address (for a node or driver), to rejoin it.
    head_address: Option<String>,
    /// A rejoin is under way.
    rejoining: AtomicBool,
    /// Nothing listens at the head's address (found while rejoining): asks
    /// fail at once until it is back, rather than wait for a head that is
    /// gone.
    head_down: AtomicBool,
    /// When this node started: the clock of `head_heard`.
    epoch: std::time::Instant,
    /// When the head was last heard from (ms since `epoch`).
    head_heard: AtomicU64,
    /// Dropped to stop the health thread.
    health_stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    creates: Acks,
    /// Holds waiting for their acks, with the node each was sent to: a
    /// peer lost fails its own at once (its ack will not come).
    acks: Acks,
    next_request: AtomicU64,
    lent: Mutex<IdMap<ObjectId, Lent>>,
    borrowed: Mutex<IdMap<ObjectId, Weak<Slot>>>,
    /// Values of this node held for their owners (results and replies too
    /// large to travel inline).
    held: Mutex<IdMap<ObjectId, Held>>,
    /// Results of this node's tasks held on the peers that ran them.
    remote: Mutex<IdMap<ObjectId, HeldAt>>,
    pulls: Pulls,
    serving: Serving,
    done: SegQueue<Arc<Waiting>>,
    wake: tokio::sync::Notify,
    /// A control message came in: the network thread lingers (see `linger`).
    heard: tokio::sync::Notify,
    /// Control message batches handled, for `linger` to see one come.
    heard_count: AtomicU64,
    /// Lingers begun, and those that paid (a message came while polling).
    lingers_begun: AtomicU64,
    lingers_paid: AtomicU64,
    /// Pulls gone again after their link failed while the holder lived.
    pulls_again: AtomicU64,
    spread: AtomicUsize,
    /// Tasks peers sent here, not answered yet (a drain waits for them).
    tasks_for_peers: AtomicUsize,
    /// A drain's `Sync`s not answered yet, by id (see `drain`).
    drain_syncs: Mutex<IdMap<u64, NodeId>>,
    /// This node leaves in order (`drain`): no new work is placed here.
    draining: AtomicBool,
    closed: AtomicBool,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterNode({} at {})", self.me.id, self.me.address)
    }
}

impl ClusterNode {
    /// Starts this process's part of a cluster: its listener, and for a node
    /// or driver its join to the head (which fails within the handshake
    /// deadline with the address and the cause).
    pub fn start(
        config: ClusterConfig,
        core: Arc<Core>,
        registry: Vec<String>,
        host: Weak<dyn Host>,
        ready: Ready,
    ) -> Result<Arc<ClusterNode>, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rayx-net")
            .on_thread_start(|| ON_NET_THREAD.with(|n| n.set(true)))
            .enable_all()
            .build()
            .map_err(|e| Error::Startup(format!("the network thread: {e}")))?;
        let net = runtime.handle().clone();
        let listener = net
            .block_on(tokio::net::TcpListener::bind(&config.listen))
            .map_err(|e| Error::Startup(format!("cannot listen on {}: {e}", config.listen)))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::Startup(e.to_string()))?;
        if config.token.is_none() && !bound.ip().is_loopback() {
            return Err(Error::Startup(format!(
                "refusing to listen on {bound} without a cluster token: a listener other \
                 machines can reach must authenticate them (give a token, or listen on loopback)"
            )));
        }
        let address = bound.to_string();
        let me = NodeInfo {
            id: core.node,
            address,
            cpus: config
                .cpus
                .unwrap_or(core.config.num_workers as f64)
                .max(0.0),
            head: config.role == Role::Head,
            resources: core.config.resources.clone(),
        };
        let rejections = Arc::new(Rejections::default());
        let tls = config.tls.as_ref().map(tls::Tls::load).transpose()?;
        let gate = Gate::with_tls(
            config.token.as_deref().map(auth::Token::from),
            rejections.clone(),
            tls,
        );
        let head = match config.role {
            Role::Head => {
                let ours = (!config.standalone).then(|| registry.clone());
                let store = match &config.storage {
                    Some(path) => Some(store::HeadStore::open(path)?),
                    None => None,
                };
                Some(Head::new(
                    me.clone(),
                    ours,
                    rejections,
                    store,
                    config.dead_nodes_kept.max(1),
                )?)
            }
            _ => None,
        };
        let cluster = Arc::new(ClusterNode {
            me,
            role: config.role,
            core: core.clone(),
            host: OnceLock::from(host),
            runtime: Mutex::new(Some(runtime)),
            net,
            registry,
            head,
            head_link: Mutex::new(None),
            joining: AtomicBool::new(config.address.is_some()),
            head_linked: parking_lot::Condvar::new(),
            head_session: Mutex::new(None),
            peers: Mutex::default(),
            dead_peers: Mutex::default(),
            dead_kept: config.dead_nodes_kept.max(1),
            members: parking_lot::Condvar::new(),
            tasks: Mutex::default(),
            calls: Mutex::default(),
            moved: Mutex::default(),
            holding: Mutex::default(),
            contained: Mutex::default(),
            outbox: Mutex::default(),
            barrier: barrier::Barrier::default(),
            asks: Mutex::default(),
            gate,
            link_delay: config.link_delay,
            health: config.health,
            head_address: config.address.clone(),
            rejoining: AtomicBool::new(false),
            head_down: AtomicBool::new(false),
            epoch: std::time::Instant::now(),
            head_heard: AtomicU64::new(0),
            health_stop: Mutex::new(None),
            creates: Mutex::default(),
            acks: Mutex::default(),
            next_request: AtomicU64::new(1),
            lent: Mutex::default(),
            borrowed: Mutex::default(),
            held: Mutex::default(),
            remote: Mutex::default(),
            pulls: Pulls::with_pool(core.config.object_store_memory, core.pool.clone()),
            serving: Serving::default(),
            done: SegQueue::new(),
            wake: tokio::sync::Notify::new(),
            heard: tokio::sync::Notify::new(),
            heard_count: AtomicU64::new(0),
            lingers_begun: AtomicU64::new(0),
            pulls_again: AtomicU64::new(0),
            lingers_paid: AtomicU64::new(0),
            spread: AtomicUsize::new(0),
            tasks_for_peers: AtomicUsize::new(0),
            drain_syncs: Mutex::default(),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        // Wired into its node before anything can arrive: a peer's first
        // message may come the moment the head announces this node.
        ready(&cluster);
        if let Some(head) = &cluster.head {
            let weak = Arc::downgrade(&cluster);
            head.on_group_news(Box::new(move |news| {
                if let Some(c) = weak.upgrade() {
                    c.group_news(news, None);
                }
            }));
        }
        let weak = Arc::downgrade(&cluster);
        cluster.net.spawn(accept_loop(listener, weak.clone()));
        cluster.net.spawn(drain_completions(weak.clone()));
        cluster.net.spawn(linger(weak.clone()));
        if let Some(address) = &config.address {
            let joined = cluster.net.block_on(async {
                // A head started a moment ago may not listen yet: a refused
                // connection is tried again, for JOIN_RETRY at most. A head
                // that answers and refuses is not asked twice.
                let deadline = tokio::time::Instant::now() + JOIN_RETRY;
                loop {
                    match join_once(&weak, address).await {
                        // Refused by the OS (nobody listens yet), closed
                        // mid-handshake (a head busy with a flood of
                        // strangers) or unanswered: try again. A refusal
                        // with a reason is final.
                        Err(link::Failed {
                            failure: link::Failure::NobodyListens | link::Failure::NoAnswer,
                            ..
                        }) if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        tried => return tried.map_err(Error::from),
                    }
                }
            });
            let (link, members) = match joined {
                Ok(j) => j,
                Err(e) => {
                    cluster.first_join_over(None);
                    cluster.shutdown();
                    return Err(e);
                }
            };
            cluster.heard_head();
            cluster.first_join_over(Some(link.clone()));
            cluster.closed_already(&link);
            for m in members {
                cluster.add_peer(m, true);
            }
        }
        cluster.start_health()?;
        let spill: Weak<dyn Spill> = Arc::downgrade(&cluster) as Weak<dyn Spill>;
        core.run_queue.set_spill(spill);
        let weak = Arc::downgrade(&cluster);
        let fetcher = weak.clone();
        core.table.set_fetch_hook(Box::new(move |id| {
            if let Some(c) = fetcher.upgrade() {
                if id.node == c.me.id {
                    // A result of ours, held where its task ran.
                    c.fetch_held(id);
                    return;
                }
                if !c.send_to(id.node, Msg::Fetch { object: id }) {
                    if let Some(slot) = c.core.table.lookup(id) {
                        slot.complete(Err(Error::OwnerDied { id: id.to_string() }));
                    }
                }
            }
        }));
        core.table.set_borrow_hook(Box::new(move |id, keeper| {
            if let Some(c) = weak.upgrade() {
                match keeper {
                    None => c.unborrow(id),
                    Some(node) => {
                        c.remote.lock().remove(&id);
                        c.answer(node, Msg::Free { object: id });
                    }
                }
            }
        }));
        Ok(cluster)
    }

    fn host(&self) -> Option<Arc<dyn Host>> {
        self.host.get().and_then(Weak::upgrade)
    }

    /// Where its node link listens (for a head: the cluster's address).
    pub fn address(&self) -> &str {
        &self.me.address
    }

    /// The cluster token its connections prove, if any.
    pub fn token(&self) -> Option<&str> {
        self.gate.token.as_deref()
    }

    /// The live nodes this node knows of, itself included.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let mut nodes = vec![self.me.clone()];
        nodes.extend(
            self.peers
                .lock()
                .values()
                .filter(|p| p.alive)
                .map(|p| p.info.clone()),
        );
        nodes
    }

    fn hello(&self, lane: Lane) -> Hello {
        Hello {
            nonce: Default::default(),
            driver: lane == Lane::Join && self.role == Role::Driver,
            member_of: match lane {
                Lane::Join => self.head_session.lock().as_ref().map(|s| s.peer),
                _ => None,
            },
            version: wire::PROTOCOL_VERSION,
            lane,
            node: self.me.clone(),
            registry: if lane == Lane::Join {
                self.registry.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// Waits until at least `n` live nodes (this one included) are known,
    /// up to `timeout`; false if they were not.
    pub fn wait_for_nodes(&self, n: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut peers = self.peers.lock();
        loop {
            if 1 + peers.values().filter(|p| p.alive).count() >= n {
                return true;
            }
            if self.members.wait_until(&mut peers, deadline).timed_out() {
                return 1 + peers.values().filter(|p| p.alive).count() >= n;
            }
        }
    }

    /// Waits until a live node not in `known` joins, up to `timeout`; its id.
    pub fn wait_for_new_node(&self, known: &[NodeId], timeout: Duration) -> Option<NodeId> {
        let deadline = std::time::Instant::now() + timeout;
        let mut peers = self.peers.lock();
        loop {
            if let Some(id) = peers
                .iter()
                .find(|(id, p)| p.alive && !known.contains(id))
                .map(|(id, _)| *id)
            {
                return Some(id);
            }
            if self.members.wait_until(&mut peers, deadline).timed_out() {
                return None;
            }
        }
    }

    /// A node this node may work with: a `member` the head announced, or
    /// one that opened a control link here first (the head's word of it may
    /// come later).
    fn add_peer(&self, info: NodeInfo, member: bool) {
        if info.id == self.me.id {
            return;
        }
        let mut peers = self.peers.lock();
        self.members.notify_all();
        peers
            .entry(info.id)
            .or_insert_with(|| Peer {
                member,
                session: Session::new(info.id),
                info,
                alive: true,
                control: None,
                spare: Vec::new(),
                bulk: None,
                connecting: false,
                reconnect: Duration::ZERO,
                reported: 0,
                inflight: 0,
                unreachable_until: None,
                draining: false,
                restarting: Vec::new(),
            })
            .member |= member;
    }

    /// Stops the network: every link closes, pending requests fail.
    pub fn shutdown(&self) {
        // Said first, and answered (a second at most; the head may be gone),
        // so that the join link's closing is a leaving, not a failure the
        // head would look into — also over a link that broke a moment ago,
        // which a rejoin under way replaces.
        let goodbye = match self.role {
            Role::Driver => Ask::JobFinished { driver: self.me.id },
            _ => Ask::Leaving { node: self.me.id },
        };
        let on_net = ON_NET_THREAD.with(|n| n.get());
        if self.head.is_none() && !on_net && !self.closed.load(Ordering::Acquire) {
            let _ = self.ask_within(goodbye.clone(), GOODBYE);
        }
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.fail_asks(|| Error::ShutDown);
        for (_, (_, tx)) in self.creates.lock().drain() {
            let _ = tx.send(Err(Error::ShutDown));
        }
        for (_, (_, tx)) in self.acks.lock().drain() {
            let _ = tx.send(Err(Error::ShutDown));
        }
        self.health_stop.lock().take();
        // Kept landing buffers go now, and a reader's buffer given back later
        // is freed, not kept.
        self.pulls.pool().close();
        let links: Vec<Arc<Link>> = {
            let peers = self.peers.lock();
            peers.values().flat_map(Peer::links).cloned().collect()
        };
        for l in links {
            l.close();
        }
        if let Some(l) = self.head_link.lock().take() {
            if on_net {
                // No answer can be read here: sent, at least.
                l.send(Msg::Ask {
                    id: 0,
                    ask: goodbye,
                });
            }
            l.finish();
            if !on_net {
                // Written before the network stops (a second at most; the
                // head may be gone).
                l.wait_written(GOODBYE);
            }
        }
        if let Some(head) = &self.head {
            for l in head.links() {
                l.send(Msg::Stop);
                l.finish();
            }
            // An orderly stop ends the cluster: its database goes too.
            head.close();
        }
        let runtime = self.runtime.lock().take();
        if let Some(rt) = runtime {
            rt.shutdown_background();
        }
        // Dropped outside their locks: values and messages may run user code
        // as they go (a `Drop` that calls an actor).
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let calls = std::mem::take(&mut *self.calls.lock());
        let contained = std::mem::take(&mut *self.contained.lock());
        let lent = std::mem::take(&mut *self.lent.lock());
        let held = std::mem::take(&mut *self.held.lock());
        let remote = std::mem::take(&mut *self.remote.lock());
        drop((tasks, calls, contained, lent, held, remote));
    }

    // ---- sending ------------------------------------------------------------

    /// Sends `msg` to `node` on its control lane, opening a link first if
    /// need be. False if the node is not a live peer.
    fn send_to(self: &Arc<Self>, node: NodeId, msg: Msg) -> bool {
        // Borrows and releases queued earlier go first: a fetch never
        // overtakes its borrow.
        self.flush_outbox();
        self.send_now(node, msg)
    }

    /// Queues a borrow or release; the first one queued schedules a flush on
    /// the network thread. A release whose borrow has not gone out yet
    /// cancels it instead.
    fn post(self: &Arc<Self>, node: NodeId, msg: Msg) {
        let first = {
            let mut outbox = self.outbox.lock();
            let Outbox { queued, borrows } = &mut *outbox;
            match &msg {
                Msg::Release { object } => {
                    if let Some(at) = borrows.remove(object) {
                        queued[at] = None;
                        return;
                    }
                }
                Msg::Borrow { object } => {
                    borrows.insert(*object, queued.len());
                }
                _ => {}
            }
            queued.push(Some((node, msg)));
            queued.len() == 1
        };
        if first {
            let me = Arc::downgrade(self);
            self.net.spawn(async move {
                tokio::time::sleep(OUTBOX_DELAY).await;
                if let Some(c) = me.upgrade() {
                    c.flush_outbox();
                }
            });
        }
    }

    /// Sends every queued borrow and release, in order. The outbox stays
    /// locked while they are handed to their links, so a flush on another
    /// thread cannot overtake them.
    fn flush_outbox(self: &Arc<Self>) {
        let mut failed = Vec::new();
        // Answers the barrier let go and could not deliver (their node is
        // gone): dropped after the outbox's lock (see `control`).
        let mut unsent = Vec::new();
        {
            let mut outbox = self.outbox.lock();
            outbox.borrows.clear();
            let queued = std::mem::take(&mut outbox.queued);
            for (node, msg) in queued.into_iter().flatten() {
                match msg {
                    Msg::Borrow { object } => {
                        if self.send_now(node, msg) {
                            self.barrier.borrowed(node);
                        } else {
                            failed.push(object);
                        }
                    }
                    // A release lets its owner free the value, and with it
                    // what the value refers to: it waits, as an answer does,
                    // for the borrows of those refs made here to reach their
                    // owners. (Held back, it only comes later than a borrow
                    // sent after it: a count never drops early.)
                    msg => self.barrier_send(node, msg, &mut unsent),
                }
            }
        }
        drop(unsent);
        // Completed outside the lock: a completion may submit work that sends.
        for id in failed {
            if let Some(slot) = self.core.table.lookup(id) {
                slot.complete(Err(Error::OwnerDied { id: id.to_string() }));
            }
        }
    }

    /// Answers a request that came on `link`. One that came on a control
    /// link is answered on this node's own control link to its sender, after
    /// the borrows and releases queued so far and in order behind everything
    /// else this node sent that node: the borrows the work made must reach
    /// their owner before its answer, or the owner may free what is borrowed.
    /// (After two nodes opened links to each other at once, the link a
    /// request came on may not be the one this node sends on.) A request on
    /// another lane is answered on `link`, after the same flush.
    fn reply(self: &Arc<Self>, link: &Arc<Link>, msg: Msg) {
        if link.lane == Lane::Control {
            // Its sender is a peer (admitted on this link); gone, the answer
            // has nobody to go to.
            self.answer(link.peer.id, msg);
        } else {
            self.flush_outbox();
            link.send(msg);
        }
    }

    /// Sends `node` a message that may let it drop what it holds for this
    /// node (an answer, a `Free`): after the borrows and releases queued so
    /// far (a constructor's argument decoded, a task's result encoded), on
    /// this node's own control link, and — when some of those borrows went
    /// to other owners — once those owners have confirmed them (see
    /// [`barrier`]): else `node` could release its own hold on a value first
    /// and its owner free what this node borrowed.
    fn answer(self: &Arc<Self>, node: NodeId, msg: Msg) {
        self.flush_outbox();
        self.through_barrier(node, msg);
    }

    /// Sends `msg` to `node` through the [`barrier`], arming its expiry if
    /// it waits.
    fn through_barrier(self: &Arc<Self>, node: NodeId, msg: Msg) {
        let mut unsent = Vec::new();
        self.barrier_send(node, msg, &mut unsent);
        drop(unsent);
    }

    /// [`through_barrier`](Self::through_barrier), keeping what could not
    /// be delivered in `unsent` for the caller to drop after its locks.
    fn barrier_send(self: &Arc<Self>, node: NodeId, msg: Msg, unsent: &mut Vec<Msg>) {
        let parked = self.barrier.send(node, msg, &mut self.control(unsent));
        if let Some(since) = parked {
            self.expire_later(since);
        }
    }

    /// Stops waiting, after [`barrier::SYNC_TIMEOUT`], for owners that did not
    /// confirm the borrows before the answers parked at `since` — except
    /// those whose link is still being opened (then it looks again later).
    fn expire_later(self: &Arc<Self>, since: std::time::Instant) {
        let me = Arc::downgrade(self);
        self.net.spawn(async move {
            tokio::time::sleep(barrier::SYNC_TIMEOUT).await;
            let Some(c) = me.upgrade() else {
                return;
            };
            let connecting = |n: NodeId| c.peers.lock().get(&n).is_some_and(Peer::opening);
            let mut unsent = Vec::new();
            let kept = c
                .barrier
                .expire(since, &connecting, &mut c.control(&mut unsent));
            drop(unsent);
            if kept {
                c.expire_later(since);
            }
        });
    }

    /// Delivers to a node's control lane at once: what the barrier sends
    /// with (under its lock). What cannot go (its node is gone) is kept in
    /// `unsent`, for the caller to drop after the barrier's lock: an answer
    /// may hold the last reference to a value with a handle in it, whose
    /// drop sends.
    fn control<'a>(
        self: &'a Arc<Self>,
        unsent: &'a mut Vec<Msg>,
    ) -> impl FnMut(NodeId, Msg) -> bool + 'a {
        move |n, m| match self.try_send_now(n, m) {
            None => true,
            Some(m) => {
                unsent.push(m);
                false
            }
        }
    }

    fn send_now(self: &Arc<Self>, node: NodeId, msg: Msg) -> bool {
        self.try_send_now(node, msg).is_none()
    }

    /// Sends `msg` to `node` on its control lane, or gives it back if `node`
    /// is not a live peer (dropped by the caller, outside its own locks if
    /// it may hold user values).
    fn try_send_now(self: &Arc<Self>, node: NodeId, msg: Msg) -> Option<Msg> {
        let mut peers = self.peers.lock();
        let Some(peer) = peers.get_mut(&node).filter(|p| p.alive) else {
            return Some(msg);
        };
        // Into the session, whose open link writes it (or the next).
        peer.session.send(msg);
        if !peer.linked() && !peer.connecting {
            self.open_control(node, peer, Duration::ZERO);
        }
        None
    }

    /// Opens a control link to `peer` after `delay`.
    fn open_control(self: &Arc<Self>, node: NodeId, peer: &mut Peer, delay: Duration) {
        peer.connecting = true;
        let address = peer.info.address.clone();
        let weak = Arc::downgrade(self);
        self.net.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            open_link(weak, node, address).await;
        });
    }

    /// A control link to `node` is up, opened by either side: it carries the
    /// session as any control link does (one writer at a time), beside one
    /// already open if both nodes opened one at once; all go with the peer.
    fn linked(&self, node: NodeId, link: Arc<Link>) {
        let mut peers = self.peers.lock();
        let Some(peer) = peers.get_mut(&node).filter(|p| p.alive) else {
            // Gone, or declared dead while the link was being opened.
            link.abort();
            return;
        };
        peer.connecting = false;
        peer.unreachable_until = None;
        peer.reconnect = Duration::ZERO;
        if peer.control.as_ref().is_some_and(|l| !l.is_closed()) {
            peer.add_spare(link);
        } else {
            peer.control = Some(link);
        }
    }

    // ---- asks to the head -----------------------------------------------------

    /// Asks the head; fails with a typed error if it cannot answer in time.
    pub fn ask(&self, ask: Ask) -> Result<Answer, Error> {
        self.ask_within(ask, REQUEST_TIMEOUT)
    }

    /// [`ask`](Self::ask), failing after `timeout`.
    fn ask_within(&self, ask: Ask, timeout: Duration) -> Result<Answer, Error> {
        if let Some(head) = &self.head {
            if matches!(ask, Ask::StopCluster) {
                for l in head.links() {
                    l.send(Msg::Stop);
                }
            }
            return head.ask(ask, self.report());
        }
        let deadline = std::time::Instant::now() + timeout;
        let link = {
            let mut slot = self.head_link.lock();
            // Relaxed: changed under the lock held here.
            while slot.is_none() && self.joining.load(Ordering::Relaxed) {
                if self.head_linked.wait_until(&mut slot, deadline).timed_out() {
                    return Err(Error::ClusterUnreachable {
                        address: self.head_address.clone().unwrap_or_default(),
                        cause: format!("this node was still joining the head after {timeout:?}"),
                    });
                }
            }
            slot.clone().ok_or_else(|| self.head_lost())?
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        self.asks.lock().insert(id, tx);
        // Looked at after the insert: a rejoin that found the head gone
        // drains the asks after it sets `head_down` (both under the asks'
        // lock), so either it failed this one or this sees it set.
        if self.head_down.load(Ordering::Acquire) {
            self.asks.lock().remove(&id);
            return Err(self.head_lost());
        }
        if !link.send(Msg::Ask { id, ask }) {
            self.asks.lock().remove(&id);
            return Err(self.head_lost());
        }
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(answer) => answer,
            Err(_) => {
                self.asks.lock().remove(&id);
                Err(Error::ClusterUnreachable {
                    address: link.peer.address.clone(),
                    cause: format!("the head did not answer within {timeout:?}"),
                })
            }
        }
    }

    /// Starts the thread that sends heartbeats and declares silent peers
    /// dead: its own thread, so neither user code nor a busy network thread
    /// can delay it.
    fn start_health(self: &Arc<Self>) -> Result<(), Error> {
        if self.head.is_none() && self.head_link.lock().is_none() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        *self.health_stop.lock() = Some(tx);
        let weak = Arc::downgrade(self);
        let health = self.health;
        std::thread::Builder::new()
            .name("rayx-health".into())
            .spawn(move || {
                let tick = health.period.min(REPORT_EVERY);
                // Dropping the sender (shutdown) ends the wait at once.
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(tick) {
                    let Some(c) = weak.upgrade() else { return };
                    if c.closed.load(Ordering::Acquire) {
                        return;
                    }
                    c.check_health();
                    c.serving.forget_idle();
                    c.pulls.forget_stale_kept();
                }
            })
            .map(drop)
            .map_err(|e| Error::Startup(format!("the health thread: {e}")))
    }

    /// One round of the health thread: heartbeats out, silent peers dead.
    fn check_health(self: &Arc<Self>) {
        let limit = self.health.limit();
        let report = self.report();
        if let Some(head) = &self.head {
            for (node, silent) in head.beat(report, limit) {
                let cause = format!(
                    "no heartbeat for {:.1} s (the limit is {:.1} s): a partition, a hang or a \
                     dead machine",
                    silent.as_secs_f64(),
                    limit.as_secs_f64()
                );
                self.declare_dead(node, &cause);
            }
            self.sweep_lost_calls();
            return;
        }
        self.sweep_lost_calls();
        let Some(link) = self.head_link.lock().clone() else {
            return;
        };
        link.send(Msg::Heartbeat(report));
        let silent = self.since(&self.head_heard);
        // Half the limit: a link broken only on the head's side is replaced
        // (its session goes on) before the head would declare this node dead.
        if silent > limit / 2 {
            // A link that still looks open goes: the new one takes the session.
            link.abort();
            self.rejoin(format!(
                "the head was silent for {:.1} s (the limit is {:.1} s)",
                silent.as_secs_f64(),
                limit.as_secs_f64()
            ));
        }
    }

    /// The head saw a member's join link close. A member that said it
    /// leaves is dead now. Otherwise a live process joins again on a new
    /// link (a reset costs nothing: its session goes on), and one that does
    /// not is declared dead at the heartbeat limit, as after silence — unless
    /// nothing listens at its address any more: a killed process is dead at
    /// once. The head looks by opening a control link to it, as any peer
    /// would, every [`PROBE_AGAIN`] while that link is the member's and no
    /// answer was conclusive (a dying process may still accept, then reset).
    fn member_link_closed(self: &Arc<Self>, link: &Arc<Link>, cause: String) {
        let Some(head) = &self.head else { return };
        let (node, serial) = (link.peer.id, link.serial);
        match head.link_closed(node, serial) {
            None => {}
            Some((true, _)) => self.declare_dead(node, head::STOPPED_CAUSE),
            Some((false, address)) => {
                let weak = Arc::downgrade(self);
                self.net.spawn(probe(weak, node, serial, address, cause));
            }
        }
    }

    /// The head declares `node` dead: its work here is redone or failed,
    /// and its actors with restarts left start again elsewhere.
    fn declare_dead(self: &Arc<Self>, node: NodeId, cause: &str) {
        let Some(head) = &self.head else { return };
        let Some(left) = head.left(node, cause) else {
            return;
        };
        self.restarting_from(node, left.restarts.iter().map(|(c, _)| c.actor).collect());
        self.peer_lost(node, cause);
        for m in left.gone {
            if let Msg::ActorMoved {
                actor,
                node: to,
                died,
                cause,
                retries,
            } = m
            {
                self.on_move(actor, to, died, &cause, retries);
            }
        }
        for (create, at) in left.restarts {
            let actor = create.actor;
            if at == self.me.id {
                let me = self.clone();
                self.net.spawn_blocking(move || {
                    // Its constructor's argument may hold handles, whose
                    // holds wait for answers the network thread reads.
                    ON_NET_THREAD.with(|n| n.set(false));
                    let result = me.restart_here(create);
                    me.actor_restarted(actor, result);
                });
            } else {
                match head.link_of(at) {
                    Some(link) => {
                        link.send(Msg::CreateActor(create));
                    }
                    None => self.actor_restarted(
                        actor,
                        Err(Error::NodeDied {
                            node: at.to_string(),
                            cause: "it left before the actor started there".into(),
                        }),
                    ),
                }
            }
        }
    }

    /// Starts an actor again here after its node died. Every live node
    /// counts its holds on it here as it learns of the move (`HoldsMoved`),
    /// the creator's among them while its handles live; until then the
    /// restart holds it, for [`HOLDS_MOVED_WAIT`] at most (a node that died
    /// meanwhile holds nothing, and one that never answers is taken to hold
    /// nothing then).
    fn restart_here(self: &Arc<Self>, create: ActorCreate) -> Result<(), Error> {
        let h = self.host().ok_or(Error::ShutDown)?;
        let actor = create.actor;
        let mut awaiting = self.live_peers();
        awaiting.push(self.me.id);
        h.create_actor(create, Some(awaiting.clone()))?;
        // A node that died while the actor started holds nothing: its death
        // found no actor here to let go of.
        let alive = self.live_peers();
        for node in awaiting {
            if node != self.me.id && !alive.contains(&node) {
                self.let_go(h.holds_moved(actor, node, 0));
            }
        }
        let weak = Arc::downgrade(self);
        self.net.spawn(async move {
            tokio::time::sleep(HOLDS_MOVED_WAIT).await;
            let Some(c) = weak.upgrade() else { return };
            let Some(h) = c.host() else { return };
            let (late, gone) = h.holds_settled(actor);
            c.let_go(gone);
            if !late.is_empty() {
                tracing::warn!(
                    "rayx: {late:?} did not count their holds on {actor}, started again here, within {HOLDS_MOVED_WAIT:?}: taken to hold none"
                );
            }
        });
        Ok(())
    }

    /// Drops actors a change of holds let go, off the network thread: an
    /// actor's stop runs user code, which may ask the head and wait for the
    /// answer only this thread reads (the node would stall, its heartbeats
    /// with it, until the request timed out).
    fn let_go(&self, gone: LetGo) {
        let Some(gone) = gone else { return };
        if ON_NET_THREAD.with(|n| n.get()) {
            self.net.spawn_blocking(move || {
                // A blocking thread may wait for answers the network thread
                // reads.
                ON_NET_THREAD.with(|n| n.set(false));
                drop(gone);
            });
        } else {
            drop(gone);
        }
    }

    /// The peers alive as far as this node knows.
    fn live_peers(&self) -> Vec<NodeId> {
        self.peers
            .lock()
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    /// A restart the head asked for is done: every node learns where the
    /// actor is (or that it is gone).
    fn actor_restarted(self: &Arc<Self>, actor: ActorId, result: Result<(), Error>) {
        let Some(head) = &self.head else { return };
        if let Some(Msg::ActorMoved {
            actor,
            node,
            died,
            cause,
            retries,
        }) = head.restarted(actor, result)
        {
            self.on_move(actor, node, died, &cause, retries);
        }
    }

    fn since(&self, heard: &AtomicU64) -> Duration {
        // Relaxed: a timestamp, read for a timeout; nothing else is published by it.
        let at = Duration::from_millis(heard.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(at)
    }

    fn heard_head(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.head_heard.store(now, Ordering::Relaxed);
    }

    /// The head is gone for this node: it declared this node dead, or it
    /// could not be rejoined (a node that lost it rejoins: see `rejoin`).
    /// What waits for it fails, and `give_up`.
    fn leave_head(self: &Arc<Self>, cause: &str) {
        let link = self.head_link.lock().take();
        let session = self.head_session.lock().take();
        if let Some(s) = session {
            drop(s.end());
        }
        self.fail_asks(|| self.head_lost());
        if let Some(link) = link {
            link.abort();
            self.core
                .events
                .publish(crate::events::SupervisionEvent::NodeDied {
                    node: link.peer.id.to_string(),
                    cause: format!("the head: {cause}"),
                });
        }
        self.give_up(cause);
    }

    /// A join link that closed before it became the head link (its
    /// `on_close` was not for the head link then): joined again.
    fn closed_already(self: &Arc<Self>, link: &Arc<Link>) {
        // `is_closed` is set before `on_close` runs: a close this misses
        // finds `link` the head link, and no rejoin under way.
        if link.is_closed() {
            self.rejoin("the link to the head closed as it opened".into());
        }
    }

    /// How long frames to or from the head may wait for an ack: a link
    /// that carries a node's frames one way only must be replaced before
    /// the head would declare the node dead (half the health limit).
    fn join_stale(&self) -> Duration {
        session::STALE.min(self.health.limit() / 2)
    }

    /// The session a join link to `head` carries: this node's with it; or,
    /// on a first join or to a head started again (a new id), a new one —
    /// and what waited for the old head fails.
    fn head_session(&self, head: &NodeInfo) -> Arc<Session> {
        let mut slot = self.head_session.lock();
        if let Some(s) = slot.as_ref().filter(|s| s.peer == head.id) {
            return s.clone();
        }
        let session = Session::with_stale(head.id, self.join_stale());
        let old = slot.replace(session.clone());
        drop(slot);
        if let Some(old) = old {
            drop(old.end());
            self.fail_asks(|| self.head_lost());
        }
        session
    }

    /// How long a node keeps trying to rejoin a head it lost (Ray's nodes
    /// wait 60 s for their GCS): four health limits (60 s by default), 10 s
    /// at least.
    fn rejoin_window(&self) -> Duration {
        (self.health.limit() * 4).max(Duration::from_secs(10))
    }

    /// This node lost its link to the head (it closed, or the head went
    /// silent): it joins again — on a new link that carries the same
    /// session, so what was sent and asked meanwhile goes through; or to a
    /// head started again, under a new id — and a worker node that cannot
    /// within the window stops. Work between nodes goes on meanwhile.
    fn rejoin(self: &Arc<Self>, cause: String) {
        let Some(address) = self.head_address.clone() else {
            return self.leave_head(&cause);
        };
        if self.rejoining.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!("rayx: lost the link to the head ({cause}); joining it again");
        let weak = Arc::downgrade(self);
        let deadline = tokio::time::Instant::now() + self.rejoin_window();
        self.net.spawn(async move {
            loop {
                match weak.upgrade() {
                    Some(c) if !c.closed.load(Ordering::Acquire) => {}
                    _ => return,
                }
                let tried = join_once(&weak, &address).await;
                let Some(c) = weak.upgrade() else { return };
                match tried {
                    Ok((link, members)) => return c.rejoined(link, members),
                    Err(e) => {
                        // Refused by a head that answered (declared dead, a
                        // wrong token): final. Unreachable: try again.
                        let final_ = e.failure == link::Failure::Refused
                            || !matches!(e.error, Error::ClusterUnreachable { .. });
                        if final_ || tokio::time::Instant::now() >= deadline {
                            c.rejoining.store(false, Ordering::Release);
                            return c.leave_head(&format!("{cause}; rejoining failed: {e}"));
                        }
                        if e.failure == link::Failure::NobodyListens
                            && !c.head_down.swap(true, Ordering::AcqRel)
                        {
                            // The head's process is gone (a reset would find
                            // it listening): what waits for it fails now.
                            c.fail_asks(|| c.head_lost());
                        }
                    }
                }
                drop(c);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// Back in the cluster: peers the head no longer lists are dead (the
    /// old head among them, if it was started again), new ones are added.
    fn rejoined(self: &Arc<Self>, link: Arc<Link>, members: Vec<NodeInfo>) {
        self.heard_head();
        let old = self.head_link.lock().replace(link.clone());
        self.head_down.store(false, Ordering::Release);
        self.rejoining.store(false, Ordering::Release);
        if let Some(old) = old {
            // Its writer hands the session to the new link's.
            old.abort();
        }
        self.closed_already(&link);
        let listed: std::collections::HashSet<NodeId> = members.iter().map(|m| m.id).collect();
        let gone: Vec<NodeId> = self
            .peers
            .lock()
            .iter()
            .filter(|(id, p)| p.alive && !listed.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for node in gone {
            self.peer_lost(node, "the head, started again, does not list it");
        }
        for m in members {
            self.add_peer(m, true);
        }
        if self.draining.load(Ordering::Relaxed) {
            // Said again: a head started again knows nothing of the drain.
            let me = self.clone();
            self.net.spawn_blocking(move || {
                ON_NET_THREAD.with(|n| n.set(false));
                let _ = me.ask_within(Ask::Draining { node: me.me.id }, GOODBYE);
            });
        }
        tracing::info!("rayx: rejoined the head");
    }

    /// The head is gone for good for this node: a worker node stops; a
    /// driver goes on without it (cluster requests fail).
    fn give_up(&self, cause: &str) {
        if self.role == Role::Node {
            tracing::warn!("rayx: lost the head ({cause}); this node stops");
            if let Some(h) = self.host() {
                h.stop();
            }
        } else {
            tracing::warn!("rayx: lost the head ({cause}); cluster requests fail from now on");
        }
    }

    /// Every ask waiting for the head's answer fails with `error`.
    fn fail_asks(&self, error: impl Fn() -> Error) {
        for (_, tx) in self.asks.lock().drain() {
            let _ = tx.send(Err(error()));
        }
    }

    /// This node's first join is over, with its link to the head or
    /// without one: asks that waited for it go on.
    fn first_join_over(&self, link: Option<Arc<Link>>) {
        {
            let mut slot = self.head_link.lock();
            if link.is_some() {
                *slot = link;
            }
            self.joining.store(false, Ordering::Relaxed);
        }
        // After the lock: a waiter saw the change, or is parked for this.
        self.head_linked.notify_all();
    }

    fn head_lost(&self) -> Error {
        Error::ClusterUnreachable {
            address: "the head".into(),
            cause: "this node lost its link to the head".into(),
        }
    }

    fn report(&self) -> Report {
        Report {
            load: self.core.run_queue.load() as u32,
            actors: self.host().map_or(0, |h| h.live_actors()),
            memory: self.core.table.usage(),
        }
    }

    // ---- actors ---------------------------------------------------------------

    /// Starts an actor on `node` (placed there by the head) and waits until it
    /// started.
    pub fn create_actor(self: &Arc<Self>, node: NodeId, create: ActorCreate) -> Result<(), Error> {
        if node == self.me.id {
            return self
                .host()
                .ok_or(Error::ShutDown)?
                .create_actor(create, None);
        }
        let key = actor_key(create.actor);
        let actor = create.actor;
        let (tx, rx) = sync_channel(1);
        self.creates.lock().insert(key, (node, tx));
        if !self.send_to(node, Msg::CreateActor(create)) {
            self.creates.lock().remove(&key);
            return Err(Error::NodeDied {
                node: node.to_string(),
                cause: "it is not a live node of the cluster".into(),
            });
        }
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(r) => r,
            Err(_) => {
                self.creates.lock().remove(&key);
                // Its creation may still be on its way (the node lives and
                // its link is down): the kill follows it, so no actor starts
                // there that nobody has a handle to.
                self.send_to(
                    node,
                    Msg::KillActor {
                        actor,
                        no_restart: true,
                    },
                );
                Err(Error::NodeDied {
                    node: node.to_string(),
                    cause: format!("it did not start the actor within {REQUEST_TIMEOUT:?}"),
                })
            }
        }
    }

    /// Where a handle decoded here reaches `actor`, last known on `node`:
    /// where it was started again, else `node` while it lives — or while its
    /// death's news of where its actors went is still to come (calls wait
    /// for it, as calls made before do). Why not, if the actor is gone for
    /// good or `node` is no node this one knows.
    pub fn reach_actor(&self, actor: ActorId, node: NodeId) -> Result<NodeId, String> {
        match self.moved.lock().get(&actor) {
            Some(Moved::To(n)) => return Ok(*n),
            Some(Moved::Gone(cause)) => return Err(cause.clone()),
            None => {}
        }
        if node == self.me.id {
            return Ok(node);
        }
        match self.peers.lock().get(&node) {
            Some(p) if p.alive || p.restarting.contains(&actor) => Ok(node),
            Some(_) => Err(format!("its node {node} died")),
            None => Err(format!("its node {node} is not a node of the cluster")),
        }
    }

    /// The head declared `node` dead: `actors` of it start again elsewhere.
    fn restarting_from(&self, node: NodeId, actors: Vec<ActorId>) {
        if let Some(p) = self.peers.lock().get_mut(&node) {
            p.restarting = actors;
        }
    }

    /// The node an actor handle for `node` should reach: the actor's new
    /// node if it was started again elsewhere.
    pub fn actor_node(&self, actor: ActorId, node: NodeId) -> NodeId {
        match self.moved.lock().get(&actor) {
            Some(Moved::To(n)) => *n,
            _ => node,
        }
    }

    /// Sends a call to an actor on `node` (or where it moved); `reply` is
    /// completed with its reply.
    pub fn call_actor(self: &Arc<Self>, node: NodeId, call: ActorCall, reply: Arc<Slot>) {
        let object = reply.id();
        let actor = call.actor;
        self.flush_outbox();
        let gone = {
            // Sent under the calls lock: a move that sends interrupted calls
            // again (under it too) cannot be overtaken by a later call.
            let mut calls = self.calls.lock();
            let node = match self.moved.lock().get(&actor) {
                Some(Moved::Gone(cause)) => Err(cause.clone()),
                Some(Moved::To(n)) => Ok(*n),
                None => Ok(node),
            };
            match node {
                Err(cause) => Some((reply, cause)),
                // It was started again on this node: into its mailbox here.
                Ok(node) if node == self.me.id => {
                    drop(calls);
                    self.call_here(call, reply);
                    None
                }
                Ok(node) => {
                    let sent = self.send_now(node, Msg::Call(call.clone()));
                    calls.insert(
                        object,
                        RemoteCall {
                            slot: reply,
                            node,
                            call,
                            attempts: 0,
                            sent,
                            // Its node is dead, the actor's fate not yet
                            // known here: the head says where it went (the
                            // call goes there, in order) or that it is gone;
                            // the sweep bounds the wait.
                            lost: (!sent).then(std::time::Instant::now),
                        },
                    );
                    None
                }
            }
        };
        // Completed outside the lock: a completion may run code that calls.
        if let Some((slot, cause)) = gone {
            slot.complete(Err(Error::ActorDied {
                actor: actor.to_string(),
                cause,
            }));
        }
    }

    /// A call to an actor that was started again on this node (a handle made
    /// while it lived elsewhere): into its mailbox, its reply completed here.
    fn call_here(self: &Arc<Self>, call: ActorCall, reply: Arc<Slot>) {
        let result = match self.host() {
            Some(h) => h.call_actor(call, reply.clone()),
            None => Err(Error::ShutDown),
        };
        if let Err(e) = result {
            reply.complete(Err(e));
        }
    }

    /// The head says where an actor of a dead node went (or that it is
    /// gone): calls interrupted by the death go there again, in the order
    /// they were made, within the actor's `max_task_retries`; the rest fail.
    fn on_move(
        self: &Arc<Self>,
        actor: ActorId,
        to: Option<NodeId>,
        died: NodeId,
        cause: &str,
        retries: crate::messages::Retries,
    ) {
        self.flush_outbox();
        let mut failed = Vec::new();
        // Calls that go again to this node, in order (after the lock: a
        // failing call completes its reply, which may run code that calls).
        let mut here = Vec::new();
        let let_go = {
            let mut calls = self.calls.lock();
            let moved = match to {
                Some(to) => Moved::To(to),
                None => Moved::Gone(cause.to_string()),
            };
            // Under the holds' lock, which orders what this node sends about
            // its holds (see `hold_actor`): its count goes where the actor
            // went before any hold or release taken after it.
            let let_go = {
                let holding = self.holding.lock();
                self.moved.lock().insert(actor, moved);
                let holds = holding.get(&actor).map_or(0, Holds::count);
                match to {
                    Some(to) if to == self.me.id => {
                        self.host().and_then(|h| h.holds_moved(actor, to, holds))
                    }
                    Some(to) => {
                        self.send_now(to, Msg::HoldsMoved { actor, holds });
                        None
                    }
                    None => None,
                }
            };
            // The calls interrupted by the death: on the node that died, or
            // lost on an earlier move's target that died too. Gone for good:
            // all of its calls.
            let mut ids: Vec<ObjectId> = calls
                .iter()
                .filter(|(_, c)| {
                    c.call.actor == actor
                        && match to {
                            Some(to) => c.node != to && (c.node == died || c.lost.is_some()),
                            None => true,
                        }
                })
                .map(|(id, _)| *id)
                .collect();
            ids.sort_by_key(|id| id.seq);
            for id in ids {
                let c = calls.get_mut(&id).expect("listed");
                // Only a call that went to a node that died may have run.
                c.attempts += u64::from(c.sent);
                c.sent = true;
                match to {
                    Some(to) if to == self.me.id && retries.allows(c.attempts) => {
                        here.extend(calls.remove(&id).map(|c| (c.call, c.slot)));
                    }
                    Some(to) if retries.allows(c.attempts) => {
                        c.node = to;
                        c.lost = None;
                        let again = Msg::Call(c.call.clone());
                        if !self.send_now(to, again) {
                            failed.extend(calls.remove(&id).map(|c| (c, "its new node is gone too".to_string())));
                        }
                    }
                    Some(_) => failed.extend(calls.remove(&id).map(|c| {
                        (c, format!("{cause}; the call was sent there before (it may have run) and max_task_retries ({retries:?}) is used up"))
                    })),
                    None => failed.extend(calls.remove(&id).map(|c| (c, cause.to_string()))),
                }
            }
            let_go
        };
        // An actor the count here let go stops after the locks (its stop
        // fails what it had queued, and may run code that calls).
        self.let_go(let_go);
        for (call, slot) in here {
            self.call_here(call, slot);
        }
        // Failed outside the lock, where their messages go too (a message's
        // `Drop` may call an actor), before their callers learn it.
        for (RemoteCall { slot, call, .. }, why) in failed {
            drop(call);
            slot.complete(Err(Error::ActorDied {
                actor: actor.to_string(),
                cause: why,
            }));
        }
    }

    /// Fails calls whose node died and whose fate nobody told: after the
    /// request timeout, if the head reported no move.
    fn sweep_lost_calls(&self) {
        let now = std::time::Instant::now();
        let lost: Vec<(ObjectId, NodeId, Duration)> = self
            .calls
            .lock()
            .iter()
            .filter_map(|(id, c)| c.lost.map(|t| (*id, c.node, now - t)))
            .collect();
        if lost.is_empty() {
            return;
        }
        let alive = self.live_peers();
        let mut failed = Vec::new();
        {
            let mut calls = self.calls.lock();
            for (id, node, waited) in lost {
                let why = if !alive.contains(&node) && waited > REQUEST_TIMEOUT {
                    format!("its node {node} died and the head reported no restart")
                } else {
                    continue;
                };
                failed.extend(calls.remove(&id).map(|c| (c, why)));
            }
        }
        // Outside the lock, as in `on_move`.
        for (RemoteCall { slot, call, .. }, why) in failed {
            let actor = call.actor;
            drop(call);
            slot.complete(Err(Error::ActorDied {
                actor: actor.to_string(),
                cause: why,
            }));
        }
    }

    /// An actor of this node died for good: the head frees its name.
    pub fn actor_gone(&self, actor: ActorId) {
        if let Some(head) = &self.head {
            let _ = head.ask(Ask::ActorGone { actor }, self.report());
            return;
        }
        if let Some(l) = self.head_link.lock().clone() {
            // Nobody waits for the answer (request 0).
            l.send(Msg::Ask {
                id: 0,
                ask: Ask::ActorGone { actor },
            });
        }
    }

    /// This node takes a hold on an actor on `node` (`hold`), or lets one
    /// go. A handle's hold waits (off the network thread) until `node` has
    /// counted it, so that whoever sent the handle here may drop its own at
    /// once: the actor never sees a moment with no holder. The creator's
    /// hold was counted when the actor started: taking it only notes it.
    ///
    /// Its message leaves under the holds' lock, as a move's count of them
    /// does (`on_move`): where the actor went, what this node says of its
    /// holds arrives in the order it took them, so a hold or release sent
    /// before the count (to a node it knew as the actor's from a handle
    /// that said so) is in the count, and one sent after is not.
    pub fn hold_actor(self: &Arc<Self>, node: NodeId, actor: ActorId, by: Holder, hold: bool) {
        if (by, hold) == (Holder::Creator, true) {
            // Counted where it started: only noted.
            self.holding.lock().entry(actor).or_default().creator = true;
            return;
        }
        let on_net = ON_NET_THREAD.with(|n| n.get());
        // Borrows queued earlier go first, flushed before the lock: a borrow
        // that cannot go fails its slot, whose dependents may let go of
        // handles (which come here).
        self.flush_outbox();
        let mut waiting = None;
        let let_go = {
            let mut holding = self.holding.lock();
            let h = holding.entry(actor).or_default();
            match (by, hold) {
                (Holder::Creator, held) => h.creator = held,
                (Holder::Handle, true) => h.handles += 1,
                (Holder::Handle, false) => h.handles = h.handles.saturating_sub(1),
            }
            if h.count() == 0 {
                holding.remove(&actor);
            }
            let node = self.actor_node(actor, node);
            match (by, hold) {
                // Started again on this node: counted here.
                _ if node == self.me.id => self.host().and_then(|h| {
                    if hold {
                        h.hold_actor(actor, node);
                        None
                    } else {
                        h.release_actor(Some(actor), node)
                    }
                }),
                (_, false) => {
                    self.send_now(node, Msg::ReleaseActor { actor });
                    None
                }
                // On the network thread the ack could not be read while
                // waiting for it.
                (_, true) if on_net => {
                    self.send_now(node, Msg::HoldActor { actor, ack: 0 });
                    None
                }
                (_, true) => {
                    let ack = self.next_request.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = sync_channel(1);
                    self.acks.lock().insert(ack, (node, tx));
                    if self.send_now(node, Msg::HoldActor { actor, ack }) {
                        waiting = Some((node, ack, rx));
                    } else {
                        self.acks.lock().remove(&ack);
                    }
                    None
                }
            }
        };
        // Outside the lock: an actor let go here stops (running user code),
        // and the ack comes from the network thread.
        self.let_go(let_go);
        if let Some((node, ack, rx)) = waiting {
            if rx.recv_timeout(REQUEST_TIMEOUT).is_err() {
                self.acks.lock().remove(&ack);
                tracing::warn!("rayx: {node} did not count a hold of {actor} in time");
            }
        }
    }

    /// The other nodes this node knows, each with whether it is alive: the
    /// live ones and the dead it remembers.
    pub fn peers_known(&self) -> Vec<(NodeId, bool)> {
        self.peers
            .lock()
            .iter()
            .map(|(id, p)| (*id, p.alive))
            .collect()
    }

    /// Pulls under way that have taken in some of their bytes.
    pub fn pulls_landing(&self) -> usize {
        self.pulls.landing()
    }

    /// Pulls that went again after their link failed while their holder
    /// lived (see `pull_retrying`).
    pub fn pulls_again(&self) -> u64 {
        self.pulls_again.load(Ordering::Relaxed)
    }

    /// Pulls that went on from the byte an attempt whose link broke had
    /// reached, and the bytes kept now for such attempts.
    pub fn pulls_resumed(&self) -> (u64, usize) {
        (self.pulls.resumed(), self.pulls.kept_bytes())
    }

    /// Breaks this node's bulk links as a connection reset would (for
    /// tests): their pulls go again on new ones. How many were open.
    pub fn reset_bulk_links(&self) -> usize {
        let open: Vec<Arc<Link>> = self
            .peers
            .lock()
            .values()
            .filter_map(|p| p.bulk.clone())
            .collect();
        for l in &open {
            l.abort();
        }
        open.len()
    }

    /// Breaks every link of this node to its peers (not to the head), as a
    /// network blip would, and this node has noticed it by the return (for
    /// tests: work placed next sees those peers unreachable). How many were
    /// open.
    pub fn reset_peer_links(self: &Arc<Self>) -> usize {
        let (open, lost): (Vec<Arc<Link>>, Vec<NodeId>) = {
            let mut peers = self.peers.lock();
            let open = peers.values().flat_map(Peer::links).cloned().collect();
            let lost = peers
                .iter_mut()
                .filter_map(|(id, p)| {
                    let had = p.control.take().is_some() | !p.spare.is_empty();
                    p.spare.clear();
                    had.then_some(*id)
                })
                .collect();
            (open, lost)
        };
        for l in &open {
            l.abort();
        }
        for node in lost {
            self.link_lost(node, "reset for a test");
        }
        open.len()
    }

    /// The network thread's lingers so far (see `linger`): begun, and paid
    /// (the next control message came while it polled).
    pub fn lingers(&self) -> (u64, u64) {
        (
            self.lingers_begun.load(Ordering::Relaxed),
            self.lingers_paid.load(Ordering::Relaxed),
        )
    }

    /// Kills (or restarts) an actor on `node`.
    pub fn kill_actor(self: &Arc<Self>, node: NodeId, actor: ActorId, no_restart: bool) {
        let node = self.actor_node(actor, node);
        if node == self.me.id {
            // Started again on this node.
            if let Some(h) = self.host() {
                h.kill_actor(actor, no_restart);
            }
            return;
        }
        self.send_to(node, Msg::KillActor { actor, no_restart });
    }

    // ---- objects --------------------------------------------------------------

    /// A local slot for another node's object: this node becomes a borrower,
    /// and the owner sends the value when it is ready.
    pub fn borrow(self: &Arc<Self>, id: ObjectId) -> Result<Arc<Slot>, Error> {
        if let Some(slot) = self.core.table.lookup(id) {
            return Ok(slot);
        }
        let owner_alive = self.peers.lock().get(&id.node).map(|p| p.alive);
        match owner_alive {
            None => Err(Error::OwnerUnknown {
                id: id.to_string(),
                owner: id.node.to_string(),
            }),
            Some(false) => Err(Error::OwnerDied { id: id.to_string() }),
            Some(true) => {
                let mut borrowed = self.borrowed.lock();
                if let Some(slot) = borrowed.get(&id).and_then(Weak::upgrade) {
                    return Ok(slot);
                }
                let slot = self.core.table.new_borrowed(id);
                borrowed.insert(id, Arc::downgrade(&slot));
                drop(borrowed);
                self.post(id.node, Msg::Borrow { object: id });
                Ok(slot)
            }
        }
    }

    /// A borrowed slot's last local ref went: tell its owner. Each borrowed
    /// slot sent one `Borrow`, so each sends one `Release` (a new slot for the
    /// same object, made meanwhile, sent its own).
    fn unborrow(self: &Arc<Self>, id: ObjectId) {
        {
            let mut borrowed = self.borrowed.lock();
            if borrowed.get(&id).is_some_and(|w| w.strong_count() == 0) {
                borrowed.remove(&id);
            }
        }
        self.post(id.node, Msg::Release { object: id });
    }

    /// How a value of this node travels to a peer: inline when small, else
    /// held here (for a task's result, until the owner frees it) and pulled.
    fn payload(&self, object: ObjectId, value: Value, hold: bool) -> Payload {
        let size = value.size() as u64;
        if size as usize <= self.core.config.inline_threshold {
            return Payload::Inline(value);
        }
        if hold {
            self.held.lock().insert(
                object,
                Held {
                    value,
                    pulled: false,
                    refs: false,
                },
            );
        }
        Payload::At {
            node: self.me.id,
            size,
        }
    }

    /// Pulls `object` from `node` and hands the value to `done`.
    fn pull(self: &Arc<Self>, node: NodeId, object: ObjectId, size: u64, done: transfer::PullDone) {
        let link = self.peers.lock().get(&node).and_then(|p| p.bulk.clone());
        match link.filter(|l| !l.is_closed()) {
            Some(l) => self.pulls.start(&l, object, size, done),
            None => {
                // Open the bulk link first; the pull starts when it is up.
                let (tx, rx) = tokio::sync::oneshot::channel::<Arc<Link>>();
                self.waiting_bulk(node, tx);
                let me = self.clone();
                self.net.spawn(async move {
                    match rx.await {
                        Ok(l) => me.pulls.start(&l, object, size, done),
                        Err(_) => done(Err(Error::NodeDied {
                            node: node.to_string(),
                            cause: "its bulk link could not be opened".into(),
                        })),
                    }
                });
            }
        }
    }

    fn waiting_bulk(self: &Arc<Self>, node: NodeId, tx: tokio::sync::oneshot::Sender<Arc<Link>>) {
        let mut peers = self.peers.lock();
        let Some(peer) = peers.get_mut(&node).filter(|p| p.alive) else {
            return;
        };
        if let Some(l) = peer.bulk.clone().filter(|l| !l.is_closed()) {
            let _ = tx.send(l);
            return;
        }
        let address = peer.info.address.clone();
        drop(peers);
        let weak = Arc::downgrade(self);
        self.net.spawn(async move {
            if let Some(l) = open_bulk(weak, node, address).await {
                let _ = tx.send(l);
            }
        });
    }

    // ---- incoming ---------------------------------------------------------------

    fn on_msg(self: &Arc<Self>, link: &Arc<Link>, msg: Msg) {
        let from = link.peer.id;
        match msg {
            Msg::NodeJoined(info) => self.add_peer(info, true),
            Msg::NodeLeft { node, cause, .. } if node == self.me.id => {
                self.leave_head(&format!("it declared this node dead ({cause})"));
            }
            Msg::NodeLeft {
                node,
                cause,
                restarting,
            } => {
                self.restarting_from(node, restarting);
                self.peer_lost(node, &cause);
            }
            // From the head, or from the node itself (a node speaks for
            // itself only).
            Msg::NodeDraining { node } if link.lane == Lane::Join || node == from => {
                self.peer_draining(node)
            }
            Msg::NodeDraining { .. } => {}
            Msg::Heartbeat(report) => {
                if let Some(head) = &self.head {
                    head.report(from, report);
                }
            }
            // The head speaks for the groups.
            Msg::GroupState(info) if link.lane == Lane::Join && self.head.is_none() => {
                self.group_news(vec![info], Some(link))
            }
            Msg::GroupState(_) => {}
            Msg::GroupReserved { group, version } => {
                if let Some(head) = &self.head {
                    head.group_reserved(from, group, version);
                }
            }
            Msg::Stop => {
                if let Some(h) = self.host() {
                    h.stop();
                }
            }
            Msg::Drain { timeout_ms } if link.lane == Lane::Join && self.role == Role::Node => {
                let grace = Duration::from_millis(timeout_ms);
                tracing::info!("rayx: the head told this node to drain (within {grace:?})");
                let me = self.clone();
                // Not on the network thread: the drain asks the head, and waits.
                std::thread::spawn(move || {
                    let left = me.drain(grace);
                    if !left.is_empty() {
                        tracing::warn!("rayx: the drain ran out of time with {left}");
                    }
                    if let Some(h) = me.host() {
                        h.stop();
                    }
                });
            }
            Msg::Drain { .. } => {}
            Msg::Ask { id, ask } => {
                let stop = matches!(ask, Ask::StopCluster);
                // A node speaks for itself only.
                let ask = match ask {
                    Ask::Leaving { .. } => Ask::Leaving { node: from },
                    Ask::Draining { .. } => Ask::Draining { node: from },
                    Ask::JobFinished { .. } => Ask::JobFinished { driver: from },
                    // A node creates groups under its own ids only.
                    Ask::CreateGroup { info, .. } if info.id.node != from => {
                        link.send(Msg::Answer {
                            id,
                            answer: Err(Error::InvalidArgument(format!(
                                "node {from} asked to create placement group {}, whose id is \
                                 another node's",
                                info.id
                            ))),
                        });
                        return;
                    }
                    ask => ask,
                };
                let leaving = matches!(
                    ask,
                    Ask::Leaving { .. } | Ask::Draining { .. } | Ask::JobFinished { .. }
                );
                let answer = match &self.head {
                    Some(_) => self.ask(ask),
                    None => Err(Error::InvalidArgument("this node is not the head".into())),
                };
                link.send(Msg::Answer { id, answer });
                if leaving && self.head.is_some() {
                    // The head told the others; its own node is told here.
                    self.peer_draining(from);
                }
                if stop && self.head.is_some() {
                    if let Some(h) = self.host() {
                        h.stop();
                    }
                }
            }
            Msg::Answer { id, answer } => {
                if let Some(tx) = self.asks.lock().remove(&id) {
                    let _ = tx.send(answer);
                }
            }
            Msg::RunTask { spec, held } => self.run_task(link, spec, &held),
            Msg::TaskDone {
                object,
                result,
                load,
            } => self.task_done(from, object, result, load),
            Msg::CreateActor(create) => {
                // Off the network thread: the constructor's argument may hold
                // handles, whose holds wait for their nodes' answers.
                let me = self.clone();
                let link = link.clone();
                self.net.spawn_blocking(move || {
                    // A blocking thread may wait for answers the network
                    // thread reads.
                    ON_NET_THREAD.with(|n| n.set(false));
                    let actor = create.actor;
                    let result = if link.lane == Lane::Join {
                        // A restart the head asked for.
                        me.restart_here(create)
                    } else {
                        match me.host() {
                            Some(h) => h.create_actor(create, None),
                            None => Err(Error::ShutDown),
                        }
                    };
                    me.reply(&link, Msg::ActorCreated { actor, result });
                });
            }
            // A restart the head asked for (on the join lane): never a
            // creation this node waits for, though the actor is the same.
            Msg::ActorCreated { actor, result } if link.lane == Lane::Join => {
                self.actor_restarted(actor, result)
            }
            Msg::ActorCreated { actor, result } => {
                if let Some((_, tx)) = self.creates.lock().remove(&actor_key(actor)) {
                    let _ = tx.send(result);
                }
            }
            Msg::ActorMoved {
                actor,
                node,
                died,
                cause,
                retries,
            } => self.on_move(actor, node, died, &cause, retries),
            Msg::Call(call) => self.run_call(link, call),
            Msg::CallDone { object, result } => {
                let call = self.calls.lock().remove(&object);
                match (call, result) {
                    (Some(c), result) => self.complete_from(&c.slot, c.node, result),
                    // Answered after the call was given up on (its link was
                    // lost, or its actor moved): a reply held for it may go.
                    (None, Ok(Payload::At { node, .. })) => {
                        self.send_to(node, Msg::Free { object });
                    }
                    (None, _) => {}
                }
            }
            Msg::Contains { object } => {
                let slot = match self.tasks.lock().get(&object) {
                    Some(f) => Some(f.slot.clone()),
                    None => self.calls.lock().get(&object).map(|c| c.slot.clone()),
                };
                match slot {
                    Some(s) => s.tell_on_drop(from),
                    // Gone already: the sender may let go at once.
                    None => self.reply(link, Msg::Free { object }),
                }
            }
            Msg::KillActor { actor, no_restart } => {
                if let Some(h) = self.host() {
                    h.kill_actor(actor, no_restart);
                }
            }
            Msg::HoldActor { actor, ack } => {
                if let Some(h) = self.host() {
                    h.hold_actor(actor, from);
                }
                if ack != 0 {
                    self.reply(link, Msg::HoldAck { ack });
                }
            }
            Msg::HoldsMoved { actor, holds } => {
                if let Some(h) = self.host() {
                    self.let_go(h.holds_moved(actor, from, holds));
                }
            }
            Msg::Sync { id } => {
                // Everything the peer sent before it was handled (in order).
                self.send_now(from, Msg::Synced { id });
            }
            Msg::Synced { id } if id & DRAIN_SYNC != 0 => {
                self.drain_syncs.lock().remove(&id);
            }
            Msg::Synced { id } => {
                let mut unsent = Vec::new();
                self.barrier
                    .synced(from, id, &mut self.control(&mut unsent));
                drop(unsent);
            }
            Msg::HoldAck { ack } => {
                if let Some((_, tx)) = self.acks.lock().remove(&ack) {
                    let _ = tx.send(Ok(()));
                }
            }
            Msg::ReleaseActor { actor } => {
                if let Some(h) = self.host() {
                    self.let_go(h.release_actor(Some(actor), from));
                }
            }
            Msg::Borrow { object } => self.lend(from, object),
            Msg::Fetch { object } => self.send_value(from, object),
            Msg::Release { object } => self.unlend(from, object, 1),
            Msg::ObjectReady { object, result } => {
                let slot = self.borrowed.lock().get(&object).and_then(Weak::upgrade);
                if let Some(slot) = slot {
                    self.complete_from(&slot, object.node, result);
                }
            }
            Msg::Pulled { object } => {
                if let Some(h) = self.held.lock().get_mut(&object) {
                    h.pulled = true;
                }
            }
            Msg::Free { object } => {
                // Dropped after the lock: a value may run user code as it goes.
                let held = self.held.lock().remove(&object);
                drop(held);
                let pins = self.contained.lock().remove(&object);
                drop(pins);
            }
            Msg::Pull {
                object,
                offset,
                len,
            } => self.serve_pull(link, object, offset, len),
            Msg::Chunk {
                object,
                offset,
                total,
                data,
            } => self.pulls.on_chunk(link, object, offset, total, data),
            Msg::PullFailed { object, error } => self.pulls.on_failed(object, error),
            Msg::Hello(_)
            | Msg::Welcome { .. }
            | Msg::Challenge { .. }
            | Msg::Proof { .. }
            | Msg::Refused { .. } => {
                link.close();
                self.gate
                    .rejections
                    .count("handshake message after the handshake");
            }
        }
    }

    /// Completes `slot` with a peer's result: inline, or pulled from its holder.
    fn complete_from(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        _from: NodeId,
        result: Result<Payload, Error>,
    ) {
        match result {
            Ok(Payload::Inline(v)) => slot.complete(Ok(v)),
            Err(e) => slot.complete(Err(e)),
            Ok(Payload::At { node, size }) => {
                if !slot.is_borrowed() && node != slot.id().node {
                    // A call's reply held for us on the actor's node (a lent
                    // value is served by its owner): its holder keeps it, and
                    // the refs in it, until the reply's ref goes — the pulled
                    // copy is still encoded, and the refs inside are borrowed
                    // only when it is read.
                    slot.tell_on_drop(node);
                }
                let target = slot.clone();
                let id = slot.id();
                // Pulled from its owner, which died meanwhile: the read fails
                // as a borrower's read of a dead owner's object does.
                let from_owner = slot.is_borrowed() && node == id.node;
                self.pull_retrying(
                    node,
                    id,
                    size,
                    std::time::Instant::now(),
                    Box::new(move |r| {
                        target.complete(match r {
                            Err(Error::NodeDied { .. }) if from_owner => {
                                Err(Error::OwnerDied { id: id.to_string() })
                            }
                            r => r,
                        })
                    }),
                );
            }
        }
    }

    /// Runs a task a peer owns; its result goes back as `TaskDone`. Its
    /// arguments that the peer says it `held` are pulled from it at once.
    fn run_task(self: &Arc<Self>, link: &Arc<Link>, mut spec: TaskSpec, held: &[(ObjectId, u64)]) {
        let object = spec.task_id.return_id();
        let fail = |e: Error| {
            self.reply(
                link,
                Msg::TaskDone {
                    object,
                    result: Err(e),
                    load: 0,
                },
            );
        };
        if !self.core.functions.contains(&spec.function) {
            return fail(Error::FunctionNotRegistered {
                name: spec.function.to_string(),
            });
        }
        let mut pins = Vec::new();
        for arg in &spec.args {
            if let Arg::Ref(id) = arg {
                match self.borrow(*id) {
                    Ok(slot) => {
                        // Only the owner's word on its own objects counts (it
                        // lists only values too large to go inline: a size of
                        // 0 is no word); the fetch is this pull (none if one
                        // began already).
                        let size = held
                            .iter()
                            .find(|&&(h, size)| h == *id && size > 0 && h.node == link.peer.id)
                            .map(|&(_, size)| size);
                        if let Some(size) = size.filter(|_| slot.take_fetch()) {
                            let at = Payload::At {
                                node: id.node,
                                size,
                            };
                            self.complete_from(&slot, id.node, Ok(at));
                        }
                        pins.push(slot)
                    }
                    Err(e) => {
                        return fail(Error::dependency_failed(spec.display_name().to_string(), e))
                    }
                }
            }
        }
        let ret = self.core.table.new_pending(None);
        spec.task_id = TaskId(ret.id());
        // Placed here by its owner: it runs here (a retry too), never spilled on.
        spec.options.scheduling = Scheduling::NodeAffinity {
            node: self.me.id,
            soft: false,
        };
        spec.options.num_cpus = 0.0;
        // Whose work it is: the submitter's, or whoever it ran its task for.
        spec.options.owner = Some(spec.options.owner.unwrap_or(object.node));
        self.core.table.submit_task(ret.clone(), spec, pins, false);
        self.tasks_for_peers.fetch_add(1, Ordering::Relaxed);
        self.wait_for(
            ret,
            Reply::Task {
                link: link.clone(),
                object,
            },
        );
    }

    /// Runs a call a peer made to a local actor; its reply goes back as `CallDone`.
    fn run_call(self: &Arc<Self>, link: &Arc<Link>, mut call: ActorCall) {
        let object = call.reply_to;
        let reply = self.core.table.new_pending(Some(call.actor));
        call.reply_to = reply.id();
        let result = match self.host() {
            Some(h) => h.call_actor(call, reply.clone()),
            None => Err(Error::ShutDown),
        };
        if let Err(e) = result {
            self.reply(
                link,
                Msg::CallDone {
                    object,
                    result: Err(e),
                },
            );
            return;
        }
        self.wait_for(
            reply,
            Reply::Call {
                link: link.clone(),
                object,
            },
        );
    }

    /// A message this node queued on `link` was not sent (alone over the
    /// frame limit, or not encodable: see [`Inbound::not_sent`]). Whoever
    /// waits for its answer hears why, at once: a request of this node fails
    /// with `InvalidArgument`, and an answer to a peer goes again with its
    /// error's texts cut (or, for a value too large, the reason in its place).
    fn not_sent(self: &Arc<Self>, link: &Arc<Link>, mut msg: Msg, why: NotSent) {
        let too_large = |what: &str| match &why {
            NotSent::TooLarge(reason) => Error::InvalidArgument(format!(
                "{what}: {reason}; pass large data as an ObjectRef (rt.put) instead"
            )),
            NotSent::Unencodable(reason) => Error::Serialization(format!("{what}: {reason}")),
        };
        // An answer to a peer: its texts cut (a value too large, the reason
        // in its place), it goes again.
        let cut = |e: &mut Error| e.shorten(ERROR_TEXT);
        let answer = match &mut msg {
            Msg::TaskDone { result, .. }
            | Msg::CallDone { result, .. }
            | Msg::ObjectReady { result, .. } => {
                match result {
                    Err(e) => cut(e),
                    Ok(_) => *result = Err(too_large("the value")),
                }
                true
            }
            Msg::Answer { answer, .. } => {
                match answer {
                    Err(e) => cut(e),
                    Ok(_) => *answer = Err(too_large("the answer")),
                }
                true
            }
            Msg::ActorCreated { result, .. } => {
                if let Err(e) = result {
                    cut(e);
                }
                true
            }
            Msg::PullFailed { error, .. } => {
                cut(error);
                true
            }
            Msg::ActorMoved { cause, .. } | Msg::NodeLeft { cause, .. } => {
                crate::error::shorten_text(cause, ERROR_TEXT);
                true
            }
            _ => false,
        };
        if answer {
            link.send(msg);
            return;
        }
        // A request of this node: whoever waits for its answer fails.
        match msg {
            Msg::Call(call) => {
                let waiting = self.calls.lock().remove(&call.reply_to);
                if let Some(c) = waiting {
                    let what = format!("the message of `{}` to actor {}", call.method, call.actor);
                    c.slot.complete(Err(too_large(&what)));
                }
            }
            Msg::RunTask { spec, .. } => {
                let flight = self.tasks.lock().remove(&spec.task_id.return_id());
                if let Some(f) = flight {
                    if let Some(p) = self.peers.lock().get_mut(&f.node) {
                        p.inflight = p.inflight.saturating_sub(1);
                    }
                    let what = format!("the arguments of task `{}`", spec.display_name());
                    drop(f.job);
                    f.slot.complete(Err(too_large(&what)));
                }
            }
            Msg::CreateActor(create) => {
                let error = too_large(&format!("the arguments of actor {}", create.actor));
                if link.lane == Lane::Join {
                    // A restart the head asked for.
                    self.actor_restarted(create.actor, Err(error));
                } else if let Some((_, tx)) = self.creates.lock().remove(&actor_key(create.actor)) {
                    let _ = tx.send(Err(error));
                }
            }
            Msg::Ask { id, ask } => {
                if let Some(tx) = self.asks.lock().remove(&id) {
                    let what = match &ask {
                        Ask::PlaceActor { actor, .. } => format!("the arguments of actor {actor}"),
                        _ => "the request to the head".into(),
                    };
                    let _ = tx.send(Err(too_large(&what)));
                }
            }
            // The rest carry nothing a user made large; the writer logged it.
            _ => {}
        }
    }

    /// A peer borrows a local object: keep it until it releases it.
    fn lend(self: &Arc<Self>, to: NodeId, object: ObjectId) {
        let Some(slot) = self.core.table.lookup(object) else {
            // Gone: its fetch (if it comes) is answered with the error.
            return;
        };
        let mut lent = self.lent.lock();
        let entry = lent.entry(object).or_insert_with(|| Lent {
            _slot: slot,
            by: HashMap::new(),
        });
        *entry.by.entry(to).or_default() += 1;
    }

    /// A borrower wants the value: sent when it is ready.
    fn send_value(self: &Arc<Self>, to: NodeId, object: ObjectId) {
        let Some(slot) = self.core.table.lookup(object) else {
            let error = if object.node == self.me.id {
                Error::ObjectLost {
                    id: object.to_string(),
                }
            } else {
                Error::OwnerUnknown {
                    id: object.to_string(),
                    owner: object.node.to_string(),
                }
            };
            self.send_to(
                to,
                Msg::ObjectReady {
                    object,
                    result: Err(error),
                },
            );
            return;
        };
        self.wait_for(slot, Reply::Lend { to, object });
    }

    fn unlend(&self, from: NodeId, object: ObjectId, n: u32) {
        let gone = {
            let mut lent = self.lent.lock();
            let Some(entry) = lent.get_mut(&object) else {
                return;
            };
            if let Some(count) = entry.by.get_mut(&from) {
                *count = count.saturating_sub(n);
                if *count == 0 {
                    entry.by.remove(&from);
                }
            }
            if entry.by.is_empty() {
                lent.remove(&object)
            } else {
                None
            }
        };
        // The slot may be the last ref: dropped outside the lock.
        drop(gone);
    }

    /// Calls back (on the network thread) when `slot` is done.
    fn wait_for(self: &Arc<Self>, slot: Arc<Slot>, reply: Reply) {
        let waiting = Arc::new(Waiting {
            slot: slot.clone(),
            reply,
            cluster: Arc::downgrade(self),
        });
        let waker = Waker::from(waiting.clone());
        if slot.register(&waker).is_none() {
            self.done.push(waiting);
            self.wake.notify_one();
        }
    }

    fn finish(self: &Arc<Self>, w: Arc<Waiting>) {
        // The borrows the work made reach their owners before its result:
        // `reply` (and `send_to`, for a lent value) flush them first.
        let result = match w.slot.try_get() {
            Some(r) => r,
            None => return,
        };
        let result = match (&w.reply, result) {
            (Reply::Task { link, object } | Reply::Call { link, object }, Ok(v)) => {
                Ok(self.encode_result(link, *object, v))
            }
            (_, other) => other,
        };
        match &w.reply {
            Reply::Task { link, object } => {
                let result = result.map(|v| self.payload(*object, v, true));
                let load = self.core.run_queue.load() as u32;
                self.reply(
                    link,
                    Msg::TaskDone {
                        object: *object,
                        result,
                        load,
                    },
                );
                self.tasks_for_peers.fetch_sub(1, Ordering::Relaxed);
            }
            Reply::Call { link, object } => {
                let result = result.map(|v| self.payload(*object, v, true));
                self.reply(
                    link,
                    Msg::CallDone {
                        object: *object,
                        result,
                    },
                );
            }
            Reply::Lend { to, object } => {
                // The owner serves a large value from its own table.
                let result = result.map(|v| self.payload(*object, v, false));
                self.send_to(
                    *to,
                    Msg::ObjectReady {
                        object: *object,
                        result,
                    },
                );
            }
        }
    }

    /// A small result is encoded here, collecting the refs and handles in it:
    /// if there are any, they are kept until the result's owner frees it
    /// (`Contains` tells it to say so), so a ref a task returns outlives the
    /// task. A large one is held whole until pulled (and keeps them so).
    fn encode_result(self: &Arc<Self>, link: &Arc<Link>, object: ObjectId, v: Value) -> Value {
        if !matches!(v, Value::Local { .. }) || v.size() > self.core.config.inline_threshold {
            return v;
        }
        let (encoded, pins) = crate::value::collect_pins(|| v.to_bytes());
        let Ok(bytes) = encoded else {
            return v;
        };
        if !pins.is_empty() {
            self.contained.lock().insert(object, pins);
            self.reply(link, Msg::Contains { object });
        }
        Value::Encoded(bytes)
    }

    /// Serves one chunk of a held or owned value, encoding it once (off the
    /// network thread) per transfer.
    fn serve_pull(self: &Arc<Self>, link: &Arc<Link>, object: ObjectId, offset: u64, len: u64) {
        match self.serving.pull(link, object, offset, len) {
            transfer::Serve::Chunks(chunks) => {
                for chunk in chunks {
                    link.send(chunk);
                }
            }
            transfer::Serve::Wait => {}
            transfer::Serve::Encode => {
                let value = self
                    .held
                    .lock()
                    .get(&object)
                    .map(|h| h.value.clone())
                    .or_else(|| {
                        self.core
                            .table
                            .lookup(object)
                            .and_then(|s| s.try_get())
                            .and_then(Result::ok)
                    });
                let Some(value) = value else {
                    self.serving.encoded(
                        object,
                        Err(Error::ObjectLost {
                            id: object.to_string(),
                        }),
                    );
                    return;
                };
                if value.parts_are_shared() {
                    // Bytes already, or a byte buffer shared as it is.
                    self.serving.encoded(object, value.to_parts());
                    return;
                }
                let me = self.clone();
                self.net.spawn(async move {
                    // Encoding a large value takes a while: off the network
                    // thread. The refs in it are seen as it is: a held value
                    // that holds refs keeps them for its reader (a drain
                    // waits for it to be let go).
                    let encoded = tokio::task::spawn_blocking(move || {
                        let (encoded, pins) = crate::value::collect_pins(|| value.to_parts());
                        (encoded, !pins.is_empty())
                    })
                    .await;
                    let encoded = match encoded {
                        Ok((encoded, refs)) => {
                            if refs {
                                if let Some(h) = me.held.lock().get_mut(&object) {
                                    h.refs = true;
                                }
                            }
                            encoded
                        }
                        Err(e) => Err(Error::Serialization(e.to_string())),
                    };
                    me.serving.encoded(object, encoded);
                });
            }
        }
    }

    // ---- the owner's side of tasks -----------------------------------------------

    fn task_done(
        self: &Arc<Self>,
        from: NodeId,
        object: ObjectId,
        result: Result<Payload, Error>,
        load: u32,
    ) {
        let flight = self.tasks.lock().remove(&object);
        if let Some(p) = self.peers.lock().get_mut(&from) {
            p.reported = load;
            if flight.is_some() {
                p.inflight = p.inflight.saturating_sub(1);
            }
        }
        let Some(flight) = flight else {
            if let Ok(Payload::At { node, .. }) = result {
                self.send_to(node, Msg::Free { object });
            }
            return;
        };
        match result {
            Ok(Payload::At { node, size }) if node == from => {
                // Large: it stays where it ran until it is wanted (as in
                // Ray); its arguments are let go, as for any task that ran —
                // its lineage (kept with its slot) can make it again if that
                // node dies first. Its holder frees it when the ref goes.
                drop(flight.job);
                flight.slot.tell_on_drop(node);
                self.remote.lock().insert(object, HeldAt { node, size });
                flight.slot.held_elsewhere();
                if self.peers.lock().get(&node).is_some_and(|p| p.draining) {
                    // Its holder leaves: pulled now, before it goes.
                    self.fetch_held(object);
                }
            }
            result => {
                // The task ran: its arguments are unpinned before the result
                // wakes anyone.
                drop(flight.job);
                self.complete_from(&flight.slot, from, result);
            }
        }
    }

    /// A result of this node's task is wanted: pulled from the node that
    /// holds it, or made again if that node died.
    fn fetch_held(self: &Arc<Self>, object: ObjectId) {
        let Some(held) = self.remote.lock().remove(&object) else {
            return;
        };
        self.fetch_held_from(object, held);
    }

    /// Until when a peer whose link was lost gets no new work.
    fn unreachable_until(&self) -> std::time::Instant {
        std::time::Instant::now() + self.health.limit() + Duration::from_secs(1)
    }

    fn is_alive(&self, node: NodeId) -> bool {
        self.peers.lock().get(&node).is_some_and(|p| p.alive)
    }

    /// Pulls a held result; one whose holder died makes the result again.
    fn fetch_held_from(self: &Arc<Self>, object: ObjectId, held: HeldAt) {
        let Some(slot) = self.core.table.lookup(object) else {
            // Nobody wants it any more: its holder may let go.
            self.send_to(held.node, Msg::Free { object });
            return;
        };
        let node = held.node;
        if !self.is_alive(node) {
            return self.rebuild(&slot, node);
        }
        let me = Arc::downgrade(self);
        let wanted = Arc::downgrade(&slot);
        drop(slot);
        self.pull_retrying(
            node,
            object,
            held.size,
            std::time::Instant::now(),
            Box::new(move |r| {
                // Dropped meanwhile: its holder was told when it went.
                let (Some(slot), Some(me)) = (wanted.upgrade(), me.upgrade()) else {
                    return;
                };
                match r {
                    Err(Error::NodeDied { .. }) => me.rebuild(&slot, node),
                    Err(e @ Error::ObjectFetchFailed { .. }) => {
                        me.send_to(node, Msg::Free { object });
                        slot.complete(Err(e));
                    }
                    // Its holder keeps it until the ref goes (the slot says
                    // so when dropped: `task_done` set `tell_on_drop`), not
                    // only until this pull: the value is still encoded here,
                    // and the refs inside it are borrowed only when it is
                    // read; freed there at once, they went before (as Ray
                    // pins a primary copy where it was made while its ref
                    // lives).
                    r => slot.complete(r),
                }
            }),
        );
    }

    /// Pulls `object` from `node`, again while `node` lives: a bulk link
    /// that closed or could not be opened (a connection reset, say) does not
    /// fail the read. Each attempt goes on from the byte the last one
    /// reached (`Pulls::link_closed` keeps it). `done` hears the value; `NodeDied` once `node` is declared dead;
    /// `ObjectFetchFailed` if it lives but no attempt succeeded within
    /// `REQUEST_TIMEOUT` of `since` (a wall-clock budget: links that break
    /// faster than a whole pull takes exhaust it).
    fn pull_retrying(
        self: &Arc<Self>,
        node: NodeId,
        object: ObjectId,
        size: u64,
        since: std::time::Instant,
        done: transfer::PullDone,
    ) {
        let me = Arc::downgrade(self);
        self.pull(
            node,
            object,
            size,
            Box::new(move |r| {
                let (why, me) = match (r, me.upgrade()) {
                    (Err(Error::NodeDied { cause, .. }), Some(me)) if me.is_alive(node) => {
                        (cause, me)
                    }
                    (Ok(value), Some(me)) => {
                        // The holder is told the value is here: a value it
                        // holds for this node no longer keeps its drain (one
                        // it owns ignores this).
                        me.send_to(node, Msg::Pulled { object });
                        return done(Ok(value));
                    }
                    (r, _) => return done(r),
                };
                if since.elapsed() >= REQUEST_TIMEOUT {
                    me.pulls.forget_kept(node, Some(object));
                    return done(Err(Error::ObjectFetchFailed {
                        id: object.to_string(),
                        cause: format!(
                            "node {node} holds it and lives, and it could not be pulled \
                             from there within {REQUEST_TIMEOUT:?}: its connection broke \
                             or could not be opened (last: {why})"
                        ),
                    }));
                }
                me.pulls_again.fetch_add(1, Ordering::Relaxed);
                let again = Arc::downgrade(&me);
                me.net.spawn(async move {
                    tokio::time::sleep(PULL_AGAIN).await;
                    match again.upgrade() {
                        Some(me) => me.pull_retrying(node, object, size, since, done),
                        None => done(Err(Error::ShutDown)),
                    }
                });
            }),
        );
    }

    /// The only copy of a result was on `node`, which died: the object is
    /// lost, and rebuilt from its lineage on its next read (its task runs
    /// again, within `max_retries`), or fails `ObjectReconstructionFailed`.
    fn rebuild(&self, slot: &Arc<Slot>, node: NodeId) {
        slot.tell_on_drop(NodeId(0));
        if let Some(why) = slot.why_unrebuildable() {
            // Said now, naming the node, rather than on the next read.
            slot.complete(Err(Error::ObjectReconstructionFailed {
                id: slot.id().to_string(),
                cause: format!("its only copy was on node {node}, which died, and {why}"),
            }));
            return;
        }
        tracing::debug!("rayx: {} was lost with node {node}", slot.id());
        slot.lost_elsewhere();
    }

    /// Where an object's value is: this node once it is here, the node that
    /// holds a result of this node's task not read yet, `None` while it is
    /// pending, failed or elsewhere unknown.
    pub fn location(&self, slot: &Slot) -> Option<NodeId> {
        if slot.is_done() {
            return (!slot.has_failed()).then_some(self.me.id);
        }
        let holder = self.remote.lock().get(&slot.id()).map(|h| h.node);
        holder.filter(|n| self.is_alive(*n))
    }

    /// A peer's control links are all closed, or one could not be opened,
    /// while it lives (a reset, a middlebox, a refused connection): nothing
    /// is lost — its session keeps what was not acknowledged and what
    /// waits — and a link is opened again, at once and then after a growing
    /// pause (to 2 s), until one is up or the head declares it dead. No new
    /// work is placed there meanwhile.
    fn link_lost(self: &Arc<Self>, node: NodeId, cause: &str) {
        let mut peers = self.peers.lock();
        let Some(p) = peers.get_mut(&node).filter(|p| p.alive) else {
            return;
        };
        if p.linked() {
            return;
        }
        p.unreachable_until = Some(self.unreachable_until());
        if p.connecting || !p.member {
            // One is coming; or a stranger's: what waits for it goes if it
            // comes back (or opens again when something new is sent).
            return;
        }
        tracing::debug!("rayx: the control link to {node} was lost ({cause}); opening another");
        let delay = p.reconnect;
        p.reconnect = (delay * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
        self.open_control(node, p, delay);
    }

    /// `node` leaves in order (the head said so): no new work goes there,
    /// and the results of this node's tasks it holds are pulled now, before
    /// it goes (a result it makes later is pulled when it is done).
    fn peer_draining(self: &Arc<Self>, node: NodeId) {
        if let Some(p) = self.peers.lock().get_mut(&node) {
            p.draining = true;
        }
        let held: Vec<ObjectId> = self
            .remote
            .lock()
            .iter()
            .filter(|(_, h)| h.node == node)
            .map(|(id, _)| *id)
            .collect();
        for object in held {
            self.fetch_held(object);
        }
    }

    /// Leaves the cluster in order (Ray's drain), up to `grace`: the head
    /// places no new work here and tells every node so; this node tells
    /// each peer too, with a `Sync` behind, so that once each has answered,
    /// every task it placed here before it knew has arrived. Those tasks
    /// finish and are answered, the owners of the results this node holds
    /// pull them, and the values it sent that hold refs are read or let go
    /// (the refs inside are borrowed only when read: until then this node's
    /// pins keep them). Returns what was still under way at the end; the
    /// caller then shuts the node down (its actors restart elsewhere
    /// without using up a restart, as in Ray's preemption).
    pub fn drain(self: &Arc<Self>, grace: Duration) -> Undrained {
        self.draining.store(true, Ordering::Relaxed);
        if self.head.is_none() {
            let _ = self.ask_within(Ask::Draining { node: self.me.id }, GOODBYE);
        }
        let peers: Vec<NodeId> = {
            let peers = self.peers.lock();
            peers
                .values()
                .filter(|p| p.alive)
                .map(|p| p.info.id)
                .collect()
        };
        for peer in peers {
            let id = DRAIN_SYNC | self.next_request.fetch_add(1, Ordering::Relaxed);
            self.drain_syncs.lock().insert(id, peer);
            let told = self.send_now(peer, Msg::NodeDraining { node: self.me.id })
                && self.send_now(peer, Msg::Sync { id });
            if !told {
                self.drain_syncs.lock().remove(&id);
            }
        }
        let deadline = std::time::Instant::now() + grace;
        loop {
            // A peer that died answers no more.
            self.drain_syncs.lock().retain(|_, n| self.is_alive(*n));
            let unsynced = self.drain_syncs.lock().len();
            let pins = self.contained.lock();
            let held = self.held.lock();
            let left = Undrained {
                tasks: self.tasks_for_peers.load(Ordering::Relaxed),
                unpulled: held
                    .iter()
                    .filter(|(id, h)| !h.pulled && !h.refs && !pins.contains_key(id))
                    .count(),
                pinned: pins.len() + held.values().filter(|h| h.refs).count(),
            };
            drop((held, pins));
            if (unsynced == 0 && left.is_empty()) || std::time::Instant::now() >= deadline {
                return left;
            }
            // Rare and bounded: looked at again every few milliseconds.
            std::thread::park_timeout(DRAIN_POLL);
        }
    }

    /// `node` just died: remembered among the dead peers, of whom the
    /// oldest beyond `dead_kept` are forgotten (unknown, as if never seen).
    fn forget_the_oldest_dead(&self, node: NodeId, peers: &mut IdMap<NodeId, Peer>) {
        let mut dead = self.dead_peers.lock();
        dead.push_back(node);
        while dead.len() > self.dead_kept {
            let Some(old) = dead.pop_front() else { break };
            if peers.get(&old).is_some_and(|p| !p.alive) {
                peers.remove(&old);
            }
        }
    }

    /// The head says a peer died: the tasks and calls it ran are retried or
    /// failed, its borrows end, and refs it owns fail.
    fn peer_lost(self: &Arc<Self>, node: NodeId, cause: &str) {
        // What was queued for it, dropped after the peers' lock: a message
        // may hold the last reference to a value whose `Drop` sends (a
        // handle lets go of its actor) or runs user code.
        let mut queued = None;
        let (control, bulk) = {
            let mut peers = self.peers.lock();
            let mut died = false;
            let links = match peers.get_mut(&node) {
                Some(p) => {
                    if p.alive {
                        p.alive = false;
                        died = true;
                        self.members.notify_all();
                        tracing::warn!("rayx: node {node} died: {cause}");
                        self.core
                            .events
                            .publish(crate::events::SupervisionEvent::NodeDied {
                                node: node.to_string(),
                                cause: cause.to_string(),
                            });
                    }
                    p.inflight = 0;
                    queued = p.session.end();
                    let spare = std::mem::take(&mut p.spare);
                    (
                        p.control.take().into_iter().chain(spare).collect(),
                        p.bulk.take(),
                    )
                }
                None => (Vec::new(), None),
            };
            if died {
                self.forget_the_oldest_dead(node, &mut peers);
            }
            links
        };
        drop(queued);
        // Answers waiting for its confirmation of borrows go (what it owned
        // is lost with it).
        let mut unsent = Vec::new();
        self.barrier.lost(node, &mut self.control(&mut unsent));
        drop(unsent);
        // Its holds waiting for an ack are answered now: the messages waiting
        // for it went with its session.
        // So are actors being created there.
        for pending in [&self.acks, &self.creates] {
            pending.lock().retain(|_, (n, tx)| {
                if *n == node {
                    let _ = tx.send(Err(Error::NodeDied {
                        node: node.to_string(),
                        cause: cause.to_string(),
                    }));
                }
                *n != node
            });
        }
        for l in control.iter().chain(bulk.iter()) {
            // A silent peer never closes its end: stop reading it too.
            l.abort();
            self.pulls.link_closed(
                l,
                Error::NodeDied {
                    node: node.to_string(),
                    cause: cause.to_string(),
                },
                false,
            );
        }
        self.pulls.forget_kept(node, None);
        let lost: Vec<InFlight> = {
            let mut tasks = self.tasks.lock();
            let ids: Vec<ObjectId> = tasks
                .iter()
                .filter(|(_, f)| f.node == node)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| tasks.remove(id)).collect()
        };
        for InFlight { slot, mut job, .. } in lost {
            // A system failure, as a worker's death is (Ray's): retried within
            // max_retries, then WorkerCrashed (no retries allowed) or
            // RetriesExhausted (every attempt's cause), naming the node.
            let why = format!("node {node} died: {cause}");
            if job.spec.options.may_retry(job.failures.len() + 1) && !slot.is_cancelled() {
                job.failures.push(why);
                self.core.table.resubmit(slot, job);
            } else {
                let task = job.spec.display_name().to_string();
                let error = if job.failures.is_empty() {
                    Error::WorkerCrashed { task, cause: why }
                } else {
                    job.failures.push(why);
                    Error::RetriesExhausted {
                        task,
                        attempts: std::mem::take(&mut job.failures),
                    }
                };
                drop(job);
                slot.complete(Err(error));
            }
        }
        {
            // Their fate is unknown: the head tells where the actor went (or
            // that it is gone).
            let now = std::time::Instant::now();
            for c in self.calls.lock().values_mut() {
                if c.node == node && c.lost.is_none() {
                    c.lost = Some(now);
                }
            }
        }
        let lent: Vec<ObjectId> = self
            .lent
            .lock()
            .iter()
            .filter(|(_, l)| l.by.contains_key(&node))
            .map(|(id, _)| *id)
            .collect();
        for id in lent {
            self.unlend(node, id, u32::MAX);
        }
        if let Some(h) = self.host() {
            self.let_go(h.release_actor(None, node));
        }
        // Results held for its pulls, and what its results refer to: it
        // will never pull or free them.
        // Dropped after their locks: values and the refs and handles they
        // pin may run user code as they go.
        let held: Vec<_> = self
            .held
            .lock()
            .extract_if(|id, _| id.node == node)
            .collect();
        let contained: Vec<_> = self
            .contained
            .lock()
            .extract_if(|id, _| id.node == node)
            .collect();
        drop((held, contained));
        let owned: Vec<Arc<Slot>> = self
            .borrowed
            .lock()
            .iter()
            .filter(|(id, _)| id.node == node)
            .filter_map(|(_, w)| w.upgrade())
            .collect();
        for slot in owned {
            slot.complete(Err(Error::OwnerDied {
                id: slot.id().to_string(),
            }));
        }
    }

    /// Sends a task to `node`: its job (with pinned arguments) stays here until
    /// the peer reports back.
    fn send_task(self: &Arc<Self>, slot: &Arc<Slot>, node: NodeId) {
        let Some(mut job) = slot.take_job() else {
            return;
        };
        let threshold = self.core.config.inline_threshold;
        let mut spec = job.spec.clone();
        let mut held = Vec::new();
        for arg in spec.args.iter_mut() {
            match arg {
                Arg::Value(v) if v.size() > threshold => match self.core.table.put(v.clone()) {
                    Ok(s) => {
                        held.push((s.id(), v.size() as u64));
                        *arg = Arg::Ref(s.id());
                        job.pins.push(s);
                    }
                    Err(e) => {
                        drop(job);
                        slot.complete(Err(e));
                        return;
                    }
                },
                Arg::Ref(id) if id.node == self.me.id => {
                    let value = job
                        .pins
                        .iter()
                        .find(|p| p.id() == *id)
                        .and_then(|p| p.try_get())
                        .and_then(Result::ok);
                    match value {
                        Some(v) if v.size() <= threshold => *arg = Arg::Value(v),
                        Some(v) => held.push((*id, v.size() as u64)),
                        None => {}
                    }
                }
                _ => {}
            }
        }
        self.tasks.lock().insert(
            slot.id(),
            InFlight {
                slot: slot.clone(),
                job,
                node,
            },
        );
        if let Some(p) = self.peers.lock().get_mut(&node) {
            p.inflight += 1;
        }
        if !self.send_to(node, Msg::RunTask { spec, held }) {
            // Not alive: it died after the choice (its death retries this).
            self.peer_lost(node, "it is not a live node of the cluster");
        }
    }

    /// The head's news of placement groups (on the join link `from`; none
    /// on the head's own node): kept in this node's view; a group whose
    /// bundles this node holds is taken (the head hears so on the link the
    /// news came on: a node that has just joined may hear before its join is
    /// over), and a removed group's actors here are killed.
    fn group_news(self: &Arc<Self>, news: Vec<GroupInfo>, from: Option<&Arc<Link>>) {
        for info in news {
            let take = matches!(info.state, GroupState::Pending | GroupState::Rescheduling)
                && info.nodes.contains(&Some(self.me.id));
            let (group, version) = (info.id, info.version);
            let (actors, _) = self.core.groups.apply(info).finish();
            if let Some(link) = from.filter(|_| take) {
                self.reply(link, Msg::GroupReserved { group, version });
            }
            if let Some(h) = self.host().filter(|_| !actors.is_empty()) {
                for a in actors {
                    h.kill_actor(a, true);
                }
            }
        }
    }

    /// A handle brought news of a group this node had not heard of: what it
    /// carried stands until the head says whether the group lives (the
    /// handle may be older than its removal, which a node that joined later
    /// never heard of). Asked off the network thread.
    pub fn confirm_group(self: &Arc<Self>, hint: GroupInfo) {
        let me = self.clone();
        self.net.spawn_blocking(move || {
            ON_NET_THREAD.with(|n| n.set(false));
            // A head out of reach (a restart, a reset) is asked again, every
            // 10 s at most, until it answers or this node stops: work may
            // wait for the group meanwhile, and only the head knows whether
            // it lives.
            let mut pause = Duration::from_millis(100);
            let mut warned = false;
            let news = loop {
                match me.ask(Ask::GroupById { group: hint.id }) {
                    Ok(Answer::Group(g)) => break g,
                    Ok(_) => {
                        break GroupInfo {
                            state: GroupState::Removed,
                            version: u64::MAX,
                            ..hint
                        }
                    }
                    Err(Error::ShutDown) => return,
                    Err(e) => {
                        if pause >= CONFIRM_PAUSE && !std::mem::replace(&mut warned, true) {
                            tracing::warn!(
                                "rayx: cannot ask the head whether placement group {} lives \
                                 ({e}); asking again every {CONFIRM_PAUSE:?}",
                                hint.id
                            );
                        }
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(CONFIRM_PAUSE);
                    }
                }
            };
            me.group_news(vec![news], None);
        });
    }

    /// The candidates for work from this node: itself and its live peers
    /// (`reachable`: only those whose link did not just break).
    fn candidates(&self, reachable: bool) -> Vec<Candidate> {
        let now = std::time::Instant::now();
        let mut c = vec![Candidate {
            id: self.me.id,
            cpus: self.me.cpus,
            load: self.core.run_queue.load() as f64,
        }];
        let groups = &self.core.groups;
        let reserved = groups.any_reserved();
        c.extend(
            self.peers
                .lock()
                .values()
                .filter(|p| {
                    p.alive
                        && !p.draining
                        && (!reachable || p.unreachable_until.is_none_or(|t| t <= now))
                })
                .map(|p| Candidate {
                    id: p.info.id,
                    cpus: p.info.cpus,
                    load: p.reported.max(p.inflight) as f64,
                }),
        );
        if reserved {
            // What groups reserve is not for work outside them.
            for cand in &mut c {
                cand.cpus -= groups.reserved(cand.id).get(CPU).copied().unwrap_or(0.0);
            }
        }
        c
    }

    /// What `node` has free of its custom resources (none reserved by a
    /// group), if this node knows it.
    fn free_resources(&self, node: NodeId) -> Option<Resources> {
        let mut free = if node == self.me.id {
            self.me.resources.clone()
        } else {
            self.peers.lock().get(&node)?.info.resources.clone()
        };
        crate::groups::take(&mut free, &self.core.groups.reserved(node));
        Some(free)
    }

    /// Work that fits no reachable node but would fit a live one whose link
    /// broke a moment ago (a network blip, not a death) waits for it rather
    /// than fail `Unschedulable`: it is offered again every `PLACE_AGAIN`,
    /// and the link is opened again at once. False if no such node fits.
    fn wait_to_place(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        scheduling: Scheduling,
        cpus: f64,
        resources: &Resources,
    ) -> bool {
        let Ok(node) = self.place_among(&self.candidates(false), scheduling, cpus, resources)
        else {
            return false;
        };
        if node == self.me.id {
            return false;
        }
        {
            let mut peers = self.peers.lock();
            let Some(peer) = peers.get_mut(&node) else {
                return false;
            };
            if !peer.linked() && !peer.connecting {
                self.open_control(node, peer, Duration::ZERO);
            }
        }
        let me = Arc::downgrade(self);
        let slot = slot.clone();
        self.net.spawn(async move {
            tokio::time::sleep(PLACE_AGAIN).await;
            if let Some(me) = me.upgrade() {
                me.core.run_queue.dispatch(slot);
            }
        });
        true
    }

    /// Holds a task for a group whose bundle has no node now (it is placed
    /// again after its node died or drains): offered again once the group
    /// is created, as Ray's tasks wait for their group. False if the group
    /// is created, removed or unknown, or can never take the task.
    fn wait_for_group(
        &self,
        slot: &Arc<Slot>,
        scheduling: Scheduling,
        cpus: f64,
        resources: &Resources,
    ) -> bool {
        let Scheduling::PlacementGroup { group, bundle } = scheduling else {
            return false;
        };
        if !self.core.groups.waits(group, bundle, cpus, resources) {
            return false;
        }
        let Some(job) = slot.take_job() else {
            // Taken meanwhile (cancelled): nothing to hold.
            return true;
        };
        let name = job.spec.display_name().to_string();
        let table = self.core.table.clone();
        self.core
            .groups
            .hold(group, name, slot.clone(), move |held| {
                table.resubmit(held, job)
            });
        true
    }

    /// Chooses a node for an actor's or a task's needs (the head places
    /// actors; this is the tasks' own choice).
    pub fn place(
        &self,
        scheduling: Scheduling,
        cpus: f64,
        resources: &Resources,
    ) -> Result<NodeId, String> {
        let candidates = self.candidates(true);
        if self.draining.load(Ordering::Relaxed) && candidates.len() > 1 {
            // A node leaving in order places its work elsewhere if it can.
            let elsewhere = self.place_among(&candidates[1..], scheduling, cpus, resources);
            if elsewhere.is_ok() {
                return elsewhere;
            }
        }
        self.place_among(&candidates, scheduling, cpus, resources)
    }

    fn place_among(
        &self,
        candidates: &[Candidate],
        scheduling: Scheduling,
        cpus: f64,
        resources: &Resources,
    ) -> Result<NodeId, String> {
        if resources.is_empty() && !matches!(scheduling, Scheduling::PlacementGroup { .. }) {
            return place(candidates, self.me.id, scheduling, cpus, &self.spread);
        }
        place_work(
            candidates,
            self.me.id,
            scheduling,
            cpus,
            resources,
            &self.spread,
            |g| self.core.groups.get(g),
            |n| self.free_resources(n),
        )
    }
}

impl Spill for ClusterNode {
    fn offer(self: Arc<Self>, slot: &Arc<Slot>) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let Some((scheduling, cpus, resources, name)) = slot.peek_job(|j| {
            (
                j.spec.options.scheduling,
                j.spec.options.num_cpus,
                j.spec.options.resources.clone(),
                j.spec.display_name().to_string(),
            )
        }) else {
            return false;
        };
        if scheduling == Scheduling::Default && resources.is_empty() {
            // This node's CPUs, less what placement groups reserve here.
            let groups = &self.core.groups;
            let mine = match groups.any_reserved() {
                true => self.me.cpus - groups.reserved(self.me.id).get(CPU).copied().unwrap_or(0.0),
                false => self.me.cpus,
            };
            if cpus <= mine && mine > 0.0 {
                let load = self.core.run_queue.load() as f64;
                if load / mine < SPILL_THRESHOLD {
                    return false;
                }
            }
        }
        match self.place(scheduling, cpus, &resources) {
            Ok(node) if node == self.me.id => false,
            Ok(node) => {
                self.send_task(slot, node);
                true
            }
            Err(_) if self.wait_to_place(slot, scheduling, cpus, &resources) => true,
            Err(_) if self.wait_for_group(slot, scheduling, cpus, &resources) => true,
            Err(reason) => {
                if let Some(job) = slot.take_job() {
                    drop(job);
                    slot.complete(Err(Error::Unschedulable { task: name, reason }));
                }
                true
            }
        }
    }
}

fn actor_key(actor: ActorId) -> u64 {
    actor.seq ^ actor.node.0.rotate_left(17)
}

/// The handler of every link: a weak ref, so links never keep a node alive.
struct Handler(Weak<ClusterNode>);

impl Inbound for Handler {
    fn not_sent(&self, link: &Arc<Link>, msg: Msg, why: NotSent) {
        if let Some(c) = self.0.upgrade() {
            c.not_sent(link, msg, why);
        }
    }

    fn on_msgs(&self, link: &Arc<Link>, msgs: &mut std::vec::IntoIter<Msg>) {
        if let Some(c) = self.0.upgrade() {
            if link.lane == Lane::Join {
                match &c.head {
                    Some(head) => head.heard(link.peer.id),
                    None => c.heard_head(),
                }
            }
            if link.lane == Lane::Control {
                // Read on this (the network) thread only, by `linger`, which
                // runs after this call: counted first, so that a message
                // that panics (the rest come in another call) skips nothing.
                c.heard_count.fetch_add(1, Ordering::Relaxed);
                c.heard.notify_one();
            }
            for m in msgs {
                c.on_msg(link, m);
            }
        }
    }

    fn chunk_target(
        &self,
        link: &Link,
        object: ObjectId,
        offset: u64,
        total: u64,
        len: usize,
    ) -> Option<(Vec<u8>, usize)> {
        self.0
            .upgrade()?
            .pulls
            .lend(link, object, offset, total, len)
    }

    fn chunk_landed(&self, link: &Link, object: ObjectId, buf: Vec<u8>, len: usize) {
        if let Some(c) = self.0.upgrade() {
            c.pulls.landed(link, object, buf, len);
        }
    }

    fn on_close(&self, link: &Arc<Link>, reason: Option<&str>) {
        let Some(c) = self.0.upgrade() else { return };
        if c.closed.load(Ordering::Acquire) {
            return;
        }
        let node = link.peer.id;
        let cause = reason.map_or_else(
            || "its connection closed".to_string(),
            |r| format!("its connection was closed: {r}"),
        );
        match link.lane {
            Lane::Join => {
                if c.head.is_some() {
                    c.member_link_closed(link, cause);
                } else if c.head_link.lock().as_ref().map(|l| l.serial) == Some(link.serial) {
                    c.rejoin(cause);
                }
            }
            Lane::Control => {
                {
                    let mut peers = c.peers.lock();
                    if let Some(p) = peers.get_mut(&node) {
                        p.spare
                            .retain(|l| l.serial != link.serial && !l.is_closed());
                        if p.control.as_ref().is_some_and(|l| l.serial == link.serial) {
                            // A spare still open carries the session on.
                            p.control = p.spare.pop();
                        }
                    }
                }
                c.link_lost(node, &cause);
                let down = c.head.as_ref().and_then(|h| h.link_of(node));
                if let Some(join) = down.filter(|l| l.is_closed()) {
                    // A member between join links lost this one too: dead,
                    // or about to rejoin. The head looks again.
                    c.member_link_closed(&join, cause);
                }
            }
            Lane::Bulk => {
                c.serving.forget_ready();
                {
                    let mut peers = c.peers.lock();
                    if let Some(p) = peers.get_mut(&node) {
                        if p.bulk.as_ref().is_some_and(|l| l.serial == link.serial) {
                            p.bulk = None;
                        }
                    }
                }
                let lives = c.is_alive(node);
                c.pulls.link_closed(
                    link,
                    Error::NodeDied {
                        node: node.to_string(),
                        cause,
                    },
                    lives,
                );
            }
            Lane::Admin => {}
        }
    }
}

impl Admit for Handler {
    fn admit(&self, hello: &Hello) -> Result<(NodeInfo, Vec<NodeInfo>), String> {
        let c = self.0.upgrade().ok_or("the node is shutting down")?;
        match hello.lane {
            Lane::Join => match &c.head {
                Some(head) => Ok((c.me.clone(), head.check_join(hello)?)),
                None => Err("not the head: join the head's address".into()),
            },
            Lane::Admin => match &c.head {
                Some(_) => Ok((c.me.clone(), Vec::new())),
                None => Err("not the head: ask the head's address".into()),
            },
            Lane::Control | Lane::Bulk => {
                let dead = c.peers.lock().get(&hello.node.id).is_some_and(|p| !p.alive);
                if dead {
                    // Death is final: it may come back only as a new node.
                    return Err(format!(
                        "node {} was declared dead: it may rejoin only as a new node",
                        hello.node.id
                    ));
                }
                Ok((c.me.clone(), Vec::new()))
            }
        }
    }

    fn session(&self, hello: &Hello) -> Option<Arc<Session>> {
        let c = self.0.upgrade()?;
        match (hello.lane, &c.head) {
            (Lane::Join, Some(head)) => {
                return Some(head.session_for(hello.node.id, c.join_stale()))
            }
            (Lane::Control, _) => {}
            _ => return None,
        }
        c.add_peer(hello.node.clone(), false);
        let session = c
            .peers
            .lock()
            .get(&hello.node.id)
            .map(|p| p.session.clone());
        session
    }

    fn admitted(&self, link: &Arc<Link>, hello: Hello) {
        let Some(c) = self.0.upgrade() else {
            link.close();
            return;
        };
        match hello.lane {
            Lane::Join => {
                // In the head's table first: a node this node knows of can be
                // placed on.
                if let Some(head) = &c.head {
                    head.joined(link, hello.driver);
                }
                c.add_peer(hello.node.clone(), true);
                if link.is_closed() {
                    // Closed before it was the member's link: looked into now.
                    c.member_link_closed(link, "its connection closed".into());
                }
            }
            Lane::Control => {
                c.add_peer(hello.node.clone(), false);
                c.linked(hello.node.id, link.clone());
            }
            Lane::Bulk | Lane::Admin => {}
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, node: Weak<ClusterNode>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (a flood), say: back off a little
                // rather than spin on the error.
                tracing::warn!("rayx: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Some(c) = node.upgrade() else { return };
        let handler = Arc::new(Handler(node.clone()));
        tokio::spawn(link::serve(
            stream,
            handler.clone(),
            handler,
            c.gate.clone(),
        ));
    }
}

/// One attempt to join the head at `address` on a new join link. One
/// stalled on its way (a step of the handshake nobody answers) gives way to
/// the next within the time a join link may go unacknowledged — while the
/// head, which may count this node a member, still waits for it; a slow
/// connection that answers each step in that time goes on.
async fn join_once(
    node: &Weak<ClusterNode>,
    address: &str,
) -> Result<(Arc<Link>, Vec<NodeInfo>), link::Failed> {
    let Some(c) = node.upgrade() else {
        return Err(link::Failed {
            error: Error::ShutDown,
            failure: link::Failure::Other,
        });
    };
    let hello = c.hello(Lane::Join);
    let inbound: Arc<dyn Inbound> = Arc::new(Handler(node.clone()));
    let gate = c.gate.clone();
    let step = c.join_stale();
    drop(c);
    let session = head_session_of(node.clone());
    link::connect_within(address, hello, inbound, &gate, session, step).await
}

/// What a join link's handshake picks its session with: this node's with
/// the head that answered (see `ClusterNode::head_session`).
fn head_session_of(
    node: Weak<ClusterNode>,
) -> impl FnOnce(&NodeInfo) -> Option<Arc<Session>> + Send {
    move |head| node.upgrade().map(|c| c.head_session(head))
}

/// How long a node that stops waits for the head to hear its goodbye.
const GOODBYE: Duration = Duration::from_secs(1);

/// How often a drain looks whether its node's work is done.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// A value of this node held for its owner until it frees it.
struct Held {
    value: Value,
    /// The owner pulled it whole (it said so).
    pulled: bool,
    /// It holds refs, which it keeps for its reader until then (they are
    /// borrowed only when the pulled copy is read): seen as it is encoded.
    refs: bool,
}

/// What a drain left under way when its time ran out (see
/// [`ClusterNode::drain`]); lost with the node, as in a death.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Undrained {
    /// Tasks peers sent here, not answered.
    pub tasks: usize,
    /// Values held for their owners (results, replies), not pulled.
    pub unpulled: usize,
    /// Values sent whose refs inside this node still keeps for their readers.
    pub pinned: usize,
}

impl Undrained {
    /// Nothing was left.
    pub fn is_empty(&self) -> bool {
        *self == Undrained::default()
    }
}

impl std::fmt::Display for Undrained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tasks running, {} results not pulled, {} values holding refs not read",
            self.tasks, self.unpulled, self.pinned
        )
    }
}

/// Marks the ids of a drain's `Sync`s (a barrier's never reach it).
const DRAIN_SYNC: u64 = 1 << 63;

/// How often the head looks again at the address of a member whose join
/// link closed, while no look was conclusive.
const PROBE_AGAIN: Duration = Duration::from_millis(50);

/// The head's look at member `node`, whose join link `serial` closed (see
/// `ClusterNode::member_link_closed`): until that link is replaced or the
/// member dead, opens a control link to `address` — refused, it is dead;
/// opened, it lives (the link serves its session if none does, and its
/// closing looks again); anything else, again after [`PROBE_AGAIN`].
async fn probe(node: Weak<ClusterNode>, peer: NodeId, serial: u64, address: String, cause: String) {
    let still = |c: &ClusterNode| c.head.as_ref().and_then(|h| h.link_closed(peer, serial));
    loop {
        if node.upgrade().is_none_or(|c| still(&c).is_none()) {
            return;
        }
        let Some(opened) = connect_control(&node, peer, &address).await else {
            return;
        };
        let Some(c) = node.upgrade() else { return };
        match opened {
            Ok(l) => {
                let served = c.peers.lock().get(&peer).is_some_and(Peer::linked);
                if served {
                    l.close();
                } else {
                    c.linked(peer, l);
                }
                return;
            }
            Err(link::Failed {
                failure: link::Failure::NobodyListens,
                ..
            }) => {
                if still(&c).is_some() {
                    c.declare_dead(
                        peer,
                        &format!("{cause}, and nothing listens at its address"),
                    );
                }
                return;
            }
            Err(e) => tracing::debug!("rayx: {peer}'s join link closed; no clear answer: {e}"),
        }
        drop(c);
        tokio::time::sleep(PROBE_AGAIN).await;
    }
}

/// Connects a control link to `peer` at `address`, in its session; `None`
/// if it is no live peer (or this node is gone).
async fn connect_control(
    node: &Weak<ClusterNode>,
    peer: NodeId,
    address: &str,
) -> Option<Result<Arc<Link>, link::Failed>> {
    let c = node.upgrade()?;
    let session = c
        .peers
        .lock()
        .get(&peer)
        .filter(|p| p.alive)?
        .session
        .clone();
    let hello = c.hello(Lane::Control);
    let inbound: Arc<dyn Inbound> = Arc::new(Handler(node.clone()));
    let gate = c.gate.clone();
    drop(c);
    let opened = link::connect(address, hello, inbound, &gate, |_| Some(session)).await;
    Some(opened.map(|(l, _)| l))
}

/// Opens a control link to `peer`, in its session.
async fn open_link(node: Weak<ClusterNode>, peer: NodeId, address: String) {
    let Some(delay) = node.upgrade().map(|c| c.link_delay) else {
        return;
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Some(opened) = connect_control(&node, peer, &address).await else {
        return;
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let Some(c) = node.upgrade() else { return };
    match opened {
        Ok(l) => c.linked(peer, l),
        Err(e) => {
            tracing::warn!("rayx: cannot reach {peer} at {address}: {e}");
            if let Some(p) = c.peers.lock().get_mut(&peer) {
                p.connecting = false;
            }
            // Unless the peer's own link came up meanwhile (both opened one
            // at once), which serves the session.
            c.link_lost(peer, &e.to_string());
        }
    }
}

async fn open_bulk(node: Weak<ClusterNode>, peer: NodeId, address: String) -> Option<Arc<Link>> {
    let c = node.upgrade()?;
    let hello = c.hello(Lane::Bulk);
    let inbound: Arc<dyn Inbound> = Arc::new(Handler(node.clone()));
    let gate = c.gate.clone();
    drop(c);
    let (l, _) = link::connect(&address, hello, inbound, &gate, |_| None)
        .await
        .ok()?;
    let c = node.upgrade()?;
    let mut peers = c.peers.lock();
    let p = peers.get_mut(&peer)?;
    match p.bulk.clone().filter(|b| !b.is_closed()) {
        Some(existing) => {
            l.close();
            Some(existing)
        }
        None => {
            p.bulk = Some(l.clone());
            Some(l)
        }
    }
}

/// The network thread's linger (the spin policy's [`Site::Net`]): after a
/// control message came in, it keeps polling its sockets — a task that
/// yields, so the runtime polls them without sleeping — until the next one
/// comes, the budget runs out, or the node stops. Awake, it reads an answer
/// or a caller's next request without a wake-up, and what this node's
/// threads hand it to send needs none either. Between polls it offers its
/// core to other threads, and stops when one took it (the cores are busy).
///
/// [`Site::Net`]: crate::spin::Site::Net
async fn linger(node: Weak<ClusterNode>) {
    /// Ends a linger even if the runtime drops the task in the middle of one
    /// (shutdown): the node's count of lingering threads stays true. (A
    /// `Spin` borrows nothing, so whoever holds one across an await ends it
    /// on drop; the async actor's `Linger` does the same.)
    struct Lingering<'a>(&'a crate::spin::SpinPolicy, Option<crate::spin::Spin>);
    impl Lingering<'_> {
        fn expired(&self) -> bool {
            self.1.as_ref().is_none_or(crate::spin::Spin::expired)
        }
        fn end(&mut self, paid: bool) {
            if let Some(spin) = self.1.take() {
                self.0.end(spin, paid);
            }
        }
    }
    impl Drop for Lingering<'_> {
        fn drop(&mut self) {
            self.end(false);
        }
    }
    loop {
        let Some(c) = node.upgrade() else { return };
        c.heard.notified().await;
        let policy = c.core.run_queue.spin();
        let Some(spin) = policy.begin(Site::Net, false) else {
            continue;
        };
        let mut lingering = Lingering(policy, Some(spin));
        // Relaxed: counts for tests and diagnostics, publishing nothing.
        c.lingers_begun.fetch_add(1, Ordering::Relaxed);
        // Relaxed: a count only compared for change, on this thread.
        let seen = c.heard_count.load(Ordering::Relaxed);
        let mut paid = false;
        while !lingering.expired() && !c.closed.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
            if c.heard_count.load(Ordering::Relaxed) != seen {
                paid = true;
                break;
            }
            // Offer the core: what this waits for may be a worker here or a
            // thread of another process on this core. If someone took it,
            // the cores are busy: sleep, so that a message wakes this thread.
            let offered = std::time::Instant::now();
            std::thread::yield_now();
            if offered.elapsed() > crate::spin::CONTENDED {
                break;
            }
        }
        if paid {
            c.lingers_paid.fetch_add(1, Ordering::Relaxed);
        }
        lingering.end(paid);
    }
}

async fn drain_completions(node: Weak<ClusterNode>) {
    loop {
        let Some(c) = node.upgrade() else { return };
        while let Some(w) = c.done.pop() {
            c.finish(w);
        }
        // A push after the drain above left a permit: this returns at once.
        c.wake.notified().await;
    }
}

/// Asks the head at `address` as an admin client (`rayx status`, `rayx
/// stop`), without joining: fails within the handshake deadline if the head
/// cannot be reached.
pub fn admin_ask(
    address: &str,
    token: Option<&str>,
    tls: Option<&tls::TlsFiles>,
    ask: Ask,
) -> Result<Answer, Error> {
    struct Client(Mutex<Option<tokio::sync::oneshot::Sender<Result<Answer, Error>>>>);
    impl Inbound for Client {
        fn on_msgs(&self, _: &Arc<Link>, msgs: &mut std::vec::IntoIter<Msg>) {
            for m in msgs {
                if let Msg::Answer { answer, .. } = m {
                    if let Some(tx) = self.0.lock().take() {
                        let _ = tx.send(answer);
                    }
                }
            }
        }
        fn on_close(&self, _: &Arc<Link>, _: Option<&str>) {
            self.0.lock().take();
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Startup(e.to_string()))?;
    rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let hello = Hello {
            nonce: Default::default(),
            driver: false,
            version: wire::PROTOCOL_VERSION,
            lane: Lane::Admin,
            node: NodeInfo {
                id: NodeId::random(),
                address: String::new(),
                cpus: 0.0,
                head: false,
                resources: Default::default(),
            },
            registry: Vec::new(),
            member_of: None,
        };
        let client = Arc::new(Client(Mutex::new(Some(tx))));
        let tls = tls.map(tls::Tls::load).transpose()?;
        let gate = Gate::with_tls(token.map(auth::Token::from), Arc::default(), tls);
        let (link, _) = link::connect(address, hello, client, &gate, |_| None).await?;
        let stopping = matches!(ask, Ask::StopCluster);
        link.send(Msg::Ask { id: 1, ask });
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, rx).await;
        link.close();
        match answer {
            Ok(Ok(answer)) => answer,
            // A head told to stop may close before its answer is written.
            Ok(Err(_)) if stopping => Ok(Answer::Done),
            Ok(Err(_)) => Err(Error::ClusterUnreachable {
                address: address.to_string(),
                cause: "the head closed the connection without an answer".into(),
            }),
            Err(_) => Err(Error::ClusterUnreachable {
                address: address.to_string(),
                cause: format!("the head did not answer within {REQUEST_TIMEOUT:?}"),
            }),
        }
    })
}
