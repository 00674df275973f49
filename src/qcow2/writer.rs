//! Writing a new qcow2 image (version 3, 16-bit refcounts), cluster by
//! cluster, for `strata export --format qcow2`.
//!
//! File layout, in allocation order (no holes, every cluster used once):
//!
//! ```text
//!  cluster 0            header, extensions, backing file name
//!  clusters 1..         data clusters and L2 tables, interleaved in the
//!                       order the caller's writes first touch them
//!  then                 L1 table, refcount table, refcount blocks
//!                       (written by finish)
//! ```
//!
//! Because every cluster below the end of the file is used exactly once,
//! every refcount is 1 and the refcount blocks are computed, not tracked;
//! L1 entries, and L2 entries of allocated clusters, carry the COPIED flag
//! accordingly. So `qemu-img check` finds neither errors nor leaks.
//!
//! Memory: L2 tables are kept in a bounded LRU ([`MAX_RESIDENT_L2_BYTES`]);
//! an evicted table is written to its place and read back if touched again.
//! The header is written last, by [`Qcow2Writer::finish`], followed by an
//! fsync; an image whose writer was dropped without `finish` has an all-zero
//! header and is not a valid qcow2 file.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{Qcow2Error, Result};
use super::header::{
    CompressionType, Header, MAX_BACKING_FORMAT_LEN, MAX_BACKING_NAME_LEN, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS,
};
use super::io::read_full;
use super::reader::{FLAG_COPIED, FLAG_ZERO, OFFSET_MASK};
use super::{BackingFile, MAX_L1_BYTES};

/// The cluster size qemu-img uses by default.
pub const DEFAULT_CLUSTER_SIZE: u32 = 64 * 1024;
/// Bound on L2 tables held in memory by the writer.
pub const MAX_RESIDENT_L2_BYTES: u64 = 8 << 20;
/// refcount_order 4: 16-bit refcounts, qemu's default.
const REFCOUNT_ORDER: u32 = 4;

struct ResidentL2 {
    entries: Vec<u64>,
    dirty: bool,
    age: u64,
}

/// Creates a qcow2 image. Call [`write_cluster`](Self::write_cluster) for
/// each non-empty cluster, then [`finish`](Self::finish).
pub struct Qcow2Writer {
    file: File,
    path: PathBuf,
    cluster_bits: u32,
    virtual_size: u64,
    backing: Option<BackingFile>,
    /// Host offset of the next cluster to allocate.
    next_free: u64,
    /// Host offsets of L2 tables, 0 = none yet.
    l1: Vec<u64>,
    resident: HashMap<usize, ResidentL2>,
    by_age: BTreeMap<u64, usize>,
    tick: u64,
    max_resident: usize,
}

impl Qcow2Writer {
    /// Creates (or truncates) `path` as a qcow2 image of `virtual_size`
    /// bytes (a multiple of 512) with `cluster_size`-byte clusters (a power
    /// of two from 512 to 2 MiB; [`DEFAULT_CLUSTER_SIZE`] is usual) and an
    /// optional backing file, named as it should be written in the header.
    pub fn create(
        path: impl AsRef<Path>,
        virtual_size: u64,
        cluster_size: u32,
        backing: Option<BackingFile>,
    ) -> Result<Self> {
        let path = path.as_ref().to_owned();
        if !cluster_size.is_power_of_two()
            || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_size.trailing_zeros())
        {
            return Err(Qcow2Error::InvalidWrite(format!(
                "cluster size {cluster_size} is not a power of two from 512 to 2 MiB"
            )));
        }
        let cluster_bits = cluster_size.trailing_zeros();
        let cs = u64::from(cluster_size);
        if !virtual_size.is_multiple_of(512) || virtual_size > i64::MAX as u64 {
            return Err(Qcow2Error::InvalidWrite(format!(
                "virtual size {virtual_size} is not a multiple of 512 below 2^63"
            )));
        }
        let l1_size = virtual_size.div_ceil(cs * (cs / 8));
        if l1_size * 8 > MAX_L1_BYTES {
            return Err(Qcow2Error::Limit(format!(
                "virtual size {virtual_size} with {cs}-byte clusters needs an L1 table above 32 MiB"
            )));
        }
        if let Some(b) = &backing {
            if b.name.is_empty() || b.name.len() > MAX_BACKING_NAME_LEN as usize || b.name.contains('\0') {
                return Err(Qcow2Error::InvalidWrite(format!(
                    "backing file name {:?} must be 1..={MAX_BACKING_NAME_LEN} bytes without NUL",
                    b.name
                )));
            }
            if let Some(f) = &b.format
                && (f.is_empty()
                    || f.len() > MAX_BACKING_FORMAT_LEN as usize
                    || !f.bytes().all(|c| c.is_ascii_graphic()))
            {
                return Err(Qcow2Error::InvalidWrite(format!("backing format {f:?} is not a short name")));
            }
        }
        let l1_len = l1_size as usize;
        let header_area = v3_header(cluster_bits, virtual_size, l1_len as u32, backing.as_ref(), 0, 0, 0)
            .encode_v3(backing.as_ref().map(|b| b.name.as_str()));
        if header_area.len() as u64 > cs {
            return Err(Qcow2Error::InvalidWrite(format!(
                "the header with its backing file name needs {} bytes, more than one {cs}-byte cluster",
                header_area.len()
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| Qcow2Error::Opening { path: path.clone(), source })?;
        let w = Qcow2Writer {
            file,
            path,
            cluster_bits,
            virtual_size,
            backing,
            next_free: cs,
            l1: vec![0; l1_len],
            resident: HashMap::new(),
            by_age: BTreeMap::new(),
            tick: 0,
            max_resident: (MAX_RESIDENT_L2_BYTES / cs).max(4) as usize,
        };
        // Reserve cluster 0; the real header is written by finish.
        w.pwrite(&vec![0u8; cs as usize], 0, "header")?;
        Ok(w)
    }

    fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Path of the image being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the guest cluster at `offset` (cluster aligned). `data` is one
    /// cluster long, or shorter for the last cluster of the disk. An all-zero
    /// cluster is not stored: it is left unallocated when there is no backing
    /// file and nothing was written there, and marked "reads as zeros"
    /// otherwise, so that it hides the backing file. Writing a cluster again
    /// overwrites it in place.
    pub fn write_cluster(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let cs = self.cluster_size();
        if !offset.is_multiple_of(cs) || offset >= self.virtual_size {
            return Err(Qcow2Error::InvalidWrite(format!(
                "offset {offset:#x} is not a cluster boundary inside the {}-byte disk",
                self.virtual_size
            )));
        }
        let want = cs.min(self.virtual_size - offset);
        if data.len() as u64 != want {
            return Err(Qcow2Error::InvalidWrite(format!(
                "{} bytes at {offset:#x}, expected {want} (one cluster, or to the end of the disk)",
                data.len()
            )));
        }
        if crate::format::is_zero(data) {
            let existing = self.entry(offset)?;
            if self.backing.is_some() || existing & OFFSET_MASK != 0 {
                return self.write_zero_cluster(offset);
            }
            return Ok(());
        }
        let existing = self.entry(offset)?;
        let host = match existing & OFFSET_MASK {
            0 => {
                let h = self.allocate();
                self.set_entry(offset, h | FLAG_COPIED)?;
                h
            }
            h => {
                self.set_entry(offset, h | FLAG_COPIED)?;
                h
            }
        };
        if data.len() as u64 == cs {
            self.pwrite(data, host, "data cluster")
        } else {
            let mut padded = vec![0u8; cs as usize];
            padded[..data.len()].copy_from_slice(data);
            self.pwrite(&padded, host, "data cluster")
        }
    }

    /// Marks the guest cluster at `offset` as reading zeros (hiding any
    /// backing file). A cluster written before keeps its host cluster
    /// (qemu's "zero, allocated"), so no space leaks.
    pub fn write_zero_cluster(&mut self, offset: u64) -> Result<()> {
        let cs = self.cluster_size();
        if !offset.is_multiple_of(cs) || offset >= self.virtual_size {
            return Err(Qcow2Error::InvalidWrite(format!(
                "offset {offset:#x} is not a cluster boundary inside the {}-byte disk",
                self.virtual_size
            )));
        }
        let existing = self.entry(offset)?;
        let entry = match existing & OFFSET_MASK {
            0 => FLAG_ZERO,
            h => h | FLAG_ZERO | FLAG_COPIED,
        };
        self.set_entry(offset, entry)
    }

    /// Writes the L2 tables, L1 table, refcounts and header, and fsyncs.
    pub fn finish(mut self) -> Result<()> {
        let cs = self.cluster_size();
        let dirty: Vec<usize> = self.resident.iter().filter(|(_, t)| t.dirty).map(|(&i, _)| i).collect();
        for i in dirty {
            self.flush_l2(i)?;
        }

        // L1 table (at least one cluster, so its offset is never 0).
        let l1_offset = self.next_free;
        let l1_clusters = ((self.l1.len() as u64) * 8).div_ceil(cs).max(1);
        let mut raw = vec![0u8; (l1_clusters * cs) as usize];
        for (i, &h) in self.l1.iter().enumerate() {
            let e = if h == 0 { 0 } else { h | FLAG_COPIED };
            raw[i * 8..i * 8 + 8].copy_from_slice(&e.to_be_bytes());
        }
        self.pwrite(&raw, l1_offset, "L1 table")?;
        drop(raw);
        self.next_free += l1_clusters * cs;

        // Refcount table and blocks must count themselves: iterate to the
        // fixed point (it converges in two or three rounds).
        let used = self.next_free / cs;
        let per_block = cs * 8 / (1 << REFCOUNT_ORDER);
        let (mut total, mut blocks, mut table_clusters) = (used, 0, 0);
        loop {
            let b = total.div_ceil(per_block);
            let t = (b * 8).div_ceil(cs);
            let next = used + b + t;
            if next == total && b == blocks && t == table_clusters {
                break;
            }
            (total, blocks, table_clusters) = (next, b, t);
        }
        let table_offset = self.next_free;
        let first_block = table_offset + table_clusters * cs;
        let mut table = vec![0u8; (table_clusters * cs) as usize];
        for i in 0..blocks {
            let at = (i * 8) as usize;
            table[at..at + 8].copy_from_slice(&(first_block + i * cs).to_be_bytes());
        }
        self.pwrite(&table, table_offset, "refcount table")?;
        let mut block = vec![0u8; cs as usize];
        for i in 0..blocks {
            let first_cluster = i * per_block;
            let n = per_block.min(total - first_cluster);
            block.fill(0);
            for k in 0..n as usize {
                block[2 * k..2 * k + 2].copy_from_slice(&1u16.to_be_bytes());
            }
            self.pwrite(&block, first_block + i * cs, "refcount block")?;
        }

        let header = self.header(l1_offset, table_offset, table_clusters as u32);
        let bytes = header.encode_v3(self.backing.as_ref().map(|b| b.name.as_str()));
        self.pwrite(&bytes, 0, "header")?;
        self.file.sync_all().map_err(|source| Qcow2Error::Writing { what: "fsync", offset: 0, source })?;
        Ok(())
    }

    fn header(&self, l1_table_offset: u64, refcount_table_offset: u64, refcount_table_clusters: u32) -> Header {
        v3_header(
            self.cluster_bits,
            self.virtual_size,
            self.l1.len() as u32,
            self.backing.as_ref(),
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
        )
    }

    fn allocate(&mut self) -> u64 {
        let h = self.next_free;
        self.next_free += self.cluster_size();
        h
    }

    fn indices(&self, offset: u64) -> (usize, usize) {
        let cluster = offset >> self.cluster_bits;
        let per_table = self.cluster_size() / 8;
        ((cluster / per_table) as usize, (cluster % per_table) as usize)
    }

    fn entry(&mut self, offset: u64) -> Result<u64> {
        let (t, i) = self.indices(offset);
        if self.l1[t] == 0 && !self.resident.contains_key(&t) {
            return Ok(0);
        }
        Ok(self.table(t)?.entries[i])
    }

    fn set_entry(&mut self, offset: u64, value: u64) -> Result<()> {
        let (t, i) = self.indices(offset);
        let table = self.table(t)?;
        table.entries[i] = value;
        table.dirty = true;
        Ok(())
    }

    /// The resident L2 table `t`, loading or creating it (and evicting the
    /// least recently used one past the bound).
    fn table(&mut self, t: usize) -> Result<&mut ResidentL2> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(r) = self.resident.get_mut(&t) {
            self.by_age.remove(&r.age);
            r.age = tick;
            self.by_age.insert(tick, t);
        } else {
            while self.resident.len() >= self.max_resident {
                let Some((_, victim)) = self.by_age.pop_first() else { break };
                self.flush_l2(victim)?;
                self.resident.remove(&victim);
            }
            let cs = self.cluster_size();
            let fresh = self.l1[t] == 0;
            let entries = if fresh {
                self.l1[t] = self.allocate();
                vec![0u64; (cs / 8) as usize]
            } else {
                let mut raw = vec![0u8; cs as usize];
                read_full(&self.file, &mut raw, self.l1[t]).map_err(|source| Qcow2Error::Reading {
                    what: "L2 table",
                    offset: self.l1[t],
                    source,
                })?;
                raw.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8"))).collect()
            };
            // New tables start dirty so they reach the disk.
            self.resident.insert(t, ResidentL2 { entries, dirty: fresh, age: tick });
            self.by_age.insert(tick, t);
        }
        Ok(self.resident.get_mut(&t).expect("just inserted"))
    }

    fn flush_l2(&mut self, t: usize) -> Result<()> {
        let Some(r) = self.resident.get_mut(&t) else { return Ok(()) };
        if !r.dirty {
            return Ok(());
        }
        r.dirty = false;
        let raw: Vec<u8> = r.entries.iter().flat_map(|e| e.to_be_bytes()).collect();
        let at = self.l1[t];
        self.pwrite(&raw, at, "L2 table")
    }

    fn pwrite(&self, data: &[u8], offset: u64, what: &'static str) -> Result<()> {
        self.file.write_all_at(data, offset).map_err(|source| Qcow2Error::Writing { what, offset, source })
    }
}

fn v3_header(
    cluster_bits: u32,
    size: u64,
    l1_size: u32,
    backing: Option<&BackingFile>,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
) -> Header {
    Header {
        version: 3,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits,
        size,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: REFCOUNT_ORDER,
        header_length: super::header::V3_HEADER_LEN_WRITTEN as u32,
        compression_type: CompressionType::Deflate,
        backing_format: backing.and_then(|b| b.format.clone()),
        feature_names: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::header::be64;

    /// Reads the refcount of every cluster of a finished image.
    fn refcounts(b: &[u8]) -> Vec<u16> {
        let cs = 1usize << super::super::header::be32(b, 20);
        let table = be64(b, 48) as usize;
        let clusters = super::super::header::be32(b, 56) as usize;
        let mut out = Vec::new();
        for i in 0..clusters * cs / 8 {
            let block = be64(b, table + 8 * i) as usize;
            if block == 0 {
                break;
            }
            for k in 0..cs / 2 {
                out.push(u16::from_be_bytes([b[block + 2 * k], b[block + 2 * k + 1]]));
            }
        }
        out
    }

    #[test]
    fn every_cluster_of_a_finished_image_has_refcount_one_and_no_more() {
        for (cs, size, writes) in [(512u32, 1u64 << 20, 700u64), (4096, 8 << 20, 3), (512, 0, 0)] {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("r.qcow2");
            let mut w = Qcow2Writer::create(&p, size, cs, None).unwrap();
            for i in 0..writes {
                w.write_cluster(i * u64::from(cs), &vec![1u8; cs as usize]).unwrap();
            }
            w.finish().unwrap();
            let b = std::fs::read(&p).unwrap();
            assert_eq!(b.len() % cs as usize, 0);
            let used = b.len() / cs as usize;
            let rc = refcounts(&b);
            assert!(rc[..used].iter().all(|&r| r == 1), "cluster size {cs}");
            assert!(rc[used..].iter().all(|&r| r == 0), "cluster size {cs}");
        }
    }

    #[test]
    fn misuse_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.qcow2");
        assert!(Qcow2Writer::create(&p, 1 << 20, 1000, None).is_err());
        assert!(Qcow2Writer::create(&p, 1000, 4096, None).is_err());
        assert!(Qcow2Writer::create(&p, 1 << 50, 512, None).is_err());
        let long = BackingFile { name: "x".repeat(600), format: None };
        assert!(Qcow2Writer::create(&p, 1 << 20, 512, Some(long)).is_err());
        let mut w = Qcow2Writer::create(&p, 6144, 4096, None).unwrap();
        assert!(w.write_cluster(512, &[1; 4096]).is_err());
        assert!(w.write_cluster(0, &[1; 100]).is_err());
        assert!(w.write_cluster(8192, &[1; 4096]).is_err());
        w.write_cluster(4096, &[1; 2048]).unwrap(); // the short last cluster
        w.finish().unwrap();
    }
}
