//! Chain life cycle in the catalogue: snapshots, reverts, clones, merges
//! and flattening (seeds 000 and 001).
//!
//! Every change of chain shape is one transaction. Multi-step operations
//! (a merge moves map entries between layers before the catalogue can
//! change) follow VDSM: [`Catalog::begin_job_marking`] records the job and
//! marks the affected layers ILLEGAL in one transaction; the finishing
//! transaction re-parents, deletes, sets LEGAL, bumps generations and
//! deletes the job, all at once.

use super::*;

/// Raw rows for `chain dump` and `check`: (disk GUID, name) pairs, layers,
/// snapshots.
pub type DumpRows = (Vec<(Guid, Option<String>)>, Vec<VolumeRow>, Vec<SnapshotRow>);

/// A named snapshot: the frozen layer that held the volume's state.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotRow {
    /// The frozen layer's GUID.
    pub guid: Guid,
    pub disk: Guid,
    pub name: String,
    pub created_unix: i64,
}

fn snapshot_from(r: &Cells) -> Result<SnapshotRow> {
    Ok(SnapshotRow {
        guid: r.guid(0, "guid")?,
        disk: r.guid(1, "disk_guid")?,
        name: r.text(2, "name")?,
        created_unix: r.int(3, "created")?,
    })
}

fn validate_snapshot_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > NAME_MAX_BYTES
        || name.contains('/')
        || name.contains('\0')
        || name.contains('@')
        || name == "."
        || name == ".."
    {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason: "a snapshot name is 1–255 bytes without '/', '@' or NUL, and not '.' or '..'",
        });
    }
    Ok(())
}

fn snapshot_conflict(e: rusqlite::Error, name: &str) -> Fail {
    if e.sqlite_extended_error_code() == Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE)
        || e.sqlite_extended_error_code() == Some(rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    {
        Fail::Cat(Error::NameExists(name.to_owned()))
    } else {
        Fail::Sql(e)
    }
}

fn children_of(c: &Connection, layer: Guid) -> Inner<Vec<VolumeRow>> {
    query_cells(
        c,
        concat!("SELECT ", volume_columns!(), " FROM volumes WHERE parent_guid = ?1 ORDER BY ctime, guid"),
        [layer.to_string()],
        "volumes",
    )?
    .iter()
    .map(|r| Ok(volume_from(r)?))
    .collect()
}

/// Freeze `old` (INTERNAL, generation + 1) and insert a new empty COW leaf
/// of `capacity` whose parent is `parent`, in the caller's transaction. The
/// demotion comes first: the one-LEAF-per-disk index must hold after every
/// statement, not only at commit.
pub(super) fn freeze_and_stack(
    c: &Connection,
    disk: Guid,
    old: Guid,
    parent: Guid,
    capacity: u64,
    legality: Legality,
    now: i64,
) -> Inner<VolumeRow> {
    c.execute(
        "UPDATE volumes SET voltype = 'INTERNAL', generation = generation + 1, mtime = ?1 WHERE guid = ?2",
        params![now, old.to_string()],
    )?;
    let new = VolumeRow {
        guid: Guid::new_random(),
        disk,
        parent,
        voltype: VolType::Leaf,
        format: VolFormat::Cow,
        allocation: Allocation::Sparse,
        capacity,
        legality,
        generation: 0,
        created_unix: now,
        modified_unix: now,
        description: String::new(),
    };
    insert_volume(c, &new, capacity_to_sql(capacity)?)?;
    Ok(new)
}

fn bump(c: &Connection, layer: Guid) -> Inner<()> {
    c.execute(
        "UPDATE volumes SET legality = 'LEGAL', generation = generation + 1, mtime = ?1 WHERE guid = ?2",
        params![now_unix(), layer.to_string()],
    )?;
    Ok(())
}

fn delete_layer(c: &Connection, layer: Guid) -> Inner<()> {
    let g = layer.to_string();
    c.execute("DELETE FROM properties WHERE object = ?1", [&g])?;
    c.execute("DELETE FROM snapshots WHERE guid = ?1", [&g])?;
    c.execute("DELETE FROM volumes WHERE guid = ?1", [&g])?;
    Ok(())
}

impl Catalog {
    /// The catalogue half of a snapshot, in one transaction: freeze the
    /// leaf (INTERNAL, generation + 1), put a new empty COW leaf on top,
    /// and name the frozen layer.
    pub fn snapshot_disk(&self, disk: Guid, name: &str) -> Result<(SnapshotRow, VolumeRow)> {
        validate_snapshot_name(name)?;
        self.write(|c| {
            require_disk(c, disk)?;
            let old = the_leaf(c, disk)?;
            let now = now_unix();
            c.execute(
                "INSERT INTO snapshots (guid, disk_guid, name, created) VALUES (?1, ?2, ?3, ?4)",
                params![old.guid.to_string(), disk.to_string(), name, now],
            )
            .map_err(|e| snapshot_conflict(e, name))?;
            let new = freeze_and_stack(c, disk, old.guid, old.guid, old.capacity, Legality::Legal, now)?;
            Ok((SnapshotRow { guid: old.guid, disk, name: name.to_owned(), created_unix: now }, new))
        })
    }

    /// Snapshots of a disk, oldest first.
    pub fn snapshots(&self, disk: Guid) -> Result<Vec<SnapshotRow>> {
        self.read(|c| {
            query_cells(
                c,
                "SELECT guid, disk_guid, name, created FROM snapshots WHERE disk_guid = ?1 ORDER BY created, name",
                [disk.to_string()],
                "snapshots",
            )?
            .iter()
            .map(|r| Ok(snapshot_from(r)?))
            .collect()
        })
    }

    pub fn all_snapshots(&self) -> Result<Vec<SnapshotRow>> {
        self.read(|c| {
            query_cells(
                c,
                "SELECT guid, disk_guid, name, created FROM snapshots ORDER BY disk_guid, created, name",
                [],
                "snapshots",
            )?
            .iter()
            .map(|r| Ok(snapshot_from(r)?))
            .collect()
        })
    }

    /// A snapshot of `disk` by name or by its layer GUID.
    pub fn find_snapshot(&self, disk: Guid, name_or_guid: &str) -> Result<SnapshotRow> {
        let all = self.snapshots(disk)?;
        if let Some(s) = all.iter().find(|s| s.name == name_or_guid) {
            return Ok(s.clone());
        }
        if let Ok(g) = name_or_guid.parse::<Guid>()
            && let Some(s) = all.iter().find(|s| s.guid == g)
        {
            return Ok(s.clone());
        }
        Err(Error::NotFound(name_or_guid.to_owned()))
    }

    /// The snapshot naming `layer`, if any.
    pub fn snapshot_of_layer(&self, layer: Guid) -> Result<Option<SnapshotRow>> {
        self.read(|c| {
            Ok(query_cells(
                c,
                "SELECT guid, disk_guid, name, created FROM snapshots WHERE guid = ?1",
                [layer.to_string()],
                "snapshots",
            )?
            .first()
            .map(snapshot_from)
            .transpose()?)
        })
    }

    /// Layers whose parent is `layer`, in any disk.
    pub fn children(&self, layer: Guid) -> Result<Vec<VolumeRow>> {
        self.read(|c| children_of(c, layer))
    }

    /// Every layer recorded for a disk, on the active chain or not.
    pub fn disk_layers(&self, disk: Guid) -> Result<Vec<VolumeRow>> {
        self.read(|c| {
            query_cells(
                c,
                concat!("SELECT ", volume_columns!(), " FROM volumes WHERE disk_guid = ?1 ORDER BY ctime, guid"),
                [disk.to_string()],
                "volumes",
            )?
            .iter()
            .map(|r| Ok(volume_from(r)?))
            .collect()
        })
    }

    /// The chain from `layer` down to the base, base first.
    pub fn chain_from(&self, layer: Guid) -> Result<Vec<VolumeRow>> {
        self.read(|c| {
            let mut seen = HashSet::new();
            let mut out = vec![load_volume(c, layer)?];
            seen.insert(layer);
            loop {
                let p = out[out.len() - 1].parent;
                if p.is_blank() {
                    break;
                }
                if !seen.insert(p) {
                    return Err(Error::Corrupt(format!("chain below layer {layer} loops at {p}")).into());
                }
                out.push(
                    load_volume(c, p)
                        .map_err(|_| Error::Corrupt(format!("chain below layer {layer}: parent {p} does not exist")))?,
                );
            }
            out.reverse();
            Ok(out)
        })
    }

    /// Revert: a new empty LEAF on top of `snap_layer`. The old leaf becomes
    /// INTERNAL; named `keep_as` it stays as a snapshot, otherwise it is
    /// returned for the caller to delete (with [`Catalog::remove_layer`]).
    pub fn revert_disk(&self, disk: Guid, snap_layer: Guid, keep_as: Option<&str>) -> Result<(VolumeRow, VolumeRow)> {
        if let Some(n) = keep_as {
            validate_snapshot_name(n)?;
        }
        self.write(|c| {
            require_disk(c, disk)?;
            let old = the_leaf(c, disk)?;
            let snap = load_volume(c, snap_layer)?;
            let now = now_unix();
            if let Some(n) = keep_as {
                c.execute(
                    "INSERT INTO snapshots (guid, disk_guid, name, created) VALUES (?1, ?2, ?3, ?4)",
                    params![old.guid.to_string(), disk.to_string(), n, now],
                )
                .map_err(|e| snapshot_conflict(e, n))?;
            }
            let new = freeze_and_stack(c, disk, old.guid, snap.guid, snap.capacity, Legality::Legal, now)?;
            Ok((new, old))
        })
    }

    /// Delete one layer that nothing depends on.
    pub fn remove_layer(&self, layer: Guid) -> Result<()> {
        self.write(|c| {
            let kids = children_of(c, layer)?;
            if !kids.is_empty() {
                return Err(Error::HasDependents {
                    disk: load_volume(c, layer)?.disk,
                    dependents: kids.iter().map(|k| k.guid).collect(),
                }
                .into());
            }
            delete_layer(c, layer)
        })
    }

    /// A new disk whose leaf's parent is `parent_layer` (a snapshot of
    /// another disk), with the `cloned-from` property, in one transaction.
    pub fn clone_disk(&self, name: &str, parent_layer: Guid, cloned_from: &str) -> Result<(DiskRow, VolumeRow)> {
        validate_name(name)?;
        self.write(|c| {
            let parent = load_volume(c, parent_layer)?;
            let now = now_unix();
            let disk = DiskRow {
                guid: Guid::new_random(),
                name: name.to_owned(),
                leaf: Guid::new_random(),
                capacity: parent.capacity,
                created_unix: now,
                description: String::new(),
            };
            let leaf = VolumeRow {
                guid: disk.leaf,
                disk: disk.guid,
                parent: parent.guid,
                voltype: VolType::Leaf,
                format: VolFormat::Cow,
                allocation: Allocation::Sparse,
                capacity: parent.capacity,
                legality: Legality::Legal,
                generation: 0,
                created_unix: now,
                modified_unix: now,
                description: String::new(),
            };
            c.execute(
                "INSERT INTO disks (guid, created, description) VALUES (?1, ?2, ?3)",
                params![disk.guid.to_string(), now, disk.description],
            )?;
            insert_volume(c, &leaf, capacity_to_sql(parent.capacity)?)?;
            c.execute(
                "INSERT INTO properties (object, key, value) VALUES (?1, ?2, ?3)",
                params![disk.guid.to_string(), NAME_KEY, name],
            )
            .map_err(|e| name_conflict(e, name))?;
            c.execute(
                "INSERT INTO properties (object, key, value) VALUES (?1, 'cloned-from', ?2)",
                params![disk.guid.to_string(), cloned_from],
            )?;
            Ok((disk, leaf))
        })
    }

    /// Record a job and mark `illegal` layers ILLEGAL, in one transaction.
    pub fn begin_job_marking(&self, kind: &str, object: Guid, payload: &str, illegal: &[Guid]) -> Result<i64> {
        self.write(|c| {
            let now = now_unix();
            c.execute(
                "INSERT INTO jobs (kind, object, state, payload, started, updated) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                params![kind, object.to_string(), JOB_STATE_STARTED, payload, now],
            )?;
            let id = c.last_insert_rowid();
            for g in illegal {
                c.execute(
                    "UPDATE volumes SET legality = 'ILLEGAL', mtime = ?1 WHERE guid = ?2",
                    params![now, g.to_string()],
                )?;
            }
            Ok(id)
        })
    }

    /// Finish removing snapshot layer `removed` whose entries were pulled up
    /// into every child: children re-parent to its parent, the layer and its
    /// snapshot row go, the children become LEGAL with a generation bump,
    /// and the job row is deleted — one transaction.
    pub fn finish_pull_up(&self, removed: Guid, job: i64) -> Result<()> {
        self.write(|c| {
            let r = load_volume(c, removed)?;
            let kids = children_of(c, removed)?;
            for k in &kids {
                c.execute(
                    "UPDATE volumes SET parent_guid = ?1 WHERE guid = ?2",
                    params![r.parent.to_string(), k.guid.to_string()],
                )?;
                bump(c, k.guid)?;
            }
            delete_layer(c, removed)?;
            c.execute("DELETE FROM jobs WHERE id = ?1", [job])?;
            Ok(())
        })
    }

    /// Finish removing snapshot layer `survivor`'s name by absorbing its
    /// only child `absorbed` (an internal layer) into it: `survivor` takes
    /// the child's place — its voltype, its snapshot name, its children —
    /// and the child row goes; LEGAL + generation bump; job deleted.
    pub fn finish_commit_down(&self, survivor: Guid, absorbed: Guid, job: i64) -> Result<()> {
        self.write(|c| {
            let a = load_volume(c, absorbed)?;
            let s = survivor.to_string();
            let ag = absorbed.to_string();
            for k in children_of(c, absorbed)? {
                c.execute("UPDATE volumes SET parent_guid = ?1 WHERE guid = ?2", params![s, k.guid.to_string()])?;
                bump(c, k.guid)?;
            }
            c.execute("DELETE FROM snapshots WHERE guid = ?1", [&s])?;
            c.execute("UPDATE snapshots SET guid = ?1 WHERE guid = ?2", params![s, ag])?;
            c.execute("DELETE FROM properties WHERE object = ?1", [&ag])?;
            c.execute("DELETE FROM volumes WHERE guid = ?1", [&ag])?;
            c.execute("UPDATE volumes SET voltype = ?1 WHERE guid = ?2", params![a.voltype.as_str(), s])?;
            bump(c, survivor)?;
            c.execute("DELETE FROM jobs WHERE id = ?1", [job])?;
            Ok(())
        })
    }

    /// Finish flattening one layer: it no longer has a parent;
    /// `cloned-from` stays as history. LEGAL + generation bump; the job is
    /// deleted with the last layer.
    pub fn finish_flatten(&self, layer: Guid, job: Option<i64>) -> Result<()> {
        self.write(|c| {
            c.execute(
                "UPDATE volumes SET parent_guid = ?1, format = 'RAW' WHERE guid = ?2",
                params![Guid::BLANK.to_string(), layer.to_string()],
            )?;
            bump(c, layer)?;
            if let Some(job) = job {
                c.execute("DELETE FROM jobs WHERE id = ?1", [job])?;
            }
            Ok(())
        })
    }

    /// Set (Some) or unset (None) several properties of one object in one
    /// transaction.
    pub fn prop_update_many(&self, object: Guid, changes: &[(&str, Option<&str>)]) -> Result<()> {
        for (k, _) in changes {
            refuse_reserved(k)?;
        }
        self.write(|c| {
            if !disk_exists(c, object)? && !volume_exists(c, object)? {
                return Err(Error::NotFound(object.to_string()).into());
            }
            for (k, v) in changes {
                match v {
                    Some(v) => {
                        c.execute(
                            "INSERT INTO properties (object, key, value) VALUES (?1, ?2, ?3)
                             ON CONFLICT (object, key) DO UPDATE SET value = excluded.value",
                            params![object.to_string(), k, v],
                        )?;
                    }
                    None => {
                        c.execute(
                            "DELETE FROM properties WHERE object = ?1 AND key = ?2",
                            params![object.to_string(), k],
                        )?;
                    }
                }
            }
            Ok(())
        })
    }

    /// SQLite's own checks: `integrity_check` and `foreign_key_check`.
    /// Returns the problems found (empty when clean).
    pub fn integrity_check(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut out = Vec::new();
            let mut st = c.prepare("PRAGMA integrity_check")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            for r in rows {
                let r = r?;
                if r != "ok" {
                    out.push(format!("sqlite integrity_check: {r}"));
                }
            }
            let mut st = c.prepare("PRAGMA foreign_key_check")?;
            let rows = st.query_map([], |r| {
                Ok(format!(
                    "table {} row {} violates a foreign key to {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1).unwrap_or(-1),
                    r.get::<_, String>(2)?
                ))
            })?;
            for r in rows {
                out.push(r?);
            }
            Ok(out)
        })
    }

    /// Rows of `volumes` whose enum columns or GUIDs do not parse, as
    /// (rowid, problem) — found without failing on them.
    pub fn bad_volume_rows(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let cells =
                query_cells(c, concat!("SELECT ", volume_columns!(), " FROM volumes ORDER BY guid"), [], "volumes")?;
            Ok(cells.iter().filter_map(|r| volume_from(r).err().map(|e| e.to_string())).collect())
        })
    }

    /// Every disk row, including its raw layer rows, for `chain dump`'s
    /// anomaly checks (works on damaged catalogues: a disk without a
    /// leaf is reported, not an error).
    pub fn dump_rows(&self) -> Result<DumpRows> {
        self.read(|c| {
            let disks = query_cells(
                c,
                "SELECT d.guid, p.value FROM disks d LEFT JOIN properties p ON p.object = d.guid AND p.key = 'name' ORDER BY p.value, d.guid",
                [],
                "disks",
            )?
            .iter()
            .map(|r| Ok((r.guid(0, "guid")?, r.text(1, "name").ok())))
            .collect::<Result<Vec<_>>>()?;
            // Unreadable rows are skipped here; `bad_volume_rows` reports them.
            let vols = query_cells(c, concat!("SELECT ", volume_columns!(), " FROM volumes ORDER BY disk_guid, ctime, guid"), [], "volumes")?
                .iter()
                .filter_map(|r| volume_from(r).ok())
                .collect::<Vec<_>>();
            let snaps = query_cells(c, "SELECT guid, disk_guid, name, created FROM snapshots ORDER BY disk_guid, created", [], "snapshots")?
                .iter()
                .map(snapshot_from)
                .collect::<Result<Vec<_>>>()?;
            Ok((disks, vols, snaps))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> (tempfile::TempDir, Catalog) {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::create(&d.path().join("c.db")).unwrap();
        (d, c)
    }

    #[test]
    fn snapshot_freezes_the_leaf_and_names_it() {
        let (_d, c) = cat();
        let (disk, base) = c.create_disk("vm", 1 << 20, Legality::Legal).unwrap();
        let (s, leaf) = c.snapshot_disk(disk.guid, "s1").unwrap();
        assert_eq!(s.guid, base.guid);
        assert_eq!(leaf.parent, base.guid);
        let chain = c.chain(disk.guid).unwrap();
        assert_eq!(chain.iter().map(|v| v.guid).collect::<Vec<_>>(), vec![base.guid, leaf.guid]);
        assert_eq!(chain[0].voltype, VolType::Internal);
        assert!(matches!(c.snapshot_disk(disk.guid, "s1"), Err(Error::NameExists(_))));
        assert_eq!(c.find_snapshot(disk.guid, "s1").unwrap().guid, base.guid);
    }

    #[test]
    fn pull_up_reparents_children_and_deletes_the_layer() {
        let (_d, c) = cat();
        let (disk, base) = c.create_disk("vm", 1 << 20, Legality::Legal).unwrap();
        let (_, mid) = c.snapshot_disk(disk.guid, "s1").unwrap();
        let (_, top) = c.snapshot_disk(disk.guid, "s2").unwrap();
        let job = c.begin_job_marking("merge", disk.guid, "{}", &[mid.guid, top.guid]).unwrap();
        assert_eq!(c.volume(mid.guid).unwrap().legality, Legality::Illegal);
        c.finish_pull_up(mid.guid, job).unwrap();
        let chain = c.chain(disk.guid).unwrap();
        assert_eq!(chain.iter().map(|v| v.guid).collect::<Vec<_>>(), vec![base.guid, top.guid]);
        assert!(chain.iter().all(|v| v.legality == Legality::Legal));
        assert!(c.all_jobs().unwrap().is_empty());
        assert!(c.find_snapshot(disk.guid, "s2").is_err());
    }

    #[test]
    fn commit_down_lets_the_parent_take_the_childs_place() {
        let (_d, c) = cat();
        let (disk, base) = c.create_disk("vm", 1 << 20, Legality::Legal).unwrap();
        let (_, mid) = c.snapshot_disk(disk.guid, "s1").unwrap();
        let (_, top) = c.snapshot_disk(disk.guid, "s2").unwrap();
        let job = c.begin_job_marking("merge", disk.guid, "{}", &[base.guid, mid.guid]).unwrap();
        c.finish_commit_down(base.guid, mid.guid, job).unwrap();
        let chain = c.chain(disk.guid).unwrap();
        assert_eq!(chain.iter().map(|v| v.guid).collect::<Vec<_>>(), vec![base.guid, top.guid]);
        // s2 named mid; it now names the survivor.
        assert_eq!(c.find_snapshot(disk.guid, "s2").unwrap().guid, base.guid);
        assert!(c.find_snapshot(disk.guid, "s1").is_err());
    }

    #[test]
    fn clone_records_cloned_from_and_blocks_removal_of_the_source() {
        let (_d, c) = cat();
        let (disk, base) = c.create_disk("vm", 1 << 20, Legality::Legal).unwrap();
        c.snapshot_disk(disk.guid, "s1").unwrap();
        let (cl, leaf) = c.clone_disk("vm2", base.guid, "vm@s1").unwrap();
        assert_eq!(c.prop_get(cl.guid, "cloned-from").unwrap().as_deref(), Some("vm@s1"));
        assert_eq!(c.chain(cl.guid).unwrap().iter().map(|v| v.guid).collect::<Vec<_>>(), vec![base.guid, leaf.guid]);
        assert!(matches!(c.remove_disk(disk.guid), Err(Error::HasDependents { .. })));
        let job = c.begin_job_marking("flatten", cl.guid, "{}", &[leaf.guid]).unwrap();
        c.finish_flatten(leaf.guid, Some(job)).unwrap();
        assert_eq!(c.chain(cl.guid).unwrap().len(), 1);
        c.remove_disk(disk.guid).unwrap();
    }

    #[test]
    fn revert_puts_a_new_leaf_on_the_snapshot() {
        let (_d, c) = cat();
        let (disk, base) = c.create_disk("vm", 1 << 20, Legality::Legal).unwrap();
        c.snapshot_disk(disk.guid, "s1").unwrap();
        let (new, old) = c.revert_disk(disk.guid, base.guid, Some("before")).unwrap();
        assert_eq!(new.parent, base.guid);
        assert_eq!(c.chain(disk.guid).unwrap().len(), 2);
        assert_eq!(c.find_snapshot(disk.guid, "before").unwrap().guid, old.guid);
        let (_, old2) = c.revert_disk(disk.guid, base.guid, None).unwrap();
        c.remove_layer(old2.guid).unwrap();
        assert_eq!(c.disk_layers(disk.guid).unwrap().len(), 3);
    }
}
