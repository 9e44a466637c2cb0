//! The one error type of rayx: every failure a user sees names its cause.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Everything that can go wrong in rayx, with a cause a person can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// The task's function panicked (Ray's `RayTaskError`).
    #[error("task `{task}` failed: {cause}")]
    TaskFailed {
        /// The task's name.
        task: String,
        /// What went wrong, with the panic's message and location.
        cause: String,
    },
    /// The task failed on every attempt its retry budget allowed.
    #[error("task `{task}` failed after {} attempts: {}", attempts.len(), attempts.iter().enumerate().map(|(i, a)| format!("[{}] {a}", i + 1)).collect::<Vec<_>>().join("; "))]
    RetriesExhausted {
        /// The task's name.
        task: String,
        /// Why each attempt failed, in order.
        attempts: Vec<String>,
    },
    /// The worker running the task died and the task may not be retried
    /// (Ray's `WorkerCrashedError`).
    #[error("task `{task}` failed: the worker running it died ({cause}); max_retries is 0")]
    WorkerCrashed {
        /// The task's name.
        task: String,
        /// Why the worker died.
        cause: String,
    },
    /// The task was cancelled (Ray's `TaskCancelledError`).
    #[error("task `{task}` was cancelled{}", if *forced { " (forced: its worker was abandoned and replaced)" } else { "" })]
    Cancelled {
        /// The task's name.
        task: String,
        /// Whether the cancel was forced.
        forced: bool,
    },
    /// The task was not run because one of its arguments is an error.
    #[error("task `{task}` was not run because an argument failed: {cause}")]
    DependencyFailed {
        /// The task that was not run.
        task: String,
        /// The argument's error, which names the original failure.
        cause: Box<Error>,
    },
    /// The actor is dead: it was killed, it panicked, or the runtime stopped.
    #[error("actor `{actor}` died: {cause}")]
    ActorDied {
        /// The actor's name, or its id if it has none.
        actor: String,
        /// Why it died.
        cause: String,
    },
    /// No live actor has that name.
    #[error("no actor named `{name}` in namespace `{namespace}`")]
    ActorNotFound {
        /// The name looked up.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// An actor with that name already exists.
    #[error("an actor named `{name}` already exists in namespace `{namespace}`; use get_if_exists to share it")]
    ActorNameTaken {
        /// The name asked for.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// The actor's mailbox is at its capacity.
    #[error("the mailbox of actor `{actor}` is full ({capacity} calls queued); raise mailbox_capacity or wait for replies")]
    MailboxFull {
        /// The actor.
        actor: String,
        /// The configured capacity.
        capacity: usize,
    },
    /// A task named a function that no `rayx::remote!` registered.
    #[error("remote function `{name}` is not registered: add `rayx::remote!(...)` next to its definition")]
    FunctionNotRegistered {
        /// The function's full name.
        name: String,
    },
    /// A value was read as the wrong type.
    #[error("type mismatch: expected `{expected}`, found `{found}`")]
    TypeMismatch {
        /// The type asked for.
        expected: String,
        /// The type that is there.
        found: String,
    },
    /// A task was called with the wrong number of arguments.
    #[error("`{function}` takes {expected} arguments but was given {given}")]
    ArityMismatch {
        /// The function.
        function: String,
        /// How many it takes.
        expected: usize,
        /// How many it was given.
        given: usize,
    },
    /// `get` or `wait` reached its timeout (Ray's `GetTimeoutError`).
    #[error("get timed out after {timeout:?}; the object is still pending")]
    GetTimeout {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The runtime has shut down; nothing more will run.
    #[error("the rayx runtime has shut down")]
    ShutDown,
    /// The object is not known here: it was freed, or is owned by another process.
    #[error("object {id} is not known to this process: it was freed or is owned elsewhere")]
    ObjectLost {
        /// The object's id, as text.
        id: String,
    },
    /// The object's owner died (its runtime shut down) while another runtime
    /// still needed it (Ray's `OwnerDiedError`).
    #[error("object {id} is lost: its owner (another rayx runtime or node) died or shut down")]
    OwnerDied {
        /// The object's id, as text.
        id: String,
    },
    /// A ref or handle names an owner this process does not know: a runtime
    /// that is gone, or a node this process has no link to.
    #[error("{id} is owned by {owner}, which this process does not know (a runtime that is gone, or another node)")]
    OwnerUnknown {
        /// The object's or actor's id, as text.
        id: String,
        /// The owner's node id, as text.
        owner: String,
    },
    /// Every worker thread the runtime may start is blocked in `get` while
    /// work is queued: nothing can run it (raise `max_workers`).
    #[error("all {max_workers} worker threads (max_workers) are blocked waiting while work is queued; nothing can run it: raise max_workers")]
    WorkerLimitReached {
        /// The limit.
        max_workers: usize,
    },
    /// An actor method returned an error (Ray: a method that raises); the actor
    /// lives on.
    #[error("call `{method}` on actor `{actor}` failed: {cause}")]
    CallFailed {
        /// The actor.
        actor: String,
        /// The method (message type).
        method: String,
        /// The error's text.
        cause: String,
    },
    /// A lost object could not be rebuilt from its lineage.
    #[error("object {id} was lost and cannot be rebuilt: {cause}")]
    ObjectReconstructionFailed {
        /// The object's id, as text.
        id: String,
        /// Why it cannot be rebuilt.
        cause: String,
    },
    /// The object store cannot hold the object.
    #[error("object store full: {requested} bytes asked for, {used} of {capacity} in use; raise object_store_memory or drop refs")]
    ObjectStoreFull {
        /// Size of the object.
        requested: u64,
        /// Bytes in use.
        used: u64,
        /// The store's capacity.
        capacity: u64,
    },
    /// A value could not be encoded or decoded.
    #[error("serialization failed: {0}")]
    Serialization(String),
    /// An argument is out of its range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The runtime could not start.
    #[error("the runtime could not start: {0}")]
    Startup(String),
    /// A cluster address could not be reached or refused this process.
    #[error("cannot reach {address} in the cluster: {cause}")]
    ClusterUnreachable {
        /// The address tried.
        address: String,
        /// What went wrong (refused, timed out, wrong protocol, ...).
        cause: String,
    },
    /// The cluster's token check failed: this process or the listener at
    /// `address` has no token, or another one. The token never crosses the wire.
    #[error("not admitted to the cluster at {address}: {cause}")]
    Unauthenticated {
        /// The address tried.
        address: String,
        /// What failed.
        cause: String,
    },
    /// A node's registry of remote functions and actor types differs from the
    /// cluster's: every node must run the same binary.
    #[error("this node's registry differs from the cluster's: {differences}")]
    RegistryMismatch {
        /// The names registered on one side only.
        differences: String,
    },
    /// No node of the cluster can run the task or actor as asked.
    #[error("`{task}` cannot be scheduled: {reason}")]
    Unschedulable {
        /// The task's or actor's name.
        task: String,
        /// Why no node fits.
        reason: String,
    },
    /// A value held on another node could not be read from it (its node
    /// lives, but did not serve it in time). Two fields, not three: a second
    /// variant of three strings would make every `Error` (and every
    /// `Result<Value, Error>` on the get path) 8 bytes larger.
    #[error("object {id} could not be fetched: {cause}")]
    ObjectFetchFailed {
        /// The object's id, as text.
        id: String,
        /// Why not, naming the node that holds it.
        cause: String,
    },
    /// The placement group was removed (or the work came for it after its
    /// removal).
    #[error("placement group {group} was removed")]
    PlacementGroupRemoved {
        /// The group's id, as text.
        group: String,
    },
    /// The node running the task or holding the object died or was cut off.
    #[error("node {node} died: {cause}")]
    NodeDied {
        /// The node.
        node: String,
        /// Why it is considered dead.
        cause: String,
    },
}

impl Error {
    /// The error of a task not run because its argument failed with `cause`.
    /// The cause kept is the original failure, not a chain of one
    /// `DependencyFailed` per task in between (a chain of 100,000 tasks would
    /// nest 100,000 deep).
    pub fn dependency_failed(task: String, cause: Error) -> Error {
        let cause = match cause {
            Error::DependencyFailed { cause, .. } => cause,
            other => Box::new(other),
        };
        Error::DependencyFailed { task, cause }
    }

    /// Cuts every text in this error to at most `max` bytes (the attempts of
    /// a `RetriesExhausted` to `max` together, and at least 64 bytes each),
    /// saying how much was cut; the kind stays. For an error whose texts (a
    /// panic's message, a user's error) are too large to send to another
    /// node whole.
    pub fn shorten(&mut self, max: usize) {
        let cut = |s: &mut String| shorten_text(s, max);
        match self {
            Error::RetriesExhausted { task, attempts } => {
                cut(task);
                // Every attempt is kept (their count is part of the error),
                // each cut to its share of `max`.
                let each = (max / attempts.len().max(1)).max(64);
                for a in attempts {
                    shorten_text(a, each);
                }
            }
            Error::DependencyFailed { task, cause } => {
                cut(task);
                cause.shorten(max);
            }
            Error::CallFailed {
                actor,
                method,
                cause,
            } => {
                cut(actor);
                cut(method);
                cut(cause);
            }
            // Every error of two texts.
            Error::TaskFailed { task: a, cause: b }
            | Error::WorkerCrashed { task: a, cause: b }
            | Error::Unschedulable { task: a, reason: b }
            | Error::ActorDied { actor: a, cause: b }
            | Error::ActorNotFound {
                name: a,
                namespace: b,
            }
            | Error::ActorNameTaken {
                name: a,
                namespace: b,
            }
            | Error::TypeMismatch {
                expected: a,
                found: b,
            }
            | Error::ObjectReconstructionFailed { id: a, cause: b }
            | Error::ObjectFetchFailed { id: a, cause: b }
            | Error::OwnerUnknown { id: a, owner: b }
            | Error::ClusterUnreachable {
                address: a,
                cause: b,
            }
            | Error::Unauthenticated {
                address: a,
                cause: b,
            }
            | Error::NodeDied { node: a, cause: b } => {
                cut(a);
                cut(b);
            }
            Error::Cancelled { task: s, .. }
            | Error::MailboxFull { actor: s, .. }
            | Error::FunctionNotRegistered { name: s }
            | Error::ArityMismatch { function: s, .. }
            | Error::ObjectLost { id: s }
            | Error::OwnerDied { id: s }
            | Error::PlacementGroupRemoved { group: s }
            | Error::RegistryMismatch { differences: s }
            | Error::Serialization(s)
            | Error::InvalidArgument(s)
            | Error::Startup(s) => cut(s),
            Error::GetTimeout { .. }
            | Error::ShutDown
            | Error::WorkerLimitReached { .. }
            | Error::ObjectStoreFull { .. } => {}
        }
    }

    /// The original failure: follows `DependencyFailed` down to the first error.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::DependencyFailed { cause, .. } => cause.root_cause(),
            e => e,
        }
    }
}

/// Cuts `s` to at most `max` bytes (at a character boundary), saying how
/// many were cut.
pub fn shorten_text(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("… ({cut} more bytes cut)"));
}

/// `Result` with rayx's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    /// Every get returns a `Result<Value, Error>`: a larger `Error` costs each
    /// of them (a second variant of three strings made it 80 bytes, and a
    /// local get 11 instructions slower).
    #[test]
    fn a_shortened_error_keeps_its_kind_and_says_what_was_cut() {
        use super::Error;
        let long = "é".repeat(1000); // 2,000 bytes
        let mut e = Error::TaskFailed {
            task: "t".into(),
            cause: long.clone(),
        };
        e.shorten(101);
        let Error::TaskFailed { task, cause } = e else {
            panic!("the kind changed: {e:?}");
        };
        assert_eq!(task, "t");
        assert!(cause.starts_with(&"é".repeat(50)), "{cause}");
        assert!(cause.ends_with("… (1900 more bytes cut)"), "{cause}");
        let mut nested = Error::dependency_failed(
            "b".into(),
            Error::RetriesExhausted {
                task: "a".into(),
                attempts: (0..40).map(|i| format!("{i}{long}")).collect(),
            },
        );
        nested.shorten(10);
        let Error::DependencyFailed { cause, .. } = nested else {
            panic!("the kind changed");
        };
        let text = cause.to_string();
        let Error::RetriesExhausted { attempts, .. } = *cause else {
            panic!("the cause's kind changed");
        };
        assert_eq!(attempts.len(), 40);
        assert!(text.contains("failed after 40 attempts"), "{text}");
        assert!(attempts[39].starts_with("39"), "{}", attempts[39]);
        assert!(attempts.iter().all(|a| a.len() < 64 + 40), "{attempts:?}");
    }

    #[test]
    fn an_error_stays_small() {
        assert!(
            std::mem::size_of::<super::Error>() <= 72,
            "Error grew to {} bytes",
            std::mem::size_of::<super::Error>()
        );
    }
}
