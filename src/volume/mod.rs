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

mod chains;
pub mod check;
mod error;
mod gc;
mod handle;
mod images;
mod packer;
mod policy;
/// Replication hooks and queries (issue 6); see the file's docs.
pub mod replication;
mod superblock;
#[cfg(test)]
mod tests;

pub use chains::{ChainDump, ImageDump, LayerDump, MergeReport, SnapshotInfo, split_at};
pub use error::{Error, Result};
pub use gc::GcReport;
pub(crate) use handle::State;
pub use handle::Volume;
pub use images::sniff;
pub use packer::Compression;
pub use policy::{resolve_auto, resolve_auto_for_dev};
pub use superblock::FORMAT_VERSION;

use crate::catalog::{self, Catalog, DiskRow, JobRow, Legality, VolumeRow};
use crate::chain::{self, PageMap};
use crate::format;
use crate::guid::Guid;
use crate::journal::{self, Entry, Journal};
use crate::store::{self, ChunkStore};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

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
    /// Deferred (the default): new blocks are stored raw and compressed by
    /// the background packer; inline: compressed in the write path.
    pub compression: Compression,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions { write_policy: WritePolicy::Auto, compression: Compression::Deferred }
    }
}

#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Open without taking writes (reads work, writes fail with ReadOnly).
    pub read_only: bool,
    /// Injected faults (tests); None reads `STRATA_FAULTS`.
    pub faults: Option<Arc<crate::fault::Faults>>,
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
    /// When new blocks are compressed (inline or deferred to the packer).
    pub compression: Compression,
    /// Packs holding blocks not compressed yet (deferred compression; packs
    /// found at open count until the packer has looked at them).
    pub packs_awaiting_packer: u64,
    pub volumes: u64,
    pub layers: u64,
    /// 4 KiB blocks referenced by all layers' maps, in bytes. None while
    /// recovery is rebuilding the reference counts.
    pub logical_bytes_used: Option<u64>,
    /// Bytes of the pack files (chunk data and record headers).
    pub physical_bytes_used: u64,
    /// Bytes of live chunk payloads (compressed or raw) inside the packs.
    /// None while recovering.
    pub data_bytes_stored: Option<u64>,
    /// Maps, chunk table, journal, catalogue and the record headers of
    /// live chunks.
    pub metadata_bytes: u64,
    /// Pack bytes holding nothing a layer uses: records of unreferenced
    /// chunks, records GC or the packer moved away, pack headers and
    /// padding — what `strata gc` reclaims. None while recovering.
    pub dead_pack_bytes: Option<u64>,
    /// (logical − physical) / logical, in percent; None when nothing is stored.
    pub saving_percent: Option<f64>,
    /// References per unique chunk.
    pub dedup_ratio: Option<f64>,
    /// Uncompressed bytes of unique chunks per stored payload byte.
    pub compression_ratio: Option<f64>,
    pub chunk_count: u64,
    /// Chunks no layer references (reclaimable by GC). None while
    /// recovering.
    pub unreferenced_chunks: Option<u64>,
    pub index_entries: u64,
    pub index_memory_bytes: u64,
    pub pack_files: u64,
    /// Retired packs kept for new packs to reuse (`spare-pack-bytes`);
    /// not counted in `physical_bytes_used`.
    pub spare_packs: u64,
    pub spare_pack_bytes: u64,
    /// Free bytes in the filesystem holding the store.
    pub filesystem_free_bytes: u64,
    pub filesystem_total_bytes: u64,
    /// Why `auto` resolved the way it did (empty unless the policy is auto).
    pub write_policy_reason: String,
    /// Why the store is read-only, when it is.
    pub read_only_reason: Option<String>,
    pub journal_bytes: u64,
    pub map_bytes: u64,
    pub catalog_bytes: u64,
    /// `chunks.tbl`, the chunk table's checkpoint.
    pub chunk_table_bytes: u64,
    /// 64 bytes per live chunk's record.
    pub record_header_bytes: u64,
    pub dedup_hits: u64,
    /// Writes whose MurmurHash3 matched but whose content differed.
    pub dedup_false_matches: u64,
}

/// One layer's block map, shared by every open volume whose chain holds it.
pub(crate) struct Layer {
    pub(crate) guid: Guid,
    pub(crate) map: RwLock<PageMap>,
    /// Changed since the last checkpoint.
    pub(crate) dirty: AtomicBool,
}

impl Layer {
    fn new(guid: Guid, map: PageMap) -> Arc<Layer> {
        Arc::new(Layer { guid, map: RwLock::new(map), dirty: AtomicBool::new(false) })
    }
}

/// Group commit: one fdatasync of packs + journal serves every writer
/// waiting at that moment.
#[derive(Default)]
struct Durability {
    state: Mutex<(u64, bool)>,
    cv: Condvar,
}

/// Checkpoint when the active journal file grows past this.
const CHECKPOINT_JOURNAL_BYTES: u64 = 256 << 20;

enum Kick {
    Checkpoint,
    /// The chunk table or the block maps have more than their cache resident.
    Sweep,
    /// Whole packs may have died: free them (into the spare packs).
    Reclaim,
    Stop,
}

pub struct Engine {
    path: PathBuf,
    me: Weak<Engine>,
    _lock: File,
    sb: Mutex<superblock::Superblock>,
    catalog: Catalog,
    pub(crate) store: ChunkStore,
    /// Where block-map pages go when `map-cache-bytes` is set (None: the heap).
    pub(crate) maps: Option<Arc<chain::MapArena>>,
    pub(crate) journal: Journal,
    faults: Arc<crate::fault::Faults>,
    layers: RwLock<HashMap<Guid, Arc<Layer>>>,
    open: Mutex<HashMap<Guid, Weak<Volume>>>,
    /// Writers hold it shared across "map update + journal append";
    /// a checkpoint holds it exclusively to cut a consistent state.
    pub(crate) cut: RwLock<()>,
    /// GC and the packer hold it shared while they free or move chunks; a
    /// checkpoint holds it exclusively from its cut until the chunk table
    /// is written, so the (otherwise fuzzy) table image never lacks a chunk
    /// freed, nor holds a half-moved one, after the stamp.
    pub(crate) gc_gate: RwLock<()>,
    durable: Durability,
    ckpt_lock: Mutex<()>,
    gc_lock: Mutex<()>,
    /// (effective policy, why) — `auto` resolved at open.
    policy: Mutex<(WritePolicy, String)>,
    /// Effective policy is `sync` (read on every write).
    pub(crate) sync_writes: AtomicBool,
    mode: AtomicU8,
    /// Opened read-only by the caller.
    read_only: bool,
    /// Why the store went read-only (fatal error), if it did.
    read_only_reason: Mutex<Option<String>>,
    closed: AtomicBool,
    worker: Mutex<Option<(crossbeam_channel::Sender<Kick>, std::thread::JoinHandle<()>)>>,
    packer: Mutex<Option<packer::PackerHandle>>,
    /// Replication hooks (replication.rs); inert until a driver attaches.
    pub(crate) repl: replication::Hooks,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn rlock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn wlock<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Files and directories of a store (FORMAT.md, "Store layout").
struct Paths;
impl Paths {
    const SUPERBLOCK: &'static str = "superblock";
    const LOCK: &'static str = "lock";
    const CATALOG: &'static str = "catalog.db";
    const CHUNKS: &'static str = "chunks.tbl";
    /// Scratch backing of the chunk table when `table-cache-bytes` is set.
    const TABLE_SCRATCH: &'static str = "chunks.mem";
    /// Scratch backing of block-map pages when `map-cache-bytes` is set.
    const MAP_SCRATCH: &'static str = "maps.mem";
    const PACKS: &'static str = "packs";
    const MAPS: &'static str = "maps";
    const JOURNAL: &'static str = "journal";
    const RESERVE: &'static str = "reserve";
}

/// Bytes kept preallocated in `STORE/reserve` so GC can run on a full
/// filesystem (it needs a new pack, journal records and a checkpoint to
/// free space).
pub const RESERVE_BYTES: u64 = 8 << 20;

/// Create (or re-create) the space reserve with real blocks.
pub(crate) fn make_reserve(root: &Path) -> std::io::Result<()> {
    let p = root.join(Paths::RESERVE);
    if std::fs::metadata(&p).map(|m| m.len() == RESERVE_BYTES).unwrap_or(false) {
        return Ok(());
    }
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&p)?;
    // SAFETY: fallocate on a valid fd owned by `f`.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, RESERVE_BYTES as libc::off_t) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_file(&p);
        return Err(e);
    }
    f.sync_all()
}

fn map_path(root: &Path, layer: Guid) -> PathBuf {
    root.join(Paths::MAPS).join(format!("{layer}.map"))
}

fn store_err(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace(format!("{what}: {e}")),
        Some(libc::EROFS) => Error::ReadOnly(format!("{what}: {e}")),
        _ => Error::io(what.to_string(), e),
    }
}

fn corrupt_store(path: &Path, what: &str, detail: impl std::fmt::Display) -> Error {
    Error::Corrupt {
        volume: "(store)".into(),
        offset: 0,
        detail: format!("{what} in {}: {detail}; run `strata check {}`", path.display(), path.display()),
    }
}

/// Names the mount uses for its own directories (and a prefix for its
/// own temporary names); a volume cannot take them.
pub const RESERVED_NAMES: &[&str] = &["images", ".snapshots"];
pub const RESERVED_PREFIX: &str = ".strata-";

/// Check a user-visible volume name (also checked by the catalogue).
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(Error::InvalidArgument(format!(
            "invalid volume name {name:?}: use 1–255 bytes without '/' or NUL, not '.' or '..'"
        )));
    }
    if RESERVED_NAMES.contains(&name) || name.starts_with(RESERVED_PREFIX) {
        return Err(Error::InvalidArgument(format!(
            "the volume name {name:?} is reserved: the mount uses `images`, `.snapshots` and names starting with `.strata-`"
        )));
    }
    Ok(())
}

impl Engine {
    /// Create a new store at `path`. Refuses an existing store or a non-empty
    /// directory.
    pub fn init(path: &Path, opts: &InitOptions) -> Result<()> {
        if path.join(Paths::SUPERBLOCK).exists() {
            return Err(Error::AlreadyExists(format!(
                "a strata store already exists at {}; refusing to overwrite it (remove it first if you really mean to)",
                path.display()
            )));
        }
        if path.exists() {
            if !path.is_dir() {
                return Err(Error::InvalidArgument(format!("{} exists and is not a directory", path.display())));
            }
            // Only leftovers of an interrupted init may be present.
            let known = [
                Paths::RESERVE,
                Paths::LOCK,
                Paths::CATALOG,
                "catalog.db-wal",
                "catalog.db-shm",
                Paths::CHUNKS,
                Paths::PACKS,
                Paths::MAPS,
                Paths::JOURNAL,
                "superblock.tmp",
                "chunks.tmp",
                "lost+found",
            ];
            for e in std::fs::read_dir(path).map_err(store_err("reading the store directory"))? {
                let e = e.map_err(store_err("reading the store directory"))?;
                let n = e.file_name().to_string_lossy().into_owned();
                if !known.contains(&n.as_str()) {
                    return Err(Error::AlreadyExists(format!(
                        "{} is not empty (found {n:?}); choose an empty or new directory",
                        path.display()
                    )));
                }
            }
            for n in [Paths::CATALOG, "catalog.db-wal", "catalog.db-shm", Paths::CHUNKS] {
                let _ = std::fs::remove_file(path.join(n));
            }
            for n in [Paths::PACKS, Paths::MAPS, Paths::JOURNAL] {
                let _ = std::fs::remove_dir_all(path.join(n));
            }
        }
        std::fs::create_dir_all(path).map_err(store_err("creating the store directory"))?;
        let uuid = Guid::new_random();
        for d in [Paths::MAPS, Paths::JOURNAL] {
            std::fs::create_dir_all(path.join(d)).map_err(store_err("creating the store directory"))?;
        }
        ChunkStore::create(&path.join(Paths::PACKS), uuid)?;
        let empty = store::ChunkTable::default().encode(uuid, 0, store::FIRST_CHUNK_ID);
        format::write_atomic(&path.join(Paths::CHUNKS), &empty).map_err(store_err("writing chunks.tbl"))?;
        Catalog::create(&path.join(Paths::CATALOG))?;
        make_reserve(path).map_err(store_err("reserving space for garbage collection"))?;
        // The superblock comes last: its presence marks a complete store.
        let sb = superblock::Superblock {
            format_version: FORMAT_VERSION,
            clean: true,
            store_uuid: uuid,
            created_unix: now_unix(),
            write_policy: opts.write_policy,
            mode: Mode::Normal,
            zstd_level: store::DEFAULT_ZSTD_LEVEL,
            checkpoint_seq: 0,
            index_max_entries: 0,
            deferred_compression: opts.compression == Compression::Deferred,
            table_cache_bytes: 0,
            map_cache_bytes: 0,
            spare_pack_bytes: superblock::DEFAULT_SPARE_PACK_BYTES,
        };
        sb.write(&path.join(Paths::SUPERBLOCK)).map_err(store_err("writing the superblock"))?;
        format::fsync_dir(path).map_err(store_err("syncing the store directory"))?;
        Ok(())
    }

    /// Open a store; takes the store lock (one process at a time).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Arc<Engine>> {
        let sb_path = path.join(Paths::SUPERBLOCK);
        if !sb_path.exists() {
            return Err(Error::NotFound(format!(
                "no strata store at {}: run `strata init {}` first, or pass --store / set STRATA_STORE",
                path.display(),
                path.display()
            )));
        }
        let lock = take_lock(path)?;
        let faults = match &opts.faults {
            Some(f) => f.clone(),
            None => crate::fault::Faults::from_env().map_err(Error::InvalidArgument)?,
        };
        let mut sb = superblock::Superblock::read(&sb_path).map_err(|d| corrupt_store(path, "superblock", d))?;
        // A store left read-only by a fatal error stays so until repaired.
        let ro = opts.read_only || sb.mode == Mode::ReadOnly;
        let catalog = Catalog::open(&path.join(Paths::CATALOG))?;

        // Chunk table checkpoint, then packs.
        let tbl_bytes = std::fs::read(path.join(Paths::CHUNKS)).map_err(store_err("reading chunks.tbl"))?;
        let image =
            store::table::decode(&tbl_bytes, sb.store_uuid).map_err(|d| corrupt_store(path, "chunks.tbl", d))?;
        let table_stamp = image.stamp_seq;
        // With a table cache set, the chunk table lives in a scratch file's
        // mapping, kept to about that much resident (store/table.rs).
        let table = if sb.table_cache_bytes > 0 && !ro {
            store::ChunkTable::file_backed(&path.join(Paths::TABLE_SCRATCH), sb.table_cache_bytes)
                .map_err(store_err("creating the chunk table's scratch file"))?
        } else {
            store::ChunkTable::default()
        };
        let store = ChunkStore::open(
            &path.join(Paths::PACKS),
            sb.store_uuid,
            image,
            sb.zstd_level,
            sb.index_max_entries,
            // A read-only open never retires packs nor deletes spares.
            if ro { u64::MAX } else { sb.spare_pack_bytes },
            faults.clone(),
            table,
        )?;

        // With a map cache set, block-map pages (layer maps, merged views,
        // checkpoint copies) live in a scratch file's mapping, kept to about
        // that much resident (chain/arena.rs).
        let maps = if sb.map_cache_bytes > 0 && !ro {
            Some(Arc::new(
                chain::MapArena::file_backed(&path.join(Paths::MAP_SCRATCH), sb.map_cache_bytes)
                    .map_err(store_err("creating the block maps' scratch file"))?,
            ))
        } else {
            None
        };

        // Layer maps of every layer the catalogue knows; the catalogue is
        // the truth about which layers exist.
        let mut layers: HashMap<Guid, (Arc<Layer>, u64)> = HashMap::new();
        for v in catalog.all_volumes()? {
            let mp = map_path(path, v.guid);
            let (map, stamp) = match std::fs::read(&mp) {
                Ok(b) => {
                    let img = chain::decode_map_in(&b, maps.clone())
                        .map_err(|d| corrupt_store(path, &format!("map of layer {}", v.guid), d))?;
                    if img.layer != v.guid {
                        return Err(corrupt_store(
                            path,
                            &format!("map file {}", mp.display()),
                            format!("holds layer {}", img.layer),
                        ));
                    }
                    (img.map, img.stamp_seq)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (PageMap::new_in(maps.clone()), 0),
                Err(e) => return Err(Error::io(format!("reading {}", mp.display()), e)),
            };
            layers.insert(v.guid, (Layer::new(v.guid, map), stamp));
        }

        // Replay the journal on top of the checkpoint.
        let jdir = path.join(Paths::JOURNAL);
        let journal_files = journal::list_files(&jdir)?.len();
        let info = journal::replay(&jdir, sb.store_uuid, |seq, entries| {
            // Under async the OS may have written this record before the
            // pack bytes it points at: such a write was never flushed, so
            // it and everything after it are dropped, never served as EIO.
            for e in &entries {
                if let Entry::ChunkPut(p) = e
                    && seq > table_stamp
                    && !store.verify_put(p)
                {
                    return Ok(journal::Replay::StopBefore);
                }
            }
            for e in entries {
                match e {
                    Entry::ChunkPut(p) if seq > table_stamp => store.apply_put(&p),
                    Entry::ChunkFree { chunk_id } if seq > table_stamp => store.apply_free(chunk_id),
                    Entry::MapRun { layer, start_block, entries } => {
                        if let Some((l, stamp)) = layers.get(&layer)
                            && seq > *stamp
                        {
                            let mut m = wlock(&l.map);
                            for (i, e) in entries.into_iter().enumerate() {
                                m.set(start_block + i as u64, e);
                            }
                            l.dirty.store(true, Ordering::Relaxed);
                        }
                    }
                    Entry::MapTruncate { layer, from_block } => {
                        if let Some((l, stamp)) = layers.get(&layer)
                            && seq > *stamp
                        {
                            wlock(&l.map).truncate(from_block);
                            l.dirty.store(true, Ordering::Relaxed);
                        }
                    }
                    _ => {}
                }
            }
            Ok(journal::Replay::Continue)
        })?;
        if !sb.clean {
            tracing::warn!(store = %path.display(), records = info.records, torn = info.torn_tail, "store was not shut down cleanly; recovered from the journal");
        }

        // Reference counts are derived from the maps: they cannot drift.
        // After a clean close this is done before serving; after a crash it
        // runs in the background (`recovering` mode) while I/O is served.
        store.table().reset_refs();
        let unclean = !sb.clean && !opts.read_only;
        let recount: Vec<(Guid, PageMap)> = if unclean {
            store.begin_recovery();
            layers.values().map(|(l, _)| (l.guid, rlock(&l.map).clone())).collect()
        } else {
            for (l, _) in layers.values() {
                for (b, e) in rlock(&l.map).iter() {
                    if chain::is_chunk(e) && store.incref(e).is_err() {
                        return Err(corrupt_store(
                            path,
                            &format!("map of layer {}", l.guid),
                            format!("block {b} references missing chunk {e}"),
                        ));
                    }
                }
            }
            Vec::new()
        };
        store.rebuild_index();
        if !ro {
            store.trim_active_tail()?;
        }

        let (effective_policy, policy_reason) = match sb.write_policy {
            WritePolicy::Auto => resolve_auto(path),
            p => (p, String::new()),
        };
        let persisted_ro = sb.mode == Mode::ReadOnly;
        let journal = Journal::start(&jdir, sb.store_uuid, info.last_seq + 1, faults.clone())?;
        if !ro {
            sb.clean = false;
            // An older format is upgraded by the first writable open: every
            // structure of format 1 is valid in format 2 (FORMAT.md).
            sb.format_version = FORMAT_VERSION;
            store.set_deferred(sb.deferred_compression);
            if sb.mode == Mode::Recovering {
                sb.mode = Mode::Normal;
            }
            sb.write(&sb_path).map_err(store_err("writing the superblock"))?;
        }
        let layers: HashMap<Guid, Arc<Layer>> = layers.into_iter().map(|(g, (l, _))| (g, l)).collect();
        let engine = Arc::new_cyclic(|me| Engine {
            path: path.to_path_buf(),
            me: me.clone(),
            _lock: lock,
            sb: Mutex::new(sb),
            catalog,
            store,
            maps,
            journal,
            faults,
            layers: RwLock::new(layers),
            open: Mutex::new(HashMap::new()),
            cut: RwLock::new(()),
            gc_gate: RwLock::new(()),
            durable: Durability { state: Mutex::new((info.last_seq, false)), cv: Condvar::new() },
            ckpt_lock: Mutex::new(()),
            gc_lock: Mutex::new(()),
            policy: Mutex::new((effective_policy, policy_reason)),
            sync_writes: AtomicBool::new(effective_policy == WritePolicy::Sync),
            mode: AtomicU8::new(if persisted_ro {
                2
            } else if unclean {
                1
            } else {
                0
            }),
            read_only: opts.read_only,
            read_only_reason: Mutex::new(persisted_ro.then(|| {
                "the store was left read-only by an earlier fatal error; run `strata check --repair`".to_string()
            })),
            closed: AtomicBool::new(false),
            worker: Mutex::new(None),
            packer: Mutex::new(None),
            repl: replication::Hooks::default(),
        });
        if !engine.read_only && !persisted_ro {
            // Fold the replayed journal into a checkpoint so old journal
            // files (and any torn tail) are gone before new records follow.
            if info.records > 0 || info.torn_tail || journal_files > 1 {
                engine.sync_all_packs()?;
                engine.checkpoint()?;
            }
            engine.resume_jobs()?;
            engine.start_worker();
        }
        if unclean {
            engine.start_recovery(recount);
        }
        Ok(engine)
    }

    /// Rebuild reference counts from a copy of the maps taken at open, on a
    /// named thread, then leave `recovering` mode by itself. Live writes
    /// meanwhile apply their increments and decrements as deltas.
    fn start_recovery(&self, maps: Vec<(Guid, PageMap)>) {
        let me = self.me.clone();
        let delay = std::env::var("STRATA_TEST_RECOVERY_DELAY_MS").ok().and_then(|s| s.parse::<u64>().ok());
        let h = std::thread::Builder::new().name("strata-recover".into()).spawn(move || {
            let t0 = std::time::Instant::now();
            let Some(e) = me.upgrade() else { return };
            let mut dangling = None;
            for (g, m) in &maps {
                for (b, ent) in m.iter() {
                    if chain::is_chunk(ent) && e.store.table().incref(ent).is_none() && dangling.is_none() {
                        dangling = Some(format!("layer {g} block {b} references missing chunk {ent}"));
                    }
                }
            }
            drop(maps);
            if let Some(ms) = delay {
                drop(e);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let Some(e2) = me.upgrade() else { return };
                e2.finish_recovery(dangling, t0);
            } else {
                e.finish_recovery(dangling, t0);
            }
        });
        if let Err(err) = h {
            tracing::error!(%err, "cannot start the recovery thread; rebuilding in place");
        }
    }

    fn finish_recovery(&self, dangling: Option<String>, t0: std::time::Instant) {
        self.store.end_recovery();
        if let Some(d) = dangling {
            self.enter_read_only(format!("recovery found a damaged map: {d}; run `strata check`"));
            return;
        }
        let _ = self.mode.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire);
        tracing::info!(store = %self.path.display(), seconds = t0.elapsed().as_secs_f64(), "recovery finished; back to normal mode");
    }

    fn sync_all_packs(&self) -> Result<()> {
        for e in std::fs::read_dir(self.path.join(Paths::PACKS)).map_err(store_err("reading packs"))? {
            let e = e.map_err(store_err("reading packs"))?;
            File::open(e.path()).and_then(|f| f.sync_all()).map_err(store_err("syncing a pack"))?;
        }
        Ok(())
    }

    fn start_worker(&self) {
        let (tx, rx) = crossbeam_channel::bounded::<Kick>(1);
        let me = self.me.clone();
        let h = std::thread::Builder::new()
            .name("strata-checkpoint".into())
            .spawn(move || {
                let mut last_gc = std::time::Instant::now();
                loop {
                    let kick = rx.recv_timeout(std::time::Duration::from_secs(5));
                    let Some(e) = me.upgrade() else { return };
                    e.maybe_gc(&mut last_gc, std::time::Duration::from_secs(60));
                    match kick {
                        Ok(Kick::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                        Ok(Kick::Checkpoint) => {
                            if let Err(err) = e.checkpoint() {
                                tracing::error!(%err, "background checkpoint failed");
                            }
                        }
                        Ok(Kick::Sweep) => e.sweep_caches(),
                        Ok(Kick::Reclaim) => {
                            if let Err(err) = e.reclaim_dead_packs() {
                                tracing::error!(%err, "reclaiming dead packs failed");
                            }
                        }
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                            // Reads page table segments and map pages in too.
                            e.sweep_caches();
                            // async-unsafe promises nothing at fsync, but
                            // data still reaches the disk within seconds.
                            if e.effective_write_policy() == WritePolicy::AsyncUnsafe
                                && let Err(err) = e.make_durable(e.journal.last_seq())
                            {
                                tracing::error!(%err, "background sync failed");
                            }
                        }
                    }
                }
            })
            .expect("spawning the checkpoint thread");
        *lock(&self.worker) = Some((tx, h));
    }

    fn stop_worker(&self) {
        if let Some((tx, h)) = lock(&self.worker).take() {
            let _ = tx.send(Kick::Stop);
            // The worker may itself drop the last reference to the engine.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }

    /// Page out what the bounded caches (chunk table, block maps) hold
    /// beyond their caps (no-ops for caches that are not set).
    pub(crate) fn sweep_caches(&self) {
        self.store.table().sweep();
        if let Some(m) = &self.maps {
            m.sweep();
            m.page_out_strays();
        }
    }

    /// An empty block map, in the map arena if there is one.
    pub(crate) fn new_map(&self) -> PageMap {
        PageMap::new_in(self.maps.clone())
    }

    /// Ask the background thread for a checkpoint if the journal is large,
    /// for a sweep if a bounded cache is over its cap, or to free dead packs
    /// when overwrites may have emptied some.
    pub(crate) fn maybe_checkpoint(&self) {
        if (self.store.table().over_cap() || self.maps.as_ref().is_some_and(|m| m.over_cap()))
            && let Some((tx, _)) = lock(&self.worker).as_ref()
        {
            let _ = tx.try_send(Kick::Sweep);
        }
        if self.journal.active_len() > CHECKPOINT_JOURNAL_BYTES
            && let Some((tx, _)) = lock(&self.worker).as_ref()
        {
            let _ = tx.try_send(Kick::Checkpoint);
        }
        if self.store.reclaim_due()
            && let Some((tx, _)) = lock(&self.worker).as_ref()
        {
            let _ = tx.try_send(Kick::Reclaim);
        }
    }

    /// Write every changed layer map and the chunk table, then drop the
    /// journal files they cover (FORMAT.md, "Checkpoint").
    pub fn checkpoint(&self) -> Result<()> {
        self.checkpoint_inner().map_err(|e| self.on_write_error(e))
    }

    fn checkpoint_inner(&self) -> Result<()> {
        let _one = lock(&self.ckpt_lock);
        let uuid = lock(&self.sb).store_uuid;
        // The cut is held only to fix the stamp, copy the changed maps (8
        // bytes per entry, no encoding) and rotate the journal; writers wait
        // for nothing else. The chunk table is streamed out after it, fuzzy:
        // entries changed meanwhile are re-applied by replay (FORMAT.md,
        // "Checkpoint").
        let gate;
        let (stamp, images) = {
            let _cut = wlock(&self.cut);
            gate = wlock(&self.gc_gate);
            let stamp = self.journal.last_seq();
            let mut images = Vec::new();
            for l in rlock(&self.layers).values() {
                if l.dirty.swap(false, Ordering::AcqRel) {
                    images.push((l.clone(), rlock(&l.map).clone()));
                }
            }
            if let Err(e) = self.journal.rotate() {
                for (l, _) in &images {
                    l.dirty.store(true, Ordering::Release);
                }
                return Err(e.into());
            }
            (stamp, images)
        };
        let tbl_tmp = self.path.join(Paths::CHUNKS).with_extension("tmp");
        let res = (|| -> Result<()> {
            if let Some(f) = self.faults.hit(crate::fault::Point::MetaWrite) {
                let code = if f == crate::fault::Fault::Enospc { libc::ENOSPC } else { libc::EIO };
                return Err(store_err("writing a checkpoint")(std::io::Error::from_raw_os_error(code)));
            }
            // The table first, into its temporary file: every chunk it
            // names was appended before the pack sync below.
            let chunks = self.path.join(Paths::CHUNKS);
            format::write_tmp_with(&chunks, |w| self.store.table().encode_to(w, uuid, stamp, self.store.next_id()))
                .map_err(store_err("writing chunks.tbl"))?;
            drop(gate);
            // Packs before the maps and table that point into them.
            self.store.sync()?;
            for (l, map) in &images {
                format::write_atomic_with(&map_path(&self.path, l.guid), |w| map.encode_to(w, l.guid, stamp))
                    .map_err(store_err("writing a layer map"))?;
            }
            format::replace_with_tmp(&tbl_tmp, &chunks).map_err(store_err("writing chunks.tbl"))?;
            self.remove_orphan_maps()?;
            self.journal.remove_upto(stamp)?;
            let mut sb = lock(&self.sb);
            sb.checkpoint_seq = stamp;
            sb.write(&self.path.join(Paths::SUPERBLOCK)).map_err(store_err("writing the superblock"))?;
            Ok(())
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tbl_tmp);
            for (l, _) in &images {
                l.dirty.store(true, Ordering::Release);
            }
        }
        res
    }

    fn remove_orphan_maps(&self) -> Result<()> {
        let live: std::collections::HashSet<String> = rlock(&self.layers).keys().map(|g| format!("{g}.map")).collect();
        let dir = self.path.join(Paths::MAPS);
        for e in std::fs::read_dir(&dir).map_err(store_err("reading maps"))? {
            let e = e.map_err(store_err("reading maps"))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".map") && !live.contains(&n) {
                std::fs::remove_file(e.path()).map_err(store_err("removing an orphan map"))?;
            }
        }
        Ok(())
    }

    /// Make everything up to journal record `seq` durable: packs first, then
    /// the journal (FORMAT.md, "Commit protocol"). Concurrent callers share
    /// one round of fdatasyncs.
    pub(crate) fn make_durable(&self, seq: u64) -> Result<()> {
        let mut st = lock(&self.durable.state);
        loop {
            if st.0 >= seq {
                return Ok(());
            }
            if !st.1 {
                st.1 = true;
                drop(st);
                let target = self.journal.last_seq();
                let r = self.store.sync().map_err(Error::from).and_then(|_| self.journal.sync().map_err(Error::from));
                st = lock(&self.durable.state);
                st.1 = false;
                if r.is_ok() {
                    st.0 = st.0.max(target);
                }
                self.durable.cv.notify_all();
                if let Err(e) = r {
                    drop(st);
                    // A failed fsync may have dropped dirty pages: nothing
                    // after it can be trusted to be durable.
                    self.enter_read_only(format!("fsync failed: {e}"));
                    return Err(e);
                }
            } else {
                st = self.durable.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Flush everything, checkpoint, mark the store clean. Also done on drop.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_packer();
        self.stop_worker();
        if self.read_only {
            return Ok(());
        }
        self.checkpoint()?;
        let mut sb = lock(&self.sb);
        sb.clean = true;
        sb.write(&self.path.join(Paths::SUPERBLOCK)).map_err(store_err("writing the superblock"))?;
        Ok(())
    }

    /// Test hook: stop as if the process were killed — no checkpoint, no
    /// clean flag, the store lock released. Unflushed work stays wherever
    /// the page cache had it, exactly as after `kill -9`.
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.stop_packer();
        self.stop_worker();
        // SAFETY: flock on the store lock's fd, which we own.
        unsafe { libc::flock(self._lock.as_raw_fd(), libc::LOCK_UN) };
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            0 => Mode::Normal,
            1 => Mode::Recovering,
            _ => Mode::ReadOnly,
        }
    }

    pub fn write_policy(&self) -> WritePolicy {
        lock(&self.sb).write_policy
    }

    pub fn effective_write_policy(&self) -> WritePolicy {
        lock(&self.policy).0
    }

    /// Change the write policy (`strata config set write-policy`); returns
    /// the effective policy and, for `auto`, why.
    pub fn set_write_policy(&self, p: WritePolicy) -> Result<(WritePolicy, String)> {
        self.check_writable()?;
        // Moving to a stricter policy: make what is pending durable first.
        self.make_durable(self.journal.last_seq())?;
        let eff = match p {
            WritePolicy::Auto => resolve_auto(&self.path),
            p => (p, String::new()),
        };
        self.update_superblock(|sb| sb.write_policy = p)?;
        self.sync_writes.store(eff.0 == WritePolicy::Sync, Ordering::Release);
        *lock(&self.policy) = eff.clone();
        Ok(eff)
    }

    /// Cap the dedup index at about `max_entries` entries (0 = unbounded);
    /// takes effect at the next open (`strata config set index-max-entries`).
    pub fn set_index_max_entries(&self, max_entries: u64) -> Result<()> {
        self.check_writable()?;
        self.update_superblock(|sb| sb.index_max_entries = max_entries)
    }

    pub fn index_max_entries(&self) -> u64 {
        lock(&self.sb).index_max_entries
    }

    /// Keep about `bytes` of the chunk table resident (0 = all of it in
    /// RAM); takes effect at the next open (`strata config set
    /// table-cache-bytes`).
    pub fn set_table_cache_bytes(&self, bytes: u64) -> Result<()> {
        self.check_writable()?;
        self.update_superblock(|sb| sb.table_cache_bytes = bytes)
    }

    pub fn table_cache_bytes(&self) -> u64 {
        lock(&self.sb).table_cache_bytes
    }

    /// Keep about `bytes` of block-map pages resident (0 = all of them in
    /// RAM); takes effect at the next open (`strata config set
    /// map-cache-bytes`).
    pub fn set_map_cache_bytes(&self, bytes: u64) -> Result<()> {
        self.check_writable()?;
        self.update_superblock(|sb| sb.map_cache_bytes = bytes)
    }

    pub fn map_cache_bytes(&self) -> u64 {
        lock(&self.sb).map_cache_bytes
    }

    /// Keep up to `bytes` of packs GC retired for new packs to reuse
    /// (0 = delete them); spares beyond it are deleted now (`strata config
    /// set spare-pack-bytes`, store/spare.rs).
    pub fn set_spare_pack_bytes(&self, bytes: u64) -> Result<()> {
        self.check_writable()?;
        self.update_superblock(|sb| sb.spare_pack_bytes = bytes)?;
        self.store.set_spare_cap(bytes);
        Ok(())
    }

    pub fn spare_pack_bytes(&self) -> u64 {
        lock(&self.sb).spare_pack_bytes
    }

    /// Change a setting kept in the superblock and write it out.
    fn update_superblock(&self, change: impl FnOnce(&mut superblock::Superblock)) -> Result<()> {
        let mut sb = lock(&self.sb);
        change(&mut sb);
        sb.write(&self.path.join(Paths::SUPERBLOCK)).map_err(store_err("writing the superblock"))
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!("store {} is open read-only", self.path.display())));
        }
        if self.mode() == Mode::ReadOnly {
            let why = lock(&self.read_only_reason).clone().unwrap_or_else(|| "a fatal error".into());
            return Err(Error::ReadOnly(format!("store {} is in read-only mode: {why}", self.path.display())));
        }
        // Replication hook: a Secondary takes writes only from its peer.
        self.repl_check_writable()
    }

    /// A fatal metadata or device error: stop taking writes, and remember
    /// it across restarts (VDO's read-only mode) until `check --repair`.
    pub(crate) fn enter_read_only(&self, why: String) {
        if self.mode.swap(2, Ordering::AcqRel) == 2 {
            return;
        }
        tracing::error!(store = %self.path.display(), %why, "entering read-only mode");
        *lock(&self.read_only_reason) = Some(why);
        let mut sb = lock(&self.sb);
        sb.mode = Mode::ReadOnly;
        if let Err(e) = sb.write(&self.path.join(Paths::SUPERBLOCK)) {
            tracing::error!(%e, "could not record read-only mode in the superblock");
        }
    }

    /// Classify an error from the write path: device failures and broken
    /// metadata are fatal; a full filesystem is not (writes work again once
    /// space is freed).
    pub(crate) fn on_write_error(&self, e: Error) -> Error {
        let fatal = match &e {
            Error::NoSpace(_) | Error::Store(store::Error::NoSpace { .. }) => false,
            Error::Store(store::Error::Io { .. }) | Error::Store(store::Error::ReadOnly { .. }) => true,
            Error::Journal(journal::Error::Io { source, .. }) => source.raw_os_error() != Some(libc::ENOSPC),
            Error::Journal(journal::Error::Fatal { .. }) => true,
            Error::Io { source, .. } => source.raw_os_error() != Some(libc::ENOSPC),
            Error::ReadOnly(_) => true,
            _ => false,
        };
        if fatal {
            self.enter_read_only(e.to_string());
        }
        match e {
            Error::Store(store::Error::NoSpace { what, source }) => Error::NoSpace(format!("{what}: {source}")),
            Error::Journal(journal::Error::Io { path, source }) if source.raw_os_error() == Some(libc::ENOSPC) => {
                Error::NoSpace(format!("journal {path}: {source}"))
            }
            e => e,
        }
    }

    pub(crate) fn layer(&self, g: Guid) -> Result<Arc<Layer>> {
        rlock(&self.layers).get(&g).cloned().ok_or_else(|| {
            corrupt_store(&self.path, "layer maps", format!("layer {g} is in the catalogue but its map is not loaded"))
        })
    }

    fn disk_of(&self, name_or_guid: &str) -> Result<DiskRow> {
        self.catalog.find_disk(name_or_guid).map_err(|e| match e {
            catalog::Error::NotFound(_) => Error::NotFound(format!(
                "no volume named or with GUID {name_or_guid:?} in store {}; `strata volume list` shows the volumes",
                self.path.display()
            )),
            e => e.into(),
        })
    }

    pub fn create_volume(&self, name: &str, capacity: u64) -> Result<VolumeInfo> {
        self.check_writable()?;
        validate_name(name)?;
        let (disk, leaf) =
            self.catalog.create_disk(name, capacity, Legality::Legal).map_err(|e| self.name_err(e, name))?;
        wlock(&self.layers).insert(leaf.guid, Layer::new(leaf.guid, self.new_map()));
        self.info_for(&disk)
    }

    fn name_err(&self, e: catalog::Error, name: &str) -> Error {
        match e {
            catalog::Error::NameExists(_) => Error::AlreadyExists(format!(
                "a volume named {name:?} already exists; choose another name or remove it first"
            )),
            catalog::Error::InvalidName { name, reason } => {
                Error::InvalidArgument(format!("invalid volume name {name:?}: {reason}"))
            }
            e => e.into(),
        }
    }

    pub fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.catalog.list_disks()?.iter().map(|d| self.info_for(d)).collect()
    }

    pub fn volume_info(&self, name_or_guid: &str) -> Result<VolumeInfo> {
        let d = self.disk_of(name_or_guid)?;
        self.info_for(&d)
    }

    fn info_for(&self, d: &DiskRow) -> Result<VolumeInfo> {
        let layers = self.catalog.chain(d.guid)?;
        let allocated_bytes = match self.open_handle(d.guid) {
            Some(v) => v.allocated_bytes(),
            None => {
                let ls: Vec<Arc<Layer>> = layers.iter().map(|r| self.layer(r.guid)).collect::<Result<_>>()?;
                let guards: Vec<_> = ls.iter().map(|l| rlock(&l.map)).collect();
                let n = if guards.len() == 1 {
                    guards[0].chunk_count()
                } else {
                    chain::merge(guards.iter().map(|g| &**g)).iter().filter(|(_, e)| chain::is_chunk(*e)).count() as u64
                };
                n * format::BLOCK_SIZE_U64
            }
        };
        let mut properties = self.catalog.prop_list(d.guid)?;
        properties.remove("name");
        Ok(VolumeInfo {
            name: d.name.clone(),
            guid: d.guid,
            leaf: d.leaf,
            capacity: d.capacity,
            allocated_bytes,
            depth: layers.len(),
            created_unix: d.created_unix,
            properties,
            layers,
            jobs: self.catalog.jobs_for(d.guid)?,
        })
    }

    fn open_handle(&self, disk: Guid) -> Option<Arc<Volume>> {
        lock(&self.open).get(&disk).and_then(|w| w.upgrade())
    }

    pub fn rename_volume(&self, name_or_guid: &str, new_name: &str) -> Result<()> {
        validate_name(new_name)?;
        self.rename_volume_unchecked(name_or_guid, new_name)
    }

    /// Rename to one of the mount's own hidden names (`.strata-…`), which
    /// users cannot take: an unlinked file still open, a rename target being
    /// replaced.
    pub fn rename_volume_hidden(&self, name_or_guid: &str, new_name: &str) -> Result<()> {
        if !new_name.starts_with(RESERVED_PREFIX) {
            return Err(Error::InvalidArgument(format!("{new_name:?} is not a hidden name")));
        }
        self.rename_volume_unchecked(name_or_guid, new_name)
    }

    fn rename_volume_unchecked(&self, name_or_guid: &str, new_name: &str) -> Result<()> {
        self.check_writable()?;
        let d = self.disk_of(name_or_guid)?;
        self.catalog.rename_disk(d.guid, new_name).map_err(|e| self.name_err(e, new_name))?;
        if let Some(v) = self.open_handle(d.guid) {
            v.set_name(new_name);
        }
        Ok(())
    }

    /// Grow, or shrink when `allow_shrink` (data past the new end is dropped).
    pub fn resize_volume(&self, name_or_guid: &str, capacity: u64, allow_shrink: bool) -> Result<()> {
        self.check_writable()?;
        let d = self.disk_of(name_or_guid)?;
        if capacity < d.capacity && !allow_shrink {
            return Err(Error::InvalidArgument(format!(
                "refusing to shrink volume {:?} from {} to {} bytes: data past the new end would be lost; pass --allow-shrink if you mean it",
                d.name, d.capacity, capacity
            )));
        }
        let v = self.open_disk(&d, true)?;
        v.resize(capacity)
    }

    /// Remove a volume and all its layers. Refused while an unfinished job
    /// exists on it unless `force`.
    pub fn remove_volume(&self, name_or_guid: &str, force: bool) -> Result<()> {
        self.check_writable()?;
        let d = self.disk_of(name_or_guid)?;
        let jobs = self.catalog.jobs_for(d.guid)?;
        if !force && let Some(j) = jobs.first() {
            return Err(Error::Incomplete(format!(
                "volume {:?} has an incomplete operation ({} started at unix time {}, state {}); \
                 add --force to `strata volume remove` to clean it up",
                d.name, j.kind, j.started_unix, j.state
            )));
        }
        if let Some(v) = self.open_handle(d.guid) {
            v.mark_removed();
        }
        lock(&self.open).remove(&d.guid);
        let gone = self.catalog.remove_disk(d.guid)?;
        let mut layers = wlock(&self.layers);
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

    /// Open a volume for I/O. The same `Arc` is returned while it is open.
    pub fn open_volume(&self, name_or_guid: &str) -> Result<Arc<Volume>> {
        let d = self.disk_of(name_or_guid)?;
        self.open_disk(&d, false)
    }

    fn open_disk(&self, d: &DiskRow, allow_illegal: bool) -> Result<Arc<Volume>> {
        let mut open = lock(&self.open);
        if let Some(v) = open.get(&d.guid).and_then(|w| w.upgrade()) {
            return Ok(v);
        }
        let rows = self.catalog.chain(d.guid)?;
        if !allow_illegal && let Some(bad) = rows.iter().find(|r| r.legality == Legality::Illegal) {
            let jobs = self.catalog.jobs_for(d.guid)?;
            let what = jobs
                .first()
                .map(|j| format!("an unfinished {} job", j.kind))
                .unwrap_or_else(|| "an unfinished operation".into());
            return Err(Error::Incomplete(format!(
                "volume {:?} is not served: layer {} is ILLEGAL after {what}; \
                 run `strata volume remove --force {}` to discard it",
                d.name, bad.guid, d.name
            )));
        }
        let layers: Vec<Arc<Layer>> = rows.iter().map(|r| self.layer(r.guid)).collect::<Result<_>>()?;
        let engine = self.me.upgrade().ok_or_else(|| Error::ReadOnly("the store is closing".into()))?;
        let v = Arc::new(Volume::new(engine, d.guid, d.name.clone(), d.capacity, layers, false));
        open.insert(d.guid, Arc::downgrade(&v));
        Ok(v)
    }

    fn disk_guid_prop(&self, name_or_guid: &str) -> Result<Guid> {
        Ok(self.disk_of(name_or_guid)?.guid)
    }

    /// Properties of a volume (LINSTOR Aux-style key/value pairs). The key
    /// `name` is reserved (use `rename_volume`).
    pub fn properties(&self, name_or_guid: &str) -> Result<BTreeMap<String, String>> {
        let mut p = self.catalog.prop_list(self.disk_guid_prop(name_or_guid)?)?;
        p.remove("name");
        Ok(p)
    }

    pub fn get_property(&self, name_or_guid: &str, key: &str) -> Result<Option<String>> {
        Ok(self.catalog.prop_get(self.disk_guid_prop(name_or_guid)?, key)?)
    }

    pub fn set_property(&self, name_or_guid: &str, key: &str, value: &str) -> Result<()> {
        self.check_writable()?;
        let g = self.disk_guid_prop(name_or_guid)?;
        self.catalog.prop_set(g, key, value).map_err(prop_err)
    }

    /// Set (Some) and unset (None) several properties in one transaction.
    pub fn set_properties(&self, name_or_guid: &str, changes: &[(&str, Option<&str>)]) -> Result<()> {
        self.check_writable()?;
        let g = self.disk_guid_prop(name_or_guid)?;
        self.catalog.prop_update_many(g, changes).map_err(prop_err)
    }

    /// Returns whether the key existed.
    pub fn unset_property(&self, name_or_guid: &str, key: &str) -> Result<bool> {
        self.check_writable()?;
        let g = self.disk_guid_prop(name_or_guid)?;
        self.catalog.prop_unset(g, key).map_err(prop_err)
    }

    /// Import a raw image file as a new volume (sparse: zero blocks are not
    /// stored). `progress` is called with (bytes done, bytes total). The
    /// volume is ILLEGAL with a job record until the import completes.
    pub fn import_raw(&self, file: &Path, name: &str, progress: &mut dyn FnMut(u64, u64)) -> Result<VolumeInfo> {
        self.check_writable()?;
        validate_name(name)?;
        let mut f = File::open(file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound(format!("cannot import {}: no such file", file.display()))
            } else {
                Error::io(format!("opening {}", file.display()), e)
            }
        })?;
        let size = f.seek(SeekFrom::End(0)).map_err(|e| Error::io(format!("sizing {}", file.display()), e))?;
        let (disk, leaf) =
            self.catalog.create_disk(name, size, Legality::Illegal).map_err(|e| self.name_err(e, name))?;
        wlock(&self.layers).insert(leaf.guid, Layer::new(leaf.guid, self.new_map()));
        let job =
            self.catalog.begin_job("import", disk.guid, &format!("{{\"source\":{:?}}}", file.display().to_string()))?;
        let res = (|| -> Result<()> {
            let v = self.open_disk(&disk, true)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            while off < size {
                // Skip holes cheaply where the filesystem reports them.
                let data = seek_data(&f, off).unwrap_or(off);
                if data >= size {
                    break;
                }
                if data > off {
                    off = data - data % format::BLOCK_SIZE_U64;
                    progress(off, size);
                    continue;
                }
                let n = ((size - off) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..n], off)
                    .map_err(|e| Error::io(format!("reading {} at {off}", file.display()), e))?;
                // Write only the non-zero runs: zero blocks are holes anyway.
                let mut i = 0usize;
                while i < n {
                    let end = (i + format::BLOCK_SIZE).min(n);
                    if format::is_zero(&buf[i..end]) {
                        i = end;
                        continue;
                    }
                    let mut j = end;
                    while j < n {
                        let e2 = (j + format::BLOCK_SIZE).min(n);
                        if format::is_zero(&buf[j..e2]) {
                            break;
                        }
                        j = e2;
                    }
                    v.write_at(&buf[i..j], off + i as u64)?;
                    i = j;
                }
                off += n as u64;
                progress(off, size);
            }
            progress(size, size);
            v.flush()?;
            Ok(())
        })();
        if let Err(e) = res {
            // A failed import leaves nothing behind; a crash leaves the job
            // record and the ILLEGAL layer for `volume remove --force`.
            if let Err(e2) = self.remove_volume(&disk.guid.to_string(), true) {
                tracing::error!(%e2, "cleaning up the failed import");
            }
            return Err(e);
        }
        self.catalog.set_legality(leaf.guid, Legality::Legal)?;
        self.catalog.finish_job(job)?;
        self.info_for(&self.catalog.disk(disk.guid)?)
    }

    /// Export a volume, or a snapshot as `VOL@SNAP`, to a raw file, sparse
    /// where it has zeros.
    pub fn export_raw(&self, name_or_guid: &str, file: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let v = self.open_for_export(name_or_guid)?;
        let cap = v.capacity();
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(file)
            .map_err(|e| Error::io(format!("creating {}", file.display()), e))?;
        out.set_len(cap).map_err(|e| Error::io(format!("sizing {}", file.display()), e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < cap {
            let Some(d) = v.next_data(off) else { break };
            let hole = v.next_hole(d);
            let mut pos = d;
            while pos < hole {
                let n = ((hole - pos) as usize).min(buf.len());
                v.read_at(&mut buf[..n], pos)?;
                let mut i = 0;
                while i < n {
                    let end = (i + format::BLOCK_SIZE).min(n);
                    if !format::is_zero(&buf[i..end]) {
                        out.write_all_at(&buf[i..end], pos + i as u64)
                            .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
                    }
                    i = end;
                }
                pos += n as u64;
                progress(pos, cap);
            }
            off = hole;
        }
        out.sync_all().map_err(|e| Error::io(format!("syncing {}", file.display()), e))?;
        progress(cap, cap);
        Ok(())
    }

    pub fn status(&self) -> Result<StoreStatus> {
        let sb = lock(&self.sb).clone();
        let s = &self.store.stats;
        let u = self.store.usage();
        let (refs, live, stored, chunk_count, unreferenced) =
            (u.total_refs, u.live_chunks, u.live_stored_bytes, u.chunks, u.unreferenced_chunks);
        let (pack_files, pack_bytes) = self.store.pack_bytes();
        let (spare_packs, spare_pack_bytes) = self.store.spare_usage();
        let dir_bytes = |d: &str| -> u64 {
            std::fs::read_dir(self.path.join(d))
                .map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
                .unwrap_or(0)
        };
        let map_bytes = dir_bytes(Paths::MAPS);
        let journal_bytes = self.journal.size_bytes();
        let catalog_bytes = self.catalog.size_bytes();
        let chunks_bytes = std::fs::metadata(self.path.join(Paths::CHUNKS)).map(|m| m.len()).unwrap_or(0);
        let known = !self.store.is_recovering();
        let logical = refs * format::BLOCK_SIZE_U64;
        let headers = live * crate::store::pack::RECORD_HEADER_LEN as u64;
        let metadata = map_bytes + journal_bytes + catalog_bytes + chunks_bytes + headers;
        let dead = pack_bytes.saturating_sub(stored + headers);
        let physical = pack_bytes + map_bytes + journal_bytes + catalog_bytes + chunks_bytes;
        let (fs_free, fs_total) = statvfs(&self.path);
        let disks = self.catalog.list_disks()?.len() as u64;
        Ok(StoreStatus {
            path: self.path.clone(),
            store_uuid: sb.store_uuid,
            format_version: sb.format_version,
            operating_mode: self.mode(),
            write_policy: sb.write_policy,
            effective_write_policy: self.effective_write_policy(),
            compression: self.compression(),
            packs_awaiting_packer: self.store.deferred_pack_count(),
            volumes: disks,
            layers: rlock(&self.layers).len() as u64,
            logical_bytes_used: known.then_some(logical),
            physical_bytes_used: physical,
            data_bytes_stored: known.then_some(stored),
            metadata_bytes: metadata,
            dead_pack_bytes: known.then_some(dead),
            saving_percent: (known && logical > 0).then(|| (logical as f64 - physical as f64) * 100.0 / logical as f64),
            dedup_ratio: (known && live > 0).then(|| refs as f64 / live as f64),
            compression_ratio: (known && stored > 0).then(|| (live * format::BLOCK_SIZE_U64) as f64 / stored as f64),
            chunk_count,
            unreferenced_chunks: known.then_some(unreferenced),
            index_entries: self.store.index_entries(),
            index_memory_bytes: self.store.index_memory_bytes(),
            pack_files,
            spare_packs,
            spare_pack_bytes,
            filesystem_free_bytes: fs_free,
            filesystem_total_bytes: fs_total,
            write_policy_reason: lock(&self.policy).1.clone(),
            read_only_reason: lock(&self.read_only_reason).clone(),
            journal_bytes,
            map_bytes,
            catalog_bytes,
            chunk_table_bytes: chunks_bytes,
            record_header_bytes: headers,
            dedup_hits: s.dedup_hits.load(Ordering::Relaxed),
            dedup_false_matches: s.dedup_false_matches.load(Ordering::Relaxed),
        })
    }

    /// Make every acknowledged write durable (the commit protocol).
    pub fn flush(&self) -> Result<()> {
        if self.read_only || self.effective_write_policy() == WritePolicy::AsyncUnsafe {
            return Ok(());
        }
        self.make_durable(self.journal.last_seq())?;
        // Replication hook (protocol C): wait for the peer's durable ack.
        self.repl_flush()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(store = %self.path.display(), %e, "closing the store failed; it will be recovered at the next open");
        }
    }
}

fn prop_err(e: catalog::Error) -> Error {
    match e {
        catalog::Error::ReservedKey(k) => Error::InvalidArgument(format!(
            "the property {k:?} is reserved; use `strata volume rename` to change a name"
        )),
        e => e.into(),
    }
}

/// lseek(SEEK_DATA); None when the filesystem cannot tell.
fn seek_data(f: &File, off: u64) -> Option<u64> {
    // SAFETY: lseek on a valid fd owned by `f`; no memory is touched.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        // ENXIO: no data past `off` at all.
        return if e.raw_os_error() == Some(libc::ENXIO) { Some(u64::MAX) } else { None };
    }
    Some(r as u64)
}

pub use crate::format::statvfs;

fn take_lock(path: &Path) -> Result<File> {
    let lp = path.join(Paths::LOCK);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lp)
        .map_err(store_err("opening the store lock"))?;
    // SAFETY: flock on a valid fd owned by `f`.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = f.read_to_string(&mut holder);
        return Err(Error::Busy { path: path.display().to_string(), detail: format!("pid {}", holder.trim()) });
    }
    let _ = f.set_len(0);
    let _ = f.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0);
    Ok(f)
}
