//! The actor-type table: actor types that can be started by name on any node
//! (their constructor takes an encoded argument) and their methods by
//! message-type name, so a call from another process finds its handler. Every
//! node runs the same binary, so every node builds the same table.

use crate::actor_host::{ActorKind, CopyMessage, Dispatch};
use crate::error::Error;
use crate::value::Value;
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::Arc;

/// Builds an actor's kind (its factory) from its constructor's argument.
pub type MakeActor = fn(Value, Option<usize>) -> Result<ActorKind, Error>;

/// One actor type.
pub struct ActorType {
    /// The Rust type.
    pub type_id: TypeId,
    /// Its name (the registry key).
    pub type_name: &'static str,
    /// Where it was registered (file:line).
    pub site: &'static str,
    /// Builds it from its constructor's argument and `max_concurrency`.
    pub make: MakeActor,
    /// Its methods by message-type name.
    pub methods: HashMap<&'static str, (Dispatch, CopyMessage)>,
}

/// Actor types by name.
#[derive(Default, Clone)]
pub struct ActorTypes {
    map: HashMap<&'static str, Arc<ActorType>>,
}

impl ActorTypes {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a type; a name registered twice is an error naming both sites.
    pub fn insert(&mut self, t: ActorType) -> Result<(), Error> {
        if let Some(first) = self.map.get(t.type_name) {
            return Err(Error::InvalidArgument(format!(
                "actor type `{}` is registered twice: at {} and at {}",
                t.type_name, first.site, t.site
            )));
        }
        self.map.insert(t.type_name, Arc::new(t));
        Ok(())
    }

    /// The type registered under `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<ActorType>> {
        self.map.get(name)
    }

    /// Every registered name, with each method as `Type::Message`: the part
    /// of a node's registry digest that actors contribute.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for (name, t) in &self.map {
            names.push(format!("actor {name}"));
            for m in t.methods.keys() {
                names.push(format!("method {name}::{m}"));
            }
        }
        names
    }
}
