//! What crosses the wire between the processes of a cluster: the protocol's
//! version, its frame limits, and every message a node, the head or an admin
//! client sends. Engine messages ([`TaskSpec`], [`ActorCall`]) travel as they
//! are; values travel as their rmp-serde bytes.
//!
//! A frame is a 4-byte big-endian length and an rmp-serde array of messages
//! (tokio-util's length-delimited codec): many messages per frame, many frames
//! per write. Bytes that do not decode, an unknown message kind, a frame over
//! the limit or a wrong version close that one connection with a counted
//! reason ([`Rejections`]); nothing a peer sends can panic a node or make it
//! allocate more than a frame's limit.

use crate::error::Error;
use crate::groups::{GroupInfo, Resources};
use crate::ids::{ActorId, GroupId, NodeId, ObjectId};
use crate::messages::{ActorCall, Retries, Scheduling, TaskSpec};
use crate::object_table::MemoryUsage;
use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The protocol's version: a peer with another one is refused at its hello.
pub const PROTOCOL_VERSION: u32 = 9;
/// The largest frame accepted before a connection has authenticated (a
/// hello with its registry, a proof): a stranger cannot make a node buffer more.
pub const PREAUTH_FRAME: usize = 1 << 20;
/// The largest frame a control connection accepts (a batch of messages).
pub const MAX_CONTROL_FRAME: usize = 64 << 20;
/// The largest value the head's key-value store takes (Ray's internal KV is
/// for small things too): well under a message between nodes.
pub const MAX_KV_VALUE: usize = 32 << 20;
/// The longest name rayx takes: an actor's name or namespace, a key of the
/// key-value store.
pub const MAX_NAME: usize = 64 << 10;

/// `Err(InvalidArgument)` naming `what` when `len` bytes are over `max`.
pub fn check_len(what: &str, len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        return Err(Error::InvalidArgument(format!(
            "{what} is {len} bytes, over the limit of {max}"
        )));
    }
    Ok(())
}

/// `Err(InvalidArgument)` for an actor's name or namespace over
/// [`MAX_NAME`] bytes.
pub fn check_names(namespace: &str, name: &str) -> Result<(), Error> {
    check_len("an actor's namespace", namespace.len(), MAX_NAME)?;
    check_len("an actor's name", name.len(), MAX_NAME)
}

/// The bytes of one chunk of a large object on the bulk lane.
pub const CHUNK: usize = 4 << 20;
/// The largest frame a bulk connection accepts: one chunk and its header.
pub const MAX_BULK_FRAME: usize = CHUNK + (64 << 10);
/// Chunks of one pull in flight at once (the bound on bytes in flight).
pub const PULL_WINDOW: u64 = 16;

/// Which kind of connection a hello opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lane {
    /// A node joining the cluster (to the head): membership, heartbeats,
    /// requests to the head.
    Join,
    /// Engine traffic between two nodes: tasks, calls, results, borrows.
    Control,
    /// Chunks of large objects, so a transfer never delays a small message.
    Bulk,
    /// A tool asking the head (`rayx status`, `rayx stop`).
    Admin,
}

/// A node as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its id.
    pub id: NodeId,
    /// Where its node link listens (`host:port`).
    pub address: String,
    /// Its CPUs (tasks it runs at once).
    pub cpus: f64,
    /// Whether it hosts the head.
    pub head: bool,
    /// Its custom resources (Ray's `--resources`).
    #[serde(default)]
    pub resources: Resources,
}

/// The first message on every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u32,
    /// What the connection is for.
    pub lane: Lane,
    /// The sender, as the cluster will know it (admin clients send a dummy).
    pub node: NodeInfo,
    /// Names of the sender's remote functions and actor types (on `Join`).
    pub registry: Vec<String>,
    /// A fresh nonce for the listener's proof (see [`super::auth`]).
    pub nonce: serde_bytes::ByteBuf,
    /// A driver joining (on `Join`): its program is one of the cluster's jobs.
    #[serde(default)]
    pub driver: bool,
    /// On `Join`: the head this node was last a member of, if any (a
    /// rejoin). A head that does not know the node although it was its
    /// member declared it dead and forgot the death: it refuses it.
    #[serde(default)]
    pub member_of: Option<NodeId>,
}

/// A job: a driver's program, from its join to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's id: its driver's node.
    pub id: NodeId,
    /// Where its driver ran.
    pub address: String,
    /// When it began and, if it is over, ended (ms since the Unix epoch).
    pub started: u64,
    /// When it ended.
    pub ended: Option<u64>,
    /// How it is doing.
    pub state: JobState,
}

/// A job's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobState {
    /// Its driver is alive.
    Running,
    /// Its driver shut down in order.
    Finished,
    /// Its driver died (why).
    Failed(String),
}

/// What a node reports to the head with each heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Tasks queued or running there.
    pub load: u32,
    /// Live actors there.
    pub actors: u32,
    /// Its objects.
    pub memory: MemoryUsage,
}

/// A value in a reply: inline, or held by a node to pull it from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Payload {
    /// The value's bytes.
    Inline(Value),
    /// Too large to travel inline: pull `size` bytes from `node`.
    At {
        /// The node that holds it.
        node: NodeId,
        /// Its encoded size.
        size: u64,
    },
}

/// An actor to create on a node (placed there by the head).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorCreate {
    /// The id its creator minted.
    pub actor: ActorId,
    /// The actor type's registered name.
    pub type_name: String,
    /// The constructor's argument.
    pub args: Value,
    /// Its name and namespace, if named.
    pub name: Option<(String, String)>,
    /// Whether it lives on with no handle left.
    pub detached: bool,
    /// Restarts after crashes.
    pub max_restarts: Retries,
    /// Retries of calls interrupted by a crash.
    pub max_task_retries: Retries,
    /// Calls in flight at once (async actors).
    pub max_concurrency: Option<usize>,
    /// The placement group it was created in: it goes when the group does.
    #[serde(default)]
    pub group: Option<GroupId>,
}

/// A request to the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ask {
    /// Nodes, actors and objects, for `rayx status`.
    Status,
    /// Choose a node for an actor and reserve its name.
    PlaceActor {
        /// The actor's id.
        actor: ActorId,
        /// Its type, for `get_actor`'s type check.
        type_name: String,
        /// Its name and namespace, if named.
        name: Option<(String, String)>,
        /// Return an existing actor of that name instead of failing.
        get_if_exists: bool,
        /// CPUs it needs.
        cpus: f64,
        /// Custom resources it needs.
        #[serde(default)]
        resources: Resources,
        /// Where it may go.
        scheduling: Scheduling,
        /// The node asking (placed there when it fits and is least loaded).
        from: NodeId,
        /// How to start it again on another node if its node dies (an
        /// actor with restarts left and a registered constructor).
        restart: Option<Box<ActorCreate>>,
    },
    /// The actor did not start (its name is freed), or it died for good.
    ActorGone {
        /// The actor.
        actor: ActorId,
    },
    /// The live actor with this name.
    LookupActor {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Stores a value in the head's key-value store.
    KvPut {
        /// The key.
        key: String,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Overwrite an existing value.
        overwrite: bool,
    },
    /// Reads a value of the key-value store.
    KvGet {
        /// The key.
        key: String,
    },
    /// Deletes a key.
    KvDelete {
        /// The key.
        key: String,
    },
    /// Stops every node and the head (`rayx stop`).
    StopCluster,
    /// This driver's job is over (it shuts down in order).
    JobFinished {
        /// The driver's node.
        driver: NodeId,
    },
    /// This node stops in order: its join link's closing is its leaving.
    Leaving {
        /// The node.
        node: NodeId,
    },
    /// This node drains before it stops (Ray's drain): place no new work
    /// there. Its link's closing is still looked into (a reset is no leaving).
    Draining {
        /// The node.
        node: NodeId,
    },
    /// Creates a placement group (as given: pending, nowhere yet): the
    /// answer is the group as the head placed it, or is placing it.
    CreateGroup {
        /// The group.
        info: GroupInfo,
        /// The node it goes with (unless detached): the one that asked, or
        /// the one that submitted the task that asked.
        owner: NodeId,
    },
    /// The live placement group with this id (`Done` if it is not live).
    GroupById {
        /// The group.
        group: GroupId,
    },
    /// Removes a placement group (nothing if it is gone already).
    RemoveGroup {
        /// The group.
        group: GroupId,
    },
    /// The live placement group with this name.
    LookupGroup {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Drain `node` and stop it (`rayx drain`, `Runtime::drain_node`): the
    /// head tells it to, as SIGTERM would.
    DrainNode {
        /// The node.
        node: NodeId,
        /// How long it drains at most, in milliseconds.
        timeout_ms: u64,
    },
}

/// Where an actor is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorPlace {
    /// The actor.
    pub actor: ActorId,
    /// The node hosting it.
    pub node: NodeId,
    /// Its type's name.
    pub type_name: String,
}

/// The head's answer to an [`Ask`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    /// The cluster's state.
    Status(ClusterStatus),
    /// Start the actor on this node.
    Placed(NodeInfo),
    /// An actor of that name exists (with `get_if_exists`, or a lookup).
    Actor(ActorPlace),
    /// Done.
    Done,
    /// A stored value (or none).
    Value(Option<serde_bytes::ByteBuf>),
    /// Whether a put stored its value.
    Stored(bool),
    /// A placement group.
    Group(GroupInfo),
}

/// One node in `rayx status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub info: NodeInfo,
    /// Whether it is alive.
    pub alive: bool,
    /// Why it is dead, if it is.
    pub cause: Option<String>,
    /// Its last report.
    pub report: Report,
    /// It is leaving in order: no new work goes there.
    #[serde(default)]
    pub draining: bool,
}

/// The cluster's state as the head sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every node that joined, alive or dead.
    pub nodes: Vec<NodeStatus>,
    /// Named and placed actors.
    pub actors: Vec<(ActorPlace, Option<(String, String)>)>,
    /// Connections the head closed, by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Every job: the drivers' programs, running or over.
    #[serde(default)]
    pub jobs: Vec<JobInfo>,
    /// The live placement groups.
    #[serde(default)]
    pub groups: Vec<GroupInfo>,
}

/// Every message of the protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Msg {
    /// Opens a connection.
    Hello(Hello),
    /// Accepts a hello; from the head, with the cluster's live nodes.
    Welcome {
        /// The node that accepted.
        node: NodeInfo,
        /// The cluster's live nodes (from the head).
        cluster: Vec<NodeInfo>,
    },
    /// The listener's answer to a hello: its nonce, and its proof that it
    /// knows the cluster's token (none if it has no token).
    Challenge {
        /// A fresh nonce for the connector's proof.
        nonce: serde_bytes::ByteBuf,
        /// HMAC over both nonces.
        proof: Option<serde_bytes::ByteBuf>,
    },
    /// The connector's proof that it knows the token (none if it has none).
    Proof {
        /// HMAC over both nonces.
        proof: Option<serde_bytes::ByteBuf>,
    },
    /// Refuses a hello, saying why; the connection closes.
    Refused {
        /// Why.
        reason: String,
    },
    /// A node joined (head to nodes).
    NodeJoined(NodeInfo),
    /// A node left or died (head to nodes).
    NodeLeft {
        /// The node.
        node: NodeId,
        /// Why.
        cause: String,
        /// Its actors the head starts again elsewhere (where each went
        /// follows, in an `ActorMoved`); any other actor of it is gone.
        #[serde(default)]
        restarting: Vec<ActorId>,
    },
    /// A node is alive, with its load (node to head); the head's own
    /// heartbeat to each node carries its report too.
    Heartbeat(Report),
    /// Stop serving and exit (head to nodes).
    Stop,
    /// A request to the head.
    Ask {
        /// Matches the answer.
        id: u64,
        /// The request.
        ask: Ask,
    },
    /// The head's answer.
    Answer {
        /// The request's id.
        id: u64,
        /// The answer, or why not.
        answer: Result<Answer, Error>,
    },
    /// Run this task (its return object is the sender's).
    RunTask {
        /// The task.
        spec: TaskSpec,
        /// Arguments of the sender's, ready and too large to travel inline,
        /// with their sizes: pulled from the sender at once (no `Fetch`).
        held: Vec<(ObjectId, u64)>,
    },
    /// The result about to be reported holds refs or handles, which the
    /// sender keeps until it hears `Free` for the result.
    Contains {
        /// The result object.
        object: ObjectId,
    },
    /// A task sent with `RunTask` finished.
    TaskDone {
        /// Its return object.
        object: ObjectId,
        /// Its value, or its error.
        result: Result<Payload, Error>,
        /// Tasks queued or running on the sender now.
        load: u32,
    },
    /// Start an actor here.
    CreateActor(ActorCreate),
    /// The actor of a `CreateActor` started (or why not).
    ActorCreated {
        /// The actor.
        actor: ActorId,
        /// Whether it started.
        result: Result<(), Error>,
    },
    /// An actor's node died (head to nodes): it was started again on
    /// `node`, where calls interrupted by the death go again within
    /// `retries`; or (`node` none) it is gone for good, and they fail.
    ActorMoved {
        /// The actor.
        actor: ActorId,
        /// Its new node, if it was restarted.
        node: Option<NodeId>,
        /// The node that died.
        died: NodeId,
        /// Why it died (or why the actor could not be restarted).
        cause: String,
        /// Its `max_task_retries`.
        retries: Retries,
    },
    /// A placement group changed (head to nodes): each keeps the latest.
    GroupState(GroupInfo),
    /// This node took its bundles of a group as the head placed them in
    /// `version` (node to head).
    GroupReserved {
        /// The group.
        group: GroupId,
        /// The version of the group it took.
        version: u64,
    },
    /// Call an actor of this node.
    Call(ActorCall),
    /// A call sent with `Call` finished.
    CallDone {
        /// Its reply object.
        object: ObjectId,
        /// The reply, or its error.
        result: Result<Payload, Error>,
    },
    /// Kill an actor of this node.
    KillActor {
        /// The actor.
        actor: ActorId,
        /// Kill it for good (else restart it if its policy allows).
        no_restart: bool,
    },
    /// The sender holds handles to this actor of the receiver's: keep it.
    HoldActor {
        /// The actor.
        actor: ActorId,
        /// Answer with `HoldAck` carrying this (0: no answer wanted).
        ack: u64,
    },
    /// A `HoldActor` took effect.
    HoldAck {
        /// Its `ack`.
        ack: u64,
    },
    /// The sender dropped a handle to this actor (or its creator's
    /// handles, all of them).
    ReleaseActor {
        /// The actor.
        actor: ActorId,
    },
    /// This actor was started again on the receiver: the sender's holds on
    /// it, all of them (its handles, and its creator's if it made it).
    /// Every node the actor's move reaches sends one, holds or not: the
    /// restarted actor lives until each has been counted.
    HoldsMoved {
        /// The actor.
        actor: ActorId,
        /// The sender's holds.
        holds: u32,
    },
    /// The sender holds a reference to this object of the receiver's: keep it
    /// until the sender releases it.
    Borrow {
        /// The object.
        object: ObjectId,
    },
    /// The sender wants the value of an object it borrows: send it
    /// (`ObjectReady`) when it is ready.
    Fetch {
        /// The object.
        object: ObjectId,
    },
    /// The sender dropped its last reference to this object.
    Release {
        /// The object.
        object: ObjectId,
    },
    /// A borrowed object is ready.
    ObjectReady {
        /// The object.
        object: ObjectId,
        /// Its value, or its error.
        result: Result<Payload, Error>,
    },
    /// The owner has pulled this value: drop the copy held for it.
    Free {
        /// The object.
        object: ObjectId,
    },
    /// Send these bytes of an object (bulk lane).
    Pull {
        /// The object.
        object: ObjectId,
        /// From this byte.
        offset: u64,
        /// This many bytes at most.
        len: u64,
    },
    /// Bytes of an object (bulk lane).
    Chunk {
        /// The object.
        object: ObjectId,
        /// Where they start.
        offset: u64,
        /// The object's whole size.
        total: u64,
        /// The bytes (as a value: sent from a slice of the object's bytes
        /// without a copy, received as one buffer).
        data: Value,
    },
    /// A pull cannot be served.
    PullFailed {
        /// The object.
        object: ObjectId,
        /// Why.
        error: Error,
    },
    /// Answer `Synced` once every message the sender sent before this one
    /// has been handled (its borrows counted).
    Sync {
        /// Echoed in `Synced`.
        id: u64,
    },
    /// A `Sync` was reached.
    Synced {
        /// The `Sync`'s id.
        id: u64,
    },
    /// A node leaves in order (head to every node): place no new work
    /// there, and pull now what it holds for you.
    NodeDraining {
        /// The node.
        node: NodeId,
    },
    /// Drain, then stop (head to a worker node; see `Ask::DrainNode`).
    Drain {
        /// How long the drain lasts at most, in milliseconds.
        timeout_ms: u64,
    },
    /// The owner has a copy of a value held for it (it pulled it whole); the
    /// holder keeps its own until `Free`, but need not stay for it.
    Pulled {
        /// The object.
        object: ObjectId,
    },
}

/// Encodes messages as one frame's body.
pub fn encode(msgs: &[Msg]) -> Result<Vec<u8>, Error> {
    rmp_serde::to_vec(msgs).map_err(|e| Error::Serialization(e.to_string()))
}

/// Decodes a frame's body. Reads only within `frame` (no length a peer claims
/// makes it allocate past the frame), with rmp-serde's depth limit.
pub fn decode(frame: &[u8]) -> Result<Vec<Msg>, String> {
    rmp_serde::from_slice(frame).map_err(|e| format!("undecodable frame: {e}"))
}

/// Bad input from peers, by reason: connections closed for it, and messages
/// dropped because handling them tripped a bug (a panic). Counted, for
/// `rayx status` and tests.
#[derive(Default)]
pub struct Rejections {
    counts: parking_lot::Mutex<BTreeMap<String, u64>>,
    total: AtomicU64,
}

impl Rejections {
    /// Counts one connection closed (or message dropped) for `reason` (its
    /// kind: the text before the first `:`).
    pub fn count(&self, reason: &str) {
        let kind = reason
            .split(':')
            .next()
            .unwrap_or(reason)
            .trim()
            .to_string();
        *self.counts.lock().entry(kind).or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }
    /// Every reason with its count.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().clone()
    }
    /// How many connections were closed, or messages dropped, for bad input.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips() {
        let msgs = vec![
            Msg::Heartbeat(Report::default()),
            Msg::Release {
                object: ObjectId {
                    node: NodeId(7),
                    seq: 3,
                },
            },
        ];
        let back = decode(&encode(&msgs).unwrap()).unwrap();
        assert_eq!(back.len(), 2);
        assert!(matches!(back[1], Msg::Release { object } if object.seq == 3));
    }

    #[test]
    fn garbage_and_lying_lengths_are_errors_not_allocations() {
        assert!(decode(&[0xc1]).is_err(), "0xc1 is never used by msgpack");
        // An array that claims 4 billion messages, in a 5-byte frame.
        assert!(decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        // A bin of 4 GiB claimed inside a Chunk: refused, nothing allocated.
        let mut lie = encode(&[Msg::Chunk {
            object: ObjectId {
                node: NodeId(1),
                seq: 1,
            },
            offset: 0,
            total: 1,
            data: Value::Encoded(bytes::Bytes::from(vec![1u8])),
        }])
        .unwrap();
        let at = lie.len() - 2; // bin8 marker, length 1, then the byte
        lie[at - 1] = 0xc6;
        lie.truncate(at);
        lie.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(decode(&lie).is_err());
    }

    #[test]
    fn rejections_count_by_kind() {
        let r = Rejections::default();
        r.count("undecodable frame: bad marker");
        r.count("undecodable frame: eof");
        r.count("frame over the limit");
        assert_eq!(r.total(), 3);
        assert_eq!(r.snapshot()["undecodable frame"], 2);
    }
}
