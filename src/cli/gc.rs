//! `strata gc`: reclaim the space of chunks no layer references (after
//! volumes, snapshots or data were removed) by compacting pack files. Safe
//! while volumes are mounted and written; the engine also runs it in the
//! background, so this is for "give the space back now". It also compresses
//! every block whose compression was deferred (the packer's work, now).

use std::io::Write;

use anyhow::Result;

use super::exit;
use super::output::{self, Format, FormatArg, Listing};
use super::progress::Progress;
use super::size::human;
use crate::volume::Engine;

#[derive(clap::Args, Debug)]
#[command(
    about = "Reclaim space of unreferenced chunks and compress deferred blocks now (compacts pack files)",
    long_about = "Reclaim the space of chunks that no layer references any more (after volumes, \
        snapshots or data were removed) by compacting pack files that are at least 10% dead, \
        and compress every block stored raw by deferred compression (what the mount's \
        background packer does when the CPUs are idle). Safe while volumes are mounted and \
        written; the store also does both in the background."
)]
pub struct GcArgs {
    #[command(flatten)]
    pub format: FormatArg,
}

pub fn run(engine: &Engine, a: &GcArgs, out: &mut dyn Write, progress: bool) -> Result<()> {
    let mut bar = Progress::count(progress, "compacting packs");
    let result = engine.gc(&mut |done, total| bar.update(done, total));
    bar.finish();
    let r =
        result.map_err(|e| exit::engine(format!("cannot collect garbage in store {}", engine.path().display()), e))?;
    if a.format.format == Format::Json {
        return output::json(out, &r);
    }
    let mut l = Listing::new();
    l.item("packs examined", r.packs_examined.to_string());
    l.item("packs compacted", r.packs_compacted.to_string());
    l.item("chunks freed", r.chunks_freed.to_string());
    l.item("chunks moved", r.chunks_moved.to_string());
    l.item("chunks compressed", r.chunks_compressed.to_string());
    if r.chunks_damaged > 0 {
        l.item("damaged chunks left in place", format!("{} (run `strata check`)", r.chunks_damaged));
    }
    l.item("pack bytes before", format!("{} ({} bytes)", human(r.bytes_before), r.bytes_before));
    l.item("pack bytes after", format!("{} ({} bytes)", human(r.bytes_after), r.bytes_after));
    l.item("reclaimed", human(r.bytes_before.saturating_sub(r.bytes_after)));
    l.item("took", format!("{:.2} s", r.seconds));
    l.write(out, 0)
}
