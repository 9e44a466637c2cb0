//! The typed side of a cluster: actor types registered by name
//! ([`remote_actor!`](crate::remote_actor)), so a node can start one for
//! another; handles to actors on other nodes; and what a runtime tells of its
//! cluster (nodes, the head's key-value store).

use crate::actor::Boxed;
use crate::{Actor, Data, Error, Result, Runtime};
use rayx_actors::actor_host::{ActorKind, CopyMessage, Dispatch, SharedState};
use rayx_actors::actor_types::{ActorType, ActorTypes};
use rayx_actors::cluster::wire::{check_len, Answer, Ask, ClusterStatus, MAX_KV_VALUE, MAX_NAME};
use rayx_actors::ids::NodeId;
use rayx_actors::value::Value;
use std::any::TypeId;
use std::sync::Arc;

pub use rayx_actors::cluster::wire::NodeInfo;

/// A constructor of an actor: `fn() -> A` or `fn(C) -> A` with `C` data (a
/// tuple for several). Another node runs it on the argument's encoding.
pub trait Construct<Marker, A>: Clone + Send + Sync + 'static {
    /// What it takes.
    type Arg: Data + Clone;
    /// Builds the actor.
    fn construct(&self, arg: Self::Arg) -> A;
}

impl<F: Fn() -> A + Clone + Send + Sync + 'static, A> Construct<(), A> for F {
    type Arg = ();
    fn construct(&self, _: ()) -> A {
        self()
    }
}

impl<F: Fn(C) -> A + Clone + Send + Sync + 'static, C: Data + Clone, A> Construct<(C,), A> for F {
    type Arg = C;
    fn construct(&self, arg: C) -> A {
        self(arg)
    }
}

/// Registers actor types so that any node can start them and take their
/// calls: the type, its constructor, and every message it takes from other
/// nodes. `async` marks an async actor.
///
/// ```
/// use rayx::prelude::*;
///
/// struct Counter { n: u64 }
/// impl Counter { fn new(start: u64) -> Counter { Counter { n: start } } }
/// impl Actor for Counter {}
/// #[derive(Serialize, Deserialize)]
/// struct Add(u64);
/// impl Message for Add { type Reply = u64; }
/// impl Handler<Add> for Counter {
///     fn handle(&mut self, Add(k): Add, _: &mut ActorContext<Self>) -> u64 { self.n += k; self.n }
/// }
/// rayx::remote_actor!(Counter, Counter::new, [Add]);
///
/// let rt = rayx::init()?;
/// let c = rt.actor_of(Counter::new, 10).spawn()?;  // placed by the head in a cluster
/// assert_eq!(c.call(Add(1)).get()?, 11);
/// # Ok::<(), rayx::Error>(())
/// ```
#[macro_export]
macro_rules! remote_actor {
    (async $actor:ty, $ctor:expr, [$($msg:ty),* $(,)?]) => {
        $crate::remote_actor!(@register make_async, $actor, $ctor, [$($msg),*]);
    };
    ($actor:ty, $ctor:expr, [$($msg:ty),* $(,)?]) => {
        $crate::remote_actor!(@register make_sync, $actor, $ctor, [$($msg),*]);
    };
    (@register $make:ident, $actor:ty, $ctor:expr, [$($msg:ty),*]) => {
        $crate::__private::inventory::submit! {
            $crate::__private::ActorRegistration::new(
                || std::any::type_name::<$actor>(),
                || std::any::TypeId::of::<$actor>(),
                concat!(file!(), ":", line!()),
                |args, mc| $crate::__private::$make::<$actor, _, _>($ctor, args, mc),
                || vec![$($crate::__private::method::<$actor, $msg, _>()),*],
            )
        }
    };
}

type Method = (&'static str, Dispatch, CopyMessage);

/// One actor type, as `remote_actor!` submits it.
#[doc(hidden)]
pub struct ActorRegistration {
    type_name: fn() -> &'static str,
    type_id: fn() -> TypeId,
    site: &'static str,
    make: rayx_actors::actor_types::MakeActor,
    methods: fn() -> Vec<Method>,
}

impl ActorRegistration {
    #[doc(hidden)]
    pub const fn new(
        type_name: fn() -> &'static str,
        type_id: fn() -> TypeId,
        site: &'static str,
        make: rayx_actors::actor_types::MakeActor,
        methods: fn() -> Vec<Method>,
    ) -> Self {
        ActorRegistration {
            type_name,
            type_id,
            site,
            make,
            methods,
        }
    }
}

inventory::collect!(ActorRegistration);

/// Every actor type registered in this binary.
pub(crate) fn actor_types() -> Result<ActorTypes> {
    let mut types = ActorTypes::new();
    for r in inventory::iter::<ActorRegistration> {
        types.insert(ActorType {
            type_id: (r.type_id)(),
            type_name: (r.type_name)(),
            site: r.site,
            make: r.make,
            methods: (r.methods)()
                .into_iter()
                .map(|(n, d, c)| (n, (d, c)))
                .collect(),
        })?;
    }
    Ok(types)
}

/// Builds a sync actor's factory from its constructor and encoded argument.
#[doc(hidden)]
pub fn make_sync<A: Actor, Mk, F: Construct<Mk, A>>(
    ctor: F,
    arg: Value,
    _: Option<usize>,
) -> Result<ActorKind> {
    let arg: F::Arg = Arc::unwrap_or_clone(arg.into_typed::<F::Arg>()?);
    Ok(ActorKind::Sync(Box::new(move || {
        Box::new(Boxed(ctor.construct(arg.clone())))
    })))
}

/// Builds an async actor's factory from its constructor and encoded argument.
#[doc(hidden)]
pub fn make_async<A: Actor + Sync, Mk, F: Construct<Mk, A>>(
    ctor: F,
    arg: Value,
    max_concurrency: Option<usize>,
) -> Result<ActorKind> {
    let arg: F::Arg = Arc::unwrap_or_clone(arg.into_typed::<F::Arg>()?);
    Ok(ActorKind::Async {
        factory: Box::new(move || -> SharedState { Arc::new(ctor.construct(arg.clone())) }),
        max_concurrency: max_concurrency.unwrap_or(1000),
    })
}

/// One method of an actor type: its message's name and how to run it.
#[doc(hidden)]
pub fn method<A, M, K>() -> Method
where
    A: Actor + crate::actor::Dispatches<M, K>,
    M: crate::Message,
    K: crate::CallKind,
{
    (
        std::any::type_name::<M>(),
        <A as crate::actor::Dispatches<M, K>>::DISPATCH,
        crate::actor::copy_message::<M>,
    )
}

impl Runtime {
    /// This runtime's node id (unique across the cluster's processes).
    pub fn node_id(&self) -> NodeId {
        self.node().id()
    }

    /// The live nodes of its cluster, itself first; just itself when it is
    /// not in one.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        match self.node().cluster() {
            Some(c) => c.nodes(),
            None => vec![NodeInfo {
                id: self.node().id(),
                address: String::new(),
                cpus: self.num_workers() as f64,
                head: false,
                resources: self.node().config().resources.clone(),
            }],
        }
    }

    /// Where this runtime's node link listens (for a head: the address
    /// nodes join with); `None` outside a cluster.
    pub fn cluster_address(&self) -> Option<String> {
        self.node().cluster().map(|c| c.address().to_string())
    }

    /// Where each object's value is now (Ray's `get_object_locations`): this
    /// node once it is here; for a large result of a task that ran on another
    /// node and was not read yet, that node (it stays there until a `get`, a
    /// `wait` or a dependent task wants it, and is made again if that node
    /// dies first); `None` while it is pending or if it failed.
    pub fn object_locations<T>(&self, refs: &[crate::ObjectRef<T>]) -> Vec<Option<NodeId>> {
        let node = self.node();
        refs.iter()
            .map(|r| match node.cluster() {
                Some(c) => c.location(r.slot()),
                None => (r.slot().is_done() && !r.slot().has_failed()).then(|| node.id()),
            })
            .collect()
    }

    /// The cluster token this runtime proves, to hand to processes that join
    /// it (as `RAYX_TOKEN`); `None` outside a cluster or with `no_auth`.
    pub fn cluster_token(&self) -> Option<String> {
        self.node()
            .cluster()
            .and_then(|c| c.token().map(str::to_string))
    }

    /// Blocks until this runtime shuts down (a head or node told to stop).
    pub fn serve_until_stopped(&self) {
        self.node().wait_stopped();
    }

    /// Waits until the cluster has at least `n` live nodes (this one
    /// included), up to `timeout`; false if it did not.
    pub fn wait_for_nodes(&self, n: usize, timeout: std::time::Duration) -> bool {
        match self.node().cluster() {
            Some(c) => c.wait_for_nodes(n, timeout),
            None => n <= 1,
        }
    }

    fn ask_head(&self, ask: Ask) -> Result<Answer> {
        let c = self.node().cluster().ok_or_else(|| {
            Error::InvalidArgument("this runtime is not part of a cluster".into())
        })?;
        c.ask(ask)
    }

    /// The cluster's state as its head sees it: nodes, actors, rejections.
    pub fn cluster_status(&self) -> Result<ClusterStatus> {
        match self.ask_head(Ask::Status)? {
            Answer::Status(s) => Ok(s),
            other => Err(Error::Serialization(format!("unexpected answer {other:?}"))),
        }
    }

    /// Stores `value` under `key` in the head's key-value store; with
    /// `overwrite` false an existing value stays. True if it was stored.
    /// A key takes up to [`MAX_NAME`] bytes and a value up to
    /// [`MAX_KV_VALUE`] (32 MiB); more is `InvalidArgument`.
    /// Outside a cluster the runtime keeps the store itself (it outlives every
    /// actor of the runtime, not the process).
    pub fn kv_put(&self, key: &str, value: &[u8], overwrite: bool) -> Result<bool> {
        check_key(key)?;
        check_len("a key-value store value", value.len(), MAX_KV_VALUE)?;
        if self.node().cluster().is_none() {
            let mut kv = self.node().local_kv().lock();
            if !overwrite && kv.contains_key(key) {
                return Ok(false);
            }
            kv.insert(key.to_string(), value.to_vec());
            return Ok(true);
        }
        match self.ask_head(Ask::KvPut {
            key: key.to_string(),
            value: value.to_vec(),
            overwrite,
        })? {
            Answer::Stored(b) => Ok(b),
            other => Err(Error::Serialization(format!("unexpected answer {other:?}"))),
        }
    }

    /// The value under `key` in the head's key-value store.
    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        if self.node().cluster().is_none() {
            return Ok(self.node().local_kv().lock().get(key).cloned());
        }
        match self.ask_head(Ask::KvGet {
            key: key.to_string(),
        })? {
            Answer::Value(v) => Ok(v.map(|b| b.into_vec())),
            other => Err(Error::Serialization(format!("unexpected answer {other:?}"))),
        }
    }

    /// Tells worker node `node` to leave the cluster in order (Ray's drain,
    /// as SIGTERM on it would): no new work goes there, its work finishes,
    /// what it holds for others is pulled, then it stops — within `timeout`.
    /// Returns once the head has told it; `rt.cluster_status()` shows it
    /// draining, then left. The head and drivers do not drain.
    pub fn drain_node(&self, node: NodeId, timeout: std::time::Duration) -> Result<()> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        match self.ask_head(Ask::DrainNode { node, timeout_ms })? {
            Answer::Done => Ok(()),
            other => Err(Error::Serialization(format!("unexpected answer {other:?}"))),
        }
    }

    /// Deletes `key` from the head's key-value store; true if it was there.
    pub fn kv_delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        if self.node().cluster().is_none() {
            return Ok(self.node().local_kv().lock().remove(key).is_some());
        }
        match self.ask_head(Ask::KvDelete {
            key: key.to_string(),
        })? {
            Answer::Stored(b) => Ok(b),
            other => Err(Error::Serialization(format!("unexpected answer {other:?}"))),
        }
    }
}

/// `Err(InvalidArgument)` for a key over [`MAX_NAME`] bytes.
fn check_key(key: &str) -> Result<()> {
    check_len("a key-value store key", key.len(), MAX_NAME)
}
