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

/// The root of the node's supervision tree.
pub struct Supervisor {
    node: Arc<Node>,
    router: Option<Addr<Router>>,
    owner: Option<Addr<Owner>>,
    store: Option<Addr<ObjectStoreActor>>,
}

impl Supervisor {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Supervisor {
            node,
            router: None,
            owner: None,
            store: None,
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let node = &self.node;
        self.owner = Some(Owner::new(node.table.clone()).start());
        self.store = Some(ObjectStoreActor(node.store.clone()).start());
        for child in ["owner", "object-store"] {
            node.events.publish(SupervisionEvent::Started {
                child: child.into(),
            });
        }
        let intensity = RestartIntensity::new(
            node.config().worker_restarts.0,
            node.config().worker_restarts.1,
        );
        self.router = Some(Router::new(Arc::downgrade(node), ctx.address(), intensity).start());
        node.events.publish(SupervisionEvent::Started {
            child: "router".into(),
        });
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
