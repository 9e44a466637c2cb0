//! The head's tables on disk (Ray's GCS fault tolerance, without Redis): the
//! registry, the node table, the actors with their names and how to restart
//! them, and the key-value store, written through to an embedded redb
//! database on every change, so a head killed and started again on the same
//! file has its cluster back. Heartbeat reports are not written: they are
//! stale by the time anyone would read them.
//!
//! redb: pure Rust, ACID, crash-safe (copy-on-write B-trees, a commit is
//! durable when it returns), one file, no server — what a head needs and
//! nothing more. Each record is rmp-serde bytes under a key whose prefix says
//! what it is (`node/`, `actor/`, `group/`, `job/`, `kv/`, `registry`).

use super::wire::{ActorCreate, ActorPlace, JobInfo, NodeInfo};
use crate::error::Error;
use crate::groups::{GroupInfo, Resources};
use crate::ids::{ActorId, GroupId, NodeId};
use crate::messages::Scheduling;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("head");

/// A node as the head's table keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node.
    pub info: NodeInfo,
    /// Whether it is alive.
    pub alive: bool,
    /// Why it died.
    pub cause: Option<String>,
    /// When it was declared dead (ms since the Unix epoch; 0 if unknown):
    /// a head started again forgets the oldest deaths first.
    #[serde(default)]
    pub died: u64,
}

/// An actor as the head's table keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActorRecord {
    /// Where it is.
    pub place: ActorPlace,
    /// Its namespace and name.
    pub name: Option<(String, String)>,
    /// How to start it again elsewhere: the create, its CPUs, its
    /// scheduling, restarts done.
    pub restart: Option<(ActorCreate, f64, Scheduling, u64)>,
    /// The custom resources it needs.
    #[serde(default)]
    pub resources: Resources,
}

/// A placement group as the head's table keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The group.
    pub info: GroupInfo,
    /// The node that created it.
    pub creator: NodeId,
}

/// What a head finds in its file when it starts.
#[derive(Debug, Default)]
pub struct Restored {
    /// The cluster's registry.
    pub registry: Option<Vec<String>>,
    /// Nodes, in the order they joined, with their records' keys.
    pub nodes: Vec<(String, NodeRecord)>,
    /// Actors.
    pub actors: Vec<ActorRecord>,
    /// The key-value store.
    pub kv: Vec<(String, Vec<u8>)>,
    /// Jobs, in the order they began.
    pub jobs: Vec<JobInfo>,
    /// Placement groups.
    pub groups: Vec<GroupRecord>,
}

/// The head's database.
pub struct HeadStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for HeadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeadStore({})", self.path.display())
    }
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Startup(format!(
        "the head's database {}: {what}: {e}",
        path.display()
    ))
}

/// The key of a node's record (zero-padded: the order they joined is kept
/// by a sequence number in the record's key).
pub fn node_key(seq: usize, id: NodeId) -> String {
    format!("node/{seq:08}/{:016x}", id.0)
}

/// The sequence number in a node record's key.
pub fn node_seq(key: &str) -> Option<usize> {
    key.strip_prefix("node/")?.split('/').next()?.parse().ok()
}

/// The key of an actor's record.
pub fn actor_key(id: ActorId) -> String {
    format!("actor/{:016x}/{}", id.node.0, id.seq)
}

/// The key of a placement group's record.
pub fn group_key(id: GroupId) -> String {
    format!("group/{:016x}/{}", id.node.0, id.seq)
}

/// The key of a job's record (by when it began, so they load in order).
pub fn job_key(job: &JobInfo) -> String {
    format!("job/{:016x}/{:016x}", job.started, job.id.0)
}

/// The key of a key-value entry.
pub fn kv_key(key: &str) -> String {
    format!("kv/{key}")
}

/// What [`HeadStore::write`] does with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Store these bytes under the key.
    Put(Vec<u8>),
    /// Delete the key's record.
    Delete,
    /// The record did not encode: leave what is stored alone.
    Unencodable,
}

impl HeadStore {
    /// Opens (or makes) the database at `path`.
    pub fn open(path: &Path) -> Result<HeadStore, Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed("cannot make its folder", path, e))?;
        }
        let db = redb::Database::create(path).map_err(|e| {
            failed(
                "cannot open it (to start without it: remove the file, or use another \
                 storage file, or --storage none)",
                path,
                e,
            )
        })?;
        #[cfg(unix)]
        {
            // It holds the key-value store and the actors' arguments: its
            // user's only, as the token is.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let txn = db
            .begin_write()
            .map_err(|e| failed("cannot write", path, e))?;
        txn.open_table(TABLE)
            .map_err(|e| failed("cannot open its table", path, e))?;
        txn.commit().map_err(|e| failed("cannot write", path, e))?;
        Ok(HeadStore {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Everything in it. A record that does not decode is skipped, logged.
    pub fn load(&self) -> Result<Restored, Error> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| failed("cannot read", &self.path, e))?;
        let table = txn
            .open_table(TABLE)
            .map_err(|e| failed("cannot read", &self.path, e))?;
        let mut restored = Restored::default();
        let rows = table
            .iter()
            .map_err(|e| failed("cannot read", &self.path, e))?;
        for row in rows {
            let (k, v) = row.map_err(|e| failed("cannot read", &self.path, e))?;
            let (key, bytes) = (k.value(), v.value());
            let bad = |e: rmp_serde::decode::Error| {
                tracing::error!("rayx: the head's record {key} does not decode, skipped: {e}");
            };
            if key == "registry" {
                match rmp_serde::from_slice(bytes) {
                    Ok(r) => restored.registry = Some(r),
                    Err(e) => bad(e),
                }
            } else if key.starts_with("node/") {
                match rmp_serde::from_slice(bytes) {
                    Ok(r) => restored.nodes.push((key.to_string(), r)),
                    Err(e) => bad(e),
                }
            } else if key.starts_with("actor/") {
                match rmp_serde::from_slice(bytes) {
                    Ok(r) => restored.actors.push(r),
                    Err(e) => bad(e),
                }
            } else if key.starts_with("group/") {
                match rmp_serde::from_slice(bytes) {
                    Ok(r) => restored.groups.push(r),
                    Err(e) => bad(e),
                }
            } else if key.starts_with("job/") {
                match rmp_serde::from_slice(bytes) {
                    Ok(r) => restored.jobs.push(r),
                    Err(e) => bad(e),
                }
            } else if let Some(k) = key.strip_prefix("kv/") {
                restored.kv.push((k.to_string(), bytes.to_vec()));
            }
        }
        Ok(restored)
    }

    /// Writes and deletes records in one durable commit. A failed write is
    /// logged: the head serves on from memory.
    pub fn write(&self, records: &[(String, Change)]) {
        let result = (|| -> Result<(), String> {
            let txn = self.db.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
                for (key, value) in records {
                    match value {
                        Change::Put(v) => {
                            table
                                .insert(key.as_str(), v.as_slice())
                                .map_err(|e| e.to_string())?;
                        }
                        Change::Delete => {
                            table.remove(key.as_str()).map_err(|e| e.to_string())?;
                        }
                        // Logged by encode; the stored record (if any) stays
                        // as it was rather than be lost.
                        Change::Unencodable => {}
                    }
                }
            }
            txn.commit().map_err(|e| e.to_string())
        })();
        if let Err(e) = result {
            tracing::error!(
                "rayx: the head could not write its database {}: {e}",
                self.path.display()
            );
        }
    }

    /// Encodes a record for [`write`](Self::write).
    pub fn encode<T: Serialize>(value: &T) -> Change {
        match rmp_serde::to_vec(value) {
            Ok(b) => Change::Put(b),
            Err(e) => {
                tracing::error!("rayx: a head record does not encode, not written: {e}");
                Change::Unencodable
            }
        }
    }

    /// A clean stop: the cluster is over, and so is its file.
    pub fn remove(self) {
        let path = self.path.clone();
        drop(self.db);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!("rayx: cannot remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose encoding fails.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("this record cannot be encoded"))
        }
    }

    #[test]
    fn a_record_that_does_not_encode_leaves_the_stored_one_alone() {
        let dir = std::env::temp_dir().join(format!(
            "rayx-store-test-{}-{:x}",
            std::process::id(),
            crate::ids::NodeId::random().0
        ));
        let path = dir.join("head.db");
        let store = HeadStore::open(&path).unwrap();
        let key = kv_key("k");
        store.write(&[(key.clone(), HeadStore::encode(&b"stored".to_vec()))]);
        let failed = HeadStore::encode(&Unencodable);
        assert_eq!(failed, Change::Unencodable);
        store.write(&[(key.clone(), failed)]);
        let kv = store.load().unwrap().kv;
        let stored = rmp_serde::to_vec(&b"stored".to_vec()).unwrap();
        assert_eq!(
            kv,
            vec![("k".to_string(), stored)],
            "the stored record stays"
        );
        store.write(&[(key, Change::Delete)]);
        assert!(store.load().unwrap().kv.is_empty(), "a delete deletes it");
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
