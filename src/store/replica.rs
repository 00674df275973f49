//! Chunk access for replication (`volume::replication`): content hashes by
//! chunk id, stored payloads, and the stored → block decoding used when a
//! peer's payload arrives.
//!
//! Chunks travel between peers in their *stored* form (the pack record's
//! payload: zstd-compressed, or the raw 4096-byte block when compression
//! did not save 1/16), named by the BLAKE3 hash of the uncompressed block
//! (the `content` field of the record header). A stored payload is raw
//! exactly when it is 4096 bytes long: `compress` keeps a compressed form
//! only if it is at most 15/16 of a block. The receiver decodes and checks
//! the hash before anything is stored ([`decode_stored`]).
//!
//! Depends on the parent module only (it reads packs the same way `get`
//! does). Takes no lock beyond the ones `pack_file` and the table take.

use super::{ChunkStore, Error, RECORD_HEADER_LEN, Result, pack};
use crate::fault::{self, Point};
use crate::format::BLOCK_SIZE;

impl ChunkStore {
    /// Read chunk `id`'s record: its content hash and stored payload,
    /// checked like a read (header, lengths, decoded content hash).
    pub fn read_stored(&self, id: u64) -> Result<([u8; 32], Vec<u8>)> {
        self.at_current_loc(id, |loc| self.read_stored_at(id, loc))
    }

    fn read_stored_at(&self, id: u64, loc: super::ChunkLoc) -> Result<([u8; 32], Vec<u8>)> {
        let corrupt =
            |detail: String| Error::Corrupt { chunk_id: id, pack_id: loc.pack_id, offset: loc.offset, detail };
        let file = self.pack_file(loc.pack_id).ok_or_else(|| corrupt("its pack file is missing".into()))?;
        let n = RECORD_HEADER_LEN + loc.stored_len as usize;
        if loc.stored_len as usize > BLOCK_SIZE {
            return Err(corrupt(format!("stored length {} exceeds a block", loc.stored_len)));
        }
        let mut rec = vec![0u8; n];
        fault::read_exact_at(&self.faults, Point::PackRead, &file, &mut rec, loc.offset)
            .map_err(|e| super::classify(format!("reading pack {}", loc.pack_id), e))?;
        let h = pack::decode_record_header(&rec[..RECORD_HEADER_LEN]).map_err(corrupt)?;
        if h.chunk_id != id || h.stored_len != loc.stored_len {
            return Err(corrupt(format!("record header names chunk {} ({} bytes)", h.chunk_id, h.stored_len)));
        }
        let payload = rec.split_off(RECORD_HEADER_LEN);
        // Check the payload before it leaves this store: a peer must never
        // receive bytes we could not read back ourselves.
        let block = decode_stored(&payload).map_err(corrupt)?;
        if blake3::hash(&block).as_bytes() != &h.content {
            return Err(corrupt("BLAKE3 checksum mismatch".into()));
        }
        Ok((h.content, payload))
    }

    /// The content hash of chunk `id` from its record header (one small
    /// read; the header has its own checksum).
    pub fn content_hash(&self, id: u64) -> Result<[u8; 32]> {
        let loc = self.table.get(id).ok_or(Error::MissingChunk(id))?;
        let corrupt =
            |detail: String| Error::Corrupt { chunk_id: id, pack_id: loc.pack_id, offset: loc.offset, detail };
        let file = self.pack_file(loc.pack_id).ok_or_else(|| corrupt("its pack file is missing".into()))?;
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        fault::read_exact_at(&self.faults, Point::PackRead, &file, &mut hdr, loc.offset)
            .map_err(|e| super::classify(format!("reading pack {}", loc.pack_id), e))?;
        let h = pack::decode_record_header(&hdr).map_err(corrupt)?;
        if h.chunk_id != id {
            return Err(corrupt(format!("record header names chunk {}", h.chunk_id)));
        }
        Ok(h.content)
    }

    /// Take one reference on `id` if it is live and its content hash is
    /// `hash` (a stale hash index entry is refused, never shared).
    pub fn claim_by_hash(&self, id: u64, hash: &[u8; 32]) -> Option<u64> {
        match self.content_hash(id) {
            Ok(h) if &h == hash => self.table.incref_live(id).map(|_| id),
            _ => None,
        }
    }
}

/// Decode a stored payload (as shipped by a peer) into the 4096-byte block.
/// Never panics and never allocates more than one block, whatever the input.
pub fn decode_stored(payload: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = vec![0u8; BLOCK_SIZE];
    if payload.len() == BLOCK_SIZE {
        out.copy_from_slice(payload);
        return Ok(out);
    }
    if payload.is_empty() || payload.len() > BLOCK_SIZE {
        return Err(format!("stored payload of {} bytes", payload.len()));
    }
    let got = super::decompress(payload, &mut out).map_err(|e| format!("zstd: {e}"))?;
    if got != BLOCK_SIZE {
        return Err(format!("payload decompressed to {got} bytes, not a block"));
    }
    Ok(out)
}
