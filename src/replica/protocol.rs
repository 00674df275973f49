//! The replication state machine: `step(event) -> actions`, no I/O.
//!
//! Owns the per-peer protocol state: role, disk and connection states,
//! generation ids, the dirty set, the handshake, batches in flight both
//! ways, resync, verify, keepalives and reconnect back-off.
//!
//! # Contract with the driver (worker thread)
//!
//! * Feed every [`Event`] to [`Replica::step`], one at a time, and execute
//!   the returned [`Action`]s **in order**; an action must be complete
//!   (durable, for `ApplyRecord` and `PersistState`) before the next one
//!   starts. This is what makes a durable `Ack` follow its apply.
//! * `PersistState` returned from `LocalWrite` must be durable no later
//!   than the record itself (DRBD's activity-log rule): otherwise a crash
//!   could leave a block changed locally but unknown to the dirty set.
//! * Query actions (`LookupChunks`, `ReadChunks`, `ReadMap`, `ScanBlocks`,
//!   `ComputeDigests`) are answered with the matching event carrying the
//!   same `req`. `ReadMap` must reflect every `LocalWrite` already stepped.
//!   Answers for a connection that has since died are ignored.
//! * `Tick(now_ms)` drives keepalives, timeouts, back-off and the resync
//!   rate; call it every ~100 ms.
//!
//! Depends on: `wire`, `auth`, `gi`, `dirty`, `status` and the shared types.

use super::auth::{self, AuthError, Channel};
use super::dirty::{Cover, DirtySet};
use super::gi::{self, Decision, GenIds, Side};
use super::status::{ConnState, DiskState, Object, ReplState, ReplicaStatus, Role, StateChange};
use super::wire::{self, AckKind, GiMsg, GiPurpose, Hello, Message, RangeDigest, Ship, ShipKind};
use super::{
    BLOCK_SIZE, BlockKey, BlockRange, CATALOGUE_KEY, ChunkPayload, Guid, HASH_NAME, Hash, MapUpdate, MapValue, Record,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// DRBD replication protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Protocol {
    /// Asynchronous: a flush is local; the peer holds a consistent prefix.
    A,
    /// Synchronous: a flush completes after the peer's durable ack.
    C,
}

impl Protocol {
    fn byte(self) -> u8 {
        match self {
            Protocol::A => b'A',
            Protocol::C => b'C',
        }
    }
}

/// Static configuration of one replica link.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub node_id: u64,
    pub store_uuid: Guid,
    pub secret: Vec<u8>,
    pub protocol: Protocol,
    pub ping_interval_ms: u64,
    /// Silence longer than this breaks the connection (`Timeout`).
    pub timeout_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Resync rate limit in bytes/s of resync frames; 0 = unlimited.
    pub resync_rate_bytes: u64,
    pub resync_batch_blocks: usize,
    /// Resync batches (including pending map reads) in flight at once.
    pub resync_window: usize,
    /// Refuse peers whose dirty set would exceed this many blocks (bounds
    /// memory against a hostile or corrupt peer).
    pub max_dirty_blocks: u64,
    /// Deterministic randomness for tests (jitter, generation ids,
    /// challenges). `None` in production: challenges must be unpredictable.
    pub seed: Option<u64>,
    pub block_size: u32,
    pub hash_name: String,
}

impl Config {
    pub fn new(name: &str, node_id: u64, secret: &[u8]) -> Config {
        Config {
            name: name.to_string(),
            node_id,
            store_uuid: Guid::BLANK,
            secret: secret.to_vec(),
            protocol: Protocol::C,
            ping_interval_ms: 1000,
            timeout_ms: 6000,
            backoff_min_ms: 100,
            backoff_max_ms: 10_000,
            resync_rate_bytes: 0,
            resync_batch_blocks: 64,
            resync_window: 4,
            max_dirty_blocks: 1 << 24,
            seed: None,
            block_size: BLOCK_SIZE,
            hash_name: HASH_NAME.to_string(),
        }
    }
}

/// What survives a restart: the engine stores it on every `PersistState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedState {
    pub gis: GenIds,
    pub disk: DiskState,
    pub dirty: Vec<BlockRange>,
}

impl Default for PersistedState {
    /// A freshly created store: no generation, not yet consistent.
    fn default() -> Self {
        PersistedState { gis: GenIds::default(), disk: DiskState::Inconsistent, dirty: Vec::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCommand {
    Connect,
    Disconnect,
    PauseSync,
    ResumeSync,
    SetRate { bytes_per_s: u64 },
    Promote { force: bool },
    Demote,
    Verify,
    DiscardMyData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The engine committed a record (after applying it to its maps).
    LocalWrite(Record),
    /// The application asked for a flush; answered by `CompleteFlush`.
    LocalFlush(u64),
    /// One complete frame from the transport (see `wire::frame_len`).
    FrameReceived(Vec<u8>),
    /// The transport connected to the peer.
    Connected,
    /// The transport closed or a connect attempt failed.
    Disconnected {
        reason: String,
    },
    Tick(u64),
    Admin(AdminCommand),
    /// Answer to `LookupChunks`: the hashes the local store lacks.
    ChunksLookedUp {
        req: u64,
        missing: Vec<Hash>,
    },
    /// Answer to `ReadChunks`.
    ChunksRead {
        req: u64,
        chunks: Vec<ChunkPayload>,
    },
    /// Answer to `ReadMap`: the current value of each requested block.
    MapRead {
        req: u64,
        values: Vec<(BlockKey, MapValue)>,
    },
    /// Answer to `ReadCatalogue`: a complete catalogue snapshot.
    CatalogueRead {
        req: u64,
        snapshot: Vec<u8>,
    },
    /// Answer to `ScanBlocks`: every mapped block of the store.
    BlocksScanned {
        req: u64,
        ranges: Vec<BlockRange>,
    },
    /// Answer to `ComputeDigests`.
    DigestsComputed {
        req: u64,
        digests: Vec<RangeDigest>,
    },
    /// The engine could not apply a batch (a chunk failed its hash, …).
    ApplyFailed {
        batch: u64,
        reason: String,
    },
}

/// A batch for the secondary's engine to apply atomically and durably.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyBatch {
    pub batch: u64,
    /// The primary's journal sequence (0 for resync batches).
    pub record_seq: u64,
    pub resync: bool,
    pub updates: Vec<MapUpdate>,
    /// Chunks the store lacked; every other referenced hash is present.
    pub chunks: Vec<ChunkPayload>,
    /// Catalogue changes of a live record, applied in order.
    pub catalogue: Vec<Vec<u8>>,
    /// Resync only: a complete catalogue that replaces the local one.
    pub catalogue_snapshot: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SendFrame(Vec<u8>),
    /// Start (or retry) connecting to the peer.
    OpenConnection,
    CloseConnection {
        reason: String,
    },
    ApplyRecord(ApplyBatch),
    /// `replicated`: the peer durably holds everything up to this flush.
    CompleteFlush {
        id: u64,
        replicated: bool,
    },
    PersistState(PersistedState),
    StateChanged(StateChange),
    /// Keep the victim's divergent layers as snapshots before resync
    /// overwrites them (split-brain resolution never throws data away).
    PreserveDivergent {
        layers: Vec<Guid>,
        generation: u64,
    },
    /// An admin command was refused, with the reason.
    CommandRefused {
        command: String,
        reason: String,
    },
    LookupChunks {
        req: u64,
        hashes: Vec<Hash>,
    },
    ReadChunks {
        req: u64,
        hashes: Vec<Hash>,
    },
    ReadMap {
        req: u64,
        keys: Vec<BlockKey>,
    },
    /// A complete snapshot of the catalogue, for resync.
    ReadCatalogue {
        req: u64,
    },
    ScanBlocks {
        req: u64,
    },
    /// Digests of map ranges; an empty `ranges` means "the whole store, in
    /// ranges of your choice".
    ComputeDigests {
        req: u64,
        ranges: Vec<BlockRange>,
    },
}

/// Error codes carried in Error frames.
pub const CODE_PROTOCOL: u16 = 1;
/// A refusal: the receiver should stay StandAlone too.
pub const CODE_REFUSED: u16 = 2;

/// Largest Chunks payload we build (well under the frame limit).
const CHUNKS_FRAME_BUDGET: usize = wire::MAX_PAYLOAD / 2;
/// How long the ETA rate window is.
const RATE_WINDOW_MS: u64 = 5000;
/// How often cleared dirty bits are written back when nothing else forces it.
const LAZY_PERSIST_MS: u64 = 1000;

/// splitmix64: tiny, seedable, good enough for jitter and ids.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn os_random_u64() -> u64 {
    let b = uuid::Uuid::new_v4();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([7; 8]))
}

#[derive(Debug)]
struct SentBatch {
    kind: ShipKind,
    record_seq: u64,
    blocks: Vec<(BlockKey, u64)>,
    hashes: HashSet<Hash>,
    chunks: HashMap<Hash, Vec<u8>>,
}

#[derive(Debug)]
struct Incoming {
    ship: Ship,
    missing: Option<HashSet<Hash>>,
    chunks: Vec<ChunkPayload>,
}

#[derive(Debug)]
struct VerifyState {
    /// Our digests (source) by (layer, start, count).
    mine: HashMap<(Guid, u64, u32), Hash>,
    /// Target side: the peer's request id and digests.
    peer_req: u64,
    peer: HashMap<(Guid, u64, u32), Hash>,
}

/// Everything that lives exactly as long as one transport connection.
#[derive(Debug)]
struct Session {
    tx: Channel,
    rx: Channel,
    my_challenge: [u8; 32],
    peer_hello: Option<Hello>,
    peer_challenge: Option<[u8; 32]>,
    peer_gi: Option<GiMsg>,
    decision: Option<Decision>,
    established: bool,
    last_rx: u64,
    last_tx: u64,
    // sync setup
    peer_dirty: Vec<BlockRange>,
    peer_dirty_blocks: u64,
    peer_dirty_done: bool,
    scan_req: Option<u64>,
    scan_done: bool,
    sync_started: bool,
    // sending side
    next_batch: u64,
    batches: BTreeMap<u64, SentBatch>,
    acked_batch: u64,
    last_live_batch: u64,
    resync_cursor: Option<BlockKey>,
    pending_reads: HashMap<u64, Vec<(BlockKey, u64)>>,
    chunk_reads: HashMap<u64, (u64, usize)>,
    // receiving side
    last_recv_batch: u64,
    last_applied_batch: u64,
    incoming: BTreeMap<u64, Incoming>,
    lookups: HashMap<u64, u64>,
    wanted: HashMap<Hash, u64>,
    peer_sync_remaining: u64,
    peer_paused: bool,
    // verify
    verify_req: Option<u64>,
    verify: Option<VerifyState>,
    /// Source: SyncDone sent, waiting for the target to adopt our ids.
    awaiting_adopt: bool,
    /// What we told the peer in our handshake GenerationIds: both sides
    /// must decide on exactly the exchanged values.
    sent_side: Option<Side>,
    /// Live batches written during the handshake, sent after the decision.
    queued: Vec<Message>,
}

impl Session {
    fn new(my_challenge: [u8; 32], now: u64) -> Session {
        Session {
            tx: Channel::new(),
            rx: Channel::new(),
            my_challenge,
            peer_hello: None,
            peer_challenge: None,
            peer_gi: None,
            decision: None,
            established: false,
            last_rx: now,
            last_tx: now,
            peer_dirty: Vec::new(),
            peer_dirty_blocks: 0,
            peer_dirty_done: false,
            scan_req: None,
            scan_done: false,
            sync_started: false,
            next_batch: 1,
            batches: BTreeMap::new(),
            acked_batch: 0,
            last_live_batch: 0,
            resync_cursor: None,
            pending_reads: HashMap::new(),
            chunk_reads: HashMap::new(),
            last_recv_batch: 0,
            last_applied_batch: 0,
            incoming: BTreeMap::new(),
            lookups: HashMap::new(),
            wanted: HashMap::new(),
            peer_sync_remaining: 0,
            peer_paused: false,
            verify_req: None,
            verify: None,
            awaiting_adopt: false,
            sent_side: None,
            queued: Vec::new(),
        }
    }

    fn peer_id(&self) -> u64 {
        self.peer_hello.as_ref().map_or(0, |h| h.node_id)
    }

    fn is_source(&self) -> bool {
        matches!(self.decision, Some(Decision::SourceUseBitmap | Decision::SourceFull))
    }
    fn is_target(&self) -> bool {
        matches!(self.decision, Some(Decision::TargetUseBitmap | Decision::TargetFull))
    }
    fn resync_in_flight(&self) -> usize {
        self.pending_reads.len() + self.batches.values().filter(|b| b.kind == ShipKind::Resync).count()
    }
}

/// What a refusal or failure does to the connection.
enum Failure {
    /// Transient: back off and reconnect.
    Retry(ConnState),
    /// A decision or authentication refusal: StandAlone until admin Connect.
    Refuse,
}

/// The last state emitted as event lines, to emit only changes.
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    role: Role,
    disk: DiskState,
    conn: ConnState,
    peer_role: Role,
    repl: ReplState,
    peer_disk: DiskState,
}

/// One replication link's protocol state machine.
#[derive(Debug)]
pub struct Replica {
    cfg: Config,
    key: [u8; 32],
    rng: Rng,
    now: u64,
    role: Role,
    disk: DiskState,
    gis: GenIds,
    dirty: DirtySet,
    new_gi_on_write: bool,
    /// The peer holds our current generation id (adopted it or had it).
    /// Only then does losing it require a new generation: extra ids would
    /// push the common ancestor out of the short history and turn a plain
    /// resync into a false "unrelated data" (a bug DRBD 9.3.3 fixed).
    peer_knows_current: bool,
    want_connection: bool,
    conn: ConnState,
    repl: ReplState,
    peer_role: Role,
    peer_disk: DiskState,
    session: Option<Session>,
    dialing: bool,
    next_attempt_at: Option<u64>,
    backoff_ms: u64,
    discard_my_data: bool,
    paused_user: bool,
    tokens: i64,
    last_refill: u64,
    flushes: VecDeque<(u64, u64)>,
    local_only_writes: bool,
    next_req: u64,
    persist_due: Option<u64>,
    // counters
    sent_bytes: u64,
    received_bytes: u64,
    chunk_bytes_sent: u64,
    chunk_bytes_received: u64,
    rs_total: u64,
    rs_samples: VecDeque<(u64, u64)>,
    last_error: Option<String>,
    shown: Shown,
}

impl Replica {
    /// A replica restarting from its persisted state. Roles are not
    /// persistent (DRBD): every node starts Secondary and StandAlone, and a
    /// disk that was UpToDate is only Consistent until a peer confirms it.
    pub fn new(cfg: Config, persisted: PersistedState) -> Replica {
        let seed = cfg.seed.unwrap_or_else(os_random_u64);
        let disk = match persisted.disk {
            DiskState::UpToDate | DiskState::Consistent => DiskState::Consistent,
            other => other,
        };
        let key = auth::long_term_key(&cfg.secret);
        let backoff_ms = cfg.backoff_min_ms;
        let rate = cfg.resync_rate_bytes as i64;
        Replica {
            rng: Rng(seed ^ cfg.node_id.wrapping_mul(0x1234_5678_9ABC_DEF1)),
            key,
            now: 0,
            role: Role::Secondary,
            disk,
            gis: persisted.gis,
            dirty: DirtySet::from_ranges(&persisted.dirty),
            new_gi_on_write: false,
            // Unknown after a restart: assume yes, the safe direction.
            peer_knows_current: persisted.gis.current != 0,
            want_connection: false,
            conn: ConnState::StandAlone,
            repl: ReplState::Off,
            peer_role: Role::Unknown,
            peer_disk: DiskState::DUnknown,
            session: None,
            dialing: false,
            next_attempt_at: None,
            backoff_ms,
            discard_my_data: false,
            paused_user: false,
            tokens: rate,
            last_refill: 0,
            flushes: VecDeque::new(),
            local_only_writes: false,
            next_req: 1,
            persist_due: None,
            sent_bytes: 0,
            received_bytes: 0,
            chunk_bytes_sent: 0,
            chunk_bytes_received: 0,
            rs_total: 0,
            rs_samples: VecDeque::new(),
            last_error: None,
            shown: Shown {
                role: Role::Secondary,
                disk,
                conn: ConnState::StandAlone,
                peer_role: Role::Unknown,
                repl: ReplState::Off,
                peer_disk: DiskState::DUnknown,
            },
            cfg,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn disk(&self) -> DiskState {
        self.disk
    }
    pub fn connection(&self) -> ConnState {
        self.conn
    }
    pub fn replication(&self) -> ReplState {
        self.repl
    }
    pub fn generation(&self) -> GenIds {
        self.gis
    }
    pub fn dirty_blocks(&self) -> usize {
        self.dirty.len()
    }
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    /// Whether the driver should be trying to reach the peer right now.
    pub fn wants_transport(&self) -> bool {
        self.session.is_none() && self.dialing
    }
    pub fn has_session(&self) -> bool {
        self.session.is_some()
    }

    /// Process one event and return what the driver must do, in order.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::LocalWrite(r) => self.on_local_write(r, &mut out),
            Event::LocalFlush(id) => self.on_local_flush(id, &mut out),
            Event::FrameReceived(bytes) => self.on_frame(&bytes, &mut out),
            Event::Connected => self.on_connected(&mut out),
            Event::Disconnected { reason } => {
                if self.session.is_some() {
                    self.fail(Failure::Retry(ConnState::BrokenPipe), format!("connection lost: {reason}"), &mut out);
                } else if self.dialing {
                    // A failed attempt: keep trying after back-off.
                    self.schedule_retry();
                    self.conn = ConnState::Connecting;
                }
            }
            Event::Tick(now) => self.on_tick(now, &mut out),
            Event::Admin(cmd) => self.on_admin(cmd, &mut out),
            Event::ChunksLookedUp { req, missing } => self.on_lookup(req, missing, &mut out),
            Event::ChunksRead { req, chunks } => self.on_chunks_read(req, chunks, &mut out),
            Event::MapRead { req, values } => self.on_map_read(req, values, None, &mut out),
            Event::CatalogueRead { req, snapshot } => self.on_map_read(req, Vec::new(), Some(snapshot), &mut out),
            Event::BlocksScanned { req, ranges } => self.on_scanned(req, ranges, &mut out),
            Event::DigestsComputed { req, digests } => self.on_digests(req, digests, &mut out),
            Event::ApplyFailed { batch, reason } => {
                if self.session.is_some() {
                    self.fail(
                        Failure::Retry(ConnState::ProtocolError),
                        format!("applying batch {batch} failed: {reason}"),
                        &mut out,
                    );
                }
            }
        }
        self.pump_resync(&mut out);
        self.emit_changes(&mut out);
        out
    }

    // ----------------------------------------------------------------- utils

    fn req(&mut self) -> u64 {
        let r = self.next_req;
        self.next_req += 1;
        r
    }

    fn random32(&mut self) -> [u8; 32] {
        let mut c = [0u8; 32];
        if self.cfg.seed.is_some() {
            for part in c.chunks_mut(8) {
                part.copy_from_slice(&self.rng.next().to_le_bytes());
            }
        } else {
            c[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
            c[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        }
        c
    }

    fn fresh_gi(&mut self) -> u64 {
        loop {
            let v = self.rng.next();
            if v != 0 && v != self.gis.current && v != self.gis.bitmap && !self.gis.history.contains(&v) {
                return v;
            }
        }
    }

    fn send(&mut self, msg: Message, out: &mut Vec<Action>) {
        if let Some(s) = &mut self.session {
            let f = s.tx.seal(&msg);
            s.last_tx = self.now;
            self.sent_bytes += f.len() as u64;
            out.push(Action::SendFrame(f));
        }
    }

    fn persisted(&self) -> PersistedState {
        PersistedState { gis: self.gis, disk: self.disk, dirty: self.dirty.ranges() }
    }

    fn persist(&mut self, out: &mut Vec<Action>) {
        self.persist_due = None;
        out.push(Action::PersistState(self.persisted()));
    }

    fn call(&self, fields: Vec<(&'static str, String)>, out: &mut Vec<Action>) {
        out.push(Action::StateChanged(StateChange {
            verb: "call",
            object: Object::Connection,
            name: self.cfg.name.clone(),
            fields,
        }));
    }

    fn live_sender(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.established && !s.is_target())
    }

    fn schedule_retry(&mut self) {
        let jitter = self.rng.next() % (self.backoff_ms / 2 + 1);
        self.next_attempt_at = Some(self.now + self.backoff_ms + jitter);
        self.backoff_ms = (self.backoff_ms * 2).min(self.cfg.backoff_max_ms);
        self.dialing = false;
    }

    /// Tear down the session. Everything unacknowledged stays dirty.
    fn fail(&mut self, how: Failure, reason: String, out: &mut Vec<Action>) {
        let old = self.session.take();
        let had_session = old.is_some();
        // SyncDone sent but its adoption not confirmed: the peer may hold
        // our current generation already (the frame may have arrived).
        let maybe_adopted = old.as_ref().is_some_and(|s| s.awaiting_adopt);
        self.dirty.uncover_all();
        // Flushes waiting for the peer complete locally: the data is safe
        // on this node and in the dirty set, but not on the peer.
        while let Some((id, _)) = self.flushes.pop_front() {
            out.push(Action::CompleteFlush { id, replicated: false });
        }
        // DRBD: a new generation starts on the first write after a Primary
        // loses its peer, whenever the peer holds (or may hold) our current
        // id: otherwise a peer promoted meanwhile would descend from it and
        // win the next decision over our writes. Not when the peer cannot
        // know it: extra ids would push the common ancestor out of the
        // short history (see `peer_knows_current`).
        if self.role == Role::Primary && (self.peer_knows_current || maybe_adopted) {
            self.new_gi_on_write = true;
        }
        self.repl = ReplState::Off;
        self.peer_role = Role::Unknown;
        self.peer_disk = DiskState::DUnknown;
        self.rs_samples.clear();
        self.dialing = false;
        self.last_error = Some(reason.clone());
        match how {
            Failure::Retry(state) => {
                self.conn = state;
                if self.want_connection {
                    self.schedule_retry();
                } else {
                    self.conn = ConnState::StandAlone;
                }
            }
            Failure::Refuse => {
                self.conn = ConnState::StandAlone;
                self.want_connection = false;
                self.next_attempt_at = None;
            }
        }
        self.call(vec![("failure", reason.clone()), ("connection", self.conn.to_string())], out);
        if had_session {
            out.push(Action::CloseConnection { reason });
        }
        // Persist so cleared covers and a possibly new dirty set survive.
        self.persist(out);
    }

    /// Refuse the connection, telling the peer why (best effort).
    fn refuse(&mut self, reason: String, out: &mut Vec<Action>) {
        self.send(Message::Error { code: CODE_REFUSED, reason: reason.clone() }, out);
        self.fail(Failure::Refuse, reason, out);
    }

    fn protocol_error(&mut self, reason: String, out: &mut Vec<Action>) {
        self.send(Message::Error { code: CODE_PROTOCOL, reason: reason.clone() }, out);
        self.fail(Failure::Retry(ConnState::ProtocolError), reason, out);
    }

    // ------------------------------------------------------------- local I/O

    fn on_local_write(&mut self, rec: Record, out: &mut Vec<Action>) {
        let mut must_persist = false;
        if self.new_gi_on_write && !self.live_sender() {
            // DRBD: a new generation on the first write after the Primary
            // lost its peer (or was promoted without one), not before, so a
            // promotion without writes never causes a split brain.
            let fresh = self.fresh_gi();
            self.gis.new_current(fresh);
            self.new_gi_on_write = false;
            self.peer_knows_current = false;
            must_persist = true;
            let g = self.gis;
            self.call(vec![("new-current-uuid", format!("{:016X}", g.current))], out);
            if self.session.as_ref().is_some_and(|s| s.sent_side.is_some() && !s.established) {
                // The peer decides on the generation we already sent; both
                // sides must decide on the same inputs, so start over.
                self.persist(out);
                self.fail(
                    Failure::Retry(ConnState::NetworkFailure),
                    "generation changed during the handshake; reconnecting".into(),
                    out,
                );
            }
        }
        // During the handshake a write is numbered and queued as a live
        // batch: if the decision lets us send, it goes out in order right
        // after it, exactly as if written a moment later; otherwise the
        // queue dies with the session and the blocks stay dirty.
        let handshaking = self.session.as_ref().is_some_and(|s| !s.established);
        if self.live_sender() || handshaking {
            let batch = {
                let s = self.session.as_mut().expect("live_sender or handshaking checked");
                let b = s.next_batch;
                s.next_batch += 1;
                s.last_live_batch = b;
                b
            };
            let mut blocks = Vec::with_capacity(rec.updates.len() + 1);
            for u in &rec.updates {
                let (stamp, fresh) = self.dirty.mark(u.key(), Cover::Batch(batch));
                must_persist |= fresh;
                blocks.push((u.key(), stamp));
            }
            if !rec.catalogue.is_empty() {
                // A delta makes the peer's catalogue whole only if it was
                // whole before; otherwise a resync snapshot is still owed.
                let owed = match self.dirty.cover_of(&CATALOGUE_KEY) {
                    None => false,
                    Some(Cover::Batch(b)) => !self
                        .session
                        .as_ref()
                        .and_then(|s| s.batches.get(&b))
                        .is_some_and(|sb| sb.kind == ShipKind::Live),
                    Some(_) => true,
                };
                let cover = if owed { Cover::None } else { Cover::Batch(batch) };
                let (stamp, fresh) = self.dirty.mark(CATALOGUE_KEY, cover);
                must_persist |= fresh;
                if !owed {
                    blocks.push((CATALOGUE_KEY, stamp));
                }
            }
            let hashes: HashSet<Hash> = rec
                .updates
                .iter()
                .filter_map(|u| if let MapValue::Data(h) = u.value { Some(h) } else { None })
                .collect();
            let chunks =
                rec.chunks.into_iter().filter(|c| hashes.contains(&c.hash)).map(|c| (c.hash, c.payload)).collect();
            let remaining = self.dirty.uncovered() as u64;
            let ship = Ship {
                batch,
                record_seq: rec.seq,
                kind: ShipKind::Live,
                sync_remaining: remaining,
                updates: rec.updates,
                catalogue: rec.catalogue,
            };
            if let Some(s) = &mut self.session {
                s.batches
                    .insert(batch, SentBatch { kind: ShipKind::Live, record_seq: rec.seq, blocks, hashes, chunks });
            }
            if handshaking {
                if let Some(s) = &mut self.session {
                    s.queued.push(Message::Ship(ship));
                }
            } else {
                self.send(Message::Ship(ship), out);
            }
        } else {
            for u in &rec.updates {
                let (_, fresh) = self.dirty.mark(u.key(), Cover::None);
                must_persist |= fresh;
            }
            if !rec.catalogue.is_empty() {
                let (_, fresh) = self.dirty.mark(CATALOGUE_KEY, Cover::None);
                must_persist |= fresh;
            }
            self.local_only_writes = true;
        }
        if must_persist {
            self.persist(out);
        }
    }

    fn flush_replicated(&self) -> bool {
        self.peer_disk == DiskState::UpToDate && !self.local_only_writes
    }

    fn on_local_flush(&mut self, id: u64, out: &mut Vec<Action>) {
        if self.cfg.protocol == Protocol::A || !self.live_sender() {
            out.push(Action::CompleteFlush { id, replicated: false });
            return;
        }
        let s = self.session.as_ref().expect("live_sender checked");
        if s.acked_batch >= s.last_live_batch {
            out.push(Action::CompleteFlush { id, replicated: self.flush_replicated() });
        } else {
            self.flushes.push_back((id, s.last_live_batch));
        }
    }

    // ------------------------------------------------------------ connection

    fn on_connected(&mut self, out: &mut Vec<Action>) {
        if self.session.is_some() || !self.want_connection {
            out.push(Action::CloseConnection { reason: "not expecting a connection".into() });
            return;
        }
        let ch = self.random32();
        self.session = Some(Session::new(ch, self.now));
        self.dialing = false;
        self.conn = ConnState::Connecting;
        let hello = Hello {
            node_id: self.cfg.node_id,
            store_uuid: self.cfg.store_uuid,
            proto_version: wire::PROTOCOL_VERSION,
            block_size: self.cfg.block_size,
            protocol: self.cfg.protocol.byte(),
            hash_name: self.cfg.hash_name.clone(),
        };
        self.send(Message::Hello(hello), out);
        self.send(Message::Challenge(ch), out);
    }

    fn on_tick(&mut self, now: u64, out: &mut Vec<Action>) {
        let dt = now.saturating_sub(self.now);
        self.now = self.now.max(now);
        // Token bucket: refill by rate × elapsed, burst of one second.
        if self.cfg.resync_rate_bytes > 0 {
            let rate = self.cfg.resync_rate_bytes as i64;
            let add = (self.cfg.resync_rate_bytes.saturating_mul(self.now - self.last_refill) / 1000) as i64;
            self.tokens = (self.tokens + add).min(rate);
        }
        self.last_refill = self.now;
        let _ = dt;
        if let Some(s) = &self.session {
            if self.now.saturating_sub(s.last_rx) >= self.cfg.timeout_ms {
                let ms = self.now - s.last_rx;
                self.fail(Failure::Retry(ConnState::Timeout), format!("no frame from the peer for {ms} ms"), out);
            } else if s.tx.is_keyed() && self.now.saturating_sub(s.last_tx) >= self.cfg.ping_interval_ms {
                // No pings before our Response: the peer only accepts
                // handshake frames until it has authenticated us.
                let t = self.now;
                self.send(Message::Ping(t), out);
            }
        } else if self.want_connection && !self.dialing && self.next_attempt_at.is_none_or(|t| t <= self.now) {
            self.next_attempt_at = None;
            self.dialing = true;
            self.conn = ConnState::Connecting;
            out.push(Action::OpenConnection);
        }
        if self.persist_due.is_some_and(|t| t <= self.now) {
            self.persist(out);
        }
        self.sample_progress();
    }

    fn on_admin(&mut self, cmd: AdminCommand, out: &mut Vec<Action>) {
        let name = format!("{cmd:?}");
        let refuse = |reason: String, out: &mut Vec<Action>| {
            out.push(Action::CommandRefused { command: name.clone(), reason });
        };
        match cmd {
            AdminCommand::Connect => {
                if !self.want_connection {
                    self.want_connection = true;
                    self.last_error = None;
                    self.backoff_ms = self.cfg.backoff_min_ms;
                    self.next_attempt_at = None;
                    self.dialing = true;
                    self.conn = ConnState::Connecting;
                    out.push(Action::OpenConnection);
                }
            }
            AdminCommand::Disconnect => {
                self.want_connection = false;
                if self.session.is_some() {
                    self.send(Message::Disconnect { code: 0, reason: "administrative disconnect".into() }, out);
                }
                // DRBD's graceful outdate: a Secondary that leaves on purpose
                // marks itself Outdated, so the Primary may keep writing.
                if self.role == Role::Secondary && self.disk == DiskState::UpToDate {
                    self.disk = DiskState::Outdated;
                }
                self.fail(Failure::Refuse, "administrative disconnect".into(), out);
                self.last_error = None;
            }
            AdminCommand::PauseSync | AdminCommand::ResumeSync => {
                self.paused_user = cmd == AdminCommand::PauseSync;
                self.update_sync_state();
                self.send_state_update(out);
            }
            AdminCommand::SetRate { bytes_per_s } => {
                self.cfg.resync_rate_bytes = bytes_per_s;
                self.tokens = bytes_per_s as i64;
            }
            AdminCommand::Promote { force } => {
                if self.role == Role::Primary {
                    return;
                }
                if self.peer_role == Role::Primary {
                    return refuse("the peer is Primary; demote it first".into(), out);
                }
                if self.discard_my_data {
                    return refuse("discard-my-data is pending".into(), out);
                }
                if self.session.as_ref().is_some_and(|s| s.is_target()) {
                    return refuse(format!("disk is {} while SyncTarget", self.disk), out);
                }
                if self.disk != DiskState::UpToDate && !force {
                    return refuse(format!("local disk is {}, not UpToDate; promotion needs --force", self.disk), out);
                }
                if self.disk != DiskState::UpToDate {
                    self.disk = DiskState::UpToDate;
                    self.call(vec![("forced-promotion", "yes".into())], out);
                }
                if self.gis.current == 0 {
                    // The very first generation of a new pair.
                    self.gis.current = self.fresh_gi();
                    self.peer_knows_current = false;
                }
                self.role = Role::Primary;
                if !self.live_sender() && self.peer_knows_current {
                    self.new_gi_on_write = true;
                }
                self.persist(out);
                // A new pair that connected before this promotion decided
                // "no sync" (both just created) and left the peer
                // Inconsistent: re-run the handshake, which now sees our
                // first generation and starts the peer's initial sync.
                if self.session.as_ref().is_some_and(|s| s.established) && self.peer_disk == DiskState::Inconsistent {
                    self.fail(
                        Failure::Retry(ConnState::Connecting),
                        "promoted while the peer is Inconsistent: reconnecting to start its sync".into(),
                        out,
                    );
                    return;
                }
                self.send_state_update(out);
            }
            AdminCommand::Demote => {
                self.role = Role::Secondary;
                self.new_gi_on_write = false;
                self.send_state_update(out);
            }
            AdminCommand::Verify => {
                let ok = self.session.as_ref().is_some_and(|s| s.established) && self.repl == ReplState::Established;
                if !ok {
                    return refuse(format!("verify needs replication Established, not {}", self.repl), out);
                }
                let req = self.req();
                if let Some(s) = &mut self.session {
                    s.verify_req = Some(req);
                }
                self.repl = ReplState::VerifyS;
                out.push(Action::ComputeDigests { req, ranges: Vec::new() });
            }
            AdminCommand::DiscardMyData => {
                if self.role == Role::Primary {
                    return refuse("a Primary cannot discard its data; demote first".into(), out);
                }
                self.discard_my_data = true;
                if self.session.is_some() {
                    self.fail(Failure::Retry(ConnState::Connecting), "reconnecting to discard my data".into(), out);
                }
                self.last_error = None;
                self.want_connection = true;
                self.backoff_ms = self.cfg.backoff_min_ms;
                self.next_attempt_at = None;
                self.dialing = true;
                self.conn = ConnState::Connecting;
                out.push(Action::OpenConnection);
            }
        }
    }

    fn update_sync_state(&mut self) {
        let Some(s) = &self.session else { return };
        let paused = self.paused_user || s.peer_paused;
        self.repl = match self.repl {
            ReplState::SyncSource | ReplState::PausedSyncS => {
                if paused {
                    ReplState::PausedSyncS
                } else {
                    ReplState::SyncSource
                }
            }
            ReplState::SyncTarget | ReplState::PausedSyncT => {
                if paused {
                    ReplState::PausedSyncT
                } else {
                    ReplState::SyncTarget
                }
            }
            other => other,
        };
    }

    fn gi_msg(&self, purpose: GiPurpose) -> GiMsg {
        let mut flags = 0;
        if self.discard_my_data {
            flags |= wire::GI_FLAG_DISCARD_MY_DATA;
        }
        if self.paused_user {
            flags |= wire::GI_FLAG_SYNC_PAUSED;
        }
        GiMsg {
            purpose,
            flags,
            role: u8::from(self.role == Role::Primary),
            disk: self.disk.to_u8(),
            current: self.gis.current,
            bitmap: self.gis.bitmap,
            history: self.gis.history.to_vec(),
            dirty_blocks: self.dirty.len() as u64,
        }
    }

    fn my_side(&self) -> Side {
        Side {
            gis: self.gis,
            dirty_blocks: self.dirty.len() as u64,
            primary: self.role == Role::Primary,
            discard_my_data: self.discard_my_data,
            inconsistent: self.disk == DiskState::Inconsistent,
            node_id: self.cfg.node_id,
        }
    }

    fn send_state_update(&mut self, out: &mut Vec<Action>) {
        if self.session.as_ref().is_some_and(|s| s.rx.is_keyed() && s.tx.is_keyed()) {
            let m = self.gi_msg(GiPurpose::StateUpdate);
            self.send(Message::GenerationIds(m), out);
        }
    }

    // ---------------------------------------------------------------- frames

    fn on_frame(&mut self, bytes: &[u8], out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        s.last_rx = self.now;
        self.received_bytes += bytes.len() as u64;
        let frame = match wire::parse_frame(bytes) {
            Ok(f) => f,
            Err(e) => return self.protocol_error(format!("bad frame: {e}"), out),
        };
        if let Err(e) = s.rx.open(&frame) {
            return self.protocol_error(e.to_string(), out);
        }
        let keyed = s.rx.is_keyed();
        let msg = match wire::decode_message(&frame) {
            Ok(m) => m,
            Err(e) => return self.protocol_error(format!("bad message: {e}"), out),
        };
        let handshake_type = matches!(msg, Message::Hello(_) | Message::Challenge(_) | Message::Response(_));
        let always_ok = matches!(msg, Message::Error { .. } | Message::Disconnect { .. });
        if keyed && handshake_type {
            return self.protocol_error(AuthError::Unauthenticated { what: "handshake" }.to_string(), out);
        }
        if !keyed && !handshake_type && !always_ok {
            let what = format!("{:?}", frame.msg_type);
            return self.protocol_error(format!("message type {what} before authentication"), out);
        }
        self.dispatch(msg, out);
    }

    fn dispatch(&mut self, msg: Message, out: &mut Vec<Action>) {
        match msg {
            Message::Hello(h) => self.on_hello(h, out),
            Message::Challenge(c) => self.on_challenge(c, out),
            Message::Response(r) => self.on_response(r, out),
            Message::GenerationIds(g) => self.on_gi(g, out),
            Message::DirtyRanges { more, ranges } => self.on_dirty_ranges(more, ranges, out),
            Message::Ship(s) => self.on_ship(s, out),
            Message::Want { batch, hashes } => self.on_want(batch, hashes, out),
            Message::Chunks { batch, chunks } => self.on_chunks(batch, chunks, out),
            Message::Ack { kind, batch, record_seq } => self.on_ack(kind, batch, record_seq, out),
            Message::Ping(t) => self.send(Message::Pong(t), out),
            Message::Pong(_) => {}
            Message::VerifyRequest { req, ranges } => self.on_verify_request(req, ranges, out),
            Message::VerifyDigest { req, ranges } => self.on_verify_digest(req, ranges, out),
            Message::Error { code, reason } => {
                let r = format!("peer refused: {reason}");
                if code == CODE_REFUSED {
                    self.fail(Failure::Refuse, r, out);
                } else {
                    self.fail(Failure::Retry(ConnState::ProtocolError), r, out);
                }
            }
            Message::Disconnect { reason, .. } => {
                self.fail(Failure::Retry(ConnState::NetworkFailure), format!("peer disconnected: {reason}"), out)
            }
        }
    }

    fn on_hello(&mut self, h: Hello, out: &mut Vec<Action>) {
        let Some(s) = &self.session else { return };
        if s.peer_hello.is_some() {
            return self.protocol_error("second Hello".into(), out);
        }
        let refusal = if h.proto_version != wire::PROTOCOL_VERSION {
            Some(format!("peer speaks protocol version {}, we speak {}", h.proto_version, wire::PROTOCOL_VERSION))
        } else if h.block_size != self.cfg.block_size || h.hash_name != self.cfg.hash_name {
            Some(format!(
                "chunking parameters differ: peer uses block size {} and hash {:?}, we use {} and {:?}",
                h.block_size, h.hash_name, self.cfg.block_size, self.cfg.hash_name
            ))
        } else if h.protocol != self.cfg.protocol.byte() {
            Some(format!(
                "replication protocols differ: peer {}, we {}",
                h.protocol as char,
                self.cfg.protocol.byte() as char
            ))
        } else if h.node_id == self.cfg.node_id {
            Some(AuthError::SameNodeId(h.node_id).to_string())
        } else {
            None
        };
        if let Some(r) = refusal {
            return self.refuse(r, out);
        }
        if let Some(s) = &mut self.session {
            s.peer_hello = Some(h);
        }
    }

    fn on_challenge(&mut self, c: [u8; 32], out: &mut Vec<Action>) {
        let Some(s) = &self.session else { return };
        if s.peer_hello.is_none() || s.peer_challenge.is_some() {
            return self.protocol_error("Challenge out of order".into(), out);
        }
        if auth::ct_eq(&c, &s.my_challenge) {
            return self.refuse(AuthError::ReflectedChallenge.to_string(), out);
        }
        let (me, peer, mine) = (self.cfg.node_id, s.peer_id(), s.my_challenge);
        let resp = auth::response(&self.key, me, peer, &c, &mine);
        let tx_key = auth::session_key(&self.key, me, peer, &mine, &c);
        if let Some(s) = &mut self.session {
            s.peer_challenge = Some(c);
        }
        self.send(Message::Response(resp), out);
        // Everything after our Response is sealed with the session key.
        if let Some(s) = &mut self.session {
            s.tx.set_key(tx_key);
        }
    }

    fn on_response(&mut self, r: Hash, out: &mut Vec<Action>) {
        let Some(s) = &self.session else { return };
        let Some(pc) = s.peer_challenge else {
            return self.protocol_error("Response before Challenge".into(), out);
        };
        let (me, peer, mine) = (self.cfg.node_id, s.peer_id(), s.my_challenge);
        if let Err(e) = auth::verify_response(&self.key, me, peer, &mine, &pc, &r) {
            return self.refuse(e.to_string(), out);
        }
        let rx_key = auth::session_key(&self.key, peer, me, &pc, &mine);
        let side = self.my_side();
        if let Some(s) = &mut self.session {
            s.rx.set_key(rx_key);
            s.sent_side = Some(side);
        }
        let m = self.gi_msg(GiPurpose::Handshake);
        self.send(Message::GenerationIds(m), out);
    }

    // -------------------------------------------------------- the decision

    fn on_gi(&mut self, g: GiMsg, out: &mut Vec<Action>) {
        match g.purpose {
            GiPurpose::Handshake => self.on_handshake_gi(g, out),
            GiPurpose::SyncDone => {
                let Some(s) = &self.session else { return };
                if !s.is_target() {
                    return self.protocol_error("SyncDone while not SyncTarget".into(), out);
                }
                let src = GenIds { current: g.current, bitmap: g.bitmap, history: hist2(&g.history) };
                self.gis.adopt(&src);
                self.peer_knows_current = true;
                self.disk = DiskState::UpToDate;
                // The source took our dirty blocks into its resync; they
                // are identical now.
                self.dirty.clear();
                self.discard_my_data = false;
                if let Some(s) = &mut self.session {
                    s.decision = Some(Decision::NoSync);
                }
                self.repl = ReplState::Established;
                self.peer_disk = DiskState::UpToDate;
                self.persist(out);
                self.call(vec![("resync", "finished".into())], out);
                // Tell the source we adopted its generation.
                self.send_state_update(out);
            }
            GiPurpose::StateUpdate => {
                self.peer_role = if g.role == 1 { Role::Primary } else { Role::Secondary };
                let adopted = self.session.as_ref().is_some_and(|s| s.awaiting_adopt) && g.current == self.gis.current;
                if adopted {
                    // Only now is the bitmap generation history: until the
                    // target confirms, a reconnect must still find it.
                    self.gis.finish_sync_as_source();
                    self.peer_knows_current = true;
                    if let Some(s) = &mut self.session {
                        s.awaiting_adopt = false;
                    }
                    self.persist(out);
                }
                if let Some(s) = &mut self.session {
                    s.peer_paused = g.flags & wire::GI_FLAG_SYNC_PAUSED != 0;
                }
                self.update_sync_state();
            }
        }
    }

    fn on_handshake_gi(&mut self, g: GiMsg, out: &mut Vec<Action>) {
        let Some(s) = &self.session else { return };
        if s.peer_gi.is_some() {
            return self.protocol_error("second handshake GenerationIds".into(), out);
        }
        let peer_id = s.peer_id();
        let Some(me) = s.sent_side else {
            return self.protocol_error("GenerationIds before our own".into(), out);
        };
        let peer = Side {
            gis: GenIds { current: g.current, bitmap: g.bitmap, history: hist2(&g.history) },
            dirty_blocks: g.dirty_blocks,
            primary: g.role == 1,
            discard_my_data: g.flags & wire::GI_FLAG_DISCARD_MY_DATA != 0,
            inconsistent: DiskState::from_u8(g.disk) == DiskState::Inconsistent,
            node_id: peer_id,
        };
        let peer_disk = DiskState::from_u8(g.disk);
        self.peer_role = if peer.primary { Role::Primary } else { Role::Secondary };
        if let Some(s) = &mut self.session {
            s.peer_gi = Some(g);
            s.peer_paused = s.peer_gi.as_ref().is_some_and(|g| g.flags & wire::GI_FLAG_SYNC_PAUSED != 0);
        }
        let (decision, rule) = gi::decide(&me, &peer);
        self.call(
            vec![
                ("uuid-compare", format!("{decision:?}")),
                ("rule", rule.to_string()),
                ("my-current", format!("{:016X}", me.gis.current)),
                ("peer-current", format!("{:016X}", peer.gis.current)),
            ],
            out,
        );
        match decision {
            Decision::SplitBrain => {
                return self.refuse(
                    format!(
                        "split brain detected (rule {rule}): both nodes changed data since their last common \
                         generation; run discard-my-data on the node whose changes should be dropped"
                    ),
                    out,
                );
            }
            Decision::Unrelated => {
                return self.refuse(
                    format!(
                        "unrelated data (rule {rule}): the peer's generations {:016X}/{:016X} share nothing with \
                         ours; wrong peer or re-created store",
                        peer.gis.current, peer.gis.bitmap
                    ),
                    out,
                );
            }
            _ => {}
        }
        if me.primary && peer.primary {
            return self.refuse("both nodes are Primary; demote one".into(), out);
        }
        let i_am_target = matches!(decision, Decision::TargetUseBitmap | Decision::TargetFull);
        let i_am_source = matches!(decision, Decision::SourceUseBitmap | Decision::SourceFull);
        if (i_am_target && me.primary) || (i_am_source && peer.primary) {
            return self.refuse("the Primary would become SyncTarget; demote it first".into(), out);
        }
        if i_am_source && matches!(self.disk, DiskState::Inconsistent | DiskState::Outdated) {
            // DRBD #143: never pick a stale node as source, and never loop.
            return self.refuse(format!("this node would be SyncSource but its disk is {}", self.disk), out);
        }
        if i_am_target && matches!(peer_disk, DiskState::Inconsistent | DiskState::Outdated) {
            return self.refuse(format!("the peer would be SyncSource but its disk is {peer_disk}"), out);
        }
        self.backoff_ms = self.cfg.backoff_min_ms;
        self.last_error = None;
        self.conn = ConnState::Connected;
        let queued = match &mut self.session {
            Some(s) => {
                s.decision = Some(decision);
                s.established = true;
                std::mem::take(&mut s.queued)
            }
            None => Vec::new(),
        };
        if i_am_target {
            // A target does not send live batches (a Primary is never a
            // target); anything queued stays dirty for a later resync.
            if let Some(s) = &mut self.session {
                s.batches.clear();
                s.last_live_batch = 0;
                s.next_batch = 1;
            }
            self.dirty.uncover_all();
        } else {
            for m in queued {
                self.send(m, out);
            }
        }
        match decision {
            Decision::NoSync => {
                if self.disk != DiskState::Inconsistent {
                    self.disk = DiskState::UpToDate;
                }
                self.peer_disk = if peer_disk == DiskState::Inconsistent { peer_disk } else { DiskState::UpToDate };
                self.repl = ReplState::Established;
                self.new_gi_on_write = false;
                self.peer_knows_current = true;
                self.local_only_writes = false;
                if self.dirty.is_empty() {
                    self.gis.bitmap = 0;
                }
                self.persist(out);
            }
            Decision::SourceUseBitmap | Decision::SourceFull => {
                self.disk = DiskState::UpToDate;
                self.peer_disk = DiskState::Inconsistent;
                self.repl = ReplState::SyncSource;
                self.new_gi_on_write = false;
                if decision == Decision::SourceFull {
                    let req = self.req();
                    if let Some(s) = &mut self.session {
                        s.scan_req = Some(req);
                    }
                    out.push(Action::ScanBlocks { req });
                } else if let Some(s) = &mut self.session {
                    s.scan_done = true;
                }
                self.update_sync_state();
            }
            Decision::TargetUseBitmap | Decision::TargetFull => {
                if self.discard_my_data {
                    out.push(Action::PreserveDivergent {
                        layers: self.dirty.layers().into_iter().filter(|l| !l.is_blank()).collect(),
                        generation: self.gis.current,
                    });
                }
                // Persist Inconsistent before the first resync write lands:
                // a crash mid-resync must not come back claiming UpToDate.
                self.disk = DiskState::Inconsistent;
                self.peer_disk = DiskState::UpToDate;
                self.repl = ReplState::SyncTarget;
                self.persist(out);
                if decision == Decision::TargetFull {
                    let req = self.req();
                    if let Some(s) = &mut self.session {
                        s.scan_req = Some(req);
                    }
                    out.push(Action::ScanBlocks { req });
                } else {
                    let ranges = self.dirty.ranges();
                    self.send_dirty_ranges(ranges, out);
                }
                self.update_sync_state();
            }
            Decision::SplitBrain | Decision::Unrelated => {}
        }
    }

    fn send_dirty_ranges(&mut self, ranges: Vec<BlockRange>, out: &mut Vec<Action>) {
        // 32 bytes per range; stay far below the frame limit.
        let per = (wire::MAX_PAYLOAD / 2) / 32;
        let mut parts: Vec<Vec<BlockRange>> = ranges.chunks(per).map(|c| c.to_vec()).collect();
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let n = parts.len();
        for (i, p) in parts.into_iter().enumerate() {
            self.send(Message::DirtyRanges { more: i + 1 < n, ranges: p }, out);
        }
    }

    fn on_scanned(&mut self, req: u64, ranges: Vec<BlockRange>, out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        if s.scan_req != Some(req) {
            return;
        }
        s.scan_req = None;
        s.scan_done = true;
        if s.is_target() {
            // Full sync as target: every block we hold must be overwritten
            // or removed, so they all go into the source's resync set.
            let mut all = ranges;
            all.extend(self.dirty.ranges());
            all.push(BlockRange { layer: CATALOGUE_KEY.layer, start_block: CATALOGUE_KEY.block_no, len_blocks: 1 });
            self.send_dirty_ranges(all, out);
        } else {
            self.dirty.add_ranges(&ranges);
            self.dirty.mark(CATALOGUE_KEY, Cover::None);
            self.maybe_start_sync(out);
        }
    }

    fn on_dirty_ranges(&mut self, more: bool, ranges: Vec<BlockRange>, out: &mut Vec<Action>) {
        let limit = self.cfg.max_dirty_blocks;
        let Some(s) = &mut self.session else { return };
        if !s.is_source() || s.peer_dirty_done {
            return self.protocol_error("unexpected DirtyRanges".into(), out);
        }
        for r in &ranges {
            s.peer_dirty_blocks = s.peer_dirty_blocks.saturating_add(r.len_blocks);
        }
        if s.peer_dirty_blocks > limit {
            let n = s.peer_dirty_blocks;
            return self.protocol_error(format!("peer dirty set of {n} blocks exceeds the limit {limit}"), out);
        }
        s.peer_dirty.extend(ranges);
        if !more {
            s.peer_dirty_done = true;
            self.maybe_start_sync(out);
        }
    }

    fn maybe_start_sync(&mut self, out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        if !s.is_source() || s.sync_started || !s.scan_done || !s.peer_dirty_done {
            return;
        }
        s.sync_started = true;
        let peer = std::mem::take(&mut s.peer_dirty);
        // Resync the union of both dirty sets (DRBD): the target's own
        // changes are rolled back to our values.
        self.dirty.add_ranges(&peer);
        self.rs_total = self.dirty.uncovered() as u64;
        self.rs_samples.clear();
        self.persist(out);
        self.call(vec![("resync", "started".into()), ("rs-total", self.rs_total.to_string())], out);
        self.check_sync_done(out);
    }

    // ---------------------------------------------------------------- resync

    fn pump_resync(&mut self, out: &mut Vec<Action>) {
        loop {
            if self.repl != ReplState::SyncSource {
                return;
            }
            let Some(s) = &self.session else { return };
            if !s.sync_started || s.resync_in_flight() >= self.cfg.resync_window.max(1) {
                return;
            }
            if self.cfg.resync_rate_bytes > 0 && self.tokens <= 0 {
                return;
            }
            let cursor = s.resync_cursor;
            let picked = self.dirty.next_uncovered(cursor, self.cfg.resync_batch_blocks.max(1));
            if picked.is_empty() {
                return;
            }
            let req = self.req();
            for (k, stamp) in &picked {
                self.dirty.cover(k, *stamp, Cover::Reading(req));
            }
            let cursor = picked.last().map(|(k, _)| *k);
            let (cat, picked): (Vec<_>, Vec<_>) = picked.into_iter().partition(|(k, _)| *k == CATALOGUE_KEY);
            if let Some(s) = &mut self.session {
                s.resync_cursor = cursor;
            }
            if let Some(&(k, stamp)) = cat.first() {
                let creq = self.req();
                self.dirty.cover(&k, stamp, Cover::Reading(creq));
                if let Some(s) = &mut self.session {
                    s.pending_reads.insert(creq, cat);
                }
                out.push(Action::ReadCatalogue { req: creq });
            }
            if !picked.is_empty() {
                let keys: Vec<BlockKey> = picked.iter().map(|(k, _)| *k).collect();
                if let Some(s) = &mut self.session {
                    s.pending_reads.insert(req, picked);
                }
                out.push(Action::ReadMap { req, keys });
            }
        }
    }

    fn on_map_read(
        &mut self,
        req: u64,
        values: Vec<(BlockKey, MapValue)>,
        snapshot: Option<Vec<u8>>,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = &mut self.session else { return };
        let Some(picked) = s.pending_reads.remove(&req) else { return };
        let vals: HashMap<BlockKey, MapValue> = values.into_iter().collect();
        let batch = s.next_batch;
        let mut updates = Vec::new();
        let mut blocks = Vec::new();
        for (k, stamp) in picked {
            // A block rewritten since the read was requested is skipped: its
            // live batch (sent earlier) carries a newer value, and shipping
            // this possibly older read after it would roll it back.
            if self.dirty.stamp(&k) != Some(stamp) {
                continue;
            }
            if k == CATALOGUE_KEY && snapshot.is_some() {
                self.dirty.cover(&k, stamp, Cover::Batch(batch));
                blocks.push((k, stamp));
                continue;
            }
            match vals.get(&k) {
                Some(v) => {
                    self.dirty.cover(&k, stamp, Cover::Batch(batch));
                    updates.push(MapUpdate { layer: k.layer, block_no: k.block_no, value: *v });
                    blocks.push((k, stamp));
                }
                None => {
                    self.dirty.cover(&k, stamp, Cover::None);
                }
            }
        }
        let catalogue: Vec<Vec<u8>> =
            if blocks.iter().any(|(k, _)| *k == CATALOGUE_KEY) { snapshot.into_iter().collect() } else { Vec::new() };
        if blocks.is_empty() {
            return self.check_sync_done(out);
        }
        let hashes: HashSet<Hash> =
            updates.iter().filter_map(|u| if let MapValue::Data(h) = u.value { Some(h) } else { None }).collect();
        let remaining = self.dirty.uncovered() as u64;
        if let Some(s) = &mut self.session {
            s.next_batch += 1;
            s.batches.insert(
                batch,
                SentBatch { kind: ShipKind::Resync, record_seq: 0, blocks, hashes, chunks: HashMap::new() },
            );
        }
        let before = self.sent_bytes;
        self.send(
            Message::Ship(Ship {
                batch,
                record_seq: 0,
                kind: ShipKind::Resync,
                sync_remaining: remaining,
                updates,
                catalogue,
            }),
            out,
        );
        self.tokens -= (self.sent_bytes - before) as i64;
    }

    fn check_sync_done(&mut self, out: &mut Vec<Action>) {
        let Some(s) = &self.session else { return };
        if !s.is_source() || !s.sync_started || s.resync_in_flight() > 0 {
            return;
        }
        if self.dirty.uncovered() > 0 {
            return;
        }
        self.local_only_writes = false;
        if let Some(s) = &mut self.session {
            s.decision = Some(Decision::NoSync);
            s.awaiting_adopt = true;
        }
        self.repl = ReplState::Established;
        self.peer_disk = DiskState::UpToDate;
        self.rs_samples.clear();
        self.persist(out);
        // The target adopts our ids as they will be once the bitmap
        // generation is retired, so its bitmap id starts at 0.
        let mut m = self.gi_msg(GiPurpose::SyncDone);
        let mut finished = self.gis;
        finished.finish_sync_as_source();
        m.bitmap = finished.bitmap;
        m.history = finished.history.to_vec();
        self.send(Message::GenerationIds(m), out);
        self.call(vec![("resync", "finished".into())], out);
    }

    // ------------------------------------------------------- receiving data

    fn on_ship(&mut self, ship: Ship, out: &mut Vec<Action>) {
        let proto_a = self.cfg.protocol == Protocol::A;
        let Some(s) = &mut self.session else { return };
        if !s.established || s.is_source() {
            return self.protocol_error("Ship while not a receiver".into(), out);
        }
        if ship.batch != s.last_recv_batch + 1 {
            let (want, got) = (s.last_recv_batch + 1, ship.batch);
            return self.protocol_error(format!("batch {got} out of order, expected {want}"), out);
        }
        s.last_recv_batch = ship.batch;
        if ship.kind == ShipKind::Resync {
            s.peer_sync_remaining = ship.sync_remaining;
        }
        let batch = ship.batch;
        let hashes: Vec<Hash> = {
            let mut seen = HashSet::new();
            ship.updates
                .iter()
                .filter_map(|u| if let MapValue::Data(h) = u.value { Some(h) } else { None })
                .filter(|h| seen.insert(*h))
                .collect()
        };
        let empty = hashes.is_empty();
        s.incoming
            .insert(batch, Incoming { missing: empty.then(HashSet::new), ship: ship.clone(), chunks: Vec::new() });
        if proto_a {
            self.send(Message::Ack { kind: AckKind::Received, batch, record_seq: ship.record_seq }, out);
        }
        if empty {
            self.try_apply(out);
        } else {
            let req = self.req();
            if let Some(s) = &mut self.session {
                s.lookups.insert(req, batch);
            }
            out.push(Action::LookupChunks { req, hashes });
        }
    }

    fn on_lookup(&mut self, req: u64, missing: Vec<Hash>, out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        let Some(batch) = s.lookups.remove(&req) else { return };
        let mut want = HashSet::new();
        for h in missing {
            // An earlier batch already asked for it; in-order apply means
            // it will be stored before this batch is applied.
            match s.wanted.get(&h) {
                Some(b) if *b < batch => {}
                _ => {
                    s.wanted.insert(h, batch);
                    want.insert(h);
                }
            }
        }
        let list: Vec<Hash> = want.iter().copied().collect();
        if let Some(inc) = s.incoming.get_mut(&batch) {
            inc.missing = Some(want);
        }
        if !list.is_empty() {
            self.send(Message::Want { batch, hashes: list }, out);
        }
        self.try_apply(out);
    }

    fn on_chunks(&mut self, batch: u64, chunks: Vec<ChunkPayload>, out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        let Some(inc) = s.incoming.get_mut(&batch) else {
            return self.protocol_error(format!("Chunks for unknown batch {batch}"), out);
        };
        let Some(missing) = inc.missing.as_mut() else {
            return self.protocol_error(format!("Chunks for batch {batch} before Want"), out);
        };
        for c in chunks {
            if missing.remove(&c.hash) {
                self.chunk_bytes_received += c.payload.len() as u64;
                inc.chunks.push(c);
            }
        }
        self.try_apply(out);
    }

    /// Apply ready batches strictly in order: the consistent-prefix rule.
    fn try_apply(&mut self, out: &mut Vec<Action>) {
        loop {
            let Some(s) = &mut self.session else { return };
            let Some(entry) = s.incoming.first_entry() else { return };
            let batch = *entry.key();
            let ready = batch == s.last_applied_batch + 1 && entry.get().missing.as_ref().is_some_and(|m| m.is_empty());
            if !ready {
                return;
            }
            let inc = entry.remove();
            s.last_applied_batch = batch;
            s.wanted.retain(|_, b| *b != batch);
            let record_seq = inc.ship.record_seq;
            let resync = inc.ship.kind == ShipKind::Resync;
            let (catalogue, catalogue_snapshot) =
                if resync { (Vec::new(), inc.ship.catalogue.into_iter().next()) } else { (inc.ship.catalogue, None) };
            out.push(Action::ApplyRecord(ApplyBatch {
                batch,
                record_seq,
                resync,
                updates: inc.ship.updates,
                chunks: inc.chunks,
                catalogue,
                catalogue_snapshot,
            }));
            self.send(Message::Ack { kind: AckKind::Durable, batch, record_seq }, out);
        }
    }

    // --------------------------------------------------------- sending data

    fn on_want(&mut self, batch: u64, hashes: Vec<Hash>, out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        let Some(sb) = s.batches.get(&batch) else {
            return self.protocol_error(format!("Want for unknown batch {batch}"), out);
        };
        if let Some(h) = hashes.iter().find(|h| !sb.hashes.contains(*h)) {
            let hx: String = h[..4].iter().map(|b| format!("{b:02x}")).collect();
            return self.protocol_error(format!("Want for hash {hx}… not in batch {batch}"), out);
        }
        let mut have = Vec::new();
        let mut read = Vec::new();
        for h in hashes {
            match sb.chunks.get(&h) {
                Some(p) => have.push(ChunkPayload { hash: h, payload: p.clone() }),
                None => read.push(h),
            }
        }
        if !read.is_empty() {
            let req = self.req();
            if let Some(s) = &mut self.session {
                s.chunk_reads.insert(req, (batch, read.len()));
            }
            out.push(Action::ReadChunks { req, hashes: read });
        }
        self.send_chunks(batch, have, out);
    }

    fn on_chunks_read(&mut self, req: u64, chunks: Vec<ChunkPayload>, out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        let Some((batch, n)) = s.chunk_reads.remove(&req) else { return };
        if chunks.len() != n {
            // The peer would wait forever for the missing ones.
            return self
                .protocol_error(format!("{} chunk(s) of batch {batch} missing locally", n - chunks.len().min(n)), out);
        }
        self.send_chunks(batch, chunks, out);
    }

    fn send_chunks(&mut self, batch: u64, chunks: Vec<ChunkPayload>, out: &mut Vec<Action>) {
        let resync =
            self.session.as_ref().and_then(|s| s.batches.get(&batch)).is_some_and(|b| b.kind == ShipKind::Resync);
        let mut part: Vec<ChunkPayload> = Vec::new();
        let mut size = 0usize;
        let flush = |part: &mut Vec<ChunkPayload>, this: &mut Replica, out: &mut Vec<Action>| {
            if part.is_empty() {
                return;
            }
            let bytes: u64 = part.iter().map(|c| c.payload.len() as u64).sum();
            this.chunk_bytes_sent += bytes;
            let before = this.sent_bytes;
            this.send(Message::Chunks { batch, chunks: std::mem::take(part) }, out);
            if resync {
                this.tokens -= (this.sent_bytes - before) as i64;
            }
        };
        for c in chunks {
            size += c.payload.len() + 36;
            part.push(c);
            if size >= CHUNKS_FRAME_BUDGET {
                flush(&mut part, self, out);
                size = 0;
            }
        }
        flush(&mut part, self, out);
    }

    fn on_ack(&mut self, kind: AckKind, batch: u64, _record_seq: u64, out: &mut Vec<Action>) {
        if kind == AckKind::Received {
            return;
        }
        let Some(s) = &mut self.session else { return };
        if batch <= s.acked_batch || batch >= s.next_batch {
            let (acked, next) = (s.acked_batch, s.next_batch);
            return self.protocol_error(format!("Ack for batch {batch} outside ({acked}, {next})"), out);
        }
        s.acked_batch = batch;
        let done: Vec<u64> = s.batches.range(..=batch).map(|(b, _)| *b).collect();
        let mut resync_acked = false;
        let mut cleared = false;
        for b in done {
            if let Some(sb) = s.batches.remove(&b) {
                resync_acked |= sb.kind == ShipKind::Resync;
                let _ = sb.record_seq;
                for (k, stamp) in sb.blocks {
                    cleared |= self.dirty.confirm(&k, stamp);
                }
            }
        }
        // Flushes whose last live batch is now durable on the peer.
        let replicated = self.flush_replicated();
        while let Some(&(id, need)) = self.flushes.front() {
            if need > batch {
                break;
            }
            self.flushes.pop_front();
            out.push(Action::CompleteFlush { id, replicated });
        }
        if resync_acked {
            // The resume point of an interrupted resync is the persisted
            // dirty set, so write it back after every resync batch.
            self.persist(out);
        } else if cleared && self.persist_due.is_none() {
            self.persist_due = Some(self.now + LAZY_PERSIST_MS);
        }
        self.check_sync_done(out);
    }

    // ---------------------------------------------------------------- verify

    fn on_digests(&mut self, req: u64, digests: Vec<RangeDigest>, out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        if s.verify_req != Some(req) {
            return;
        }
        s.verify_req = None;
        let mine: HashMap<(Guid, u64, u32), Hash> =
            digests.iter().map(|d| ((d.layer, d.start_block, d.count), d.digest)).collect();
        if self.repl == ReplState::VerifyS {
            s.verify = Some(VerifyState { mine, peer_req: 0, peer: HashMap::new() });
            self.send(Message::VerifyRequest { req, ranges: digests }, out);
        } else if self.repl == ReplState::VerifyT {
            let v = s.verify.take();
            let (peer_req, peer) = v.map(|v| (v.peer_req, v.peer)).unwrap_or_default();
            let mismatches = peer.iter().filter(|(k, d)| mine.get(*k) != Some(*d)).count();
            self.send(Message::VerifyDigest { req: peer_req, ranges: digests }, out);
            self.repl = ReplState::Established;
            self.call(vec![("verify", "finished".into()), ("ov-mismatches", mismatches.to_string())], out);
        }
    }

    fn on_verify_request(&mut self, req: u64, ranges: Vec<RangeDigest>, out: &mut Vec<Action>) {
        if self.repl != ReplState::Established {
            return self.protocol_error(format!("VerifyRequest while {}", self.repl), out);
        }
        let my_req = self.req();
        let Some(s) = &mut self.session else { return };
        let wanted: Vec<BlockRange> = ranges
            .iter()
            .map(|d| BlockRange { layer: d.layer, start_block: d.start_block, len_blocks: d.count as u64 })
            .collect();
        s.verify_req = Some(my_req);
        s.verify = Some(VerifyState {
            mine: HashMap::new(),
            peer_req: req,
            peer: ranges.iter().map(|d| ((d.layer, d.start_block, d.count), d.digest)).collect(),
        });
        self.repl = ReplState::VerifyT;
        out.push(Action::ComputeDigests { req: my_req, ranges: wanted });
    }

    fn on_verify_digest(&mut self, _req: u64, ranges: Vec<RangeDigest>, out: &mut Vec<Action>) {
        let Some(s) = &mut self.session else { return };
        let Some(v) = s.verify.take() else {
            return self.protocol_error("VerifyDigest without a verify".into(), out);
        };
        let theirs: HashMap<(Guid, u64, u32), Hash> =
            ranges.iter().map(|d| ((d.layer, d.start_block, d.count), d.digest)).collect();
        let mut bad = Vec::new();
        for (k, d) in &v.mine {
            if theirs.get(k) != Some(d) {
                bad.push(BlockRange { layer: k.0, start_block: k.1, len_blocks: k.2 as u64 });
            }
        }
        bad.sort();
        // DRBD: mismatches are marked out-of-sync and reported, never
        // repaired silently; the next resync (reconnect) sends them.
        self.dirty.add_ranges(&bad);
        self.repl = ReplState::Established;
        if !bad.is_empty() {
            self.persist(out);
        }
        let list: Vec<String> =
            bad.iter().take(8).map(|r| format!("{}+{}@{}", r.start_block, r.len_blocks, r.layer)).collect();
        self.call(
            vec![("verify", "finished".into()), ("ov-mismatches", bad.len().to_string()), ("ranges", list.join(","))],
            out,
        );
    }

    // ---------------------------------------------------------------- status

    fn to_go(&self) -> u64 {
        match &self.session {
            Some(s) if s.is_source() && s.sync_started => {
                let live: HashSet<u64> =
                    s.batches.iter().filter(|(_, b)| b.kind == ShipKind::Live).map(|(n, _)| *n).collect();
                self.dirty.to_go(|b| live.contains(&b)) as u64
            }
            Some(s) if s.is_target() => s.peer_sync_remaining,
            _ => 0,
        }
    }

    fn sample_progress(&mut self) {
        if !matches!(self.repl, ReplState::SyncSource | ReplState::SyncTarget) {
            return;
        }
        let tg = self.to_go();
        self.rs_total = self.rs_total.max(tg);
        self.rs_samples.push_back((self.now, tg));
        while self.rs_samples.front().is_some_and(|(t, _)| self.now - t > RATE_WINDOW_MS) {
            self.rs_samples.pop_front();
        }
    }

    /// A status snapshot (DRBD names, Ganeti's `degraded`).
    pub fn status(&self) -> ReplicaStatus {
        let syncing = matches!(
            self.repl,
            ReplState::SyncSource | ReplState::SyncTarget | ReplState::PausedSyncS | ReplState::PausedSyncT
        );
        let to_go = self.to_go();
        // The catalogue entry of the dirty set is not a data block.
        let dirty_data = self.dirty.len() - usize::from(self.dirty.contains(&CATALOGUE_KEY));
        let out_of_sync_blocks =
            if self.session.as_ref().is_some_and(|s| s.is_target()) { to_go } else { dirty_data as u64 };
        let done = syncing.then(|| {
            let total = self.rs_total.max(to_go);
            if total == 0 { 100.0 } else { ((total - to_go) as f64 * 1000.0 / total as f64).round() / 10.0 }
        });
        // ETA from the recent window (DRBD's dbdt1), not the whole-run mean.
        let eta = match (self.rs_samples.front(), self.rs_samples.back()) {
            (Some(&(t0, g0)), Some(&(t1, g1))) if syncing && t1 > t0 && g0 > g1 => {
                Some(to_go * (t1 - t0) / (g0 - g1) / 1000)
            }
            _ => None,
        };
        let suspended = match (self.paused_user, self.session.as_ref().is_some_and(|s| s.peer_paused)) {
            (false, false) => "no",
            (true, false) => "user",
            (false, true) => "peer",
            (true, true) => "user,peer",
        };
        ReplicaStatus {
            name: self.cfg.name.clone(),
            node_id: self.cfg.node_id,
            peer_node_id: self.session.as_ref().and_then(|s| s.peer_hello.as_ref().map(|h| h.node_id)),
            role: self.role,
            peer_role: self.peer_role,
            disk: self.disk,
            peer_disk: self.peer_disk,
            connection: self.conn,
            replication: self.repl,
            protocol: format!("{:?}", self.cfg.protocol),
            out_of_sync: out_of_sync_blocks * self.cfg.block_size as u64,
            sent: self.sent_bytes,
            received: self.received_bytes,
            chunk_bytes_sent: self.chunk_bytes_sent,
            chunk_bytes_received: self.chunk_bytes_received,
            done,
            eta,
            resync_suspended: suspended.to_string(),
            degraded: self.conn != ConnState::Connected || self.disk != DiskState::UpToDate,
            generation: format!(
                "{:016X}:{:016X}:{:016X}:{:016X}",
                self.gis.current, self.gis.bitmap, self.gis.history[0], self.gis.history[1]
            ),
            last_error: self.last_error.clone(),
        }
    }

    /// Emit one event line per object whose state changed in this step.
    fn emit_changes(&mut self, out: &mut Vec<Action>) {
        let now = Shown {
            role: self.role,
            disk: self.disk,
            conn: self.conn,
            peer_role: self.peer_role,
            repl: self.repl,
            peer_disk: self.peer_disk,
        };
        if now == self.shown {
            return;
        }
        let name = self.cfg.name.clone();
        let mut line = |object, fields: Vec<(&'static str, String)>| {
            out.push(Action::StateChanged(StateChange { verb: "change", object, name: name.clone(), fields }));
        };
        if now.role != self.shown.role {
            line(Object::Resource, vec![("role", now.role.to_string())]);
        }
        if now.disk != self.shown.disk {
            line(Object::Device, vec![("disk", now.disk.to_string())]);
        }
        if now.conn != self.shown.conn || now.peer_role != self.shown.peer_role {
            line(Object::Connection, vec![("connection", now.conn.to_string()), ("role", now.peer_role.to_string())]);
        }
        if now.repl != self.shown.repl || now.peer_disk != self.shown.peer_disk {
            let mut f = vec![("replication", now.repl.to_string()), ("peer-disk", now.peer_disk.to_string())];
            if let Some(d) = self.status().done {
                f.push(("done", format!("{d:.1}")));
            }
            line(Object::PeerDevice, f);
        }
        self.shown = now;
    }
}

fn hist2(h: &[u64]) -> [u64; 2] {
    [h.first().copied().unwrap_or(0), h.get(1).copied().unwrap_or(0)]
}
