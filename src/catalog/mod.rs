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
//! Invariants kept here (not left to callers): one LEAF per disk (also a
//! partial UNIQUE index), a disk and its base layer and name are created in
//! one transaction, every multi-row change is one transaction, names are
//! never GUID-shaped (so a lookup by "name or GUID" is unambiguous), and a
//! row that does not parse is reported as [`Error::Corrupt`], never a panic.
//! Schema and migrations: `schema.rs`.
//!
//! Depends on: `guid`, rusqlite. Never on chain, store or volume.
//! Lock order: the one connection mutex is a leaf lock (never held while
//! calling out).

mod chains;
mod replica;
mod schema;

pub use chains::SnapshotRow;
pub use replica::PeerRow;

use crate::guid::Guid;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use schema::SCHEMA_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("catalogue {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("catalogue schema version {found} is newer than this strata understands ({supported}); upgrade strata")]
    TooNew { found: i64, supported: i64 },
    #[error("a volume named {0:?} already exists")]
    NameExists(String),
    #[error("no volume or layer named or with GUID {0:?}")]
    NotFound(String),
    #[error("catalogue is inconsistent: {0}")]
    Corrupt(String),
    /// The key may not be set or unset as a plain property (`name`: use
    /// [`Catalog::rename_disk`], so uniqueness and the disk's identity hold).
    #[error("property {0:?} is reserved; use `volume rename` to change a name")]
    ReservedKey(String),
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("capacity {0} bytes is larger than the catalogue can record (at most 2^63-1)")]
    CapacityTooLarge(u64),
    /// Removing the disk would pull layers out from under other disks'
    /// chains (clones whose base is one of its snapshots).
    #[error(
        "disk {disk} cannot be removed: layers {dependents:?} of other disks (clones) are based on it; remove those first"
    )]
    HasDependents { disk: Guid, dependents: Vec<Guid> },
    #[error("no job with id {0} in the catalogue")]
    NoSuchJob(i64),
    #[error("catalogue {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VolType {
    Leaf,
    Internal,
    Shared,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum VolFormat {
    Raw,
    Cow,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Allocation {
    Preallocated,
    Sparse,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Legality {
    Legal,
    Illegal,
}

/// The upper-case words the catalogue stores (and VDSM prints) for each enum.
macro_rules! catalogue_words {
    ($ty:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            /// The word stored in the catalogue, e.g. `LEAF`.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $word),+ }
            }
            fn from_word(word: &str) -> Option<$ty> {
                match word { $($word => Some($ty::$variant),)+ _ => None }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
catalogue_words!(VolType { Leaf => "LEAF", Internal => "INTERNAL", Shared => "SHARED" });
catalogue_words!(VolFormat { Raw => "RAW", Cow => "COW" });
catalogue_words!(Allocation { Preallocated => "PREALLOCATED", Sparse => "SPARSE" });
catalogue_words!(Legality { Legal => "LEGAL", Illegal => "ILLEGAL" });

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

/// How long a statement waits for another process's write lock (e.g. the
/// CLI while the daemon commits) before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The property holding a disk's user-visible name. Only `create_disk` and
/// `rename_disk` write it, so the UNIQUE index is the single arbiter.
const NAME_KEY: &str = "name";

/// State of a job row right after `begin_job`.
pub const JOB_STATE_STARTED: &str = "started";

/// Longest name accepted: a name is a file name in the mount (NAME_MAX).
const NAME_MAX_BYTES: usize = 255;

/// A failure inside an operation, before the database path is attached.
/// Lets the bodies use `?` on both rusqlite and catalogue errors.
enum Fail {
    Sql(rusqlite::Error),
    Cat(Error),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Fail {
        Fail::Sql(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Cat(e)
    }
}

type Inner<T> = std::result::Result<T, Fail>;

impl Catalog {
    /// Create a new catalogue at `path` (must not exist) with the current schema.
    pub fn create(path: &Path) -> Result<Catalog> {
        // create_new: an existing catalogue is never adopted or overwritten
        // by `init`; a zero-byte file is a valid empty SQLite database.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| Error::Io { path: path.display().to_string(), source })?;
        Self::open(path)
    }

    /// Open an existing catalogue, applying forward migrations.
    pub fn open(path: &Path) -> Result<Catalog> {
        let shown = path.display().to_string();
        let sql = |source| Error::Sqlite { path: shown.clone(), source };
        // No SQLITE_OPEN_CREATE: a mistyped store path must not silently
        // grow an empty catalogue.
        let mut conn =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(sql)?;
        configure(&mut conn).map_err(|f| flatten(f, &shown))?;
        Ok(Catalog { conn: Mutex::new(conn), path: shown })
    }

    /// Insert a disk, its base layer (LEAF, RAW, SPARSE, `legality`) and its
    /// `name` property in one transaction. Fails with `NameExists`.
    pub fn create_disk(&self, name: &str, capacity: u64, legality: Legality) -> Result<(DiskRow, VolumeRow)> {
        validate_name(name)?;
        let capacity_sql = capacity_to_sql(capacity)?;
        self.write(|c| {
            let now = now_unix();
            let disk = DiskRow {
                guid: Guid::new_random(),
                name: name.to_owned(),
                leaf: Guid::new_random(),
                capacity,
                created_unix: now,
                description: String::new(),
            };
            let base = VolumeRow {
                guid: disk.leaf,
                disk: disk.guid,
                parent: Guid::BLANK,
                voltype: VolType::Leaf,
                format: VolFormat::Raw,
                allocation: Allocation::Sparse,
                capacity,
                legality,
                generation: 0,
                created_unix: now,
                modified_unix: now,
                description: String::new(),
            };
            c.execute(
                "INSERT INTO disks (guid, created, description) VALUES (?1, ?2, ?3)",
                params![disk.guid.to_string(), now, disk.description],
            )?;
            insert_volume(c, &base, capacity_sql)?;
            // The partial UNIQUE index decides; no racy pre-check.
            c.execute(
                "INSERT INTO properties (object, key, value) VALUES (?1, ?2, ?3)",
                params![disk.guid.to_string(), NAME_KEY, name],
            )
            .map_err(|e| name_conflict(e, name))?;
            Ok((disk, base))
        })
    }

    /// Find a disk by name, by its GUID, or by the GUID of any of its layers.
    pub fn find_disk(&self, name_or_guid: &str) -> Result<DiskRow> {
        self.read(|c| {
            let owner = c
                .query_row(
                    "SELECT object FROM properties WHERE key = ?1 AND value = ?2",
                    params![NAME_KEY, name_or_guid],
                    |r| r.get::<_, Value>(0),
                )
                .optional()?;
            if let Some(owner) = owner {
                let disk = value_guid(&owner).ok_or_else(|| {
                    Error::Corrupt(format!("name {name_or_guid:?} belongs to {owner:?}, which is not a GUID"))
                })?;
                return match load_disk(c, disk) {
                    Err(Fail::Cat(Error::NotFound(_))) => {
                        Err(Error::Corrupt(format!("name {name_or_guid:?} belongs to {disk}, which is not a disk"))
                            .into())
                    }
                    other => other,
                };
            }
            let Ok(guid) = name_or_guid.parse::<Guid>() else {
                return Err(Error::NotFound(name_or_guid.to_owned()).into());
            };
            if disk_exists(c, guid)? {
                return load_disk(c, guid);
            }
            match load_volume(c, guid) {
                Ok(layer) => load_disk(c, layer.disk),
                Err(Fail::Cat(Error::NotFound(_))) => Err(Error::NotFound(name_or_guid.to_owned()).into()),
                Err(other) => Err(other),
            }
        })
    }

    pub fn disk(&self, guid: Guid) -> Result<DiskRow> {
        self.read(|c| load_disk(c, guid))
    }

    /// All disks, ordered by name.
    pub fn list_disks(&self) -> Result<Vec<DiskRow>> {
        self.read(|c| {
            // LEFT JOIN: a disk that lost its name is reported, not hidden.
            let rows = query_cells(
                c,
                "SELECT d.guid FROM disks d
                 LEFT JOIN properties p ON p.object = d.guid AND p.key = 'name'
                 ORDER BY p.value, d.guid",
                [],
                "disks",
            )?;
            rows.iter().map(|r| load_disk(c, r.guid(0, "guid")?)).collect()
        })
    }

    /// The layers of a disk's active chain, base first, leaf last.
    pub fn chain(&self, disk: Guid) -> Result<Vec<VolumeRow>> {
        self.read(|c| chain_of(c, disk))
    }

    /// Every layer of every disk (for loading maps and deriving refcounts).
    pub fn all_volumes(&self) -> Result<Vec<VolumeRow>> {
        self.read(|c| {
            query_cells(
                c,
                concat!("SELECT ", volume_columns!(), " FROM volumes ORDER BY disk_guid, ctime, guid"),
                [],
                "volumes",
            )?
            .iter()
            .map(|r| Ok(volume_from(r)?))
            .collect()
        })
    }

    pub fn volume(&self, guid: Guid) -> Result<VolumeRow> {
        self.read(|c| load_volume(c, guid))
    }

    pub fn rename_disk(&self, disk: Guid, new_name: &str) -> Result<()> {
        validate_name(new_name)?;
        self.write(|c| {
            require_disk(c, disk)?;
            let changed = c
                .execute(
                    "UPDATE properties SET value = ?1 WHERE object = ?2 AND key = ?3",
                    params![new_name, disk.to_string(), NAME_KEY],
                )
                .map_err(|e| name_conflict(e, new_name))?;
            if changed == 0 {
                return Err(Error::Corrupt(format!("disk {disk} has no name property")).into());
            }
            Ok(())
        })
    }

    /// Set the capacity of the disk's leaf (and of the disk).
    pub fn set_capacity(&self, disk: Guid, capacity: u64) -> Result<()> {
        let capacity_sql = capacity_to_sql(capacity)?;
        self.write(|c| {
            require_disk(c, disk)?;
            let leaf = the_leaf(c, disk)?;
            c.execute(
                "UPDATE volumes SET capacity = ?1, mtime = ?2 WHERE guid = ?3",
                params![capacity_sql, now_unix(), leaf.guid.to_string()],
            )?;
            Ok(())
        })
    }

    pub fn set_legality(&self, volume: Guid, legality: Legality) -> Result<()> {
        self.write(|c| {
            let changed = c.execute(
                "UPDATE volumes SET legality = ?1, mtime = ?2 WHERE guid = ?3",
                params![legality.as_str(), now_unix(), volume.to_string()],
            )?;
            if changed == 0 {
                return Err(Error::NotFound(volume.to_string()).into());
            }
            Ok(())
        })
    }

    /// Freeze the disk's leaf and put a new empty layer on top, in one
    /// transaction (the catalogue half of a snapshot, seed 001): the old leaf
    /// becomes INTERNAL with its generation bumped; the new LEAF is COW,
    /// SPARSE, of the old leaf's capacity, generation 0, with parent = the
    /// old leaf. Returns the new leaf.
    pub fn add_layer(&self, disk: Guid, legality: Legality) -> Result<VolumeRow> {
        self.write(|c| {
            require_disk(c, disk)?;
            let old = the_leaf(c, disk)?;
            let now = now_unix();
            let new = chains::freeze_and_stack(c, disk, old.guid, old.guid, old.capacity, legality, now)?;
            Ok(new)
        })
    }

    /// Delete a disk with all its layers, properties, snapshots and jobs in one
    /// transaction; returns the GUIDs of the deleted layers.
    ///
    /// Refused with `HasDependents` while a layer of another disk (a clone)
    /// has one of this disk's layers as its parent: deleting would leave that
    /// chain with a missing parent.
    pub fn remove_disk(&self, disk: Guid) -> Result<Vec<Guid>> {
        self.write(|c| {
            require_disk(c, disk)?;
            let d = disk.to_string();
            let dependents = query_cells(
                c,
                "SELECT guid FROM volumes WHERE disk_guid <> ?1
                 AND parent_guid IN (SELECT guid FROM volumes WHERE disk_guid = ?1)
                 ORDER BY guid",
                [&d],
                "volumes",
            )?
            .iter()
            .map(|r| r.guid(0, "guid"))
            .collect::<Result<Vec<_>>>()?;
            if !dependents.is_empty() {
                return Err(Error::HasDependents { disk, dependents }.into());
            }
            let layers =
                query_cells(c, "SELECT guid FROM volumes WHERE disk_guid = ?1 ORDER BY guid", [&d], "volumes")?
                    .iter()
                    .map(|r| r.guid(0, "guid"))
                    .collect::<Result<Vec<_>>>()?;
            // Children before parents, for the foreign keys.
            for sql in [
                "DELETE FROM properties WHERE object = ?1
                 OR object IN (SELECT guid FROM volumes WHERE disk_guid = ?1)",
                "DELETE FROM jobs WHERE object = ?1
                 OR object IN (SELECT guid FROM volumes WHERE disk_guid = ?1)",
                "DELETE FROM snapshots WHERE disk_guid = ?1
                 OR guid IN (SELECT guid FROM volumes WHERE disk_guid = ?1)",
                "DELETE FROM volumes WHERE disk_guid = ?1",
                "DELETE FROM disks WHERE guid = ?1",
            ] {
                c.execute(sql, [&d])?;
            }
            Ok(layers)
        })
    }

    pub fn prop_get(&self, object: Guid, key: &str) -> Result<Option<String>> {
        self.read(|c| {
            let value = c
                .query_row(
                    "SELECT value FROM properties WHERE object = ?1 AND key = ?2",
                    params![object.to_string(), key],
                    |r| r.get::<_, Value>(0),
                )
                .optional()?;
            match value {
                None => Ok(None),
                Some(Value::Text(v)) => Ok(Some(v)),
                Some(other) => {
                    Err(Error::Corrupt(format!("properties row ({object}, {key:?}): value is {other:?}, not text"))
                        .into())
                }
            }
        })
    }

    /// Insert or replace a property of a disk or layer (which must exist).
    /// `name` is refused with `ReservedKey`: use `rename_disk`.
    pub fn prop_set(&self, object: Guid, key: &str, value: &str) -> Result<()> {
        self.prop_update_many(object, &[(key, Some(value))])
    }

    /// Returns whether the key existed.
    pub fn prop_unset(&self, object: Guid, key: &str) -> Result<bool> {
        refuse_reserved(key)?;
        self.write(|c| {
            let n =
                c.execute("DELETE FROM properties WHERE object = ?1 AND key = ?2", params![object.to_string(), key])?;
            Ok(n > 0)
        })
    }

    /// Every property of the object, `name` included.
    pub fn prop_list(&self, object: Guid) -> Result<BTreeMap<String, String>> {
        self.read(|c| {
            query_cells(
                c,
                "SELECT object, key, value FROM properties WHERE object = ?1",
                [object.to_string()],
                "properties",
            )?
            .iter()
            .map(|r| Ok((r.text(1, "key")?, r.text(2, "value")?)))
            .collect()
        })
    }

    /// Record the start of a multi-step operation; its state is
    /// [`JOB_STATE_STARTED`]. `object` need not exist yet (a `create` job is
    /// recorded before its disk).
    pub fn begin_job(&self, kind: &str, object: Guid, payload: &str) -> Result<i64> {
        self.write(|c| {
            let now = now_unix();
            c.execute(
                "INSERT INTO jobs (kind, object, state, payload, started, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![kind, object.to_string(), JOB_STATE_STARTED, payload, now],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    pub fn update_job(&self, id: i64, state: &str, payload: &str) -> Result<()> {
        self.write(|c| {
            let n = c.execute(
                "UPDATE jobs SET state = ?1, payload = ?2, updated = ?3 WHERE id = ?4",
                params![state, payload, now_unix(), id],
            )?;
            if n == 0 {
                return Err(Error::NoSuchJob(id).into());
            }
            Ok(())
        })
    }

    /// Delete the job row. Finishing a job that no longer exists is not an
    /// error: `remove_disk` deletes the jobs of the disk it removes, which
    /// includes the `remove` job itself.
    pub fn finish_job(&self, id: i64) -> Result<()> {
        self.write(|c| {
            c.execute("DELETE FROM jobs WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    pub fn jobs_for(&self, object: Guid) -> Result<Vec<JobRow>> {
        self.read(|c| {
            query_cells(
                c,
                concat!("SELECT ", job_columns!(), " FROM jobs WHERE object = ?1 ORDER BY id"),
                [object.to_string()],
                "jobs",
            )?
            .iter()
            .map(|r| Ok(job_from(r)?))
            .collect()
        })
    }

    pub fn all_jobs(&self) -> Result<Vec<JobRow>> {
        self.read(|c| {
            query_cells(c, concat!("SELECT ", job_columns!(), " FROM jobs ORDER BY id"), [], "jobs")?
                .iter()
                .map(|r| Ok(job_from(r)?))
                .collect()
        })
    }

    /// Bytes used by the catalogue files (db + wal), for `status`.
    pub fn size_bytes(&self) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", self.path)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// Path of the database file, as shown in errors.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held unwound through the open
        // transaction, which rolled back on drop: the connection is sound.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Run `f` in a deferred transaction, so its several SELECTs see one
    /// consistent state even if another process writes meanwhile.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Inner<T>) -> Result<T> {
        let mut conn = self.lock();
        let run = || -> Inner<T> {
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(|e| flatten(e, &self.path))
    }

    /// Run `f` in an IMMEDIATE transaction, committed only if `f` succeeds.
    /// IMMEDIATE takes the write lock up front, so a concurrent writer makes
    /// us wait (busy_timeout) instead of failing at a lock upgrade.
    fn write<T>(&self, f: impl FnOnce(&Connection) -> Inner<T>) -> Result<T> {
        let mut conn = self.lock();
        let run = || -> Inner<T> {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        };
        run().map_err(|e| flatten(e, &self.path))
    }
}

fn flatten(f: Fail, path: &str) -> Error {
    match f {
        Fail::Sql(source) => Error::Sqlite { path: path.to_owned(), source },
        Fail::Cat(e) => e,
    }
}

/// Connection settings, then migrations. Order matters: journal_mode before
/// any transaction (it cannot change inside one), foreign keys only after
/// the migrations (table rebuilds need them off).
fn configure(conn: &mut Connection) -> Inner<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Some filesystems cannot hold the WAL index; rollback journalling
        // is slower but equally durable with synchronous=FULL.
        tracing::warn!(journal_mode = %mode, "catalogue could not switch to WAL mode");
    }
    // FULL: a metadata change is durable when the command returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", false)?;
    migrate(conn)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// Apply pending migrations, one transaction each. The version is re-read
/// inside each IMMEDIATE transaction, so two processes opening an old store
/// at once do not both apply the same step.
fn migrate(conn: &mut Connection) -> Inner<()> {
    // Checked first without taking the write lock: an up-to-date catalogue
    // (the usual case) opens without writing, even on a read-only mount.
    if pending_migration(conn)?.is_none() {
        return Ok(());
    }
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(step) = pending_migration(&tx)? else {
            return Ok(());
        };
        let (from, to) = (step, step + 1);
        tx.execute_batch(schema::MIGRATIONS[step])?;
        let dangling = tx.query_row("PRAGMA foreign_key_check", [], |r| r.get::<_, String>(0)).optional()?;
        if let Some(table) = dangling {
            return Err(
                Error::Corrupt(format!("migration {from} -> {to} left dangling references in table {table}")).into()
            );
        }
        tx.pragma_update(None, "user_version", to as i64)?;
        tx.commit()?;
        tracing::info!(from, to, "migrated catalogue schema");
    }
}

/// The index of the next migration to apply, or `None` when up to date.
/// Refuses a newer schema and files that are not strata catalogues.
fn pending_migration(c: &Connection) -> Inner<Option<usize>> {
    let version: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let app_id: i64 = c.pragma_query_value(None, "application_id", |r| r.get(0))?;
    if version == 0 && app_id == 0 {
        // A brand-new (empty) database; anything else with tables is some
        // other program's file and must not be migrated into.
        let objects: i64 =
            c.query_row("SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'", [], |r| r.get(0))?;
        if objects > 0 {
            return Err(
                Error::Corrupt("the file is a SQLite database with tables but not a strata catalogue".into()).into()
            );
        }
    } else if app_id != schema::APPLICATION_ID {
        return Err(Error::Corrupt(format!(
            "the file is not a strata catalogue (SQLite application_id {app_id:#x}, user_version {version})"
        ))
        .into());
    }
    if version > SCHEMA_VERSION {
        return Err(Error::TooNew { found: version, supported: SCHEMA_VERSION }.into());
    }
    let Ok(step) = usize::try_from(version) else {
        return Err(Error::Corrupt(format!("negative schema version {version}")).into());
    };
    Ok((step < schema::MIGRATIONS.len()).then_some(step))
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// SQLite integers are signed 64-bit.
fn capacity_to_sql(capacity: u64) -> Result<i64> {
    i64::try_from(capacity).map_err(|_| Error::CapacityTooLarge(capacity))
}

fn refuse_reserved(key: &str) -> Result<()> {
    if key == NAME_KEY {
        return Err(Error::ReservedKey(key.to_owned()));
    }
    Ok(())
}

/// A name is a file name at the top of the mount, and shares one lookup with
/// GUIDs (`find_disk`), so a GUID-shaped name could shadow another disk.
fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a name must not be empty"
    } else if name.len() > NAME_MAX_BYTES {
        "a name is a file name and must be at most 255 bytes"
    } else if name.contains('/') || name.contains('\0') {
        "a name is a file name and must not contain '/' or NUL"
    } else if name == "." || name == ".." {
        "'.' and '..' are not file names"
    } else if name.parse::<Guid>().is_ok() {
        "a name must not look like a GUID (lookups accept names and GUIDs alike)"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { name: name.to_owned(), reason })
}

/// Only the partial UNIQUE index on names can raise SQLITE_CONSTRAINT_UNIQUE
/// for the statements this is used on (primary keys raise
/// SQLITE_CONSTRAINT_PRIMARYKEY).
fn name_conflict(e: rusqlite::Error, name: &str) -> Fail {
    if e.sqlite_extended_error_code() == Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE) {
        Fail::Cat(Error::NameExists(name.to_owned()))
    } else {
        Fail::Sql(e)
    }
}

macro_rules! volume_columns {
    () => {
        "guid, disk_guid, parent_guid, voltype, format, allocation, capacity, legality, \
         generation, ctime, mtime, description"
    };
}
use volume_columns;

macro_rules! job_columns {
    () => {
        "id, kind, object, state, payload, started, updated"
    };
}
use job_columns;

fn insert_volume(c: &Connection, v: &VolumeRow, capacity_sql: i64) -> Inner<()> {
    let generation = i64::try_from(v.generation)
        .map_err(|_| Error::Corrupt(format!("generation {} of layer {} overflows", v.generation, v.guid)))?;
    c.execute(
        concat!(
            "INSERT INTO volumes (",
            volume_columns!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ),
        params![
            v.guid.to_string(),
            v.disk.to_string(),
            v.parent.to_string(),
            v.voltype.as_str(),
            v.format.as_str(),
            v.allocation.as_str(),
            capacity_sql,
            v.legality.as_str(),
            generation,
            v.created_unix,
            v.modified_unix,
            v.description,
        ],
    )?;
    Ok(())
}

/// One row read as untyped SQLite values. SQLite stores whatever it is
/// given, so each cell is checked here and a bad one becomes `Corrupt`
/// naming the row, never a conversion error or a panic.
struct Cells {
    table: &'static str,
    values: Vec<Value>,
}

impl Cells {
    fn row_name(&self) -> String {
        match self.values.first() {
            Some(Value::Text(t)) => format!("{} row {t:?}", self.table),
            Some(other) => format!("{} row {other:?}", self.table),
            None => format!("{} row", self.table),
        }
    }

    fn bad(&self, column: &str, why: impl std::fmt::Display) -> Error {
        Error::Corrupt(format!("{}: column {column}: {why}", self.row_name()))
    }

    fn value(&self, i: usize, column: &str) -> Result<&Value> {
        self.values.get(i).ok_or_else(|| self.bad(column, "missing"))
    }

    fn text(&self, i: usize, column: &str) -> Result<String> {
        match self.value(i, column)? {
            Value::Text(t) => Ok(t.clone()),
            other => Err(self.bad(column, format_args!("{other:?} is not text"))),
        }
    }

    fn int(&self, i: usize, column: &str) -> Result<i64> {
        match self.value(i, column)? {
            Value::Integer(n) => Ok(*n),
            other => Err(self.bad(column, format_args!("{other:?} is not an integer"))),
        }
    }

    fn unsigned(&self, i: usize, column: &str) -> Result<u64> {
        let n = self.int(i, column)?;
        u64::try_from(n).map_err(|_| self.bad(column, format_args!("{n} is negative")))
    }

    fn guid(&self, i: usize, column: &str) -> Result<Guid> {
        let t = self.text(i, column)?;
        t.parse().map_err(|e: String| self.bad(column, e))
    }

    fn word<T>(&self, i: usize, column: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
        let t = self.text(i, column)?;
        parse(&t).ok_or_else(|| self.bad(column, format_args!("unknown value {t:?}")))
    }
}

fn query_cells<P: rusqlite::Params>(c: &Connection, sql: &str, params: P, table: &'static str) -> Inner<Vec<Cells>> {
    let mut stmt = c.prepare_cached(sql)?;
    let n = stmt.column_count();
    let rows = stmt.query_map(params, |row| {
        let values = (0..n).map(|i| row.get::<_, Value>(i)).collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Cells { table, values })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn value_guid(v: &Value) -> Option<Guid> {
    match v {
        Value::Text(t) => t.parse().ok(),
        _ => None,
    }
}

fn volume_from(r: &Cells) -> Result<VolumeRow> {
    Ok(VolumeRow {
        guid: r.guid(0, "guid")?,
        disk: r.guid(1, "disk_guid")?,
        parent: r.guid(2, "parent_guid")?,
        voltype: r.word(3, "voltype", VolType::from_word)?,
        format: r.word(4, "format", VolFormat::from_word)?,
        allocation: r.word(5, "allocation", Allocation::from_word)?,
        capacity: r.unsigned(6, "capacity")?,
        legality: r.word(7, "legality", Legality::from_word)?,
        generation: r.unsigned(8, "generation")?,
        created_unix: r.int(9, "ctime")?,
        modified_unix: r.int(10, "mtime")?,
        description: r.text(11, "description")?,
    })
}

fn job_from(r: &Cells) -> Result<JobRow> {
    Ok(JobRow {
        id: r.int(0, "id")?,
        kind: r.text(1, "kind")?,
        object: r.text(2, "object")?,
        state: r.text(3, "state")?,
        payload: r.text(4, "payload")?,
        started_unix: r.int(5, "started")?,
        updated_unix: r.int(6, "updated")?,
    })
}

fn disk_exists(c: &Connection, guid: Guid) -> Inner<bool> {
    let hit = c.query_row("SELECT 1 FROM disks WHERE guid = ?1", [guid.to_string()], |_| Ok(())).optional()?;
    Ok(hit.is_some())
}

fn volume_exists(c: &Connection, guid: Guid) -> Inner<bool> {
    let hit = c.query_row("SELECT 1 FROM volumes WHERE guid = ?1", [guid.to_string()], |_| Ok(())).optional()?;
    Ok(hit.is_some())
}

fn require_disk(c: &Connection, guid: Guid) -> Inner<()> {
    if disk_exists(c, guid)? { Ok(()) } else { Err(Error::NotFound(guid.to_string()).into()) }
}

fn load_volume(c: &Connection, guid: Guid) -> Inner<VolumeRow> {
    let rows = query_cells(
        c,
        concat!("SELECT ", volume_columns!(), " FROM volumes WHERE guid = ?1"),
        [guid.to_string()],
        "volumes",
    )?;
    match rows.first() {
        Some(r) => Ok(volume_from(r)?),
        None => Err(Error::NotFound(guid.to_string()).into()),
    }
}

/// The disk's single LEAF layer; none or several is corruption.
fn the_leaf(c: &Connection, disk: Guid) -> Inner<VolumeRow> {
    let rows = query_cells(
        c,
        concat!("SELECT ", volume_columns!(), " FROM volumes WHERE disk_guid = ?1 AND voltype = 'LEAF' ORDER BY guid"),
        [disk.to_string()],
        "volumes",
    )?;
    match rows.as_slice() {
        [one] => Ok(volume_from(one)?),
        [] => Err(Error::Corrupt(format!("disk {disk} has no LEAF layer")).into()),
        several => {
            let guids: Vec<String> = several.iter().map(|r| r.row_name()).collect();
            Err(Error::Corrupt(format!(
                "disk {disk} has {} LEAF layers ({}); exactly one is allowed",
                several.len(),
                guids.join(", ")
            ))
            .into())
        }
    }
}

fn load_disk(c: &Connection, guid: Guid) -> Inner<DiskRow> {
    let rows =
        query_cells(c, "SELECT guid, created, description FROM disks WHERE guid = ?1", [guid.to_string()], "disks")?;
    let Some(row) = rows.first() else {
        return Err(Error::NotFound(guid.to_string()).into());
    };
    let name = c
        .query_row(
            "SELECT value FROM properties WHERE object = ?1 AND key = ?2",
            params![guid.to_string(), NAME_KEY],
            |r| r.get::<_, Value>(0),
        )
        .optional()?;
    let name = match name {
        Some(Value::Text(n)) => n,
        Some(other) => {
            return Err(Error::Corrupt(format!("disk {guid}: name {other:?} is not text")).into());
        }
        None => return Err(Error::Corrupt(format!("disk {guid} has no name property")).into()),
    };
    let leaf = the_leaf(c, guid)?;
    Ok(DiskRow {
        guid: row.guid(0, "guid")?,
        name,
        leaf: leaf.guid,
        capacity: leaf.capacity,
        created_unix: row.int(1, "created")?,
        description: row.text(2, "description")?,
    })
}

/// Walk from the leaf through parent GUIDs to the base (which may lie in
/// another disk, for a clone); base first.
fn chain_of(c: &Connection, disk: Guid) -> Inner<Vec<VolumeRow>> {
    require_disk(c, disk)?;
    let leaf = the_leaf(c, disk)?;
    let mut seen = HashSet::from([leaf.guid]);
    let mut chain = vec![leaf];
    loop {
        let child = &chain[chain.len() - 1];
        let parent = child.parent;
        if parent.is_blank() {
            break;
        }
        if !seen.insert(parent) {
            return Err(Error::Corrupt(format!(
                "chain of disk {disk} loops: layer {} has parent {parent}, which is already in the chain",
                child.guid
            ))
            .into());
        }
        match load_volume(c, parent) {
            Ok(v) => chain.push(v),
            Err(Fail::Cat(Error::NotFound(_))) => {
                return Err(Error::Corrupt(format!(
                    "chain of disk {disk}: layer {} has parent {parent}, which does not exist",
                    child.guid
                ))
                .into());
            }
            Err(other) => return Err(other),
        }
    }
    chain.reverse();
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_catalog() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::create(&dir.path().join("catalog.db")).unwrap();
        (dir, cat)
    }

    /// Raw SQL behind the API's back, to build damaged catalogues.
    fn raw(cat: &Catalog, sql: &str) {
        cat.lock().execute_batch(sql).unwrap();
    }

    fn count(cat: &Catalog, sql: &str) -> i64 {
        cat.lock().query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn pragma_int(cat: &Catalog, name: &str) -> i64 {
        cat.lock().pragma_query_value(None, name, |r| r.get(0)).unwrap()
    }

    #[test]
    fn created_catalogue_reopens_with_the_same_disks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let (disk, base) = {
            let cat = Catalog::create(&path).unwrap();
            cat.create_disk("vm1", 20 << 30, Legality::Legal).unwrap()
        };
        let cat = Catalog::open(&path).unwrap();
        let found = cat.disk(disk.guid).unwrap();
        assert_eq!(found.name, "vm1");
        assert_eq!(found.leaf, base.guid);
        assert_eq!(found.capacity, 20 << 30);
        let v = cat.volume(base.guid).unwrap();
        assert_eq!(v.disk, disk.guid);
        assert!(v.parent.is_blank());
        assert_eq!(
            (v.voltype, v.format, v.allocation, v.legality, v.generation),
            (VolType::Leaf, VolFormat::Raw, Allocation::Sparse, Legality::Legal, 0)
        );
    }

    #[test]
    fn create_sets_user_version_and_durable_connection_settings() {
        let (_dir, cat) = new_catalog();
        assert_eq!(pragma_int(&cat, "user_version"), SCHEMA_VERSION);
        assert_eq!(pragma_int(&cat, "application_id"), schema::APPLICATION_ID);
        assert_eq!(pragma_int(&cat, "foreign_keys"), 1);
        assert_eq!(pragma_int(&cat, "synchronous"), 2, "FULL");
        assert_eq!(pragma_int(&cat, "busy_timeout"), 5000);
        let mode: String = cat.lock().pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn create_refuses_an_existing_file_and_open_refuses_a_missing_one() {
        let (dir, _cat) = new_catalog();
        let path = dir.path().join("catalog.db");
        assert!(matches!(Catalog::create(&path), Err(Error::Io { .. })));
        let missing = dir.path().join("nope.db");
        assert!(matches!(Catalog::open(&missing), Err(Error::Sqlite { .. })));
        assert!(!missing.exists());
    }

    #[test]
    fn open_refuses_a_newer_schema_version() {
        let (dir, cat) = new_catalog();
        raw(&cat, &format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1));
        drop(cat);
        match Catalog::open(&dir.path().join("catalog.db")) {
            Err(Error::TooNew { found, supported }) => {
                assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
            }
            other => panic!("expected TooNew, got {:?}", other.err()),
        }
    }

    #[test]
    fn open_migrates_an_empty_v0_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("PRAGMA user_version = 0; VACUUM;").unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(pragma_int(&cat, "user_version"), SCHEMA_VERSION);
        for table in ["disks", "volumes", "properties", "snapshots", "jobs", "peers", "replication_state"] {
            let n =
                count(&cat, &format!("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = '{table}'"));
            assert_eq!(n, 1, "table {table}");
        }
        cat.create_disk("after-migration", 4096, Legality::Legal).unwrap();
    }

    #[test]
    fn open_refuses_a_sqlite_file_that_is_not_a_catalogue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        assert!(matches!(Catalog::open(&path), Err(Error::Corrupt(_))));
    }

    #[test]
    fn duplicate_names_are_rejected_on_create() {
        let (_dir, cat) = new_catalog();
        cat.create_disk("vm1", 4096, Legality::Legal).unwrap();
        match cat.create_disk("vm1", 8192, Legality::Legal) {
            Err(Error::NameExists(n)) => assert_eq!(n, "vm1"),
            other => panic!("expected NameExists, got {other:?}"),
        }
        // The failed create left nothing behind.
        assert_eq!(count(&cat, "SELECT count(*) FROM disks"), 1);
        assert_eq!(count(&cat, "SELECT count(*) FROM volumes"), 1);
    }

    #[test]
    fn rename_changes_only_the_name_and_rejects_duplicates() {
        let (_dir, cat) = new_catalog();
        let (a, _) = cat.create_disk("a", 4096, Legality::Legal).unwrap();
        cat.create_disk("b", 4096, Legality::Legal).unwrap();
        assert!(matches!(cat.rename_disk(a.guid, "b"), Err(Error::NameExists(n)) if n == "b"));
        cat.rename_disk(a.guid, "a").unwrap();
        cat.rename_disk(a.guid, "c").unwrap();
        let renamed = cat.find_disk("c").unwrap();
        assert_eq!((renamed.guid, renamed.leaf), (a.guid, a.leaf));
        assert!(matches!(cat.find_disk("a"), Err(Error::NotFound(_))));
        assert!(matches!(cat.rename_disk(Guid::new_random(), "d"), Err(Error::NotFound(_))));
    }

    #[test]
    fn empty_path_like_and_guid_shaped_names_are_rejected() {
        let (_dir, cat) = new_catalog();
        let guid = Guid::new_random().to_string();
        let long = "x".repeat(256);
        for bad in ["", ".", "..", "a/b", "a\0b", guid.as_str(), long.as_str()] {
            assert!(matches!(cat.create_disk(bad, 4096, Legality::Legal), Err(Error::InvalidName { .. })), "{bad:?}");
        }
        assert_eq!(count(&cat, "SELECT count(*) FROM disks"), 0);
    }

    #[test]
    fn capacity_beyond_i64_is_refused() {
        let (_dir, cat) = new_catalog();
        assert!(matches!(cat.create_disk("big", u64::MAX, Legality::Legal), Err(Error::CapacityTooLarge(_))));
    }

    #[test]
    fn find_disk_accepts_a_name_a_disk_guid_or_a_layer_guid() {
        let (_dir, cat) = new_catalog();
        let (disk, base) = cat.create_disk("vm1", 4096, Legality::Legal).unwrap();
        let top = cat.add_layer(disk.guid, Legality::Legal).unwrap();
        let upper = disk.guid.to_string().to_uppercase();
        for key in ["vm1".to_string(), disk.guid.to_string(), upper, base.guid.to_string(), top.guid.to_string()] {
            let found = cat.find_disk(&key).unwrap();
            assert_eq!((found.guid, found.leaf), (disk.guid, top.guid), "{key}");
        }
        assert!(matches!(cat.find_disk("vm2"), Err(Error::NotFound(_))));
        assert!(matches!(cat.find_disk(&Guid::new_random().to_string()), Err(Error::NotFound(_))));
    }

    #[test]
    fn chain_lists_three_layers_base_first() {
        let (_dir, cat) = new_catalog();
        let (disk, base) = cat.create_disk("vm1", 1 << 20, Legality::Legal).unwrap();
        let mid = cat.add_layer(disk.guid, Legality::Legal).unwrap();
        let top = cat.add_layer(disk.guid, Legality::Illegal).unwrap();
        let chain = cat.chain(disk.guid).unwrap();
        let guids: Vec<Guid> = chain.iter().map(|v| v.guid).collect();
        assert_eq!(guids, [base.guid, mid.guid, top.guid]);
        let parents: Vec<Guid> = chain.iter().map(|v| v.parent).collect();
        assert_eq!(parents, [Guid::BLANK, base.guid, mid.guid]);
        let types: Vec<VolType> = chain.iter().map(|v| v.voltype).collect();
        assert_eq!(types, [VolType::Internal, VolType::Internal, VolType::Leaf]);
        let generations: Vec<u64> = chain.iter().map(|v| v.generation).collect();
        assert_eq!(generations, [1, 1, 0]);
        assert_eq!(chain[2].format, VolFormat::Cow);
        assert_eq!(chain[2].legality, Legality::Illegal);
        assert!(chain.iter().all(|v| v.capacity == 1 << 20));
        assert_eq!(cat.disk(disk.guid).unwrap().leaf, top.guid);
        assert_eq!(cat.all_volumes().unwrap().len(), 3);
    }

    #[test]
    fn chain_reports_a_loop_as_corrupt() {
        let (_dir, cat) = new_catalog();
        let (disk, base) = cat.create_disk("vm1", 4096, Legality::Legal).unwrap();
        cat.add_layer(disk.guid, Legality::Legal).unwrap();
        let top = cat.add_layer(disk.guid, Legality::Legal).unwrap();
        raw(&cat, &format!("UPDATE volumes SET parent_guid = '{}' WHERE guid = '{}'", top.guid, base.guid));
        match cat.chain(disk.guid) {
            Err(Error::Corrupt(msg)) => assert!(msg.contains("loops"), "{msg}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn chain_reports_a_missing_parent_as_corrupt() {
        let (_dir, cat) = new_catalog();
        let (disk, _) = cat.create_disk("vm1", 4096, Legality::Legal).unwrap();
        let top = cat.add_layer(disk.guid, Legality::Legal).unwrap();
        let ghost = Guid::new_random();
        raw(&cat, &format!("UPDATE volumes SET parent_guid = '{ghost}' WHERE guid = '{}'", top.guid));
        match cat.chain(disk.guid) {
            Err(Error::Corrupt(msg)) => assert!(msg.contains("does not exist"), "{msg}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_disk_without_a_leaf_is_corrupt_and_a_second_leaf_is_refused() {
        let (_dir, cat) = new_catalog();
        let (disk, base) = cat.create_disk("vm1", 4096, Legality::Legal).unwrap();
        let second = format!(
            "INSERT INTO volumes ({}) VALUES ('{}', '{}', '{}', 'LEAF', 'COW', 'SPARSE', 4096, 'LEGAL', 0, 0, 0, '')",
            volume_columns!(),
            Guid::new_random(),
            disk.guid,
            base.guid
        );
        let refused = cat.lock().execute_batch(&second).unwrap_err().to_string();
        assert!(refused.contains("UNIQUE"), "{refused}");
        raw(&cat, "UPDATE volumes SET voltype = 'INTERNAL'");
        match cat.disk(disk.guid) {
            Err(Error::Corrupt(msg)) => assert!(msg.contains("no LEAF"), "{msg}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn unknown_words_in_a_row_are_corrupt_naming_the_row() {
        let (_dir, cat) = new_catalog();
        let (_, base) = cat.create_disk("vm1", 4096, Legality::Legal).unwrap();
        raw(
            &cat,
            &format!(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE volumes SET format = 'QCOW3' WHERE guid = '{}';
                 PRAGMA ignore_check_constraints = OFF;",
                base.guid
            ),
        );
        match cat.volume(base.guid) {
            Err(Error::Corrupt(msg)) => {
                assert!(msg.contains(&base.guid.to_string()) && msg.contains("QCOW3"), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn remove_disk_deletes_layers_properties_snapshots_and_jobs() {
        let (_dir, cat) = new_catalog();
        let (keep, _) = cat.create_disk("keep", 4096, Legality::Legal).unwrap();
        cat.prop_set(keep.guid, "owner", "bob").unwrap();
        let keep_job = cat.begin_job("create", keep.guid, "").unwrap();

        let (disk, base) = cat.create_disk("gone", 4096, Legality::Legal).unwrap();
        let top = cat.add_layer(disk.guid, Legality::Legal).unwrap();
        cat.prop_set(disk.guid, "owner", "alice").unwrap();
        cat.prop_set(base.guid, "note", "frozen").unwrap();
        raw(
            &cat,
            &format!(
                "INSERT INTO snapshots (guid, disk_guid, name, created) VALUES ('{}', '{}', 'snap1', 0)",
                base.guid, disk.guid
            ),
        );
        cat.begin_job("merge", disk.guid, "{}").unwrap();
        cat.begin_job("merge", top.guid, "{}").unwrap();

        let mut removed = cat.remove_disk(disk.guid).unwrap();
        removed.sort();
        let mut expected = vec![base.guid, top.guid];
        expected.sort();
        assert_eq!(removed, expected);

        assert!(matches!(cat.disk(disk.guid), Err(Error::NotFound(_))));
        assert!(matches!(cat.find_disk("gone"), Err(Error::NotFound(_))));
        assert_eq!(count(&cat, "SELECT count(*) FROM disks"), 1);
        assert_eq!(count(&cat, "SELECT count(*) FROM volumes"), 1);
        assert_eq!(count(&cat, "SELECT count(*) FROM snapshots"), 0);
        assert_eq!(count(&cat, "SELECT count(*) FROM properties"), 2, "keep's name and owner");
        let jobs = cat.all_jobs().unwrap();
        assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [keep_job]);
        assert!(matches!(cat.remove_disk(disk.guid), Err(Error::NotFound(_))));
    }

    #[test]
    fn remove_disk_refuses_while_a_clone_is_based_on_it() {
        let (_dir, cat) = new_catalog();
        let (origin, origin_base) = cat.create_disk("origin", 4096, Legality::Legal).unwrap();
        let (_clone, clone_base) = cat.create_disk("clone", 4096, Legality::Legal).unwrap();
        raw(
            &cat,
            &format!("UPDATE volumes SET parent_guid = '{}' WHERE guid = '{}'", origin_base.guid, clone_base.guid),
        );
        match cat.remove_disk(origin.guid) {
            Err(Error::HasDependents { dependents, .. }) => {
                assert_eq!(dependents, [clone_base.guid])
            }
            other => panic!("expected HasDependents, got {other:?}"),
        }
        assert!(cat.disk(origin.guid).is_ok());
    }

    #[test]
    fn properties_can_be_set_read_listed_and_unset_but_name_is_reserved() {
        let (_dir, cat) = new_catalog();
        let (disk, base) = cat.create_disk("vm1", 4096, Legality::Legal).unwrap();
        assert_eq!(cat.prop_get(disk.guid, "owner").unwrap(), None);
        cat.prop_set(disk.guid, "owner", "alice").unwrap();
        cat.prop_set(disk.guid, "owner", "bob").unwrap();
        cat.prop_set(base.guid, "cloned-from", "x@s").unwrap();
        assert_eq!(cat.prop_get(disk.guid, "owner").unwrap().as_deref(), Some("bob"));
        assert_eq!(cat.prop_get(disk.guid, "name").unwrap().as_deref(), Some("vm1"));
        let all = cat.prop_list(disk.guid).unwrap();
        assert_eq!(
            all.into_iter().collect::<Vec<_>>(),
            [("name".to_string(), "vm1".to_string()), ("owner".to_string(), "bob".to_string())]
        );
        assert!(cat.prop_unset(disk.guid, "owner").unwrap());
        assert!(!cat.prop_unset(disk.guid, "owner").unwrap());
        assert!(matches!(cat.prop_set(disk.guid, "name", "x"), Err(Error::ReservedKey(_))));
        assert!(matches!(cat.prop_unset(disk.guid, "name"), Err(Error::ReservedKey(_))));
        assert!(matches!(cat.prop_set(Guid::new_random(), "k", "v"), Err(Error::NotFound(_))));
        assert_eq!(cat.find_disk("vm1").unwrap().guid, disk.guid);
    }

    #[test]
    fn jobs_can_be_begun_updated_listed_and_finished() {
        let (_dir, cat) = new_catalog();
        let a = Guid::new_random();
        let b = Guid::new_random();
        let j1 = cat.begin_job("create", a, "p1").unwrap();
        let j2 = cat.begin_job("merge", b, "p2").unwrap();
        assert!(j2 > j1);
        let for_a = cat.jobs_for(a).unwrap();
        assert_eq!(for_a.len(), 1);
        assert_eq!(
            (for_a[0].kind.as_str(), for_a[0].object.clone(), for_a[0].state.as_str(), for_a[0].payload.as_str()),
            ("create", a.to_string(), JOB_STATE_STARTED, "p1")
        );
        cat.update_job(j1, "copying", "p1b").unwrap();
        let updated = &cat.jobs_for(a).unwrap()[0];
        assert_eq!((updated.state.as_str(), updated.payload.as_str()), ("copying", "p1b"));
        assert_eq!(cat.all_jobs().unwrap().len(), 2);
        cat.finish_job(j1).unwrap();
        cat.finish_job(j1).unwrap();
        assert!(cat.jobs_for(a).unwrap().is_empty());
        assert!(matches!(cat.update_job(j1, "x", ""), Err(Error::NoSuchJob(id)) if id == j1));
        assert_eq!(cat.all_jobs().unwrap().len(), 1);
    }

    #[test]
    fn set_capacity_and_set_legality_change_the_leaf() {
        let (_dir, cat) = new_catalog();
        let (disk, base) = cat.create_disk("vm1", 4096, Legality::Illegal).unwrap();
        let top = cat.add_layer(disk.guid, Legality::Legal).unwrap();
        cat.set_capacity(disk.guid, 8192).unwrap();
        assert_eq!(cat.disk(disk.guid).unwrap().capacity, 8192);
        assert_eq!(cat.volume(top.guid).unwrap().capacity, 8192);
        assert_eq!(cat.volume(base.guid).unwrap().capacity, 4096);
        cat.set_legality(base.guid, Legality::Legal).unwrap();
        assert_eq!(cat.volume(base.guid).unwrap().legality, Legality::Legal);
        assert!(matches!(cat.set_legality(Guid::new_random(), Legality::Legal), Err(Error::NotFound(_))));
        assert!(matches!(cat.set_capacity(Guid::new_random(), 1), Err(Error::NotFound(_))));
    }

    #[test]
    fn list_disks_is_ordered_by_name() {
        let (_dir, cat) = new_catalog();
        for name in ["b", "c", "a"] {
            cat.create_disk(name, 4096, Legality::Legal).unwrap();
        }
        let names: Vec<String> = cat.list_disks().unwrap().into_iter().map(|d| d.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    #[test]
    fn size_bytes_counts_the_database_and_its_wal() {
        let (dir, cat) = new_catalog();
        cat.create_disk("vm1", 4096, Legality::Legal).unwrap();
        let on_disk: u64 = ["catalog.db", "catalog.db-wal", "catalog.db-shm"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum();
        assert!(cat.size_bytes() > 0);
        assert_eq!(cat.size_bytes(), on_disk);
    }

    #[test]
    fn words_round_trip_through_their_catalogue_text() {
        for t in [VolType::Leaf, VolType::Internal, VolType::Shared] {
            assert_eq!(VolType::from_word(t.as_str()), Some(t));
        }
        for f in [VolFormat::Raw, VolFormat::Cow] {
            assert_eq!(VolFormat::from_word(&f.to_string()), Some(f));
        }
        for a in [Allocation::Preallocated, Allocation::Sparse] {
            assert_eq!(Allocation::from_word(a.as_str()), Some(a));
        }
        for l in [Legality::Legal, Legality::Illegal] {
            assert_eq!(Legality::from_word(l.as_str()), Some(l));
        }
        assert_eq!(VolType::from_word("leaf"), None);
    }
}
