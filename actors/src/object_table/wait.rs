//! Waiting for objects: `get` (blocking, with a worker running a task it waits
//! for itself), `poll` (async), and `wait` on many.

use super::*;

/// What a worker thread does when it waits for an object, installed per thread
/// with [`install_wait_hooks`]. Other threads just park.
pub trait WaitHooks {
    /// The node whose worker this is: only its own tasks run here inline.
    fn node(&self) -> NodeId;
    /// Runs the task that makes `slot` on this thread, instead of waiting for
    /// another worker to start it: recursion needs threads in proportion to its
    /// depth, not its width.
    fn run_inline(&self, slot: Arc<Slot>, job: TaskJob);
    /// This worker starts waiting: the pool may start another.
    fn block_begin(&self);
    /// This worker stops waiting.
    fn block_end(&self);
    /// `Some(max_workers)` if no thread can run queued work any more: every
    /// worker the pool may have is blocked and work is queued.
    fn starved(&self) -> Option<usize>;
}

thread_local! {
    static HOOKS: RefCell<Option<Rc<dyn WaitHooks>>> = const { RefCell::new(None) };
}

/// Installs this thread's [`WaitHooks`] (a worker does, when it starts).
pub fn install_wait_hooks(hooks: Rc<dyn WaitHooks>) {
    HOOKS.with(|h| *h.borrow_mut() = Some(hooks));
}

pub(super) fn wait_hooks() -> Option<Rc<dyn WaitHooks>> {
    HOOKS.with(|h| h.borrow().clone())
}

/// A stretch in which a worker waits for an object and does not count as
/// running, so the pool may start another (Ray releases a blocked worker's CPU).
pub(super) struct Blocked<'a>(Option<&'a Rc<dyn WaitHooks>>, bool);

impl<'a> Blocked<'a> {
    pub(super) fn new(hooks: Option<&'a Rc<dyn WaitHooks>>) -> Self {
        Blocked(hooks, false)
    }
    pub(super) fn set(&mut self, blocked: bool) {
        if let Some(h) = self.0 {
            if blocked != self.1 {
                if blocked {
                    h.block_begin()
                } else {
                    h.block_end()
                }
            }
        }
        self.1 = blocked;
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// Asks every slot whose value is held elsewhere for it — if any table of
/// the process ever had such an object: otherwise every slot's line would be
/// touched for nothing (a wait for the first of n ready refs touches only the
/// first ones; a batch get, each once more). Process-wide, not the first
/// ref's table: one wait may mix refs of several runtimes. A slot marked
/// after the hint was read is asked for by the wait that blocks on it.
fn fetch_all<'a>(slots: impl Iterator<Item = &'a Arc<Slot>>) {
    if elsewhere_seen_anywhere() {
        for s in slots {
            s.fetch();
        }
    }
}

/// Blocks on several slots until `num_ready` are done or the deadline passes;
/// returns the positions of the first `num_ready` done slots, in input order
/// (fewer if the deadline passed first). Slots past the last one counted are
/// not looked at. On a worker, tasks nobody has started are run here first.
pub fn wait_slots(
    slots: &[&Arc<Slot>],
    num_ready: usize,
    timeout: Option<Duration>,
) -> Result<Vec<usize>, Error> {
    let first_done = |slots: &[&Arc<Slot>]| -> Vec<usize> {
        let mut done = Vec::with_capacity(num_ready);
        for (i, s) in slots.iter().enumerate() {
            if done.len() == num_ready {
                break;
            }
            if s.is_done() {
                done.push(i);
            }
        }
        done
    };
    // Borrowed values are asked for now, so that a wait that only looks
    // (a zero timeout, polled again later) sees them arrive.
    fetch_all(slots.iter().copied());
    let done = first_done(slots);
    if done.len() >= num_ready || timeout == Some(Duration::ZERO) {
        return Ok(done);
    }
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let hooks = wait_hooks();
    if hooks.is_some() {
        // On a worker: run here what nobody has started, until enough are
        // done. Counted again before each task run here, not per ref (a
        // count per ref would make a wait on n refs cost n²): a run may have
        // completed others in the list (a get inside it, the same ref twice),
        // and other workers complete some meanwhile.
        for s in slots {
            if s.is_done() || s.peek_job(|_| ()).is_none() {
                continue;
            }
            if first_done(slots).len() >= num_ready {
                break;
            }
            s.run_here(hooks.as_ref());
        }
    }
    let mut blocked = Blocked::new(hooks.as_ref());
    blocked.set(true);
    let waker = thread_waker();
    let tokens: Vec<Option<u64>> = slots.iter().map(|s| s.register(&waker)).collect();
    for s in slots {
        s.recover();
    }
    let mut done = first_done(slots);
    let mut starvation = Starvation::default();
    let mut starved = None;
    while done.len() < num_ready {
        let now = Instant::now();
        match (&hooks, deadline) {
            (_, Some(d)) if now >= d => break,
            (Some(h), _) => {
                if let Some(table) = slots.first().map(|s| &s.table) {
                    if let Some(e) = starvation.check(&**h, table, now) {
                        starved = Some(e);
                        break;
                    }
                }
                let nap = deadline.map_or(STARVATION_CHECK, |d| (d - now).min(STARVATION_CHECK));
                std::thread::park_timeout(nap);
            }
            (None, Some(d)) => std::thread::park_timeout(d - now),
            (None, None) => std::thread::park(),
        }
        done = first_done(slots);
    }
    for (slot, token) in slots.iter().zip(tokens) {
        if let Some(t) = token {
            slot.deregister(t);
        }
    }
    match starved {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Before a batch read of `len` objects (`slot(i)`, in input order): asks
/// for every borrowed value at once; then, off the workers, with many clients waiting at once (other getters hold every
/// spinning place the spin policy allows), sleeps for the last object rather
/// than for each. Results mostly come in the order they were asked for, so one
/// wake-up covers the batch instead of one per object, and the thread that
/// makes them is not slowed by a wake-up per result. Returns when the last is
/// done, one done so far failed (looked at every `BATCH_FAILURE_CHECK`), or
/// `deadline` passes; the in-order read that follows reports what it finds,
/// exactly as it would have. Does nothing for a lone getter (it waits in
/// order, awake the moment its batch is done) nor on a worker (it runs the
/// tasks it waits for itself, in order).
pub fn wait_batch<'a>(
    len: usize,
    slot: impl Fn(usize) -> &'a Arc<Slot>,
    deadline: Option<Instant>,
) {
    const BATCH_FAILURE_CHECK: Duration = Duration::from_millis(1);
    // Borrowed values are asked for all at once, not one round trip each as
    // the batch's gets reach them.
    fetch_all((0..len).map(&slot));
    if len < 2 || HOOKS.with(|h| h.borrow().is_some()) {
        return;
    }
    let Some(first) = (0..len).find(|&i| !slot(i).is_done()) else {
        return;
    };
    if !slot(first).table.dispatch.getters_crowded() {
        return;
    }
    // Advances past the objects done so far; true if one of them failed.
    let mut checked = 0;
    let mut failed = || {
        while checked < len && slot(checked).is_done() {
            if slot(checked).has_failed() {
                return true;
            }
            checked += 1;
        }
        false
    };
    if failed() {
        return;
    }
    let last = slot(len - 1);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return;
        }
        let nap = left.map_or(BATCH_FAILURE_CHECK, |l| l.min(BATCH_FAILURE_CHECK));
        match last.wait(Some(nap)) {
            Err(Error::GetTimeout { .. }) if !failed() => {}
            _ => return,
        }
    }
}

/// Whether a blocked worker's wait can no longer end: every worker the pool
/// may have is blocked with work queued, and no object has completed anywhere
/// for `STARVATION_WINDOW` (a long call still running elsewhere completes
/// objects of its own, or finishes, and resets the clock).
#[derive(Default)]
struct Starvation {
    since: Option<(Instant, u64)>,
}

impl Starvation {
    fn check(&mut self, hooks: &dyn WaitHooks, table: &OwnerTable, now: Instant) -> Option<Error> {
        let Some(max_workers) = hooks.starved() else {
            self.since = None;
            return None;
        };
        let progress = table.progress();
        match self.since {
            Some((since, seen)) if seen == progress => (now.duration_since(since)
                >= STARVATION_WINDOW)
                .then_some(Error::WorkerLimitReached { max_workers }),
            _ => {
                self.since = Some((now, progress));
                None
            }
        }
    }
}

pub(super) struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

pub(super) fn thread_waker() -> Waker {
    Waker::from(Arc::new(ThreadWaker(std::thread::current())))
}

impl Slot {
    /// On a worker: runs the task that makes this object here if nobody has
    /// started it. True if it did.
    pub(super) fn run_here(self: &Arc<Self>, hooks: Option<&Rc<dyn WaitHooks>>) -> bool {
        let Some(hooks) = hooks.filter(|h| h.node() == self.table.node) else {
            return false;
        };
        match self.take_job() {
            Some(job) => {
                hooks.run_inline(self.clone(), job);
                true
            }
            None => false,
        }
    }

    /// Blocks until the outcome is known or `timeout` passes (a timeout too
    /// long to add to now is none). On a worker thread, a task nobody has
    /// started is run right here; otherwise the worker counts as blocked, so
    /// the pool can start another.
    pub fn wait(self: &Arc<Self>, timeout: Option<Duration>) -> Result<Value, Error> {
        if let Some(r) = self.try_get() {
            return r;
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let hooks = wait_hooks();
        self.recover();
        if self.run_here(hooks.as_ref()) {
            if let Some(r) = self.try_get() {
                return r;
            }
        }
        // Spin as the node's policy allows: a round trip to an awake worker is
        // far cheaper than a thread wake-up, when a core is free for it.
        self.table
            .dispatch
            .spin_until(Site::Get, &mut || self.is_done());
        if let Some(r) = self.try_get() {
            return r;
        }
        let mut blocked = Blocked::new(hooks.as_ref());
        blocked.set(true);
        let waker = thread_waker();
        let token = self.register(&waker);
        let mut starvation = Starvation::default();
        let outcome = loop {
            if let Some(r) = self.try_get() {
                break r;
            }
            self.recover();
            if hooks.is_some() && self.inner.lock().is_queued() {
                // Queued again (a retry, a rebuild): run it here.
                blocked.set(false);
                let ran = self.run_here(hooks.as_ref());
                blocked.set(true);
                if ran {
                    continue;
                }
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break Err(Error::GetTimeout {
                    timeout: timeout.unwrap_or_default(),
                });
            }
            match (&hooks, deadline) {
                (Some(h), _) => {
                    if let Some(e) = starvation.check(&**h, &self.table, now) {
                        break Err(e);
                    }
                    let nap =
                        deadline.map_or(STARVATION_CHECK, |d| (d - now).min(STARVATION_CHECK));
                    std::thread::park_timeout(nap);
                }
                (None, Some(d)) => std::thread::park_timeout(d - now),
                (None, None) => std::thread::park(),
            }
        };
        if let Some(t) = token {
            self.deregister(t);
        }
        outcome
    }

    /// Registers `waker`; `None` when the outcome is already known.
    pub fn register(&self, waker: &Waker) -> Option<u64> {
        self.fetch();
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Pending | State::Lost) {
            return None;
        }
        inner.next_token += 1;
        let token = inner.next_token;
        inner.waiters.push((token, waker.clone()));
        drop(inner);
        // Its value may have become held elsewhere since the fetch above
        // (see `held_elsewhere`).
        self.fetch();
        Some(token)
    }

    /// Removes a waker registered under `token` (a timeout or a dropped future).
    pub fn deregister(&self, token: u64) {
        self.inner.lock().waiters.retain(|(t, _)| *t != token);
    }

    /// Polls for the outcome, keeping at most one waker per `token`.
    pub fn poll(
        &self,
        cx: &mut TaskContext<'_>,
        token: &mut Option<u64>,
    ) -> Poll<Result<Value, Error>> {
        if let Some(r) = self.try_get() {
            return Poll::Ready(r);
        }
        self.fetch();
        let mut inner = self.inner.lock();
        let lost = match &inner.state {
            State::Ready(v) => return Poll::Ready(Ok(v.clone())),
            State::Failed(e) => return Poll::Ready(Err(self.as_seen_here(e))),
            State::Pending => false,
            State::Lost => true,
        };
        match token {
            Some(t) => {
                if let Some((_, w)) = inner.waiters.iter_mut().find(|(k, _)| k == t) {
                    if !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                }
            }
            None => {
                inner.next_token += 1;
                let t = inner.next_token;
                inner.waiters.push((t, cx.waker().clone()));
                *token = Some(t);
            }
        }
        drop(inner);
        // Its value may have become held elsewhere since the fetch above
        // (see `held_elsewhere`).
        self.fetch();
        if lost {
            self.recover();
        }
        Poll::Pending
    }
}
