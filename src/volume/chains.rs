//! Chain life cycle on the engine: snapshots, reverts, merges (snapshot
//! removal), clones, flattening, read-only snapshot views, and
//! `chain dump`.
//!
//! Snapshots are constant time: the catalogue freezes the leaf and adds a
//! new empty one in one transaction; the open volume's merged view stays
//! valid as it is (the new leaf is empty), so nothing proportional to the
//! volume's size happens except copying the leaf's page map into the
//! merged view the first time a volume gets a parent.
//!
//! Merges move map entries, never data (chunks are shared by reference).
//! Removing snapshot layer L either pulls L's entries up into every child
//! where the child has none ("stream"), or, when L has one internal child C
//! with fewer entries than L would push up, copies C's entries down into L
//! and lets L take C's place ("commit"). Both keep every block's resolution
//! through the chain unchanged at every step, so open volumes keep their
//! merged views and live I/O goes on. The operation is a VDSM job: layers
//! ILLEGAL + job row, entries copied (journaled, idempotent), everything made
//! durable, then one transaction re-parents, deletes, sets LEGAL, bumps
//! generations and deletes the job. A restarted engine resumes unfinished
//! jobs at open, before serving anything.

use super::{Engine, Error, Layer, Result, State, VolumeInfo, handle::MAX_RUN, lock, rlock, wlock};
use crate::catalog::{self, Legality, SnapshotRow, VolType, VolumeRow};
use crate::chain::{self, ABSENT};
use crate::format::BLOCK_SIZE_U64;
use crate::guid::Guid;
use crate::journal::Batch;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// `snapshot list` row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// The frozen layer's GUID.
    pub guid: Guid,
    pub volume: String,
    pub created_unix: i64,
    /// Bytes of data this layer itself holds.
    pub own_bytes: u64,
    pub capacity: u64,
    /// Clones whose base is this snapshot.
    pub clones: Vec<String>,
}

/// What a snapshot removal did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MergeReport {
    /// "pull-up" (into the child layers) or "commit-down" (child into it).
    pub direction: String,
    /// Map entries copied.
    pub entries_moved: u64,
}

/// `chain dump`: one image (volume) and its layers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageDump {
    pub image: Guid,
    pub name: Option<String>,
    /// The active chain, base first.
    pub chain: Vec<LayerDump>,
    /// Layers of this image not on the active chain (kept snapshots of
    /// earlier branches).
    pub other_layers: Vec<LayerDump>,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerDump {
    pub guid: Guid,
    pub parent: Guid,
    pub voltype: VolType,
    pub format: catalog::VolFormat,
    pub allocation: catalog::Allocation,
    pub legality: Legality,
    pub generation: u64,
    pub capacity: u64,
    /// Bytes of data held by this layer itself.
    pub true_size: u64,
    pub snapshot: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChainDump {
    pub images: Vec<ImageDump>,
    /// Problems not tied to one image (orphan layers, duplicate names).
    pub problems: Vec<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct MergeJob {
    layer: Guid,
    mode: String,
    into: Vec<Guid>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FlattenJob {
    /// Layers of the volume whose parent lies in another volume.
    layers: Vec<Guid>,
}

/// Split "VOL@SNAP".
pub fn split_at(spec: &str) -> Result<(&str, &str)> {
    match spec.rsplit_once('@') {
        Some((v, s)) if !v.is_empty() && !s.is_empty() => Ok((v, s)),
        _ => Err(Error::InvalidArgument(format!("{spec:?} is not VOLUME@SNAPSHOT"))),
    }
}

impl Engine {
    fn snapshot_of(&self, disk: &catalog::DiskRow, snap: &str) -> Result<SnapshotRow> {
        self.catalog.find_snapshot(disk.guid, snap).map_err(|e| match e {
            catalog::Error::NotFound(_) => Error::NotFound(format!(
                "volume {:?} has no snapshot {snap:?}; `strata snapshot list {}` shows them",
                disk.name, disk.name
            )),
            e => e.into(),
        })
    }

    fn layer_bytes(&self, g: Guid) -> u64 {
        rlock(&self.layers).get(&g).map(|l| rlock(&l.map).chunk_count() * BLOCK_SIZE_U64).unwrap_or(0)
    }

    /// Make everything journaled so far durable, whatever the write policy
    /// (catalogue changes must never get ahead of the data they describe).
    fn durable_now(&self) -> Result<()> {
        self.make_durable(self.journal.last_seq())
    }

    /// Freeze the volume's current state as snapshot `snap`. Constant time;
    /// allowed while the volume is open and written; the snapshot holds
    /// every write acknowledged before this returns.
    pub fn snapshot_create(&self, vol: &str, snap: &str) -> Result<SnapshotInfo> {
        self.check_writable()?;
        let d = self.disk_of(vol)?;
        let v = self.open_handle(d.guid);
        // Writers commit under the state lock: holding it, every
        // acknowledged write is in the journal and none is half-applied.
        let guard = v.as_ref().map(|v| wlock(&v.state));
        self.durable_now()?;
        let (row, leaf) = self.catalog.snapshot_disk(d.guid, snap).map_err(|e| match e {
            catalog::Error::NameExists(n) => {
                Error::AlreadyExists(format!("volume {:?} already has a snapshot named {n:?}", d.name))
            }
            catalog::Error::InvalidName { name, reason } => {
                Error::InvalidArgument(format!("invalid snapshot name {name:?}: {reason}"))
            }
            e => e.into(),
        })?;
        let new_leaf = Layer::new(leaf.guid, self.new_map());
        wlock(&self.layers).insert(leaf.guid, new_leaf.clone());
        if let Some(mut st) = guard {
            let old = std::mem::replace(&mut st.leaf, new_leaf);
            if st.merged.is_none() {
                let mut m = rlock(&old.map).clone();
                let zeros: Vec<u64> = m.iter().filter(|(_, e)| !chain::is_chunk(*e)).map(|(b, _)| b).collect();
                for b in zeros {
                    m.set(b, ABSENT);
                }
                st.merged = Some(m);
            }
            st.parents.push(old);
        }
        Ok(SnapshotInfo {
            name: row.name,
            guid: row.guid,
            volume: d.name.clone(),
            created_unix: row.created_unix,
            own_bytes: self.layer_bytes(row.guid),
            capacity: d.capacity,
            clones: vec![],
        })
    }

    /// One snapshot, by name or by its layer GUID.
    pub fn snapshot_info(&self, vol: &str, snap: &str) -> Result<SnapshotInfo> {
        let d = self.disk_of(vol)?;
        let s = self.snapshot_of(&d, snap)?;
        self.snapshot_info_of(&d, s)
    }

    fn snapshot_info_of(&self, d: &catalog::DiskRow, s: SnapshotRow) -> Result<SnapshotInfo> {
        let row = self.catalog.volume(s.guid)?;
        let mut clones = Vec::new();
        for k in self.catalog.children(s.guid)? {
            if k.disk != d.guid
                && let Ok(cd) = self.catalog.disk(k.disk)
            {
                clones.push(cd.name);
            }
        }
        Ok(SnapshotInfo {
            name: s.name,
            guid: s.guid,
            volume: d.name.clone(),
            created_unix: s.created_unix,
            own_bytes: self.layer_bytes(s.guid),
            capacity: row.capacity,
            clones,
        })
    }

    /// Snapshots of a volume, oldest first.
    pub fn snapshot_list(&self, vol: &str) -> Result<Vec<SnapshotInfo>> {
        let d = self.disk_of(vol)?;
        let mut out = Vec::new();
        for s in self.catalog.snapshots(d.guid)? {
            out.push(self.snapshot_info_of(&d, s)?);
        }
        Ok(out)
    }

    /// Rebuild the chain of every open volume that holds one of `layers`
    /// (after the catalogue changed its shape). Merged views are kept when
    /// `keep_views` (merges never change what a block resolves to).
    fn refresh_open_chains(&self, touched: &[Guid], keep_views: bool) -> Result<()> {
        let vols: Vec<_> = lock(&self.open).values().filter_map(|w| w.upgrade()).collect();
        for v in vols {
            if v.is_read_only() {
                continue;
            }
            let mut st = wlock(&v.state);
            let holds = st.parents.iter().chain(std::iter::once(&st.leaf)).any(|l| touched.contains(&l.guid));
            if !holds {
                continue;
            }
            let rows = self.catalog.chain(v.guid())?;
            let mut layers: Vec<Arc<Layer>> = rows.iter().map(|r| self.layer(r.guid)).collect::<Result<_>>()?;
            let leaf = layers.pop().expect("a chain has a leaf");
            st.leaf = leaf;
            st.parents = layers;
            if st.parents.is_empty() {
                st.merged = None;
            } else if !keep_views || st.merged.is_none() {
                let (m, n) = State::view(&st.leaf, &st.parents);
                st.merged = m;
                st.data_blocks = n;
            }
        }
        Ok(())
    }

    /// Drop a layer's map and its references (after the catalogue no
    /// longer lists it).
    fn drop_layer(&self, g: Guid) {
        if let Some(l) = wlock(&self.layers).remove(&g) {
            for (_, e) in rlock(&l.map).iter() {
                if chain::is_chunk(e) {
                    self.store.decref(e);
                }
            }
        }
        // Snapshot views on it are gone too.
        let views: Vec<_> = lock(&self.open).values().filter_map(|w| w.upgrade()).collect();
        for v in views {
            if v.is_read_only() && rlock(&v.state).leaf.guid == g {
                v.mark_removed();
            }
        }
    }

    /// A new leaf on top of snapshot `snap`. The old leaf is kept as a
    /// snapshot named `keep_old_as`, or discarded when None.
    pub fn snapshot_revert(&self, vol: &str, snap: &str, keep_old_as: Option<&str>) -> Result<()> {
        self.check_writable()?;
        let d = self.disk_of(vol)?;
        let s = self.snapshot_of(&d, snap)?;
        let v = self.open_handle(d.guid);
        {
            let _guard = v.as_ref().map(|v| wlock(&v.state));
            self.durable_now()?;
            let (new, old) = self.catalog.revert_disk(d.guid, s.guid, keep_old_as).map_err(|e| match e {
                catalog::Error::NameExists(n) => {
                    Error::AlreadyExists(format!("volume {:?} already has a snapshot named {n:?}", d.name))
                }
                e => e.into(),
            })?;
            wlock(&self.layers).insert(new.guid, Layer::new(new.guid, self.new_map()));
            if keep_old_as.is_none() && self.catalog.children(old.guid)?.is_empty() {
                self.catalog.remove_layer(old.guid)?;
                self.drop_layer(old.guid);
            }
        }
        if let Some(v) = v {
            let mut st = wlock(&v.state);
            let rows = self.catalog.chain(d.guid)?;
            let mut layers: Vec<Arc<Layer>> = rows.iter().map(|r| self.layer(r.guid)).collect::<Result<_>>()?;
            st.leaf = layers.pop().expect("leaf");
            st.parents = layers;
            let (m, n) = State::view(&st.leaf, &st.parents);
            st.merged = m;
            st.data_blocks = n;
            st.capacity = rows.last().map(|r| r.capacity).unwrap_or(st.capacity);
        }
        Ok(())
    }

    /// Copy map entries of `src` into `dst`: all of them (`overwrite`) or
    /// only where `dst` has none. Journaled in batches; takes the owning
    /// volume's state lock per batch so live writers interleave safely.
    /// Idempotent. Returns the number of entries copied.
    fn copy_entries(&self, dst: &Arc<Layer>, src: &Arc<Layer>, overwrite: bool) -> Result<u64> {
        let entries: Vec<(u64, u64)> = rlock(&src.map).iter().collect();
        let owner = lock(&self.open)
            .values()
            .filter_map(|w| w.upgrade())
            .find(|v| !v.is_read_only() && rlock(&v.state).leaf.guid == dst.guid);
        let mut moved = 0u64;
        for part in entries.chunks(MAX_RUN) {
            // Lock order as for writes: cut, then volume state, then map.
            let _cut = rlock(&self.cut);
            let _st = owner.as_ref().map(|v| wlock(&v.state));
            let mut map = wlock(&dst.map);
            let todo: Vec<(u64, u64)> = part
                .iter()
                .copied()
                .filter(|(b, e)| if overwrite { map.get(*b) != *e } else { map.get(*b) == ABSENT })
                .collect();
            if todo.is_empty() {
                continue;
            }
            let mut batch = Batch::new();
            let mut i = 0;
            while i < todo.len() {
                let start = todo[i].0;
                let mut run = Vec::new();
                while i < todo.len() && todo[i].0 == start + run.len() as u64 {
                    run.push(todo[i].1);
                    i += 1;
                }
                batch.map_run(dst.guid, start, &run);
            }
            // Replication hooks around the append (see replication.rs).
            let ticket = self.repl_will_write(dst.guid, todo.iter().map(|(b, _)| *b));
            let seq = self.journal.append(&batch).map_err(|e| self.on_write_error(e.into()))?;
            for &(b, e) in &todo {
                if chain::is_chunk(e) {
                    self.store.incref(e)?;
                }
                let old = map.set(b, e);
                if chain::is_chunk(old) {
                    self.store.decref(old);
                }
                moved += 1;
            }
            dst.dirty.store(true, Ordering::Release);
            drop(map);
            self.repl_journaled(seq, &batch, ticket);
        }
        Ok(moved)
    }

    /// Remove snapshot `snap`: merge its layer out of the chain, choosing
    /// the direction that moves fewer map entries. Live while the volume is
    /// open and written.
    pub fn snapshot_remove(&self, vol: &str, snap: &str) -> Result<MergeReport> {
        self.check_writable()?;
        let d = self.disk_of(vol)?;
        let s = self.snapshot_of(&d, snap)?;
        let kids = self.catalog.children(s.guid)?;
        let clones: Vec<String> = kids
            .iter()
            .filter(|k| k.disk != d.guid)
            .filter_map(|k| self.catalog.disk(k.disk).ok())
            .map(|c| c.name)
            .collect();
        if !clones.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "snapshot {:?} of {:?} is the base of clone(s) {}; flatten them first with `strata volume flatten {}`",
                s.name,
                d.name,
                clones.join(", "),
                clones[0]
            )));
        }
        if kids.is_empty() {
            // A kept snapshot of an abandoned branch: nothing depends on it.
            self.catalog.remove_layer(s.guid)?;
            self.drop_layer(s.guid);
            return Ok(MergeReport { direction: "none".into(), entries_moved: 0 });
        }
        let mode = if kids.len() == 1 && kids[0].voltype != VolType::Leaf {
            let l = self.layer(s.guid)?;
            let c = self.layer(kids[0].guid)?;
            let (lm, cm) = (rlock(&l.map), rlock(&c.map));
            let up = lm.iter().filter(|(b, _)| cm.get(*b) == ABSENT).count();
            let down = cm.len() as usize;
            if down < up { "commit-down" } else { "pull-up" }
        } else {
            "pull-up"
        };
        let job = MergeJob { layer: s.guid, mode: mode.into(), into: kids.iter().map(|k| k.guid).collect() };
        let payload = serde_json::to_string(&job).expect("serializable");
        let mut illegal = vec![s.guid];
        illegal.extend(job.into.iter().copied());
        let id = self.catalog.begin_job_marking("merge", d.guid, &payload, &illegal)?;
        self.run_merge(id, &job)
    }

    fn run_merge(&self, id: i64, job: &MergeJob) -> Result<MergeReport> {
        let l = self.layer(job.layer)?;
        let mut moved = 0;
        if job.mode == "commit-down" {
            let c = self.layer(job.into[0])?;
            moved += self.copy_entries(&l, &c, true)?;
            self.durable_now()?;
            self.catalog.finish_commit_down(job.layer, job.into[0], id)?;
            self.refresh_open_chains(&[job.layer, job.into[0]], true)?;
            self.drop_layer(job.into[0]);
        } else {
            for k in &job.into {
                let c = self.layer(*k)?;
                moved += self.copy_entries(&c, &l, false)?;
            }
            crate::fault::pause_point("merge-before-finish");
            self.durable_now()?;
            self.catalog.finish_pull_up(job.layer, id)?;
            let mut touched = job.into.clone();
            touched.push(job.layer);
            self.refresh_open_chains(&touched, true)?;
            self.drop_layer(job.layer);
        }
        Ok(MergeReport { direction: job.mode.clone(), entries_moved: moved })
    }

    /// `strata clone VOL@SNAP NEWVOL`: constant time; the new volume's base
    /// is the snapshot; `cloned-from` records the snapshot layer's GUID.
    pub fn clone_volume(&self, source: &str, new_name: &str) -> Result<VolumeInfo> {
        self.check_writable()?;
        super::validate_name(new_name)?;
        let (vol, snap) = split_at(source)?;
        let d = self.disk_of(vol)?;
        let s = self.snapshot_of(&d, snap)?;
        let (disk, leaf) =
            self.catalog.clone_disk(new_name, s.guid, &s.guid.to_string()).map_err(|e| self.name_err(e, new_name))?;
        wlock(&self.layers).insert(leaf.guid, Layer::new(leaf.guid, self.new_map()));
        self.info_for(&disk)
    }

    /// Make a volume independent of every other volume: each of its layers
    /// whose parent belongs to another volume (the base of a clone) gets
    /// the entries of that outside chain copied in where it has none, and
    /// loses its parent. Afterwards the snapshot it was cloned from can be
    /// removed. A volume that was never cloned has nothing to do.
    pub fn flatten_volume(&self, vol: &str) -> Result<u64> {
        self.check_writable()?;
        let d = self.disk_of(vol)?;
        let mut bottoms = Vec::new();
        for l in self.catalog.disk_layers(d.guid)? {
            if !l.parent.is_blank() && self.catalog.volume(l.parent)?.disk != d.guid {
                bottoms.push(l.guid);
            }
        }
        if bottoms.is_empty() {
            return Ok(0);
        }
        let job = FlattenJob { layers: bottoms };
        let id = self.catalog.begin_job_marking(
            "flatten",
            d.guid,
            &serde_json::to_string(&job).expect("serializable"),
            &job.layers,
        )?;
        self.run_flatten(id, &job)
    }

    fn run_flatten(&self, id: i64, job: &FlattenJob) -> Result<u64> {
        let mut moved = 0;
        for (i, g) in job.layers.iter().enumerate() {
            let rows = self.catalog.chain_from(*g)?;
            let dst = self.layer(*g)?;
            // Top-down, filling only blocks the layer does not have: the
            // first outside layer to provide a block is the one the chain
            // resolves it to.
            for r in rows.iter().rev().skip(1) {
                let l = self.layer(r.guid)?;
                moved += self.copy_entries(&dst, &l, false)?;
            }
            self.durable_now()?;
            let last = i + 1 == job.layers.len();
            self.catalog.finish_flatten(*g, if last { Some(id) } else { None })?;
        }
        self.refresh_open_chains(&job.layers, true)?;
        Ok(moved)
    }

    /// Finish or undo multi-step jobs left by a crash (called at open,
    /// before anything is served).
    pub(crate) fn resume_jobs(&self) -> Result<()> {
        for j in self.catalog.all_jobs()? {
            match j.kind.as_str() {
                "merge" => {
                    let job: MergeJob = serde_json::from_str(&j.payload).map_err(|e| {
                        Error::Incomplete(format!(
                            "merge job {} has an unreadable payload ({e}); run `strata check --repair`",
                            j.id
                        ))
                    })?;
                    tracing::warn!(job = j.id, layer = %job.layer, mode = %job.mode, "resuming an interrupted merge");
                    self.run_merge(j.id, &job)?;
                }
                "flatten" => {
                    let job: FlattenJob = serde_json::from_str(&j.payload).map_err(|e| {
                        Error::Incomplete(format!("flatten job {} has an unreadable payload ({e})", j.id))
                    })?;
                    tracing::warn!(job = j.id, layers = ?job.layers, "resuming an interrupted flatten");
                    self.run_flatten(j.id, &job)?;
                }
                // create/import: the user decides (`volume remove --force`).
                _ => {}
            }
        }
        Ok(())
    }

    /// Open snapshot `snap` of `vol` as a read-only volume.
    pub fn open_snapshot(&self, vol: &str, snap: &str) -> Result<Arc<super::Volume>> {
        let d = self.disk_of(vol)?;
        let s = self.snapshot_of(&d, snap)?;
        let mut open = lock(&self.open);
        if let Some(v) = open.get(&s.guid).and_then(|w| w.upgrade()) {
            return Ok(v);
        }
        let rows = self.catalog.chain_from(s.guid)?;
        if let Some(bad) = rows.iter().find(|r| r.legality == Legality::Illegal) {
            return Err(Error::Incomplete(format!(
                "snapshot {:?} of {:?} is not served: layer {} is ILLEGAL",
                s.name, d.name, bad.guid
            )));
        }
        let layers: Vec<Arc<Layer>> = rows.iter().map(|r| self.layer(r.guid)).collect::<Result<_>>()?;
        let engine = self.me.upgrade().ok_or_else(|| Error::ReadOnly("the store is closing".into()))?;
        let cap = rows.last().map(|r| r.capacity).unwrap_or(0);
        let v = Arc::new(super::Volume::new(engine, d.guid, format!("{}@{}", d.name, s.name), cap, layers, true));
        open.insert(s.guid, Arc::downgrade(&v));
        Ok(v)
    }

    /// Every image's chain, base first, with anomalies flagged, in the
    /// spirit of `vdsm-tool dump-volume-chains`.
    pub fn chain_dump(&self, vol: Option<&str>) -> Result<ChainDump> {
        let (disks, vols, snaps) = self.catalog.dump_rows()?;
        let only = match vol {
            Some(v) => Some(self.disk_of(v)?.guid),
            None => None,
        };
        let by_guid: HashMap<Guid, &VolumeRow> = vols.iter().map(|v| (v.guid, v)).collect();
        let snap_name: HashMap<Guid, &str> = snaps.iter().map(|s| (s.guid, s.name.as_str())).collect();
        let dump = |r: &VolumeRow| LayerDump {
            guid: r.guid,
            parent: r.parent,
            voltype: r.voltype,
            format: r.format,
            allocation: r.allocation,
            legality: r.legality,
            generation: r.generation,
            capacity: r.capacity,
            true_size: self.layer_bytes(r.guid),
            snapshot: snap_name.get(&r.guid).map(|s| s.to_string()),
        };
        let mut images = Vec::new();
        let mut global = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (g, n) in &disks {
            if let Some(n) = n {
                *names.entry(n.as_str()).or_default() += 1;
            }
            if only.is_some_and(|o| o != *g) {
                continue;
            }
            let mut problems = Vec::new();
            if n.is_none() {
                problems.push("image has no name property".to_string());
            }
            let mine: Vec<&VolumeRow> = vols.iter().filter(|v| v.disk == *g).collect();
            let leaves: Vec<&&VolumeRow> = mine.iter().filter(|v| v.voltype == VolType::Leaf).collect();
            if leaves.len() != 1 {
                problems.push(format!("image has {} LEAF layers; exactly one is expected", leaves.len()));
            }
            let mut chain = Vec::new();
            if let Some(leaf) = leaves.first() {
                let mut cur = Some(**leaf);
                let mut seen = std::collections::HashSet::new();
                while let Some(r) = cur {
                    if !seen.insert(r.guid) {
                        problems.push(format!("chain loops at layer {}", r.guid));
                        break;
                    }
                    chain.push(dump(r));
                    if r.parent.is_blank() {
                        break;
                    }
                    cur = by_guid.get(&r.parent).copied();
                    if cur.is_none() {
                        problems.push(format!("layer {} has missing parent {}", r.guid, r.parent));
                    }
                }
                chain.reverse();
            }
            for l in &chain {
                if l.legality == Legality::Illegal {
                    problems.push(format!("layer {} is ILLEGAL (an unfinished operation)", l.guid));
                }
            }
            let on_chain: std::collections::HashSet<Guid> = chain.iter().map(|l| l.guid).collect();
            let mut other = Vec::new();
            for r in &mine {
                if !on_chain.contains(&r.guid) {
                    let kids = vols.iter().filter(|k| k.parent == r.guid).count();
                    if !snap_name.contains_key(&r.guid) && kids == 0 {
                        problems
                            .push(format!("orphan layer {}: not on the chain, not a snapshot, no children", r.guid));
                    }
                    other.push(dump(r));
                }
            }
            images.push(ImageDump { image: *g, name: n.clone(), chain, other_layers: other, problems });
        }
        for (n, c) in names {
            if c > 1 {
                global.push(format!("name {n:?} is used by {c} images"));
            }
        }
        if only.is_none() {
            let known: std::collections::HashSet<Guid> = disks.iter().map(|(g, _)| *g).collect();
            for v in &vols {
                if !known.contains(&v.disk) {
                    global.push(format!("orphan layer {}: its image {} does not exist", v.guid, v.disk));
                }
            }
        }
        Ok(ChainDump { images, problems: global })
    }
}
