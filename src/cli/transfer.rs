//! `strata import FILE NAME` and `strata export VOL FILE`: raw images in and
//! out of the store, with a progress bar when a person is watching.
//!
//! The engine does the copying (sparse both ways: zero blocks are neither
//! stored nor written). This module checks the paths first so the common
//! mistakes (a typo in FILE, overwriting an existing file) get a clear
//! message before any work starts.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::exit::{self, ExitCode};
use super::progress::Progress;
use super::size::human;
use super::volume::volume_err;
use crate::volume::Engine;

#[derive(clap::Args, Debug)]
#[command(
    about = "Import a raw image file as a new volume",
    long_about = "Import a raw disk image as a new volume. Zero blocks are not stored \
    and every other block is deduplicated and compressed. The volume stays unusable \
    (ILLEGAL, with a job record) until the import finishes; if it is interrupted, \
    `strata volume remove --force NAME` cleans it up. qcow2 import is planned."
)]
pub struct ImportArgs {
    /// The raw image file to read.
    pub file: PathBuf,
    /// Name of the new volume.
    pub name: String,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Export a volume to a raw image file (sparse)",
    long_about = "Export a volume to a raw image file. Zero regions become holes, \
    so the file is sparse. An existing FILE is refused unless --force is given. \
    qcow2 export is planned."
)]
pub struct ExportArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "VOL")]
    pub volume: String,
    /// The raw image file to write.
    pub file: PathBuf,
    /// Overwrite FILE if it exists.
    #[arg(long, short = 'f')]
    pub force: bool,
}

pub fn import(engine: &Engine, a: &ImportArgs, out: &mut dyn Write, progress: bool) -> Result<()> {
    check_source(&a.file)?;
    let mut bar = Progress::bytes(progress, "importing");
    let result = engine.import_raw(&a.file, &a.name, &mut |done, total| bar.update(done, total));
    bar.finish();
    let info =
        result.map_err(|e| volume_err(&a.name, &format!("import {} as", a.file.display()), e))?;
    writeln!(
        out,
        "Imported {} as volume {:?} ({}, {} used, GUID {})",
        a.file.display(),
        info.name,
        human(info.capacity),
        human(info.allocated_bytes),
        info.guid
    )?;
    Ok(())
}

pub fn export(engine: &Engine, a: &ExportArgs, out: &mut dyn Write, progress: bool) -> Result<()> {
    if !a.force && std::fs::symlink_metadata(&a.file).is_ok() {
        return Err(exit::fail(
            ExitCode::AlreadyExists,
            format!(
                "cannot export volume {:?} to {}: the file exists; remove it or pass --force to overwrite it",
                a.volume,
                a.file.display()
            ),
        ));
    }
    let mut bar = Progress::bytes(progress, "exporting");
    let result = engine.export_raw(&a.volume, &a.file, &mut |done, total| {
        bar.update(done, total)
    });
    bar.finish();
    result.map_err(|e| volume_err(&a.volume, &format!("export to {}", a.file.display()), e))?;
    writeln!(
        out,
        "Exported volume {:?} to {}",
        a.volume,
        a.file.display()
    )?;
    Ok(())
}

/// Refuse a missing or unreadable import file before the engine creates
/// anything, with the reason from the OS.
fn check_source(file: &Path) -> Result<()> {
    let shown = file.display();
    match std::fs::metadata(file) {
        Ok(m) if m.is_dir() => Err(exit::fail(
            ExitCode::InvalidArgument,
            format!("cannot import {shown}: it is a directory; give a raw image file"),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(exit::fail(
            ExitCode::NotFound,
            format!("cannot import {shown}: no such file: check the path"),
        )),
        Err(e) => Err(exit::fail(
            ExitCode::Failure,
            format!("cannot import {shown}: {e}: check the path and its permissions"),
        )),
    }
}

/// Make the file arguments absolute before a command is passed to the mount
/// daemon, whose working directory is not the caller's.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| {
        exit::fail(
            ExitCode::InvalidArgument,
            format!("cannot resolve the path {}: {e}", path.display()),
        )
    })
}
