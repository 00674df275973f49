//! The SQLite catalogue: image groups (disks), volumes (layers), properties,
//! snapshots, jobs, peers.
//!
//! Owns `STORE/catalog.db`. WAL mode, `synchronous=FULL` (metadata changes
//! are rare and must be durable when a command returns), schema version in
//! `PRAGMA user_version` with forward migrations; a database newer than this
//! binary is refused.
//!
//! Terminology follows oVirt (seed 001): a *disk* (image group) is what the
//! user calls a volume and sees as one file; its *volumes* are the layers of
//! its chain, each with a parent GUID (all-zero for the base). The user-visible
//! name is the property `name` of the disk, unique across the store (a partial
//! UNIQUE index), as LINSTOR/Incus keep names (seed 000).
//!
//! Depends on: `guid`, rusqlite. Never on chain, store or volume.
//! Lock order: the one connection mutex is a leaf lock (never held while
//! calling out).

mod schema;

use crate::guid::Guid;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

pub use schema::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("catalogue {path}: {source}")]
    Sqlite { path: String, #[source] source: rusqlite::Error },
    #[error("catalogue schema version {found} is newer than this strata understands ({supported}); upgrade strata")]
    TooNew { found: i64, supported: i64 },
    #[error("a volume named {0:?} already exists")]
    NameExists(String),
    #[error("no volume or layer named or with GUID {0:?}")]
    NotFound(String),
    #[error("catalogue is inconsistent: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VolType { Leaf, Internal, Shared }
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VolFormat { Raw, Cow }
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Allocation { Preallocated, Sparse }
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Legality { Legal, Illegal }

/// One image group: what the user calls a volume (one file in the mount).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiskRow {
    pub guid: Guid,
    /// The unique user-visible name (property `name`).
    pub name: String,
    /// GUID of the active leaf layer.
    pub leaf: Guid,
    /// Virtual size in bytes (the leaf's capacity).
    pub capacity: u64,
    pub created_unix: i64,
    pub description: String,
}

/// One layer of a chain (a catalogue `volumes` row).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VolumeRow {
    pub guid: Guid,
    pub disk: Guid,
    /// `Guid::BLANK` for a base layer.
    pub parent: Guid,
    pub voltype: VolType,
    pub format: VolFormat,
    pub allocation: Allocation,
    pub capacity: u64,
    pub legality: Legality,
    pub generation: u64,
    pub created_unix: i64,
    pub modified_unix: i64,
    pub description: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRow {
    pub id: i64,
    /// e.g. "create", "import", "merge".
    pub kind: String,
    /// GUID (as text) of the disk the job works on.
    pub object: String,
    pub state: String,
    pub payload: String,
    pub started_unix: i64,
    pub updated_unix: i64,
}

pub struct Catalog {
    conn: Mutex<rusqlite::Connection>,
    path: String,
}

impl Catalog {
    /// Create a new catalogue at `path` (must not exist) with the current schema.
    pub fn create(path: &Path) -> Result<Catalog> { todo!("{path:?}") }
    /// Open an existing catalogue, applying forward migrations.
    pub fn open(path: &Path) -> Result<Catalog> { todo!("{path:?}") }

    /// Insert a disk, its base layer (LEAF, RAW, SPARSE, `legality`) and its
    /// `name` property in one transaction. Fails with `NameExists`.
    pub fn create_disk(&self, name: &str, capacity: u64, legality: Legality) -> Result<(DiskRow, VolumeRow)> { todo!("{name}{capacity}{legality:?}") }
    /// Find a disk by name, by its GUID, or by the GUID of any of its layers.
    pub fn find_disk(&self, name_or_guid: &str) -> Result<DiskRow> { todo!("{name_or_guid}") }
    pub fn disk(&self, guid: Guid) -> Result<DiskRow> { todo!("{guid}") }
    /// All disks, ordered by name.
    pub fn list_disks(&self) -> Result<Vec<DiskRow>> { todo!() }
    /// The layers of a disk's active chain, base first, leaf last.
    pub fn chain(&self, disk: Guid) -> Result<Vec<VolumeRow>> { todo!("{disk}") }
    /// Every layer of every disk (for loading maps and deriving refcounts).
    pub fn all_volumes(&self) -> Result<Vec<VolumeRow>> { todo!() }
    pub fn volume(&self, guid: Guid) -> Result<VolumeRow> { todo!("{guid}") }
    pub fn rename_disk(&self, disk: Guid, new_name: &str) -> Result<()> { todo!("{disk}{new_name}") }
    /// Set the capacity of the disk's leaf (and of the disk).
    pub fn set_capacity(&self, disk: Guid, capacity: u64) -> Result<()> { todo!("{disk}{capacity}") }
    pub fn set_legality(&self, volume: Guid, legality: Legality) -> Result<()> { todo!("{volume}{legality:?}") }
    /// Delete a disk with all its layers, properties, snapshots and jobs in one
    /// transaction; returns the GUIDs of the deleted layers.
    pub fn remove_disk(&self, disk: Guid) -> Result<Vec<Guid>> { todo!("{disk}") }

    pub fn prop_get(&self, object: Guid, key: &str) -> Result<Option<String>> { todo!("{object}{key}") }
    pub fn prop_set(&self, object: Guid, key: &str, value: &str) -> Result<()> { todo!("{object}{key}{value}") }
    /// Returns whether the key existed.
    pub fn prop_unset(&self, object: Guid, key: &str) -> Result<bool> { todo!("{object}{key}") }
    pub fn prop_list(&self, object: Guid) -> Result<BTreeMap<String, String>> { todo!("{object}") }

    pub fn begin_job(&self, kind: &str, object: Guid, payload: &str) -> Result<i64> { todo!("{kind}{object}{payload}") }
    pub fn update_job(&self, id: i64, state: &str, payload: &str) -> Result<()> { todo!("{id}{state}{payload}") }
    pub fn finish_job(&self, id: i64) -> Result<()> { todo!("{id}") }
    pub fn jobs_for(&self, object: Guid) -> Result<Vec<JobRow>> { todo!("{object}") }
    pub fn all_jobs(&self) -> Result<Vec<JobRow>> { todo!() }

    /// Bytes used by the catalogue files (db + wal), for `status`.
    pub fn size_bytes(&self) -> u64 { todo!() }
}
