//! The vocabulary of supervision, shared by every supervisor and child: restart
//! strategies, restart intensity (Erlang/OTP's "at most N restarts in T"), and the
//! messages by which a child reports its failure to its parent.

use actix::{Message, Recipient};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Restart intensity, as in Erlang/OTP: at most `max` restarts within `within`;
/// one more and the supervisor gives up and escalates.
///
/// ```
/// use rayx_actors::supervision::RestartIntensity;
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

/// A child's tie to its supervisor: its name, and why it failed, if it did. Its
/// actor's `stopped` calls [`ChildLink::report`], so a failure (and only a
/// failure, not a planned stop) reaches the parent.
pub struct ChildLink {
    name: &'static str,
    failed: Recipient<ChildFailed>,
    escalate: Recipient<Escalate>,
    failure: Option<String>,
}

impl ChildLink {
    /// A link to the parent that takes these messages.
    pub fn new(
        name: &'static str,
        failed: Recipient<ChildFailed>,
        escalate: Recipient<Escalate>,
    ) -> Self {
        ChildLink {
            name,
            failed,
            escalate,
            failure: None,
        }
    }

    /// Marks the child failed; the report goes when it stops.
    pub fn fail(&mut self, cause: String) {
        self.failure = Some(cause);
    }

    /// Passes a failure this child cannot handle up to the parent.
    pub fn escalate(&self, cause: String) {
        self.escalate.do_send(Escalate {
            child: self.name.into(),
            cause,
        });
    }

    /// Tells the parent this child failed, if it did.
    pub fn report(&mut self) {
        if let Some(cause) = self.failure.take() {
            self.failed.do_send(ChildFailed {
                child: self.name.into(),
                cause,
            });
        }
    }
}

/// Makes an actor with a `link: ChildLink` field a supervised child: it fails
/// on `Fail` and stops quietly on `StopChild`.
macro_rules! supervised_child {
    ($actor:ty) => {
        impl actix::Handler<$crate::supervision::Fail> for $actor {
            type Result = ();
            fn handle(&mut self, msg: $crate::supervision::Fail, ctx: &mut actix::Context<Self>) {
                self.link.fail(msg.0);
                actix::ActorContext::stop(ctx);
            }
        }
        impl actix::Handler<$crate::supervision::StopChild> for $actor {
            type Result = ();
            fn handle(
                &mut self,
                _: $crate::supervision::StopChild,
                ctx: &mut actix::Context<Self>,
            ) {
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
pub(crate) use supervised_child;

/// Makes a child fail, as an engine fault would: fault injection for the tree.
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

/// A child gave up after too many restarts of its own children.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Escalate {
    /// Which child.
    pub child: String,
    /// Why.
    pub cause: String,
}
