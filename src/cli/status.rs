//! `strata status`: the store's mode, write policy and space accounting,
//! like `vdostats --verbose` (SPEC §4). Values the engine does not know
//! (nothing stored yet, or still recovering) print as `n/a`.

use std::io::Write;

use anyhow::Result;

use super::exit;
use super::output::{self, Format, FormatArg, Listing, or_na};
use super::size::human;
use crate::volume::{Engine, Mode, StoreStatus};

#[derive(clap::Args, Debug)]
#[command(
    about = "Show the store's mode, write policy, space used and dedup/compression ratios",
    long_about = "Show the store's operating mode (normal, recovering, read-only), its write \
    policy as configured and as in effect, and its space accounting: logical and physical bytes \
    used, metadata overhead (journal, block maps, catalogue, chunk table, record headers), dead \
    space in packs that `strata gc` reclaims, saving percent, dedup and compression ratios, \
    chunk count and the memory of the dedup index. Statistics that are not known (nothing stored yet, or the store \
    is still recovering) are shown as n/a."
)]
pub struct StatusArgs {
    #[command(flatten)]
    pub format: FormatArg,
}

pub fn run(engine: &Engine, a: &StatusArgs, out: &mut dyn Write) -> Result<()> {
    let s = engine
        .status()
        .map_err(|e| exit::engine(format!("cannot read the status of store {}", engine.path().display()), e))?;
    if a.format.format == Format::Json {
        return output::json(out, &s);
    }
    write_status(engine, &s, out)
}

/// A count the engine only knows once recovery has rebuilt the reference
/// counts: `unknown` until then (ratios, which can also be unknown because
/// nothing is stored, print `n/a`).
fn counted<T>(value: Option<T>, show: impl FnOnce(T) -> String) -> String {
    value.map(show).unwrap_or_else(|| "unknown (recovering)".to_string())
}

fn write_status(engine: &Engine, s: &StoreStatus, out: &mut dyn Write) -> Result<()> {
    let bytes = |b: u64| format!("{} ({b} bytes)", human(b));
    let mode = match s.operating_mode {
        Mode::Normal => "normal",
        Mode::Recovering => "recovering (journal replayed; some statistics unavailable until done)",
        Mode::ReadOnly => "read-only (after a fatal error; reads work, writes fail)",
    };
    let mut l = Listing::new();
    l.item("store", s.path.display().to_string());
    l.item("store uuid", s.store_uuid.to_string());
    l.item("format version", s.format_version.to_string());
    l.item("operating mode", mode);
    if let Some(why) = &s.read_only_reason {
        l.item("read-only because", why.as_str());
    }
    l.item("write policy", s.write_policy.as_str());
    // `auto` says what it chose and why (SPEC §4).
    let effective = if s.write_policy_reason.is_empty() {
        s.effective_write_policy.as_str().to_string()
    } else {
        format!("{} ({})", s.effective_write_policy.as_str(), s.write_policy_reason)
    };
    l.item("effective write policy", effective);
    l.item(
        "compression",
        format!("{} ({} packs awaiting the packer)", s.compression.as_str(), s.packs_awaiting_packer),
    );
    l.item("volumes", s.volumes.to_string());
    l.item("layers", s.layers.to_string());
    l.item("logical bytes used", counted(s.logical_bytes_used, bytes));
    l.item("physical bytes used", bytes(s.physical_bytes_used));
    l.item("data bytes stored", counted(s.data_bytes_stored, bytes));
    l.item("metadata overhead", bytes(s.metadata_bytes));
    l.item("  journal", bytes(s.journal_bytes));
    l.item("  block maps", bytes(s.map_bytes));
    l.item("  catalogue", bytes(s.catalog_bytes));
    l.item("  chunk table", bytes(s.chunk_table_bytes));
    l.item("  record headers", bytes(s.record_header_bytes));
    l.item(
        "dead space in packs",
        counted(s.dead_pack_bytes, |b| format!("{} (unused records; `strata gc` reclaims it)", bytes(b))),
    );
    l.item("saving percent", or_na(s.saving_percent, |p| format!("{p:.1}%")));
    l.item("dedup ratio", or_na(s.dedup_ratio, |r| format!("{r:.2}")));
    l.item("compression ratio", or_na(s.compression_ratio, |r| format!("{r:.2}")));
    l.item("chunk count", s.chunk_count.to_string());
    l.item("dedup hits", s.dedup_hits.to_string());
    l.item("dedup false matches", s.dedup_false_matches.to_string());
    l.item("unreferenced chunks", counted(s.unreferenced_chunks, |n| n.to_string()));
    l.item("index entries", s.index_entries.to_string());
    l.item("index memory", bytes(s.index_memory_bytes));
    l.item("pack files", s.pack_files.to_string());
    l.item(
        "spare pack space",
        format!("{} ({} files, for new packs to reuse)", bytes(s.spare_pack_bytes), s.spare_packs),
    );
    l.item("filesystem free", bytes(s.filesystem_free_bytes));
    l.item("filesystem size", bytes(s.filesystem_total_bytes));
    l.item("replication", super::peer::summary(engine));
    l.write(out, 0)
}
