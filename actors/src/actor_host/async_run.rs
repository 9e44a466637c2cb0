//! An async actor's run loop: calls as futures on the actor's arbiter thread,
//! up to `max_concurrency` at once; waiting calls can be cancelled.

use super::*;

impl ActorHost {
    /// Starts queued calls of an async actor (on its arbiter thread).
    pub(super) fn pump(self: Arc<Self>) {
        let Kind::Async {
            cell,
            max_concurrency,
            in_flight,
            waiting,
            ..
        } = &self.kind
        else {
            return;
        };
        let mut life = cell.lock();
        loop {
            let room = || in_flight.load(Ordering::Acquire) < *max_concurrency;
            let Some(job) = self.next_to_run(&mut life, drop, room) else {
                break;
            };
            // `next_to_run` gives a call only to a running actor; the kind of
            // dispatch matches the actor's at compile time (`Actor::ASYNC`).
            let (Cell::Running(state), Dispatch::Async(dispatch)) = (&life.cell, job.dispatch)
            else {
                job.reply.complete(Err(self.died_error()));
                continue;
            };
            let state = state.clone();
            in_flight.fetch_add(1, Ordering::AcqRel);
            let (message, job) = self.split(job);
            let info = CallInfo {
                host: Arc::downgrade(&self),
                actor_id: self.id,
                restarts: self.restarts(),
            };
            // Most handlers finish without waiting: run them to completion here,
            // and make a task only of one that has to wait. The state lock is
            // released meanwhile: the handler may signal its own actor.
            drop(life);
            let reply_id = job.reply.id();
            let first = with_current_task(&job.reply, || {
                catch_user(|| dispatch(state, message, info)).map(|fut| {
                    let mut fut = CatchUnwind(fut);
                    match Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop())) {
                        Poll::Ready(result) => Ok(result),
                        Poll::Pending => Err(fut),
                    }
                })
            });
            let result = match first {
                Err(cause) => Err(cause),
                Ok(Ok(result)) => result,
                Ok(Err(fut)) => {
                    let cancel = Arc::new(CallCancel::default());
                    waiting.lock().insert(reply_id, cancel.clone());
                    if job.reply.is_cancelled() {
                        cancel.cancel();
                    }
                    self.clone().spawn_call(fut, job, cancel);
                    life = cell.lock();
                    continue;
                }
            };
            in_flight.fetch_sub(1, Ordering::AcqRel);
            life = cell.lock();
            match result {
                Ok(reply) => job.reply.complete(reply),
                Err(cause) => {
                    let cause = format!("{} {cause}", job.call.method);
                    self.crash(&mut life, cause, Some(job), true);
                }
            }
        }
        let idle = life.retry.is_empty();
        drop(life);
        if idle && in_flight.load(Ordering::Acquire) == 0 && !self.is_dead() {
            let queue = &self.core.run_queue;
            if let Some(spin) = queue.spin().begin(Site::IdleActor, !queue.is_empty()) {
                self.linger(spin);
                return;
            }
        }
        if self.scheduled.release(|| {
            // At `max_concurrency`, mail waits for a call to finish (its end
            // pumps again); only a signal needs the loop now.
            let room = in_flight.load(Ordering::Acquire) < *max_concurrency;
            (room && self.has_work()) || self.signals.load(Ordering::Acquire) != 0
        }) {
            self.submit();
        }
    }

    /// Runs an async call that has to wait as a task on the actor's thread.
    pub(super) fn spawn_call(
        self: Arc<Self>,
        fut: CatchUnwind,
        job: CallJob,
        cancel: Arc<CallCancel>,
    ) {
        // The incarnation the call runs on: a panic of a call that outlived a
        // restart fails that call, not the new incarnation.
        let incarnation = self.restarts();
        actix_rt::spawn(async move {
            let result = Cancellable {
                fut: Some(fut),
                cancel,
                reply: job.reply.clone(),
            }
            .await;
            let Kind::Async {
                cell,
                in_flight,
                waiting,
                ..
            } = &self.kind
            else {
                return;
            };
            waiting.lock().remove(&job.reply.id());
            match result {
                // Cancelled: the future is dropped; the cancel failed the reply.
                None => {}
                Some(Ok(reply)) => job.reply.complete(reply),
                Some(Err(cause)) if self.restarts() != incarnation || self.is_dead() => {
                    job.reply.complete(Err(Error::ActorDied {
                        actor: self.label(),
                        cause: format!(
                            "{} {cause}, after the incarnation it ran on was restarted or stopped",
                            job.call.method
                        ),
                    }));
                }
                Some(Err(cause)) => {
                    let cause = format!("{} {cause}", job.call.method);
                    self.crash(&mut cell.lock(), cause, Some(job), true);
                }
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
            if self.scheduled.claim() {
                self.pump();
            }
        });
    }

    /// Keeps watching an idle async actor's mailbox for a moment, on its own
    /// thread: a caller that sends its next call right after a reply then finds
    /// the actor awake instead of paying for a thread wake-up. Holds the
    /// `scheduled` flag meanwhile, so callers do not wake the thread.
    /// For as long as the spin policy granted (`spin`).
    pub(super) fn linger(self: &Arc<Self>, spin: Spin) {
        actix_rt::spawn(Linger {
            host: self.clone(),
            spin: Some(spin),
        });
    }
}

/// Watches an idle async actor's mailbox until mail comes or time runs out.
pub(super) struct Linger {
    host: Arc<ActorHost>,
    spin: Option<Spin>,
}

impl Linger {
    fn end(&mut self, paid: bool) {
        if let Some(spin) = self.spin.take() {
            self.host.core.run_queue.spin().end(spin, paid);
        }
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        // Dropped unfinished (its arbiter stopped): the spin is over.
        self.end(false);
    }
}

impl Future for Linger {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let host = self.host.clone();
        // Mail, a signal, or a kill (its state is dropped by the run loop).
        if !host.mailbox.is_empty() || host.signals.load(Ordering::Acquire) != 0 || host.is_dead() {
            self.end(true);
            host.pump();
            return Poll::Ready(());
        }
        if self.spin.as_ref().is_none_or(Spin::expired) {
            self.end(false);
            if host.scheduled.release(|| host.has_work()) {
                host.pump();
            }
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Polls a future with panics caught.
pub(super) struct CatchUnwind(LocalFuture);

impl Future for CatchUnwind {
    type Output = Result<Result<Value, Error>, String>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = &mut self.0;
        match catch_user(|| fut.as_mut().poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(r)) => Poll::Ready(Ok(r)),
            Err(cause) => Poll::Ready(Err(cause)),
        }
    }
}

/// A cancel for a call that is waiting: sets the flag and wakes the call.
#[derive(Default)]
pub(super) struct CallCancel {
    cancelled: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl CallCancel {
    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().take() {
            w.wake();
        }
    }
}

/// A waiting call that ends early (`None`) when cancelled.
pub(super) struct Cancellable {
    fut: Option<CatchUnwind>,
    cancel: Arc<CallCancel>,
    /// The call's reply: each poll runs as that call, as its first did (the
    /// tasks it submits after an `.await` are its children, for a cancel;
    /// a placement group it makes goes with the actor's creator).
    reply: Arc<Slot>,
}

impl Cancellable {
    /// Drops the call's future (user code: its destructors may panic).
    fn drop_call(&mut self) -> Poll<Option<<CatchUnwind as Future>::Output>> {
        let fut = self.fut.take();
        let _ = catch_user(|| drop(fut));
        Poll::Ready(None)
    }
}

impl Future for Cancellable {
    type Output = Option<<CatchUnwind as Future>::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.cancel.cancelled.load(Ordering::Acquire) {
            return self.drop_call();
        }
        *self.cancel.waker.lock() = Some(cx.waker().clone());
        // Checked again after the waker is in place: a cancel between the two
        // either saw the waker or is seen here.
        if self.cancel.cancelled.load(Ordering::Acquire) {
            return self.drop_call();
        }
        let this = &mut *self;
        match this.fut.as_mut() {
            Some(fut) => with_current_task(&this.reply, || Pin::new(fut).poll(cx)).map(Some),
            None => Poll::Ready(None),
        }
    }
}

impl Drop for Cancellable {
    fn drop(&mut self) {
        // A call dropped unfinished (its actor's thread stopping): its
        // destructors are user code too.
        if self.fut.is_some() {
            let _ = self.drop_call();
        }
    }
}
