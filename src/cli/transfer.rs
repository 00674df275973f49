//! `strata import FILE NAME` and `strata export VOL[@SNAP] FILE`: disk images
//! in and out of the store, raw or qcow2, with a progress bar when a person
//! is watching.
//!
//! The engine does the copying (sparse both ways: zero blocks are neither
//! stored nor written) and the qcow2 parsing. This module checks the paths
//! first so the common mistakes (a typo in FILE, overwriting an existing
//! file) get a clear message before any work starts.

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
    about = "Import a raw or qcow2 image file as a new volume",
    long_about = "Import a disk image as a new volume. The format is detected: a raw image, or a \
    qcow2 image whose backing chain (qcow2 or raw backing files) becomes a strata chain with the \
    same layers, each lower layer a snapshot named after its file. Zero blocks are not stored \
    and every other block is deduplicated and compressed. The volume stays unusable \
    (ILLEGAL, with a job record) until the import finishes; if it is interrupted, \
    `strata volume remove --force NAME` cleans it up."
)]
pub struct ImportArgs {
    /// The image file to read (raw or qcow2).
    pub file: PathBuf,
    /// Name of the new volume.
    pub name: String,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Export a volume or snapshot to a raw (sparse) or qcow2 image file",
    long_about = "Export a volume, or a snapshot as VOL@SNAP, to an image file. Raw files are \
    sparse (zero regions become holes); qcow2 files are standalone (no backing file). With \
    --chain, FILE is a directory that receives the volume's whole chain as qcow2 images, one \
    per layer, each backed by the one below. An existing FILE is refused unless --force is given."
)]
pub struct ExportArgs {
    /// Name or GUID of the volume, or VOL@SNAP for a snapshot.
    #[arg(value_name = "VOL[@SNAP]")]
    pub volume: String,
    /// The image file to write (a directory with --chain).
    pub file: PathBuf,
    /// Image format of FILE.
    #[arg(long = "format", value_enum, default_value_t = ImageFormat::Raw)]
    pub image_format: ImageFormat,
    /// Write the whole chain as qcow2 images into the directory FILE.
    #[arg(long)]
    pub chain: bool,
    /// Overwrite FILE if it exists.
    #[arg(long, short = 'f')]
    pub force: bool,
}

pub fn import(engine: &Engine, a: &ImportArgs, out: &mut dyn Write, progress: bool) -> Result<()> {
    check_source(&a.file)?;
    let mut bar = Progress::bytes(progress, "importing");
    let result = engine.import(&a.file, &a.name, &mut |done, total| bar.update(done, total));
    bar.finish();
    let info = result.map_err(|e| volume_err(&a.name, &format!("import {} as", a.file.display()), e))?;
    writeln!(
        out,
        "Imported {} as volume {:?} ({}, {} used, {} layer(s), GUID {})",
        a.file.display(),
        info.name,
        human(info.capacity),
        human(info.allocated_bytes),
        info.depth,
        info.guid
    )?;
    Ok(())
}

pub fn export(engine: &Engine, a: &ExportArgs, out: &mut dyn Write, progress: bool) -> Result<()> {
    let what = format!("cannot export {:?} to {}", a.volume, a.file.display());
    if a.chain && a.image_format != ImageFormat::Qcow2 {
        return Err(exit::fail(
            ExitCode::InvalidArgument,
            format!("{what}: --chain writes qcow2 images: add --format qcow2"),
        ));
    }
    let occupied = if a.chain {
        std::fs::read_dir(&a.file).is_ok_and(|mut d| d.next().is_some())
    } else {
        std::fs::symlink_metadata(&a.file).is_ok()
    };
    if occupied && !a.force {
        return Err(exit::fail(
            ExitCode::AlreadyExists,
            format!("{what}: it exists; remove it or pass --force to overwrite it"),
        ));
    }
    let mut bar = Progress::bytes(progress, "exporting");
    let mut step = |done, total| bar.update(done, total);
    let result = match (a.image_format, a.chain) {
        (ImageFormat::Qcow2, true) => engine.export_qcow2_chain(&a.volume, &a.file, &mut step).map(|files| {
            format!(
                "{} qcow2 images, base first, top {}",
                files.len(),
                files.last().map(|f| f.display().to_string()).unwrap_or_default()
            )
        }),
        (ImageFormat::Qcow2, false) => engine.export_qcow2(&a.volume, &a.file, &mut step).map(|()| "qcow2".to_string()),
        (ImageFormat::Raw, _) => engine.export_raw(&a.volume, &a.file, &mut step).map(|()| "raw, sparse".to_string()),
    };
    bar.finish();
    let done = result.map_err(|e| volume_err(&a.volume, &format!("export to {}", a.file.display()), e))?;
    writeln!(out, "Exported {:?} to {} ({done})", a.volume, a.file.display())?;
    Ok(())
}

/// Refuse a missing or unreadable import file before the engine creates
/// anything, with the reason from the OS.
fn check_source(file: &Path) -> Result<()> {
    let shown = file.display();
    match std::fs::metadata(file) {
        Ok(m) if m.is_dir() => Err(exit::fail(
            ExitCode::InvalidArgument,
            format!("cannot import {shown}: it is a directory; give a raw or qcow2 image file"),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(exit::fail(ExitCode::NotFound, format!("cannot import {shown}: no such file: check the path")))
        }
        Err(e) => Err(exit::fail(
            ExitCode::Failure,
            format!("cannot import {shown}: {e}: check the path and its permissions"),
        )),
    }
}

/// Make the file arguments absolute before a command is passed to the mount
/// daemon, whose working directory is not the caller's.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path)
        .map_err(|e| exit::fail(ExitCode::InvalidArgument, format!("cannot resolve the path {}: {e}", path.display())))
}
