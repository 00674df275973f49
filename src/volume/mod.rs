//! The engine facade: an open store ([`Engine`]) and open volumes
//! ([`Volume`]). This is the API the mount (`fs`) and the CLI use.
//!
//! It owns the store directory: the superblock, the store lock, the
//! catalogue, the chunk store, the layer maps and the journal, and the
//! commit protocol that orders their writes (FORMAT.md, "Commit protocol").
//!
//! Concurrency: every method takes `&self` and may be called from many
//! threads. Lock order: volume stripe locks → volume state → journal →
//! store internals → catalogue. No lock is held across pack I/O or
//! decompression on the read path.

mod error;

pub use error::{Error, Result};

use crate::catalog::{Catalog, DiskRow, JobRow, VolumeRow};
use crate::guid::Guid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// When a write is durable (SPEC §4, FORMAT.md "Write policies").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WritePolicy {
    /// Durable before it is acknowledged.
    Sync,
    /// Acknowledged at once, durable at fsync/flush.
    Async,
    /// Acknowledged at once; fsync does not force durability (may lose data).
    AsyncUnsafe,
    /// `sync` or `async` from the backing device's volatile-cache type.
    Auto,
}

impl WritePolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            WritePolicy::Sync => "sync",
            WritePolicy::Async => "async",
            WritePolicy::AsyncUnsafe => "async-unsafe",
            WritePolicy::Auto => "auto",
        }
    }
}

impl std::str::FromStr for WritePolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "sync" => WritePolicy::Sync,
            "async" => WritePolicy::Async,
            "async-unsafe" => WritePolicy::AsyncUnsafe,
            "auto" => WritePolicy::Auto,
            _ => return Err(format!("unknown write policy {s:?}: use sync, async, async-unsafe or auto")),
        })
    }
}

/// Operating mode (SPEC §4, like `vdostats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Normal,
    Recovering,
    ReadOnly,
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub write_policy: WritePolicy,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { write_policy: WritePolicy::Auto }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open without taking writes (reads work, writes fail with ReadOnly).
    pub read_only: bool,
}

/// What `volume list` / `volume show` print about one volume (image group).
#[derive(Debug, Clone, serde::Serialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The image group GUID (stable identity of the volume).
    pub guid: Guid,
    /// GUID of the active leaf layer.
    pub leaf: Guid,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// Bytes of the virtual disk that hold data (non-zero blocks) as seen
    /// through the whole chain: the file's `st_blocks * 512`.
    pub allocated_bytes: u64,
    /// Number of layers in the chain (1 = no snapshots).
    pub depth: usize,
    pub created_unix: i64,
    pub properties: BTreeMap<String, String>,
    /// Layers, base first.
    pub layers: Vec<VolumeRow>,
    /// Unfinished multi-step operations on this volume.
    pub jobs: Vec<JobRow>,
}

/// `strata status`, like `vdostats --verbose` (SPEC §4).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreStatus {
    pub path: PathBuf,
    pub store_uuid: Guid,
    pub format_version: u32,
    pub operating_mode: Mode,
    pub write_policy: WritePolicy,
    pub effective_write_policy: WritePolicy,
    pub volumes: u64,
    pub layers: u64,
    /// 4 KiB blocks referenced by all layers' maps, in bytes.
    pub logical_bytes_used: u64,
    /// Bytes of the pack files (chunk data and record headers).
    pub physical_bytes_used: u64,
    /// Bytes of live chunk payloads (compressed or raw) inside the packs.
    pub data_bytes_stored: u64,
    /// Maps, chunk table, journal, catalogue and record headers.
    pub metadata_bytes: u64,
    /// (logical − physical) / logical, in percent; None when nothing is stored.
    pub saving_percent: Option<f64>,
    /// References per unique chunk.
    pub dedup_ratio: Option<f64>,
    /// Uncompressed bytes of unique chunks per stored payload byte.
    pub compression_ratio: Option<f64>,
    pub chunk_count: u64,
    /// Chunks no layer references (reclaimable by GC).
    pub unreferenced_chunks: u64,
    pub index_entries: u64,
    pub index_memory_bytes: u64,
    pub pack_files: u64,
    /// Free bytes in the filesystem holding the store.
    pub filesystem_free_bytes: u64,
    pub filesystem_total_bytes: u64,
}

pub struct Engine {
    // filled in by the implementation
}

impl Engine {
    /// Create a new store at `path`. Refuses an existing store or a non-empty
    /// directory.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<()> { todo!("{path:?}{opts:?}") }
    /// Open a store; takes the store lock (one process at a time).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Arc<Engine>> { todo!("{path:?}{opts:?}") }
    /// Flush everything, checkpoint, mark the store clean. Also done on drop.
    pub fn close(&self) -> Result<()> { todo!() }
    pub fn path(&self) -> &Path { todo!() }
    pub fn catalog(&self) -> &Catalog { todo!() }
    pub fn mode(&self) -> Mode { todo!() }

    pub fn create_volume(&self, name: &str, capacity: u64) -> Result<VolumeInfo> { todo!("{name}{capacity}") }
    pub fn list_volumes(&self) -> Result<Vec<VolumeInfo>> { todo!() }
    pub fn volume_info(&self, name_or_guid: &str) -> Result<VolumeInfo> { todo!("{name_or_guid}") }
    pub fn rename_volume(&self, name_or_guid: &str, new_name: &str) -> Result<()> { todo!("{name_or_guid}{new_name}") }
    /// Grow, or shrink when `allow_shrink` (data past the new end is dropped).
    pub fn resize_volume(&self, name_or_guid: &str, capacity: u64, allow_shrink: bool) -> Result<()> { todo!("{name_or_guid}{capacity}{allow_shrink}") }
    /// Remove a volume and all its layers. Refused while an unfinished job
    /// exists on it unless `force`.
    pub fn remove_volume(&self, name_or_guid: &str, force: bool) -> Result<()> { todo!("{name_or_guid}{force}") }
    /// Open a volume for I/O. The same `Arc` is returned while it is open.
    pub fn open_volume(&self, name_or_guid: &str) -> Result<Arc<Volume>> { todo!("{name_or_guid}") }
    /// Properties of a volume (LINSTOR Aux-style key/value pairs). The key
    /// `name` is reserved (use `rename_volume`).
    pub fn properties(&self, name_or_guid: &str) -> Result<BTreeMap<String, String>> { todo!("{name_or_guid}") }
    pub fn get_property(&self, name_or_guid: &str, key: &str) -> Result<Option<String>> { todo!("{name_or_guid}{key}") }
    pub fn set_property(&self, name_or_guid: &str, key: &str, value: &str) -> Result<()> { todo!("{name_or_guid}{key}{value}") }
    /// Returns whether the key existed.
    pub fn unset_property(&self, name_or_guid: &str, key: &str) -> Result<bool> { todo!("{name_or_guid}{key}") }
    /// Import a raw image file as a new volume (sparse: zero blocks are not
    /// stored). `progress` is called with (bytes done, bytes total). The
    /// volume is ILLEGAL with a job record until the import completes.
    pub fn import_raw(&self, file: &Path, name: &str, progress: &mut dyn FnMut(u64, u64)) -> Result<VolumeInfo> { todo!("{file:?}{name}{}", progress as *const _ as *const u8 as usize) }
    /// Export a volume to a raw file, sparse where the volume has zeros.
    pub fn export_raw(&self, name_or_guid: &str, file: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<()> { todo!("{name_or_guid}{file:?}{}", progress as *const _ as *const u8 as usize) }
    pub fn status(&self) -> Result<StoreStatus> { todo!() }
    /// Make every acknowledged write durable (the commit protocol).
    pub fn flush(&self) -> Result<()> { todo!() }
}

pub struct Volume {
    // filled in by the implementation
}

impl Volume {
    pub fn guid(&self) -> Guid { todo!() }
    pub fn name(&self) -> String { todo!() }
    pub fn capacity(&self) -> u64 { todo!() }
    /// Bytes holding data through the chain (for `st_blocks`).
    pub fn allocated_bytes(&self) -> u64 { todo!() }
    /// Read `buf.len()` bytes at `offset`; the range must be inside the volume.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> { todo!("{}{offset}", buf.len()) }
    /// Write at `offset`; unaligned and sub-block writes are read-modify-write.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> { todo!("{}{offset}", buf.len()) }
    /// Durability as the write policy says (fsync/fdatasync/flush).
    pub fn flush(&self) -> Result<()> { todo!() }
    /// Punch a hole: the range reads as zeros; whole blocks are unmapped and
    /// their chunks released.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> { todo!("{offset}{len}") }
    /// Change the capacity (the file size). Shrinking drops data past the end.
    pub fn resize(&self, capacity: u64) -> Result<()> { todo!("{capacity}") }
    /// First offset ≥ `offset` holding data (SEEK_DATA); None past the last.
    pub fn next_data(&self, offset: u64) -> Option<u64> { todo!("{offset}") }
    /// First offset ≥ `offset` in a hole (SEEK_HOLE); capacity if none.
    pub fn next_hole(&self, offset: u64) -> u64 { todo!("{offset}") }
}

#[allow(unused)]
fn _unused(_: DiskRow) {}
