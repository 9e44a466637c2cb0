//! The function table: remote functions by their stable name. Every node runs
//! the same binary, so every node builds the same table.

use crate::error::Error;
use crate::value::Value;
use std::collections::HashMap;

/// Runs a registered function on its arguments: `Err` if it could not be
/// called (wrong arity or types), `Ok(Err(text))` if it returned an error of its
/// own (an application failure, retried only with `retry_exceptions`).
pub type Invoke = fn(Vec<Value>) -> Result<Result<Value, String>, Error>;

/// Remote functions by name.
#[derive(Default, Clone)]
pub struct FunctionTable {
    map: HashMap<&'static str, Invoke>,
}

impl FunctionTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }
    /// Registers `invoke` under `name`; a later registration of the same name wins.
    pub fn insert(&mut self, name: &'static str, invoke: Invoke) {
        self.map.insert(name, invoke);
    }
    /// The function registered under `name`.
    pub fn get(&self, name: &str) -> Option<Invoke> {
        self.map.get(name).copied()
    }
    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
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
