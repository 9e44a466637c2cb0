//! A worker: an actor on its own thread that drains the run queue, running each
//! task's registered function with panics caught and completing the task's return
//! object. A worker blocked in `get` on a task nobody has started runs that task
//! itself (see [`WaitHooks`]).

use crate::core::Core;
use crate::error::Error;
use crate::faults::{Chance, FaultPoint, Trigger};
use crate::messages::RetryExceptions;
use crate::object_table::{install_wait_hooks, Slot, TaskJob, WaitHooks};
use crate::run_queue::{Drain, Job, WorkerState};
use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once};
use std::time::Duration;

/// How long a surplus worker stays idle before it retires.
const RETIRE_AFTER: Duration = Duration::from_secs(2);

thread_local! {
    static IN_USER_CODE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
    /// The return object of the task (or actor call) running on this thread:
    /// held here, so a task it submits finds its parent without a look-up.
    static CURRENT_TASK: RefCell<Option<Arc<Slot>>> = const { RefCell::new(None) };
    /// The node whose work the running task is, when it runs for a peer.
    static CURRENT_OWNER: Cell<Option<crate::ids::NodeId>> = const { Cell::new(None) };
}

/// Records `child` as submitted by the task (or call) running on this thread,
/// if any, for a recursive cancel to reach it.
pub fn add_child_of_current_task(child: &Arc<Slot>) {
    CURRENT_TASK.with(|t| {
        if let Some(parent) = &*t.borrow() {
            parent.add_child(child);
        }
    });
}

/// Runs `f` as the task (or call) whose return object is `slot`, for its
/// children and a cancel to see.
pub fn with_current_task<R>(slot: &Arc<Slot>, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT_TASK.with(|t| t.replace(Some(slot.clone())));
    let result = f();
    CURRENT_TASK.with(|t| *t.borrow_mut() = previous);
    result
}

/// The node whose work the task or actor call running on this thread is:
/// the node a task runs for (its submitter, or the node its submitter ran
/// it for), or an actor's creator. None outside a task or call.
pub fn current_task_owner() -> Option<crate::ids::NodeId> {
    CURRENT_OWNER.with(Cell::get).or_else(|| {
        CURRENT_TASK.with(|t| {
            t.borrow()
                .as_ref()
                .map(|s| s.call_of().map_or(s.id().node, |actor| actor.node))
        })
    })
}

/// The node a task submitted from this thread runs for, when that is not
/// the node it is submitted on: the one the running task runs for.
pub fn inherited_owner() -> Option<crate::ids::NodeId> {
    CURRENT_OWNER.with(Cell::get)
}

/// Whether the task running on this thread has been cancelled: a long task
/// checks this now and then and returns early (cooperative cancellation).
pub fn current_task_cancelled() -> bool {
    CURRENT_TASK.with(|t| t.borrow().as_ref().is_some_and(|s| s.is_cancelled()))
}

/// A worker's death: a retired surplus worker, or an abandoned one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct WorkerRetired(pub usize);

/// A worker died (an injected fault): its router replaces it, within the
/// restart intensity.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct WorkerFailed {
    /// Which worker.
    pub worker: usize,
    /// Why it died.
    pub cause: String,
}

/// Runs user code, turning a panic into its message and location.
pub fn catch_user<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install_panic_hook();
    // A panic caught inside the user's own code may have left its message here.
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let outer = IN_USER_CODE.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_USER_CODE.with(|c| c.set(outer));
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_string());
        // The hook's record (with the location) describes this panic only if
        // its message is this payload's: a panic re-raised with `resume_unwind`
        // (as rayon does) never reaches the hook, and the record may be of an
        // earlier panic the user's code caught.
        match LAST_PANIC.with(|p| p.borrow_mut().take()) {
            Some((recorded, text)) if recorded == msg => text,
            _ => format!("panicked: {msg}"),
        }
    })
}

/// Records panics of user code (message and location) instead of printing them:
/// they reach the user as errors. Other panics go to the previous hook.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_USER_CODE.with(|c| c.get()) {
                let msg = info.payload_as_str().unwrap_or("non-string panic payload");
                let text = match info.location() {
                    Some(l) => format!(
                        "panicked at {}:{}:{}: {msg}",
                        l.file(),
                        l.line(),
                        l.column()
                    ),
                    None => format!("panicked: {msg}"),
                };
                tracing::debug!("rayx: user code {text}");
                LAST_PANIC.with(|p| *p.borrow_mut() = Some((msg.to_string(), text)));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs tasks for one worker: from the queue, or inline for a `get` on it.
struct TaskRunner {
    id: usize,
    /// Set when a forced cancel abandoned this worker: it retires after the
    /// job in hand.
    retire: Cell<bool>,
    core: Arc<Core>,
    state: Arc<WorkerState>,
    retired: Recipient<WorkerRetired>,
    failed: Recipient<WorkerFailed>,
}

/// What running a task did to its worker.
enum After {
    /// The worker goes on.
    Continue,
    /// The worker died (an injected fault): its router replaces it.
    Died,
    /// A forced cancel abandoned the worker, and it was replaced: it retires.
    Retire,
}

impl WaitHooks for TaskRunner {
    fn node(&self) -> crate::ids::NodeId {
        self.core.node
    }
    fn run_inline(&self, slot: Arc<Slot>, job: TaskJob) {
        match self.run_task(slot, job) {
            After::Continue | After::Retire => {}
            // An injected death inside a nested task: the task was handled as
            // lost (retried or failed) and the router is replacing this worker;
            // it finishes the outer task and takes no more jobs.
            After::Died => self.state.stop.store(true, Ordering::Release),
        }
    }
    fn block_begin(&self) {
        // Counted once, whether for this wait or its job's long wait.
        if self.state.busy.block() {
            self.core.run_queue.block_begin();
        } else {
            self.core.run_queue.long_to_get();
        }
    }
    fn block_end(&self) {
        if self.state.busy.unblock() {
            self.core.run_queue.block_end();
        } else {
            self.core.run_queue.get_to_long();
        }
    }
    fn starved(&self) -> Option<usize> {
        self.core.run_queue.starved()
    }
}

impl TaskRunner {
    fn run_task(&self, slot: Arc<Slot>, mut job: TaskJob) -> After {
        let core = &self.core;
        let faults = &core.faults;
        let dies = faults.fires(Chance::KillWorker);
        if dies && faults.faults().kill_worker_at == FaultPoint::BeforeRun {
            self.lost(slot, job);
            return After::Died;
        }
        if core.table.cancels_seen() && slot.is_cancelled() {
            // Cancelled while queued: never run. The cancel failed the object.
            return After::Continue;
        }
        let id = slot.id();
        // Keep the arguments for another attempt only if one can happen: a
        // failure that is retried, or a worker death (in one process, only
        // injected).
        let options = &job.spec.options;
        let keep = !options.max_retries.is_none()
            && (options.retry_exceptions != RetryExceptions::None
                || faults.faults().kill_worker != Trigger::Never);
        let result = match core.functions.get(&job.spec.function) {
            None => Err(Error::FunctionNotRegistered {
                name: job.spec.function.to_string(),
            }),
            Some(invoke) => match job.resolve_args(keep) {
                Err(e) => Err(e),
                Ok(args) => {
                    let outer = self.state.task.begin(id.tag());
                    let owner = CURRENT_OWNER.with(|o| o.replace(job.spec.options.owner));
                    let ran = with_current_task(&slot, || catch_user(|| invoke(args)));
                    CURRENT_OWNER.with(|o| o.set(owner));
                    if self.state.task.end(outer) {
                        // Abandoned by a forced cancel (which failed the object)
                        // and replaced: this worker leaves the pool once its
                        // job in hand is done. The task's own outcome is still
                        // reported (it is ignored if this task was the one
                        // cancelled; it matters if the mark was a nested
                        // task's).
                        self.retire.set(true);
                    }
                    // A panic and an `Err` returned by the function are both
                    // application failures; a call that could not be made is not.
                    let ran = match ran {
                        Ok(Ok(Ok(value))) => Ok(Ok(value)),
                        Ok(Ok(Err(returned))) => Err(returned),
                        Ok(Err(e)) => Ok(Err(e)),
                        Err(panic) => Err(panic),
                    };
                    match ran {
                        Ok(result) => result,
                        Err(cause) => {
                            let options = &job.spec.options;
                            if options.retry_exceptions.covers(&cause)
                                && options.may_retry(job.failures.len() + 1)
                                && !slot.is_cancelled()
                            {
                                job.failures.push(cause);
                                core.table.resubmit(slot, job);
                                return if dies { After::Died } else { After::Continue };
                            }
                            Err(final_error(&mut job, cause))
                        }
                    }
                }
            },
        };
        if dies {
            // The function ran, but its worker died before reporting: the result is lost.
            self.lost(slot, job);
            return After::Died;
        }
        // Unpin the arguments before the result wakes anyone: once a caller has
        // the result, the task holds none of its inputs.
        drop(job);
        slot.complete(result);
        After::Continue
    }

    /// This worker died running `job` (a system failure): the task runs again
    /// within its `max_retries`, and the router replaces the worker.
    fn lost(&self, slot: Arc<Slot>, mut job: TaskJob) {
        let cause = format!("worker-{} died (injected fault)", self.id);
        if slot.is_cancelled() {
            // Cancelled tasks never run again.
        } else if job.spec.options.may_retry(job.failures.len() + 1) {
            job.failures.push(cause.clone());
            self.core.table.resubmit(slot, job);
        } else {
            let error = if job.failures.is_empty() {
                Error::WorkerCrashed {
                    task: job.spec.display_name().to_string(),
                    cause: cause.clone(),
                }
            } else {
                final_error(&mut job, cause.clone())
            };
            drop(job);
            slot.complete(Err(error));
        }
        self.failed.do_send(WorkerFailed {
            worker: self.id,
            cause,
        });
    }
}

/// The error a task ends with after its last failure, `cause`.
fn final_error(job: &mut TaskJob, cause: String) -> Error {
    let task = job.spec.display_name().to_string();
    if job.failures.is_empty() {
        Error::TaskFailed { task, cause }
    } else {
        job.failures.push(cause);
        Error::RetriesExhausted {
            task,
            attempts: std::mem::take(&mut job.failures),
        }
    }
}

/// A worker of the pool.
pub struct Worker {
    runner: Rc<TaskRunner>,
}

impl Worker {
    /// A worker numbered `id` of `core`'s pool, reporting to its router.
    pub fn new(
        id: usize,
        core: Arc<Core>,
        retired: Recipient<WorkerRetired>,
        failed: Recipient<WorkerFailed>,
    ) -> Self {
        let state = core.run_queue.register_running(id);
        Worker {
            runner: Rc::new(TaskRunner {
                id,
                retire: Cell::new(false),
                core,
                state,
                retired,
                failed,
            }),
        }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        let queue = self.runner.core.run_queue.clone();
        loop {
            while let Some(job) = self.next_job() {
                match self.run(job) {
                    After::Continue => {}
                    After::Died | After::Retire => {
                        ctx.stop();
                        return;
                    }
                }
                if queue.is_closed() {
                    return;
                }
            }
            if self.runner.state.stop.load(Ordering::Acquire) {
                // Its router stopped: it takes no more jobs (the next pool does).
                ctx.stop();
                return;
            }
            // Watch the queue a moment before sleeping, as the spin policy
            // allows (work right after work is the common case under load).
            if queue.watch() {
                if self.runner.state.stop.load(Ordering::Acquire) {
                    // Stopped while watching: the work it saw is the next
                    // pool's, and nobody else was woken for it.
                    queue.hand_on();
                    ctx.stop();
                    return;
                }
                continue;
            }
            if self.runner.state.stop.load(Ordering::Acquire) {
                ctx.stop();
                return;
            }
            if queue.is_closed()
                || queue.sleep(
                    self.runner.id,
                    ctx.address().recipient(),
                    &self.runner.state,
                )
            {
                if queue.surplus() {
                    ctx.run_later(RETIRE_AFTER, |w, ctx| w.maybe_retire(ctx));
                }
                return;
            }
        }
    }

    fn next_job(&self) -> Option<Job> {
        if self.runner.state.stop.load(Ordering::Acquire) {
            return None;
        }
        self.runner.core.run_queue.take()
    }

    fn maybe_retire(&mut self, ctx: &mut Context<Self>) {
        let runner = self.runner.clone();
        let queue = &runner.core.run_queue;
        if !queue.surplus() || !queue.unregister(runner.id) {
            return;
        }
        if queue.try_retire() {
            ctx.stop();
            runner.retired.do_send(WorkerRetired(runner.id));
        } else if queue.sleep(runner.id, ctx.address().recipient(), &runner.state) {
            // Still needed: back to the idle list.
        } else {
            self.drain(ctx);
        }
    }

    fn run(&self, job: Job) -> After {
        let runner = &self.runner;
        // Only an actor's batch may count as blocked for waiting long (in
        // Ray an actor has a process of its own and holds no task back; a
        // task asleep keeps its CPU, as Ray's does).
        let watched = matches!(job, Job::Actor(_));
        if watched {
            runner.state.busy.begin();
        }
        let after = self.run_job(job);
        if watched && runner.state.busy.end() {
            // The router counted its long wait as blocked.
            runner.core.run_queue.long_end();
        }
        if runner.retire.get() {
            // Abandoned (by a forced cancel, in this job or a task it ran
            // inline) and replaced: this worker leaves the pool.
            let stopped = runner.state.stop.load(Ordering::Acquire);
            runner
                .core
                .run_queue
                .abandoned_worker_returned(runner.id, stopped);
            runner.retired.do_send(WorkerRetired(runner.id));
            return After::Retire;
        }
        after
    }

    fn run_job(&self, job: Job) -> After {
        match job {
            Job::Task(slot) => match slot.take_job() {
                Some(task) => self.runner.run_task(slot, task),
                // A getter took it to run inline, or it was cancelled.
                None => After::Continue,
            },
            Job::Actor(host) => {
                host.run_batch();
                After::Continue
            }
        }
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.runner.core.enter_thread();
        self.runner.state.set_thread();
        install_wait_hooks(self.runner.clone());
        ctx.notify(Drain);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.runner
            .core
            .run_queue
            .unregister_running(self.runner.id);
    }
}

impl Handler<Drain> for Worker {
    type Result = ();
    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.drain(ctx);
    }
}
