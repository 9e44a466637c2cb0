//! The function table: remote functions by their stable name. Every node runs
//! the same binary, so every node builds the same table.

use crate::error::Error;
use crate::value::Value;
use std::collections::HashMap;

/// Runs a registered function on its arguments: `Err` if it could not be
/// called (wrong arity or types), `Ok(Err(text))` if it returned an error of its
/// own (an application failure, retried only with `retry_exceptions`).
pub type Invoke = fn(Vec<Value>) -> Result<Result<Value, String>, Error>;

/// Remote functions by name, with where each was registered.
#[derive(Default, Clone)]
pub struct FunctionTable {
    map: HashMap<&'static str, (Invoke, &'static str)>,
}

impl FunctionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers `invoke` under `name`, registered at `site` (file:line). A
    /// name registered twice is an error that names both sites: every node must
    /// mean the same function by a name.
    pub fn insert(
        &mut self,
        name: &'static str,
        site: &'static str,
        invoke: Invoke,
    ) -> Result<(), Error> {
        if let Some((_, first)) = self.map.get(name) {
            return Err(Error::InvalidArgument(format!(
                "remote function `{name}` is registered twice: at {first} and at {site}"
            )));
        }
        self.map.insert(name, (invoke, site));
        Ok(())
    }
    /// The function registered under `name`.
    pub fn get(&self, name: &str) -> Option<Invoke> {
        self.map.get(name).map(|(invoke, _)| *invoke)
    }
    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
    /// Every registered name (the functions' part of a node's registry digest).
    pub fn names(&self) -> Vec<String> {
        self.map.keys().map(|n| format!("fn {n}")).collect()
    }
    /// How many functions are registered.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
