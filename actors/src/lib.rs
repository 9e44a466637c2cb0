//! The rayx engine: every moving part is an actor with a mailbox.
//!
//! - [`supervisor`]: the root supervisor, and supervision events.
//! - [`router`]: balances jobs over the workers; starts and retires them.
//! - [`worker`]: runs tasks and actor calls, panics caught.
//! - [`owner`]: the object table: values, waiters, reference counts.
//! - [`object_store`]: the budget for large objects.
//! - [`actor_host`]: one user actor's mailbox, state and lifecycle.
//! - [`directory`]: actors by id and by name.
//! - [`faults`]: fault injection for tests and drills (off by default).
//!
//! Engine messages ([`messages`]) carry ids and values, never closures, and are
//! all `Serialize + Deserialize`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod actor_host;
pub mod directory;
mod error;
pub mod faults;
pub mod functions;
pub mod ids;
pub mod messages;
pub mod node;
pub mod object_store;
pub mod owner;
pub mod router;
pub mod supervisor;
pub mod value;
pub mod worker;

pub use error::{Error, Result};
pub use node::{Node, NodeConfig};
