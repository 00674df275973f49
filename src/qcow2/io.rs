//! The storage seam under the reader: positional reads from anything.
//!
//! The parser is generic over [`ReadAt`] so that the fuzzer and the unit
//! tests run it on byte slices in memory, and the real reader uses `pread`
//! on a [`File`] without a seek position, so `&self` reads from several
//! threads do not race.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Positional, shared-reference reads (`pread`).
pub trait ReadAt {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were
    /// read, 0 at or past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The current length in bytes.
    fn len_bytes(&self) -> io::Result<u64>;
}

impl ReadAt for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else { return Ok(0) };
        if start >= self.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
    fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn len_bytes(&self) -> io::Result<u64> {
        (**self).len_bytes()
    }
}

/// Fills `buf` from `offset`, looping over short reads; bytes past the end
/// of the file are left as zeros (as qemu reads them). Returns how many bytes
/// came from the file.
pub(crate) fn read_full<R: ReadAt + ?Sized>(r: &R, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let Some(at) = offset.checked_add(done as u64) else { break };
        match r.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(done)
}
