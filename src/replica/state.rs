//! The replication state file `STORE/replica.state`: the core's
//! [`PersistedState`] plus the activity log and the wish to be Primary.
//!
//! Written atomically (temp file, fsync, rename, fsync of the directory) on
//! every `PersistState` action and whenever the activity log gains an
//! extent. Layout (little-endian; FORMAT.md "Replication"):
//!
//! ```text
//!   0  magic      [8]  "STRREPL\0"
//!   8  version    u32  = 1
//!  12  flags      u32  bit 0: this node wants to be Primary
//!  16  store_uuid [16]
//!  32  disk       u8   DiskState (status.rs to_u8)
//!  33  reserved   [7]
//!  40  current    u64  generation ids (gi.rs)
//!  48  bitmap     u64
//!  56  history    u64 × 2
//!  72  n          u32  dirty ranges (core dirty set ∪ activity log)
//!  76  ranges     (layer [16], start u64, len u64) × n
//!  ..  checksum   u32  checksum32 of every byte before it
//! ```
//!
//! The activity log (DRBD's AL): before a journal record that changes
//! blocks is appended, the extents (1024 blocks) holding them are added
//! here and the file is made durable if any extent is new. An extent
//! leaves the log once every write announced in it has been stepped into
//! the core and a later core state was persisted. So after any crash the
//! union of the file's ranges covers every block the peer may lack.
//!
//! Depends on: `format`, the shared types, `protocol::PersistedState`.

use super::gi::GenIds;
use super::protocol::PersistedState;
use super::status::DiskState;
use super::{BlockKey, BlockRange, CATALOGUE_KEY, Guid};
use crate::format::{self, Reader, Writer, checksum32};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const MAGIC: &[u8; 8] = b"STRREPL\0";
pub const VERSION: u32 = 1;
/// Blocks per activity-log extent (4 MiB of 4 KiB blocks).
pub const AL_EXTENT_BLOCKS: u64 = 1024;
/// File name inside the store directory.
pub const FILE_NAME: &str = "replica.state";
/// Largest number of ranges accepted when reading (bounds memory).
const MAX_RANGES: u32 = 1 << 24;

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateImage {
    pub wants_primary: bool,
    pub store_uuid: Guid,
    pub state: PersistedState,
}

pub fn encode(img: &StateImage) -> Vec<u8> {
    let mut w = Writer::default();
    w.bytes(MAGIC).u32(VERSION).u32(u32::from(img.wants_primary)).bytes(img.store_uuid.as_bytes());
    w.u8(img.state.disk.to_u8()).bytes(&[0; 7]);
    let g = img.state.gis;
    w.u64(g.current).u64(g.bitmap).u64(g.history[0]).u64(g.history[1]);
    w.u32(img.state.dirty.len() as u32);
    for r in &img.state.dirty {
        w.bytes(r.layer.as_bytes()).u64(r.start_block).u64(r.len_blocks);
    }
    let c = checksum32(&w.buf);
    w.u32(c);
    w.buf
}

pub fn decode(b: &[u8]) -> Result<StateImage, String> {
    if b.len() < 80 {
        return Err(format!("{} bytes is too short", b.len()));
    }
    let (body, tail) = b.split_at(b.len() - 4);
    let want = u32::from_le_bytes(tail.try_into().map_err(|_| "short checksum")?);
    if checksum32(body) != want {
        return Err("checksum mismatch".into());
    }
    let mut r = Reader::new(body);
    let e = |t: format::Truncated| t.to_string();
    if r.bytes(8).map_err(e)? != MAGIC {
        return Err("bad magic: not a strata replication state file".into());
    }
    let v = r.u32().map_err(e)?;
    if v != VERSION {
        return Err(format!("version {v} is not supported (this strata reads {VERSION})"));
    }
    let flags = r.u32().map_err(e)?;
    let store_uuid = Guid(r.array().map_err(e)?);
    let disk = DiskState::from_u8(r.u8().map_err(e)?);
    r.bytes(7).map_err(e)?;
    let gis = GenIds {
        current: r.u64().map_err(e)?,
        bitmap: r.u64().map_err(e)?,
        history: [r.u64().map_err(e)?, r.u64().map_err(e)?],
    };
    let n = r.u32().map_err(e)?;
    if n > MAX_RANGES || (n as usize).saturating_mul(32) > r.remaining() {
        return Err(format!("{n} dirty ranges do not fit the file"));
    }
    let mut dirty = Vec::with_capacity(n as usize);
    for _ in 0..n {
        dirty.push(BlockRange {
            layer: Guid(r.array().map_err(e)?),
            start_block: r.u64().map_err(e)?,
            len_blocks: r.u64().map_err(e)?,
        });
    }
    Ok(StateImage { wants_primary: flags & 1 != 0, store_uuid, state: PersistedState { gis, disk, dirty } })
}

struct Inner {
    img: StateImage,
    /// Activity log: (layer, extent) → writes announced but not yet
    /// stepped into the core.
    al: HashMap<(Guid, u64), u32>,
    /// Tickets: the extents each announced write touched.
    tickets: HashMap<u64, Vec<(Guid, u64)>>,
    next_ticket: u64,
}

/// The state file and the activity log, shared by the write path and the
/// replication driver. One mutex; every write of the file happens under it.
pub struct StateFile {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl StateFile {
    /// Open (or start) the state file of the store at `store`. The ranges
    /// it held, including the activity log of a crashed run, become the
    /// starting dirty set; the catalogue is marked dirty at start when the
    /// node was last Primary (a change committed just before a crash may
    /// not have been stepped).
    pub fn open(store: &Path, store_uuid: Guid) -> Result<(StateFile, StateImage), String> {
        let path = store.join(FILE_NAME);
        let mut img = match std::fs::read(&path) {
            Ok(b) => decode(&b).map_err(|d| format!("{}: {d}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateImage { store_uuid, ..StateImage::default() },
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        if img.store_uuid != store_uuid {
            return Err(format!("{} belongs to store {}, not {store_uuid}", path.display(), img.store_uuid));
        }
        // Only a node that was last Primary can have committed a catalogue
        // change: a Secondary refuses local changes, and a leftover dirty
        // catalogue would make it claim SyncSource over its Primary (a
        // restarted Secondary was refused as "the Primary would become
        // SyncTarget").
        if img.wants_primary && !img.state.dirty.iter().any(|r| r.layer == CATALOGUE_KEY.layer) {
            img.state.dirty.push(BlockRange {
                layer: CATALOGUE_KEY.layer,
                start_block: CATALOGUE_KEY.block_no,
                len_blocks: 1,
            });
        }
        let f = StateFile {
            path,
            inner: Mutex::new(Inner { img: img.clone(), al: HashMap::new(), tickets: HashMap::new(), next_ticket: 1 }),
        };
        Ok((f, img))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, inner: &Inner) -> Result<(), String> {
        let mut img = inner.img.clone();
        let mut extra: BTreeMap<(Guid, u64), ()> = BTreeMap::new();
        for k in inner.al.keys() {
            extra.insert(*k, ());
        }
        for (layer, ext) in extra.keys() {
            img.state.dirty.push(BlockRange {
                layer: *layer,
                start_block: ext * AL_EXTENT_BLOCKS,
                len_blocks: AL_EXTENT_BLOCKS,
            });
        }
        format::write_atomic(&self.path, &encode(&img)).map_err(|e| format!("writing {}: {e}", self.path.display()))
    }

    /// Write path: announce the blocks a record is about to change. Makes
    /// the file durable first if an extent is new. Returns the ticket.
    pub fn announce(&self, keys: &[BlockKey]) -> Result<u64, String> {
        let mut g = self.lock();
        let t = g.next_ticket;
        g.next_ticket += 1;
        let mut exts: Vec<(Guid, u64)> = keys.iter().map(|k| (k.layer, k.block_no / AL_EXTENT_BLOCKS)).collect();
        exts.sort();
        exts.dedup();
        let mut fresh = false;
        for e in &exts {
            let c = g.al.entry(*e).or_insert(0);
            fresh |= *c == 0;
            *c += 1;
        }
        g.tickets.insert(t, exts);
        if fresh {
            self.write(&g)?;
        }
        Ok(t)
    }

    /// Driver: the write with `ticket` has been stepped into the core.
    pub fn stepped(&self, ticket: u64) {
        let mut g = self.lock();
        if let Some(exts) = g.tickets.remove(&ticket) {
            for e in exts {
                if let Some(c) = g.al.get_mut(&e) {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }

    /// Driver: persist a core state (and drop finished AL extents).
    pub fn persist(&self, st: &PersistedState) -> Result<(), String> {
        let mut g = self.lock();
        g.img.state = st.clone();
        g.al.retain(|_, c| *c > 0);
        self.write(&g)
    }

    /// Remember whether this node should be Primary after a restart.
    pub fn set_wants_primary(&self, yes: bool) -> Result<(), String> {
        let mut g = self.lock();
        if g.img.wants_primary == yes {
            return Ok(());
        }
        g.img.wants_primary = yes;
        self.write(&g)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_round_trip_and_damage_is_refused() {
        let img = StateImage {
            wants_primary: true,
            store_uuid: Guid([3; 16]),
            state: PersistedState {
                gis: GenIds { current: 5, bitmap: 4, history: [3, 2] },
                disk: DiskState::UpToDate,
                dirty: vec![BlockRange { layer: Guid([1; 16]), start_block: 7, len_blocks: 9 }],
            },
        };
        let b = encode(&img);
        assert_eq!(decode(&b).unwrap(), img);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(decode(&c).is_err(), "flip at {i}");
        }
        assert!(decode(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn the_activity_log_survives_a_crash_until_stepped_and_persisted() {
        let d = tempfile::tempdir().unwrap();
        let uuid = Guid([9; 16]);
        let (f, img) = StateFile::open(d.path(), uuid).unwrap();
        assert!(img.state.dirty.is_empty(), "a Secondary's catalogue is not dirty at start");
        f.set_wants_primary(true).unwrap();
        let k = BlockKey { layer: Guid([1; 16]), block_no: 5000 };
        let t = f.announce(&[k]).unwrap();
        // "Crash" now: the extent is in the file.
        let (_, img2) = StateFile::open(d.path(), uuid).unwrap();
        assert!(
            img2.state.dirty.iter().any(|r| r.layer == CATALOGUE_KEY.layer),
            "a Primary's catalogue is dirty at start"
        );
        assert!(img2.state.dirty.iter().any(|r| r.layer == k.layer && r.start_block == 4096 && r.len_blocks == 1024));
        // Stepped and persisted: the extent leaves the log.
        f.stepped(t);
        f.persist(&PersistedState::default()).unwrap();
        let (_, img3) = StateFile::open(d.path(), uuid).unwrap();
        assert!(!img3.state.dirty.iter().any(|r| r.layer == k.layer));
        assert!(StateFile::open(d.path(), Guid([8; 16])).is_err());
    }
}
