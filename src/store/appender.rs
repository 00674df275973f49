//! Appending to the active pack, with large appends done as O_DIRECT
//! writes from an aligned staging buffer, outside the pack lock.
//!
//! A buffered `pwrite` copies every byte into the page cache; for 1 MiB
//! sequential writes that copy was the biggest cost left in the daemon once
//! compression was deferred (perf, BENCHMARKS.md). Appends of at least
//! `DIRECT_MIN_BYTES` therefore go to the disk directly: the staging buffer
//! holds the current partial last 4 KiB block of the pack (`tail`, the
//! bytes already written there), then the new bytes, then zeros up to the
//! next 4 KiB boundary, and is written with aligned O_DIRECT `pwrite`s at
//! the block boundary. Rewriting the tail block writes the same bytes
//! that are already there, so a torn write cannot damage earlier records.
//! The zeros past the logical end are overwritten by the next append; a
//! pack can therefore end in zero bytes after its last record (FORMAT.md),
//! which readers never look at, `check` ignores, open trims from the
//! active pack, and sealing truncates from a full pack.
//!
//! **Concurrent direct appends.** Only the reservation is serialised:
//! under the pack lock an append takes its byte range and fills the
//! calling thread's staging buffer ([`ActivePack::stage`]); the disk write
//! happens after the lock is released ([`Staged::write`]), so the next
//! request's copy and write overlap this one's write. Two appends in flight
//! share at most one 4 KiB block: the earlier one's partial last block,
//! which the later one rewrites with the earlier one's tail bytes plus its
//! own first bytes. The later one therefore writes everything after that
//! block first, waits for the earlier write to land ([`Landing`]), and
//! only then writes the shared block, so the earlier write's zero padding
//! can never land over the later one's bytes. Measured gain: 1 MiB writes
//! at queue depth 16 through the mount, +17–26 % (BENCHMARKS.md §1).
//!
//! Small appends (one 4 KiB random write) stay buffered, written under
//! the lock: a synchronous O_DIRECT write per 4 KiB block costs a device
//! round trip (about 60 µs here, against 10 for a buffered one). One that
//! starts inside the block of a direct write still in flight waits for it
//! first (a buffered write reads the rest of that block into the page
//! cache, and must not read it before the direct write lands). Where
//! O_DIRECT cannot be opened (tmpfs, some network filesystems) everything
//! is buffered. The kernel keeps buffered and direct I/O to one file
//! coherent.

use crate::fault::{self, Faults, Point};
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

/// Appends at least this large are written with O_DIRECT.
pub const DIRECT_MIN_BYTES: usize = 128 << 10;
const ALIGN: usize = 4096;

/// A zeroed, 4 KiB-aligned, growable byte buffer for O_DIRECT writes.
struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the buffer is plain owned memory with one owner at a time.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    const fn empty() -> AlignedBuf {
        AlignedBuf { ptr: std::ptr::null_mut(), cap: 0 }
    }

    /// A slice of at least `len` bytes (contents unspecified).
    fn get(&mut self, len: usize) -> &mut [u8] {
        if len > self.cap {
            self.free();
            let cap = len.next_power_of_two().max(ALIGN);
            let layout = std::alloc::Layout::from_size_align(cap, ALIGN).expect("valid layout");
            // SAFETY: non-zero size; freed with the same layout in `free`.
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            self.ptr = p;
            self.cap = cap;
        }
        // SAFETY: ptr is valid for cap ≥ len bytes and exclusively ours.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            let layout = std::alloc::Layout::from_size_align(self.cap, ALIGN).expect("valid layout");
            // SAFETY: allocated in `get` with this layout.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.free();
    }
}

thread_local! {
    /// Each thread keeps a staging buffer for its direct appends; a staged
    /// append owns it until its write is over, so the write can happen
    /// after the pack lock is released.
    static STAGING: RefCell<AlignedBuf> = const { RefCell::new(AlignedBuf::empty()) };
}

/// Set once a direct append's writes are over (landed or failed).
#[derive(Default)]
pub(super) struct Landing {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Landing {
    fn wait(&self) {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*d {
            d = self.cv.wait(d).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }
}

/// A direct append whose range is reserved and whose bytes are staged,
/// to be written with [`Staged::write`]. Dropping it marks its write over
/// (so a later append waiting for it never hangs) and gives the staging
/// buffer back to the thread.
pub(super) struct Staged {
    pub pack_id: u32,
    /// Where the appended bytes start, and how many.
    pub off: u64,
    pub len: usize,
    direct: Arc<File>,
    /// File offset of the staging buffer's first byte (4 KiB-aligned).
    at: u64,
    padded: usize,
    /// The pack's partial last block before this append (`off - at` bytes).
    head: Vec<u8>,
    /// The write in flight whose last block this one's first block rewrites.
    prev: Option<Arc<Landing>>,
    landing: Arc<Landing>,
    buf: AlignedBuf,
}

impl Staged {
    /// Write the staged bytes (may be called again after a failure).
    pub fn write(&self, faults: &Faults) -> io::Result<()> {
        // SAFETY: `stage` filled `padded` ≤ cap bytes; nothing else
        // writes the buffer while it is ours.
        let buf = unsafe { std::slice::from_raw_parts(self.buf.ptr, self.padded) };
        match &self.prev {
            Some(prev) if !self.head.is_empty() => {
                fault::write_split_at(faults, Point::PackWrite, &self.direct, buf, self.at, ALIGN, || prev.wait())
            }
            _ => fault::write_at(faults, Point::PackWrite, &self.direct, buf, self.at),
        }
    }
}

impl Staged {
    /// Mark this append's writes over (before taking the pack lock again:
    /// a buffered append holding it may be waiting for this).
    pub fn finish(&self) {
        self.landing.finish();
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.landing.finish();
        let buf = std::mem::replace(&mut self.buf, AlignedBuf::empty());
        // Keep the larger buffer (a thread being torn down keeps none).
        let _ = STAGING.try_with(|s| {
            let mut s = s.borrow_mut();
            if buf.cap > s.cap {
                *s = buf;
            }
        });
    }
}

/// The pack new records are appended to.
pub(super) struct ActivePack {
    pub id: u32,
    pub file: Arc<File>,
    /// Logical length: the end of the last record reserved.
    pub len: u64,
    /// An append failed with later ones in flight: its range stays as a
    /// gap, and the next append starts a new pack.
    pub broken: bool,
    /// The same file opened O_DIRECT, when the filesystem allows it.
    direct: Option<Arc<File>>,
    /// Bytes of the partial last 4 KiB block (`len % 4096` of them).
    tail: Vec<u8>,
    /// The newest direct append (its write may still be in flight).
    last: Option<Arc<Landing>>,
}

fn open_direct(path: &Path) -> Option<File> {
    match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!(path = %path.display(), %e, "no O_DIRECT for pack appends; writing through the page cache");
            None
        }
    }
}

impl ActivePack {
    /// Take over pack `path` whose records end at `len` (the file may be
    /// longer: padding, or an unfinished append the caller trims).
    pub fn new(id: u32, file: Arc<File>, path: &Path, len: u64) -> io::Result<ActivePack> {
        let mut a = ActivePack {
            id,
            file,
            len,
            broken: false,
            direct: open_direct(path).map(Arc::new),
            tail: Vec::new(),
            last: None,
        };
        a.load_tail()?;
        Ok(a)
    }

    fn load_tail(&mut self) -> io::Result<()> {
        let n = (self.len % ALIGN as u64) as usize;
        self.tail.resize(n, 0);
        self.file.read_exact_at(&mut self.tail, self.len - n as u64)
    }

    /// Cut the pack back to `end` (dropping an unfinished append). Only
    /// with no append in flight (at open).
    pub fn truncate(&mut self, end: u64) -> io::Result<()> {
        self.file.set_len(end)?;
        self.file.sync_all()?;
        self.len = end;
        self.last = None;
        self.load_tail()
    }

    /// Remove O_DIRECT padding past the last record (when the pack is sealed).
    pub fn trim_padding(&self) {
        if self.file.metadata().map(|m| m.len() > self.len).unwrap_or(false)
            && let Err(e) = self.file.set_len(self.len)
        {
            // Harmless: zeros after the last record are allowed.
            tracing::warn!(pack = self.id, %e, "could not trim pack padding");
        }
    }

    /// Append `bytes` at the logical end; returns the offset they start at.
    /// On error nothing past the old end counts (the caller truncates).
    #[cfg(test)]
    pub fn append(&mut self, faults: &Faults, bytes: &[u8]) -> io::Result<u64> {
        match self.stage(bytes.len(), |dst| dst.copy_from_slice(bytes)) {
            Some(st) => st.write(faults).map(|()| st.off),
            None => self.append_buffered(faults, bytes.len(), |dst| dst.copy_from_slice(bytes)),
        }
    }

    /// Reserve `len` bytes at the logical end for a direct append and let
    /// `fill` write them into this thread's staging buffer (one copy of the
    /// data). None: the append is too small for O_DIRECT, or the file
    /// cannot take it; use [`ActivePack::append_buffered`].
    pub fn stage(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Option<Staged> {
        let direct = self.direct.as_ref().filter(|_| len >= DIRECT_MIN_BYTES)?.clone();
        let off = self.len;
        let head = std::mem::take(&mut self.tail);
        let total = head.len() + len;
        let padded = total.div_ceil(ALIGN) * ALIGN;
        let n = ((off + len as u64) % ALIGN as u64) as usize;
        let mut staging = STAGING.with(|s| std::mem::replace(&mut *s.borrow_mut(), AlignedBuf::empty()));
        let buf = staging.get(padded);
        buf[..head.len()].copy_from_slice(&head);
        fill(&mut buf[head.len()..total]);
        buf[total..].fill(0);
        // The new partial last block.
        self.tail.extend_from_slice(&buf[total - n..total]);
        let landing = Arc::new(Landing::default());
        let prev = self.last.replace(landing.clone());
        self.len += len as u64;
        Some(Staged {
            pack_id: self.id,
            off,
            len,
            direct,
            at: off - head.len() as u64,
            padded,
            head,
            prev,
            landing,
            buf: staging,
        })
    }

    /// Append `len` bytes that `fill` writes, through the page cache, at
    /// the logical end; returns the offset they start at. On error nothing
    /// past the old end counts (the caller truncates).
    pub fn append_buffered(&mut self, faults: &Faults, len: usize, fill: impl FnOnce(&mut [u8])) -> io::Result<u64> {
        let off = self.len;
        if !self.tail.is_empty()
            && let Some(last) = &self.last
        {
            last.wait();
        }
        let n = ((off + len as u64) % ALIGN as u64) as usize;
        let mut bytes = vec![0u8; len];
        fill(&mut bytes);
        fault::write_at(faults, Point::PackWrite, &self.file, &bytes, off)?;
        if n <= len {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[len - n..]);
        } else {
            self.tail.extend_from_slice(&bytes);
        }
        self.len += len as u64;
        debug_assert_eq!(self.tail.len(), n);
        Ok(off)
    }

    /// Undo a staged append whose write failed: when nothing was reserved
    /// after it, the pack is cut back to where it started; otherwise its
    /// range stays as an unused gap (`check` reports it as unused) and the
    /// next append starts a new pack.
    pub fn abandon(&mut self, st: &Staged) {
        debug_assert!(*st.landing.done.lock().unwrap_or_else(|p| p.into_inner()), "finish before abandon");
        if self.id != st.pack_id {
            return; // sealed meanwhile; the range is its unused tail
        }
        if self.len == st.off + st.len as u64
            && self.last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &st.landing))
            && self.file.set_len(st.off).is_ok()
        {
            self.len = st.off;
            self.tail = st.head.clone();
            self.last = st.prev.clone();
            return;
        }
        self.broken = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a disk-backed filesystem when there is one (tmpfs may refuse
    /// O_DIRECT, which only means everything is buffered).
    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap()
    }

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
    }

    #[test]
    fn mixed_direct_and_buffered_appends_read_back_as_one_stream() {
        let d = scratch();
        let path = d.path().join("p");
        let f = Arc::new(OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap());
        f.write_all_at(&[7u8; 64], 0).unwrap();
        let mut a = ActivePack::new(1, f.clone(), &path, 64).unwrap();
        let faults = Faults::default();
        let mut expect = vec![7u8; 64];
        // Unaligned starts and ends, both paths, crossing blocks.
        for (i, len) in [4160usize, 300_000, 1, 4096, 1 << 20, 77, 200_000, 4160 * 3].iter().enumerate() {
            let b = bytes(*len, i as u8);
            let off = a.append(&faults, &b).unwrap();
            assert_eq!(off as usize, expect.len());
            expect.extend_from_slice(&b);
        }
        assert_eq!(a.len as usize, expect.len());
        let mut got = vec![0u8; expect.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, expect);
        // Past the logical end: nothing but zero padding, under 4 KiB.
        let flen = f.metadata().unwrap().len() as usize;
        assert!(flen >= expect.len() && flen - expect.len() < 4096);
        let mut pad = vec![0u8; flen - expect.len()];
        f.read_exact_at(&mut pad, expect.len() as u64).unwrap();
        assert!(pad.iter().all(|&x| x == 0));
        a.trim_padding();
        assert_eq!(f.metadata().unwrap().len() as usize, expect.len());
        // Truncating reloads the tail: the next append still lines up.
        a.truncate(70_000).unwrap();
        let b = bytes(300_000, 9);
        assert_eq!(a.append(&faults, &b).unwrap(), 70_000);
        let mut got = vec![0u8; 370_000];
        f.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got[..70_000], &expect[..70_000]);
        assert_eq!(&got[70_000..], &b[..]);
    }

    fn new_pack(d: &tempfile::TempDir) -> (Arc<File>, ActivePack) {
        let path = d.path().join("p");
        let f = Arc::new(OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap());
        f.write_all_at(&[7u8; 64], 0).unwrap();
        let a = ActivePack::new(1, f.clone(), &path, 64).unwrap();
        (f, a)
    }

    /// Appends from several threads, direct ones written outside the lock
    /// and overlapping, with unaligned lengths so neighbours share blocks:
    /// every byte lands where its append was told it would.
    #[test]
    fn concurrent_appends_share_blocks_without_losing_bytes() {
        let d = scratch();
        let (f, a) = new_pack(&d);
        let a = Mutex::new(a);
        let faults = Faults::default();
        let placed: Mutex<Vec<(u64, Vec<u8>)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let (a, faults, placed) = (&a, &faults, &placed);
                s.spawn(move || {
                    for i in 0..60usize {
                        let len = match (i + t as usize) % 5 {
                            0 => 4160,
                            1 => 77 + i,
                            2 => (1 << 20) + 4160 * i,
                            3 => 133_120 + 13 * i,
                            _ => 4160 * 64,
                        };
                        let b = bytes(len, t.wrapping_mul(61).wrapping_add(i as u8));
                        let mut g = a.lock().unwrap();
                        let off = match g.stage(len, |dst| dst.copy_from_slice(&b)) {
                            Some(st) => {
                                drop(g);
                                st.write(faults).unwrap();
                                st.off
                            }
                            None => g.append_buffered(faults, len, |dst| dst.copy_from_slice(&b)).unwrap(),
                        };
                        placed.lock().unwrap().push((off, b));
                    }
                });
            }
        });
        let a = a.into_inner().unwrap();
        let mut placed = placed.into_inner().unwrap();
        placed.sort_by_key(|p| p.0);
        let mut end = 64u64;
        for (off, b) in &placed {
            assert_eq!(*off, end, "appends are contiguous");
            let mut got = vec![0u8; b.len()];
            f.read_exact_at(&mut got, *off).unwrap();
            assert!(got == *b, "append at {off} ({} bytes) reads back different", b.len());
            end += b.len() as u64;
        }
        assert_eq!(a.len, end);
    }

    /// A failed direct append is cut off when nothing follows it; with a
    /// later append already reserved it stays as a gap, the later one
    /// still lands, and the pack is marked for replacement.
    #[test]
    fn a_failed_direct_append_is_cut_off_or_left_as_a_gap() {
        let d = scratch();
        let (f, mut a) = new_pack(&d);
        if a.direct.is_none() {
            return; // no O_DIRECT here: nothing is staged
        }
        let faults = Faults::default();
        let first = bytes(300_001, 1);
        a.append(&faults, &first).unwrap();
        // Last one fails: cut back, tail restored, the next lines up.
        faults.arm(Point::PackWrite, crate::fault::Fault::Torn, 0, Some(1));
        let st = a.stage(200_000, |dst| dst.fill(9)).unwrap();
        assert!(st.write(&faults).is_err());
        st.finish();
        a.abandon(&st);
        drop(st);
        assert!(!a.broken);
        assert_eq!(a.len, 64 + 300_001);
        let next = bytes(150_000, 2);
        assert_eq!(a.append(&faults, &next).unwrap(), 64 + 300_001);
        let mut got = vec![0u8; 450_001];
        f.read_exact_at(&mut got, 64).unwrap();
        assert!(got[..300_001] == first[..] && got[300_001..] == next[..]);
        // One fails with a later one reserved: a gap, the pack is broken.
        let s1 = a.stage(140_000, |dst| dst.fill(3)).unwrap();
        let later = bytes(140_000, 4);
        let s2 = a.stage(later.len(), |dst| dst.copy_from_slice(&later));
        let s2 = s2.unwrap();
        // s1 fails (before s2 lands: s2's shared block waits for it).
        faults.arm(Point::PackWrite, crate::fault::Fault::Eio, 0, Some(1));
        assert!(s1.write(&faults).is_err());
        s1.finish();
        a.abandon(&s1);
        assert!(a.broken);
        s2.write(&Faults::default()).unwrap();
        let mut got = vec![0u8; later.len()];
        f.read_exact_at(&mut got, s2.off).unwrap();
        assert!(got == later);
    }
}
