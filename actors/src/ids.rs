//! Identifiers carried by engine messages. Every id names the node (runtime) that
//! made it, so ids are unique across runtimes and processes: a ref or handle
//! decoded elsewhere names its real owner, never a stranger's object.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// The id of a node: one runtime, in this process or another. Drawn at random
/// when the runtime starts (64 bits from the OS's randomness, the time, the
/// process id and a counter), so two runtimes never share one in practice.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh node id.
    pub fn random() -> NodeId {
        use std::collections::hash_map::RandomState;
        use std::hash::BuildHasher;
        use std::sync::atomic::{AtomicU64, Ordering};
        static DRAWN: AtomicU64 = AtomicU64::new(0);
        // RandomState is seeded from the OS once per thread and then stepped, so
        // mix in the time, the process and a counter as well.
        let mut h = RandomState::new().build_hasher();
        h.write_u64(DRAWN.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        NodeId(h.finish().max(1))
    }
}

/// The id of an object: a task's return value, a call's reply or a `put` value.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId {
    /// The node that owns it (Ray's owner address).
    pub node: NodeId,
    /// Its number on that node.
    pub seq: u64,
}

/// The id of a task; a task's return object has the same id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskId(pub ObjectId);

/// The id of an actor.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorId {
    /// The node that created it.
    pub node: NodeId,
    /// Its number on that node.
    pub seq: u64,
}

impl TaskId {
    /// The object that holds this task's return value.
    pub fn return_id(self) -> ObjectId {
        self.0
    }
}

impl ObjectId {
    /// A nonzero 63-bit tag of the id, for a word that holds "which task runs
    /// here" (see `handshake::RunningTask`).
    pub fn tag(self) -> u64 {
        let mixed = (self.seq ^ self.node.0.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 1).max(1)
    }
}

// Ids are already unique: hash one mixed word (see IdHasher), not each field.
impl Hash for ObjectId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.seq ^ self.node.0.rotate_left(32));
    }
}
impl Hash for TaskId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}
impl Hash for ActorId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.seq ^ self.node.0.rotate_left(32));
    }
}

impl std::str::FromStr for NodeId {
    type Err = String;

    /// A node id as it is shown (`node-` and 16 hex digits), or its digits.
    fn from_str(s: &str) -> Result<NodeId, String> {
        let digits = s.strip_prefix("node-").unwrap_or(s);
        match u64::from_str_radix(digits, 16) {
            Ok(id) if id != 0 && !digits.starts_with('+') => Ok(NodeId(id)),
            _ => Err(format!("{s:?} is no node id (node- and 16 hex digits)")),
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{:016x}", self.0)
    }
}
impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "obj-{:x}@{:016x}", self.seq, self.node.0)
    }
}
impl fmt::Debug for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task-{:x}@{:016x}", self.0.seq, self.0.node.0)
    }
}
impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "actor-{:x}@{:016x}", self.seq, self.node.0)
    }
}
macro_rules! display_as_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self, f)
            }
        }
    )*};
}
display_as_debug!(NodeId, ObjectId, TaskId, ActorId);

/// Hasher for ids that are already unique: one multiply instead of SipHash.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A `HashMap` keyed by ids.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_id_reads_back_as_it_is_shown() {
        for id in [
            NodeId(1),
            NodeId(0x5eed),
            NodeId::random(),
            NodeId(u64::MAX),
        ] {
            assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
            assert_eq!(format!("{:x}", id.0).parse::<NodeId>(), Ok(id));
        }
        for bad in [
            "",
            "node-",
            "node-xyz",
            "0",
            "node-0",
            "+1",
            "node-+1",
            "1".repeat(17).as_str(),
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn node_ids_differ_between_draws() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| NodeId::random()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn tags_are_nonzero_and_below_the_top_bit() {
        let node = NodeId::random();
        for seq in 0..10_000 {
            let t = ObjectId { node, seq }.tag();
            assert!(t != 0 && t < 1 << 63);
        }
    }
}

/// A placement group's id: its creator's node and a number from that node,
/// unique across the cluster's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId {
    /// The node that created it.
    pub node: NodeId,
    /// Its number there.
    pub seq: u64,
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pg-{:016x}-{}", self.node.0, self.seq)
    }
}
