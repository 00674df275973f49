//! A deterministic simulation of two replicas, for tests (raft-rs's
//! `harness/src/network.rs` in spirit).
//!
//! Owns: an in-memory engine model per node (layer→block→hash maps and a
//! chunk set), a seeded network with drop / delay / reorder / duplicate /
//! partition faults, and crash-restart (a restarted node keeps its engine,
//! which applies durably, and only the replica state it last received in
//! `PersistState`). Time advances in fixed ticks; everything is a pure
//! function of the seed.
//!
//! The network models TCP honestly: one connection at a time, bytes of a
//! dead connection are never delivered on a new one, a closed connection
//! is noticed by the peer (FIN/RST) unless a partition swallows it, and a
//! partition is silent, so only keepalive timeouts detect it. Drop,
//! duplicate and reorder faults model a broken transport; the protocol must
//! notice them (sequence numbers) and resync, never apply out of order.
//!
//! Depends on the rest of `replica` only. Not used by production code.

use super::protocol::{Action, AdminCommand, ApplyBatch, Config, Event, PersistedState, Protocol, Replica};
use super::status::{ConnState, DiskState, ReplState, Role, event_line};
use super::wire::RangeDigest;
use super::{BlockKey, ChunkPayload, Guid, Hash, MapUpdate, MapValue, Record, rle_encode};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Blocks per digest range in verify.
pub const VERIFY_RANGE: u64 = 64;
pub const TICK_MS: u64 = 10;

/// The in-memory stand-in for the engine.
#[derive(Debug, Clone, Default)]
pub struct EngineModel {
    pub map: BTreeMap<BlockKey, MapValue>,
    pub chunks: HashMap<Hash, Vec<u8>>,
    pub catalogue: Vec<Vec<u8>>,
    pub next_seq: u64,
    /// Journal sequence of the last live record applied (secondary).
    pub applied_record_seq: u64,
    pub preserved: Vec<(Vec<Guid>, u64)>,
    pub resync_updates_applied: u64,
    pub live_updates_applied: u64,
}

impl EngineModel {
    fn set(&mut self, u: &MapUpdate) {
        match u.value {
            MapValue::Absent => {
                self.map.remove(&u.key());
            }
            v => {
                self.map.insert(u.key(), v);
            }
        }
    }

    /// Apply a batch atomically: verify chunk hashes and that every
    /// referenced chunk exists before changing anything.
    pub fn apply(&mut self, b: &ApplyBatch) -> Result<(), String> {
        for c in &b.chunks {
            if *blake3::hash(&c.payload).as_bytes() != c.hash {
                return Err("chunk payload does not match its hash".into());
            }
        }
        let incoming: HashSet<Hash> = b.chunks.iter().map(|c| c.hash).collect();
        for u in &b.updates {
            if let MapValue::Data(h) = u.value
                && !self.chunks.contains_key(&h)
                && !incoming.contains(&h)
            {
                return Err("map update names a chunk that is not present".into());
            }
        }
        for c in &b.chunks {
            self.chunks.insert(c.hash, c.payload.clone());
        }
        for u in &b.updates {
            self.set(u);
        }
        self.catalogue.extend(b.catalogue.iter().cloned());
        if let Some(snap) = &b.catalogue_snapshot {
            self.catalogue = decode_catalogue(snap)?;
        }
        if b.resync {
            self.resync_updates_applied += b.updates.len() as u64;
        } else {
            self.live_updates_applied += b.updates.len() as u64;
            self.applied_record_seq = self.applied_record_seq.max(b.record_seq);
        }
        Ok(())
    }

    fn digest(&self, layer: Guid, start: u64, count: u32) -> Hash {
        let mut h = blake3::Hasher::new();
        let lo = BlockKey { layer, block_no: start };
        let hi = BlockKey { layer, block_no: start.saturating_add(count as u64) };
        for (k, v) in self.map.range(lo..hi) {
            h.update(&k.block_no.to_le_bytes());
            match v {
                MapValue::Absent => h.update(&[0]),
                MapValue::Zero => h.update(&[1]),
                MapValue::Data(d) => h.update(&[2]).update(d),
            };
        }
        *h.finalize().as_bytes()
    }

    /// Answer a query action, as the engine would.
    pub fn answer(&self, a: &Action) -> Option<Event> {
        Some(match a {
            Action::LookupChunks { req, hashes } => Event::ChunksLookedUp {
                req: *req,
                missing: hashes.iter().filter(|h| !self.chunks.contains_key(*h)).copied().collect(),
            },
            Action::ReadChunks { req, hashes } => Event::ChunksRead {
                req: *req,
                chunks: hashes
                    .iter()
                    .filter_map(|h| self.chunks.get(h).map(|p| ChunkPayload { hash: *h, payload: p.clone() }))
                    .collect(),
            },
            Action::ReadMap { req, keys } => Event::MapRead {
                req: *req,
                values: keys.iter().map(|k| (*k, self.map.get(k).copied().unwrap_or(MapValue::Absent))).collect(),
            },
            Action::ReadCatalogue { req } => {
                Event::CatalogueRead { req: *req, snapshot: encode_catalogue(&self.catalogue) }
            }
            Action::ScanBlocks { req } => {
                Event::BlocksScanned { req: *req, ranges: rle_encode(self.map.keys().copied()) }
            }
            Action::ComputeDigests { req, ranges } => {
                let mut digests = Vec::new();
                if ranges.is_empty() {
                    let starts: std::collections::BTreeSet<(Guid, u64)> =
                        self.map.keys().map(|k| (k.layer, k.block_no / VERIFY_RANGE * VERIFY_RANGE)).collect();
                    for (layer, start) in starts {
                        let count = VERIFY_RANGE as u32;
                        digests.push(RangeDigest {
                            layer,
                            start_block: start,
                            count,
                            digest: self.digest(layer, start, count),
                        });
                    }
                } else {
                    for r in ranges {
                        let count = r.len_blocks.min(u32::MAX as u64) as u32;
                        digests.push(RangeDigest {
                            layer: r.layer,
                            start_block: r.start_block,
                            count,
                            digest: self.digest(r.layer, r.start_block, count),
                        });
                    }
                }
                Event::DigestsComputed { req: *req, digests }
            }
            _ => return None,
        })
    }
}

/// Test content: deterministic bytes per content number.
pub fn content(n: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    for i in 0..64u32 {
        v.extend_from_slice(&(n.wrapping_mul(2_654_435_761) ^ i).to_le_bytes());
    }
    v
}

pub fn content_hash(n: u32) -> Hash {
    *blake3::hash(&content(n)).as_bytes()
}

/// A write to be made: block → Absent / Zero / content number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum W {
    Absent,
    Zero,
    Data(u32),
}

/// One simulated host.
#[derive(Debug)]
pub struct Node {
    pub cfg: Config,
    pub replica: Replica,
    pub engine: EngineModel,
    pub persisted: PersistedState,
    pub alive: bool,
    /// The records this node wrote, in order (its local history).
    pub history: Vec<Record>,
    /// (flush id, replicated, last record seq when the flush was asked).
    pub flushes_done: Vec<(u64, bool, u64)>,
    pending_flushes: HashMap<u64, u64>,
    pub lines: Vec<String>,
    pub refusals: Vec<String>,
    /// Keep this node Primary across restarts (re-promote when possible).
    pub wants_primary: bool,
    next_flush: u64,
}

impl Node {
    fn new(cfg: Config) -> Node {
        let persisted = PersistedState::default();
        Node {
            replica: Replica::new(cfg.clone(), persisted.clone()),
            cfg,
            engine: EngineModel::default(),
            persisted,
            alive: true,
            history: Vec::new(),
            flushes_done: Vec::new(),
            pending_flushes: HashMap::new(),
            lines: Vec::new(),
            refusals: Vec::new(),
            wants_primary: false,
            next_flush: 1,
        }
    }
}

/// Fault probabilities in per-mille, and the delay range.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetFaults {
    pub drop: u32,
    pub duplicate: u32,
    pub reorder: u32,
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
}

#[derive(Debug)]
struct InFlight {
    at: u64,
    to: usize,
    link: u64,
    bytes: Vec<u8>,
}

/// Two nodes and the network between them.
#[derive(Debug)]
pub struct Sim {
    pub nodes: [Node; 2],
    pub now: u64,
    pub faults: NetFaults,
    pub partitioned: bool,
    /// Frames and chunk payload bytes put on the wire, per sender.
    pub frames_sent: [u64; 2],
    rng: u64,
    link: Option<u64>,
    next_link: u64,
    in_flight: VecDeque<InFlight>,
    last_at: [u64; 2],
    deferred: Vec<(usize, Event)>,
    /// A gracefully closed link whose FIN has not reached the peer yet.
    fin_pending: Option<u64>,
}

pub fn test_config(name: &str, node_id: u64, seed: u64, protocol: Protocol) -> Config {
    let mut c = Config::new(name, node_id, b"correct horse battery staple");
    c.protocol = protocol;
    c.seed = Some(seed.wrapping_mul(31).wrapping_add(node_id));
    c.ping_interval_ms = 100;
    c.timeout_ms = 500;
    c.backoff_min_ms = 20;
    c.backoff_max_ms = 400;
    c.resync_batch_blocks = 16;
    c
}

impl Sim {
    pub fn new(seed: u64, protocol: Protocol) -> Sim {
        Sim::with_configs(seed, [test_config("r0", 1, seed, protocol), test_config("r0", 2, seed, protocol)])
    }

    pub fn with_configs(seed: u64, cfgs: [Config; 2]) -> Sim {
        let [a, b] = cfgs;
        Sim {
            nodes: [Node::new(a), Node::new(b)],
            now: 0,
            faults: NetFaults::default(),
            partitioned: false,
            frames_sent: [0; 2],
            rng: seed ^ 0x5eed,
            link: None,
            next_link: 1,
            in_flight: VecDeque::new(),
            last_at: [0; 2],
            deferred: Vec::new(),
            fin_pending: None,
        }
    }

    fn rand(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rand() % 1000 < per_mille as u64
    }

    /// The usual start: node 0 is the (forced) first Primary, both connect.
    pub fn start_pair(&mut self) {
        self.nodes[0].wants_primary = true;
        self.admin(0, AdminCommand::Promote { force: true });
        self.admin(0, AdminCommand::Connect);
        self.admin(1, AdminCommand::Connect);
    }

    /// Step a node with an event and execute its actions, answering engine
    /// queries at once (like a worker that serves them inline).
    pub fn deliver(&mut self, i: usize, ev: Event) {
        let mut queue = VecDeque::from([ev]);
        while let Some(ev) = queue.pop_front() {
            if !self.nodes[i].alive {
                return;
            }
            let acts = self.nodes[i].replica.step(ev);
            for a in acts {
                if let Some(e) = self.nodes[i].engine.answer(&a) {
                    queue.push_back(e);
                    continue;
                }
                match a {
                    Action::SendFrame(f) => self.transmit(i, f),
                    Action::OpenConnection => {}
                    Action::CloseConnection { .. } => self.close_link(i),
                    Action::ApplyRecord(b) => {
                        if let Err(e) = self.nodes[i].engine.apply(&b) {
                            queue.push_back(Event::ApplyFailed { batch: b.batch, reason: e });
                        }
                    }
                    Action::CompleteFlush { id, replicated } => {
                        let n = &mut self.nodes[i];
                        let seq = n.pending_flushes.remove(&id).unwrap_or(0);
                        n.flushes_done.push((id, replicated, seq));
                    }
                    Action::PersistState(p) => self.nodes[i].persisted = p,
                    Action::StateChanged(c) => {
                        let line = event_line(&c);
                        self.nodes[i].lines.push(format!("{} {line}", self.now));
                    }
                    Action::PreserveDivergent { layers, generation } => {
                        self.nodes[i].engine.preserved.push((layers, generation))
                    }
                    Action::CommandRefused { command, reason } => {
                        self.nodes[i].refusals.push(format!("{command}: {reason}"))
                    }
                    // Queries were answered above.
                    Action::LookupChunks { .. }
                    | Action::ReadChunks { .. }
                    | Action::ReadMap { .. }
                    | Action::ReadCatalogue { .. }
                    | Action::ScanBlocks { .. }
                    | Action::ComputeDigests { .. } => {}
                }
            }
        }
    }

    fn transmit(&mut self, from: usize, f: Vec<u8>) {
        self.frames_sent[from] += 1;
        let Some(link) = self.link else { return };
        if self.partitioned || self.chance(self.faults.drop) {
            return;
        }
        let to = 1 - from;
        let span = self.faults.delay_max_ms.saturating_sub(self.faults.delay_min_ms);
        let delay = self.faults.delay_min_ms + if span > 0 { self.rand() % (span + 1) } else { 0 };
        // TCP keeps order: a frame never overtakes an earlier one, unless
        // the reorder fault says so.
        let mut at = (self.now + delay).max(self.last_at[from]);
        if self.chance(self.faults.reorder) {
            at = self.now;
        } else {
            self.last_at[from] = at;
        }
        let dup = self.chance(self.faults.duplicate);
        if dup {
            self.in_flight.push_back(InFlight { at, to, link, bytes: f.clone() });
        }
        self.in_flight.push_back(InFlight { at, to, link, bytes: f });
    }

    /// A graceful close: frames already sent still arrive, then the FIN.
    fn close_link(&mut self, by: usize) {
        let Some(link) = self.link.take() else { return };
        let to = 1 - by;
        self.in_flight.retain(|f| f.to == to);
        if !self.partitioned && self.nodes[to].alive {
            let at = self.last_at[by].max(self.now);
            self.in_flight.push_back(InFlight { at, to, link, bytes: Vec::new() });
            self.fin_pending = Some(link);
        } else {
            self.in_flight.clear();
        }
    }

    pub fn admin(&mut self, i: usize, cmd: AdminCommand) {
        self.deliver(i, Event::Admin(cmd));
    }

    /// Advance time by one tick.
    pub fn tick(&mut self) {
        self.now += TICK_MS;
        for (i, ev) in std::mem::take(&mut self.deferred) {
            self.deliver(i, ev);
        }
        // Deliver due frames in send order (stable), dropping dead links.
        loop {
            let pos = self.in_flight.iter().position(|f| f.at <= self.now);
            let Some(pos) = pos else { break };
            let Some(f) = self.in_flight.remove(pos) else { break };
            if self.partitioned {
                continue;
            }
            if self.fin_pending == Some(f.link) {
                if f.bytes.is_empty() {
                    self.fin_pending = None;
                    self.deliver(f.to, Event::Disconnected { reason: "closed by peer".into() });
                } else {
                    self.deliver(f.to, Event::FrameReceived(f.bytes));
                }
                continue;
            }
            if Some(f.link) != self.link {
                continue;
            }
            self.deliver(f.to, Event::FrameReceived(f.bytes));
        }
        // Establish a connection when both sides want one.
        if self.link.is_none()
            && self.fin_pending.is_none()
            && !self.partitioned
            && self.nodes.iter().all(|n| n.alive && n.replica.wants_transport())
        {
            self.link = Some(self.next_link);
            self.next_link += 1;
            self.last_at = [self.now; 2];
            self.deliver(0, Event::Connected);
            self.deliver(1, Event::Connected);
        }
        for i in 0..2 {
            let now = self.now;
            self.deliver(i, Event::Tick(now));
            let n = &self.nodes[i];
            if n.alive
                && n.wants_primary
                && n.replica.role() != Role::Primary
                && n.replica.disk() == DiskState::UpToDate
            {
                self.admin(i, AdminCommand::Promote { force: false });
            }
        }
    }

    pub fn run_ms(&mut self, ms: u64) {
        for _ in 0..ms / TICK_MS {
            self.tick();
        }
    }

    /// Node `i` writes one record (if it is Primary and alive).
    pub fn write(&mut self, i: usize, writes: &[(BlockKey, W)]) -> Option<u64> {
        let n = &mut self.nodes[i];
        if !n.alive || n.replica.role() != Role::Primary {
            return None;
        }
        n.engine.next_seq += 1;
        let seq = n.engine.next_seq;
        let mut updates = Vec::new();
        let mut chunks = Vec::new();
        for (k, w) in writes {
            let value = match w {
                W::Absent => MapValue::Absent,
                W::Zero => MapValue::Zero,
                W::Data(c) => {
                    let h = content_hash(*c);
                    if let std::collections::hash_map::Entry::Vacant(e) = n.engine.chunks.entry(h) {
                        e.insert(content(*c));
                        chunks.push(ChunkPayload { hash: h, payload: content(*c) });
                    }
                    MapValue::Data(h)
                }
            };
            let u = MapUpdate { layer: k.layer, block_no: k.block_no, value };
            n.engine.set(&u);
            updates.push(u);
        }
        let rec = Record { seq, updates, chunks, catalogue: vec![format!("rec {seq}").into_bytes()] };
        n.engine.catalogue.extend(rec.catalogue.iter().cloned());
        n.history.push(rec.clone());
        self.deliver(i, Event::LocalWrite(rec));
        Some(seq)
    }

    /// A random write of 1–3 blocks among `blocks` blocks of two layers,
    /// with content drawn from `contents` distinct values (dedup hits).
    pub fn random_write(&mut self, i: usize, blocks: u64, contents: u32) -> Option<u64> {
        let n = 1 + self.rand() % 3;
        let mut w = Vec::new();
        for _ in 0..n {
            let layer = layer(1 + (self.rand() % 2) as u8);
            let block_no = self.rand() % blocks;
            let v = match self.rand() % 10 {
                0 => W::Absent,
                1 => W::Zero,
                _ => W::Data((self.rand() % contents as u64) as u32),
            };
            w.push((BlockKey { layer, block_no }, v));
        }
        self.write(i, &w)
    }

    pub fn flush(&mut self, i: usize) -> Option<u64> {
        let n = &mut self.nodes[i];
        if !n.alive || n.replica.role() != Role::Primary {
            return None;
        }
        let id = n.next_flush;
        n.next_flush += 1;
        n.pending_flushes.insert(id, n.engine.next_seq);
        self.deliver(i, Event::LocalFlush(id));
        Some(id)
    }

    /// Kill node `i`. `silent`: the peer gets no FIN (power loss, or a
    /// partition at the same time); otherwise it sees the RST.
    pub fn crash(&mut self, i: usize, silent: bool) {
        if !self.nodes[i].alive {
            return;
        }
        self.nodes[i].alive = false;
        if self.link.is_some() {
            if silent {
                // Nothing reaches the survivor: it must time out.
                self.link = None;
                self.in_flight.clear();
            } else {
                // RST: unsent data is lost, the peer notices at once.
                self.link = None;
                self.in_flight.clear();
                self.fin_pending = None;
                self.deferred.push((1 - i, Event::Disconnected { reason: "connection reset".into() }));
            }
        }
        self.nodes[i].pending_flushes.clear();
    }

    /// Restart node `i` from its engine and its last persisted state.
    pub fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.alive {
            return;
        }
        n.alive = true;
        n.replica = Replica::new(n.cfg.clone(), n.persisted.clone());
        self.admin(i, AdminCommand::Connect);
    }

    pub fn partition(&mut self, on: bool) {
        self.partitioned = on;
        if on {
            self.in_flight.clear();
            self.fin_pending = None;
        }
    }

    /// Both alive, Connected, Established, UpToDate, nothing dirty or
    /// in flight.
    pub fn in_sync(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.alive
                && n.replica.connection() == ConnState::Connected
                && n.replica.replication() == ReplState::Established
                && n.replica.disk() == DiskState::UpToDate
                && n.replica.dirty_blocks() == 0
        }) && self.in_flight.is_empty()
    }

    /// Run until in sync (true) or `max_ms` passed (false).
    pub fn settle(&mut self, max_ms: u64) -> bool {
        let end = self.now + max_ms;
        while self.now < end {
            self.tick();
            if self.in_sync() {
                // One more round trip so trailing acks land.
                self.run_ms(50);
                if self.in_sync() {
                    return true;
                }
            }
        }
        false
    }

    pub fn lines(&self, i: usize) -> String {
        self.nodes[i].lines.join("\n")
    }
}

pub fn layer(n: u8) -> Guid {
    Guid([n; 16])
}

/// The map after applying the first `k` records of `history` to nothing.
pub fn state_after(history: &[Record], k: usize) -> BTreeMap<BlockKey, MapValue> {
    let mut m = BTreeMap::new();
    for r in &history[..k.min(history.len())] {
        for u in &r.updates {
            match u.value {
                MapValue::Absent => {
                    m.remove(&u.key());
                }
                v => {
                    m.insert(u.key(), v);
                }
            }
        }
    }
    m
}

/// Is `map` equal to the state after some prefix of `history`?
pub fn is_prefix_state(history: &[Record], map: &BTreeMap<BlockKey, MapValue>) -> Option<usize> {
    let mut m = BTreeMap::new();
    if &m == map {
        return Some(0);
    }
    for (i, r) in history.iter().enumerate() {
        for u in &r.updates {
            match u.value {
                MapValue::Absent => {
                    m.remove(&u.key());
                }
                v => {
                    m.insert(u.key(), v);
                }
            }
        }
        if &m == map {
            return Some(i + 1);
        }
    }
    None
}

fn encode_catalogue(rows: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in rows {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

fn decode_catalogue(mut b: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut rows = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err("truncated catalogue snapshot".into());
        }
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if b.len() < 4 + n {
            return Err("truncated catalogue snapshot".into());
        }
        rows.push(b[4..4 + n].to_vec());
        b = &b[4 + n..];
    }
    Ok(rows)
}
