//! The mount: strata's volumes as a directory of plain raw files (FUSE).
//!
//! # Layout
//!
//! ```text
//! MOUNTPOINT/
//! ├── vm1.img                       volume "vm1.img": its active leaf, read-write
//! ├── .snapshots/vm1.img/SNAP       read-only; one folder per volume, one file per snapshot
//! └── images/<volume-guid>/<layer-guid>
//!                                   by-GUID view (oVirt file-domain shape): the leaf is the same
//!                                   inode as vm1.img, each snapshot layer the same as its
//!                                   .snapshots file
//! ```
//!
//! A file's size is the volume's capacity and `st_blocks` its allocated
//! bytes / 512. File operations map to volume operations: create → new
//! empty sparse volume; truncate → resize (shrinking too); unlink → remove
//! (deferred to the last close if open); rename → rename (metadata only;
//! onto an existing name replaces it); read/write (a write past EOF grows
//! the volume); fsync/fdatasync/close → flush; fallocate punch-hole and
//! zero-range → discard; SEEK_DATA/SEEK_HOLE; statfs → the store's
//! filesystem; chmod/chown/utimens/xattrs → volume properties
//! ([`attr`]). docs/mount.md has the user-facing version.
//!
//! # Modules
//!
//! * [`layout`]: names, reserved names, fixed inode numbers.
//! * [`inodes`]: inode table and per-file shared state.
//! * [`attr`]: attributes as properties, `stat` fields.
//! * [`errno`]: the one engine-error → errno mapping.
//! * [`filesystem`]: the `fuser::Filesystem` implementation.
//! * [`options`]: `-o` options.
//! * [`daemon`]: [`mount`]/[`umount`], daemonizing, signals, pidfile.
//! * [`invalidate`]: kernel cache invalidation after control commands.
//!
//! Depends on: `volume` (Engine/Volume), `control`, fuser, libc. Never on
//! store, chain, journal or SQL.

pub mod attr;
pub mod daemon;
pub mod errno;
pub mod filesystem;
pub mod inodes;
pub mod invalidate;
pub mod layout;
pub mod options;

pub use daemon::{PIDFILE_NAME, mount, process_alive, spawn_daemon, umount};
pub use filesystem::StrataFs;

use crate::volume::Engine;
use std::path::PathBuf;

/// What `strata mount STORE MOUNTPOINT [--foreground] [-o opts]` asks for.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    /// Serve in the calling process until unmounted (else daemonize).
    pub foreground: bool,
    /// Values of `-o` (each may be a comma-separated list).
    pub options: Vec<String>,
    /// FUSE worker threads; None = one per CPU, at least 2.
    pub threads: Option<usize>,
}

/// Runs one CLI command line inside the daemon: (stdout, stderr, exit code).
pub type ControlHandler = std::sync::Arc<dyn Fn(&Engine, &[String]) -> (String, String, i32) + Send + Sync>;
