//! Layer block maps and the merged view of a copy-on-write chain.
//!
//! A layer's map sends a virtual block number to an entry:
//! [`ABSENT`] ("not here, ask my parent"), [`ZERO`] (reads as zeros, stores
//! nothing) or a chunk id (≥ 16). A chain is base … leaf; only the leaf
//! changes (until a merge). A read must cost one lookup whatever the
//! depth, so an open volume with parents keeps a *merged view*: the entry
//! each block resolves to through the whole chain, updated on every write
//! to the leaf.
//!
//! [`PageMap`] stores entries in 512-entry pages (4 KiB of u64) keyed in a
//! BTreeMap, so memory follows what is written, not the capacity, and
//! ordered iteration serves SEEK_DATA/SEEK_HOLE and checkpoints.
//!
//! ```text
//! maps/<layer-guid>.map
//!   0  magic       [8]  "STRMAP\0\0"
//!   8  version     u32  = 1
//!  12  reserved    u32
//!  16  layer       [16] layer GUID
//!  32  stamp_seq   u64  journal records ≤ this are included
//!  40  count       u64  entries in the body
//!  48  body_sum    u32  checksum32(body)
//!  52  reserved    [8]
//!  60  checksum    u32  checksum32(bytes 0..60)
//!  64  body        count × { block_no u64, entry u64 }, ascending block_no,
//!                  entry ≠ ABSENT
//! ```
//!
//! Depends on: `format`, `guid`. Knows nothing of packs or SQL.

use crate::format::{Reader, Writer, checksum32};
use crate::guid::Guid;
use std::collections::BTreeMap;

pub const ABSENT: u64 = 0;
pub const ZERO: u64 = 1;
pub const MAP_MAGIC: &[u8; 8] = b"STRMAP\0\0";
pub const MAP_VERSION: u32 = 1;
const PAGE_BITS: u32 = 9;
const PAGE_LEN: usize = 1 << PAGE_BITS;

/// Is this entry a chunk reference?
pub fn is_chunk(e: u64) -> bool {
    e > ZERO
}

type Page = Box<[u64; PAGE_LEN]>;

/// A sparse map from block number to entry.
#[derive(Clone, Default)]
pub struct PageMap {
    pages: BTreeMap<u64, (u32, Page)>,
    count: u64,
    /// Entries that are chunk references (data), kept so a layer's size
    /// is O(1).
    chunks: u64,
}

impl PageMap {
    pub fn new() -> Self {
        PageMap::default()
    }

    /// Entries that are not ABSENT.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entries that reference a chunk (blocks holding data).
    pub fn chunk_count(&self) -> u64 {
        self.chunks
    }

    pub fn get(&self, block: u64) -> u64 {
        match self.pages.get(&(block >> PAGE_BITS)) {
            Some((_, p)) => p[(block as usize) & (PAGE_LEN - 1)],
            None => ABSENT,
        }
    }

    /// Set an entry; returns the previous one.
    pub fn set(&mut self, block: u64, entry: u64) -> u64 {
        let key = block >> PAGE_BITS;
        let idx = (block as usize) & (PAGE_LEN - 1);
        if entry == ABSENT {
            let Some((n, p)) = self.pages.get_mut(&key) else { return ABSENT };
            let old = std::mem::replace(&mut p[idx], ABSENT);
            if is_chunk(old) {
                self.chunks -= 1;
            }
            if old != ABSENT {
                *n -= 1;
                self.count -= 1;
                if *n == 0 {
                    self.pages.remove(&key);
                }
            }
            return old;
        }
        let (n, p) = self.pages.entry(key).or_insert_with(|| (0, Box::new([ABSENT; PAGE_LEN])));
        let old = std::mem::replace(&mut p[idx], entry);
        match (is_chunk(old), is_chunk(entry)) {
            (false, true) => self.chunks += 1,
            (true, false) => self.chunks -= 1,
            _ => {}
        }
        if old == ABSENT {
            *n += 1;
            self.count += 1;
        }
        old
    }

    /// Iterate (block, entry) over present entries in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pages.iter().flat_map(|(k, (_, p))| {
            p.iter().enumerate().filter(|(_, e)| **e != ABSENT).map(move |(i, e)| ((k << PAGE_BITS) | i as u64, *e))
        })
    }

    /// Iterate present entries with block ≥ `from`, ascending.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pages.range(from >> PAGE_BITS..).flat_map(move |(k, (_, p))| {
            p.iter()
                .enumerate()
                .map(move |(i, e)| ((k << PAGE_BITS) | i as u64, *e))
                .filter(move |(b, e)| *e != ABSENT && *b >= from)
        })
    }

    /// Remove every entry at or past `from`; returns the removed entries.
    pub fn truncate(&mut self, from: u64) -> Vec<u64> {
        let doomed: Vec<(u64, u64)> = self.iter_from(from).collect();
        doomed.into_iter().map(|(b, _)| self.set(b, ABSENT)).collect()
    }

    /// Approximate heap bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.pages.len() as u64 * (PAGE_LEN as u64 * 8 + 48)
    }

    /// Encode as a map file.
    pub fn encode(&self, layer: Guid, stamp_seq: u64) -> Vec<u8> {
        let mut c = std::io::Cursor::new(Vec::with_capacity(64 + self.count as usize * 16));
        self.encode_to(&mut c, layer, stamp_seq).expect("writing to memory");
        c.into_inner()
    }

    /// [`encode`](Self::encode), streamed: a placeholder header, the body
    /// page by page, then the real header at offset 0.
    pub fn encode_to<W: std::io::Write + std::io::Seek>(
        &self,
        w: &mut W,
        layer: Guid,
        stamp_seq: u64,
    ) -> std::io::Result<()> {
        use std::io::SeekFrom;
        let start = w.stream_position()?;
        w.write_all(&[0u8; 64])?;
        let mut sum = crate::format::Checksum32::default();
        let mut body = Writer::with_capacity(PAGE_LEN * 16);
        for (b, e) in self.iter() {
            body.u64(b).u64(e);
            if body.len() >= PAGE_LEN * 16 {
                sum.update(&body.buf);
                w.write_all(&body.buf)?;
                body = Writer::with_capacity(PAGE_LEN * 16);
            }
        }
        sum.update(&body.buf);
        w.write_all(&body.buf)?;
        let mut h = Writer::with_capacity(64);
        h.bytes(MAP_MAGIC)
            .u32(MAP_VERSION)
            .u32(0)
            .bytes(layer.as_bytes())
            .u64(stamp_seq)
            .u64(self.count)
            .u32(sum.finish())
            .zeros(8);
        let c = checksum32(&h.buf);
        h.u32(c);
        let end = w.stream_position()?;
        w.seek(SeekFrom::Start(start))?;
        w.write_all(&h.buf)?;
        w.seek(SeekFrom::Start(end))?;
        Ok(())
    }
}

/// A decoded map file.
pub struct MapImage {
    pub layer: Guid,
    pub stamp_seq: u64,
    pub map: PageMap,
}

pub fn decode_map(bytes: &[u8]) -> Result<MapImage, String> {
    if bytes.len() < 64 {
        return Err(format!("truncated: {} bytes, header needs 64", bytes.len()));
    }
    let mut r = Reader::new(bytes);
    let magic: [u8; 8] = r.array().map_err(|e| e.to_string())?;
    if &magic != MAP_MAGIC {
        return Err("bad magic: not a strata layer map".into());
    }
    if checksum32(&bytes[..60]) != u32::from_le_bytes(bytes[60..64].try_into().expect("4")) {
        return Err("header checksum mismatch".into());
    }
    let version = r.u32().map_err(|e| e.to_string())?;
    if version != MAP_VERSION {
        return Err(format!("map version {version} is not supported (this strata reads {MAP_VERSION})"));
    }
    r.u32().map_err(|e| e.to_string())?;
    let layer = Guid(r.array().map_err(|e| e.to_string())?);
    let stamp_seq = r.u64().map_err(|e| e.to_string())?;
    let count = r.u64().map_err(|e| e.to_string())?;
    let body_sum = r.u32().map_err(|e| e.to_string())?;
    let body = &bytes[64..];
    if count.checked_mul(16) != Some(body.len() as u64) {
        return Err(format!("body is {} bytes, {count} entries need {}", body.len(), count.saturating_mul(16)));
    }
    if checksum32(body) != body_sum {
        return Err("body checksum mismatch".into());
    }
    let mut r = Reader::new(body);
    let mut map = PageMap::new();
    let mut prev: Option<u64> = None;
    for _ in 0..count {
        let b = r.u64().map_err(|e| e.to_string())?;
        let e = r.u64().map_err(|e| e.to_string())?;
        if prev.is_some_and(|p| p >= b) || e == ABSENT || (e > ZERO && e < crate::store::FIRST_CHUNK_ID) {
            return Err(format!("entry for block {b} is out of order or invalid"));
        }
        prev = Some(b);
        map.set(b, e);
    }
    Ok(MapImage { layer, stamp_seq, map })
}

/// Resolve a chain (base first) into its merged view: for each block, the
/// entry of the topmost layer that has one.
pub fn merge<'a>(layers: impl IntoIterator<Item = &'a PageMap>) -> PageMap {
    let mut merged = PageMap::new();
    for l in layers {
        for (b, e) in l.iter() {
            merged.set(b, e);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_counts() {
        let mut m = PageMap::new();
        assert_eq!(m.set(5, 100), ABSENT);
        assert_eq!(m.set(5, ZERO), 100);
        assert_eq!(m.set(1 << 40, 200), ABSENT);
        assert_eq!(m.len(), 2);
        assert_eq!(m.chunk_count(), 1);
        assert_eq!(m.get(5), ZERO);
        assert_eq!(m.set(5, ABSENT), ZERO);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(6), ABSENT);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(1 << 40, 200)]);
    }

    #[test]
    fn memory_follows_written_blocks_not_capacity() {
        let mut m = PageMap::new();
        m.set(0, 16);
        m.set((2u64 << 40) / 4096 - 1, 17); // last block of a 2 TiB volume
        assert!(m.memory_bytes() < 16 << 10);
    }

    #[test]
    fn iter_from_and_truncate() {
        let mut m = PageMap::new();
        for b in [1u64, 600, 601, 5000] {
            m.set(b, 16 + b);
        }
        assert_eq!(m.iter_from(600).map(|x| x.0).collect::<Vec<_>>(), vec![600, 601, 5000]);
        assert_eq!(m.iter_from(602).map(|x| x.0).collect::<Vec<_>>(), vec![5000]);
        let removed = m.truncate(601);
        assert_eq!(removed, vec![16 + 601, 16 + 5000]);
        assert_eq!(m.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 600]);
    }

    #[test]
    fn map_file_round_trips_and_rejects_damage() {
        let mut m = PageMap::new();
        m.set(3, 20);
        m.set(4, ZERO);
        let g = Guid::new_random();
        let bytes = m.encode(g, 77);
        assert_eq!(&bytes[..8], b"STRMAP\0\0");
        let img = decode_map(&bytes).unwrap();
        assert_eq!(img.layer, g);
        assert_eq!(img.stamp_seq, 77);
        assert_eq!(img.map.iter().collect::<Vec<_>>(), vec![(3, 20), (4, ZERO)]);
        let mut bad = bytes.clone();
        bad[70] ^= 4;
        assert!(decode_map(&bad).is_err());
        assert!(decode_map(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn merged_view_takes_the_topmost_entry() {
        let mut base = PageMap::new();
        base.set(0, 16);
        base.set(1, 17);
        let mut top = PageMap::new();
        top.set(1, ZERO);
        top.set(2, 18);
        let m = merge([&base, &top]);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(0, 16), (1, ZERO), (2, 18)]);
    }
}
