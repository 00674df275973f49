//! The inode table: kernel inode numbers ↔ what they stand for.
//!
//! Owns the mapping from [`NodeKey`] (a volume GUID and the view it is seen
//! in) to a 64-bit inode number, and the per-volume state that must be
//! shared by every open handle of one file ([`FileState`]).
//!
//! Invariants: a key gets one inode number for the life of the mount and a
//! number is never reused (the counter only grows), so a stale kernel inode
//! can never reach another volume's data. Entries are not evicted on
//! `forget`: an entry costs a few dozen bytes per volume ever seen, and
//! keeping it means the inode number of a volume stays the same as long as
//! the mount lives, which tools that compare `st_ino` expect.
//!
//! Lock order: the table's one `RwLock` is a leaf lock; it is never held
//! while calling the engine or the kernel.

use super::layout::{FIRST_DYNAMIC_INO, NodeKey};
use crate::guid::Guid;
use crate::volume::Volume;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// State of one volume or snapshot file shared by all its handles.
pub struct FileState {
    /// The volume (image group) GUID; for a snapshot file, the snapshot's
    /// layer GUID (snapshot files never store properties or get removed
    /// through the mount).
    pub disk: Guid,
    /// Serialises size changes (write past EOF, truncate, fallocate) so two
    /// growing writes cannot shrink each other. Held across one resize
    /// call, never across data I/O.
    pub resize_lock: Mutex<()>,
    /// Modification time in ns since the epoch set by a write and not yet
    /// stored as the `fs.mtime_ns` property; 0 = none. Writing the property
    /// on every write would put a catalogue transaction in the data path.
    pub pending_mtime_ns: AtomicI64,
    /// Open handles (open/create minus release).
    pub open_count: AtomicU32,
    /// Unlinked while open: removed from the engine at the last release.
    pub unlinked: AtomicBool,
    /// The volume stays open in the engine after its first `open` (until
    /// it is removed), so `stat` of a closed file does not make the engine
    /// recount the volume's blocks, and a re-open is free.
    kept_open: Mutex<Option<Arc<Volume>>>,
}

impl FileState {
    fn new(disk: Guid) -> FileState {
        FileState {
            disk,
            resize_lock: Mutex::new(()),
            pending_mtime_ns: AtomicI64::new(0),
            open_count: AtomicU32::new(0),
            unlinked: AtomicBool::new(false),
            kept_open: Mutex::new(None),
        }
    }

    /// Keep `volume` open for the life of the mount (see `kept_open`).
    pub fn keep_open(&self, volume: &Arc<Volume>) {
        let mut k = self.kept_open.lock().unwrap_or_else(|p| p.into_inner());
        if !k.as_ref().is_some_and(|v| Arc::ptr_eq(v, volume)) {
            *k = Some(volume.clone());
        }
    }

    /// Let the engine close the volume (it was removed).
    pub fn forget_volume(&self) {
        self.kept_open.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Record a data change at `now_ns`; the property is written later
    /// (fsync, flush, release) by [`FileState::take_pending_mtime`].
    pub fn touch(&self, now_ns: i64) {
        self.pending_mtime_ns.store(now_ns.max(1), Ordering::Relaxed);
    }

    pub fn pending_mtime(&self) -> Option<i64> {
        match self.pending_mtime_ns.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Take the pending mtime for storing. If storing fails the caller puts
    /// it back with [`FileState::touch`].
    pub fn take_pending_mtime(&self) -> Option<i64> {
        match self.pending_mtime_ns.swap(0, Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
}

#[derive(Clone)]
pub struct Node {
    pub key: NodeKey,
    /// Some for [`NodeKey::Volume`] nodes.
    pub file: Option<Arc<FileState>>,
}

struct Inner {
    by_ino: HashMap<u64, Node>,
    by_key: HashMap<NodeKey, u64>,
    next_ino: u64,
}

pub struct InodeTable {
    inner: RwLock<Inner>,
}

impl Default for InodeTable {
    fn default() -> Self {
        Self::new()
    }
}

impl InodeTable {
    pub fn new() -> InodeTable {
        let mut by_ino = HashMap::new();
        let mut by_key = HashMap::new();
        for key in [NodeKey::Root, NodeKey::SnapshotsDir, NodeKey::ImagesDir] {
            if let Some(ino) = key.fixed_ino() {
                by_ino.insert(ino, Node { key, file: None });
                by_key.insert(key, ino);
            }
        }
        InodeTable { inner: RwLock::new(Inner { by_ino, by_key, next_ino: FIRST_DYNAMIC_INO }) }
    }

    /// The inode of `key`, allocating one on first sight.
    pub fn ino_of(&self, key: NodeKey) -> u64 {
        if let Some(ino) = key.fixed_ino() {
            return ino;
        }
        if let Some(&ino) = self.read().by_key.get(&key) {
            return ino;
        }
        let mut inner = self.write();
        // Another thread may have inserted it between the two locks.
        if let Some(&ino) = inner.by_key.get(&key) {
            return ino;
        }
        let ino = inner.next_ino;
        inner.next_ino += 1;
        let file = match key {
            NodeKey::Volume(disk) => Some(Arc::new(FileState::new(disk))),
            NodeKey::Snapshot { layer, .. } => Some(Arc::new(FileState::new(layer))),
            NodeKey::Root
            | NodeKey::SnapshotsDir
            | NodeKey::ImagesDir
            | NodeKey::ImageGroupDir(_)
            | NodeKey::SnapshotDir(_) => None,
        };
        inner.by_ino.insert(ino, Node { key, file });
        inner.by_key.insert(key, ino);
        ino
    }

    /// The inode of `key` if one was handed out (never allocates).
    pub fn known_ino(&self, key: NodeKey) -> Option<u64> {
        key.fixed_ino().or_else(|| self.read().by_key.get(&key).copied())
    }

    /// A snapshot file's inode and state.
    pub fn snapshot_state(&self, disk: Guid, layer: Guid) -> (u64, Arc<FileState>) {
        let ino = self.ino_of(NodeKey::Snapshot { disk, layer });
        match self.get(ino).and_then(|n| n.file) {
            Some(f) => (ino, f),
            None => (ino, Arc::new(FileState::new(layer))),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.read().by_ino.get(&ino).cloned()
    }

    /// The shared state of a volume's file, creating its inode if needed.
    pub fn file_state(&self, disk: Guid) -> (u64, Arc<FileState>) {
        let ino = self.ino_of(NodeKey::Volume(disk));
        match self.get(ino).and_then(|n| n.file) {
            Some(f) => (ino, f),
            // Unreachable by construction (Volume keys always get a state);
            // a fresh state is a safe answer rather than a panic.
            None => (ino, Arc::new(FileState::new(disk))),
        }
    }

    /// Inodes of volume files currently known (for invalidation after a
    /// control command).
    /// Stop keeping volumes open that are no longer in `live`.
    pub fn forget_volumes_except(&self, live: &std::collections::HashSet<Guid>) {
        let gone: Vec<Arc<FileState>> =
            self.read().by_ino.values().filter_map(|n| n.file.clone()).filter(|f| !live.contains(&f.disk)).collect();
        for f in gone {
            f.forget_volume();
        }
    }

    pub fn volume_inodes(&self) -> Vec<(Guid, u64)> {
        self.read()
            .by_key
            .iter()
            .filter_map(|(k, &ino)| match k {
                NodeKey::Volume(g) => Some((*g, ino)),
                _ => None,
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half
        // updated (each critical section is a few inserts), so a poisoned
        // lock is still consistent.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::layout::{IMAGES_INO, ROOT_INO, SNAPSHOTS_INO};

    #[test]
    fn fixed_nodes_have_fixed_inodes() {
        let t = InodeTable::new();
        assert_eq!(t.ino_of(NodeKey::Root), ROOT_INO);
        assert_eq!(t.ino_of(NodeKey::SnapshotsDir), SNAPSHOTS_INO);
        assert_eq!(t.ino_of(NodeKey::ImagesDir), IMAGES_INO);
        assert_eq!(t.get(ROOT_INO).map(|n| n.key), Some(NodeKey::Root));
    }

    #[test]
    fn a_key_keeps_its_inode_and_different_keys_differ() {
        let t = InodeTable::new();
        let g = Guid::new_random();
        let a = t.ino_of(NodeKey::Volume(g));
        assert!(a >= FIRST_DYNAMIC_INO);
        assert_eq!(t.ino_of(NodeKey::Volume(g)), a);
        let b = t.ino_of(NodeKey::ImageGroupDir(g));
        let c = t.ino_of(NodeKey::SnapshotDir(g));
        assert!(a != b && b != c && a != c);
        let other = t.ino_of(NodeKey::Volume(Guid::new_random()));
        assert!(other > c);
    }

    #[test]
    fn volume_nodes_share_one_file_state() {
        let t = InodeTable::new();
        let g = Guid::new_random();
        let (ino, s1) = t.file_state(g);
        let (ino2, s2) = t.file_state(g);
        assert_eq!(ino, ino2);
        assert!(Arc::ptr_eq(&s1, &s2));
        assert_eq!(t.volume_inodes(), vec![(g, ino)]);
    }

    #[test]
    fn unknown_inodes_are_none() {
        assert!(InodeTable::new().get(999).is_none());
    }

    #[test]
    fn pending_mtime_is_taken_once() {
        let t = InodeTable::new();
        let (_, s) = t.file_state(Guid::new_random());
        assert_eq!(s.pending_mtime(), None);
        s.touch(42);
        assert_eq!(s.pending_mtime(), Some(42));
        assert_eq!(s.take_pending_mtime(), Some(42));
        assert_eq!(s.take_pending_mtime(), None);
    }

    #[test]
    fn concurrent_allocation_gives_one_inode_per_key() {
        let t = Arc::new(InodeTable::new());
        let g = Guid::new_random();
        let inos: Vec<u64> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || t.ino_of(NodeKey::Volume(g)))
            })
            .map(|h| h.join().unwrap())
            .collect();
        assert!(inos.windows(2).all(|w| w[0] == w[1]));
    }
}
