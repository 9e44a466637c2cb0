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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskOptions {
    /// A name for errors and debugging; defaults to the function's name.
    pub name: Option<String>,
    /// Retries after system failures (the worker died); -1 for no limit, 0 for
    /// none. Ray's default is 3. With `retry_exceptions`, panics count too.
    pub max_retries: i32,
    /// Which application failures (panics) are retried.
    pub retry_exceptions: RetryExceptions,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            name: None,
            max_retries: 3,
            retry_exceptions: RetryExceptions::None,
        }
    }
}

impl TaskOptions {
    /// Whether a task that has failed `failures` times may run again.
    pub fn may_retry(&self, failures: usize) -> bool {
        self.max_retries < 0 || failures <= self.max_retries as usize
    }
}

/// Which panics of a task are retried (Ray's `retry_exceptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryExceptions {
    /// None (Ray's default): a panic fails the task.
    #[default]
    None,
    /// Every panic.
    All,
    /// Panics whose message contains one of these strings (Ray's list of
    /// exception types, by message).
    Matching(Vec<String>),
}

impl RetryExceptions {
    /// Whether a panic with this cause is retried.
    pub fn covers(&self, cause: &str) -> bool {
        match self {
            RetryExceptions::None => false,
            RetryExceptions::All => true,
            RetryExceptions::Matching(needles) => {
                needles.iter().any(|n| cause.contains(n.as_str()))
            }
        }
    }
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
