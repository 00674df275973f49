//! [`StrataFs`]: the `fuser::Filesystem` that serves an [`Engine`].
//!
//! Owns the open-file handles and directory listings of one mount; the
//! inode table is shared with the control socket (for invalidation after a
//! command changed the catalogue).
//!
//! Invariants:
//! * Data I/O goes straight to [`Volume::read_at`]/[`Volume::write_at`]
//!   on the `Arc<Volume>` cached in the handle: no lock of this module is
//!   held across it. The only lock taken around an engine call is the
//!   per-file `resize_lock`, and only while the size changes.
//! * Every handle of a volume file is opened `FOPEN_DIRECT_IO |
//!   FOPEN_PARALLEL_DIRECT_WRITES`: there is one cache (the engine's), so a
//!   change made through the control socket or the other view is visible
//!   at once, and O_DIRECT (qemu `cache=none`) works. The exception is the
//!   `keep_cache` mount option (off by default): handles are then opened
//!   `FOPEN_KEEP_CACHE | FOPEN_PARALLEL_DIRECT_WRITES` and the kernel page
//!   cache serves buffered readers; control commands still invalidate it
//!   ([`super::invalidate`]).
//! * Directory contents are read from the catalogue on every `opendir`
//!   and never cached here; the kernel caches entries and attributes for
//!   [`TTL`] only.
//! * Every error reaching the kernel went through [`errno::to_errno`].
//!
//! Lock order: `handles` and `dirs` are leaf locks, never held together
//! and never across an engine call; `FileState::resize_lock` may be held
//! across a resize but never while taking `handles` or `dirs`.

use super::attr::{self, FileMeta};
use super::errno::to_errno;
use super::inodes::{FileState, InodeTable};
use super::layout::{self, BadName, IMAGES_DIR, IMAGES_INO, NodeKey, ROOT_INO, SNAPSHOTS_DIR, SNAPSHOTS_INO};
use crate::guid::Guid;
use crate::volume::{Engine, SnapshotInfo, Volume, VolumeInfo};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

/// How long the kernel may cache entries and attributes. Short, because
/// the control socket can change the catalogue behind the kernel's back
/// (it also invalidates explicitly; this bounds any miss).
pub const TTL: Duration = Duration::from_secs(1);
const BLKSIZE: u32 = 4096;

// fallocate(2) mode bits (linux/falloc.h).
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;
// setxattr(2) flags.
const XATTR_CREATE: i32 = 1;
const XATTR_REPLACE: i32 = 2;

/// Settings of one mount that the filesystem needs.
#[derive(Debug, Clone)]
pub struct FsSettings {
    pub read_only: bool,
    pub max_background: u16,
    /// Largest write request we negotiate (`max_write`); the kernel clamps
    /// to max_pages_limit.
    pub max_write: u32,
    /// Ask for FUSE_WRITEBACK_CACHE at init (`writeback_cache`).
    pub writeback_cache: bool,
    /// Open volume files in page-cache mode with FOPEN_KEEP_CACHE
    /// instead of FOPEN_DIRECT_IO (`keep_cache`).
    pub keep_cache: bool,
    /// Owner of the directories and default owner of volume files.
    pub uid: u32,
    pub gid: u32,
}

/// One open volume file.
struct OpenFile {
    ino: u64,
    state: Arc<FileState>,
    volume: Arc<Volume>,
    writable: bool,
    /// Written since the last flush: close() then flushes. A handle that
    /// only read (qemu-img info, backup readers) closes without a flush.
    dirty: AtomicBool,
}

/// One entry of a directory listing, taken at opendir.
#[derive(Clone)]
struct DirEntry {
    ino: u64,
    name: String,
    attr: FileAttr,
}

pub struct StrataFs {
    engine: Arc<Engine>,
    inodes: Arc<InodeTable>,
    settings: FsSettings,
    handles: RwLock<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    /// Times reported for the directories (they have no stored times).
    mounted_at: SystemTime,
}

type Res<T> = Result<T, Errno>;

thread_local! {
    /// Per-worker read buffer: reused so a 1 MiB read does not allocate
    /// and fault in 256 fresh pages every time (qsd's cost, research §2).
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl StrataFs {
    pub fn new(engine: Arc<Engine>, inodes: Arc<InodeTable>, settings: FsSettings) -> StrataFs {
        StrataFs {
            engine,
            inodes,
            settings,
            handles: RwLock::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mounted_at: SystemTime::now(),
        }
    }

    // ----- attributes -------------------------------------------------

    fn dir_attr(&self, ino: u64, writable: bool) -> FileAttr {
        let perm = if writable && !self.settings.read_only { 0o755 } else { 0o555 };
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm,
            nlink: 2,
            uid: self.settings.uid,
            gid: self.settings.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    /// `stat` of a volume file from its catalogue view.
    fn file_attr(&self, ino: u64, state: &FileState, info: &VolumeInfo) -> FileAttr {
        let meta = FileMeta::from_props(&info.properties, info.created_unix, self.settings.uid, self.settings.gid);
        let (mtime_ns, ctime_ns) = match state.pending_mtime() {
            Some(t) => (t, t.max(meta.ctime_ns)),
            None => (meta.mtime_ns, meta.ctime_ns),
        };
        // Two names (top level and images/<g>/<leaf>) unless the top-level
        // name is hidden or reserved; 0 once unlinked while open.
        let nlink = if state.unlinked.load(Ordering::Relaxed) {
            0
        } else if layout::is_reserved(&info.name) {
            1
        } else {
            2
        };
        let crtime = attr::ns_to_system_time(info.created_unix.saturating_mul(1_000_000_000));
        let mut perm = meta.perm;
        if self.settings.read_only {
            perm &= !0o222;
        }
        FileAttr {
            ino: INodeNo(ino),
            size: info.capacity,
            blocks: info.allocated_bytes.div_ceil(512),
            atime: attr::ns_to_system_time(meta.atime_ns),
            mtime: attr::ns_to_system_time(mtime_ns),
            ctime: attr::ns_to_system_time(ctime_ns),
            crtime,
            kind: FileType::RegularFile,
            perm,
            nlink,
            uid: meta.uid,
            gid: meta.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    /// Catalogue view of a volume by its GUID; NotFound once removed.
    fn info_by_guid(&self, disk: Guid, op: &str) -> Res<VolumeInfo> {
        let info = match self.engine.volume_info(&disk.to_string()) {
            Ok(i) => i,
            Err(e) => {
                let errno = to_errno(&e, op);
                if errno == Errno::ENOENT {
                    // Removed behind our back (control socket): let it close.
                    self.inodes.file_state(disk).1.forget_volume();
                }
                return Err(errno);
            }
        };
        // find_disk also matches layer GUIDs; only the image group counts.
        if info.guid != disk {
            return Err(Errno::ENOENT);
        }
        Ok(info)
    }

    /// A top-level name: the volume of that exact name (a GUID string
    /// must not reach a volume by identity here).
    fn info_by_name(&self, name: &str, op: &str) -> Res<VolumeInfo> {
        let info = self.engine.volume_info(name).map_err(|e| to_errno(&e, op))?;
        if info.name != name {
            return Err(Errno::ENOENT);
        }
        Ok(info)
    }

    fn volume_file_attr(&self, disk: Guid, op: &str) -> Res<FileAttr> {
        let info = self.info_by_guid(disk, op)?;
        let (ino, state) = self.inodes.file_state(disk);
        Ok(self.file_attr(ino, &state, &info))
    }

    fn attr_of(&self, ino: u64, op: &str) -> Res<FileAttr> {
        let node = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
        match node.key {
            NodeKey::Root => Ok(self.dir_attr(ROOT_INO, true)),
            NodeKey::SnapshotsDir => Ok(self.dir_attr(SNAPSHOTS_INO, false)),
            NodeKey::ImagesDir => Ok(self.dir_attr(IMAGES_INO, false)),
            NodeKey::ImageGroupDir(g) | NodeKey::SnapshotDir(g) => {
                self.info_by_guid(g, op)?;
                Ok(self.dir_attr(ino, false))
            }
            NodeKey::Volume(g) => self.volume_file_attr(g, op),
            NodeKey::Snapshot { disk, layer } => {
                let info = self.info_by_guid(disk, op)?;
                let snap = self
                    .engine
                    .snapshot_info(&info.guid.to_string(), &layer.to_string())
                    .map_err(|e| to_errno(&e, op))?;
                Ok(self.snapshot_attr(ino, &info, &snap))
            }
        }
    }

    // ----- snapshots --------------------------------------------------

    fn snapshots(&self, info: &VolumeInfo, op: &str) -> Res<Vec<SnapshotInfo>> {
        self.engine.snapshot_list(&info.guid.to_string()).map_err(|e| to_errno(&e, op))
    }

    fn snapshot_by(&self, info: &VolumeInfo, pred: impl Fn(&SnapshotInfo) -> bool, op: &str) -> Res<SnapshotInfo> {
        self.snapshots(info, op)?.into_iter().find(|s| pred(s)).ok_or(Errno::ENOENT)
    }

    /// `stat` of a snapshot file: the volume's owner and mode without
    /// write bits, the snapshot's capacity, the data its own layer holds,
    /// and its creation time for every time field (it never changes).
    fn snapshot_attr(&self, ino: u64, info: &VolumeInfo, snap: &SnapshotInfo) -> FileAttr {
        let meta = FileMeta::from_props(&info.properties, info.created_unix, self.settings.uid, self.settings.gid);
        let t = attr::ns_to_system_time(snap.created_unix.saturating_mul(1_000_000_000));
        FileAttr {
            ino: INodeNo(ino),
            size: snap.capacity,
            blocks: snap.own_bytes.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::RegularFile,
            perm: meta.perm & !0o222,
            nlink: 2,
            uid: meta.uid,
            gid: meta.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    fn snapshot_entry(&self, info: &VolumeInfo, snap: &SnapshotInfo) -> (u64, FileAttr) {
        let (ino, _) = self.inodes.snapshot_state(info.guid, snap.guid);
        (ino, self.snapshot_attr(ino, info, snap))
    }

    // ----- lookup -----------------------------------------------------

    fn lookup_attr(&self, parent: u64, name: &OsStr) -> Res<FileAttr> {
        let node = self.inodes.get(parent).ok_or(Errno::ENOENT)?;
        match node.key {
            NodeKey::Root => {
                if name == SNAPSHOTS_DIR {
                    return Ok(self.dir_attr(SNAPSHOTS_INO, false));
                }
                if name == IMAGES_DIR {
                    return Ok(self.dir_attr(IMAGES_INO, false));
                }
                let name = layout::volume_name(name).map_err(lookup_name_errno)?;
                let info = self.info_by_name(name, "lookup")?;
                let (ino, state) = self.inodes.file_state(info.guid);
                Ok(self.file_attr(ino, &state, &info))
            }
            NodeKey::SnapshotsDir => {
                let name = layout::volume_name(name).map_err(lookup_name_errno)?;
                let info = self.info_by_name(name, "lookup")?;
                let ino = self.inodes.ino_of(NodeKey::SnapshotDir(info.guid));
                Ok(self.dir_attr(ino, false))
            }
            NodeKey::ImagesDir => {
                let g = parse_guid(name)?;
                let info = self.info_by_guid(g, "lookup")?;
                if layout::is_hidden(&info.name) {
                    return Err(Errno::ENOENT);
                }
                let ino = self.inodes.ino_of(NodeKey::ImageGroupDir(g));
                Ok(self.dir_attr(ino, false))
            }
            NodeKey::ImageGroupDir(g) => {
                let layer = parse_guid(name)?;
                let info = self.info_by_guid(g, "lookup")?;
                if info.leaf == layer {
                    let (ino, state) = self.inodes.file_state(g);
                    return Ok(self.file_attr(ino, &state, &info));
                }
                let snap = self.snapshot_by(&info, |s| s.guid == layer, "lookup")?;
                Ok(self.snapshot_entry(&info, &snap).1)
            }
            NodeKey::SnapshotDir(g) => {
                let name = name.to_str().ok_or(Errno::ENOENT)?;
                let info = self.info_by_guid(g, "lookup")?;
                let snap = self.snapshot_by(&info, |s| s.name == name, "lookup")?;
                Ok(self.snapshot_entry(&info, &snap).1)
            }
            NodeKey::Volume(_) | NodeKey::Snapshot { .. } => Err(Errno::ENOTDIR),
        }
    }

    // ----- directories ------------------------------------------------

    fn list_dir(&self, ino: u64) -> Res<Vec<DirEntry>> {
        let node = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
        let parent_ino = match node.key {
            NodeKey::Root | NodeKey::SnapshotsDir | NodeKey::ImagesDir => ROOT_INO,
            NodeKey::ImageGroupDir(_) => IMAGES_INO,
            NodeKey::SnapshotDir(_) => SNAPSHOTS_INO,
            NodeKey::Volume(_) | NodeKey::Snapshot { .. } => return Err(Errno::ENOTDIR),
        };
        let here = self.attr_of(ino, "readdir")?;
        let mut out = vec![
            DirEntry { ino, name: ".".into(), attr: here },
            DirEntry { ino: parent_ino, name: "..".into(), attr: self.attr_of(parent_ino, "readdir")? },
        ];
        match node.key {
            NodeKey::Root => {
                out.push(DirEntry {
                    ino: SNAPSHOTS_INO,
                    name: SNAPSHOTS_DIR.into(),
                    attr: self.dir_attr(SNAPSHOTS_INO, false),
                });
                out.push(DirEntry { ino: IMAGES_INO, name: IMAGES_DIR.into(), attr: self.dir_attr(IMAGES_INO, false) });
                for info in self.list_volumes()? {
                    if layout::is_reserved(&info.name) {
                        continue;
                    }
                    let (vino, state) = self.inodes.file_state(info.guid);
                    let attr = self.file_attr(vino, &state, &info);
                    out.push(DirEntry { ino: vino, name: info.name, attr });
                }
            }
            NodeKey::SnapshotsDir => {
                for info in self.list_volumes()? {
                    if layout::is_reserved(&info.name) {
                        continue;
                    }
                    let dino = self.inodes.ino_of(NodeKey::SnapshotDir(info.guid));
                    out.push(DirEntry { ino: dino, name: info.name, attr: self.dir_attr(dino, false) });
                }
            }
            NodeKey::ImagesDir => {
                for info in self.list_volumes()? {
                    if layout::is_hidden(&info.name) {
                        continue;
                    }
                    let dino = self.inodes.ino_of(NodeKey::ImageGroupDir(info.guid));
                    out.push(DirEntry { ino: dino, name: info.guid.to_string(), attr: self.dir_attr(dino, false) });
                }
            }
            NodeKey::ImageGroupDir(g) => {
                let info = self.info_by_guid(g, "readdir")?;
                let (vino, state) = self.inodes.file_state(g);
                let attr = self.file_attr(vino, &state, &info);
                out.push(DirEntry { ino: vino, name: info.leaf.to_string(), attr });
                for snap in self.snapshots(&info, "readdir")? {
                    let (ino, attr) = self.snapshot_entry(&info, &snap);
                    out.push(DirEntry { ino, name: snap.guid.to_string(), attr });
                }
            }
            NodeKey::SnapshotDir(g) => {
                let info = self.info_by_guid(g, "readdir")?;
                for snap in self.snapshots(&info, "readdir")? {
                    if layout::volume_name(OsStr::new(&snap.name)).is_err() {
                        continue; // not a file name; reachable under images/
                    }
                    let (ino, attr) = self.snapshot_entry(&info, &snap);
                    out.push(DirEntry { ino, name: snap.name, attr });
                }
            }
            NodeKey::Volume(_) | NodeKey::Snapshot { .. } => {}
        }
        Ok(out)
    }

    fn list_volumes(&self) -> Res<Vec<VolumeInfo>> {
        self.engine.list_volumes().map_err(|e| to_errno(&e, "readdir"))
    }

    fn dir_listing(&self, ino: u64, fh: FileHandle) -> Res<Arc<Vec<DirEntry>>> {
        if let Some(l) = lock(&self.dirs).get(&fh.0) {
            return Ok(l.clone());
        }
        // No opendir handle (should not happen): list afresh.
        Ok(Arc::new(self.list_dir(ino)?))
    }

    // ----- handles ----------------------------------------------------

    fn handle(&self, fh: FileHandle) -> Res<Arc<OpenFile>> {
        read_lock(&self.handles).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// Open `disk` for I/O and register a handle.
    fn open_handle(&self, disk: Guid, writable: bool) -> Res<(u64, Arc<OpenFile>)> {
        if writable && self.settings.read_only {
            return Err(Errno::EROFS);
        }
        let volume = self.engine.open_volume(&disk.to_string()).map_err(|e| to_errno(&e, "open"))?;
        if volume.guid() != disk {
            return Err(Errno::ENOENT);
        }
        let (ino, state) = self.inodes.file_state(disk);
        state.keep_open(&volume);
        state.open_count.fetch_add(1, Ordering::AcqRel);
        let fh = self.new_fh();
        let of = Arc::new(OpenFile { ino, state, volume, writable, dirty: AtomicBool::new(false) });
        write_lock(&self.handles).insert(fh, of.clone());
        Ok((fh, of))
    }

    /// Open a snapshot file: read-only, served by the engine's snapshot view.
    fn open_snapshot(&self, disk: Guid, layer: Guid, writable: bool) -> Res<(u64, Arc<OpenFile>)> {
        if writable {
            return Err(Errno::EROFS);
        }
        let info = self.info_by_guid(disk, "open")?;
        let snap = self.snapshot_by(&info, |s| s.guid == layer, "open")?;
        let volume = self.engine.open_snapshot(&disk.to_string(), &snap.name).map_err(|e| to_errno(&e, "open"))?;
        let (ino, state) = self.inodes.snapshot_state(disk, layer);
        state.open_count.fetch_add(1, Ordering::AcqRel);
        let fh = self.new_fh();
        let of = Arc::new(OpenFile { ino, state, volume, writable: false, dirty: AtomicBool::new(false) });
        write_lock(&self.handles).insert(fh, of.clone());
        Ok((fh, of))
    }

    /// Store a pending modification time as the `fs.mtime_ns` property.
    fn persist_mtime(&self, state: &FileState) {
        if let Some(t) = state.take_pending_mtime() {
            let g = state.disk.to_string();
            let v = t.to_string();
            let res = self.engine.set_properties(&g, &[(attr::PROP_MTIME, Some(&v)), (attr::PROP_CTIME, Some(&v))]);
            if let Err(e) = res {
                // Keep it pending; a later fsync/release tries again.
                state.touch(t);
                tracing::warn!(volume = %state.disk, error = %e, "could not store the modification time");
            }
        }
    }

    fn flush_handle(&self, of: &OpenFile, op: &str) -> Res<()> {
        if of.dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = of.volume.flush()
        {
            of.dirty.store(true, Ordering::Release);
            return Err(to_errno(&e, op));
        }
        self.persist_mtime(&of.state);
        Ok(())
    }

    /// Grow the volume so that `end` is inside it. Never shrinks: two
    /// writes past EOF racing each other both end up inside.
    fn grow_to(&self, state: &FileState, volume: &Volume, end: u64, op: &str) -> Res<()> {
        if end <= volume.capacity() {
            return Ok(());
        }
        let _g = lock(&state.resize_lock);
        if end > volume.capacity() {
            volume.resize(end).map_err(|e| to_errno(&e, op))?;
        }
        Ok(())
    }

    /// The open volume behind `ino`: the handle's if given, else the
    /// engine's (same `Arc` while anything has it open).
    fn volume_for(&self, ino: u64, fh: Option<FileHandle>, op: &str) -> Res<(Arc<FileState>, Arc<Volume>)> {
        if let Some(fh) = fh
            && let Ok(of) = self.handle(fh)
            && of.ino == ino
        {
            return Ok((of.state.clone(), of.volume.clone()));
        }
        let node = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
        let (Some(state), NodeKey::Volume(disk)) = (node.file, node.key) else {
            return Err(Errno::EISDIR);
        };
        let volume = self.engine.open_volume(&disk.to_string()).map_err(|e| to_errno(&e, op))?;
        state.keep_open(&volume);
        Ok((state, volume))
    }

    fn volume_node(&self, ino: u64) -> Res<(Guid, Arc<FileState>)> {
        let node = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
        match (node.key, node.file) {
            (NodeKey::Volume(g), Some(s)) => Ok((g, s)),
            _ => Err(Errno::EISDIR),
        }
    }

    fn set_prop(&self, disk: Guid, key: &str, value: &str, op: &str) -> Res<()> {
        self.engine.set_property(&disk.to_string(), key, value).map_err(|e| to_errno(&e, op))
    }

    /// Create a volume for a new top-level name and store the attributes
    /// that differ from the defaults (so a plain root `cp` writes no
    /// property at all).
    fn create_volume(&self, req: &Request, parent: u64, name: &OsStr, mode: u32, umask: u32) -> Res<VolumeInfo> {
        if parent != ROOT_INO {
            return Err(Errno::EPERM);
        }
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        let name = layout::volume_name(name).map_err(BadName::errno)?;
        let info = self.engine.create_volume(name, 0).map_err(|e| to_errno(&e, "create"))?;
        let perm = (mode & !umask) & 0o7777;
        let g = info.guid;
        if perm != u32::from(attr::DEFAULT_FILE_MODE) {
            self.set_prop(g, attr::PROP_MODE, &attr::mode_value(perm), "create")?;
        }
        if req.uid() != self.settings.uid {
            self.set_prop(g, attr::PROP_UID, &req.uid().to_string(), "create")?;
        }
        if req.gid() != self.settings.gid {
            self.set_prop(g, attr::PROP_GID, &req.gid().to_string(), "create")?;
        }
        self.info_by_guid(g, "create")
    }

    /// Remove a volume now, or at its last close if it is open (POSIX:
    /// an unlinked file stays readable through open descriptors).
    fn remove_or_defer(&self, disk: Guid, op: &str) -> Res<()> {
        let (_, state) = self.inodes.file_state(disk);
        if state.open_count.load(Ordering::Acquire) > 0 {
            self.engine
                .rename_volume_hidden(&disk.to_string(), &layout::unlinked_name(disk))
                .map_err(|e| to_errno(&e, op))?;
            state.unlinked.store(true, Ordering::Release);
            tracing::info!(volume = %disk, "unlinked while open: removed at last close");
            return Ok(());
        }
        state.forget_volume();
        self.engine.remove_volume(&disk.to_string(), false).map_err(|e| to_errno(&e, op))
    }

    fn do_rename(&self, parent: u64, name: &OsStr, newparent: u64, newname: &OsStr, flags: RenameFlags) -> Res<()> {
        if parent != ROOT_INO || newparent != ROOT_INO {
            return Err(if parent == newparent { Errno::EPERM } else { Errno::EXDEV });
        }
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let from = layout::volume_name(name).map_err(BadName::errno)?;
        let to = layout::volume_name(newname).map_err(BadName::errno)?;
        let src = self.info_by_name(from, "rename")?;
        if from == to {
            return Ok(());
        }
        let target = match self.info_by_name(to, "rename") {
            Ok(t) => Some(t),
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        let Some(target) = target else {
            return self.engine.rename_volume(&src.guid.to_string(), to).map_err(|e| to_errno(&e, "rename"));
        };
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return Err(Errno::EEXIST);
        }
        if target.guid == src.guid {
            return Ok(());
        }
        // rename(2) onto an existing name replaces it. The engine has no
        // atomic "rename replacing", so: move the target aside, rename, then
        // remove the target (or defer that if it is open). A failure in the
        // middle puts the target back, so its data is never lost.
        let tg = target.guid.to_string();
        let aside = layout::replaced_name(target.guid);
        self.engine.rename_volume_hidden(&tg, &aside).map_err(|e| to_errno(&e, "rename"))?;
        if let Err(e) = self.engine.rename_volume(&src.guid.to_string(), to) {
            if let Err(back) = self.engine.rename_volume(&tg, to) {
                tracing::error!(volume = %target.guid, name = to, error = %back, "could not restore the rename target's name");
            }
            return Err(to_errno(&e, "rename"));
        }
        self.remove_or_defer(target.guid, "rename")
    }

    #[allow(clippy::too_many_arguments)] // mirrors Filesystem::setattr
    fn do_setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Res<FileAttr> {
        let node = self.inodes.get(ino).ok_or(Errno::ENOENT)?;
        let disk = match node.key {
            NodeKey::Volume(disk) => disk,
            NodeKey::Snapshot { .. } => return Err(Errno::EROFS),
            // The directories are fixed views.
            _ => return Err(Errno::EPERM),
        };
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        let now = attr::now_ns();
        let mut changed = false;
        if let Some(size) = size {
            let (state, volume) = self.volume_for(ino, fh, "truncate")?;
            {
                let _g = lock(&state.resize_lock);
                volume.resize(size).map_err(|e| to_errno(&e, "truncate"))?;
            }
            state.touch(now);
        }
        if let Some(mode) = mode {
            self.set_prop(disk, attr::PROP_MODE, &attr::mode_value(mode), "chmod")?;
            changed = true;
        }
        if let Some(uid) = uid {
            self.set_prop(disk, attr::PROP_UID, &uid.to_string(), "chown")?;
            changed = true;
        }
        if let Some(gid) = gid {
            self.set_prop(disk, attr::PROP_GID, &gid.to_string(), "chown")?;
            changed = true;
        }
        let ns = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => attr::system_time_to_ns(t),
            TimeOrNow::Now => now,
        };
        if let Some(t) = atime {
            self.set_prop(disk, attr::PROP_ATIME, &ns(t).to_string(), "utimens")?;
            changed = true;
        }
        if let Some(t) = mtime {
            if let Some(state) = &node.file {
                // An explicit time wins over one a write left pending.
                state.take_pending_mtime();
            }
            self.set_prop(disk, attr::PROP_MTIME, &ns(t).to_string(), "utimens")?;
            changed = true;
        }
        if changed {
            self.set_prop(disk, attr::PROP_CTIME, &now.to_string(), "setattr")?;
        }
        self.volume_file_attr(disk, "setattr")
    }

    fn do_fallocate(&self, ino: u64, fh: FileHandle, offset: u64, length: u64, mode: i32) -> Res<()> {
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        let of = self.handle(fh)?;
        if of.ino != ino {
            return Err(Errno::EBADF);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & FALLOC_FL_ZERO_RANGE != 0;
        if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0
            || (punch && zero)
            || (punch && !keep_size)
        {
            return Err(Errno::EOPNOTSUPP);
        }
        if !keep_size {
            self.grow_to(&of.state, &of.volume, end, "fallocate")?;
        }
        if punch || zero {
            let cap = of.volume.capacity();
            if offset < cap {
                let len = end.min(cap) - offset;
                if len > 0 {
                    of.volume.discard(offset, len).map_err(|e| to_errno(&e, "fallocate"))?;
                }
            }
            of.dirty.store(true, Ordering::Release);
            of.state.touch(attr::now_ns());
        }
        // Mode 0 / KEEP_SIZE inside the file: nothing to reserve in a thin,
        // deduplicated store, so nothing to do (documented in docs/mount.md).
        Ok(())
    }

    fn do_lseek(&self, ino: u64, fh: FileHandle, offset: i64, whence: i32) -> Res<i64> {
        let (_, volume) = self.volume_for(ino, Some(fh), "lseek")?;
        let offset = u64::try_from(offset).map_err(|_| Errno::ENXIO)?;
        let cap = volume.capacity();
        if offset >= cap {
            return Err(Errno::ENXIO);
        }
        let pos = match whence {
            libc::SEEK_DATA => match volume.next_data(offset) {
                Some(d) if d < cap => d,
                _ => return Err(Errno::ENXIO),
            },
            libc::SEEK_HOLE => volume.next_hole(offset).min(cap),
            _ => return Err(Errno::EINVAL),
        };
        i64::try_from(pos).map_err(|_| Errno::EOVERFLOW)
    }

    fn xattr_target(&self, ino: u64, name: &OsStr) -> Res<(Guid, String)> {
        let (disk, _) = self.volume_node(ino).map_err(|_| Errno::ENODATA)?;
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.is_empty() || name.len() > 255 {
            return Err(Errno::ERANGE);
        }
        Ok((disk, attr::xattr_key(name)))
    }

    fn get_xattr(&self, ino: u64, name: &OsStr) -> Res<Vec<u8>> {
        let (disk, key) = self.xattr_target(ino, name)?;
        let value = self
            .engine
            .get_property(&disk.to_string(), &key)
            .map_err(|e| to_errno(&e, "getxattr"))?
            .ok_or(Errno::NO_XATTR)?;
        attr::hex_decode(&value).ok_or_else(|| {
            tracing::error!(volume = %disk, key, "xattr property is not hex: fix it with `strata volume property`");
            Errno::EIO
        })
    }

    fn set_xattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Res<()> {
        if self.volume_node(ino).is_err() {
            return Err(Errno::EPERM);
        }
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        if value.len() > attr::XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        let (disk, key) = self.xattr_target(ino, name)?;
        let g = disk.to_string();
        if flags & (XATTR_CREATE | XATTR_REPLACE) != 0 {
            let exists = self.engine.get_property(&g, &key).map_err(|e| to_errno(&e, "setxattr"))?.is_some();
            if flags & XATTR_CREATE != 0 && exists {
                return Err(Errno::EEXIST);
            }
            if flags & XATTR_REPLACE != 0 && !exists {
                return Err(Errno::NO_XATTR);
            }
        }
        self.engine.set_property(&g, &key, &attr::hex_encode(value)).map_err(|e| to_errno(&e, "setxattr"))
    }

    fn list_xattr(&self, ino: u64) -> Res<Vec<u8>> {
        let Ok((disk, _)) = self.volume_node(ino) else {
            return Ok(Vec::new());
        };
        let props = self.engine.properties(&disk.to_string()).map_err(|e| to_errno(&e, "listxattr"))?;
        let mut out = Vec::new();
        for k in props.keys() {
            if let Some(name) = k.strip_prefix(attr::XATTR_PREFIX) {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
        }
        Ok(out)
    }

    fn remove_xattr(&self, ino: u64, name: &OsStr) -> Res<()> {
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        let (disk, key) = self.xattr_target(ino, name)?;
        match self.engine.unset_property(&disk.to_string(), &key) {
            Ok(true) => Ok(()),
            Ok(false) => Err(Errno::NO_XATTR),
            Err(e) => Err(to_errno(&e, "removexattr")),
        }
    }

    fn statfs_of_store(&self) -> Res<libc::statvfs> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.engine.path().as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: statvfs only writes into the zeroed struct we pass, and
        // `path` is a valid NUL-terminated string for the call's duration.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(super::errno::io_errno(&std::io::Error::last_os_error()));
        }
        Ok(st)
    }
}

fn lookup_name_errno(b: BadName) -> Errno {
    match b {
        BadName::TooLong => Errno::ENAMETOOLONG,
        BadName::Invalid | BadName::Reserved => Errno::ENOENT,
    }
}

fn parse_guid(name: &OsStr) -> Res<Guid> {
    name.to_str().and_then(|s| s.parse::<Guid>().ok()).ok_or(Errno::ENOENT)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps behind these locks are updated by single inserts/removes,
    // so a panic elsewhere cannot leave them half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
fn read_lock<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}
fn write_lock<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn open_flags_writable(flags: i32) -> bool {
    match OpenFlags(flags).acc_mode() {
        OpenAccMode::O_RDONLY => false,
        OpenAccMode::O_WRONLY | OpenAccMode::O_RDWR => true,
    }
}

/// Flags of every volume file handle (see the module invariants).
fn fopen_flags(keep_cache: bool) -> FopenFlags {
    let cache = if keep_cache { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::FOPEN_DIRECT_IO };
    cache | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // FUSE_ASYNC_DIO is what lets a queue of O_DIRECT AIO requests
        // (qemu cache=none, fio libaio) reach us in parallel; fuser does not
        // ask for it by default and without it QD16 behaves like QD1.
        let wanted = [
            ("FUSE_ASYNC_DIO", InitFlags::FUSE_ASYNC_DIO),
            ("FUSE_PARALLEL_DIROPS", InitFlags::FUSE_PARALLEL_DIROPS),
            ("FUSE_DO_READDIRPLUS", InitFlags::FUSE_DO_READDIRPLUS),
            ("FUSE_READDIRPLUS_AUTO", InitFlags::FUSE_READDIRPLUS_AUTO),
            // Lets tools mmap a direct-I/O file instead of getting ENODEV.
            ("FUSE_DIRECT_IO_ALLOW_MMAP", InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP),
        ];
        let writeback =
            self.settings.writeback_cache.then_some(("FUSE_WRITEBACK_CACHE", InitFlags::FUSE_WRITEBACK_CACHE));
        for (name, flag) in wanted.into_iter().chain(writeback) {
            if config.add_capabilities(flag).is_err() {
                if flag == InitFlags::FUSE_ASYNC_DIO {
                    tracing::warn!("kernel lacks FUSE_ASYNC_DIO: queued O_DIRECT I/O will be serialised");
                } else if flag == InitFlags::FUSE_WRITEBACK_CACHE {
                    tracing::warn!("kernel lacks FUSE_WRITEBACK_CACHE: the writeback_cache option does nothing");
                } else {
                    tracing::debug!(capability = name, "not supported by the kernel");
                }
            }
        }
        if let Err(nearest) = config.set_max_write(self.settings.max_write) {
            let _ = config.set_max_write(nearest);
        }
        if let Err(nearest) = config.set_max_background(self.settings.max_background) {
            let _ = config.set_max_background(nearest);
        }
        tracing::info!(
            kernel_abi = ?config.kernel_abi(),
            max_background = self.settings.max_background,
            max_write = self.settings.max_write,
            writeback_cache = self.settings.writeback_cache,
            keep_cache = self.settings.keep_cache,
            "FUSE session initialised"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = tracing::debug_span!("fuse", op = "lookup", parent = parent.0, name = ?name).entered();
        match self.lookup_attr(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = tracing::debug_span!("fuse", op = "getattr", ino = ino.0).entered();
        match self.attr_of(ino.0, "getattr") {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _s = tracing::debug_span!("fuse", op = "setattr", ino = ino.0, ?mode, ?uid, ?gid, ?size).entered();
        match self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let _s = tracing::debug_span!("fuse", op = "mknod", parent = parent.0, name = ?name, mode).entered();
        // Only regular files exist here (some tools use mknod instead of create).
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.create_volume(req, parent.0, name, mode, umask) {
            Ok(info) => {
                let (ino, state) = self.inodes.file_state(info.guid);
                reply.entry(&TTL, &self.file_attr(ino, &state, &info), Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = tracing::debug_span!("fuse", op = "unlink", parent = parent.0, name = ?name).entered();
        let res = (|| {
            if parent.0 != ROOT_INO {
                return Err(Errno::EPERM);
            }
            if self.settings.read_only {
                return Err(Errno::EROFS);
            }
            let name = layout::volume_name(name).map_err(BadName::errno)?;
            let info = self.info_by_name(name, "unlink")?;
            self.remove_or_defer(info.guid, "unlink")
        })();
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _s = tracing::debug_span!("fuse", op = "rename", name = ?name, newname = ?newname, flags = flags.bits())
            .entered();
        match self.do_rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _s = tracing::debug_span!("fuse", op = "open", ino = ino.0, flags = flags.0).entered();
        let writable = open_flags_writable(flags.0);
        let res = match self.inodes.get(ino.0).map(|n| n.key) {
            Some(NodeKey::Snapshot { disk, layer }) => self.open_snapshot(disk, layer, writable),
            _ => self.volume_node(ino.0).and_then(|(disk, _)| self.open_handle(disk, writable)),
        };
        match res {
            Ok((fh, _)) => reply.opened(FileHandle(fh), fopen_flags(self.settings.keep_cache)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _s = tracing::debug_span!("fuse", op = "create", parent = parent.0, name = ?name, mode, flags).entered();
        let res = (|| {
            if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
                return Err(Errno::EPERM);
            }
            let info = self.create_volume(req, parent.0, name, mode, umask)?;
            let (fh, of) = self.open_handle(info.guid, open_flags_writable(flags))?;
            Ok((fh, self.file_attr(of.ino, &of.state, &info)))
        })();
        match res {
            Ok((fh, attr)) => {
                reply.created(&TTL, &attr, Generation(0), FileHandle(fh), fopen_flags(self.settings.keep_cache))
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _s = tracing::trace_span!("fuse", op = "read", ino = ino.0, offset, len = size).entered();
        let of = match self.handle(fh) {
            Ok(of) => of,
            Err(e) => return reply.error(e),
        };
        let cap = of.volume.capacity();
        if offset >= cap {
            return reply.data(&[]);
        }
        // Clamp at EOF: a read that crosses the end returns what exists.
        let len = (cap - offset).min(u64::from(size)) as usize;
        READ_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            if buf.len() < len {
                buf.resize(len, 0);
            }
            match of.volume.read_at(&mut buf[..len], offset) {
                Ok(()) => reply.data(&buf[..len]),
                Err(e) => reply.error(to_errno(&e, "read")),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _s = tracing::trace_span!("fuse", op = "write", ino = ino.0, offset, len = data.len()).entered();
        let res = (|| {
            let of = self.handle(fh)?;
            if !of.writable {
                return Err(Errno::EBADF);
            }
            let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
            let end = offset.checked_add(u64::from(len)).ok_or(Errno::EFBIG)?;
            // Writing past EOF grows the file, as on any filesystem
            // (`cp`, `qemu-img convert -O raw` to a new file rely on it).
            self.grow_to(&of.state, &of.volume, end, "write")?;
            of.volume.write_at(data, offset).map_err(|e| to_errno(&e, "write"))?;
            of.dirty.store(true, Ordering::Release);
            of.state.touch(attr::now_ns());
            Ok(len)
        })();
        match res {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _s = tracing::debug_span!("fuse", op = "flush", ino = ino.0).entered();
        match self.handle(fh).and_then(|of| self.flush_handle(&of, "flush")) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _s = tracing::debug_span!("fuse", op = "release", ino = ino.0).entered();
        let Some(of) = write_lock(&self.handles).remove(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // Normally close() already flushed; a handle released without a
        // flush (mmap writeback, a killed process) still gets one.
        let res = self.flush_handle(&of, "release");
        let state = of.state.clone();
        drop(of);
        let last = state.open_count.fetch_sub(1, Ordering::AcqRel) == 1;
        if last && state.unlinked.load(Ordering::Acquire) {
            state.forget_volume();
            if let Err(e) = self.engine.remove_volume(&state.disk.to_string(), false) {
                tracing::error!(volume = %state.disk, error = %e, "could not remove a volume unlinked while open");
            }
        }
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let _s = tracing::debug_span!("fuse", op = "fsync", ino = ino.0, datasync).entered();
        let res = self.handle(fh).and_then(|of| {
            // fsync flushes even a clean handle: another handle (or the
            // other view) may hold the writes this caller depends on.
            of.dirty.store(false, Ordering::Release);
            of.volume.flush().map_err(|e| {
                of.dirty.store(true, Ordering::Release);
                to_errno(&e, "fsync")
            })?;
            if !datasync {
                self.persist_mtime(&of.state);
            }
            Ok(())
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = tracing::debug_span!("fuse", op = "opendir", ino = ino.0).entered();
        match self.list_dir(ino.0) {
            Ok(listing) => {
                let fh = self.new_fh();
                lock(&self.dirs).insert(fh, Arc::new(listing));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _s = tracing::debug_span!("fuse", op = "readdir", ino = ino.0, offset).entered();
        let listing = match self.dir_listing(ino.0, fh) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in listing.iter().enumerate().skip(start) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.attr.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _s = tracing::debug_span!("fuse", op = "readdirplus", ino = ino.0, offset).entered();
        let listing = match self.dir_listing(ino.0, fh) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, e) in listing.iter().enumerate().skip(start) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, &e.name, &TTL, &e.attr, Generation(0)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // Namespace changes are catalogue transactions, durable when they return.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _s = tracing::debug_span!("fuse", op = "statfs").entered();
        match self.statfs_of_store() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                layout::NAME_MAX as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let _s = tracing::debug_span!("fuse", op = "setxattr", ino = ino.0, name = ?name, len = value.len()).entered();
        if position != 0 {
            return reply.error(Errno::EINVAL);
        }
        match self.set_xattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _s = tracing::debug_span!("fuse", op = "getxattr", ino = ino.0, name = ?name, size).entered();
        match self.get_xattr(ino.0, name) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _s = tracing::debug_span!("fuse", op = "listxattr", ino = ino.0, size).entered();
        match self.list_xattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = tracing::debug_span!("fuse", op = "removexattr", ino = ino.0, name = ?name).entered();
        match self.remove_xattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // default_permissions is always on: the kernel has checked already.
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _s = tracing::debug_span!("fuse", op = "fallocate", ino = ino.0, offset, length, mode).entered();
        match self.do_fallocate(ino.0, fh, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn lseek(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _s = tracing::debug_span!("fuse", op = "lseek", ino = ino.0, offset, whence).entered();
        match self.do_lseek(ino.0, fh, offset, whence) {
            Ok(pos) => reply.offset(pos),
            Err(e) => reply.error(e),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        match u32::try_from(value.len()) {
            Ok(n) => reply.size(n),
            Err(_) => reply.error(Errno::E2BIG),
        }
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
