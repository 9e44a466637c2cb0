//! The names most programs use: `use rayx::prelude::*;`.

pub use crate::{
    Actor, ActorContext, ActorHandle, AsyncHandler, Data, Error, Handler, Message, ObjectRef,
    Runtime,
};
pub use serde::{Deserialize, Serialize};
pub use std::time::Duration;
