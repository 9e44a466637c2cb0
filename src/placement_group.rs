//! Placement groups (Ray's `ray.util.placement_group`): bundles of resources
//! reserved together, on one node or several by a [`PlacementStrategy`], for
//! the tasks and actors scheduled into them.
//!
//! ```
//! use rayx::{PlacementStrategy, Runtime};
//! # use std::time::Duration;
//! fn where_am_i() -> u64 { Runtime::current().unwrap().node_id().0 }
//! rayx::remote!(where_am_i);
//!
//! let rt = rayx::Builder::new().resource("disk", 2.0).start()?;
//! let pg = rt
//!     .placement_group([[("CPU", 1.0), ("disk", 1.0)], [("CPU", 1.0), ("disk", 1.0)]])
//!     .strategy(PlacementStrategy::Pack)
//!     .create()?;
//! pg.ready().get()?; // reserved
//! let here = rt.task(where_am_i).placement_group(&pg, Some(1)).remote(());
//! assert_eq!(here.get()?, rt.node_id().0);
//! rt.remove_placement_group(&pg)?;
//! assert!(pg.wait(Duration::ZERO).is_err(), "removed");
//! # Ok::<(), rayx::Error>(())
//! ```

use crate::{NodeId, ObjectRef, Result, Runtime};
use rayx_actors::groups::{GroupInfo, GroupState};
use rayx_actors::node::Node;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;
use std::time::Duration;

pub use rayx_actors::groups::{
    GroupId as PlacementGroupId, GroupInfo as PlacementGroupInfo,
    GroupState as PlacementGroupState, Resources, Strategy as PlacementStrategy,
};

/// Amounts of resources from `(name, amount)` pairs: `"CPU"` and custom
/// ones (Ray's resource dicts).
pub fn resources<K: Into<String>>(pairs: impl IntoIterator<Item = (K, f64)>) -> Resources {
    pairs.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

/// A placement group: `Clone`, and passable to tasks and actors on any node
/// (it travels as its id and what its creator knew of it).
#[derive(Clone)]
pub struct PlacementGroup {
    info: GroupInfo,
    node: Arc<Node>,
}

impl std::fmt::Debug for PlacementGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlacementGroup")
            .field("id", &self.info.id)
            .field("bundles", &self.info.bundles)
            .field("strategy", &self.info.strategy)
            .finish()
    }
}

impl PlacementGroup {
    /// Its id.
    pub fn id(&self) -> PlacementGroupId {
        self.info.id
    }

    /// What each bundle reserves (Ray's `bundle_specs`).
    pub fn bundles(&self) -> &[Resources] {
        &self.info.bundles
    }

    /// How many bundles it has (Ray's `bundle_count`).
    pub fn bundle_count(&self) -> usize {
        self.info.bundles.len()
    }

    /// Its strategy.
    pub fn strategy(&self) -> PlacementStrategy {
        self.info.strategy
    }

    /// The latest this node knows of it.
    fn latest(&self) -> Result<GroupInfo> {
        Ok(self
            .node
            .core()
            .groups
            .get(self.info.id)?
            .unwrap_or_else(|| self.info.clone()))
    }

    /// Where it is in its life, as this node knows now.
    pub fn state(&self) -> PlacementGroupState {
        self.latest().map_or(GroupState::Removed, |g| g.state)
    }

    /// The node each bundle is reserved on (none: not placed yet), as this
    /// node knows now.
    pub fn bundle_nodes(&self) -> Vec<Option<NodeId>> {
        self.latest().map_or_else(|_| Vec::new(), |g| g.nodes)
    }

    /// A ref that is ready when every bundle is reserved (Ray's
    /// `pg.ready()`), or fails with `PlacementGroupRemoved` if the group is
    /// removed first.
    pub fn ready(&self) -> ObjectRef<()> {
        let slot = self.node.new_pending();
        self.node
            .core()
            .groups
            .when_ready(self.info.id, slot.clone());
        ObjectRef::from_slot(slot)
    }

    /// Waits until every bundle is reserved (Ray's `pg.wait`): `Ok(true)`,
    /// or `Ok(false)` if `timeout` passes first; `PlacementGroupRemoved` if
    /// it is removed.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        self.node.core().groups.wait(self.info.id, timeout)
    }
}

impl Serialize for PlacementGroup {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        // The newest this node knows (the receiver may hear of it later),
        // its removal included: removal is final, whatever the receiver heard.
        let info = self.latest().unwrap_or_else(|_| GroupInfo {
            state: GroupState::Removed,
            version: u64::MAX,
            ..self.info.clone()
        });
        info.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PlacementGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let info = GroupInfo::deserialize(d)?;
        let node = rayx_actors::node::current_node().ok_or_else(|| {
            serde::de::Error::custom("a placement group can only be decoded inside a rayx runtime")
        })?;
        // What it carried is news here until the head's own arrives; a group
        // this node never heard of is checked with the head (it may be gone).
        let unknown = matches!(node.core().groups.get(info.id), Ok(None));
        node.apply_groups(vec![info.clone()]);
        if let Some(c) = node
            .cluster()
            .filter(|_| unknown && info.state != GroupState::Removed)
        {
            c.confirm_group(info.clone());
        }
        Ok(PlacementGroup { info, node })
    }
}

/// Options of a placement group to create ([`Runtime::placement_group`]).
#[must_use = "a placement group is created by .create()"]
pub struct PlacementGroupBuilder<'r> {
    rt: &'r Runtime,
    bundles: Vec<Resources>,
    strategy: PlacementStrategy,
    name: Option<String>,
    namespace: String,
    detached: bool,
}

impl<'r> PlacementGroupBuilder<'r> {
    pub(crate) fn new(rt: &'r Runtime, bundles: Vec<Resources>) -> Self {
        PlacementGroupBuilder {
            rt,
            bundles,
            strategy: PlacementStrategy::Pack,
            name: None,
            namespace: crate::actor::DEFAULT_NAMESPACE.to_string(),
            detached: false,
        }
    }

    /// How its bundles spread over nodes (default `Pack`, as Ray's).
    pub fn strategy(mut self, strategy: PlacementStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Names it, so [`Runtime::get_placement_group`] finds it from any node.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The namespace of its name (default `"default"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Keeps it after its creator's node leaves or dies (Ray's
    /// `lifetime="detached"`); by default it goes with its creator.
    pub fn detached(mut self) -> Self {
        self.detached = true;
        self
    }

    /// Creates it: the head places its bundles now if they fit, else when
    /// room appears; [`PlacementGroup::ready`] says when they are reserved.
    pub fn create(self) -> Result<PlacementGroup> {
        let node = self.rt.node().clone();
        let info = GroupInfo {
            id: node.new_group_id(),
            name: self.name.map(|n| (self.namespace, n)),
            strategy: self.strategy,
            nodes: vec![None; self.bundles.len()],
            bundles: self.bundles,
            state: GroupState::Pending,
            detached: self.detached,
            version: 0,
        };
        let info = node.create_group(info)?;
        Ok(PlacementGroup { info, node })
    }
}

impl Runtime {
    /// A placement group of these bundles, each `(resource, amount)` pairs
    /// (Ray's `placement_group(bundles)`); set its strategy and name, then
    /// [`create`](PlacementGroupBuilder::create) it.
    pub fn placement_group<B, K>(
        &self,
        bundles: impl IntoIterator<Item = B>,
    ) -> PlacementGroupBuilder<'_>
    where
        B: IntoIterator<Item = (K, f64)>,
        K: Into<String>,
    {
        PlacementGroupBuilder::new(self, bundles.into_iter().map(resources).collect())
    }

    /// Removes a placement group (Ray's `remove_placement_group`): its
    /// reservations are returned and the actors in it killed; tasks and
    /// actors scheduled into it afterwards fail. Removing it twice is no error.
    pub fn remove_placement_group(&self, pg: &PlacementGroup) -> Result<()> {
        self.node().remove_group(pg.id())
    }

    /// The live placement group of this name in the default namespace
    /// (Ray's `get_placement_group`), from any node.
    pub fn get_placement_group(&self, name: &str) -> Result<PlacementGroup> {
        self.get_placement_group_in(crate::actor::DEFAULT_NAMESPACE, name)
    }

    /// The live placement group of this name in `namespace`.
    pub fn get_placement_group_in(&self, namespace: &str, name: &str) -> Result<PlacementGroup> {
        let node = self.node().clone();
        let info = node.lookup_group(namespace, name)?;
        Ok(PlacementGroup { info, node })
    }

    /// The live placement groups this node knows (every one of the
    /// cluster's: the head tells every node), for Ray's `placement_group_table`.
    pub fn placement_group_table(&self) -> Vec<PlacementGroupInfo> {
        let mut all = self.node().core().groups.list();
        all.sort_by_key(|g| g.id);
        all
    }
}
