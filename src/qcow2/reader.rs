//! Reading one qcow2 image: open with validation, map guest ranges to
//! data / zero / unallocated, read data, all through `&self`.
//!
//! Invariants established by [`Qcow2Image::from_reader`] and relied on by
//! the lookups: every non-zero L1 entry names a cluster-aligned L2 table
//! that lies wholly inside the file, overlaps no other metadata table and
//! is named by no other L1 entry; the L1 table covers the virtual size.
//! Data cluster offsets are checked as they are met, since L2 tables are
//! read lazily.
//!
//! Lock order: only one lock, the L2 cache's; it is held for a hash lookup
//! or an insert, never across I/O or decompression.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::compress::decompress_cluster;
use super::error::{Qcow2Error, Result};
use super::header::{Header, V2_HEADER_LEN, V3_MIN_HEADER_LEN};
use super::io::{ReadAt, read_full};
use super::{BackingFile, L2_CACHE_BYTES};

/// Bits 9..=55 of L1 and standard L2 entries: the host offset.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1/L2 entry bit 63: refcount is exactly one.
pub(crate) const FLAG_COPIED: u64 = 1 << 63;
/// L2 entry bit 62: the cluster is compressed.
pub(crate) const FLAG_COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0 (v3, without extended L2): the cluster reads as zeros.
pub(crate) const FLAG_ZERO: u64 = 1;
/// Extended L2 entries split a cluster into 32 subclusters.
const SUBCLUSTERS: u64 = 32;

/// What a guest range holds in this one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Data stored in this image (plain or compressed).
    Data,
    /// Reads as zeros; hides the backing file.
    Zero,
    /// Not in this image: read the backing file (or zeros if there is none).
    Unallocated,
}

/// A run of guest bytes of one kind. Adjacent runs of the same kind are
/// merged, so extents returned together never touch with equal kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub kind: ExtentKind,
}

/// Where one piece of a guest cluster lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    Unallocated,
    Zero,
    /// Uncompressed; host offset of the piece's first byte.
    Data {
        host: u64,
    },
    /// The whole guest cluster, compressed at `host`, `len` bytes long
    /// (including sector padding).
    Compressed {
        host: u64,
        len: u64,
    },
}

impl Mapping {
    fn kind(self) -> ExtentKind {
        match self {
            Mapping::Unallocated => ExtentKind::Unallocated,
            Mapping::Zero => ExtentKind::Zero,
            Mapping::Data { .. } | Mapping::Compressed { .. } => ExtentKind::Data,
        }
    }
}

/// One opened qcow2 image (one layer of a chain), read without its
/// backing file.
pub struct Qcow2Image<R: ReadAt = File> {
    src: R,
    file_len: u64,
    header: Header,
    backing: Option<BackingFile>,
    l1: Vec<u64>,
    /// Sorted, distinct offsets of every L2 table named by the L1 table.
    l2_tables: Vec<u64>,
    /// Fixed metadata ranges (start, end) that data must not overlap.
    metadata: Vec<(u64, u64, &'static str)>,
    cache: Mutex<L2Cache>,
}

impl<R: ReadAt> std::fmt::Debug for Qcow2Image<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2Image").field("header", &self.header).field("backing", &self.backing).finish()
    }
}

impl Qcow2Image<File> {
    /// Opens and validates the image at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| Qcow2Error::Opening { path: path.to_owned(), source })?;
        Self::from_reader(file)
    }
}

impl<R: ReadAt> Qcow2Image<R> {
    /// Validates the header and L1 table of the image in `src`.
    pub fn from_reader(src: R) -> Result<Self> {
        let file_len =
            src.len_bytes().map_err(|source| Qcow2Error::Reading { what: "file length", offset: 0, source })?;
        let mut fixed = [0u8; V3_MIN_HEADER_LEN];
        let got = read_full(&src, &mut fixed, 0).map_err(|source| Qcow2Error::Reading {
            what: "header",
            offset: 0,
            source,
        })?;
        if got < V2_HEADER_LEN {
            if got >= 4 && fixed[..4] != super::header::MAGIC {
                return Err(Qcow2Error::NotQcow2(format!("magic is {:02x?}", &fixed[..4])));
            }
            return Err(Qcow2Error::corrupt(format!(
                "the file is {file_len} bytes, shorter than a qcow2 header ({V2_HEADER_LEN} bytes)"
            )));
        }
        let cluster_bits = Header::peek_cluster_bits(&fixed)?;
        let cs = 1u64 << cluster_bits;
        // Bounded by the checked cluster_bits: at most 2 MiB.
        let first_len = cs.min(file_len).max(got as u64) as usize;
        let mut first = vec![0u8; first_len];
        let got = read_full(&src, &mut first, 0).map_err(|source| Qcow2Error::Reading {
            what: "header cluster",
            offset: 0,
            source,
        })?;
        first.truncate(got);
        let header = Header::parse(&first, file_len)?;
        let backing =
            header.backing_file_name(&first)?.map(|name| BackingFile { name, format: header.backing_format.clone() });
        if header.is_dirty() {
            tracing::warn!(
                "qcow2 image has the dirty bit set (not closed cleanly); its refcounts may be stale, \
                 the data is read as it is"
            );
        }

        let mut metadata = vec![(0, cs, "header")];
        let l1_bytes = u64::from(header.l1_size) * 8;
        if l1_bytes > 0 {
            metadata.push((header.l1_table_offset, header.l1_table_offset + l1_bytes, "L1 table"));
        }
        let rt_bytes = u64::from(header.refcount_table_clusters) * cs;
        if rt_bytes > 0 {
            metadata.push((header.refcount_table_offset, header.refcount_table_offset + rt_bytes, "refcount table"));
        }
        for (i, a) in metadata.iter().enumerate() {
            for b in &metadata[i + 1..] {
                if a.0 < b.1 && b.0 < a.1 {
                    return Err(Qcow2Error::corrupt(format!(
                        "the {} at {:#x} overlaps the {} at {:#x}",
                        a.2, a.0, b.2, b.0
                    )));
                }
            }
        }

        // Bounded: l1_size <= MAX_L1_BYTES / 8 and the table is inside the
        // file, so a hostile header cannot make us allocate more than the
        // file's own size or 32 MiB, whichever is smaller.
        let mut raw = vec![0u8; l1_bytes as usize];
        if l1_bytes > 0 {
            read_full(&src, &mut raw, header.l1_table_offset).map_err(|source| Qcow2Error::Reading {
                what: "L1 table",
                offset: header.l1_table_offset,
                source,
            })?;
        }
        let l1: Vec<u64> = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8"))).collect();
        drop(raw);

        let mut l2_tables = Vec::new();
        for (i, &e) in l1.iter().enumerate() {
            let off = e & OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) {
                return Err(Qcow2Error::corrupt(format!(
                    "L2 table offset {off:#x} (L1 entry {i}) is not aligned to the cluster size ({cs})"
                )));
            }
            if off + cs > file_len {
                return Err(Qcow2Error::corrupt(format!(
                    "L2 table offset {off:#x} (L1 entry {i}) is beyond the end of the file ({file_len} bytes)"
                )));
            }
            if let Some(m) = metadata.iter().find(|m| off < m.1 && m.0 < off + cs) {
                return Err(Qcow2Error::corrupt(format!(
                    "L2 table offset {off:#x} (L1 entry {i}) overlaps the {} at {:#x}",
                    m.2, m.0
                )));
            }
            l2_tables.push(off);
        }
        l2_tables.sort_unstable();
        if let Some(w) = l2_tables.windows(2).find(|w| w[0] == w[1]) {
            return Err(Qcow2Error::corrupt(format!("L2 table at {:#x} is named by two L1 entries", w[0])));
        }

        let capacity = (L2_CACHE_BYTES / cs).max(4) as usize;
        Ok(Qcow2Image {
            src,
            file_len,
            header,
            backing,
            l1,
            l2_tables,
            metadata,
            cache: Mutex::new(L2Cache::new(capacity)),
        })
    }

    /// Replaces the L2 cache bound ([`L2_CACHE_BYTES`] by default); at least
    /// four tables are always kept.
    pub fn with_l2_cache_bytes(self, bytes: u64) -> Self {
        let capacity = (bytes / self.cluster_size()).max(4) as usize;
        Qcow2Image { cache: Mutex::new(L2Cache::new(capacity)), ..self }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn virtual_size(&self) -> u64 {
        self.header.size
    }
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }
    /// The backing file as written in the image (not resolved).
    pub fn backing_file(&self) -> Option<&BackingFile> {
        self.backing.as_ref()
    }
    /// The image was not closed cleanly (incompatible bit 0). Its data is
    /// still readable; only its refcounts may be stale.
    pub fn is_dirty(&self) -> bool {
        self.header.is_dirty()
    }
    /// Length of the underlying file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// What `[offset, offset + len)` holds in this image, ignoring the
    /// backing file. Adjacent runs of one kind are merged.
    pub fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        self.walk(offset, len, |guest, n, m| {
            push_extent(&mut out, guest, n, m.kind());
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads `buf.len()` guest bytes at `offset` from this image only:
    /// data is read (and decompressed), zero and unallocated ranges are
    /// filled with zeros. Returns the map of the range so the caller can
    /// fill the unallocated parts from a backing file.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let mut scratch: Vec<u8> = Vec::new();
        self.walk(offset, buf.len() as u64, |guest, n, m| {
            let at = (guest - offset) as usize;
            let dst = &mut buf[at..at + n as usize];
            match m {
                Mapping::Unallocated | Mapping::Zero => dst.fill(0),
                Mapping::Data { host } => {
                    read_full(&self.src, dst, host).map_err(|source| Qcow2Error::Reading {
                        what: "data cluster",
                        offset: host,
                        source,
                    })?;
                }
                Mapping::Compressed { host, len } => {
                    let cs = self.cluster_size();
                    scratch.resize(cs as usize, 0);
                    self.read_compressed(host, len, &mut scratch)?;
                    let in_cluster = (guest & (cs - 1)) as usize;
                    dst.copy_from_slice(&scratch[in_cluster..in_cluster + n as usize]);
                }
            }
            push_extent(&mut out, guest, n, m.kind());
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads guest cluster number `cluster_index` into `buf`, which must be
    /// one cluster long, or shorter for the last cluster of a virtual size
    /// that is not a multiple of the cluster size.
    pub fn read_cluster_data(&self, cluster_index: u64, buf: &mut [u8]) -> Result<Vec<Extent>> {
        let cs = self.cluster_size();
        let offset = cluster_index.checked_mul(cs).filter(|&o| o < self.header.size).ok_or(Qcow2Error::OutOfRange {
            offset: cluster_index.saturating_mul(cs),
            len: cs,
            size: self.header.size,
        })?;
        let want = cs.min(self.header.size - offset);
        if buf.len() as u64 != want {
            return Err(Qcow2Error::OutOfRange { offset, len: buf.len() as u64, size: self.header.size });
        }
        self.read_at(buf, offset)
    }

    fn read_compressed(&self, host: u64, len: u64, out: &mut [u8]) -> Result<()> {
        // The descriptor's length rounds up to a sector; the file may end
        // sooner. Bounded by 2 clusters by construction of the descriptor.
        let avail = len.min(self.file_len - host) as usize;
        let mut input = vec![0u8; avail];
        read_full(&self.src, &mut input, host).map_err(|source| Qcow2Error::Reading {
            what: "compressed cluster",
            offset: host,
            source,
        })?;
        decompress_cluster(self.header.compression_type, &input, out)
            .map_err(|e| Qcow2Error::corrupt(format!("compressed cluster at {host:#x}: {e}")))
    }

    /// Resolves a guest range, calling `f(guest_offset, len, mapping)` for
    /// each piece in order. Whole unallocated L2 ranges are skipped in one
    /// step, so the cost is bounded by the L1 size plus the L2 entries that
    /// exist in the file, not by the virtual size.
    fn walk(&self, offset: u64, len: u64, mut f: impl FnMut(u64, u64, Mapping) -> Result<()>) -> Result<()> {
        let size = self.header.size;
        let end = offset.checked_add(len).filter(|&e| e <= size).ok_or(Qcow2Error::OutOfRange { offset, len, size })?;
        let bits = self.header.cluster_bits;
        let cs = self.cluster_size();
        let l2_entries = self.header.l2_entries();
        let l2_span = cs * l2_entries; // guest bytes per L1 entry
        let mut current: Option<(u64, Arc<[u64]>)> = None;
        let mut pos = offset;
        while pos < end {
            let l1_index = pos / l2_span;
            // In bounds: l1_size covers the virtual size (checked at open).
            let l2_off = self.l1[l1_index as usize] & OFFSET_MASK;
            if l2_off == 0 {
                let stop = ((l1_index + 1) * l2_span).min(end);
                f(pos, stop - pos, Mapping::Unallocated)?;
                pos = stop;
                continue;
            }
            let table = match &current {
                Some((off, t)) if *off == l2_off => t.clone(),
                _ => {
                    let t = self.l2_table(l2_off)?;
                    current = Some((l2_off, t.clone()));
                    t
                }
            };
            let cluster = pos >> bits;
            let cluster_start = cluster << bits;
            let cluster_end = (cluster_start + cs).min(end);
            let index = (cluster % l2_entries) as usize;
            if self.header.has_extended_l2() {
                let (entry, bitmap) = (table[2 * index], table[2 * index + 1]);
                self.walk_subclusters(entry, bitmap, cluster_start, pos, cluster_end, &mut f)?;
            } else {
                let m = self.decode_standard(table[index], cluster_start)?;
                let m = match m {
                    Mapping::Data { host } => Mapping::Data { host: host + (pos - cluster_start) },
                    other => other,
                };
                f(pos, cluster_end - pos, m)?;
            }
            pos = cluster_end;
        }
        Ok(())
    }

    fn decode_standard(&self, entry: u64, guest: u64) -> Result<Mapping> {
        if entry & FLAG_COMPRESSED != 0 {
            return self.decode_compressed(entry, guest);
        }
        let host = entry & OFFSET_MASK;
        if entry & FLAG_ZERO != 0 {
            if self.header.version < 3 {
                return Err(Qcow2Error::corrupt(format!(
                    "L2 entry for guest offset {guest:#x} has the zero flag, which version 2 images do not have"
                )));
            }
            return Ok(Mapping::Zero);
        }
        if host == 0 {
            return Ok(Mapping::Unallocated);
        }
        self.check_data_cluster(host, guest)?;
        Ok(Mapping::Data { host })
    }

    fn decode_compressed(&self, entry: u64, guest: u64) -> Result<Mapping> {
        let bits = self.header.cluster_bits;
        let x = 62 - (bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors = ((entry >> x) & ((1u64 << (bits - 8)) - 1)) + 1;
        let len = sectors * 512 - (host & 511);
        if host < self.cluster_size() || host >= self.file_len {
            return Err(Qcow2Error::corrupt(format!(
                "compressed cluster for guest offset {guest:#x} at {host:#x} is outside the data area \
                 of the file ({} bytes)",
                self.file_len
            )));
        }
        Ok(Mapping::Compressed { host, len })
    }

    fn walk_subclusters(
        &self,
        entry: u64,
        bitmap: u64,
        cluster_start: u64,
        from: u64,
        to: u64,
        f: &mut impl FnMut(u64, u64, Mapping) -> Result<()>,
    ) -> Result<()> {
        if entry & FLAG_COMPRESSED != 0 {
            let m = self.decode_compressed(entry, cluster_start)?;
            return f(from, to - from, m);
        }
        let host = entry & OFFSET_MASK;
        let alloc = bitmap & 0xffff_ffff;
        let zero = bitmap >> 32;
        if host == 0 && alloc != 0 {
            return Err(Qcow2Error::corrupt(format!(
                "unallocated cluster at guest offset {cluster_start:#x} has allocated subclusters ({alloc:#x})"
            )));
        }
        if alloc & zero != 0 {
            return Err(Qcow2Error::corrupt(format!(
                "subclusters {:#x} at guest offset {cluster_start:#x} are both allocated and zero",
                alloc & zero
            )));
        }
        if host != 0 {
            self.check_data_cluster(host, cluster_start)?;
        }
        let sub = self.cluster_size() / SUBCLUSTERS;
        let mut pos = from;
        while pos < to {
            let i = (pos - cluster_start) / sub;
            let stop = (cluster_start + (i + 1) * sub).min(to);
            let m = if alloc & (1 << i) != 0 {
                Mapping::Data { host: host + (pos - cluster_start) }
            } else if zero & (1 << i) != 0 {
                Mapping::Zero
            } else {
                Mapping::Unallocated
            };
            f(pos, stop - pos, m)?;
            pos = stop;
        }
        Ok(())
    }

    /// A data cluster must be aligned, start inside the file (a tail past
    /// the end reads as zeros, as in qemu), and not sit on metadata.
    fn check_data_cluster(&self, host: u64, guest: u64) -> Result<()> {
        let cs = self.cluster_size();
        if !host.is_multiple_of(cs) {
            return Err(Qcow2Error::corrupt(format!(
                "data cluster offset {host:#x} for guest offset {guest:#x} is not aligned to the cluster size ({cs})"
            )));
        }
        if host >= self.file_len {
            return Err(Qcow2Error::corrupt(format!(
                "data cluster offset {host:#x} for guest offset {guest:#x} is beyond the end of the file ({} bytes)",
                self.file_len
            )));
        }
        if let Some(m) = self.metadata.iter().find(|m| host < m.1 && m.0 < host + cs) {
            return Err(Qcow2Error::corrupt(format!(
                "data cluster offset {host:#x} for guest offset {guest:#x} overlaps the {} at {:#x}",
                m.2, m.0
            )));
        }
        if self.l2_tables.binary_search(&host).is_ok() {
            return Err(Qcow2Error::corrupt(format!(
                "data cluster offset {host:#x} for guest offset {guest:#x} is an L2 table"
            )));
        }
        Ok(())
    }

    /// An L2 table, from the cache or the file. The cache lock is not held
    /// during the read.
    fn l2_table(&self, offset: u64) -> Result<Arc<[u64]>> {
        if let Some(t) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(offset) {
            return Ok(t);
        }
        // Validated at open: aligned and inside the file.
        let mut raw = vec![0u8; self.cluster_size() as usize];
        read_full(&self.src, &mut raw, offset).map_err(|source| Qcow2Error::Reading {
            what: "L2 table",
            offset,
            source,
        })?;
        let table: Arc<[u64]> = raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8"))).collect();
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(offset, table.clone());
        Ok(table)
    }
}

fn push_extent(out: &mut Vec<Extent>, offset: u64, len: u64, kind: ExtentKind) {
    if len == 0 {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.kind == kind
        && last.offset + last.len == offset
    {
        last.len += len;
        return;
    }
    out.push(Extent { offset, len, kind });
}

/// A small LRU of decoded L2 tables, bounded by a count derived from
/// [`L2_CACHE_BYTES`].
struct L2Cache {
    capacity: usize,
    tick: u64,
    tables: HashMap<u64, (Arc<[u64]>, u64)>,
    by_age: BTreeMap<u64, u64>,
}

impl L2Cache {
    fn new(capacity: usize) -> Self {
        L2Cache { capacity, tick: 0, tables: HashMap::new(), by_age: BTreeMap::new() }
    }

    fn get(&mut self, offset: u64) -> Option<Arc<[u64]>> {
        self.tick += 1;
        let tick = self.tick;
        let (table, age) = self.tables.get_mut(&offset)?;
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, offset);
        Some(table.clone())
    }

    fn insert(&mut self, offset: u64, table: Arc<[u64]>) {
        self.tick += 1;
        if let Some((_, old)) = self.tables.insert(offset, (table, self.tick)) {
            self.by_age.remove(&old);
        }
        self.by_age.insert(self.tick, offset);
        while self.tables.len() > self.capacity {
            let Some((_, victim)) = self.by_age.pop_first() else { break };
            self.tables.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_on_a_file_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Qcow2Image<File>>();
        shareable::<Qcow2Image<Vec<u8>>>();
    }

    #[test]
    fn cache_evicts_the_least_recently_used_table() {
        let mut c = L2Cache::new(2);
        let t: Arc<[u64]> = Arc::from(vec![0u64; 4]);
        c.insert(1, t.clone());
        c.insert(2, t.clone());
        assert!(c.get(1).is_some());
        c.insert(3, t);
        assert!(c.get(2).is_none());
        assert!(c.get(1).is_some() && c.get(3).is_some());
        assert_eq!(c.tables.len(), 2);
        assert_eq!(c.by_age.len(), 2);
    }

    #[test]
    fn adjacent_extents_of_one_kind_merge() {
        let mut v = Vec::new();
        push_extent(&mut v, 0, 10, ExtentKind::Data);
        push_extent(&mut v, 10, 5, ExtentKind::Data);
        push_extent(&mut v, 15, 5, ExtentKind::Zero);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].len, 15);
    }
}
