//! `strata volume ...`: create, list, show, rename, resize, remove volumes,
//! and get/set/unset/list their properties.
//!
//! A volume is an image group (one file in the mount); its identity is a
//! GUID and its name a unique property, so every command takes a name or a
//! GUID. Handlers only call the engine and print; wording of failures is in
//! [`volume_err`] and [`super::exit`].

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;

use super::exit::{self, ExitCode};
use super::output::{self, Format, FormatArg, Listing, Table};
use super::size::{human, parse_size};
use crate::volume::{self, Engine, VolumeInfo};

#[derive(clap::Subcommand, Debug)]
pub enum VolumeCommand {
    Create(CreateArgs),
    /// List volumes in a table, or as JSON.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show everything about one volume: its layers, properties and pending jobs.
    Show(ShowArgs),
    /// Rename a volume (metadata only; the GUID does not change).
    Rename(RenameArgs),
    Resize(ResizeArgs),
    #[command(visible_alias = "rm")]
    Remove(RemoveArgs),
    /// Copy what a volume reads from its snapshots into it, so it depends on none.
    #[command(long_about = "Copy every block a volume reads through its chain into its own layer \
        and cut it loose from its parents, so it no longer depends on any snapshot (needed before \
        removing a snapshot a clone is based on). Data is shared, not copied: only map entries move.")]
    Flatten(FlattenArgs),
    /// Get, set, unset or list a volume's properties.
    #[command(subcommand)]
    Prop(PropCommand),
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Create a new, empty (sparse) volume",
    long_about = "Create a new, empty (sparse) volume of the given virtual size. \
    It appears in the mount as a file of that size that reads as zeros.\n\n\
    Sizes are binary: 4096, 512M, 20G, 1.5T (K, M, G, T, P; an optional B or iB changes nothing). \
    Zero is refused here; an empty volume is made by creating a file in the mount."
)]
pub struct CreateArgs {
    /// Name of the new volume (unique in the store).
    pub name: String,
    /// Virtual size, e.g. 20G, 512M, 1.5T, 4096.
    // Parsed by the handler, not by clap, so a bad size exits with 5
    // (invalid argument) rather than 2 (usage).
    #[arg(long, short = 's', value_name = "SIZE")]
    pub size: String,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Add a column for each of these properties (repeat, or separate with commas).
    #[arg(long, value_name = "KEY", num_args = 1.., value_delimiter = ',')]
    pub show_props: Vec<String>,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Name or GUID of the volume (or of any of its layers).
    #[arg(value_name = "NAME|GUID")]
    pub volume: String,
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(clap::Args, Debug)]
pub struct RenameArgs {
    /// Current name or GUID.
    #[arg(value_name = "OLD")]
    pub volume: String,
    /// New name (unique in the store).
    #[arg(value_name = "NEW")]
    pub new_name: String,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Change a volume's size (growing; shrinking needs --allow-shrink)",
    long_about = "Change a volume's virtual size. Growing adds zeros at the end. \
    Shrinking drops the data past the new end and is refused unless --allow-shrink is given."
)]
pub struct ResizeArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "NAME|GUID")]
    pub volume: String,
    /// New virtual size, e.g. 40G (0 is allowed with --allow-shrink).
    #[arg(value_name = "SIZE")]
    pub size: String,
    /// Allow a smaller size; the data past the new end is lost.
    #[arg(long)]
    pub allow_shrink: bool,
}

#[derive(clap::Args, Debug)]
#[command(
    about = "Remove a volume with all its layers",
    long_about = "Remove a volume with all its layers; its space is reclaimed by garbage collection. \
    A volume whose creation or import was interrupted is refused unless --force is given."
)]
pub struct RemoveArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "NAME|GUID")]
    pub volume: String,
    /// Also remove a volume with an unfinished job (an interrupted create or import).
    #[arg(long, short = 'f')]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct FlattenArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "NAME|GUID")]
    pub volume: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum PropCommand {
    /// Print the value of one property.
    Get(PropKeyArgs),
    /// Set a property (the key `name` is reserved: use `volume rename`).
    Set(PropSetArgs),
    /// Remove a property (succeeds if it was not set).
    Unset(PropKeyArgs),
    /// List all properties of a volume.
    #[command(visible_alias = "ls")]
    List(PropListArgs),
}

#[derive(clap::Args, Debug)]
pub struct PropKeyArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "NAME|GUID")]
    pub volume: String,
    pub key: String,
}

#[derive(clap::Args, Debug)]
pub struct PropSetArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "NAME|GUID")]
    pub volume: String,
    pub key: String,
    pub value: String,
}

#[derive(clap::Args, Debug)]
pub struct PropListArgs {
    /// Name or GUID of the volume.
    #[arg(value_name = "NAME|GUID")]
    pub volume: String,
    #[command(flatten)]
    pub format: FormatArg,
}

pub fn run(engine: &Engine, cmd: &VolumeCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        VolumeCommand::Create(a) => create(engine, a, out),
        VolumeCommand::List(a) => list(engine, a, out),
        VolumeCommand::Show(a) => show(engine, a, out),
        VolumeCommand::Rename(a) => rename(engine, a, out),
        VolumeCommand::Resize(a) => resize(engine, a, out),
        VolumeCommand::Remove(a) => remove(engine, a, out),
        VolumeCommand::Flatten(a) => flatten(engine, a, out),
        VolumeCommand::Prop(PropCommand::Get(a)) => prop_get(engine, a, out),
        VolumeCommand::Prop(PropCommand::Set(a)) => prop_set(engine, a, out),
        VolumeCommand::Prop(PropCommand::Unset(a)) => prop_unset(engine, a, out),
        VolumeCommand::Prop(PropCommand::List(a)) => prop_list(engine, a, out),
    }
}

/// Word an engine error about volume `name`: "cannot {what} volume NAME:
/// {engine's reason}", except a taken name, which gets the fixed message
/// users and scripts know.
pub fn volume_err(name: &str, what: &str, err: volume::Error) -> anyhow::Error {
    use crate::catalog::Error as C;
    use volume::Error as E;
    match err {
        E::AlreadyExists(_) | E::Catalog(C::NameExists(_)) => exit::fail(
            ExitCode::AlreadyExists,
            format!("volume {name:?} already exists: choose another name or remove it first"),
        ),
        e => exit::engine(format!("cannot {what} volume {name:?}"), e),
    }
}

/// A size argument, or an invalid-argument failure that shows valid sizes.
fn size_arg(what: &str, volume: &str, text: &str) -> Result<u64> {
    parse_size(text).map_err(|e| exit::fail(ExitCode::InvalidArgument, format!("cannot {what} volume {volume:?}: {e}")))
}

fn create(engine: &Engine, a: &CreateArgs, out: &mut dyn Write) -> Result<()> {
    let size = size_arg("create", &a.name, &a.size)?;
    if size == 0 {
        return Err(exit::fail(
            ExitCode::InvalidArgument,
            format!("cannot create volume {:?} with size 0: give a size such as --size 20G", a.name),
        ));
    }
    let info = engine.create_volume(&a.name, size).map_err(|e| volume_err(&a.name, "create", e))?;
    writeln!(out, "Created volume {:?} ({}, GUID {})", info.name, human(info.capacity), info.guid)?;
    Ok(())
}

fn list(engine: &Engine, a: &ListArgs, out: &mut dyn Write) -> Result<()> {
    let volumes = engine.list_volumes().map_err(|e| exit::engine("cannot list the volumes", e))?;
    if a.format.format == Format::Json {
        return output::json(out, &volumes);
    }
    let header =
        ["NAME", "GUID", "SIZE", "USED", "LAYERS"].into_iter().map(String::from).chain(a.show_props.iter().cloned());
    let mut table = Table::new(header);
    for v in &volumes {
        let mut row =
            vec![v.name.clone(), v.guid.to_string(), human(v.capacity), human(v.allocated_bytes), v.depth.to_string()];
        row.extend(a.show_props.iter().map(|k| v.properties.get(k).cloned().unwrap_or_default()));
        table.row(row);
    }
    table.write(out)
}

fn show(engine: &Engine, a: &ShowArgs, out: &mut dyn Write) -> Result<()> {
    let info = engine.volume_info(&a.volume).map_err(|e| volume_err(&a.volume, "show", e))?;
    if a.format.format == Format::Json {
        return output::json(out, &info);
    }
    write_info(&info, out)
}

fn write_info(v: &VolumeInfo, out: &mut dyn Write) -> Result<()> {
    let mut l = Listing::new();
    l.item("name", &v.name);
    l.item("guid", v.guid.to_string());
    l.item("active leaf", v.leaf.to_string());
    l.item("size", format!("{} ({} bytes)", human(v.capacity), v.capacity));
    l.item("used", format!("{} ({} bytes)", human(v.allocated_bytes), v.allocated_bytes));
    l.item("layers", v.depth.to_string());
    l.item("created", output::utc(v.created_unix));
    l.write(out, 0)?;

    writeln!(out, "\nlayers (base first):")?;
    let mut t = Table::new(["GUID", "PARENT", "VOLTYPE", "FORMAT", "ALLOCATION", "LEGALITY", "CAPACITY", "GENERATION"]);
    for layer in &v.layers {
        let parent = if layer.parent.is_blank() { "-".to_string() } else { layer.parent.to_string() };
        t.row(vec![
            layer.guid.to_string(),
            parent,
            upper(&layer.voltype),
            upper(&layer.format),
            upper(&layer.allocation),
            upper(&layer.legality),
            human(layer.capacity),
            layer.generation.to_string(),
        ]);
    }
    t.write(out)?;

    writeln!(out, "\nproperties:")?;
    write_props(&v.properties, out)?;

    writeln!(out, "\npending jobs:")?;
    if v.jobs.is_empty() {
        writeln!(out, "  none")?;
    } else {
        let mut t = Table::new(["ID", "KIND", "STATE", "STARTED", "UPDATED"]);
        for j in &v.jobs {
            t.row(vec![
                j.id.to_string(),
                j.kind.clone(),
                j.state.clone(),
                output::utc(j.started_unix),
                output::utc(j.updated_unix),
            ]);
        }
        t.write(out)?;
        writeln!(
            out,
            "  (an unfinished job means an interrupted operation; `strata volume remove --force` cleans it up)"
        )?;
    }
    Ok(())
}

fn write_props(props: &BTreeMap<String, String>, out: &mut dyn Write) -> Result<()> {
    if props.is_empty() {
        writeln!(out, "  none")?;
        return Ok(());
    }
    let mut l = Listing::new();
    for (k, v) in props {
        l.item(k, v);
    }
    l.write(out, 2)
}

/// Catalogue enums as oVirt prints them (`LEAF`, `RAW`, `SPARSE`, `LEGAL`).
pub fn upper(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}").to_uppercase()
}

fn rename(engine: &Engine, a: &RenameArgs, out: &mut dyn Write) -> Result<()> {
    engine.rename_volume(&a.volume, &a.new_name).map_err(|e| match e {
        volume::Error::AlreadyExists(_) | volume::Error::Catalog(crate::catalog::Error::NameExists(_)) => {
            volume_err(&a.new_name, "rename", e)
        }
        e => volume_err(&a.volume, "rename", e),
    })?;
    writeln!(out, "Renamed volume {:?} to {:?}", a.volume, a.new_name)?;
    Ok(())
}

fn resize(engine: &Engine, a: &ResizeArgs, out: &mut dyn Write) -> Result<()> {
    let size = size_arg("resize", &a.volume, &a.size)?;
    // Checked here as well as in the engine so the refusal names the flag.
    let info = engine.volume_info(&a.volume).map_err(|e| volume_err(&a.volume, "resize", e))?;
    if size < info.capacity && !a.allow_shrink {
        return Err(exit::fail(
            ExitCode::InvalidArgument,
            format!(
                "refusing to shrink volume {:?} from {} to {}: the data past the new end would be lost; pass --allow-shrink if that is what you want",
                a.volume,
                human(info.capacity),
                human(size)
            ),
        ));
    }
    engine.resize_volume(&a.volume, size, a.allow_shrink).map_err(|e| volume_err(&a.volume, "resize", e))?;
    writeln!(out, "Resized volume {:?} from {} to {}", a.volume, human(info.capacity), human(size))?;
    Ok(())
}

fn remove(engine: &Engine, a: &RemoveArgs, out: &mut dyn Write) -> Result<()> {
    // An unfinished create/import is refused by the engine with
    // `Incomplete`, whose message says to pass --force (SPEC §4).
    engine.remove_volume(&a.volume, a.force).map_err(|e| volume_err(&a.volume, "remove", e))?;
    writeln!(out, "Removed volume {:?}", a.volume)?;
    Ok(())
}

fn flatten(engine: &Engine, a: &FlattenArgs, out: &mut dyn Write) -> Result<()> {
    let moved = engine.flatten_volume(&a.volume).map_err(|e| volume_err(&a.volume, "flatten", e))?;
    writeln!(out, "Flattened volume {:?} ({moved} map entries copied)", a.volume)?;
    Ok(())
}

fn prop_get(engine: &Engine, a: &PropKeyArgs, out: &mut dyn Write) -> Result<()> {
    match engine.get_property(&a.volume, &a.key).map_err(|e| volume_err(&a.volume, "read a property of", e))? {
        Some(value) => writeln!(out, "{value}")?,
        None => {
            return Err(exit::fail(
                ExitCode::NotFound,
                format!(
                    "property {:?} is not set on volume {:?}: `strata volume prop list {}` shows the properties it has",
                    a.key, a.volume, a.volume
                ),
            ));
        }
    }
    Ok(())
}

fn prop_set(engine: &Engine, a: &PropSetArgs, _out: &mut dyn Write) -> Result<()> {
    engine.set_property(&a.volume, &a.key, &a.value).map_err(|e| volume_err(&a.volume, "set a property of", e))
}

fn prop_unset(engine: &Engine, a: &PropKeyArgs, _out: &mut dyn Write) -> Result<()> {
    // Idempotent like `incus config unset`: scripts can unset without checking first.
    engine.unset_property(&a.volume, &a.key).map_err(|e| volume_err(&a.volume, "unset a property of", e))?;
    Ok(())
}

fn prop_list(engine: &Engine, a: &PropListArgs, out: &mut dyn Write) -> Result<()> {
    let props = engine.properties(&a.volume).map_err(|e| volume_err(&a.volume, "list the properties of", e))?;
    if a.format.format == Format::Json {
        return output::json(out, &props);
    }
    let mut t = Table::new(["KEY", "VALUE"]);
    for (k, v) in &props {
        t.row(vec![k.clone(), v.clone()]);
    }
    t.write(out)
}
