//! `strata peer …`, `strata promote`, `strata demote`: replication to one
//! peer store, DRBD style (SPEC §5, docs/replication.md).
//!
//! Replication runs inside the mount daemon (it owns the store and the
//! replication threads), so every command that talks to the link —
//! status, events, connect, disconnect, pause-sync, resume-sync, verify,
//! rate, promote, demote, resolve — needs the store mounted and reaches the
//! daemon through the control socket like any other command. The
//! configuration commands (`peer add`, `peer remove`) also work on an
//! unmounted store; on a mounted one they start or stop the link at once.
//!
//! `peer events` streams: the client asks the daemon for the lines after
//! the last one it printed (a long poll of about a second each), so it works
//! over the one-request-per-connection control socket.
//!
//! Depends on: `replica::node` (the served link), the catalogue's peer rows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::exit::{self, ExitCode, fail};
use super::output::{self, Format, FormatArg, Listing};
use super::size::{human, parse_size};
use crate::catalog::PeerRow;
use crate::replica::node::{self, Link};
use crate::replica::{AdminCommand, ReplicaStatus};
use crate::volume::Engine;

#[derive(clap::Subcommand, Debug)]
pub enum PeerCommand {
    /// Configure the peer store this store replicates with (one per store).
    #[command(long_about = "Configure the peer store this store replicates with (one peer per store). \
        ADDRESS is where the peer listens (host:port); --listen is where this host accepts the \
        peer's connection. Both stores need the same secret file (at least 16 bytes, mode 0600). \
        Works on an unmounted store; on a mounted one replication starts at once. A new pair \
        starts Secondary on both sides: promote one with `strata promote --force`.")]
    Add(AddArgs),
    /// Remove the peer configuration (stops replication if running).
    #[command(visible_alias = "rm")]
    Remove(RemoveArgs),
    /// Show the replication state with DRBD's names.
    #[command(long_about = "Show the replication state with DRBD's names: role, disk, peer-disk, \
        connection, replication, out-of-sync, sent, received, done %, eta, and Ganeti's \
        degraded (not connected, or the local disk not UpToDate). Without a mount only the \
        configuration is shown.")]
    Status(StatusArgs),
    /// Print one line per state change, until interrupted (needs the store mounted).
    Events(EventsArgs),
    /// Connect to the peer (after a disconnect or a refusal).
    Connect,
    /// Disconnect from the peer and stay disconnected until `peer connect`.
    Disconnect,
    /// Pause the resync.
    PauseSync,
    /// Resume a paused resync.
    ResumeSync,
    /// Compare both stores online by hashes and report the ranges that differ.
    #[command(long_about = "Compare both stores online by hashes of their block maps and report the \
        number of ranges that differ. Differences are marked out-of-sync, not repaired: a \
        disconnect and connect resyncs them.")]
    Verify,
    /// Limit the resync rate (bytes per second, K/M/G suffixes; 0 = unlimited).
    Rate(RateArgs),
    /// Resolve a split brain: this node drops its changes and resyncs from the peer.
    #[command(long_about = "Resolve a split brain on the node whose changes should be dropped: it \
        becomes the resync target of the peer. Its divergent data is kept as snapshots named \
        split-brain-<generation> (see `strata snapshot list`). The node must be Secondary \
        (`strata demote` first).")]
    Resolve(ResolveArgs),
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// A name for the peer (letters, digits, '.', '_', '-').
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Where the peer listens for this node's connection.
    #[arg(long, value_name = "HOST:PORT")]
    pub address: String,
    /// The shared secret (the same file content on both stores; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub secret_file: PathBuf,
    /// Where this host accepts the peer's connection.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// C: a flush completes once the peer has the data too; A: asynchronous.
    #[arg(long, value_enum, default_value_t = ProtocolArg::C)]
    pub protocol: ProtocolArg,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolArg {
    A,
    C,
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    #[arg(value_name = "NAME")]
    pub name: String,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub format: FormatArg,
}

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Print the events so far and exit instead of waiting for more.
    #[arg(long)]
    pub once: bool,
    // The client's long poll, run in the daemon: lines from this index on.
    #[arg(long, hide = true)]
    pub from: Option<usize>,
    #[arg(long, hide = true, default_value_t = 0)]
    pub wait_ms: u64,
}

#[derive(clap::Args, Debug)]
pub struct RateArgs {
    #[arg(value_name = "BYTES_PER_SEC")]
    pub rate: String,
}

#[derive(clap::Args, Debug)]
pub struct ResolveArgs {
    /// Drop this node's changes since the split (they are kept as snapshots).
    #[arg(long, required = true)]
    pub discard_my_data: bool,
}

/// `strata promote`.
#[derive(clap::Args, Debug)]
#[command(
    about = "Make this store the replication Primary (the one that takes writes)",
    long_about = "Make this store the replication Primary: it takes writes and ships them to \
    the peer. Refused while the peer is Primary. A store whose disk is not UpToDate (a new \
    pair, or a Secondary that lost its Primary mid-resync) needs --force, and then its data is \
    what the pair continues from. Needs the store mounted."
)]
pub struct PromoteArgs {
    /// Promote even though the local disk is not UpToDate.
    #[arg(long)]
    pub force: bool,
}

/// `strata demote`.
#[derive(clap::Args, Debug)]
#[command(
    about = "Make this store a replication Secondary (it refuses local writes)",
    long_about = "Make this store a replication Secondary: it refuses local writes and takes \
    changes only from its peer. Needs the store mounted."
)]
pub struct DemoteArgs {}

pub fn run(engine: &Engine, c: &PeerCommand, out: &mut dyn Write) -> Result<()> {
    match c {
        PeerCommand::Add(a) => add(engine, a, out),
        PeerCommand::Remove(a) => remove(engine, a, out),
        PeerCommand::Status(a) => status(engine, a, out),
        PeerCommand::Events(a) => events_in_daemon(engine, a, out),
        PeerCommand::Connect => admin(engine, AdminCommand::Connect, "connect", out),
        PeerCommand::Disconnect => admin(engine, AdminCommand::Disconnect, "disconnect", out),
        PeerCommand::PauseSync => admin(engine, AdminCommand::PauseSync, "pause the resync", out),
        PeerCommand::ResumeSync => admin(engine, AdminCommand::ResumeSync, "resume the resync", out),
        PeerCommand::Verify => verify(engine, out),
        PeerCommand::Rate(a) => {
            let bytes = parse_size(&a.rate)
                .map_err(|e| fail(ExitCode::InvalidArgument, format!("invalid resync rate {:?}: {e}", a.rate)))?;
            admin(engine, AdminCommand::SetRate { bytes_per_s: bytes }, "set the resync rate", out)
        }
        PeerCommand::Resolve(_) => admin(engine, AdminCommand::DiscardMyData, "discard this node's data", out),
    }
}

pub fn promote(engine: &Engine, a: &PromoteArgs, out: &mut dyn Write) -> Result<()> {
    admin(engine, AdminCommand::Promote { force: a.force }, "promote", out)
}

pub fn demote(engine: &Engine, _a: &DemoteArgs, out: &mut dyn Write) -> Result<()> {
    admin(engine, AdminCommand::Demote, "demote", out)
}

// ------------------------------------------------------------ configuration

fn configured(engine: &Engine) -> Result<Option<PeerRow>> {
    let peers = engine
        .catalog()
        .peers()
        .map_err(|e| exit::engine(format!("cannot read the peers of store {}", engine.path().display()), e.into()))?;
    Ok(peers.into_iter().next())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Relative paths are the client's: the daemon runs in `/`.
fn client_path(p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match crate::control::request_cwd() {
        Some(cwd) => cwd.join(p),
        None => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

fn add(engine: &Engine, a: &AddArgs, out: &mut dyn Write) -> Result<()> {
    if !valid_name(&a.name) {
        return Err(fail(
            ExitCode::InvalidArgument,
            format!("invalid peer name {:?}: use 1 to 64 letters, digits, '.', '_' or '-'", a.name),
        ));
    }
    let port_ok =
        a.address.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(fail(
            ExitCode::InvalidArgument,
            format!("invalid peer address {:?}: give HOST:PORT, e.g. 192.0.2.7:7789", a.address),
        ));
    }
    if let Some(l) = &a.listen
        && l.parse::<std::net::SocketAddr>().is_err()
    {
        return Err(fail(
            ExitCode::InvalidArgument,
            format!("invalid listen address {l:?}: give ADDR:PORT with a numeric address, e.g. 0.0.0.0:7789"),
        ));
    }
    let secret = client_path(&a.secret_file);
    if !secret.exists() {
        return Err(fail(
            ExitCode::NotFound,
            format!(
                "secret file {} does not exist: create it with at least 16 random bytes and mode 0600 (e.g. `head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE`)",
                secret.display()
            ),
        ));
    }
    node::read_secret(&secret)
        .map_err(|e| fail(ExitCode::InvalidArgument, format!("cannot use {}: {e}", secret.display())))?;
    if let Some(p) = configured(engine)? {
        return Err(fail(
            ExitCode::AlreadyExists,
            format!(
                "store {} already replicates with peer {:?} ({}): a store has one peer; run `strata peer remove {}` first",
                engine.path().display(),
                p.name,
                p.address,
                p.name
            ),
        ));
    }
    let row = PeerRow {
        name: a.name.clone(),
        address: a.address.clone(),
        secret_file: secret.to_string_lossy().into_owned(),
        protocol: if a.protocol == ProtocolArg::A { "A" } else { "C" }.to_string(),
        listen: a.listen.clone(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    };
    engine.catalog().peer_add(&row).map_err(|e| exit::engine(format!("cannot add peer {:?}", a.name), e.into()))?;
    if node::is_served(engine) {
        if let Err(e) = node::restart_served(engine) {
            // Leave no configuration the daemon could not start.
            let _ = engine.catalog().peer_remove(&a.name);
            return Err(fail(ExitCode::Failure, format!("cannot start replication with peer {:?}: {e}", a.name)));
        }
        writeln!(out, "peer {} added; replication started (see `strata peer status`)", a.name)?;
    } else {
        writeln!(out, "peer {} added; replication starts when the store is mounted", a.name)?;
    }
    Ok(())
}

fn remove(engine: &Engine, a: &RemoveArgs, out: &mut dyn Write) -> Result<()> {
    match configured(engine)? {
        Some(p) if p.name == a.name => {}
        _ => {
            return Err(fail(
                ExitCode::NotFound,
                format!(
                    "no peer named {:?} in store {}: `strata peer status` shows the configured peer",
                    a.name,
                    engine.path().display()
                ),
            ));
        }
    }
    let stopped = node::stop_served(engine);
    engine
        .catalog()
        .peer_remove(&a.name)
        .map_err(|e| exit::engine(format!("cannot remove peer {:?}", a.name), e.into()))?;
    writeln!(out, "peer {} removed{}", a.name, if stopped { "; replication stopped" } else { "" })?;
    Ok(())
}

// ------------------------------------------------------------------- link

/// The running link, or why there is none.
fn running(engine: &Engine) -> Result<Link> {
    if let Some(l) = node::link(engine) {
        return Ok(l);
    }
    if configured(engine)?.is_none() {
        return Err(fail(
            ExitCode::NotFound,
            format!(
                "store {} has no peer: add one with `strata peer add NAME --address HOST:PORT --secret-file FILE`",
                engine.path().display()
            ),
        ));
    }
    Err(fail(
        ExitCode::Failure,
        format!(
            "replication of store {} is not running: it runs in the mount daemon; mount the store with `strata mount` first",
            engine.path().display()
        ),
    ))
}

fn admin(engine: &Engine, cmd: AdminCommand, what: &str, out: &mut dyn Write) -> Result<()> {
    let link = running(engine)?;
    link.admin(cmd).map_err(|reason| {
        fail(ExitCode::InvalidArgument, format!("cannot {what} store {}: {reason}", engine.path().display()))
    })?;
    if let Some(s) = link.status() {
        writeln!(
            out,
            "{}: role {}, disk {}, connection {}, replication {}",
            s.name, s.role, s.disk, s.connection, s.replication
        )?;
    }
    Ok(())
}

fn verify(engine: &Engine, out: &mut dyn Write) -> Result<()> {
    let link = running(engine)?;
    let (_, from) = link.events_since(usize::MAX, Duration::ZERO);
    link.admin(AdminCommand::Verify).map_err(|reason| {
        fail(ExitCode::InvalidArgument, format!("cannot verify store {}: {reason}", engine.path().display()))
    })?;
    let end = Instant::now() + Duration::from_secs(3600);
    let mut next = from;
    while Instant::now() < end {
        let (lines, n) = link.events_since(next, Duration::from_millis(500));
        next = n;
        if let Some(l) = lines.iter().find(|l| l.contains("verify:finished")) {
            let mism = l.split_whitespace().find_map(|w| w.strip_prefix("ov-mismatches:")).unwrap_or("?");
            writeln!(out, "verify finished: {mism} ranges differ")?;
            if mism != "0" {
                writeln!(
                    out,
                    "the differing blocks are marked out-of-sync; `strata peer disconnect` then `strata peer connect` resyncs them"
                )?;
            }
            return Ok(());
        }
        if let Some(l) = lines.iter().find(|l| l.contains("failure:")) {
            return Err(fail(
                ExitCode::Failure,
                format!("verify of store {} interrupted: {l}", engine.path().display()),
            ));
        }
    }
    Err(fail(ExitCode::Failure, "verify did not finish within an hour; `strata peer events` shows its progress"))
}

/// The JSON of `peer status`: the configuration and DRBD's names.
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    peer: Option<&'a PeerRow>,
    running: bool,
    #[serde(flatten)]
    status: Option<&'a ReplicaStatus>,
}

fn status(engine: &Engine, a: &StatusArgs, out: &mut dyn Write) -> Result<()> {
    let peer = configured(engine)?;
    let st = node::link(engine).and_then(|l| l.status());
    if a.format.format == Format::Json {
        return output::json(out, &StatusJson { peer: peer.as_ref(), running: st.is_some(), status: st.as_ref() });
    }
    let Some(p) = &peer else {
        writeln!(out, "no peer configured (add one with `strata peer add`)")?;
        return Ok(());
    };
    let mut l = Listing::new();
    l.item("peer", p.name.as_str());
    l.item("address", p.address.as_str());
    l.item("listen", p.listen.clone().unwrap_or_else(|| "-".into()));
    l.item("protocol", p.protocol.as_str());
    match &st {
        None => {
            l.item("replication", "not running (the store is not mounted; replication runs in the mount daemon)");
        }
        Some(s) => write_status(&mut l, s),
    }
    l.write(out, 0)
}

fn write_status(l: &mut Listing, s: &ReplicaStatus) {
    l.item("role", s.role.to_string());
    l.item("peer-role", s.peer_role.to_string());
    l.item("disk", s.disk.to_string());
    l.item("peer-disk", s.peer_disk.to_string());
    l.item("connection", s.connection.to_string());
    l.item("replication", s.replication.to_string());
    l.item("out-of-sync", format!("{} ({} bytes)", human(s.out_of_sync), s.out_of_sync));
    l.item("sent", format!("{} ({} bytes)", human(s.sent), s.sent));
    l.item("received", format!("{} ({} bytes)", human(s.received), s.received));
    l.item("done", s.done.map(|d| format!("{d:.1}%")).unwrap_or_else(|| "-".into()));
    l.item("eta", s.eta.map(|e| format!("{e} s")).unwrap_or_else(|| "-".into()));
    l.item("degraded", if s.degraded { "yes" } else { "no" });
    if let Some(e) = &s.last_error {
        l.item("last error", e.as_str());
    }
}

/// The one-line replication summary of `strata status`.
pub fn summary(engine: &Engine) -> String {
    let peer = match engine.catalog().peers() {
        Ok(p) => p.into_iter().next(),
        Err(e) => return format!("unknown ({e})"),
    };
    let Some(p) = peer else {
        return "none (no peer configured)".into();
    };
    match node::link(engine).and_then(|l| l.status()) {
        None => format!("peer {} ({}), not running (store not mounted)", p.name, p.address),
        Some(s) => format!(
            "peer {} ({}): {} {}, {} {}, peer-disk {}, out-of-sync {}{}",
            p.name,
            p.address,
            s.role,
            s.disk,
            s.connection,
            s.replication,
            s.peer_disk,
            human(s.out_of_sync),
            if s.degraded { ", degraded" } else { "" }
        ),
    }
}

// ----------------------------------------------------------------- events

/// Run inside the daemon: the lines from `--from` on (one long poll).
fn events_in_daemon(engine: &Engine, a: &EventsArgs, out: &mut dyn Write) -> Result<()> {
    let link = running(engine)?;
    let wait = Duration::from_millis(a.wait_ms.min(5_000));
    let (lines, next) = link.events_since(a.from.unwrap_or(0), wait);
    if a.from.is_some() {
        // The client's protocol: the next index first, then the lines.
        writeln!(out, "{next}")?;
    }
    for l in lines {
        writeln!(out, "{l}")?;
    }
    Ok(())
}

/// `strata peer events` as a client: poll the daemon, print each new line
/// as it comes, until interrupted (or once with `--once`).
pub fn events_client(store: &Path, a: &EventsArgs, out: &mut dyn Write) -> Result<i32> {
    let mut from = 0usize;
    loop {
        let argv: Vec<String> = vec![
            "peer".into(),
            "events".into(),
            "--from".into(),
            from.to_string(),
            "--wait-ms".into(),
            if a.once { "0".into() } else { "1000".into() },
        ];
        let answer = crate::control::call(store, &argv).map_err(|e| {
            fail(ExitCode::Busy, format!("store {} is mounted, but its daemon did not answer: {e}", store.display()))
        })?;
        let Some((stdout, stderr, code)) = answer else {
            if !store.exists() {
                return Err(exit::no_store(store));
            }
            return Err(fail(
                ExitCode::Failure,
                format!(
                    "replication of store {} is not running: it runs in the mount daemon; mount the store with `strata mount` first",
                    store.display()
                ),
            ));
        };
        if code != 0 {
            eprint!("{stderr}");
            return Ok(code);
        }
        let mut lines = stdout.lines();
        let next: usize = lines.next().and_then(|n| n.trim().parse().ok()).unwrap_or(from);
        for l in lines {
            writeln!(out, "{l}")?;
        }
        out.flush()?;
        from = next;
        if a.once {
            return Ok(0);
        }
    }
}
