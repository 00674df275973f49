//! Pack files: append-only files of chunk records.
//!
//! ```text
//! pack header (64 bytes)
//!   0  magic      [8]  "STRPACK\0"
//!   8  version    u32  = 1
//!  12  pack_id    u32
//!  16  store_uuid [16]
//!  32  reserved   [28]
//!  60  checksum   u32  checksum32(bytes 0..60)
//! chunk record (byte-granular, no padding)
//!   0  magic      u32  0x4B484353 ("SCHK")
//!   4  version    u8   = 1
//!   5  flags      u8   bit 0: payload is a zstd frame
//!                      bit 1: payload is raw and compression is deferred
//!                             (store format ≥ 2; never with bit 0)
//!                      other bits must be 0
//!   6  reserved   u16  = 0
//!   8  chunk_id   u64
//!  16  stored_len u32  payload bytes (≤ 4096)
//!  20  raw_len    u32  = 4096
//!  24  content    [32] BLAKE3 of the uncompressed 4096 bytes
//!  56  reserved   u32  = 0
//!  60  checksum   u32  checksum32(bytes 0..60)
//!  64  payload    [stored_len]
//! ```
//!
//! The content hash is both the read checksum (verified after
//! decompression on every read) and the dedup confirmation (a MurmurHash3
//! match is shared only if the BLAKE3 content ids are equal).

use crate::format::{BLOCK_SIZE, Reader, Writer, checksum32};
use crate::guid::Guid;

pub const PACK_MAGIC: &[u8; 8] = b"STRPACK\0";
pub const PACK_VERSION: u32 = 1;
pub const PACK_HEADER_LEN: u64 = 64;
pub const RECORD_MAGIC: u32 = 0x4B48_4353;
pub const RECORD_VERSION: u8 = 1;
pub const RECORD_HEADER_LEN: usize = 64;
pub const FLAG_ZSTD: u8 = 1;
/// Stored raw by a write that deferred compression to the background
/// packer (`volume::packer`); the packer rewrites the record compressed or,
/// if it does not shrink, raw without this flag. Readers treat it as raw.
pub const FLAG_DEFERRED: u8 = 2;

pub fn pack_file_name(id: u32) -> String {
    format!("{id:08x}.pack")
}

pub fn encode_pack_header(pack_id: u32, store_uuid: Guid) -> Vec<u8> {
    let mut w = Writer::with_capacity(64);
    w.bytes(PACK_MAGIC).u32(PACK_VERSION).u32(pack_id).bytes(store_uuid.as_bytes()).zeros(28);
    let c = checksum32(&w.buf);
    w.u32(c);
    w.buf
}

/// Validate a pack header; returns the pack id.
pub fn decode_pack_header(b: &[u8], store_uuid: Guid) -> Result<u32, String> {
    if b.len() < PACK_HEADER_LEN as usize {
        return Err(format!("pack header truncated ({} bytes)", b.len()));
    }
    let mut r = Reader::new(b);
    let magic: [u8; 8] = r.array().map_err(|e| e.to_string())?;
    if &magic != PACK_MAGIC {
        return Err("bad magic: not a strata pack file".into());
    }
    if checksum32(&b[..60]) != u32::from_le_bytes(b[60..64].try_into().expect("4")) {
        return Err("pack header checksum mismatch".into());
    }
    let version = r.u32().map_err(|e| e.to_string())?;
    if version != PACK_VERSION {
        return Err(format!("pack version {version} is not supported (this strata reads {PACK_VERSION})"));
    }
    let id = r.u32().map_err(|e| e.to_string())?;
    let uuid = Guid(r.array().map_err(|e| e.to_string())?);
    if uuid != store_uuid {
        return Err(format!("pack belongs to store {uuid}, not {store_uuid}"));
    }
    Ok(id)
}

/// The decoded fixed header of a chunk record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub flags: u8,
    pub chunk_id: u64,
    pub stored_len: u32,
    pub content: [u8; 32],
}

pub fn encode_record_header(h: &RecordHeader, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
    out.push(RECORD_VERSION);
    out.push(h.flags);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&h.chunk_id.to_le_bytes());
    out.extend_from_slice(&h.stored_len.to_le_bytes());
    out.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    out.extend_from_slice(&h.content);
    out.extend_from_slice(&0u32.to_le_bytes());
    let c = checksum32(&out[start..start + 60]);
    out.extend_from_slice(&c.to_le_bytes());
}

pub fn decode_record_header(b: &[u8]) -> Result<RecordHeader, String> {
    if b.len() < RECORD_HEADER_LEN {
        return Err(format!("record header truncated ({} bytes)", b.len()));
    }
    let mut r = Reader::new(b);
    let magic = r.u32().map_err(|e| e.to_string())?;
    if magic != RECORD_MAGIC {
        return Err(format!("bad record magic {magic:#010x}"));
    }
    if checksum32(&b[..60]) != u32::from_le_bytes(b[60..64].try_into().expect("4")) {
        return Err("record header checksum mismatch".into());
    }
    let version = r.u8().map_err(|e| e.to_string())?;
    if version != RECORD_VERSION {
        return Err(format!("record version {version} is not supported"));
    }
    let flags = r.u8().map_err(|e| e.to_string())?;
    if flags & !(FLAG_ZSTD | FLAG_DEFERRED) != 0 || flags == FLAG_ZSTD | FLAG_DEFERRED {
        return Err(format!("unknown record flags {flags:#x}"));
    }
    r.u16().map_err(|e| e.to_string())?;
    let chunk_id = r.u64().map_err(|e| e.to_string())?;
    let stored_len = r.u32().map_err(|e| e.to_string())?;
    let raw_len = r.u32().map_err(|e| e.to_string())?;
    if raw_len as usize != BLOCK_SIZE || stored_len as usize > BLOCK_SIZE || stored_len == 0 {
        return Err(format!("bad record lengths: stored {stored_len}, raw {raw_len}"));
    }
    let content = r.array().map_err(|e| e.to_string())?;
    Ok(RecordHeader { flags, chunk_id, stored_len, content })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_record_header_bytes() {
        let mut out = vec![];
        let h = RecordHeader { flags: FLAG_ZSTD, chunk_id: 0x1122, stored_len: 300, content: [7; 32] };
        encode_record_header(&h, &mut out);
        assert_eq!(out.len(), RECORD_HEADER_LEN);
        assert_eq!(&out[0..4], b"SCHK");
        assert_eq!(out[4], 1);
        assert_eq!(out[5], 1);
        assert_eq!(&out[8..16], &0x1122u64.to_le_bytes());
        assert_eq!(&out[16..20], &300u32.to_le_bytes());
        assert_eq!(&out[20..24], &4096u32.to_le_bytes());
        assert_eq!(&out[24..56], &[7; 32]);
        assert_eq!(decode_record_header(&out).unwrap(), h);
    }

    #[test]
    fn damaged_record_headers_are_rejected() {
        let mut out = vec![];
        encode_record_header(&RecordHeader { flags: 0, chunk_id: 1, stored_len: 4096, content: [0; 32] }, &mut out);
        for i in [0usize, 5, 9, 17, 30, 61] {
            let mut b = out.clone();
            b[i] ^= 0x40;
            assert!(decode_record_header(&b).is_err(), "flip at {i} accepted");
        }
        assert!(decode_record_header(&out[..10]).is_err());
    }

    #[test]
    fn deferred_flag_is_bit_1_and_never_combined_with_zstd() {
        let h = RecordHeader { flags: FLAG_DEFERRED, chunk_id: 5, stored_len: 4096, content: [3; 32] };
        let mut out = vec![];
        encode_record_header(&h, &mut out);
        assert_eq!(out[5], 2);
        assert_eq!(decode_record_header(&out).unwrap(), h);
        for bad in [FLAG_ZSTD | FLAG_DEFERRED, 4, 0x80] {
            let mut out = vec![];
            encode_record_header(&RecordHeader { flags: bad, ..h.clone() }, &mut out);
            assert!(decode_record_header(&out).unwrap_err().contains("unknown record flags"), "{bad:#x}");
        }
    }

    #[test]
    fn pack_header_round_trips_and_checks_the_store() {
        let u = Guid::new_random();
        let h = encode_pack_header(9, u);
        assert_eq!(&h[..8], b"STRPACK\0");
        assert_eq!(decode_pack_header(&h, u).unwrap(), 9);
        assert!(decode_pack_header(&h, Guid::new_random()).is_err());
    }
}
