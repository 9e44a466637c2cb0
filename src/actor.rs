//! Actors: stateful workers defined by implementing [`Actor`] and [`Handler`]
//! (or [`AsyncHandler`]) for each [`Message`] they take.

use crate::handle::Runtime;
use crate::object_ref::ObjectRef;
use crate::remote_actor::RemoteActor;
use crate::{Data, Error, Result};
use rayx_actors::actor_group::ActorGroup;
use rayx_actors::actor_host::{
    ActorHost, ActorKind, ActorSpec, ActorState, CallInfo, CallJob, Dispatch, HostContext,
    LocalFuture, RestartPolicy, SharedState,
};
use rayx_actors::cluster::wire::{ActorCreate, Answer, Ask};
use rayx_actors::cluster::Holder;
use rayx_actors::ids::{ActorId, NodeId};
use rayx_actors::messages::{ActorCall, Retries, Scheduling};
use rayx_actors::value::Value;
use rayx_actors::Node;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};

pub(crate) const DEFAULT_NAMESPACE: &str = "default";

/// A stateful actor. Implement [`Handler`] for each message it takes.
///
/// ```
/// use rayx::prelude::*;
///
/// struct Counter { n: u64 }
/// impl Actor for Counter {}
///
/// #[derive(Serialize, Deserialize)]
/// struct Add(u64);
/// impl Message for Add { type Reply = u64; }
///
/// impl Handler<Add> for Counter {
///     fn handle(&mut self, Add(k): Add, _: &mut ActorContext<Self>) -> u64 {
///         self.n += k;
///         self.n
///     }
/// }
///
/// let rt = rayx::init()?;
/// let c = rt.actor(|| Counter { n: 0 }).name("counter").spawn()?;
/// c.call(Add(2));
/// assert_eq!(c.call(Add(3)).get()?, 5);
/// assert_eq!(rt.get_actor::<Counter>("counter")?.call(Add(1)).get()?, 6);
/// # Ok::<(), rayx::Error>(())
/// ```
pub trait Actor: Send + Sized + 'static {
    /// Whether this is an async actor (handlers are futures, started with
    /// [`Runtime::async_actor`]): set `const ASYNC: bool = true;` in its impl.
    /// Starting or calling an actor the other way is a compile error.
    ///
    /// ```compile_fail
    /// use rayx::prelude::*;
    /// struct Sync1;
    /// impl Actor for Sync1 {}
    /// #[derive(Serialize, Deserialize)]
    /// struct Hi;
    /// impl Message for Hi { type Reply = (); }
    /// impl AsyncHandler<Hi> for Sync1 {
    ///     async fn handle(self: std::sync::Arc<Self>, _: Hi, _: AsyncContext<Self>) {}
    /// }
    /// let rt = rayx::init().unwrap();
    /// // Sync1 is not marked ASYNC: an async handler of it does not compile.
    /// let _ = rt.actor(|| Sync1).spawn().unwrap().call(Hi);
    /// ```
    ///
    /// The same actor marked `ASYNC` and started with `async_actor` compiles
    /// (so the example above fails for that reason alone):
    ///
    /// ```
    /// use rayx::prelude::*;
    /// struct Async1;
    /// impl Actor for Async1 { const ASYNC: bool = true; }
    /// #[derive(Serialize, Deserialize)]
    /// struct Hi;
    /// impl Message for Hi { type Reply = (); }
    /// impl AsyncHandler<Hi> for Async1 {
    ///     async fn handle(self: std::sync::Arc<Self>, _: Hi, _: AsyncContext<Self>) {}
    /// }
    /// let rt = rayx::init().unwrap();
    /// rt.async_actor(|| Async1).spawn().unwrap().call(Hi).get().unwrap();
    /// ```
    const ASYNC: bool = false;
    /// Called once when the actor stops: killed, collected or shut down.
    fn stopped(&mut self) {}
}

/// A message an actor can take, with the type of its reply.
pub trait Message: Data {
    /// What the handler returns.
    type Reply: Data;
}

/// Handles `M` with exclusive access to the actor's state, one call at a time,
/// in the order each caller made its calls.
pub trait Handler<M: Message>: Actor {
    /// Runs the call. A panic crashes the actor: it restarts within its
    /// `max_restarts`, else this and every queued call fail with `ActorDied`,
    /// naming the panic.
    fn handle(&mut self, msg: M, ctx: &mut ActorContext<'_, Self>) -> M::Reply;
}

/// Handles `M` like [`Handler`], but may fail: an `Err` fails this call only,
/// with [`Error::CallFailed`] carrying the error's text, and the actor lives on
/// (Ray: a method that raises leaves the actor alive). A panic is still a crash.
///
/// ```
/// use rayx::prelude::*;
///
/// struct Account { balance: u64 }
/// impl Actor for Account {}
///
/// #[derive(Serialize, Deserialize)]
/// struct Withdraw(u64);
/// impl Message for Withdraw { type Reply = u64; }
///
/// impl TryHandler<Withdraw> for Account {
///     type Error = String;
///     fn handle(&mut self, Withdraw(n): Withdraw, _: &mut ActorContext<Self>) -> Result<u64, String> {
///         if n > self.balance {
///             return Err(format!("only {} left", self.balance));
///         }
///         self.balance -= n;
///         Ok(self.balance)
///     }
/// }
///
/// let rt = rayx::init()?;
/// let a = rt.actor(|| Account { balance: 10 }).spawn()?;
/// assert!(matches!(a.call(Withdraw(50)).get(), Err(Error::CallFailed { cause, .. }) if cause == "only 10 left"));
/// assert_eq!(a.call(Withdraw(4)).get()?, 6, "the actor lived on");
/// # Ok::<(), rayx::Error>(())
/// ```
pub trait TryHandler<M: Message>: Actor {
    /// The error a call may end with.
    type Error: std::fmt::Display;
    /// Runs the call.
    fn handle(
        &mut self,
        msg: M,
        ctx: &mut ActorContext<'_, Self>,
    ) -> std::result::Result<M::Reply, Self::Error>;
}

/// Handles `M` like [`AsyncHandler`], but may fail: an `Err` fails this call
/// only, with [`Error::CallFailed`], and the actor lives on.
pub trait AsyncTryHandler<M: Message>: Actor + Sync {
    /// The error a call may end with.
    type Error: std::fmt::Display;
    /// Runs the call; the future runs on the actor's async thread.
    fn handle(
        self: Arc<Self>,
        msg: M,
        ctx: AsyncContext<Self>,
    ) -> impl Future<Output = std::result::Result<M::Reply, Self::Error>>;
}

/// Handles `M` as a future on an async actor (Ray's async actors): many calls
/// run at once, up to the actor's `max_concurrency`, sharing `&self`.
///
/// ```
/// use rayx::prelude::*;
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
///
/// struct Pinger { count: AtomicU64 }
/// impl Actor for Pinger { const ASYNC: bool = true; }
///
/// #[derive(Serialize, Deserialize)]
/// struct Ping;
/// impl Message for Ping { type Reply = u64; }
///
/// impl AsyncHandler<Ping> for Pinger {
///     async fn handle(self: Arc<Self>, _: Ping, _: AsyncContext<Self>) -> u64 {
///         self.count.fetch_add(1, Ordering::SeqCst) + 1
///     }
/// }
///
/// let rt = rayx::init()?;
/// let p = rt.async_actor(|| Pinger { count: AtomicU64::new(0) }).max_concurrency(8).spawn()?;
/// let replies: Vec<_> = (0..10).map(|_| p.call(Ping)).collect();
/// assert_eq!(rt.get(&replies, None)?.into_iter().max(), Some(10));
/// # Ok::<(), rayx::Error>(())
/// ```
pub trait AsyncHandler<M: Message>: Actor + Sync {
    /// Runs the call; the future runs on the actor's async thread.
    fn handle(self: Arc<Self>, msg: M, ctx: AsyncContext<Self>) -> impl Future<Output = M::Reply>;
}

/// What a sync handler can see and do besides its message: its actor's id,
/// name and restarts, its own handle, and kill, restart or stop of itself (all
/// signals its run loop applies after this call).
pub struct ActorContext<'a, A> {
    host: &'a Arc<ActorHost>,
    _actor: PhantomData<fn(A)>,
}

impl<A: Actor> ActorContext<'_, A> {
    /// The actor's id.
    pub fn actor_id(&self) -> ActorId {
        self.host.id()
    }
    /// The actor's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.host.name()
    }
    /// Stops the actor after this call; queued calls fail with `ActorDied`.
    pub fn stop(&mut self) {
        stop_host(self.host);
    }
    /// Whether this incarnation is a restart (Ray's `was_current_actor_reconstructed`).
    pub fn was_restarted(&self) -> bool {
        self.host.restarts() > 0
    }
    /// How many times the actor has been restarted.
    pub fn restarts(&self) -> u64 {
        self.host.restarts()
    }
    /// The runtime, to submit tasks or call other actors.
    pub fn runtime(&self) -> Runtime {
        runtime_here()
    }
    /// A handle to this actor (it keeps the actor alive while held).
    pub fn handle(&self) -> ActorHandle<A> {
        ActorHandle::new(node_here(), self.host.clone())
    }
    /// A weak handle to this actor, to keep in its own state without keeping
    /// itself alive.
    pub fn weak_handle(&self) -> WeakActorHandle<A> {
        WeakActorHandle::new(&node_here(), self.host)
    }
}

/// What an async handler can see and do besides its message; it moves into the
/// handler's future.
pub struct AsyncContext<A> {
    info: CallInfo,
    _actor: PhantomData<fn(A)>,
}

impl<A: Actor> AsyncContext<A> {
    /// The actor's id.
    pub fn actor_id(&self) -> ActorId {
        self.info.actor_id
    }
    /// Whether this incarnation is a restart.
    pub fn was_restarted(&self) -> bool {
        self.info.restarts > 0
    }
    /// How many times the actor had been restarted when this call started.
    pub fn restarts(&self) -> u64 {
        self.info.restarts
    }
    /// The runtime, to submit tasks or call other actors.
    pub fn runtime(&self) -> Runtime {
        runtime_here()
    }
    /// A handle to this actor; `None` if it is already gone.
    pub fn handle(&self) -> Option<ActorHandle<A>> {
        let host = self.info.host.upgrade()?;
        Some(ActorHandle::new(node_here(), host))
    }
    /// A weak handle to this actor.
    pub fn weak_handle(&self) -> WeakActorHandle<A> {
        WeakActorHandle::from_weak(&node_here(), self.info.host.clone())
    }
    /// Stops the actor: calls queued and made later fail with `ActorDied`;
    /// calls running now finish.
    pub fn stop(&self) {
        if let Some(host) = self.info.host.upgrade() {
            stop_host(&host);
        }
    }
}

fn stop_host(host: &Arc<ActorHost>) {
    // Its death tells the directory to forget it (a detached one is freed).
    host.kill("it stopped itself");
}

/// The node of the thread a handler runs on.
fn node_here() -> Arc<Node> {
    // Handlers run on the node's threads, which always know their node.
    rayx_actors::node::current_node()
        .unwrap_or_else(|| panic!("rayx: an actor context was used off the actor's thread"))
}

fn runtime_here() -> Runtime {
    Runtime::current()
        .unwrap_or_else(|| panic!("rayx: an actor context was used off the actor's thread"))
}

/// How a message is dispatched on `A`: through [`Handler`], [`TryHandler`],
/// [`AsyncHandler`] or [`AsyncTryHandler`]. Inferred; users never name it.
pub trait Dispatches<M, Kind: CallKind> {
    #[doc(hidden)]
    const DISPATCH: Dispatch;
}

/// Whether a kind of dispatch runs on async actors. Sealed.
pub trait CallKind {
    #[doc(hidden)]
    const ASYNC: bool;
}

/// Marks dispatch through [`Handler`].
pub enum SyncCall {}
/// Marks dispatch through [`TryHandler`].
pub enum TrySyncCall {}
/// Marks dispatch through [`AsyncHandler`].
pub enum AsyncCall {}
/// Marks dispatch through [`AsyncTryHandler`].
pub enum TryAsyncCall {}

impl CallKind for SyncCall {
    const ASYNC: bool = false;
}
impl CallKind for TrySyncCall {
    const ASYNC: bool = false;
}
impl CallKind for AsyncCall {
    const ASYNC: bool = true;
}
impl CallKind for TryAsyncCall {
    const ASYNC: bool = true;
}

impl<A: Handler<M>, M: Message> Dispatches<M, SyncCall> for A {
    const DISPATCH: Dispatch = Dispatch::Sync(dispatch_sync::<A, M>);
}

impl<A: TryHandler<M>, M: Message> Dispatches<M, TrySyncCall> for A {
    const DISPATCH: Dispatch = Dispatch::Sync(dispatch_try_sync::<A, M>);
}

impl<A: AsyncHandler<M>, M: Message> Dispatches<M, AsyncCall> for A {
    const DISPATCH: Dispatch = Dispatch::Async(dispatch_async::<A, M>);
}

impl<A: AsyncTryHandler<M>, M: Message> Dispatches<M, TryAsyncCall> for A {
    const DISPATCH: Dispatch = Dispatch::Async(dispatch_try_async::<A, M>);
}

/// The error of a call whose handler returned `Err`.
fn call_failed<A, M>(label: String, e: impl std::fmt::Display) -> Error {
    let _ = std::marker::PhantomData::<A>;
    Error::CallFailed {
        actor: label,
        method: std::any::type_name::<M>().to_string(),
        cause: e.to_string(),
    }
}

fn label_of(host: &ActorHost) -> String {
    host.name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}({})", host.type_name(), host.id()))
}

fn take_message<M: Data>(value: Value) -> Result<M> {
    let arc = value.into_typed::<M>()?;
    // The host hands a handler the message itself (a copy kept to send again
    // after a crash is its encoding), so it is shared only if a caller kept it.
    Arc::try_unwrap(arc).or_else(|shared| {
        let bytes = rmp_serde::to_vec(&*shared).map_err(|e| Error::Serialization(e.to_string()))?;
        rmp_serde::from_slice(&bytes).map_err(|e| Error::Serialization(e.to_string()))
    })
}

/// The copy of a message kept to send it again after a crash: a serde round
/// trip on the actor's thread, so the refs and handles in it are decoded — and
/// held — like any other (the handler gets the message itself; a retry gets
/// this copy).
pub(crate) fn copy_message<M: Data>(message: &Value) -> Result<Value> {
    let original = message.downcast::<M>()?;
    let bytes = rmp_serde::to_vec(&*original).map_err(|e| Error::Serialization(e.to_string()))?;
    let copy: M = rmp_serde::from_slice(&bytes).map_err(|e| Error::Serialization(e.to_string()))?;
    Ok(Value::new(copy))
}

fn wrong_actor<A>(found: &str) -> Error {
    Error::TypeMismatch {
        expected: std::any::type_name::<A>().to_string(),
        found: found.to_string(),
    }
}

/// Runs `handle` on a sync actor's state with its message and context.
fn on_sync_actor<A: Actor, M: Message, R>(
    state: &mut dyn Any,
    msg: Value,
    host: &mut HostContext<'_>,
    handle: impl FnOnce(&mut A, M, &mut ActorContext<'_, A>) -> R,
) -> Result<R> {
    let actor = state
        .downcast_mut::<A>()
        .ok_or_else(|| wrong_actor::<A>("another actor type"))?;
    let msg = take_message::<M>(msg)?;
    let mut ctx = ActorContext::<A> {
        host: host.host(),
        _actor: PhantomData,
    };
    Ok(handle(actor, msg, &mut ctx))
}

fn dispatch_sync<A: Handler<M>, M: Message>(
    state: &mut dyn Any,
    msg: Value,
    host: &mut HostContext<'_>,
) -> Result<Value> {
    on_sync_actor(state, msg, host, A::handle).map(Value::new)
}

fn dispatch_try_sync<A: TryHandler<M>, M: Message>(
    state: &mut dyn Any,
    msg: Value,
    host: &mut HostContext<'_>,
) -> Result<Value> {
    let label = label_of(host.host());
    match on_sync_actor(state, msg, host, A::handle)? {
        Ok(reply) => Ok(Value::new(reply)),
        Err(e) => Err(call_failed::<A, M>(label, e)),
    }
}

fn dispatch_try_async<A: AsyncTryHandler<M>, M: Message>(
    state: SharedState,
    msg: Value,
    info: CallInfo,
) -> LocalFuture {
    Box::pin(async move {
        let actor = state
            .downcast::<A>()
            .map_err(|_| wrong_actor::<A>("another actor type"))?;
        let msg = take_message::<M>(msg)?;
        let label = info
            .host
            .upgrade()
            .map(|h| label_of(&h))
            .unwrap_or_else(|| info.actor_id.to_string());
        let ctx = AsyncContext {
            info,
            _actor: PhantomData,
        };
        match A::handle(actor, msg, ctx).await {
            Ok(reply) => Ok(Value::new(reply)),
            Err(e) => Err(call_failed::<A, M>(label, e)),
        }
    })
}

fn dispatch_async<A: AsyncHandler<M>, M: Message>(
    state: SharedState,
    msg: Value,
    info: CallInfo,
) -> LocalFuture {
    Box::pin(async move {
        let actor = state
            .downcast::<A>()
            .map_err(|_| wrong_actor::<A>("another actor type"))?;
        let msg = take_message::<M>(msg)?;
        let ctx = AsyncContext {
            info,
            _actor: PhantomData,
        };
        Ok(Value::new(A::handle(actor, msg, ctx).await))
    })
}

pub(crate) struct Boxed<A>(pub(crate) A);

impl<A: Actor> ActorState for Boxed<A> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
    fn stopped(&mut self) {
        self.0.stopped();
    }
}

/// Options of an actor before it starts.
pub struct ActorBuilder<'r, A> {
    rt: &'r Runtime,
    kind: ActorKind,
    name: Option<String>,
    namespace: String,
    get_if_exists: bool,
    detached: bool,
    max_concurrency: Option<usize>,
    restart: RestartPolicy,
    group: Option<Arc<ActorGroup>>,
    /// The constructor's encoded argument, when the actor type is registered
    /// (`remote_actor!`) and so may start on another node.
    remote: Option<Value>,
    scheduling: Scheduling,
    num_cpus: f64,
    resources: rayx_actors::groups::Resources,
    _actor: PhantomData<fn() -> A>,
}

impl<'r, A: Actor> ActorBuilder<'r, A> {
    pub(crate) fn sync(rt: &'r Runtime, factory: impl Fn() -> A + Send + Sync + 'static) -> Self {
        const {
            assert!(
                !A::ASYNC,
                "an actor with `const ASYNC: bool = true` starts with Runtime::async_actor"
            )
        };
        let factory: Box<dyn Fn() -> Box<dyn ActorState> + Send + Sync> =
            Box::new(move || Box::new(Boxed(factory())));
        Self::with_kind(rt, ActorKind::Sync(factory))
    }

    pub(crate) fn asynchronous(
        rt: &'r Runtime,
        factory: impl Fn() -> A + Send + Sync + 'static,
    ) -> Self
    where
        A: Sync,
    {
        const {
            assert!(
                A::ASYNC,
                "Runtime::async_actor needs an actor with `const ASYNC: bool = true` in its impl"
            )
        };
        let factory: Box<dyn Fn() -> SharedState + Send + Sync> =
            Box::new(move || Arc::new(factory()));
        // Ray's default for async actors.
        Self::with_kind(
            rt,
            ActorKind::Async {
                factory,
                max_concurrency: 1000,
            },
        )
    }

    /// Marks the actor as startable on another node, from this encoded
    /// constructor argument.
    pub(crate) fn with_remote(mut self, arg: Value) -> Self {
        self.remote = Some(arg);
        self
    }

    fn with_kind(rt: &'r Runtime, kind: ActorKind) -> Self {
        ActorBuilder {
            rt,
            kind,
            name: None,
            namespace: DEFAULT_NAMESPACE.to_string(),
            get_if_exists: false,
            detached: false,
            max_concurrency: None,
            restart: RestartPolicy::default(),
            group: None,
            remote: None,
            scheduling: Scheduling::Default,
            num_cpus: 1.0,
            resources: Default::default(),
            _actor: PhantomData,
        }
    }

    /// Where in a cluster it may start (Ray's scheduling strategy); only an
    /// actor made with `actor_of` (a registered type) can start on another node.
    pub fn scheduling(mut self, scheduling: Scheduling) -> Self {
        self.scheduling = scheduling;
        self
    }
    /// Starts it on `node` (if it cannot: elsewhere when `soft`, else it fails).
    pub fn node_affinity(self, node: NodeId, soft: bool) -> Self {
        self.scheduling(Scheduling::NodeAffinity { node, soft })
    }
    /// CPUs it needs on its node, for placement (Ray's `num_cpus`; default 1).
    pub fn num_cpus(mut self, cpus: f64) -> Self {
        self.num_cpus = cpus;
        self
    }
    /// An amount of a custom resource it needs on its node, for placement
    /// (Ray's `resources`).
    pub fn resource(mut self, name: impl Into<String>, amount: f64) -> Self {
        self.resources.insert(name.into(), amount);
        self
    }
    /// Starts it in a placement group (Ray's `PlacementGroupSchedulingStrategy`):
    /// on the node of bundle `bundle` (or of any bundle it fits), out of what
    /// the bundle reserves; it is killed when the group is removed.
    pub fn placement_group(self, pg: &crate::PlacementGroup, bundle: Option<usize>) -> Self {
        self.scheduling(Scheduling::PlacementGroup {
            group: pg.id(),
            bundle: bundle.map(|b| b.min(u32::MAX as usize) as u32),
        })
    }

    /// Names the actor, so [`Runtime::get_actor`] finds it. Names are unique.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// The namespace of the name (default `"default"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }
    /// If an actor has the name already, return it instead of failing.
    pub fn get_if_exists(mut self) -> Self {
        self.get_if_exists = true;
        self
    }
    /// Keep the actor alive with no handle left, until killed or shutdown.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }
    /// Restarts after crashes (Ray's `max_restarts`): 0 by default;
    /// `Retries::Infinite` for no limit (Ray's -1). A restart runs the
    /// constructor again.
    pub fn max_restarts(mut self, n: impl Into<Retries>) -> Self {
        self.restart.max_restarts = n.into();
        self
    }
    /// Times a call interrupted by a crash is sent again after the restart, in
    /// its original order (Ray's `max_task_retries`): 0 by default (such calls
    /// fail with `ActorDied`); `Retries::Infinite` for no limit.
    pub fn max_task_retries(mut self, n: impl Into<Retries>) -> Self {
        self.restart.max_task_retries = n.into();
        self
    }
    /// Puts the actor under a supervision group: the group's strategy and
    /// restart intensity decide whether it comes back after a crash (set
    /// `max_restarts` on the group, not on the actor).
    pub fn supervisor(mut self, group: &Supervisor) -> Self {
        self.group = Some(group.group.clone());
        self
    }
    /// Calls in flight at once on an async actor (default 1000).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Starts the actor; its constructor runs on the runtime's threads.
    pub fn spawn(self) -> Result<ActorHandle<A>> {
        let mut kind = self.kind;
        match (&mut kind, self.max_concurrency) {
            (
                ActorKind::Async {
                    max_concurrency, ..
                },
                Some(n),
            ) => {
                if n == 0 {
                    return Err(Error::InvalidArgument(
                        "max_concurrency must be at least 1".into(),
                    ));
                }
                *max_concurrency = n;
            }
            (ActorKind::Sync(_), Some(n)) if n > 1 => {
                return Err(Error::InvalidArgument(
                    "max_concurrency > 1 needs an async actor (Runtime::async_actor)".into(),
                ))
            }
            _ => {}
        }
        if let Some(name) = &self.name {
            rayx_actors::cluster::wire::check_names(&self.namespace, name)?;
        }
        if let Some(group) = self.group.as_ref().filter(|g| g.gave_up()) {
            return Err(Error::InvalidArgument(format!(
                "supervisor `{}` gave up: it takes no new actors",
                group.name()
            )));
        }
        if self.group.is_some() && !self.restart.max_restarts.is_none() {
            return Err(Error::InvalidArgument(
                "an actor under a supervisor restarts by its supervisor's limit: set max_restarts on the supervisor, not the actor".into(),
            ));
        }
        let node = self.rt.node().clone();
        let mut id = None;
        rayx_actors::groups::check_need(self.num_cpus, &self.resources)?;
        let group = match self.scheduling {
            Scheduling::PlacementGroup { group, .. } => Some(group),
            _ => None,
        };
        // Started here for sure (this runtime is the whole cluster, or an
        // actor made from a closure goes into a group): what this node cannot
        // give fails now.
        let local_only = self.remote.is_none() || self.group.is_some();
        if node.cluster().is_none() || (local_only && group.is_some()) {
            let options = rayx_actors::messages::TaskOptions {
                scheduling: self.scheduling,
                num_cpus: self.num_cpus,
                resources: self.resources.clone(),
                ..Default::default()
            };
            node.fits_here(&options)
                .map_err(|reason| Error::Unschedulable {
                    task: std::any::type_name::<A>().to_string(),
                    reason,
                })?;
        }
        if let Some(cluster) = node.cluster() {
            // The head places it (a closure-built actor stays here) and
            // reserves its name cluster-wide.
            let actor = node.new_actor_id();
            let name = self.name.clone().map(|n| (self.namespace.clone(), n));
            let create = ActorCreate {
                actor,
                type_name: std::any::type_name::<A>().to_string(),
                args: self.remote.clone().unwrap_or_else(|| Value::new(())),
                name: name.clone(),
                detached: self.detached,
                max_restarts: self.restart.max_restarts,
                max_task_retries: self.restart.max_task_retries,
                max_concurrency: self.max_concurrency,
                group,
            };
            // Restarted on another node if its node dies: an actor with
            // restarts left and a registered constructor.
            let restart = (!local_only && !self.restart.max_restarts.is_none())
                .then(|| Box::new(create.clone()));
            let placed = cluster.ask(Ask::PlaceActor {
                actor,
                type_name: std::any::type_name::<A>().to_string(),
                name: name.clone(),
                get_if_exists: self.get_if_exists,
                cpus: if local_only { 0.0 } else { self.num_cpus },
                resources: if local_only {
                    Default::default()
                } else {
                    self.resources.clone()
                },
                scheduling: if local_only {
                    Scheduling::NodeAffinity {
                        node: node.id(),
                        soft: false,
                    }
                } else {
                    self.scheduling
                },
                from: node.id(),
                restart,
            })?;
            match placed {
                Answer::Actor(place) => {
                    return handle_at(&node, place.actor, place.node, place.type_name, self.name)
                }
                Answer::Placed(at) if at.id != node.id() => {
                    // Noted before it starts: a move from here on counts the
                    // creator's hold where it goes.
                    let creator = !self.detached;
                    if creator {
                        cluster.hold_actor(at.id, actor, Holder::Creator, true);
                    }
                    if let Err(e) = cluster.create_actor(at.id, create) {
                        if creator {
                            cluster.hold_actor(at.id, actor, Holder::Creator, false);
                        }
                        cluster.actor_gone(actor);
                        return Err(e);
                    }
                    return ActorHandle::remote(RemoteActor {
                        id: actor,
                        host_node: at.id,
                        name: self.name,
                        type_name: std::any::type_name::<A>().to_string(),
                        node: node.clone(),
                        owned: true,
                        detached: self.detached,
                        dead: std::sync::atomic::AtomicBool::new(false),
                    });
                }
                _ => id = Some(actor),
            }
        }
        let spec = ActorSpec {
            name: self.name,
            namespace: self.namespace,
            get_if_exists: self.get_if_exists,
            detached: self.detached,
            mailbox_capacity: node.config().mailbox_capacity,
            type_id: TypeId::of::<A>(),
            type_name: std::any::type_name::<A>(),
            kind,
            restart: self.restart,
            group: self.group,
        };
        let id = match (id, group) {
            (None, Some(_)) => Some(node.new_actor_id()),
            (id, _) => id,
        };
        if let (Some(g), Some(id)) = (group, id) {
            if let Err(e) = node.join_group(g, id) {
                if let Some(c) = node.cluster() {
                    c.actor_gone(id);
                }
                return Err(e);
            }
        }
        let spawned = match id {
            Some(id) => node.spawn_actor_as(id, spec),
            None => node.spawn_actor(spec),
        };
        let (host, _existed) = match spawned {
            Ok(s) => s,
            Err(e) => {
                if let (Some(id), Some(c)) = (id, node.cluster()) {
                    c.actor_gone(id);
                }
                return Err(e);
            }
        };
        if let (Some(g), Some(id)) = (group, id) {
            node.check_group(g, id)?;
        }
        ActorHandle::from_host(node, host)
    }
}

/// A handle to an actor: `Clone + Send + Sync`, passable into tasks and other
/// actors, on this node or another (it serializes as the actor's id and
/// node). The actor is collected when its creator's last handle is dropped,
/// unless it is detached.
pub struct ActorHandle<A> {
    target: Target,
    _actor: PhantomData<fn() -> A>,
}

#[derive(Clone)]
enum Target {
    /// An actor of this process.
    Local {
        host: Arc<ActorHost>,
        node: Arc<Node>,
    },
    /// An actor on another node of the cluster.
    Remote(Arc<RemoteActor>),
}

impl<A> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle {
            target: self.target.clone(),
            _actor: PhantomData,
        }
    }
}

impl<A> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Local { host, .. } => {
                write!(f, "ActorHandle<{}>({})", host.type_name(), host.id())
            }
            Target::Remote(r) => write!(
                f,
                "ActorHandle<{}>({} on {})",
                r.type_name, r.id, r.host_node
            ),
        }
    }
}

impl<A: Actor> ActorHandle<A> {
    pub(crate) fn from_host(node: Arc<Node>, host: Arc<ActorHost>) -> Result<Self> {
        if host.actor_type() != TypeId::of::<A>() {
            return Err(wrong_actor::<A>(host.type_name()));
        }
        Ok(Self::new(node, host))
    }

    fn new(node: Arc<Node>, host: Arc<ActorHost>) -> Self {
        ActorHandle {
            target: Target::Local { host, node },
            _actor: PhantomData,
        }
    }

    pub(crate) fn remote(remote: RemoteActor) -> Result<Self> {
        if remote.type_name != std::any::type_name::<A>() {
            return Err(wrong_actor::<A>(&remote.type_name));
        }
        Ok(ActorHandle {
            target: Target::Remote(Arc::new(remote)),
            _actor: PhantomData,
        })
    }

    /// A weak handle: it names the actor without keeping it alive.
    pub fn downgrade(&self) -> WeakActorHandle<A> {
        match &self.target {
            Target::Local { host, node } => WeakActorHandle::new(node, host),
            Target::Remote(r) => WeakActorHandle {
                target: WeakTarget::Remote(Arc::downgrade(r)),
                _actor: PhantomData,
            },
        }
    }
}

/// A handle that does not keep its actor alive (an actor can hold one to
/// itself): upgrade it to call.
pub struct WeakActorHandle<A> {
    target: WeakTarget,
    _actor: PhantomData<fn() -> A>,
}

#[derive(Clone)]
enum WeakTarget {
    Local {
        host: Weak<ActorHost>,
        node: Weak<Node>,
    },
    Remote(Weak<RemoteActor>),
}

impl<A> Clone for WeakActorHandle<A> {
    fn clone(&self) -> Self {
        WeakActorHandle {
            target: self.target.clone(),
            _actor: PhantomData,
        }
    }
}

impl<A: Actor> WeakActorHandle<A> {
    fn new(node: &Arc<Node>, host: &Arc<ActorHost>) -> Self {
        Self::from_weak(node, Arc::downgrade(host))
    }

    fn from_weak(node: &Arc<Node>, host: Weak<ActorHost>) -> Self {
        WeakActorHandle {
            target: WeakTarget::Local {
                host,
                node: Arc::downgrade(node),
            },
            _actor: PhantomData,
        }
    }

    /// A handle, if the actor is still there.
    pub fn upgrade(&self) -> Option<ActorHandle<A>> {
        let target = match &self.target {
            WeakTarget::Local { host, node } => Target::Local {
                host: host.upgrade()?,
                node: node.upgrade()?,
            },
            WeakTarget::Remote(r) => Target::Remote(r.upgrade()?),
        };
        Some(ActorHandle {
            target,
            _actor: PhantomData,
        })
    }
}

impl<A> ActorHandle<A> {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        match &self.target {
            Target::Local { host, .. } => host.id(),
            Target::Remote(r) => r.id,
        }
    }

    /// The node the actor runs on.
    pub fn node_id(&self) -> NodeId {
        match &self.target {
            Target::Local { node, .. } => node.id(),
            Target::Remote(r) => match r.node.cluster() {
                // Started again elsewhere after its node died.
                Some(c) => c.actor_node(r.id, r.host_node),
                None => r.host_node,
            },
        }
    }

    /// The actor's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        match &self.target {
            Target::Local { host, .. } => host.name(),
            Target::Remote(r) => r.name.as_deref(),
        }
    }

    /// Whether the actor is known here to have died (an actor on another
    /// node is known dead once a call to it fails with `ActorDied`).
    pub fn is_dead(&self) -> bool {
        match &self.target {
            Target::Local { host, .. } => host.is_dead(),
            Target::Remote(r) => r.dead.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// Calls queued and not yet started (0 for an actor on another node).
    pub fn queued(&self) -> usize {
        match &self.target {
            Target::Local { host, .. } => host.queued(),
            Target::Remote(_) => 0,
        }
    }

    /// Sends `msg`; the reply's `ObjectRef` comes back at once. Calls from one
    /// caller run in the order they were made, on this node or another.
    pub fn call<M: Message, Kind: CallKind>(&self, msg: M) -> ObjectRef<M::Reply>
    where
        A: Actor + Dispatches<M, Kind>,
    {
        const {
            assert!(
                A::ASYNC == Kind::ASYNC,
                "a sync actor's messages need Handler or TryHandler; an async actor's (`const ASYNC: bool = true`) need AsyncHandler or AsyncTryHandler"
            )
        };
        match &self.target {
            Target::Local { host, node } => {
                // The reply names its actor, for a cancel to reach a waiting call.
                let reply = node.new_pending_call(host.id());
                let dispatch = <A as Dispatches<M, Kind>>::DISPATCH;
                let call = ActorCall {
                    actor: host.id(),
                    method: Cow::Borrowed(std::any::type_name::<M>()),
                    message: Value::new(msg),
                    reply_to: reply.id(),
                };
                host.call(CallJob {
                    call,
                    dispatch,
                    retries: 0,
                    reply: reply.clone(),
                    copy: Some(copy_message::<M>),
                });
                ObjectRef::from_slot(reply)
            }
            Target::Remote(r) => ObjectRef::from_slot(
                r.call(Cow::Borrowed(std::any::type_name::<M>()), Value::new(msg)),
            ),
        }
    }

    /// Kills the actor: the running call finishes; queued and later calls fail
    /// with `ActorDied`; its state is dropped.
    pub fn kill(&self) {
        match &self.target {
            Target::Local { host, node } => node.kill_actor(host, true),
            Target::Remote(r) => r.kill(true),
        }
    }

    /// Kills the actor so that it restarts if its `max_restarts` allows (Ray's
    /// `kill(no_restart=False)`); otherwise it dies as with [`kill`](Self::kill).
    pub fn restart(&self) {
        match &self.target {
            Target::Local { host, node } => node.kill_actor(host, false),
            Target::Remote(r) => r.kill(false),
        }
    }
}

/// How a handle travels: the actor, its node, and its type's name.
#[derive(Serialize, Deserialize)]
struct HandleWire {
    actor: ActorId,
    node: NodeId,
    type_name: String,
}

impl<A> Serialize for ActorHandle<A> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let type_name = match &self.target {
            Target::Local { host, .. } => {
                rayx_actors::value::pin_while_sending(host.clone());
                host.type_name().to_string()
            }
            Target::Remote(r) => {
                rayx_actors::value::pin_while_sending(r.clone());
                r.type_name.clone()
            }
        };
        HandleWire {
            actor: self.id(),
            node: self.node_id(),
            type_name,
        }
        .serialize(s)
    }
}

impl<'de, A: Actor> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let wire = HandleWire::deserialize(d)?;
        let here = rayx_actors::node::current_node().ok_or_else(|| {
            serde::de::Error::custom(
                "an ActorHandle can be decoded only in a rayx worker or with Runtime::decode",
            )
        })?;
        handle_at(&here, wire.actor, wire.node, wire.type_name, None)
            .map_err(crate::handle::decode_error)
    }
}

/// A handle to `actor` on `node`, seen from `here`: local if it is this
/// process's, else through the cluster (not owning: it does not keep the
/// actor alive).
pub(crate) fn handle_at<A: Actor>(
    here: &Arc<Node>,
    actor: ActorId,
    node: NodeId,
    type_name: String,
    name: Option<String>,
) -> Result<ActorHandle<A>> {
    if here.id() == node || here.cluster().is_none() || here.actor_by_id(actor).is_some() {
        let (owner, host) = here.resolve_actor(actor)?;
        return ActorHandle::from_host(owner, host);
    }
    // Its node, or where it went; a handle decoded between its node's death
    // and the news of where it went reaches it once the news comes.
    let reach = here
        .cluster()
        .map_or(Ok(node), |c| c.reach_actor(actor, node));
    match reach {
        Ok(node) => ActorHandle::remote(
            RemoteActor {
                id: actor,
                host_node: node,
                name,
                type_name,
                node: here.clone(),
                owned: false,
                detached: false,
                dead: std::sync::atomic::AtomicBool::new(false),
            }
            .held(),
        ),
        Err(cause) => Err(Error::ActorDied {
            actor: actor.to_string(),
            cause,
        }),
    }
}

/// A supervision group of actors (Erlang/OTP's supervisor, which Ray lacks): it
/// restarts its children by its [`Strategy`](crate::Strategy) within its
/// restart intensity — at most `max` restarts within `within` — and past it
/// escalates to its parent group, which restarts the whole group by its own
/// strategy; a group with no parent (or whose parent gives up) stops every child
/// for good. Groups nest: a group can be a child of another.
///
/// ```
/// use rayx::prelude::*;
/// use rayx::Strategy;
///
/// struct Cache { warm: bool }
/// impl Actor for Cache {}
/// #[derive(Serialize, Deserialize)]
/// struct Get(bool);
/// impl Message for Get { type Reply = bool; }
/// impl Handler<Get> for Cache {
///     fn handle(&mut self, Get(crash): Get, _: &mut ActorContext<Self>) -> bool {
///         assert!(!crash, "cache corrupted");
///         std::mem::replace(&mut self.warm, true)
///     }
/// }
///
/// let rt = rayx::init()?;
/// let group = rt.supervisor("caches").strategy(Strategy::OneForAll)
///     .max_restarts(3, Duration::from_secs(60)).start();
/// let a = rt.actor(|| Cache { warm: false }).supervisor(&group).spawn()?;
/// let b = rt.actor(|| Cache { warm: false }).supervisor(&group).spawn()?;
/// assert_eq!(b.call(Get(false)).get()?, false);
/// assert!(a.call(Get(true)).get().is_err());      // a crashes: one-for-all
/// assert_eq!(a.call(Get(false)).get()?, false);   // a restarted...
/// assert_eq!(b.call(Get(false)).get()?, false);   // ...and b with it
/// # Ok::<(), rayx::Error>(())
/// ```
#[derive(Clone)]
pub struct Supervisor {
    group: Arc<ActorGroup>,
}

impl Supervisor {
    /// The group's name.
    pub fn name(&self) -> &str {
        self.group.name()
    }
    /// Whether it gave up (its children were stopped for good).
    pub fn gave_up(&self) -> bool {
        self.group.gave_up()
    }
}

/// Options of a supervision group before it starts.
pub struct SupervisorBuilder<'r> {
    rt: &'r Runtime,
    name: String,
    strategy: crate::Strategy,
    max: usize,
    within: std::time::Duration,
    parent: Option<Arc<ActorGroup>>,
}

impl<'r> SupervisorBuilder<'r> {
    pub(crate) fn new(rt: &'r Runtime, name: String) -> Self {
        SupervisorBuilder {
            rt,
            name,
            strategy: crate::Strategy::OneForOne,
            max: 3,
            within: std::time::Duration::from_secs(5),
            parent: None,
        }
    }
    /// Which children restart when one fails (default one-for-one).
    pub fn strategy(mut self, strategy: crate::Strategy) -> Self {
        self.strategy = strategy;
        self
    }
    /// At most `max` restarts within `within` (default 3 in 5 s, as OTP's 3
    /// in 5); one more and the group escalates.
    pub fn max_restarts(mut self, max: usize, within: std::time::Duration) -> Self {
        self.max = max;
        self.within = within;
        self
    }
    /// Makes the group a child of `parent`.
    pub fn parent(mut self, parent: &Supervisor) -> Self {
        self.parent = Some(parent.group.clone());
        self
    }
    /// Starts the group.
    pub fn start(self) -> Supervisor {
        let events = self.rt.node().core().events.clone();
        Supervisor {
            group: ActorGroup::new(
                self.name,
                self.strategy,
                self.max,
                self.within,
                self.parent,
                events,
            ),
        }
    }
}
