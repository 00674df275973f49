//! Garbage collection: reclaim the space of chunks no layer references by
//! compacting packs (SPEC §1, issue 5).
//!
//! Reference counts are exact and kept in memory (derived from the maps at
//! open), so there is no mark phase. A pack qualifies when at least
//! `GC_DEAD_FRACTION` of its bytes are dead records (or it holds no live
//! chunk at all). For each qualifying pack:
//!
//! 1. every unreferenced chunk is *claimed* (refcount 0 → CLAIMED by CAS, so
//!    a concurrent dedup hit can no longer revive it), dropped from the
//!    dedup index and the table, and journaled as `ChunkFree`;
//! 2. every live chunk's record is copied unchanged to the active pack and
//!    journaled as a `ChunkPut` with the new location — the chunk id stays,
//!    so no map changes and readers that resolved the id follow the table;
//! 3. packs and journal are made durable and a checkpoint is written, so
//!    neither `chunks.tbl` nor any journal file names the old pack;
//! 4. only then is the old pack deleted.
//!
//! A crash before 4 leaves a pack nothing references; the next GC deletes
//! it (a pack with no chunk in the table qualifies at once). Readers that
//! looked up an old location either still hold the file open (unlinked
//! files stay readable) or find the new location on retry.

use super::{Engine, Result, lock, rlock};
use crate::journal::Batch;
use crate::store::PackUsage;
use std::time::{Duration, Instant};

/// A pack is compacted when this fraction of it is dead (borg and bup use
/// 10 %).
pub const GC_DEAD_FRACTION: f64 = 0.10;
/// Journal records hold at most this many GC entries each; also the unit
/// of work read (and compressed) ahead and appended at once, so it bounds
/// the mover's transient memory (about 2 × 1024 × 4 KiB).
const GC_BATCH: usize = 1024;
/// Below this much free space GC releases the reserve file first.
const GC_MIN_FREE_BYTES: u64 = 64 << 20;
/// Packs compacted between checkpoints.
const GROUP_BYTES: u64 = 1 << 30;

fn group_packs(v: &[PackUsage]) -> Vec<&[PackUsage]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, u) in v.iter().enumerate() {
        // Dead packs form their own first group.
        let boundary = i > start && ((bytes >= GROUP_BYTES) || (v[i - 1].live_chunks == 0 && u.live_chunks > 0));
        if boundary {
            out.push(&v[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += u.file_bytes;
    }
    if start < v.len() {
        out.push(&v[start..]);
    }
    out
}

/// What one GC run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub packs_examined: u64,
    pub packs_compacted: u64,
    pub chunks_freed: u64,
    pub chunks_moved: u64,
    /// Moved records whose deferred compression was done by the move.
    pub chunks_compressed: u64,
    /// Damaged records left where they were (their packs stay).
    pub chunks_damaged: u64,
    pub damaged_packs: Vec<u32>,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub seconds: f64,
}

impl Engine {
    /// Reclaim unreferenced chunks and compact packs. Safe while volumes
    /// are read and written. `progress(done, total)` counts packs.
    pub fn gc(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<GcReport> {
        self.check_writable()?;
        if self.store.is_recovering() {
            return Err(super::Error::Unsupported("garbage collection waits until recovery has rebuilt the reference counts; try again when `strata status` shows normal mode".into()));
        }
        let _one = lock(&self.gc_lock);
        let t0 = Instant::now();
        let mut rep = GcReport { bytes_before: self.store.pack_bytes().1, ..GcReport::default() };
        // The active pack can only be compacted once it is sealed.
        let usage = self.store.pack_usage();
        let active = self.store.active_pack_id();
        if usage.iter().any(|u| u.pack_id == active && qualifies(u)) || self.store.active_has_deferred() {
            self.store.seal_active()?;
        }
        let active = self.store.active_pack_id();
        // Packs with records whose compression was deferred are compacted
        // too: the move compresses them (the packer's work, done now).
        let deferred = self.store.packs_with_deferred().map_err(|e| self.on_write_error(e.into()))?;
        let mut victims: Vec<PackUsage> = self
            .store
            .pack_usage()
            .into_iter()
            .filter(|u| u.pack_id != active && (qualifies(u) || deferred.contains(&u.pack_id)))
            .collect();
        rep.packs_examined = self.store.pack_usage().len() as u64;
        // Fully dead packs first: they free space without copying anything.
        victims.sort_by_key(|u| (u.live_chunks > 0, u.live_bytes));
        // On a nearly full filesystem, give GC the room it needs to free
        // room: the reserve file is released and re-created afterwards.
        let (free, _) = super::statvfs(&self.path);
        if free < GC_MIN_FREE_BYTES {
            let _ = std::fs::remove_file(self.path.join(super::Paths::RESERVE));
        }
        self.compact(&victims, &mut rep, progress, &|| false)?;
        if let Err(e) = super::make_reserve(&self.path) {
            tracing::warn!(%e, "could not re-create the space reserve; GC will try again");
        }
        rep.bytes_after = self.store.pack_bytes().1;
        rep.seconds = t0.elapsed().as_secs_f64();
        tracing::info!(?rep, "gc finished");
        Ok(rep)
    }

    /// Move (or free) every chunk of `victims`, a group of packs at a time:
    /// dead chunks are claimed and freed, live ones moved to the active
    /// pack — compressed on the way if their compression was deferred —
    /// then packs and journal are made durable, a checkpoint is written and
    /// the emptied packs are deleted. `stop()` is polled between batches
    /// (the packer's shutdown); what was moved so far stays consistent.
    pub(crate) fn compact(
        &self,
        victims: &[PackUsage],
        rep: &mut GcReport,
        progress: &mut dyn FnMut(u64, u64),
        stop: &dyn Fn() -> bool,
    ) -> Result<()> {
        let total = victims.len() as u64;
        let mut done = 0u64;
        // Checkpoint and delete every GROUP_BYTES of packs, so space comes
        // back progressively.
        for group in group_packs(victims) {
            let mut stopped = false;
            let mut finished: Vec<u32> = Vec::new();
            // The group's packs are sealed and only this (gc_lock holding)
            // thread moves chunks out of them: listed once, up front.
            let ids: Vec<u32> = group.iter().map(|u| u.pack_id).collect();
            let mut listed = self.store.chunks_in_packs(&ids);
            for u in group {
                if stop() {
                    stopped = true;
                    break;
                }
                let chunks = listed.remove(&u.pack_id).unwrap_or_default();
                for part in chunks.chunks(GC_BATCH) {
                    // Reading and compressing happen outside the cut, so
                    // writers and checkpoints never wait on zstd here.
                    let prepared: Vec<Option<crate::store::Result<crate::store::Moved>>> =
                        part.iter().map(|(id, _, refs)| (*refs > 0).then(|| self.store.prepare_move(*id))).collect();
                    let _cut = rlock(&self.cut);
                    let _gate = rlock(&self.gc_gate);
                    let mut batch = Batch::new();
                    let mut moves = Vec::new();
                    for ((id, _, refs), prep) in part.iter().zip(prepared) {
                        if *refs == 0 && self.store.free_chunk(*id) {
                            batch.chunk_free(*id);
                            rep.chunks_freed += 1;
                            continue;
                        }
                        // A chunk revived by a dedup hit since the listing
                        // was not prepared: read it now.
                        let m = match prep.unwrap_or_else(|| self.store.prepare_move(*id)) {
                            Ok(m) => m,
                            Err(e @ crate::store::Error::Corrupt { .. }) => {
                                // Never copied forward: it stays, with its
                                // pack, for reads and `check` to report.
                                tracing::warn!(%e, "not moving a damaged chunk; run `strata check`");
                                rep.chunks_damaged += 1;
                                if !rep.damaged_packs.contains(&u.pack_id) {
                                    rep.damaged_packs.push(u.pack_id);
                                }
                                continue;
                            }
                            Err(e) => return Err(self.on_write_error(e.into())),
                        };
                        rep.chunks_compressed += m.packed as u64;
                        moves.push((*id, m));
                    }
                    // One append for the whole batch.
                    for p in self.store.commit_moves(moves).map_err(|e| self.on_write_error(e.into()))? {
                        batch.chunk_put(&p);
                        rep.chunks_moved += 1;
                    }
                    if !batch.is_empty() {
                        self.journal.append(&batch).map_err(|e| self.on_write_error(e.into()))?;
                    }
                }
                finished.push(u.pack_id);
                done += 1;
                progress(done, total);
            }
            self.make_durable(self.journal.last_seq())?;
            self.checkpoint()?;
            let left = self.store.chunks_in_packs(&finished);
            for pack_id in finished {
                // Anything that pointed into it was rewritten above and the
                // checkpoint is durable: nothing can reference it.
                if !left.contains_key(&pack_id) {
                    self.store.retire_pack(pack_id)?;
                    rep.packs_compacted += 1;
                }
            }
            if stopped {
                break;
            }
        }
        Ok(())
    }

    /// Free the sealed packs no live chunk is left in — no copying, one
    /// checkpoint — so their space goes to the spare packs (store/spare.rs)
    /// while writes go on. Kicked by writes when enough chunks died
    /// (`ChunkStore::reclaim_due`). Returns the packs freed.
    pub(crate) fn reclaim_dead_packs(&self) -> Result<u64> {
        if self.check_writable().is_err() || self.store.is_recovering() {
            return Ok(0);
        }
        let _one = lock(&self.gc_lock);
        self.store.reclaim_started();
        let active = self.store.active_pack_id();
        let victims: Vec<PackUsage> =
            self.store.pack_usage().into_iter().filter(|u| u.pack_id != active && u.live_chunks == 0).collect();
        if victims.is_empty() {
            return Ok(0);
        }
        let mut rep = GcReport::default();
        self.compact(&victims, &mut rep, &mut |_, _| {}, &|| false)?;
        tracing::debug!(packs = rep.packs_compacted, chunks = rep.chunks_freed, "dead packs reclaimed");
        Ok(rep.packs_compacted)
    }

    /// Background collector: run GC when dead bytes are worth it, at most
    /// once per `interval`.
    pub(crate) fn maybe_gc(&self, last: &mut Instant, interval: Duration) {
        if last.elapsed() < interval || self.check_writable().is_err() || self.store.is_recovering() {
            return;
        }
        *last = Instant::now();
        let usage = self.store.pack_usage();
        let file: u64 = usage.iter().map(|u| u.file_bytes).sum();
        let live: u64 = usage.iter().map(|u| u.live_bytes).sum();
        // Worth a run when a quarter of the packs is dead space.
        if file > 64 << 20
            && (file - live.min(file)) * 4 > file
            && let Err(e) = self.gc(&mut |_, _| {})
        {
            tracing::error!(%e, "background GC failed");
        }
    }
}

fn qualifies(u: &PackUsage) -> bool {
    if u.live_chunks == 0 {
        // Nothing live: delete it whatever it holds.
        return true;
    }
    let body = u.file_bytes.saturating_sub(crate::store::pack::PACK_HEADER_LEN);
    body > 0 && (body - u.live_bytes.min(body)) as f64 >= GC_DEAD_FRACTION * body as f64
}
