//! The command line: clap definitions, store discovery, and the dispatch
//! shared by the local path and the mount daemon.
//!
//! Two ways to run a command:
//!
//! - [`run`] (the `strata` binary): finds the store (`--store`, else
//!   `$STRATA_STORE`, else [`DEFAULT_STORE`]), opens it, runs the command
//!   against it, closes it. When the store is locked by a mount daemon
//!   ([`volume::Error::Busy`]) the command line is passed through the
//!   daemon's control socket instead, and the daemon's output and exit code
//!   become ours.
//! - [`execute`] (inside the mount daemon): parses an argument vector and
//!   runs it against the engine the daemon already holds, capturing output.
//!
//! Both end in [`dispatch`], and every handler has the shape
//! `fn(&Engine, &Args, &mut dyn Write) -> Result<()>`, so the two paths
//! print the same bytes. Errors are `anyhow` here (the edge of the program)
//! and are worded and given exit codes in [`exit`].
//!
//! Depends on: `volume` (the engine), `fs` and `control` (the mount and its
//! socket). Nothing below depends on this module.

mod check;
mod config;
mod exit;
mod gc;
mod init;
mod man;
mod mount;
mod output;
mod peer;
mod progress;
pub(crate) mod size;
mod snapshot;
mod status;
mod transfer;
mod volume;

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Parser;

use crate::control;
use crate::volume::{Engine, Error as EngineError, OpenOptions};
use exit::fail;
pub use exit::{EXIT_CODES, ExitCode};

/// Where the store is when neither `--store` nor `$STRATA_STORE` says.
pub const DEFAULT_STORE: &str = "/var/lib/strata";
/// The environment variable that names the store when `--store` does not.
pub const STORE_ENV: &str = "STRATA_STORE";

/// strata: a deduplicating, compressing store of virtual-disk images.
#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "Deduplicating, compressing store of virtual-disk images, served through FUSE as raw files",
    long_about = "strata keeps virtual-disk images in one store with 4 KiB deduplication and \
        zstd compression, and serves them through FUSE as a directory of plain raw files \
        (`strata mount`), for qemu, libvirt and any tool that reads raw images.",
    after_long_help = exit::exit_codes_help(),
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// The store directory (default: $STRATA_STORE, else /var/lib/strata).
    // The variable is read in `store_path`, not by clap, so that an empty
    // STRATA_STORE means "unset" instead of a usage error.
    #[arg(long, global = true, value_name = "PATH")]
    pub store: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    Init(init::InitArgs),
    /// Create, list, show, rename, resize and remove volumes; manage their properties.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Snapshots of a volume: create, list, revert, remove.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    Clone(snapshot::CloneArgs),
    /// Inspect the chains of layers behind the volumes.
    #[command(subcommand)]
    Chain(snapshot::ChainCommand),
    Import(transfer::ImportArgs),
    Export(transfer::ExportArgs),
    Status(status::StatusArgs),
    Gc(gc::GcArgs),
    Check(check::CheckArgs),
    /// Show or change the store's settings (write policy).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    Mount(mount::MountArgs),
    Umount(mount::UmountArgs),
    /// Replication to a peer store (DRBD style): configure, watch, control.
    #[command(subcommand)]
    Peer(peer::PeerCommand),
    Promote(peer::PromoteArgs),
    Demote(peer::DemoteArgs),
    /// Write the man pages into a directory (for packaging).
    #[command(hide = true)]
    Man(man::ManArgs),
}

impl Cli {
    /// `--store`, else a non-empty `$STRATA_STORE`, else the default.
    pub fn store_path(&self) -> PathBuf {
        if let Some(p) = &self.store {
            return p.clone();
        }
        match std::env::var_os(STORE_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_STORE),
        }
    }
}

/// Run a parsed command line as the `strata` process; returns the exit code.
/// `argv` is the process's arguments without the program name, kept to pass
/// them to a mount daemon unchanged.
pub fn run(cli: Cli, argv: Vec<OsString>) -> i32 {
    let mut out = std::io::stdout();
    let progress = out.is_terminal();
    // Not locked for the whole command: `mount --foreground` runs the
    // daemon's threads in this process, and one of them printing would
    // wait forever on a lock held here.
    let result = run_local(&cli, &argv, &mut out, progress);
    let flushed = out.flush();
    match result.and_then(|code| flushed.map(|()| code).map_err(Into::into)) {
        Ok(code) => code,
        // `strata volume list | head`: the reader left; nothing to report.
        Err(err) if is_broken_pipe(&err) => 0,
        Err(err) => {
            tracing::debug!(error = ?err, "command failed");
            eprintln!("strata: error: {err:#}");
            exit::exit_code(&err).code()
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Run a command line against an engine that is already open (the mount
/// daemon's control handler). `argv` excludes the program name. Returns
/// (stdout, stderr, exit code); never draws progress bars.
pub fn execute(engine: &Engine, argv: &[String]) -> (String, String, i32) {
    let args = std::iter::once("strata".to_string()).chain(argv.iter().cloned());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let text = e.render().to_string();
            return if e.use_stderr() {
                (String::new(), text, e.exit_code())
            } else {
                (text, String::new(), e.exit_code())
            };
        }
    };
    let mut out = Vec::new();
    let result = dispatch(engine, &cli.command, &mut out, false);
    let stdout = String::from_utf8_lossy(&out).into_owned();
    match result {
        Ok(()) => (stdout, String::new(), 0),
        Err(err) => (stdout, format!("strata: error: {err:#}\n"), exit::exit_code(&err).code()),
    }
}

fn run_local(cli: &Cli, argv: &[OsString], out: &mut dyn Write, progress: bool) -> Result<i32> {
    let store = cli.store_path();
    match &cli.command {
        Command::Init(a) => init::run(a.dir.as_deref().unwrap_or(&store), a, out)?,
        Command::Mount(a) => mount::mount(&store, a, out, progress)?,
        Command::Umount(a) => mount::umount(a, out)?,
        Command::Man(a) => man::run(a, out)?,
        Command::Check(a) => {
            return check::run(a.dir.as_deref().unwrap_or(&store), a, out, progress);
        }
        Command::Peer(peer::PeerCommand::Events(a)) if a.from.is_none() => {
            return peer::events_client(&store, a, out);
        }
        Command::Volume(_)
        | Command::Snapshot(_)
        | Command::Clone(_)
        | Command::Chain(_)
        | Command::Import(_)
        | Command::Export(_)
        | Command::Status(_)
        | Command::Gc(_)
        | Command::Config(_)
        | Command::Peer(_)
        | Command::Promote(_)
        | Command::Demote(_) => {
            return with_engine(&store, cli, argv, out, progress);
        }
    }
    Ok(0)
}

/// Open the store and run the command; if a mount daemon holds the store,
/// pass the command to it.
fn with_engine(store: &Path, cli: &Cli, argv: &[OsString], out: &mut dyn Write, progress: bool) -> Result<i32> {
    if !store.exists() {
        return Err(exit::no_store(store));
    }
    let engine = match Engine::open(store, &OpenOptions::default()) {
        Ok(engine) => engine,
        Err(busy @ EngineError::Busy { .. }) => return forward(store, busy, cli, argv, out),
        Err(EngineError::NotFound(_)) => return Err(exit::no_store(store)),
        Err(EngineError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(exit::no_store(store));
        }
        Err(e) => {
            return Err(exit::engine(format!("cannot open store {}", store.display()), e));
        }
    };
    let result = dispatch(&engine, &cli.command, out, progress);
    // Close even after a failure: it flushes and marks the store clean.
    let closed = engine.close();
    result?;
    closed.map_err(|e| exit::engine(format!("cannot close store {} cleanly", store.display()), e))?;
    Ok(0)
}

/// Pass the command to the daemon that has the store mounted, print what it
/// printed and return its exit code.
fn forward(store: &Path, busy: EngineError, cli: &Cli, argv: &[OsString], out: &mut dyn Write) -> Result<i32> {
    let argv = forwarded_argv(cli, argv)?;
    tracing::debug!(?argv, store = %store.display(), "store is locked; passing the command to the mount daemon");
    match control::call(store, &argv) {
        Ok(Some((stdout, stderr, code))) => {
            out.write_all(stdout.as_bytes())?;
            eprint!("{stderr}");
            Ok(daemon_code(code))
        }
        // Locked, but not by a daemon we can talk to: the engine's message says what to do.
        Ok(None) => Err(exit::engine(format!("cannot open store {}", store.display()), busy)),
        Err(e) => Err(fail(
            ExitCode::Busy,
            format!(
                "store {} is mounted, but its daemon did not answer on the control socket: {e}: check that the mount daemon is running",
                store.display()
            ),
        )),
    }
}

/// The daemon's own refusals use sysexits codes; give them the documented
/// meaning (too many commands at once → busy; a command that panicked →
/// generic failure). The handler's codes pass through unchanged.
fn daemon_code(code: i32) -> i32 {
    match code {
        control::EXIT_BUSY => ExitCode::Busy.code(),
        control::EXIT_INTERNAL => ExitCode::Failure.code(),
        code => code,
    }
}

/// The arguments the daemon gets: ours unchanged, except that file paths of
/// import/export are made absolute (the daemon's working directory differs).
fn forwarded_argv(cli: &Cli, argv: &[OsString]) -> Result<Vec<String>> {
    let text = |p: &Path| -> Result<String> {
        let abs = transfer::absolute(p)?;
        abs.into_os_string().into_string().map_err(|p| {
            fail(
                ExitCode::InvalidArgument,
                format!("the path {p:?} is not UTF-8 and cannot be passed to the mount daemon: rename it"),
            )
        })
    };
    Ok(match &cli.command {
        Command::Import(a) => vec!["import".into(), "--".into(), text(&a.file)?, a.name.clone()],
        Command::Export(a) => {
            let format = match a.image_format {
                transfer::ImageFormat::Raw => "raw",
                transfer::ImageFormat::Qcow2 => "qcow2",
            };
            let mut v = vec!["export".to_string(), "--format".into(), format.into()];
            if a.chain {
                v.push("--chain".into());
            }
            if a.force {
                v.push("--force".into());
            }
            v.extend(["--".into(), a.volume.clone(), text(&a.file)?]);
            v
        }
        _ => argv
            .iter()
            .map(|a| {
                a.clone().into_string().map_err(|a| {
                    fail(
                        ExitCode::InvalidArgument,
                        format!("the argument {a:?} is not UTF-8 and cannot be passed to the mount daemon"),
                    )
                })
            })
            .collect::<Result<_>>()?,
    })
}

/// Run one command against an open engine. Local and daemon paths both end here.
fn dispatch(engine: &Engine, command: &Command, out: &mut dyn Write, progress: bool) -> Result<()> {
    match command {
        Command::Volume(c) => volume::run(engine, c, out),
        Command::Snapshot(c) => snapshot::run(engine, c, out),
        Command::Clone(a) => snapshot::clone(engine, a, out),
        Command::Chain(c) => snapshot::chain(engine, c, out),
        Command::Import(a) => transfer::import(engine, a, out, progress),
        Command::Export(a) => transfer::export(engine, a, out, progress),
        Command::Status(a) => status::run(engine, a, out),
        Command::Gc(a) => gc::run(engine, a, out, progress),
        Command::Config(c) => config::run(engine, c, out),
        Command::Peer(c) => peer::run(engine, c, out),
        Command::Promote(a) => peer::promote(engine, a, out),
        Command::Demote(a) => peer::demote(engine, a, out),
        Command::Init(_) | Command::Mount(_) | Command::Umount(_) | Command::Man(_) | Command::Check(_) => Err(fail(
            ExitCode::Usage,
            "init, mount, umount, check and man cannot run through the mount daemon: run them directly (check and init need the store unmounted)",
        )),
    }
}

/// Set up `tracing` to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("strata").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn forwarded_import_and_export_get_absolute_paths() {
        let cwd = std::env::current_dir().unwrap();
        let cli = parse(&["import", "disk.raw", "vm1"]);
        let argv = forwarded_argv(&cli, &[]).unwrap();
        assert_eq!(argv, ["import", "--", cwd.join("disk.raw").to_str().unwrap(), "vm1"]);

        let cli = parse(&["export", "--force", "--", "-weird", "out.raw"]);
        let argv = forwarded_argv(&cli, &[]).unwrap();
        assert_eq!(
            argv,
            ["export", "--format", "raw", "--force", "--", "-weird", cwd.join("out.raw").to_str().unwrap()]
        );
    }

    #[test]
    fn other_commands_are_forwarded_unchanged() {
        let args: Vec<OsString> = ["volume", "list", "--show-props", "a,b"].iter().map(OsString::from).collect();
        let cli = parse(&["volume", "list", "--show-props", "a,b"]);
        assert_eq!(forwarded_argv(&cli, &args).unwrap(), ["volume", "list", "--show-props", "a,b"]);
    }

    #[test]
    fn the_store_flag_names_the_store() {
        // The environment variable and the default are tested end to end
        // (tests/cli_store.rs), where the environment is under control.
        assert_eq!(parse(&["--store", "/s", "status"]).store_path(), PathBuf::from("/s"));
    }
}
