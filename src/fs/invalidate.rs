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
use super::layout::{IMAGES_INO, ROOT_INO, SNAPSHOTS_INO};
use crate::control;
use crate::volume::Engine;
use fuser::{INodeNo, Notifier};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::sync::Arc;

/// Top-level names and by-GUID folder names of every volume.
fn names(engine: &Engine) -> BTreeSet<(u64, String)> {
    match engine.list_volumes() {
        Ok(v) => v
            .into_iter()
            .flat_map(|i| {
                [
                    (ROOT_INO, i.name.clone()),
                    (SNAPSHOTS_INO, i.name),
                    (IMAGES_INO, i.guid.to_string()),
                ]
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "listing volumes for cache invalidation");
            BTreeSet::new()
        }
    }
}

/// Wrap `handler` so the kernel forgets what the command may have changed.
pub fn wrap(
    handler: control::Handler,
    notifier: Notifier,
    inodes: Arc<InodeTable>,
) -> control::Handler {
    Arc::new(move |engine: &Engine, argv: &[String]| {
        let before = names(engine);
        let result = handler(engine, argv);
        let after = names(engine);
        // Volumes the command removed: stop keeping them open.
        let live: std::collections::HashSet<_> = match engine.list_volumes() {
            Ok(v) => v.into_iter().map(|i| i.guid).collect(),
            Err(_) => inodes.volume_inodes().into_iter().map(|(g, _)| g).collect(),
        };
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
