//! The engine's data-plane messages. Each is `Serialize + Deserialize`, so a second
//! node is a new transport rather than a rewrite.

use crate::ids::{ActorId, ObjectId, TaskId};
use crate::value::Value;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// One argument of a task: a value, or an object that must be ready first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Arg {
    /// A value passed inline.
    Value(Value),
    /// An object; the owner resolves it to its value before dispatch.
    Ref(ObjectId),
}

/// Per-call options of a task.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskOptions {
    /// A name for errors and debugging; defaults to the function's name.
    pub name: Option<String>,
}

/// A task as the owner holds it and the router dispatches it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's id; its return object has the same number.
    pub task_id: TaskId,
    /// The registered name of the function to run.
    pub function: Cow<'static, str>,
    /// The arguments, in order.
    pub args: Vec<Arg>,
    /// Options given at the call.
    pub options: TaskOptions,
}

impl TaskSpec {
    /// The name errors use: the option's name, else the function's.
    pub fn display_name(&self) -> &str {
        self.options.name.as_deref().unwrap_or(&self.function)
    }
}

/// A call to an actor's method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorCall {
    /// The actor called.
    pub actor: ActorId,
    /// The method's (message type's) name.
    pub method: Cow<'static, str>,
    /// The message.
    pub message: Value,
    /// Where the reply goes.
    pub reply_to: ObjectId,
}

/// A task's or call's outcome, as reported to the owner of its return object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResult {
    /// The return object.
    pub object: ObjectId,
    /// The value, or the error that took its place.
    pub result: Result<Value, crate::Error>,
}
