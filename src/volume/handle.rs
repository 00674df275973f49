//! An open volume: reads resolve each block with one lookup (the leaf's
//! map for a single-layer volume, the merged view otherwise) and fetch
//! chunks outside every lock; writes go to the leaf.
//!
//! Write protocol, per `write_at` (FORMAT.md, "Commit protocol"):
//! 1. lock the stripe locks of the touched blocks (so read-modify-write of
//!    a partial block cannot race another write of that block);
//! 2. build whole blocks (partial ones are read, patched);
//! 3. store them (`put_blocks`: zero → sentinel, dedup confirm, compress,
//!    append to the pack) — no volume lock held;
//! 4. under the cut lock (shared) and the volume state lock: append one
//!    journal record (chunk placements + the map run), then update the
//!    leaf map and the merged view;
//! 5. publish new chunks to the dedup index, release the old entries'
//!    references;
//! 6. under `sync`, wait for packs + journal to be durable.
//!
//! Lock order: stripes → engine cut → state → leaf map → journal.

use super::{Engine, Error, Layer, Result, rlock, wlock};
use crate::chain::{self, ABSENT, PageMap, ZERO};
use crate::format::{BLOCK_SIZE, BLOCK_SIZE_U64};
use crate::guid::Guid;
use crate::journal::Batch;
use crate::store::{self, Put};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Stripe locks per volume: enough that two 1 MiB writes (256 blocks each)
/// to different places rarely share one, so writers to one volume run in
/// parallel.
const STRIPES: usize = 4096;
/// Largest number of map updates in one journal record.
pub(crate) const MAX_RUN: usize = 1 << 18;

pub(crate) struct State {
    pub(crate) leaf: Arc<Layer>,
    /// Layers below the leaf, base first.
    pub(crate) parents: Vec<Arc<Layer>>,
    /// Merged view when there are parents (entry: chunk id or ABSENT).
    pub(crate) merged: Option<PageMap>,
    pub(crate) capacity: u64,
    /// Blocks that hold data through the chain.
    pub(crate) data_blocks: u64,
}

impl State {
    fn resolve(&self, b: u64) -> u64 {
        match &self.merged {
            Some(m) => m.get(b),
            None => rlock(&self.leaf.map).get(b),
        }
    }
}

pub struct Volume {
    engine: Arc<Engine>,
    disk: Guid,
    name: RwLock<String>,
    pub(crate) state: RwLock<State>,
    stripes: Vec<Mutex<()>>,
    removed: AtomicBool,
    /// A snapshot view: reads only.
    read_only: bool,
}

fn blocks_of(offset: u64, len: u64) -> (u64, u64) {
    (offset / BLOCK_SIZE_U64, (offset + len).div_ceil(BLOCK_SIZE_U64))
}

impl Volume {
    pub(crate) fn new(
        engine: Arc<Engine>,
        disk: Guid,
        name: String,
        capacity: u64,
        layers: Vec<Arc<Layer>>,
        read_only: bool,
    ) -> Volume {
        let mut layers = layers;
        let leaf = layers.pop().expect("a chain has a leaf");
        let parents = layers;
        let (merged, data_blocks) = State::view(&leaf, &parents);
        Volume {
            engine,
            disk,
            name: RwLock::new(name),
            state: RwLock::new(State { leaf, parents, merged, capacity, data_blocks }),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            removed: AtomicBool::new(false),
            read_only,
        }
    }

    /// Is this a read-only snapshot view?
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }
}

impl State {
    /// The merged view (None for a single layer) and the data block count.
    pub(crate) fn view(leaf: &Arc<Layer>, parents: &[Arc<Layer>]) -> (Option<PageMap>, u64) {
        if parents.is_empty() {
            (None, rlock(&leaf.map).chunk_count())
        } else {
            let guards: Vec<_> = parents.iter().chain(std::iter::once(leaf)).map(|l| rlock(&l.map)).collect();
            let mut m = chain::merge(guards.iter().map(|g| &**g));
            drop(guards);
            // The merged view keeps only data: ZERO and ABSENT both read zeros.
            let zeros: Vec<u64> = m.iter().filter(|(_, e)| !chain::is_chunk(*e)).map(|(b, _)| b).collect();
            for b in zeros {
                m.set(b, ABSENT);
            }
            let n = m.len();
            (Some(m), n)
        }
    }
}

impl Volume {
    pub(crate) fn set_name(&self, n: &str) {
        *wlock(&self.name) = n.to_string();
    }

    pub(crate) fn mark_removed(&self) {
        let _st = wlock(&self.state);
        self.removed.store(true, Ordering::Release);
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!("{:?} is a snapshot; snapshots are read-only", self.name())));
        }
        self.engine.check_writable()
    }

    fn check_live(&self) -> Result<()> {
        if self.removed.load(Ordering::Acquire) {
            return Err(Error::NotFound(format!("volume {:?} was removed", self.name())));
        }
        Ok(())
    }

    pub fn guid(&self) -> Guid {
        self.disk
    }

    pub fn name(&self) -> String {
        rlock(&self.name).clone()
    }

    pub fn capacity(&self) -> u64 {
        rlock(&self.state).capacity
    }

    /// GUID of the active leaf layer.
    pub fn leaf(&self) -> Guid {
        rlock(&self.state).leaf.guid
    }

    /// Number of layers in the chain.
    pub fn depth(&self) -> usize {
        rlock(&self.state).parents.len() + 1
    }

    /// Bytes holding data through the chain (for `st_blocks`).
    pub fn allocated_bytes(&self) -> u64 {
        rlock(&self.state).data_blocks * BLOCK_SIZE_U64
    }

    fn check_range(&self, offset: u64, len: u64, capacity: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= capacity => Ok(()),
            _ => Err(Error::OutOfRange { offset, len, capacity }),
        }
    }

    fn corrupt(&self, e: store::Error, offset: u64) -> Error {
        match e {
            store::Error::Corrupt { chunk_id, pack_id, offset: poff, detail } => {
                let err = Error::Corrupt {
                    volume: self.name(),
                    offset,
                    detail: format!("chunk {chunk_id} in pack {pack_id} at {poff}: {detail}"),
                };
                tracing::error!(volume = %self.name(), offset, %err, "corrupt block");
                err
            }
            store::Error::MissingChunk(id) => {
                Error::Corrupt { volume: self.name(), offset, detail: format!("chunk {id} does not exist") }
            }
            e => e.into(),
        }
    }

    /// Read `buf.len()` bytes at `offset`; the range must be inside the volume.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_live()?;
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let entries: Vec<u64> = {
            let st = rlock(&self.state);
            self.check_range(offset, len, st.capacity)?;
            let (b0, b1) = blocks_of(offset, len);
            match &st.merged {
                Some(m) => (b0..b1).map(|b| m.get(b)).collect(),
                None => {
                    let m = rlock(&st.leaf.map);
                    (b0..b1).map(|b| m.get(b)).collect()
                }
            }
        };
        self.fill(buf, offset, offset / BLOCK_SIZE_U64, &entries)
    }

    /// Copy resolved blocks into `buf` (no lock held). A large read is
    /// split over two threads while a CPU is free: verifying BLAKE3 of 256
    /// blocks is most of a 1 MiB read at queue depth 1.
    fn fill(&self, buf: &mut [u8], offset: u64, b0: u64, entries: &[u64]) -> Result<()> {
        let busy = self.engine.store.busy(entries.len());
        if !busy.split() {
            return self.fill_here(buf, offset, b0, entries);
        }
        let k = entries.len() / 2;
        let cut = ((b0 + k as u64) * BLOCK_SIZE_U64 - offset) as usize;
        let (lo, hi) = buf.split_at_mut(cut);
        let (ea, eb) = entries.split_at(k);
        let (ra, rb) = store::join(
            || self.fill_here(lo, offset, b0, ea),
            || self.fill_here(hi, offset + cut as u64, b0 + k as u64, eb),
        );
        ra.and(rb)
    }

    fn fill_here(&self, buf: &mut [u8], offset: u64, b0: u64, entries: &[u64]) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut tmp = [0u8; BLOCK_SIZE];
        for (i, &e) in entries.iter().enumerate() {
            let bstart = (b0 + i as u64) * BLOCK_SIZE_U64;
            let lo = bstart.max(offset);
            let hi = (bstart + BLOCK_SIZE_U64).min(end);
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            if !chain::is_chunk(e) {
                dst.fill(0);
            } else if lo == bstart && hi == bstart + BLOCK_SIZE_U64 {
                self.engine.store.get(e, dst).map_err(|err| self.corrupt(err, bstart))?;
            } else {
                self.engine.store.get(e, &mut tmp).map_err(|err| self.corrupt(err, bstart))?;
                dst.copy_from_slice(&tmp[(lo - bstart) as usize..(hi - bstart) as usize]);
            }
        }
        Ok(())
    }

    fn lock_stripes(&self, b0: u64, b1: u64) -> Vec<std::sync::MutexGuard<'_, ()>> {
        let mut idx: Vec<usize> = if b1 - b0 >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (b0..b1).map(|b| (b % STRIPES as u64) as usize).collect()
        };
        // Ascending order everywhere: no two writers can deadlock.
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())).collect()
    }

    /// Write at `offset`; unaligned and sub-block writes are read-modify-write.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_live()?;
        self.check_writable()?;
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        self.check_range(offset, len, self.capacity())?;
        let (b0, b1) = blocks_of(offset, len);
        let _stripes = self.lock_stripes(b0, b1);
        // Whole blocks: borrowed where aligned, patched copies at the edges.
        let mut head = None;
        let mut tail = None;
        let end = offset + len;
        if !offset.is_multiple_of(BLOCK_SIZE_U64) || (b1 - b0 == 1 && !end.is_multiple_of(BLOCK_SIZE_U64)) {
            head = Some(self.patched_block(b0, buf, offset)?);
        }
        if b1 - b0 > 1 && !end.is_multiple_of(BLOCK_SIZE_U64) {
            tail = Some(self.patched_block(b1 - 1, buf, offset)?);
        }
        let mut blocks: Vec<&[u8]> = Vec::with_capacity((b1 - b0) as usize);
        for b in b0..b1 {
            if b == b0 && head.is_some() {
                blocks.push(head.as_deref().expect("set"));
            } else if b == b1 - 1 && tail.is_some() {
                blocks.push(tail.as_deref().expect("set"));
            } else {
                let s = (b * BLOCK_SIZE_U64 - offset) as usize;
                blocks.push(&buf[s..s + BLOCK_SIZE]);
            }
        }
        let puts = self.engine.store.put_blocks(&blocks).map_err(|e| self.engine.on_write_error(e.into()))?;
        let updates: Vec<(u64, u64)> =
            puts.iter().enumerate().map(|(i, p)| (b0 + i as u64, p.chunk_id().unwrap_or(ZERO))).collect();
        self.commit(&updates, &puts)
    }

    /// The current content of block `b` with `buf`'s bytes laid over it.
    fn patched_block(&self, b: u64, buf: &[u8], offset: u64) -> Result<Vec<u8>> {
        let mut blk = vec![0u8; BLOCK_SIZE];
        let e = rlock(&self.state).resolve(b);
        if chain::is_chunk(e) {
            self.engine.store.get(e, &mut blk).map_err(|err| self.corrupt(err, b * BLOCK_SIZE_U64))?;
        }
        let bstart = b * BLOCK_SIZE_U64;
        let lo = bstart.max(offset);
        let hi = (bstart + BLOCK_SIZE_U64).min(offset + buf.len() as u64);
        blk[(lo - bstart) as usize..(hi - bstart) as usize]
            .copy_from_slice(&buf[(lo - offset) as usize..(hi - offset) as usize]);
        Ok(blk)
    }

    /// Apply sorted map updates (block, entry) to the leaf, journaled as one
    /// record per ≤ MAX_RUN updates. `entry` is a chunk id or ZERO; ZERO is
    /// stored as ABSENT in a base layer (nothing below to mask). `puts` are
    /// the stores whose references the updates take over.
    fn commit(&self, updates: &[(u64, u64)], puts: &[Put]) -> Result<()> {
        let release_puts = |engine: &Engine| {
            for p in puts {
                if let Some(id) = p.chunk_id() {
                    engine.store.decref(id);
                }
            }
        };
        let mut last_seq = 0;
        let mut olds: Vec<u64> = Vec::new();
        for (ci, part) in updates.chunks(MAX_RUN).enumerate() {
            let _cut = rlock(&self.engine.cut);
            let mut st = wlock(&self.state);
            if self.removed.load(Ordering::Acquire) {
                drop(st);
                if ci == 0 {
                    release_puts(&self.engine);
                }
                return Err(Error::NotFound(format!("volume {:?} was removed", self.name())));
            }
            let base = st.parents.is_empty();
            let leaf_guid = st.leaf.guid;
            let mut batch = Batch::new();
            if ci == 0 {
                for p in puts {
                    if let Put::New(c) = p {
                        batch.chunk_put(c);
                    }
                }
            }
            let leaf_entry = |e: u64| if e == ZERO && base { ABSENT } else { e };
            // One map run per consecutive stretch of blocks.
            let mut i = 0;
            let mut run: Vec<u64> = Vec::new();
            while i < part.len() {
                let start = part[i].0;
                run.clear();
                while i < part.len() && part[i].0 == start + run.len() as u64 {
                    run.push(leaf_entry(part[i].1));
                    i += 1;
                }
                batch.map_run(leaf_guid, start, &run);
            }
            // Replication hook: the activity log marks these blocks dirty
            // before the record can reach the disk.
            let ticket = self.engine.repl_will_write(leaf_guid, part.iter().map(|u| u.0));
            let seq = match self.engine.journal.append(&batch) {
                Ok(s) => s,
                Err(e) => {
                    drop(st);
                    if ci == 0 {
                        release_puts(&self.engine);
                    }
                    return Err(self.engine.on_write_error(e.into()));
                }
            };
            last_seq = seq;
            let State { leaf, merged, data_blocks, .. } = &mut *st;
            let mut map = wlock(&leaf.map);
            for &(b, e) in part {
                let old = map.set(b, leaf_entry(e));
                olds.push(old);
                let before = match merged {
                    Some(m) => m.set(b, if chain::is_chunk(e) { e } else { ABSENT }),
                    None => old,
                };
                match (chain::is_chunk(before), chain::is_chunk(e)) {
                    (false, true) => *data_blocks += 1,
                    (true, false) => *data_blocks -= 1,
                    _ => {}
                }
            }
            leaf.dirty.store(true, Ordering::Release);
            drop(map);
            // Replication hook: ship the record (after the maps changed,
            // under the state lock so one block's records stay in order).
            self.engine.repl_journaled(seq, &batch, ticket);
        }
        self.engine.store.publish(puts);
        for old in olds {
            if chain::is_chunk(old) {
                self.engine.store.decref(old);
            }
        }
        if self.engine.sync_writes.load(Ordering::Acquire) {
            self.engine.make_durable(last_seq)?;
            // Replication hook: a sync write is a flush (protocol C).
            self.engine.repl_flush()?;
        }
        self.engine.maybe_checkpoint();
        Ok(())
    }

    /// Durability as the write policy says (fsync/fdatasync/flush).
    pub fn flush(&self) -> Result<()> {
        self.check_live()?;
        self.engine.flush()
    }

    /// Punch a hole: the range reads as zeros; whole blocks are unmapped and
    /// their chunks released.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_live()?;
        self.check_writable()?;
        let cap = self.capacity();
        if offset >= cap || len == 0 {
            return Ok(());
        }
        let len = len.min(cap - offset);
        let end = offset + len;
        let first_full = offset.div_ceil(BLOCK_SIZE_U64);
        let end_full = end / BLOCK_SIZE_U64;
        if first_full >= end_full {
            // Inside one block (or two partial blocks): plain zero write.
            return self.write_at(&vec![0u8; len as usize], offset);
        }
        if offset < first_full * BLOCK_SIZE_U64 {
            let n = first_full * BLOCK_SIZE_U64 - offset;
            self.write_at(&vec![0u8; n as usize], offset)?;
        }
        if end > end_full * BLOCK_SIZE_U64 {
            let s = end_full * BLOCK_SIZE_U64;
            self.write_at(&vec![0u8; (end - s) as usize], s)?;
        }
        // Whole blocks: only those that hold something need an update.
        let _stripes = self.lock_stripes(first_full, end_full);
        let targets: Vec<(u64, u64)> = {
            let st = rlock(&self.state);
            let leaf = rlock(&st.leaf.map);
            let mut t: Vec<u64> =
                leaf.iter_from(first_full).take_while(|(b, _)| *b < end_full).map(|(b, _)| b).collect();
            if let Some(m) = &st.merged {
                t.extend(m.iter_from(first_full).take_while(|(b, _)| *b < end_full).map(|(b, _)| b));
                t.sort_unstable();
                t.dedup();
            }
            t.into_iter().map(|b| (b, ZERO)).collect()
        };
        if targets.is_empty() {
            return Ok(());
        }
        self.commit(&targets, &[])
    }

    /// Change the capacity (the file size). Shrinking drops data past the end.
    pub fn resize(&self, capacity: u64) -> Result<()> {
        self.check_live()?;
        self.check_writable()?;
        let old = self.capacity();
        if capacity < old {
            // Zero what lies past the new end (including the tail of a
            // partial last block) so growing again shows zeros, then drop
            // the leaf's entries there.
            self.discard(capacity, old - capacity)?;
            let from = capacity.div_ceil(BLOCK_SIZE_U64);
            let _cut = rlock(&self.engine.cut);
            let st = wlock(&self.state);
            if st.parents.is_empty() {
                let mut batch = Batch::new();
                batch.map_truncate(st.leaf.guid, from);
                self.engine.journal.append(&batch).map_err(|e| self.engine.on_write_error(e.into()))?;
                let removed = wlock(&st.leaf.map).truncate(from);
                st.leaf.dirty.store(true, Ordering::Release);
                for e in removed {
                    if chain::is_chunk(e) {
                        self.engine.store.decref(e);
                    }
                }
            }
        }
        self.engine.catalog().set_capacity(self.disk, capacity)?;
        wlock(&self.state).capacity = capacity;
        Ok(())
    }

    /// First offset ≥ `offset` holding data (SEEK_DATA); None past the last.
    pub fn next_data(&self, offset: u64) -> Option<u64> {
        let st = rlock(&self.state);
        if offset >= st.capacity {
            return None;
        }
        let b = offset / BLOCK_SIZE_U64;
        let found = match &st.merged {
            Some(m) => m.iter_from(b).find(|(_, e)| chain::is_chunk(*e)).map(|(b, _)| b),
            None => rlock(&st.leaf.map).iter_from(b).find(|(_, e)| chain::is_chunk(*e)).map(|(b, _)| b),
        }?;
        let at = (found * BLOCK_SIZE_U64).max(offset);
        (at < st.capacity).then_some(at)
    }

    /// First offset ≥ `offset` in a hole (SEEK_HOLE); capacity if none.
    pub fn next_hole(&self, offset: u64) -> u64 {
        let st = rlock(&self.state);
        if offset >= st.capacity {
            return st.capacity;
        }
        let mut b = offset / BLOCK_SIZE_U64;
        let scan = |m: &PageMap, b: &mut u64| {
            for (blk, e) in m.iter_from(*b) {
                if blk != *b || !chain::is_chunk(e) {
                    break;
                }
                *b += 1;
            }
        };
        match &st.merged {
            Some(m) => scan(m, &mut b),
            None => scan(&rlock(&st.leaf.map), &mut b),
        }
        (b * BLOCK_SIZE_U64).max(offset).min(st.capacity)
    }
}
