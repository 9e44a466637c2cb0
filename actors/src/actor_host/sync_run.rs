//! A sync actor's run loop: a batch of calls on a worker, with the state held.

use super::*;

impl ActorHost {
    pub(super) fn sync_batch(self: &Arc<Self>) {
        let Kind::Sync { cell } = &self.kind else {
            return;
        };
        let mut life = cell.lock();
        for _ in 0..BATCH {
            self.apply_signals(&mut life);
            if self.is_dead() {
                break;
            }
            self.construct(&mut life);
            let Some(job) = self.next_call(&mut life) else {
                break;
            };
            let (Cell::Running(state), Dispatch::Sync(dispatch)) = (&mut life.cell, job.dispatch)
            else {
                job.reply.complete(Err(self.died_error()));
                continue;
            };
            if self.core.faults.fires(Chance::CrashActor) {
                self.crash(
                    &mut life,
                    "crashed by an injected fault".into(),
                    Some(job),
                    true,
                );
                continue;
            }
            let mut ctx = HostContext { host: self };
            let (message, keep) = self.split(job);
            let reply_id = keep.reply.id();
            let ran = with_current_task(reply_id, || {
                catch_user(|| dispatch(state.as_any_mut(), message, &mut ctx))
            });
            match ran {
                Ok(result) => keep.reply.complete(result),
                Err(cause) => {
                    let cause = format!("{} {cause}", keep.call.method);
                    self.crash(&mut life, cause, Some(keep), true);
                }
            }
        }
        if self.is_dead() {
            stop_sync(&mut life.cell);
            life.factory = None;
            self.fail_retries(&mut life.retry);
            self.fail_queued(&self.died_error());
        }
        let more = !life.retry.is_empty() || self.signals.load(Ordering::Acquire) != 0;
        drop(life);
        // With retries or signals left we keep the flag and go again; else we
        // give it up, and take it back if mail came meanwhile.
        if more || self.scheduled.release(|| self.has_work()) {
            self.submit();
        }
    }
}

pub(super) fn stop_sync(cell: &mut Cell<Box<dyn ActorState>>) {
    if let Cell::Running(mut state) = std::mem::replace(cell, Cell::Dead) {
        let _ = catch_user(|| state.stopped());
    }
}
