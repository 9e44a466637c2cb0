//! The root supervisor: starts the node's system actors (owner, object store,
//! router, which starts the workers), stops them in order at shutdown, and
//! publishes supervision events as values a test or a user can observe.

use crate::node::Node;
use crate::object_store::ObjectStoreActor;
use crate::owner::Owner;
use crate::router::{Router, StopWorkers};
use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Something that happened to a supervised actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupervisionEvent {
    /// A child started.
    Started {
        /// Which child.
        child: String,
    },
    /// A child failed.
    Failed {
        /// Which child.
        child: String,
        /// Why.
        cause: String,
    },
    /// A child was restarted after a failure.
    Restarted {
        /// Which child.
        child: String,
        /// How many restarts it has had, this one included.
        attempt: u64,
    },
    /// A child failed more often than its restart limit allows; it stays down
    /// and the failure goes up to its supervisor.
    GaveUp {
        /// Which child.
        child: String,
        /// Restarts it had.
        restarts: u64,
    },
    /// A child stopped.
    Stopped {
        /// Which child.
        child: String,
        /// Why.
        reason: String,
    },
}

/// Fans supervision events out to subscribers.
#[derive(Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Sender<SupervisionEvent>>>,
}

impl EventBus {
    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> Receiver<SupervisionEvent> {
        let (tx, rx) = channel();
        self.subscribers.lock().push(tx);
        rx
    }

    /// Sends `event` to every live subscriber.
    pub fn publish(&self, event: SupervisionEvent) {
        tracing::debug!("rayx: {event:?}");
        self.subscribers
            .lock()
            .retain(|s| s.send(event.clone()).is_ok());
    }
}

/// Restart intensity, as in Erlang/OTP: at most `max` restarts within `within`;
/// one more and the supervisor gives up and escalates.
///
/// ```
/// use rayx_actors::supervisor::RestartIntensity;
/// use std::time::{Duration, Instant};
///
/// let mut intensity = RestartIntensity::new(2, Duration::from_secs(5));
/// let t0 = Instant::now();
/// assert!(intensity.allow(t0));
/// assert!(intensity.allow(t0 + Duration::from_secs(1)));
/// assert!(!intensity.allow(t0 + Duration::from_secs(2)), "a third within 5 s is too many");
/// assert!(intensity.allow(t0 + Duration::from_secs(7)), "the first two have aged out");
/// ```
#[derive(Debug, Clone)]
pub struct RestartIntensity {
    /// Restarts allowed in the window.
    pub max: usize,
    /// The window.
    pub within: Duration,
    recent: VecDeque<Instant>,
}

impl RestartIntensity {
    /// At most `max` restarts within `within`.
    pub fn new(max: usize, within: Duration) -> Self {
        RestartIntensity {
            max,
            within,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; false if it is one too many.
    pub fn allow(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.within)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.max {
            return false;
        }
        self.recent.push_back(now);
        true
    }
}

/// Which children a supervisor restarts when one fails (Erlang/OTP's strategies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child.
    OneForAll,
    /// The failed child and those started after it (the default: each system
    /// actor depends on the ones before it).
    #[default]
    RestForOne,
}

/// The root's children, in start order: what `inject_system_failure` names.
pub const CHILDREN: [&str; 3] = ["owner", "object-store", "router"];

/// The root of the node's supervision tree: the owner, the object store and the
/// router (which supervises the workers, one-for-one).
pub struct Supervisor {
    node: Arc<Node>,
    strategy: Strategy,
    intensity: RestartIntensity,
    restarts: u64,
    router: Option<Addr<Router>>,
    owner: Option<Addr<Owner>>,
    store: Option<Addr<ObjectStoreActor>>,
}

impl Supervisor {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        let (strategy, max, within) = node.config().supervision;
        Supervisor {
            node,
            strategy,
            intensity: RestartIntensity::new(max, within),
            restarts: 0,
            router: None,
            owner: None,
            store: None,
        }
    }

    fn start_child(&mut self, child: usize, ctx: &mut Context<Self>) {
        let node = &self.node;
        match child {
            0 => self.owner = Some(Owner::new(node.table.clone(), ctx.address()).start()),
            1 => {
                self.store = Some(ObjectStoreActor::new(node.store.clone(), ctx.address()).start())
            }
            _ => {
                let config = node.config();
                let intensity =
                    RestartIntensity::new(config.worker_restarts.0, config.worker_restarts.1);
                self.router =
                    Some(Router::new(Arc::downgrade(node), ctx.address(), intensity).start());
            }
        }
        node.events.publish(SupervisionEvent::Started {
            child: CHILDREN[child].into(),
        });
    }

    /// Stops a running child on purpose (it reports no failure).
    fn stop_child(&mut self, child: usize) {
        match child {
            0 => self.owner.take().map(|a| a.do_send(StopChild)),
            1 => self.store.take().map(|a| a.do_send(StopChild)),
            _ => self.router.take().map(|a| a.do_send(StopChild)),
        };
    }

    fn send_failure(&self, child: usize, cause: String) -> bool {
        match child {
            0 => self.owner.as_ref().map(|a| a.do_send(Fail(cause))),
            1 => self.store.as_ref().map(|a| a.do_send(Fail(cause))),
            _ => self.router.as_ref().map(|a| a.do_send(Fail(cause))),
        }
        .is_some()
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for child in 0..CHILDREN.len() {
            self.start_child(child, ctx);
        }
    }
}

/// A system actor's tie to the root: its name, and why it failed, if it did.
/// Its `stopped` calls [`ChildLink::report`], so a failure (and only a failure,
/// not a planned stop) reaches the root.
pub(crate) struct ChildLink {
    name: &'static str,
    supervisor: Addr<Supervisor>,
    failure: Option<String>,
}

impl ChildLink {
    pub(crate) fn new(name: &'static str, supervisor: Addr<Supervisor>) -> Self {
        ChildLink {
            name,
            supervisor,
            failure: None,
        }
    }

    pub(crate) fn fail(&mut self, cause: String) {
        self.failure = Some(cause);
    }

    /// Passes a failure this child cannot handle up to the root.
    pub(crate) fn escalate(&self, cause: String) {
        self.supervisor.do_send(Escalate {
            child: self.name.into(),
            cause,
        });
    }

    /// Tells the root this child failed, if it did.
    pub(crate) fn report(&mut self) {
        if let Some(cause) = self.failure.take() {
            self.supervisor.do_send(ChildFailed {
                child: self.name.into(),
                cause,
            });
        }
    }
}

/// Makes an actor with a `link: ChildLink` field a child of the root: it fails
/// on `Fail` and stops quietly on `StopChild`.
macro_rules! supervised_child {
    ($actor:ty) => {
        impl actix::Handler<$crate::supervisor::Fail> for $actor {
            type Result = ();
            fn handle(&mut self, msg: $crate::supervisor::Fail, ctx: &mut actix::Context<Self>) {
                self.link.fail(msg.0);
                actix::ActorContext::stop(ctx);
            }
        }
        impl actix::Handler<$crate::supervisor::StopChild> for $actor {
            type Result = ();
            fn handle(&mut self, _: $crate::supervisor::StopChild, ctx: &mut actix::Context<Self>) {
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
pub(crate) use supervised_child;

/// Makes a child fail, as an engine fault would: fault injection for the
/// supervision tree.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Fail(pub String);

/// Stops a child on purpose (a strategy's restart, or shutdown).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct StopChild;

/// A child stopped because it failed.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct ChildFailed {
    /// Which child.
    pub child: String,
    /// Why.
    pub cause: String,
}

impl Handler<ChildFailed> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildFailed, ctx: &mut Context<Self>) {
        let Some(failed) = CHILDREN.iter().position(|c| *c == msg.child) else {
            return;
        };
        match failed {
            0 => self.owner = None,
            1 => self.store = None,
            _ => self.router = None,
        }
        self.node.events.publish(SupervisionEvent::Failed {
            child: msg.child.clone(),
            cause: msg.cause.clone(),
        });
        if self.node.is_closed() {
            return;
        }
        if !self.intensity.allow(Instant::now()) {
            self.node.events.publish(SupervisionEvent::GaveUp {
                child: "supervisor".into(),
                restarts: self.restarts,
            });
            ctx.notify(Escalate {
                child: "supervisor".into(),
                cause: format!(
                    "its children failed more than {} times within {:?}; last: {} ({})",
                    self.intensity.max, self.intensity.within, msg.child, msg.cause
                ),
            });
            return;
        }
        let restart: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![failed],
            Strategy::OneForAll => (0..CHILDREN.len()).collect(),
            Strategy::RestForOne => (failed..CHILDREN.len()).collect(),
        };
        // Stop the others in reverse start order, then start all in order.
        for &child in restart.iter().rev() {
            if child != failed {
                self.stop_child(child);
            }
        }
        self.restarts += 1;
        for &child in &restart {
            self.start_child(child, ctx);
            self.node.events.publish(SupervisionEvent::Restarted {
                child: CHILDREN[child].into(),
                attempt: self.restarts,
            });
        }
    }
}

/// Makes the named child of the root fail (fault injection).
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "bool")]
pub struct InjectFailure(pub String);

impl Handler<InjectFailure> for Supervisor {
    type Result = bool;
    fn handle(&mut self, msg: InjectFailure, _: &mut Context<Self>) -> bool {
        match CHILDREN.iter().position(|c| *c == msg.0) {
            Some(child) => self.send_failure(child, "failed by an injected fault".into()),
            None => false,
        }
    }
}

/// Stops the node: workers first, then the system.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Supervisor {
    type Result = ();
    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        if let Some(router) = &self.router {
            router.do_send(StopWorkers);
        }
        for child in ["router", "object-store", "owner"] {
            self.node.events.publish(SupervisionEvent::Stopped {
                child: child.into(),
                reason: "shutdown".into(),
            });
        }
        actix_rt::System::current().stop();
    }
}

/// A child gave up after too many restarts. The root has no parent to pass it
/// to, so it stops the node: every pending object fails with `ShutDown`.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Escalate {
    /// Which child.
    pub child: String,
    /// Why.
    pub cause: String,
}

impl Handler<Escalate> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Escalate, _: &mut Context<Self>) {
        tracing::error!(
            "rayx: {} gave up ({}); stopping the node",
            msg.child,
            msg.cause
        );
        self.node.events.publish(SupervisionEvent::Failed {
            child: msg.child,
            cause: msg.cause,
        });
        let node = self.node.clone();
        // Shutdown joins this thread's system from outside; run it elsewhere.
        std::thread::spawn(move || node.shutdown());
    }
}
