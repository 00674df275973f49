//! `strata config get|set`: settings of the store that can change after
//! `init`: `write-policy` (SPEC §4: set at init and changeable; takes effect
//! at once, also while mounted) and `index-max-entries` (a cap on the dedup
//! index, which then keeps a window of the newest blocks; 0 = no cap; takes
//! effect at the next open of the store) and `compression` (`deferred`:
//! writes store new blocks raw and the mount's background packer compresses
//! them; `inline`: zstd in the write path; takes effect at once) and the
//! bounded caches `table-cache-bytes` (chunk table) and `map-cache-bytes`
//! (block maps), which take effect at the next open, and `spare-pack-bytes`
//! (retired pack space kept for new packs to reuse; takes effect at once).

use std::io::Write;

use anyhow::Result;

use super::exit::{self, ExitCode};
use super::output::{self, Format, FormatArg, Listing};
use crate::volume::{Compression, Engine, WritePolicy};

/// The keys `config` knows.
const KEYS: [&str; 6] =
    ["write-policy", "index-max-entries", "compression", "table-cache-bytes", "map-cache-bytes", "spare-pack-bytes"];

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a setting, or all settings.
    Get(ConfigGetArgs),
    /// Change a setting.
    #[command(long_about = "Change a setting of the store. Keys:\n  \
        write-policy  sync | async | async-unsafe | auto (see `strata init --help`); \
        moving to a stricter policy first makes every pending write durable.\n  \
        index-max-entries  N: cap the dedup index at about N entries (9-14 bytes each); \
        beyond it the index keeps a window of the newest blocks (older data still \
        reads, it just stops deduplicating against new writes); 0 = no cap. Takes \
        effect at the next open (remount).\n  \
        compression  deferred | inline: deferred (the default) stores new blocks raw and \
        lets the mount's background packer compress them when the CPUs are idle (faster \
        writes, space reclaimed later; `strata gc` also compresses them); inline \
        compresses in the write path. Takes effect at once.\n  \
        table-cache-bytes  SIZE (e.g. 256M): keep about that much of the chunk table \
        (24 bytes per stored block) resident; the rest lives in the scratch file \
        STORE/chunks.mem and is paged in on use. 0 = the whole table in RAM (the default). \
        Takes effect at the next open (remount).\n  \
        map-cache-bytes  SIZE (e.g. 64M): keep about that much of the block maps (8 bytes \
        per written block of every layer, plus the merged view of each open volume with \
        snapshots below it) resident; the rest lives in the scratch file STORE/maps.mem \
        and is paged in on use. 0 = the maps in RAM (the default). Takes effect at the \
        next open (remount).\n  \
        spare-pack-bytes  SIZE (e.g. 2G): keep up to that much of the pack files GC empties \
        (as STORE/packs/*.spare) and start new packs in their space, which overwrites \
        blocks the filesystem already holds instead of allocating new ones (much faster \
        on thin-provisioned and virtual disks, and with the `discard` mount option). \
        Spares are kept only while the filesystem has 10 % free. 0 = GC deletes what it \
        empties. New stores: 1G. Takes effect at once; lowering it deletes spares.")]
    Set(ConfigSetArgs),
}

#[derive(clap::Args, Debug)]
pub struct ConfigGetArgs {
    /// The setting (write-policy, index-max-entries, compression, table-cache-bytes, map-cache-bytes, spare-pack-bytes); all settings when left out.
    pub key: Option<String>,
    #[command(flatten)]
    pub format: FormatArg,
}

/// `config get --format json`: every setting (or the one asked for), named
/// as the keys are, with `_` for `-`.
#[derive(serde::Serialize, Default)]
struct Settings<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    write_policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index_max_entries: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compression: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    table_cache_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    map_cache_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spare_pack_bytes: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct ConfigSetArgs {
    /// The setting (write-policy, index-max-entries, compression, table-cache-bytes, map-cache-bytes, spare-pack-bytes).
    pub key: String,
    pub value: String,
}

pub fn run(engine: &Engine, cmd: &ConfigCommand, out: &mut dyn Write) -> Result<()> {
    match cmd {
        ConfigCommand::Get(a) if a.format.format == Format::Json => {
            let all = a.key.is_none();
            let want = |k: &str| all || a.key.as_deref() == Some(k);
            if let Some(k) = &a.key {
                check_key(k)?;
            }
            let s = Settings {
                write_policy: want("write-policy").then(|| engine.write_policy().as_str()),
                index_max_entries: want("index-max-entries").then(|| engine.index_max_entries()),
                compression: want("compression").then(|| engine.compression().as_str()),
                table_cache_bytes: want("table-cache-bytes").then(|| engine.table_cache_bytes()),
                map_cache_bytes: want("map-cache-bytes").then(|| engine.map_cache_bytes()),
                spare_pack_bytes: want("spare-pack-bytes").then(|| engine.spare_pack_bytes()),
            };
            output::json(out, &s)
        }
        ConfigCommand::Get(a) => {
            let policy = engine.write_policy().as_str();
            let cap = engine.index_max_entries().to_string();
            let compression = engine.compression().as_str();
            match a.key.as_deref() {
                Some("index-max-entries") => writeln!(out, "{cap}")?,
                Some("compression") => writeln!(out, "{compression}")?,
                Some("table-cache-bytes") => writeln!(out, "{}", engine.table_cache_bytes())?,
                Some("map-cache-bytes") => writeln!(out, "{}", engine.map_cache_bytes())?,
                Some("spare-pack-bytes") => writeln!(out, "{}", engine.spare_pack_bytes())?,
                Some(key) => {
                    check_key(key)?;
                    writeln!(out, "{policy}")?;
                }
                None => {
                    let mut l = Listing::new();
                    l.item("write-policy", policy);
                    l.item("index-max-entries", &cap);
                    l.item("compression", compression);
                    l.item("table-cache-bytes", engine.table_cache_bytes().to_string());
                    l.item("map-cache-bytes", engine.map_cache_bytes().to_string());
                    l.item("spare-pack-bytes", engine.spare_pack_bytes().to_string());
                    l.write(out, 0)?;
                }
            }
            Ok(())
        }
        ConfigCommand::Set(a) if a.key == "index-max-entries" => {
            let n: u64 = a.value.parse().map_err(|_| {
                exit::fail(
                    ExitCode::InvalidArgument,
                    format!("cannot set index-max-entries to {:?}: give a number of entries (0 = no cap)", a.value),
                )
            })?;
            engine.set_index_max_entries(n).map_err(|e| exit::engine("cannot set index-max-entries", e))?;
            writeln!(out, "index-max-entries is {n}; it takes effect when the store is next opened (remount)")?;
            Ok(())
        }
        ConfigCommand::Set(a)
            if ["table-cache-bytes", "map-cache-bytes", "spare-pack-bytes"].contains(&a.key.as_str()) =>
        {
            let key = a.key.as_str();
            let n = super::size::parse_size(&a.value).map_err(|e| {
                exit::fail(ExitCode::InvalidArgument, format!("cannot set {key} to {:?}: {e}", a.value))
            })?;
            let (set, when) = match key {
                "table-cache-bytes" => (engine.set_table_cache_bytes(n), "when the store is next opened (remount)"),
                "map-cache-bytes" => (engine.set_map_cache_bytes(n), "when the store is next opened (remount)"),
                _ => (engine.set_spare_pack_bytes(n), "now"),
            };
            set.map_err(|e| exit::engine(format!("cannot set {key}"), e))?;
            writeln!(out, "{key} is {n}; it takes effect {when}")?;
            Ok(())
        }
        ConfigCommand::Set(a) if a.key == "compression" => {
            let c: Compression = a
                .value
                .parse()
                .map_err(|e: String| exit::fail(ExitCode::InvalidArgument, format!("cannot set compression: {e}")))?;
            engine.set_compression(c).map_err(|e| exit::engine("cannot set compression", e))?;
            writeln!(out, "compression is {}", c.as_str())?;
            Ok(())
        }
        ConfigCommand::Set(a) => {
            check_key(&a.key)?;
            let policy: WritePolicy = a
                .value
                .parse()
                .map_err(|e: String| exit::fail(ExitCode::InvalidArgument, format!("cannot set write-policy: {e}")))?;
            let (effective, why) =
                engine.set_write_policy(policy).map_err(|e| exit::engine("cannot set write-policy", e))?;
            let why = if why.is_empty() { String::new() } else { format!(" ({why})") };
            writeln!(out, "write-policy is {}; in effect: {}{why}", policy.as_str(), effective.as_str())?;
            Ok(())
        }
    }
}

fn check_key(key: &str) -> Result<()> {
    if KEYS.contains(&key) {
        return Ok(());
    }
    Err(exit::fail(ExitCode::NotFound, format!("unknown setting {key:?}: the settings are {}", KEYS.join(", "))))
}
