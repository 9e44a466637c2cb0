//! The root supervisor: starts the node's system actors (owner, object store,
//! router, which starts the workers), stops them in order at shutdown, and
//! publishes supervision events as values a test or a user can observe.

use crate::node::Node;
use crate::object_store::ObjectStoreActor;
use crate::owner::Owner;
use crate::router::{Router, StopWorkers};
use actix::{Actor, Addr, Context, Handler, Message};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

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

    fn started(&mut self, _: &mut Context<Self>) {
        let node = &self.node;
        self.owner = Some(Owner::new(node.table.clone()).start());
        self.store = Some(ObjectStoreActor(node.store.clone()).start());
        for child in ["owner", "object-store"] {
            node.events.publish(SupervisionEvent::Started {
                child: child.into(),
            });
        }
        self.router = Some(Router::new(Arc::downgrade(node)).start());
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
