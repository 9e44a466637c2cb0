//! The names most programs use: `use rayx::prelude::*;`.

pub use crate::{
    Actor, ActorContext, ActorHandle, AsyncContext, AsyncHandler, AsyncTryHandler, Data, Error,
    Handler, Message, NodeId, ObjectRef, Retries, Runtime, Scheduling, Strategy, TryHandler,
    WeakActorHandle,
};
pub use serde::{Deserialize, Serialize};
pub use std::time::Duration;
