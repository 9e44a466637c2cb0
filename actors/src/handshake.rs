//! The six handshakes between threads that the engine rests on, each
//! small enough to model exhaustively (`actors/tests/loom.rs` runs them under loom
//! in CI) and each used by exactly one caller:
//!
//! - [`IdleSet`]: the run queue's submit/sleep handshake. A submitter that pushed
//!   a job wakes a sleeping worker, unless a worker is watching the queue (an
//!   idle worker spinning before it sleeps); a worker that stops watching, or
//!   goes to sleep, re-checks the queue. Neither may miss the other, or a job
//!   waits with every worker asleep. A worker that takes a job and leaves more
//!   wakes the next sleeper, since the job it took may block it for good.
//! - [`ScheduleFlag`]: an actor host's `scheduled` flag. Callers push to the
//!   mailbox and schedule the host only on the idle-to-busy edge; the host, done,
//!   releases the flag and re-checks the mailbox. No call may be left behind.
//! - [`RunningTask`]: what a worker is running, for a forced cancel to abandon the
//!   worker only while it still runs *that* task (never the next one).
//! - [`Elsewhere`]: an object slot whose value is on another node. Whoever marks
//!   it so (a result arrived as "held there") and whoever starts waiting for it
//!   must not miss each other: its value is asked for exactly once.
//! - [`Busy`]: whether a worker counts as blocked, for the pool to start
//!   another: while it waits in `get`, or since the router saw its job wait
//!   off its core for long (user code blocked outside rayx). The worker and
//!   the router each set one reason; the pool counts the worker once, and
//!   uncounts it once, however the two interleave.
//! - [`Lookout`]: whether the router looks at the pool for such jobs. It looks
//!   only while work is queued (a look costs a timer wake-up, and an idle
//!   runtime wakes nothing): a submitter that finds every worker busy starts
//!   it, the router stops when it finds the queue empty. Neither may miss the
//!   other, or a job waits behind workers asleep in user code with nobody
//!   looking.
//!
//! Every ordering below says what it pairs with.

use crate::sync::{fence, AtomicBool, AtomicU64, AtomicUsize, Mutex, Ordering};

/// Sleeping workers, each with what wakes it (`W`, e.g. its address).
pub struct IdleSet<W> {
    sleepers: Mutex<Vec<(usize, W)>>,
    /// `sleepers.len()`, readable without the lock by submitters.
    count: AtomicUsize,
    /// Workers watching the queue (spinning) instead of sleeping.
    watching: AtomicUsize,
}

impl<W> Default for IdleSet<W> {
    fn default() -> Self {
        IdleSet {
            sleepers: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            watching: AtomicUsize::new(0),
        }
    }
}

impl<W> IdleSet<W> {
    /// Workers asleep now (a hint: read without the lock).
    pub fn sleeping(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Workers watching the queue now (a hint).
    pub fn watching(&self) -> usize {
        self.watching.load(Ordering::Relaxed)
    }

    /// Called by a submitter right after its job became visible in the queue,
    /// and by a worker that took a job and left more (the job taken may block
    /// it for good, and a push that found a watcher woke nobody, so each such
    /// worker wakes the next): the sleeper it must wake, if any (none while a
    /// worker watches).
    pub fn after_push(&self) -> Option<W> {
        // Store buffering: the submitter writes the queue then reads `watching`
        // and `count`; a watcher writes `watching` (`watch_end`) and a sleeper
        // `count` (`park`), each then reads the queue. This fence pairs with
        // theirs: of the two reads, at least one sees the other's write, so
        // either we see the watcher or sleeper (and leave the job to it, or
        // wake it) or it sees our job.
        fence(Ordering::SeqCst);
        if self.watching.load(Ordering::Relaxed) > 0 {
            // A watcher takes the job (or hands it on): it sees it while it
            // watches, or in `watch_end`'s re-check.
            return None;
        }
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut sleepers = self.sleepers.lock();
        let woken = sleepers.pop();
        if woken.is_some() {
            // Relaxed: `count` changes only under the lock; readers outside it
            // order themselves with the fences.
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        woken.map(|(_, w)| w)
    }

    /// A worker starts watching the queue instead of sleeping: submitters
    /// wake nobody meanwhile. It must end with [`IdleSet::watch_end`].
    pub fn watch_begin(&self) {
        // Relaxed: a submitter that misses it wakes a sleeper, which is harmless.
        self.watching.fetch_add(1, Ordering::Relaxed);
    }

    /// The worker stops watching; true if `has_work()` then says work is
    /// there. A submitter may have left it to this watcher: the worker must
    /// take it, or hand it on with [`IdleSet::after_push`] if it is leaving.
    /// Otherwise it parks (whose own re-check covers later pushes) or leaves.
    pub fn watch_end(&self, has_work: impl Fn() -> bool) -> bool {
        self.watching.fetch_sub(1, Ordering::Relaxed);
        // Pairs with the fence in `after_push`: either the submitter read our
        // decrement (and woke a sleeper itself) or we see its job here.
        fence(Ordering::SeqCst);
        has_work()
    }

    /// Parks sleeper `id` unless `has_work()` says work arrived. True if it is
    /// parked (a later `after_push` will hand out its `W`, or already has);
    /// false if it should go on draining.
    pub fn park(&self, id: usize, wake: W, has_work: impl Fn() -> bool) -> bool {
        {
            let mut sleepers = self.sleepers.lock();
            sleepers.push((id, wake));
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        // Pairs with the fence in `after_push` (see there).
        fence(Ordering::SeqCst);
        if !has_work() {
            return true;
        }
        // Work arrived: take ourselves off the list, unless a submitter already
        // did, in which case its wake-up is on its way and we count as parked.
        !self.remove(id)
    }

    /// Takes sleeper `id` off the list; false if it was not on it.
    pub fn remove(&self, id: usize) -> bool {
        let mut sleepers = self.sleepers.lock();
        match sleepers.iter().position(|(i, _)| *i == id) {
            Some(pos) => {
                sleepers.swap_remove(pos);
                self.count.fetch_sub(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Takes every sleeper for which `pick` holds off the list; returns them.
    pub fn remove_where(&self, pick: impl Fn(usize) -> bool) -> Vec<W> {
        let mut sleepers = self.sleepers.lock();
        let mut taken = Vec::new();
        let mut i = 0;
        while i < sleepers.len() {
            if pick(sleepers[i].0) {
                taken.push(sleepers.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        self.count.fetch_sub(taken.len(), Ordering::Relaxed);
        taken
    }

    /// How many are parked now.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether none is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a consumer (an actor host's run loop) is scheduled or running.
#[derive(Default)]
pub struct ScheduleFlag(AtomicBool);

impl ScheduleFlag {
    /// A producer, after pushing to the mailbox (or the consumer itself, to keep
    /// running): true if the caller won the idle-to-busy edge and must schedule
    /// the consumer.
    pub fn claim(&self) -> bool {
        // AcqRel: the swaps of all producers and of the consumer's `release` are
        // one modification order. A producer whose swap comes after the release
        // reads `false` and schedules; one whose swap comes before is read by the
        // release's swap (acquire), which then sees the producer's push.
        !self.0.swap(true, Ordering::AcqRel)
    }

    /// The consumer, done with the mailbox: gives the flag up, then re-checks.
    /// True if mail arrived meanwhile and the consumer claimed the flag back: it
    /// must run (or be scheduled) again.
    pub fn release(&self, has_mail: impl Fn() -> bool) -> bool {
        // A swap, not a store: a store would not read the producers' swaps, and
        // the mailbox read below could then miss a push (see `claim`).
        self.0.swap(false, Ordering::AcqRel);
        has_mail() && self.claim()
    }

    /// Whether the consumer is scheduled or running now (a hint).
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The task a worker runs now (0: none), with a bit set when a forced cancel
/// has abandoned the worker.
#[derive(Default)]
pub struct RunningTask(AtomicU64);

/// Set in [`RunningTask`] when the worker was abandoned. Task numbers are below it.
const ABANDONED: u64 = 1 << 63;

impl RunningTask {
    /// The worker starts task `task` (nonzero, below 2^63); returns the task it
    /// was running, to pass back to [`end`](Self::end) (nested tasks: a worker
    /// blocked in `get` runs the task it waits for itself).
    pub fn begin(&self, task: u64) -> u64 {
        debug_assert!(task != 0 && task & ABANDONED == 0);
        let mut now = self.0.load(Ordering::Acquire);
        loop {
            // A worker abandoned while running the outer task stays abandoned:
            // the mark moves to the nested task in the same exchange, so no
            // cancel can abandon the worker a second time in between.
            let next = task | (now & ABANDONED);
            // AcqRel pairs with `abandon`'s compare-exchange, which must see this
            // task's number, not the one before.
            match self
                .0
                .compare_exchange(now, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return now & !ABANDONED,
                Err(seen) => now = seen,
            }
        }
    }

    /// The worker finished its task and goes back to `outer` (0 at top level).
    /// True if the worker was abandoned and has no outer task left: it must
    /// retire now. An abandoned nested task passes the mark to its outer task.
    pub fn end(&self, outer: u64) -> bool {
        let mut now = self.0.load(Ordering::Acquire);
        loop {
            let abandoned = now & ABANDONED != 0;
            let next = if abandoned && outer != 0 {
                outer | ABANDONED
            } else {
                outer
            };
            // AcqRel pairs with `abandon`: a mark set before this exchange is in
            // `now`; one tried after it finds another number and fails.
            match self
                .0
                .compare_exchange(now, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return abandoned && outer == 0,
                Err(seen) => now = seen,
            }
        }
    }

    /// A forced cancel of `task`: marks the worker abandoned if, and only if, it
    /// is running `task` now. True if this call set the mark.
    pub fn abandon(&self, task: u64) -> bool {
        self.0
            .compare_exchange(task, task | ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether a forced cancel abandoned the worker (it is counted as
    /// blocked for that already).
    pub fn is_abandoned(&self) -> bool {
        self.0.load(Ordering::Acquire) & ABANDONED != 0
    }

    /// The task running now, if any.
    pub fn current(&self) -> Option<u64> {
        let now = self.0.load(Ordering::Acquire) & !ABANDONED;
        (now != 0).then_some(now)
    }
}

/// A value on another node, asked for once by whoever wants it first.
///
/// The protocol, with the lock that guards the slot's waiters:
/// - the marker calls [`mark`](Self::mark), then looks under the lock whether
///   anyone waits, and if so calls [`take`](Self::take) (and asks on a `true`);
/// - a waiter registers under the lock, then calls `take` (and asks on a
///   `true`). (It may also `take` before registering: a borrowed value is asked
///   for as soon as it is wanted.)
///
/// The lock orders the marker's look against the waiter's registration: if
/// the look comes first, the waiter's `take` comes after the mark and sees
/// it; if the registration comes first, the look sees the waiter. `take` is a
/// swap, so of all who see the mark exactly one asks.
pub struct Elsewhere(AtomicBool);

impl Elsewhere {
    /// A flag, set or not.
    pub fn new(marked: bool) -> Self {
        Elsewhere(AtomicBool::new(marked))
    }

    /// The value is elsewhere: the next `take` asks for it.
    pub fn mark(&self) {
        // Release pairs with the Acquire of the swap in `take`: whoever takes
        // the mark sees what the marker wrote before it (where the value is).
        self.0.store(true, Ordering::Release);
    }

    /// The right to ask for the value: true for exactly one caller per mark.
    pub fn take(&self) -> bool {
        // The Relaxed load keeps a local value's reads free of a
        // read-modify-write; a stale `false` is covered by the lock (above).
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::AcqRel)
    }
}

/// Whether a worker counts as blocked, with the job it runs (see the module
/// docs). One word: the job's number (counting in steps of [`JOB`]) and three
/// bits. The worker sets `BUSY` for its job and `BLOCKED` while it waits in
/// `get`; the router sets `LONG` on a job it saw wait off its core for long.
/// The worker counts as blocked while `BLOCKED` or `LONG` is set: whoever sets
/// the first of the two counts it, whoever clears the last uncounts it, each
/// told so by the value its read-modify-write replaced.
///
/// The router counts the worker *before* it marks the job (and takes the
/// count back if the mark fails), so that the worker, which uncounts after it
/// sees the mark, never uncounts a count not made yet: the mark's Release
/// pairs with the Acquire of `end` (and of `block`, after which the worker
/// moves itself from the pool's "asleep" count to "in `get`"), which makes
/// the router's count happen before the worker's change. Every other change
/// is `Relaxed`: all are read-modify-writes of this one word, so each sees
/// the one before it, and the worker's own counts are ordered by its program
/// order.
#[derive(Default)]
pub struct Busy(AtomicU64);

const BUSY: u64 = 1;
const BLOCKED: u64 = 2;
const LONG: u64 = 4;
const FLAGS: u64 = BUSY | BLOCKED | LONG;
/// Job numbers count in steps of this, above the flags.
const JOB: u64 = 8;

impl Busy {
    /// The worker starts a job (never nested: a task it runs inline while
    /// waiting in `get` is part of the job in hand).
    pub fn begin(&self) {
        // The flags are clear between jobs (`end`), and the router marks only
        // a busy worker: this only numbers the job and sets BUSY.
        self.0.fetch_add(JOB | BUSY, Ordering::Relaxed);
    }

    /// The worker finished its job: true if the router had marked it long:
    /// uncount the worker.
    pub fn end(&self) -> bool {
        // Acquire pairs with `mark_long`'s Release: the router's count came
        // before the mark we see.
        let was = self.0.fetch_and(!FLAGS, Ordering::Acquire);
        debug_assert!(was & BUSY != 0 && was & BLOCKED == 0);
        was & LONG != 0
    }

    /// The worker waits in `get`: true if that makes it count as blocked
    /// (count it); false if its job's mark counts it already (it is now stuck
    /// in `get`, no longer only asleep).
    pub fn block(&self) -> bool {
        // Acquire pairs with `mark_long`'s Release, as in `end`.
        self.0.fetch_or(BLOCKED, Ordering::Acquire) & LONG == 0
    }

    /// The worker stopped waiting in `get`: true if it no longer counts as
    /// blocked (uncount it); false if its job's mark still counts it.
    pub fn unblock(&self) -> bool {
        self.0.fetch_and(!BLOCKED, Ordering::Relaxed) & LONG == 0
    }

    /// What the worker is doing now, for the router to compare with what it
    /// saw before: `Some` (a value for [`mark_long`](Self::mark_long)) while it
    /// runs a job that does not count as blocked.
    pub fn running(&self) -> Option<u64> {
        let now = self.0.load(Ordering::Relaxed);
        (now & FLAGS == BUSY).then_some(now)
    }

    /// The router, having counted the worker, marks the job it saw as `seen`
    /// long, if the worker still runs that job and does not count as blocked.
    /// True if it does now; false: the job ended, or a `get` began, since:
    /// take the count back.
    pub fn mark_long(&self, seen: u64) -> bool {
        // Release pairs with the Acquire of `end`: the count made before this
        // is seen by the worker that uncounts.
        seen & FLAGS == BUSY
            && self
                .0
                .compare_exchange(seen, seen | LONG, Ordering::Release, Ordering::Relaxed)
                .is_ok()
    }
}

/// Whether the router looks at the pool for jobs that wait long (see the
/// module docs).
///
/// Store buffering, as in [`IdleSet`]: a submitter writes the queue, then
/// reads the flag ([`wanted`](Self::wanted), after the SeqCst fence of
/// `IdleSet::after_push` that every submit makes); the router writes the flag,
/// then reads the queue ([`stop`](Self::stop), after its own SeqCst fence).
/// Of the two reads at least one sees the other's write: the submitter starts
/// the router, or the router sees the job and goes on looking. The swaps make
/// exactly one of them start it when both do.
#[derive(Default)]
pub struct Lookout(AtomicBool);

impl Lookout {
    /// A submitter that pushed a job and found every worker busy, after a
    /// SeqCst fence that follows its push: true if it must start the router
    /// looking.
    pub fn wanted(&self) -> bool {
        // Relaxed: ordered by the caller's fence (above); the swap decides
        // who starts the router.
        !self.0.load(Ordering::Relaxed) && !self.0.swap(true, Ordering::Relaxed)
    }

    /// The router found no work queued and stops looking, unless `has_work()`,
    /// read after the flag is down, finds some: true if it must go on.
    pub fn stop(&self, has_work: impl Fn() -> bool) -> bool {
        self.0.store(false, Ordering::Relaxed);
        // Pairs with the fence that precedes a submitter's `wanted`.
        fence(Ordering::SeqCst);
        has_work() && !self.0.swap(true, Ordering::Relaxed)
    }
}
