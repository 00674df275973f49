//! The superblock `STORE/superblock`: identifies a store and its format
//! version, and carries the settings and state that must survive restarts
//! (write policy, operating mode, clean-shutdown flag).
//!
//! ```text
//!   0  magic          [8]  "STRATASB"
//!   8  format_version u32  = 2 (1 is read and upgraded at the first writable open)
//!  12  flags          u32  bit 0: clean (set by a clean close, cleared at open)
//!  16  store_uuid     [16]
//!  32  created_unix   u64
//!  40  block_size     u32  = 4096
//!  44  write_policy   u8   0 sync, 1 async, 2 async-unsafe, 3 auto
//!  45  mode           u8   0 normal, 1 recovering, 2 read-only
//!  46  zstd_level     i8
//!  47  compression    u8   0 inline, 1 deferred (format 2; always 0 in format 1)
//!  48  checkpoint_seq u64  journal seq of the last complete checkpoint
//!  56  index_max      u64  dedup index entries cap (0 = unbounded)
//!  64  table_cache    u64  bytes of chunk table kept resident; 0 = all in RAM (format 2)
//!  72  map_cache      u64  bytes of block-map pages kept resident; 0 = all in RAM (format 2)
//!  80  reserved       [4012]
//! 4092 checksum       u32  checksum32(bytes 0..4092)
//! ```
//!
//! Replaced atomically (write `superblock.tmp`, fsync, rename, fsync dir).
//! Readers reject a bad magic, a bad checksum and any format version they
//! do not know.

use super::{Mode, WritePolicy};
use crate::format::{self, BLOCK_SIZE, Reader, Writer, checksum32};
use crate::guid::Guid;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"STRATASB";
/// Version 2 added the compression byte and pack records with
/// `FLAG_DEFERRED`; version 1 stores open unchanged and are rewritten as
/// version 2 by the first writable open (their records are all valid in 2).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this strata reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
pub const LEN: usize = 4096;
pub const FLAG_CLEAN: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct Superblock {
    pub format_version: u32,
    pub clean: bool,
    pub store_uuid: Guid,
    pub created_unix: u64,
    pub write_policy: WritePolicy,
    pub mode: Mode,
    pub zstd_level: i32,
    pub checkpoint_seq: u64,
    /// Cap on dedup index entries; 0 = unbounded (a dedup window otherwise).
    pub index_max_entries: u64,
    /// Compress new blocks in the background (packer) rather than inline.
    pub deferred_compression: bool,
    /// Bytes of the chunk table kept resident (0 = the table is in RAM).
    pub table_cache_bytes: u64,
    /// Bytes of block-map pages kept resident (0 = the maps are in RAM).
    pub map_cache_bytes: u64,
    /// Bytes of retired packs kept for reuse (0 = GC deletes them).
    pub spare_pack_bytes: u64,
}

/// `spare-pack-bytes` of a new store: eight full packs.
pub const DEFAULT_SPARE_PACK_BYTES: u64 = 1 << 30;

fn policy_code(p: WritePolicy) -> u8 {
    match p {
        WritePolicy::Sync => 0,
        WritePolicy::Async => 1,
        WritePolicy::AsyncUnsafe => 2,
        WritePolicy::Auto => 3,
    }
}

fn mode_code(m: Mode) -> u8 {
    match m {
        Mode::Normal => 0,
        Mode::Recovering => 1,
        Mode::ReadOnly => 2,
    }
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(LEN);
        w.bytes(MAGIC)
            .u32(self.format_version)
            .u32(if self.clean { FLAG_CLEAN } else { 0 })
            .bytes(self.store_uuid.as_bytes())
            .u64(self.created_unix)
            .u32(BLOCK_SIZE as u32)
            .u8(policy_code(self.write_policy))
            .u8(mode_code(self.mode))
            .u8(self.zstd_level as i8 as u8)
            .u8(self.deferred_compression as u8)
            .u64(self.checkpoint_seq)
            .u64(self.index_max_entries)
            .u64(self.table_cache_bytes)
            .u64(self.map_cache_bytes)
            .u64(self.spare_pack_bytes);
        w.zeros(LEN - 4 - w.len());
        let c = checksum32(&w.buf);
        w.u32(c);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, String> {
        if b.len() != LEN {
            return Err(format!("superblock is {} bytes, expected {LEN}", b.len()));
        }
        let mut r = Reader::new(b);
        let magic: [u8; 8] = r.array().map_err(|e| e.to_string())?;
        if &magic != MAGIC {
            return Err("bad magic: this is not a strata store".into());
        }
        if checksum32(&b[..LEN - 4]) != u32::from_le_bytes(b[LEN - 4..].try_into().expect("4")) {
            return Err("superblock checksum mismatch".into());
        }
        let format_version = r.u32().map_err(|e| e.to_string())?;
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&format_version) {
            return Err(format!(
                "store format version {format_version} is not supported (this strata reads versions {MIN_FORMAT_VERSION} to {FORMAT_VERSION}); use a matching strata release"
            ));
        }
        let flags = r.u32().map_err(|e| e.to_string())?;
        if flags & !FLAG_CLEAN != 0 {
            return Err(format!("unknown superblock flags {flags:#x}"));
        }
        let store_uuid = Guid(r.array().map_err(|e| e.to_string())?);
        let created_unix = r.u64().map_err(|e| e.to_string())?;
        let bs = r.u32().map_err(|e| e.to_string())?;
        if bs as usize != BLOCK_SIZE {
            return Err(format!("block size {bs} is not supported"));
        }
        let write_policy = match r.u8().map_err(|e| e.to_string())? {
            0 => WritePolicy::Sync,
            1 => WritePolicy::Async,
            2 => WritePolicy::AsyncUnsafe,
            3 => WritePolicy::Auto,
            x => return Err(format!("unknown write policy code {x}")),
        };
        let mode = match r.u8().map_err(|e| e.to_string())? {
            0 => Mode::Normal,
            1 => Mode::Recovering,
            2 => Mode::ReadOnly,
            x => return Err(format!("unknown operating mode code {x}")),
        };
        let zstd_level = r.u8().map_err(|e| e.to_string())? as i8 as i32;
        let deferred_compression = match (format_version, r.u8().map_err(|e| e.to_string())?) {
            (_, 0) => false,
            (2.., 1) => true,
            (_, x) => return Err(format!("unknown compression mode code {x}")),
        };
        let checkpoint_seq = r.u64().map_err(|e| e.to_string())?;
        let index_max_entries = r.u64().map_err(|e| e.to_string())?;
        let table_cache_bytes = r.u64().map_err(|e| e.to_string())?;
        let map_cache_bytes = r.u64().map_err(|e| e.to_string())?;
        let spare_pack_bytes = r.u64().map_err(|e| e.to_string())?;
        if format_version < 2 && (table_cache_bytes != 0 || map_cache_bytes != 0 || spare_pack_bytes != 0) {
            return Err("format 1 superblock has bytes set past offset 64".into());
        }
        Ok(Superblock {
            format_version,
            clean: flags & FLAG_CLEAN != 0,
            store_uuid,
            created_unix,
            write_policy,
            mode,
            zstd_level,
            checkpoint_seq,
            index_max_entries,
            deferred_compression,
            table_cache_bytes,
            map_cache_bytes,
            spare_pack_bytes,
        })
    }

    pub fn read(path: &Path) -> Result<Superblock, String> {
        let b = std::fs::read(path).map_err(|e| e.to_string())?;
        Superblock::decode(&b)
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        format::write_atomic(path, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            format_version: 1,
            clean: true,
            store_uuid: Guid([0x11; 16]),
            created_unix: 1_700_000_000,
            write_policy: WritePolicy::Auto,
            mode: Mode::Normal,
            zstd_level: 3,
            checkpoint_seq: 42,
            index_max_entries: 0,
            deferred_compression: false,
            table_cache_bytes: 0,
            map_cache_bytes: 0,
            spare_pack_bytes: 0,
        }
    }

    #[test]
    fn golden_v2_superblock_bytes_carry_the_compression_mode() {
        let s2 = Superblock {
            format_version: 2,
            deferred_compression: true,
            index_max_entries: 7,
            table_cache_bytes: 64 << 20,
            map_cache_bytes: 8 << 20,
            spare_pack_bytes: 1 << 30,
            ..sample()
        };
        let b = s2.encode();
        assert_eq!(&b[8..12], &[2, 0, 0, 0]);
        assert_eq!(b[47], 1);
        assert_eq!(&b[56..64], &7u64.to_le_bytes());
        assert_eq!(&b[64..72], &(64u64 << 20).to_le_bytes());
        assert_eq!(&b[72..80], &(8u64 << 20).to_le_bytes());
        assert_eq!(&b[80..88], &(1u64 << 30).to_le_bytes());
        assert!(b[88..LEN - 4].iter().all(|x| *x == 0));
        assert_eq!(Superblock::decode(&b).unwrap(), s2);
        // Format 1 has no compression byte: a 1 there is damage, not a mode.
        let mut b1 = sample().encode();
        b1[47] = 1;
        let c = checksum32(&b1[..LEN - 4]);
        b1[LEN - 4..].copy_from_slice(&c.to_le_bytes());
        assert!(Superblock::decode(&b1).unwrap_err().contains("compression mode"));
    }

    #[test]
    fn a_format_1_superblock_with_a_map_cache_is_refused() {
        let mut b = sample().encode();
        b[72] = 1;
        let c = checksum32(&b[..LEN - 4]);
        b[LEN - 4..].copy_from_slice(&c.to_le_bytes());
        assert!(Superblock::decode(&b).unwrap_err().contains("past offset 64"));
        let s2 = Superblock { format_version: 2, map_cache_bytes: 1, ..sample() };
        assert_eq!(Superblock::decode(&s2.encode()).unwrap().map_cache_bytes, 1);
        let mut b = sample().encode();
        b[80] = 1;
        let c = checksum32(&b[..LEN - 4]);
        b[LEN - 4..].copy_from_slice(&c.to_le_bytes());
        assert!(Superblock::decode(&b).unwrap_err().contains("past offset 64"));
    }

    #[test]
    fn golden_superblock_bytes() {
        let b = sample().encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(&b[0..8], b"STRATASB");
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[12..16], &[1, 0, 0, 0]);
        assert_eq!(&b[16..32], &[0x11; 16]);
        assert_eq!(&b[40..44], &4096u32.to_le_bytes());
        assert_eq!(b[44], 3);
        assert_eq!(b[45], 0);
        assert_eq!(b[46], 3);
        assert_eq!(&b[48..56], &42u64.to_le_bytes());
        assert_eq!(Superblock::decode(&b).unwrap(), sample());
    }

    #[test]
    fn unknown_versions_and_damage_are_refused() {
        let mut b = sample().encode();
        b[8] = 3;
        let c = checksum32(&b[..LEN - 4]);
        b[LEN - 4..].copy_from_slice(&c.to_le_bytes());
        assert!(Superblock::decode(&b).unwrap_err().contains("not supported"));
        let mut b = sample().encode();
        b[100] = 1;
        assert!(Superblock::decode(&b).unwrap_err().contains("checksum"));
        assert!(Superblock::decode(&b[..100]).is_err());
    }
}
