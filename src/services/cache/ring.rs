//! Which shard holds a key: rendezvous (highest-random-weight) hashing over
//! the shards' ids, and the ring of shards a client routes by.
//!
//! Every shard scores every key; the highest score owns it. Adding a shard
//! moves to it exactly the keys it now scores highest on (about 1/(n+1) of
//! them), and removing one moves only its own keys: the order of the others
//! is untouched.

use super::shard::CacheShard;
use crate::ActorHandle;
use serde::{Deserialize, Serialize};

/// A key's hash, the same in every process of one build (FNV-1a, then a
/// finalizer so that nearby keys spread).
pub(super) fn key_hash(key: &[u8]) -> u64 {
    mix(crate::services::fnv1a(key))
}

/// SplitMix64's finalizer: a bijection that spreads every input bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The score of shard `id` for a key of hash `hash`.
fn weight(id: u64, hash: u64) -> u64 {
    mix(hash ^ mix(id.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// The shard of `ids` that owns a key of hash `hash`; `None` if there is none.
pub(super) fn owner(ids: impl IntoIterator<Item = u64>, hash: u64) -> Option<u64> {
    ids.into_iter().max_by_key(|&id| (weight(id, hash), id))
}

/// One shard as clients know it (its encoding is in cache.rs: a handle that
/// does not decode is `None`).
#[derive(Clone)]
pub(super) struct Member {
    pub id: u64,
    pub handle: Option<ActorHandle<CacheShard>>,
}

/// The shards of a cache at one epoch (each membership change is the next
/// epoch).
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Ring {
    pub epoch: u64,
    /// The id the next shard added gets (ids are never reused).
    pub next_id: u64,
    pub members: Vec<Member>,
}

impl Ring {
    /// The member that owns a key of hash `hash`.
    pub(super) fn owner(&self, hash: u64) -> Option<&Member> {
        self.members
            .iter()
            .max_by_key(|m| (weight(m.id, hash), m.id))
    }

    /// The members' ids.
    pub(super) fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_shard_moves_only_the_keys_it_takes() {
        let before: Vec<u64> = (0..8).collect();
        let after: Vec<u64> = (0..9).collect();
        let keys = 20_000u64;
        let mut moved = 0;
        let mut per_shard = [0u64; 9];
        for k in 0..keys {
            let h = key_hash(&k.to_le_bytes());
            let (a, b) = (owner(before.clone(), h), owner(after.clone(), h));
            per_shard[b.unwrap() as usize] += 1;
            if a != b {
                assert_eq!(b, Some(8), "a key moves only to the new shard");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        assert!((share - 1.0 / 9.0).abs() < 0.02, "moved {share}");
        // Balanced within 10% of the mean.
        let mean = keys as f64 / 9.0;
        assert!(per_shard
            .iter()
            .all(|&n| (n as f64 - mean).abs() < 0.1 * mean));
    }

    #[test]
    fn no_shards_own_nothing() {
        assert_eq!(owner([], key_hash(b"k")), None);
    }
}
