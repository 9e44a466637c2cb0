//! Where a task or actor runs: Ray's policies over the nodes' CPUs and loads.
//!
//! - **Default** (Ray's hybrid policy): the submitting node while its load is
//!   under `threshold` (0.5) of its CPUs; past it, the node with the lowest
//!   load per CPU among those that fit (the submitting node on a tie).
//! - **Spread**: round-robin over the nodes that fit.
//! - **Node affinity**: that node; if it cannot (gone, or too few CPUs), the
//!   default policy when soft, else unschedulable.
//! - **Placement group**: a node of the bundle asked for (or of any bundle
//!   that fits), out of what the bundle reserves: the node's own CPUs are
//!   not looked at again.
//!
//! Work outside a group sees each node's CPUs and custom resources less
//! what groups reserve there.

use crate::error::Error;
use crate::groups::{bundle_nodes, fits, lacking, GroupInfo, Resources};
use crate::ids::{GroupId, NodeId};
use crate::messages::Scheduling;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Ray's spillback threshold: past half its CPUs busy, a node spills work.
pub const SPILL_THRESHOLD: f64 = 0.5;

/// A node that might run the work.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The node.
    pub id: NodeId,
    /// Its CPUs.
    pub cpus: f64,
    /// Tasks queued or running there, as far as the chooser knows.
    pub load: f64,
}

impl Candidate {
    fn utilization(&self) -> f64 {
        if self.cpus <= 0.0 {
            f64::INFINITY
        } else {
            self.load / self.cpus
        }
    }
}

/// Chooses a node among `candidates` (the live nodes, the submitting one
/// `local` among them) for work needing `need` CPUs; `turn` is the spread
/// counter. The error says why none fits.
pub fn place(
    candidates: &[Candidate],
    local: NodeId,
    scheduling: Scheduling,
    need: f64,
    turn: &AtomicUsize,
) -> Result<NodeId, String> {
    let fits: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.cpus >= need && (c.cpus > 0.0 || need == 0.0))
        .collect();
    if fits.is_empty() {
        let most = candidates.iter().map(|c| c.cpus).fold(0.0, f64::max);
        return Err(format!(
            "it needs {need} CPUs and no live node has that many not reserved by a placement \
             group (the most is {most})"
        ));
    }
    match scheduling {
        Scheduling::NodeAffinity { node, soft } => {
            if fits.iter().any(|c| c.id == node) {
                return Ok(node);
            }
            if !soft {
                return Err(format!(
                    "its node affinity is {node} (hard), which is not alive, is draining (leaving the cluster), or lacks {need} CPUs"
                ));
            }
            Ok(hybrid(&fits, local))
        }
        Scheduling::Spread => {
            let mut ids: Vec<NodeId> = fits.iter().map(|c| c.id).collect();
            ids.sort();
            Ok(ids[turn.fetch_add(1, Ordering::Relaxed) % ids.len()])
        }
        Scheduling::Default => Ok(hybrid(&fits, local)),
        Scheduling::PlacementGroup { group, .. } => Err(format!(
            "its placement group {group} was not looked up (a bug: place_work does)"
        )),
    }
}

/// Chooses a node for work needing `cpus` and `resources`, by `scheduling`:
/// a group's bundles through `group` (the group as this chooser knows it),
/// other work among the candidates with `resources` free (`free`: what a
/// node has that no group reserves, `None` for a node it does not know).
#[allow(clippy::too_many_arguments)]
pub fn place_work(
    candidates: &[Candidate],
    local: NodeId,
    scheduling: Scheduling,
    cpus: f64,
    resources: &Resources,
    turn: &AtomicUsize,
    group: impl Fn(GroupId) -> Result<Option<GroupInfo>, Error>,
    free: impl Fn(NodeId) -> Option<Resources>,
) -> Result<NodeId, String> {
    if let Scheduling::PlacementGroup { group: id, bundle } = scheduling {
        let info = match group(id) {
            Ok(Some(g)) => g,
            Ok(None) => return Err(format!("placement group {id} is not known to this node")),
            Err(e) => return Err(e.to_string()),
        };
        let nodes = bundle_nodes(&info, bundle, &crate::groups::need(cpus, resources))?;
        let there: Vec<Candidate> = candidates
            .iter()
            .filter(|c| nodes.contains(&c.id))
            .map(|c| Candidate { cpus: 1.0, ..*c })
            .collect();
        if there.is_empty() {
            return Err(format!(
                "the node of its bundle of placement group {id} is not alive or drains (the \
                 bundle is placed again elsewhere as its node is declared dead or drains)"
            ));
        }
        return place(&there, local, Scheduling::Default, 0.0, turn);
    }
    if resources.values().all(|v| *v <= 0.0) {
        return place(candidates, local, scheduling, cpus, turn);
    }
    let mut why = None;
    let have: Vec<Candidate> = candidates
        .iter()
        .filter(|c| match free(c.id) {
            Some(f) if fits(&f, resources) => true,
            Some(f) => {
                why = lacking(&f, resources);
                false
            }
            None => false,
        })
        .copied()
        .collect();
    if have.is_empty() {
        return Err(format!(
            "it needs {resources:?} and no live node has that free{}",
            why.map(|w| format!(" (one lacks {w})")).unwrap_or_default()
        ));
    }
    place(&have, local, scheduling, cpus, turn)
}

fn hybrid(fits: &[&Candidate], local: NodeId) -> NodeId {
    let here = fits.iter().find(|c| c.id == local);
    if let Some(here) = here {
        if here.utilization() < SPILL_THRESHOLD {
            return local;
        }
    }
    let mut best = here.copied().or_else(|| fits.first().copied()).copied();
    for c in fits {
        if best.is_none_or(|b| c.utilization() < b.utilization()) {
            best = Some(**c);
        }
    }
    best.map_or(local, |b| b.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, cpus: f64, load: f64) -> Candidate {
        Candidate {
            id: NodeId(id),
            cpus,
            load,
        }
    }

    #[test]
    fn local_first_until_half_busy_then_least_loaded() {
        let turn = AtomicUsize::new(0);
        let nodes = [c(1, 4.0, 1.0), c(2, 4.0, 0.0), c(3, 4.0, 3.0)];
        let place = |n: &[Candidate]| place(n, NodeId(1), Scheduling::Default, 1.0, &turn);
        assert_eq!(place(&nodes), Ok(NodeId(1)), "1/4 busy: stays local");
        let busy = [c(1, 4.0, 2.0), c(2, 4.0, 1.0), c(3, 4.0, 0.5)];
        assert_eq!(place(&busy), Ok(NodeId(3)), "half busy: least loaded");
        let all = [c(1, 4.0, 8.0), c(2, 4.0, 8.0)];
        assert_eq!(place(&all), Ok(NodeId(1)), "a tie keeps it local");
    }

    #[test]
    fn a_node_with_no_cpus_runs_nothing_that_needs_one() {
        let turn = AtomicUsize::new(0);
        let nodes = [c(1, 0.0, 0.0), c(2, 2.0, 5.0)];
        assert_eq!(
            place(&nodes, NodeId(1), Scheduling::Default, 1.0, &turn),
            Ok(NodeId(2))
        );
        let err = place(&nodes, NodeId(1), Scheduling::Default, 4.0, &turn).unwrap_err();
        assert!(err.contains("needs 4 CPUs"), "{err}");
    }

    #[test]
    fn spread_takes_turns_and_affinity_is_hard_unless_soft() {
        let turn = AtomicUsize::new(0);
        let nodes = [c(2, 1.0, 0.0), c(1, 1.0, 0.0), c(3, 1.0, 0.0)];
        let got: Vec<u64> = (0..6)
            .map(|_| {
                place(&nodes, NodeId(1), Scheduling::Spread, 1.0, &turn)
                    .unwrap()
                    .0
            })
            .collect();
        assert_eq!(got, [1, 2, 3, 1, 2, 3]);
        let to = |node, soft| Scheduling::NodeAffinity {
            node: NodeId(node),
            soft,
        };
        assert_eq!(
            place(&nodes, NodeId(1), to(3, false), 1.0, &turn),
            Ok(NodeId(3))
        );
        assert!(place(&nodes, NodeId(1), to(9, false), 1.0, &turn).is_err());
        assert_eq!(
            place(&nodes, NodeId(1), to(9, true), 1.0, &turn),
            Ok(NodeId(1))
        );
    }
}
