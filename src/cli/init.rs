//! `strata init [STORE] [--write-policy P] [--compression deferred|inline]`: create a new, empty store.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use super::exit::{self, ExitCode};
use crate::volume::{self, Compression, Engine, InitOptions, WritePolicy};

#[derive(clap::Args, Debug)]
#[command(
    about = "Create a new, empty store",
    long_about = "Create a new, empty store in STORE (a new or empty directory). \
                  An existing store, or a directory that is not empty, is refused.\n\n\
                  The write policy decides when writes are durable:\n  \
                  sync          durable before the write is acknowledged\n  \
                  async         acknowledged at once, durable at fsync/flush\n  \
                  async-unsafe  fastest; may lose data even after fsync\n  \
                  auto          sync or async from the backing device's volatile write cache\n\n\
                  Compression of new blocks:\n  \
                  deferred  stored raw by the write, compressed by the mount's background\n            \
                  packer when the CPUs are idle (the default: faster writes)\n  \
                  inline    compressed by zstd before the write returns"
)]
pub struct InitArgs {
    /// The store directory (default: --store, $STRATA_STORE, /var/lib/strata).
    // Its own id: the global --store is also called "store".
    #[arg(id = "store_dir", value_name = "STORE")]
    pub dir: Option<PathBuf>,
    /// When writes become durable.
    #[arg(long, value_name = "POLICY", default_value = "auto",
          value_parser = ["sync", "async", "async-unsafe", "auto"])]
    pub write_policy: String,
    /// When new blocks are compressed.
    #[arg(long, value_name = "MODE", default_value = "deferred", value_parser = ["deferred", "inline"])]
    pub compression: String,
}

pub fn run(store: &std::path::Path, args: &InitArgs, out: &mut dyn Write) -> Result<()> {
    // The value parser only lets the four names through, so this cannot fail.
    let write_policy: WritePolicy =
        args.write_policy.parse().map_err(|e: String| exit::fail(ExitCode::InvalidArgument, e))?;
    let compression: Compression =
        args.compression.parse().map_err(|e: String| exit::fail(ExitCode::InvalidArgument, e))?;
    let shown = store.display();
    Engine::init(store, &InitOptions { write_policy, compression }).map_err(|e| match e {
        volume::Error::AlreadyExists(_) => exit::fail(
            ExitCode::AlreadyExists,
            format!("cannot create a store at {shown}: {e}: use that store, or give an empty or new directory"),
        ),
        e => exit::engine(format!("cannot create a store at {shown}"), e),
    })?;
    writeln!(
        out,
        "Created store at {shown} (write policy {}, {} compression)",
        write_policy.as_str(),
        compression.as_str()
    )?;
    writeln!(out, "Mount it with: strata mount {shown} /var/lib/images")?;
    Ok(())
}
