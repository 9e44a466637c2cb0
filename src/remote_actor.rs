//! Handles' view of an actor on another node of the cluster: its calls go
//! through the node's cluster link, straight to the actor's node.

use crate::Error;
use rayx_actors::cluster::Holder;
use rayx_actors::ids::{ActorId, NodeId};
use rayx_actors::messages::ActorCall;
use rayx_actors::object_table::Slot;
use rayx_actors::value::Value;
use rayx_actors::Node;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An actor on another node, as its handles here see it.
pub(crate) struct RemoteActor {
    pub(crate) id: ActorId,
    pub(crate) host_node: NodeId,
    pub(crate) name: Option<String>,
    pub(crate) type_name: String,
    pub(crate) node: Arc<Node>,
    /// Its creator's handles (counted as a hold when it was created).
    pub(crate) owned: bool,
    /// Created detached by this node: no hold to release.
    pub(crate) detached: bool,
    pub(crate) dead: AtomicBool,
}

impl RemoteActor {
    /// Sends a call; the reply's slot comes back at once.
    pub(crate) fn call(&self, method: Cow<'static, str>, message: Value) -> Arc<Slot> {
        let reply = self.node.new_pending_call(self.id);
        let call = ActorCall {
            actor: self.id,
            method,
            message,
            reply_to: reply.id(),
        };
        match self.node.cluster() {
            Some(c) => c.call_actor(self.host_node, call, reply.clone()),
            None => reply.complete(Err(Error::ShutDown)),
        }
        reply
    }

    pub(crate) fn kill(&self, no_restart: bool) {
        if let Some(c) = self.node.cluster() {
            c.kill_actor(self.host_node, self.id, no_restart);
        }
        if no_restart {
            self.dead.store(true, Ordering::Release);
        }
    }
}

impl RemoteActor {
    /// A handle of this node to an actor on another: the actor's node counts
    /// it as a hold until it is dropped (its creator's hold is counted when
    /// it is created).
    pub(crate) fn held(self) -> RemoteActor {
        if !self.owned {
            if let Some(c) = self.node.cluster() {
                c.hold_actor(self.host_node, self.id, Holder::Handle, true);
            }
        }
        self
    }
}

impl Drop for RemoteActor {
    fn drop(&mut self) {
        // Its hold goes: a decoded handle's, or the creator's (a detached
        // actor's creator holds it for good).
        if let Some(c) = self.node.cluster() {
            if !self.detached {
                let by = if self.owned {
                    Holder::Creator
                } else {
                    Holder::Handle
                };
                c.hold_actor(self.host_node, self.id, by, false);
            }
        }
    }
}
