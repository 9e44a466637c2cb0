//! The atomics and the lock of the engine's thread handshakes, named in one
//! place: the handshake module uses only these, so the loom models in
//! `actors/tests/loom.rs` compile the same file against loom's versions.

pub(crate) use parking_lot::Mutex;
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
