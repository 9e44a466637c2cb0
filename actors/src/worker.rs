//! A worker: an actor on its own thread that drains the run queue, running each
//! task's registered function with panics caught and reporting the outcome to the
//! owner of the task's return object.

use crate::error::Error;
use crate::faults::{Chance, FaultPoint, Trigger};
use crate::messages::RetryExceptions;
use crate::node::Node;
use crate::owner::TaskJob;
use crate::router::{Job, Router, RunQueue, WorkerFailed, WorkerRetired};
use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message};
use crossbeam_utils::Backoff;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once, Weak};
use std::time::Duration;

/// How long a surplus worker stays idle before it retires.
const RETIRE_AFTER: Duration = Duration::from_secs(2);

thread_local! {
    static CURRENT_QUEUE: RefCell<Option<Arc<RunQueue>>> = const { RefCell::new(None) };
    static CURRENT_NODE: RefCell<Weak<Node>> = const { RefCell::new(Weak::new()) };
    static IN_USER_CODE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    static CURRENT_TASK: Cell<u64> = const { Cell::new(0) };
    static CURRENT_RUNNING: RefCell<Option<Arc<Running>>> = const { RefCell::new(None) };
}

/// The task running on this thread, if any (its return object's id).
pub fn current_task() -> Option<crate::ids::ObjectId> {
    let id = CURRENT_TASK.with(|t| t.get());
    (id != 0).then_some(crate::ids::ObjectId(id))
}

/// Whether the task running on this thread has been cancelled: a long task
/// checks this now and then and returns early (cooperative cancellation).
pub fn current_task_cancelled() -> bool {
    current_task().is_some()
        && CURRENT_RUNNING.with(|r| {
            r.borrow()
                .as_ref()
                .is_some_and(|r| r.cancelled.load(Ordering::SeqCst))
        })
}

/// What a worker is running, for a forced cancel to find it.
#[derive(Default)]
pub struct Running {
    /// The return object id of the task running now; 0 when idle.
    pub(crate) task: std::sync::atomic::AtomicU64,
    /// Set when the task running now is cancelled.
    pub(crate) cancelled: std::sync::atomic::AtomicBool,
    /// Set when a forced cancel gave up on this worker.
    pub(crate) abandoned: std::sync::atomic::AtomicBool,
    /// Set when its router stopped: finish the job in hand, take no more.
    pub(crate) stop: std::sync::atomic::AtomicBool,
}

/// The node whose worker (or actor thread) this is, if any.
pub fn current_node() -> Option<Arc<Node>> {
    CURRENT_NODE.with(|n| n.borrow().upgrade())
}

/// Runs `f` with `node` as this thread's node (to decode refs and handles).
pub fn with_node<R>(node: &Arc<Node>, f: impl FnOnce() -> R) -> R {
    let previous =
        CURRENT_NODE.with(|n| std::mem::replace(&mut *n.borrow_mut(), Arc::downgrade(node)));
    let result = f();
    CURRENT_NODE.with(|n| *n.borrow_mut() = previous);
    result
}

/// Marks this thread as one of `node`'s; `get` on it counts as a blocked worker
/// when `queue` is given.
pub(crate) fn enter_thread(node: &Arc<Node>, queue: Option<Arc<RunQueue>>) {
    CURRENT_NODE.with(|n| *n.borrow_mut() = Arc::downgrade(node));
    CURRENT_QUEUE.with(|q| *q.borrow_mut() = queue);
}

/// A stretch in which a worker thread waits for an object. While it lasts the
/// worker does not count as running, so the router may start another.
pub struct BlockingSection(Option<Arc<RunQueue>>);

impl BlockingSection {
    /// Enters the section (does nothing off worker threads).
    pub fn enter() -> BlockingSection {
        let queue = CURRENT_QUEUE.with(|q| q.borrow().clone());
        if let Some(q) = &queue {
            q.block_begin();
        }
        BlockingSection(queue)
    }
}

impl Drop for BlockingSection {
    fn drop(&mut self) {
        if let Some(q) = &self.0 {
            q.block_end();
        }
    }
}

/// Runs user code, turning a panic into its message and location.
pub fn catch_user<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install_panic_hook();
    let outer = IN_USER_CODE.with(|c| c.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    IN_USER_CODE.with(|c| c.set(outer));
    result.map_err(|payload| {
        LAST_PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_string());
                format!("panicked: {msg}")
            })
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
                LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

/// A worker of the pool.
pub struct Worker {
    id: usize,
    node: Arc<Node>,
    router: Addr<Router>,
    running: Arc<Running>,
}

impl Worker {
    pub(crate) fn new(id: usize, node: Arc<Node>, router: Addr<Router>) -> Self {
        let running = node.run_queue.register_running(id);
        Worker {
            id,
            node,
            router,
            running,
        }
    }

    fn is_cancelled(&self, id: crate::ids::ObjectId) -> bool {
        self.node.cancels_seen() && self.node.lookup(id).is_some_and(|s| s.is_cancelled())
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        let queue = self.node.run_queue.clone();
        loop {
            while let Some(job) = self.next_job(&queue) {
                if !self.run(job) {
                    // Dead: the router stops this thread and starts a replacement.
                    ctx.stop();
                    return;
                }
                if queue.is_closed() {
                    return;
                }
            }
            let backoff = Backoff::new();
            while queue.is_empty() && !backoff.is_completed() {
                backoff.snooze();
            }
            if !queue.is_empty() {
                continue;
            }
            if self.running.stop.load(Ordering::SeqCst) {
                ctx.stop();
                return;
            }
            if queue.is_closed() || queue.sleep(self.id, ctx.address()) {
                if queue.surplus() {
                    ctx.run_later(RETIRE_AFTER, |w, ctx| w.maybe_retire(ctx));
                }
                return;
            }
        }
    }

    fn next_job(&self, queue: &RunQueue) -> Option<Job> {
        if self.running.stop.load(Ordering::SeqCst) {
            return None;
        }
        queue.pop()
    }

    fn maybe_retire(&mut self, ctx: &mut Context<Self>) {
        let queue = &self.node.run_queue;
        if !queue.surplus() || !queue.unregister(self.id) {
            return;
        }
        if queue.try_retire() {
            ctx.stop();
            self.router.do_send(WorkerRetired(self.id));
        } else if queue.sleep(self.id, ctx.address()) {
            // Still needed: back to the idle list.
        } else {
            self.drain(ctx);
        }
    }

    /// Runs one job; false if the worker died doing it (an injected fault).
    fn run(&self, job: Job) -> bool {
        match job {
            Job::Task(task) => self.run_task(task),
            Job::Actor(host) => {
                host.run_batch();
                true
            }
        }
    }

    fn run_task(&self, mut job: TaskJob) -> bool {
        let faults = &self.node.faults;
        let dies = faults.fires(Chance::KillWorker);
        if dies && faults.faults().kill_worker_at == FaultPoint::BeforeRun {
            self.lost(job);
            return false;
        }
        let id = job.spec.task_id.return_id();
        // Keep the arguments for another attempt only if one can happen: a panic
        // that is retried, or a worker death (in one process, only injected).
        let options = &job.spec.options;
        let keep = options.max_retries != 0
            && (options.retry_exceptions != RetryExceptions::None
                || faults.faults().kill_worker != Trigger::Never);
        let result = match self.node.functions.get(&job.spec.function) {
            None => Err(Error::FunctionNotRegistered {
                name: job.spec.function.to_string(),
            }),
            Some(invoke) => match job.resolve_args(keep) {
                Err(e) => Err(e),
                Ok(args) => match self.invoke(id, || invoke(args)) {
                    None => return false,
                    Some(Ok(result)) => result,
                    Some(Err(cause)) => {
                        let options = &job.spec.options;
                        if options.retry_exceptions.covers(&cause)
                            && options.may_retry(job.failures.len() + 1)
                            && !self.is_cancelled(id)
                        {
                            job.failures.push(cause);
                            self.node.run_queue.submit(Job::Task(job));
                            return !dies;
                        }
                        Err(self.final_error(&mut job, cause))
                    }
                },
            },
        };
        if dies {
            // The function ran, but its worker died before reporting: the result is lost.
            self.lost(job);
            return false;
        }
        // Unpin the arguments before the result wakes anyone: once a caller has
        // the result, the task holds none of its inputs.
        drop(job);
        self.node.table.complete(id, result);
        true
    }

    /// Runs user code for task `id`, visible to `current_task` and to a forced
    /// cancel. `None` if a forced cancel abandoned this worker meanwhile: it was
    /// replaced, so it retires now.
    fn invoke<R>(
        &self,
        id: crate::ids::ObjectId,
        f: impl FnOnce() -> R,
    ) -> Option<Result<R, String>> {
        // Cleared before the id is published: a cancel that sees the id sets the
        // flag after this, and one that does not is seen by the check below.
        self.running.cancelled.store(false, Ordering::SeqCst);
        self.running.task.store(id.0, Ordering::SeqCst);
        let result = if self.is_cancelled(id) {
            // Cancelled while queued: never run.
            Err("cancelled before it ran".to_string())
        } else {
            CURRENT_TASK.with(|t| t.set(id.0));
            let result = catch_user(f);
            CURRENT_TASK.with(|t| t.set(0));
            result
        };
        self.running.task.store(0, Ordering::SeqCst);
        if self.running.abandoned.load(Ordering::SeqCst) {
            self.node.run_queue.abandoned_worker_returned(self.id);
            self.router.do_send(WorkerRetired(self.id));
            return None;
        }
        Some(result)
    }

    /// The error a task ends with after its last failure, `cause`.
    fn final_error(&self, job: &mut TaskJob, cause: String) -> Error {
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

    /// This worker died running `job` (a system failure): the task runs again
    /// within its `max_retries`, and the router replaces the worker.
    fn lost(&self, mut job: TaskJob) {
        let cause = format!("worker-{} died (injected fault)", self.id);
        let id = job.spec.task_id.return_id();
        if self.is_cancelled(id) {
            // Cancelled tasks never run again.
        } else if job.spec.options.may_retry(job.failures.len() + 1) {
            job.failures.push(cause.clone());
            self.node.run_queue.submit(Job::Task(job));
        } else {
            let error = if job.failures.is_empty() {
                Error::WorkerCrashed {
                    task: job.spec.display_name().to_string(),
                    cause: cause.clone(),
                }
            } else {
                self.final_error(&mut job, cause.clone())
            };
            drop(job);
            self.node.table.complete(id, Err(error));
        }
        self.router.do_send(WorkerFailed {
            worker: self.id,
            cause,
        });
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.node.run_queue.unregister_running(self.id);
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        enter_thread(&self.node, Some(self.node.run_queue.clone()));
        CURRENT_RUNNING.with(|r| *r.borrow_mut() = Some(self.running.clone()));
        ctx.notify(Drain);
    }
}

/// Wakes an idle worker: there is work in the run queue.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for Worker {
    type Result = ();
    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.drain(ctx);
    }
}
