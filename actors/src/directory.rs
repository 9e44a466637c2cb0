//! The actor directory: actors by id and by name (Ray's named actors), and the
//! detached actors that live on with no handle left.

use crate::error::Error;
use crate::ids::{ActorId, IdMap};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// What the directory needs of an actor.
pub trait Entry: Send + Sync {
    /// Its id.
    fn id(&self) -> ActorId;
    /// Whether it died.
    fn is_dead(&self) -> bool;
    /// Whether it lives on with no handle left.
    fn is_detached(&self) -> bool;
    /// Kills it (at shutdown).
    fn kill(self: &Arc<Self>, cause: &str);
}

type Names<H> = HashMap<(String, String), Weak<H>>;

/// Live actors by id and name. Entries of freed actors are swept as it grows.
pub struct Directory<H> {
    ids: Mutex<(IdMap<ActorId, Weak<H>>, usize)>,
    names: Mutex<Names<H>>,
    detached: Mutex<IdMap<ActorId, Arc<H>>>,
}

impl<H> Default for Directory<H> {
    fn default() -> Self {
        Directory {
            ids: Mutex::default(),
            names: Mutex::default(),
            detached: Mutex::default(),
        }
    }
}

fn live<H: Entry>(w: &Weak<H>) -> Option<Arc<H>> {
    w.upgrade().filter(|h| !h.is_dead())
}

impl<H: Entry> Directory<H> {
    /// Adds an actor, claiming its name; with `get_if_exists` an existing actor
    /// of that name is returned instead (the bool says it already existed).
    pub fn register(
        &self,
        name: Option<(String, String)>,
        get_if_exists: bool,
        create: impl FnOnce() -> Arc<H>,
    ) -> Result<(Arc<H>, bool), Error> {
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
    pub fn by_name(&self, namespace: &str, name: &str) -> Option<Arc<H>> {
        self.names
            .lock()
            .get(&(namespace.to_string(), name.to_string()))
            .and_then(live)
    }

    /// The live actor with this id.
    pub fn by_id(&self, id: ActorId) -> Option<Arc<H>> {
        self.ids.lock().0.get(&id).and_then(live)
    }

    /// Live actors now.
    pub fn live_count(&self) -> usize {
        self.ids
            .lock()
            .0
            .values()
            .filter(|w| live(w).is_some())
            .count()
    }

    /// Forgets a killed actor, so a detached one can be freed.
    pub fn forget(&self, id: ActorId) {
        // Dropped after the lock is released: it may be the actor's last handle.
        let gone = self.detached.lock().remove(&id);
        drop(gone);
    }

    /// Kills every actor (at shutdown).
    pub fn kill_all(&self, cause: &str) {
        let hosts: Vec<Arc<H>> = self
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
