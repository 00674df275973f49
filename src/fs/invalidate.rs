//! Keeping the kernel's caches honest after a control command.
//!
//! A command run through the control socket (create, rename, remove,
//! resize, snapshot revert...) changes the catalogue without the kernel
//! knowing. The kernel may hold entries and attributes for up to
//! [`super::filesystem::TTL`]; to make the change visible at once, the
//! control handler is wrapped so that after each command every top-level
//! name seen before or after it, and every volume inode, is invalidated
//! through fuser's `Notifier`. A handful of notifications per command is
//! cheaper than reasoning about which command changed what.
//!
//! This runs on the control thread, never on a FUSE worker: a
//! notification may wait for a directory lock held by a request that a
//! worker must be free to answer.

use super::inodes::InodeTable;
use super::layout::NodeKey;
use super::layout::{IMAGES_INO, ROOT_INO, SNAPSHOTS_INO};
use crate::control;
use crate::guid::Guid;
use crate::volume::Engine;
use fuser::{INodeNo, Notifier};
use std::collections::{BTreeSet, HashSet};
use std::ffi::OsStr;
use std::sync::Arc;

/// What the catalogue looks like, as (parent inode, entry name) pairs:
/// top-level names, per-volume snapshot folders and by-GUID folders, and,
/// inside folders the kernel has seen, snapshot names and layer GUIDs.
/// Also the set of live volume GUIDs.
fn names(engine: &Engine, inodes: &InodeTable) -> (BTreeSet<(u64, String)>, HashSet<Guid>) {
    let mut out = BTreeSet::new();
    let mut live = HashSet::new();
    let vols = match engine.list_volumes() {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "listing volumes for cache invalidation");
            // Keep everything: better a volume kept open than one closed
            // under a user.
            live.extend(inodes.volume_inodes().into_iter().map(|(g, _)| g));
            return (out, live);
        }
    };
    for i in vols {
        live.insert(i.guid);
        out.insert((ROOT_INO, i.name.clone()));
        out.insert((SNAPSHOTS_INO, i.name.clone()));
        out.insert((IMAGES_INO, i.guid.to_string()));
        let snap_dir = inodes.known_ino(NodeKey::SnapshotDir(i.guid));
        let group_dir = inodes.known_ino(NodeKey::ImageGroupDir(i.guid));
        if snap_dir.is_none() && group_dir.is_none() {
            continue;
        }
        let snaps = engine.snapshot_list(&i.guid.to_string()).unwrap_or_default();
        if let Some(d) = group_dir {
            out.insert((d, i.leaf.to_string()));
            out.extend(snaps.iter().map(|s| (d, s.guid.to_string())));
        }
        if let Some(d) = snap_dir {
            out.extend(snaps.iter().map(|s| (d, s.name.clone())));
        }
    }
    (out, live)
}

/// Wrap `handler` so the kernel forgets what the command may have changed.
pub fn wrap(handler: control::Handler, notifier: Notifier, inodes: Arc<InodeTable>) -> control::Handler {
    Arc::new(move |engine: &Engine, argv: &[String]| {
        let (before, _) = names(engine, &inodes);
        let result = handler(engine, argv);
        let (after, live) = names(engine, &inodes);
        // Volumes the command removed: stop keeping them open.
        inodes.forget_volumes_except(&live);
        for (parent, name) in before.union(&after) {
            if let Err(e) = notifier.inval_entry(INodeNo(*parent), OsStr::new(name)) {
                tracing::debug!(name, error = %e, "inval_entry");
            }
        }
        for (_, ino) in inodes.volume_inodes() {
            if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                tracing::debug!(ino, error = %e, "inval_inode");
            }
        }
        result
    })
}
