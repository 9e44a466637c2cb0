//! Supervision groups for user actors: the OTP feature Ray lacks. A group
//! restarts its children by its strategy (one-for-one, one-for-all, rest-for-one)
//! within its restart intensity (at most N restarts in T); past it, it escalates
//! to its parent group, which restarts the whole group by its own strategy, or —
//! at the top, or if the parent gives up too — stops every child for good.
//!
//! Children are actors and other groups, in the order they joined. A group
//! reaches its actors only through [`Supervised`], by signals their run loops
//! apply: it never takes an actor's lock.

use crate::events::{EventBus, SupervisionEvent};
use crate::supervision::{RestartIntensity, Strategy};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// What a group can do to an actor it supervises.
pub trait Supervised: Send + Sync {
    /// Restarts it (a signal): a sibling failed, or its group was restarted.
    fn restart_by_supervisor(self: Arc<Self>, cause: &str);
    /// Stops it for good: its group gave up.
    fn stop_by_supervisor(self: Arc<Self>, cause: &str);
}

enum Child {
    Actor(u64, Weak<dyn Supervised>),
    Group(u64, Weak<ActorGroup>),
}

impl Child {
    fn key(&self) -> u64 {
        match self {
            Child::Actor(k, _) | Child::Group(k, _) => *k,
        }
    }
    fn is_live(&self) -> bool {
        match self {
            Child::Actor(_, w) => w.strong_count() > 0,
            Child::Group(_, w) => w.strong_count() > 0,
        }
    }
}

struct State {
    intensity: RestartIntensity,
    children: Vec<Child>,
    restarts: u64,
    gave_up: bool,
}

/// A supervision group of user actors (and of other groups).
pub struct ActorGroup {
    name: String,
    key: u64,
    strategy: Strategy,
    limit: (usize, Duration),
    parent: Option<Arc<ActorGroup>>,
    state: Mutex<State>,
    next_key: Arc<AtomicU64>,
    events: Arc<EventBus>,
}

/// A child's place in its group, kept by the child to report its failures.
#[derive(Clone)]
pub struct Membership {
    group: Arc<ActorGroup>,
    key: u64,
}

impl ActorGroup {
    /// A group named `name` restarting by `strategy`, at most `max` restarts
    /// within `within`; under `parent` if given.
    pub fn new(
        name: String,
        strategy: Strategy,
        max: usize,
        within: Duration,
        parent: Option<Arc<ActorGroup>>,
        events: Arc<EventBus>,
    ) -> Arc<ActorGroup> {
        let next_key = parent
            .as_ref()
            .map(|p| p.next_key.clone())
            .unwrap_or_default();
        let group = Arc::new(ActorGroup {
            name,
            key: next_key.fetch_add(1, Ordering::Relaxed),
            strategy,
            limit: (max, within),
            parent,
            state: Mutex::new(State {
                intensity: RestartIntensity::new(max, within),
                children: Vec::new(),
                restarts: 0,
                gave_up: false,
            }),
            next_key,
            events,
        });
        if let Some(parent) = &group.parent {
            let mut state = parent.state.lock();
            state.children.retain(Child::is_live);
            state
                .children
                .push(Child::Group(group.key, Arc::downgrade(&group)));
        }
        group.events.publish(SupervisionEvent::Started {
            child: group.name.clone(),
        });
        group
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it gave up (its children were stopped for good).
    pub fn gave_up(&self) -> bool {
        self.state.lock().gave_up
    }

    /// Adds an actor as the youngest child; its membership reports its failures.
    pub fn join(self: &Arc<Self>, actor: Weak<dyn Supervised>) -> Membership {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock();
        state.children.retain(Child::is_live);
        state.children.push(Child::Actor(key, actor));
        Membership {
            group: self.clone(),
            key,
        }
    }

    /// A child failed with `cause`: true if it restarts (its siblings restart
    /// too as the strategy says), false if the group gave up and the child
    /// stops for good.
    fn child_failed(self: &Arc<Self>, key: u64, cause: &str) -> bool {
        let siblings = {
            let mut state = self.state.lock();
            if state.gave_up {
                return false;
            }
            if state.intensity.allow(Instant::now()) {
                state.restarts += 1;
                Some(self.siblings_to_restart(&state, key))
            } else {
                None
            }
        };
        match siblings {
            Some(siblings) => {
                let why = format!(
                    "its supervisor `{}` restarts it: a sibling failed ({cause})",
                    self.name
                );
                for s in siblings {
                    restart(&s, &why);
                }
                true
            }
            None => self.escalate(key, cause),
        }
    }

    /// Too many restarts: the parent decides. True if it restarts this group
    /// (every child but `failed`, which restarts itself, and the intensity
    /// starts over); false if this group gives up.
    fn escalate(self: &Arc<Self>, failed: u64, cause: &str) -> bool {
        let (max, within) = self.limit;
        let why = format!(
            "its supervisor `{}` had more than {max} restarts within {within:?} (last: {cause})",
            self.name
        );
        let restarted = match &self.parent {
            Some(parent) => parent.child_failed(self.key, &why),
            None => false,
        };
        if restarted {
            self.restart_all(Some(failed), &why);
            return true;
        }
        let children = {
            let mut state = self.state.lock();
            if state.gave_up {
                return false;
            }
            state.gave_up = true;
            self.events.publish(SupervisionEvent::GaveUp {
                child: self.name.clone(),
                restarts: state.restarts,
            });
            std::mem::take(&mut state.children)
        };
        for c in children {
            if c.key() != failed {
                stop(&c, &why);
            }
        }
        false
    }

    /// Restarts every child (but `except`) and starts the intensity over: this
    /// group is restarted by its parent.
    fn restart_all(&self, except: Option<u64>, why: &str) {
        let children: Vec<Child> = {
            let mut state = self.state.lock();
            state.intensity = RestartIntensity::new(self.limit.0, self.limit.1);
            state.restarts += 1;
            state.children.iter().map(Child::clone_weak).collect()
        };
        self.events.publish(SupervisionEvent::Restarted {
            child: self.name.clone(),
            attempt: self.state.lock().restarts,
        });
        for c in children {
            if Some(c.key()) != except {
                restart(&c, why);
            }
        }
    }

    fn siblings_to_restart(&self, state: &State, failed: u64) -> Vec<Child> {
        let pos = state.children.iter().position(|c| c.key() == failed);
        state
            .children
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                c.key() != failed
                    && match self.strategy {
                        Strategy::OneForOne => false,
                        Strategy::OneForAll => true,
                        Strategy::RestForOne => pos.is_some_and(|p| *i > p),
                    }
            })
            .map(|(_, c)| c.clone_weak())
            .collect()
    }
}

impl Child {
    fn clone_weak(&self) -> Child {
        match self {
            Child::Actor(k, w) => Child::Actor(*k, w.clone()),
            Child::Group(k, w) => Child::Group(*k, w.clone()),
        }
    }
}

fn restart(child: &Child, why: &str) {
    match child {
        Child::Actor(_, w) => {
            if let Some(a) = w.upgrade() {
                a.restart_by_supervisor(why);
            }
        }
        Child::Group(_, w) => {
            if let Some(g) = w.upgrade() {
                g.restart_all(None, why);
            }
        }
    }
}

fn stop(child: &Child, why: &str) {
    match child {
        Child::Actor(_, w) => {
            if let Some(a) = w.upgrade() {
                a.stop_by_supervisor(why);
            }
        }
        Child::Group(_, w) => {
            if let Some(g) = w.upgrade() {
                let children = {
                    let mut state = g.state.lock();
                    state.gave_up = true;
                    std::mem::take(&mut state.children)
                };
                for c in children {
                    stop(&c, why);
                }
            }
        }
    }
}

impl Membership {
    /// The actor failed with `cause`: true if it restarts, false if it stops.
    pub fn failed(&self, cause: &str) -> bool {
        self.group.child_failed(self.key, cause)
    }

    /// The group.
    pub fn group(&self) -> &Arc<ActorGroup> {
        &self.group
    }
}
