//! The head (Ray's GCS): the node table with each node's last report, actor
//! placement and the cluster-wide directory of named actors, and a small
//! key-value store. It lives in the process that started the cluster (a
//! driver, or `rayx start --head`) and answers [`Ask`]s from every node.
//!
//! With a database ([`HeadStore`]) its tables are written through on every
//! change; a head started again on the same file takes its cluster back: the
//! nodes that were alive have a while to rejoin (with their ids) before they
//! are declared dead, and actors, names and the key-value store are as they were.

use super::link::Link;
use super::placement::{place_work, Candidate};
use super::session::Session;
use super::store::{self, ActorRecord, GroupRecord, HeadStore, NodeRecord};
use super::wire::{
    self, ActorCreate, ActorPlace, Answer, Ask, ClusterStatus, Hello, JobInfo, JobState, Msg,
    NodeInfo, NodeStatus, Rejections, Report,
};
use crate::error::Error;
use crate::groups::{self, Free, GroupInfo, GroupState, Resources, CPU};
use crate::ids::{ActorId, GroupId, IdMap, NodeId};
use crate::messages::{Retries, Scheduling};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

struct Member {
    info: NodeInfo,
    alive: bool,
    cause: Option<String>,
    /// When it was declared dead (ms since the Unix epoch).
    died: u64,
    report: Report,
    /// Actors placed there and not gone.
    actors: u32,
    /// Its join link: the latest, open or broken; it carries the member's
    /// session, kept across its links.
    link: Option<Arc<Link>>,
    /// It said it stops in order (or its job finished): its link's closing
    /// is its leaving.
    leaving: bool,
    /// It drains (or leaves): no new work goes there, and its actors restart
    /// elsewhere without using up a restart when it goes, however it goes
    /// (Ray's preemption).
    draining: bool,
    /// When it was last heard from.
    heard: Instant,
    /// Its record's key in the database.
    key: String,
}

/// How long a node the head found alive in its database has to rejoin a
/// head started again, at least.
pub const REJOIN_GRACE: Duration = Duration::from_secs(10);

/// How many dead nodes the head, and each node, remembers by default (Ray's
/// `maximum_gcs_dead_node_cached_count`): beyond it the oldest death is
/// forgotten, so drivers that come and go leave no growth. A node forgotten
/// is unknown — as one never seen — rather than dead.
pub const DEAD_NODES_KEPT: usize = 1000;

struct Placed {
    place: ActorPlace,
    name: Option<(String, String)>,
    restart: Option<Restart>,
}

/// How to start an actor again on another node when its node dies.
struct Restart {
    create: ActorCreate,
    cpus: f64,
    resources: Resources,
    scheduling: Scheduling,
    /// Restarts on other nodes so far.
    done: u64,
}

/// A restart under way: where, and the death that caused it.
struct Restarting {
    node: NodeId,
    died: NodeId,
    cause: String,
    retries: Retries,
}

/// What a node's death does to its actors.
pub struct Left {
    /// Actors to start again: each on its new node.
    pub restarts: Vec<(ActorCreate, NodeId)>,
    /// `ActorMoved` for actors gone for good (sent to every other node
    /// already; the head's own node applies them).
    pub gone: Vec<Msg>,
}

#[derive(Default)]
struct Tables {
    /// In the order they joined.
    nodes: Vec<Member>,
    actors: IdMap<ActorId, Placed>,
    names: HashMap<(String, String), ActorId>,
    kv: HashMap<String, Vec<u8>>,
    restarting: IdMap<ActorId, Restarting>,
    /// The next node record's sequence number.
    next_seq: usize,
    /// Jobs, in the order they began.
    jobs: Vec<JobInfo>,
    /// Live placement groups.
    groups: HashMap<GroupId, Group>,
    /// Named placement groups.
    group_names: HashMap<(String, String), GroupId>,
    /// Groups with a bundle not placed, in the order they were created:
    /// placed when room appears (a node joins, a group goes).
    unplaced: Vec<GroupId>,
    /// The last version given to a group's change.
    group_version: u64,
}

/// A placement group as the head keeps it.
struct Group {
    info: GroupInfo,
    creator: NodeId,
    /// Which bundles their node has taken (in the group's current version).
    acked: Vec<bool>,
}

fn group_record(g: &Group) -> Record {
    let r = GroupRecord {
        info: g.info.clone(),
        creator: g.creator,
    };
    (store::group_key(g.info.id), HeadStore::encode(&r))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn job_record(job: &JobInfo) -> Record {
    (store::job_key(job), HeadStore::encode(job))
}

impl Tables {
    /// Where an actor goes: among the nodes linked now, or if none of them
    /// can take it, also among those whose join link is down for a moment
    /// (its session carries what is sent meanwhile; a node that does not
    /// come back is declared dead, and what waits for it fails).
    fn place(
        &self,
        local: NodeId,
        scheduling: Scheduling,
        need: f64,
        resources: &Resources,
        turn: &AtomicUsize,
    ) -> Result<NodeId, String> {
        let reserved = self.reserved();
        let group = |id: GroupId| match self.groups.get(&id) {
            Some(g) => Ok(Some(g.info.clone())),
            None => Err(Error::PlacementGroupRemoved {
                group: id.to_string(),
            }),
        };
        let free = |node: NodeId| {
            let m = self.nodes.iter().find(|m| m.info.id == node)?;
            let mut free = m.info.resources.clone();
            if let Some(r) = reserved.get(&node) {
                groups::take(&mut free, r);
            }
            Some(free)
        };
        let at = |open| {
            place_work(
                &self.candidates(open, &reserved),
                local,
                scheduling,
                need,
                resources,
                turn,
                group,
                free,
            )
        };
        at(true).or_else(|_| at(false))
    }

    /// What the live groups reserve, per node.
    fn reserved(&self) -> HashMap<NodeId, Resources> {
        let mut reserved: HashMap<NodeId, Resources> = HashMap::new();
        for g in self.groups.values() {
            for (b, n) in g.info.bundles.iter().zip(&g.info.nodes) {
                if let Some(n) = n {
                    let r = reserved.entry(*n).or_default();
                    for (k, v) in b {
                        *r.entry(k.clone()).or_insert(0.0) += v;
                    }
                }
            }
        }
        reserved
    }

    /// The nodes bundles may go to, with what each has free for them.
    fn free_for_bundles(&self) -> Vec<Free> {
        let reserved = self.reserved();
        self.placeable(true)
            .map(|m| {
                let mut free = groups::capacity(m.info.cpus, &m.info.resources);
                if let Some(r) = reserved.get(&m.info.id) {
                    groups::take(&mut free, r);
                }
                Free {
                    id: m.info.id,
                    free,
                }
            })
            .collect()
    }

    /// A group's change: its next version, written through, and the news
    /// for every node.
    fn changed(&mut self, id: GroupId, records: &mut Vec<Record>) -> Option<GroupInfo> {
        self.group_version += 1;
        let version = self.group_version;
        let head = self.nodes.first().map(|m| m.info.id);
        let g = self.groups.get_mut(&id)?;
        g.info.version = version;
        if g.info.state != GroupState::Removed && g.info.placed() {
            // The head's own node takes its bundles as it hears of them.
            for (a, n) in g.acked.iter_mut().zip(&g.info.nodes) {
                *a |= *n == head;
            }
            if g.acked.iter().all(|a| *a) {
                g.info.state = GroupState::Created;
            }
        }
        records.push(group_record(g));
        Some(g.info.clone())
    }

    /// Places what it can of the groups waiting for room, in order; the
    /// news of those placed.
    fn place_groups(&mut self, only: Option<GroupId>, records: &mut Vec<Record>) -> Vec<GroupInfo> {
        let mut news = Vec::new();
        let waiting: Vec<GroupId> = match only {
            Some(id) => vec![id],
            None => self.unplaced.clone(),
        };
        // What each node has free, once; less what each group placed takes.
        let mut free = self.free_for_bundles();
        for id in waiting {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            match groups::place_bundles(g.info.strategy, &g.info.bundles, &g.info.nodes, &free) {
                Ok(nodes) => {
                    for (i, n) in nodes.into_iter().enumerate() {
                        if g.info.nodes[i].is_none() {
                            g.info.nodes[i] = Some(n);
                            g.acked[i] = false;
                            if let Some(f) = free.iter_mut().find(|f| f.id == n) {
                                groups::take(&mut f.free, &g.info.bundles[i]);
                            }
                        }
                    }
                    self.unplaced.retain(|u| *u != id);
                    news.extend(self.changed(id, records));
                }
                Err(why) => {
                    tracing::debug!("rayx: placement group {id} waits for room: {why}");
                }
            }
        }
        news
    }

    /// Removes a group: the news of its removal.
    fn remove_group(&mut self, id: GroupId, records: &mut Vec<Record>) -> Option<GroupInfo> {
        let mut g = self.groups.remove(&id)?;
        self.unplaced.retain(|u| *u != id);
        if let Some(key) = &g.info.name {
            if self.group_names.get(key) == Some(&id) {
                self.group_names.remove(key);
            }
        }
        self.group_version += 1;
        g.info.version = self.group_version;
        g.info.state = GroupState::Removed;
        records.push((store::group_key(id), store::Change::Delete));
        Some(g.info)
    }

    /// The members work may go to: alive, not draining, and linked — the
    /// head's own node (the first), or one whose link is open (`open`) or
    /// may be down for a moment.
    fn placeable(&self, open: bool) -> impl Iterator<Item = &Member> {
        self.nodes.iter().enumerate().filter_map(move |(i, m)| {
            let linked = i == 0 || m.link.as_ref().is_some_and(|l| !open || !l.is_closed());
            (m.alive && !m.draining && linked).then_some(m)
        })
    }

    /// The nodes work may be placed on: alive, and linked — the head's own
    /// node (the first), or a node that joined or rejoined, whose link is
    /// open (`open`) or may be down for a moment. A node a head started
    /// again found in its database is not, until it rejoins.
    fn candidates(&self, open: bool, reserved: &HashMap<NodeId, Resources>) -> Vec<Candidate> {
        self.placeable(open)
            .map(|m| Candidate {
                id: m.info.id,
                cpus: m.info.cpus
                    - reserved
                        .get(&m.info.id)
                        .and_then(|r| r.get(CPU))
                        .copied()
                        .unwrap_or(0.0),
                load: m.report.load as f64 + m.actors as f64,
            })
            .collect()
    }

    /// Forgets the dead beyond the latest `kept` deaths, the oldest first
    /// (the earlier listed of two that died in the same millisecond); the
    /// records to delete.
    fn forget_old_deaths(&mut self, kept: usize) -> Vec<Record> {
        let mut dead = self.nodes.iter().filter(|m| !m.alive).count();
        let mut forgotten = Vec::new();
        while dead > kept {
            let oldest = (0..self.nodes.len())
                .filter(|&i| !self.nodes[i].alive)
                .min_by_key(|&i| self.nodes[i].died);
            let Some(i) = oldest else { break };
            forgotten.push((self.nodes.remove(i).key, store::Change::Delete));
            dead -= 1;
        }
        forgotten
    }

    fn new_member(&mut self, info: NodeInfo, link: Option<Arc<Link>>) -> &Member {
        let key = store::node_key(self.next_seq, info.id);
        self.next_seq += 1;
        self.nodes.push(Member {
            info,
            alive: true,
            cause: None,
            died: 0,
            report: Report::default(),
            actors: 0,
            link,
            leaving: false,
            draining: false,
            heard: Instant::now(),
            key,
        });
        self.nodes.last().expect("pushed")
    }
}

type Record = (String, store::Change);

fn node_record(m: &Member) -> Record {
    let r = NodeRecord {
        info: m.info.clone(),
        alive: m.alive,
        cause: m.cause.clone(),
        died: m.died,
    };
    (m.key.clone(), HeadStore::encode(&r))
}

fn actor_record(p: &Placed) -> Record {
    let r = ActorRecord {
        place: p.place.clone(),
        name: p.name.clone(),
        restart: p
            .restart
            .as_ref()
            .map(|r| (r.create.clone(), r.cpus, r.scheduling, r.done)),
        resources: p
            .restart
            .as_ref()
            .map(|r| r.resources.clone())
            .unwrap_or_default(),
    };
    (store::actor_key(p.place.actor), HeadStore::encode(&r))
}

/// The head of a cluster.
pub struct Head {
    /// The cluster's registry; a standalone head (`rayx start --head`, a
    /// binary without the user's functions) takes the first node's.
    registry: Mutex<Option<BTreeSet<String>>>,
    tables: Mutex<Tables>,
    spread: AtomicUsize,
    rejections: Arc<Rejections>,
    /// Where the tables are written through, if anywhere.
    store: Mutex<Option<HeadStore>>,
    /// How many dead nodes it lists (see [`DEAD_NODES_KEPT`]).
    dead_kept: usize,
    /// Where the head's own node hears of placement groups' changes (the
    /// others hear by message).
    group_news: OnceLock<GroupNews>,
}

/// A node's hearing of placement groups' changes.
pub type GroupNews = Box<dyn Fn(Vec<GroupInfo>) + Send + Sync>;

impl Head {
    /// A head whose cluster runs a binary with this registry; `me` is the
    /// node of its own process. With a database, what it holds is the
    /// cluster's state (a head started again): the old head's node is dead,
    /// and the nodes that were alive have [`REJOIN_GRACE`] (or the health
    /// limit, if longer) to rejoin.
    pub fn new(
        me: NodeInfo,
        registry: Option<Vec<String>>,
        rejections: Arc<Rejections>,
        store: Option<HeadStore>,
        dead_kept: usize,
    ) -> Result<Head, Error> {
        // A head that knows the registry runs the user's program: a driver.
        let standalone = registry.is_none();
        let mut tables = Tables::default();
        let mut registry: Option<BTreeSet<String>> = registry.map(|r| r.into_iter().collect());
        let mut records = Vec::new();
        let restored = match &store {
            Some(s) => s.load()?,
            None => Default::default(),
        };
        if registry.is_none() {
            registry = restored.registry.map(|r| r.into_iter().collect());
        }
        if let Some(r) = &registry {
            records.push((
                "registry".to_string(),
                HeadStore::encode(&r.iter().collect::<Vec<_>>()),
            ));
        }
        // Restored nodes keep their keys; new ones are numbered after them.
        tables.next_seq = restored
            .nodes
            .iter()
            .filter_map(|(k, _)| store::node_seq(k))
            .max()
            .map_or(0, |s| s + 1);
        let me = tables.new_member(me, None);
        records.push(node_record(me));
        for (key, r) in restored.nodes {
            let mut m = Member {
                alive: r.alive,
                cause: r.cause,
                died: r.died,
                report: Report::default(),
                actors: 0,
                link: None,
                leaving: false,
                draining: false,
                heard: Instant::now(),
                key,
                info: r.info,
            };
            if m.alive && m.info.head {
                m.alive = false;
                m.cause = Some("the head it ran was killed and started again".into());
                m.died = now_ms();
                records.push(node_record(&m));
            }
            tables.nodes.push(m);
        }
        records.extend(tables.forget_old_deaths(dead_kept));
        for r in restored.actors {
            let id = r.place.actor;
            if let Some(m) = tables
                .nodes
                .iter_mut()
                .find(|m| m.info.id == r.place.node && m.alive)
            {
                m.actors += 1;
            }
            if let Some(key) = &r.name {
                tables.names.insert(key.clone(), id);
            }
            tables.actors.insert(
                id,
                Placed {
                    place: r.place,
                    name: r.name,
                    restart: r.restart.map(|(create, cpus, scheduling, done)| Restart {
                        create,
                        cpus,
                        resources: r.resources,
                        scheduling,
                        done,
                    }),
                },
            );
        }
        // Versions restored first: each group's news from this head is newer
        // than anything a node heard from the last one.
        tables.group_version = restored
            .groups
            .iter()
            .map(|r| r.info.version)
            .max()
            .unwrap_or(0);
        for r in restored.groups {
            let id = r.info.id;
            let mut info = r.info;
            tables.group_version += 1;
            info.version = tables.group_version;
            // A bundle on a node that is not alive is placed again.
            for n in info.nodes.iter_mut() {
                if n.is_some_and(|n| !tables.nodes.iter().any(|m| m.info.id == n && m.alive)) {
                    *n = None;
                }
            }
            if info.placed() {
                // Its nodes took their bundles before (or take them as they
                // rejoin, with what they knew).
                info.state = GroupState::Created;
            } else {
                // Pending stays pending; one that lost a bundle is placed again.
                if info.state != GroupState::Pending {
                    info.state = GroupState::Rescheduling;
                }
                tables.unplaced.push(id);
            }
            if let Some(key) = &info.name {
                tables.group_names.insert(key.clone(), id);
            }
            let acked = info.nodes.iter().map(Option::is_some).collect();
            tables.groups.insert(
                id,
                Group {
                    info,
                    creator: r.creator,
                    acked,
                },
            );
        }
        tables.kv = restored.kv.into_iter().collect();
        tables.jobs = restored.jobs;
        if !standalone {
            // The program that started the cluster is its first job.
            let me = &tables.nodes[0].info;
            let job = JobInfo {
                id: me.id,
                address: me.address.clone(),
                started: now_ms(),
                ended: None,
                state: JobState::Running,
            };
            records.push(job_record(&job));
            tables.jobs.push(job);
        }
        if let Some(s) = &store {
            s.write(&records);
        }
        Ok(Head {
            registry: Mutex::new(registry),
            tables: Mutex::new(tables),
            spread: AtomicUsize::new(0),
            rejections,
            store: Mutex::new(store),
            dead_kept,
            group_news: OnceLock::new(),
        })
    }

    /// Where the head's own node hears of placement groups' changes.
    pub fn on_group_news(&self, news: GroupNews) {
        let _ = self.group_news.set(news);
    }

    /// Tells every node of groups' changes: the others by message (`links`),
    /// the head's own node directly. Called after the tables' lock: the
    /// head's node completes readiness refs and kills a removed group's actors.
    fn tell(&self, news: Vec<GroupInfo>, links: &[Arc<Link>]) {
        if news.is_empty() {
            return;
        }
        for l in links {
            for g in &news {
                l.send(Msg::GroupState(g.clone()));
            }
        }
        if let Some(local) = self.group_news.get() {
            local(news);
        }
    }

    /// `node` took its bundles of `group` as placed in `version`: the group
    /// is created when every bundle's node has.
    pub fn group_reserved(&self, node: NodeId, group: GroupId, version: u64) {
        let (news, links) = {
            let mut t = self.tables.lock();
            let Some(g) = t.groups.get_mut(&group) else {
                return;
            };
            if g.info.version != version || g.info.state == GroupState::Created {
                return;
            }
            for (a, n) in g.acked.iter_mut().zip(&g.info.nodes) {
                *a |= *n == Some(node);
            }
            if !g.acked.iter().all(|a| *a) || !g.info.placed() {
                return;
            }
            g.info.state = GroupState::Created;
            let mut records = Vec::new();
            let news: Vec<GroupInfo> = t.changed(group, &mut records).into_iter().collect();
            self.save(&records);
            (news, t.links())
        };
        self.tell(news, &links);
    }

    /// Writes records through to the database, if there is one.
    fn save(&self, records: &[Record]) {
        if let Some(s) = self.store.lock().as_ref() {
            s.write(records);
        }
    }

    /// The cluster is over (an orderly stop): its database goes.
    pub fn close(&self) {
        if let Some(s) = self.store.lock().take() {
            s.remove();
        }
    }

    /// Checks a joining node's registry against the cluster's; the error
    /// names what differs.
    pub fn check_join(&self, hello: &Hello) -> Result<Vec<NodeInfo>, String> {
        let t = self.tables.lock();
        let me = t.nodes.first().map(|m| m.info.id);
        let known = t.nodes.iter().find(|m| m.info.id == hello.node.id);
        if known.is_none() && hello.member_of.is_some() && hello.member_of == me {
            // It was this head's member, and its record is gone: only a
            // death forgotten past the bound removes one.
            return Err(format!(
                "node {} was declared dead (a death no longer remembered): it may rejoin only \
                 as a new node",
                hello.node.id
            ));
        }
        if let Some(m) = known {
            // Death is final; a live member may rejoin (after this head
            // started again, or on a new link after a reset — one this head
            // may not have seen yet: the new link replaces the old).
            if let Some(cause) = &m.cause {
                return Err(format!(
                    "node {} was declared dead ({cause}): it may rejoin only as a new node",
                    hello.node.id
                ));
            }
            if m.info != hello.node {
                // Not the process that joined as it (ids are unique): one
                // hello must not take a live member's place.
                return Err(format!(
                    "node {} is a member already, at {}",
                    hello.node.id, m.info.address
                ));
            }
        }
        drop(t);
        let theirs: BTreeSet<String> = hello.registry.iter().cloned().collect();
        let mut registry = self.registry.lock();
        let ours = registry.get_or_insert_with(|| {
            self.save(&[(
                "registry".to_string(),
                HeadStore::encode(&theirs.iter().collect::<Vec<_>>()),
            )]);
            theirs.clone()
        });
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

    /// The session a join link from `node` carries: a live member's own
    /// (it rejoins on a new link), or a new one whose frames may wait
    /// `stale` for an ack.
    pub fn session_for(&self, node: NodeId, stale: Duration) -> Arc<Session> {
        let t = self.tables.lock();
        t.nodes
            .iter()
            .find(|m| m.info.id == node && m.alive)
            .and_then(|m| m.link.as_ref()?.session().cloned())
            .unwrap_or_else(|| Session::with_stale(node, stale))
    }

    /// A node joined on `link`: it is announced to every other node. A
    /// member rejoining takes its place back (its new link replaces the
    /// old), and its peers know it already.
    pub fn joined(&self, link: &Arc<Link>, driver: bool) {
        let info = link.peer.clone();
        let others: (Vec<Arc<Link>>, Vec<GroupInfo>) = {
            let mut guard = self.tables.lock();
            let t = &mut *guard;
            if t.nodes.iter().any(|m| m.info.id == info.id && !m.alive) {
                // Declared dead since its hello was admitted: death is final.
                drop(guard);
                link.abort();
                return;
            }
            if let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == info.id && m.alive) {
                // Told the groups again (a head started again has news of
                // them it may not have had).
                for g in t.groups.values() {
                    link.send(Msg::GroupState(g.info.clone()));
                }
                let old = m.link.replace(link.clone());
                m.heard = Instant::now();
                drop(guard);
                if let Some(old) = old.filter(|o| o.serial != link.serial) {
                    // Its writer hands the session to the new link's.
                    old.abort();
                }
                return;
            }
            let others: Vec<Arc<Link>> = t.nodes.iter().filter_map(|m| m.link.clone()).collect();
            // Told which nodes are leaving, after its welcome.
            for m in t.nodes.iter().filter(|m| m.alive && m.draining) {
                link.send(Msg::NodeDraining { node: m.info.id });
            }
            // And of every live group (its bundles' nodes, what they reserve).
            for g in t.groups.values() {
                link.send(Msg::GroupState(g.info.clone()));
            }
            let m = t.new_member(info.clone(), Some(link.clone()));
            let mut records = vec![node_record(m)];
            if driver {
                let job = JobInfo {
                    id: info.id,
                    address: info.address.clone(),
                    started: now_ms(),
                    ended: None,
                    state: JobState::Running,
                };
                records.push(job_record(&job));
                t.jobs.push(job);
            }
            // Room for the groups waiting for it, maybe.
            let news = t.place_groups(None, &mut records);
            self.save(&records);
            (others, news)
        };
        let (others, news) = others;
        for l in &others {
            l.send(Msg::NodeJoined(info.clone()));
        }
        let mut links = others;
        links.push(link.clone());
        self.tell(news, &links);
    }

    /// A node died (`cause`): marked dead for good and every other node
    /// told. Its actors with restarts left (and a live owner, or detached)
    /// are placed again, to be started by the caller; the others are gone.
    /// `None` if it was dead already.
    pub fn left(&self, node: NodeId, cause: &str) -> Option<Left> {
        let mut left = Left {
            restarts: Vec::new(),
            gone: Vec::new(),
        };
        // What was queued for it, dropped after the tables' lock: a
        // message's values may run user code as they go.
        let mut queued = None;
        let mut forgotten = Vec::new();
        let mut news = Vec::new();
        let others: Vec<Arc<Link>> = {
            let mut guard = self.tables.lock();
            let t = &mut *guard;
            let m = t.nodes.iter_mut().find(|m| m.info.id == node && m.alive)?;
            m.alive = false;
            m.died = now_ms();
            let in_order = m.draining;
            // A driver that said its job finished left in order: its
            // connection closing is no death.
            let finished = t
                .jobs
                .iter()
                .any(|j| j.id == node && j.state == JobState::Finished);
            m.cause = Some(if finished {
                LEFT_CAUSE.to_string()
            } else {
                cause.to_string()
            });
            m.actors = 0;
            let mut records = vec![node_record(m)];
            if let Some(job) = t
                .jobs
                .iter_mut()
                .find(|j| j.id == node && j.state == JobState::Running)
            {
                job.state = JobState::Failed(format!("its driver died: {cause}"));
                job.ended = Some(now_ms());
                records.push(job_record(job));
            }
            if let Some(link) = m.link.take() {
                // Told, in case it still listens (a hang, not a crash), and
                // cut off: a silent link never closes by itself. Its session
                // ends: nothing more is kept for it.
                link.send(Msg::NodeLeft {
                    node,
                    cause: cause.to_string(),
                    restarting: Vec::new(),
                });
                link.abort();
                if let Some(s) = link.session() {
                    queued = s.end();
                }
            }
            // Its groups go with it (Ray's: a job's groups go with the job),
            // but detached ones; bundles it held are placed again, before
            // its actors are (an actor in a group restarts on its bundle's
            // new node).
            let created: Vec<GroupId> = t
                .groups
                .values()
                .filter(|g| g.creator == node && !g.info.detached)
                .map(|g| g.info.id)
                .collect();
            for id in created {
                news.extend(t.remove_group(id, &mut records));
            }
            // Placed again with every group waiting: what the removed groups
            // held may make room for them too.
            news.extend(t.move_bundles_off(node, &mut records));
            let there: Vec<ActorId> = t
                .actors
                .iter()
                .filter(|(_, p)| p.place.node == node)
                .map(|(id, _)| *id)
                .collect();
            for id in there {
                match self.replace(t, id, node, cause, in_order) {
                    Ok(restart) => {
                        records.extend(t.actors.get(&id).map(actor_record));
                        left.restarts.push(restart);
                    }
                    Err(why) => {
                        if let Some((record, placed)) = forget_actor(t, id) {
                            records.push(record);
                            forgotten.push(placed);
                        }
                        left.gone.push(Msg::ActorMoved {
                            actor: id,
                            node: None,
                            died: node,
                            cause: why,
                            retries: Retries::NONE,
                        });
                    }
                }
            }
            records.extend(t.forget_old_deaths(self.dead_kept));
            self.save(&records);
            t.nodes.iter().filter_map(|m| m.link.clone()).collect()
        };
        drop((queued, forgotten));
        self.tell(news, &others);
        let restarting: Vec<ActorId> = left.restarts.iter().map(|(c, _)| c.actor).collect();
        for l in others {
            l.send(Msg::NodeLeft {
                node,
                cause: cause.to_string(),
                restarting: restarting.clone(),
            });
            for m in &left.gone {
                l.send(m.clone());
            }
        }
        Some(left)
    }

    /// Places actor `id` of dead node `died` again, if it may restart. A
    /// node that left in order (`in_order`: it said so first) was preempted,
    /// in Ray's words: an actor that may restart at all restarts without
    /// using one of its `max_restarts`.
    fn replace(
        &self,
        t: &mut Tables,
        id: ActorId,
        died: NodeId,
        cause: &str,
        in_order: bool,
    ) -> Result<(ActorCreate, NodeId), String> {
        let why = if in_order {
            format!("its node {died} left the cluster ({cause})")
        } else {
            format!("its node {died} died: {cause}")
        };
        let Some(r) = t.actors.get(&id).expect("listed").restart.as_ref() else {
            return Err(why);
        };
        if id.node == died && !r.create.detached {
            // Ray's fate-sharing: an actor dies with its owner.
            return Err(format!("{why} (its owner was there)"));
        }
        let preempted = in_order && r.create.max_restarts != Retries::Finite(0);
        if !preempted && !r.create.max_restarts.allows(r.done + 1) {
            return Err(format!(
                "{why}; its max_restarts ({:?}) is used up",
                r.create.max_restarts
            ));
        }
        let node = t
            .place(id.node, r.scheduling, r.cpus, &r.resources, &self.spread)
            .map_err(|reason| format!("{why}; no node can take it: {reason}"))?;
        let p = t.actors.get_mut(&id).expect("listed");
        let r = p.restart.as_mut().expect("looked at above");
        if !preempted {
            r.done += 1;
        }
        let mut create = r.create.clone();
        create.max_restarts = match create.max_restarts {
            Retries::Finite(n) => Retries::Finite(n.saturating_sub(r.done as u32)),
            Retries::Infinite => Retries::Infinite,
        };
        let retries = create.max_task_retries;
        p.place.node = node;
        if let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == node) {
            m.actors += 1;
        }
        t.restarting.insert(
            id,
            Restarting {
                node,
                died,
                cause: why,
                retries,
            },
        );
        Ok((create, node))
    }

    /// A restarted actor started (or failed to): the `ActorMoved` to apply,
    /// sent to every node already. `None`: not a restart under way.
    pub fn restarted(&self, actor: ActorId, result: Result<(), Error>) -> Option<Msg> {
        // Dropped after the lock (see `forget_actor`).
        let mut forgotten = None;
        let (msg, links) = {
            let mut t = self.tables.lock();
            let r = t.restarting.remove(&actor)?;
            let msg = match result {
                Ok(()) => Msg::ActorMoved {
                    actor,
                    node: Some(r.node),
                    died: r.died,
                    cause: r.cause,
                    retries: r.retries,
                },
                Err(e) => {
                    if let Some((record, placed)) = forget_actor(&mut t, actor) {
                        self.save(&[record]);
                        forgotten = Some(placed);
                    }
                    Msg::ActorMoved {
                        actor,
                        node: None,
                        died: r.died,
                        cause: format!("{}; starting it again on {} failed: {e}", r.cause, r.node),
                        retries: Retries::NONE,
                    }
                }
            };
            let links: Vec<Arc<Link>> = t.nodes.iter().filter_map(|m| m.link.clone()).collect();
            (msg, links)
        };
        drop(forgotten);
        for l in links {
            l.send(msg.clone());
        }
        Some(msg)
    }

    /// What a member's join link closing means: `None` if it does not
    /// matter (a rejoin replaced that link, or the member is dead); else
    /// whether the member said it leaves, and the address it joined from.
    pub fn link_closed(&self, node: NodeId, serial: u64) -> Option<(bool, String)> {
        let t = self.tables.lock();
        t.nodes
            .iter()
            .find(|m| m.info.id == node && m.alive)
            .filter(|m| m.link.as_ref().is_some_and(|l| l.serial == serial))
            .map(|m| (m.leaving, m.info.address.clone()))
    }

    /// The join link of a live node (none for the head's own).
    pub fn link_of(&self, node: NodeId) -> Option<Arc<Link>> {
        let t = self.tables.lock();
        t.nodes
            .iter()
            .find(|m| m.info.id == node && m.alive)
            .and_then(|m| m.link.clone())
    }

    /// A message from `node` arrived on its join link.
    pub fn heard(&self, node: NodeId) {
        let mut t = self.tables.lock();
        if let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == node) {
            m.heard = Instant::now();
        }
    }

    /// The head's heartbeat: sent to every live node, with its own report
    /// kept; returns the nodes silent for longer than `limit`, and for how long.
    pub fn beat(&self, mine: Report, limit: Duration) -> Vec<(NodeId, Duration)> {
        let mut t = self.tables.lock();
        if let Some(me) = t.nodes.first_mut() {
            me.report = mine;
        }
        let mut silent = Vec::new();
        for m in t.nodes.iter().skip(1).filter(|m| m.alive) {
            let quiet = m.heard.elapsed();
            match &m.link {
                Some(link) => {
                    link.send(Msg::Heartbeat(mine));
                    if quiet > limit {
                        silent.push((m.info.id, quiet));
                    }
                }
                // Alive in the database of a head started again: it has a
                // while to rejoin.
                None if quiet > limit.max(REJOIN_GRACE) => silent.push((m.info.id, quiet)),
                None => {}
            }
        }
        silent
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
        let mut forgotten = None;
        let mut news = Vec::new();
        let (answer, links) = {
            let mut t = self.tables.lock();
            if let Some(me) = t.nodes.first_mut() {
                me.report = my_report;
            }
            let answer = self.answer(&mut t, ask, &mut forgotten, &mut news);
            let links = if news.is_empty() {
                Vec::new()
            } else {
                t.links()
            };
            (answer, links)
        };
        // After the lock (see `forget_actor`).
        drop(forgotten);
        self.tell(news, &links);
        answer
    }

    /// Answers a request under the tables' lock; an actor it forgets goes
    /// to `forgotten`, to be dropped after it.
    fn answer(
        &self,
        t: &mut Tables,
        ask: Ask,
        forgotten: &mut Option<Placed>,
        news: &mut Vec<GroupInfo>,
    ) -> Result<Answer, Error> {
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
                        draining: m.alive && m.draining,
                    })
                    .collect(),
                actors: t
                    .actors
                    .values()
                    .map(|p| (p.place.clone(), p.name.clone()))
                    .collect(),
                rejections: self.rejections.snapshot(),
                jobs: t.jobs.clone(),
                groups: t.groups.values().map(|g| g.info.clone()).collect(),
            })),
            Ask::PlaceActor {
                actor,
                type_name,
                name,
                get_if_exists,
                cpus,
                resources,
                scheduling,
                from,
                restart,
            } => {
                groups::check_resources(&resources)?;
                // The same limits as the caller's own checks: a peer may skip them.
                if let Some((namespace, name)) = &name {
                    wire::check_names(namespace, name)?;
                }
                if let Some(key) = &name {
                    if let Some(existing) = t.names.get(key).and_then(|id| t.actors.get(id)) {
                        if get_if_exists {
                            return Ok(Answer::Actor(t.place_known(existing)));
                        }
                        return Err(Error::ActorNameTaken {
                            namespace: key.0.clone(),
                            name: key.1.clone(),
                        });
                    }
                }
                let node = t
                    .place(from, scheduling, cpus, &resources, &self.spread)
                    .map_err(|reason| Error::Unschedulable {
                        task: type_name.clone(),
                        reason,
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
                let placed = Placed {
                    place: ActorPlace {
                        actor,
                        node,
                        type_name,
                    },
                    name,
                    restart: restart.map(|create| Restart {
                        create: *create,
                        cpus,
                        resources,
                        scheduling,
                        done: 0,
                    }),
                };
                self.save(&[actor_record(&placed)]);
                t.actors.insert(actor, placed);
                Ok(Answer::Placed(info))
            }
            Ask::ActorGone { actor } => {
                if let Some((record, placed)) = forget_actor(t, actor) {
                    self.save(&[record]);
                    *forgotten = Some(placed);
                }
                Ok(Answer::Done)
            }
            Ask::LookupActor { namespace, name } => {
                wire::check_names(&namespace, &name)?;
                let key = (namespace, name);
                match t.names.get(&key).and_then(|id| t.actors.get(id)) {
                    Some(p) => Ok(Answer::Actor(t.place_known(p))),
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
                // The same limits as the caller's own checks: a peer may skip them.
                wire::check_len("a key-value store key", key.len(), wire::MAX_NAME)?;
                wire::check_len("a key-value store value", value.len(), wire::MAX_KV_VALUE)?;
                if !overwrite && t.kv.contains_key(&key) {
                    return Ok(Answer::Stored(false));
                }
                self.save(&[(store::kv_key(&key), store::Change::Put(value.clone()))]);
                t.kv.insert(key, value);
                Ok(Answer::Stored(true))
            }
            Ask::KvGet { key } => Ok(Answer::Value(
                t.kv.get(&key).cloned().map(serde_bytes::ByteBuf::from),
            )),
            Ask::KvDelete { key } => {
                let had = t.kv.remove(&key).is_some();
                if had {
                    self.save(&[(store::kv_key(&key), store::Change::Delete)]);
                }
                Ok(Answer::Stored(had))
            }
            Ask::GroupById { group } => Ok(match t.groups.get(&group) {
                Some(g) => Answer::Group(g.info.clone()),
                None => Answer::Done,
            }),
            Ask::CreateGroup { mut info, owner } => {
                // The same limits as the caller's own checks: a peer may skip them.
                groups::check_bundles(&info.bundles)?;
                if let Some((namespace, name)) = &info.name {
                    wire::check_names(namespace, name)?;
                }
                if let Some(g) = t.groups.get(&info.id) {
                    // Asked again (a retry): the same group.
                    return Ok(Answer::Group(g.info.clone()));
                }
                if let Some(key) = &info.name {
                    if t.group_names.contains_key(key) {
                        return Err(Error::InvalidArgument(format!(
                            "a placement group named `{}` already exists in namespace `{}`",
                            key.1, key.0
                        )));
                    }
                }
                let id = info.id;
                // A node gone already leaves it to the node that asked.
                let owner = if t.nodes.iter().any(|m| m.info.id == owner && m.alive) {
                    owner
                } else {
                    id.node
                };
                info.nodes = vec![None; info.bundles.len()];
                info.state = GroupState::Pending;
                if let Some(key) = &info.name {
                    t.group_names.insert(key.clone(), id);
                }
                let acked = vec![false; info.bundles.len()];
                t.groups.insert(
                    id,
                    Group {
                        info,
                        creator: owner,
                        acked,
                    },
                );
                t.unplaced.push(id);
                let mut records = Vec::new();
                let placed = t.place_groups(Some(id), &mut records);
                if placed.is_empty() {
                    // Pending: known to every node, placed when room appears.
                    news.extend(t.changed(id, &mut records));
                }
                news.extend(placed);
                self.save(&records);
                let info = t.groups.get(&id).expect("inserted").info.clone();
                Ok(Answer::Group(info))
            }
            Ask::RemoveGroup { group } => {
                let mut records = Vec::new();
                let Some(gone) = t.remove_group(group, &mut records) else {
                    return Ok(Answer::Done);
                };
                news.push(gone.clone());
                news.extend(t.place_groups(None, &mut records));
                self.save(&records);
                Ok(Answer::Group(gone))
            }
            Ask::LookupGroup { namespace, name } => {
                wire::check_names(&namespace, &name)?;
                let key = (namespace, name);
                match t.group_names.get(&key).and_then(|id| t.groups.get(id)) {
                    Some(g) => Ok(Answer::Group(g.info.clone())),
                    None => Err(Error::InvalidArgument(format!(
                        "no placement group named `{}` in namespace `{}`",
                        key.1, key.0
                    ))),
                }
            }
            Ask::StopCluster => Ok(Answer::Done),
            Ask::Draining { node } => {
                let mut records = Vec::new();
                news.extend(t.draining(node, &mut records));
                self.save(&records);
                Ok(Answer::Done)
            }
            Ask::DrainNode { node, timeout_ms } => {
                let Some(i) = t.nodes.iter().position(|m| m.info.id == node && m.alive) else {
                    return Err(Error::InvalidArgument(format!(
                        "no live node {node} in this cluster"
                    )));
                };
                if i == 0 {
                    return Err(Error::InvalidArgument(format!(
                        "{node} is the head, which does not drain: stop the cluster (rayx stop)"
                    )));
                }
                if t.jobs
                    .iter()
                    .any(|j| j.id == node && j.state == JobState::Running)
                {
                    return Err(Error::InvalidArgument(format!(
                        "{node} is a driver, which leaves when its program ends"
                    )));
                }
                let Some(link) = t.nodes[i].link.clone() else {
                    return Err(Error::InvalidArgument(format!(
                        "{node} has not joined this head again yet"
                    )));
                };
                // Told on its join link; it says `Draining` itself, as for
                // a signal, and the head tells the others then.
                link.send(Msg::Drain { timeout_ms });
                Ok(Answer::Done)
            }
            Ask::Leaving { node } => {
                if let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == node) {
                    m.leaving = true;
                }
                let mut records = Vec::new();
                news.extend(t.draining(node, &mut records));
                self.save(&records);
                Ok(Answer::Done)
            }
            Ask::JobFinished { driver } => {
                if let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == driver) {
                    m.leaving = true;
                }
                let mut records = Vec::new();
                news.extend(t.draining(driver, &mut records));
                self.save(&records);
                if let Some(job) = t
                    .jobs
                    .iter_mut()
                    .find(|j| j.id == driver && j.state == JobState::Running)
                {
                    job.state = JobState::Finished;
                    job.ended = Some(now_ms());
                    let record = job_record(job);
                    self.save(&[record]);
                }
                Ok(Answer::Done)
            }
        }
    }
}

impl Tables {
    /// Every live node's join link.
    fn links(&self) -> Vec<Arc<Link>> {
        self.nodes.iter().filter_map(|m| m.link.clone()).collect()
    }

    /// `node` said it drains or leaves (it stops, or its job finished): no
    /// new work is placed there, and every other node is told (a link's
    /// send only queues; the head's own node is told by the caller,
    /// `ClusterNode::peer_draining`).
    ///
    /// Its placement groups' bundles are placed again elsewhere at once (work
    /// for them goes where they went; its actors in them follow when it
    /// goes): the news, and the records to write.
    fn draining(&mut self, node: NodeId, records: &mut Vec<Record>) -> Vec<GroupInfo> {
        let Some(m) = self.nodes.iter_mut().find(|m| m.info.id == node && m.alive) else {
            return Vec::new();
        };
        if std::mem::replace(&mut m.draining, true) {
            return Vec::new();
        }
        let others = self.nodes.iter().filter(|m| m.info.id != node);
        for link in others.filter_map(|m| m.link.as_ref()) {
            link.send(Msg::NodeDraining { node });
        }
        self.move_bundles_off(node, records)
    }

    /// The bundles on `node` (dead, or draining) are placed again on the
    /// nodes work may go to, with every group waiting for room: their groups
    /// are `Rescheduling` until placed and taken. The news.
    fn move_bundles_off(&mut self, node: NodeId, records: &mut Vec<Record>) -> Vec<GroupInfo> {
        let mut news = Vec::new();
        let held: Vec<GroupId> = self
            .groups
            .values()
            .filter(|g| g.info.nodes.contains(&Some(node)))
            .map(|g| g.info.id)
            .collect();
        for id in &held {
            let g = self.groups.get_mut(id).expect("listed");
            for n in g.info.nodes.iter_mut().filter(|n| **n == Some(node)) {
                *n = None;
            }
            g.info.state = GroupState::Rescheduling;
            if !self.unplaced.contains(id) {
                self.unplaced.push(*id);
            }
        }
        let placed = self.place_groups(None, records);
        for id in held
            .into_iter()
            .filter(|id| !placed.iter().any(|g| g.id == *id))
        {
            // No room now: every node hears it is being placed again.
            news.extend(self.changed(id, records));
        }
        news.extend(placed);
        news
    }
}

/// The cause the head gives a driver that left after its job finished.
pub const LEFT_CAUSE: &str = "left: its job finished";

/// The cause the head gives a node that said it stops, and stopped.
pub const STOPPED_CAUSE: &str = "left: it stopped in order";

/// Whether a dead node's cause says it left in order (not a failure).
pub fn left_in_order(cause: &str) -> bool {
    cause.starts_with("left:")
}

impl Tables {
    /// Where a handle made now should say `p`'s actor is: while it starts
    /// again elsewhere, the node that died (a handle to it waits for the
    /// news of where the actor went, as calls made then do); its node once
    /// it runs there (before, a call there would find no actor).
    fn place_known(&self, p: &Placed) -> ActorPlace {
        let mut place = p.place.clone();
        if let Some(r) = self.restarting.get(&place.actor) {
            place.node = r.died;
        }
        place
    }
}

/// Forgets an actor: the record to delete, and what was kept of it, if it
/// was known. What was kept is the caller's to drop after the tables' lock:
/// a restart's constructor argument made in this process is a value that
/// may hold the last handle to an actor here, whose stop runs user code and
/// tells the head (this lock again).
fn forget_actor(t: &mut Tables, actor: ActorId) -> Option<(Record, Placed)> {
    t.restarting.remove(&actor);
    let p = t.actors.remove(&actor)?;
    if let Some(key) = &p.name {
        if t.names.get(key) == Some(&actor) {
            t.names.remove(key);
        }
    }
    if let Some(m) = t.nodes.iter_mut().find(|m| m.info.id == p.place.node) {
        m.actors = m.actors.saturating_sub(1);
    }
    Some(((store::actor_key(actor), store::Change::Delete), p))
}
