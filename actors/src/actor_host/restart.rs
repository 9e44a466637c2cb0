//! How an actor comes back: crashes, restart signals, and the constructor.

use super::*;

impl ActorHost {
    /// Applies pending signals (between messages, with the state's lock held).
    pub(super) fn apply_signals<S, F>(&self, life: &mut Life<S, F>) {
        if self.signals.load(Ordering::Acquire) == 0 {
            return;
        }
        let signals = self.signals.swap(0, Ordering::AcqRel);
        if self.is_dead() {
            return;
        }
        if signals & RESTART != 0 {
            self.crash(life, "it was restarted with restart()".into(), None, false);
        } else if signals & SUPERVISED_RESTART != 0 {
            let cause = self
                .supervised_cause
                .lock()
                .take()
                .unwrap_or_else(|| "its supervisor restarted it".into());
            self.drop_state(life);
            self.events_failed(&cause);
            self.come_back(life, cause, None, false);
        }
    }

    /// The actor crashed (a panic, an injected fault, a restart signal): it
    /// comes back if its group (or, outside a group, its `max_restarts`) allows,
    /// else it dies; `in_flight` is the call it was running. With
    /// `fail_queued`, calls queued now are failed under at-most-once (a restart
    /// signal has failed those queued when it was sent).
    pub(super) fn crash<S, F>(
        &self,
        life: &mut Life<S, F>,
        cause: String,
        in_flight: Option<CallJob>,
        fail_queued: bool,
    ) {
        self.drop_state(life);
        self.events_failed(&cause);
        // Events go out before any reply, so whoever sees a reply sees them too.
        let done = self.restarts();
        let comes_back = match self.membership.get() {
            Some(m) => m.failed(&cause),
            None => self.restart.may_restart(done),
        };
        if comes_back {
            self.come_back(life, cause, in_flight, fail_queued);
            return;
        }
        life.cell = Cell::Dead;
        life.factory = None;
        let why = if let Some(m) = self.membership.get() {
            format!("{cause}; its supervisor `{}` gave up", m.group().name())
        } else if self.restart.max_restarts.is_none() {
            cause
        } else {
            format!(
                "{cause} (after {done} restarts, max_restarts is {})",
                self.restart.max_restarts
            )
        };
        self.core.events.publish(SupervisionEvent::GaveUp {
            child: self.label(),
            restarts: done,
        });
        self.die(why);
        if let Some(job) = in_flight {
            job.reply.complete(Err(self.died_error()));
        }
        self.fail_retries(&mut life.retry);
        self.fail_queued(&self.died_error());
    }

    /// Drops the actor's state (a crash or a restart): its destructor runs,
    /// `stopped` does not.
    pub(super) fn drop_state<S, F>(&self, life: &mut Life<S, F>) {
        let _ = catch_user(|| drop(std::mem::replace(&mut life.cell, Cell::Unstarted)));
    }

    pub(super) fn events_failed(&self, cause: &str) {
        self.core.events.publish(SupervisionEvent::Failed {
            child: self.label(),
            cause: cause.to_string(),
        });
    }

    /// The actor restarts: its constructor runs again before the next call;
    /// the calls queued or in flight are sent again or failed by
    /// `max_task_retries`.
    pub(super) fn come_back<S, F>(
        &self,
        life: &mut Life<S, F>,
        cause: String,
        in_flight: Option<CallJob>,
        fail_queued: bool,
    ) {
        let done = self.restarts();
        self.restarts.store(done + 1, Ordering::Release);
        self.core.events.publish(SupervisionEvent::Restarted {
            child: self.label(),
            attempt: done + 1,
        });
        if self.restart.max_task_retries.is_none() && fail_queued {
            // At-most-once: what was queued when it crashed fails too. This comes
            // before the interrupted call's reply, so a call made after that reply
            // is not mistaken for one queued at the crash.
            let error = Error::ActorDied {
                actor: self.label(),
                cause: format!(
                    "{cause}; the actor restarts, but calls queued at the crash are not sent again (max_task_retries 0)"
                ),
            };
            self.fail_queued(&error);
            for job in life.retry.drain(..) {
                job.reply.complete(Err(error.clone()));
            }
        }
        if let Some(mut job) = in_flight {
            if self.restart.may_retry(job.retries) && !job.reply.is_cancelled() {
                job.retries += 1;
                life.retry.push_front(job);
            } else {
                let error = Error::ActorDied {
                    actor: self.label(),
                    cause: format!(
                        "{cause}; the actor restarts, but the call is not sent again ({} retries, max_task_retries {})",
                        job.retries, self.restart.max_task_retries
                    ),
                };
                job.reply.complete(Err(error));
            }
        }
    }

    /// Runs the constructor if the actor has none running; a panic there is final.
    pub(super) fn construct<S, F: Fn() -> S>(&self, life: &mut Life<S, F>) {
        if !matches!(life.cell, Cell::Unstarted) || self.is_dead() {
            return;
        }
        let Some(factory) = &life.factory else {
            return;
        };
        match catch_user(factory) {
            Ok(state) => {
                life.cell = Cell::Running(state);
                if self.membership.get().is_none() && !self.restart.may_restart(self.restarts()) {
                    // It can never be built again: let go of what it captured.
                    life.factory = None;
                }
            }
            Err(cause) => {
                life.cell = Cell::Dead;
                life.factory = None;
                self.die(format!("its constructor {cause}"));
                self.fail_retries(&mut life.retry);
                self.fail_queued(&self.died_error());
                self.core.events.publish(SupervisionEvent::Failed {
                    child: self.label(),
                    cause: format!("its constructor {cause}"),
                });
            }
        }
    }
}
