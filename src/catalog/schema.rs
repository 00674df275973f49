//! Schema and forward migrations of the catalogue.
//!
//! `MIGRATIONS[n]` takes a database from `PRAGMA user_version` n to n + 1.
//! The list only ever grows: a released migration is never edited, because
//! stores created by that release must keep opening (fixtures per version).
//! `SCHEMA_VERSION` is derived from the list so the two cannot disagree.
//!
//! Conventions every migration keeps:
//! - GUIDs are stored as canonical lowercase hyphenated text (36 chars), so
//!   rows are readable with the `sqlite3` shell and compare as text; the
//!   all-zero GUID is the parent of a base layer (oVirt `BLANK_UUID`).
//! - Enumerations are stored as upper-case words (as oVirt/VDSM print them)
//!   and constrained by CHECK, so a stray value is refused at write time.
//! - Times are Unix seconds.
//! - `volumes.parent_guid` has no foreign key on purpose: a base layer's
//!   parent is the blank GUID, a clone's base lives in another disk, and
//!   `chain dump` must be able to *report* a missing parent rather than the
//!   database hiding the anomaly.
//! - `jobs.object` has no foreign key: a `create` job is recorded before the
//!   disk it creates exists, and must survive a crash that leaves no disk.
//!
//! Migrations run with `foreign_keys` off (SQLite's documented procedure for
//! table rebuilds) and a `foreign_key_check` before each commit.

/// `PRAGMA application_id` of a strata catalogue ("STRA" in ASCII), so that
/// pointing strata at some other SQLite file is refused instead of migrated.
pub const APPLICATION_ID: i64 = 0x5354_5241;

/// Forward migrations; index n upgrades user_version n to n + 1.
pub const MIGRATIONS: &[&str] = &[
    // 0 → 1: the initial schema.
    r#"
CREATE TABLE disks (
    guid        TEXT    PRIMARY KEY NOT NULL
                        CHECK (length(guid) = 36 AND guid = lower(guid)),
    created     INTEGER NOT NULL,
    description TEXT    NOT NULL DEFAULT ''
);

CREATE TABLE volumes (
    guid        TEXT    PRIMARY KEY NOT NULL
                        CHECK (length(guid) = 36 AND guid = lower(guid)),
    disk_guid   TEXT    NOT NULL REFERENCES disks(guid),
    parent_guid TEXT    NOT NULL
                        CHECK (length(parent_guid) = 36 AND parent_guid = lower(parent_guid)),
    voltype     TEXT    NOT NULL CHECK (voltype IN ('LEAF', 'INTERNAL', 'SHARED')),
    format      TEXT    NOT NULL CHECK (format IN ('RAW', 'COW')),
    allocation  TEXT    NOT NULL CHECK (allocation IN ('PREALLOCATED', 'SPARSE')),
    capacity    INTEGER NOT NULL CHECK (capacity >= 0),
    legality    TEXT    NOT NULL CHECK (legality IN ('LEGAL', 'ILLEGAL')),
    generation  INTEGER NOT NULL DEFAULT 0 CHECK (generation >= 0),
    ctime       INTEGER NOT NULL,
    mtime       INTEGER NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    CHECK (parent_guid <> guid)
);
CREATE INDEX volumes_by_disk ON volumes(disk_guid);
CREATE INDEX volumes_by_parent ON volumes(parent_guid);
-- A disk has exactly one active leaf; the database refuses a second one
-- (zero is still possible mid-repair and is reported as Corrupt on read).
CREATE UNIQUE INDEX volumes_one_leaf_per_disk ON volumes(disk_guid)
    WHERE voltype = 'LEAF';

-- LINSTOR-style Aux properties of a disk or a layer (object = its GUID).
CREATE TABLE properties (
    object TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (object, key)
) WITHOUT ROWID;
-- User-visible names are unique across the store; a rename is one UPDATE.
CREATE UNIQUE INDEX properties_unique_name ON properties(value)
    WHERE key = 'name';

-- guid = the frozen (INTERNAL) layer the snapshot name refers to.
CREATE TABLE snapshots (
    guid      TEXT    PRIMARY KEY NOT NULL REFERENCES volumes(guid),
    disk_guid TEXT    NOT NULL REFERENCES disks(guid),
    name      TEXT    NOT NULL,
    created   INTEGER NOT NULL,
    UNIQUE (disk_guid, name)
);

-- Multi-step operations in progress (VDSM style), resumed or rolled back by
-- a restarted daemon. A row exists only while the operation is unfinished.
CREATE TABLE jobs (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL,
    object  TEXT    NOT NULL,
    state   TEXT    NOT NULL,
    payload TEXT    NOT NULL DEFAULT '',
    started INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE INDEX jobs_by_object ON jobs(object);

-- Replication (SPEC §5); placeholders filled in by later work.
CREATE TABLE peers (
    name        TEXT    PRIMARY KEY NOT NULL,
    address     TEXT    NOT NULL,
    secret_file TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    protocol    TEXT    NOT NULL,
    created     INTEGER NOT NULL
);
CREATE TABLE replication_state (
    peer  TEXT NOT NULL REFERENCES peers(name) ON DELETE CASCADE,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (peer, key)
) WITHOUT ROWID;

PRAGMA application_id = 1398035009;
"#,
];

/// The schema version this binary writes: the number of migrations.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

// The literal in migration 1 must stay equal to APPLICATION_ID.
const _: () = assert!(APPLICATION_ID == 1_398_035_009);
