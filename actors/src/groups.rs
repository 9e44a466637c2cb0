//! Placement groups (Ray's): bundles of resources reserved together, on one
//! node or several, so that the tasks and actors scheduled into them find
//! their resources waiting.
//!
//! - [`place_bundles`] chooses nodes for a group's bundles by its
//!   [`Strategy`] over what each node has free: the head runs it for a
//!   cluster, a runtime outside one for itself.
//! - [`Groups`] is a node's view of the groups it knows: their bundles'
//!   nodes (where work scheduled into them goes), what they reserve on each
//!   node (which work outside them may not use), and who waits for which to
//!   be ready.
//!
//! A group's life, as the head keeps it: `Pending` (no room yet, or its
//! bundles' nodes have not all taken their reservation), `Created` (every
//! bundle reserved on its node), `Rescheduling` (a bundle's node died; the
//! bundle is placed again), `Removed` (for good).

use crate::error::Error;
use crate::ids::{ActorId, NodeId};
use crate::object_table::Slot;
use crate::value::Value;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub use crate::ids::GroupId;
pub use crate::messages::Resources;

/// The name CPUs go by in a bundle or a node's resources.
pub const CPU: &str = "CPU";

/// Slack for sums of fractional amounts (0.1 + 0.2 fits in 0.3).
const EPSILON: f64 = 1e-9;

/// The most bundles one placement group may have.
pub const MAX_BUNDLES: usize = 10_000;

/// How many removed groups a node remembers, to refuse work that comes for
/// one after its removal (beyond it the oldest are forgotten).
pub const REMOVED_KEPT: usize = 10_000;

/// How a group's bundles spread over nodes (Ray's strategies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// As few nodes as can take them (Ray's default).
    #[default]
    Pack,
    /// As many nodes as can take them.
    Spread,
    /// One node, or not at all.
    StrictPack,
    /// A node of its own for each bundle, or not at all.
    StrictSpread,
}

/// Where a group is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    /// Waiting for room, or for its bundles' nodes to take them.
    Pending,
    /// Every bundle is reserved on its node.
    Created,
    /// A bundle's node died: it is being placed again.
    Rescheduling,
    /// Removed: its reservations are returned, its actors killed.
    Removed,
}

/// A placement group as the head keeps it and tells every node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Its id.
    pub id: GroupId,
    /// Its namespace and name, if named.
    pub name: Option<(String, String)>,
    /// How its bundles spread.
    pub strategy: Strategy,
    /// What each bundle reserves.
    pub bundles: Vec<Resources>,
    /// Where each bundle is reserved (none: not placed yet).
    pub nodes: Vec<Option<NodeId>>,
    /// Where it is in its life.
    pub state: GroupState,
    /// It outlives its creator (else it is removed when its creator's node
    /// leaves or dies, as Ray removes a job's groups).
    pub detached: bool,
    /// The head's count of its changes: a node keeps the latest it heard of.
    pub version: u64,
}

impl GroupInfo {
    /// Whether every bundle has a node.
    pub fn placed(&self) -> bool {
        self.nodes.iter().all(Option::is_some)
    }
}

/// Checks a group's bundles as asked for: at least one (at most
/// [`MAX_BUNDLES`]), each asking for something, every amount finite and not
/// negative.
pub fn check_bundles(bundles: &[Resources]) -> Result<(), Error> {
    if bundles.is_empty() {
        return Err(Error::InvalidArgument(
            "a placement group needs at least one bundle".into(),
        ));
    }
    if bundles.len() > MAX_BUNDLES {
        return Err(Error::InvalidArgument(format!(
            "a placement group has {} bundles, over the limit of {MAX_BUNDLES}",
            bundles.len()
        )));
    }
    for (i, b) in bundles.iter().enumerate() {
        if b.values().all(|v| *v == 0.0) {
            return Err(Error::InvalidArgument(format!(
                "bundle {i} of the placement group asks for nothing: every bundle needs some resource"
            )));
        }
        check_resources(b)?;
    }
    Ok(())
}

/// Checks amounts of resources: finite, not negative, names not empty.
pub fn check_resources(r: &Resources) -> Result<(), Error> {
    for (name, amount) in r {
        if name.is_empty() || name.len() > 256 {
            return Err(Error::InvalidArgument(format!(
                "a resource's name must be 1 to 256 bytes long, not {} bytes",
                name.len()
            )));
        }
        if !amount.is_finite() || *amount < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "resource `{name}` asks for {amount}: an amount must be finite and not negative"
            )));
        }
    }
    Ok(())
}

/// Checks what work asks for: `cpus` (Ray's `num_cpus`) and `resources`,
/// each finite and not negative.
pub fn check_need(cpus: f64, resources: &Resources) -> Result<(), Error> {
    check_resources(resources)?;
    if !cpus.is_finite() || cpus < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "num_cpus is {cpus}: it must be finite and not negative"
        )));
    }
    Ok(())
}

/// What work needing `cpus` CPUs and `resources` asks of a bundle or a node.
pub fn need(cpus: f64, resources: &Resources) -> Resources {
    let mut need = resources.clone();
    if cpus > 0.0 {
        need.insert(CPU.to_string(), cpus);
    }
    need
}

/// What a node of `cpus` CPUs and these custom resources has in all.
pub fn capacity(cpus: f64, resources: &Resources) -> Resources {
    let mut all = resources.clone();
    all.insert(CPU.to_string(), cpus);
    all
}

/// Whether `need` fits in `free`.
pub fn fits(free: &Resources, need: &Resources) -> bool {
    need.iter()
        .all(|(k, v)| *v <= EPSILON || free.get(k).copied().unwrap_or(0.0) + EPSILON >= *v)
}

/// The first resource of `need` that `free` lacks, for an error.
pub fn lacking(free: &Resources, need: &Resources) -> Option<String> {
    need.iter()
        .find(|(k, v)| **v > EPSILON && free.get(*k).copied().unwrap_or(0.0) + EPSILON < **v)
        .map(|(k, v)| format!("{v} {k} (it has {})", free.get(k).copied().unwrap_or(0.0)))
}

/// Takes `used` out of `free` (what `free` does not have stays absent).
pub fn take(free: &mut Resources, used: &Resources) {
    for (k, v) in used {
        if let Some(f) = free.get_mut(k) {
            *f -= v;
        }
    }
}

fn add(to: &mut Resources, r: &Resources, sign: f64) {
    for (k, v) in r {
        let e = to.entry(k.clone()).or_insert(0.0);
        *e += sign * v;
        if e.abs() <= EPSILON {
            to.remove(k);
        }
    }
}

/// A node's resources free for bundles, in the order the caller prefers them.
#[derive(Debug, Clone, PartialEq)]
pub struct Free {
    /// The node.
    pub id: NodeId,
    /// What it has that no group reserves.
    pub free: Resources,
}

/// Chooses nodes for the bundles not placed yet (`fixed[i]` none) of a
/// group, by its strategy, over `nodes` (each with what it has free, in
/// the order the caller prefers); bundles already placed stay where they
/// are. The nodes, one per bundle, or why the group does not fit now.
///
/// Bundles are placed largest first, each on the node it fits best (the
/// least left over), so that a small bundle does not take the room a large
/// one needed; a node of its own per bundle (the spread strategies) is a
/// matching of bundles to nodes, found by augmenting paths. Cost: about
/// bundles × nodes (a matching: bundles² × nodes at most, and a strict
/// spread has no more bundles than nodes).
///
/// Where these heuristics find no room for a group that may share nodes
/// (`Pack`, `Spread`), a bounded search of every assignment settles it.
pub fn place_bundles(
    strategy: Strategy,
    bundles: &[Resources],
    fixed: &[Option<NodeId>],
    nodes: &[Free],
) -> Result<Vec<NodeId>, String> {
    match by_heuristic(strategy, bundles, fixed, nodes) {
        Err(why) if matches!(strategy, Strategy::Pack | Strategy::Spread) => {
            search(bundles, fixed, nodes).ok_or(why)
        }
        placed => placed,
    }
}

/// How many steps the search for a placement takes at most: enough for every
/// assignment of a few bundles to a few nodes, and a bound on the head's
/// time for a large group the heuristics could not place.
const SEARCH_STEPS: usize = 100_000;

/// Any placement of the bundles not placed yet that fits, by depth-first
/// search (largest bundle first), within [`SEARCH_STEPS`].
fn search(bundles: &[Resources], fixed: &[Option<NodeId>], nodes: &[Free]) -> Option<Vec<NodeId>> {
    let todo: Vec<usize> = (0..bundles.len())
        .filter(|&i| fixed.get(i).copied().flatten().is_none())
        .collect();
    let mut free: Vec<Resources> = nodes.iter().map(|n| n.free.clone()).collect();
    let mut chosen = vec![0usize; bundles.len()];
    let mut steps = 0;
    fn go(
        k: usize,
        todo: &[usize],
        bundles: &[Resources],
        free: &mut [Resources],
        chosen: &mut [usize],
        steps: &mut usize,
    ) -> bool {
        let Some(&i) = todo.get(k) else {
            return true;
        };
        for n in 0..free.len() {
            *steps += 1;
            if *steps > SEARCH_STEPS {
                return false;
            }
            if fits(&free[n], &bundles[i]) {
                take(&mut free[n], &bundles[i]);
                chosen[i] = n;
                if go(k + 1, todo, bundles, free, chosen, steps) {
                    return true;
                }
                add(&mut free[n], &bundles[i], 1.0);
            }
        }
        false
    }
    if !go(0, &todo, bundles, &mut free, &mut chosen, &mut steps) {
        return None;
    }
    Some(
        (0..bundles.len())
            .map(|i| match fixed.get(i).copied().flatten() {
                Some(n) => n,
                None => nodes[chosen[i]].id,
            })
            .collect(),
    )
}

/// The placement by heuristics: see [`place_bundles`].
fn by_heuristic(
    strategy: Strategy,
    bundles: &[Resources],
    fixed: &[Option<NodeId>],
    nodes: &[Free],
) -> Result<Vec<NodeId>, String> {
    let mut free: Vec<Free> = nodes.to_vec();
    let mut chosen: Vec<Option<usize>> = vec![None; bundles.len()];
    // Bundles already placed hold their nodes (by index here, if listed).
    let mut held: HashMap<NodeId, usize> = HashMap::new();
    for (i, f) in fixed.iter().enumerate().take(bundles.len()) {
        if let Some(n) = f {
            *held.entry(*n).or_default() += 1;
            chosen[i] = free.iter().position(|x| x.id == *n);
            if chosen[i].is_none() {
                // On a node not offered (its room is counted by the caller).
                chosen[i] = Some(usize::MAX);
            }
        }
    }
    let mut todo: Vec<usize> = (0..bundles.len())
        .filter(|&i| fixed.get(i).is_none_or(|f| f.is_none()))
        .collect();
    // Largest first: by the sum of its amounts, relative to the most any
    // node has of each (its dominant share, roughly).
    let most: Resources = {
        let mut m = Resources::new();
        for f in &free {
            for (k, v) in &f.free {
                let e = m.entry(k.clone()).or_insert(0.0);
                *e = e.max(*v);
            }
        }
        m
    };
    let size = |b: &Resources| -> f64 {
        b.iter()
            .map(|(k, v)| v / most.get(k).copied().filter(|m| *m > EPSILON).unwrap_or(1.0))
            .fold(0.0, f64::max)
    };
    todo.sort_by(|&a, &b| size(&bundles[b]).total_cmp(&size(&bundles[a])));
    let left_over = |f: &Resources, b: &Resources| -> f64 {
        b.keys()
            .map(|k| f.get(k).copied().unwrap_or(0.0) - b[k])
            .sum::<f64>()
    };
    // The best fit for bundle `i` among the nodes `ok` allows.
    let best = |free: &[Free], i: usize, ok: &dyn Fn(usize) -> bool| -> Option<usize> {
        (0..free.len())
            .filter(|&n| ok(n) && fits(&free[n].free, &bundles[i]))
            .min_by(|&a, &b| {
                left_over(&free[a].free, &bundles[i])
                    .total_cmp(&left_over(&free[b].free, &bundles[i]))
            })
    };
    let no_room = |i: usize| format!("no live node has {:?} free for bundle {i}", bundles[i]);
    match strategy {
        Strategy::StrictPack | Strategy::Pack => {
            // Everything left on one node: the one the group is on, if any
            // (strict), else the best that takes it all.
            let mut all = Resources::new();
            for &i in &todo {
                add(&mut all, &bundles[i], 1.0);
            }
            let on: Vec<NodeId> = held.keys().copied().collect();
            let one = (0..free.len())
                .filter(|&n| on.is_empty() || on.contains(&free[n].id))
                .filter(|&n| fits(&free[n].free, &all))
                .min_by(|&a, &b| {
                    left_over(&free[a].free, &all).total_cmp(&left_over(&free[b].free, &all))
                });
            match one {
                Some(n) => {
                    for &i in &todo {
                        chosen[i] = Some(n);
                    }
                }
                None if strategy == Strategy::StrictPack => {
                    return Err(format!(
                        "STRICT_PACK needs one node with {all:?} free{}, and none has",
                        if on.is_empty() {
                            String::new()
                        } else {
                            " (the node its other bundles are on)".to_string()
                        }
                    ));
                }
                None => {
                    // Packed as tight as it goes: nodes in use first.
                    let mut used: Vec<bool> =
                        free.iter().map(|f| held.contains_key(&f.id)).collect();
                    for &i in &todo {
                        let n = best(&free, i, &|n| used[n])
                            .or_else(|| best(&free, i, &|_| true))
                            .ok_or_else(|| no_room(i))?;
                        take(&mut free[n].free, &bundles[i]);
                        used[n] = true;
                        chosen[i] = Some(n);
                    }
                }
            }
        }
        Strategy::StrictSpread | Strategy::Spread => {
            // As many bundles as can have a node of their own: a matching of
            // bundles to the nodes no bundle of the group is on.
            let open: Vec<usize> = (0..free.len())
                .filter(|&n| !held.contains_key(&free[n].id))
                .collect();
            let mut owner: Vec<Option<usize>> = vec![None; free.len()];
            fn augment(
                i: usize,
                bundles: &[Resources],
                free: &[Free],
                open: &[usize],
                owner: &mut [Option<usize>],
                seen: &mut [bool],
            ) -> bool {
                // A node nobody has first; else one whose bundle can move.
                if let Some(&n) = open
                    .iter()
                    .find(|&&n| owner[n].is_none() && fits(&free[n].free, &bundles[i]))
                {
                    owner[n] = Some(i);
                    return true;
                }
                for &n in open {
                    if seen[n] || !fits(&free[n].free, &bundles[i]) {
                        continue;
                    }
                    seen[n] = true;
                    let taken = owner[n];
                    if taken.is_none_or(|j| augment(j, bundles, free, open, owner, seen)) {
                        owner[n] = Some(i);
                        return true;
                    }
                }
                false
            }
            let mut alone = Vec::new();
            if strategy == Strategy::StrictSpread && todo.len() > open.len() {
                return Err(format!(
                    "STRICT_SPREAD needs a node of its own for each of {} bundles, and {} \
                     nodes are free of the group",
                    todo.len(),
                    open.len()
                ));
            }
            // Once a bundle finds no node of its own, the rest share (a strict
            // spread fails there): no search per bundle past that point,
            // which on many nodes would cost nodes² each.
            let mut full = false;
            for &i in &todo {
                let mut seen = vec![false; free.len()];
                if !full && augment(i, bundles, &free, &open, &mut owner, &mut seen) {
                    continue;
                }
                full = true;
                alone.push(i);
                if strategy == Strategy::StrictSpread {
                    break;
                }
            }
            if strategy == Strategy::StrictSpread && !alone.is_empty() {
                let i = alone[0];
                return Err(format!(
                    "STRICT_SPREAD needs a node of its own for each of {} bundles, and bundle \
                     {i} ({:?}) finds none free",
                    bundles.len(),
                    bundles[i]
                ));
            }
            for (n, b) in owner.iter().enumerate() {
                if let Some(i) = b {
                    take(&mut free[n].free, &bundles[*i]);
                    chosen[*i] = Some(n);
                }
            }
            // The rest (more bundles than nodes): each on the node with the
            // fewest of the group's bundles that takes it.
            let mut count: Vec<usize> = (0..free.len())
                .map(|n| {
                    held.get(&free[n].id).copied().unwrap_or(0) + usize::from(owner[n].is_some())
                })
                .collect();
            for i in alone {
                let n = (0..free.len())
                    .filter(|&n| fits(&free[n].free, &bundles[i]))
                    .min_by_key(|&n| count[n])
                    .ok_or_else(|| no_room(i))?;
                take(&mut free[n].free, &bundles[i]);
                count[n] += 1;
                chosen[i] = Some(n);
            }
        }
    }
    Ok((0..bundles.len())
        .map(|i| match fixed.get(i).copied().flatten() {
            Some(n) => n,
            None => free[chosen[i].expect("chosen")].id,
        })
        .collect())
}

/// What an update did, for the caller to finish outside the view's lock:
/// slots to complete (their waiters run), and whether the group was removed
/// just now (its actors here go).
#[derive(Default)]
#[must_use]
pub struct Applied {
    /// Readiness refs to complete, each with its result.
    pub complete: Vec<(Arc<Slot>, Result<Value, Error>)>,
    /// Work held back for a group to be created, to let go (`Ok`) or fail.
    pub release: Vec<(Deferred, Result<(), Error>)>,
    /// The group was removed by this update.
    pub removed: bool,
    /// Actors of this node in the groups removed, to kill.
    pub actors: Vec<ActorId>,
}

impl Applied {
    /// Completes the readiness refs (outside every lock: a completion runs
    /// its waiters); the actors to kill, and whether the group was removed.
    pub fn finish(self) -> (Vec<ActorId>, bool) {
        for (slot, result) in self.complete {
            slot.complete(result);
        }
        for (then, result) in self.release {
            then(result);
        }
        (self.actors, self.removed)
    }
}

#[derive(Default)]
struct Known {
    live: HashMap<GroupId, GroupInfo>,
    removed: HashSet<GroupId>,
    removed_order: VecDeque<GroupId>,
    /// What the live groups reserve, per node.
    reserved: HashMap<NodeId, Resources>,
    /// Readiness refs waiting for a group to be created (weak: a ref its
    /// user dropped goes).
    waiting: HashMap<GroupId, Vec<Weak<Slot>>>,
    /// Work held back until a group is created (Ray's tasks wait for a
    /// pending group rather than fail).
    deferred: HashMap<GroupId, Vec<Deferred>>,
    /// The runtime shut down: waits end.
    closed: bool,
    /// Actors of this node created in each live group (killed with it).
    actors: HashMap<GroupId, Vec<ActorId>>,
}

impl Known {
    fn reserve(&mut self, g: &GroupInfo, sign: f64) {
        for (b, n) in g.bundles.iter().zip(&g.nodes) {
            if let Some(n) = n {
                let r = self.reserved.entry(*n).or_default();
                add(r, b, sign);
                if r.is_empty() {
                    self.reserved.remove(n);
                }
            }
        }
    }
}

/// A node's view of the cluster's placement groups.
#[derive(Default)]
pub struct Groups {
    known: Mutex<Known>,
    changed: Condvar,
    /// Whether any group reserves anything anywhere: read on every task's
    /// placement without the lock (none reserves, nothing to subtract).
    /// Relaxed: a hint, written under `known`'s lock; whoever acts on it
    /// takes that lock, which orders the reservations themselves.
    any: AtomicBool,
}

/// What runs when a group that work waits for is created (`Ok`), removed
/// or the runtime stops (`Err`); outside the view's lock.
pub type Deferred = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// Whether work that needs `need` in `bundle` of `group` (any bundle that
/// fits it, when none) should wait for the group: it is not created, no
/// bundle asked for is placed yet, and one fits the work once it is (what
/// can never fit fails at once, as Ray's does).
pub fn waits_for(group: &GroupInfo, bundle: Option<u32>, need: &Resources) -> bool {
    if group.state == GroupState::Created || bundle_nodes(group, bundle, need).is_ok() {
        return false;
    }
    let fits_bundle = |i: usize| {
        group
            .bundles
            .get(i)
            .is_some_and(|b| lacking(b, need).is_none())
    };
    match bundle {
        Some(i) => fits_bundle(i as usize),
        None => (0..group.bundles.len()).any(fits_bundle),
    }
}

/// Why work cannot go into a group now.
fn removed_error(id: GroupId) -> Error {
    Error::PlacementGroupRemoved {
        group: id.to_string(),
    }
}

impl Groups {
    /// Takes in what the head says of a group (or what a handle carried):
    /// kept if it is newer than what this node knew.
    pub fn apply(&self, info: GroupInfo) -> Applied {
        let mut applied = Applied::default();
        let mut k = self.known.lock();
        if k.removed.contains(&info.id) {
            return applied;
        }
        if let Some(old) = k.live.get(&info.id) {
            if old.version >= info.version {
                return applied;
            }
        }
        let id = info.id;
        if let Some(old) = k.live.remove(&id) {
            k.reserve(&old, -1.0);
            self.any.store(!k.reserved.is_empty(), Ordering::Relaxed);
        }
        match info.state {
            GroupState::Removed => {
                applied.removed = true;
                k.removed.insert(id);
                k.removed_order.push_back(id);
                while k.removed_order.len() > REMOVED_KEPT {
                    if let Some(old) = k.removed_order.pop_front() {
                        k.removed.remove(&old);
                    }
                }
                for s in k.waiting.remove(&id).unwrap_or_default() {
                    if let Some(s) = s.upgrade() {
                        applied.complete.push((s, Err(removed_error(id))));
                    }
                }
                for then in k.deferred.remove(&id).unwrap_or_default() {
                    applied.release.push((then, Err(removed_error(id))));
                }
                applied.actors = k.actors.remove(&id).unwrap_or_default();
            }
            state => {
                k.reserve(&info, 1.0);
                self.any.store(!k.reserved.is_empty(), Ordering::Relaxed);
                if state == GroupState::Created {
                    for s in k.waiting.remove(&id).unwrap_or_default() {
                        if let Some(s) = s.upgrade() {
                            applied.complete.push((s, Ok(Value::new(()))));
                        }
                    }
                    for then in k.deferred.remove(&id).unwrap_or_default() {
                        applied.release.push((then, Ok(())));
                    }
                }
                k.live.insert(id, info);
            }
        }
        drop(k);
        self.changed.notify_all();
        applied
    }

    /// The group as this node knows it; `Err` if it was removed, `None` if
    /// never heard of.
    pub fn get(&self, id: GroupId) -> Result<Option<GroupInfo>, Error> {
        let k = self.known.lock();
        if k.removed.contains(&id) {
            return Err(removed_error(id));
        }
        Ok(k.live.get(&id).cloned())
    }

    /// Notes an actor of this node created in `group`, to kill with it; an
    /// error if the group was removed (the actor must not start). `alive`
    /// says whether an actor noted before still lives: the dead are pruned
    /// as the list grows, so a long-lived group's list stays as long as its
    /// live actors.
    pub fn add_actor(
        &self,
        group: GroupId,
        actor: ActorId,
        alive: impl Fn(ActorId) -> bool,
    ) -> Result<(), Error> {
        let mut k = self.known.lock();
        if k.removed.contains(&group) {
            return Err(removed_error(group));
        }
        let list = k.actors.entry(group).or_default();
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|a| alive(*a));
        }
        list.push(actor);
        Ok(())
    }

    /// Whether this node heard that the group was removed.
    pub fn is_removed(&self, id: GroupId) -> bool {
        self.known.lock().removed.contains(&id)
    }

    /// Completes `slot` when the group is created (or fails it if the
    /// group is removed).
    pub fn when_ready(&self, id: GroupId, slot: Arc<Slot>) {
        let mut k = self.known.lock();
        let now = if k.removed.contains(&id) {
            Some(Err(removed_error(id)))
        } else if k
            .live
            .get(&id)
            .is_some_and(|g| g.state == GroupState::Created)
        {
            Some(Ok(Value::new(())))
        } else {
            let list = k.waiting.entry(id).or_default();
            if list.len() >= 64 && list.len().is_power_of_two() {
                // Refs dropped while the group waited go.
                list.retain(|w| w.strong_count() > 0);
            }
            list.push(Arc::downgrade(&slot));
            None
        };
        drop(k);
        if let Some(result) = now {
            slot.complete(result);
        }
    }

    /// Whether work for `bundle` of group `id` needing `cpus` and
    /// `resources` waits for the group (see [`waits_for`]): false for a group
    /// created, removed or unknown here.
    pub fn waits(
        &self,
        id: GroupId,
        bundle: Option<u32>,
        cpus: f64,
        resources: &Resources,
    ) -> bool {
        let k = self.known.lock();
        !k.removed.contains(&id)
            && k.live
                .get(&id)
                .is_some_and(|g| waits_for(g, bundle, &need(cpus, resources)))
    }

    /// Holds work for group `id` (a task whose return object is `ret`,
    /// named `task`) until the group is created, then hands `ret` to `run`;
    /// if the group is removed first `ret` fails `Unschedulable` (as work
    /// that comes after the removal does), or `ShutDown` if the runtime
    /// stops. Settled at once if the group is created or removed already.
    pub fn hold(
        &self,
        id: GroupId,
        task: String,
        ret: Arc<Slot>,
        run: impl FnOnce(Arc<Slot>) + Send + 'static,
    ) {
        let then: Deferred = Box::new(move |ready| match ready {
            Ok(()) => run(ret),
            Err(Error::ShutDown) => ret.complete(Err(Error::ShutDown)),
            Err(e) => ret.complete(Err(Error::Unschedulable {
                task,
                reason: e.to_string(),
            })),
        });
        if let Err(then) = self.defer(id, then) {
            // Created or removed since the caller looked (or shut down).
            then(match self.get(id) {
                Err(removed) => Err(removed),
                Ok(_) if self.known.lock().closed => Err(Error::ShutDown),
                Ok(_) => Ok(()),
            });
        }
    }

    /// Holds `then` until the group is created (`Ok`) or removed, or the
    /// runtime stops (`Err`); it runs outside the lock, from the update's
    /// [`Applied::finish`]. Given back if the group is created already, or
    /// removed, or not known here, or the runtime stopped.
    fn defer(&self, id: GroupId, then: Deferred) -> Result<(), Deferred> {
        let mut k = self.known.lock();
        let waits = !k.closed
            && k.live
                .get(&id)
                .is_some_and(|g| g.state != GroupState::Created);
        if !waits {
            return Err(then);
        }
        k.deferred.entry(id).or_default().push(then);
        Ok(())
    }

    /// Waits until the group is created: `Ok(true)`, or `Ok(false)` when
    /// `timeout` passes first; `Err` if it is removed.
    pub fn wait(&self, id: GroupId, timeout: Duration) -> Result<bool, Error> {
        // A timeout past what an instant can hold waits for good.
        let deadline = Instant::now().checked_add(timeout);
        let mut k = self.known.lock();
        loop {
            if k.closed {
                return Err(Error::ShutDown);
            }
            if k.removed.contains(&id) {
                return Err(removed_error(id));
            }
            if k.live
                .get(&id)
                .is_some_and(|g| g.state == GroupState::Created)
            {
                return Ok(true);
            }
            match deadline {
                Some(d) => {
                    if self.changed.wait_until(&mut k, d).timed_out() {
                        return Ok(false);
                    }
                }
                None => self.changed.wait(&mut k),
            }
        }
    }

    /// What the live groups reserve on `node`.
    pub fn reserved(&self, node: NodeId) -> Resources {
        self.known
            .lock()
            .reserved
            .get(&node)
            .cloned()
            .unwrap_or_default()
    }

    /// Whether any group reserves anything anywhere (placement looks no
    /// further when none does).
    pub fn any_reserved(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// The live groups this node knows.
    pub fn list(&self) -> Vec<GroupInfo> {
        self.known.lock().live.values().cloned().collect()
    }

    /// Forgets every group and fails every readiness ref (shutdown); what
    /// to complete outside the lock.
    pub fn close(&self) -> Applied {
        let mut k = self.known.lock();
        k.closed = true;
        let waiting = std::mem::take(&mut k.waiting);
        let deferred = std::mem::take(&mut k.deferred);
        drop(k);
        self.changed.notify_all();
        Applied {
            complete: waiting
                .into_values()
                .flatten()
                .filter_map(|s| s.upgrade())
                .map(|s| (s, Err(Error::ShutDown)))
                .collect(),
            release: deferred
                .into_values()
                .flatten()
                .map(|then| (then, Err(Error::ShutDown)))
                .collect(),
            removed: false,
            actors: Vec::new(),
        }
    }
}

/// Where work scheduled into a group may run: the nodes of the bundle asked
/// for (or of every bundle that fits the work), or why it cannot.
pub fn bundle_nodes(
    group: &GroupInfo,
    bundle: Option<u32>,
    need: &Resources,
) -> Result<Vec<NodeId>, String> {
    let check = |i: usize| -> Result<NodeId, String> {
        let b = &group.bundles[i];
        if let Some(l) = lacking(b, need) {
            return Err(format!(
                "it needs more than bundle {i} of placement group {} reserves: {l}",
                group.id
            ));
        }
        group.nodes[i].ok_or_else(|| {
            format!(
                "bundle {i} of placement group {} is not placed yet (wait for the group to be ready)",
                group.id
            )
        })
    };
    match bundle {
        Some(i) => {
            let i = i as usize;
            if i >= group.bundles.len() {
                return Err(format!(
                    "placement group {} has {} bundles, and bundle {i} was asked for",
                    group.id,
                    group.bundles.len()
                ));
            }
            check(i).map(|n| vec![n])
        }
        None => {
            let mut nodes = Vec::new();
            let mut why = None;
            for i in 0..group.bundles.len() {
                match check(i) {
                    Ok(n) if !nodes.contains(&n) => nodes.push(n),
                    Ok(_) => {}
                    Err(e) => why = Some(e),
                }
            }
            if nodes.is_empty() {
                return Err(why.unwrap_or_else(|| format!("placement group {} is empty", group.id)));
            }
            Ok(nodes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(pairs: &[(&str, f64)]) -> Resources {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn nodes(n: usize, each: &[(&str, f64)]) -> Vec<Free> {
        (1..=n as u64)
            .map(|i| Free {
                id: NodeId(i),
                free: r(each),
            })
            .collect()
    }

    #[test]
    fn pack_takes_one_node_when_it_can_and_spills_when_it_cannot() {
        let b = vec![r(&[(CPU, 1.0)]); 2];
        let got = place_bundles(Strategy::Pack, &b, &[], &nodes(2, &[(CPU, 2.0)])).unwrap();
        assert_eq!(got, [NodeId(1), NodeId(1)]);
        let got = place_bundles(Strategy::Pack, &b, &[], &nodes(2, &[(CPU, 1.0)])).unwrap();
        assert_eq!(got, [NodeId(1), NodeId(2)]);
        let err = place_bundles(Strategy::StrictPack, &b, &[], &nodes(2, &[(CPU, 1.0)]));
        assert!(err.unwrap_err().contains("STRICT_PACK"));
    }

    #[test]
    fn spread_takes_a_node_each_and_strict_spread_refuses_to_share() {
        let b = vec![r(&[(CPU, 1.0)]); 3];
        let two = nodes(2, &[(CPU, 4.0)]);
        let got = place_bundles(Strategy::Spread, &b, &[], &two).unwrap();
        assert_eq!(got, [NodeId(1), NodeId(2), NodeId(1)]);
        let err = place_bundles(Strategy::StrictSpread, &b, &[], &two).unwrap_err();
        assert!(err.contains("STRICT_SPREAD"), "{err}");
        let got = place_bundles(Strategy::StrictSpread, &b, &[], &nodes(3, &[(CPU, 1.0)])).unwrap();
        assert_eq!(got, [NodeId(1), NodeId(2), NodeId(3)]);
    }

    #[test]
    fn a_bundle_placed_again_keeps_the_others_and_the_strategy() {
        let b = vec![r(&[("gpu", 1.0)]); 2];
        let three = nodes(3, &[("gpu", 1.0)]);
        // Bundle 1's node died: it goes to a node bundle 0 is not on.
        let fixed = [Some(NodeId(2)), None];
        let got = place_bundles(Strategy::StrictSpread, &b, &fixed, &three[1..]).unwrap();
        assert_eq!(got, [NodeId(2), NodeId(3)]);
        // Strict pack stays on the group's node (whose free amounts leave
        // out what bundle 0 holds there), or does not fit.
        let fixed = [Some(NodeId(1)), None];
        let mut held = three.clone();
        held[0].free = r(&[("gpu", 0.0)]);
        let err = place_bundles(Strategy::StrictPack, &b, &fixed, &held).unwrap_err();
        assert!(err.contains("the node its other bundles are on"), "{err}");
    }

    #[test]
    fn a_small_bundle_leaves_the_large_one_its_room() {
        // Nodes of 2 and 1 CPUs; bundles of 1 and 2 in that order fit under
        // every strategy that may share nodes or needs one each.
        let nodes = vec![
            Free {
                id: NodeId(1),
                free: r(&[(CPU, 2.0)]),
            },
            Free {
                id: NodeId(2),
                free: r(&[(CPU, 1.0)]),
            },
        ];
        let b = vec![r(&[(CPU, 1.0)]), r(&[(CPU, 2.0)])];
        for strategy in [Strategy::Pack, Strategy::Spread, Strategy::StrictSpread] {
            assert_eq!(
                place_bundles(strategy, &b, &[], &nodes),
                Ok(vec![NodeId(2), NodeId(1)]),
                "{strategy:?}"
            );
        }
        // A strict spread of [a, a + b] over nodes [a + b, a].
        let b = vec![r(&[("x", 1.0)]), r(&[("x", 1.0), ("y", 1.0)])];
        let nodes = vec![
            Free {
                id: NodeId(1),
                free: r(&[("x", 1.0), ("y", 1.0)]),
            },
            Free {
                id: NodeId(2),
                free: r(&[("x", 1.0)]),
            },
        ];
        assert_eq!(
            place_bundles(Strategy::StrictSpread, &b, &[], &nodes),
            Ok(vec![NodeId(2), NodeId(1)])
        );
    }

    #[test]
    fn a_spread_of_many_bundles_over_few_nodes_is_even() {
        let b = vec![r(&[(CPU, 0.001)]); MAX_BUNDLES];
        let got = place_bundles(Strategy::Spread, &b, &[], &nodes(4, &[(CPU, 100.0)])).unwrap();
        for n in 1..=4 {
            let on = got.iter().filter(|x| **x == NodeId(n)).count();
            assert_eq!(on, MAX_BUNDLES / 4, "evenly spread");
        }
    }

    /// A small xorshift generator: the same cases every run.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
        fn amounts(&mut self, max: u64, keys: &[&str]) -> Resources {
            keys.iter()
                .map(|k| (k.to_string(), self.below(max + 1) as f64))
                .filter(|(_, v)| *v > 0.0)
                .collect()
        }
    }

    /// Whether `placed` keeps fixed bundles where they are, every node within
    /// what it has free, and the strict strategies' rules.
    fn keeps_the_rules(
        strategy: Strategy,
        bundles: &[Resources],
        fixed: &[Option<NodeId>],
        nodes: &[Free],
        placed: &[NodeId],
    ) -> bool {
        let mut free: Vec<Resources> = nodes.iter().map(|n| n.free.clone()).collect();
        for (i, n) in placed.iter().enumerate() {
            match fixed[i] {
                Some(f) if f != *n => return false,
                Some(_) => continue,
                None => {}
            }
            let Some(k) = nodes.iter().position(|x| x.id == *n) else {
                return false;
            };
            for (r, v) in &bundles[i] {
                *free[k].entry(r.clone()).or_insert(0.0) -= v;
            }
        }
        let distinct = placed.iter().collect::<HashSet<_>>().len();
        free.iter().all(|f| f.values().all(|v| *v >= -EPSILON))
            && match strategy {
                Strategy::StrictPack => distinct == 1,
                Strategy::StrictSpread => distinct == placed.len(),
                _ => true,
            }
    }

    /// Whether any placement keeps the rules, trying every one.
    fn placeable(
        strategy: Strategy,
        bundles: &[Resources],
        fixed: &[Option<NodeId>],
        nodes: &[Free],
    ) -> bool {
        let (b, n) = (bundles.len() as u32, nodes.len() as u64);
        (0..n.pow(b)).any(|mut code| {
            let placed: Vec<NodeId> = (0..bundles.len())
                .map(|i| {
                    let k = (code % n) as usize;
                    code /= n;
                    fixed[i].unwrap_or(nodes[k].id)
                })
                .collect();
            keeps_the_rules(strategy, bundles, fixed, nodes, &placed)
        })
    }

    #[test]
    fn every_group_that_fits_is_placed_and_every_placement_fits() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let strategies = [
            Strategy::Pack,
            Strategy::Spread,
            Strategy::StrictPack,
            Strategy::StrictSpread,
        ];
        for case in 0..6_000 {
            let keys: &[&str] = if rng.below(2) == 0 {
                &[CPU]
            } else {
                &[CPU, "gpu"]
            };
            let nodes: Vec<Free> = (0..1 + rng.below(4))
                .map(|i| Free {
                    id: NodeId(i + 1),
                    free: rng.amounts(6, keys),
                })
                .collect();
            let bundles: Vec<Resources> = (0..1 + rng.below(5))
                .map(|_| {
                    let b = rng.amounts(4, keys);
                    if b.is_empty() {
                        r(&[(CPU, 1.0)])
                    } else {
                        b
                    }
                })
                .collect();
            let strategy = strategies[rng.below(4) as usize];
            let mut fixed = vec![None; bundles.len()];
            if rng.below(3) == 0 {
                let i = rng.below(bundles.len() as u64) as usize;
                fixed[i] = Some(nodes[rng.below(nodes.len() as u64) as usize].id);
            }
            let what = format!("case {case}: {strategy:?} {bundles:?} {fixed:?} on {nodes:?}");
            match place_bundles(strategy, &bundles, &fixed, &nodes) {
                Ok(placed) => assert!(
                    keeps_the_rules(strategy, &bundles, &fixed, &nodes, &placed),
                    "{what}: {placed:?}"
                ),
                Err(why) => assert!(
                    !placeable(strategy, &bundles, &fixed, &nodes),
                    "{what}: refused ({why}) though it fits"
                ),
            }
        }
    }

    #[test]
    fn fractions_add_up_and_missing_resources_do_not_fit() {
        let free = r(&[("custom", 0.3)]);
        assert!(fits(&free, &r(&[("custom", 0.1 + 0.2)])));
        assert!(!fits(&free, &r(&[("other", 0.1)])));
        assert!(fits(&free, &r(&[("other", 0.0)])));
        assert_eq!(
            lacking(&free, &r(&[("custom", 1.0)])).as_deref(),
            Some("1 custom (it has 0.3)")
        );
        assert!(check_bundles(&[]).is_err());
        assert!(check_bundles(&[r(&[("x", f64::NAN)])]).is_err());
        assert!(check_bundles(&[r(&[("x", 0.0)])]).is_err());
    }

    #[test]
    fn the_view_keeps_the_newest_news_and_reserves_what_it_places() {
        let view = Groups::default();
        let id = GroupId {
            node: NodeId(9),
            seq: 1,
        };
        let mut g = GroupInfo {
            id,
            name: None,
            strategy: Strategy::Pack,
            bundles: vec![r(&[(CPU, 1.0)])],
            nodes: vec![Some(NodeId(1))],
            state: GroupState::Pending,
            detached: false,
            version: 2,
        };
        assert!(!view.apply(g.clone()).finish().1);
        assert_eq!(view.reserved(NodeId(1)), r(&[(CPU, 1.0)]));
        assert_eq!(view.wait(id, Duration::ZERO), Ok(false));
        let old = GroupInfo {
            version: 1,
            state: GroupState::Created,
            ..g.clone()
        };
        let _ = view.apply(old).finish();
        assert_eq!(
            view.wait(id, Duration::ZERO),
            Ok(false),
            "older news is ignored"
        );
        g.version = 3;
        g.state = GroupState::Created;
        let _ = view.apply(g.clone()).finish();
        assert_eq!(view.wait(id, Duration::ZERO), Ok(true));
        g.version = 4;
        g.state = GroupState::Removed;
        let actor = ActorId {
            node: NodeId(9),
            seq: 7,
        };
        view.add_actor(id, actor, |_| true).unwrap();
        assert_eq!(
            view.apply(g.clone()).finish(),
            (vec![actor], true),
            "removed just now"
        );
        assert!(view.add_actor(id, actor, |_| true).is_err());
        assert!(view.reserved(NodeId(1)).is_empty());
        assert!(view.wait(id, Duration::ZERO).is_err());
        g.version = 5;
        g.state = GroupState::Created;
        assert!(!view.apply(g).finish().1, "a removed group stays removed");
        assert!(view.get(id).is_err());
    }

    #[test]
    fn work_waits_only_for_a_bundle_that_will_take_it() {
        let mut g = GroupInfo {
            id: GroupId {
                node: NodeId(9),
                seq: 2,
            },
            name: None,
            strategy: Strategy::Pack,
            bundles: vec![r(&[(CPU, 1.0)]), r(&[(CPU, 2.0)])],
            nodes: vec![None, Some(NodeId(1))],
            state: GroupState::Rescheduling,
            detached: false,
            version: 1,
        };
        let one = r(&[(CPU, 1.0)]);
        let two = r(&[(CPU, 2.0)]);
        assert!(waits_for(&g, Some(0), &one), "its bundle is placed again");
        assert!(!waits_for(&g, Some(1), &one), "its bundle has a node");
        assert!(
            !waits_for(&g, None, &one),
            "a bundle that takes it has a node"
        );
        assert!(!waits_for(&g, Some(0), &two), "its bundle never takes it");
        assert!(!waits_for(&g, Some(5), &one), "no such bundle");
        g.nodes = vec![None, None];
        g.state = GroupState::Pending;
        assert!(waits_for(&g, None, &two), "bundle 1 takes it once placed");
        assert!(
            !waits_for(&g, None, &r(&[(CPU, 3.0)])),
            "no bundle ever takes it"
        );
        g.nodes = vec![Some(NodeId(1)), Some(NodeId(2))];
        g.state = GroupState::Created;
        assert!(!waits_for(&g, Some(0), &one), "created");
    }
}
