//! A session: what this node sends a peer on its control lane, kept across
//! that lane's connections, so a connection that breaks while both nodes
//! live (a reset, a middlebox's timeout) loses nothing.
//!
//! Every message to the peer goes into the session's one queue, whichever
//! link carries it, and takes a sequence number when its link's writer packs
//! it into a frame. The frame stays in the session until the peer
//! acknowledges it: each frame carries the sequence number of its first
//! message and the last one this node received (an ack), and a node that
//! received and has nothing to send acks alone after [`ACK_DELAY`]. A new
//! link writes the frames not acknowledged first, then goes on with the
//! queue; the receiver skips what it had (a sequence number at or under the
//! last it took) and refuses a gap. Only the peer's death (declared by the
//! head) ends a session; the old link's writer hands the queue back before
//! a new one takes it, so one writer at a time sends, in order.

use super::wire::Msg;
use crate::ids::NodeId;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// How long a node that received messages waits for something of its own
/// to carry its ack before it sends the ack alone.
pub const ACK_DELAY: Duration = Duration::from_millis(20);

/// How long frames may wait for an ack (since the later of the oldest one's
/// writing and the last ack) before their link is taken for broken: a break
/// only this side did not see leaves a socket open that nothing reads. (A
/// session with the head waits half the health limit at most: a node must
/// be heard before the head would declare it dead.)
pub const STALE: Duration = Duration::from_secs(10);

/// Bytes of a control-lane frame's header: its first message's sequence
/// number and the sender's ack, big-endian.
pub const HEADER: usize = 16;

/// What a link's writer takes from its queue.
pub(crate) enum Out {
    Msg(Msg),
    /// Closes the link that writes it, after what came before: a link of
    /// its own, or a session's when its node stops in order (otherwise a
    /// session's link stops by token, and its queue stays).
    Close,
    /// An ack alone (a session's).
    Ack,
}

/// A frame written and not acknowledged yet.
struct Sent {
    first: u64,
    count: u64,
    body: Bytes,
    /// When it was written (again).
    at: Instant,
}

#[derive(Default)]
struct State {
    /// The sequence number the next message sent takes (from 1).
    next: u64,
    /// Frames written, not acknowledged, in order.
    unacked: VecDeque<Sent>,
    /// The last sequence number received from the peer and handed in.
    received: u64,
    /// The last ack written to the peer.
    acked: u64,
    /// An ack alone is scheduled.
    ack_pending: bool,
    /// The peer sent again what it had sent: it missed an ack.
    ack_forced: bool,
    /// When an ack last let go of a frame.
    last_ack: Option<Instant>,
    /// The peer died: nothing more is kept.
    ended: bool,
}

/// One peer's control-lane session (see the module docs).
pub struct Session {
    /// The peer: a link to another node never carries this session.
    pub peer: NodeId,
    tx: mpsc::UnboundedSender<Out>,
    /// The queue's receiving end, held by the writer sending now.
    rx: Mutex<Option<mpsc::UnboundedReceiver<Out>>>,
    /// The queue was handed back.
    rx_back: Notify,
    state: Mutex<State>,
    /// Held while a frame's messages are taken and handed in.
    delivering: Mutex<()>,
    /// How long frames may wait for an ack (see [`STALE`]).
    pub(crate) stale: Duration,
}

impl Session {
    /// A session with `peer`, nothing sent or received.
    pub fn new(peer: NodeId) -> Arc<Session> {
        Session::with_stale(peer, STALE)
    }

    /// A session whose frames may wait `stale` for an ack.
    pub fn with_stale(peer: NodeId, stale: Duration) -> Arc<Session> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Session {
            peer,
            tx,
            rx: Mutex::new(Some(rx)),
            rx_back: Notify::new(),
            state: Mutex::new(State {
                next: 1,
                ..State::default()
            }),
            delivering: Mutex::new(()),
            stale,
        })
    }

    /// Queues `msg` for the peer; it goes on whichever link writes next.
    pub fn send(&self, msg: Msg) {
        let _ = self.tx.send(Out::Msg(msg));
    }

    /// The peer died: what waits for it goes, and nothing is kept again
    /// (the queue is closed, so what is sent later goes nowhere). Returns
    /// the queue with what was not written yet, for the caller to drop
    /// outside its locks: a message may hold the last reference to a value
    /// whose `Drop` runs user code, or lets go of a handle (which sends).
    #[must_use = "drop what was queued outside any lock"]
    pub(crate) fn end(&self) -> Option<mpsc::UnboundedReceiver<Out>> {
        let mut s = self.state.lock();
        s.ended = true;
        s.unacked.clear();
        drop(s);
        self.rx.lock().take()
    }

    /// Held by a reader while it takes a frame's messages and hands them
    /// in: two links' readers deliver one frame at a time, in order.
    pub(crate) fn delivering(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.delivering.lock()
    }

    /// Bytes written and not acknowledged.
    #[cfg(test)]
    fn unacked_bytes(&self) -> usize {
        self.state.lock().unacked.iter().map(|f| f.body.len()).sum()
    }

    pub(crate) fn sender(&self) -> mpsc::UnboundedSender<Out> {
        self.tx.clone()
    }

    /// Takes the queue for a writer, waiting while another writer has it;
    /// `None` if `stop` fires first.
    pub(crate) async fn take_queue(
        &self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Option<mpsc::UnboundedReceiver<Out>> {
        loop {
            let back = self.rx_back.notified();
            tokio::pin!(back);
            // Registered before looking: a hand-back between the look and the
            // wait is not missed.
            back.as_mut().enable();
            if let Some(rx) = self.rx.lock().take() {
                return Some(rx);
            }
            tokio::select! {
                _ = back => {}
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// A writer is done with the queue: the next one takes it (none, once
    /// the session ended).
    pub(crate) fn hand_back(&self, rx: mpsc::UnboundedReceiver<Out>) {
        // Looked at under the queue's lock: `end` sets `ended` before it
        // takes the queue, so either it finds this one or this sees it ended.
        let mut slot = self.rx.lock();
        if self.state.lock().ended {
            // What was queued goes, outside the lock (see `end`).
            drop(slot);
            drop(rx);
            return;
        }
        *slot = Some(rx);
        drop(slot);
        self.rx_back.notify_waiters();
    }

    /// The frames to write again on a new link, with their headers.
    pub(crate) fn resend(&self) -> Vec<(u64, Bytes)> {
        let mut s = self.state.lock();
        let now = Instant::now();
        s.unacked
            .iter_mut()
            .map(|f| {
                f.at = now;
                (f.first, f.body.clone())
            })
            .collect()
    }

    /// When the frames waiting for an ack are stale, if any wait.
    pub(crate) fn stale_at(&self) -> Option<Instant> {
        let s = self.state.lock();
        let oldest = s.unacked.front()?.at;
        Some(s.last_ack.map_or(oldest, |a| a.max(oldest)) + self.stale)
    }

    /// A frame of `count` messages is about to be written: its first
    /// sequence number, and the ack it carries. A frame of messages is kept
    /// until acknowledged (an ack alone is not).
    pub(crate) fn stamp(&self, count: u64, body: &Bytes) -> (u64, u64) {
        let mut s = self.state.lock();
        let first = s.next;
        s.next += count;
        s.acked = s.received;
        s.ack_forced = false;
        if count > 0 && !s.ended {
            s.unacked.push_back(Sent {
                first,
                count,
                body: body.clone(),
                at: Instant::now(),
            });
        }
        (first, s.received)
    }

    /// The current ack, written again (a resent frame carries it).
    pub(crate) fn ack_now(&self) -> u64 {
        let mut s = self.state.lock();
        s.acked = s.received;
        s.ack_forced = false;
        s.received
    }

    /// A frame came: `ack` lets go of what the peer has, and of its `count`
    /// messages from `first` the return says how many at the front were
    /// had already (skip them). `Err` for a gap: messages were lost, which
    /// an ordered link with a peer that resends cannot do.
    pub(crate) fn received(&self, first: u64, count: u64, ack: u64) -> Result<usize, String> {
        let mut s = self.state.lock();
        if s.ended {
            return Err("from a node declared dead".into());
        }
        if ack >= s.next {
            return Err(format!(
                "an ack of a message never sent: {ack} (the last sent was {})",
                s.next - 1
            ));
        }
        while s
            .unacked
            .front()
            .is_some_and(|f| f.first + f.count - 1 <= ack)
        {
            s.unacked.pop_front();
            s.last_ack = Some(Instant::now());
        }
        if count == 0 {
            return Ok(0);
        }
        if first > s.received + 1 {
            return Err(format!(
                "a gap in the messages: {first} where {} was due",
                s.received + 1
            ));
        }
        let had = (s.received + 1 - first).min(count);
        s.received = s.received.max(first + count - 1);
        // Sent again: the peer did not have this side's ack (lost with a
        // connection); it is owed again even if nothing new came.
        s.ack_forced |= had > 0;
        Ok(had as usize)
    }

    /// Whether to schedule an ack alone now (one is due and none is).
    pub(crate) fn ack_due(&self) -> bool {
        let mut s = self.state.lock();
        if s.ack_pending || (s.received == s.acked && !s.ack_forced) {
            return false;
        }
        s.ack_pending = true;
        true
    }

    /// The scheduled ack's time came: queue it if nothing carried it since.
    pub(crate) fn ack_if_needed(&self) {
        let mut s = self.state.lock();
        s.ack_pending = false;
        if s.received != s.acked || std::mem::take(&mut s.ack_forced) {
            drop(s);
            let _ = self.tx.send(Out::Ack);
        }
    }
}

/// A frame's header: its first message's sequence number and an ack.
pub(crate) fn header(first: u64, ack: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&first.to_be_bytes());
    h[8..].copy_from_slice(&ack.to_be_bytes());
    h
}

/// Splits a control-lane frame into its header and body.
pub(crate) fn split(frame: &[u8]) -> Result<(u64, u64, &[u8]), String> {
    if frame.len() < HEADER {
        return Err(format!(
            "bad control frame: {} bytes, shorter than its header",
            frame.len()
        ));
    }
    let first = u64::from_be_bytes(frame[..8].try_into().expect("8 bytes"));
    let ack = u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"));
    Ok((first, ack, &frame[HEADER..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_kept_until_acknowledged_and_resent_in_order() {
        let s = Session::new(NodeId(1));
        assert_eq!(s.stamp(3, &Bytes::from_static(b"abc")), (1, 0));
        assert_eq!(s.stamp(2, &Bytes::from_static(b"de")), (4, 0));
        assert_eq!(
            s.stamp(0, &Bytes::new()),
            (6, 0),
            "an ack alone takes no number"
        );
        assert_eq!(s.unacked_bytes(), 5);
        // The peer had the first frame.
        assert_eq!(s.received(1, 0, 3), Ok(0));
        assert_eq!(s.resend(), vec![(4, Bytes::from_static(b"de"))]);
        assert_eq!(s.received(1, 0, 5), Ok(0));
        assert!(s.resend().is_empty());
        assert_eq!(s.unacked_bytes(), 0);
        assert!(
            s.received(1, 0, 6).is_err(),
            "an ack of a message never sent"
        );
    }

    #[test]
    fn what_was_had_is_skipped_and_a_gap_is_refused() {
        let s = Session::new(NodeId(1));
        assert_eq!(s.received(1, 4, 0), Ok(0));
        // Resent after a reset: 3 and 4 again, then 5 and 6.
        assert_eq!(s.received(3, 4, 0), Ok(2));
        assert_eq!(s.received(1, 2, 0), Ok(2), "all had");
        assert!(s.received(9, 1, 0).is_err(), "7 and 8 lost");
        // What was received rides on the next frame out.
        assert_eq!(s.stamp(1, &Bytes::from_static(b"x")), (1, 6));
        assert!(!s.ack_due(), "carried already");
        assert_eq!(s.received(7, 1, 0), Ok(0));
        assert!(s.ack_due());
        assert!(!s.ack_due(), "one scheduled at a time");
    }

    #[test]
    fn frames_sent_again_are_acked_again_and_waiting_ones_go_stale() {
        let s = Session::new(NodeId(1));
        assert_eq!(s.received(1, 2, 0), Ok(0));
        assert_eq!(s.stamp(0, &Bytes::new()), (1, 2), "an ack alone");
        assert!(!s.ack_due(), "acked");
        // The ack was lost with its link: the peer sends the frame again.
        assert_eq!(s.received(1, 2, 0), Ok(2));
        assert!(s.ack_due(), "owed again though nothing new came");
        assert!(s.stale_at().is_none(), "nothing waits for an ack");
        s.stamp(1, &Bytes::from_static(b"x"));
        let stale = s.stale_at().expect("a frame waits");
        assert!(stale > Instant::now() + STALE - Duration::from_secs(1));
        assert_eq!(s.received(3, 0, 1), Ok(0));
        assert!(s.stale_at().is_none(), "acknowledged");
    }

    #[test]
    fn an_ended_session_keeps_nothing() {
        let s = Session::new(NodeId(1));
        s.send(Msg::Stop);
        s.stamp(1, &Bytes::from_static(b"abc"));
        assert_eq!(s.unacked_bytes(), 3);
        assert!(s.end().is_some(), "the queue is handed back to drop");
        assert_eq!(s.unacked_bytes(), 0);
        assert!(s.rx.lock().is_none(), "the queue went");
        assert!(s.tx.send(Out::Ack).is_err(), "nothing is queued again");
        s.stamp(1, &Bytes::from_static(b"abc"));
        assert_eq!(s.unacked_bytes(), 0);
        assert!(
            s.received(1, 1, 0).is_err(),
            "nothing is taken from the dead"
        );
    }
}
