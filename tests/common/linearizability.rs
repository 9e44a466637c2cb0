//! A linearizability checker for recorded concurrent histories: Wing and
//! Gong's search with Lowe's memoization (the "WGL" algorithm that Knossos
//! and Porcupine use), over any sequential model.
//!
//! A history is a list of completed operations, each with the time it was
//! called and the time it returned (from one monotonic clock, [`Clock`]). It
//! is linearizable if some order of its operations (a) respects real time —
//! an operation that returned before another was called comes first — and
//! (b) replayed one at a time on the [`Model`] gives every operation the
//! result it really had. The search tries, at each step, every operation
//! that may come next (called before the earliest return among those left)
//! and backtracks; a `(set of operations placed, model state)` pair seen
//! before is not explored again, which keeps histories of a few hundred
//! operations over ~8 clients fast. Objects that are independent (locks by
//! name, keys of a store) are checked one by one ([`check_partitioned`]):
//! linearizability is local (Herlihy and Wing), and each part is far smaller.

use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::time::Instant;

/// A sequential specification: the state of the object and how one
/// operation changes it.
pub trait Model: Clone + Eq + Hash {
    /// An operation with its arguments.
    type Op: std::fmt::Debug;
    /// What the operation returned.
    type Ret: std::fmt::Debug;
    /// The state after `op` returned `ret`, or `None` if it could not have
    /// returned that from this state.
    fn step(&self, op: &Self::Op, ret: &Self::Ret) -> Option<Self>;
}

/// One completed operation of a history.
#[derive(Debug, Clone)]
pub struct Operation<O, R> {
    /// Who called it (for messages only).
    pub client: usize,
    /// The operation.
    pub op: O,
    /// What it returned.
    pub ret: R,
    /// When it was called, by [`Clock::now`].
    pub call: u64,
    /// When it returned; at least `call`.
    pub returned: u64,
}

/// A recorded history of operations on `M`.
pub type History<M> = Vec<Operation<<M as Model>::Op, <M as Model>::Ret>>;

/// A monotonic clock shared by the clients that record a history.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(Instant::now())
    }
}

impl Clock {
    /// Nanoseconds since the clock started.
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// States explored at most before the checker gives up (an `Err` that says so).
pub const MAX_STATES: usize = 5_000_000;

/// Checks `history` against `init`: `Ok` with a linearization (indices into
/// `history`, in order), or `Err` explaining the longest prefix that could be
/// placed and what could not follow it.
pub fn check<M: Model>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
) -> Result<Vec<usize>, String> {
    for (i, op) in history.iter().enumerate() {
        if op.returned < op.call {
            return Err(format!(
                "operation {i} returned before it was called: {op:?}"
            ));
        }
    }
    // By call time: the operations that may come next are a prefix of those left.
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| history[i].call);
    let mut search = Search {
        history,
        order,
        placed: vec![0u64; history.len().div_ceil(64)],
        seen: HashSet::new(),
        path: Vec::new(),
        best: Vec::new(),
    };
    if search.run(init) {
        return Ok(search.path);
    }
    let placed = search.best.len();
    let next: Vec<_> = search
        .order
        .iter()
        .filter(|i| !search.best.contains(i))
        .take(4)
        .map(|&i| &history[i])
        .collect();
    Err(if search.seen.len() >= MAX_STATES {
        format!(
            "gave up after {MAX_STATES} states ({placed} of {} operations placed)",
            history.len()
        )
    } else {
        format!(
            "not linearizable: at most {placed} of {} operations can be placed in order; \
             none of the next ones fits (the first of those left: {next:?})",
            history.len()
        )
    })
}

/// Checks each part of `history` (by `key`) on its own, from `init`.
pub fn check_partitioned<M: Model, K: Ord + std::fmt::Debug>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
    key: impl Fn(&M::Op) -> K,
) -> Result<(), String>
where
    M::Op: Clone,
    M::Ret: Clone,
{
    let mut parts: BTreeMap<K, History<M>> = BTreeMap::new();
    for op in history {
        parts.entry(key(&op.op)).or_default().push(op.clone());
    }
    for (k, part) in parts {
        check(init, &part).map_err(|e| format!("{k:?}: {e}"))?;
    }
    Ok(())
}

struct Search<'h, M: Model> {
    history: &'h [Operation<M::Op, M::Ret>],
    order: Vec<usize>,
    placed: Vec<u64>,
    seen: HashSet<(Vec<u64>, M)>,
    path: Vec<usize>,
    best: Vec<usize>,
}

impl<M: Model> Search<'_, M> {
    fn is_placed(&self, i: usize) -> bool {
        self.placed[i / 64] & (1 << (i % 64)) != 0
    }

    fn flip(&mut self, i: usize) {
        self.placed[i / 64] ^= 1 << (i % 64);
    }

    fn run(&mut self, state: &M) -> bool {
        if self.path.len() == self.history.len() {
            return true;
        }
        if self.seen.len() >= MAX_STATES || !self.seen.insert((self.placed.clone(), state.clone()))
        {
            return false;
        }
        let left: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|&i| !self.is_placed(i))
            .collect();
        // Nothing left may come after an operation that returned first.
        let first_return = left
            .iter()
            .map(|&i| self.history[i].returned)
            .min()
            .unwrap_or(u64::MAX);
        for i in left {
            let op = &self.history[i];
            if op.call > first_return {
                break;
            }
            let Some(next) = state.step(&op.op, &op.ret) else {
                continue;
            };
            self.flip(i);
            self.path.push(i);
            if self.path.len() > self.best.len() {
                self.best = self.path.clone();
            }
            if self.run(&next) {
                return true;
            }
            self.path.pop();
            self.flip(i);
        }
        false
    }
}
