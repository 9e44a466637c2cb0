//! Ready-made distributed services built from rayx actors: a lock service with
//! fencing tokens ([`lock`]), a sharded transactional key-value store
//! ([`kv`]) and a sharded cache with single-flight computation ([`cache`]).
//!
//! Each service is a set of ordinary rayx actors (registered with
//! [`remote_actor!`](crate::remote_actor), so the head can place them on any
//! node of a cluster and restart them elsewhere) and a client type that holds
//! their handles. What must survive the restart of a service's actor is kept
//! in the runtime's key-value store ([`Runtime::kv_put`](crate::Runtime::kv_put)):
//! the head's in a cluster, the runtime's own outside one.

pub mod cache;
pub mod kv;
pub mod lock;

/// The longest name a service takes (a lock service's, a store's, a
/// cache's): its records in the runtime's key-value store carry it in their
/// keys, which take up to [`MAX_NAME`](crate::MAX_NAME) bytes.
pub const MAX_SERVICE_NAME: usize = 1024;

/// `Err(InvalidArgument)` for a service name over [`MAX_SERVICE_NAME`] bytes.
pub(crate) fn check_service_name(kind: &str, name: &str) -> Result<(), crate::Error> {
    if name.len() > MAX_SERVICE_NAME {
        return Err(crate::Error::InvalidArgument(format!(
            "a {kind}'s name is {} bytes, over the limit of {MAX_SERVICE_NAME}",
            name.len()
        )));
    }
    Ok(())
}

/// The FNV-1a hash of `bytes`: the same in every process and build, so every
/// node of a cluster maps a name or a key to the same shard.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
