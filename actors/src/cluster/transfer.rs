//! Object transfer on the bulk lane: a large value is pulled from a node that
//! holds it in chunks of [`CHUNK`] bytes, at most [`PULL_WINDOW`] chunks in
//! flight, and lands as one buffer. Two pulls of one object share the
//! transfer. The serving side encodes a value once per transfer, off the
//! network thread, and sends slices of that one buffer.

use super::link::Link;
use super::wire::{Msg, CHUNK, PULL_WINDOW};
use crate::error::Error;
use crate::ids::{IdMap, ObjectId};
use crate::value::Value;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::Arc;

/// What to do with a pulled value (or the pull's error).
pub type PullDone = Box<dyn FnOnce(Result<Value, Error>) + Send>;

struct Assembly {
    link: Arc<Link>,
    buf: Vec<u8>,
    total: u64,
    received: u64,
    next: u64,
    done: Vec<PullDone>,
}

/// Pulls in progress on this node.
#[derive(Default)]
pub struct Pulls {
    active: Mutex<IdMap<ObjectId, Assembly>>,
}

impl Pulls {
    /// Pulls `object` (`size` bytes) over `link`; `done` hears the value.
    pub fn start(&self, link: &Arc<Link>, object: ObjectId, size: u64, done: PullDone) {
        let mut active = self.active.lock();
        if let Some(a) = active.get_mut(&object) {
            a.done.push(done);
            return;
        }
        if size == 0 {
            drop(active);
            done(Ok(Value::Encoded(Bytes::new())));
            return;
        }
        let mut a = Assembly {
            link: link.clone(),
            buf: Vec::new(),
            total: size,
            received: 0,
            next: 0,
            done: vec![done],
        };
        if a.buf.try_reserve_exact(size as usize).is_err() {
            drop(active);
            for d in std::mem::take(&mut a.done) {
                d(Err(Error::ObjectStoreFull {
                    requested: size,
                    used: 0,
                    capacity: 0,
                }));
            }
            return;
        }
        a.buf.resize(size as usize, 0);
        for _ in 0..PULL_WINDOW {
            request_next(&mut a, object);
        }
        active.insert(object, a);
    }

    /// A chunk arrived; when it was the last, the value goes to every waiter.
    pub fn on_chunk(&self, object: ObjectId, offset: u64, total: u64, data: Value) {
        let Value::Encoded(bytes) = data else { return };
        let finished = {
            let mut active = self.active.lock();
            let Some(a) = active.get_mut(&object) else {
                return;
            };
            if a.received == 0 && total != a.total && total > 0 {
                // The size asked for was the value's measure; the holder's
                // encoding is the truth (a few header bytes more or less).
                if a.buf
                    .try_reserve_exact((total as usize).saturating_sub(a.buf.len()))
                    .is_err()
                {
                    let a = active.remove(&object).expect("present");
                    drop(active);
                    fail_all(
                        a.done,
                        Error::ObjectStoreFull {
                            requested: total,
                            used: 0,
                            capacity: 0,
                        },
                    );
                    return;
                }
                a.buf.resize(total as usize, 0);
                a.total = total;
            }
            if bytes.is_empty() {
                return;
            }
            let end = offset.checked_add(bytes.len() as u64);
            if total != a.total || end.is_none_or(|e| e > a.total) {
                let a = active.remove(&object).expect("present");
                drop(active);
                fail_all(
                    a.done,
                    Error::Serialization(format!(
                        "a chunk of {object} does not fit the object ({offset}+{} of {total}, expected {})",
                        bytes.len(),
                        a.total
                    )),
                );
                return;
            }
            a.buf[offset as usize..(offset as usize + bytes.len())].copy_from_slice(&bytes);
            a.received += bytes.len() as u64;
            if a.received < a.total {
                request_next(a, object);
                return;
            }
            active.remove(&object).expect("present")
        };
        let value = Value::Encoded(Bytes::from(finished.buf));
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

    /// A bulk link closed: its pulls fail with `error`.
    pub fn link_closed(&self, link: &Link, error: Error) {
        let gone: Vec<Assembly> = {
            let mut active = self.active.lock();
            let ids: Vec<ObjectId> = active
                .iter()
                .filter(|(_, a)| a.link.serial == link.serial)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| active.remove(id)).collect()
        };
        for a in gone {
            fail_all(a.done, error.clone());
        }
    }

    /// Pulls in progress.
    pub fn len(&self) -> usize {
        self.active.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn request_next(a: &mut Assembly, object: ObjectId) {
    if a.next >= a.total {
        return;
    }
    let len = (CHUNK as u64).min(a.total - a.next);
    a.link.send(Msg::Pull {
        object,
        offset: a.next,
        len,
    });
    a.next += len;
}

fn fail_all(done: Vec<PullDone>, error: Error) {
    for d in done {
        d(Err(error.clone()));
    }
}

/// Values being served, encoded once per transfer.
#[derive(Default)]
pub struct Serving {
    encoded: Mutex<IdMap<ObjectId, Bytes>>,
}

impl Serving {
    /// The encoded bytes of `object` if a transfer of it is under way.
    pub fn cached(&self, object: ObjectId) -> Option<Bytes> {
        self.encoded.lock().get(&object).cloned()
    }

    /// Keeps `bytes` for the rest of the transfer.
    pub fn keep(&self, object: ObjectId, bytes: Bytes) {
        self.encoded.lock().insert(object, bytes);
    }

    /// The chunk a pull asks for; the cache is dropped once the last byte is
    /// served.
    pub fn chunk(&self, object: ObjectId, bytes: &Bytes, offset: u64, len: u64) -> Msg {
        let total = bytes.len() as u64;
        let start = offset.min(total);
        let end = offset.saturating_add(len.min(CHUNK as u64)).min(total);
        if end >= total {
            self.encoded.lock().remove(&object);
        }
        Msg::Chunk {
            object,
            offset: start,
            total,
            data: Value::Encoded(bytes.slice(start as usize..end as usize)),
        }
    }
}
