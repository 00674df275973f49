//! Byte-level helpers shared by every on-disk structure: little-endian
//! field access with bounds checks, the record checksum, and atomic file
//! replacement.
//!
//! Every structure in FORMAT.md is little-endian. Readers go through
//! [`Reader`], which returns an error instead of panicking when bytes from
//! disk are short, so a truncated file is reported, never a crash.
//!
//! Depends on: `hash`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// The block size: the unit of dedup, mapping and copy-on-write.
pub const BLOCK_SIZE: usize = 4096;
pub const BLOCK_SIZE_U64: u64 = BLOCK_SIZE as u64;

/// The 32-bit checksum used in headers: the first four bytes of BLAKE3.
pub fn checksum32(data: &[u8]) -> u32 {
    let h = crate::hash::short(data);
    u32::from_le_bytes(h[..4].try_into().expect("4 bytes"))
}

/// Is the slice all zeros? Fast path for the zero-block sentinel.
pub fn is_zero(data: &[u8]) -> bool {
    let (prefix, words, suffix) = unsafe {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets
        // the aligned middle part of an initialised byte slice.
        data.align_to::<u64>()
    };
    prefix.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && suffix.iter().all(|&b| b == 0)
}

/// An error decoding bytes that came from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated {
    pub wanted: usize,
    pub at: usize,
    pub len: usize,
}

impl std::fmt::Display for Truncated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "truncated: wanted {} bytes at offset {} of {}", self.wanted, self.at, self.len)
    }
}

/// A bounds-checked little-endian cursor over bytes read from disk.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        if self.remaining() < n {
            return Err(Truncated { wanted: n, at: self.pos, len: self.buf.len() });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Truncated> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// Little-endian writer into a growable buffer.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(n: usize) -> Self {
        Writer { buf: Vec::with_capacity(n) }
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.buf.resize(self.buf.len() + n, 0);
        self
    }
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// (free, total) bytes of the filesystem holding `p`.
pub fn statvfs(p: &Path) -> (u64, u64) {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return (0, 0) };
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return (0, 0);
    }
    (s.f_bavail as u64 * s.f_frsize as u64, s.f_blocks as u64 * s.f_frsize as u64)
}

/// fsync a directory so that a rename or a new file in it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` atomically with `bytes`: write `path.tmp`, fsync it,
/// rename over `path`, fsync the directory. A crash leaves either the old
/// or the new file, never a mix (FORMAT.md, "Atomic replacement").
/// Like [`write_atomic`], but the content is produced by `fill`, which
/// writes (and may seek in) a buffered writer on the temporary file — so a
/// large file is streamed, never held in memory whole.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = write_tmp_with(path, fill)?;
    replace_with_tmp(&tmp, path)
}

/// The first half of [`write_atomic_with`]: write and fsync `path`'s
/// temporary file (`*.tmp`) and return its path; nothing is replaced yet.
pub fn write_tmp_with(
    path: &Path,
    fill: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> io::Result<()>,
) -> io::Result<std::path::PathBuf> {
    let tmp = path.with_extension("tmp");
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    fill(&mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(tmp)
}

/// The second half: rename the temporary file over `path` and fsync the
/// directory.
pub fn replace_with_tmp(tmp: &Path, path: &Path) -> io::Result<()> {
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(())
}

/// checksum32 computed over data that arrives in pieces.
#[derive(Default)]
pub struct Checksum32(blake3::Hasher);

impl Checksum32 {
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }
    pub fn finish(&self) -> u32 {
        u32::from_le_bytes(self.0.finalize().as_bytes()[..4].try_into().expect("4 bytes"))
    }
}

/// Length of the header in front of a streamed body (map and table files).
pub const STREAMED_HEADER_LEN: usize = 64;

/// A file body streamed behind a 64-byte header that is written last: a
/// placeholder goes out first, the body is checksummed (checksum32) and
/// written 64 KiB at a time, and [`finish`](Self::finish) writes the real
/// header — which carries the body's checksum and its own — over the
/// placeholder. Lets a checkpoint write a file much larger than it could
/// hold in memory.
pub struct StreamedBody<'w, W: Write + io::Seek> {
    w: &'w mut W,
    start: u64,
    buf: Vec<u8>,
    sum: Checksum32,
}

impl<'w, W: Write + io::Seek> StreamedBody<'w, W> {
    const FLUSH: usize = 64 << 10;

    pub fn new(w: &'w mut W) -> io::Result<Self> {
        let start = w.stream_position()?;
        w.write_all(&[0u8; STREAMED_HEADER_LEN])?;
        Ok(StreamedBody { w, start, buf: Vec::with_capacity(Self::FLUSH), sum: Checksum32::default() })
    }

    pub fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= Self::FLUSH { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sum.update(&self.buf);
        self.w.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Write the header: `header(body_checksum)` gives its first 60 bytes;
    /// their checksum32 completes it. The writer is left after the body.
    pub fn finish(mut self, header: impl FnOnce(u32) -> Vec<u8>) -> io::Result<()> {
        self.flush()?;
        let mut h = header(self.sum.finish());
        assert_eq!(h.len(), STREAMED_HEADER_LEN - 4, "a streamed header is 60 bytes before its checksum");
        let c = checksum32(&h);
        h.extend_from_slice(&c.to_le_bytes());
        let end = self.w.stream_position()?;
        self.w.seek(io::SeekFrom::Start(self.start))?;
        self.w.write_all(&h)?;
        self.w.seek(io::SeekFrom::Start(end))?;
        Ok(())
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0201);
        assert!(r.u32().is_err());
    }

    #[test]
    fn zero_detection_handles_unaligned_slices() {
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v[1..]));
        v[4098] = 1;
        assert!(!is_zero(&v[1..]));
        v[4098] = 0;
        v[2] = 7;
        assert!(!is_zero(&v[1..]));
    }

    #[test]
    fn checksum32_is_blake3_prefix() {
        // Golden value: first 4 bytes of BLAKE3("") = af1349b9, little-endian.
        assert_eq!(checksum32(b""), 0xb94913af);
    }
}
