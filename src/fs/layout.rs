//! The shape of the mount: which names exist where, and their inode numbers.
//!
//! ```text
//! MOUNTPOINT/                      ino 1   rwxr-xr-x  one file per volume
//! ├── vm1.img                      dyn     the active leaf of volume "vm1.img", read-write
//! ├── vm2.raw                      dyn
//! ├── .snapshots/                  ino 2   r-xr-xr-x  hidden, read-only
//! │   └── vm1.img/                 dyn     one folder per volume
//! │       └── before-upgrade       dyn     a snapshot, read-only file
//! └── images/                      ino 3   r-xr-xr-x  by-GUID view, oVirt file-domain shape
//!     └── <volume-guid>/           dyn     the image group (strata "volume")
//!         ├── <snapshot-layer>     dyn     same inode as .snapshots/vm1.img/before-upgrade
//!         └── <leaf-guid>          dyn     same inode as MOUNTPOINT/vm1.img (a hard link)
//! ```
//!
//! Invariants:
//! * Inode numbers 1–3 are fixed; all others are handed out by
//!   [`super::inodes::InodeTable`] from a counter and never reused while
//!   mounted, so a removed and re-created volume never aliases an old inode.
//! * The by-GUID file and the top-level file are one inode (`nlink` 2):
//!   attributes and data can never disagree between the two views.
//! * Only the top level is a namespace users can change (create, unlink,
//!   rename). `images/` and `.snapshots/` are views: EPERM for changes.
//! * Names `images` and `.snapshots`, and names starting with
//!   [`HIDDEN_PREFIX`], are reserved at the top level; a volume with such a
//!   name (made through the CLI) is reachable only by GUID.

use crate::guid::Guid;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

pub const ROOT_INO: u64 = 1;
pub const SNAPSHOTS_INO: u64 = 2;
pub const IMAGES_INO: u64 = 3;
/// First inode number handed out dynamically.
pub const FIRST_DYNAMIC_INO: u64 = 16;

pub const SNAPSHOTS_DIR: &str = ".snapshots";
pub const IMAGES_DIR: &str = "images";
/// Volumes whose name starts with this are internal to the mount (an open
/// file that was unlinked, a rename target being replaced) and not listed.
pub const HIDDEN_PREFIX: &str = ".strata-";

/// Linux NAME_MAX.
pub const NAME_MAX: usize = 255;

/// What an inode stands for. Volume-backed nodes carry the image-group GUID
/// (the volume's stable identity), never its name, so a rename does not
/// change the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKey {
    Root,
    SnapshotsDir,
    ImagesDir,
    /// The volume's active leaf as a file (top level and images/<g>/<leaf>).
    Volume(Guid),
    /// `images/<volume-guid>/`
    ImageGroupDir(Guid),
    /// `.snapshots/<volume>/`
    SnapshotDir(Guid),
    /// A snapshot of volume `disk` (its frozen layer `layer`) as a
    /// read-only file: `.snapshots/<volume>/<snapshot>` and
    /// `images/<volume-guid>/<layer-guid>`.
    Snapshot {
        disk: Guid,
        layer: Guid,
    },
}

impl NodeKey {
    pub fn fixed_ino(&self) -> Option<u64> {
        match self {
            NodeKey::Root => Some(ROOT_INO),
            NodeKey::SnapshotsDir => Some(SNAPSHOTS_INO),
            NodeKey::ImagesDir => Some(IMAGES_INO),
            NodeKey::Volume(_) | NodeKey::ImageGroupDir(_) | NodeKey::SnapshotDir(_) | NodeKey::Snapshot { .. } => None,
        }
    }

    pub fn is_dir(&self) -> bool {
        match self {
            NodeKey::Volume(_) | NodeKey::Snapshot { .. } => false,
            NodeKey::Root
            | NodeKey::SnapshotsDir
            | NodeKey::ImagesDir
            | NodeKey::ImageGroupDir(_)
            | NodeKey::SnapshotDir(_) => true,
        }
    }
}

/// Why a name cannot be a volume file at the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    /// Empty, ".", "..", contains '/' or NUL, or not UTF-8: EINVAL.
    Invalid,
    /// Longer than NAME_MAX: ENAMETOOLONG.
    TooLong,
    /// One of the mount's own names: EPERM (for create) / ENOENT (lookup).
    Reserved,
}

impl BadName {
    pub fn errno(self) -> fuser::Errno {
        match self {
            BadName::Invalid => fuser::Errno::EINVAL,
            BadName::TooLong => fuser::Errno::ENAMETOOLONG,
            BadName::Reserved => fuser::Errno::EPERM,
        }
    }
}

/// Validate a top-level name from the kernel and return it as a volume name.
/// Volume names are UTF-8 because the catalogue stores text.
pub fn volume_name(name: &OsStr) -> Result<&str, BadName> {
    let bytes = name.as_bytes();
    if bytes.len() > NAME_MAX {
        return Err(BadName::TooLong);
    }
    let s = std::str::from_utf8(bytes).map_err(|_| BadName::Invalid)?;
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
        return Err(BadName::Invalid);
    }
    if is_reserved(s) {
        return Err(BadName::Reserved);
    }
    Ok(s)
}

/// Whether a catalogue name is kept out of the top-level listing.
pub fn is_reserved(name: &str) -> bool {
    name == SNAPSHOTS_DIR || name == IMAGES_DIR || name.starts_with(HIDDEN_PREFIX)
}

/// Whether a catalogue name is internal to the mount and shown nowhere.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with(HIDDEN_PREFIX)
}

/// Name given to an unlinked volume that is still open (removed at last close).
pub fn unlinked_name(disk: Guid) -> String {
    format!("{HIDDEN_PREFIX}unlinked-{disk}")
}

/// Name given to a rename target while it is being replaced.
pub fn replaced_name(disk: Guid) -> String {
    format!("{HIDDEN_PREFIX}replaced-{disk}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_volume_names() {
        assert_eq!(volume_name(OsStr::new("vm1.img")), Ok("vm1.img"));
        assert_eq!(volume_name(OsStr::new(".hidden-but-ok")), Ok(".hidden-but-ok"));
    }

    #[test]
    fn dot_names_slashes_nul_and_non_utf8_are_invalid() {
        for n in ["", ".", "..", "a/b", "a\0b"] {
            assert_eq!(volume_name(OsStr::new(n)), Err(BadName::Invalid), "{n:?}");
        }
        assert_eq!(volume_name(OsStr::from_bytes(b"\xff\xfe")), Err(BadName::Invalid));
    }

    #[test]
    fn the_mounts_own_names_are_reserved() {
        assert_eq!(volume_name(OsStr::new("images")), Err(BadName::Reserved));
        assert_eq!(volume_name(OsStr::new(".snapshots")), Err(BadName::Reserved));
        let g = Guid::new_random();
        assert_eq!(volume_name(OsStr::new(&unlinked_name(g))), Err(BadName::Reserved));
        assert_eq!(volume_name(OsStr::new(&replaced_name(g))), Err(BadName::Reserved));
    }

    #[test]
    fn names_longer_than_name_max_are_too_long() {
        let long = "x".repeat(NAME_MAX + 1);
        assert_eq!(volume_name(OsStr::new(&long)), Err(BadName::TooLong));
        assert!(volume_name(OsStr::new(&"x".repeat(NAME_MAX))).is_ok());
    }

    #[test]
    fn only_volume_nodes_are_files() {
        let g = Guid::new_random();
        assert!(!NodeKey::Volume(g).is_dir());
        assert!(NodeKey::ImageGroupDir(g).is_dir());
        assert_eq!(NodeKey::Root.fixed_ino(), Some(ROOT_INO));
        assert_eq!(NodeKey::Volume(g).fixed_ino(), None);
    }
}
