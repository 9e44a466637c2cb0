//! # rayx — Ray Core for Rust
//!
//! Tasks, actors and objects with Ray's semantics, on an actix engine.
//!
//! ```
//! use rayx::prelude::*;
//!
//! fn square(x: i64) -> i64 { x * x }
//! rayx::remote!(square);
//!
//! let rt = rayx::init()?;
//! let r = rt.task(square).remote(5);
//! assert_eq!(r.get()?, 25);
//! # Ok::<(), rayx::Error>(())
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod actor;
mod cluster;
mod handle;
mod object_ref;
mod placement_group;
pub mod prelude;
mod remote;
mod remote_actor;
mod runtime;
pub mod services;
pub mod testing;

pub use actor::{
    Actor, ActorBuilder, ActorContext, ActorHandle, AsyncContext, AsyncHandler, AsyncTryHandler,
    CallKind, Handler, Message, Supervisor, SupervisorBuilder, TryHandler, WeakActorHandle,
};
/// A shared, immutable byte buffer (the `bytes` crate's): the type to hold a
/// large binary object in. Cloning one copies a pointer, so a task or `get`
/// that takes it by value shares what the store holds; one that came from
/// another node is read where its chunks landed (in a buffer asked for huge
/// pages from 32 MiB), and one sent to another node goes out from where it
/// lies. That holds for an object that *is* a `Bytes`: one inside a struct or
/// a tuple is encoded and decoded with it, as any field. A `Bytes` you keep
/// after its refs are gone is yours: `rt.memory()` counts objects, not the
/// buffers their readers hold. (A `serde_bytes::ByteBuf` is a `Vec`: taking it
/// by value while the store holds it too is a copy.)
///
/// Across processes a byte buffer is one msgpack value, at most `u32::MAX`
/// bytes; a larger one fails to leave its process with `Error::Serialization`.
pub use bytes::Bytes;
pub use cluster::{Construct, NodeInfo};
pub use handle::{Runtime, WeakRuntime};
pub use object_ref::{GetFuture, ObjectRef, RefList};
pub use placement_group::{
    resources, PlacementGroup, PlacementGroupBuilder, PlacementGroupId, PlacementGroupInfo,
    PlacementGroupState, PlacementStrategy, Resources,
};
pub use rayx_actors::cluster::wire::{ClusterStatus, NodeStatus, MAX_KV_VALUE, MAX_NAME};
pub use rayx_actors::events::{Events, RecvError, SupervisionEvent};
pub use rayx_actors::faults::{FaultPoint, Faults, Trigger};
pub use rayx_actors::ids::NodeId;
pub use rayx_actors::messages::Scheduling;
pub use rayx_actors::messages::{Retries, RetryExceptions};
pub use rayx_actors::object_table::MemoryUsage;
pub use rayx_actors::supervision::Strategy;
pub use rayx_actors::{Error, Result};
pub use remote::{IntoArg, IntoArgs, RemoteFunction, TaskBuilder};
pub use runtime::{init, Builder, Waited};

/// Whether the task running on this thread has been cancelled. A long task
/// checks it now and then and returns early; outside a task it is `false`.
pub fn cancelled() -> bool {
    rayx_actors::worker::current_task_cancelled()
}

/// Values that can be task arguments, results, messages and objects.
pub trait Data: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {}
impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> Data for T {}

#[doc(hidden)]
pub mod __private {
    pub use crate::cluster::{make_async, make_sync, method, ActorRegistration};
    pub use crate::remote::{invoke, name_of, Output, Registration, ReturnsErr, ReturnsValue};
    pub use inventory;
}
