//! The router: the control plane of the worker pool. It starts the workers,
//! starts an extra one when a worker blocks in `get` (Ray releases a blocked
//! worker's CPU) or an actor's batch waits long off its core (user code asleep
//! on a lock, a channel, I/O: in Ray each actor has a process of its own, so a
//! waiting actor holds no task back), replaces workers that die within its
//! restart intensity, and lets surplus workers retire. The data plane is the
//! [`RunQueue`](crate::run_queue::RunQueue).

use crate::core::Core;
use crate::events::SupervisionEvent;
use crate::run_queue::{Look, LookAtJobs, SpawnWorker, LONG_WAIT_CHECK};
use crate::supervision::{supervised_child, ChildLink, RestartIntensity};
use crate::worker::{Worker, WorkerFailed, WorkerRetired};
use actix::{Actor, Addr, AsyncContext, Context, Handler, Message};
use actix_rt::Arbiter;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The router actor: owns the worker threads.
pub struct Router {
    core: Arc<Core>,
    link: ChildLink,
    intensity: RestartIntensity,
    restarts: u64,
    /// Each worker's thread and address. Holding the address keeps the worker's
    /// mailbox connected: an actix actor with no address left and nothing to do
    /// stops, and a Drain sent meanwhile would be lost with it.
    workers: HashMap<usize, (Arbiter, Addr<Worker>)>,
    /// The workers' jobs at the last look for long waits.
    looks: HashMap<usize, Look>,
    /// A look is due (one chain of looks at a time).
    look_due: bool,
}

impl Router {
    /// A router for `core`'s pool, tied to its supervisor by `link`.
    pub fn new(core: Arc<Core>, link: ChildLink) -> Self {
        let (max, within) = core.config.worker_restarts;
        Router {
            core,
            link,
            intensity: RestartIntensity::new(max, within),
            restarts: 0,
            workers: HashMap::new(),
            looks: HashMap::new(),
            look_due: false,
        }
    }

    fn start_worker(&mut self, ctx: &mut Context<Self>) {
        let queue = &self.core.run_queue;
        if queue.is_closed() {
            queue.remove_workers(1);
            return;
        }
        let id = queue.next_worker_id();
        let arbiter = match Arbiter::try_new() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("rayx: cannot start worker thread: {e}");
                queue.remove_workers(1);
                return;
            }
        };
        let core = self.core.clone();
        let retired = ctx.address().recipient();
        let failed = ctx.address().recipient();
        let addr = Worker::start_in_arbiter(&arbiter.handle(), move |_| {
            Worker::new(id, core, retired, failed)
        });
        self.workers.insert(id, (arbiter, addr));
        self.core.events.publish(SupervisionEvent::Started {
            child: format!("worker-{id}"),
        });
    }
}

impl Actor for Router {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let queue = &self.core.run_queue;
        queue.set_router(Some((ctx.address().recipient(), ctx.address().recipient())));
        let n = queue.target();
        queue.add_workers(n);
        for _ in 0..n {
            self.start_worker(ctx);
        }
        // A router before this one may have stopped while looking (the flag
        // stays up): one look now puts it down if nothing is queued.
        self.look(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let ids: Vec<usize> = self.workers.keys().copied().collect();
        self.core.run_queue.set_router(None);
        self.core.run_queue.retire_pool(&ids);
        for (_, (arbiter, _)) in self.workers.drain() {
            arbiter.stop();
        }
        self.link.report();
    }
}

impl Router {
    /// Looks at the jobs (see `RunQueue::count_long_waits`), and again after
    /// [`LONG_WAIT_CHECK`] while work is queued.
    fn look(&mut self, ctx: &mut Context<Self>) {
        let queue = &self.core.run_queue;
        if queue.count_long_waits(&mut self.looks) || queue.stop_looking() {
            self.look_due = true;
            ctx.run_later(LONG_WAIT_CHECK, |router, ctx| {
                router.look_due = false;
                router.look(ctx);
            });
        }
    }
}

supervised_child!(Router);

impl Handler<LookAtJobs> for Router {
    type Result = ();
    fn handle(&mut self, _: LookAtJobs, ctx: &mut Context<Self>) {
        if !self.look_due {
            self.look(ctx);
        }
    }
}

impl Handler<SpawnWorker> for Router {
    type Result = ();
    fn handle(&mut self, _: SpawnWorker, ctx: &mut Context<Self>) {
        self.core.run_queue.spawn_started();
        self.start_worker(ctx);
    }
}

impl Handler<WorkerRetired> for Router {
    type Result = ();
    fn handle(&mut self, msg: WorkerRetired, _: &mut Context<Self>) {
        if let Some((arbiter, _)) = self.workers.remove(&msg.0) {
            arbiter.stop();
        }
        self.core.events.publish(SupervisionEvent::Stopped {
            child: format!("worker-{}", msg.0),
            reason: "idle surplus worker retired".into(),
        });
    }
}

impl Handler<WorkerFailed> for Router {
    type Result = ();
    fn handle(&mut self, msg: WorkerFailed, ctx: &mut Context<Self>) {
        if let Some((arbiter, _)) = self.workers.remove(&msg.worker) {
            arbiter.stop();
        }
        let events = &self.core.events;
        let child = format!("worker-{}", msg.worker);
        events.publish(SupervisionEvent::Failed {
            child: child.clone(),
            cause: msg.cause,
        });
        if self.core.run_queue.is_closed() {
            return;
        }
        if !self.intensity.allow(Instant::now()) {
            // One-for-one restarts came too fast: give up and escalate.
            events.publish(SupervisionEvent::GaveUp {
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
        events.publish(SupervisionEvent::Restarted {
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
