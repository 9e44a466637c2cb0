//! A shard's store: entries by key within a byte budget, the least recently
//! used evicted first, each with an optional expiry.
//!
//! The recency order is a doubly linked list threaded through a slab (indices,
//! no pointers), so a hit, an insert and an eviction are O(1). Expiries sit in
//! a min-heap with lazy deletion: an entry replaced or removed leaves its heap
//! item behind, recognised as stale by its generation when it reaches the top.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Instant;

const NIL: usize = usize::MAX;

/// What a lookup found.
pub(super) enum Found<'a> {
    /// A live entry: its value.
    Hit(&'a [u8]),
    /// An entry whose time was up: it is gone now.
    Expired,
    /// Nothing.
    Miss,
}

/// What an insert did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Inserted {
    /// Whether the entry is in the store (false: larger than the whole budget).
    pub stored: bool,
    /// Entries evicted to make room.
    pub evicted: u64,
}

struct Slot {
    key: Arc<[u8]>,
    value: Vec<u8>,
    expires: Option<Instant>,
    /// Tells this occupant's heap items from those of the slot's earlier ones.
    generation: u64,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
}

impl Slot {
    fn size(&self) -> u64 {
        (self.key.len() + self.value.len()) as u64
    }
}

/// Entries within `capacity` bytes (an entry's size is its key's and its
/// value's encoded bytes).
pub(super) struct Lru {
    index: HashMap<Arc<[u8]>, usize>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// The most recently used.
    head: usize,
    /// The least recently used: the next to evict.
    tail: usize,
    bytes: u64,
    capacity: u64,
    expiries: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    generation: u64,
}

impl Lru {
    /// An empty store of `capacity` bytes.
    pub(super) fn new(capacity: u64) -> Self {
        Lru {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            capacity,
            expiries: BinaryHeap::new(),
            generation: 0,
        }
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// The byte budget.
    pub(super) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The entry under `key`, made the most recently used; an expired one is
    /// removed and reported as such.
    pub(super) fn get(&mut self, key: &[u8], now: Instant) -> Found<'_> {
        let Some(&i) = self.index.get(key) else {
            return Found::Miss;
        };
        if self.slot(i).expires.is_some_and(|t| t <= now) {
            self.remove_at(i);
            return Found::Expired;
        }
        self.unlink(i);
        self.push_front(i);
        Found::Hit(&self.slot(i).value)
    }

    /// Stores `value` under `key` as the most recently used, replacing what
    /// was there and evicting the least recently used until it fits. An entry
    /// larger than the whole budget is not stored (and the old one is gone).
    pub(super) fn insert(
        &mut self,
        key: Arc<[u8]>,
        value: Vec<u8>,
        expires: Option<Instant>,
    ) -> Inserted {
        self.remove(&key);
        let size = (key.len() + value.len()) as u64;
        if size > self.capacity {
            return Inserted::default();
        }
        let mut evicted = 0;
        while self.bytes + size > self.capacity && self.tail != NIL {
            self.remove_at(self.tail);
            evicted += 1;
        }
        self.generation += 1;
        let slot = Slot {
            key: key.clone(),
            value,
            expires,
            generation: self.generation,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        };
        if let Some(t) = expires {
            self.expiries.push(Reverse((t, self.generation, i)));
        }
        self.push_front(i);
        self.index.insert(key, i);
        self.bytes += size;
        Inserted {
            stored: true,
            evicted,
        }
    }

    /// Removes the entry under `key`; true if there was one.
    pub(super) fn remove(&mut self, key: &[u8]) -> bool {
        match self.index.get(key) {
            Some(&i) => {
                self.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Removes every entry whose time is up by `now`; how many there were.
    pub(super) fn reclaim_expired(&mut self, now: Instant) -> u64 {
        let mut reclaimed = 0;
        while let Some(&Reverse((t, generation, i))) = self.expiries.peek() {
            if t > now {
                break;
            }
            self.expiries.pop();
            if self.slots[i]
                .as_ref()
                .is_some_and(|s| s.generation == generation)
            {
                self.remove_at(i);
                reclaimed += 1;
            }
        }
        // Stale items of replaced or removed entries pile up only while their
        // time is not up; past twice the live entries, rebuild (amortised O(1)).
        if self.expiries.len() > 2 * self.index.len() + 64 {
            let live = self.slots.iter().enumerate().filter_map(|(i, s)| {
                let s = s.as_ref()?;
                Some(Reverse((s.expires?, s.generation, i)))
            });
            self.expiries = live.collect();
        }
        reclaimed
    }

    /// Keeps only the entries whose key `keep` accepts; how many went.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) -> u64 {
        let gone: Vec<usize> = self
            .index
            .iter()
            .filter(|(k, _)| !keep(k))
            .map(|(_, &i)| i)
            .collect();
        for &i in &gone {
            self.remove_at(i);
        }
        gone.len() as u64
    }

    fn slot(&self, i: usize) -> &Slot {
        // Indices come from `index` or the list, which hold occupied slots only.
        self.slots[i].as_ref().expect("an occupied slot")
    }

    fn slot_mut(&mut self, i: usize) -> &mut Slot {
        self.slots[i].as_mut().expect("an occupied slot")
    }

    fn remove_at(&mut self, i: usize) {
        self.unlink(i);
        if let Some(slot) = self.slots[i].take() {
            self.index.remove(&slot.key);
            self.bytes -= slot.size();
            self.free.push(i);
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = {
            let s = self.slot(i);
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slot_mut(p).next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slot_mut(n).prev = prev,
        }
        let s = self.slot_mut(i);
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_front(&mut self, i: usize) {
        let head = self.head;
        {
            let s = self.slot_mut(i);
            s.prev = NIL;
            s.next = head;
        }
        match head {
            NIL => self.tail = i,
            h => self.slot_mut(h).prev = i,
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    fn hit(lru: &mut Lru, k: &str) -> Option<Vec<u8>> {
        match lru.get(k.as_bytes(), Instant::now()) {
            Found::Hit(v) => Some(v.to_vec()),
            _ => None,
        }
    }

    #[test]
    fn evicts_the_least_recently_used_by_bytes() {
        // Each entry is 1 + 3 bytes: three fit in 12.
        let mut lru = Lru::new(12);
        for k in ["a", "b", "c"] {
            assert!(lru.insert(key(k), b"xyz".to_vec(), None).stored);
        }
        assert_eq!(lru.bytes(), 12);
        assert!(hit(&mut lru, "a").is_some(), "a is now the most recent");
        let ins = lru.insert(key("d"), b"xyz".to_vec(), None);
        assert_eq!(ins.evicted, 1);
        assert!(hit(&mut lru, "b").is_none(), "b was the least recent");
        assert!(hit(&mut lru, "a").is_some() && hit(&mut lru, "c").is_some());
        // A big entry evicts as many as it needs, oldest first.
        let ins = lru.insert(key("e"), b"1234567".to_vec(), None);
        assert_eq!(ins.evicted, 2);
        assert_eq!(lru.len(), 2);
        // Read last: c, then a, then d; d and a went.
        assert!(hit(&mut lru, "c").is_some() && hit(&mut lru, "e").is_some());
    }

    #[test]
    fn an_entry_larger_than_the_budget_is_not_stored() {
        let mut lru = Lru::new(4);
        lru.insert(key("a"), b"x".to_vec(), None);
        assert!(!lru.insert(key("a"), b"toolong".to_vec(), None).stored);
        assert_eq!(
            (lru.len(), lru.bytes()),
            (0, 0),
            "the old value is gone too"
        );
    }

    #[test]
    fn expired_entries_miss_and_are_reclaimed() {
        let mut lru = Lru::new(100);
        let now = Instant::now();
        lru.insert(key("a"), b"1".to_vec(), Some(now));
        lru.insert(
            key("b"),
            b"2".to_vec(),
            Some(now + Duration::from_secs(3600)),
        );
        lru.insert(key("c"), b"3".to_vec(), Some(now));
        assert!(matches!(lru.get(b"a", now), Found::Expired));
        assert_eq!(lru.reclaim_expired(now), 1, "c; a was already gone");
        assert_eq!((lru.len(), lru.bytes()), (1, 2));
        // Replacing an entry leaves its old expiry behind, stale.
        lru.insert(key("b"), b"2".to_vec(), None);
        assert_eq!(lru.reclaim_expired(now + Duration::from_secs(7200)), 0);
        assert_eq!(lru.len(), 1);
    }

    #[test]
    fn retain_and_remove() {
        let mut lru = Lru::new(100);
        for k in ["a", "b", "c"] {
            lru.insert(key(k), b"v".to_vec(), None);
        }
        assert!(lru.remove(b"b"));
        assert!(!lru.remove(b"b"));
        assert_eq!(lru.retain(|k| k == b"a"), 1);
        assert_eq!((lru.len(), lru.bytes()), (1, 2));
        // Slots are reused.
        lru.insert(key("d"), b"v".to_vec(), None);
        assert_eq!(lru.slots.len(), 3);
    }
}
