//! Appending to the active pack, with large appends done as O_DIRECT
//! writes from an aligned staging buffer.
//!
//! A buffered `pwrite` copies every byte into the page cache; for 1 MiB
//! sequential writes that copy was the biggest cost left in the daemon once
//! compression was deferred (perf, BENCHMARKS.md). Appends of at least
//! `DIRECT_MIN_BYTES` therefore go to the disk directly: the staging buffer
//! holds the current partial last 4 KiB block of the pack (`tail`, the
//! bytes already written there), then the new bytes, then zeros up to the
//! next 4 KiB boundary, and is written with one aligned O_DIRECT `pwrite`
//! at the block boundary. Rewriting the tail block writes the same bytes
//! that are already there, so a torn write cannot damage earlier records.
//! The zeros past the logical end are overwritten by the next append; a
//! pack can therefore end in up to 4095 zero bytes after its last record
//! (FORMAT.md), which readers never look at, `check` ignores, open trims
//! from the active pack, and sealing truncates from a full pack.
//!
//! Small appends (one 4 KiB random write) stay buffered: a synchronous
//! O_DIRECT write per 4 KiB block costs a device round trip (about 60 µs
//! here, against 10 for a buffered one). Where O_DIRECT cannot be opened
//! (tmpfs, some network filesystems) everything is buffered. The kernel
//! keeps buffered and direct I/O to one file coherent.

use crate::fault::{self, Faults, Point};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// Appends at least this large are written with O_DIRECT.
pub const DIRECT_MIN_BYTES: usize = 128 << 10;
const ALIGN: usize = 4096;

/// A zeroed, 4 KiB-aligned, growable byte buffer for O_DIRECT writes.
struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the buffer is plain owned memory, used under the pack mutex.
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

/// The pack new records are appended to.
pub(super) struct ActivePack {
    pub id: u32,
    pub file: Arc<File>,
    /// Logical length: the end of the last record written.
    pub len: u64,
    /// The same file opened O_DIRECT, when the filesystem allows it.
    direct: Option<File>,
    /// Bytes of the partial last 4 KiB block (`len % 4096` of them).
    tail: Vec<u8>,
    staging: AlignedBuf,
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
        let mut a =
            ActivePack { id, file, len, direct: open_direct(path), tail: Vec::new(), staging: AlignedBuf::empty() };
        a.load_tail()?;
        Ok(a)
    }

    fn load_tail(&mut self) -> io::Result<()> {
        let n = (self.len % ALIGN as u64) as usize;
        self.tail.resize(n, 0);
        self.file.read_exact_at(&mut self.tail, self.len - n as u64)
    }

    /// Cut the pack back to `end` (dropping an unfinished append).
    pub fn truncate(&mut self, end: u64) -> io::Result<()> {
        self.file.set_len(end)?;
        self.file.sync_all()?;
        self.len = end;
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
        self.append_with(faults, bytes.len(), |dst| dst.copy_from_slice(bytes))
    }

    /// Append `len` bytes that `fill` writes into the slice it is given
    /// (on the O_DIRECT path, straight into the staging buffer: one copy of
    /// the data instead of two). Returns the offset they start at.
    pub fn append_with(&mut self, faults: &Faults, len: usize, fill: impl FnOnce(&mut [u8])) -> io::Result<u64> {
        let off = self.len;
        let head = self.tail.len();
        let n = ((off + len as u64) % ALIGN as u64) as usize;
        match &self.direct {
            Some(d) if len >= DIRECT_MIN_BYTES => {
                let total = head + len;
                let padded = total.div_ceil(ALIGN) * ALIGN;
                let buf = self.staging.get(padded);
                buf[..head].copy_from_slice(&self.tail);
                fill(&mut buf[head..total]);
                buf[total..].fill(0);
                fault::write_at(faults, Point::PackWrite, d, buf, off - head as u64)?;
                // The new partial last block.
                self.tail.clear();
                self.tail.extend_from_slice(&buf[total - n..total]);
            }
            _ => {
                let mut bytes = vec![0u8; len];
                fill(&mut bytes);
                fault::write_at(faults, Point::PackWrite, &self.file, &bytes, off)?;
                if n <= len {
                    self.tail.clear();
                    self.tail.extend_from_slice(&bytes[len - n..]);
                } else {
                    self.tail.extend_from_slice(&bytes);
                }
            }
        }
        self.len += len as u64;
        debug_assert_eq!(self.tail.len(), n);
        Ok(off)
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
}
