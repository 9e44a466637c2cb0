//! The object store: the node's budget for large objects. Values live in shared
//! memory (one `Arc` per value, no copy); the store admits them against its
//! capacity and counts them, and a slot releases its share when it is freed.
//! It is a table, not an actor: admission is one atomic step on the put path, and
//! there is no state an actor's restart could reset.

use crate::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Accounting of the node's large objects.
///
/// ```
/// use rayx_actors::object_store::ObjectStore;
///
/// let store = ObjectStore::new(100);
/// store.admit(60).unwrap();
/// assert!(store.admit(60).is_err(), "over capacity");
/// store.release(60);
/// assert_eq!(store.usage(), (0, 0));
/// ```
pub struct ObjectStore {
    capacity: u64,
    used: AtomicU64,
    objects: AtomicU64,
}

impl ObjectStore {
    /// A store that admits up to `capacity` bytes.
    pub fn new(capacity: u64) -> Arc<Self> {
        Arc::new(ObjectStore {
            capacity,
            used: AtomicU64::new(0),
            objects: AtomicU64::new(0),
        })
    }

    /// Reserves room for an object of `size` bytes.
    pub fn admit(&self, size: u64) -> Result<(), Error> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(size) > self.capacity {
                return Err(Error::ObjectStoreFull {
                    requested: size,
                    used,
                    capacity: self.capacity,
                });
            }
            match self.used.compare_exchange_weak(
                used,
                used + size,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => used = now,
            }
        }
        self.objects.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Returns the room of a freed object.
    pub fn release(&self, size: u64) {
        self.used.fetch_sub(size, Ordering::AcqRel);
        self.objects.fetch_sub(1, Ordering::Relaxed);
    }

    /// Objects and bytes held now.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.objects.load(Ordering::Relaxed),
            self.used.load(Ordering::Relaxed),
        )
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}
