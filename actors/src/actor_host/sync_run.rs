//! A sync actor's run loop: a batch of calls on a worker, with the state held.

use super::*;

impl ActorHost {
    pub(super) fn sync_batch(self: &Arc<Self>) {
        let Kind::Sync { cell } = &self.kind else {
            return;
        };
        let mut life = cell.lock();
        for _ in 0..BATCH {
            let stop = |mut state: Box<dyn ActorState>| state.stopped();
            let Some(job) = self.next_to_run(&mut life, stop, || true) else {
                break;
            };
            let (Cell::Running(state), Dispatch::Sync(dispatch)) = (&mut life.cell, job.dispatch)
            else {
                job.reply.complete(Err(self.died_error()));
                continue;
            };
            let mut ctx = HostContext { host: self };
            let (message, keep) = self.split(job);
            let ran = with_current_task(&keep.reply, || {
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
        // A kill during the batch left its signal: `has_work` sees it and the
        // next batch drops the state.
        let more = !life.retry.is_empty();
        drop(life);
        // With retries left we keep the flag and go again; else we give it up,
        // and take it back if mail or a signal came meanwhile.
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
