//! The engine side of replication: what `replica::node` needs from a store.
//!
//! The replication core (`crate::replica`) speaks in content hashes and
//! block keys; this file adapts an [`Engine`] to it:
//!
//! * **Hooks on the write path** (called from `handle.rs`, `chains.rs`):
//!   [`Engine::repl_will_write`] before a journal record with map runs is
//!   appended (the activity log: the blocks are made persistently dirty
//!   *before* the record can reach the disk, DRBD's AL rule), and
//!   [`Engine::repl_journaled`] after the record is applied to the maps
//!   (converted to a [`Record`] and handed to the sink, which steps
//!   `LocalWrite`). Records without map runs (GC's ChunkFree/relocation)
//!   are not replicated: chunk ids are local to each store. A MapTruncate
//!   is not replicated either: the shrink that writes it first discards
//!   every block past the end (replicated as ordinary map runs), and the
//!   new capacity travels with the catalogue.
//! * **Catalogue changes** travel as whole snapshots of the replicated
//!   tables (`catalog/replica.rs`). Before each record is handed over and
//!   before each replicated flush, the catalogue's change counter is
//!   checked and a changed catalogue is shipped first, so a write to a new
//!   layer never reaches the peer before the catalogue row naming it.
//! * **Flush** ([`Engine::repl_flush`]): after local durability, protocol C
//!   waits for the sink (the peer's durable Ack).
//! * **Queries and apply** for the node: map reads, chunk reads by hash,
//!   lookups, scans, digests, catalogue snapshots, and [`Engine::repl_apply`]
//!   which stores a peer's batch atomically and durably.
//!
//! Hash → chunk id on this store: chunks that arrive with a payload are
//! stored through `put_blocks`, i.e. looked up by MurmurHash3 in the
//! existing dedup index and confirmed by BLAKE3. Hash-only references use
//! a BLAKE3 → chunk id map ([`HashIndex`]) built lazily from the pack
//! record headers the first time it is needed, kept up to date with every
//! hash this store resolves or receives, and verified against the record
//! header on every use (a GC'd or relocated chunk is never shared by a
//! stale entry).
//!
//! GC and apply: a chunk found by `LookupChunks` is referenced again only
//! at apply, with `incref_live`; if GC claimed it in between, the apply
//! fails (`ApplyFailed`) before changing anything and the core reconnects
//! and resyncs. Safe, merely slower, in that rare race.
//!
//! The secondary's store is not served while Secondary (not mounted):
//! apply changes layer maps directly and does not update the merged views
//! of open volumes. Promote first, then open volumes.

use super::{Engine, Layer, lock, rlock, wlock};
use crate::chain::{self, ABSENT, ZERO};
use crate::guid::Guid;
use crate::journal::{Batch, Entry};
use crate::replica::protocol::ApplyBatch;
use crate::replica::wire::RangeDigest;
use crate::replica::{BlockKey, BlockRange, ChunkPayload, ChunkPlacement, Hash, MapRun, MapValue, Record, rle_encode};
use crate::store::Put;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

/// Blocks per digest range when `verify` asks for the whole store.
pub const VERIFY_RANGE: u64 = 64;

/// What the replication driver provides to the engine's hooks.
pub trait ReplicationSink: Send + Sync {
    /// Blocks of `layer` are about to change (before the journal append).
    /// Returns a ticket passed back with the record.
    fn will_write(&self, keys: &[BlockKey]) -> u64;
    /// A record was appended and applied to the maps.
    fn journaled(&self, rec: Record, ticket: u64);
    /// The replicated catalogue changed (a complete snapshot).
    fn catalogue_changed(&self, seq: u64, snapshot: Vec<u8>);
    /// Protocol C: wait until the peer durably holds everything handed
    /// over so far (returns at once under protocol A or when degraded).
    fn flush(&self) -> Result<(), String>;
    /// Whether this node is Primary: only then are local writes taken and
    /// catalogue changes shipped.
    fn is_primary(&self) -> bool;
}

/// Lazily built BLAKE3 → chunk id map (see the module docs).
#[derive(Default)]
pub(crate) struct HashIndex {
    map: HashMap<Hash, u64>,
    built: bool,
}

/// Replication state held by the engine: the sink and the catalogue
/// change tracking. Everything else lives in the node.
#[derive(Default)]
pub(crate) struct Hooks {
    sink: RwLock<Option<Arc<dyn ReplicationSink>>>,
    /// (local change counter, data_version) last looked at.
    cat_seen: Mutex<(u64, i64)>,
    /// The last snapshot shipped (or applied from the peer).
    cat_last: Mutex<Vec<u8>>,
    index: Mutex<HashIndex>,
    /// Split-brain preservation runs on a Secondary: allow its snapshot.
    preserving: std::sync::atomic::AtomicBool,
}

impl Engine {
    // ------------------------------------------------------------ attach

    /// Connect the write-path hooks to a replication driver.
    pub fn attach_replication(&self, sink: Arc<dyn ReplicationSink>) {
        *wlock(&self.repl.sink) = Some(sink);
    }

    /// Disconnect the hooks (the driver is stopping).
    pub fn detach_replication(&self) {
        *wlock(&self.repl.sink) = None;
    }

    fn sink(&self) -> Option<Arc<dyn ReplicationSink>> {
        rlock(&self.repl.sink).clone()
    }

    /// The store's UUID (the peer checks it; node ids derive from it).
    pub fn store_uuid(&self) -> Guid {
        lock(&self.sb).store_uuid
    }

    // ------------------------------------------------------------- hooks

    /// Hook in `check_writable`: a Secondary refuses local writes (and GC:
    /// chunk ids found by `LookupChunks` must stay until the apply).
    pub(crate) fn repl_check_writable(&self) -> super::Result<()> {
        match self.sink() {
            Some(s) if !s.is_primary() && !self.repl.preserving.load(Ordering::Acquire) => {
                Err(super::Error::ReadOnly(format!(
                    "store {} is a replication Secondary: it takes writes only from its peer; run `strata promote` to write here",
                    self.path.display()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Hook, before appending a record that changes `blocks` of `layer`.
    pub(crate) fn repl_will_write(&self, layer: Guid, blocks: impl Iterator<Item = u64>) -> u64 {
        // Split-brain preservation writes a local-only copy on the driver's
        // own thread: never replicated (and never queued to the driver,
        // which is busy running it).
        if self.repl.preserving.load(Ordering::Acquire) {
            return 0;
        }
        let Some(s) = self.sink() else { return 0 };
        let keys: Vec<BlockKey> = blocks.map(|b| BlockKey { layer, block_no: b }).collect();
        s.will_write(&keys)
    }

    /// Hook, after record `seq` (`batch`) was appended and applied to the
    /// maps, still under the writer's locks (so records of one block reach
    /// the sink in journal order).
    pub(crate) fn repl_journaled(&self, seq: u64, batch: &Batch, ticket: u64) {
        if self.repl.preserving.load(Ordering::Acquire) {
            return;
        }
        let Some(s) = self.sink() else { return };
        self.repl_catalogue_check(&s, false);
        let entries = match crate::journal::decode_payload(batch.payload()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(seq, %e, "replication: cannot decode our own journal record; its blocks stay in the activity log");
                return;
            }
        };
        let mut placements = Vec::new();
        let mut runs = Vec::new();
        for e in entries {
            match e {
                Entry::ChunkPut(p) => match self.store.read_stored(p.chunk_id) {
                    Ok((hash, payload)) => {
                        lock(&self.repl.index).map.insert(hash, p.chunk_id);
                        placements.push(ChunkPlacement { chunk_id: p.chunk_id, hash, payload });
                    }
                    Err(e) => {
                        tracing::error!(seq, chunk = p.chunk_id, %e, "replication: cannot read a chunk just written")
                    }
                },
                Entry::MapRun { layer, start_block, entries } => runs.push(MapRun { layer, start_block, entries }),
                Entry::MapTruncate { .. } | Entry::ChunkFree { .. } => {}
            }
        }
        if runs.is_empty() {
            return;
        }
        match Record::from_journal(seq, placements, &runs, Vec::new(), |id| self.repl_hash_of(id)) {
            Ok(rec) => s.journaled(rec, ticket),
            Err(e) => tracing::error!(seq, %e, "replication: record not shipped; its blocks stay in the activity log"),
        }
    }

    /// Hook, in the flush path after local durability: protocol C waits
    /// for the peer. A changed catalogue is shipped first.
    pub(crate) fn repl_flush(&self) -> super::Result<()> {
        let Some(s) = self.sink() else { return Ok(()) };
        self.repl_catalogue_check(&s, true);
        s.flush().map_err(|e| super::Error::io("replicating a flush".to_string(), std::io::Error::other(e)))
    }

    /// Ship the catalogue if it changed since last looked at. `external`
    /// also notices commits by other processes (costs one query).
    fn repl_catalogue_check(&self, s: &Arc<dyn ReplicationSink>, external: bool) {
        if let Some((seq, snap)) = self.repl_catalogue_changed(external, s.is_primary()) {
            s.catalogue_changed(seq, snap);
        }
    }

    /// The catalogue snapshot to ship if it changed since last looked at
    /// (`ships`: this node is Primary; otherwise the change is only noted).
    fn repl_catalogue_changed(&self, external: bool, ships: bool) -> Option<(u64, Vec<u8>)> {
        let local = self.catalog.local_changes();
        let dv = if external { self.catalog.data_version().unwrap_or(0) } else { lock(&self.repl.cat_seen).1 };
        {
            let mut seen = lock(&self.repl.cat_seen);
            if *seen == (local, dv) {
                return None;
            }
            *seen = (local, dv);
        }
        let snap = match self.catalog.replication_snapshot() {
            Ok(s) => strip_local(&s),
            Err(e) => {
                tracing::error!(%e, "replication: cannot read the catalogue");
                return None;
            }
        };
        let mut last = lock(&self.repl.cat_last);
        if *last == snap {
            return None;
        }
        *last = snap.clone();
        ships.then(|| (self.journal.last_seq(), snap))
    }

    /// Called by the driver on its tick: a catalogue change that no write
    /// or flush followed (a `volume remove`, a rename), to be stepped as a
    /// local record. `ships`: this node is Primary.
    pub fn repl_poll_catalogue(&self, ships: bool) -> Option<(u64, Vec<u8>)> {
        self.repl_catalogue_changed(true, ships)
    }

    // ----------------------------------------------------------- queries

    /// The content hash of local chunk `id` (remembered in the index).
    fn repl_hash_of(&self, id: u64) -> Option<Hash> {
        let h = self.store.content_hash(id).ok()?;
        lock(&self.repl.index).map.insert(h, id);
        Some(h)
    }

    fn value_of(&self, entry: u64) -> MapValue {
        match entry {
            ABSENT => MapValue::Absent,
            ZERO => MapValue::Zero,
            e if chain::is_chunk(e) => match self.repl_hash_of(e) {
                Some(h) => MapValue::Data(h),
                // Unreadable: reported as absent would hide data; the
                // digest differs and verify reports it instead.
                None => MapValue::Zero,
            },
            _ => MapValue::Absent,
        }
    }

    /// Current values of `keys` (ReadMap).
    pub fn repl_read_map(&self, keys: &[BlockKey]) -> Vec<(BlockKey, MapValue)> {
        let layers = rlock(&self.layers);
        keys.iter()
            .map(|k| {
                let e = layers.get(&k.layer).map(|l| rlock(&l.map).get(k.block_no)).unwrap_or(ABSENT);
                (*k, self.value_of(e))
            })
            .collect()
    }

    /// A local chunk id holding `hash`, without taking a reference.
    fn find_hash(&self, hash: &Hash) -> Option<u64> {
        let mut ix = lock(&self.repl.index);
        if let Some(&id) = ix.map.get(hash) {
            if self.store.content_hash(id).ok().as_ref() == Some(hash) {
                return Some(id);
            }
            ix.map.remove(hash);
        }
        if !ix.built {
            ix.built = true;
            let mut ids = Vec::new();
            self.store.table().for_each(|id, _, _| ids.push(id));
            for id in ids {
                if let Ok(h) = self.store.content_hash(id) {
                    ix.map.insert(h, id);
                }
            }
            return ix.map.get(hash).copied();
        }
        None
    }

    /// Stored payloads of `hashes` (ReadChunks); unknown hashes are left out.
    pub fn repl_read_chunks(&self, hashes: &[Hash]) -> Vec<ChunkPayload> {
        hashes
            .iter()
            .filter_map(|h| {
                let id = self.find_hash(h)?;
                match self.store.read_stored(id) {
                    Ok((got, payload)) if &got == h => Some(ChunkPayload { hash: got, payload }),
                    _ => None,
                }
            })
            .collect()
    }

    /// The hashes this store lacks (LookupChunks).
    pub fn repl_lookup(&self, hashes: &[Hash]) -> Vec<Hash> {
        hashes.iter().filter(|h| self.find_hash(h).is_none()).copied().collect()
    }

    /// The replicated layers (local-only split-brain copies excluded).
    fn layer_guids(&self) -> Vec<Guid> {
        let local = self.local_layers();
        let mut g: Vec<Guid> = rlock(&self.layers).keys().copied().filter(|g| !local.contains(g)).collect();
        g.sort();
        g
    }

    /// The layers of local-only volumes (see [`LOCAL_PREFIX`]).
    fn local_layers(&self) -> HashSet<Guid> {
        let mut out = HashSet::new();
        for d in self.catalog.list_disks().unwrap_or_default() {
            if d.name.starts_with(LOCAL_PREFIX) {
                out.extend(self.catalog.disk_layers(d.guid).unwrap_or_default().into_iter().map(|l| l.guid));
            }
        }
        out
    }

    /// Every mapped block of every layer (ScanBlocks).
    pub fn repl_scan_blocks(&self) -> Vec<BlockRange> {
        let layers = rlock(&self.layers);
        let mut out = Vec::new();
        for g in self.layer_guids() {
            if let Some(l) = layers.get(&g) {
                let m = rlock(&l.map);
                out.extend(rle_encode(m.iter().map(|(b, _)| BlockKey { layer: g, block_no: b })));
            }
        }
        out
    }

    fn digest(&self, layer: Guid, start: u64, count: u32) -> Hash {
        let mut h = blake3::Hasher::new();
        let entries: Vec<(u64, u64)> = match rlock(&self.layers).get(&layer) {
            Some(l) => {
                rlock(&l.map).iter_from(start).take_while(|(b, _)| *b < start.saturating_add(count as u64)).collect()
            }
            None => Vec::new(),
        };
        for (b, e) in entries {
            let v = self.value_of(e);
            h.update(&b.to_le_bytes());
            match v {
                MapValue::Absent => h.update(&[0]),
                MapValue::Zero => h.update(&[1]),
                MapValue::Data(d) => h.update(&[2]).update(&d),
            };
        }
        *h.finalize().as_bytes()
    }

    /// Digests of map ranges (ComputeDigests); empty = the whole store in
    /// ranges of [`VERIFY_RANGE`] blocks.
    pub fn repl_digests(&self, ranges: &[BlockRange]) -> Vec<RangeDigest> {
        let mut out = Vec::new();
        if ranges.is_empty() {
            let mut starts: BTreeSet<(Guid, u64)> = BTreeSet::new();
            for g in self.layer_guids() {
                if let Some(l) = rlock(&self.layers).get(&g) {
                    starts.extend(rlock(&l.map).iter().map(|(b, _)| (g, b / VERIFY_RANGE * VERIFY_RANGE)));
                }
            }
            for (layer, start) in starts {
                let count = VERIFY_RANGE as u32;
                out.push(RangeDigest { layer, start_block: start, count, digest: self.digest(layer, start, count) });
            }
        } else {
            for r in ranges {
                let count = r.len_blocks.min(u32::MAX as u64) as u32;
                out.push(RangeDigest {
                    layer: r.layer,
                    start_block: r.start_block,
                    count,
                    digest: self.digest(r.layer, r.start_block, count),
                });
            }
        }
        out
    }

    /// A complete snapshot of the replicated catalogue (ReadCatalogue).
    pub fn repl_catalogue_snapshot(&self) -> Vec<u8> {
        match self.catalog.replication_snapshot() {
            Ok(s) => strip_local(&s),
            Err(e) => {
                tracing::error!(%e, "replication: cannot read the catalogue");
                Vec::new()
            }
        }
    }

    // ------------------------------------------------------------- apply

    /// Apply a peer's batch atomically and durably (ApplyRecord): verify
    /// every chunk against its hash, store chunks, check that every
    /// referenced hash is present, then one journal record for all map
    /// updates, the catalogue, and fsync. Nothing changes on error.
    pub fn repl_apply(&self, b: &ApplyBatch) -> std::result::Result<(), String> {
        if self.read_only || self.mode() == super::Mode::ReadOnly {
            return Err(format!("store {} is read-only", self.path.display()));
        }
        // 1. Decode and verify payloads before storing anything.
        let mut blocks = Vec::with_capacity(b.chunks.len());
        for c in &b.chunks {
            let block = crate::store::replica::decode_stored(&c.payload)?;
            if blake3::hash(&block).as_bytes() != &c.hash {
                return Err(format!("chunk {} does not match its hash", hex(&c.hash)));
            }
            blocks.push(block);
        }
        // 2. Store them (dedup by MurmurHash3 + BLAKE3 confirm): one
        //    reference each, released at the end.
        let refs: Vec<&[u8]> = blocks.iter().map(|v| v.as_slice()).collect();
        let puts = self.store.put_blocks(&refs).map_err(|e| format!("storing received chunks: {e}"))?;
        let mut held: Vec<u64> = puts.iter().filter_map(|p| p.chunk_id()).collect();
        let mut by_hash: HashMap<Hash, u64> = HashMap::new();
        for (c, p) in b.chunks.iter().zip(&puts) {
            if let Some(id) = p.chunk_id() {
                by_hash.insert(c.hash, id);
            }
        }
        let release = |held: &[u64]| {
            for id in held {
                self.store.decref(*id);
            }
        };
        // 3. Resolve every update to a local entry, taking one reference
        //    per data entry.
        let mut entries: Vec<(BlockKey, u64)> = Vec::with_capacity(b.updates.len());
        for u in &b.updates {
            let e = match u.value {
                MapValue::Absent => ABSENT,
                MapValue::Zero => ZERO,
                MapValue::Data(h) => {
                    let id = match by_hash.get(&h) {
                        Some(&id) => self.store.table().incref_live(id).map(|_| id),
                        None => self.find_hash(&h).and_then(|id| self.store.claim_by_hash(id, &h)),
                    };
                    match id {
                        Some(id) => {
                            held.push(id);
                            id
                        }
                        None => {
                            release(&held);
                            return Err(format!("map update names chunk {} which this store lacks", hex(&h)));
                        }
                    }
                }
            };
            entries.push((u.key(), e));
        }
        // The entries took their own references above; drop the put refs
        // and, at the end, the old entries' refs. `held` now lists the
        // references owned by the new entries plus the puts' refs.
        let put_refs: Vec<u64> = puts.iter().filter_map(|p| p.chunk_id()).collect();
        // 4. One journal record: placements and map runs.
        let mut seq = 0;
        if !entries.is_empty() || puts.iter().any(|p| matches!(p, Put::New(_))) {
            let mut batch = Batch::new();
            for p in &puts {
                if let Put::New(c) = p {
                    batch.chunk_put(c);
                }
            }
            let mut i = 0;
            while i < entries.len() {
                let (k0, _) = entries[i];
                let mut run = Vec::new();
                while i < entries.len()
                    && entries[i].0.layer == k0.layer
                    && entries[i].0.block_no == k0.block_no.saturating_add(run.len() as u64)
                    && run.len() < super::handle::MAX_RUN
                {
                    run.push(entries[i].1);
                    i += 1;
                }
                batch.map_run(k0.layer, k0.block_no, &run);
            }
            let _cut = rlock(&self.cut);
            seq = match self.journal.append(&batch) {
                Ok(s) => s,
                Err(e) => {
                    let e = self.on_write_error(e.into());
                    // The new entries' references and the puts' refs.
                    let n = held.len();
                    release(&held[..n]);
                    return Err(format!("journal append: {e}"));
                }
            };
            let mut olds = Vec::new();
            {
                let mut layers = wlock(&self.layers);
                for (k, e) in &entries {
                    let l = layers.entry(k.layer).or_insert_with(|| Layer::new(k.layer, self.new_map())).clone();
                    olds.push(wlock(&l.map).set(k.block_no, *e));
                    l.dirty.store(true, Ordering::Release);
                }
            }
            self.store.publish(&puts);
            for old in olds {
                if chain::is_chunk(old) {
                    self.store.decref(old);
                }
            }
        }
        for id in put_refs {
            self.store.decref(id);
        }
        {
            let mut ix = lock(&self.repl.index);
            for (h, id) in by_hash {
                ix.map.insert(h, id);
            }
        }
        // 5. Catalogue: live deltas (each a complete snapshot here) in
        //    order, then a resync snapshot.
        for snap in b.catalogue.iter().chain(b.catalogue_snapshot.iter()) {
            self.repl_import_catalogue(snap)?;
        }
        // 6. Durable before the Ack.
        if seq > 0 {
            self.make_durable(seq).map_err(|e| format!("fsync: {e}"))?;
        }
        Ok(())
    }

    /// Replace the catalogue with a peer's snapshot and bring the set of
    /// layers in line: new layers get empty maps, layers no longer in the
    /// catalogue are dropped with their references (as `remove_volume`).
    fn repl_import_catalogue(&self, snap: &[u8]) -> std::result::Result<(), String> {
        if snap.is_empty() {
            return Ok(());
        }
        // Local-only volumes (split-brain preservation) survive the
        // replacement: their rows are merged into the peer's snapshot.
        let mine = self.catalog.replication_snapshot().map_err(|e| e.to_string())?;
        let merged = with_local(snap, &mine)?;
        self.catalog.replication_import(&merged).map_err(|e| e.to_string())?;
        *lock(&self.repl.cat_last) = snap.to_vec();
        // Our own import is not a local change to ship back.
        *lock(&self.repl.cat_seen) = (self.catalog.local_changes(), self.catalog.data_version().unwrap_or(0));
        let live: HashSet<Guid> =
            self.catalog.all_volumes().map_err(|e| e.to_string())?.into_iter().map(|v| v.guid).collect();
        let mut layers = wlock(&self.layers);
        for g in &live {
            layers.entry(*g).or_insert_with(|| Layer::new(*g, self.new_map()));
        }
        let gone: Vec<Guid> = layers.keys().filter(|g| !live.contains(g)).copied().collect();
        for g in gone {
            if let Some(l) = layers.remove(&g) {
                for (_, e) in rlock(&l.map).iter() {
                    if chain::is_chunk(e) {
                        self.store.decref(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Split-brain resolution on the victim: keep each divergent layer's
    /// volume as a snapshot named `split-brain-<generation>` before the
    /// resync overwrites it (best effort; logged).
    ///
    /// The divergent layers keep their GUIDs, which the peer shares: the
    /// resync overwrites their blocks. So each divergent volume is copied
    /// (map entries only; chunks are shared by reference) into a new,
    /// independent, *local-only* volume `split-brain-<generation>-<volume>`:
    /// snapshot, clone of the snapshot, flatten. Local-only volumes are
    /// never shipped to the peer and survive every catalogue replacement
    /// (see [`LOCAL_PREFIX`]); remove them with `strata volume remove` once
    /// rescued.
    pub fn repl_preserve_divergent(&self, layers: &[Guid], generation: u64) -> Vec<String> {
        let mut kept = Vec::new();
        self.repl.preserving.store(true, Ordering::Release);
        let disks = self.catalog.list_disks().unwrap_or_default();
        for d in disks.iter().filter(|d| layers.contains(&d.leaf) && !d.name.starts_with(LOCAL_PREFIX)) {
            let snap = format!("{LOCAL_PREFIX}{generation:016x}");
            let copy = format!("{LOCAL_PREFIX}{generation:016x}-{}", d.name);
            let done = self
                .snapshot_create(&d.name, &snap)
                .and_then(|_| self.clone_volume(&format!("{}@{snap}", d.name), &copy))
                .and_then(|_| self.flatten_volume(&copy));
            match done {
                Ok(_) => kept.push(copy),
                Err(e) => tracing::error!(volume = %d.name, %e, "split brain: could not preserve the divergent data"),
            }
        }
        self.repl.preserving.store(false, Ordering::Release);
        kept
    }
}

/// Volumes whose name starts with this are local to this store: never
/// shipped, kept across catalogue replacements (split-brain copies).
pub const LOCAL_PREFIX: &str = "split-brain-";

/// The GUIDs (as catalogue values) of local-only disks and every object
/// belonging to them (their volumes/layers), from a catalogue snapshot.
fn local_objects(doc: &serde_json::Value) -> (HashSet<String>, HashSet<String>) {
    let rows = |t: &str| doc["tables"][t].as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    let mut disks = HashSet::new();
    for r in rows("properties") {
        if r[1] == "name" && r[2].as_str().is_some_and(|n| n.starts_with(LOCAL_PREFIX)) {
            disks.insert(text(&r[0]));
        }
    }
    let mut objects = disks.clone();
    for r in rows("volumes") {
        if disks.contains(&text(&r[1])) {
            objects.insert(text(&r[0]));
        }
    }
    (disks, objects)
}

/// Is this row of table `t` one of the local-only objects?
fn is_local_row(t: &str, r: &serde_json::Value, disks: &HashSet<String>, objects: &HashSet<String>) -> bool {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    match t {
        "disks" => disks.contains(&text(&r[0])),
        "volumes" => disks.contains(&text(&r[1])),
        "properties" => objects.contains(&text(&r[0])),
        "snapshots" => disks.contains(&text(&r[1])),
        _ => false,
    }
}

/// A catalogue snapshot without the local-only volumes.
fn strip_local(snap: &[u8]) -> Vec<u8> {
    let Ok(mut doc) = serde_json::from_slice::<serde_json::Value>(snap) else { return snap.to_vec() };
    let (disks, objects) = local_objects(&doc);
    if disks.is_empty() {
        return snap.to_vec();
    }
    if let Some(tables) = doc["tables"].as_object_mut() {
        for (t, rows) in tables.iter_mut() {
            if let Some(a) = rows.as_array_mut() {
                a.retain(|r| !is_local_row(t, r, &disks, &objects));
            }
        }
    }
    serde_json::to_vec(&doc).unwrap_or_else(|_| snap.to_vec())
}

/// The peer's snapshot plus this store's local-only volumes (from `mine`).
fn with_local(incoming: &[u8], mine: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let Ok(local) = serde_json::from_slice::<serde_json::Value>(mine) else { return Ok(incoming.to_vec()) };
    let (disks, objects) = local_objects(&local);
    if disks.is_empty() {
        return Ok(incoming.to_vec());
    }
    let mut doc: serde_json::Value =
        serde_json::from_slice(incoming).map_err(|e| format!("replicated catalogue snapshot: {e}"))?;
    let (peer_disks, peer_objects) = local_objects(&doc);
    for (t, rows) in local["tables"].as_object().into_iter().flatten() {
        let Some(dst) = doc["tables"][t.as_str()].as_array_mut() else { continue };
        // Never two rows for one object: the peer's own local rows (it
        // should send none) give way to ours.
        dst.retain(|r| !is_local_row(t, r, &peer_disks, &peer_objects) && !is_local_row(t, r, &disks, &objects));
        for r in rows.as_array().into_iter().flatten() {
            if is_local_row(t, r, &disks, &objects) {
                dst.push(r.clone());
            }
        }
    }
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}

fn hex(h: &Hash) -> String {
    h.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
