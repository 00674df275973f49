//! The chunk table in memory (chunk id → pack location, refcount, dedup
//! signature) and its checkpoint file `STORE/chunks.tbl`.
//!
//! ```text
//! chunks.tbl
//!   0  magic       [8]  "STRCHNK\0"
//!   8  version     u32  = 1
//!  12  reserved    u32
//!  16  store_uuid  [16]
//!  32  stamp_seq   u64  journal records ≤ this are included
//!  40  count       u64  number of entries
//!  48  next_id     u64  next chunk id to allocate
//!  56  body_sum    u32  checksum32(body)
//!  60  checksum    u32  checksum32(bytes 0..60)
//!  64  body        count × { chunk_id u64, pack_id u32, stored_len u32,
//!                            offset u64, murmur u64 }   (32 bytes each)
//! ```
//!
//! Reference counts are not stored: they are derived from the layer maps
//! when the store opens (one pass over all map entries), so they can never
//! drift from the maps across a crash.
//!
//! Slots are atomics in fixed segments so readers never take a lock longer
//! than a segment-vector read guard.
//!
//! **Empty segments are released.** Chunk ids only grow, so a store that
//! overwrites its data keeps allocating new ids while the old ones die. A
//! segment whose every slot is free (its chunks freed by GC or a dead-pack
//! reclaim) gives its memory back (`munmap`, and a hole punched in the
//! scratch file) and is allocated again only if an id in it is inserted
//! again (journal replay). So the table's memory and the cost of
//! a whole-table scan follow the live chunks, not every id ever issued
//! (before: 24 bytes per 4 KiB ever written, 667 MiB of daemon RSS after a
//! minute of 1 MiB overwrites of a 1 GiB volume).
//!
//! **Bounded memory** (`table-cache-bytes`, [`ChunkTable::file_backed`]):
//! segments can live in a shared mapping of a scratch file (`STORE/
//! chunks.mem`, recreated at every open, not part of the format) instead of
//! the heap. Then a CLOCK sweep ([`ChunkTable::sweep`]) hands segments not
//! touched since the previous sweep back to the kernel with
//! `MADV_PAGEOUT` (written to the scratch file if dirty) whenever more than
//! the cap is resident; a later access faults them back in. Same atomics,
//! same semantics; only where the pages live changes.

use crate::format::{Reader, Writer, checksum32};
use crate::guid::Guid;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub const TABLE_MAGIC: &[u8; 8] = b"STRCHNK\0";
pub const TABLE_VERSION: u32 = 1;
const SEG_BITS: u32 = 16;
const SEG_LEN: usize = 1 << SEG_BITS;

/// Chunk ids below this are reserved: map entry 0 = absent, 1 = zero.
pub const FIRST_CHUNK_ID: u64 = 16;

/// Where a chunk lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLoc {
    pub pack_id: u32,
    pub offset: u64,
    pub stored_len: u32,
    pub murmur: u64,
}

#[derive(Default)]
#[repr(C)]
struct Slot {
    /// pack_id << 40 | offset; 0 = free slot.
    loc: AtomicU64,
    stored_len: AtomicU32,
    refs: AtomicU32,
    murmur: AtomicU64,
}

const OFFSET_BITS: u32 = 40;
/// Refcount value of a chunk GC is freeing.
const CLAIMED: u32 = u32::MAX;

const SEG_BYTES: usize = SEG_LEN * std::mem::size_of::<Slot>();

enum SegMem {
    /// Released (or never needed): every slot free, no memory.
    Empty,
    /// SEG_BYTES of anonymous memory (mapped, so releasing it returns it
    /// to the kernel whatever the allocator would do).
    Heap(memmap2::MmapMut),
    /// SEG_BYTES of the scratch file, zero-filled (all-zero atomics are
    /// empty slots).
    Mapped(memmap2::MmapMut),
}

struct Segment {
    mem: SegMem,
    /// Slots in use (`loc != 0`).
    live: AtomicU32,
    /// Touched since the last sweep (CLOCK reference bit).
    accessed: std::sync::atomic::AtomicBool,
    /// Paged in, as far as we know (cleared by a sweep's page-out).
    resident: std::sync::atomic::AtomicBool,
}

impl Segment {
    fn slots(&self) -> &[Slot] {
        match &self.mem {
            SegMem::Empty => &[],
            // SAFETY: the mapping is SEG_BYTES long, page-aligned (Slot
            // needs 8), lives as long as `self`, and every bit pattern of
            // zeros or written by us is a valid `Slot` of atomics; all access
            // goes through atomics, so sharing `&[Slot]` is sound.
            SegMem::Heap(m) | SegMem::Mapped(m) => unsafe {
                std::slice::from_raw_parts(m.as_ptr() as *const Slot, SEG_LEN)
            },
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self.mem, SegMem::Empty)
    }

    fn empty() -> Segment {
        Segment {
            mem: SegMem::Empty,
            live: AtomicU32::new(0),
            accessed: std::sync::atomic::AtomicBool::new(false),
            resident: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Note an access; `reference` = false for whole-table scans, which
    /// must not make every segment look hot (scan resistance).
    fn touch(&self, resident: &std::sync::atomic::AtomicUsize, reference: bool) {
        if reference && !self.accessed.load(Ordering::Relaxed) {
            self.accessed.store(true, Ordering::Relaxed);
        }
        if !self.resident.load(Ordering::Relaxed) && !self.resident.swap(true, Ordering::Relaxed) {
            resident.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The scratch file behind a file-backed table, and its cap.
struct Backing {
    file: std::fs::File,
    cap_bytes: u64,
    /// Segments resident (as far as the sweep knows).
    resident: std::sync::atomic::AtomicUsize,
    /// The CLOCK hand, and "one sweep at a time".
    hand: std::sync::Mutex<usize>,
}

pub struct ChunkTable {
    segs: RwLock<Vec<Segment>>,
    backing: Option<Backing>,
    /// Segments found empty while the segment vector was busy (a
    /// whole-table scan holds it): released at the next chance.
    to_release: std::sync::Mutex<Vec<usize>>,
}

impl Default for ChunkTable {
    fn default() -> Self {
        ChunkTable { segs: RwLock::new(Vec::new()), backing: None, to_release: Default::default() }
    }
}

impl ChunkTable {
    /// A table whose segments live in a shared mapping of `path` (created
    /// or truncated now), kept to about `cap_bytes` resident by [`sweep`](Self::sweep).
    pub fn file_backed(path: &std::path::Path, cap_bytes: u64) -> std::io::Result<ChunkTable> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(ChunkTable {
            segs: RwLock::new(Vec::new()),
            to_release: Default::default(),
            backing: Some(Backing {
                file,
                cap_bytes,
                resident: std::sync::atomic::AtomicUsize::new(0),
                hand: std::sync::Mutex::new(0),
            }),
        })
    }

    fn new_segment(&self, seg_no: usize) -> Segment {
        let anon = || SegMem::Heap(memmap2::MmapMut::map_anon(SEG_BYTES).expect("mapping a chunk table segment"));
        let mem = match &self.backing {
            None => anon(),
            Some(b) => {
                let end = ((seg_no + 1) * SEG_BYTES) as u64;
                let mapped = (|| -> std::io::Result<memmap2::MmapMut> {
                    if b.file.metadata()?.len() < end {
                        b.file.set_len(end)?;
                    }
                    // SAFETY: a private scratch file only this table maps
                    // and nothing else writes.
                    unsafe {
                        memmap2::MmapOptions::new().offset((seg_no * SEG_BYTES) as u64).len(SEG_BYTES).map_mut(&b.file)
                    }
                })();
                match mapped {
                    Ok(m) => SegMem::Mapped(m),
                    Err(e) => {
                        // No room for the scratch file: keep going in RAM.
                        tracing::warn!(%e, "chunk table segment in RAM: the scratch file could not grow");
                        anon()
                    }
                }
            }
        };
        Segment { mem, ..Segment::empty() }
    }

    /// Release segment `seg_no`, and any left over from earlier calls, if
    /// no slot of it is in use (and it is not the newest, where ids are
    /// being issued). Never waits for the segment vector: a reader or
    /// scan holding it (which would block every reader behind a waiting
    /// writer) defers the release to a later call or [`sweep`](Self::sweep).
    fn release_if_empty(&self, seg_no: Option<usize>) {
        let mut todo = self.to_release.lock().unwrap_or_else(|p| p.into_inner());
        todo.extend(seg_no);
        if todo.is_empty() {
            return;
        }
        let Ok(mut segs) = self.segs.try_write() else { return };
        for seg_no in todo.drain(..) {
            self.release_locked(&mut segs, seg_no);
        }
    }

    fn release_locked(&self, segs: &mut [Segment], seg_no: usize) {
        let last = segs.len().saturating_sub(1);
        let Some(seg) = segs.get_mut(seg_no) else { return };
        if seg_no == last || seg.is_empty() || seg.live.load(Ordering::Acquire) != 0 {
            return;
        }
        if let (Some(b), SegMem::Mapped(_)) = (&self.backing, &seg.mem) {
            // Give the scratch file's blocks and page cache back too. (Not
            // needed for correctness: every slot reads free already, and
            // `insert` sets all of a slot's fields; so a failure is fine.)
            use std::os::fd::AsRawFd;
            let off = (seg_no * SEG_BYTES) as libc::off_t;
            // SAFETY: plain syscall on our own scratch file.
            let _ = unsafe {
                libc::fallocate(
                    b.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off,
                    SEG_BYTES as libc::off_t,
                )
            };
        }
        if let Some(b) = &self.backing
            && seg.resident.load(Ordering::Relaxed)
        {
            b.resident.fetch_sub(1, Ordering::Relaxed);
        }
        *seg = Segment::empty();
    }

    fn touch(&self, seg: &Segment, reference: bool) {
        if let Some(b) = &self.backing {
            seg.touch(&b.resident, reference);
        }
    }

    fn with_slot<R>(&self, id: u64, f: impl FnOnce(&Slot) -> R) -> Option<R> {
        self.with_seg_slot(id, |_, s| f(s))
    }

    fn with_seg_slot<R>(&self, id: u64, f: impl FnOnce(&Segment, &Slot) -> R) -> Option<R> {
        let segs = self.segs.read().unwrap_or_else(|p| p.into_inner());
        let seg = segs.get((id >> SEG_BITS) as usize).filter(|s| !s.is_empty())?;
        self.touch(seg, true);
        Some(f(seg, &seg.slots()[(id as usize) & (SEG_LEN - 1)]))
    }

    /// Bytes of table segments resident (file-backed tables; for a heap
    /// table, all of them).
    pub fn resident_bytes(&self) -> u64 {
        match &self.backing {
            Some(b) => (b.resident.load(Ordering::Relaxed) * SEG_BYTES) as u64,
            None => {
                let segs = self.segs.read().unwrap_or_else(|p| p.into_inner());
                (segs.iter().filter(|s| !s.is_empty()).count() * SEG_BYTES) as u64
            }
        }
    }

    /// Release the empty segments a busy moment deferred; then, for
    /// file-backed tables, while more than the cap is resident, page out
    /// segments not touched since the last sweep (CLOCK). Returns the
    /// segments paged out.
    pub fn sweep(&self) -> usize {
        self.release_if_empty(None);
        let Some(b) = &self.backing else { return 0 };
        let Ok(mut hand) = b.hand.try_lock() else { return 0 };
        let cap_segs = (b.cap_bytes as usize / SEG_BYTES).max(1);
        let segs = self.segs.read().unwrap_or_else(|p| p.into_inner());
        let n = segs.len();
        let mut out = 0;
        let mut steps = 0;
        while b.resident.load(Ordering::Relaxed) > cap_segs && steps < 2 * n {
            let seg = &segs[*hand % n];
            *hand = (*hand + 1) % n;
            steps += 1;
            if !seg.resident.load(Ordering::Relaxed) {
                continue;
            }
            if seg.accessed.swap(false, Ordering::Relaxed) {
                continue;
            }
            match Self::page_out(b, seg) {
                Some(true) => out += 1,
                Some(false) => {}
                // Kernel without MADV_PAGEOUT (< 5.4): nothing to do.
                None => return out,
            }
        }
        out
    }

    /// Page a mapped segment out. Some(true): done; Some(false): a heap
    /// segment; None: the kernel refused the advice.
    fn page_out(b: &Backing, seg: &Segment) -> Option<bool> {
        let SegMem::Mapped(m) = &seg.mem else { return Some(false) };
        // SAFETY: advice on our own mapping; MADV_PAGEOUT only drops (after
        // writing back) pages, contents stay.
        let r = unsafe { libc::madvise(m.as_ptr() as *mut libc::c_void, SEG_BYTES, libc::MADV_PAGEOUT) };
        if r != 0 {
            return None;
        }
        if seg.resident.swap(false, Ordering::Relaxed) {
            b.resident.fetch_sub(1, Ordering::Relaxed);
        }
        Some(true)
    }

    /// Visit a segment for a whole-table scan. A segment the scan brought
    /// in (not resident before) is paged straight back out while the table
    /// is over its cap, so a scan (`status`, GC's pack usage, the
    /// checkpoint's table image) passes through memory instead of filling
    /// it until the next sweep.
    fn scan_segment<R>(&self, seg: &Segment, visit: impl FnOnce(&Segment) -> R) -> R {
        let Some(b) = &self.backing.as_ref().filter(|_| !seg.is_empty()) else { return visit(seg) };
        let was_resident = seg.resident.load(Ordering::Relaxed);
        seg.touch(&b.resident, false);
        let r = visit(seg);
        if !was_resident && !seg.accessed.load(Ordering::Relaxed) && self.over_cap() {
            Self::page_out(b, seg);
        }
        r
    }

    /// Over the cap, so worth a sweep.
    pub fn over_cap(&self) -> bool {
        self.backing.as_ref().is_some_and(|b| (b.resident.load(Ordering::Relaxed) * SEG_BYTES) as u64 > b.cap_bytes)
    }

    /// Record a chunk's location (new chunk or replay).
    pub fn insert(&self, id: u64, loc: ChunkLoc) {
        assert!(loc.offset < (1 << OFFSET_BITS), "pack offsets are below 1 TiB");
        let seg_no = (id >> SEG_BITS) as usize;
        let packed = ((loc.pack_id as u64) << OFFSET_BITS) | loc.offset;
        loop {
            let done = self.with_seg_slot(id, |seg, s| {
                s.stored_len.store(loc.stored_len, Ordering::Relaxed);
                s.murmur.store(loc.murmur, Ordering::Relaxed);
                if s.loc.swap(packed, Ordering::AcqRel) == 0 {
                    seg.live.fetch_add(1, Ordering::AcqRel);
                }
            });
            if done.is_some() {
                return;
            }
            // Not allocated (new, or released): allocate, then store.
            let mut w = self.segs.write().unwrap_or_else(|p| p.into_inner());
            while w.len() <= seg_no {
                w.push(Segment::empty());
            }
            if w[seg_no].is_empty() {
                w[seg_no] = self.new_segment(seg_no);
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<ChunkLoc> {
        self.with_slot(id, |s| {
            let loc = s.loc.load(Ordering::Acquire);
            if loc == 0 {
                return None;
            }
            Some(ChunkLoc {
                pack_id: (loc >> OFFSET_BITS) as u32,
                offset: loc & ((1 << OFFSET_BITS) - 1),
                stored_len: s.stored_len.load(Ordering::Relaxed),
                murmur: s.murmur.load(Ordering::Relaxed),
            })
        })
        .flatten()
    }

    pub fn remove(&self, id: u64) {
        let emptied = self.with_seg_slot(id, |seg, s| {
            s.refs.store(0, Ordering::Relaxed);
            s.loc.swap(0, Ordering::AcqRel) != 0 && seg.live.fetch_sub(1, Ordering::AcqRel) == 1
        });
        if emptied == Some(true) {
            self.release_if_empty(Some((id >> SEG_BITS) as usize));
        }
    }

    /// Add one reference; returns the count before.
    pub fn incref(&self, id: u64) -> Option<u32> {
        self.with_slot(id, |s| s.refs.fetch_add(1, Ordering::AcqRel))
    }

    /// Add one reference unless GC has claimed the chunk (dedup hits use
    /// this, so a chunk being freed is never revived).
    pub fn incref_live(&self, id: u64) -> Option<u32> {
        self.with_slot(id, |s| {
            s.refs
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| if r == CLAIMED { None } else { Some(r + 1) })
                .ok()
        })
        .flatten()
    }

    /// GC: claim an unreferenced chunk for freeing (0 → CLAIMED). After
    /// this succeeds no reference can be taken.
    pub fn claim_dead(&self, id: u64) -> bool {
        self.with_slot(id, |s| s.refs.compare_exchange(0, CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok())
            .unwrap_or(false)
    }

    /// Drop one reference; returns the count before (0 means it was
    /// already unreferenced, which callers treat as an accounting bug).
    pub fn decref(&self, id: u64) -> Option<u32> {
        self.with_slot(id, |s| {
            s.refs
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| Some(r.saturating_sub(1)))
                .expect("closure never fails")
        })
    }

    /// Drop one reference with wrapping arithmetic: while refcounts are
    /// being rebuilt in the background a live decrement may come before
    /// the recount's increment for the same reference.
    pub fn decref_wrapping(&self, id: u64) -> Option<u32> {
        self.with_slot(id, |s| s.refs.fetch_sub(1, Ordering::AcqRel))
    }

    pub fn refs(&self, id: u64) -> u32 {
        self.with_slot(id, |s| s.refs.load(Ordering::Acquire)).map(|r| if r == CLAIMED { 0 } else { r }).unwrap_or(0)
    }

    pub fn reset_refs(&self) {
        let segs = self.segs.read().unwrap_or_else(|p| p.into_inner());
        for seg in segs.iter() {
            self.scan_segment(seg, |seg| {
                for s in seg.slots() {
                    s.refs.store(0, Ordering::Relaxed);
                }
            });
        }
    }

    /// Visit every live chunk (id, location, refs).
    pub fn for_each(&self, mut f: impl FnMut(u64, ChunkLoc, u32)) {
        let segs = self.segs.read().unwrap_or_else(|p| p.into_inner());
        for (si, seg) in segs.iter().enumerate() {
            self.scan_segment(seg, |seg| {
                for (i, s) in seg.slots().iter().enumerate() {
                    let loc = s.loc.load(Ordering::Acquire);
                    if loc == 0 {
                        continue;
                    }
                    let id = ((si as u64) << SEG_BITS) | i as u64;
                    f(
                        id,
                        ChunkLoc {
                            pack_id: (loc >> OFFSET_BITS) as u32,
                            offset: loc & ((1 << OFFSET_BITS) - 1),
                            stored_len: s.stored_len.load(Ordering::Relaxed),
                            murmur: s.murmur.load(Ordering::Relaxed),
                        },
                        match s.refs.load(Ordering::Relaxed) {
                            CLAIMED => 0,
                            r => r,
                        },
                    );
                }
            });
        }
    }

    /// Encode the checkpoint file. The header's `next_id` is raised past
    /// every id written: writers allocate an id and insert its entry
    /// without the checkpoint's cut lock, so an entry can appear after the
    /// caller read its `next_id` (a crash after such a checkpoint left a
    /// table `decode` refuses, and a store that did not open).
    pub fn encode(&self, store_uuid: Guid, stamp_seq: u64, next_id: u64) -> Vec<u8> {
        let mut c = std::io::Cursor::new(Vec::new());
        self.encode_to(&mut c, store_uuid, stamp_seq, next_id).expect("writing to memory");
        c.into_inner()
    }

    /// [`encode`](Self::encode), streamed: a placeholder header, the body
    /// entry by entry, then the real header at offset 0. Holds no lock, so
    /// entries inserted or removed meanwhile may or may not be in it — fine
    /// for a checkpoint: replay re-applies every journal record after
    /// `stamp_seq`, and each record sets or removes an entry outright.
    pub fn encode_to<W: std::io::Write + std::io::Seek>(
        &self,
        w: &mut W,
        store_uuid: Guid,
        stamp_seq: u64,
        next_id: u64,
    ) -> std::io::Result<()> {
        let mut body = crate::format::StreamedBody::new(w)?;
        let mut count = 0u64;
        let mut next_id = next_id;
        let mut err = None;
        self.for_each(|id, loc, _| {
            if err.is_some() {
                return;
            }
            let mut rec = [0u8; 32];
            rec[..8].copy_from_slice(&id.to_le_bytes());
            rec[8..12].copy_from_slice(&loc.pack_id.to_le_bytes());
            rec[12..16].copy_from_slice(&loc.stored_len.to_le_bytes());
            rec[16..24].copy_from_slice(&loc.offset.to_le_bytes());
            rec[24..].copy_from_slice(&loc.murmur.to_le_bytes());
            count += 1;
            next_id = next_id.max(id + 1);
            if let Err(x) = body.put(&rec) {
                err = Some(x);
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        body.finish(|body_sum| {
            let mut h = Writer::with_capacity(64);
            h.bytes(TABLE_MAGIC)
                .u32(TABLE_VERSION)
                .u32(0)
                .bytes(store_uuid.as_bytes())
                .u64(stamp_seq)
                .u64(count)
                .u64(next_id)
                .u32(body_sum);
            h.buf
        })
    }
}

/// A decoded `chunks.tbl`.
#[derive(Debug)]
pub struct TableImage {
    pub stamp_seq: u64,
    pub next_id: u64,
    pub entries: Vec<(u64, ChunkLoc)>,
}

pub fn decode(bytes: &[u8], store_uuid: Guid) -> Result<TableImage, String> {
    if bytes.len() < 64 {
        return Err(format!("truncated: {} bytes, header needs 64", bytes.len()));
    }
    let mut r = Reader::new(bytes);
    let magic: [u8; 8] = r.array().map_err(|e| e.to_string())?;
    if &magic != TABLE_MAGIC {
        return Err("bad magic: not a strata chunk table".into());
    }
    if checksum32(&bytes[..60]) != u32::from_le_bytes(bytes[60..64].try_into().expect("4")) {
        return Err("header checksum mismatch".into());
    }
    let version = r.u32().map_err(|e| e.to_string())?;
    if version != TABLE_VERSION {
        return Err(format!("chunk table version {version} is not supported (this strata reads {TABLE_VERSION})"));
    }
    r.u32().map_err(|e| e.to_string())?;
    let uuid = Guid(r.array().map_err(|e| e.to_string())?);
    if uuid != store_uuid {
        return Err(format!("belongs to store {uuid}, not {store_uuid}"));
    }
    let stamp_seq = r.u64().map_err(|e| e.to_string())?;
    let count = r.u64().map_err(|e| e.to_string())?;
    let next_id = r.u64().map_err(|e| e.to_string())?;
    let body_sum = r.u32().map_err(|e| e.to_string())?;
    let body = &bytes[64..];
    if count.checked_mul(32) != Some(body.len() as u64) {
        return Err(format!("body is {} bytes, {count} entries need {}", body.len(), count.saturating_mul(32)));
    }
    if checksum32(body) != body_sum {
        return Err("body checksum mismatch".into());
    }
    let mut r = Reader::new(body);
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let id = r.u64().map_err(|e| e.to_string())?;
        let pack_id = r.u32().map_err(|e| e.to_string())?;
        let stored_len = r.u32().map_err(|e| e.to_string())?;
        let offset = r.u64().map_err(|e| e.to_string())?;
        let murmur = r.u64().map_err(|e| e.to_string())?;
        if id < FIRST_CHUNK_ID || id >= next_id || offset >= 1 << OFFSET_BITS || pack_id == 0 {
            return Err(format!("entry for chunk {id} is out of range"));
        }
        entries.push((id, ChunkLoc { pack_id, offset, stored_len, murmur }));
    }
    Ok(TableImage { stamp_seq, next_id, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_file_round_trips() {
        let t = ChunkTable::default();
        let loc = ChunkLoc { pack_id: 1, offset: 64, stored_len: 1000, murmur: 42 };
        t.insert(16, loc);
        t.insert(70000, ChunkLoc { offset: 2000, ..loc });
        let u = Guid::new_random();
        let bytes = t.encode(u, 9, 70001);
        let img = decode(&bytes, u).unwrap();
        assert_eq!(img.stamp_seq, 9);
        assert_eq!(img.next_id, 70001);
        assert_eq!(img.entries, vec![(16, loc), (70000, ChunkLoc { offset: 2000, ..loc })]);
    }

    /// Emptying a segment gives its memory back; inserting into it again
    /// (journal replay) finds nothing else in it; the newest segment is
    /// kept; a release the segment vector was too busy for happens at
    /// `sweep`.
    fn segments_release_when_empty(t: &ChunkTable) {
        let seg = SEG_LEN as u64;
        let loc = |id: u64| ChunkLoc { pack_id: 1, offset: id * 8, stored_len: 4096, murmur: id };
        for id in (FIRST_CHUNK_ID..3 * seg).step_by(7) {
            t.insert(id, loc(id));
            t.incref(id);
        }
        let allocated = || t.segs.read().unwrap().iter().filter(|s| !s.is_empty()).count();
        assert_eq!(allocated(), 3);
        let count = || {
            let mut n = 0;
            t.for_each(|_, _, _| n += 1);
            n
        };
        let all = count();
        // Empty segment 1, all but its last entry, while a reader holds the
        // vector: nothing can be released yet.
        let in_seg1: Vec<u64> = (FIRST_CHUNK_ID..3 * seg).step_by(7).filter(|id| id / seg == 1).collect();
        for id in &in_seg1[..in_seg1.len() - 1] {
            t.remove(*id);
        }
        assert_eq!(allocated(), 3);
        {
            let _reader = t.segs.read().unwrap();
            t.remove(*in_seg1.last().unwrap());
        }
        assert_eq!(allocated(), 3, "released while a reader held the segments");
        t.sweep();
        assert_eq!(allocated(), 2);
        assert_eq!(count(), all - in_seg1.len());
        assert_eq!(t.get(in_seg1[0]), None);
        assert_eq!(t.refs(in_seg1[0]), 0);
        assert!(t.incref(in_seg1[0]).is_none(), "a released slot is absent");
        // Replay inserts into it again: allocated, and nothing else in it.
        t.insert(in_seg1[3], loc(in_seg1[3]));
        assert_eq!(allocated(), 3);
        assert_eq!(count(), all - in_seg1.len() + 1);
        assert_eq!(t.get(in_seg1[3]), Some(loc(in_seg1[3])));
        // The newest segment stays, even empty: ids are issued there.
        for id in (FIRST_CHUNK_ID..3 * seg).step_by(7).filter(|id| id / seg == 2) {
            t.remove(id);
        }
        t.sweep();
        assert_eq!(allocated(), 3);
        // Segment 0 too.
        for id in (FIRST_CHUNK_ID..3 * seg).step_by(7).filter(|id| id / seg == 0) {
            t.remove(id);
        }
        assert_eq!(allocated(), 2);
        assert_eq!(count(), 1);
    }

    #[test]
    fn empty_segments_of_a_heap_table_are_released() {
        let t = ChunkTable::default();
        segments_release_when_empty(&t);
        assert_eq!(t.resident_bytes(), 2 * SEG_BYTES as u64);
    }

    #[test]
    fn empty_segments_of_a_file_backed_table_are_released() {
        let d = tempfile::tempdir().unwrap();
        let t = ChunkTable::file_backed(&d.path().join("chunks.mem"), 1 << 30).unwrap();
        segments_release_when_empty(&t);
        assert!(t.resident_bytes() <= 2 * SEG_BYTES as u64);
    }

    #[test]
    fn an_entry_added_after_next_id_was_read_still_encodes_a_readable_table() {
        // A checkpoint reads next_id, then a concurrent write allocates
        // ids 30 and 31 and inserts them before the table is encoded.
        let t = ChunkTable::default();
        let loc = ChunkLoc { pack_id: 1, offset: 64, stored_len: 100, murmur: 1 };
        t.insert(16, loc);
        let next_id_read_early = 30;
        t.insert(30, ChunkLoc { offset: 200, ..loc });
        t.insert(31, ChunkLoc { offset: 400, ..loc });
        let u = Guid::new_random();
        let img = decode(&t.encode(u, 5, next_id_read_early), u).expect("a readable table");
        assert_eq!(img.next_id, 32);
        assert_eq!(img.entries.len(), 3);
    }

    #[test]
    fn damaged_table_is_rejected() {
        let t = ChunkTable::default();
        t.insert(16, ChunkLoc { pack_id: 1, offset: 64, stored_len: 1000, murmur: 42 });
        let u = Guid::new_random();
        let bytes = t.encode(u, 1, 17);
        let mut b = bytes.clone();
        b[70] ^= 1;
        assert!(decode(&b, u).unwrap_err().contains("body checksum"));
        assert!(decode(&bytes[..80], u).is_err());
    }

    #[test]
    fn refcounts_saturate_at_zero() {
        let t = ChunkTable::default();
        t.insert(20, ChunkLoc { pack_id: 1, offset: 64, stored_len: 10, murmur: 0 });
        assert_eq!(t.incref(20), Some(0));
        assert_eq!(t.decref(20), Some(1));
        assert_eq!(t.decref(20), Some(0));
        assert_eq!(t.refs(20), 0);
    }
}

#[cfg(test)]
mod paging_tests {
    use super::*;

    fn loc(id: u64) -> ChunkLoc {
        ChunkLoc { pack_id: 1 + (id % 7) as u32, offset: 64 + id * 4160, stored_len: 4096, murmur: id * 31 }
    }

    #[test]
    fn a_file_backed_table_pages_out_cold_segments_and_reads_them_back() {
        let d = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        // A cap of two segments; five segments of entries.
        let t = ChunkTable::file_backed(&d.path().join("chunks.mem"), 2 * SEG_BYTES as u64).unwrap();
        let n = 5 * SEG_LEN as u64;
        for id in FIRST_CHUNK_ID..n {
            t.insert(id, loc(id));
            t.incref(id);
        }
        assert_eq!(t.resident_bytes(), 5 * SEG_BYTES as u64);
        assert!(t.over_cap());
        // The first sweep only clears reference bits; the second pages out.
        t.sweep();
        t.get(n - 1); // the last segment stays hot
        t.sweep();
        assert!(t.resident_bytes() <= 2 * SEG_BYTES as u64, "{}", t.resident_bytes());
        assert!(!t.over_cap());
        // Everything reads back (faulted in from the scratch file), counts too.
        for id in FIRST_CHUNK_ID..n {
            assert_eq!(t.get(id), Some(loc(id)), "{id}");
            assert_eq!(t.refs(id), 1);
        }
        let mut seen = 0;
        t.for_each(|id, l, r| {
            assert_eq!((l, r), (loc(id), 1));
            seen += 1;
        });
        assert_eq!(seen, n - FIRST_CHUNK_ID);
        // Encoding is the same as a heap table's.
        let h = ChunkTable::default();
        for id in FIRST_CHUNK_ID..n {
            h.insert(id, loc(id));
        }
        let g = Guid([3; 16]);
        assert!(t.encode(g, 5, n) == h.encode(g, 5, n));
    }

    #[test]
    fn a_whole_table_scan_over_the_cap_pages_what_it_brought_in_back_out() {
        let d = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let t = ChunkTable::file_backed(&d.path().join("chunks.mem"), 2 * SEG_BYTES as u64).unwrap();
        let n = 6 * SEG_LEN as u64;
        for id in FIRST_CHUNK_ID..n {
            t.insert(id, loc(id));
            t.incref(id);
        }
        t.sweep();
        t.get(n - 1);
        t.sweep();
        let before = t.resident_bytes();
        assert!(before <= 2 * SEG_BYTES as u64, "{before}");
        // Scans (status, GC, checkpoint) see everything...
        let mut seen = 0;
        t.for_each(|id, l, r| {
            assert_eq!((l, r), (loc(id), 1));
            seen += 1;
        });
        assert_eq!(seen, n - FIRST_CHUNK_ID);
        let g = Guid([4; 16]);
        let _ = t.encode(g, 1, n);
        t.reset_refs();
        // ...and leave no more resident than the cap.
        assert!(t.resident_bytes() <= 2 * SEG_BYTES as u64, "{}", t.resident_bytes());
        // The hot segment stayed; the rest reads back from the file.
        assert_eq!(t.get(n - 1), Some(loc(n - 1)));
        assert_eq!(t.get(FIRST_CHUNK_ID), Some(loc(FIRST_CHUNK_ID)));
        assert_eq!(t.refs(FIRST_CHUNK_ID), 0);
    }
}
