//! The run queue between submitters and workers: the data plane of the router.
//!
//! Submitters push jobs to a lock-free queue that idle workers drain in batches; a
//! worker is sent a [`Drain`] message only on its idle-to-busy edge (the
//! [`IdleSet`] handshake), so a busy pool takes many jobs per wake-up. The queue
//! also keeps the pool's counts — live workers, workers blocked in `get` — from
//! which the router tops the pool up, and what each worker runs, for a forced
//! cancel to find it.
//!
//! Memory orderings: the wake-up handshake is [`IdleSet`]'s (modelled with loom).
//! The pool counts (`workers`, `blocked`) publish no data; they are read to
//! decide whether to start or retire a worker, and the decisions that must be
//! exact (never two retirements for one surplus, never more than `max_workers`)
//! are compare-exchanges on `workers`. `closed` is a Release store read with
//! Acquire: a submitter that misses it pushes a job nobody will run, which is
//! harmless because the node failed every pending object before closing.

use crate::events::{EventBus, SupervisionEvent};
use crate::handshake::{Busy, IdleSet, Lookout, RunningTask};
use crate::ids::ObjectId;
use crate::object_table::{Dispatch, Slot};
use crate::spin::{Site, SpinPolicy};
use actix::{Message, Recipient};
use crossbeam_deque::{Injector, Steal};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A user actor's mailbox, run by a worker as one job (a batch of its calls).
pub trait ActorRun: Send + Sync {
    /// Runs a batch of calls; reschedules itself if mail is left.
    fn run_batch(self: Arc<Self>);
}

/// Where a task may go instead of this node's queue: the cluster, which
/// offers it to another node when the placement policy says so.
pub trait Spill: Send + Sync {
    /// Takes the task (true) to run it elsewhere, or leaves it here (false).
    fn offer(self: Arc<Self>, task: &Arc<Slot>) -> bool;
}

/// A unit of work for a worker.
pub enum Job {
    /// Run the task that makes this object (its job is in the slot; a getter
    /// may have taken it to run itself, then there is nothing to do).
    Task(Arc<Slot>),
    /// Run a batch of calls from an actor's mailbox.
    Actor(Arc<dyn ActorRun>),
}

/// Wakes an idle worker: there is work in the run queue.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct Drain;

/// Asks the router for one more worker (already counted by the sender).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct SpawnWorker;

/// Tells the router to look at the pool for jobs that wait long off their
/// core (every worker was busy when a job was queued).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Message)]
#[rtype(result = "()")]
pub struct LookAtJobs;

/// What one worker is doing, shared with those who may interrupt it.
#[derive(Default)]
pub struct WorkerState {
    /// The task it runs now, and whether a forced cancel abandoned it.
    pub task: RunningTask,
    /// Set when its router stopped: finish the job in hand, take no more.
    pub stop: AtomicBool,
    /// Its job, and whether it counts as blocked (in `get`, or waiting long
    /// off its core).
    pub busy: Busy,
    /// Its thread's id in the OS (0: unknown), for the router to read how
    /// long the thread ran.
    thread: AtomicU32,
}

impl WorkerState {
    /// Called on the worker's own thread when it starts.
    pub fn set_thread(&self) {
        if let Some(tid) = thread_time::current() {
            // Relaxed: read by the router's look, which tolerates 0 (unknown).
            self.thread.store(tid, Ordering::Relaxed);
        }
    }
}

/// How often the router looks for actor batches that wait off their core
/// while work is queued (it starts when a job is queued with every worker
/// busy, and stops when it finds the queue empty: an idle pool wakes
/// nothing), and how long one must have waited to count as blocked: a batch
/// seen at two looks in a row, whose thread spent less than half the time
/// between them on a core or waiting for one (asleep in user code: a lock, a
/// channel, I/O, a sleep). A batch that computes keeps its core; one that
/// waits frees it, as a worker blocked in `get` does. Tasks are not watched:
/// a task keeps its worker, as a Ray task keeps its CPU.
pub const LONG_WAIT_CHECK: Duration = Duration::from_millis(200);

/// A worker's job as the router last saw it.
pub struct Look {
    job: u64,
    /// The thread's time on a core or waiting for one.
    wanted: Duration,
    at: Instant,
}

/// The queue between submitters and workers, with the pool's counts.
pub struct RunQueue {
    injector: Injector<Job>,
    idle: IdleSet<Recipient<Drain>>,
    workers: AtomicUsize,
    blocked: AtomicUsize,
    /// Of `blocked`, the workers whose job the router marked long and that
    /// are not waiting in `get`: asleep in user code, not stuck (`starved`
    /// leaves them out).
    long: AtomicUsize,
    target: usize,
    max_workers: usize,
    closed: AtomicBool,
    router: RwLock<Option<Recipient<SpawnWorker>>>,
    /// The router again, told to look at the jobs (see [`LookAtJobs`]).
    looker: RwLock<Option<Recipient<LookAtJobs>>>,
    /// Whether the router is looking now.
    lookout: Lookout,
    next_worker: AtomicUsize,
    running: Mutex<Vec<(usize, Arc<WorkerState>)>>,
    limit_reported: AtomicBool,
    /// Workers counted and asked of the router, not started yet: uncounted if
    /// the router stops before it starts them.
    spawns_pending: AtomicUsize,
    events: Arc<EventBus>,
    spin: SpinPolicy,
    /// The cluster, when this node is part of one (weak: it holds the node).
    spill: std::sync::OnceLock<std::sync::Weak<dyn Spill>>,
}

impl Dispatch for RunQueue {
    fn dispatch(&self, task: Arc<Slot>) {
        if let Some(spill) = self.spill.get().and_then(std::sync::Weak::upgrade) {
            if spill.offer(&task) {
                return;
            }
        }
        self.submit(Job::Task(task));
    }
    fn spin_until(&self, site: Site, done: &mut dyn FnMut() -> bool) -> bool {
        self.spin.spin_until(site, &|| !self.is_empty(), done)
    }
    fn getters_crowded(&self) -> bool {
        self.spin.getters_crowded()
    }
}

impl RunQueue {
    /// A queue for a pool of `target` running workers, at most `max_workers`.
    pub fn new(target: usize, max_workers: usize, events: Arc<EventBus>) -> Arc<Self> {
        Arc::new(RunQueue {
            injector: Injector::new(),
            idle: IdleSet::default(),
            workers: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
            long: AtomicUsize::new(0),
            target,
            max_workers: max_workers.max(target),
            closed: AtomicBool::new(false),
            router: RwLock::new(None),
            looker: RwLock::new(None),
            lookout: Lookout::default(),
            next_worker: AtomicUsize::new(0),
            running: Mutex::new(Vec::new()),
            limit_reported: AtomicBool::new(false),
            spawns_pending: AtomicUsize::new(0),
            events,
            spin: SpinPolicy::default(),
            spill: std::sync::OnceLock::new(),
        })
    }

    /// Queues a job and wakes an idle worker if there is one.
    pub fn submit(&self, job: Job) {
        if self.is_closed() {
            // The owner failed every pending object at shutdown; the job is dropped.
            return;
        }
        self.injector.push(job);
        self.wake_or_look();
    }

    /// Work is queued that nobody may have been woken for: wakes a sleeper,
    /// or, with every worker busy, has the router look for jobs that wait
    /// long off their core (`after_push` makes the fence `Lookout::wanted`
    /// needs).
    fn wake_or_look(&self) {
        match self.idle.after_push() {
            Some(worker) => worker.do_send(Drain),
            None => self.look_if_all_busy(),
        }
    }

    /// Every worker busy with work queued: the router looks for jobs that
    /// wait long off their core. Called after a SeqCst fence that follows
    /// the job's push (`IdleSet::after_push`'s).
    fn look_if_all_busy(&self) {
        if self.idle.sleeping() == 0 && self.idle.watching() == 0 && self.lookout.wanted() {
            if let Some(router) = self.looker.read().as_ref() {
                router.do_send(LookAtJobs);
            }
        }
    }

    /// The router found no work queued: it stops looking, unless work came
    /// meanwhile (true: look again).
    pub fn stop_looking(&self) -> bool {
        self.lookout.stop(|| !self.is_empty() && !self.is_closed())
    }

    /// A worker's next job, if any. If more are queued, another sleeper is
    /// woken for them, or with none asleep the router looks (as for a
    /// submit): the job taken may block this worker for good (a `get` on a
    /// call whose actor's job is queued behind it) or wait long, and its
    /// submitters may have left the rest to this worker, watching then;
    /// without the chain such a job could wait while workers sleep.
    pub fn take(&self) -> Option<Job> {
        let job = self.pop()?;
        if !self.injector.is_empty() {
            self.wake_or_look();
        }
        Some(job)
    }

    /// The next job, if any (no wake-up: see [`take`](Self::take)).
    pub fn pop(&self) -> Option<Job> {
        loop {
            match self.injector.steal() {
                Steal::Success(job) => return Some(job),
                Steal::Empty => return None,
                Steal::Retry => std::hint::spin_loop(),
            }
        }
    }

    /// An idle worker watches the queue for a moment before it sleeps, as the
    /// spin policy allows; true if work came: it must drain the queue again,
    /// or [`hand_on`](Self::hand_on) the work if it is leaving. Submitters
    /// wake nobody while a worker watches.
    pub fn watch(&self) -> bool {
        self.idle.watch_begin();
        let seen = self
            .spin
            .spin_until(Site::IdleWorker, &|| false, &mut || !self.is_empty());
        // A watcher that saw work takes it with `take`, which wakes another
        // worker if more is queued: submitters woke nobody for it.
        self.idle.watch_end(|| !self.is_empty()) || seen
    }

    /// A worker that watched and saw work but is leaving (stopped) hands the
    /// work on: it wakes a sleeper, as the submitters that left it to the
    /// watcher did not.
    pub fn hand_on(&self) {
        self.wake_or_look();
    }

    /// Sends tasks through `spill` first (the cluster's placement).
    pub fn set_spill(&self, spill: std::sync::Weak<dyn Spill>) {
        let _ = self.spill.set(spill);
    }

    /// Jobs queued or running: the node's load, for placement. Approximate
    /// (the counts are read one after another), which placement tolerates.
    pub fn load(&self) -> usize {
        let workers = self.workers.load(Ordering::Relaxed);
        let resting =
            self.idle.sleeping() + self.idle.watching() + self.blocked.load(Ordering::Relaxed);
        self.injector.len() + workers.saturating_sub(resting)
    }

    /// The node's spin policy (see [`crate::spin`]).
    pub fn spin(&self) -> &SpinPolicy {
        &self.spin
    }

    /// Whether no job is queued.
    pub fn is_empty(&self) -> bool {
        self.injector.is_empty()
    }

    /// Parks worker `id` as idle; `wake` reaches it. False if work arrived
    /// meanwhile and the worker should keep draining, or if its router
    /// stopped (`state.stop`): then it is off the list and must leave.
    pub fn sleep(&self, id: usize, wake: Recipient<Drain>, state: &WorkerState) -> bool {
        if !self
            .idle
            .park(id, wake, || !self.injector.is_empty() || self.is_closed())
        {
            return false;
        }
        // Its router may have stopped after the worker's last look at `stop`
        // and cleared the idle list before this park: a worker parked for
        // good on a pool that is gone would take the next job's wake-up and
        // never run it. Acquire pairs with `retire_pool`'s Release store,
        // made before its clearing: if our park came after the clearing (the
        // list's lock orders them), we see the flag.
        // (Read `false`: our park came before the clearing, which takes us
        // off the list, unless a submitter took us first, whose job the next
        // pool then finds when it starts.)
        if !state.stop.load(Ordering::Acquire) {
            return true;
        }
        if !self.idle.remove(id) {
            // Off the list already: cleared by `retire_pool` (then this is a
            // spare wake-up), or taken by a submitter whose `Drain` this
            // worker will not run: hand its job on.
            self.hand_on();
        }
        false
    }

    /// Takes an idle worker off the idle list; false if it was not there.
    pub fn unregister(&self, id: usize) -> bool {
        self.idle.remove(id)
    }

    /// The router that starts workers for this queue (`None` while it restarts).
    pub fn set_router(&self, router: Option<(Recipient<SpawnWorker>, Recipient<LookAtJobs>)>) {
        let (spawn, look) = router.unzip();
        *self.router.write() = spawn;
        *self.looker.write() = look;
    }

    /// A fresh worker number.
    pub fn next_worker_id(&self) -> usize {
        self.next_worker.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts `n` workers about to start.
    pub fn add_workers(&self, n: usize) {
        self.workers.fetch_add(n, Ordering::AcqRel);
    }

    /// Uncounts `n` workers that did not start or have left (never below 0).
    pub fn remove_workers(&self, n: usize) {
        let _ = self
            .workers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(w.saturating_sub(n))
            });
    }

    /// Workers beyond the target that are not blocked.
    pub fn surplus(&self) -> bool {
        let w = self.workers.load(Ordering::Acquire);
        let b = self.blocked.load(Ordering::Acquire);
        w.saturating_sub(b) > self.target
    }

    /// Takes one worker out of the count if it is surplus; true if it may retire.
    pub fn try_retire(&self) -> bool {
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
    pub fn block_begin(&self) {
        self.blocked.fetch_add(1, Ordering::AcqRel);
        self.top_up();
    }

    /// Starts a worker if too few are left running (not blocked).
    fn top_up(&self) {
        let mut w = self.workers.load(Ordering::Acquire);
        loop {
            let b = self.blocked.load(Ordering::Acquire);
            if w.saturating_sub(b) >= self.target || self.is_closed() {
                return;
            }
            if w >= self.max_workers {
                if !self.limit_reported.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "rayx: all {} worker threads are in use (max_workers); tasks wait",
                        self.max_workers
                    );
                    self.events.publish(SupervisionEvent::WorkerLimitReached {
                        max_workers: self.max_workers,
                    });
                }
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
        // Room again under the limit: a later shortage is reported again.
        self.limit_reported.store(false, Ordering::Relaxed);
        match self.router.read().as_ref() {
            Some(router) => {
                self.spawns_pending.fetch_add(1, Ordering::AcqRel);
                router.do_send(SpawnWorker);
            }
            None => self.remove_workers(1),
        }
    }

    /// The router starts a worker it was asked for.
    pub fn spawn_started(&self) {
        let _ = self
            .spawns_pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// The router is about to mark a job long: counted first (the `Busy`
    /// protocol), taken back with [`long_end`](Self::long_end) if the mark
    /// fails.
    fn long_begin(&self) {
        self.long.fetch_add(1, Ordering::AcqRel);
        self.blocked.fetch_add(1, Ordering::AcqRel);
    }

    /// A job the router marked long ended (or the mark failed).
    pub fn long_end(&self) {
        self.block_end();
        self.long.fetch_sub(1, Ordering::AcqRel);
    }

    /// A worker whose job was marked long waits in `get`: stuck, for
    /// `starved`, until it returns (it stays counted in `blocked`).
    pub fn long_to_get(&self) {
        self.long.fetch_sub(1, Ordering::AcqRel);
    }

    /// ... and it returned from that `get`.
    pub fn get_to_long(&self) {
        self.long.fetch_add(1, Ordering::AcqRel);
    }

    /// A worker stopped waiting.
    pub fn block_end(&self) {
        self.blocked.fetch_sub(1, Ordering::AcqRel);
    }

    /// `Some(max_workers)` when the pool cannot grow and every worker is
    /// blocked while work is queued: nothing queued can start.
    pub fn starved(&self) -> Option<usize> {
        let w = self.workers.load(Ordering::Acquire);
        // A worker asleep in user code wakes by itself: not stuck.
        let b = self
            .blocked
            .load(Ordering::Acquire)
            .saturating_sub(self.long.load(Ordering::Acquire));
        (w >= self.max_workers && b >= w && !self.is_empty()).then_some(self.max_workers)
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Stops taking jobs; queued ones are dropped (their objects were failed).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        while self.pop().is_some() {}
        drop(self.idle.remove_where(|_| true));
    }

    /// A worker starts: its state, for cancels and its router to reach it.
    pub fn register_running(&self, worker: usize) -> Arc<WorkerState> {
        let state = Arc::new(WorkerState::default());
        self.running.lock().push((worker, state.clone()));
        state
    }

    /// A worker is gone.
    pub fn unregister_running(&self, worker: usize) {
        self.running.lock().retain(|(w, _)| *w != worker);
    }

    /// A forced cancel of task `id`: gives up on the worker running it, if one
    /// still is (its thread is stuck in user code and cannot be killed): it stops
    /// counting as running, so a replacement starts, and it retires when its
    /// code returns. A worker that has moved on to another task is left alone.
    pub fn abandon_running(&self, id: ObjectId) {
        let tag = id.tag();
        // A worker of a stopped router is no longer counted (nor replaced):
        // it finishes the task and leaves; only a counted worker is abandoned.
        let hit = self
            .running
            .lock()
            .iter()
            .any(|(_, state)| !state.stop.load(Ordering::Acquire) && state.task.abandon(tag));
        if hit {
            self.block_begin();
        }
    }

    /// An abandoned worker's code returned: it leaves the pool (uncounted
    /// already if its router stopped meanwhile, `stopped`).
    pub fn abandoned_worker_returned(&self, worker: usize, stopped: bool) {
        self.unregister_running(worker);
        if !stopped {
            self.remove_workers(1);
        }
        self.block_end();
    }

    /// A stopping router's workers leave the pool: told to stop after the job
    /// in hand, off the idle list, out of the count (queued jobs wait for the
    /// next router's workers).
    pub fn retire_pool(&self, workers: &[usize]) {
        // Workers asked of the stopping router and never started.
        let never_started = self.spawns_pending.swap(0, Ordering::AcqRel);
        self.remove_workers(never_started);
        // Told to stop *before* the idle list is cleared: a worker that parks
        // after the clearing (its lock section follows ours) reads `stop` set,
        // and leaves the list itself (`RunQueue::sleep`); one that parked
        // before is cleared here. The Release pairs with the worker's Acquire
        // load; the idle list's lock orders the two.
        for (id, state) in self.running.lock().iter() {
            if workers.contains(id) {
                state.stop.store(true, Ordering::Release);
            }
        }
        drop(self.idle.remove_where(|id| workers.contains(&id)));
        self.remove_workers(workers.len());
    }

    /// The router's look for jobs that wait long off their core (see
    /// [`LONG_WAIT_CHECK`]): each one found counts as blocked, and the pool
    /// starts another worker if too few are left running, until the job ends.
    /// `looks` is what the last look saw. False if no work was queued: stop
    /// looking ([`stop_looking`](Self::stop_looking)).
    pub fn count_long_waits(&self, looks: &mut HashMap<usize, Look>) -> bool {
        if self.is_empty() || self.is_closed() {
            // Nothing waits for a worker: nothing to compare with next time.
            looks.clear();
            return false;
        }
        let now = Instant::now();
        let running: Vec<(usize, Arc<WorkerState>)> = self.running.lock().clone();
        let mut seen = HashMap::with_capacity(running.len());
        for (id, state) in running {
            // A worker of a stopped router or abandoned by a cancel is not
            // counted as running already.
            if state.stop.load(Ordering::Acquire) || state.task.is_abandoned() {
                continue;
            }
            let Some(job) = state.busy.running() else {
                continue;
            };
            let Some(wanted) = thread_time::wanted(state.thread.load(Ordering::Relaxed)) else {
                continue;
            };
            // The router's looks are one chain, `LONG_WAIT_CHECK` apart,
            // and start afresh (`looks` empty) when work is queued again.
            if let Some(before) = looks.get(&id).filter(|l| l.job == job) {
                let between = now.duration_since(before.at);
                if wanted.saturating_sub(before.wanted) * 2 < between {
                    // The job may end meanwhile: see `long_begin`.
                    self.long_begin();
                    if state.busy.mark_long(job) {
                        tracing::debug!(
                            "rayx: worker-{id}'s job has waited off its core for {between:?} \
                             with work queued: it counts as blocked"
                        );
                        self.top_up();
                        continue;
                    }
                    self.long_end();
                }
            }
            seen.insert(
                id,
                Look {
                    job,
                    wanted,
                    at: now,
                },
            );
        }
        *looks = seen;
        true
    }

    /// The number of workers kept running.
    pub fn target(&self) -> usize {
        self.target
    }

    /// Live workers and how many of them are blocked (in `get`, or waiting
    /// long off their core).
    pub fn worker_counts(&self) -> (usize, usize) {
        (
            self.workers.load(Ordering::Acquire),
            self.blocked.load(Ordering::Acquire),
        )
    }
}

/// How long a thread of this process has run or waited to run, from Linux's
/// `/proc/self/task/<tid>/schedstat` (its first two fields: nanoseconds on a
/// core, and waiting on a run queue). Elsewhere nothing is known, and no job
/// counts as blocked for waiting long.
mod thread_time {
    use std::time::Duration;

    /// The calling thread's id.
    #[cfg(target_os = "linux")]
    pub fn current() -> Option<u32> {
        // "<pid>/task/<tid>"
        let link = std::fs::read_link("/proc/thread-self").ok()?;
        link.file_name()?.to_str()?.parse().ok()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn current() -> Option<u32> {
        None
    }

    /// Thread `tid`'s time on a core and waiting for one (`None`: unknown,
    /// or the thread is gone).
    #[cfg(target_os = "linux")]
    pub fn wanted(tid: u32) -> Option<Duration> {
        if tid == 0 {
            return None;
        }
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        let ran = fields.next()?.ok()?;
        let waited = fields.next()?.ok()?;
        Some(Duration::from_nanos(ran.saturating_add(waited)))
    }

    #[cfg(not(target_os = "linux"))]
    pub fn wanted(_: u32) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl ActorRun for Nop {
        fn run_batch(self: Arc<Self>) {}
    }
    fn job() -> Job {
        Job::Actor(Arc::new(Nop))
    }

    /// Jobs pushed while the only worker watches the queue start no look (a
    /// watcher takes them); it takes one and leaves one, and its job may
    /// sleep in user code: the router must be looking (found by a helper).
    #[test]
    fn jobs_pushed_beside_a_watcher_start_a_look_when_one_is_left() {
        let q = RunQueue::new(1, 16, Arc::new(EventBus::default()));
        q.idle.watch_begin();
        q.submit(job());
        q.submit(job());
        assert!(q.idle.watch_end(|| !q.is_empty()), "the watcher saw work");
        assert!(q.take().is_some());
        assert!(!q.is_empty(), "one job left, the one worker busy");
        assert!(!q.lookout.wanted(), "nobody looks");
    }
}
