//! Temporary stand-ins for `crate::fs` and `crate::control`, which are being
//! written on another branch. They have the agreed signatures, so switching
//! to the real modules is a change of `use` lines in `mount.rs` and `mod.rs`
//! and the removal of this file.

// The stand-in takes the whole config but uses only the paths.
#[allow(dead_code)]
pub mod fs {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use crate::volume::Engine;

    pub struct MountConfig {
        pub store: PathBuf,
        pub mountpoint: PathBuf,
        pub foreground: bool,
        pub options: Vec<String>,
        pub threads: Option<usize>,
    }

    pub type ControlHandler =
        Arc<dyn Fn(&Engine, &[String]) -> (String, String, i32) + Send + Sync>;

    pub fn mount(config: &MountConfig, _handler: ControlHandler) -> anyhow::Result<()> {
        anyhow::bail!(
            "cannot mount {} on {}: this build of strata has no FUSE mount yet",
            config.store.display(),
            config.mountpoint.display()
        )
    }

    pub fn umount(mountpoint: &Path) -> anyhow::Result<()> {
        anyhow::bail!(
            "cannot unmount {}: this build of strata has no FUSE mount yet; use `fusermount3 -u`",
            mountpoint.display()
        )
    }
}

pub mod control {
    use std::path::Path;

    /// No daemon can be running without the mount, so there is never one to ask.
    pub fn call(_store: &Path, _argv: &[String]) -> std::io::Result<Option<(String, String, i32)>> {
        Ok(None)
    }
}
