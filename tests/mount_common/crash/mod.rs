//! The crash harness: `kill -9` of the real mount daemon at a random
//! moment under load, then recovery, verification of the write policy's
//! promise, and `check`. RELIABILITY.md describes what it checks and how
//! to run and replay it; `tests/crash_harness.rs` holds the tests.
//!
//! One iteration, on a store that persists across iterations (re-created
//! every `fresh_store_every` iterations and after a failure):
//!
//! 1. mount (the daemon is this test executable, as in `mount_common`);
//!    the first mount after a crash recovers the store; poll `status`
//!    through the control socket until the mode is `normal`;
//! 2. verify the previous iteration: the writer's volume against its log
//!    (`verify.rs`), fio's volumes with `--verify_only` and its saved
//!    verify state, then remove fio's volumes;
//! 3. optionally unmount cleanly, `check` (clean), mount again;
//! 4. start fio (`fio.rs`), the log-keeping writer (`writer.rs`), and a
//!    thread that asks for checkpoints and GC through the control socket
//!    now and then (so a kill can land inside them);
//! 5. once the writer has completed an fsync, wait a random delay (seeded)
//!    and SIGKILL the daemon by its PID; sometimes kill early instead,
//!    right after the mount;
//! 6. wait for fio and the writer to see the dead mount and exit, detach
//!    the dead mount (`fusermount3 -uz`, else `umount2(MNT_DETACH)`), and
//!    run `check` on the store exactly as the crash left it: no errors.
//!
//! Everything started is owned by a guard that kills only its own PID and
//! unmounts only its own mountpoint, also when a check fails or panics.

pub mod fio;
pub mod verify;
pub mod writer;

use crate::mount_common::daemon_command;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use strata::fs::MountConfig;
use strata::volume::{Engine, InitOptions, Mode, OpenOptions, WritePolicy, check};
use verify::Promise;
use writer::{BLOCK, Content, Rng, WriterConfig, mono_ns, splitmix};

const WRITER_FILE: &str = "crash-writer.raw";
const FIO_RAND: &str = "fio-rand4k.raw";
const FIO_SEQ: &str = "fio-seq1m.raw";

/// What a run does.
#[derive(Debug, Clone)]
pub struct Plan {
    pub policy: WritePolicy,
    pub iterations: u32,
    pub seed: u64,
    /// Size of the writer's volume.
    pub volume_mib: u64,
    pub threads: u64,
    pub fsync_every: u64,
    /// Kill this long (uniform, ms) after the writer's first completed fsync.
    pub kill_after_ms: (u64, u64),
    /// One iteration in this many kills right after the mount instead.
    pub early_kill_one_in: u64,
    pub fio: Option<fio::FioPlan>,
    /// Start on a fresh store every this many iterations (0: never).
    pub fresh_store_every: u32,
    /// Ask for checkpoints and GC during the workload.
    pub meta_ops: bool,
    /// After verifying, unmount cleanly and `check` before the next workload.
    pub check_after_recovery: bool,
    /// Bounded caches set on every new store before its first mount.
    pub caches: Caches,
}

/// `table-cache-bytes`, `map-cache-bytes`, `index-max-entries` (0: unset).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caches {
    pub table_bytes: u64,
    pub map_bytes: u64,
    pub index_entries: u64,
}

impl Caches {
    fn apply(&self, store: &Path) -> strata::volume::Result<()> {
        if self.table_bytes == 0 && self.map_bytes == 0 && self.index_entries == 0 {
            return Ok(());
        }
        let engine = Engine::open(store, &OpenOptions::default())?;
        engine.set_table_cache_bytes(self.table_bytes)?;
        engine.set_map_cache_bytes(self.map_bytes)?;
        engine.set_index_max_entries(self.index_entries)?;
        engine.close()
    }
}

/// Which promise each policy makes after `kill -9` (FORMAT.md, "Write
/// policies", column "after kill -9"): the page cache survives a process
/// kill, so every acknowledged write must be there under every policy.
/// The weaker SPEC §4 promise for async (everything before a completed
/// fsync) is implied and counted separately.
pub fn promise_after_kill(policy: WritePolicy) -> Promise {
    match policy {
        WritePolicy::Sync | WritePolicy::Async | WritePolicy::AsyncUnsafe | WritePolicy::Auto => Promise::Acknowledged,
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub iterations: u32,
    pub kills: u32,
    pub early_kills: u32,
    pub failures: Vec<String>,
    pub acked_ops: u64,
    pub fsyncs: u64,
    pub constrained_ack: u64,
    pub constrained_flush: u64,
    pub unacked_landed: u64,
    pub unacked: u64,
    pub fio_verified: u32,
    pub checks: u32,
    /// Spare packs (retired packs kept for reuse) present at the checks,
    /// summed: shows the spare pool took part.
    pub spares_seen: u64,
    pub meta_done: u64,
    pub max_recovery_ms: u128,
    pub kept: Vec<PathBuf>,
}

impl Outcome {
    pub fn summary(&self, plan: &Plan) -> String {
        format!(
            "policy {}: {} iterations, {} kills ({} early), {} failures; {} acknowledged writes, {} completed fsyncs; \
             {} block checks against acknowledged writes, {} against flushed writes; {} unacknowledged writes, {} of their blocks landed; \
             {} fio verify passes, {} clean checks ({} spare packs seen), {} checkpoints/GCs during load, slowest return to normal {} ms",
            plan.policy.as_str(),
            self.iterations,
            self.kills,
            self.early_kills,
            self.failures.len(),
            self.acked_ops,
            self.fsyncs,
            self.constrained_ack,
            self.constrained_flush,
            self.unacked,
            self.unacked_landed,
            self.fio_verified,
            self.checks,
            self.spares_seen,
            self.meta_done,
            self.max_recovery_ms
        )
    }
}

// ----- guards ---------------------------------------------------------------

/// A child process we started; killed (by its PID) and reaped on drop if
/// it is still running.
pub struct ChildGuard {
    child: Option<Child>,
    what: &'static str,
}

impl ChildGuard {
    pub fn new(child: Child, what: &'static str) -> ChildGuard {
        ChildGuard { child: Some(child), what }
    }

    /// Wait up to `limit` for it to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let start = Instant::now();
        let child = self.child.as_mut().ok_or("already reaped")?;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    self.child = None;
                    return Ok(st);
                }
                Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    return Err(format!("{} (pid {}) still runs after {limit:?}", self.what, child.id()));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take()
            && matches!(c.try_wait(), Ok(None))
        {
            eprintln!("crash harness: killing {} (pid {}) during cleanup", self.what, c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn is_mounted(mnt: &Path) -> bool {
    strata::fs::daemon::find_mount(mnt).ok().flatten().is_some()
}

/// Detach a (dead or live) mount of ours: `fusermount3 -uz`, then
/// `umount2(MNT_DETACH)` if that did not do it.
pub fn lazy_umount(mnt: &Path) {
    if !is_mounted(mnt) {
        return;
    }
    let _ = Command::new("fusermount3").arg("-uz").arg(mnt).stdout(Stdio::null()).stderr(Stdio::null()).status();
    if is_mounted(mnt) {
        let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: umount2 on our own mountpoint.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The mount daemon of one mount; on drop it is unmounted (lazily if
/// needed) and the daemon waited for, or killed by its PID.
pub struct Daemon {
    child: Option<Child>,
    pub store: PathBuf,
    pub mnt: PathBuf,
}

impl Daemon {
    pub fn start(store: &Path, mnt: &Path) -> Result<Daemon, String> {
        let cfg = MountConfig {
            store: store.into(),
            mountpoint: mnt.into(),
            foreground: false,
            options: vec![],
            threads: None,
        };
        let cmd = daemon_command(store, mnt, "");
        let child =
            strata::fs::spawn_daemon(&cfg, cmd).map_err(|e| format!("mount failed: {e:#}\n{}", log_tail(store)))?;
        Ok(Daemon { child: Some(child), store: store.into(), mnt: mnt.into() })
    }

    /// SIGKILL by PID; returns the monotonic time just before the signal.
    pub fn kill9(&mut self) -> Result<u64, String> {
        let mut c = self.child.take().ok_or("no daemon to kill")?;
        let t = mono_ns();
        // SAFETY: kill(2) on the PID of our own child, not yet reaped.
        let rc = unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        if rc != 0 {
            return Err(format!("kill -9 {}: {}", c.id(), std::io::Error::last_os_error()));
        }
        let st = c.wait().map_err(|e| e.to_string())?;
        if st.code().is_some() {
            // It exited by itself before the signal: not a crash.
            return Err(format!("the daemon had already exited ({st}) before the kill\n{}", log_tail(&self.store)));
        }
        Ok(t)
    }

    /// `strata umount`: unmount, wait for the daemon's clean exit.
    pub fn umount_clean(&mut self) -> Result<(), String> {
        strata::fs::umount(&self.mnt).map_err(|e| format!("umount: {e:#}"))?;
        let mut c = self.child.take().ok_or("no daemon")?;
        let st = ChildGuard::new_wait(&mut c, Duration::from_secs(300))?;
        if !st.success() {
            return Err(format!("the daemon exited with {st} after a clean unmount\n{}", log_tail(&self.store)));
        }
        Ok(())
    }

    pub fn control(&self, argv: &[&str]) -> Result<(String, String, i32), String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        strata::control::call(&self.store, &argv)
            .map_err(|e| format!("control socket: {e}"))?
            .ok_or_else(|| "no daemon on the control socket".to_string())
    }

    /// Poll `status` until the mode is normal; returns how long it took.
    pub fn wait_normal(&self, limit: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        loop {
            let (out, err, code) = self.control(&["status"])?;
            if code != 0 {
                return Err(format!("status failed ({code}): {err}"));
            }
            let v: serde_json::Value =
                serde_json::from_str(out.trim()).map_err(|e| format!("status JSON: {e}: {out}"))?;
            match v["operating_mode"].as_str() {
                Some("normal") => return Ok(t0.elapsed()),
                Some("recovering") if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
                Some(m) => {
                    return Err(format!(
                        "the store is in mode {m} after {:?} (read-only reason: {})\n{}",
                        t0.elapsed(),
                        v["read_only_reason"],
                        log_tail(&self.store)
                    ));
                }
                None => return Err(format!("status without a mode: {out}")),
            }
        }
    }
}

impl ChildGuard {
    fn new_wait(c: &mut Child, limit: Duration) -> Result<std::process::ExitStatus, String> {
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().map_err(|e| e.to_string())? {
                return Ok(st);
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!("the daemon did not exit within {limit:?}; killed it"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if is_mounted(&self.mnt) {
                let c_path = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).expect("path");
                // SAFETY: umount2 on our own mountpoint; lazy if busy.
                unsafe {
                    if libc::umount2(c_path.as_ptr(), 0) != 0 {
                        libc::umount2(c_path.as_ptr(), libc::MNT_DETACH);
                    }
                }
            }
            if ChildGuard::new_wait(&mut c, Duration::from_secs(60)).is_err() {
                eprintln!("crash harness: the daemon did not exit after the unmount; killed it");
            }
        }
        lazy_umount(&self.mnt);
    }
}

pub fn log_tail(store: &Path) -> String {
    let text = std::fs::read_to_string(store.join(strata::fs::daemon::LOGFILE_NAME)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!("--- last lines of the daemon log ---\n{}", lines[lines.len().saturating_sub(30)..].join("\n"))
}

// ----- the run ----------------------------------------------------------------

/// State carried from one iteration to the next.
struct Carry {
    /// What the writer's volume holds (verified).
    base: Vec<Content>,
    /// The previous iteration's logs, to verify after the remount.
    pending: Option<Pending>,
    next_op: u64,
}

struct Pending {
    log: PathBuf,
    kill_ns: u64,
    early: bool,
    fio: Option<fio::FioRun>,
    seed: u64,
}

/// Run `plan` in `root` (a work directory). Never panics on a finding: every
/// failure is recorded in the outcome with its seed, and the store it
/// happened on is kept for inspection.
pub fn run(plan: &Plan, root: &Path) -> Outcome {
    let mut out = Outcome::default();
    let blocks = plan.volume_mib * (1 << 20) / BLOCK as u64;
    let mut store_no = 0u32;
    let mut i = 0u32;
    while i < plan.iterations {
        store_no += 1;
        let sdir = root.join(format!("{}-store{store_no}", plan.policy.as_str()));
        let store = sdir.join("store");
        let mnt = sdir.join("mnt");
        std::fs::create_dir_all(&mnt).expect("mkdir mnt");
        let mnt = mnt.canonicalize().expect("canonical mountpoint");
        if let Err(e) = Engine::init(&store, &InitOptions { write_policy: plan.policy, ..Default::default() })
            .and_then(|()| plan.caches.apply(&store))
        {
            out.failures.push(format!("init: {e}"));
            return out;
        }
        eprintln!("crash harness: policy {} store {} ({})", plan.policy.as_str(), store_no, store.display());
        let mut carry = Carry { base: vec![Content::Zero; blocks as usize], pending: None, next_op: 1 << 20 };
        let mut failed = false;
        let mut on_this_store = 0;
        while i < plan.iterations && !(plan.fresh_store_every > 0 && on_this_store == plan.fresh_store_every) {
            let seed = splitmix(plan.seed ^ u64::from(i).wrapping_mul(0x1000_0000_01b3));
            eprintln!(
                "crash harness: [{}] iteration {}/{} seed {seed:#x} (run seed {:#x})",
                plan.policy.as_str(),
                i + 1,
                plan.iterations,
                plan.seed
            );
            let r = iteration(plan, &store, &mnt, &sdir, i, seed, &mut carry, &mut out);
            i += 1;
            on_this_store += 1;
            if let Err(e) = r {
                let msg = format!(
                    "policy {} iteration {} (seed {seed:#x}, run seed {:#x}): {e}",
                    plan.policy.as_str(),
                    i,
                    plan.seed
                );
                eprintln!("crash harness: FAILURE: {msg}");
                out.failures.push(msg);
                out.kept.push(sdir.clone());
                failed = true;
                break;
            }
        }
        if failed {
            continue;
        }
        // Verify the last crash on this store, then a clean close and check.
        let r = finish(plan, &store, &mnt, &mut carry, &mut out);
        if let Err(e) = r {
            let msg = format!("policy {} final verification (run seed {:#x}): {e}", plan.policy.as_str(), plan.seed);
            eprintln!("crash harness: FAILURE: {msg}");
            out.failures.push(msg);
            out.kept.push(sdir.clone());
        } else {
            let _ = std::fs::remove_dir_all(&sdir);
        }
    }
    out
}

/// Mount, wait for normal mode, and verify what the previous crash left.
fn mount_and_verify(
    plan: &Plan,
    store: &Path,
    mnt: &Path,
    carry: &mut Carry,
    out: &mut Outcome,
) -> Result<Daemon, String> {
    let daemon = Daemon::start(store, mnt)?;
    let took = daemon.wait_normal(Duration::from_secs(300))?;
    out.max_recovery_ms = out.max_recovery_ms.max(took.as_millis());
    let Some(p) = carry.pending.take() else {
        return Ok(daemon);
    };
    // The writer's volume against its log.
    let text = std::fs::read_to_string(&p.log).map_err(|e| format!("reading {}: {e}", p.log.display()))?;
    let log = verify::parse_log(&text)?;
    let early = log.errors_before(p.kill_ns);
    if !early.is_empty() {
        return Err(format!(
            "the writer saw errors before the daemon was killed:\n  {}\n{}",
            early.join("\n  "),
            log_tail(store)
        ));
    }
    let data = read_direct(&mnt.join(WRITER_FILE), carry.base.len())?;
    let v = verify::verify(&log, &carry.base, &data);
    eprintln!("crash harness:   writer: {}", v.summary());
    eprintln!("crash harness:   the writer saw the crash as errno {:?}", log.error_counts());
    let promise = promise_after_kill(plan.policy);
    if !v.holds(promise) {
        return Err(format!(
            "the {:?} promise of policy {} does not hold: {}\n  {}\nlog: {}\n{}",
            promise,
            plan.policy.as_str(),
            v.summary(),
            v.problems.join("\n  "),
            p.log.display(),
            log_tail(store)
        ));
    }
    if !v.holds(Promise::Flushed) {
        return Err(format!(
            "the SPEC promise (flushed writes survive) does not hold: {}\n  {}",
            v.summary(),
            v.problems.join("\n  ")
        ));
    }
    // Not vacuous: unless the kill came right after the mount, writes were
    // acknowledged and flushed, and blocks were held to them.
    if !p.early && (v.acked_ops == 0 || v.constrained_ack == 0 || v.fsyncs_completed == 0 || v.constrained_flush == 0) {
        return Err(format!("vacuous iteration (seed {:#x}): {}", p.seed, v.summary()));
    }
    out.acked_ops += v.acked_ops;
    out.fsyncs += v.fsyncs_completed;
    out.constrained_ack += v.constrained_ack;
    out.constrained_flush += v.constrained_flush;
    out.unacked += v.unacked_ops;
    out.unacked_landed += v.unacked_landed;
    carry.base = v.now;
    // fio's volumes with its own verify state.
    if let Some(f) = p.fio {
        let states = f.state_files();
        if states.is_empty() {
            if !p.early {
                return Err(format!("fio left no verify state in {}", f.dir.display()));
            }
        } else {
            let s = f.verify(p.early)?;
            eprintln!("crash harness:   fio: {s}");
            out.fio_verified += 1;
        }
        f.remove()?;
    }
    Ok(daemon)
}

/// Read the whole file with O_DIRECT.
fn read_direct(p: &Path, blocks: usize) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
        .map_err(|e| format!("opening {}: {e}", p.display()))?;
    let len = blocks * BLOCK;
    let mut out = vec![0u8; len];
    let chunk = 1 << 20;
    let mut raw = vec![0u8; chunk + BLOCK];
    let a = raw.as_ptr().align_offset(BLOCK);
    let mut off = 0;
    while off < len {
        let n = chunk.min(len - off);
        let buf = &mut raw[a..a + n];
        let got = f.read_at(buf, off as u64).map_err(|e| format!("reading {} at {off}: {e}", p.display()))?;
        if got == 0 {
            return Err(format!("{} ends at {off}, expected {len} bytes", p.display()));
        }
        out[off..off + got].copy_from_slice(&buf[..got]);
        off += got;
    }
    Ok(out)
}

fn run_check(store: &Path, when: &str, out: &mut Outcome) -> Result<(), String> {
    let rep = check::check(store, &check::CheckOptions::default(), &mut |_, _| {})
        .map_err(|e| format!("check ({when}): {e}"))?;
    out.checks += 1;
    out.spares_seen += std::fs::read_dir(store.join("packs"))
        .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".spare")).count() as u64)
        .unwrap_or(0);
    if rep.errors() > 0 || !rep.clean {
        return Err(format!("check ({when}) is not clean:\n{}", check::render(&rep)));
    }
    let warnings: Vec<_> = rep.findings.iter().filter(|f| f.severity != "info").collect();
    if !warnings.is_empty() {
        eprintln!("crash harness:   check ({when}) warnings: {warnings:?}");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn iteration(
    plan: &Plan,
    store: &Path,
    mnt: &Path,
    sdir: &Path,
    i: u32,
    seed: u64,
    carry: &mut Carry,
    out: &mut Outcome,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut daemon = mount_and_verify(plan, store, mnt, carry, out)?;
    if plan.check_after_recovery && i > 0 {
        daemon.umount_clean()?;
        drop(daemon);
        run_check(store, "after recovery and a clean unmount", out)?;
        daemon = Daemon::start(store, mnt)?;
        daemon.wait_normal(Duration::from_secs(60))?;
    }
    let wfile = mnt.join(WRITER_FILE);
    if !wfile.exists() {
        let f = std::fs::File::create(&wfile).map_err(|e| format!("creating {}: {e}", wfile.display()))?;
        f.set_len(carry.base.len() as u64 * BLOCK as u64).map_err(|e| e.to_string())?;
    }
    let idir = sdir.join(format!("iter{:04}", i + 1));
    std::fs::create_dir_all(&idir).map_err(|e| e.to_string())?;
    let fio_run = plan.fio.as_ref().map(|fp| fio::FioRun {
        dir: idir.join("fio"),
        rand: mnt.join(FIO_RAND),
        seq: mnt.join(FIO_SEQ),
        seed: seed & 0xffff_ffff,
        plan: fp.clone(),
    });
    let mut fio_child = match &fio_run {
        Some(f) => Some(f.start()?),
        None => None,
    };
    let log = idir.join("writer.log");
    let wcfg = WriterConfig {
        file: wfile,
        log: log.clone(),
        threads: plan.threads,
        blocks: carry.base.len() as u64,
        seed,
        first_op: carry.next_op,
        fsync_every: plan.fsync_every,
        max_secs: 600,
        direct: true,
    };
    carry.next_op += 1 << 32;
    let mut wcmd = Command::new(std::env::current_exe().expect("test exe"));
    wcmd.args(["--exact", "writer_entry", "--nocapture", "--test-threads=1"])
        .env(writer::ENV_WRITER, serde_json::to_string(&wcfg).expect("json"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(idir.join("writer.out")).map_err(|e| e.to_string())?)
        .stderr(std::fs::File::create(idir.join("writer.err")).map_err(|e| e.to_string())?);
    let mut writer = ChildGuard::new(wcmd.spawn().map_err(|e| format!("starting the writer: {e}"))?, "writer");
    // Checkpoints and GC through the control socket during the load.
    let stop = Arc::new(AtomicBool::new(false));
    let meta_done = Arc::new(AtomicU64::new(0));
    let meta = plan.meta_ops.then(|| {
        let (stop, done, store) = (stop.clone(), meta_done.clone(), store.to_path_buf());
        let mut r = Rng::new(seed ^ 0x6d65_7461);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100 + r.below(500)));
                let cmd = if r.below(3) == 0 { "gc" } else { "checkpoint" };
                match strata::control::call(&store, &[cmd.to_string()]) {
                    Ok(Some((_, _, 0))) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {}
                    _ => return,
                }
            }
        })
    });
    // The moment of the kill.
    let early = plan.early_kill_one_in > 0 && rng.below(plan.early_kill_one_in) == 0;
    let delay = if early {
        Duration::from_millis(rng.below(100))
    } else {
        wait_for_first_fsync(&log, &mut writer)?;
        // fio starts slower than the writer on a loaded machine: arm the
        // kill only once both of its volumes hold data, so every
        // iteration has fio writes to verify.
        if let Some(f) = &fio_run {
            wait_for_data(&[&f.rand, &f.seq])?;
        }
        let (lo, hi) = plan.kill_after_ms;
        Duration::from_millis(lo + rng.below(hi - lo + 1))
    };
    std::thread::sleep(delay);
    let kill_ns = daemon.kill9()?;
    out.kills += 1;
    if early {
        out.early_kills += 1;
    }
    eprintln!(
        "crash harness:   killed the daemon {} ms {}",
        delay.as_millis(),
        if early { "after the mount (early kill)" } else { "after the writer's first completed fsync" }
    );
    stop.store(true, Ordering::Relaxed);
    let wst = writer.wait(Duration::from_secs(120))?;
    if !wst.success() {
        return Err(format!("the writer exited with {wst}; see {}", idir.join("writer.err").display()));
    }
    if let Some(c) = fio_child.as_mut() {
        c.wait(Duration::from_secs(120))?;
    }
    if let Some(h) = meta {
        let _ = h.join();
    }
    out.meta_done += meta_done.load(Ordering::Relaxed);
    lazy_umount(mnt);
    drop(daemon);
    if is_mounted(mnt) {
        return Err("the dead mount could not be detached".into());
    }
    run_check(store, "the store as kill -9 left it", out)?;
    carry.pending = Some(Pending { log, kill_ns, early, fio: fio_run, seed });
    out.iterations += 1;
    Ok(())
}

/// Wait until the writer's log shows a completed fsync.
fn wait_for_first_fsync(log: &Path, writer: &mut ChildGuard) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(log)
            && t.lines().any(|l| l.starts_with("D "))
        {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            return Err("the writer completed no fsync within 120 s".into());
        }
        if let Some(c) = writer.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            writer.child = None;
            return Err(format!("the writer exited ({st}) before its first fsync; log {}", log.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Wait until every file has allocated blocks (`st_blocks` is the
/// volume's data; the kernel caches attributes for 1 s).
fn wait_for_data(files: &[&Path]) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let t0 = Instant::now();
    while !files.iter().all(|f| std::fs::metadata(f).is_ok_and(|m| m.blocks() > 0)) {
        if t0.elapsed() > Duration::from_secs(120) {
            return Err(format!("fio wrote nothing to {files:?} within 120 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// After the last iteration on a store: recover, verify, unmount cleanly,
/// check, and open with the library (normal mode, clean).
fn finish(plan: &Plan, store: &Path, mnt: &Path, carry: &mut Carry, out: &mut Outcome) -> Result<(), String> {
    let mut daemon = mount_and_verify(plan, store, mnt, carry, out)?;
    daemon.umount_clean()?;
    drop(daemon);
    run_check(store, "after the last recovery and a clean unmount", out)?;
    let e = Engine::open(store, &OpenOptions::default()).map_err(|e| format!("open after the run: {e}"))?;
    if e.mode() != Mode::Normal {
        return Err(format!("mode {:?} after a clean close", e.mode()));
    }
    e.close().map_err(|e| format!("close: {e}"))?;
    Ok(())
}
