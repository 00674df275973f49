//! The metadata journal: an append-only log of map updates and chunk
//! placements, replayed after a crash on top of the last checkpoint.
//!
//! Owns `STORE/journal/*.wal`. Each file starts at a sequence number
//! (`first_seq`, also its name in hex); records carry consecutive sequence
//! numbers. A record is written with one `pwrite` and is valid only if its
//! magic, length and checksum agree, so a torn tail is detected and ignored
//! (it was never acknowledged as durable: the commit protocol only reports
//! a write durable after `fdatasync` of the record).
//!
//! ```text
//! file header (64 bytes)
//!   0  magic      [8]  "STRJRNL\0"
//!   8  version    u32  = 1
//!  12  reserved   u32
//!  16  store_uuid [16]
//!  32  first_seq  u64
//!  40  reserved   [20]
//!  60  checksum   u32  checksum32(bytes 0..60)
//! record
//!   0  magic      u32  0x4345524A ("JREC")
//!   4  len        u32  payload length (≤ MAX_PAYLOAD)
//!   8  seq        u64
//!  16  checksum   u32  checksum32(bytes 0..16 ++ payload)
//!  20  reserved   u32  = 0
//!  24  payload    [len] entries, see [`Entry`]
//! ```
//!
//! Depends on: `format`, `guid`. Lock order: the writer mutex is a leaf.

use crate::fault::{self, Faults, Point};
use crate::format::{self, Reader, Writer, checksum32};
use crate::guid::Guid;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub const FILE_MAGIC: &[u8; 8] = b"STRJRNL\0";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const RECORD_MAGIC: u32 = 0x4345_524A;
pub const RECORD_HEADER_LEN: usize = 24;
/// Upper bound on one record's payload; larger lengths on disk are corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;

const TAG_CHUNK_PUT: u8 = 1;
const TAG_MAP_RUN: u8 = 2;
const TAG_MAP_TRUNCATE: u8 = 3;
const TAG_CHUNK_FREE: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("journal {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("journal {path}: {detail}")]
    Corrupt { path: String, detail: String },
    /// The journal may hold a partial record: no further appends are safe.
    #[error("journal {path}: {detail}")]
    Fatal { path: String, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.display().to_string(), source }
}

/// A placed chunk: where its record lives in the packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPut {
    pub chunk_id: u64,
    pub pack_id: u32,
    pub offset: u64,
    pub stored_len: u32,
    /// The dedup signature (low 64 bits of MurmurHash3 x64-128).
    pub murmur: u64,
}

/// One decoded journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    ChunkPut(ChunkPut),
    /// Set `entries.len()` consecutive map entries of `layer` from `start_block`.
    MapRun {
        layer: Guid,
        start_block: u64,
        entries: Vec<u64>,
    },
    /// Drop every entry of `layer` at or past `from_block` (shrink).
    MapTruncate {
        layer: Guid,
        from_block: u64,
    },
    /// The chunk's space was reclaimed (GC); its id is free.
    ChunkFree {
        chunk_id: u64,
    },
}

/// Entries being assembled into one record (one atomic unit on replay).
#[derive(Default)]
pub struct Batch {
    w: Writer,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }
    /// The encoded entries (replication decodes them with [`decode_payload`]).
    pub fn payload(&self) -> &[u8] {
        &self.w.buf
    }
    pub fn chunk_put(&mut self, p: &ChunkPut) -> &mut Self {
        self.w.u8(TAG_CHUNK_PUT).u64(p.chunk_id).u32(p.pack_id).u64(p.offset).u32(p.stored_len).u64(p.murmur);
        self
    }
    pub fn map_run(&mut self, layer: Guid, start_block: u64, entries: &[u64]) -> &mut Self {
        self.w.u8(TAG_MAP_RUN).bytes(layer.as_bytes()).u64(start_block).u32(entries.len() as u32);
        for e in entries {
            self.w.u64(*e);
        }
        self
    }
    pub fn map_truncate(&mut self, layer: Guid, from_block: u64) -> &mut Self {
        self.w.u8(TAG_MAP_TRUNCATE).bytes(layer.as_bytes()).u64(from_block);
        self
    }
    pub fn chunk_free(&mut self, chunk_id: u64) -> &mut Self {
        self.w.u8(TAG_CHUNK_FREE).u64(chunk_id);
        self
    }
}

/// Decode a record payload into entries.
pub fn decode_payload(payload: &[u8]) -> std::result::Result<Vec<Entry>, String> {
    let mut r = Reader::new(payload);
    let mut out = Vec::new();
    let e = |t: format::Truncated| t.to_string();
    while r.remaining() > 0 {
        match r.u8().map_err(e)? {
            TAG_CHUNK_PUT => out.push(Entry::ChunkPut(ChunkPut {
                chunk_id: r.u64().map_err(e)?,
                pack_id: r.u32().map_err(e)?,
                offset: r.u64().map_err(e)?,
                stored_len: r.u32().map_err(e)?,
                murmur: r.u64().map_err(e)?,
            })),
            TAG_MAP_RUN => {
                let layer = Guid(r.array().map_err(e)?);
                let start_block = r.u64().map_err(e)?;
                let n = r.u32().map_err(e)? as usize;
                if n > r.remaining() / 8 {
                    return Err(format!("map run of {n} entries exceeds the record"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(r.u64().map_err(e)?);
                }
                out.push(Entry::MapRun { layer, start_block, entries });
            }
            TAG_MAP_TRUNCATE => {
                out.push(Entry::MapTruncate { layer: Guid(r.array().map_err(e)?), from_block: r.u64().map_err(e)? })
            }
            TAG_CHUNK_FREE => out.push(Entry::ChunkFree { chunk_id: r.u64().map_err(e)? }),
            t => return Err(format!("unknown entry tag {t} at payload offset {}", r.pos() - 1)),
        }
    }
    Ok(out)
}

fn file_name(first_seq: u64) -> String {
    format!("{first_seq:016x}.wal")
}

fn encode_header(store_uuid: Guid, first_seq: u64) -> Vec<u8> {
    let mut w = Writer::with_capacity(HEADER_LEN);
    w.bytes(FILE_MAGIC).u32(VERSION).u32(0).bytes(store_uuid.as_bytes()).u64(first_seq).zeros(20);
    let c = checksum32(&w.buf);
    w.u32(c);
    w.buf
}

struct Active {
    file: File,
    path: PathBuf,
    len: u64,
    /// Files rotated out whose last records may not be durable yet.
    dirty: bool,
}

/// The journal writer.
pub struct Journal {
    dir: PathBuf,
    store_uuid: Guid,
    active: Mutex<Active>,
    /// The last sequence number assigned (0 = none yet).
    last_seq: AtomicU64,
    /// The first sequence number of the active file.
    first_seq: AtomicU64,
    faults: Arc<Faults>,
}

impl Journal {
    /// Start a new journal file whose first record will be `next_seq`.
    pub fn start(dir: &Path, store_uuid: Guid, next_seq: u64, faults: Arc<Faults>) -> Result<Journal> {
        let (file, path) = Self::new_file(dir, store_uuid, next_seq)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            store_uuid,
            active: Mutex::new(Active { file, path, len: HEADER_LEN as u64, dirty: false }),
            last_seq: AtomicU64::new(next_seq - 1),
            first_seq: AtomicU64::new(next_seq),
            faults,
        })
    }

    fn new_file(dir: &Path, store_uuid: Guid, first_seq: u64) -> Result<(File, PathBuf)> {
        let path = dir.join(file_name(first_seq));
        let file =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).map_err(io_err(&path))?;
        file.write_all_at(&encode_header(store_uuid, first_seq), 0).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        format::fsync_dir(dir).map_err(io_err(dir))?;
        Ok((file, path))
    }

    /// Append one record; returns its sequence number. Not durable until
    /// [`Journal::sync`].
    pub fn append(&self, batch: &Batch) -> Result<u64> {
        let payload = &batch.w.buf;
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.last_seq.load(Ordering::Relaxed) + 1;
        let mut rec = Writer::with_capacity(RECORD_HEADER_LEN + payload.len());
        rec.u32(RECORD_MAGIC).u32(payload.len() as u32).u64(seq);
        let mut h = blake3::Hasher::new();
        h.update(&rec.buf[..16]);
        h.update(payload);
        let c = u32::from_le_bytes(h.finalize().as_bytes()[..4].try_into().expect("4"));
        rec.u32(c).u32(0).bytes(payload);
        if let Err(e) = fault::write_at(&self.faults, Point::JournalWrite, &a.file, &rec.buf, a.len) {
            // Never leave a partial record in front of later ones: cut it
            // off. If even that fails the journal cannot be trusted.
            if let Err(e2) = a.file.set_len(a.len) {
                return Err(Error::Fatal {
                    path: a.path.display().to_string(),
                    detail: format!("append failed ({e}) and truncating back failed ({e2})"),
                });
            }
            return Err(Error::Io { path: a.path.display().to_string(), source: e });
        }
        a.len += rec.buf.len() as u64;
        a.dirty = true;
        self.last_seq.store(seq, Ordering::Release);
        Ok(seq)
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Bytes in the active file.
    pub fn active_len(&self) -> u64 {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).len
    }

    /// Make every appended record durable.
    pub fn sync(&self) -> Result<()> {
        // fdatasync on a clone of the fd so appends are not blocked meanwhile.
        let (file, path) = {
            let a = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if !a.dirty {
                return Ok(());
            }
            (a.file.try_clone().map_err(io_err(&a.path))?, a.path.clone())
        };
        fault::sync_data(&self.faults, Point::JournalSync, &file).map_err(io_err(&path))
    }

    /// Close the active file (made durable) and start a new one at
    /// `last_seq + 1`. Returns the last sequence number of the old file.
    /// Callers must exclude appends (the engine's cut lock).
    pub fn rotate(&self) -> Result<u64> {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let last = self.last_seq.load(Ordering::Acquire);
        if a.len == HEADER_LEN as u64 {
            // Nothing in the active file: keep it.
            return Ok(last);
        }
        fault::sync_data(&self.faults, Point::JournalSync, &a.file).map_err(io_err(&a.path))?;
        let (file, path) = Self::new_file(&self.dir, self.store_uuid, last + 1)?;
        *a = Active { file, path, len: HEADER_LEN as u64, dirty: false };
        self.first_seq.store(last + 1, Ordering::Release);
        Ok(last)
    }

    /// Delete journal files all of whose records are ≤ `upto_seq` (covered by
    /// a durable checkpoint). The active file is never deleted.
    pub fn remove_upto(&self, upto_seq: u64) -> Result<()> {
        let active_first = self.first_seq.load(Ordering::Acquire);
        for (first, path) in list_files(&self.dir)? {
            if first < active_first && first <= upto_seq + 1 {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        format::fsync_dir(&self.dir).map_err(io_err(&self.dir))
    }

    /// Total bytes of all journal files.
    pub fn size_bytes(&self) -> u64 {
        list_files(&self.dir)
            .map(|v| v.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum())
            .unwrap_or(0)
    }
}

/// Journal files in `dir`, ordered by first sequence number.
pub fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for ent in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let ent = ent.map_err(io_err(dir))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hex) = name.strip_suffix(".wal") else { continue };
        if let Ok(first) = u64::from_str_radix(hex, 16) {
            v.push((first, ent.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// What replay found.
#[derive(Debug, Default)]
pub struct ReplayInfo {
    /// The last valid sequence number (0 if none).
    pub last_seq: u64,
    pub records: u64,
    /// Set when the last file ended in an invalid (torn) record.
    pub torn_tail: bool,
}

/// What the replay callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The record was applied; go on.
    Continue,
    /// The record cannot be applied (its data never reached the disk):
    /// treat it and everything after it as a torn tail.
    StopBefore,
}

/// Replay every valid record of every journal file in order, calling `f`
/// with (seq, entries). A torn record ends replay of the last file; an
/// invalid record followed by further files is corruption.
pub fn replay(
    dir: &Path,
    store_uuid: Guid,
    mut f: impl FnMut(u64, Vec<Entry>) -> std::result::Result<Replay, String>,
) -> Result<ReplayInfo> {
    let files = list_files(dir)?;
    let mut info = ReplayInfo::default();
    let n = files.len();
    let next_firsts: Vec<u64> = files.iter().map(|(f, _)| *f).collect();
    'files: for (i, (first, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == n;
        let corrupt = |detail: String| Error::Corrupt { path: path.display().to_string(), detail };
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        if bytes.len() < HEADER_LEN {
            if is_last {
                // A crash while creating the file: it holds no records.
                info.torn_tail = true;
                break;
            }
            return Err(corrupt(format!("header truncated ({} bytes)", bytes.len())));
        }
        let mut r = Reader::new(&bytes[..HEADER_LEN]);
        let magic: [u8; 8] = r.array().expect("64 bytes");
        if &magic != FILE_MAGIC {
            return Err(corrupt("bad magic: not a strata journal file".into()));
        }
        let version = r.u32().expect("64");
        if checksum32(&bytes[..60]) != u32::from_le_bytes(bytes[60..64].try_into().expect("4")) {
            return Err(corrupt("header checksum mismatch".into()));
        }
        if version != VERSION {
            return Err(corrupt(format!("journal version {version} is not supported (this strata reads {VERSION})")));
        }
        r.u32().expect("64");
        let uuid = Guid(r.array().expect("64"));
        if uuid != store_uuid {
            return Err(corrupt(format!("belongs to store {uuid}, not {store_uuid}")));
        }
        let file_first = r.u64().expect("64");
        if file_first != first {
            return Err(corrupt(format!("header says first seq {file_first}, name says {first}")));
        }
        if info.last_seq != 0 && first > info.last_seq + 1 {
            return Err(corrupt(format!(
                "gap in the journal: expected seq {}, file starts at {first}",
                info.last_seq + 1
            )));
        }
        // A file with no records still says where the sequence stands.
        info.last_seq = info.last_seq.max(first - 1);
        let next_first = next_firsts.get(i + 1).copied();
        let mut pos = HEADER_LEN;
        let mut expect_seq = first;
        loop {
            if pos == bytes.len() {
                break;
            }
            match parse_record(&bytes[pos..], expect_seq) {
                Ok((entries, used)) => {
                    if expect_seq > info.last_seq {
                        match f(expect_seq, entries).map_err(|d| corrupt(format!("record {expect_seq}: {d}")))? {
                            Replay::Continue => {}
                            Replay::StopBefore => {
                                tracing::warn!(
                                    seq = expect_seq,
                                    "journal record points at chunk data that never reached the disk; replay ends before it"
                                );
                                info.torn_tail = true;
                                break 'files;
                            }
                        }
                        info.last_seq = expect_seq;
                        info.records += 1;
                    }
                    expect_seq += 1;
                    pos += used;
                }
                Err(detail) => {
                    // A torn tail is fine in the last file, or where the
                    // next file starts right after the last good record
                    // (a later open began a new file past the tear).
                    if is_last || next_first == Some(expect_seq) {
                        tracing::warn!(path = %path.display(), offset = pos, %detail, "journal ends in a torn record; ignoring the tail");
                        info.torn_tail = true;
                        break;
                    }
                    return Err(corrupt(format!("invalid record at offset {pos}: {detail}")));
                }
            }
        }
    }
    Ok(info)
}

fn parse_record(b: &[u8], expect_seq: u64) -> std::result::Result<(Vec<Entry>, usize), String> {
    if b.len() < RECORD_HEADER_LEN {
        return Err("truncated record header".into());
    }
    let mut r = Reader::new(b);
    let magic = r.u32().expect("24");
    let len = r.u32().expect("24") as usize;
    let seq = r.u64().expect("24");
    let sum = r.u32().expect("24");
    if magic != RECORD_MAGIC {
        return Err(format!("bad record magic {magic:#x}"));
    }
    if len > MAX_PAYLOAD || len > b.len() - RECORD_HEADER_LEN {
        return Err(format!("record length {len} runs past the end"));
    }
    let payload = &b[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    let mut h = blake3::Hasher::new();
    h.update(&b[..16]);
    h.update(payload);
    if u32::from_le_bytes(h.finalize().as_bytes()[..4].try_into().expect("4")) != sum {
        return Err("record checksum mismatch".into());
    }
    if seq != expect_seq {
        return Err(format!("record seq {seq}, expected {expect_seq}"));
    }
    let entries = decode_payload(payload)?;
    Ok((entries, RECORD_HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch(layer: Guid) -> Batch {
        let mut b = Batch::new();
        b.chunk_put(&ChunkPut { chunk_id: 16, pack_id: 1, offset: 64, stored_len: 100, murmur: 7 });
        b.map_run(layer, 10, &[16, 1, 0]);
        b.map_truncate(layer, 99);
        b.chunk_free(17);
        b
    }

    #[test]
    fn records_replay_in_order_with_their_entries() {
        let d = tempfile::tempdir().unwrap();
        let uuid = Guid::new_random();
        let layer = Guid::new_random();
        let j = Journal::start(d.path(), uuid, 1, Faults::new()).unwrap();
        assert_eq!(j.append(&sample_batch(layer)).unwrap(), 1);
        assert_eq!(j.append(&sample_batch(layer)).unwrap(), 2);
        j.sync().unwrap();
        let mut seen = vec![];
        let info = replay(d.path(), uuid, |s, e| {
            seen.push((s, e));
            Ok(Replay::Continue)
        })
        .unwrap();
        assert_eq!(info.last_seq, 2);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].1[1], Entry::MapRun { layer, start_block: 10, entries: vec![16, 1, 0] });
        assert_eq!(seen[0].1[3], Entry::ChunkFree { chunk_id: 17 });
    }

    #[test]
    fn torn_tail_is_ignored_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let uuid = Guid::new_random();
        let j = Journal::start(d.path(), uuid, 1, Faults::new()).unwrap();
        j.append(&sample_batch(Guid::new_random())).unwrap();
        j.append(&sample_batch(Guid::new_random())).unwrap();
        let path = list_files(d.path()).unwrap()[0].1.clone();
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        let info = replay(d.path(), uuid, |_, _| Ok(Replay::Continue)).unwrap();
        assert_eq!(info.last_seq, 1);
        assert!(info.torn_tail);
    }

    #[test]
    fn flipped_byte_in_an_older_file_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        let uuid = Guid::new_random();
        let j = Journal::start(d.path(), uuid, 1, Faults::new()).unwrap();
        j.append(&sample_batch(Guid::new_random())).unwrap();
        j.rotate().unwrap();
        j.append(&sample_batch(Guid::new_random())).unwrap();
        let path = list_files(d.path()).unwrap()[0].1.clone();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 30] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = replay(d.path(), uuid, |_, _| Ok(Replay::Continue)).unwrap_err();
        assert!(err.to_string().contains("invalid record"), "{err}");
    }

    #[test]
    fn rotation_continues_the_sequence_and_old_files_can_be_removed() {
        let d = tempfile::tempdir().unwrap();
        let uuid = Guid::new_random();
        let j = Journal::start(d.path(), uuid, 5, Faults::new()).unwrap();
        assert_eq!(j.append(&Batch::new()).unwrap(), 5);
        assert_eq!(j.rotate().unwrap(), 5);
        assert_eq!(j.append(&Batch::new()).unwrap(), 6);
        j.remove_upto(5).unwrap();
        let files = list_files(d.path()).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, 6);
    }

    #[test]
    fn golden_header_bytes() {
        let h = encode_header(Guid([0xAB; 16]), 1);
        assert_eq!(&h[..8], b"STRJRNL\0");
        assert_eq!(&h[8..12], &[1, 0, 0, 0]);
        assert_eq!(&h[16..32], &[0xAB; 16]);
        assert_eq!(&h[32..40], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h.len(), 64);
        assert_eq!(u32::from_le_bytes(h[60..64].try_into().unwrap()), checksum32(&h[..60]));
    }
}
