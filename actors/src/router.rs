//! The router: balances jobs over the worker pool.
//!
//! The data plane is a lock-free run queue that submitters push to and idle
//! workers drain in batches; an actix message (`Drain`) goes to a worker only on
//! its idle-to-busy edge, so a busy pool takes many tasks per wake-up. The
//! `Router` actor is the control plane: it starts workers, starts an extra one
//! when a worker blocks in `get` (Ray releases a blocked worker's CPU), and lets
//! surplus workers retire once they have been idle for a while.

use crate::actor_host::ActorHost;
use crate::node::Node;
use crate::owner::TaskJob;
use crate::supervisor::{
    supervised_child, ChildLink, RestartIntensity, SupervisionEvent, Supervisor,
};
use crate::worker::{Drain, Running, Worker};
use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use actix_rt::Arbiter;
use crossbeam_deque::{Injector, Steal};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// A unit of work for a worker.
pub enum Job {
    /// Run a task whose arguments are ready.
    Task(TaskJob),
    /// Run a batch of calls from an actor's mailbox.
    Actor(Arc<ActorHost>),
}

/// The queue between submitters and workers.
pub struct RunQueue {
    injector: Injector<Job>,
    sleepers: Mutex<Vec<(usize, Addr<Worker>)>>,
    num_sleeping: AtomicUsize,
    workers: AtomicUsize,
    blocked: AtomicUsize,
    target: usize,
    max_workers: usize,
    closed: AtomicBool,
    router: parking_lot::RwLock<Option<Addr<Router>>>,
    next_worker: AtomicUsize,
    running: Mutex<Vec<(usize, Arc<Running>)>>,
}

impl RunQueue {
    pub(crate) fn new(target: usize, max_workers: usize) -> Arc<Self> {
        Arc::new(RunQueue {
            injector: Injector::new(),
            sleepers: Mutex::new(Vec::new()),
            num_sleeping: AtomicUsize::new(0),
            workers: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            target,
            max_workers: max_workers.max(target),
            closed: AtomicBool::new(false),
            router: parking_lot::RwLock::new(None),
            next_worker: AtomicUsize::new(0),
            running: Mutex::new(Vec::new()),
        })
    }

    /// Queues a job and wakes an idle worker if there is one.
    pub fn submit(&self, job: Job) {
        if self.closed.load(Ordering::Acquire) {
            // The owner failed every pending object at shutdown; the job is dropped.
            return;
        }
        self.injector.push(job);
        fence(Ordering::SeqCst);
        if self.num_sleeping.load(Ordering::SeqCst) > 0 {
            self.wake_one();
        }
    }

    fn wake_one(&self) {
        let woken = {
            let mut sleepers = self.sleepers.lock();
            let w = sleepers.pop();
            if w.is_some() {
                self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
            }
            w
        };
        if let Some((_, addr)) = woken {
            addr.do_send(Drain);
        }
    }

    pub(crate) fn pop(&self) -> Option<Job> {
        loop {
            match self.injector.steal() {
                Steal::Success(job) => return Some(job),
                Steal::Empty => return None,
                Steal::Retry => std::hint::spin_loop(),
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.injector.is_empty()
    }

    /// Parks worker `id` as idle. Returns false if work arrived meanwhile and the
    /// worker should keep draining instead.
    pub(crate) fn sleep(&self, id: usize, addr: Addr<Worker>) -> bool {
        self.sleepers.lock().push((id, addr));
        self.num_sleeping.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.injector.is_empty() && !self.is_closed() {
            return true;
        }
        // Work arrived: take ourselves off the list unless a submitter already
        // did, in which case its Drain message is on its way to us.
        !self.unregister(id)
    }

    /// Removes an idle worker from the sleepers; false if it was not there.
    pub(crate) fn unregister(&self, id: usize) -> bool {
        let mut sleepers = self.sleepers.lock();
        match sleepers.iter().position(|(i, _)| *i == id) {
            Some(pos) => {
                sleepers.swap_remove(pos);
                self.num_sleeping.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// Workers beyond the target that are not blocked.
    pub(crate) fn surplus(&self) -> bool {
        let w = self.workers.load(Ordering::Acquire);
        let b = self.blocked.load(Ordering::Acquire);
        w.saturating_sub(b) > self.target
    }

    /// Takes one worker out of the count if it is surplus; true if it may retire.
    pub(crate) fn try_retire(&self) -> bool {
        let mut w = self.workers.load(Ordering::Acquire);
        loop {
            let b = self.blocked.load(Ordering::Acquire);
            if w.saturating_sub(b) <= self.target {
                return false;
            }
            match self
                .workers
                .compare_exchange(w, w - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => w = now,
            }
        }
    }

    /// A worker blocked in `get`: start another if too few are left running.
    pub(crate) fn block_begin(&self) {
        self.blocked.fetch_add(1, Ordering::AcqRel);
        let mut w = self.workers.load(Ordering::Acquire);
        loop {
            let b = self.blocked.load(Ordering::Acquire);
            if w.saturating_sub(b) >= self.target || w >= self.max_workers || self.is_closed() {
                return;
            }
            match self
                .workers
                .compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => w = now,
            }
        }
        match self.router.read().as_ref() {
            Some(router) => router.do_send(SpawnWorker),
            None => {
                self.workers.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub(crate) fn block_end(&self) {
        self.blocked.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops taking jobs; queued ones are dropped (their objects were failed).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        while self.pop().is_some() {}
        let sleepers = std::mem::take(&mut *self.sleepers.lock());
        self.num_sleeping.store(0, Ordering::SeqCst);
        drop(sleepers);
    }

    pub(crate) fn register_running(&self, worker: usize) -> Arc<Running> {
        let running = Arc::new(Running::default());
        self.running.lock().push((worker, running.clone()));
        running
    }

    pub(crate) fn unregister_running(&self, worker: usize) {
        self.running.lock().retain(|(w, _)| *w != worker);
    }

    /// Tells the worker running task `id`, if any, that it was cancelled; with
    /// `force`, gives up on that worker (its thread is stuck in user code and
    /// cannot be killed): it stops counting as running, so a replacement starts,
    /// and it retires when its code returns.
    pub(crate) fn cancel_running(&self, id: crate::ids::ObjectId, force: bool) {
        let running = self.running.lock();
        let Some((_, r)) = running
            .iter()
            .find(|(_, r)| r.task.load(Ordering::SeqCst) == id.0)
        else {
            return;
        };
        r.cancelled.store(true, Ordering::SeqCst);
        if force && !r.abandoned.swap(true, Ordering::AcqRel) {
            drop(running);
            self.block_begin();
        }
    }

    /// An abandoned worker's code returned: it leaves the pool.
    pub(crate) fn abandoned_worker_returned(&self, worker: usize) {
        self.unregister_running(worker);
        self.workers.fetch_sub(1, Ordering::AcqRel);
        self.block_end();
    }

    /// A stopping router's workers leave the pool: off the idle list, out of the
    /// count, told to stop after the job in hand (queued jobs wait for the next
    /// router's workers).
    fn retire_pool(&self, workers: &[usize]) {
        {
            let mut sleepers = self.sleepers.lock();
            let before = sleepers.len();
            sleepers.retain(|(id, _)| !workers.contains(id));
            self.num_sleeping
                .fetch_sub(before - sleepers.len(), Ordering::SeqCst);
        }
        for (id, r) in self.running.lock().iter() {
            if workers.contains(id) {
                r.stop.store(true, Ordering::SeqCst);
            }
        }
        self.workers.fetch_sub(workers.len(), Ordering::AcqRel);
    }

    /// Live workers and how many of them are blocked in `get`.
    pub fn worker_counts(&self) -> (usize, usize) {
        (
            self.workers.load(Ordering::Acquire),
            self.blocked.load(Ordering::Acquire),
        )
    }
}

/// The router actor: owns the worker arbiters.
pub struct Router {
    node: Weak<Node>,
    link: ChildLink,
    intensity: RestartIntensity,
    restarts: u64,
    /// Each worker's thread and address. Holding the address keeps the worker's
    /// mailbox connected: an actix actor with no address left and nothing to do
    /// stops, and a Drain sent meanwhile would be lost with it.
    workers: HashMap<usize, (Arbiter, Addr<Worker>)>,
}

impl Router {
    pub(crate) fn new(
        node: Weak<Node>,
        supervisor: Addr<Supervisor>,
        intensity: RestartIntensity,
    ) -> Self {
        Router {
            node,
            link: ChildLink::new("router", supervisor),
            intensity,
            restarts: 0,
            workers: HashMap::new(),
        }
    }

    fn start_worker(&mut self, ctx: &mut Context<Self>) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        if node.run_queue.is_closed() {
            node.run_queue.workers.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let id = node.run_queue.next_worker.fetch_add(1, Ordering::Relaxed);
        let arbiter = match Arbiter::try_new() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("rayx: cannot start worker thread: {e}");
                node.run_queue.workers.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        let router = ctx.address();
        let worker_node = node.clone();
        let addr = Worker::start_in_arbiter(&arbiter.handle(), move |_| {
            Worker::new(id, worker_node, router)
        });
        self.workers.insert(id, (arbiter, addr));
        node.events.publish(SupervisionEvent::Started {
            child: format!("worker-{id}"),
        });
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        *node.run_queue.router.write() = Some(ctx.address());
        let n = node.run_queue.target;
        node.run_queue.workers.fetch_add(n, Ordering::AcqRel);
        for _ in 0..n {
            self.start_worker(ctx);
        }
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<usize> = self.workers.keys().copied().collect();
        if let Some(node) = self.node.upgrade() {
            let mut router = node.run_queue.router.write();
            if router.as_ref().is_some_and(|r| *r == ctx.address()) {
                *router = None;
            }
            drop(router);
            node.run_queue.retire_pool(&ids);
        }
        for (_, (arbiter, _)) in self.workers.drain() {
            arbiter.stop();
        }
        self.link.report();
    }
}

supervised_child!(Router);

/// Starts one more worker (already counted by the sender).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct SpawnWorker;

impl Handler<SpawnWorker> for Router {
    type Result = ();
    fn handle(&mut self, _: SpawnWorker, ctx: &mut Context<Self>) {
        self.start_worker(ctx);
    }
}

/// A surplus worker has retired; its thread may go.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct WorkerRetired(pub usize);

impl Handler<WorkerRetired> for Router {
    type Result = ();
    fn handle(&mut self, msg: WorkerRetired, _: &mut Context<Self>) {
        if let Some((arbiter, _)) = self.workers.remove(&msg.0) {
            arbiter.stop();
        }
        if let Some(node) = self.node.upgrade() {
            node.events.publish(SupervisionEvent::Stopped {
                child: format!("worker-{}", msg.0),
                reason: "idle surplus worker retired".into(),
            });
        }
    }
}

/// A worker died (an injected fault): replace it, within the restart intensity.
#[derive(Debug, Clone, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct WorkerFailed {
    /// Which worker.
    pub worker: usize,
    /// Why it died.
    pub cause: String,
}

impl Handler<WorkerFailed> for Router {
    type Result = ();
    fn handle(&mut self, msg: WorkerFailed, ctx: &mut Context<Self>) {
        if let Some((arbiter, _)) = self.workers.remove(&msg.worker) {
            arbiter.stop();
        }
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let child = format!("worker-{}", msg.worker);
        node.events.publish(SupervisionEvent::Failed {
            child: child.clone(),
            cause: msg.cause,
        });
        if node.run_queue.is_closed() {
            return;
        }
        if !self.intensity.allow(Instant::now()) {
            // One-for-one restarts came too fast: give up and escalate.
            node.events.publish(SupervisionEvent::GaveUp {
                child: "worker pool".into(),
                restarts: self.intensity.max as u64,
            });
            self.link.escalate(format!(
                "workers failed more than {} times within {:?}",
                self.intensity.max, self.intensity.within
            ));
            return;
        }
        self.restarts += 1;
        node.events.publish(SupervisionEvent::Restarted {
            child,
            attempt: self.restarts,
        });
        // The dead worker's place in the count passes to its replacement.
        self.start_worker(ctx);
    }
}

/// Stops every worker (at shutdown).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct StopWorkers;

impl Handler<StopWorkers> for Router {
    type Result = ();
    fn handle(&mut self, _: StopWorkers, _: &mut Context<Self>) {
        for (_, (arbiter, _)) in self.workers.drain() {
            arbiter.stop();
        }
    }
}
