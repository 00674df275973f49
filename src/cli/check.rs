//! `strata check [STORE] [--repair] [--force-rebuild]`: verify a store
//! offline, and optionally repair it (SPEC §4, seed 002).
//!
//! The engine's checker reads every structure itself (it never opens the
//! store the normal way, which refuses damage), so this runs only while the
//! store is not mounted. The report is printed either way; the exit code
//! says whether the store is clean afterwards (0) or not (7), like fsck.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use super::exit::{self, ExitCode};
use super::output::{self, Format, FormatArg};
use super::progress::Progress;
use crate::volume::Error as EngineError;
use crate::volume::check::{self, CheckOptions, CheckReport};

#[derive(clap::Args, Debug)]
#[command(
    about = "Verify a store offline; --repair fixes what can be fixed",
    long_about = "Verify everything a store holds, offline (the store must not be mounted): the \
        superblock, the catalogue, every pack record (length, decompression, checksum), the \
        chunk table, the journal and every layer map. Each problem is named by object and place.\n\n\
        --repair writes a new consistent state: the chunk table rebuilt from intact records, map \
        entries whose data is lost replaced by zeros (each one reported), orphan maps deleted, and \
        read-only mode cleared when nothing unrepairable remains. --force-rebuild also ignores the \
        old chunk table entirely. Both may lose data that is already damaged, and say what they \
        lost. Catalogue damage is reported, not repaired.\n\n\
        Exit status 0 when the store is clean (after repair, if repairing), 7 when problems remain."
)]
pub struct CheckArgs {
    /// The store directory (default: --store, $STRATA_STORE, /var/lib/strata).
    // Its own id: the global --store is also called "store".
    #[arg(id = "store_dir", value_name = "STORE")]
    pub dir: Option<std::path::PathBuf>,
    /// Repair what can be repaired (may drop data that is already lost).
    #[arg(long)]
    pub repair: bool,
    /// Rebuild the chunk table from the packs even if it looks intact (implies --repair).
    #[arg(long)]
    pub force_rebuild: bool,
    #[command(flatten)]
    pub format: FormatArg,
}

/// Run the checker with a progress bar; the report, or a worded error.
pub fn check_store(store: &Path, opts: &CheckOptions, progress: bool) -> Result<CheckReport> {
    if !store.exists() {
        return Err(exit::no_store(store));
    }
    let mut bar = Progress::bytes(progress, if opts.repair { "repairing" } else { "checking" });
    let result = check::check(store, opts, &mut |done, total| bar.update(done, total));
    bar.finish();
    result.map_err(|e| match e {
        EngineError::Busy { .. } => exit::fail(
            ExitCode::Busy,
            format!(
                "cannot check store {}: it is in use (mounted?): {e}; unmount it first (`strata umount MOUNTPOINT`), check works offline",
                store.display()
            ),
        ),
        EngineError::NotFound(_) => exit::no_store(store),
        e => exit::engine(format!("cannot check store {}", store.display()), e),
    })
}

pub fn run(store: &Path, a: &CheckArgs, out: &mut dyn Write, progress: bool) -> Result<i32> {
    let opts = CheckOptions { repair: a.repair || a.force_rebuild, force_rebuild: a.force_rebuild };
    let report = check_store(store, &opts, progress)?;
    if a.format.format == Format::Json {
        output::json(out, &report)?;
    } else {
        out.write_all(check::render(&report).as_bytes())?;
    }
    Ok(if report.clean { ExitCode::Ok.code() } else { ExitCode::ReadOnlyOrCorrupt.code() })
}
