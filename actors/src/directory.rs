//! The actor directory: actors by id and by name (Ray's named actors), and the
//! detached actors that live on with no handle left.

use crate::actor_host::ActorHost;
use crate::error::Error;
use crate::ids::{ActorId, IdMap};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

type Names = HashMap<(String, String), Weak<ActorHost>>;

/// Live actors by id and name. Entries of freed actors are swept as it grows.
#[derive(Default)]
pub struct Directory {
    ids: Mutex<(IdMap<ActorId, Weak<ActorHost>>, usize)>,
    names: Mutex<Names>,
    detached: Mutex<IdMap<ActorId, Arc<ActorHost>>>,
}

fn live(w: &Weak<ActorHost>) -> Option<Arc<ActorHost>> {
    w.upgrade().filter(|h| !h.is_dead())
}

impl Directory {
    /// Adds an actor, claiming its name; with `get_if_exists` an existing actor
    /// of that name is returned instead (the bool says it already existed).
    pub fn register(
        &self,
        name: Option<(String, String)>,
        get_if_exists: bool,
        create: impl FnOnce() -> Arc<ActorHost>,
    ) -> Result<(Arc<ActorHost>, bool), Error> {
        let host = match name {
            None => create(),
            Some(key) => {
                let mut names = self.names.lock();
                if let Some(existing) = names.get(&key).and_then(live) {
                    if get_if_exists {
                        return Ok((existing, true));
                    }
                    return Err(Error::ActorNameTaken {
                        namespace: key.0,
                        name: key.1,
                    });
                }
                let host = create();
                if names.len() > 1024 {
                    names.retain(|_, w| live(w).is_some());
                }
                names.insert(key, Arc::downgrade(&host));
                host
            }
        };
        {
            let mut ids = self.ids.lock();
            let (map, sweep_at) = &mut *ids;
            map.insert(host.id(), Arc::downgrade(&host));
            if map.len() >= (*sweep_at).max(1024) {
                map.retain(|_, w| w.strong_count() > 0);
                *sweep_at = map.len() * 2;
            }
        }
        if host.is_detached() {
            self.detached.lock().insert(host.id(), host.clone());
        }
        Ok((host, false))
    }

    /// The live actor named `name` in `namespace`.
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<Arc<ActorHost>> {
        self.names
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(live)
    }

    /// The live actor with this id.
    pub fn by_id(&self, id: ActorId) -> Option<Arc<ActorHost>> {
        self.ids.lock().0.get(&id).and_then(live)
    }

    /// Forgets a killed actor, so a detached one can be freed.
    pub fn forget(&self, id: ActorId) {
        self.detached.lock().remove(&id);
    }

    /// Kills every actor (at shutdown).
    pub fn kill_all(&self, cause: &str) {
        let hosts: Vec<Arc<ActorHost>> = self
            .ids
            .lock()
            .0
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for h in hosts {
            h.kill(cause);
        }
        self.detached.lock().clear();
        self.names.lock().clear();
    }
}
