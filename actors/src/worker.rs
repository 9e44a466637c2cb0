//! A worker: an actor on its own thread that drains the run queue, running each
//! task's registered function with panics caught and reporting the outcome to the
//! owner of the task's return object.

use crate::error::Error;
use crate::node::Node;
use crate::owner::TaskJob;
use crate::router::{Job, Router, RunQueue, WorkerRetired};
use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message};
use crossbeam_utils::Backoff;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Once, Weak};
use std::time::Duration;

/// How long a surplus worker stays idle before it retires.
const RETIRE_AFTER: Duration = Duration::from_secs(2);

thread_local! {
    static CURRENT_QUEUE: RefCell<Option<Arc<RunQueue>>> = const { RefCell::new(None) };
    static CURRENT_NODE: RefCell<Weak<Node>> = const { RefCell::new(Weak::new()) };
    static IN_USER_CODE: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
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
}

impl Worker {
    pub(crate) fn new(id: usize, node: Arc<Node>, router: Addr<Router>) -> Self {
        Worker { id, node, router }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        let queue = self.node.run_queue.clone();
        loop {
            while let Some(job) = queue.pop() {
                self.run(job);
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
            if queue.is_closed() || queue.sleep(self.id, ctx.address()) {
                if queue.surplus() {
                    ctx.run_later(RETIRE_AFTER, |w, ctx| w.maybe_retire(ctx));
                }
                return;
            }
        }
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

    fn run(&self, job: Job) {
        match job {
            Job::Task(task) => self.run_task(task),
            Job::Actor(host) => host.run_batch(),
        }
    }

    fn run_task(&self, mut job: TaskJob) {
        let id = job.spec.task_id.return_id();
        let result = match self.node.functions.get(&job.spec.function) {
            None => Err(Error::FunctionNotRegistered {
                name: job.spec.function.to_string(),
            }),
            Some(invoke) => match job.resolve_args() {
                Err(e) => Err(e),
                Ok(args) => match catch_user(|| invoke(args)) {
                    Ok(result) => result,
                    Err(cause) => Err(Error::TaskFailed {
                        task: job.spec.display_name().to_string(),
                        cause,
                    }),
                },
            },
        };
        // Unpin the arguments before the result wakes anyone: once a caller has
        // the result, the task holds none of its inputs.
        drop(job);
        self.node.table.complete(id, result);
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        enter_thread(&self.node, Some(self.node.run_queue.clone()));
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
