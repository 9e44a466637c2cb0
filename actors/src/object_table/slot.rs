//! One object's slot: its state machine (pending, ready, failed, lost), its
//! waiters and dependents, its lineage, and the queued task that makes it.

use super::*;
use crate::handshake::Elsewhere;

pub(super) enum State {
    Pending,
    Ready(Value),
    /// Boxed: an error is rare and larger than a value; every slot carries
    /// room for the larger of the two.
    Failed(Box<Error>),
    /// The value was lost (or freed while the slot lives as lineage); the next
    /// reader rebuilds it from its lineage, or fails.
    Lost,
}

/// How an object can be rebuilt.
pub(super) enum Lineage {
    /// A `put` object or a call's reply: it cannot be rebuilt.
    None,
    /// A task's result whose lineage was not kept, and why.
    Unkept(Unkept),
    /// The task that made it, kept in the slot's [`Work`] alone: no other
    /// object's lineage names it yet. A task nobody builds on allocates
    /// nothing for its lineage, and frees nothing on another thread.
    Own,
    /// The task that made it, shared with the lineage of the objects built
    /// from it.
    Kept(Arc<Kept>),
}

/// What makes a slot's object: its task, queued or kept as its lineage
/// (`Lineage::Own`), or the actor call whose reply it is — in one place: a
/// task's job and its lineage share the spec while it is queued, and a put
/// or a call's reply carries no room for a task twice.
pub(super) enum Work {
    /// No task here (or its lineage is elsewhere: not kept, or shared).
    None,
    /// The reply of a call to this actor, for a cancel to reach it (a call
    /// is never queued here nor kept as lineage).
    Call(ActorId),
    /// The task that makes this object, queued and not started, with the
    /// rest of its lineage when the slot keeps it (`Lineage::Own`): its spec
    /// is the job's.
    Queued(TaskJob, Option<Lineal>),
    /// The task that made this object, kept to rebuild it (`Lineage::Own`).
    Kept(Kept),
}

/// A kept task's lineage beside its spec: its arguments' lineage and its
/// bytes in the budget.
pub(super) struct Lineal {
    pub(super) deps: Vec<Dep>,
    pub(super) bytes: u64,
}

/// A task kept to rebuild its result: its spec, and for each argument object
/// its lineage — not its value: an argument nobody else holds is freed, and
/// rebuilt from that lineage if the result must be rebuilt (Ray's lineage
/// pinning).
pub(super) struct Kept {
    pub(super) spec: TaskSpec,
    pub(super) deps: Vec<Dep>,
    pub(super) bytes: u64,
    pub(super) rebuilds: AtomicU64,
}

/// An argument object of a kept task: its slot while something else holds
/// it, and the lineage to rebuild it from once nothing does.
pub(super) struct Dep {
    pub(super) id: ObjectId,
    pub(super) slot: Weak<Slot>,
    pub(super) lineage: DepLineage,
}

/// How a freed argument can be rebuilt.
pub(super) enum DepLineage {
    /// From its task.
    Kept(Arc<Kept>),
    /// Not: its lineage was not kept, for this reason.
    Unkept(Unkept),
    /// Not: a `put`, or another runtime's object.
    Lost,
}

/// Lets go of a kept task's arguments' lineage (`deps`), and of theirs when
/// this was the last holder — iteratively: a chain of a million tasks frees
/// without a recursion as deep as the chain. `freed` hears the bytes of each
/// kept task freed on the way.
pub(super) fn release_deps(deps: &mut Vec<Dep>, mut freed: impl FnMut(u64)) {
    fn kept_of(deps: &mut Vec<Dep>) -> impl Iterator<Item = Arc<Kept>> + '_ {
        deps.drain(..).filter_map(|d| match d.lineage {
            DepLineage::Kept(k) => Some(k),
            _ => None,
        })
    }
    if deps.is_empty() {
        return;
    }
    let mut stack: Vec<Arc<Kept>> = kept_of(deps).collect();
    while let Some(k) = stack.pop() {
        if let Ok(mut k) = Arc::try_unwrap(k) {
            freed(k.bytes);
            stack.extend(kept_of(&mut k.deps));
        }
    }
}

impl Drop for Kept {
    // A kept task usually goes through `OwnerTable::release_lineage`, which
    // gives its bytes back; dropped elsewhere, it still frees iteratively.
    fn drop(&mut self) {
        release_deps(&mut self.deps, |_| {});
    }
}

#[derive(Clone, Copy)]
pub(super) enum Held {
    Nothing,
    /// Bytes held inline, counted on this stripe of the table's count (and
    /// taken back from it: a stripe never reads below zero).
    Inline(u64, u8),
    Stored(u64),
}

impl Held {
    /// `size` bytes held inline, counted on this thread's stripe of `table`'s count.
    fn inline(table: &OwnerTable, size: u64) -> Held {
        Held::Inline(size, table.inline_bytes.add(size))
    }
}

pub(super) struct Inner {
    pub(super) state: State,
    pub(super) held: Held,
    pub(super) waiters: Vec<(u64, Waker)>,
    pub(super) next_token: u64,
    pub(super) dependents: Vec<Arc<PendingTask>>,
    pub(super) children: Vec<Weak<Slot>>,
    pub(super) lineage: Lineage,
    /// Lost because it was freed (a revived argument), not because it failed.
    pub(super) freed: bool,
    /// The task that makes this object while it is queued and not started,
    /// and its lineage while the slot alone keeps it; or the actor whose
    /// call makes it.
    pub(super) work: Work,
}

/// A new task's lineage: kept (its spec is the job's) or not, and why.
pub(super) type NewLineage = Result<Lineal, Unkept>;

/// Why a task's lineage was not kept (a byte in every slot, not a string's
/// 16: every object pays for the room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unkept {
    /// `max_retries` is 0.
    NoRetries,
    /// Its inline arguments are over the inline threshold.
    LargeArguments,
    /// `max_lineage_bytes` was reached.
    OverBudget,
}

impl Unkept {
    /// The reason, as errors say it.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Unkept::NoRetries => "its task may not run again (max_retries is 0)",
            Unkept::LargeArguments => {
                "its arguments were passed by value and are too large to keep; pass them as refs"
            }
            Unkept::OverBudget => "its lineage was not kept: max_lineage_bytes was reached",
        }
    }
}

impl Kept {
    pub(super) fn new(spec: TaskSpec, lineal: Lineal) -> Kept {
        Kept {
            spec,
            deps: lineal.deps,
            bytes: lineal.bytes,
            rebuilds: AtomicU64::new(0),
        }
    }

    /// Its lineage beside the spec, the spec dropped (an own kept task was
    /// never rebuilt: a rebuild shares it first).
    fn lineal(mut self) -> Lineal {
        Lineal {
            deps: std::mem::take(&mut self.deps),
            bytes: self.bytes,
        }
    }
}

impl Inner {
    /// Records a new task's lineage: `Own` when kept (the caller puts the
    /// returned rest of it in `work`), else why not.
    fn note_lineage(&mut self, lineage: NewLineage) -> Option<Lineal> {
        match lineage {
            Ok(lineal) => {
                self.lineage = Lineage::Own;
                Some(lineal)
            }
            Err(why) => {
                self.lineage = Lineage::Unkept(why);
                None
            }
        }
    }

    /// Whether the task that makes this object is queued here.
    pub(super) fn is_queued(&self) -> bool {
        matches!(self.work, Work::Queued(..))
    }

    /// Takes the queued task out, to run or drop it; a lineage kept with it
    /// stays, with a copy of its spec.
    pub(super) fn unqueue(&mut self) -> Option<TaskJob> {
        // Most calls (every completion) find nothing queued: no move then.
        if !self.is_queued() {
            return None;
        }
        let Work::Queued(job, lineal) = std::mem::replace(&mut self.work, Work::None) else {
            unreachable!("queued")
        };
        if let Some(lineal) = lineal {
            self.work = Work::Kept(Kept::new(job.spec.clone(), lineal));
        }
        Some(job)
    }

    /// This object's kept task, shared (a dependent's lineage or a rebuild
    /// names it): an own one moves into an `Arc` first.
    pub(super) fn share_lineage(&mut self) -> Option<&Arc<Kept>> {
        if matches!(self.lineage, Lineage::Own) {
            let kept = match std::mem::replace(&mut self.work, Work::None) {
                Work::Queued(job, Some(lineal)) => {
                    let kept = Kept::new(job.spec.clone(), lineal);
                    self.work = Work::Queued(job, None);
                    kept
                }
                Work::Kept(kept) => kept,
                _ => unreachable!("an own lineage is in its slot's work"),
            };
            self.lineage = Lineage::Kept(Arc::new(kept));
        }
        match &self.lineage {
            Lineage::Kept(k) => Some(k),
            _ => None,
        }
    }
}

/// What a cancel found: the tasks to cancel too, and the actor running the call.
pub struct Cancelled {
    /// Tasks the cancelled task submitted.
    pub children: Vec<Arc<Slot>>,
    /// The actor, if the object is an actor call's reply.
    pub actor: Option<ActorId>,
}

/// One object: pending, ready, failed or lost, with whoever waits for it.
///
/// Memory orderings: `status` mirrors the state under `inner`'s lock; it is
/// stored with Release after the state is set and loaded with Acquire by the
/// lock-free fast paths (`is_done`, `try_get`), which then take the lock to
/// read the value. `cancelled` is stored with Release before the cancel
/// completes the object and read with Acquire.
pub struct Slot {
    pub(super) id: ObjectId,
    pub(super) status: AtomicU8,
    pub(super) cancelled: AtomicBool,
    pub(super) inner: Mutex<Inner>,
    pub(super) table: Arc<OwnerTable>,
    /// Another node's object, borrowed here: its owner hears when it goes.
    pub(super) borrowed: bool,
    /// A node that keeps what this object's value refers to until it goes
    /// (the node that made it, whose result held refs); 0 if none.
    pub(super) tell_on_drop: AtomicU64,
    /// A value elsewhere that nobody has asked for yet — a borrowed object,
    /// or a task's result held on the node that ran it: the first get, wait,
    /// poll or dependent task asks for it (the fetch hook).
    pub(super) unfetched: Elsewhere,
}

impl Slot {
    /// The actor whose call makes this object, if it is a call's reply.
    pub fn call_of(&self) -> Option<ActorId> {
        match self.inner.lock().work {
            Work::Call(actor) => Some(actor),
            _ => None,
        }
    }

    /// A pending object's slot; a call's reply names its actor.
    // Inlined, as `OwnerTable::index` is: built in place where it is made
    // (a slot moved through a call is copied first, a tenth of a `put`).
    #[inline(always)]
    pub(super) fn new(id: ObjectId, table: Arc<OwnerTable>, actor: Option<ActorId>) -> Slot {
        let work = actor.map_or(Work::None, Work::Call);
        Slot::build(id, table, State::Pending, Held::Nothing, PENDING, work)
    }

    /// A slot made ready with a small `value` of `size` bytes before anyone
    /// can see it (held inline: nothing to admit, nothing that can fail).
    #[inline(always)]
    pub(super) fn filled(id: ObjectId, table: Arc<OwnerTable>, value: Value, size: u64) -> Slot {
        debug_assert!(size as usize <= table.inline_threshold);
        let held = Held::inline(&table, size);
        Slot::build(id, table, State::Ready(value), held, DONE, Work::None)
    }

    #[inline(always)]
    fn build(
        id: ObjectId,
        table: Arc<OwnerTable>,
        state: State,
        held: Held,
        status: u8,
        work: Work,
    ) -> Slot {
        Slot {
            id,
            status: AtomicU8::new(status),
            cancelled: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                state,
                held,
                waiters: Vec::new(),
                next_token: 0,
                dependents: Vec::new(),
                children: Vec::new(),
                lineage: Lineage::None,
                freed: false,
                work,
            }),
            table,
            borrowed: false,
            tell_on_drop: AtomicU64::new(0),
            unfetched: Elsewhere::new(false),
        }
    }

    /// The value is wanted: if it is elsewhere (a borrowed object, or a
    /// result held on the node that ran its task), asks for it, once. A ref
    /// that is only passed on or dropped never moves its value.
    pub fn fetch(&self) {
        if self.unfetched.take() {
            if let Some(fetch) = self.table.fetch_hook.get() {
                fetch(self.id);
            }
        }
    }

    /// Takes the right to ask for this object's value, which [`fetch`]
    /// would use: true at most once per mark. The taker asks for it its own
    /// way (a borrower told where the value is pulls it at once).
    ///
    /// [`fetch`]: Self::fetch
    pub fn take_fetch(&self) -> bool {
        self.unfetched.take()
    }

    /// This pending object's value is on another node (`fetch` asks for it):
    /// asked for at once if something waits for it already; a getter that
    /// registers later asks itself (it fetches again once registered). The
    /// handshake is [`Elsewhere`], model-checked with loom.
    pub fn held_elsewhere(&self) {
        note_elsewhere();
        self.unfetched.mark();
        let wanted = {
            let inner = self.inner.lock();
            !inner.waiters.is_empty() || !inner.dependents.is_empty()
        };
        if wanted {
            self.fetch();
        }
    }

    /// Has `node` told when this object goes (it keeps the refs and handles
    /// inside the value until then).
    pub fn tell_on_drop(&self, node: crate::ids::NodeId) {
        self.tell_on_drop.store(node.0, Ordering::Relaxed);
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The table that owns it.
    pub fn table(&self) -> &Arc<OwnerTable> {
        &self.table
    }

    /// Whether the task or call that makes this object was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks the task cancelled and fails the object with `error`; a queued task
    /// is dropped with its arguments. `None` if the object was already done: a
    /// finished task cannot be cancelled.
    pub fn cancel(&self, error: Error) -> Option<Cancelled> {
        if self.is_done() {
            return None;
        }
        self.table.note_cancel();
        // Release pairs with the Acquire in `is_cancelled`: whoever sees the flag
        // sees the cancel as done from here on.
        self.cancelled.store(true, Ordering::Release);
        let (children, actor, job) = {
            let mut inner = self.inner.lock();
            (
                std::mem::take(&mut inner.children),
                match inner.work {
                    Work::Call(actor) => Some(actor),
                    _ => None,
                },
                inner.unqueue(),
            )
        };
        drop(job);
        self.complete(Err(error));
        Some(Cancelled {
            children: children.iter().filter_map(Weak::upgrade).collect(),
            actor,
        })
    }

    /// Records a task submitted by the task that makes this object.
    pub fn add_child(&self, child: &Arc<Slot>) {
        let mut inner = self.inner.lock();
        if matches!(inner.state, State::Pending) {
            // Sweep finished children only when the list is about to grow:
            // amortized O(1) per child, so a task (or call) that submits 10,000
            // tasks pays no quadratic cost.
            if inner.children.len() == inner.children.capacity() {
                inner.children.retain(|c| c.strong_count() > 0);
            }
            inner.children.push(Arc::downgrade(child));
        }
    }

    /// Puts the task that makes this object in it, ready to run, with its
    /// lineage if given (one lock for both; a new task's lineage is its
    /// spec, the job's, with `Lineal`); false (and the job dropped) if the
    /// object is already done, e.g. cancelled.
    pub(super) fn set_job(&self, job: TaskJob, lineage: Option<NewLineage>) -> bool {
        let mut inner = self.inner.lock();
        let done = matches!(inner.state, State::Ready(_) | State::Failed(_));
        if let Some(lineal) = lineage.and_then(|l| inner.note_lineage(l)) {
            // A new task: nothing is in its work yet.
            inner.work = if done {
                Work::Kept(Kept::new(job.spec, lineal))
            } else {
                Work::Queued(job, Some(lineal))
            };
            return !done;
        }
        if done {
            drop(inner);
            drop(job);
            return false;
        }
        // Queued again (a retry, a rebuild): a lineage kept here goes back
        // beside the job, whose spec is the same task's.
        inner.work = match std::mem::replace(&mut inner.work, Work::None) {
            Work::Kept(kept) => Work::Queued(job, Some(kept.lineal())),
            Work::Queued(old, lineal) => {
                debug_assert!(false, "a task queued twice in its slot");
                drop(old);
                Work::Queued(job, lineal)
            }
            Work::None => Work::Queued(job, None),
            Work::Call(_) => {
                debug_assert!(false, "an actor call's reply is made by no task");
                Work::Queued(job, None)
            }
        };
        true
    }

    /// Keeps a kept task's lineage in this slot before the task is queued (it
    /// waits for its arguments).
    pub(super) fn keep_lineage(&self, lineage: NewLineage, spec: &TaskSpec) {
        let mut inner = self.inner.lock();
        if let Some(lineal) = inner.note_lineage(lineage) {
            inner.work = Work::Kept(Kept::new(spec.clone(), lineal));
        }
    }

    /// Looks at the queued task that makes this object, if it is queued.
    pub fn peek_job<R>(&self, f: impl FnOnce(&TaskJob) -> R) -> Option<R> {
        match &self.inner.lock().work {
            Work::Queued(job, _) => Some(f(job)),
            _ => None,
        }
    }

    /// Whether this is another node's object, borrowed here.
    pub fn is_borrowed(&self) -> bool {
        self.borrowed
    }

    /// Takes the queued task that makes this object, to run it. `None` if it
    /// was taken already (by a worker, or by a getter running it inline).
    pub fn take_job(&self) -> Option<TaskJob> {
        self.inner.lock().unqueue()
    }

    /// Sets the outcome and wakes every waiter; a second outcome is ignored.
    /// Once the node is shutting down every outcome is `ShutDown`.
    pub fn complete(&self, result: Result<Value, Error>) {
        if self.status.load(Ordering::Acquire) == DONE {
            return;
        }
        let result = if self.table.is_closed() {
            Err(Error::ShutDown)
        } else {
            result
        };
        let (result, held) = match result {
            Ok(v) => match self.account(&v) {
                Ok(held) => (Ok(v), held),
                Err(e) => (Err(e), Held::Nothing),
            },
            Err(e) => (Err(e), Held::Nothing),
        };
        self.complete_held(result, held);
    }

    /// Completes a put whose room in the object store, `size` bytes, its
    /// caller admitted already (see [`OwnerTable::put_admitted`]).
    pub(super) fn complete_admitted(&self, value: Value, size: u64) {
        if self.table.is_closed() {
            self.table.store.release(size);
            return self.complete_held(Err(Error::ShutDown), Held::Nothing);
        }
        self.complete_held(Ok(value), Held::Stored(size));
    }

    /// Completes with `result`, which holds `held` of the table's room
    /// (given back if the object was completed already).
    fn complete_held(&self, result: Result<Value, Error>, held: Held) {
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Pending | State::Lost) {
            drop(inner);
            self.release(held);
            return;
        }
        if matches!(held, Held::Stored(_)) && self.table.faults.fires(Chance::DropObject) {
            // Injected fault: the stored value is lost as soon as it lands.
            inner.state = State::Lost;
            self.status.store(LOST, Ordering::Release);
            let someone_waits = !inner.waiters.is_empty() || !inner.dependents.is_empty();
            drop(inner);
            self.release(held);
            if someone_waits {
                self.recover();
            }
            return;
        }
        inner.state = match &result {
            Ok(v) => State::Ready(v.clone()),
            Err(e) => State::Failed(Box::new(e.clone())),
        };
        inner.held = held;
        let job = inner.unqueue();
        // Release pairs with the Acquire loads of `status`: a reader that sees
        // DONE finds the state above under the lock.
        self.status.store(DONE, Ordering::Release);
        self.table.completed.add(1);
        let waiters = std::mem::take(&mut inner.waiters);
        let dependents = std::mem::take(&mut inner.dependents);
        drop(inner);
        drop(job);
        for (_, w) in waiters {
            w.wake();
        }
        for d in dependents {
            d.dependency_done(
                result
                    .as_ref()
                    .err()
                    .map(|e| self.as_seen_by(e, &d.ret.table)),
            );
        }
    }

    pub(super) fn account(&self, v: &Value) -> Result<Held, Error> {
        let size = v.size() as u64;
        if size as usize > self.table.inline_threshold {
            self.table.store.admit(size)?;
            Ok(Held::Stored(size))
        } else {
            Ok(Held::inline(&self.table, size))
        }
    }

    pub(super) fn release(&self, held: Held) {
        match held {
            Held::Nothing => {}
            Held::Inline(n, stripe) => {
                self.table.inline_bytes.sub_from(stripe, n);
            }
            Held::Stored(n) => self.table.store.release(n),
        }
    }

    /// Rebuilds a lost object by running the task that made it again (its
    /// lost arguments are rebuilt the same way when that task waits for them),
    /// within the task's `max_retries`; an object that cannot be rebuilt fails
    /// with `ObjectLost` (a `put`) or `ObjectReconstructionFailed`.
    pub fn recover(&self) {
        self.fetch();
        if self.status.load(Ordering::Acquire) != LOST {
            return;
        }
        let outermost = RECOVERING.with(|r| {
            let mut r = r.borrow_mut();
            r.is_none().then(|| *r = Some(Vec::new())).is_some()
        });
        self.recover_one();
        if outermost {
            while let Some(next) = RECOVERING.with(|r| r.borrow_mut().as_mut().and_then(Vec::pop)) {
                next.recover_one();
            }
            RECOVERING.with(|r| *r.borrow_mut() = None);
        }
    }

    /// Fails `slot` with `error` after the object being failed now (on this
    /// thread), or now if none is: a failure that runs down a chain of
    /// dependents is a loop.
    pub(super) fn fail_later(slot: &Arc<Slot>, error: Error) {
        let error = FAILING.with(|f| match &mut *f.borrow_mut() {
            Some(list) => {
                list.push((slot.clone(), error));
                None
            }
            None => Some(error),
        });
        let Some(error) = error else {
            return;
        };
        FAILING.with(|f| *f.borrow_mut() = Some(Vec::new()));
        slot.complete(Err(error));
        while let Some((next, e)) = FAILING.with(|f| f.borrow_mut().as_mut().and_then(Vec::pop)) {
            next.complete(Err(e));
        }
        FAILING.with(|f| *f.borrow_mut() = None);
    }

    /// Recovers this object after the one being recovered now (on this
    /// thread), or now if none is.
    fn recover_later(self: &Arc<Self>) {
        let queued = RECOVERING.with(|r| match &mut *r.borrow_mut() {
            Some(list) => {
                list.push(self.clone());
                true
            }
            None => false,
        });
        if !queued {
            self.recover();
        }
    }

    fn recover_one(&self) {
        if self.status.load(Ordering::Acquire) != LOST {
            return;
        }
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Lost) {
            return;
        }
        let id = self.id.to_string();
        inner.share_lineage();
        let rebuild = match &inner.lineage {
            Lineage::Kept(kept) if inner.freed => Ok(kept.clone()),
            Lineage::Kept(kept)
                if kept
                    .spec
                    .options
                    .max_retries
                    .allows(kept.rebuilds.load(Ordering::Relaxed) + 1) =>
            {
                kept.rebuilds.fetch_add(1, Ordering::Relaxed);
                Ok(kept.clone())
            }
            Lineage::Kept(kept) => Err(Error::ObjectReconstructionFailed {
                id,
                cause: format!(
                    "task `{}` was already run again max_retries ({}) times",
                    kept.spec.display_name(),
                    kept.spec.options.max_retries
                ),
            }),
            Lineage::Own => unreachable!("shared above"),
            Lineage::None => Err(Error::ObjectLost { id }),
            Lineage::Unkept(why) => Err(Error::ObjectReconstructionFailed {
                id,
                cause: why.reason().to_string(),
            }),
        };
        inner.state = State::Pending;
        inner.freed = false;
        self.status.store(PENDING, Ordering::Release);
        drop(inner);
        match rebuild {
            Ok(kept) => {
                let Some(me) = self.table.lookup(self.id) else {
                    return;
                };
                tracing::debug!(
                    "rayx: rebuilding lost {} by running {} again",
                    self.id,
                    kept.spec.display_name()
                );
                // Arguments still held are used as they are; freed ones come
                // back as lost slots that rebuild themselves from their lineage.
                let pins = kept.deps.iter().map(|d| self.table.revive(d)).collect();
                self.table.submit_task(me, kept.spec.clone(), pins, false);
            }
            Err(error) => self.complete(Err(error)),
        }
    }

    /// Why this object could not be rebuilt from its lineage, if it could not.
    pub fn why_unrebuildable(&self) -> Option<String> {
        match &self.inner.lock().lineage {
            Lineage::Kept(_) | Lineage::Own => None,
            Lineage::Unkept(why) => Some(why.reason().to_string()),
            Lineage::None => Some("no lineage was kept for it".into()),
        }
    }

    /// The value was held on another node, which died before anyone read it:
    /// the object is lost, and the next read rebuilds it from its lineage
    /// (now, if something waits for it already). False if it was not pending.
    pub fn lost_elsewhere(&self) -> bool {
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Pending) || inner.is_queued() {
            return false;
        }
        inner.state = State::Lost;
        self.status.store(LOST, Ordering::Release);
        let someone_waits = !inner.waiters.is_empty() || !inner.dependents.is_empty();
        drop(inner);
        if someone_waits {
            self.recover();
        }
        true
    }

    /// Injected fault: drops a ready value as if the node holding it died.
    /// Returns false if there was no value to lose.
    pub fn lose(&self) -> bool {
        let mut inner = self.inner.lock();
        if !matches!(inner.state, State::Ready(_)) {
            return false;
        }
        inner.state = State::Lost;
        let held = std::mem::replace(&mut inner.held, Held::Nothing);
        self.status.store(LOST, Ordering::Release);
        drop(inner);
        self.release(held);
        true
    }

    /// The outcome, if there is one yet.
    pub fn try_get(&self) -> Option<Result<Value, Error>> {
        if self.status.load(Ordering::Acquire) != DONE {
            return None;
        }
        match &self.inner.lock().state {
            State::Pending | State::Lost => None,
            State::Ready(v) => Some(Ok(v.clone())),
            State::Failed(e) => Some(Err(self.as_seen_here(e))),
        }
    }

    /// An error as a reader owned by `table` sees it: this object's runtime
    /// shutting down is, to another runtime, its owner dying.
    pub(super) fn as_seen_by(&self, e: &Error, table: &Arc<OwnerTable>) -> Error {
        match e {
            Error::ShutDown if !Arc::ptr_eq(&self.table, table) => Error::OwnerDied {
                id: self.id.to_string(),
            },
            e => e.clone(),
        }
    }

    /// An error as the runtime of the calling thread sees it.
    pub(super) fn as_seen_here(&self, e: &Error) -> Error {
        match (e, current_table()) {
            (Error::ShutDown, Some(table)) => self.as_seen_by(e, &table),
            (e, _) => e.clone(),
        }
    }

    /// Whether the outcome is known to be a failure.
    pub fn has_failed(&self) -> bool {
        self.is_done() && matches!(self.inner.lock().state, State::Failed(_))
    }

    /// Whether the outcome is known.
    pub fn is_done(&self) -> bool {
        self.status.load(Ordering::Acquire) == DONE
    }

    /// Adds a task waiting on this object; returns the outcome instead if known.
    pub(super) fn add_dependent(
        self: &Arc<Self>,
        task: &Arc<PendingTask>,
    ) -> Option<Result<(), Error>> {
        self.fetch();
        let mut inner = self.inner.lock();
        match &inner.state {
            State::Pending => {
                inner.dependents.push(task.clone());
                drop(inner);
                // Its value may have become held elsewhere meanwhile.
                self.fetch();
                None
            }
            State::Lost => {
                // A task needs it: rebuild it, and run the task after. Later,
                // not here: a chain of lost objects rebuilds in a loop, not
                // in a recursion as deep as the chain.
                inner.dependents.push(task.clone());
                drop(inner);
                self.recover_later();
                None
            }
            State::Ready(_) => Some(Ok(())),
            State::Failed(e) => Some(Err(self.as_seen_by(e, &task.ret.table))),
        }
    }
}

/// Objects to fail, each with its error.
type Failures = Vec<(Arc<Slot>, Error)>;

thread_local! {
    /// Objects to fail on this thread, while one is being failed.
    static FAILING: std::cell::RefCell<Option<Failures>> = const { std::cell::RefCell::new(None) };
    /// Objects waiting to be recovered on this thread, while one is.
    static RECOVERING: std::cell::RefCell<Option<Vec<Arc<Slot>>>> = const { std::cell::RefCell::new(None) };
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The lineage budget counts the lineage of live objects: a kept task
        // still referenced as an argument's lineage by another object's lineage
        // lives on, counted in that object's bytes.
        let inner = self.inner.get_mut();
        match std::mem::replace(&mut inner.lineage, Lineage::None) {
            Lineage::Kept(kept) => self.table.release_lineage(kept),
            Lineage::Own => match &mut inner.work {
                Work::Queued(_, Some(lineal)) => {
                    self.table.release_own(&mut lineal.deps, lineal.bytes)
                }
                Work::Kept(kept) => self.table.release_own(&mut kept.deps, kept.bytes),
                _ => debug_assert!(false, "an own lineage not in its slot"),
            },
            _ => {}
        }
        let held = inner.held;
        self.release(held);
        let mut index = self.table.shard(self.id).index.lock();
        // One look-up: gone only if the entry is this dead slot's (a rebuilt
        // one may have taken the id since).
        if let std::collections::hash_map::Entry::Occupied(e) = index.entry(self.id) {
            if e.get().strong_count() == 0 {
                e.remove();
            }
        }
        drop(index);
        let tell = *self.tell_on_drop.get_mut();
        if self.borrowed || tell != 0 {
            if let Some(released) = self.table.borrow_hook.get() {
                released(self.id, (tell != 0).then_some(crate::ids::NodeId(tell)));
            }
        }
    }
}
#[cfg(test)]
mod size {
    use super::*;
    use std::mem::size_of;

    /// Every object, a `put` or a finished task, is a slot, and a million
    /// queued tasks are a million slots: what a field adds here, every
    /// object pays. The defaults of a task's options and a failed object's
    /// error take no room in it (both boxed when present).
    #[test]
    fn a_slot_stays_small() {
        assert_eq!(
            size_of::<crate::messages::SpecOptions>(),
            size_of::<usize>()
        );
        assert_eq!(size_of::<State>(), size_of::<Value>());
        assert!(
            size_of::<Slot>() <= 360,
            "a slot grew to {} bytes (work {}, job {}, kept {})",
            size_of::<Slot>(),
            size_of::<Work>(),
            size_of::<TaskJob>(),
            size_of::<Kept>()
        );
    }
}
