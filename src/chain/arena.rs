//! The page arena behind bounded block maps (`map-cache-bytes`): 4 KiB
//! slots for [`PageMap`](super::PageMap) pages in a shared mapping of a
//! scratch file (`STORE/maps.mem`, truncated at every open, never read
//! across opens, not part of the format), kept to about a cap resident.
//!
//! Slots live in fixed regions of [`REGION_SLOTS`] pages, each its own
//! mapping of the file at its own offset; the arena grows by mapping a new
//! region and never moves or unmaps one while it lives, so a page's address
//! stays valid as long as the arena does (every map holds an `Arc` of it).
//! Pages freed by dropped or truncated maps go on a free list and their
//! file range is punched (`MADV_REMOVE`): a freed page is never written
//! back, and reads as zeros when reused.
//!
//! Each slot has a state byte: `RES` (paged in, as far as we know) and
//! `REF` (the CLOCK reference bit). Lookups and writes set both; scans
//! (checkpoint encoding, SEEK_DATA, merges, clones) set only `RES`, so a
//! scan does not make every page look hot. [`MapArena::sweep`], run by the
//! checkpoint worker, walks the slots with a CLOCK hand while more than the
//! cap is resident: a slot with `REF` loses it, a resident slot without it
//! is handed back to the kernel with `MADV_PAGEOUT` (contiguous runs in one
//! call); a later access faults it back in from the file. Only where the
//! pages live changes, never what they hold.
//!
//! If the scratch file cannot grow, new pages go on the heap (with a
//! warning) and the map works as before, unbounded.
//!
//! Lock order: `hand` (one sweep at a time) → `slots`. No lock is taken on
//! a lookup: the page pointer and its state byte are in the map itself.

use std::fs::File;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use super::PAGE_LEN;

/// Bytes of one page slot.
pub const PAGE_BYTES: usize = PAGE_LEN * 8;
/// Slots per region (16 MiB of file and address space per mapping).
pub const REGION_SLOTS: usize = 4096;

/// Pages past the cap (or an eighth of the cap, if more) at which a page
/// coming in sweeps at once instead of waiting for the worker.
pub const INLINE_SLACK: usize = 256;

/// State bit: touched since the last sweep (CLOCK reference bit).
const REF: u8 = 1;
/// State bit: paged in, as far as the arena knows.
const RES: u8 = 2;
/// A page that is resident and referenced: nothing to record.
pub(super) const HOT: u8 = REF | RES;
/// What a scan records.
pub(super) const SCANNED: u8 = RES;

struct Region {
    map: memmap2::MmapMut,
    states: Box<[AtomicU8]>,
}

struct Slots {
    regions: Vec<Region>,
    /// Free slots, popped from the end.
    free: Vec<u32>,
    /// Slots of the last region handed out so far.
    used_in_last: usize,
    /// After a failed growth, do not retry (nor warn) before this.
    retry_after: Option<std::time::Instant>,
}

/// One page slot handed to a map.
#[derive(Clone, Copy)]
pub(super) struct Slot {
    pub(super) index: u32,
    pub(super) mem: NonNull<[u64; PAGE_LEN]>,
    pub(super) state: NonNull<AtomicU8>,
}

/// Page slots in a scratch file, kept to about `cap_bytes` resident.
pub struct MapArena {
    file: File,
    cap_bytes: u64,
    region_slots: usize,
    slots: Mutex<Slots>,
    /// Slots resident (as far as the arena knows).
    resident: AtomicUsize,
    /// Slots handed out and not freed.
    live: AtomicUsize,
    /// The CLOCK hand, and "one sweep at a time".
    hand: Mutex<usize>,
    /// The filesystem cannot punch holes: freed pages are paged out instead.
    no_punch: AtomicBool,
    /// The kernel has no MADV_PAGEOUT (< 5.4): sweeps do nothing.
    no_pageout: AtomicBool,
}

impl std::fmt::Debug for MapArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapArena")
            .field("cap_bytes", &self.cap_bytes)
            .field("resident_bytes", &self.resident_bytes())
            .field("live_pages", &self.live_pages())
            .finish()
    }
}

impl MapArena {
    /// An arena in a shared mapping of `path` (created or truncated now),
    /// kept to about `cap_bytes` resident by [`sweep`](Self::sweep).
    pub fn file_backed(path: &std::path::Path, cap_bytes: u64) -> std::io::Result<MapArena> {
        Self::with_region_slots(path, cap_bytes, REGION_SLOTS)
    }

    /// [`file_backed`](Self::file_backed) with smaller regions (tests).
    pub fn with_region_slots(path: &std::path::Path, cap_bytes: u64, region_slots: usize) -> std::io::Result<MapArena> {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(MapArena {
            file,
            cap_bytes,
            region_slots: region_slots.max(1),
            slots: Mutex::new(Slots { regions: Vec::new(), free: Vec::new(), used_in_last: 0, retry_after: None }),
            resident: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            hand: Mutex::new(0),
            no_punch: AtomicBool::new(false),
            no_pageout: AtomicBool::new(false),
        })
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot_at(&self, s: &Slots, index: u32) -> Slot {
        let (r, o) = (index as usize / self.region_slots, index as usize % self.region_slots);
        let region = &s.regions[r];
        // SAFETY: `o` < region_slots, and the mapping is region_slots ×
        // PAGE_BYTES long, so the offset stays inside it.
        let mem = unsafe { region.map.as_ptr().add(o * PAGE_BYTES) } as *mut [u64; PAGE_LEN];
        Slot {
            index,
            mem: NonNull::new(mem).expect("a mapping is never at address 0"),
            state: NonNull::from(&region.states[o]),
        }
    }

    /// Map one more region of the file.
    fn grow(&self, s: &mut Slots) -> std::io::Result<()> {
        let region_bytes = self.region_slots * PAGE_BYTES;
        let r = s.regions.len();
        let end = ((r + 1) * region_bytes) as u64;
        if (r + 1) * self.region_slots > u32::MAX as usize {
            return Err(std::io::Error::other("the map arena is full (2^32 pages)"));
        }
        if self.file.metadata()?.len() < end {
            self.file.set_len(end)?;
        }
        // SAFETY: a private scratch file only this arena maps and nothing
        // else writes; the region is mapped once and kept until the arena
        // drops, after every map (which holds an Arc of it).
        let map = unsafe {
            memmap2::MmapOptions::new().offset((r * region_bytes) as u64).len(region_bytes).map_mut(&self.file)?
        };
        s.regions.push(Region { map, states: (0..self.region_slots).map(|_| AtomicU8::new(0)).collect() });
        s.used_in_last = 0;
        Ok(())
    }

    /// Up to `n` slots (fewer if the scratch file cannot grow; the caller
    /// puts those pages on the heap). Their content is unspecified; each is
    /// marked resident but not referenced.
    pub(super) fn alloc(&self, n: usize) -> Vec<Slot> {
        let mut out = Vec::with_capacity(n);
        let mut s = self.lock_slots();
        while out.len() < n {
            if let Some(i) = s.free.pop() {
                out.push(self.slot_at(&s, i));
                continue;
            }
            if s.regions.is_empty() || s.used_in_last == self.region_slots {
                if s.retry_after.is_some_and(|t| std::time::Instant::now() < t) {
                    break;
                }
                if let Err(e) = self.grow(&mut s) {
                    // No room for the scratch file: keep going in RAM.
                    tracing::warn!(%e, "block map pages in RAM: the map scratch file could not grow");
                    s.retry_after = Some(std::time::Instant::now() + std::time::Duration::from_secs(10));
                    break;
                }
                s.retry_after = None;
            }
            let i = (s.regions.len() - 1) * self.region_slots + s.used_in_last;
            s.used_in_last += 1;
            out.push(self.slot_at(&s, i as u32));
        }
        drop(s);
        self.live.fetch_add(out.len(), Ordering::Relaxed);
        for sl in &out {
            // SAFETY: state bytes live in their region, as long as the arena.
            self.mark(unsafe { sl.state.as_ref() }, SCANNED);
        }
        out
    }

    /// Give slots back. Their pages are discarded (punched from the file),
    /// so a freed page is never written back.
    pub(super) fn free(&self, indices: &mut [u32]) {
        if indices.is_empty() {
            return;
        }
        indices.sort_unstable();
        let mut s = self.lock_slots();
        // Punch contiguous runs while holding the slot lock: nobody can
        // take these slots back before their pages are gone.
        let mut i = 0;
        while i < indices.len() {
            let mut j = i + 1;
            while j < indices.len()
                && indices[j] == indices[j - 1] + 1
                && !(indices[j] as usize).is_multiple_of(self.region_slots)
            {
                j += 1;
            }
            let first = self.slot_at(&s, indices[i]);
            let punched = !self.no_punch.load(Ordering::Relaxed) && {
                // SAFETY: advice on our own shared mapping, over slots no
                // map owns any more (the run stays inside one region);
                // MADV_REMOVE frees the file range, which then reads as zeros.
                let r = unsafe {
                    libc::madvise(first.mem.as_ptr() as *mut libc::c_void, (j - i) * PAGE_BYTES, libc::MADV_REMOVE)
                };
                if r != 0 {
                    self.no_punch.store(true, Ordering::Relaxed);
                }
                r == 0
            };
            for &ix in &indices[i..j] {
                let sl = self.slot_at(&s, ix);
                // SAFETY: state bytes live in their region, as long as the arena.
                let st = unsafe { sl.state.as_ref() };
                let prev = st.fetch_and(if punched { !(REF | RES) } else { !REF }, Ordering::Relaxed);
                if punched && prev & RES != 0 {
                    self.resident.fetch_sub(1, Ordering::Relaxed);
                }
            }
            i = j;
        }
        // Popped from the end: the lowest slots are reused first.
        s.free.extend(indices.iter().rev());
        drop(s);
        self.live.fetch_sub(indices.len(), Ordering::Relaxed);
    }

    /// Record an access that found the state byte without `bits`.
    ///
    /// A page coming in may start a sweep here, in the caller's thread,
    /// once the arena is [`INLINE_SLACK`] past its cap: a bulk copy or a
    /// scan (a checkpoint's map copies and their encoding, a merged view
    /// being built) brings in pages faster than the worker's tick.
    #[cold]
    pub(super) fn mark(&self, state: &AtomicU8, bits: u8) {
        let prev = state.fetch_or(bits, Ordering::Relaxed);
        if prev & RES == 0 {
            let resident = self.resident.fetch_add(1, Ordering::Relaxed) + 1;
            let cap = self.cap_pages();
            if resident > cap + (cap / 8).max(INLINE_SLACK) && resident.is_multiple_of(64) {
                self.sweep();
            }
        }
    }

    /// Bytes of pages resident, as far as the arena knows.
    pub fn resident_bytes(&self) -> u64 {
        (self.resident.load(Ordering::Relaxed) * PAGE_BYTES) as u64
    }

    /// Pages handed out to maps and not freed.
    pub fn live_pages(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }

    /// More than the cap is resident, so a sweep is worth it.
    pub fn over_cap(&self) -> bool {
        self.resident.load(Ordering::Relaxed) > self.cap_pages()
    }

    /// The cap in pages (at least one).
    fn cap_pages(&self) -> usize {
        (self.cap_bytes / PAGE_BYTES as u64).max(1) as usize
    }

    /// While more than the cap is resident, page out pages not referenced
    /// since the previous sweep (CLOCK); returns the pages paged out.
    pub fn sweep(&self) -> usize {
        if self.no_pageout.load(Ordering::Relaxed) {
            return 0;
        }
        let Ok(mut hand) = self.hand.try_lock() else { return 0 };
        let cap = self.cap_pages();
        // Regions never move nor go away while the arena lives: note their
        // addresses and work without the slot lock.
        let regions: Vec<(*mut u8, *const AtomicU8)> =
            self.lock_slots().regions.iter().map(|r| (r.map.as_ptr() as *mut u8, r.states.as_ptr())).collect();
        let n = regions.len() * self.region_slots;
        if n == 0 {
            return 0;
        }
        let state = |i: usize| -> &AtomicU8 {
            // SAFETY: i < n, so the region exists and the offset is inside
            // its state array, which lives as long as the arena (`self`).
            unsafe { &*regions[i / self.region_slots].1.add(i % self.region_slots) }
        };
        let mut out = 0;
        // A run of cold resident slots [start, start + len) not yet paged out.
        let mut run: Option<(usize, usize)> = None;
        let flush = |run: &mut Option<(usize, usize)>, out: &mut usize| -> bool {
            let Some((start, len)) = run.take() else { return true };
            let (base, _) = regions[start / self.region_slots];
            // SAFETY: advice on our own mapping, over whole slots of one
            // region; MADV_PAGEOUT writes dirty pages back and drops them,
            // contents stay.
            let r = unsafe {
                libc::madvise(
                    base.add((start % self.region_slots) * PAGE_BYTES) as *mut libc::c_void,
                    len * PAGE_BYTES,
                    libc::MADV_PAGEOUT,
                )
            };
            if r != 0 {
                self.no_pageout.store(true, Ordering::Relaxed);
                return false;
            }
            for i in start..start + len {
                if state(i).fetch_and(!RES, Ordering::Relaxed) & RES != 0 {
                    self.resident.fetch_sub(1, Ordering::Relaxed);
                    *out += 1;
                }
            }
            true
        };
        let mut steps = 0;
        while steps < 2 * n && self.resident.load(Ordering::Relaxed).saturating_sub(run.map_or(0, |r| r.1)) > cap {
            let i = *hand % n;
            *hand = (i + 1) % n;
            steps += 1;
            let st = state(i);
            let s = st.load(Ordering::Relaxed);
            let cold = s & RES != 0 && (s & REF == 0 || st.fetch_and(!REF, Ordering::Relaxed) & REF == 0);
            match (&mut run, cold) {
                (Some((start, len)), true) if *start + *len == i && !i.is_multiple_of(self.region_slots) => *len += 1,
                (_, true) => {
                    if !flush(&mut run, &mut out) {
                        return out;
                    }
                    run = Some((i, 1));
                }
                (_, false) => {
                    if !flush(&mut run, &mut out) {
                        return out;
                    }
                }
            }
        }
        flush(&mut run, &mut out);
        out
    }

    /// Page out again, in runs, every slot the arena counts as out (neither
    /// referenced nor resident). The kernel can map such pages back without
    /// an access through a map: a read fault maps in the cached neighbours
    /// of the page it wants (fault-around), and `MADV_PAGEOUT` passes over a
    /// page under writeback. Those pages are in the process's RSS but not in
    /// the count the CLOCK sweep works from; this pass (cheap for pages that
    /// are really out: a page-table walk) keeps the count honest. Run by the
    /// worker's tick after [`sweep`](Self::sweep); returns the runs advised.
    pub fn page_out_strays(&self) -> usize {
        if self.no_pageout.load(Ordering::Relaxed) {
            return 0;
        }
        let Ok(_hand) = self.hand.try_lock() else { return 0 };
        let regions: Vec<(*mut u8, *const AtomicU8)> =
            self.lock_slots().regions.iter().map(|r| (r.map.as_ptr() as *mut u8, r.states.as_ptr())).collect();
        let mut runs = 0;
        for (base, states) in regions {
            let mut o = 0;
            while o < self.region_slots {
                // SAFETY: o < region_slots, the length of the region's state
                // array, which lives as long as the arena (`self`).
                let out = |o: usize| unsafe { &*states.add(o) }.load(Ordering::Relaxed) == 0;
                if !out(o) {
                    o += 1;
                    continue;
                }
                let start = o;
                while o < self.region_slots && out(o) {
                    o += 1;
                }
                // SAFETY: advice on our own mapping over whole slots of one
                // region; contents stay (a slot counted out that someone is
                // touching right now just faults back in).
                let r = unsafe {
                    libc::madvise(
                        base.add(start * PAGE_BYTES) as *mut libc::c_void,
                        (o - start) * PAGE_BYTES,
                        libc::MADV_PAGEOUT,
                    )
                };
                if r != 0 {
                    return runs;
                }
                runs += 1;
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap()
    }

    fn write(s: &Slot, seed: u64) {
        // SAFETY (test): the slot is ours until freed.
        let p = unsafe { &mut *s.mem.as_ptr() };
        for (i, e) in p.iter_mut().enumerate() {
            *e = seed * 1000 + i as u64;
        }
    }

    fn read(s: &Slot, seed: u64) -> bool {
        // SAFETY (test): the slot is ours until freed.
        let p = unsafe { &*s.mem.as_ptr() };
        p.iter().enumerate().all(|(i, e)| *e == seed * 1000 + i as u64)
    }

    #[test]
    fn slots_are_handed_out_across_regions_and_reused_after_free() {
        let d = scratch();
        let a = MapArena::with_region_slots(&d.path().join("maps.mem"), 1 << 30, 4).unwrap();
        let slots = a.alloc(10);
        assert_eq!(slots.iter().map(|s| s.index).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        assert_eq!(a.live_pages(), 10);
        assert_eq!(a.resident_bytes(), 10 * PAGE_BYTES as u64);
        for (k, s) in slots.iter().enumerate() {
            write(s, k as u64);
        }
        // Pages in different regions do not overlap.
        for (k, s) in slots.iter().enumerate() {
            assert!(read(s, k as u64), "slot {k}");
        }
        let mut gone = vec![7, 2, 3];
        a.free(&mut gone);
        assert_eq!(a.live_pages(), 7);
        // Freed pages were discarded: not resident any more.
        assert_eq!(a.resident_bytes(), 7 * PAGE_BYTES as u64);
        let again = a.alloc(4);
        assert_eq!(again.iter().map(|s| s.index).collect::<Vec<_>>(), vec![2, 3, 7, 10]);
        assert_eq!(a.live_pages(), 11);
        // A reused page reads as zeros (punched), or at least can be rewritten.
        write(&again[0], 99);
        assert!(read(&again[0], 99));
        for k in [0u64, 1, 4, 5, 6, 8, 9] {
            assert!(read(&slots[k as usize], k), "slot {k} after reuse of others");
        }
    }

    #[test]
    fn a_sweep_pages_out_cold_pages_and_they_read_back() {
        let d = scratch();
        let a = MapArena::with_region_slots(&d.path().join("maps.mem"), 3 * PAGE_BYTES as u64, 8).unwrap();
        let slots = a.alloc(20);
        for (k, s) in slots.iter().enumerate() {
            write(s, k as u64 + 1);
        }
        assert!(a.over_cap());
        // Slot 19 is referenced: the CLOCK spares it once.
        // SAFETY (test): state bytes live as long as the arena.
        a.mark(unsafe { slots[19].state.as_ref() }, HOT);
        let out = a.sweep();
        assert!(out >= 17, "{out}");
        assert!(!a.over_cap());
        assert!(a.resident_bytes() <= 3 * PAGE_BYTES as u64);
        // SAFETY (test): as above.
        assert_eq!(unsafe { slots[19].state.as_ref() }.load(Ordering::Relaxed) & RES, RES);
        // Everything reads back, faulted in from the scratch file.
        for (k, s) in slots.iter().enumerate() {
            assert!(read(s, k as u64 + 1), "slot {k}");
        }
    }
}
