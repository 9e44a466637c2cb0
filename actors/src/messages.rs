//! The engine's data-plane messages. Each is `Serialize + Deserialize`, so a second
//! node is a new transport rather than a rewrite.

use crate::ids::{ActorId, GroupId, NodeId, ObjectId, TaskId};
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

/// How many times something may be tried again: Ray's `max_retries`,
/// `max_restarts` and `max_task_retries`, where Ray writes `-1` for no limit.
///
/// ```
/// use rayx_actors::messages::Retries;
///
/// let three: Retries = 3.into();
/// assert!(three.allows(3) && !three.allows(4));
/// assert!(Retries::Infinite.allows(u64::MAX));
/// assert!(!Retries::NONE.allows(1));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Retries {
    /// At most this many.
    Finite(u32),
    /// No limit (Ray's `-1`).
    Infinite,
}

impl Retries {
    /// None at all.
    pub const NONE: Retries = Retries::Finite(0);

    /// Whether the `n`-th retry (1 for the first) is allowed.
    pub fn allows(self, n: u64) -> bool {
        match self {
            Retries::Finite(max) => n <= max as u64,
            Retries::Infinite => true,
        }
    }

    /// Whether no retry is allowed.
    pub fn is_none(self) -> bool {
        self == Retries::NONE
    }
}

impl From<u32> for Retries {
    fn from(n: u32) -> Retries {
        Retries::Finite(n)
    }
}

impl std::fmt::Display for Retries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Retries::Finite(n) => write!(f, "{n}"),
            Retries::Infinite => write!(f, "unlimited"),
        }
    }
}

/// Per-call options of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// A name for errors and debugging; defaults to the function's name.
    pub name: Option<String>,
    /// Retries after system failures (the worker or its node died). Ray's
    /// default is 3. With `retry_exceptions`, application failures count too.
    pub max_retries: Retries,
    /// Which application failures (panics, `Err` returns) are retried.
    pub retry_exceptions: RetryExceptions,
    /// Where in a cluster it may run (Ray's scheduling strategy).
    pub scheduling: Scheduling,
    /// CPUs it needs (Ray's `num_cpus`, default 1): only a node with at least
    /// this many runs it.
    pub num_cpus: f64,
    /// Custom resources it needs (Ray's `resources`): only a node that has
    /// them runs it.
    #[serde(default)]
    pub resources: Resources,
    /// The node whose work it is, when it runs for a peer (set where it
    /// runs): a placement group it makes goes with that node.
    #[serde(default)]
    pub owner: Option<NodeId>,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions::DEFAULT
    }
}

/// The defaults, for a spec that carries none of its own.
static DEFAULT_OPTIONS: TaskOptions = TaskOptions::DEFAULT;

/// A task's options as its spec carries them: nothing for the defaults (most
/// tasks), boxed otherwise — 8 bytes in every queued task and every kept
/// lineage instead of 80. Reads see a [`TaskOptions`] either way (`Deref`); a
/// write boxes the defaults first. On the wire it is a `TaskOptions`.
#[derive(Clone, Default)]
pub struct SpecOptions(Option<Box<TaskOptions>>);

impl From<TaskOptions> for SpecOptions {
    fn from(options: TaskOptions) -> Self {
        if options == TaskOptions::DEFAULT {
            SpecOptions(None)
        } else {
            SpecOptions(Some(Box::new(options)))
        }
    }
}

impl std::ops::Deref for SpecOptions {
    type Target = TaskOptions;
    fn deref(&self) -> &TaskOptions {
        self.0.as_deref().unwrap_or(&DEFAULT_OPTIONS)
    }
}

impl std::ops::DerefMut for SpecOptions {
    fn deref_mut(&mut self) -> &mut TaskOptions {
        self.0.get_or_insert_with(|| Box::new(TaskOptions::DEFAULT))
    }
}

impl std::fmt::Debug for SpecOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl Serialize for SpecOptions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for SpecOptions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TaskOptions::deserialize(d).map(SpecOptions::from)
    }
}

impl TaskOptions {
    /// Ray's defaults: up to 3 retries after system failures, none after
    /// application failures, the hybrid policy, one CPU.
    pub const DEFAULT: TaskOptions = TaskOptions {
        name: None,
        max_retries: Retries::Finite(3),
        retry_exceptions: RetryExceptions::None,
        scheduling: Scheduling::Default,
        num_cpus: 1.0,
        resources: Resources::new(),
        owner: None,
    };

    /// Whether a task that has failed `failures` times may run again.
    pub fn may_retry(&self, failures: usize) -> bool {
        self.max_retries.allows(failures as u64)
    }
}

/// Where a task or actor runs in a cluster (Ray's scheduling strategies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub enum Scheduling {
    /// Ray's hybrid policy: on the submitting node while its load is under the
    /// threshold (0.5), else on the least-loaded node that fits.
    #[default]
    Default,
    /// Round-robin over the nodes that fit.
    Spread,
    /// On this node; if it is gone, elsewhere when `soft`, else the task fails
    /// with `Unschedulable`.
    NodeAffinity {
        /// The node.
        node: NodeId,
        /// Whether another node may run it when this one cannot.
        soft: bool,
    },
    /// In a placement group's bundle (or any of its bundles that fits):
    /// on that bundle's node, out of what the bundle reserves.
    PlacementGroup {
        /// The group.
        group: GroupId,
        /// The bundle's index; none: any that fits.
        bundle: Option<u32>,
    },
}

/// Amounts of named resources: `"CPU"` and any custom ones a node declares
/// (Ray's resource dicts).
pub type Resources = std::collections::BTreeMap<String, f64>;

/// Which application failures of a task are retried (Ray's `retry_exceptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryExceptions {
    /// None (Ray's default): a panic or an `Err` fails the task.
    #[default]
    None,
    /// Every one.
    All,
    /// Those whose message contains one of these strings (Ray's list of
    /// exception types, by message).
    Matching(Vec<String>),
}

impl RetryExceptions {
    /// Whether a failure with this cause is retried.
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
    pub options: SpecOptions,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_options_box_only_what_differs_from_the_defaults() {
        let default = SpecOptions::from(TaskOptions::default());
        assert!(default.0.is_none(), "the defaults take no allocation");
        assert_eq!(default.max_retries, Retries::Finite(3));

        let named = SpecOptions::from(TaskOptions {
            name: Some("f".into()),
            ..TaskOptions::default()
        });
        assert_eq!(named.name.as_deref(), Some("f"));
        assert!(named.0.is_some());

        // A write to the defaults boxes them first and changes only this spec.
        let mut written = default.clone();
        written.num_cpus = 2.0;
        assert_eq!(written.num_cpus, 2.0);
        assert_eq!(default.num_cpus, 1.0);
    }

    #[test]
    fn spec_options_are_task_options_on_the_wire() {
        let options = TaskOptions {
            max_retries: Retries::Infinite,
            retry_exceptions: RetryExceptions::Matching(vec!["boom".into()]),
            ..TaskOptions::default()
        };
        let spec = SpecOptions::from(options.clone());
        let bytes = rmp_serde::to_vec(&spec).expect("encodes");
        assert_eq!(bytes, rmp_serde::to_vec(&options).expect("encodes"));
        let back: SpecOptions = rmp_serde::from_slice(&bytes).expect("decodes");
        assert_eq!(*back, options);
        let defaults = rmp_serde::to_vec(&TaskOptions::default()).expect("encodes");
        let back: SpecOptions = rmp_serde::from_slice(&defaults).expect("decodes");
        assert!(
            back.0.is_none(),
            "decoded defaults take no allocation either"
        );
    }
}
