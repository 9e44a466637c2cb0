//! Supervision events as values: what happened to which actor, delivered to
//! every subscriber through a bounded queue. A subscriber that falls behind loses
//! the oldest events, never memory, and is told how many it lost.

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Events a subscriber's queue holds at most; past it the oldest are dropped.
pub const EVENT_QUEUE: usize = 4096;

/// Something that happened to a supervised actor (system or user).
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
    /// Every worker thread the runtime may start (`max_workers`) is running or
    /// blocked; a task that needs another waits, and fails if nothing can run.
    WorkerLimitReached {
        /// The limit.
        max_workers: usize,
    },
    /// A node of the cluster died (its connection reset, it went silent
    /// past the health limit, or it was declared dead); `node` is the head
    /// when this node lost the head.
    NodeDied {
        /// The node.
        node: String,
        /// Why it is considered dead.
        cause: String,
    },
    /// This subscriber fell behind: this many older events were dropped.
    Lagged {
        /// How many.
        missed: u64,
    },
}

struct Queue {
    events: VecDeque<SupervisionEvent>,
    missed: u64,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// Fans supervision events out to subscribers.
#[derive(Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<Weak<Shared>>>,
}

impl EventBus {
    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> Events {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                events: VecDeque::new(),
                missed: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        self.subscribers.lock().push(Arc::downgrade(&shared));
        Events { shared }
    }

    /// Sends `event` to every live subscriber.
    pub fn publish(&self, event: SupervisionEvent) {
        tracing::debug!("rayx: {event:?}");
        self.subscribers.lock().retain(|s| match s.upgrade() {
            None => false,
            Some(s) => {
                let mut q = s.queue.lock();
                if q.events.len() >= EVENT_QUEUE {
                    q.events.pop_front();
                    q.missed += 1;
                }
                q.events.push_back(event.clone());
                drop(q);
                s.ready.notify_one();
                true
            }
        });
    }

    /// Ends every subscription: receivers drain what is queued, then see the end.
    pub fn close(&self) {
        for s in self.subscribers.lock().drain(..) {
            if let Some(s) = s.upgrade() {
                s.queue.lock().closed = true;
                s.ready.notify_all();
            }
        }
    }
}

/// Why no event came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    /// The wait ran out.
    Timeout,
    /// The runtime shut down and every event was read.
    Closed,
}

/// A subscription to supervision events (from [`EventBus::subscribe`]). Bounded:
/// a reader that falls more than [`EVENT_QUEUE`] events behind gets
/// [`SupervisionEvent::Lagged`] in place of the ones it lost.
pub struct Events {
    shared: Arc<Shared>,
}

impl Events {
    fn next(q: &mut Queue) -> Option<SupervisionEvent> {
        if q.missed > 0 {
            let missed = std::mem::take(&mut q.missed);
            return Some(SupervisionEvent::Lagged { missed });
        }
        q.events.pop_front()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<SupervisionEvent, RecvError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut q = self.shared.queue.lock();
        loop {
            if let Some(e) = Self::next(&mut q) {
                return Ok(e);
            }
            if q.closed {
                return Err(RecvError::Closed);
            }
            match deadline {
                Some(d) => {
                    if self.shared.ready.wait_until(&mut q, d).timed_out() {
                        return Self::next(&mut q).ok_or(RecvError::Timeout);
                    }
                }
                None => self.shared.ready.wait(&mut q),
            }
        }
    }

    /// The next event, waiting for it.
    pub fn recv(&self) -> Result<SupervisionEvent, RecvError> {
        self.recv_timeout(Duration::MAX)
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<SupervisionEvent> {
        Self::next(&mut self.shared.queue.lock())
    }

    /// Every event queued now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = SupervisionEvent> + '_ {
        std::iter::from_fn(|| self.try_recv())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_reader_loses_the_oldest_events_and_is_told_how_many() {
        let bus = EventBus::default();
        let rx = bus.subscribe();
        for i in 0..EVENT_QUEUE + 10 {
            bus.publish(SupervisionEvent::Started {
                child: i.to_string(),
            });
        }
        assert_eq!(rx.try_recv(), Some(SupervisionEvent::Lagged { missed: 10 }));
        assert_eq!(
            rx.try_recv(),
            Some(SupervisionEvent::Started { child: "10".into() })
        );
        assert_eq!(rx.try_iter().count(), EVENT_QUEUE - 1);
        assert_eq!(rx.recv_timeout(Duration::ZERO), Err(RecvError::Timeout));
    }

    #[test]
    fn a_dropped_receiver_is_forgotten() {
        let bus = EventBus::default();
        drop(bus.subscribe());
        bus.publish(SupervisionEvent::Lagged { missed: 0 });
        assert!(bus.subscribers.lock().is_empty());
    }
}
