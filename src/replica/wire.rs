//! The replication wire format: frames and message encodings.
//!
//! Owns every byte that crosses the replication link. Everything is
//! little-endian. The decoder never panics and never allocates more than
//! the input could describe: counts are checked against the bytes left
//! before any `Vec` is reserved, and every length is bounded.
//!
//! ```text
//! frame (FRAME_OVERHEAD = 36 bytes + payload)
//!   0  magic    u32   0x50525453 ("STRP" as bytes S T R P read LE)
//!   4  version  u16   WIRE_VERSION = 1; any other value is refused
//!   6  type     u16   MessageType
//!   8  seq      u64   per-direction frame number, 1, 2, 3, … (auth.rs)
//!  16  len      u32   payload length, ≤ MAX_PAYLOAD (16 MiB)
//!  20  payload  [len]
//!  20+len mac   [16]  keyed_hash(session_key, bytes 0..20+len)[..16];
//!                     all zero for the unauthenticated handshake frames
//!                     (Hello, Challenge, Response, and Error before auth)
//! ```
//!
//! Payloads (`guid` = 16 bytes, `hash` = 32 bytes, `str` = u16 len + UTF-8):
//!
//! ```text
//! 1  Hello          node_id u64, store_uuid guid, proto_version u16,
//!                   block_size u32, protocol u8 ('A'|'C'), hash_name str
//! 2  Challenge      challenge [32]
//! 3  Response       response hash
//! 4  GenerationIds  purpose u8 (0 handshake, 1 sync-done, 2 state),
//!                   flags u8 (bit0 discard-my-data, bit1 sync-paused),
//!                   role u8, disk u8, current u64, bitmap u64,
//!                   n u8 (≤ 4), history u64 × n, dirty_blocks u64
//! 5  DirtyRanges    more u8, n u32, (layer guid, start u64, len u64) × n
//! 6  Ship           batch u64, record_seq u64, kind u8 (0 live, 1 resync),
//!                   sync_remaining u64, n u32,
//!                   (layer guid, block u64, tag u8 [0 absent, 1 zero,
//!                    2 data + hash]) × n, m u32, (len u32, bytes) × m
//! 7  Want           batch u64, n u32, hash × n
//! 8  Chunks         batch u64, n u32, (hash, len u32, payload) × n
//! 9  Ack            kind u8 (0 received, 1 durable), batch u64,
//!                   record_seq u64
//! 10 Ping, 11 Pong  token u64
//! 12 VerifyRequest  req u64, n u32, (layer guid, start u64, count u32,
//!                   digest hash) × n
//! 13 VerifyDigest   same layout as VerifyRequest (the peer's digests)
//! 14 Error          code u16, reason str
//! 15 Disconnect     code u16, reason str
//! ```
//!
//! Depends on: `format::{Reader, Writer}`, the shared types in `replica`.

use super::{BlockRange, ChunkPayload, Guid, Hash, MapUpdate, MapValue};
use crate::format::{Reader, Truncated, Writer};

pub const MAGIC: u32 = 0x5052_5453;
pub const WIRE_VERSION: u16 = 1;
/// Protocol version exchanged in Hello (semantic version of the messages).
pub const PROTOCOL_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 20;
pub const MAC_LEN: usize = 16;
pub const FRAME_OVERHEAD: usize = HEADER_LEN + MAC_LEN;
/// Largest payload accepted: bounds the memory a peer can make us reserve.
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Longest reason / name string.
pub const MAX_STR: usize = 4096;
/// Most history generation ids carried.
pub const MAX_HISTORY: usize = 4;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 4;
const OFF_TYPE: usize = 6;
const OFF_SEQ: usize = 8;
const OFF_LEN: usize = 16;

/// What was wrong with bytes received from the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u16),
    #[error("unknown message type {0}")]
    UnknownType(u16),
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLarge(u64),
    #[error("frame truncated: have {have} bytes, need {need}")]
    ShortFrame { have: usize, need: usize },
    #[error("trailing bytes after frame: {0}")]
    Trailing(usize),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

fn malformed(what: &'static str) -> impl Fn(Truncated) -> WireError {
    move |t| WireError::Malformed { what, detail: t.to_string() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MessageType {
    Hello = 1,
    Challenge = 2,
    Response = 3,
    GenerationIds = 4,
    DirtyRanges = 5,
    Ship = 6,
    Want = 7,
    Chunks = 8,
    Ack = 9,
    Ping = 10,
    Pong = 11,
    VerifyRequest = 12,
    VerifyDigest = 13,
    Error = 14,
    Disconnect = 15,
}

impl MessageType {
    pub fn from_u16(v: u16) -> Result<MessageType, WireError> {
        use MessageType::*;
        Ok(match v {
            1 => Hello,
            2 => Challenge,
            3 => Response,
            4 => GenerationIds,
            5 => DirtyRanges,
            6 => Ship,
            7 => Want,
            8 => Chunks,
            9 => Ack,
            10 => Ping,
            11 => Pong,
            12 => VerifyRequest,
            13 => VerifyDigest,
            14 => Error,
            15 => Disconnect,
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// Why the generation ids are being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiPurpose {
    Handshake = 0,
    SyncDone = 1,
    StateUpdate = 2,
}

pub const GI_FLAG_DISCARD_MY_DATA: u8 = 1;
pub const GI_FLAG_SYNC_PAUSED: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node_id: u64,
    pub store_uuid: Guid,
    pub proto_version: u16,
    pub block_size: u32,
    pub protocol: u8,
    pub hash_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiMsg {
    pub purpose: GiPurpose,
    pub flags: u8,
    /// 0 Secondary, 1 Primary.
    pub role: u8,
    /// `DiskState` as u8 (status.rs).
    pub disk: u8,
    pub current: u64,
    pub bitmap: u64,
    pub history: Vec<u64>,
    pub dirty_blocks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipKind {
    Live = 0,
    Resync = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ship {
    pub batch: u64,
    /// Journal sequence of the record (live), 0 for resync batches.
    pub record_seq: u64,
    pub kind: ShipKind,
    /// Blocks the source still has to resync (progress on the target).
    pub sync_remaining: u64,
    pub updates: Vec<MapUpdate>,
    pub catalogue: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Received = 0,
    Durable = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeDigest {
    pub layer: Guid,
    pub start_block: u64,
    pub count: u32,
    pub digest: Hash,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Challenge([u8; 32]),
    Response(Hash),
    GenerationIds(GiMsg),
    DirtyRanges { more: bool, ranges: Vec<BlockRange> },
    Ship(Ship),
    Want { batch: u64, hashes: Vec<Hash> },
    Chunks { batch: u64, chunks: Vec<ChunkPayload> },
    Ack { kind: AckKind, batch: u64, record_seq: u64 },
    Ping(u64),
    Pong(u64),
    VerifyRequest { req: u64, ranges: Vec<RangeDigest> },
    VerifyDigest { req: u64, ranges: Vec<RangeDigest> },
    Error { code: u16, reason: String },
    Disconnect { code: u16, reason: String },
}

impl Message {
    pub fn msg_type(&self) -> MessageType {
        match self {
            Message::Hello(_) => MessageType::Hello,
            Message::Challenge(_) => MessageType::Challenge,
            Message::Response(_) => MessageType::Response,
            Message::GenerationIds(_) => MessageType::GenerationIds,
            Message::DirtyRanges { .. } => MessageType::DirtyRanges,
            Message::Ship(_) => MessageType::Ship,
            Message::Want { .. } => MessageType::Want,
            Message::Chunks { .. } => MessageType::Chunks,
            Message::Ack { .. } => MessageType::Ack,
            Message::Ping(_) => MessageType::Ping,
            Message::Pong(_) => MessageType::Pong,
            Message::VerifyRequest { .. } => MessageType::VerifyRequest,
            Message::VerifyDigest { .. } => MessageType::VerifyDigest,
            Message::Error { .. } => MessageType::Error,
            Message::Disconnect { .. } => MessageType::Disconnect,
        }
    }

    /// Encode the payload (without the frame header).
    pub fn encode_payload(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Message::Hello(h) => {
                w.u64(h.node_id).bytes(h.store_uuid.as_bytes()).u16(h.proto_version).u32(h.block_size).u8(h.protocol);
                put_str(&mut w, &h.hash_name);
            }
            Message::Challenge(c) => {
                w.bytes(c);
            }
            Message::Response(r) => {
                w.bytes(r);
            }
            Message::GenerationIds(g) => {
                let n = g.history.len().min(MAX_HISTORY);
                w.u8(g.purpose as u8).u8(g.flags).u8(g.role).u8(g.disk).u64(g.current).u64(g.bitmap).u8(n as u8);
                for h in &g.history[..n] {
                    w.u64(*h);
                }
                w.u64(g.dirty_blocks);
            }
            Message::DirtyRanges { more, ranges } => {
                w.u8(*more as u8).u32(ranges.len() as u32);
                for r in ranges {
                    w.bytes(r.layer.as_bytes()).u64(r.start_block).u64(r.len_blocks);
                }
            }
            Message::Ship(s) => {
                w.u64(s.batch).u64(s.record_seq).u8(s.kind as u8).u64(s.sync_remaining).u32(s.updates.len() as u32);
                for u in &s.updates {
                    w.bytes(u.layer.as_bytes()).u64(u.block_no);
                    match u.value {
                        MapValue::Absent => {
                            w.u8(0);
                        }
                        MapValue::Zero => {
                            w.u8(1);
                        }
                        MapValue::Data(h) => {
                            w.u8(2).bytes(&h);
                        }
                    }
                }
                w.u32(s.catalogue.len() as u32);
                for c in &s.catalogue {
                    w.u32(c.len() as u32).bytes(c);
                }
            }
            Message::Want { batch, hashes } => {
                w.u64(*batch).u32(hashes.len() as u32);
                for h in hashes {
                    w.bytes(h);
                }
            }
            Message::Chunks { batch, chunks } => {
                w.u64(*batch).u32(chunks.len() as u32);
                for c in chunks {
                    w.bytes(&c.hash).u32(c.payload.len() as u32).bytes(&c.payload);
                }
            }
            Message::Ack { kind, batch, record_seq } => {
                w.u8(*kind as u8).u64(*batch).u64(*record_seq);
            }
            Message::Ping(t) | Message::Pong(t) => {
                w.u64(*t);
            }
            Message::VerifyRequest { req, ranges } | Message::VerifyDigest { req, ranges } => {
                w.u64(*req).u32(ranges.len() as u32);
                for r in ranges {
                    w.bytes(r.layer.as_bytes()).u64(r.start_block).u32(r.count).bytes(&r.digest);
                }
            }
            Message::Error { code, reason } | Message::Disconnect { code, reason } => {
                w.u16(*code);
                put_str(&mut w, reason);
            }
        }
        w.buf
    }

    /// Decode a payload of the given type. Rejects trailing bytes so that
    /// two encodings never mean the same message.
    pub fn decode_payload(ty: MessageType, payload: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader::new(payload);
        let m = decode_inner(ty, &mut r)?;
        if r.remaining() != 0 {
            return Err(WireError::Trailing(r.remaining()));
        }
        Ok(m)
    }
}

fn put_str(w: &mut Writer, s: &str) {
    // Truncate on a char boundary: reasons are for humans, never parsed.
    let mut end = s.len().min(MAX_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    w.u16(end as u16).bytes(&s.as_bytes()[..end]);
}

fn get_str(r: &mut Reader, what: &'static str) -> Result<String, WireError> {
    let n = r.u16().map_err(malformed(what))? as usize;
    if n > MAX_STR {
        return Err(WireError::Malformed { what, detail: format!("string of {n} bytes") });
    }
    let b = r.bytes(n).map_err(malformed(what))?;
    String::from_utf8(b.to_vec()).map_err(|_| WireError::Malformed { what, detail: "not UTF-8".into() })
}

/// Read an element count and check that `min_each` bytes per element are
/// actually present, so a hostile count cannot make us reserve memory.
fn get_count(r: &mut Reader, min_each: usize, what: &'static str) -> Result<usize, WireError> {
    let n = r.u32().map_err(malformed(what))? as usize;
    if n.saturating_mul(min_each) > r.remaining() {
        return Err(WireError::Malformed {
            what,
            detail: format!("count {n} exceeds the {} bytes left", r.remaining()),
        });
    }
    Ok(n)
}

fn get_guid(r: &mut Reader, what: &'static str) -> Result<Guid, WireError> {
    Ok(Guid(r.array::<16>().map_err(malformed(what))?))
}

fn decode_inner(ty: MessageType, r: &mut Reader) -> Result<Message, WireError> {
    Ok(match ty {
        MessageType::Hello => {
            let m = malformed("Hello");
            let node_id = r.u64().map_err(&m)?;
            let store_uuid = get_guid(r, "Hello")?;
            let proto_version = r.u16().map_err(&m)?;
            let block_size = r.u32().map_err(&m)?;
            let protocol = r.u8().map_err(&m)?;
            let hash_name = get_str(r, "Hello")?;
            Message::Hello(Hello { node_id, store_uuid, proto_version, block_size, protocol, hash_name })
        }
        MessageType::Challenge => Message::Challenge(r.array().map_err(malformed("Challenge"))?),
        MessageType::Response => Message::Response(r.array().map_err(malformed("Response"))?),
        MessageType::GenerationIds => {
            let m = malformed("GenerationIds");
            let purpose = match r.u8().map_err(&m)? {
                0 => GiPurpose::Handshake,
                1 => GiPurpose::SyncDone,
                2 => GiPurpose::StateUpdate,
                p => return Err(WireError::Malformed { what: "GenerationIds", detail: format!("purpose {p}") }),
            };
            let flags = r.u8().map_err(&m)?;
            let role = r.u8().map_err(&m)?;
            let disk = r.u8().map_err(&m)?;
            let current = r.u64().map_err(&m)?;
            let bitmap = r.u64().map_err(&m)?;
            let n = r.u8().map_err(&m)? as usize;
            if n > MAX_HISTORY {
                return Err(WireError::Malformed { what: "GenerationIds", detail: format!("{n} history ids") });
            }
            let mut history = Vec::with_capacity(n);
            for _ in 0..n {
                history.push(r.u64().map_err(&m)?);
            }
            let dirty_blocks = r.u64().map_err(&m)?;
            Message::GenerationIds(GiMsg { purpose, flags, role, disk, current, bitmap, history, dirty_blocks })
        }
        MessageType::DirtyRanges => {
            let m = malformed("DirtyRanges");
            let more = bool_u8(r.u8().map_err(&m)?, "DirtyRanges")?;
            let n = get_count(r, 32, "DirtyRanges")?;
            let mut ranges = Vec::with_capacity(n);
            for _ in 0..n {
                let layer = get_guid(r, "DirtyRanges")?;
                let start_block = r.u64().map_err(&m)?;
                let len_blocks = r.u64().map_err(&m)?;
                ranges.push(BlockRange { layer, start_block, len_blocks });
            }
            Message::DirtyRanges { more, ranges }
        }
        MessageType::Ship => {
            let m = malformed("Ship");
            let batch = r.u64().map_err(&m)?;
            let record_seq = r.u64().map_err(&m)?;
            let kind = match r.u8().map_err(&m)? {
                0 => ShipKind::Live,
                1 => ShipKind::Resync,
                k => return Err(WireError::Malformed { what: "Ship", detail: format!("kind {k}") }),
            };
            let sync_remaining = r.u64().map_err(&m)?;
            let n = get_count(r, 25, "Ship")?;
            let mut updates = Vec::with_capacity(n);
            for _ in 0..n {
                let layer = get_guid(r, "Ship")?;
                let block_no = r.u64().map_err(&m)?;
                let value = match r.u8().map_err(&m)? {
                    0 => MapValue::Absent,
                    1 => MapValue::Zero,
                    2 => MapValue::Data(r.array().map_err(&m)?),
                    t => return Err(WireError::Malformed { what: "Ship", detail: format!("map tag {t}") }),
                };
                updates.push(MapUpdate { layer, block_no, value });
            }
            let c = get_count(r, 4, "Ship catalogue")?;
            let mut catalogue = Vec::with_capacity(c);
            for _ in 0..c {
                let len = r.u32().map_err(&m)? as usize;
                catalogue.push(r.bytes(len).map_err(&m)?.to_vec());
            }
            Message::Ship(Ship { batch, record_seq, kind, sync_remaining, updates, catalogue })
        }
        MessageType::Want => {
            let batch = r.u64().map_err(malformed("Want"))?;
            let n = get_count(r, 32, "Want")?;
            let mut hashes = Vec::with_capacity(n);
            for _ in 0..n {
                hashes.push(r.array().map_err(malformed("Want"))?);
            }
            Message::Want { batch, hashes }
        }
        MessageType::Chunks => {
            let m = malformed("Chunks");
            let batch = r.u64().map_err(&m)?;
            let n = get_count(r, 36, "Chunks")?;
            let mut chunks = Vec::with_capacity(n);
            for _ in 0..n {
                let hash = r.array().map_err(&m)?;
                let len = r.u32().map_err(&m)? as usize;
                chunks.push(ChunkPayload { hash, payload: r.bytes(len).map_err(&m)?.to_vec() });
            }
            Message::Chunks { batch, chunks }
        }
        MessageType::Ack => {
            let m = malformed("Ack");
            let kind = match r.u8().map_err(&m)? {
                0 => AckKind::Received,
                1 => AckKind::Durable,
                k => return Err(WireError::Malformed { what: "Ack", detail: format!("kind {k}") }),
            };
            Message::Ack { kind, batch: r.u64().map_err(&m)?, record_seq: r.u64().map_err(&m)? }
        }
        MessageType::Ping => Message::Ping(r.u64().map_err(malformed("Ping"))?),
        MessageType::Pong => Message::Pong(r.u64().map_err(malformed("Pong"))?),
        MessageType::VerifyRequest | MessageType::VerifyDigest => {
            let m = malformed("Verify");
            let req = r.u64().map_err(&m)?;
            let n = get_count(r, 60, "Verify")?;
            let mut ranges = Vec::with_capacity(n);
            for _ in 0..n {
                let layer = get_guid(r, "Verify")?;
                let start_block = r.u64().map_err(&m)?;
                let count = r.u32().map_err(&m)?;
                let digest = r.array().map_err(&m)?;
                ranges.push(RangeDigest { layer, start_block, count, digest });
            }
            if ty == MessageType::VerifyRequest {
                Message::VerifyRequest { req, ranges }
            } else {
                Message::VerifyDigest { req, ranges }
            }
        }
        MessageType::Error | MessageType::Disconnect => {
            let code = r.u16().map_err(malformed("Error"))?;
            let reason = get_str(r, "Error")?;
            if ty == MessageType::Error {
                Message::Error { code, reason }
            } else {
                Message::Disconnect { code, reason }
            }
        }
    })
}

fn bool_u8(v: u8, what: &'static str) -> Result<bool, WireError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(WireError::Malformed { what, detail: format!("boolean {v}") }),
    }
}

/// A frame split from the byte stream, not yet authenticated or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub msg_type: u16,
    pub seq: u64,
    /// Header and payload: the bytes the MAC covers.
    pub authed: Vec<u8>,
    pub mac: [u8; MAC_LEN],
}

impl RawFrame {
    pub fn payload(&self) -> &[u8] {
        &self.authed[HEADER_LEN..]
    }
}

/// Build the header + payload bytes of a frame (the MAC is appended by
/// [`seal`]).
pub fn frame_body(msg: &Message, seq: u64) -> Vec<u8> {
    let payload = msg.encode_payload();
    let mut w = Writer::with_capacity(FRAME_OVERHEAD + payload.len());
    w.u32(MAGIC).u16(WIRE_VERSION).u16(msg.msg_type() as u16).u64(seq).u32(payload.len() as u32).bytes(&payload);
    w.buf
}

/// Append the MAC to a frame body.
pub fn seal(mut body: Vec<u8>, mac: [u8; MAC_LEN]) -> Vec<u8> {
    body.extend_from_slice(&mac);
    body
}

/// How many bytes the frame starting at `buf` occupies, once its header is
/// complete: lets a stream reader split frames. `Ok(None)` = need more.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut r = Reader::new(buf);
    let magic = r.u32().map_err(malformed("header"))?;
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = r.u16().map_err(malformed("header"))?;
    if version != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion(version));
    }
    let len = u32::from_le_bytes([buf[OFF_LEN], buf[OFF_LEN + 1], buf[OFF_LEN + 2], buf[OFF_LEN + 3]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge(len as u64));
    }
    Ok(Some(FRAME_OVERHEAD + len))
}

/// Split exactly one complete frame. Never panics on any input.
pub fn parse_frame(buf: &[u8]) -> Result<RawFrame, WireError> {
    let need = match frame_len(buf)? {
        Some(n) => n,
        None => return Err(WireError::ShortFrame { have: buf.len(), need: HEADER_LEN }),
    };
    if buf.len() < need {
        return Err(WireError::ShortFrame { have: buf.len(), need });
    }
    if buf.len() > need {
        return Err(WireError::Trailing(buf.len() - need));
    }
    let msg_type = u16::from_le_bytes([buf[OFF_TYPE], buf[OFF_TYPE + 1]]);
    let mut seq_b = [0u8; 8];
    seq_b.copy_from_slice(&buf[OFF_SEQ..OFF_SEQ + 8]);
    let mut mac = [0u8; MAC_LEN];
    mac.copy_from_slice(&buf[need - MAC_LEN..]);
    debug_assert_eq!(OFF_MAGIC, 0);
    debug_assert_eq!(OFF_VERSION, 4);
    Ok(RawFrame { msg_type, seq: u64::from_le_bytes(seq_b), authed: buf[..need - MAC_LEN].to_vec(), mac })
}

/// Decode the message of an (already authenticated) frame.
pub fn decode_message(frame: &RawFrame) -> Result<Message, WireError> {
    Message::decode_payload(MessageType::from_u16(frame.msg_type)?, frame.payload())
}

/// Encode a message into a complete frame with an all-zero MAC (tests and
/// handshake frames).
pub fn encode_unsealed(msg: &Message, seq: u64) -> Vec<u8> {
    seal(frame_body(msg, seq), [0; MAC_LEN])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn ping_frame_has_golden_bytes() {
        let f = encode_unsealed(&Message::Ping(0x0102), 7);
        assert_eq!(
            hex(&f),
            concat!(
                "53545250",
                "0100",
                "0a00",
                "0700000000000000",
                "08000000",                         // header
                "0201000000000000",                 // token
                "00000000000000000000000000000000"  // mac
            )
        );
    }

    #[test]
    fn ack_frame_has_golden_bytes() {
        let f = encode_unsealed(&Message::Ack { kind: AckKind::Durable, batch: 3, record_seq: 0x10 }, 1);
        assert_eq!(
            hex(&f),
            concat!(
                "53545250",
                "0100",
                "0900",
                "0100000000000000",
                "11000000",
                "01",
                "0300000000000000",
                "1000000000000000",
                "00000000000000000000000000000000"
            )
        );
    }

    #[test]
    fn want_and_ship_payloads_have_golden_bytes() {
        let want = Message::Want { batch: 2, hashes: vec![[0xab; 32]] };
        assert_eq!(hex(&want.encode_payload()), format!("0200000000000000{}{}", "01000000", "ab".repeat(32)));
        let ship = Message::Ship(Ship {
            batch: 1,
            record_seq: 9,
            kind: ShipKind::Live,
            sync_remaining: 0,
            updates: vec![MapUpdate { layer: Guid([0x11; 16]), block_no: 5, value: MapValue::Zero }],
            catalogue: vec![b"x".to_vec()],
        });
        assert_eq!(
            hex(&ship.encode_payload()),
            format!(
                "{}{}{}{}{}{}{}{}{}{}{}",
                "0100000000000000",
                "0900000000000000",
                "00",
                "0000000000000000",
                "01000000",
                "11".repeat(16),
                "0500000000000000",
                "01",
                "01000000",
                "01000000",
                "78"
            )
        );
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = vec![
            Message::Hello(Hello {
                node_id: 1,
                store_uuid: Guid([3; 16]),
                proto_version: 1,
                block_size: 4096,
                protocol: b'C',
                hash_name: "blake3".into(),
            }),
            Message::Challenge([1; 32]),
            Message::Response([2; 32]),
            Message::GenerationIds(GiMsg {
                purpose: GiPurpose::SyncDone,
                flags: 3,
                role: 1,
                disk: 2,
                current: 5,
                bitmap: 6,
                history: vec![7, 8],
                dirty_blocks: 9,
            }),
            Message::DirtyRanges {
                more: true,
                ranges: vec![BlockRange { layer: Guid([4; 16]), start_block: 1, len_blocks: 2 }],
            },
            Message::Chunks { batch: 4, chunks: vec![ChunkPayload { hash: [5; 32], payload: vec![1, 2, 3] }] },
            Message::Pong(3),
            Message::VerifyDigest {
                req: 1,
                ranges: vec![RangeDigest { layer: Guid([1; 16]), start_block: 0, count: 64, digest: [9; 32] }],
            },
            Message::Error { code: 2, reason: "split brain détecté".into() },
            Message::Disconnect { code: 0, reason: String::new() },
        ];
        for m in msgs {
            let f = parse_frame(&encode_unsealed(&m, 1)).unwrap();
            assert_eq!(decode_message(&f).unwrap(), m);
        }
    }

    #[test]
    fn hostile_headers_are_refused_without_panicking() {
        let mut f = encode_unsealed(&Message::Ping(1), 1);
        assert!(matches!(parse_frame(&f[..10]), Err(WireError::ShortFrame { .. })));
        assert!(matches!(parse_frame(&f[..f.len() - 1]), Err(WireError::ShortFrame { .. })));
        f[4] = 9;
        assert_eq!(parse_frame(&f), Err(WireError::UnsupportedVersion(9)));
        let mut g = encode_unsealed(&Message::Ping(1), 1);
        g[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_frame(&g), Err(WireError::TooLarge(_))));
        // A count claiming 2^32-1 hashes in a tiny payload is refused
        // before any allocation.
        let mut p = 0u64.to_le_bytes().to_vec();
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Message::decode_payload(MessageType::Want, &p), Err(WireError::Malformed { .. })));
    }
}
