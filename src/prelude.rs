//! The names most programs use: `use rayx::prelude::*;`.

pub use crate::{
    Actor, ActorContext, ActorHandle, AsyncContext, AsyncHandler, Data, Error, Handler, Message,
    ObjectRef, Retries, Runtime, WeakActorHandle,
};
pub use serde::{Deserialize, Serialize};
pub use std::time::Duration;
