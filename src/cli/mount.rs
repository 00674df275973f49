//! `strata mount [STORE] MOUNTPOINT` and `strata umount MOUNTPOINT`: serve a
//! store through FUSE, and stop serving it.
//!
//! The mount daemon holds the store open (and locked); other `strata`
//! commands reach it through its control socket, and it runs them with
//! [`super::execute`], which is the control handler given to the mount.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;

use super::exit::{self, ExitCode};
use crate::fs;
use crate::volume::check;

#[derive(clap::Args, Debug)]
#[command(
    about = "Serve a store through FUSE as a directory of raw files",
    override_usage = "strata mount [OPTIONS] [STORE] MOUNTPOINT",
    long_about = "Mount a store: every volume appears in MOUNTPOINT as a raw file of its virtual size. \
        The daemon runs in the background unless --foreground is given; while it runs, other strata \
        commands on the store are passed to it.\n\n\
        STORE may be left out when --store or $STRATA_STORE names it.\n\n\
        Layout: MOUNTPOINT/<volume> (the active leaf, read-write); .snapshots/<volume>/ (planned); \
        images/<volume-guid>/<leaf-guid> (the oVirt file-domain view)."
)]
pub struct MountArgs {
    /// The store, then the mount point; with one path it is the mount point.
    #[arg(value_name = "PATH", num_args = 1..=2, required = true)]
    pub paths: Vec<PathBuf>,
    /// Stay in the foreground (for systemd or debugging) instead of daemonizing.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Mount options, comma separated (e.g. ro,threads=4,clone_fd=0,max_write=128K,max_read=128K,keep_cache,writeback_cache;
    /// see docs/mount.md); may be repeated.
    #[arg(short = 'o', value_name = "OPTS", value_delimiter = ',')]
    pub options: Vec<String>,
    /// First rebuild the store's metadata from its packs and maps offline
    /// (`strata check --force-rebuild`); may lose data that is already damaged.
    #[arg(long)]
    pub force_rebuild: bool,
    /// Number of FUSE worker threads (default: chosen by the mount).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(usize))]
    pub threads: Option<usize>,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Unmount a strata mount (flushes and stops the daemon)",
    long_about = "Unmount a strata mount: everything is flushed, the store is closed cleanly and the daemon exits."
)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
}

impl MountArgs {
    /// (store, mountpoint): with two paths the first is the store, with one
    /// the store comes from --store / $STRATA_STORE / the default.
    pub fn split(&self, default_store: &Path) -> (PathBuf, PathBuf) {
        match self.paths.as_slice() {
            [store, mountpoint] => (store.clone(), mountpoint.clone()),
            [mountpoint] => (default_store.to_path_buf(), mountpoint.clone()),
            // clap enforces one or two values.
            _ => (default_store.to_path_buf(), PathBuf::new()),
        }
    }
}

pub fn mount(default_store: &Path, a: &MountArgs, out: &mut dyn Write, progress: bool) -> Result<()> {
    let (store, mountpoint) = a.split(default_store);
    if !store.exists() {
        return Err(exit::no_store(&store));
    }
    if !mountpoint.is_dir() {
        return Err(exit::fail(
            ExitCode::NotFound,
            format!(
                "cannot mount on {}: it is not a directory: create it with `mkdir -p {}`",
                mountpoint.display(),
                mountpoint.display()
            ),
        ));
    }
    if a.threads == Some(0) {
        return Err(exit::fail(ExitCode::InvalidArgument, "--threads 0: give at least one worker thread"));
    }
    if a.force_rebuild {
        // SPEC §4: an offline rebuild before serving, which says that it may lose data.
        eprintln!(
            "strata: rebuilding the metadata of {} from its packs and maps; data already damaged is dropped and listed below",
            store.display()
        );
        let opts = check::CheckOptions { repair: true, force_rebuild: true };
        let report = super::check::check_store(&store, &opts, progress)?;
        out.write_all(check::render(&report).as_bytes())?;
        if !report.clean {
            return Err(exit::fail(
                ExitCode::ReadOnlyOrCorrupt,
                format!(
                    "not mounting {}: problems remain after the rebuild (listed above); restore the store from a copy",
                    store.display()
                ),
            ));
        }
    }
    let config = fs::MountConfig {
        store: store.clone(),
        mountpoint: mountpoint.clone(),
        foreground: a.foreground,
        options: a.options.iter().filter(|o| !o.is_empty()).cloned().collect(),
        threads: a.threads,
    };
    let handler: fs::ControlHandler = Arc::new(super::execute);
    fs::mount(&config, handler)?;
    if !a.foreground {
        writeln!(out, "Mounted {} on {}", store.display(), mountpoint.display())?;
    }
    Ok(())
}

pub fn umount(a: &UmountArgs, _out: &mut dyn Write) -> Result<()> {
    fs::umount(&a.mountpoint)
}
