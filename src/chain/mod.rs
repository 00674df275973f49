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
//! Pages are on the heap unless the map was made in a [`MapArena`]
//! (`map-cache-bytes`, arena.rs): then they are slots of a scratch file's
//! mapping that a CLOCK sweep pages out when more than the cap is resident.
//! A lookup costs the same either way (one BTreeMap search, one load, and
//! for an arena page one load of its state byte); lookups and writes count
//! as references, scans (`iter`, `iter_from`, clones, merges, decoding)
//! do not.
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
//! Depends on: `format`, `guid` (and `memmap2`/`libc` for the arena).
//! Knows nothing of packs or SQL.

mod arena;

pub use arena::MapArena;

use crate::format::{Reader, Writer, checksum32};
use crate::guid::Guid;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

pub const ABSENT: u64 = 0;
pub const ZERO: u64 = 1;
pub const MAP_MAGIC: &[u8; 8] = b"STRMAP\0\0";
pub const MAP_VERSION: u32 = 1;
const PAGE_BITS: u32 = 9;
const PAGE_LEN: usize = 1 << PAGE_BITS;

/// A new empty page: in the arena if there is one and it has room.
fn new_page(arena: &Option<Arc<MapArena>>) -> Page {
    let Some(a) = arena else { return Page::heap() };
    match a.alloc(1).pop() {
        Some(s) => {
            let p = Page::in_slot(s);
            // SAFETY: a slot just handed to us; a reused one may hold
            // anything (its pages were punched only if the filesystem can).
            unsafe { p.mem.as_ptr().write([ABSENT; PAGE_LEN]) };
            p
        }
        None => Page::heap(),
    }
}

/// Is this entry a chunk reference?
pub fn is_chunk(e: u64) -> bool {
    e > ZERO
}

/// One page of entries: on the heap, or a slot of the map's arena.
struct Page {
    /// Entries in the page that are not ABSENT.
    n: u32,
    /// Arena slot index, or [`HEAP`].
    slot: u32,
    mem: NonNull<[u64; PAGE_LEN]>,
    /// The slot's state byte in the arena (dangling for heap pages).
    state: NonNull<AtomicU8>,
}

/// `Page::slot` of a heap page.
const HEAP: u32 = u32::MAX;

impl Page {
    fn heap() -> Page {
        Page {
            n: 0,
            slot: HEAP,
            mem: NonNull::from(Box::leak(Box::new([ABSENT; PAGE_LEN]))),
            state: NonNull::dangling(),
        }
    }

    fn in_slot(s: arena::Slot) -> Page {
        Page { n: 0, slot: s.index, mem: s.mem, state: s.state }
    }
}

/// A sparse map from block number to entry.
///
/// Pages are on the heap ([`PageMap::new`], the default) or in a
/// [`MapArena`] ([`PageMap::new_in`]), which can page cold ones out to its
/// scratch file; either way a page belongs to exactly one map.
#[derive(Default)]
pub struct PageMap {
    pages: BTreeMap<u64, Page>,
    count: u64,
    /// Entries that are chunk references (data), kept so a layer's size
    /// is O(1).
    chunks: u64,
    /// Where new pages go (None: the heap).
    arena: Option<Arc<MapArena>>,
}

// SAFETY: a PageMap owns its pages outright (a heap box, or an arena slot
// no other map holds until this one frees it), reads them through `&self`
// and writes them only through `&mut self`, exactly like the `Box` pages it
// had before; the state bytes are atomics in the arena, and the arena
// (mappings, a mutex, atomics) is itself Send + Sync and outlives the map
// (the map holds an Arc of it).
unsafe impl Send for PageMap {}
// SAFETY: as for Send.
unsafe impl Sync for PageMap {}

impl Drop for PageMap {
    fn drop(&mut self) {
        self.release_all();
    }
}

impl Clone for PageMap {
    /// An independent copy, in the same arena (a scan of `self`: no
    /// reference bits set).
    fn clone(&self) -> PageMap {
        let mut slots = match &self.arena {
            Some(a) => a.alloc(self.pages.len()),
            None => Vec::new(),
        }
        .into_iter();
        let mut pages = BTreeMap::new();
        for (k, p) in &self.pages {
            let src = self.entries(p, arena::SCANNED);
            let mut q = match slots.next() {
                Some(s) => Page::in_slot(s),
                None => Page::heap(),
            };
            q.n = p.n;
            // SAFETY: `q` is a fresh page this function owns; `src` is
            // another page, so they do not overlap.
            unsafe { *q.mem.as_ptr() = *src };
            // A sweep may have paged the fresh slot out before the copy
            // brought it back: count it resident.
            Self::note(&self.arena, &q, arena::SCANNED);
            pages.insert(*k, q);
        }
        PageMap { pages, count: self.count, chunks: self.chunks, arena: self.arena.clone() }
    }
}

impl PageMap {
    /// An empty map whose pages are on the heap.
    pub fn new() -> Self {
        PageMap::default()
    }

    /// An empty map whose pages go in `arena` (the heap when None).
    pub fn new_in(arena: Option<Arc<MapArena>>) -> Self {
        PageMap { pages: BTreeMap::new(), count: 0, chunks: 0, arena }
    }

    /// The arena this map's pages go in, if any.
    pub fn arena(&self) -> Option<&Arc<MapArena>> {
        self.arena.as_ref()
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

    /// Note an access to a page in the arena (`bits`: HOT for a lookup
    /// or a write, SCANNED for a scan); nothing for a heap page.
    #[inline]
    fn note(arena: &Option<Arc<MapArena>>, p: &Page, bits: u8) {
        if p.slot != HEAP {
            // SAFETY: an arena page's state byte lives in the arena, which
            // the map holding the page keeps alive.
            let st = unsafe { p.state.as_ref() };
            if st.load(Ordering::Relaxed) & bits != bits
                && let Some(a) = arena
            {
                a.mark(st, bits);
            }
        }
    }

    /// A page's entries, noting the access.
    #[inline]
    fn entries(&self, p: &Page, bits: u8) -> &[u64; PAGE_LEN] {
        Self::note(&self.arena, p, bits);
        // SAFETY: the page is this map's (see `unsafe impl Sync`); shared
        // access under `&self`.
        unsafe { p.mem.as_ref() }
    }

    pub fn get(&self, block: u64) -> u64 {
        match self.pages.get(&(block >> PAGE_BITS)) {
            Some(p) => self.entries(p, arena::HOT)[(block as usize) & (PAGE_LEN - 1)],
            None => ABSENT,
        }
    }

    /// Set an entry; returns the previous one.
    pub fn set(&mut self, block: u64, entry: u64) -> u64 {
        self.set_noting(block, entry, arena::HOT)
    }

    fn set_noting(&mut self, block: u64, entry: u64, bits: u8) -> u64 {
        let key = block >> PAGE_BITS;
        let idx = (block as usize) & (PAGE_LEN - 1);
        let p = if entry == ABSENT {
            match self.pages.get_mut(&key) {
                Some(p) => p,
                None => return ABSENT,
            }
        } else {
            let arena = &self.arena;
            self.pages.entry(key).or_insert_with(|| new_page(arena))
        };
        Self::note(&self.arena, p, bits);
        // SAFETY: the page is this map's, and `&mut self` is exclusive.
        let slot = unsafe { &mut p.mem.as_mut()[idx] };
        let old = std::mem::replace(slot, entry);
        match (is_chunk(old), is_chunk(entry)) {
            (false, true) => self.chunks += 1,
            (true, false) => self.chunks -= 1,
            _ => {}
        }
        match (old == ABSENT, entry == ABSENT) {
            (true, false) => {
                p.n += 1;
                self.count += 1;
            }
            (false, true) => {
                p.n -= 1;
                self.count -= 1;
                if p.n == 0
                    && let Some(p) = self.pages.remove(&key)
                {
                    self.release(vec![p]);
                }
            }
            _ => {}
        }
        old
    }

    /// Free pages (heap boxes dropped, arena slots given back).
    fn release(&self, pages: Vec<Page>) {
        let mut slots = Vec::new();
        for p in pages {
            if p.slot == HEAP {
                // SAFETY: a heap page's `mem` came from `Box::leak` in
                // `Page::heap`, and the page is dropped only here.
                drop(unsafe { Box::from_raw(p.mem.as_ptr()) });
            } else {
                slots.push(p.slot);
            }
        }
        if let Some(a) = &self.arena {
            a.free(&mut slots);
        }
    }

    fn release_all(&mut self) {
        let pages = std::mem::take(&mut self.pages);
        self.release(pages.into_values().collect());
        self.count = 0;
        self.chunks = 0;
    }

    /// Iterate (block, entry) over present entries in ascending order. A
    /// scan: in an arena, it does not count as a reference.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pages.iter().flat_map(move |(k, p)| {
            self.entries(p, arena::SCANNED)
                .iter()
                .enumerate()
                .filter(|(_, e)| **e != ABSENT)
                .map(move |(i, e)| ((k << PAGE_BITS) | i as u64, *e))
        })
    }

    /// Iterate present entries with block ≥ `from`, ascending (a scan, as
    /// [`iter`](Self::iter)).
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.pages.range(from >> PAGE_BITS..).flat_map(move |(k, p)| {
            self.entries(p, arena::SCANNED)
                .iter()
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
        let mut body = crate::format::StreamedBody::new(w)?;
        for (b, e) in self.iter() {
            let mut rec = [0u8; 16];
            rec[..8].copy_from_slice(&b.to_le_bytes());
            rec[8..].copy_from_slice(&e.to_le_bytes());
            body.put(&rec)?;
        }
        body.finish(|body_sum| {
            let mut h = Writer::with_capacity(64);
            h.bytes(MAP_MAGIC)
                .u32(MAP_VERSION)
                .u32(0)
                .bytes(layer.as_bytes())
                .u64(stamp_seq)
                .u64(self.count)
                .u32(body_sum)
                .zeros(8);
            h.buf
        })
    }
}

/// A decoded map file.
pub struct MapImage {
    pub layer: Guid,
    pub stamp_seq: u64,
    pub map: PageMap,
}

pub fn decode_map(bytes: &[u8]) -> Result<MapImage, String> {
    decode_map_in(bytes, None)
}

/// [`decode_map`] into a map whose pages go in `arena` (a bulk load: no
/// reference bits set).
pub fn decode_map_in(bytes: &[u8], arena: Option<Arc<MapArena>>) -> Result<MapImage, String> {
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
    let mut map = PageMap::new_in(arena);
    let mut prev: Option<u64> = None;
    for _ in 0..count {
        let b = r.u64().map_err(|e| e.to_string())?;
        let e = r.u64().map_err(|e| e.to_string())?;
        if prev.is_some_and(|p| p >= b) || e == ABSENT || (e > ZERO && e < crate::store::FIRST_CHUNK_ID) {
            return Err(format!("entry for block {b} is out of order or invalid"));
        }
        prev = Some(b);
        map.set_noting(b, e, arena::SCANNED);
    }
    Ok(MapImage { layer, stamp_seq, map })
}

/// Resolve a chain (base first) into its merged view: for each block, the
/// entry of the topmost layer that has one. Its pages go where the base's
/// do (the heap, or the base's arena).
pub fn merge<'a>(layers: impl IntoIterator<Item = &'a PageMap>) -> PageMap {
    let mut layers = layers.into_iter().peekable();
    let mut merged = PageMap::new_in(layers.peek().and_then(|m| m.arena.clone()));
    for l in layers {
        for (b, e) in l.iter() {
            merged.set_noting(b, e, arena::SCANNED);
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

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap()
    }

    fn arena(d: &tempfile::TempDir, cap_pages: u64, region_slots: usize) -> Arc<MapArena> {
        let path = d.path().join("maps.mem");
        Arc::new(MapArena::with_region_slots(&path, cap_pages * arena::PAGE_BYTES as u64, region_slots).unwrap())
    }

    #[test]
    fn an_arena_map_pages_out_cold_pages_and_reads_back_the_same_entries() {
        let d = scratch();
        let a = arena(&d, 2, 4);
        let mut m = PageMap::new_in(Some(a.clone()));
        // 10 pages, over three regions.
        for b in 0..10 * PAGE_LEN as u64 {
            m.set(b, 16 + b * 3);
        }
        assert_eq!(a.live_pages(), 10);
        assert_eq!(a.resident_bytes(), 10 * arena::PAGE_BYTES as u64);
        assert!(a.over_cap());
        // The first sweep clears the reference bits and pages out until at
        // the cap, or finds them all referenced; the second pages out.
        a.sweep();
        m.get(9 * PAGE_LEN as u64); // the last page stays hot
        a.sweep();
        assert!(!a.over_cap(), "{:?}", a);
        assert_eq!(a.resident_bytes(), 2 * arena::PAGE_BYTES as u64);
        // Lookups fault pages back in (and count them resident again).
        for b in 0..10 * PAGE_LEN as u64 {
            assert_eq!(m.get(b), 16 + b * 3, "block {b}");
        }
        assert_eq!(a.resident_bytes(), 10 * arena::PAGE_BYTES as u64);
        assert_eq!(m.len(), 10 * PAGE_LEN as u64);
        // A scan is not a reference: after it, one sweep pages everything
        // (but the cap) out again.
        a.sweep();
        a.sweep();
        assert_eq!(m.iter().count(), 10 * PAGE_LEN);
        a.sweep();
        assert!(!a.over_cap(), "{:?}", a);
        // The map file is the same as a heap map's.
        let mut h = PageMap::new();
        for b in 0..10 * PAGE_LEN as u64 {
            h.set(b, 16 + b * 3);
        }
        let g = Guid([5; 16]);
        assert!(m.encode(g, 3) == h.encode(g, 3));
        let img = decode_map_in(&m.encode(g, 3), Some(a.clone())).unwrap();
        assert!(img.map.iter().eq(h.iter()));
        assert_eq!(a.live_pages(), 20);
        drop(img);
        drop(m);
        assert_eq!(a.live_pages(), 0);
    }

    #[test]
    fn a_clone_of_an_arena_map_is_independent_and_dropping_maps_frees_their_pages() {
        let d = scratch();
        let a = arena(&d, 1, 8);
        let mut m = PageMap::new_in(Some(a.clone()));
        for b in (0..20_000u64).step_by(7) {
            m.set(b, 16 + b);
        }
        let pages = a.live_pages();
        let c = m.clone();
        assert_eq!(a.live_pages(), 2 * pages);
        assert!(c.arena().is_some());
        for b in (0..20_000u64).step_by(7) {
            m.set(b, ZERO);
        }
        m.truncate(10_000);
        assert!(c.iter().eq((0..20_000u64).step_by(7).map(|b| (b, 16 + b))));
        assert_eq!(c.chunk_count(), c.len());
        assert_eq!(m.chunk_count(), 0);
        // A truncated map gave its emptied pages back.
        assert!(a.live_pages() < 2 * pages);
        drop(c);
        let before = a.live_pages();
        m.truncate(0);
        assert!(m.is_empty());
        assert_eq!(a.live_pages(), 0, "{before}");
        // Freed slots are reused before the arena grows, and a reused page
        // starts empty.
        let mut n = PageMap::new_in(Some(a.clone()));
        for b in (0..20_000u64).step_by(7) {
            n.set(b, 17);
        }
        assert_eq!(n.iter().count(), (0..20_000u64).step_by(7).count());
        assert_eq!(a.live_pages(), pages);
        // Merged views go in the base's arena.
        let merged = merge([&n, &PageMap::new()]);
        assert!(merged.arena().is_some());
        assert!(merged.iter().eq(n.iter()));
    }

    #[test]
    fn copying_or_scanning_a_big_arena_map_stays_near_the_cap() {
        let d = scratch();
        let a = arena(&d, 4, arena::REGION_SLOTS);
        let mut m = PageMap::new_in(Some(a.clone()));
        let pages = 3 * arena::INLINE_SLACK as u64;
        for b in 0..pages * PAGE_LEN as u64 {
            m.set(b, 16 + b);
        }
        let near = ((4 + arena::INLINE_SLACK + 64) * arena::PAGE_BYTES) as u64;
        // Writing did not wait for the worker either.
        assert!(a.resident_bytes() <= near, "{a:?}");
        let c = m.clone();
        assert!(a.resident_bytes() <= near, "{a:?}");
        assert_eq!(a.live_pages() as u64, 2 * pages);
        assert!(c.iter().eq(m.iter()));
        assert!(a.resident_bytes() <= near, "{a:?}");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u64, u64),
        Truncate(u64),
        IterFrom(u64),
        Get(u64),
        Sweep,
        Clone,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Blocks over a few pages, so pages fill, empty and are reused.
        let block = prop_oneof![0u64..4096, (0u64..8).prop_map(|p| p * PAGE_LEN as u64 + 511)];
        let entry = prop_oneof![Just(ABSENT), Just(ZERO), 16u64..1000];
        prop_oneof![
            6 => (block.clone(), entry).prop_map(|(b, e)| Op::Set(b, e)),
            1 => block.clone().prop_map(Op::Truncate),
            1 => block.clone().prop_map(Op::IterFrom),
            2 => block.prop_map(Op::Get),
            1 => Just(Op::Sweep),
            1 => Just(Op::Clone),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn arena_and_heap_maps_agree_under_random_operations(ops in proptest::collection::vec(op(), 1..300)) {
            let d = scratch();
            let a = arena(&d, 2, 4);
            let mut heap = PageMap::new();
            let mut paged = PageMap::new_in(Some(a.clone()));
            let mut clones = Vec::new();
            for o in ops {
                match o {
                    Op::Set(b, e) => proptest::prop_assert_eq!(heap.set(b, e), paged.set(b, e)),
                    Op::Truncate(b) => proptest::prop_assert_eq!(heap.truncate(b), paged.truncate(b)),
                    Op::IterFrom(b) => proptest::prop_assert!(heap.iter_from(b).eq(paged.iter_from(b))),
                    Op::Get(b) => proptest::prop_assert_eq!(heap.get(b), paged.get(b)),
                    Op::Sweep => {
                        a.sweep();
                    }
                    Op::Clone => clones.push((heap.clone(), paged.clone())),
                }
                proptest::prop_assert_eq!((heap.len(), heap.chunk_count()), (paged.len(), paged.chunk_count()));
            }
            proptest::prop_assert!(heap.iter().eq(paged.iter()));
            for (h, p) in &clones {
                proptest::prop_assert!(h.iter().eq(p.iter()));
            }
            let g = Guid([9; 16]);
            proptest::prop_assert!(heap.encode(g, 1) == paged.encode(g, 1));
            drop(clones);
            drop(paged);
            proptest::prop_assert_eq!(a.live_pages(), 0);
        }
    }
}
