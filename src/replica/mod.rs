//! Replication to one peer, DRBD style: the *pure* core.
//!
//! This module owns the replication protocol between two strata stores and
//! nothing else: no threads, no sockets, no engine calls. A later worker
//! wires it to TCP and to the engine by feeding [`protocol::Event`]s into
//! [`protocol::Replica::step`] and executing the [`protocol::Action`]s it
//! returns, in order (the raft-rs "Ready" pattern). Because it is pure, the
//! whole protocol runs in tests against a deterministic simulated network
//! ([`sim`]) with drops, delays, reordering, duplication, partitions and
//! crash-restarts.
//!
//! # Files
//!
//! ```text
//! mod.rs       shared plain data: hashes, block keys, map values, records
//! wire.rs      frame layout, message encodings, a decoder that never panics
//! auth.rs      challenge-response, session keys, per-frame MACs, ct_eq
//! gi.rs        generation identifiers and the connect-time decision table
//! dirty.rs     the persistent dirty set (what the peer has not confirmed)
//! status.rs    DRBD state names, ReplicaStatus, the events2-style lines
//! protocol.rs  the state machine: step(event) -> actions
//! sim.rs       in-memory engine model + seeded network, for tests
//! state.rs     STORE/replica.state: persisted state + activity log
//! node.rs      the driver: core + engine + TCP, named threads (issue 6)
//! transport.rs TCP listener, dialer, frame reader/writer threads
//! ```
//!
//! The first six files are the pure core and depend on nothing outside
//! this module; `state`, `node` and `transport` wire it to the engine
//! (`volume::replication`) and to sockets.
//!
//! Depends on: `format` (byte readers), `guid`. Nothing here depends on
//! `volume`, `store` or `catalog`; the engine adapts to these types.
//!
//! # What is replicated
//!
//! The primary's store changes as a sequence of journal records. Chunk ids
//! are local to each store, so the wire speaks in *content hashes*: a record
//! becomes a list of map updates `(layer, block, Hash(h) | Zero | Absent)`
//! plus opaque catalogue changes. The receiver looks the hashes up in its own
//! dedup index and answers with the ones it lacks (`Want`); only those chunk
//! payloads travel (`Chunks`). Writing data the peer already holds, zeros, or
//! a block rewritten many times while disconnected costs map entries only.
//!
//! # Message flow
//!
//! ```text
//!  A (either side)                          B
//!  Hello, Challenge(cA)          ──►  ◄──   Hello, Challenge(cB)
//!  Response(mac over cB‖cA)      ──►  ◄──   Response(mac over cA‖cB)
//!        ── from here every frame carries a session MAC ──
//!  GenerationIds                 ──►  ◄──   GenerationIds
//!        both sides run the same decision table (gi.rs)
//!  DirtyRanges (RLE)             ──►  ◄──   DirtyRanges (RLE)
//!  SyncSource:                              SyncTarget:
//!  Ship{batch, updates by hash}  ──►
//!                                ◄──        Want{batch, missing hashes}
//!  Chunks{batch, payloads}       ──►
//!                                ◄──        Ack{Durable, batch}  (after apply)
//!  ... resync in ascending block order, live writes interleaved as
//!      further Ship batches in the same ordered stream ...
//!  GenerationIds{SyncDone}       ──►        target adopts source's GIs
//!  Ping / Pong keepalives both ways; Error / Disconnect carry a reason.
//! ```
//!
//! # Safety arguments (why the invariants hold)
//!
//! * **Consistent prefix (protocol A and C).** Every change travels as a
//!   *batch* with a connection-local number; the secondary applies batches
//!   strictly in number order and only once all chunks a batch references
//!   are present, so its store is always the primary's state after some
//!   prefix of batches. Frames carry a strictly increasing per-direction
//!   sequence number under a MAC: a lost, duplicated or reordered frame
//!   breaks the connection (`ProtocolError`) rather than being applied out
//!   of order; everything not confirmed is still in the dirty set.
//! * **Nothing acknowledged is lost (protocol C).** A flush completes with
//!   `replicated: true` only after the peer's *durable* Ack of the batch
//!   holding the last record before the flush, and only while the peer's
//!   disk is UpToDate (so it also holds everything older).
//! * **Nothing unconfirmed is forgotten.** A block is put in the dirty set,
//!   and the set persisted, *before* the write it describes can be lost by
//!   a crash (the engine persists `PersistState` with or before the record,
//!   DRBD's activity-log rule). A block leaves the set only on a durable Ack
//!   of a batch that carried the block's *latest* value (stamps, dirty.rs).
//!   So after any crash or disconnect, resyncing the union of both sides'
//!   dirty sets makes the stores equal.
//! * **No silent divergence.** Generation ids (gi.rs) decide the resync
//!   direction; if both sides wrote since their last common generation the
//!   connection is refused (split brain) and stays StandAlone until an
//!   operator runs `DiscardMyData` on the victim, which first asks the
//!   engine to keep the divergent layers as a snapshot (`PreserveDivergent`).
//! * **Authenticated peer and frames.** See auth.rs: mutual challenge-
//!   response bound to both node ids and both challenges, reflected
//!   challenges refused, per-direction session keys MAC every later frame.
//! * **Both sides decide alike.** Each side decides on exactly the ids,
//!   dirty count, role and flags it *sent*; a write during the handshake is
//!   queued as a numbered live batch and sent right after the decision (or
//!   dropped with the session, its blocks staying dirty). If such a write
//!   must start a new generation, the handshake is abandoned and retried.
//! * **Catalogue.** Live records carry catalogue deltas, applied in batch
//!   order. The dirty set has one extra entry, [`CATALOGUE_KEY`], meaning
//!   "the peer may have missed a delta"; resync then ships a complete
//!   catalogue snapshot that replaces the peer's.
//!
//! # Flush semantics
//!
//! `CompleteFlush { replicated }`: protocol A completes at once with
//! `replicated: false`. Protocol C completes after the durable Ack of the
//! last live batch before the flush; `replicated` is true only if the peer
//! was UpToDate and no write since then bypassed live shipping. Without a
//! connection, flushes complete locally (`replicated: false`, DRBD's
//! degraded mode): the data is durable here and in the dirty set.
//!
//! # Known limits (first version)
//!
//! * The dirty set is held per block in memory (RLE only when persisted or
//!   sent); `max_dirty_blocks` bounds what a peer can make us hold.
//! * A record's Ship must fit in one frame (16 MiB payload).
//! * Verify compares the ranges the source reports; layers that exist only
//!   on the target are not reported.
//! * Only one peer; no quorum (a two-node pair cannot have one).

pub mod auth;
pub mod dirty;
pub mod gi;
pub mod node;
pub mod protocol;
pub mod sim;
pub mod state;
pub mod status;
pub mod transport;
pub mod wire;

pub use crate::guid::Guid;
pub use dirty::DirtySet;
pub use gi::{Decision, GenIds};
pub use protocol::{Action, AdminCommand, Config, Event, PersistedState, Protocol, Replica};
pub use status::{ConnState, DiskState, ReplState, ReplicaStatus, Role, StateChange, event_line};

/// The block size both peers must use (checked in the handshake).
pub const BLOCK_SIZE: u32 = crate::format::BLOCK_SIZE as u32;
/// The content hash both peers must use (checked in the handshake).
pub const HASH_NAME: &str = "blake3";

/// A 32-byte BLAKE3 content hash: how peers name chunks.
pub type Hash = [u8; 32];

/// The dirty-set entry standing for "the catalogue": the blank GUID is
/// never a layer. Live records carry catalogue deltas; when the peer may
/// have missed one, this key is dirty and resync sends a full snapshot.
pub const CATALOGUE_KEY: BlockKey = BlockKey { layer: Guid::BLANK, block_no: u64::MAX };

/// One logical block of one layer, ordered by (layer, block): the order in
/// which resync walks the dirty set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockKey {
    pub layer: Guid,
    pub block_no: u64,
}

/// The value of one map entry as it travels: chunk ids are local, so a
/// stored block is named by its content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapValue {
    /// Not mapped in this layer (reads fall through to the backing layer).
    Absent,
    /// Known to be all zeros (no chunk).
    Zero,
    /// Stored data with this content hash.
    Data(Hash),
}

/// One map update: `block_no` of `layer` now holds `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapUpdate {
    pub layer: Guid,
    pub block_no: u64,
    pub value: MapValue,
}

impl MapUpdate {
    pub fn key(&self) -> BlockKey {
        BlockKey { layer: self.layer, block_no: self.block_no }
    }
}

/// A chunk payload as stored (compressed), named by its content hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPayload {
    pub hash: Hash,
    pub payload: Vec<u8>,
}

/// One committed journal record of the primary, in the by-hash form the
/// protocol ships. `seq` is the journal sequence number (strictly
/// increasing); `chunks` are the chunks *placed* by this record (a cache
/// that lets the primary answer `Want` without reading its packs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub updates: Vec<MapUpdate>,
    pub chunks: Vec<ChunkPayload>,
    pub catalogue: Vec<Vec<u8>>,
}

/// A journal chunk placement as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlacement {
    pub chunk_id: u64,
    pub hash: Hash,
    pub payload: Vec<u8>,
}

/// A journal map run as the engine sees it: `entries[i]` is the entry of
/// block `start_block + i` (0 absent, 1 zero, ≥16 a local chunk id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRun {
    pub layer: Guid,
    pub start_block: u64,
    pub entries: Vec<u64>,
}

/// Why a journal record could not be converted to the wire form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("map entry {entry} of layer {layer} block {block_no} names no known chunk")]
    UnknownChunk { layer: Guid, block_no: u64, entry: u64 },
    #[error("map entry {entry} of layer {layer} block {block_no} is a reserved value")]
    ReservedEntry { layer: Guid, block_no: u64, entry: u64 },
}

impl Record {
    /// Convert an engine journal record to the by-hash form. Chunk ids
    /// placed in this record resolve from `placements`; older ones (dedup
    /// hits) through `resolve`, which the engine backs with its chunk table.
    pub fn from_journal(
        seq: u64,
        placements: Vec<ChunkPlacement>,
        runs: &[MapRun],
        catalogue: Vec<Vec<u8>>,
        resolve: impl Fn(u64) -> Option<Hash>,
    ) -> Result<Record, RecordError> {
        let local: std::collections::HashMap<u64, Hash> = placements.iter().map(|p| (p.chunk_id, p.hash)).collect();
        let mut updates = Vec::new();
        for run in runs {
            for (i, &entry) in run.entries.iter().enumerate() {
                let block_no = run.start_block.saturating_add(i as u64);
                let value = match entry {
                    0 => MapValue::Absent,
                    1 => MapValue::Zero,
                    2..=15 => return Err(RecordError::ReservedEntry { layer: run.layer, block_no, entry }),
                    id => match local.get(&id).copied().or_else(|| resolve(id)) {
                        Some(h) => MapValue::Data(h),
                        None => return Err(RecordError::UnknownChunk { layer: run.layer, block_no, entry }),
                    },
                };
                updates.push(MapUpdate { layer: run.layer, block_no, value });
            }
        }
        let chunks = placements.into_iter().map(|p| ChunkPayload { hash: p.hash, payload: p.payload }).collect();
        Ok(Record { seq, updates, chunks, catalogue })
    }
}

/// A run of consecutive blocks of one layer: the RLE unit of dirty sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockRange {
    pub layer: Guid,
    pub start_block: u64,
    pub len_blocks: u64,
}

impl BlockRange {
    /// The blocks of the range, saturating at u64::MAX (never overflows on
    /// hostile input).
    pub fn keys(&self) -> impl Iterator<Item = BlockKey> + '_ {
        // Inclusive end: a range may end at block u64::MAX (CATALOGUE_KEY).
        let last = self.start_block.saturating_add(self.len_blocks.saturating_sub(1));
        let n = if self.len_blocks == 0 { 0 } else { usize::MAX };
        (self.start_block..=last).take(n).map(move |b| BlockKey { layer: self.layer, block_no: b })
    }
}

/// Run-length encode ascending, de-duplicated keys.
pub fn rle_encode(keys: impl IntoIterator<Item = BlockKey>) -> Vec<BlockRange> {
    let mut out: Vec<BlockRange> = Vec::new();
    for k in keys {
        if let Some(last) = out.last_mut()
            && last.layer == k.layer
            && last.start_block.checked_add(last.len_blocks) == Some(k.block_no)
        {
            last.len_blocks += 1;
            continue;
        }
        out.push(BlockRange { layer: k.layer, start_block: k.block_no, len_blocks: 1 });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(n: u8) -> Guid {
        Guid([n; 16])
    }

    #[test]
    fn rle_merges_adjacent_blocks_of_the_same_layer_only() {
        let keys = [(1, 0), (1, 1), (1, 2), (1, 5), (2, 6), (2, 7)].map(|(l, b)| BlockKey { layer: g(l), block_no: b });
        let r = rle_encode(keys);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], BlockRange { layer: g(1), start_block: 0, len_blocks: 3 });
        assert_eq!(r[2], BlockRange { layer: g(2), start_block: 6, len_blocks: 2 });
        let back: Vec<BlockKey> = r.iter().flat_map(|r| r.keys().collect::<Vec<_>>()).collect();
        assert_eq!(back, keys.to_vec());
        let cat = rle_encode([CATALOGUE_KEY]);
        assert_eq!(cat[0].keys().collect::<Vec<_>>(), vec![CATALOGUE_KEY]);
    }

    #[test]
    fn journal_records_resolve_old_chunk_ids_through_the_engine() {
        let placements = vec![ChunkPlacement { chunk_id: 20, hash: [7; 32], payload: vec![1] }];
        let runs = [MapRun { layer: g(1), start_block: 10, entries: vec![0, 1, 20, 99] }];
        let r = Record::from_journal(5, placements, &runs, vec![], |id| (id == 99).then_some([9; 32])).unwrap();
        let vals: Vec<MapValue> = r.updates.iter().map(|u| u.value).collect();
        assert_eq!(vals, vec![MapValue::Absent, MapValue::Zero, MapValue::Data([7; 32]), MapValue::Data([9; 32])]);
        assert_eq!(r.updates[3].block_no, 13);
        let bad = Record::from_journal(5, vec![], &runs, vec![], |_| None);
        assert!(matches!(bad, Err(RecordError::UnknownChunk { entry: 20, .. })));
    }
}
