//! The crash harness's writer: a separate process (this test executable
//! again, `--exact writer_entry`) that writes self-describing 4 KiB blocks
//! into one volume file on the mount with O_DIRECT, and records in an
//! append-only log on the local filesystem what it issued, what was
//! acknowledged and which fsyncs completed. The verifier (`verify.rs`)
//! reads the volume back after the crash and judges every block against
//! that log.
//!
//! Block format (4096 bytes, little-endian):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `STRCRSH1` |
//! | 8 | 8 | block number (u64::MAX for a shared "dup" block) |
//! | 16 | 8 | op id (unique block) or dup key |
//! | 24 | 8 | tag: 1 unique, 2 dup |
//! | 32 | 4032 | payload derived from the fields above (half compressible) |
//! | 4064 | 32 | BLAKE3 of bytes 0..4064 |
//!
//! An all-zero block is "zero" (never written, a zero write or a punched
//! hole). So a block can be told apart as: zero, exactly the data of op N
//! for this block, dup key K (identical bytes in many blocks: exercises
//! dedup), torn/garbage (checksum), or another block's data (misplaced).
//!
//! Threads: `threads` workers, each owning one contiguous region of the
//! file, so the writes to a block are issued one at a time, in op-id
//! order, by one thread; a thread stops at its first error. Ops: random
//! 4 KiB writes, sequential 1 MiB writes (a cursor per region), zero
//! writes, and punched holes (`fallocate(PUNCH_HOLE)`), and every
//! `fsync_every` ops an `fdatasync` or `fsync` (alternating).
//!
//! Log lines (each one `write(2)` under a mutex on an `O_APPEND` file, so
//! the file order is a real-time order across threads):
//!
//! ```text
//! W <op> <thread> <first block> <blocks> <kind u|d|z|p> <dup key>   before the write is issued
//! A <op> <mono ns>                                                    after it returned in full
//! E <op> <errno> <mono ns>                                            it failed (or was short: errno 0)
//! S <k> <thread> <mono ns>                                            before fsync k is called
//! D <k> <mono ns>                                                     fsync k returned 0
//! X <k> <errno> <mono ns>                                             fsync k failed
//! O <errno> <mono ns>                                                 opening the volume failed
//! END <reason>                                                        the writer stopped
//! ```
//!
//! The log is fdatasync'ed after every completed fsync and at the end.
//! Times are CLOCK_MONOTONIC, comparable with the harness's kill time.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BLOCK: usize = 4096;
const MAGIC: &[u8; 8] = b"STRCRSH1";
const HASH_AT: usize = BLOCK - 32;
const TAG_UNIQUE: u64 = 1;
const TAG_DUP: u64 = 2;
/// Blocks of a sequential write (1 MiB).
pub const SEQ_BLOCKS: u64 = 256;
pub const ENV_WRITER: &str = "STRATA_CRASH_WRITER";

/// What a block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    Zero,
    /// The data op `id` wrote to this block.
    Unique(u64),
    /// The shared block with key `k` (the same bytes wherever it is).
    Dup(u64),
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Zero => write!(f, "zeros"),
            Content::Unique(op) => write!(f, "op {op}"),
            Content::Dup(k) => write!(f, "dup block {k}"),
        }
    }
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small deterministic generator (xorshift64*), seeded by splitmix.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn body(out: &mut [u8], block_no: u64, id: u64, tag: u64) {
    out[0..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&block_no.to_le_bytes());
    out[16..24].copy_from_slice(&id.to_le_bytes());
    out[24..32].copy_from_slice(&tag.to_le_bytes());
    let mut r = Rng::new(block_no ^ id.rotate_left(23) ^ tag.rotate_left(47));
    let half = 32 + (HASH_AT - 32) / 2;
    for (i, chunk) in out[32..HASH_AT].chunks_mut(8).enumerate() {
        let mut v = r.next();
        if 32 + i * 8 < half {
            // Low nibbles only: compressible, so zstd stores it compressed.
            v &= 0x0f0f_0f0f_0f0f_0f0f;
        }
        let b = v.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let h = blake3::hash(&out[..HASH_AT]);
    out[HASH_AT..BLOCK].copy_from_slice(h.as_bytes());
}

/// Fill `out` (4096 bytes) with `c` as block `block_no` holds it.
pub fn fill(block_no: u64, c: Content, out: &mut [u8]) {
    match c {
        Content::Zero => out.fill(0),
        Content::Unique(op) => body(out, block_no, op, TAG_UNIQUE),
        Content::Dup(k) => body(out, u64::MAX, k, TAG_DUP),
    }
}

/// What block `block_no` holds, or why its bytes are not a valid block.
pub fn parse(block_no: u64, data: &[u8]) -> Result<Content, String> {
    if data.iter().all(|&b| b == 0) {
        return Ok(Content::Zero);
    }
    if &data[0..8] != MAGIC {
        return Err("unknown bytes (no block header)".into());
    }
    if blake3::hash(&data[..HASH_AT]).as_bytes() != &data[HASH_AT..BLOCK] {
        return Err("checksum mismatch (a torn or corrupted block)".into());
    }
    let u = |r: std::ops::Range<usize>| u64::from_le_bytes(data[r].try_into().expect("8 bytes"));
    let (bno, id, tag) = (u(8..16), u(16..24), u(24..32));
    let c = match tag {
        TAG_UNIQUE if bno == block_no => Content::Unique(id),
        TAG_UNIQUE => {
            return Err(format!("holds the data op {id} wrote to block {bno} (misplaced)"));
        }
        TAG_DUP if bno == u64::MAX => Content::Dup(id),
        _ => return Err(format!("bad header: tag {tag}, block {bno}")),
    };
    // The checksum matched; compare every byte anyway.
    let mut want = vec![0u8; BLOCK];
    fill(block_no, c, &mut want);
    if want != data {
        return Err(format!("header says {c} but the payload differs"));
    }
    Ok(c)
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct WriterConfig {
    pub file: PathBuf,
    pub log: PathBuf,
    pub threads: u64,
    /// Blocks in the file (a multiple of `threads`).
    pub blocks: u64,
    pub seed: u64,
    /// The first op id; op ids grow across iterations so an old block can
    /// never pass for a new one.
    pub first_op: u64,
    pub fsync_every: u64,
    pub max_secs: u64,
    /// O_DIRECT (the harness); false only for the verifier's self-test
    /// on a filesystem that may not support it.
    pub direct: bool,
}

/// CLOCK_MONOTONIC in ns (the same clock in every process).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Log {
    file: Mutex<File>,
}

impl Log {
    fn line(&self, s: String) {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(s.as_bytes()).expect("writing the crash log");
    }
    fn sync(&self) {
        let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let fd = f.try_clone().expect("dup of the crash log");
        drop(f);
        fd.sync_data().expect("syncing the crash log");
    }
}

/// A 4096-aligned buffer of `len` bytes inside a larger Vec (no unsafe).
struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}
impl Aligned {
    fn new(len: usize) -> Aligned {
        let v = vec![0u8; len + BLOCK];
        let off = v.as_ptr().align_offset(BLOCK);
        Aligned { v, off, len }
    }
    fn buf(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Called by the `writer_entry` test: be the writer if asked, then exit.
pub fn run_writer_if_asked() {
    let Ok(json) = std::env::var(ENV_WRITER) else {
        return;
    };
    let cfg: WriterConfig = serde_json::from_str(&json).expect("writer config");
    let code = run_writer(&cfg);
    std::process::exit(code);
}

/// Write until an error, the deadline, or forever; returns an exit code.
pub fn run_writer(cfg: &WriterConfig) -> i32 {
    let log = Arc::new(Log {
        file: Mutex::new(
            std::fs::OpenOptions::new().create(true).append(true).open(&cfg.log).expect("opening the crash log"),
        ),
    });
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if cfg.direct { libc::O_DIRECT } else { 0 })
        .open(&cfg.file)
    {
        Ok(f) => f,
        Err(e) => {
            // An early kill can land before the open: the verifier judges
            // the time (after the kill: nothing was written, so every
            // block must be unchanged; before it: a failure).
            log.line(format!("O {} {}\n", errno_of(&e), mono_ns()));
            log.line("END open failed\n".into());
            log.sync();
            return 0;
        }
    };
    let file = Arc::new(file);
    let next_op = Arc::new(AtomicU64::new(cfg.first_op));
    let next_sync = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let region = cfg.blocks / cfg.threads;
    let deadline = Instant::now() + Duration::from_secs(cfg.max_secs);
    let mut hs = Vec::new();
    for t in 0..cfg.threads {
        let (file, log, next_op, next_sync, stop) =
            (file.clone(), log.clone(), next_op.clone(), next_sync.clone(), stop.clone());
        let cfg = cfg.clone();
        hs.push(std::thread::spawn(move || {
            worker(t, region, &cfg, &file, &log, &next_op, &next_sync, &stop, deadline)
        }));
    }
    let mut reasons = Vec::new();
    for h in hs {
        reasons.push(h.join().unwrap_or_else(|_| "panic".into()));
    }
    log.line(format!("END {}\n", reasons.join(",")));
    log.sync();
    0
}

#[allow(clippy::too_many_arguments)]
fn worker(
    t: u64,
    region: u64,
    cfg: &WriterConfig,
    file: &File,
    log: &Log,
    next_op: &AtomicU64,
    next_sync: &AtomicU64,
    stop: &AtomicBool,
    deadline: Instant,
) -> String {
    let mut rng = Rng::new(cfg.seed ^ splitmix(t + 1));
    let base = t * region;
    let seq_len = SEQ_BLOCKS.min(region);
    let mut cursor = rng.below(region / seq_len) * seq_len;
    let mut buf = Aligned::new(SEQ_BLOCKS as usize * BLOCK);
    let mut since_sync = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            return "stopped".into();
        }
        if Instant::now() > deadline {
            return "deadline".into();
        }
        let r = rng.below(100);
        let (first, n, kind, key) = if r < 55 {
            (base + rng.below(region), 1, 'u', 0)
        } else if r < 65 {
            (base + rng.below(region), 1, 'd', 1 + rng.below(8))
        } else if r < 85 {
            let first = base + cursor;
            cursor = (cursor + seq_len) % (region / seq_len * seq_len);
            if rng.below(4) == 0 { (first, seq_len, 'd', 1 + rng.below(8)) } else { (first, seq_len, 'u', 0) }
        } else {
            let n = 1 + rng.below(16.min(region));
            let first = base + rng.below(region - n + 1);
            (first, n, if r < 92 { 'z' } else { 'p' }, 0)
        };
        let op = next_op.fetch_add(1, Ordering::Relaxed);
        log.line(format!("W {op} {t} {first} {n} {kind} {key}\n"));
        let off = first * BLOCK as u64;
        let len = n as usize * BLOCK;
        let res: std::io::Result<()> = if kind == 'p' {
            // SAFETY: fallocate on the fd `file` owns; no memory is passed.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as libc::off_t,
                    len as libc::off_t,
                )
            };
            if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        } else {
            let b = &mut buf.buf()[..len];
            for i in 0..n {
                let c = match kind {
                    'u' => Content::Unique(op),
                    'd' => Content::Dup(key),
                    _ => Content::Zero,
                };
                fill(first + i, c, &mut b[i as usize * BLOCK..(i as usize + 1) * BLOCK]);
            }
            match file.write_at(b, off) {
                Ok(w) if w == len => Ok(()),
                Ok(w) => Err(std::io::Error::other(format!("short write: {w} of {len}"))),
                Err(e) => Err(e),
            }
        };
        match res {
            Ok(()) => log.line(format!("A {op} {}\n", mono_ns())),
            Err(e) => {
                log.line(format!("E {op} {} {}\n", errno_of(&e), mono_ns()));
                stop.store(true, Ordering::Relaxed);
                return format!("write error {e}");
            }
        }
        since_sync += 1;
        if since_sync >= cfg.fsync_every {
            since_sync = 0;
            let k = next_sync.fetch_add(1, Ordering::Relaxed);
            log.line(format!("S {k} {t} {}\n", mono_ns()));
            let r = if k.is_multiple_of(2) { file.sync_data() } else { file.sync_all() };
            match r {
                Ok(()) => {
                    log.line(format!("D {k} {}\n", mono_ns()));
                    log.sync();
                }
                Err(e) => {
                    log.line(format!("X {k} {} {}\n", errno_of(&e), mono_ns()));
                    stop.store(true, Ordering::Relaxed);
                    return format!("fsync error {e}");
                }
            }
        }
    }
}
