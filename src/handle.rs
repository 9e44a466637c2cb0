//! The runtime handle: `Clone + Send + Sync`, usable from plain threads and from
//! async code. Several runtimes can live in one process. This file holds the
//! handle and what it does by itself; the API that needs tasks, objects and
//! actors is `impl Runtime` in runtime.rs, above them.

use crate::{Data, Error, MemoryUsage, Result};
use rayx_actors::events::Events;
use rayx_actors::Node;
use std::sync::Arc;

thread_local! {
    /// The typed error of a ref or handle that failed to decode on this thread.
    static DECODE_ERROR: std::cell::RefCell<Option<Error>> = const { std::cell::RefCell::new(None) };
}

/// A ref or handle could not be decoded: keeps the typed error for
/// [`Runtime::decode`] and gives serde its text.
pub(crate) fn decode_error<E: serde::de::Error>(e: Error) -> E {
    let text = e.to_string();
    DECODE_ERROR.with(|t| *t.borrow_mut() = Some(e));
    E::custom(text)
}

/// Shuts the node down when the last user handle goes.
struct Guard(Arc<Node>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A runtime handle that does not keep it alive (see [`Runtime::downgrade`]).
#[derive(Clone, Debug)]
pub struct WeakRuntime {
    node: std::sync::Weak<Node>,
}

impl WeakRuntime {
    /// A handle to the runtime, if it is still running (a handle from
    /// `upgrade` does not keep it alive either).
    pub fn upgrade(&self) -> Option<Runtime> {
        self.node
            .upgrade()
            .filter(|n| !n.is_closed())
            .map(|node| Runtime { node, _guard: None })
    }
}

/// A handle to a running rayx runtime.
///
/// Dropping the last handle returned by [`init`](crate::init) or [`Builder::start`](crate::Builder::start) shuts the
/// runtime down; handles from [`Runtime::current`] do not keep it alive.
#[derive(Clone)]
pub struct Runtime {
    node: Arc<Node>,
    _guard: Option<Arc<Guard>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("workers", &self.node.config().num_workers)
            .field("closed", &self.node.is_closed())
            .finish()
    }
}

impl Runtime {
    /// The runtime whose task or actor is running on this thread.
    ///
    /// ```
    /// # use rayx::prelude::*;
    /// fn outer(x: i64) -> i64 {
    ///     let rt = Runtime::current().expect("inside a task");
    ///     rt.task(inner).remote(x).get().unwrap() + 1
    /// }
    /// fn inner(x: i64) -> i64 { x * 2 }
    /// rayx::remote!(outer, inner);
    ///
    /// let rt = rayx::init()?;
    /// assert!(Runtime::current().is_none());
    /// assert_eq!(rt.task(outer).remote(20).get()?, 41);
    /// # Ok::<(), rayx::Error>(())
    /// ```
    pub fn current() -> Option<Runtime> {
        rayx_actors::node::current_node().map(|node| Runtime { node, _guard: None })
    }

    /// A handle that does not keep the runtime alive: what an actor's factory
    /// or a long-lived structure of the runtime's own should hold, so the
    /// runtime still shuts down when its users drop their handles.
    ///
    /// ```
    /// let rt = rayx::init()?;
    /// let weak = rt.downgrade();
    /// assert!(weak.upgrade().is_some());
    /// drop(rt);
    /// assert!(weak.upgrade().is_none(), "the last user handle shut it down");
    /// # Ok::<(), rayx::Error>(())
    /// ```
    pub fn downgrade(&self) -> WeakRuntime {
        WeakRuntime {
            node: Arc::downgrade(&self.node),
        }
    }

    /// A handle that shuts `node` down when it and its clones are dropped.
    pub(crate) fn owning(node: Arc<Node>) -> Runtime {
        Runtime {
            node: node.clone(),
            _guard: Some(Arc::new(Guard(node))),
        }
    }

    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Workers kept running.
    pub fn num_workers(&self) -> usize {
        self.node.config().num_workers
    }

    /// Memory held by objects now: live objects, inline bytes, store usage.
    /// A worker that has just reported a task's result holds it for a moment
    /// after the caller's `get` returns, so a count read right then may lag.
    pub fn memory(&self) -> MemoryUsage {
        self.node.usage()
    }

    /// Live worker threads, and how many of them are blocked in `get`.
    #[cfg(feature = "testing")]
    pub fn worker_counts(&self) -> (usize, usize) {
        self.node.worker_counts()
    }

    /// Fault injection: makes a system actor (`"router"`) fail, so the root supervisor restarts it by its strategy.
    #[cfg(feature = "testing")]
    pub fn inject_system_failure(&self, child: &str) -> Result<()> {
        self.node.inject_system_failure(child)
    }

    /// Supervision events (actors started, failed, stopped) from now on.
    pub fn events(&self) -> Events {
        self.node.subscribe()
    }

    /// Decodes bytes that may hold `ObjectRef`s or `ActorHandle`s (of this
    /// runtime or another of the process). A ref or handle that cannot be
    /// resolved fails with its own typed error (`OwnerUnknown`, `ObjectLost`,
    /// `ActorDied`, `TypeMismatch`); bytes that do not decode, `Serialization`.
    pub fn decode<T: Data>(&self, bytes: &[u8]) -> Result<T> {
        DECODE_ERROR.with(|e| e.borrow_mut().take());
        rayx_actors::node::with_node(&self.node, || {
            rmp_serde::from_slice(bytes).map_err(|e| {
                DECODE_ERROR
                    .with(|t| t.borrow_mut().take())
                    .unwrap_or_else(|| Error::Serialization(e.to_string()))
            })
        })
    }

    /// Encodes a value with rmp-serde (refs and handles as their ids).
    pub fn encode<T: Data>(&self, value: &T) -> Result<Vec<u8>> {
        rmp_serde::to_vec(value).map_err(|e| Error::Serialization(e.to_string()))
    }

    /// Whether the runtime has shut down.
    pub fn is_shut_down(&self) -> bool {
        self.node.is_closed()
    }

    /// Stops the runtime: pending gets fail with `ShutDown`, and so does every
    /// later call. Returns promptly; a task stuck in user code is abandoned.
    pub fn shutdown(&self) {
        self.node.shutdown();
    }
}
