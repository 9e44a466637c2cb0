//! Answers (and releases) held back until this node's borrows have reached
//! their owners.
//!
//! A node that decodes a ref owned by a third node tells that owner
//! (`Borrow`) on its own link to it, while the answer to the work that
//! decoded it goes to the requester on another link. The requester may then
//! let go of its own borrow (`Release`, on a third link), and the owner,
//! hearing the release before the borrow, frees a value still held. The
//! same holds for this node's own release of a value whose refs it just
//! borrowed: its owner frees the value and releases those refs. Between
//! two nodes one ordered link settles it; across three, an answer or a
//! release waits here until every owner this node sent borrows to has
//! confirmed (`Sync` → `Synced`) that it handled them. What goes to one node
//! keeps its order: one held back holds back those after it to the same node
//! (and only those). An owner that does not confirm within [`SYNC_TIMEOUT`]
//! of having the `Sync` (silent, hostile) delays it no longer: it goes, and
//! the order is not guaranteed for that one.

use super::wire::Msg;
use crate::ids::NodeId;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// The longest an answer waits for owners to confirm borrows.
pub(super) const SYNC_TIMEOUT: Duration = Duration::from_secs(2);

/// Hands a message to a node's control lane; false if the node is gone.
pub(super) type Deliver<'a> = &'a mut dyn FnMut(NodeId, Msg) -> bool;

#[derive(Default)]
pub(super) struct Barrier {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Owners sent borrows since they last confirmed them.
    unsynced: HashSet<NodeId>,
    next_id: u64,
    /// The latest `Sync` sent to each owner and not confirmed yet: a later
    /// answer waits for it too (the borrows it covers went before it).
    inflight: HashMap<NodeId, u64>,
    /// Answers held back, in order.
    parked: VecDeque<Parked>,
}

struct Parked {
    /// The `Sync`s (owner, id) not confirmed yet.
    awaiting: Vec<(NodeId, u64)>,
    since: Instant,
    to: NodeId,
    msg: Msg,
}

impl Barrier {
    /// Borrows went out to `owner` (called once they are handed to its link).
    pub(super) fn borrowed(&self, owner: NodeId) {
        self.state.lock().unsynced.insert(owner);
    }

    /// Sends `msg` (an answer, a free, a release) to `to` now, or once the
    /// borrows sent to other owners before it are confirmed. Delivers under
    /// the lock, so what goes to one node keeps its order. `Some` if it waits
    /// for a confirmation: call [`expire`](Self::expire) with the instant
    /// returned after [`SYNC_TIMEOUT`].
    pub(super) fn send(&self, to: NodeId, msg: Msg, deliver: Deliver) -> Option<Instant> {
        let mut s = self.state.lock();
        let owners: Vec<NodeId> = s.unsynced.iter().copied().filter(|n| *n != to).collect();
        for owner in owners {
            s.unsynced.remove(&owner);
            let id = s.next_id;
            s.next_id += 1;
            // An owner that is gone confirms nothing; its objects are lost.
            if deliver(owner, Msg::Sync { id }) {
                s.inflight.insert(owner, id);
            }
        }
        let awaiting: Vec<(NodeId, u64)> = s
            .inflight
            .iter()
            .filter(|(n, _)| **n != to)
            .map(|(n, i)| (*n, *i))
            .collect();
        if awaiting.is_empty() && !s.parked.iter().any(|p| p.to == to) {
            deliver(to, msg);
            return None;
        }
        let since = Instant::now();
        let waits = !awaiting.is_empty();
        s.parked.push_back(Parked {
            awaiting,
            since,
            to,
            msg,
        });
        s.release(deliver);
        waits.then_some(since)
    }

    /// Stops waiting for the confirmations of answers parked at `since` or
    /// before, except from owners whose link is still being opened
    /// (`connecting`: their `Sync` has not even gone; the open either
    /// succeeds or loses the peer, which releases the wait): the others go
    /// (with those behind them that wait for nothing). True if some wait was
    /// kept: expire again later.
    pub(super) fn expire(
        &self,
        since: Instant,
        connecting: &dyn Fn(NodeId) -> bool,
        deliver: Deliver,
    ) -> bool {
        let mut s = self.state.lock();
        let mut expired = Vec::new();
        let mut kept = false;
        for p in s.parked.iter_mut().filter(|p| p.since <= since) {
            let (wait, gone): (Vec<_>, Vec<_>) =
                p.awaiting.iter().partition(|(n, _)| connecting(*n));
            kept |= !wait.is_empty();
            if !gone.is_empty() {
                tracing::warn!(
                    "rayx: {:?} did not confirm borrows within {SYNC_TIMEOUT:?}; an answer to {} goes without",
                    gone.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
                    p.to
                );
            }
            p.awaiting = wait;
            expired.extend(gone);
        }
        for (n, i) in expired {
            if s.inflight.get(&n) == Some(&i) {
                s.inflight.remove(&n);
            }
        }
        s.release(deliver);
        kept
    }

    /// `from` confirmed the `Sync` `id`.
    pub(super) fn synced(&self, from: NodeId, id: u64, deliver: Deliver) {
        let mut s = self.state.lock();
        // One link, in order: an earlier Sync to `from` is reached too.
        if s.inflight.get(&from).is_some_and(|&i| i <= id) {
            s.inflight.remove(&from);
        }
        for p in s.parked.iter_mut() {
            p.awaiting.retain(|&(n, i)| !(n == from && i <= id));
        }
        s.release(deliver);
    }

    /// `node` died: nothing waits for it any more.
    pub(super) fn lost(&self, node: NodeId, deliver: Deliver) {
        let mut s = self.state.lock();
        s.unsynced.remove(&node);
        s.inflight.remove(&node);
        for p in s.parked.iter_mut() {
            p.awaiting.retain(|&(n, _)| n != node);
        }
        s.release(deliver);
    }

    /// Answers held back now (for tests and status).
    #[cfg(test)]
    fn parked(&self) -> usize {
        self.state.lock().parked.len()
    }
}

impl State {
    /// Sends the answers that wait for nothing, each behind the earlier
    /// ones to its node.
    fn release(&mut self, deliver: Deliver) {
        let mut held: Vec<NodeId> = Vec::new();
        let mut i = 0;
        while i < self.parked.len() {
            let p = &self.parked[i];
            if p.awaiting.is_empty() && !held.contains(&p.to) {
                let p = self.parked.remove(i).expect("in range");
                deliver(p.to, p.msg);
            } else {
                held.push(p.to);
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ObjectId;

    fn free(n: u64) -> Msg {
        Msg::Free {
            object: ObjectId {
                node: NodeId(9),
                seq: n,
            },
        }
    }

    /// Sends by recording, except to `gone`.
    fn recorder(
        sent: &mut Vec<(NodeId, Msg)>,
        gone: Option<NodeId>,
    ) -> impl FnMut(NodeId, Msg) -> bool + '_ {
        move |n, m| {
            let alive = Some(n) != gone;
            if alive {
                sent.push((n, m));
            }
            alive
        }
    }

    fn sent_kinds(sent: &[(NodeId, Msg)]) -> Vec<(u64, &'static str, u64)> {
        sent.iter()
            .map(|(n, m)| match m {
                Msg::Sync { id } => (n.0, "Sync", *id),
                Msg::Free { object } => (n.0, "Free", object.seq),
                _ => (n.0, "other", 0),
            })
            .collect()
    }

    #[test]
    fn an_answer_waits_for_borrows_to_third_nodes_only_and_answers_keep_order() {
        let b = Barrier::default();
        let mut sent = Vec::new();
        let mut send = recorder(&mut sent, None);
        // Borrows only to the requester itself: one ordered link, no wait.
        b.borrowed(NodeId(2));
        b.send(NodeId(2), free(1), &mut send);
        // A borrow to a third node holds the next answer back...
        b.borrowed(NodeId(3));
        b.send(NodeId(2), free(2), &mut send);
        // ...and the next one to the same node, though it waits for nothing
        // itself; one to another node goes once its own wait (the borrows
        // to node 2, a third node to node 4) is over.
        b.send(NodeId(2), free(5), &mut send);
        b.send(NodeId(4), free(3), &mut send);
        assert_eq!(b.parked(), 3);
        b.synced(NodeId(2), 1, &mut send);
        assert_eq!(b.parked(), 3, "node 4's answer waits for node 3 too");
        b.synced(NodeId(3), 0, &mut send);
        assert_eq!(b.parked(), 0);
        // Everything is confirmed: the next answer goes at once.
        b.send(NodeId(3), free(4), &mut send);
        drop(send);
        assert_eq!(
            sent_kinds(&sent),
            vec![
                (2, "Free", 1),
                (3, "Sync", 0),
                (2, "Sync", 1),
                (2, "Free", 2),
                (2, "Free", 5),
                (4, "Free", 3),
                (3, "Free", 4)
            ]
        );
    }

    #[test]
    fn a_lost_owner_releases_what_waits_for_it() {
        let b = Barrier::default();
        let mut sent = Vec::new();
        let mut send = recorder(&mut sent, None);
        b.borrowed(NodeId(3));
        b.borrowed(NodeId(5));
        b.send(NodeId(2), free(1), &mut send);
        // Whichever id node 5's Sync got (0 or 1), this confirms it: a
        // confirmation covers every earlier Sync to its node.
        b.synced(NodeId(5), 1, &mut send);
        assert_eq!(b.parked(), 1, "still waiting for node 3");
        b.lost(NodeId(3), &mut send);
        assert_eq!(b.parked(), 0);
        drop(send);
        assert!(matches!(sent.last(), Some((NodeId(2), Msg::Free { .. }))));
    }

    #[test]
    fn an_owner_that_never_confirms_delays_an_answer_until_it_expires() {
        let b = Barrier::default();
        let mut sent = Vec::new();
        let mut send = recorder(&mut sent, None);
        b.borrowed(NodeId(3));
        let first = b.send(NodeId(2), free(1), &mut send).expect("waits");
        b.borrowed(NodeId(5));
        let second = b.send(NodeId(4), free(2), &mut send).expect("waits");
        assert!(first <= second);
        let connecting = |n: NodeId| n == NodeId(5);
        assert!(!b.expire(first, &connecting, &mut send));
        assert_eq!(b.parked(), 1, "only what was parked by then");
        assert!(
            b.expire(second, &connecting, &mut send),
            "node 5's link is still opening: its Sync has not gone"
        );
        assert_eq!(b.parked(), 1);
        assert!(!b.expire(second, &|_| false, &mut send));
        assert_eq!(b.parked(), 0);
        drop(send);
        assert_eq!(
            sent_kinds(&sent),
            vec![
                (3, "Sync", 0),
                (5, "Sync", 1),
                (2, "Free", 1),
                (4, "Free", 2)
            ]
        );
    }

    #[test]
    fn a_sync_that_cannot_be_sent_waits_for_nothing() {
        let b = Barrier::default();
        let mut sent = Vec::new();
        let mut send = recorder(&mut sent, Some(NodeId(3)));
        b.borrowed(NodeId(3));
        b.send(NodeId(2), free(1), &mut send);
        assert_eq!(b.parked(), 0);
        drop(send);
        assert_eq!(sent_kinds(&sent), vec![(2, "Free", 1)]);
    }
}
