//! `strata snapshot ...`, `strata clone VOL@SNAP NEW` and `strata chain dump`:
//! the copy-on-write chain behind each volume (SPEC §2).
//!
//! All of it is metadata work in the engine (constant time for create,
//! revert and clone; a map merge for remove), allowed while the volume is
//! mounted and written. This module words and prints.

use std::io::Write;

use anyhow::Result;

use super::exit;
use super::output::{self, Format, FormatArg, Table};
use super::size::human;
use super::volume::{upper, volume_err};
use crate::volume::{ChainDump, Engine, LayerDump};

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Freeze a volume's current state as a named, read-only snapshot.
    #[command(long_about = "Freeze a volume's current state as a named, read-only snapshot. \
        Constant time whatever the volume's size; works while the volume is mounted and \
        written, and holds every write acknowledged before it. The volume continues on a \
        new, empty copy-on-write layer.")]
    Create(SnapArgs),
    /// List a volume's snapshots, oldest first.
    #[command(visible_alias = "ls")]
    List(SnapListArgs),
    /// Put a volume back to a snapshot (a new layer on top of it).
    #[command(long_about = "Put a volume back to a snapshot: its current state is replaced by a \
        new, empty layer on top of the snapshot. The current state is discarded unless \
        --keep-old-as names a snapshot to keep it as. Stop or pause the guest first.")]
    Revert(RevertArgs),
    /// Remove a snapshot by merging its layer out of the chain.
    #[command(
        visible_alias = "rm",
        long_about = "Remove a snapshot by merging its layer out of the \
        chain: what it held moves to the layers above, so the volume reads the same. Live while \
        the volume is mounted. Refused while a clone is based on the snapshot (flatten the clone \
        first with `strata volume flatten`)."
    )]
    Remove(SnapArgs),
}

#[derive(clap::Args, Debug)]
pub struct SnapArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "VOL")]
    pub volume: String,
    /// Name of the snapshot.
    #[arg(value_name = "SNAP")]
    pub snapshot: String,
}

#[derive(clap::Args, Debug)]
pub struct SnapListArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "VOL")]
    pub volume: String,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(clap::Args, Debug)]
pub struct RevertArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "VOL")]
    pub volume: String,
    /// Name of the snapshot to go back to.
    #[arg(value_name = "SNAP")]
    pub snapshot: String,
    /// Keep the state being replaced as a snapshot of this name.
    #[arg(long, value_name = "NAME")]
    pub keep_old_as: Option<String>,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Create a volume from a snapshot (constant time)",
    long_about = "Create a new volume whose base is a snapshot of another volume, in constant time; \
        it shares every block with the snapshot until written. The new volume records the \
        snapshot in its `cloned-from` property. The snapshot cannot be removed while clones use it \
        unless they are flattened (`strata volume flatten NEWVOL`)."
)]
pub struct CloneArgs {
    /// The snapshot to clone, as VOLUME@SNAPSHOT.
    #[arg(value_name = "VOL@SNAP")]
    pub source: String,
    /// Name of the new volume.
    #[arg(value_name = "NEWVOL")]
    pub name: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum ChainCommand {
    /// Print every volume's chain of layers, base first, and flag anomalies.
    #[command(long_about = "Print every volume's chain of layers, base first, with GUID, parent, \
        voltype, format, allocation, legality, capacity and true size, in the manner of \
        `vdsm-tool dump-volume-chains`; anomalies (missing parent, loop, orphan layer, duplicate \
        name, ILLEGAL layer) are listed as problems.")]
    Dump(ChainDumpArgs),
}

#[derive(clap::Args, Debug)]
pub struct ChainDumpArgs {
    /// Only this volume (name or GUID).
    #[arg(value_name = "VOL")]
    pub volume: Option<String>,
    #[command(flatten)]
    pub format: FormatArg,
}

pub fn run(engine: &Engine, cmd: &SnapshotCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        SnapshotCommand::Create(a) => {
            let s = engine.snapshot_create(&a.volume, &a.snapshot).map_err(|e| {
                exit::engine(format!("cannot create snapshot {:?} of volume {:?}", a.snapshot, a.volume), e)
            })?;
            writeln!(out, "Created snapshot {:?} of volume {:?} (layer {})", s.name, s.volume, s.guid)?;
        }
        SnapshotCommand::List(a) => {
            let snaps = engine
                .snapshot_list(&a.volume)
                .map_err(|e| exit::engine(format!("cannot list the snapshots of volume {:?}", a.volume), e))?;
            if a.format.format == Format::Json {
                return output::json(out, &snaps);
            }
            let mut t = Table::new(["NAME", "GUID", "CREATED", "SIZE", "OWN DATA", "CLONES"]);
            for s in &snaps {
                t.row(vec![
                    s.name.clone(),
                    s.guid.to_string(),
                    output::utc(s.created_unix),
                    human(s.capacity),
                    human(s.own_bytes),
                    s.clones.join(", "),
                ]);
            }
            t.write(out)?;
        }
        SnapshotCommand::Revert(a) => {
            engine.snapshot_revert(&a.volume, &a.snapshot, a.keep_old_as.as_deref()).map_err(|e| {
                exit::engine(format!("cannot revert volume {:?} to snapshot {:?}", a.volume, a.snapshot), e)
            })?;
            let kept =
                a.keep_old_as.as_ref().map(|k| format!("; the previous state is snapshot {k:?}")).unwrap_or_default();
            writeln!(out, "Reverted volume {:?} to snapshot {:?}{kept}", a.volume, a.snapshot)?;
        }
        SnapshotCommand::Remove(a) => {
            let r = engine.snapshot_remove(&a.volume, &a.snapshot).map_err(|e| {
                exit::engine(format!("cannot remove snapshot {:?} of volume {:?}", a.snapshot, a.volume), e)
            })?;
            writeln!(
                out,
                "Removed snapshot {:?} of volume {:?} ({} merge, {} map entries moved)",
                a.snapshot, a.volume, r.direction, r.entries_moved
            )?;
        }
    }
    Ok(())
}

pub fn clone(engine: &Engine, a: &CloneArgs, out: &mut dyn Write) -> Result<()> {
    let info = engine.clone_volume(&a.source, &a.name).map_err(|e| match e {
        crate::volume::Error::AlreadyExists(_)
        | crate::volume::Error::Catalog(crate::catalog::Error::NameExists(_)) => volume_err(&a.name, "clone", e),
        e => exit::engine(format!("cannot clone {:?} as volume {:?}", a.source, a.name), e),
    })?;
    writeln!(out, "Created volume {:?} from {} ({}, GUID {})", info.name, a.source, human(info.capacity), info.guid)?;
    Ok(())
}

pub fn chain(engine: &Engine, cmd: &ChainCommand, out: &mut dyn Write) -> Result<()> {
    let ChainCommand::Dump(a) = cmd;
    let dump = match &a.volume {
        Some(v) => engine.chain_dump(Some(v)).map_err(|e| volume_err(v, "dump the chain of", e))?,
        None => engine.chain_dump(None).map_err(|e| exit::engine("cannot dump the chains", e))?,
    };
    if a.format.format == Format::Json {
        return output::json(out, &dump);
    }
    write_dump(&dump, out)
}

/// Human form, after `vdsm-tool dump-volume-chains`.
fn write_dump(d: &ChainDump, out: &mut dyn Write) -> Result<()> {
    for image in &d.images {
        let name = image.name.as_deref().unwrap_or("(no name)");
        writeln!(out, "image: {} ({name})", image.image)?;
        writeln!(out)?;
        for l in &image.chain {
            write_layer(l, out)?;
        }
        if !image.other_layers.is_empty() {
            writeln!(out, "  off the active chain:")?;
            for l in &image.other_layers {
                write_layer(l, out)?;
            }
        }
        for p in &image.problems {
            writeln!(out, "  PROBLEM: {p}")?;
        }
        writeln!(out)?;
    }
    for p in &d.problems {
        writeln!(out, "PROBLEM: {p}")?;
    }
    if d.images.is_empty() && d.problems.is_empty() {
        writeln!(out, "no volumes")?;
    }
    Ok(())
}

fn write_layer(l: &LayerDump, out: &mut dyn Write) -> Result<()> {
    let snap = l.snapshot.as_ref().map(|s| format!(" (snapshot {s:?})")).unwrap_or_default();
    writeln!(out, "  - {}{snap}", l.guid)?;
    let parent = if l.parent.is_blank() { "none".to_string() } else { l.parent.to_string() };
    writeln!(
        out,
        "    parent: {parent}, voltype: {}, format: {}, type: {}, legality: {}, generation: {}, capacity: {}, truesize: {}",
        upper(&l.voltype),
        upper(&l.format),
        upper(&l.allocation),
        upper(&l.legality),
        l.generation,
        l.capacity,
        l.true_size
    )?;
    Ok(())
}
