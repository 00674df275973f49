//! The content-addressed chunk store: 4 KiB blocks, deduplicated,
//! compressed, checksummed, appended to pack files.
//!
//! Owns `STORE/packs/*.pack` and the in-memory chunk table and dedup index
//! (the table is checkpointed to `STORE/chunks.tbl` by the engine).
//!
//! Write path ([`ChunkStore::put_blocks`]): an all-zero block is never
//! stored (the caller maps it to the zero sentinel). Otherwise the block's
//! MurmurHash3 x64-128 signature (VDO's hash and seed) is looked up in the
//! dedup index; a hit is *confirmed* by reading the candidate record's
//! header and comparing BLAKE3 content ids before the chunk is shared, so
//! unequal data is never shared. A miss is zstd-compressed (kept raw when
//! that saves less than 1/16 of the block), appended to the active pack with
//! its header, and given a new chunk id.
//!
//! Read path ([`ChunkStore::get`]): one `pread` of header + payload, header
//! checks, decompression, then BLAKE3 of the result against the content id.
//! A mismatch is `Error::Corrupt`, never data.
//!
//! New chunks enter the dedup index only when the caller publishes them
//! ([`ChunkStore::publish`]) after their journal record is appended, so no
//! other writer can reference a chunk whose placement is not yet in the
//! journal ahead of its own record.
//!
//! Depends on: `format`, `guid`, `journal` (for `ChunkPut`). Knows nothing
//! of layers or volumes. Lock order: active pack → packs map; index shards
//! and table segments are leaf locks.

mod appender;
pub mod index;
mod join;
pub mod murmur;
pub mod pack;
pub mod replica;
pub mod spare;
pub mod table;

pub use join::join;

use crate::fault::{self, Faults, Point};
use crate::format::{self, BLOCK_SIZE};
use crate::guid::Guid;
use crate::journal::ChunkPut;
use pack::{FLAG_DEFERRED, FLAG_ZSTD, PACK_HEADER_LEN, RECORD_HEADER_LEN, RecordHeader};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
pub use table::{ChunkLoc, ChunkTable, FIRST_CHUNK_ID};

/// VDO's MurmurHash3 seed (kvdo `vio-write.c`).
pub const MURMUR_SEED: u32 = 0x62ea_60be;
/// A pack is closed and a new one started past this size.
pub const PACK_TARGET_BYTES: u64 = 128 << 20;
/// Default zstd level. Measured on 4 KiB blocks of real binaries (/usr):
/// level 1 gives 443 MB/s per core at ratio 1.84, level 3 370 MB/s at 1.86
/// (BENCHMARKS.md); levels ≥ 9 cost 5–50× CPU for a few percent.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("no space left writing {what}: {source}")]
    NoSpace {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("read-only filesystem writing {what}: {source}")]
    ReadOnly {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("corrupt chunk {chunk_id} (pack {pack_id}, offset {offset}): {detail}")]
    Corrupt { chunk_id: u64, pack_id: u32, offset: u64, detail: String },
    #[error("chunk {0} is referenced but does not exist")]
    MissingChunk(u64),
    #[error("{path}: {detail}")]
    BadFile { path: String, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

fn classify(what: String, source: io::Error) -> Error {
    match source.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::NoSpace { what, source },
        Some(libc::EROFS) => Error::ReadOnly { what, source },
        _ => Error::Io { what, source },
    }
}

/// The dedup signature of a block: low 64 bits of MurmurHash3 x64-128.
pub fn murmur64(data: &[u8]) -> u64 {
    murmur::x64_128(data, MURMUR_SEED) as u64
}

/// What the chunk table holds.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub chunks: u64,
    pub total_refs: u64,
    pub live_chunks: u64,
    pub live_stored_bytes: u64,
    pub unreferenced_chunks: u64,
}

/// How full a pack is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackUsage {
    pub pack_id: u32,
    pub file_bytes: u64,
    /// Bytes of records of referenced chunks.
    pub live_bytes: u64,
    pub live_chunks: u64,
    pub dead_chunks: u64,
}

/// Outcome of storing one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// All zeros: nothing stored.
    Zero,
    /// Shared with an existing chunk (one reference taken).
    Dedup(u64),
    /// Stored as a new chunk (one reference taken); journal `ChunkPut` and
    /// then [`ChunkStore::publish`] it.
    New(ChunkPut),
}

impl Put {
    pub fn chunk_id(&self) -> Option<u64> {
        match self {
            Put::Zero => None,
            Put::Dedup(id) => Some(*id),
            Put::New(p) => Some(p.chunk_id),
        }
    }
}

use appender::ActivePack;

/// Event counters for `status`. Usage (references, live chunks, stored
/// bytes) is not counted here but computed from the table on demand
/// ([`ChunkStore::usage`]): no hot-path atomics, and nothing to get out of
/// step while recovery rebuilds the reference counts.
#[derive(Default)]
pub struct Stats {
    pub dedup_hits: AtomicU64,
    pub dedup_false_matches: AtomicU64,
    pub new_chunks: AtomicU64,
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress(level: i32, src: &[u8], dst: &mut Vec<u8>) -> Option<usize> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, comp) = c.as_mut()?;
        let start = dst.len();
        // Only worth it if it saves at least 1/16 of the block.
        let limit = BLOCK_SIZE - BLOCK_SIZE / 16;
        dst.resize(start + limit, 0);
        match comp.compress_to_buffer(src, &mut dst[start..]) {
            Ok(n) => {
                dst.truncate(start + n);
                Some(n)
            }
            Err(_) => {
                dst.truncate(start);
                None
            }
        }
    })
}

fn decompress(src: &[u8], out: &mut [u8]) -> std::result::Result<usize, String> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?);
        }
        d.as_mut().expect("set above").decompress_to_buffer(src, out).map_err(|e| e.to_string())
    })
}

pub struct ChunkStore {
    dir: PathBuf,
    store_uuid: Guid,
    level: i32,
    packs: RwLock<HashMap<u32, Arc<File>>>,
    active: Mutex<ActivePack>,
    /// Packs written since the last sync (including the active one).
    unsynced: Mutex<Vec<(u32, Arc<File>)>>,
    table: ChunkTable,
    index: index::DedupIndex,
    faults: Arc<Faults>,
    /// Refcounts are being rebuilt: counts are deltas until it finishes.
    recovering: AtomicBool,
    next_id: AtomicU64,
    /// New unique blocks are stored raw with `FLAG_DEFERRED` and compressed
    /// later by the packer (`volume::packer`) instead of inline.
    deferred: AtomicBool,
    /// Which packs hold deferred records: `.0` = packs a deferred record
    /// was appended to since open (known), `.1` = packs found at open that
    /// nobody has examined yet.
    maybe_deferred: Mutex<(BTreeSet<u32>, BTreeSet<u32>)>,
    /// The pack last added to `maybe_deferred.0` by a write.
    deferred_marked: AtomicU32,
    /// Requests (hashing writes, verifying reads) in flight now.
    in_flight: AtomicUsize,
    /// Retired packs kept for their disk space (`spare.rs`).
    spares: spare::SparePool,
    /// Chunks whose last reference went since the last dead-pack reclaim.
    dead_since_reclaim: AtomicU64,
    pub stats: Stats,
}

/// Requests of at least this many blocks may be split over two threads.
const PARALLEL_MIN_BLOCKS: usize = 64;

/// A request counted as in flight (see [`ChunkStore::busy`]).
pub struct Busy<'a> {
    count: &'a AtomicUsize,
    split: bool,
}

impl Busy<'_> {
    /// Large enough, and a CPU is free: worth a second thread.
    pub fn split(&self) -> bool {
        self.split
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

static CPUS: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));

/// A chunk record read (and, if it was deferred, compressed) for a move to
/// the active pack by GC or the packer; [`ChunkStore::commit_move`] places it.
pub struct Moved {
    from: ChunkLoc,
    record: Vec<u8>,
    /// The record was deferred and is now compressed (or found incompressible).
    pub packed: bool,
}

impl ChunkStore {
    /// Create the packs directory with its first pack.
    pub fn create(dir: &Path, store_uuid: Guid) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| classify(format!("creating {}", dir.display()), e))?;
        Self::new_pack_file(dir, 1, store_uuid, None)?;
        Ok(())
    }

    /// Create pack `id` (header only, durable, its directory entry too),
    /// in a spare's space when `spares` has one.
    fn new_pack_file(dir: &Path, id: u32, store_uuid: Guid, spares: Option<&spare::SparePool>) -> Result<File> {
        let path = dir.join(pack::pack_file_name(id));
        let header = pack::encode_pack_header(id, store_uuid);
        if let Some(f) = spares.and_then(|s| s.take(&path, &header)) {
            return Ok(f);
        }
        let what = || format!("pack {}", path.display());
        let f =
            OpenOptions::new().read(true).write(true).create_new(true).open(&path).map_err(|e| classify(what(), e))?;
        f.write_all_at(&header, 0).map_err(|e| classify(what(), e))?;
        f.sync_all().map_err(|e| classify(what(), e))?;
        format::fsync_dir(dir).map_err(|e| classify(format!("directory {}", dir.display()), e))?;
        Ok(f)
    }

    /// Open the packs directory. `image` is the checkpointed chunk table.
    /// The highest-numbered pack becomes the active one; its length is
    /// truncated back to `committed_end` when the caller knows it (bytes past
    /// the last referenced record are an unfinished append).
    /// `index_max_entries`: 0 = unbounded dedup index, else a window of
    /// about that many newest entries (see `index`). `spare_bytes`: how
    /// much retired pack space to keep for reuse (`spare.rs`).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: &Path,
        store_uuid: Guid,
        image: table::TableImage,
        level: i32,
        index_max_entries: u64,
        spare_bytes: u64,
        faults: Arc<Faults>,
        table: ChunkTable,
    ) -> Result<ChunkStore> {
        let mut packs = HashMap::new();
        let mut max_id = 0u32;
        let rd = std::fs::read_dir(dir).map_err(|e| classify(format!("reading {}", dir.display()), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| classify(format!("reading {}", dir.display()), e))?;
            let name = ent.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".pack")) else { continue };
            let Ok(id) = u32::from_str_radix(hex, 16) else { continue };
            let path = ent.path();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| classify(format!("pack {}", path.display()), e))?;
            let mut hdr = [0u8; PACK_HEADER_LEN as usize];
            let n = f.read_at(&mut hdr, 0).map_err(|e| classify(format!("pack {}", path.display()), e))?;
            let got = pack::decode_pack_header(&hdr[..n], store_uuid)
                .map_err(|detail| Error::BadFile { path: path.display().to_string(), detail })?;
            if got != id {
                return Err(Error::BadFile {
                    path: path.display().to_string(),
                    detail: format!("header says pack {got}"),
                });
            }
            max_id = max_id.max(id);
            packs.insert(id, Arc::new(f));
        }
        if max_id == 0 {
            let f = Self::new_pack_file(dir, 1, store_uuid, None)?;
            packs.insert(1, Arc::new(f));
            max_id = 1;
        }
        let active_file = packs[&max_id].clone();
        let len = active_file.metadata().map_err(|e| classify("pack metadata".into(), e))?.len();
        let active_path = dir.join(pack::pack_file_name(max_id));
        let active = ActivePack::new(max_id, active_file, &active_path, len)
            .map_err(|e| classify(format!("pack {}", active_path.display()), e))?;
        let store = ChunkStore {
            dir: dir.to_path_buf(),
            store_uuid,
            level,
            packs: RwLock::new(packs),
            active: Mutex::new(active),
            unsynced: Mutex::new(Vec::new()),
            table,
            index: index::DedupIndex::new(index_max_entries),
            faults,
            recovering: AtomicBool::new(false),
            next_id: AtomicU64::new(image.next_id.max(FIRST_CHUNK_ID)),
            deferred: AtomicBool::new(false),
            maybe_deferred: Mutex::new((BTreeSet::new(), BTreeSet::new())),
            in_flight: AtomicUsize::new(0),
            deferred_marked: AtomicU32::new(0),
            spares: spare::SparePool::load(dir, spare_bytes)
                .map_err(|e| classify(format!("reading spare packs in {}", dir.display()), e))?,
            dead_since_reclaim: AtomicU64::new(0),
            stats: Stats::default(),
        };
        store.maybe_deferred.lock().unwrap_or_else(|p| p.into_inner()).1 =
            store.packs.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        for (id, loc) in image.entries {
            store.table.insert(id, loc);
        }
        Ok(store)
    }

    pub fn table(&self) -> &ChunkTable {
        &self.table
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.load(Ordering::Acquire)
    }

    /// Replay a journaled placement.
    pub fn apply_put(&self, p: &ChunkPut) {
        self.table.insert(
            p.chunk_id,
            ChunkLoc { pack_id: p.pack_id, offset: p.offset, stored_len: p.stored_len, murmur: p.murmur },
        );
        self.next_id.fetch_max(p.chunk_id + 1, Ordering::AcqRel);
    }

    /// Replay a journaled free.
    pub fn apply_free(&self, chunk_id: u64) {
        self.table.remove(chunk_id);
    }

    /// (Re)build the dedup index from the chunk table (oldest first, so a
    /// bounded index keeps the newest).
    pub fn rebuild_index(&self) {
        self.index.clear();
        self.table.for_each(|id, loc, _| self.index.insert(loc.murmur, id));
    }

    /// Current usage, from the table: one pass over every chunk.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        self.table.for_each(|_, loc, r| {
            u.chunks += 1;
            u.total_refs += r as u64;
            if r > 0 {
                u.live_chunks += 1;
                u.live_stored_bytes += loc.stored_len as u64;
            } else {
                u.unreferenced_chunks += 1;
            }
        });
        u
    }

    pub fn index_entries(&self) -> u64 {
        self.index.entries()
    }

    /// Bytes of RAM the dedup index holds.
    pub fn index_memory_bytes(&self) -> u64 {
        self.index.memory_bytes()
    }

    fn pack_file(&self, id: u32) -> Option<Arc<File>> {
        self.packs.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Refcounts are about to be rebuilt in the background (see
    /// `volume::recover`); until [`ChunkStore::end_recovery`] they are
    /// deltas and the live counters are unknown.
    pub fn begin_recovery(&self) {
        self.recovering.store(true, Ordering::Release);
    }

    pub fn end_recovery(&self) {
        self.recovering.store(false, Ordering::Release);
    }

    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    /// Add a reference to an existing chunk (replay / derived counts).
    pub fn incref(&self, id: u64) -> Result<()> {
        match self.table.incref(id) {
            None => Err(Error::MissingChunk(id)),
            Some(_) => Ok(()),
        }
    }

    /// Drop a reference. A chunk at zero references stays readable and
    /// dedupable until GC reclaims it.
    pub fn decref(&self, id: u64) {
        if self.is_recovering() {
            self.table.decref_wrapping(id);
            return;
        }
        match self.table.decref(id) {
            Some(0) => tracing::error!(chunk = id, "reference count underflow"),
            Some(1) => {
                self.dead_since_reclaim.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Have enough chunks died since the last reclaim that whole packs may
    /// be dead, and is there room among the spares for them? (The engine
    /// then frees the dead packs at once, `Engine::reclaim_dead_packs`, so
    /// sustained overwrites write into the space of the data they replaced.)
    /// The bar — four packs' worth of chunks, or 1/32 of all chunk ids —
    /// bounds the cost of the table scans and checkpoints it triggers.
    pub fn reclaim_due(&self) -> bool {
        let per_pack = PACK_TARGET_BYTES / (RECORD_HEADER_LEN + BLOCK_SIZE) as u64;
        let dead = self.dead_since_reclaim.load(Ordering::Relaxed);
        dead >= (4 * per_pack).max(self.next_id() / 32) && self.spares.room() >= PACK_TARGET_BYTES
    }

    /// A reclaim is starting: count anew.
    pub fn reclaim_started(&self) {
        self.dead_since_reclaim.store(0, Ordering::Relaxed);
    }

    /// Try to share an existing chunk with this content.
    /// The dedup index's candidate for a signature, and where it is.
    fn candidate(&self, murmur: u64) -> Option<(u64, ChunkLoc)> {
        let cand = self.index.get(murmur)?;
        Some((cand, self.table.get(cand)?))
    }

    /// Ask the kernel to read, in the background, the pack ranges holding
    /// the headers `dedup` is about to confirm. Records written with
    /// O_DIRECT are not in the page cache, so re-ingesting data the store
    /// already holds would otherwise read one 4 KiB page from the disk per
    /// block, one at a time (334–1486 MB/s between runs, against 1.4–1.8 GB/s
    /// with this). Candidates of one request are mostly consecutive
    /// records: each run in one pack becomes one range.
    fn prefetch_headers(&self, cands: &[Option<(u64, ChunkLoc)>]) {
        const GAP: u64 = 256 << 10;
        const LOOKAHEAD: u64 = 4 << 20;
        let mut locs: Vec<&ChunkLoc> = cands.iter().flatten().map(|(_, l)| l).collect();
        if locs.len() < 2 {
            return;
        }
        locs.sort_by_key(|l| (l.pack_id, l.offset));
        let mut i = 0;
        while i < locs.len() {
            let (pack, start) = (locs[i].pack_id, locs[i].offset);
            let mut end = start + RECORD_HEADER_LEN as u64;
            let mut j = i + 1;
            while j < locs.len() && locs[j].pack_id == pack && locs[j].offset <= end + GAP {
                end = locs[j].offset + RECORD_HEADER_LEN as u64;
                j += 1;
            }
            // A long run is a stream of duplicates: read on ahead of it, so
            // the next request's headers are on their way too.
            if j - i >= 32 {
                end += LOOKAHEAD;
            }
            if let Some(f) = self.pack_file(pack) {
                use std::os::fd::AsRawFd;
                // SAFETY: advice on an open file descriptor we own; it reads
                // or changes nothing.
                unsafe {
                    libc::posix_fadvise(f.as_raw_fd(), start as i64, (end - start) as i64, libc::POSIX_FADV_WILLNEED)
                };
            }
            i = j;
        }
    }

    fn dedup(&self, cand: Option<(u64, ChunkLoc)>, content: &blake3::Hash) -> Result<Option<u64>> {
        let Some((cand, loc)) = cand else { return Ok(None) };
        // Confirm: the candidate's BLAKE3 content id must equal ours.
        let file = self.pack_file(loc.pack_id).ok_or(Error::MissingChunk(cand))?;
        let mut hdr = [0u8; RECORD_HEADER_LEN];
        fault::read_exact_at(&self.faults, Point::PackRead, &file, &mut hdr, loc.offset)
            .map_err(|e| classify(format!("reading pack {}", loc.pack_id), e))?;
        let h = match pack::decode_record_header(&hdr) {
            Ok(h) if h.chunk_id == cand => h,
            _ => {
                // A damaged candidate is never shared; reads will report it.
                self.stats.dedup_false_matches.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
        };
        if h.content != *content.as_bytes() {
            self.stats.dedup_false_matches.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        // GC may have claimed it meanwhile: then store a new copy.
        if self.table.incref_live(cand).is_none() {
            return Ok(None);
        }
        self.stats.dedup_hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(cand))
    }

    /// Store whole 4 KiB blocks. New chunks of one call are appended with a
    /// single write. Each non-zero result holds one reference.
    pub fn put_blocks(&self, blocks: &[&[u8]]) -> Result<Vec<Put>> {
        let mut out = Vec::with_capacity(blocks.len());
        const RAW_RECORD: usize = RECORD_HEADER_LEN + BLOCK_SIZE;
        let deferred = self.deferred.load(Ordering::Relaxed);
        // Inline compression: the records, built here. Deferred: only the
        // headers; each record is assembled in the pack's staging buffer,
        // so the block is copied once (the append below).
        let mut buf: Vec<u8> = Vec::with_capacity(if deferred { 0 } else { blocks.len() * RAW_RECORD });
        let mut headers: Vec<u8> = Vec::with_capacity(if deferred { blocks.len() * RECORD_HEADER_LEN } else { 0 });
        let mut raw: Vec<&[u8]> = Vec::new();
        // (index in out, offset in the appended bytes, stored_len, murmur)
        let mut pending: Vec<(usize, usize, u32, u64)> = Vec::new();
        let sigs = self.signatures(blocks);
        let cands: Vec<Option<(u64, ChunkLoc)>> =
            sigs.iter().map(|s| s.as_ref().and_then(|(m, _)| self.candidate(*m))).collect();
        self.prefetch_headers(&cands);
        for ((b, sig), cand) in blocks.iter().zip(sigs).zip(cands) {
            debug_assert_eq!(b.len(), BLOCK_SIZE);
            let Some((murmur, content)) = sig else {
                out.push(Put::Zero);
                continue;
            };
            if let Some(id) = self.dedup(cand, &content)? {
                out.push(Put::Dedup(id));
                continue;
            }
            let id = self.next_id.fetch_add(1, Ordering::AcqRel);
            if deferred {
                let h = RecordHeader {
                    flags: FLAG_DEFERRED,
                    chunk_id: id,
                    stored_len: BLOCK_SIZE as u32,
                    content: *content.as_bytes(),
                };
                pack::encode_record_header(&h, &mut headers);
                pending.push((out.len(), raw.len() * RAW_RECORD, BLOCK_SIZE as u32, murmur));
                raw.push(b);
                out.push(Put::New(ChunkPut {
                    chunk_id: id,
                    pack_id: 0,
                    offset: 0,
                    stored_len: BLOCK_SIZE as u32,
                    murmur,
                }));
                continue;
            }
            let rec_start = buf.len();
            buf.resize(rec_start + RECORD_HEADER_LEN, 0);
            let (flags, stored_len) = match compress(self.level, b, &mut buf) {
                Some(n) => (FLAG_ZSTD, n),
                None => {
                    buf.extend_from_slice(b);
                    (0, BLOCK_SIZE)
                }
            };
            let mut hdr = Vec::with_capacity(RECORD_HEADER_LEN);
            pack::encode_record_header(
                &RecordHeader { flags, chunk_id: id, stored_len: stored_len as u32, content: *content.as_bytes() },
                &mut hdr,
            );
            buf[rec_start..rec_start + RECORD_HEADER_LEN].copy_from_slice(&hdr);
            pending.push((out.len(), rec_start, stored_len as u32, murmur));
            out.push(Put::New(ChunkPut { chunk_id: id, pack_id: 0, offset: 0, stored_len: stored_len as u32, murmur }));
        }
        if pending.is_empty() {
            return Ok(out);
        }
        let appended = if deferred {
            self.append_with(raw.len() * RAW_RECORD, |dst| {
                for ((rec, hdr), b) in
                    dst.chunks_exact_mut(RAW_RECORD).zip(headers.chunks_exact(RECORD_HEADER_LEN)).zip(&raw)
                {
                    rec[..RECORD_HEADER_LEN].copy_from_slice(hdr);
                    rec[RECORD_HEADER_LEN..].copy_from_slice(b);
                }
            })
        } else {
            self.append(&buf)
        };
        let (pack_id, base) = match appended {
            Ok(v) => {
                // Once per pack, not once per write.
                if deferred && self.deferred_marked.swap(v.0, Ordering::Relaxed) != v.0 {
                    self.maybe_deferred.lock().unwrap_or_else(|p| p.into_inner()).0.insert(v.0);
                }
                v
            }
            Err(e) => {
                // Give back the references taken by dedup hits.
                for p in &out {
                    if let Put::Dedup(id) = p {
                        self.decref(*id);
                    }
                }
                return Err(e);
            }
        };
        for (i, off, stored_len, murmur) in pending {
            let put = ChunkPut {
                chunk_id: out[i].chunk_id().expect("new"),
                pack_id,
                offset: base + off as u64,
                stored_len,
                murmur,
            };
            self.table.insert(put.chunk_id, ChunkLoc { pack_id, offset: put.offset, stored_len, murmur });
            out[i] = Put::New(put);
            self.incref(put.chunk_id)?;
            self.stats.new_chunks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(out)
    }

    /// The dedup signature and content id of each block (None: all zeros).
    /// A large request is hashed on two threads while fewer writers than
    /// CPUs are busy: one 1 MiB write at queue depth 1 would otherwise
    /// leave the other CPU idle.
    fn signatures(&self, blocks: &[&[u8]]) -> Vec<Option<(u64, blake3::Hash)>> {
        // Zero blocks get None; the others are hashed as one batch, and
        // each signature's index line is prefetched for `dedup`.
        let sigs = |part: &[&[u8]]| -> Vec<Option<(u64, blake3::Hash)>> {
            let zero: Vec<bool> = part.iter().map(|b| format::is_zero(b)).collect();
            let data: Vec<&[u8]> = part.iter().zip(&zero).filter(|(_, z)| !**z).map(|(b, _)| *b).collect();
            let murmurs = murmur::x64_128_lo_many(&data, MURMUR_SEED);
            for m in &murmurs {
                self.index.prefetch(*m);
            }
            let mut ids = murmurs.into_iter().zip(crate::hash::hash_all(&data));
            zero.iter().map(|z| if *z { None } else { ids.next() }).collect()
        };
        let busy = self.busy(blocks.len());
        if busy.split() {
            let (a, b) = blocks.split_at(blocks.len() / 2);
            let (mut v, w) = join(|| sigs(a), || sigs(b));
            v.extend(w);
            v
        } else {
            sigs(blocks)
        }
    }

    /// Count a request of `blocks` blocks as in flight until the guard is
    /// dropped; [`Busy::split`] says whether to use a second thread for it.
    pub fn busy(&self, blocks: usize) -> Busy<'_> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        Busy { count: &self.in_flight, split: blocks >= PARALLEL_MIN_BLOCKS && n < *CPUS }
    }

    /// Make new chunks findable by dedup (after their journal record).
    pub fn publish(&self, puts: &[Put]) {
        for p in puts {
            if let Put::New(c) = p {
                self.index.insert(c.murmur, c.chunk_id);
            }
        }
    }

    /// Make a new, empty pack the active one; returns the old one (already
    /// in `unsynced` if it was ever appended to), its padding trimmed.
    fn start_pack(&self, a: &mut ActivePack) -> Result<ActivePack> {
        let id = a.id + 1;
        let path = self.dir.join(pack::pack_file_name(id));
        let f = Arc::new(Self::new_pack_file(&self.dir, id, self.store_uuid, Some(&self.spares))?);
        let new = ActivePack::new(id, f.clone(), &path, PACK_HEADER_LEN)
            .map_err(|e| classify(format!("pack {}", path.display()), e))?;
        self.packs.write().unwrap_or_else(|p| p.into_inner()).insert(id, f);
        let old = std::mem::replace(a, new);
        old.trim_padding();
        Ok(old)
    }

    /// Append bytes to the active pack; returns (pack id, offset).
    fn append(&self, bytes: &[u8]) -> Result<(u32, u64)> {
        self.append_with(bytes.len(), |dst| dst.copy_from_slice(bytes))
    }

    /// Append `len` bytes written by `fill` (see [`ActivePack::append_with`]).
    /// Out of space with spare packs kept: they are released (they are
    /// only cached free space) and the append is tried once more.
    fn append_with(&self, len: usize, mut fill: impl FnMut(&mut [u8])) -> Result<(u32, u64)> {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if a.len + len as u64 > PACK_TARGET_BYTES && a.len > PACK_HEADER_LEN {
            self.start_pack(&mut a)?;
        }
        let off = a.len;
        let mut r = a.append_with(&self.faults, len, &mut fill);
        if let Err(e) = &r
            && e.raw_os_error() == Some(libc::ENOSPC)
            && self.spares.release_all() > 0
        {
            let _ = a.file.set_len(off);
            r = a.append_with(&self.faults, len, &mut fill);
        }
        if let Err(e) = r {
            // Drop whatever part landed so the next append starts clean.
            let _ = a.file.set_len(off);
            return Err(classify(format!("appending to pack {}", a.id), e));
        }
        let (id, file) = (a.id, a.file.clone());
        drop(a);
        let mut u = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        if !u.iter().any(|(i, _)| *i == id) {
            u.push((id, file));
        }
        Ok((id, off))
    }

    /// Make every appended record durable (fdatasync of the packs written
    /// since the last call). Must complete before the journal records that
    /// reference them are synced (FORMAT.md, "Commit protocol").
    pub fn sync(&self) -> Result<()> {
        let files: Vec<(u32, Arc<File>)> =
            std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, (id, f)) in files.iter().enumerate() {
            if let Err(e) = fault::sync_data(&self.faults, Point::PackSync, f) {
                // Keep them for the next attempt.
                self.unsynced.lock().unwrap_or_else(|p| p.into_inner()).extend(files[i..].iter().cloned());
                return Err(classify(format!("syncing pack {id}"), e));
            }
        }
        Ok(())
    }

    /// Read and verify one chunk into `out` (4096 bytes).
    pub fn get(&self, id: u64, out: &mut [u8]) -> Result<()> {
        self.at_current_loc(id, |loc| self.get_at(id, loc, out))
    }

    /// Run `read` on chunk `id`'s current location. GC or the packer may
    /// move a chunk (and change its stored length) between our table lookup
    /// and the read; the old pack stays readable until no reader can hold
    /// its location, but the map of open packs may already have dropped it:
    /// a read that fails as corrupt while the table moved is tried again.
    fn at_current_loc<T>(&self, id: u64, mut read: impl FnMut(ChunkLoc) -> Result<T>) -> Result<T> {
        for _ in 0..3 {
            let loc = self.table.get(id).ok_or(Error::MissingChunk(id))?;
            match read(loc) {
                Err(Error::Corrupt { .. }) if self.table.get(id) != Some(loc) => continue,
                r => return r,
            }
        }
        read(self.table.get(id).ok_or(Error::MissingChunk(id))?)
    }

    fn get_at(&self, id: u64, loc: ChunkLoc, out: &mut [u8]) -> Result<()> {
        let corrupt =
            |detail: String| Error::Corrupt { chunk_id: id, pack_id: loc.pack_id, offset: loc.offset, detail };
        let file = self.pack_file(loc.pack_id).ok_or_else(|| corrupt("its pack file is missing".into()))?;
        let mut rec = [0u8; RECORD_HEADER_LEN + BLOCK_SIZE];
        let n = RECORD_HEADER_LEN + loc.stored_len as usize;
        if n > rec.len() {
            return Err(corrupt(format!("stored length {} exceeds a block", loc.stored_len)));
        }
        match fault::read_exact_at(&self.faults, Point::PackRead, &file, &mut rec[..n], loc.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(corrupt("pack file is truncated".into())),
            Err(e) => return Err(classify(format!("reading pack {}", loc.pack_id), e)),
        }
        let h = pack::decode_record_header(&rec[..RECORD_HEADER_LEN]).map_err(corrupt)?;
        if h.chunk_id != id || h.stored_len != loc.stored_len {
            return Err(corrupt(format!("record header names chunk {} ({} bytes)", h.chunk_id, h.stored_len)));
        }
        let payload = &rec[RECORD_HEADER_LEN..n];
        if h.flags & FLAG_ZSTD != 0 {
            let got = decompress(payload, &mut out[..BLOCK_SIZE]).map_err(|e| corrupt(format!("zstd: {e}")))?;
            if got != BLOCK_SIZE {
                return Err(corrupt(format!("decompressed to {got} bytes")));
            }
        } else {
            if payload.len() != BLOCK_SIZE {
                return Err(corrupt("raw record is not a whole block".into()));
            }
            out[..BLOCK_SIZE].copy_from_slice(payload);
        }
        if blake3::hash(&out[..BLOCK_SIZE]).as_bytes() != &h.content {
            return Err(corrupt("BLAKE3 checksum mismatch".into()));
        }
        Ok(())
    }

    /// Is a placed chunk's record intact on disk (header, length, content)?
    pub fn verify_put(&self, p: &ChunkPut) -> bool {
        let Some(file) = self.pack_file(p.pack_id) else { return false };
        let n = RECORD_HEADER_LEN + p.stored_len as usize;
        if p.stored_len == 0 || n > RECORD_HEADER_LEN + BLOCK_SIZE {
            return false;
        }
        let mut rec = vec![0u8; n];
        if file.read_exact_at(&mut rec, p.offset).is_err() {
            return false;
        }
        let Ok(h) = pack::decode_record_header(&rec[..RECORD_HEADER_LEN]) else { return false };
        if h.chunk_id != p.chunk_id || h.stored_len != p.stored_len {
            return false;
        }
        let mut out = [0u8; BLOCK_SIZE];
        let payload = &rec[RECORD_HEADER_LEN..];
        if h.flags & FLAG_ZSTD != 0 {
            if decompress(payload, &mut out) != Ok(BLOCK_SIZE) {
                return false;
            }
        } else if payload.len() == BLOCK_SIZE {
            out.copy_from_slice(payload);
        } else {
            return false;
        }
        blake3::hash(&out).as_bytes() == &h.content
    }

    /// Per-pack usage, for GC and `status`.
    pub fn pack_usage(&self) -> Vec<PackUsage> {
        let mut by: HashMap<u32, PackUsage> = HashMap::new();
        let active = self.active_extent();
        for (id, f) in self.packs.read().unwrap_or_else(|p| p.into_inner()).iter() {
            let file_bytes = Self::pack_len(active, *id, f);
            by.insert(*id, PackUsage { pack_id: *id, file_bytes, live_bytes: 0, live_chunks: 0, dead_chunks: 0 });
        }
        self.table.for_each(|_, loc, refs| {
            if let Some(u) = by.get_mut(&loc.pack_id) {
                if refs > 0 {
                    u.live_bytes += RECORD_HEADER_LEN as u64 + loc.stored_len as u64;
                    u.live_chunks += 1;
                } else {
                    u.dead_chunks += 1;
                }
            }
        });
        let mut v: Vec<PackUsage> = by.into_values().collect();
        v.sort_by_key(|u| u.pack_id);
        v
    }

    pub fn active_pack_id(&self) -> u32 {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).id
    }

    /// Start a new active pack if the current one holds any record, so the
    /// old one can be compacted.
    pub fn seal_active(&self) -> Result<()> {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if a.len <= PACK_HEADER_LEN {
            return Ok(());
        }
        let old = self.start_pack(&mut a)?;
        drop(a);
        let mut u = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        if !u.iter().any(|(i, _)| *i == old.id) {
            u.push((old.id, old.file));
        }
        Ok(())
    }

    /// Chunks (id, location, references) by pack, for the packs in `ids`
    /// that hold any: one scan of the table however many packs (GC lists a
    /// whole group of victims at once; a scan per pack cost 15 % of the
    /// daemon under sustained overwrites).
    pub fn chunks_in_packs(&self, ids: &[u32]) -> HashMap<u32, Vec<(u64, ChunkLoc, u32)>> {
        let mut by: HashMap<u32, Vec<(u64, ChunkLoc, u32)>> = HashMap::new();
        let mut want = ids.to_vec();
        want.sort_unstable();
        self.table.for_each(|id, loc, refs| {
            if want.binary_search(&loc.pack_id).is_ok() {
                by.entry(loc.pack_id).or_default().push((id, loc, refs));
            }
        });
        by
    }

    /// GC and packer, first half of moving a live chunk's record to the
    /// active pack (the id stays, so no map changes): the CPU-heavy part,
    /// done without the engine's locks: read and check chunk `id`'s record and,
    /// if its compression was deferred, compress it (after checking the raw
    /// payload against its BLAKE3 content id: damage is never carried
    /// forward). Only one mover (GC or packer, under the engine's GC lock)
    /// runs at a time, so the location cannot change before the commit.
    pub fn prepare_move(&self, id: u64) -> Result<Moved> {
        let loc = self.table.get(id).ok_or(Error::MissingChunk(id))?;
        let file = self.pack_file(loc.pack_id).ok_or(Error::MissingChunk(id))?;
        let mut rec = vec![0u8; RECORD_HEADER_LEN + loc.stored_len as usize];
        fault::read_exact_at(&self.faults, Point::PackRead, &file, &mut rec, loc.offset)
            .map_err(|e| classify(format!("reading pack {}", loc.pack_id), e))?;
        let corrupt =
            |detail: String| Error::Corrupt { chunk_id: id, pack_id: loc.pack_id, offset: loc.offset, detail };
        // Never copy damage forward silently: a bad record stays where it
        // is and is reported.
        let h = pack::decode_record_header(&rec[..RECORD_HEADER_LEN]).map_err(corrupt)?;
        if h.chunk_id != id || h.stored_len != loc.stored_len {
            return Err(corrupt(format!("record names chunk {} ({} bytes)", h.chunk_id, h.stored_len)));
        }
        if h.flags & FLAG_DEFERRED == 0 {
            return Ok(Moved { from: loc, record: rec, packed: false });
        }
        let payload = &rec[RECORD_HEADER_LEN..];
        if payload.len() != BLOCK_SIZE || blake3::hash(payload).as_bytes() != &h.content {
            return Err(corrupt("BLAKE3 checksum mismatch".into()));
        }
        let mut out = Vec::with_capacity(RECORD_HEADER_LEN + BLOCK_SIZE);
        out.resize(RECORD_HEADER_LEN, 0);
        let (flags, stored_len) = match compress(self.level, payload, &mut out) {
            Some(n) => (FLAG_ZSTD, n),
            None => {
                out.extend_from_slice(payload);
                (0, BLOCK_SIZE)
            }
        };
        let mut hdr = Vec::with_capacity(RECORD_HEADER_LEN);
        pack::encode_record_header(
            &RecordHeader { flags, chunk_id: id, stored_len: stored_len as u32, content: h.content },
            &mut hdr,
        );
        out[..RECORD_HEADER_LEN].copy_from_slice(&hdr);
        Ok(Moved { from: loc, record: out, packed: true })
    }

    /// Second half: append the prepared records with one write (large
    /// enough for the O_DIRECT path) and point the table at them (refcounts
    /// untouched). Call under the engine's cut, and journal the placements.
    pub fn commit_moves(&self, moves: Vec<(u64, Moved)>) -> Result<Vec<ChunkPut>> {
        let mut buf = Vec::with_capacity(moves.iter().map(|(_, m)| m.record.len()).sum());
        let mut offs = Vec::with_capacity(moves.len());
        for (id, m) in &moves {
            if self.table.get(*id) != Some(m.from) {
                // Cannot happen while movers are serialized; refuse rather
                // than point the table at a stale copy.
                return Err(Error::Corrupt {
                    chunk_id: *id,
                    pack_id: m.from.pack_id,
                    offset: m.from.offset,
                    detail: "the chunk moved while it was being relocated".into(),
                });
            }
            offs.push(buf.len() as u64);
            buf.extend_from_slice(&m.record);
        }
        if moves.is_empty() {
            return Ok(Vec::new());
        }
        let (pack_id, base) = self.append(&buf)?;
        let mut out = Vec::with_capacity(moves.len());
        for ((id, m), off) in moves.into_iter().zip(offs) {
            let stored_len = (m.record.len() - RECORD_HEADER_LEN) as u32;
            let offset = base + off;
            self.table.insert(id, ChunkLoc { pack_id, offset, stored_len, murmur: m.from.murmur });
            out.push(ChunkPut { chunk_id: id, pack_id, offset, stored_len, murmur: m.from.murmur });
        }
        Ok(out)
    }

    /// Store new unique blocks raw and leave compression to the packer.
    pub fn set_deferred(&self, on: bool) {
        self.deferred.store(on, Ordering::Release);
    }

    pub fn is_deferred(&self) -> bool {
        self.deferred.load(Ordering::Acquire)
    }

    /// Sealed packs that hold deferred records, oldest first. Packs found
    /// at open are examined once, in one pass over the table: the record
    /// headers of their raw-sized chunks (one 64-byte read each, stopping
    /// at the first deferred one).
    pub fn packs_with_deferred(&self) -> Result<Vec<u32>> {
        let active = self.active_pack_id();
        let unexamined: BTreeSet<u32> = {
            let g = self.maybe_deferred.lock().unwrap_or_else(|p| p.into_inner());
            g.1.iter().copied().filter(|p| *p != active).collect()
        };
        if !unexamined.is_empty() {
            let mut raw: HashMap<u32, Vec<(u64, ChunkLoc)>> = HashMap::new();
            self.table.for_each(|id, loc, _| {
                if loc.stored_len as usize == BLOCK_SIZE && unexamined.contains(&loc.pack_id) {
                    raw.entry(loc.pack_id).or_default().push((id, loc));
                }
            });
            for pack_id in unexamined {
                let mut found = false;
                if let Some(file) = self.pack_file(pack_id) {
                    for (id, loc) in raw.remove(&pack_id).unwrap_or_default() {
                        let mut hdr = [0u8; RECORD_HEADER_LEN];
                        fault::read_exact_at(&self.faults, Point::PackRead, &file, &mut hdr, loc.offset)
                            .map_err(|e| classify(format!("reading pack {pack_id}"), e))?;
                        // A damaged header is left to reads and `check`.
                        if matches!(pack::decode_record_header(&hdr),
                                    Ok(h) if h.chunk_id == id && h.flags & FLAG_DEFERRED != 0)
                        {
                            found = true;
                            break;
                        }
                    }
                }
                let mut g = self.maybe_deferred.lock().unwrap_or_else(|p| p.into_inner());
                g.1.remove(&pack_id);
                if found {
                    g.0.insert(pack_id);
                }
            }
        }
        let g = self.maybe_deferred.lock().unwrap_or_else(|p| p.into_inner());
        Ok(g.0.iter().copied().filter(|p| *p != active).collect())
    }

    /// Packs that hold (or, found at open and not examined yet, may hold)
    /// records whose compression is deferred: the packer's backlog.
    pub fn deferred_pack_count(&self) -> u64 {
        let g = self.maybe_deferred.lock().unwrap_or_else(|p| p.into_inner());
        g.0.union(&g.1).count() as u64
    }

    /// Does the active pack hold records appended in deferred mode?
    pub fn active_has_deferred(&self) -> bool {
        let active = self.active_pack_id();
        let g = self.maybe_deferred.lock().unwrap_or_else(|p| p.into_inner());
        g.0.contains(&active) || g.1.contains(&active)
    }

    fn forget_deferred(&self, pack_id: u32) {
        let mut g = self.maybe_deferred.lock().unwrap_or_else(|p| p.into_inner());
        g.0.remove(&pack_id);
        g.1.remove(&pack_id);
    }

    /// GC: free an unreferenced chunk. False if it gained a reference.
    pub fn free_chunk(&self, id: u64) -> bool {
        if !self.table.claim_dead(id) {
            return false;
        }
        if let Some(loc) = self.table.get(id) {
            self.index.remove(loc.murmur, id);
        }
        self.table.remove(id);
        true
    }

    /// GC: forget a pack nothing references any more and delete its file,
    /// or keep it as a spare (`spare.rs`).
    pub fn retire_pack(&self, pack_id: u32) -> Result<()> {
        if pack_id == self.active_pack_id() {
            return Ok(());
        }
        self.packs.write().unwrap_or_else(|p| p.into_inner()).remove(&pack_id);
        self.forget_deferred(pack_id);
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _)| *i != pack_id);
        let path = self.dir.join(pack::pack_file_name(pack_id));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if !self.spares.keep(&path, pack_id, len) {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(classify(format!("removing {}", path.display()), e)),
            }
        }
        format::fsync_dir(&self.dir).map_err(|e| classify(format!("syncing {}", self.dir.display()), e))
    }

    /// Number and bytes of all packs (the active one counted to its last
    /// record: a pack started in a spare's space is longer, all zeros).
    pub fn pack_bytes(&self) -> (u64, u64) {
        let active = self.active_extent();
        let packs = self.packs.read().unwrap_or_else(|p| p.into_inner());
        let bytes = packs.iter().map(|(id, f)| Self::pack_len(active, *id, f)).sum();
        (packs.len() as u64, bytes)
    }

    /// (id, logical length) of the active pack.
    fn active_extent(&self) -> (u32, u64) {
        let a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        (a.id, a.len)
    }

    fn pack_len(active: (u32, u64), id: u32, f: &File) -> u64 {
        if id == active.0 { active.1 } else { f.metadata().map(|m| m.len()).unwrap_or(0) }
    }

    /// (count, bytes) of spare packs kept for reuse.
    pub fn spare_usage(&self) -> (u64, u64) {
        self.spares.usage()
    }

    /// Change how much retired pack space is kept; the excess is deleted now.
    pub fn set_spare_cap(&self, bytes: u64) {
        self.spares.set_cap(bytes);
    }

    /// Truncate the active pack past its last referenced record (bytes of
    /// an append whose journal record never became durable).
    pub fn trim_active_tail(&self) -> Result<()> {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let active = a.id;
        let mut end = PACK_HEADER_LEN;
        self.table.for_each(|_, loc, _| {
            if loc.pack_id == active {
                end = end.max(loc.offset + RECORD_HEADER_LEN as u64 + loc.stored_len as u64);
            }
        });
        if a.len > end {
            tracing::info!(pack = active, from = a.len, to = end, "dropping an unfinished pack tail");
            a.truncate(end).map_err(|e| classify(format!("truncating pack {active}"), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_store(dir: &Path) -> ChunkStore {
        let u = Guid([1; 16]);
        ChunkStore::create(dir, u).unwrap();
        ChunkStore::open(
            dir,
            u,
            table::TableImage { stamp_seq: 0, next_id: FIRST_CHUNK_ID, entries: vec![] },
            3,
            0,
            1 << 30,
            Faults::new(),
            ChunkTable::default(),
        )
        .unwrap()
    }

    fn block(seed: u8) -> Vec<u8> {
        (0..BLOCK_SIZE).map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed)).collect()
    }

    #[test]
    fn identical_blocks_share_one_chunk_and_zero_blocks_are_not_stored() {
        let d = tempfile::tempdir().unwrap();
        let s = new_store(d.path());
        let a = block(3);
        let z = vec![0u8; BLOCK_SIZE];
        let r = s.put_blocks(&[&a, &z]).unwrap();
        assert!(matches!(r[0], Put::New(_)));
        assert_eq!(r[1], Put::Zero);
        s.publish(&r);
        let r2 = s.put_blocks(&[&a]).unwrap();
        assert_eq!(r2[0], Put::Dedup(r[0].chunk_id().unwrap()));
        assert_eq!(s.table().refs(r[0].chunk_id().unwrap()), 2);
        let mut out = vec![0u8; BLOCK_SIZE];
        s.get(r[0].chunk_id().unwrap(), &mut out).unwrap();
        assert_eq!(out, a);
    }

    #[test]
    fn a_signature_collision_with_different_content_is_not_shared() {
        let d = tempfile::tempdir().unwrap();
        let s = new_store(d.path());
        let a = block(5);
        let b = block(7);
        let r = s.put_blocks(&[&a]).unwrap();
        s.publish(&r);
        // Forge the index: make b's signature point at a's chunk.
        let mb = murmur64(&b);
        s.index.insert(mb, r[0].chunk_id().unwrap());
        let r2 = s.put_blocks(&[&b]).unwrap();
        assert!(matches!(r2[0], Put::New(_)), "unequal data must never be shared");
        let mut out = vec![0u8; BLOCK_SIZE];
        s.get(r2[0].chunk_id().unwrap(), &mut out).unwrap();
        assert_eq!(out, b);
        assert_eq!(s.stats.dedup_false_matches.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn incompressible_blocks_are_stored_raw() {
        let d = tempfile::tempdir().unwrap();
        let s = new_store(d.path());
        let rnd = crate::test_bytes::xorshift_bytes(BLOCK_SIZE, 0x9e37_79b9_7f4a_7c15);
        let r = s.put_blocks(&[&rnd]).unwrap();
        let Put::New(p) = r[0] else { panic!() };
        assert_eq!(p.stored_len as usize, BLOCK_SIZE);
        let mut out = vec![0u8; BLOCK_SIZE];
        s.get(p.chunk_id, &mut out).unwrap();
        assert_eq!(out, rnd);
    }

    #[test]
    fn a_flipped_payload_byte_is_an_error_not_data() {
        let d = tempfile::tempdir().unwrap();
        let s = new_store(d.path());
        let a = block(9);
        let r = s.put_blocks(&[&a]).unwrap();
        let Put::New(p) = r[0] else { panic!() };
        let path = d.path().join(pack::pack_file_name(p.pack_id));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(p.offset as usize) + RECORD_HEADER_LEN + 5] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
        let mut out = vec![0u8; BLOCK_SIZE];
        let err = s.get(p.chunk_id, &mut out).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }
}
