//! The replication driver: the pure core ([`Replica`]) wired to an
//! [`Engine`] and to TCP ([`transport`](super::transport)).
//!
//! # Threads (all named, all stopped by a message and joined)
//!
//! ```text
//! strata-repl          the driver: owns the Replica; steps events one at
//!                      a time, executes actions in order (engine queries
//!                      and applies inline), ticks every `tick_ms`
//! strata-repl-listen   accepts peer connections (when `listen` is set)
//! strata-repl-dial     one short-lived thread per connect attempt
//! strata-repl-rx/-tx   per connection: frame reader, frame writer
//! ```
//!
//! The write path talks to the driver through one bounded crossbeam
//! channel (`CHANNEL_CAP` messages): a full channel blocks the writer
//! (back-pressure), never drops a record. Flushes under protocol C wait on
//! a one-shot channel for the core's `CompleteFlush`.
//!
//! # Who dials
//!
//! Both nodes may listen. To avoid two crossing connections, a node with a
//! `listen` address dials only if its listen address sorts before the
//! peer's address (as strings), and otherwise only accepts; a node without
//! `listen` always dials. Configure `listen` on one side and the same
//! address as the other side's `peer` for the simplest setup.
//!
//! # Roles
//!
//! The core starts every node Secondary (DRBD). The node remembers the
//! operator's last promote/demote in the state file and re-promotes itself
//! when its disk becomes UpToDate again (never by force). The Secondary's
//! store must not be served (not mounted): it is written by the driver.
//!
//! Depends on: `replica::{protocol, state, transport, status}`, `volume`.

use super::protocol::{Action, AdminCommand, Config, Event, Protocol, Replica};
use super::state::StateFile;
use super::status::{ReplicaStatus, Role, event_line};
use super::transport::{self, Conn, NetMsg};
use super::{BlockKey, Record};
use crate::volume::Engine;
use crate::volume::replication::ReplicationSink;
use crossbeam_channel::{Receiver, Sender, bounded};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages the write path may queue before it blocks.
pub const CHANNEL_CAP: usize = 1024;

/// How a node reaches its peer, and the protocol parameters.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Resource name shown in status and events.
    pub name: String,
    /// Where to accept the peer's connection (None: only dial).
    pub listen: Option<SocketAddr>,
    /// Where the peer listens (`host:port`).
    pub peer: String,
    pub secret: Vec<u8>,
    pub protocol: Protocol,
    pub ping_interval_ms: u64,
    pub timeout_ms: u64,
    pub resync_rate_bytes: u64,
    pub tick_ms: u64,
    /// Connect at start.
    pub connect: bool,
    /// Force dialing (true) or only accepting (false); None: the rule in
    /// the module docs.
    pub dial: Option<bool>,
}

impl NodeConfig {
    pub fn new(name: &str, peer: &str, secret: &[u8]) -> NodeConfig {
        NodeConfig {
            name: name.to_string(),
            listen: None,
            peer: peer.to_string(),
            secret: secret.to_vec(),
            protocol: Protocol::C,
            ping_interval_ms: 1000,
            timeout_ms: 6000,
            resync_rate_bytes: 0,
            tick_ms: 100,
            connect: true,
            dial: None,
        }
    }

    fn dials(&self) -> bool {
        if let Some(d) = self.dial {
            return d;
        }
        match self.listen {
            None => true,
            Some(l) => l.to_string() < self.peer,
        }
    }
}

pub(crate) enum Msg {
    Local(Record, u64),
    Flush(u64, Sender<bool>),
    Admin(AdminCommand, Sender<Result<(), String>>),
    Net(NetMsg),
    Status(Sender<ReplicaStatus>),
    Stop,
}

/// What the node shares with the write path, status readers and tests.
pub(crate) struct Shared {
    tx: Sender<Msg>,
    state: StateFile,
    primary: AtomicBool,
    protocol: Protocol,
    next_flush: AtomicU64,
    events: Mutex<Vec<String>>,
    events_cv: Condvar,
    /// Bytes written to / read from sockets (frames), for tests and status.
    pub(crate) wire_tx: AtomicU64,
    pub(crate) wire_rx: AtomicU64,
    /// Test hook: stop reading the socket (a hung peer, SIGSTOP analogue).
    pub(crate) stall_reads: AtomicBool,
    stopped: AtomicBool,
}

struct Sink(Arc<Shared>);

impl ReplicationSink for Sink {
    fn will_write(&self, keys: &[BlockKey]) -> u64 {
        match self.0.state.announce(keys) {
            Ok(t) => t,
            Err(e) => {
                // Without the activity log a crash could hide these blocks
                // from resync: say so loudly. The driver marks them dirty
                // anyway when it steps the record.
                tracing::error!(%e, "replication: cannot persist the activity log");
                0
            }
        }
    }
    fn journaled(&self, rec: Record, ticket: u64) {
        if self.0.tx.send(Msg::Local(rec, ticket)).is_err() {
            tracing::warn!("replication driver gone; record not shipped");
        }
    }
    fn catalogue_changed(&self, seq: u64, snapshot: Vec<u8>) {
        let rec = Record { seq, updates: Vec::new(), chunks: Vec::new(), catalogue: vec![snapshot] };
        let _ = self.0.tx.send(Msg::Local(rec, 0));
    }
    fn flush(&self) -> Result<(), String> {
        if self.0.protocol == Protocol::A || self.0.stopped.load(Ordering::Acquire) {
            return Ok(());
        }
        let id = self.0.next_flush.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(1);
        if self.0.tx.send(Msg::Flush(id, tx)).is_err() {
            return Ok(());
        }
        // Completed by the core: replicated, or locally when the peer is
        // gone (DRBD's degraded mode; the blocks stay in the dirty set).
        match rx.recv() {
            Ok(replicated) => {
                if !replicated {
                    tracing::debug!(id, "flush completed without the peer (degraded)");
                }
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }
    fn is_primary(&self) -> bool {
        self.0.primary.load(Ordering::Acquire)
    }
}

/// A running replication link of one store.
pub struct Node {
    shared: Arc<Shared>,
    engine: Arc<Engine>,
    driver: Option<JoinHandle<()>>,
    listener: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    pub listen_addr: Option<SocketAddr>,
}

/// The node configuration of the store's configured peer, if any
/// (`strata peer add`). The secret file must exist, be non-empty, and not
/// be readable by group or others (refused with the reason otherwise).
pub fn configured(engine: &Engine) -> Result<Option<NodeConfig>, String> {
    let peers = engine.catalog().peers().map_err(|e| e.to_string())?;
    let Some(p) = peers.into_iter().next() else { return Ok(None) };
    let secret = read_secret(std::path::Path::new(&p.secret_file))?;
    let mut c = NodeConfig::new(&p.name, &p.address, &secret);
    c.protocol = if p.protocol == "A" { Protocol::A } else { Protocol::C };
    if let Some(l) = &p.listen {
        c.listen = Some(l.parse().map_err(|e| format!("peer {}: listen address {l:?}: {e}", p.name))?);
    }
    Ok(Some(c))
}

/// Read a shared-secret file (trailing newline stripped).
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::metadata(path).map_err(|e| format!("secret file {}: {e}", path.display()))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "secret file {} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            md.permissions().mode() & 0o777,
            path.display()
        ));
    }
    let mut s = std::fs::read(path).map_err(|e| format!("secret file {}: {e}", path.display()))?;
    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        s.pop();
    }
    if s.len() < 16 {
        return Err(format!("secret file {} holds {} bytes; use at least 16 random bytes", path.display(), s.len()));
    }
    Ok(s)
}

/// Start replication for the store's configured peer, if there is one:
/// what a long-lived engine owner (the mount daemon) calls after opening.
pub fn start_configured(engine: &Arc<Engine>) -> Result<Option<Node>, String> {
    match configured(engine)? {
        Some(c) => Node::start(engine.clone(), c).map(Some),
        None => Ok(None),
    }
}

// ------------------------------------------------------------------ served
//
// A long-lived engine owner (the mount daemon) *serves* its store: the
// registry below owns the store's replication node, so commands the daemon
// runs for the command line (`strata peer …`, `promote`, `demote`, `status`)
// find it by the engine's path, and `peer add` / `peer remove` can start and
// stop it while the store stays mounted. A short-lived opener (the CLI on
// an unmounted store) never serves, so replication only ever runs in the
// process that owns the store for its whole mount.

struct Served {
    path: std::path::PathBuf,
    engine: Arc<Engine>,
    node: Option<Node>,
}

static SERVED: Mutex<Vec<Served>> = Mutex::new(Vec::new());

fn served_lock() -> std::sync::MutexGuard<'static, Vec<Served>> {
    SERVED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serve `engine`'s store: register it and start replication for its
/// configured peer, if any. Dropping the guard stops replication and
/// unregisters (do it before closing the engine).
pub fn serve(engine: &Arc<Engine>) -> Result<ServeGuard, String> {
    let node = start_configured(engine)?;
    let mut v = served_lock();
    v.retain(|s| s.path != engine.path());
    v.push(Served { path: engine.path().to_path_buf(), engine: engine.clone(), node });
    Ok(ServeGuard(engine.clone()))
}

/// See [`serve`].
pub struct ServeGuard(Arc<Engine>);

impl Drop for ServeGuard {
    fn drop(&mut self) {
        unserve(&self.0);
    }
}

/// Stop replication of a served store and forget it.
pub fn unserve(engine: &Engine) {
    let taken = {
        let mut v = served_lock();
        let pos = v.iter().position(|s| s.path == engine.path());
        pos.map(|i| v.remove(i))
    };
    if let Some(s) = taken
        && let Some(n) = s.node
    {
        n.stop();
    }
}

/// Whether this process serves `engine`'s store (runs inside its daemon).
pub fn is_served(engine: &Engine) -> bool {
    served_lock().iter().any(|s| s.path == engine.path())
}

/// (Re)start a served store's replication from its configuration (after
/// `peer add`); stops any running node first. Ok(false) when not served.
pub fn restart_served(engine: &Engine) -> Result<bool, String> {
    let (arc, old) = {
        let mut v = served_lock();
        let Some(s) = v.iter_mut().find(|s| s.path == engine.path()) else { return Ok(false) };
        (s.engine.clone(), s.node.take())
    };
    if let Some(n) = old {
        n.stop();
    }
    let node = start_configured(&arc)?;
    let mut v = served_lock();
    if let Some(s) = v.iter_mut().find(|s| s.path == engine.path()) {
        s.node = node;
    }
    Ok(true)
}

/// Stop a served store's replication (after `peer remove`); the store
/// stays served. Returns whether a node was running.
pub fn stop_served(engine: &Engine) -> bool {
    let old = {
        let mut v = served_lock();
        v.iter_mut().find(|s| s.path == engine.path()).and_then(|s| s.node.take())
    };
    match old {
        Some(n) => {
            n.stop();
            true
        }
        None => false,
    }
}

/// The running replication link of a served store, if any.
pub fn link(engine: &Engine) -> Option<Link> {
    served_lock().iter().find(|s| s.path == engine.path()).and_then(|s| s.node.as_ref()).map(|n| Link(n.shared.clone()))
}

/// A handle on a running node for commands: cheap to clone, never keeps
/// the node alive past its stop (calls then fail with a reason).
#[derive(Clone)]
pub struct Link(Arc<Shared>);

impl Link {
    /// Run an admin command; a refusal comes back as the reason.
    pub fn admin(&self, cmd: AdminCommand) -> Result<(), String> {
        self.0.admin(cmd)
    }

    pub fn status(&self) -> Option<ReplicaStatus> {
        self.0.status()
    }

    /// Event lines from index `from` on, waiting up to `wait` for one when
    /// there are none yet; returns the lines and the next index.
    pub fn events_since(&self, from: usize, wait: Duration) -> (Vec<String>, usize) {
        self.0.events_since(from, wait)
    }
}

impl Shared {
    fn admin(&self, cmd: AdminCommand) -> Result<(), String> {
        if self.stopped.load(Ordering::Acquire) {
            return Err("the replication driver has stopped".to_string());
        }
        let (tx, rx) = bounded(1);
        self.tx.send(Msg::Admin(cmd, tx)).map_err(|_| "the replication driver has stopped".to_string())?;
        rx.recv().map_err(|_| "the replication driver has stopped".to_string())?
    }

    fn status(&self) -> Option<ReplicaStatus> {
        if self.stopped.load(Ordering::Acquire) {
            return None;
        }
        let (tx, rx) = bounded(1);
        self.tx.send(Msg::Status(tx)).ok()?;
        rx.recv().ok()
    }

    fn events_since(&self, from: usize, wait: Duration) -> (Vec<String>, usize) {
        let end = Instant::now() + wait;
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if ev.len() > from || self.stopped.load(Ordering::Acquire) {
                let from = from.min(ev.len());
                return (ev[from..].to_vec(), ev.len());
            }
            let now = Instant::now();
            if now >= end {
                return (Vec::new(), ev.len());
            }
            ev = self.events_cv.wait_timeout(ev, end - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Node id on the wire: the store UUID's first 8 bytes (never 0).
fn node_id(uuid: crate::guid::Guid) -> u64 {
    let b = uuid.as_bytes();
    u64::from_le_bytes(b[..8].try_into().unwrap_or([1; 8])).max(1)
}

impl Node {
    /// Start replication for `engine`: read the state file, start the
    /// driver (and the listener), attach the write-path hooks.
    pub fn start(engine: Arc<Engine>, cfg: NodeConfig) -> Result<Node, String> {
        let uuid = engine.store_uuid();
        let (state, img) = StateFile::open(engine.path(), uuid)?;
        let mut core_cfg = Config::new(&cfg.name, node_id(uuid), &cfg.secret);
        core_cfg.store_uuid = uuid;
        core_cfg.protocol = cfg.protocol;
        core_cfg.ping_interval_ms = cfg.ping_interval_ms;
        core_cfg.timeout_ms = cfg.timeout_ms;
        core_cfg.resync_rate_bytes = cfg.resync_rate_bytes;
        core_cfg.backoff_min_ms = 100;
        core_cfg.backoff_max_ms = 2000;
        let replica = Replica::new(core_cfg, img.state.clone());
        let (tx, rx) = bounded::<Msg>(CHANNEL_CAP);
        let shared = Arc::new(Shared {
            tx: tx.clone(),
            state,
            primary: AtomicBool::new(false),
            protocol: cfg.protocol,
            next_flush: AtomicU64::new(1),
            events: Mutex::new(Vec::new()),
            events_cv: Condvar::new(),
            wire_tx: AtomicU64::new(0),
            wire_rx: AtomicU64::new(0),
            stall_reads: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        });
        let mut listener = None;
        let mut listen_addr = None;
        if let Some(addr) = cfg.listen {
            let (stop, h, bound) = transport::listen(addr, tx.clone())?;
            listen_addr = Some(bound);
            listener = Some((stop, h));
        }
        let mut d = Driver {
            replica,
            engine: engine.clone(),
            shared: shared.clone(),
            cfg: cfg.clone(),
            conn: None,
            next_conn: 1,
            dial_gen: 0,
            dials: Vec::new(),
            flushes: HashMap::new(),
            admin: VecDeque::new(),
            t0: Instant::now(),
            wants_primary: img.wants_primary,
        };
        let driver = std::thread::Builder::new()
            .name("strata-repl".into())
            .spawn(move || d.run(rx))
            .map_err(|e| format!("spawning the replication thread: {e}"))?;
        engine.attach_replication(Arc::new(Sink(shared.clone())));
        let node = Node { shared, engine, driver: Some(driver), listener, listen_addr };
        if cfg.connect {
            node.admin(AdminCommand::Connect)?;
        }
        Ok(node)
    }

    /// Run an admin command; a refusal comes back as the reason.
    pub fn admin(&self, cmd: AdminCommand) -> Result<(), String> {
        self.shared.admin(cmd)
    }

    pub fn status(&self) -> Option<ReplicaStatus> {
        self.shared.status()
    }

    /// A handle for commands (see [`link`]).
    pub fn link(&self) -> Link {
        Link(self.shared.clone())
    }

    /// Every event line so far (`strata peer events`).
    pub fn events(&self) -> Vec<String> {
        self.shared.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until an event line contains `pat` (tests, scripts).
    pub fn wait_event(&self, pat: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut ev = self.shared.events.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if ev.iter().any(|l| l.contains(pat)) {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            ev = self.shared.events_cv.wait_timeout(ev, end - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Wait until `f(status)` holds.
    pub fn wait_status(&self, timeout: Duration, f: impl Fn(&ReplicaStatus) -> bool) -> Option<ReplicaStatus> {
        let end = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            if f(&s) {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Frame bytes written to and read from the socket so far.
    pub fn wire_bytes(&self) -> (u64, u64) {
        (self.shared.wire_tx.load(Ordering::Relaxed), self.shared.wire_rx.load(Ordering::Relaxed))
    }

    /// Test hook: stop (or resume) reading from the socket, as a hung or
    /// SIGSTOPped peer would.
    #[doc(hidden)]
    pub fn stall_reads(&self, yes: bool) {
        self.shared.stall_reads.store(yes, Ordering::Release);
    }

    /// Stop every thread and detach from the engine. The state file is as
    /// last persisted (nothing is lost by stopping).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.engine.detach_replication();
        let _ = self.shared.tx.send(Msg::Stop);
        if let Some(h) = self.driver.take() {
            let _ = h.join();
        }
        if let Some((stop, h)) = self.listener.take() {
            stop.store(true, Ordering::Release);
            let _ = h.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Driver {
    replica: Replica,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    cfg: NodeConfig,
    conn: Option<Conn>,
    next_conn: u64,
    dial_gen: u64,
    dials: Vec<JoinHandle<()>>,
    flushes: HashMap<u64, Sender<bool>>,
    /// Admin callers waiting for the outcome of the command being stepped.
    admin: VecDeque<Sender<Result<(), String>>>,
    t0: Instant,
    wants_primary: bool,
}

impl Driver {
    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn run(&mut self, rx: Receiver<Msg>) {
        let tick = Duration::from_millis(self.cfg.tick_ms.max(1));
        let mut next_tick = Instant::now();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                Ok(m) => self.handle(m),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            // Test hook (`stall_reads`): a hung process runs no timers
            // either, so it cannot time out and close the link first.
            if Instant::now() >= next_tick && !self.shared.stall_reads.load(Ordering::Acquire) {
                next_tick = Instant::now() + tick;
                let now = self.now_ms();
                self.step(Event::Tick(now));
                // Catalogue changes no write or flush followed: stepped
                // here directly (never through our own channel).
                let primary = self.replica.role() == Role::Primary;
                if let Some((seq, snap)) = self.engine.repl_poll_catalogue(primary) {
                    let rec = Record { seq, updates: Vec::new(), chunks: Vec::new(), catalogue: vec![snap] };
                    self.step(Event::LocalWrite(rec));
                }
                if self.wants_primary
                    && self.replica.role() != Role::Primary
                    && self.replica.disk() == super::DiskState::UpToDate
                    && self.replica.connection() == super::ConnState::Connected
                {
                    self.step(Event::Admin(AdminCommand::Promote { force: false }));
                    self.sync_role();
                }
            }
        }
        // Stop: close the link, answer waiters, join helper threads.
        if let Some(c) = self.conn.take() {
            c.close();
        }
        for (_, f) in self.flushes.drain() {
            let _ = f.send(false);
        }
        for h in self.dials.drain(..) {
            let _ = h.join();
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Local(rec, ticket) => {
                self.step(Event::LocalWrite(rec));
                if ticket != 0 {
                    self.shared.state.stepped(ticket);
                }
            }
            Msg::Flush(id, tx) => {
                self.flushes.insert(id, tx);
                self.step(Event::LocalFlush(id));
            }
            Msg::Admin(cmd, tx) => {
                let wants = match &cmd {
                    AdminCommand::Promote { .. } => Some(true),
                    AdminCommand::Demote => Some(false),
                    _ => None,
                };
                self.admin.push_back(tx);
                self.step(Event::Admin(cmd));
                if let Some(tx) = self.admin.pop_front() {
                    // Not refused: remember the wish for restarts.
                    if let Some(w) = wants {
                        self.wants_primary = w;
                        if let Err(e) = self.shared.state.set_wants_primary(w) {
                            tracing::error!(%e, "replication: cannot persist the role");
                        }
                    }
                    let _ = tx.send(Ok(()));
                }
                self.sync_role();
            }
            Msg::Status(tx) => {
                let _ = tx.send(self.replica.status());
            }
            Msg::Net(n) => self.on_net(n),
            Msg::Stop => {}
        }
    }

    fn sync_role(&self) {
        self.shared.primary.store(self.replica.role() == Role::Primary, Ordering::Release);
    }

    fn on_net(&mut self, n: NetMsg) {
        match n {
            NetMsg::Accepted(stream, from) => {
                if self.conn.is_some() || !self.replica.wants_transport() {
                    tracing::info!(%from, "replication: refusing a connection (not expecting one now)");
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
                self.attach(stream);
            }
            NetMsg::Dialed { attempt, result } => {
                if attempt != self.dial_gen || self.conn.is_some() {
                    if let Ok(s) = result {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                    return;
                }
                match result {
                    Ok(s) => self.attach(s),
                    Err(reason) => self.step(Event::Disconnected { reason }),
                }
            }
            NetMsg::Frame(id, bytes) => {
                if self.conn.as_ref().is_some_and(|c| c.id == id) {
                    self.step(Event::FrameReceived(bytes));
                }
            }
            NetMsg::Closed(id, reason) => {
                if self.conn.as_ref().is_some_and(|c| c.id == id) {
                    if let Some(c) = self.conn.take() {
                        c.close();
                    }
                    self.step(Event::Disconnected { reason });
                }
            }
        }
    }

    fn attach(&mut self, stream: std::net::TcpStream) {
        let id = self.next_conn;
        self.next_conn += 1;
        match Conn::start(id, stream, self.shared.tx.clone(), self.shared.clone()) {
            Ok(c) => {
                self.conn = Some(c);
                self.step(Event::Connected);
            }
            Err(reason) => self.step(Event::Disconnected { reason }),
        }
    }

    /// Step one event and execute the actions, answering engine queries
    /// inline (their answers are stepped in order after).
    fn step(&mut self, ev: Event) {
        let mut queue = VecDeque::from([ev]);
        while let Some(ev) = queue.pop_front() {
            for a in self.replica.step(ev) {
                if let Some(e) = self.execute(a) {
                    queue.push_back(e);
                }
            }
        }
        self.sync_role();
    }

    fn execute(&mut self, a: Action) -> Option<Event> {
        let e = &self.engine;
        match a {
            Action::SendFrame(f) => {
                if let Some(c) = &self.conn
                    && let Err(reason) = c.send(f)
                {
                    if let Some(c) = self.conn.take() {
                        c.close();
                    }
                    return Some(Event::Disconnected { reason });
                }
            }
            Action::OpenConnection => {
                if self.conn.is_none() && self.cfg.dials() {
                    self.dial_gen += 1;
                    self.dials.retain(|h| !h.is_finished());
                    match transport::dial(self.cfg.peer.clone(), self.dial_gen, self.shared.tx.clone()) {
                        Ok(h) => self.dials.push(h),
                        Err(reason) => return Some(Event::Disconnected { reason }),
                    }
                }
            }
            Action::CloseConnection { reason } => {
                tracing::info!(name = %self.cfg.name, %reason, "replication: closing the connection");
                if let Some(c) = self.conn.take() {
                    c.close();
                }
            }
            Action::ApplyRecord(b) => {
                if let Err(reason) = e.repl_apply(&b) {
                    tracing::error!(batch = b.batch, %reason, "replication: applying a batch failed");
                    return Some(Event::ApplyFailed { batch: b.batch, reason });
                }
            }
            Action::CompleteFlush { id, replicated } => {
                if let Some(tx) = self.flushes.remove(&id) {
                    let _ = tx.send(replicated);
                }
            }
            Action::PersistState(p) => {
                if let Err(err) = self.shared.state.persist(&p) {
                    tracing::error!(%err, "replication: cannot persist the replication state");
                }
            }
            Action::StateChanged(c) => {
                let line = event_line(&c);
                tracing::info!(target: "strata::replica", "{line}");
                let mut ev = self.shared.events.lock().unwrap_or_else(|p| p.into_inner());
                ev.push(line);
                self.shared.events_cv.notify_all();
            }
            Action::PreserveDivergent { layers, generation } => {
                let kept = e.repl_preserve_divergent(&layers, generation);
                tracing::warn!(?kept, "split brain: divergent data kept as snapshots");
            }
            Action::CommandRefused { command, reason } => {
                tracing::warn!(%command, %reason, "replication: command refused");
                if let Some(tx) = self.admin.pop_front() {
                    let _ = tx.send(Err(reason));
                }
            }
            Action::LookupChunks { req, hashes } => {
                return Some(Event::ChunksLookedUp { req, missing: e.repl_lookup(&hashes) });
            }
            Action::ReadChunks { req, hashes } => {
                return Some(Event::ChunksRead { req, chunks: e.repl_read_chunks(&hashes) });
            }
            Action::ReadMap { req, keys } => return Some(Event::MapRead { req, values: e.repl_read_map(&keys) }),
            Action::ReadCatalogue { req } => {
                return Some(Event::CatalogueRead { req, snapshot: e.repl_catalogue_snapshot() });
            }
            Action::ScanBlocks { req } => return Some(Event::BlocksScanned { req, ranges: e.repl_scan_blocks() }),
            Action::ComputeDigests { req, ranges } => {
                return Some(Event::DigestsComputed { req, digests: e.repl_digests(&ranges) });
            }
        }
        None
    }
}
