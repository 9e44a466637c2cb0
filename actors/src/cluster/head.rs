//! The head (Ray's GCS): the node table with each node's last report, actor
//! placement and the cluster-wide directory of named actors, and a small
//! key-value store. It lives in the process that started the cluster (a
//! driver, or `rayx start --head`) and answers [`Ask`]s from every node.

use super::link::Link;
use super::placement::{place, Candidate};
use super::wire::{
    ActorPlace, Answer, Ask, ClusterStatus, Hello, Msg, NodeInfo, NodeStatus, Rejections, Report,
};
use crate::error::Error;
use crate::ids::{ActorId, IdMap, NodeId};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

struct Member {
    info: NodeInfo,
    alive: bool,
    cause: Option<String>,
    report: Report,
    /// Actors placed there and not gone.
    actors: u32,
    link: Option<Arc<Link>>,
}

struct Placed {
    place: ActorPlace,
    name: Option<(String, String)>,
}

#[derive(Default)]
struct Tables {
    /// In the order they joined.
    nodes: Vec<Member>,
    actors: IdMap<ActorId, Placed>,
    names: HashMap<(String, String), ActorId>,
    kv: HashMap<String, Vec<u8>>,
}

/// The head of a cluster.
pub struct Head {
    /// The cluster's registry; a standalone head (`rayx start --head`, a
    /// binary without the user's functions) takes the first node's.
    registry: Mutex<Option<BTreeSet<String>>>,
    tables: Mutex<Tables>,
    spread: AtomicUsize,
    rejections: Arc<Rejections>,
}

impl Head {
    /// A head whose cluster runs a binary with this registry; `me` is the
    /// node of its own process.
    pub fn new(me: NodeInfo, registry: Option<Vec<String>>, rejections: Arc<Rejections>) -> Head {
        let head = Head {
            registry: Mutex::new(registry.map(|r| r.into_iter().collect())),
            tables: Mutex::default(),
            spread: AtomicUsize::new(0),
            rejections,
        };
        head.tables.lock().nodes.push(Member {
            info: me,
            alive: true,
            cause: None,
            report: Report::default(),
            actors: 0,
            link: None,
        });
        head
    }

    /// Checks a joining node's registry against the cluster's; the error
    /// names what differs.
    pub fn check_join(&self, hello: &Hello) -> Result<Vec<NodeInfo>, String> {
        let theirs: BTreeSet<String> = hello.registry.iter().cloned().collect();
        let mut registry = self.registry.lock();
        let ours = registry.get_or_insert_with(|| theirs.clone());
        if theirs != *ours {
            let only = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
                a.difference(b)
                    .take(8)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut parts = Vec::new();
            let missing = only(ours, &theirs);
            let extra = only(&theirs, ours);
            if !missing.is_empty() {
                parts.push(format!("not registered on the joining node: {missing}"));
            }
            if !extra.is_empty() {
                parts.push(format!("registered only on the joining node: {extra}"));
            }
            return Err(format!(
                "registry mismatch (every node must run the same binary): {}",
                parts.join("; ")
            ));
        }
        drop(registry);
        Ok(self.live())
    }

    /// The live nodes.
    pub fn live(&self) -> Vec<NodeInfo> {
        let t = self.tables.lock();
        t.nodes
            .iter()
            .filter(|m| m.alive)
            .map(|m| m.info.clone())
            .collect()
    }

    /// A node joined on `link`: it is announced to every other node.
    pub fn joined(&self, link: &Arc<Link>) {
        let info = link.peer.clone();
        let others: Vec<Arc<Link>> = {
            let mut t = self.tables.lock();
            let others = t.nodes.iter().filter_map(|m| m.link.clone()).collect();
            t.nodes.push(Member {
                info: info.clone(),
                alive: true,
                cause: None,
                report: Report::default(),
                actors: 0,
                link: Some(link.clone()),
            });
            others
        };
        for l in others {
            l.send(Msg::NodeJoined(info.clone()));
        }
    }

    /// A node died (`cause`): marked dead for good, its actors forgotten, and
    /// every other node told. Returns false if it was already dead.
    pub fn left(&self, node: NodeId, cause: &str) -> bool {
        let others: Vec<Arc<Link>> = {
            let mut t = self.tables.lock();
            let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == node && m.alive) else {
                return false;
            };
            m.alive = false;
            m.cause = Some(cause.to_string());
            m.link = None;
            let gone: Vec<ActorId> = t
                .actors
                .iter()
                .filter(|(_, p)| p.place.node == node)
                .map(|(id, _)| *id)
                .collect();
            for id in gone {
                forget_actor(&mut t, id);
            }
            t.nodes.iter().filter_map(|m| m.link.clone()).collect()
        };
        for l in others {
            l.send(Msg::NodeLeft {
                node,
                cause: cause.to_string(),
            });
        }
        true
    }

    /// A node's heartbeat.
    pub fn report(&self, node: NodeId, report: Report) {
        let mut t = self.tables.lock();
        if let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == node) {
            m.report = report;
        }
    }

    /// Every live node's link (to stop them).
    pub fn links(&self) -> Vec<Arc<Link>> {
        let t = self.tables.lock();
        t.nodes.iter().filter_map(|m| m.link.clone()).collect()
    }

    /// Answers a request.
    pub fn ask(&self, ask: Ask, my_report: Report) -> Result<Answer, Error> {
        let mut t = self.tables.lock();
        if let Some(me) = t.nodes.first_mut() {
            me.report = my_report;
        }
        match ask {
            Ask::Status => Ok(Answer::Status(ClusterStatus {
                nodes: t
                    .nodes
                    .iter()
                    .map(|m| NodeStatus {
                        info: m.info.clone(),
                        alive: m.alive,
                        cause: m.cause.clone(),
                        report: m.report,
                    })
                    .collect(),
                actors: t
                    .actors
                    .values()
                    .map(|p| (p.place.clone(), p.name.clone()))
                    .collect(),
                rejections: self.rejections.snapshot(),
            })),
            Ask::PlaceActor {
                actor,
                type_name,
                name,
                get_if_exists,
                cpus,
                scheduling,
                from,
            } => {
                if let Some(key) = &name {
                    if let Some(existing) = t.names.get(key).and_then(|id| t.actors.get(id)) {
                        if get_if_exists {
                            return Ok(Answer::Actor(existing.place.clone()));
                        }
                        return Err(Error::ActorNameTaken {
                            namespace: key.0.clone(),
                            name: key.1.clone(),
                        });
                    }
                }
                let candidates: Vec<Candidate> = t
                    .nodes
                    .iter()
                    .filter(|m| m.alive)
                    .map(|m| Candidate {
                        id: m.info.id,
                        cpus: m.info.cpus,
                        load: m.report.load as f64 + m.actors as f64,
                    })
                    .collect();
                let node =
                    place(&candidates, from, scheduling, cpus, &self.spread).map_err(|reason| {
                        Error::Unschedulable {
                            task: type_name.clone(),
                            reason,
                        }
                    })?;
                let member = t
                    .nodes
                    .iter_mut()
                    .find(|m| m.info.id == node)
                    .expect("placed on a live node");
                member.actors += 1;
                let info = member.info.clone();
                if let Some(key) = &name {
                    t.names.insert(key.clone(), actor);
                }
                t.actors.insert(
                    actor,
                    Placed {
                        place: ActorPlace {
                            actor,
                            node,
                            type_name,
                        },
                        name,
                    },
                );
                Ok(Answer::Placed(info))
            }
            Ask::ActorGone { actor } => {
                forget_actor(&mut t, actor);
                Ok(Answer::Done)
            }
            Ask::LookupActor { namespace, name } => {
                let key = (namespace, name);
                match t.names.get(&key).and_then(|id| t.actors.get(id)) {
                    Some(p) => Ok(Answer::Actor(p.place.clone())),
                    None => Err(Error::ActorNotFound {
                        name: key.1,
                        namespace: key.0,
                    }),
                }
            }
            Ask::KvPut {
                key,
                value,
                overwrite,
            } => {
                if !overwrite && t.kv.contains_key(&key) {
                    return Ok(Answer::Stored(false));
                }
                t.kv.insert(key, value);
                Ok(Answer::Stored(true))
            }
            Ask::KvGet { key } => Ok(Answer::Value(
                t.kv.get(&key).cloned().map(serde_bytes::ByteBuf::from),
            )),
            Ask::KvDelete { key } => Ok(Answer::Stored(t.kv.remove(&key).is_some())),
            Ask::StopCluster => Ok(Answer::Done),
        }
    }
}

fn forget_actor(t: &mut Tables, actor: ActorId) {
    if let Some(p) = t.actors.remove(&actor) {
        if let Some(key) = p.name {
            if t.names.get(&key) == Some(&actor) {
                t.names.remove(&key);
            }
        }
        if let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == p.place.node) {
            m.actors = m.actors.saturating_sub(1);
        }
    }
}
