//! Spare packs: pack files GC retired, kept (renamed `XXXXXXXX.spare`) so a
//! new pack can reuse their disk space instead of allocating fresh space.
//!
//! Why: on thin-provisioned and virtual disks — and on any filesystem
//! mounted with `discard` — writing space the filesystem has just
//! allocated costs far more than overwriting space a file already holds.
//! On this project's benchmark VM, 1 MiB O_DIRECT writes run at 1.4–1.6
//! GB/s into fresh space and at 2.2–3.0 GB/s into a file's existing blocks,
//! at queue depth 1 and 16 alike (BENCHMARKS.md). A pack append always
//! goes to new space; a log-structured store that deletes what GC empties
//! and allocates what it writes next pays the fresh-space price for every
//! byte. Keeping up to `spare-pack-bytes` (superblock) of retired packs and
//! starting new packs in them turns that into overwrites.
//!
//! Reuse (`take` + [`ChunkStore::new_pack_file`](super::ChunkStore)):
//! the spare's whole length is zeroed with `FALLOC_FL_ZERO_RANGE` (the
//! filesystem marks the extents unwritten; the blocks stay allocated), the
//! new pack header is written and synced, and only then is the file
//! renamed (`RENAME_NOREPLACE`) to the new pack's name and the directory
//! synced. A crash before the rename leaves a spare (whose content nobody
//! reads); after it, a valid pack that ends in zeros — which FORMAT.md
//! allows after the last record, of any length. Where the filesystem
//! cannot zero a range, the spare is deleted and a fresh pack created.
//!
//! Retiring (`keep`): a pack GC emptied is renamed to its spare name, and
//! the directory synced, instead of unlinked — when the pool stays within
//! its cap and the filesystem keeps at least `MIN_FREE_FRACTION` free.
//! Spares are never read; `open` only lists them, `check` counts them.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Spares are kept only while the filesystem keeps this fraction free.
pub const MIN_FREE_FRACTION: f64 = 0.10;

pub fn spare_file_name(id: u32) -> String {
    format!("{id:08x}.spare")
}

/// The id in a spare's file name.
pub fn parse_spare_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".spare")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

pub(super) struct SparePool {
    dir: PathBuf,
    cap: AtomicU64,
    /// (id in the file name, file length), most recently retired last.
    files: Mutex<Vec<(u32, u64)>>,
}

/// Rename without replacing an existing file (`renameat2`,
/// `RENAME_NOREPLACE`): a pack name is never overwritten.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths; AT_FDCWD for both.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Zero `[0, len)` of `f`, keeping its blocks allocated.
fn zero_range(f: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a file descriptor we own.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, 0, len as libc::off_t) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

fn fs_free_fraction(dir: &Path) -> f64 {
    let (free, total) = crate::format::statvfs(dir);
    if total == 0 { 0.0 } else { free as f64 / total as f64 }
}

impl SparePool {
    /// The spares found in `dir`; those beyond `cap` are deleted.
    pub fn load(dir: &Path, cap: u64) -> io::Result<SparePool> {
        let mut files = Vec::new();
        for ent in std::fs::read_dir(dir)? {
            let ent = ent?;
            let Some(id) = ent.file_name().to_str().and_then(parse_spare_name) else { continue };
            files.push((id, ent.metadata()?.len()));
        }
        files.sort();
        let pool = SparePool { dir: dir.to_path_buf(), cap: AtomicU64::new(cap), files: Mutex::new(files) };
        pool.trim();
        Ok(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u32, u64)>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (count, bytes) of the spares kept now.
    pub fn usage(&self) -> (u64, u64) {
        let f = self.lock();
        (f.len() as u64, f.iter().map(|(_, n)| n).sum())
    }

    /// Bytes the pool could still take.
    pub fn room(&self) -> u64 {
        self.cap.load(Ordering::Acquire).saturating_sub(self.usage().1)
    }

    /// Change the cap; spares beyond it are deleted now.
    pub fn set_cap(&self, cap: u64) {
        self.cap.store(cap, Ordering::Release);
        self.trim();
    }

    /// Delete every spare (the filesystem ran out of space); returns how
    /// many there were. The cap stays: GC keeps spares again once the
    /// filesystem has room.
    pub fn release_all(&self) -> usize {
        let n = self.lock().len();
        if n > 0 {
            tracing::warn!(spares = n, "out of space: deleting the spare packs");
            self.trim_to(0);
        }
        n
    }

    /// Delete the oldest spares until the pool fits its cap.
    fn trim(&self) {
        self.trim_to(self.cap.load(Ordering::Acquire));
    }

    fn trim_to(&self, cap: u64) {
        let mut f = self.lock();
        let mut removed = false;
        while f.iter().map(|(_, n)| n).sum::<u64>() > cap {
            let (id, _) = f.remove(0);
            let p = self.dir.join(spare_file_name(id));
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), %e, "could not delete a spare pack");
            }
            removed = true;
        }
        if removed {
            let _ = crate::format::fsync_dir(&self.dir);
        }
    }

    /// Keep the emptied pack at `pack_path` (id `id`, `len` bytes) as a
    /// spare, if the pool has room and the filesystem is not getting full.
    /// Returns false if the caller should delete it. The directory is not
    /// synced here (the caller does).
    pub fn keep(&self, pack_path: &Path, id: u32, len: u64) -> bool {
        let cap = self.cap.load(Ordering::Acquire);
        if cap == 0 || len == 0 {
            return false;
        }
        let mut f = self.lock();
        if f.iter().map(|(_, n)| n).sum::<u64>() + len > cap || fs_free_fraction(&self.dir) < MIN_FREE_FRACTION {
            return false;
        }
        match rename_noreplace(pack_path, &self.dir.join(spare_file_name(id))) {
            Ok(()) => {
                f.push((id, len));
                true
            }
            Err(e) => {
                tracing::debug!(pack = id, %e, "not keeping a retired pack as a spare");
                false
            }
        }
    }

    /// Turn a spare into pack `to` (a path that must not exist) holding
    /// `header` and zeros: see the module comment for the order. Returns
    /// None when there is no spare, or it could not be reused (it is then
    /// deleted and the caller creates a fresh pack).
    pub fn take(&self, to: &Path, header: &[u8]) -> Option<File> {
        loop {
            let (id, len) = self.lock().pop()?;
            let from = self.dir.join(spare_file_name(id));
            let r = (|| -> io::Result<File> {
                let f = std::fs::OpenOptions::new().read(true).write(true).open(&from)?;
                zero_range(&f, len)?;
                std::os::unix::fs::FileExt::write_all_at(&f, header, 0)?;
                f.sync_all()?;
                rename_noreplace(&from, to)?;
                crate::format::fsync_dir(&self.dir)?;
                Ok(f)
            })();
            match r {
                Ok(f) => return Some(f),
                Err(e) => {
                    tracing::debug!(spare = id, %e, "cannot reuse a spare pack; deleting it");
                    let _ = std::fs::remove_file(&from);
                    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        // The filesystem cannot zero ranges: stop keeping spares.
                        self.set_cap(0);
                        return None;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn scratch() -> tempfile::TempDir {
        tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap()
    }

    fn file_with(dir: &Path, name: &str, len: usize) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, vec![0xA5u8; len]).unwrap();
        p
    }

    #[test]
    fn spare_names_round_trip_and_reject_others() {
        assert_eq!(spare_file_name(0x2a), "0000002a.spare");
        assert_eq!(parse_spare_name("0000002a.spare"), Some(0x2a));
        for bad in ["0000002a.pack", "2a.spare", "zzzzzzzz.spare", "0000002a.spare.tmp"] {
            assert_eq!(parse_spare_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn kept_packs_come_back_zeroed_with_the_new_header_under_the_new_name() {
        let d = scratch();
        let pool = SparePool::load(d.path(), 1 << 20).unwrap();
        let p = file_with(d.path(), "00000003.pack", 300_000);
        assert!(pool.keep(&p, 3, 300_000));
        assert!(!p.exists() && d.path().join("00000003.spare").exists());
        assert_eq!(pool.usage(), (1, 300_000));

        let to = d.path().join("00000009.pack");
        let f = pool.take(&to, b"HEADER").unwrap();
        assert!(to.exists() && !d.path().join("00000003.spare").exists());
        assert_eq!(pool.usage(), (0, 0));
        let mut got = vec![0u8; 300_000];
        f.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got[..6], b"HEADER");
        assert!(got[6..].iter().all(|&b| b == 0), "the old bytes are gone");
        assert!(pool.take(&d.path().join("0000000a.pack"), b"H").is_none(), "pool is empty");
    }

    #[test]
    fn the_cap_bounds_the_pool_and_a_reopen_finds_the_spares() {
        let d = scratch();
        let pool = SparePool::load(d.path(), 250_000).unwrap();
        let a = file_with(d.path(), "00000001.pack", 100_000);
        let b = file_with(d.path(), "00000002.pack", 100_000);
        let c = file_with(d.path(), "00000003.pack", 100_000);
        assert!(pool.keep(&a, 1, 100_000));
        assert!(pool.keep(&b, 2, 100_000));
        assert!(!pool.keep(&c, 3, 100_000), "over the cap: the caller deletes it");
        assert!(c.exists());
        drop(pool);
        // Reopened with a smaller cap: the oldest spare goes.
        let pool = SparePool::load(d.path(), 150_000).unwrap();
        assert_eq!(pool.usage(), (1, 100_000));
        assert!(!d.path().join("00000001.spare").exists());
        assert!(d.path().join("00000002.spare").exists());
        pool.set_cap(0);
        assert_eq!(pool.usage(), (0, 0));
        assert!(!d.path().join("00000002.spare").exists());
        assert!(!pool.keep(&c, 3, 100_000), "cap 0 keeps nothing");
    }

    #[test]
    fn a_pack_name_is_never_replaced() {
        let d = scratch();
        let pool = SparePool::load(d.path(), 1 << 20).unwrap();
        let p = file_with(d.path(), "00000001.pack", 10_000);
        assert!(pool.keep(&p, 1, 10_000));
        let existing = file_with(d.path(), "00000005.pack", 7);
        // The target exists: the spare is dropped, the pack left alone.
        assert!(pool.take(&existing, b"H").is_none());
        assert_eq!(std::fs::read(&existing).unwrap(), vec![0xA5; 7]);
    }
}
