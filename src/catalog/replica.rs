//! Catalogue snapshots for replication: the replicated tables as one
//! self-describing byte string, and its wholesale import on the peer.
//!
//! Replicated: `disks`, `volumes`, `properties`, `snapshots` (what a user
//! sees as volumes, snapshots, names and properties). Not replicated:
//! `jobs` (a job belongs to the process running it), `peers` and
//! `replication_state` (per host).
//!
//! Encoding (JSON, UTF-8): `{"v":1,"tables":{"disks":[[col,...],...],...}}`
//! with every row as an array in the column order of [`TABLES`]; integers
//! are JSON numbers, text is JSON strings. Import replaces the four tables
//! in one IMMEDIATE transaction with foreign-key checks, so a peer's
//! catalogue is always some complete snapshot of the primary's.
//!
//! Depends on the parent module's connection helpers only.

use super::{Catalog, Error, Result};
use rusqlite::types::Value;

/// The replicated tables and their columns, parents before children.
pub const TABLES: &[(&str, &str)] = &[
    ("disks", "guid, created, description"),
    (
        "volumes",
        "guid, disk_guid, parent_guid, voltype, format, allocation, capacity, legality, generation, ctime, mtime, description",
    ),
    ("properties", "object, key, value"),
    ("snapshots", "guid, disk_guid, name, created"),
];

/// Largest snapshot accepted from a peer (bounds memory on hostile input).
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

fn to_json(v: Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Integer(i) => serde_json::Value::from(i),
        Value::Real(f) => serde_json::Value::from(f),
        Value::Text(s) => serde_json::Value::from(s),
        Value::Blob(b) => serde_json::Value::from(b),
    }
}

fn from_json(v: &serde_json::Value) -> std::result::Result<Value, String> {
    Ok(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => return Err(format!("number {n} is not an integer")),
        },
        serde_json::Value::String(s) => Value::Text(s.clone()),
        other => return Err(format!("unexpected value {other}")),
    })
}

impl Catalog {
    /// Rows changed through this process's connection since it was opened
    /// (cheap: no query). Replication compares it to notice catalogue
    /// changes made by this process.
    pub fn local_changes(&self) -> u64 {
        self.lock().total_changes()
    }

    /// SQLite's `data_version`: changes when *another* connection (a CLI
    /// process) commits to the catalogue.
    pub fn data_version(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))?))
    }

    /// The replicated tables as one snapshot (see the module docs).
    pub fn replication_snapshot(&self) -> Result<Vec<u8>> {
        let tables = self.read(|c| {
            let mut tables = serde_json::Map::new();
            for (t, cols) in TABLES {
                let mut st = c.prepare(&format!("SELECT {cols} FROM {t} ORDER BY 1, 2"))?;
                let n = st.column_count();
                let rows = st
                    .query_map([], |r| {
                        (0..n).map(|i| r.get::<_, Value>(i).map(to_json)).collect::<rusqlite::Result<Vec<_>>>()
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                tables.insert(
                    t.to_string(),
                    serde_json::Value::from(rows.into_iter().map(serde_json::Value::from).collect::<Vec<_>>()),
                );
            }
            Ok(tables)
        })?;
        let doc = serde_json::json!({ "v": 1, "tables": tables });
        Ok(serde_json::to_vec(&doc).unwrap_or_default())
    }

    /// Replace the replicated tables with a peer's snapshot, atomically.
    /// Malformed input is an error naming what is wrong, never a panic.
    pub fn replication_import(&self, bytes: &[u8]) -> Result<()> {
        let bad = |d: String| Error::Corrupt(format!("replicated catalogue snapshot: {d}"));
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(bad(format!("{} bytes is too large", bytes.len())));
        }
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if doc.get("v").and_then(|v| v.as_i64()) != Some(1) {
            return Err(bad("unknown version".into()));
        }
        let mut rows: Vec<(&str, &str, Vec<Vec<Value>>)> = Vec::new();
        for (t, cols) in TABLES {
            let ncols = cols.split(',').count();
            let arr = doc
                .get("tables")
                .and_then(|x| x.get(*t))
                .and_then(|x| x.as_array())
                .ok_or_else(|| bad(format!("table {t} missing")))?;
            let mut out = Vec::with_capacity(arr.len());
            for r in arr {
                let cells = r.as_array().ok_or_else(|| bad(format!("a row of {t} is not an array")))?;
                if cells.len() != ncols {
                    return Err(bad(format!("a row of {t} has {} columns, not {ncols}", cells.len())));
                }
                out.push(cells.iter().map(from_json).collect::<std::result::Result<Vec<_>, _>>().map_err(bad)?);
            }
            rows.push((t, cols, out));
        }
        self.write(|c| {
            for (t, _, _) in rows.iter().rev() {
                c.execute(&format!("DELETE FROM {t}"), [])?;
            }
            for (t, cols, rs) in &rows {
                let marks = vec!["?"; cols.split(',').count()].join(", ");
                let mut st = c.prepare(&format!("INSERT INTO {t} ({cols}) VALUES ({marks})"))?;
                for r in rs {
                    st.execute(rusqlite::params_from_iter(r.iter()))?;
                }
            }
            // Dangling references from a damaged snapshot are refused.
            let mut fk = c.prepare("PRAGMA foreign_key_check")?;
            if fk.query([])?.next()?.is_some() {
                return Err(Error::Corrupt("replicated catalogue snapshot violates a foreign key".into()).into());
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_garbage_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = Catalog::create(&d.path().join("a.db")).unwrap();
        let b = Catalog::create(&d.path().join("b.db")).unwrap();
        let (disk, _) = a.create_disk("vm1", 1 << 20, crate::catalog::Legality::Legal).unwrap();
        a.prop_set(disk.guid, "owner", "x").unwrap();
        let snap = a.replication_snapshot().unwrap();
        b.create_disk("other", 4096, crate::catalog::Legality::Legal).unwrap();
        b.replication_import(&snap).unwrap();
        assert_eq!(b.replication_snapshot().unwrap(), snap);
        assert_eq!(b.find_disk("vm1").unwrap().guid, disk.guid);
        assert!(b.find_disk("other").is_err());
        for junk in [&b"{"[..], b"{\"v\":2}", b"{\"v\":1,\"tables\":{}}", b"\xff\xfe"] {
            assert!(b.replication_import(junk).is_err());
        }
        // A failed import leaves the catalogue as it was.
        assert_eq!(b.replication_snapshot().unwrap(), snap);
    }
}

/// One configured replication peer (`strata peer add`). Per host, never
/// replicated. `listen` lives in `replication_state` (key `listen`), so no
/// schema change was needed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerRow {
    pub name: String,
    /// Where the peer listens (`host:port`).
    pub address: String,
    /// File holding the shared secret (never the secret itself).
    pub secret_file: String,
    /// `A` or `C`.
    pub protocol: String,
    /// Where this host accepts the peer's connection.
    pub listen: Option<String>,
    pub created_unix: i64,
}

impl Catalog {
    /// Add the peer. One peer per store (a two-node pair): a second one is
    /// refused with the name of the first.
    pub fn peer_add(&self, p: &PeerRow) -> Result<()> {
        if !matches!(p.protocol.as_str(), "A" | "C") {
            return Err(Error::Corrupt(format!("protocol {:?} is not A or C", p.protocol)));
        }
        self.write(|c| {
            let existing: Option<String> =
                rusqlite::OptionalExtension::optional(c.query_row("SELECT name FROM peers LIMIT 1", [], |r| r.get(0)))?;
            if let Some(n) = existing {
                return Err(Error::Corrupt(format!(
                    "peer {n:?} is already configured; a store replicates to one peer (run `strata peer remove {n}` first)"
                ))
                .into());
            }
            c.execute(
                "INSERT INTO peers (name, address, secret_file, role, protocol, created) VALUES (?1, ?2, ?3, 'SECONDARY', ?4, ?5)",
                rusqlite::params![p.name, p.address, p.secret_file, p.protocol, p.created_unix],
            )?;
            if let Some(l) = &p.listen {
                c.execute("INSERT INTO replication_state (peer, key, value) VALUES (?1, 'listen', ?2)", rusqlite::params![p.name, l])?;
            }
            Ok(())
        })
    }

    /// Remove the peer; returns whether it existed.
    pub fn peer_remove(&self, name: &str) -> Result<bool> {
        self.write(|c| {
            c.execute("DELETE FROM replication_state WHERE peer = ?1", [name])?;
            Ok(c.execute("DELETE FROM peers WHERE name = ?1", [name])? > 0)
        })
    }

    /// The configured peers (zero or one).
    pub fn peers(&self) -> Result<Vec<PeerRow>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT p.name, p.address, p.secret_file, p.protocol, p.created, s.value FROM peers p \
                 LEFT JOIN replication_state s ON s.peer = p.name AND s.key = 'listen' ORDER BY p.name",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok(PeerRow {
                        name: r.get(0)?,
                        address: r.get(1)?,
                        secret_file: r.get(2)?,
                        protocol: r.get(3)?,
                        created_unix: r.get(4)?,
                        listen: r.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;

    #[test]
    fn one_peer_per_store_with_its_listen_address() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::create(&d.path().join("c.db")).unwrap();
        let p = PeerRow {
            name: "b".into(),
            address: "10.0.0.2:7789".into(),
            secret_file: "/etc/strata/secret".into(),
            protocol: "C".into(),
            listen: Some("0.0.0.0:7789".into()),
            created_unix: 5,
        };
        c.peer_add(&p).unwrap();
        assert_eq!(c.peers().unwrap(), vec![p.clone()]);
        let err = c.peer_add(&PeerRow { name: "c".into(), ..p.clone() }).unwrap_err();
        assert!(err.to_string().contains("already configured"), "{err}");
        assert!(c.peer_add(&PeerRow { protocol: "B".into(), ..p.clone() }).is_err());
        assert!(c.peer_remove("b").unwrap());
        assert!(!c.peer_remove("b").unwrap());
        assert!(c.peers().unwrap().is_empty());
    }
}
