//! The hidden `strata man OUTDIR`: write one man page per command, generated
//! from the clap definitions (`strata.1`, `strata-volume-create.1`, ...), so
//! the pages cannot drift from the flags. The pages are committed in `man/`;
//! `tests/cli_man.rs` fails when they are stale.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing).
    pub outdir: PathBuf,
}

pub fn run(a: &ManArgs, out: &mut dyn Write) -> Result<()> {
    std::fs::create_dir_all(&a.outdir).with_context(|| format!("cannot create {}", a.outdir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), &a.outdir)
        .with_context(|| format!("cannot write man pages into {}", a.outdir.display()))?;
    writeln!(out, "Wrote man pages into {}", a.outdir.display())?;
    Ok(())
}
