//! Object transfer on the bulk lane: a large value is pulled from a node that
//! holds it in chunks of [`CHUNK`] bytes, at most [`PULL_WINDOW`] chunks in
//! flight, and lands as one buffer. Two pulls of one object share the
//! transfer. The serving side encodes a value once per transfer, off the
//! network thread, and sends slices of that one buffer. A pull of a byte
//! buffer whose link breaks while its holder lives is kept, and the next
//! pull of the object from that holder goes on from the byte it reached.

use super::link::Link;
use super::wire::{Msg, CHUNK, PULL_WINDOW};
use crate::error::Error;
use crate::ids::{IdMap, NodeId, ObjectId};
use crate::pages::{Landed, Pool};
use crate::value::{bin_header_len, Value};
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to do with a pulled value (or the pull's error).
pub type PullDone = Box<dyn FnOnce(Result<Value, Error>) + Send>;

struct Assembly {
    link: Arc<Link>,
    /// The bytes so far: of the whole encoding, or — for a byte buffer (a
    /// `Bytes` or a `ByteBuf`) — of its contents only (`skip` header bytes
    /// left out), so that it is read where it landed.
    buf: Vec<u8>,
    skip: u64,
    started: bool,
    /// The buffer is lent to the bulk reader (a chunk landing in place).
    lent: bool,
    total: u64,
    received: u64,
    next: u64,
    done: Vec<PullDone>,
}

/// How long the bytes of a pull whose link broke are kept for the next pull
/// of the object from the same holder (the puller's budget for a read whose
/// links break: `REQUEST_TIMEOUT`).
pub const KEPT_FOR: Duration = Duration::from_secs(30);

/// The bytes a pull took in before its link broke, while its holder lives.
/// Only a byte buffer's: its encoding is its own bytes, the same however
/// often it is encoded. Another value's holder may encode it differently the
/// next time (an actor handle inside names its actor's node of the moment),
/// and two encodings' bytes must never mix.
struct Kept {
    /// The holder it came from: another's encoding may differ.
    from: NodeId,
    buf: Vec<u8>,
    skip: u64,
    total: u64,
    received: u64,
    at: Instant,
}

/// Pulls in progress on this node.
pub struct Pulls {
    active: Mutex<IdMap<ObjectId, Assembly>>,
    /// Pulls whose link broke, for the next pull of each (taken after
    /// `active`'s lock where both are held), holding as many bytes at most
    /// as the pool keeps.
    kept: Mutex<IdMap<ObjectId, Kept>>,
    /// Pulls that went on from the byte they reached, not the first.
    resumed: AtomicU64,
    /// Where large pulls land: buffers of earlier ones, warm.
    pool: Arc<Pool>,
    /// The largest object a pull accepts: what a peer may make this node
    /// allocate (its object store's capacity).
    max_object: u64,
}

impl Pulls {
    /// No pulls yet; objects over `max_object` bytes are refused, and up to
    /// a quarter of that is kept in landing buffers for the next pulls, and
    /// as much again for pulls whose link broke.
    pub fn new(max_object: u64) -> Pulls {
        Pulls::with_pool(max_object, Pool::for_store(max_object))
    }

    /// As [`new`](Self::new), landing in `pool` (the node's warm memory),
    /// and keeping for broken pulls as much as it keeps.
    pub fn with_pool(max_object: u64, pool: Arc<Pool>) -> Pulls {
        Pulls {
            active: Mutex::default(),
            kept: Mutex::default(),
            resumed: AtomicU64::new(0),
            pool,
            max_object,
        }
    }

    /// Pulls `object` (`size` bytes, as measured: the first answer tells the
    /// true size, so a wrong measure — even 0 — costs at most a round trip)
    /// over `link`; `done` hears the value. A pull of it from the same
    /// holder whose link broke goes on from the byte it reached.
    pub fn start(&self, link: &Arc<Link>, object: ObjectId, size: u64, done: PullDone) {
        let mut active = self.active.lock();
        if let Some(a) = active.get_mut(&object) {
            a.done.push(done);
            return;
        }
        let mut a = Assembly {
            link: link.clone(),
            buf: Vec::new(),
            skip: 0,
            started: false,
            lent: false,
            total: size,
            received: 0,
            next: 0,
            done: vec![done],
        };
        let mut kept = self.kept.lock().remove(&object);
        if let Some(k) = kept.take_if(|k| k.from == link.peer.id) {
            self.resumed.fetch_add(1, Ordering::Relaxed);
            a.buf = k.buf;
            a.skip = k.skip;
            a.total = k.total;
            a.received = k.received;
            // Asked for and never come: asked again.
            a.next = k.received;
            a.started = true;
        }
        request_more(&mut a, object);
        active.insert(object, a);
        drop(active);
        // Another holder's bytes: its encoding may differ.
        if let Some(k) = kept {
            self.pool.give(k.buf);
        }
    }

    /// A chunk arrived; when it was the last, the value goes to every waiter.
    pub fn on_chunk(&self, link: &Link, object: ObjectId, offset: u64, total: u64, data: Value) {
        let Value::Encoded(bytes) = data else { return };
        let finished = {
            let mut active = self.active.lock();
            let Some(a) = active.get_mut(&object) else {
                return;
            };
            if a.link.serial != link.serial {
                // Only the link the pull asked on answers it.
                return;
            }
            if let Err(e) = a.take(offset, total, &bytes, self.max_object, &self.pool) {
                let a = active.remove(&object).expect("present");
                drop(active);
                fail_all(a.done, e);
                return;
            }
            if a.received < a.total {
                request_more(a, object);
                return;
            }
            active.remove(&object).expect("present")
        };
        self.finish(finished);
    }

    /// Lends the buffer of `object`'s pull for a chunk's `len` bytes at
    /// `offset` to land in place: once the pull has started (its first chunk
    /// fixed the layout) and the chunk is past a byte buffer's header.
    pub fn lend(
        &self,
        link: &Link,
        object: ObjectId,
        offset: u64,
        total: u64,
        len: usize,
    ) -> Option<(Vec<u8>, usize)> {
        let mut active = self.active.lock();
        let a = active.get_mut(&object)?;
        let end = offset.checked_add(len as u64)?;
        if a.link.serial != link.serial
            || !a.started
            || a.lent
            || total != a.total
            || offset != a.received
            || offset < a.skip
            || end > a.total
            || end > a.next
        {
            return None;
        }
        a.lent = true;
        Some((std::mem::take(&mut a.buf), (offset - a.skip) as usize))
    }

    /// A lent buffer comes back with `len` bytes landed (0: the read failed).
    pub fn landed(&self, link: &Link, object: ObjectId, buf: Vec<u8>, len: usize) {
        let finished = {
            let mut active = self.active.lock();
            let Some(a) = active.get_mut(&object) else {
                return;
            };
            if !a.lent || a.link.serial != link.serial {
                // Lent by a pull that failed meanwhile (its link closed, a new
                // pull of the object began): not this one's buffer or bytes.
                return;
            }
            a.buf = buf;
            a.lent = false;
            a.received += len as u64;
            if len == 0 || a.received < a.total {
                if len > 0 {
                    request_more(a, object);
                }
                return;
            }
            active.remove(&object).expect("present")
        };
        self.finish(finished);
    }

    /// Where this node's pulls land: the buffers it keeps for the next ones.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    fn finish(&self, finished: Assembly) {
        // Back to the pool when its last reader lets it go.
        let buf = Landed::share(finished.buf, &self.pool);
        let value = if finished.skip > 0 {
            Value::Bin(buf)
        } else {
            Value::Encoded(buf)
        };
        for d in finished.done {
            d(Ok(value.clone()));
        }
    }

    /// The holder cannot serve `object`.
    pub fn on_failed(&self, object: ObjectId, error: Error) {
        let a = self.active.lock().remove(&object);
        if let Some(a) = a {
            fail_all(a.done, error);
        }
    }

    /// Pulls under way that have taken in some of their bytes (for tests).
    pub fn landing(&self) -> usize {
        self.active
            .lock()
            .values()
            .filter(|a| a.received > 0)
            .count()
    }

    /// A bulk link closed: its pulls fail with `error`. While its holder
    /// lives (`holder_lives`), what each pull of a byte buffer took in is
    /// kept [`KEPT_FOR`], for the next pull of the object from there to go
    /// on with (see [`Kept`]).
    pub fn link_closed(&self, link: &Link, error: Error, holder_lives: bool) {
        let mut gone = Vec::new();
        {
            let mut active = self.active.lock();
            let mut kept = self.kept.lock();
            let mut kept_bytes: usize = kept.values().map(|k| k.buf.capacity()).sum();
            let ids: Vec<ObjectId> = active
                .iter()
                .filter(|(_, a)| a.link.serial == link.serial)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                let mut a = active.remove(&id).expect("listed");
                // A buffer lent to the reader is back by now (the reader
                // hands it back however it stops).
                let byte_buffer = a.skip > 0;
                let fits = kept_bytes + a.buf.capacity() <= self.pool.max_bytes();
                if holder_lives && byte_buffer && fits && a.started && !a.lent && a.received > 0 {
                    kept_bytes += a.buf.capacity();
                    let k = Kept {
                        from: link.peer.id,
                        buf: std::mem::take(&mut a.buf),
                        skip: a.skip,
                        total: a.total,
                        received: a.received,
                        at: Instant::now(),
                    };
                    kept.insert(id, k);
                }
                gone.push(a);
            }
        }
        for a in gone {
            if !a.buf.is_empty() {
                self.pool.give(a.buf);
            }
            fail_all(a.done, error.clone());
        }
    }

    /// `node` died, or this node gave up on reading `object` (`None`: any)
    /// from it: the bytes kept from there go back to the pool.
    pub fn forget_kept(&self, node: NodeId, object: Option<ObjectId>) {
        self.forget_kept_if(|id, k| k.from == node && object.is_none_or(|o| o == *id));
    }

    /// Drops what was kept [`KEPT_FOR`] and not taken (the node's health
    /// thread calls this).
    pub fn forget_stale_kept(&self) {
        self.forget_kept_if(|_, k| k.at.elapsed() > KEPT_FOR);
    }

    /// The kept bytes `gone` picks go back to the pool (outside the lock).
    fn forget_kept_if(&self, mut gone: impl FnMut(&ObjectId, &Kept) -> bool) {
        let gone: Vec<Kept> = self
            .kept
            .lock()
            .extract_if(|id, k| gone(id, k))
            .map(|(_, k)| k)
            .collect();
        gone.into_iter().for_each(|k| self.pool.give(k.buf));
    }

    /// Pulls that went on from the byte they reached (for tests).
    pub fn resumed(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }

    /// Bytes kept from pulls whose link broke (for tests).
    pub fn kept_bytes(&self) -> usize {
        self.kept.lock().values().map(|k| k.buf.len()).sum()
    }
}

impl Assembly {
    /// Takes a chunk in. The first (offset 0, asked for first on one ordered
    /// link) fixes the size — the holder's encoding is the truth, the size
    /// asked for was a measure — and whether it is a byte buffer.
    fn take(
        &mut self,
        offset: u64,
        total: u64,
        bytes: &[u8],
        max: u64,
        pool: &Pool,
    ) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Serialization(why));
        if self.lent {
            return bad("a chunk came while another was landing".into());
        }
        if offset != self.received {
            // Chunks are asked for in order on one ordered link: anything
            // else (a repeat, a gap) is a broken or lying peer.
            return bad(format!(
                "a chunk at {offset} where {} was due",
                self.received
            ));
        }
        if offset.saturating_add(bytes.len() as u64) > self.next {
            return bad(format!(
                "a chunk past the bytes asked for ({offset}+{}, asked up to {})",
                bytes.len(),
                self.next
            ));
        }
        if !self.started {
            if offset != 0 {
                return bad(format!("a chunk at {offset} came before the first"));
            }
            self.total = total;
            self.skip = bin_header_len(bytes, total).map_or(0, |h| h as u64);
            if total > max {
                return Err(Error::ObjectStoreFull {
                    requested: total,
                    used: 0,
                    capacity: max,
                });
            }
            // A kept buffer, or a new one zeroed by the allocator (no pass
            // over it before the bytes land; huge pages when large). A kept
            // one holds an earlier object's bytes: every byte is written
            // before the value is read (chunks land in order, and the pull
            // finishes only when all have).
            self.buf = pool.take((total - self.skip) as usize);
            self.started = true;
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(bytes.len() as u64);
        if total != self.total || end.is_none_or(|e| e > self.total) {
            return bad(format!(
                "a chunk does not fit the object ({offset}+{} of {total}, expected {})",
                bytes.len(),
                self.total
            ));
        }
        // Header bytes of a byte buffer are dropped; the rest lands in place
        // (`end` ≤ total was checked, so the body fits the buffer).
        let cut = self.skip.saturating_sub(offset).min(bytes.len() as u64) as usize;
        let at = (offset + cut as u64).saturating_sub(self.skip) as usize;
        let body = &bytes[cut..];
        if at + body.len() > self.buf.len() {
            return bad("a chunk past the end of the object".into());
        }
        self.buf[at..at + body.len()].copy_from_slice(body);
        self.received += bytes.len() as u64;
        Ok(())
    }
}

/// Asks for whole chunks — the holder cuts the last one at the object's
/// end — while fewer than [`PULL_WINDOW`] chunks' bytes are asked for and
/// not yet here. Until the first chunk came, only it is asked for: it tells
/// the object's true size (the holder's measure may be off either way), and
/// a small object comes whole in it.
fn request_more(a: &mut Assembly, object: ObjectId) {
    let window = PULL_WINDOW * CHUNK as u64;
    let end = if a.started { a.total } else { 1 };
    // `next` ≥ `received`: `take` and `lend` refuse bytes not asked for.
    while a.next < end && a.next - a.received < window {
        a.link.send(Msg::Pull {
            object,
            offset: a.next,
            len: CHUNK as u64,
        });
        a.next += CHUNK as u64;
    }
}

fn fail_all(done: Vec<PullDone>, error: Error) {
    for d in done {
        d(Err(error.clone()));
    }
}

/// A value being served: encoded once per transfer, while pulls that came
/// during the encoding wait for it.
enum Served {
    Encoding(Vec<(Arc<Link>, u64, u64)>),
    /// The encoding as a header and a body (a byte buffer's own bytes),
    /// and when a pull last asked for some of it.
    Ready(Bytes, Bytes, Instant),
}

/// How long an encoding is kept with no pull asking for it: a puller that
/// gave up (its store full, a chunk it refused) or went silent never asks
/// for the rest, and the encoding — a copy of the value, or the value
/// itself — would outlive the object. A pull still going after this asks
/// for the next chunk within a chunk's transfer, or encodes again.
pub const SERVE_IDLE: Duration = Duration::from_secs(30);

/// Values being served, encoded once per transfer.
#[derive(Default)]
pub struct Serving {
    encoded: Mutex<IdMap<ObjectId, Served>>,
}

/// What to do with a pull.
pub enum Serve {
    /// Send these chunks.
    Chunks(Vec<Msg>),
    /// Encode the value (then call [`Serving::encoded`]); this pull waits.
    Encode,
    /// Another pull is encoding it; this one waits.
    Wait,
}

impl Serving {
    /// A pull of `len` bytes of `object` from `offset`, on `link`.
    pub fn pull(&self, link: &Arc<Link>, object: ObjectId, offset: u64, len: u64) -> Serve {
        let mut encoded = self.encoded.lock();
        match encoded.get_mut(&object) {
            Some(Served::Ready(head, body, asked)) => {
                *asked = Instant::now();
                let parts = (head.clone(), body.clone());
                drop(encoded);
                Serve::Chunks(self.chunks(object, &parts, offset, len))
            }
            Some(Served::Encoding(waiting)) => {
                waiting.push((link.clone(), offset, len));
                Serve::Wait
            }
            None => {
                encoded.insert(object, Served::Encoding(vec![(link.clone(), offset, len)]));
                Serve::Encode
            }
        }
    }

    /// A bulk link closed: encodings kept for transfers are dropped (a pull
    /// still going elsewhere encodes again), so a puller that died mid-way
    /// leaves nothing behind.
    pub fn forget_ready(&self) {
        self.encoded
            .lock()
            .retain(|_, s| matches!(s, Served::Encoding(_)));
    }

    /// Drops the encodings no pull asked for in [`SERVE_IDLE`] (the node's
    /// health thread calls this).
    pub fn forget_idle(&self) {
        self.forget_idle_at(Instant::now());
    }

    fn forget_idle_at(&self, now: Instant) {
        let gone: Vec<(ObjectId, Served)> = self
            .encoded
            .lock()
            .extract_if(|_, s| {
                matches!(s, Served::Ready(_, _, asked) if now.saturating_duration_since(*asked) > SERVE_IDLE)
            })
            .collect();
        // A large encoding is freed outside the lock.
        drop(gone);
    }

    /// The encoding of `object` is done: every waiting pull is served.
    pub fn encoded(&self, object: ObjectId, result: Result<(Bytes, Bytes), Error>) {
        let waiting = {
            let mut encoded = self.encoded.lock();
            let waiting = match encoded.remove(&object) {
                Some(Served::Encoding(w)) => w,
                _ => Vec::new(),
            };
            if let Ok((head, body)) = &result {
                encoded.insert(
                    object,
                    Served::Ready(head.clone(), body.clone(), Instant::now()),
                );
            }
            waiting
        };
        for (link, offset, len) in waiting {
            match &result {
                Ok(bytes) => {
                    for chunk in self.chunks(object, bytes, offset, len) {
                        link.send(chunk);
                    }
                }
                Err(error) => {
                    link.send(Msg::PullFailed {
                        object,
                        error: error.clone(),
                    });
                }
            }
        }
    }

    /// The chunks that answer a pull, as slices of the encoding (no copy);
    /// the encoding is dropped once its last byte is served. A pull from the
    /// start is answered in two: the first bytes (a byte buffer's header, or
    /// [`LEAD`] bytes of any other encoding), which fix the layout on the
    /// puller, then the rest, which lands there in place.
    fn chunks(
        &self,
        object: ObjectId,
        (head, body): &(Bytes, Bytes),
        offset: u64,
        len: u64,
    ) -> Vec<Msg> {
        let h = head.len() as u64;
        let total = h + body.len() as u64;
        let start = offset.min(total);
        let end = offset.saturating_add(len.min(CHUNK as u64)).min(total);
        if end >= total {
            self.encoded.lock().remove(&object);
        }
        // Each piece lies wholly in the header or wholly in the body.
        let piece = |from: u64, to: u64| {
            let data = if from >= h {
                body.slice((from - h) as usize..(to - h) as usize)
            } else {
                head.slice(from as usize..to as usize)
            };
            Msg::Chunk {
                object,
                offset: from,
                total,
                data: Value::Encoded(data),
            }
        };
        // A byte buffer's parts are its header and its bytes; any other
        // value's encoding is all head.
        let split = if body.is_empty() { LEAD.min(total) } else { h };
        if start < split && split < end {
            vec![piece(start, split), piece(split, end)]
        } else {
            vec![piece(start, end)]
        }
    }
}

/// The bytes of a non-byte-buffer encoding sent ahead of the rest of the
/// first chunk (see [`Serving::chunks`]).
const LEAD: u64 = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::session::Out;
    use crate::cluster::wire::Lane;
    use crate::ids::NodeId;

    /// The object the tests pull.
    const OBJECT: ObjectId = ObjectId {
        node: NodeId(7),
        seq: 1,
    };

    fn chunk(obj: &[u8], i: usize) -> Value {
        Value::Encoded(Bytes::copy_from_slice(&obj[i * CHUNK..(i + 1) * CHUNK]))
    }

    type Got = Arc<Mutex<Option<Result<Value, Error>>>>;

    fn waiter() -> (Got, PullDone) {
        let got: Got = Arc::default();
        let g = got.clone();
        (got, Box::new(move |r| *g.lock() = Some(r)))
    }

    /// Pull A1 lends its buffer (a kept one, holding an earlier object's
    /// bytes) to link L1's in-place read; L1 closes and A1 fails; pull A2 of
    /// the same object starts on L2 and gets ahead; then L1's read ends,
    /// having landed `landed_len` bytes. A2's value is its own object.
    fn a_late_read_of_a_failed_pull(landed_len: usize) {
        let pulls = Pulls::new(400 << 20);
        let total = 3 * CHUNK;
        pulls.pool.give(vec![0xEE; total]);
        let obj: Vec<u8> = (0..total).map(|i| (i % 251) as u8 + 1).collect();
        let x = OBJECT;
        let (l1, _r1) = Link::for_test(Lane::Bulk);
        let (l2, _r2) = Link::for_test(Lane::Bulk);
        let (got1, d1) = waiter();
        pulls.start(&l1, x, total as u64, d1);
        pulls.on_chunk(&l1, x, 0, total as u64, chunk(&obj, 0));
        let (mut buf1, at) = pulls
            .lend(&l1, x, CHUNK as u64, total as u64, CHUNK)
            .expect("lent");
        // Its holder lives, but the buffer is out: nothing is kept.
        pulls.link_closed(&l1, Error::Serialization("peer lost".into()), true);
        assert!(got1.lock().as_ref().expect("heard").is_err());
        assert_eq!(pulls.kept_bytes(), 0);
        let (got2, d2) = waiter();
        pulls.start(&l2, x, total as u64, d2);
        pulls.on_chunk(&l2, x, 0, total as u64, chunk(&obj, 0));
        pulls.on_chunk(&l2, x, CHUNK as u64, total as u64, chunk(&obj, 1));
        buf1[at..at + landed_len].copy_from_slice(&obj[CHUNK..CHUNK + landed_len]);
        pulls.landed(&l1, x, buf1, landed_len);
        assert!(got2.lock().is_none(), "A2 is not done by A1's bytes");
        pulls.on_chunk(&l2, x, 2 * CHUNK as u64, total as u64, chunk(&obj, 2));
        let value = match got2.lock().take() {
            Some(Ok(Value::Encoded(b))) => b,
            other => panic!("A2: {:?}", other.map(|r| r.map(|_| ()))),
        };
        let wrong = value.iter().zip(&obj).filter(|(a, b)| a != b).count();
        assert_eq!(
            (value.len(), wrong),
            (total, 0),
            "A2's bytes are its object's"
        );
    }

    /// The first `Pull` asked for on a link's queue: its offset.
    fn first_asked(asks: &mut tokio::sync::mpsc::UnboundedReceiver<Out>) -> u64 {
        match asks.try_recv() {
            Ok(Out::Msg(Msg::Pull { offset, .. })) => offset,
            _ => panic!("a pull was asked for"),
        }
    }

    /// A pull whose link breaks while its holder lives keeps its bytes: the
    /// next pull of the object from that holder asks from the byte it
    /// reached, and the value is whole. From another holder (whose encoding
    /// may differ), or once the holder died, it starts from the first.
    #[test]
    fn a_broken_pull_goes_on_from_the_byte_it_reached() {
        let total = 4 * CHUNK;
        // A byte buffer's encoding: a bin header, then its bytes.
        let mut obj = vec![0xc6];
        obj.extend_from_slice(&((total - 5) as u32).to_be_bytes());
        obj.extend((5..total).map(|i| (i % 251) as u8));
        let typed: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let x = OBJECT;
        let half_pulled_of = |pulls: &Pulls, obj: &[u8], holder_lives: bool| {
            let (l1, _asks) = Link::for_test(Lane::Bulk);
            let (got, done) = waiter();
            pulls.start(&l1, x, total as u64, done);
            for i in 0..2 {
                pulls.on_chunk(&l1, x, (i * CHUNK) as u64, total as u64, chunk(obj, i));
            }
            let lost = Error::NodeDied {
                node: "7".into(),
                cause: "its connection closed".into(),
            };
            pulls.link_closed(&l1, lost, holder_lives);
            assert!(matches!(*got.lock(), Some(Err(Error::NodeDied { .. }))));
        };
        let half_pulled =
            |pulls: &Pulls, holder_lives: bool| half_pulled_of(pulls, &obj, holder_lives);

        let pulls = Pulls::new(1 << 30);
        half_pulled(&pulls, true);
        assert_eq!(pulls.kept_bytes(), total - 5, "the buffer is kept");
        let (l2, mut asks) = Link::for_test(Lane::Bulk);
        let (got, done) = waiter();
        pulls.start(&l2, x, total as u64, done);
        assert_eq!(
            first_asked(&mut asks),
            2 * CHUNK as u64,
            "asked from where it stopped"
        );
        assert_eq!((pulls.resumed(), pulls.kept_bytes()), (1, 0));
        for i in 2..4 {
            pulls.on_chunk(&l2, x, (i * CHUNK) as u64, total as u64, chunk(&obj, i));
        }
        match got.lock().take() {
            Some(Ok(Value::Bin(b))) => assert!(b[..] == obj[5..], "the value is whole"),
            other => panic!("the value: {:?}", other.map(|r| r.map(|_| ()))),
        }

        // Any other value's bytes are not kept: its next encoding may differ.
        half_pulled_of(&pulls, &typed, true);
        assert_eq!(pulls.kept_bytes(), 0);

        // Nor bytes past the bound (a quarter of the largest object, as the
        // landing pool's): a pull starts from the first byte then.
        let small = Pulls::new(2 * total as u64);
        half_pulled(&small, true);
        assert_eq!(small.kept_bytes(), 0, "over the bound");

        // From another holder: from the first byte, the kept bytes let go.
        half_pulled(&pulls, true);
        let (elsewhere, mut asks) = Link::for_test_to(Lane::Bulk, NodeId(8));
        let (_got, done) = waiter();
        pulls.start(&elsewhere, x, total as u64, done);
        assert_eq!(first_asked(&mut asks), 0);
        assert_eq!((pulls.resumed(), pulls.kept_bytes()), (1, 0));

        // The holder died, or the reader gave up on it: nothing kept.
        let pulls = Pulls::new(1 << 30);
        half_pulled(&pulls, false);
        assert_eq!(pulls.kept_bytes(), 0);
        half_pulled(&pulls, true);
        pulls.forget_kept(NodeId(8), None);
        assert_eq!(pulls.kept_bytes(), total - 5, "another node's death");
        pulls.forget_kept(NodeId(7), Some(x));
        assert_eq!(pulls.kept_bytes(), 0);
    }

    #[test]
    fn a_failed_pull_s_late_read_never_lands_in_a_newer_pull() {
        a_late_read_of_a_failed_pull(0);
        a_late_read_of_a_failed_pull(CHUNK);
    }

    #[test]
    fn bytes_not_asked_for_fail_the_pull() {
        let pulls = Pulls::new(1 << 30);
        let x = OBJECT;
        let (link, _asks) = Link::for_test(Lane::Bulk);
        let (got, done) = waiter();
        pulls.start(&link, x, 100, done);
        // One chunk was asked for; more than a chunk comes.
        let first = Value::Encoded(Bytes::from(vec![1u8; CHUNK + 1000]));
        pulls.on_chunk(&link, x, 0, 3 * CHUNK as u64, first);
        match got.lock().take() {
            Some(Err(Error::Serialization(why))) => assert!(why.contains("asked for"), "{why}"),
            other => panic!("a typed error: {:?}", other.map(|r| r.map(|_| ()))),
        }
        assert!(
            pulls.lend(&link, x, 0, 3 * CHUNK as u64, 10).is_none(),
            "the pull is gone"
        );
    }

    #[test]
    fn an_encoding_nobody_asks_for_is_dropped() {
        let serving = Serving::default();
        let (link, _out) = Link::for_test(Lane::Bulk);
        let x = OBJECT;
        let value = Value::new(bytes::Bytes::from(vec![7u8; 3 * CHUNK]));
        // A puller asks for the first chunk, then gives up.
        assert!(matches!(
            serving.pull(&link, x, 0, CHUNK as u64),
            Serve::Encode
        ));
        serving.encoded(x, value.to_parts());
        serving.forget_idle_at(Instant::now());
        assert!(
            matches!(
                serving.pull(&link, x, CHUNK as u64, CHUNK as u64),
                Serve::Chunks(_)
            ),
            "kept while pulls ask for it"
        );
        serving.forget_idle_at(Instant::now() + SERVE_IDLE + Duration::from_secs(1));
        assert!(
            matches!(
                serving.pull(&link, x, 2 * CHUNK as u64, CHUNK as u64),
                Serve::Encode
            ),
            "dropped once nobody asked for it in SERVE_IDLE: a later pull encodes again"
        );
    }

    #[test]
    fn a_measure_of_0_still_pulls_the_value() {
        let pulls = Pulls::new(1 << 20);
        let x = OBJECT;
        let (link, mut asks) = Link::for_test(Lane::Bulk);
        let (got, done) = waiter();
        pulls.start(&link, x, 0, done);
        assert!(got.lock().is_none(), "no value made up");
        assert!(matches!(
            asks.try_recv(),
            Ok(Out::Msg(Msg::Pull { offset: 0, .. }))
        ));
        let encoding = rmp_serde::to_vec(&42u64).unwrap();
        let total = encoding.len() as u64;
        pulls.on_chunk(&link, x, 0, total, Value::Encoded(Bytes::from(encoding)));
        let pulled = got.lock().take();
        match pulled {
            Some(Ok(v)) => assert_eq!(*v.downcast::<u64>().unwrap(), 42),
            other => panic!("the value: {:?}", other.map(|r| r.map(|_| ()))),
        }
    }

    /// Transfers through the node's own bulk writer and reader, over a pipe.
    mod over_a_pipe {
        use super::super::*;
        use super::OBJECT;
        use crate::cluster::link::{bulk_frame, read_frames, write_loop, Inbound};
        use crate::cluster::session::Out;
        use crate::cluster::wire::{Lane, Rejections};
        use bytes::BytesMut;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;

        /// A puller's side of a bulk link: its pulls, and how each chunk's bytes
        /// came in (as a message, or read into the pull's buffer in place).
        struct Puller {
            pulls: Pulls,
            framed: AtomicUsize,
            in_place: AtomicUsize,
        }

        impl Inbound for Puller {
            fn on_msgs(&self, link: &Arc<Link>, msgs: &mut std::vec::IntoIter<Msg>) {
                for m in msgs {
                    if let Msg::Chunk {
                        object,
                        offset,
                        total,
                        data,
                    } = m
                    {
                        self.framed.fetch_add(data.size(), Ordering::Relaxed);
                        self.pulls.on_chunk(link, object, offset, total, data);
                    }
                }
            }

            fn on_close(&self, _link: &Arc<Link>, _reason: Option<&str>) {}

            fn chunk_target(
                &self,
                link: &Link,
                object: ObjectId,
                offset: u64,
                total: u64,
                len: usize,
            ) -> Option<(Vec<u8>, usize)> {
                self.pulls.lend(link, object, offset, total, len)
            }

            fn chunk_landed(&self, link: &Link, object: ObjectId, buf: Vec<u8>, len: usize) {
                self.in_place.fetch_add(len, Ordering::Relaxed);
                self.pulls.landed(link, object, buf, len);
            }
        }

        struct Pulled {
            value: Value,
            framed: usize,
            in_place: usize,
            /// The pulls asked for, as (offset, len).
            asked: Vec<(u64, u64)>,
            /// How many were asked for before the first answer.
            asked_first: usize,
        }

        /// Pulls `value` through a pipe of 1 KiB, the holder serving it as a
        /// node does (`Serving`, the bulk writer) and the puller reading it as a
        /// node does (the bulk reader, `Pulls`): every frame arrives in pieces.
        async fn pull_through_a_narrow_pipe(value: Value) -> Pulled {
            let object = OBJECT;
            let (theirs, mine) = tokio::io::duplex(1024);
            let (holder, holder_out) = Link::for_test(Lane::Bulk);
            let (puller, mut asks) = Link::for_test(Lane::Bulk);
            let inbound = Arc::new(Puller {
                pulls: Pulls::new(1 << 30),
                framed: AtomicUsize::new(0),
                in_place: AtomicUsize::new(0),
            });
            let writer = tokio::spawn(write_loop(
                theirs,
                Some(holder_out),
                holder.clone(),
                inbound.clone(),
            ));
            let reader = {
                let (inbound, puller) = (inbound.clone(), puller.clone());
                tokio::spawn(async move {
                    let mut rd = mine;
                    let rejections = Rejections::default();
                    read_frames(
                        &mut rd,
                        &mut BytesMut::new(),
                        &puller,
                        inbound.as_ref(),
                        &rejections,
                    )
                    .await
                })
            };
            let (tx, mut done) = tokio::sync::oneshot::channel();
            let tx = parking_lot::Mutex::new(Some(tx));
            inbound.pulls.start(
                &puller,
                object,
                value.size() as u64,
                Box::new(move |r| {
                    let _ = tx.lock().take().expect("once").send(r);
                }),
            );
            let mut asked = Vec::new();
            while let Ok(Out::Msg(Msg::Pull { offset, len, .. })) = asks.try_recv() {
                asked.push((offset, len));
            }
            let asked_first = asked.len();
            let serving = Serving::default();
            let serve = |offset, len| match serving.pull(&holder, object, offset, len) {
                Serve::Chunks(chunks) => chunks.into_iter().for_each(|c| {
                    holder.send(c);
                }),
                Serve::Encode => serving.encoded(object, value.to_parts()),
                Serve::Wait => unreachable!("one puller"),
            };
            asked.iter().for_each(|&(offset, len)| serve(offset, len));
            let pulled = loop {
                tokio::select! {
                    r = &mut done => break r.expect("answered").expect("pulled"),
                    Some(Out::Msg(Msg::Pull { offset, len, .. })) = asks.recv() => {
                        asked.push((offset, len));
                        serve(offset, len);
                    }
                }
            };
            holder.close();
            writer.await.expect("writer");
            assert_eq!(reader.await.expect("reader"), None, "no bad input");
            Pulled {
                value: pulled,
                framed: inbound.framed.load(Ordering::Relaxed),
                in_place: inbound.in_place.load(Ordering::Relaxed),
                asked,
                asked_first,
            }
        }

        #[tokio::test]
        async fn a_pulled_byte_buffer_lands_in_place_from_its_first_chunk() {
            let body: Vec<u8> = (0..2 * CHUNK + 100).map(|i| (i % 251) as u8).collect();
            let p = pull_through_a_narrow_pipe(Value::new(bytes::Bytes::from(body.clone()))).await;
            let Value::Bin(got) = &p.value else {
                panic!("a byte buffer lands as one: {:?}", p.value);
            };
            assert!(got[..] == body[..], "intact");
            // Its header (5 bytes) came as a message, each of its bytes in place.
            assert_eq!((p.framed, p.in_place), (5, body.len()));
            // One pull until the first answer told the size (the measure leaves
            // the header out), then the rest at once: whole chunks, the last one
            // cut at the end by the holder.
            let c = CHUNK as u64;
            assert_eq!(p.asked_first, 1);
            assert_eq!(p.asked, vec![(0, c), (c, c), (2 * c, c)]);
        }

        #[tokio::test]
        async fn any_pulled_encoding_lands_in_place_after_its_first_bytes() {
            // Measured at 2 bytes a number, encoded in 1: the measure reaches
            // a chunk past the encoding's end.
            let numbers: Vec<u16> = (0..3 * CHUNK / 2).map(|i| (i % 100) as u16).collect();
            let value = Value::new(numbers.clone());
            let (encoding, rest) = value.to_parts().unwrap();
            assert!(rest.is_empty());
            assert_eq!(
                (value.size().div_ceil(CHUNK), encoding.len().div_ceil(CHUNK)),
                (3, 2)
            );
            let p = pull_through_a_narrow_pipe(value).await;
            let Value::Encoded(got) = &p.value else {
                panic!("an encoding lands as one: {:?}", p.value);
            };
            assert!(got[..] == encoding[..], "intact");
            assert_eq!(*p.value.downcast::<Vec<u16>>().unwrap(), numbers);
            assert_eq!((p.framed, p.in_place), (16, encoding.len() - 16));
            // Nothing asked for past the true end, though the measure reached it.
            let c = CHUNK as u64;
            assert_eq!((p.asked_first, p.asked), (1, vec![(0, c), (c, c)]));
        }

        /// A chunk's bulk frame as a node writes it.
        fn framed(object: ObjectId, offset: u64, total: u64, data: &[u8]) -> Vec<u8> {
            let msg = Msg::Chunk {
                object,
                offset,
                total,
                data: Value::Encoded(bytes::Bytes::copy_from_slice(data)),
            };
            let (head, tail) = bulk_frame(msg).expect("a chunk");
            let tail = tail.unwrap_or_default();
            let mut f = ((4 + head.len() + tail.len()) as u32)
                .to_be_bytes()
                .to_vec();
            f.extend_from_slice(&(head.len() as u32).to_be_bytes());
            f.extend_from_slice(&head);
            f.extend_from_slice(&tail);
            f
        }

        /// A peer's bad frame closes its bulk link the same way however TCP cut
        /// the stream: the in-place reader never reads a frame the codec is in
        /// the middle of.
        #[tokio::test]
        async fn a_bad_frame_between_chunks_fails_alike_however_the_bytes_come() {
            let object = OBJECT;
            let body = vec![5u8; 300];
            let header = [0xc5u8, 1, 44];
            let total = (header.len() + body.len()) as u64;
            let mut stream = framed(object, 0, total, &header);
            // A frame shorter than its own head's length field, then the body.
            stream.extend_from_slice(&[0, 0, 0, 3]);
            stream.extend(framed(object, header.len() as u64, total, &body));
            for pipe in [1, 64 << 10] {
                let (link, _asks) = Link::for_test(Lane::Bulk);
                let inbound = Puller {
                    pulls: Pulls::new(1 << 30),
                    framed: AtomicUsize::new(0),
                    in_place: AtomicUsize::new(0),
                };
                let got = Arc::new(parking_lot::Mutex::new(None));
                let g = got.clone();
                inbound.pulls.start(
                    &link,
                    object,
                    body.len() as u64,
                    Box::new(move |r| *g.lock() = Some(r.map(|v| v.size()))),
                );
                let (mut theirs, mut mine) = tokio::io::duplex(pipe);
                let bytes = stream.clone();
                let writer = tokio::spawn(async move {
                    let _ = theirs.write_all(&bytes).await;
                });
                let closed = read_frames(
                    &mut mine,
                    &mut BytesMut::new(),
                    &link,
                    &inbound,
                    &Rejections::default(),
                )
                .await;
                // The rest of the stream is never read: the writer's end fails.
                drop(mine);
                writer.await.expect("writer");
                assert_eq!(
                    closed.as_deref(),
                    Some("bad bulk frame: shorter than its header"),
                    "pipe of {pipe} bytes"
                );
                assert!(
                    got.lock().as_ref().is_none_or(|r| r.is_err()),
                    "pipe of {pipe} bytes: no value from a stream gone bad"
                );
            }
        }
    }
}
