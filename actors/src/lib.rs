//! The rayx engine: every moving part is an actor with a mailbox.
//!
//! It is layered, and a layer imports only the ones below it:
//!
//! - **base** — [`ids`], [`error`](Error), [`value`], [`messages`], [`config`],
//!   [`faults`], [`events`], [`supervision`], [`functions`], the [`spin`]
//!   policy, large buffers on huge [`pages`], and the thread [`handshake`]s (modelled with loom in `actors/tests/loom.rs`).
//! - **tables** — [`object_table`] (objects, waiters, lineage), [`object_store`]
//!   (the budget for large objects), [`run_queue`], [`directory`], bundled for each
//!   node in [`core`].
//! - **actors** — [`worker`], [`router`], [`actor_host`], [`actor_group`]
//!   (supervision groups of user actors), [`supervisor`], and the
//!   [`cluster`]: the head, node links, object transfer and placement.
//! - **node** — [`node`]: wiring.
//!
//! Engine messages ([`messages`]) carry ids and values, never closures, and are
//! all `Serialize + Deserialize`.

#![warn(missing_docs)]
// One function asks for huge pages (`pages`), its proof beside it; nothing
// else may use `unsafe`.
#![deny(unsafe_code)]

// base
pub mod config;
mod error;
pub mod events;
pub mod faults;
pub mod functions;
pub mod handshake;
pub mod ids;
pub mod messages;
pub mod pages;
pub mod spin;
pub mod supervision;
mod sync;
pub mod value;
// tables
pub mod core;
pub mod directory;
pub mod groups;
pub mod object_store;
pub mod object_table;
pub mod run_queue;
// actors
pub mod actor_group;
pub mod actor_host;
pub mod actor_types;
pub mod cluster;
pub mod router;
pub mod supervisor;
pub mod worker;
// node
pub mod node;

pub use config::NodeConfig;
pub use error::{Error, Result};
pub use node::Node;
