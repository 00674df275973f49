//! `strata check STORE [--repair]` and `mount --force-rebuild`: an offline
//! verification of everything a store holds, tolerant of any damage.
//!
//! It never opens the store the normal way (which refuses damage); it
//! reads every structure itself and reports what is wrong, precisely:
//!
//! 1. superblock (magic, version, checksum, persisted mode);
//! 2. catalogue: SQLite `integrity_check` and `foreign_key_check`, rows
//!    that do not parse, chain shape (the `chain dump` anomalies), pending
//!    jobs;
//! 3. every pack record: header, length, decompression, BLAKE3 of the
//!    content — each bad record is named by pack, offset and chunk id;
//! 4. the chunk table against the scan (every entry must point at an intact
//!    record of that chunk);
//! 5. the journal (replayed in memory, as an open would) and every layer
//!    map: damaged files, orphan files, and map entries whose chunk is
//!    missing or damaged — named by volume and offset, since that is data a
//!    read would fail on.
//!
//! Reference counts are derived from the maps (FORMAT.md), so checking the
//! maps against the table is checking the refcounts; unreferenced chunks are
//! reported as information (GC reclaims them).
//!
//! `--repair` writes a new consistent checkpoint: the chunk table rebuilt
//! from intact records (`--force-rebuild` ignores the old table entirely),
//! map entries that point at lost data replaced by zeros (each reported as
//! lost), orphan maps deleted, the journal folded in, and read-only mode
//! cleared when nothing unrepairable remains. Catalogue damage is reported,
//! not repaired: restore `catalog.db` from a backup.

use super::{Mode, Paths, map_path, superblock::Superblock, take_lock};
use crate::catalog::Catalog;
use crate::chain::{self, PageMap, ZERO};
use crate::format::{self, BLOCK_SIZE, BLOCK_SIZE_U64};
use crate::guid::Guid;
use crate::journal::{self, Entry};
use crate::store::pack::{self, FLAG_ZSTD, PACK_HEADER_LEN, RECORD_HEADER_LEN};
use crate::store::{ChunkLoc, FIRST_CHUNK_ID, table};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub repair: bool,
    /// Rebuild the chunk table from the packs even if it looks intact.
    pub force_rebuild: bool,
}

/// One finding.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// "error" (something is wrong), "warning" (needs attention), "info".
    pub severity: String,
    /// What it is about: "superblock", "catalogue", "pack 1", "volume vm1", …
    pub object: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub findings: Vec<Finding>,
    /// What `--repair` changed.
    pub repaired: Vec<String>,
    pub packs: u64,
    pub records: u64,
    pub bad_records: u64,
    pub layers: u64,
    pub map_entries: u64,
    pub unreferenced_chunks: u64,
    /// No errors (after repair, if repairing).
    pub clean: bool,
}

impl CheckReport {
    fn add(&mut self, severity: &str, object: impl Into<String>, detail: impl Into<String>) {
        self.findings.push(Finding { severity: severity.into(), object: object.into(), detail: detail.into() });
    }
    pub fn errors(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == "error").count()
    }
}

fn decompress(payload: &[u8], flags: u8) -> Option<Vec<u8>> {
    if flags & FLAG_ZSTD != 0 {
        let v = zstd::bulk::decompress(payload, BLOCK_SIZE).ok()?;
        (v.len() == BLOCK_SIZE).then_some(v)
    } else {
        (payload.len() == BLOCK_SIZE).then(|| payload.to_vec())
    }
}

/// A record found by scanning a pack.
#[derive(Clone, Copy)]
struct Scanned {
    loc: ChunkLoc,
    ok: bool,
}

/// Scan one pack file record by record. Bad records are reported; after a
/// bad header the scan looks for the next valid header (bounded by the
/// file, so no hang on garbage).
fn scan_pack(
    rep: &mut CheckReport,
    id: u32,
    bytes: &[u8],
    uuid: Guid,
    found: &mut HashMap<u64, Vec<Scanned>>,
    bad: &mut Vec<(usize, u64, u32, u64)>,
    progress: &mut dyn FnMut(u64),
) {
    let obj = format!("pack {}", pack::pack_file_name(id));
    match pack::decode_pack_header(bytes, uuid) {
        Ok(h) if h == id => {}
        Ok(h) => rep.add("error", &obj, format!("header says pack {h}")),
        Err(d) => {
            rep.add("error", &obj, format!("bad pack header: {d}"));
            return;
        }
    }
    let mut pos = PACK_HEADER_LEN as usize;
    let mut resyncing = false;
    while pos + RECORD_HEADER_LEN <= bytes.len() {
        match pack::decode_record_header(&bytes[pos..pos + RECORD_HEADER_LEN]) {
            Ok(h) => {
                resyncing = false;
                let end = pos + RECORD_HEADER_LEN + h.stored_len as usize;
                if end > bytes.len() {
                    // A kill during the append leaves this (FORMAT.md, crash
                    // after step 3); it is damage only if the table uses it.
                    rep.add(
                        "error",
                        &obj,
                        format!(
                            "record of chunk {} at offset {pos} runs past the end of the file (an unfinished append)",
                            h.chunk_id
                        ),
                    );
                    rep.bad_records += 1;
                    bad.push((rep.findings.len() - 1, h.chunk_id, id, pos as u64));
                    break;
                }
                rep.records += 1;
                let payload = &bytes[pos + RECORD_HEADER_LEN..end];
                let content = decompress(payload, h.flags);
                let ok = match &content {
                    Some(c) => blake3::hash(c).as_bytes() == &h.content,
                    None => false,
                };
                if !ok {
                    rep.bad_records += 1;
                    rep.add(
                        "error",
                        &obj,
                        format!(
                            "chunk {} at offset {pos}: {}",
                            h.chunk_id,
                            if content.is_some() {
                                "BLAKE3 checksum mismatch"
                            } else {
                                "payload does not decompress to a block"
                            }
                        ),
                    );
                    bad.push((rep.findings.len() - 1, h.chunk_id, id, pos as u64));
                }
                let murmur = content.as_deref().map(crate::store::murmur64).unwrap_or(0);
                found.entry(h.chunk_id).or_default().push(Scanned {
                    loc: ChunkLoc { pack_id: id, offset: pos as u64, stored_len: h.stored_len, murmur },
                    ok,
                });
                pos = end;
                progress(RECORD_HEADER_LEN as u64 + h.stored_len as u64);
            }
            Err(d) => {
                // Zeros after the last record: O_DIRECT padding of the
                // partial last block (FORMAT.md, "Packs"), not damage.
                if bytes[pos..].iter().all(|&b| b == 0) {
                    break;
                }
                if !resyncing {
                    rep.add("error", &obj, format!("bad record header at offset {pos}: {d}"));
                    rep.bad_records += 1;
                    resyncing = true;
                }
                pos += 1;
                progress(1);
            }
        }
    }
    if resyncing {
        // A torn tail after a crash is expected; damage in the middle is not.
        if let Some(f) = rep.findings.last_mut()
            && f.object == obj
        {
            f.detail.push_str(" (no valid record follows: an unfinished append)");
            f.severity = "warning".into();
            rep.bad_records -= 1;
        }
    }
}

/// Check (and optionally repair) the store at `path`. Takes the store
/// lock: the store must not be mounted. `progress(done, total)` counts
/// bytes of packs scanned.
pub fn check(path: &Path, opts: &CheckOptions, progress: &mut dyn FnMut(u64, u64)) -> super::Result<CheckReport> {
    let mut rep = CheckReport::default();
    let sb_path = path.join(Paths::SUPERBLOCK);
    if !sb_path.exists() {
        return Err(super::Error::NotFound(format!("no strata store at {}", path.display())));
    }
    let _lock = take_lock(path)?;
    let mut sb = match Superblock::read(&sb_path) {
        Ok(sb) => sb,
        Err(d) => {
            rep.add("error", "superblock", d);
            return Ok(rep);
        }
    };
    if sb.mode == Mode::ReadOnly {
        rep.add("warning", "superblock", "the store is in read-only mode after a fatal error");
    }
    if !sb.clean {
        rep.add("info", "superblock", "the store was not closed cleanly; the journal is replayed below");
    }
    let uuid = sb.store_uuid;

    // Catalogue.
    let catalog = match Catalog::open(&path.join(Paths::CATALOG)) {
        Ok(c) => Some(c),
        Err(e) => {
            rep.add("error", "catalogue", format!("{e}; restore catalog.db from a backup"));
            None
        }
    };
    let mut layers: Vec<Guid> = Vec::new();
    let mut layer_name: HashMap<Guid, String> = HashMap::new();
    if let Some(cat) = &catalog {
        match cat.integrity_check() {
            Ok(v) => v.into_iter().for_each(|p| rep.add("error", "catalogue", p)),
            Err(e) => rep.add("error", "catalogue", e.to_string()),
        }
        match cat.bad_volume_rows() {
            Ok(v) => v.into_iter().for_each(|p| rep.add("error", "catalogue", p)),
            Err(e) => rep.add("error", "catalogue", e.to_string()),
        }
        match cat.dump_rows() {
            Ok((disks, vols, snaps)) => {
                let names: HashMap<Guid, String> =
                    disks.iter().map(|(g, n)| (*g, n.clone().unwrap_or_else(|| g.to_string()))).collect();
                let known: HashSet<Guid> = vols.iter().map(|v| v.guid).collect();
                for v in &vols {
                    layers.push(v.guid);
                    let n = names.get(&v.disk).cloned().unwrap_or_else(|| v.disk.to_string());
                    layer_name.insert(v.guid, n.clone());
                    if !v.parent.is_blank() && !known.contains(&v.parent) {
                        rep.add(
                            "error",
                            format!("volume {n}"),
                            format!("layer {} has missing parent {}", v.guid, v.parent),
                        );
                    }
                    if v.legality == crate::catalog::Legality::Illegal {
                        rep.add(
                            "warning",
                            format!("volume {n}"),
                            format!("layer {} is ILLEGAL (an unfinished operation)", v.guid),
                        );
                    }
                }
                for (g, n) in &disks {
                    let leaves =
                        vols.iter().filter(|v| v.disk == *g && v.voltype == crate::catalog::VolType::Leaf).count();
                    if leaves != 1 {
                        rep.add(
                            "error",
                            format!("volume {}", n.clone().unwrap_or_else(|| g.to_string())),
                            format!("has {leaves} LEAF layers; exactly one is expected"),
                        );
                    }
                }
                for s in &snaps {
                    if !known.contains(&s.guid) {
                        rep.add(
                            "error",
                            "catalogue",
                            format!("snapshot {:?} names layer {} which does not exist", s.name, s.guid),
                        );
                    }
                }
            }
            Err(e) => rep.add("error", "catalogue", e.to_string()),
        }
        if let Ok(jobs) = cat.all_jobs() {
            for j in jobs {
                let n = j
                    .object
                    .parse::<Guid>()
                    .ok()
                    .and_then(|g| cat.disk(g).ok())
                    .map(|d| d.name)
                    .unwrap_or(j.object.clone());
                let what = match j.kind.as_str() {
                    "merge" | "flatten" => "it is resumed at the next open",
                    _ => "run `strata volume remove --force` on it",
                };
                rep.add("warning", format!("volume {n}"), format!("unfinished {} job {} ({what})", j.kind, j.id));
            }
        }
    }
    layers.sort();
    rep.layers = layers.len() as u64;

    // Packs: scan every record.
    let pdir = path.join(Paths::PACKS);
    let mut pack_files: BTreeMap<u32, std::path::PathBuf> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(&pdir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            match n.strip_suffix(".pack").and_then(|h| u32::from_str_radix(h, 16).ok()) {
                Some(id) => {
                    pack_files.insert(id, e.path());
                }
                // Spares (store/spare.rs) are never read: their bytes are not data.
                None if n.ends_with(".tmp") || crate::store::spare::parse_spare_name(&n).is_some() => {}
                None => rep.add("warning", "packs", format!("unexpected file {n}")),
            }
        }
    } else {
        rep.add("error", "packs", "the packs directory cannot be read");
    }
    rep.packs = pack_files.len() as u64;
    let total: u64 = pack_files.values().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
    let mut done = 0u64;
    let mut found: HashMap<u64, Vec<Scanned>> = HashMap::new();
    // (finding index, chunk id, pack, offset) of damaged records.
    let mut bad: Vec<(usize, u64, u32, u64)> = Vec::new();
    for (id, p) in &pack_files {
        match std::fs::read(p) {
            Ok(bytes) => scan_pack(&mut rep, *id, &bytes, uuid, &mut found, &mut bad, &mut |n| {
                done += n;
                if done % (1 << 20) < n {
                    progress(done, total);
                }
            }),
            Err(e) => rep.add("error", format!("pack {}", pack::pack_file_name(*id)), format!("cannot be read: {e}")),
        }
    }
    progress(total, total);

    // Chunk table against the scan.
    let mut table: BTreeMap<u64, ChunkLoc> = BTreeMap::new();
    let mut table_stamp = 0;
    let mut next_id = FIRST_CHUNK_ID;
    let mut rebuild = opts.force_rebuild;
    match std::fs::read(path.join(Paths::CHUNKS)).map_err(|e| e.to_string()).and_then(|b| table::decode(&b, uuid)) {
        Ok(img) => {
            table_stamp = img.stamp_seq;
            next_id = img.next_id;
            for (id, loc) in img.entries {
                table.insert(id, loc);
            }
        }
        Err(d) => {
            rep.add("error", "chunks.tbl", format!("{d}; it can be rebuilt from the packs with --repair"));
            rebuild = true;
        }
    }

    // Journal, replayed in memory on top of the checkpoints.
    let mut maps: BTreeMap<Guid, (PageMap, u64)> = BTreeMap::new();
    for g in &layers {
        let mp = map_path(path, *g);
        let n = layer_name.get(g).cloned().unwrap_or_default();
        match std::fs::read(&mp) {
            Ok(b) => match chain::decode_map(&b) {
                Ok(img) if img.layer == *g => {
                    maps.insert(*g, (img.map, img.stamp_seq));
                }
                Ok(img) => {
                    rep.add("error", format!("volume {n}"), format!("map file of layer {g} holds layer {}", img.layer));
                    maps.insert(*g, (PageMap::new(), 0));
                }
                Err(d) => {
                    rep.add(
                        "error",
                        format!("volume {n}"),
                        format!("map of layer {g} is damaged: {d}; its data cannot be recovered (--repair empties it)"),
                    );
                    maps.insert(*g, (PageMap::new(), u64::MAX));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                maps.insert(*g, (PageMap::new(), 0));
            }
            Err(e) => rep.add("error", format!("volume {n}"), format!("map of layer {g} cannot be read: {e}")),
        }
    }
    let jdir = path.join(Paths::JOURNAL);
    let replay = journal::replay(&jdir, uuid, |seq, entries| {
        // As `Engine::open` does: a record placing a chunk whose pack bytes
        // never landed (power loss under async) ends the replay before it;
        // that write was never acknowledged as durable.
        for e in &entries {
            if let Entry::ChunkPut(p) = e
                && seq > table_stamp
                && !found.get(&p.chunk_id).is_some_and(|v| {
                    v.iter().any(|s| {
                        s.ok && s.loc.pack_id == p.pack_id
                            && s.loc.offset == p.offset
                            && s.loc.stored_len == p.stored_len
                    })
                })
            {
                return Ok(journal::Replay::StopBefore);
            }
        }
        for e in entries {
            match e {
                Entry::ChunkPut(p) if seq > table_stamp => {
                    table.insert(
                        p.chunk_id,
                        ChunkLoc { pack_id: p.pack_id, offset: p.offset, stored_len: p.stored_len, murmur: p.murmur },
                    );
                    next_id = next_id.max(p.chunk_id + 1);
                }
                Entry::ChunkFree { chunk_id } if seq > table_stamp => {
                    table.remove(&chunk_id);
                }
                Entry::MapRun { layer, start_block, entries } => {
                    if let Some((m, stamp)) = maps.get_mut(&layer)
                        && seq > *stamp
                    {
                        for (i, e) in entries.into_iter().enumerate() {
                            m.set(start_block + i as u64, e);
                        }
                    }
                }
                Entry::MapTruncate { layer, from_block } => {
                    if let Some((m, stamp)) = maps.get_mut(&layer)
                        && seq > *stamp
                    {
                        m.truncate(from_block);
                    }
                }
                _ => {}
            }
        }
        Ok(journal::Replay::Continue)
    });
    let last_seq = match replay {
        Ok(info) => {
            if info.torn_tail {
                rep.add("info", "journal", "the journal ends in a torn record (an unfinished write; it is ignored)");
            }
            info.last_seq
        }
        Err(e) => {
            rep.add("error", "journal", e.to_string());
            0
        }
    };

    // Table entries must point at intact records of their chunk.
    let intact = |id: u64, loc: &ChunkLoc| {
        found.get(&id).is_some_and(|v| {
            v.iter().any(|s| {
                s.ok && s.loc.pack_id == loc.pack_id && s.loc.offset == loc.offset && s.loc.stored_len == loc.stored_len
            })
        })
    };
    let mut lost: HashSet<u64> = HashSet::new();
    if rebuild {
        // Last intact copy wins: GC appends relocated copies later.
        table.clear();
        let mut ids: Vec<&u64> = found.keys().collect();
        ids.sort();
        for id in ids {
            if let Some(s) = found[id].iter().filter(|s| s.ok).max_by_key(|s| (s.loc.pack_id, s.loc.offset)) {
                table.insert(*id, s.loc);
                next_id = next_id.max(id + 1);
            }
        }
    } else {
        for (id, loc) in &table {
            if !intact(*id, loc) {
                rep.add(
                    "error",
                    format!("chunk {id}"),
                    format!(
                        "the table points at pack {} offset {}, which does not hold an intact record of it",
                        pack::pack_file_name(loc.pack_id),
                        loc.offset
                    ),
                );
                lost.insert(*id);
            }
        }
    }

    // A damaged record the table does not use is garbage, not lost data.
    for (i, id, pack_id, off) in &bad {
        if !table.get(id).is_some_and(|l| l.pack_id == *pack_id && l.offset == *off) {
            let f = &mut rep.findings[*i];
            f.severity = "warning".into();
            f.detail.push_str(if f.detail.ends_with("(an unfinished append)") {
                " (unused; the next open cuts it off)"
            } else {
                " (unused; `strata gc` drops it)"
            });
            rep.bad_records -= 1;
        }
    }

    // Map entries must name intact chunks.
    let mut refs: HashMap<u64, u64> = HashMap::new();
    let mut zero_out: Vec<(Guid, u64)> = Vec::new();
    for (g, (m, _)) in &maps {
        let n = layer_name.get(g).cloned().unwrap_or_default();
        for (b, e) in m.iter() {
            rep.map_entries += 1;
            if !chain::is_chunk(e) {
                continue;
            }
            let ok = table.get(&e).is_some_and(|loc| intact(e, loc)) && !lost.contains(&e);
            if ok {
                *refs.entry(e).or_default() += 1;
            } else {
                rep.add(
                    "error",
                    format!("volume {n}"),
                    format!(
                        "layer {g}: the 4096 bytes at offset {} point at chunk {e}, which is missing or damaged",
                        b * BLOCK_SIZE_U64
                    ),
                );
                zero_out.push((*g, b));
            }
        }
    }
    rep.unreferenced_chunks = table.keys().filter(|id| !refs.contains_key(id)).count() as u64;
    if rep.unreferenced_chunks > 0 {
        rep.add(
            "info",
            "chunks",
            format!("unreferenced chunks: {} (no layer uses them; `strata gc` reclaims them)", rep.unreferenced_chunks),
        );
    }

    // Orphan map files.
    let known: HashSet<String> = layers.iter().map(|g| format!("{g}.map")).collect();
    let mut orphans = Vec::new();
    if let Ok(rd) = std::fs::read_dir(path.join(Paths::MAPS)) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.ends_with(".map") && !known.contains(&n) && catalog.is_some() {
                rep.add("warning", "maps", format!("orphan map file {n} (no such layer in the catalogue)"));
                orphans.push(e.path());
            }
        }
    }

    let catalogue_ok =
        catalog.is_some() && !rep.findings.iter().any(|f| f.severity == "error" && f.object == "catalogue");
    if opts.repair && !catalogue_ok {
        // Without a trustworthy list of layers, nothing on disk can be
        // judged an orphan or rewritten safely.
        rep.repaired.push(
            "nothing: the catalogue is damaged; restore catalog.db from a backup, then run check --repair again".into(),
        );
        rep.clean = false;
    } else if opts.repair {
        let mut maps: BTreeMap<Guid, PageMap> = maps.into_iter().map(|(g, (m, _))| (g, m)).collect();
        for (g, b) in &zero_out {
            if let Some(m) = maps.get_mut(g) {
                m.set(*b, ZERO);
                rep.repaired.push(format!(
                    "volume {}: 4096 bytes at offset {} were lost and now read as zeros",
                    layer_name.get(g).cloned().unwrap_or_default(),
                    b * BLOCK_SIZE_U64
                ));
            }
        }
        for id in &lost {
            table.remove(id);
        }
        if rebuild {
            rep.repaired.push(format!("chunks.tbl rebuilt from the packs ({} chunks)", table.len()));
        }
        // A new checkpoint at the journal's end, then a fresh journal.
        let stamp = last_seq;
        let t = table::ChunkTable::default();
        for (id, loc) in &table {
            t.insert(*id, *loc);
        }
        let io = |what: &str| {
            let what = what.to_string();
            move |e: std::io::Error| super::Error::io(what, e)
        };
        for (g, m) in &maps {
            format::write_atomic(&map_path(path, *g), &m.encode(*g, stamp)).map_err(io("writing a map"))?;
        }
        format::write_atomic(&path.join(Paths::CHUNKS), &t.encode(uuid, stamp, next_id))
            .map_err(io("writing chunks.tbl"))?;
        for o in &orphans {
            std::fs::remove_file(o).map_err(io("removing an orphan map"))?;
            rep.repaired.push(format!(
                "removed orphan map {}",
                o.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
            ));
        }
        for (_, p) in journal::list_files(&jdir).unwrap_or_default() {
            std::fs::remove_file(&p).map_err(io("removing a journal file"))?;
        }
        format::fsync_dir(&jdir).map_err(io("syncing the journal directory"))?;
        let unrepaired =
            !catalogue_ok || rep.findings.iter().any(|f| f.severity == "error" && f.object == "superblock");
        if sb.mode == Mode::ReadOnly && !unrepaired {
            sb.mode = Mode::Normal;
            rep.repaired.push("read-only mode cleared".into());
        }
        sb.clean = true;
        sb.checkpoint_seq = stamp;
        sb.write(&sb_path).map_err(io("writing the superblock"))?;
        rep.clean = !unrepaired;
    } else {
        rep.clean = rep.errors() == 0;
    }
    rep.findings.sort_by(|a, b| {
        sev_rank(&a.severity).cmp(&sev_rank(&b.severity)).then(a.object.cmp(&b.object)).then(a.detail.cmp(&b.detail))
    });
    Ok(rep)
}

fn sev_rank(s: &str) -> u8 {
    match s {
        "error" => 0,
        "warning" => 1,
        _ => 2,
    }
}

/// The report as stable text (for humans and for the damaged-store fixtures).
pub fn render(rep: &CheckReport) -> String {
    let mut out = String::new();
    for f in &rep.findings {
        out.push_str(&format!("{:<7} {}: {}\n", f.severity, f.object, f.detail));
    }
    for r in &rep.repaired {
        out.push_str(&format!("repaired {r}\n"));
    }
    out.push_str(&format!(
        "{} packs, {} records ({} damaged), {} layers, {} map entries, {} unreferenced chunks: {}\n",
        rep.packs,
        rep.records,
        rep.bad_records,
        rep.layers,
        rep.map_entries,
        rep.unreferenced_chunks,
        if rep.clean { "clean" } else { "PROBLEMS FOUND" }
    ));
    out
}
