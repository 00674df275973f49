//! qcow2 images: a reader for `strata import` and a writer for
//! `strata export --format qcow2`.
//!
//! This module is self-contained: it knows the qcow2 format (qemu's
//! `docs/interop/qcow2.txt`) and nothing of the engine. It may use
//! `crate::format` byte helpers and nothing else of strata. The importer
//! walks a chain with [`open_chain`], asks each layer [`Qcow2Image::map`]
//! what it holds and reads the data with [`Qcow2Image::read_at`]; the
//! exporter feeds clusters to a [`Qcow2Writer`].
//!
//! # Files
//!
//! ```text
//!  header.rs    header layout, extensions, validation, encoding
//!  reader.rs    Qcow2Image: L1/L2 lookup, L2 cache, map, read
//!  compress.rs  deflate / zstd cluster decompression, bounded output
//!  chain.rs     backing chain resolution (relative names, loops, depth)
//!  writer.rs    Qcow2Writer: v3 images with exact refcounts
//!  io.rs        ReadAt: pread on files, slices in memory (fuzzing)
//! ```
//!
//! # Supported
//!
//! - Versions 2 and 3, cluster sizes 512 B to 2 MiB, any refcount width.
//! - Plain, zero (v3 zero flag, with or without a preallocated cluster)
//!   and unallocated clusters; compressed clusters with deflate (raw
//!   deflate, as zlib windowBits -12) and zstd (`compression_type=zstd`).
//! - Extended L2 entries (`extended_l2=on`): 32 subclusters per cluster,
//!   each data, zero or unallocated.
//! - Backing files: the name and the backing format extension; chains of
//!   qcow2 images whose base may be a raw file.
//! - Dirty images (incompatible bit 0, lazy refcounts after a crash): a
//!   warning is logged and the data read as is; refcounts are never read.
//! - Internal snapshots are ignored: only the active L1 table is read.
//!
//! # Refused, and why
//!
//! - Encryption (`crypt_method` != 0): strata stores plain blocks, and it
//!   has no key to offer.
//! - External data files (incompatible bit 2): the data lives in a second
//!   file whose name the image supplies; convert with `qemu-img convert`.
//! - The corrupt bit (incompatible bit 1): qemu itself refuses to read such
//!   an image until `qemu-img check -r` has repaired it.
//! - Unknown incompatible feature bits, named from the feature name table
//!   when the image carries one.
//! - Protocol backing names (`nbd:`, `json:`, URLs) and backing formats
//!   other than qcow2 and raw.
//!
//! # Limits (against hostile images)
//!
//! Every size read from the file is checked before it is used to allocate
//! or index: cluster_bits 9..=21; virtual size below 2^63; an L1 table of
//! at most 32 MiB ([`MAX_L1_BYTES`], qemu's limit too) that lies inside the
//! file and covers the virtual size; L2 tables aligned, inside the file,
//! clear of the header, L1 and refcount tables and of each other; data
//! clusters aligned, starting inside the file, clear of metadata; backing
//! names at most 1023 bytes of UTF-8 inside the first cluster; header
//! extensions inside the first cluster. Compressed clusters decompress into
//! exactly one cluster and never more. The L2 cache holds at most
//! [`L2_CACHE_BYTES`]; chains are at most [`MAX_CHAIN_DEPTH`] images deep.
//! Walking a range costs the L1 entries plus the L2 entries present in the
//! file, never the virtual size. The parser is fuzzed (`fuzz/`).
//!
//! # Concurrency
//!
//! [`Qcow2Image`] methods take `&self` and use positional reads, so one
//! image serves several threads. The only lock is the L2 cache's, held for
//! a lookup or an insert and never across I/O or decompression.

mod chain;
mod compress;
mod error;
pub mod header;
mod io;
mod reader;
mod writer;

pub use chain::{ChainImage, open_chain, resolve};
pub use error::Qcow2Error;
pub use header::{CompressionType, Header};
pub use io::ReadAt;
pub use reader::{Extent, ExtentKind, Qcow2Image};
pub use writer::{DEFAULT_CLUSTER_SIZE, MAX_RESIDENT_L2_BYTES, Qcow2Writer};

/// The largest L1 table accepted (qemu's QCOW_MAX_L1_SIZE).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Bytes of decoded L2 tables cached per open image.
pub const L2_CACHE_BYTES: u64 = 4 << 20;
/// The deepest backing chain [`open_chain`] follows.
pub const MAX_CHAIN_DEPTH: usize = 256;

/// A backing file as named in an image header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFile {
    /// The name exactly as stored (relative names are relative to the
    /// directory of the image that names them).
    pub name: String,
    /// From the backing format extension (`"qcow2"`, `"raw"`...), if any.
    pub format: Option<String>,
}

/// Opens a qcow2 image held in memory, maps the whole disk and
/// reads every data extent. The fuzz target's body, kept here so that a
/// plain test can run it on stable.
#[doc(hidden)]
pub fn fuzz_open_map_read(data: &[u8]) {
    let Ok(image) = Qcow2Image::from_reader(data) else { return };
    let size = image.virtual_size();
    let Ok(extents) = image.map(0, size) else { return };
    let cs = image.cluster_size();
    let mut buf = vec![0u8; cs as usize];
    for e in extents.iter().filter(|e| e.kind == ExtentKind::Data) {
        let mut pos = e.offset;
        while pos < e.offset + e.len {
            let n = cs.min(e.offset + e.len - pos);
            let _ = image.read_at(&mut buf[..n as usize], pos);
            pos += n;
        }
    }
    if size > 0 {
        let last = (size - 1) / cs;
        let n = (size - last * cs) as usize;
        let _ = image.read_cluster_data(last, &mut buf[..n]);
    }
}
