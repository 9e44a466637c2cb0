//! The root supervisor: starts the node's system actors (the router, which starts
//! the workers), restarts them by its strategy within its restart intensity, and
//! stops the node when it gives up or at shutdown.

use crate::core::Core;
use crate::events::SupervisionEvent;
use crate::router::{Router, StopWorkers};
use crate::supervision::{
    ChildFailed, ChildLink, Escalate, Fail, RestartIntensity, StopChild, Strategy,
};
use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// The root's children, in start order: what `inject_system_failure` names.
/// The object table and object store are tables, not actors: their state is
/// shared memory that a restart could not reset, so they are not in the tree.
pub const CHILDREN: [&str; 1] = ["router"];

/// The root of the node's supervision tree.
pub struct Supervisor {
    core: Arc<Core>,
    strategy: Strategy,
    intensity: RestartIntensity,
    restarts: u64,
    router: Option<Addr<Router>>,
}

impl Supervisor {
    /// The root of `core`'s tree.
    pub fn new(core: Arc<Core>) -> Self {
        let (strategy, max, within) = core.config.supervision;
        Supervisor {
            core,
            strategy,
            intensity: RestartIntensity::new(max, within),
            restarts: 0,
            router: None,
        }
    }

    fn start_child(&mut self, child: usize, ctx: &mut Context<Self>) {
        let link = ChildLink::new(
            CHILDREN[child],
            ctx.address().recipient(),
            ctx.address().recipient(),
        );
        self.router = Some(Router::new(self.core.clone(), link).start());
        self.core.events.publish(SupervisionEvent::Started {
            child: CHILDREN[child].into(),
        });
    }

    /// Stops a running child on purpose (it reports no failure).
    fn stop_child(&mut self, _child: usize) {
        if let Some(router) = self.router.take() {
            router.do_send(StopChild);
        }
    }

    fn send_failure(&self, _child: usize, cause: String) -> bool {
        self.router
            .as_ref()
            .map(|a| a.do_send(Fail(cause)))
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

impl Handler<ChildFailed> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: ChildFailed, ctx: &mut Context<Self>) {
        let Some(failed) = CHILDREN.iter().position(|c| *c == msg.child) else {
            return;
        };
        self.router = None;
        let events = self.core.events.clone();
        events.publish(SupervisionEvent::Failed {
            child: msg.child.clone(),
            cause: msg.cause.clone(),
        });
        if self.core.table.is_closed() {
            return;
        }
        if !self.intensity.allow(Instant::now()) {
            events.publish(SupervisionEvent::GaveUp {
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
            events.publish(SupervisionEvent::Restarted {
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
        for child in CHILDREN.iter().rev() {
            self.core.events.publish(SupervisionEvent::Stopped {
                child: (*child).into(),
                reason: "shutdown".into(),
            });
        }
        self.core.events.close();
        actix_rt::System::current().stop();
    }
}

/// A child gave up after too many restarts. The root has no parent to pass it
/// to, so it stops the node: every pending object fails with `ShutDown`.
impl Handler<Escalate> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Escalate, _: &mut Context<Self>) {
        tracing::error!(
            "rayx: {} gave up ({}); stopping the node",
            msg.child,
            msg.cause
        );
        self.core.events.publish(SupervisionEvent::Failed {
            child: msg.child,
            cause: msg.cause,
        });
        let core = self.core.clone();
        // Stopping joins this thread's system from outside; run it elsewhere.
        std::thread::spawn(move || core.stop_node());
    }
}
