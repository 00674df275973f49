//! The mount daemon's life: start (foreground or daemonized), readiness,
//! signals, clean unmount, pidfile; and `umount`.
//!
//! Start. [`mount`] with `foreground = false` re-executes the current
//! binary as `strata mount STORE MOUNTPOINT --foreground [-o ...]` in a new
//! session (setsid) with stdin on /dev/null and stdout/stderr appended to
//! `STORE/daemon.log`, and hands it the write end of a pipe (fd number in
//! `STRATA_MOUNT_READY_FD`). The child opens the store, mounts, completes
//! the FUSE INIT handshake, starts the control socket, writes
//! `STORE/daemon.pid`, and only then writes `ready` to the pipe; on any
//! failure it writes `error: <message>` instead. The parent returns only
//! after `ready` *and* after seeing the mount in /proc/self/mountinfo, or
//! fails with the child's message (or, if it died silently, its exit
//! status and the tail of its log).
//!
//! Stop. The session ends when the kernel disconnects: `umount`,
//! `fusermount3 -u`, `strata umount`, or SIGTERM/SIGINT/SIGHUP, which the
//! daemon turns into an unmount of its own mountpoint (lazy if files are
//! still open: then it keeps serving them until the last one closes). Then
//! the control socket is stopped (running commands are waited for), the
//! engine is closed (`Engine::close`: everything flushed, store marked
//! clean), the pidfile removed, and the process exits 0.
//!
//! Invariants: the pidfile exists only while the daemon serves; `ready` is
//! never sent before the mount answers requests. Signal handlers only
//! write one byte to a pipe (async-signal-safe); the unmount itself runs
//! on the `strata-signals` thread.

use super::filesystem::{FsSettings, StrataFs};
use super::inodes::InodeTable;
use super::{ControlHandler, MountConfig, invalidate, layout, options};
use crate::control;
use crate::volume::{Engine, OpenOptions};
use anyhow::{Context, anyhow, bail};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const PIDFILE_NAME: &str = "daemon.pid";
pub const LOGFILE_NAME: &str = "daemon.log";
/// Environment variable carrying the readiness pipe's fd to the child.
pub const READY_FD_ENV: &str = "STRATA_MOUNT_READY_FD";
/// How long `umount` waits for the daemon to flush and exit.
const EXIT_WAIT: Duration = Duration::from_secs(600);
/// linux/prctl.h (not in the libc crate yet).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Mount `cfg.store` on `cfg.mountpoint`. See the module doc.
pub fn mount(cfg: &MountConfig, control: ControlHandler) -> anyhow::Result<()> {
    if cfg.foreground {
        return run_foreground(cfg, control);
    }
    let exe = std::env::current_exe().context("finding the strata executable to start the daemon")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg(&cfg.store).arg(&cfg.mountpoint).arg("--foreground");
    let mut opts = cfg.options.clone();
    if let Some(n) = cfg.threads {
        opts.push(format!("threads={n}"));
    }
    if !opts.is_empty() {
        cmd.arg("-o").arg(opts.join(","));
    }
    // The daemon outlives this process; dropping Child neither waits nor kills.
    spawn_daemon(cfg, cmd).map(drop)
}

/// Start `cmd` as the daemon for `cfg` (it must end up calling [`mount`]
/// with `foreground = true`) and wait until its mount is live. Public so
/// tests can start a daemon from their own executable.
pub fn spawn_daemon(cfg: &MountConfig, mut cmd: Command) -> anyhow::Result<Child> {
    let store = cfg.store.canonicalize().with_context(|| format!("store {}", cfg.store.display()))?;
    let (rd, wr) = pipe().context("creating the readiness pipe")?;
    let log_path = store.join(LOGFILE_NAME);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .or_else(|_| File::options().write(true).open("/dev/null"))
        .context("opening the daemon log")?;
    let wr_fd = wr.as_raw_fd();
    cmd.env(READY_FD_ENV, wr_fd.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log fd")?)
        .stderr(log);
    // SAFETY: between fork and exec we only call async-signal-safe
    // functions (setsid, fcntl) on an fd we own.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(wr_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(wr_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the strata daemon")?;
    drop(wr);
    let mut rd = File::from(rd);
    let message = read_ready(&mut rd, &mut child)?;
    let mountpoint = cfg.mountpoint.canonicalize().unwrap_or_else(|_| cfg.mountpoint.clone());
    match message.trim_end() {
        "ready" => {
            if find_mount(&mountpoint)?.is_none() {
                bail!(
                    "the strata daemon (pid {}) reported ready but {} is not in /proc/self/mountinfo",
                    child.id(),
                    mountpoint.display()
                );
            }
            Ok(child)
        }
        m if m.starts_with("error: ") => {
            let _ = child.wait();
            Err(anyhow!("{}", &m["error: ".len()..]))
        }
        _ => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            Err(anyhow!(
                "the strata daemon exited ({status}) before the mount was ready; last lines of {}:\n{}",
                log_path.display(),
                tail(&log_path, 20)
            ))
        }
    }
}

/// Read the child's one readiness line, or "" if it closed the pipe or
/// died without writing one.
fn read_ready(rd: &mut File, child: &mut Child) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut warned = false;
    let mut buf = Vec::new();
    loop {
        let mut pfd = libc::pollfd { fd: rd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if rc > 0 {
            let mut chunk = [0u8; 4096];
            let n = rd.read(&mut chunk).context("reading the readiness pipe")?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.contains(&b'\n') {
                break;
            }
            continue;
        }
        // No word yet: a dead child that leaked the pipe to a grandchild
        // would keep it open forever, so watch the child too.
        if child.try_wait().context("waiting for the strata daemon")?.is_some() {
            break;
        }
        if !warned && started.elapsed() > Duration::from_secs(10) {
            eprintln!("strata: waiting for the store to open (recovery may be running)...");
            warned = true;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The readiness pipe handed down by [`spawn_daemon`], if any.
struct Ready(Option<File>);

impl Ready {
    fn from_env() -> Ready {
        let Some(fd) = std::env::var(READY_FD_ENV).ok().and_then(|v| v.parse::<RawFd>().ok()) else {
            return Ready(None);
        };
        // Only trust the number if it is a pipe: the variable could have
        // leaked into an unrelated process's environment.
        // SAFETY: fstat writes into the zeroed struct; a bad fd gives -1.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if fd < 3 || unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFIFO {
            return Ready(None);
        }
        // SAFETY: the fd is open (fstat succeeded), inherited for us alone,
        // and from here owned by this File. CLOEXEC keeps it out of
        // helpers we spawn (fusermount3).
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            Ready(Some(File::from_raw_fd(fd)))
        }
    }

    fn send(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Serve in this process until unmounted.
fn run_foreground(cfg: &MountConfig, control: ControlHandler) -> anyhow::Result<()> {
    let mut ready = Ready::from_env();
    let res = serve(cfg, control, &mut ready);
    if let Err(e) = &res {
        ready.send(&format!("error: {}\n", format!("{e:#}").replace('\n', " ")));
    }
    res
}

fn serve(cfg: &MountConfig, control: ControlHandler, ready: &mut Ready) -> anyhow::Result<()> {
    let mut opts = options::parse(&cfg.options).map_err(|e| anyhow!(e))?;
    if cfg.threads.is_some() {
        opts.threads = cfg.threads;
    }
    let store = cfg.store.canonicalize().with_context(|| format!("store {}", cfg.store.display()))?;
    let mountpoint = canonical_mountpoint(&cfg.mountpoint)?;
    if let Some(m) = find_mount(&mountpoint)?
        && m.fstype.starts_with("fuse")
        && m.fstype.contains("strata")
    {
        bail!(
            "{} is already a strata mount (of {}); unmount it first with `strata umount {}`",
            mountpoint.display(),
            m.source,
            mountpoint.display()
        );
    }

    let engine = Engine::open(&store, &OpenOptions { read_only: opts.read_only, ..Default::default() })
        .with_context(|| format!("opening store {}", store.display()))?;
    if !opts.read_only {
        remove_leftover_unlinked(&engine);
    }
    // Replication hook (issue 6): a peer configured with `peer add` runs
    // as named threads of this daemon; stopped before the store closes.
    // Served: `strata peer …` run through the control socket finds it.
    let served = if opts.read_only {
        None
    } else {
        Some(crate::replica::node::serve(&engine).map_err(|e| anyhow!("replication: {e}"))?)
    };

    let n_threads = opts.threads.unwrap_or_else(|| {
        options::default_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    });
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let inodes = Arc::new(InodeTable::new());
    let fs = StrataFs::new(
        engine.clone(),
        inodes.clone(),
        FsSettings {
            read_only: opts.read_only,
            max_background: opts.max_background,
            max_write: opts.max_write,
            writeback_cache: opts.writeback_cache,
            keep_cache: opts.keep_cache,
            uid,
            gid,
        },
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(store.to_string_lossy().into_owned()),
        // Kernel option: the mount shows as type fuse.strata, which is
        // what `mount -t fuse.strata` and fstab lines name.
        fuser::MountOption::CUSTOM("subtype=strata".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if opts.read_only {
        config.mount_options.push(fuser::MountOption::RO);
    }
    if opts.auto_unmount {
        config.mount_options.push(fuser::MountOption::AutoUnmount);
    }
    if let Some(n) = opts.max_read {
        // A kernel mount option: direct-I/O reads are split into pieces
        // of at most this size.
        config.mount_options.push(fuser::MountOption::CUSTOM(format!("max_read={n}")));
    }
    config.mount_options.extend(opts.kernel.iter().cloned());
    config.acl = if opts.allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(n_threads);
    // Cloned fds by default when there are several workers: each reads
    // its own fd (the kernel still feeds them from one input queue).
    config.clone_fd = opts.clone_fd.unwrap_or(n_threads > 1) && n_threads > 1;

    // Memory reclaim may wait for writes to this mount; our own
    // allocations must then not wait for reclaim (qsd lesson 9). Needs
    // CAP_SYS_RESOURCE; harmless to fail.
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0);
    }

    let mut session = fuser::Session::new(fs, &mountpoint, &config)
        .with_context(|| format!("mounting {} on {}", store.display(), mountpoint.display()))?;
    let notifier = session.notifier();
    // From here the mount is live: undo it if the rest of start-up fails.
    let mut started = StartGuard { mountpoint: Some(mountpoint.clone()) };
    let server = control::Server::start(&store, engine.clone(), invalidate::wrap(control, notifier, inodes))
        .context("starting the control socket")?;
    let signals =
        SignalWatcher::start(mountpoint.clone(), session.unmount_callable()).context("installing signal handlers")?;
    let pidfile = store.join(PIDFILE_NAME);
    std::fs::write(&pidfile, format!("{}\n{}\n", std::process::id(), mountpoint.display()))
        .with_context(|| format!("writing {}", pidfile.display()))?;
    started.mountpoint = None;
    // Deferred compression: the packer compresses in the background.
    engine.start_packer();
    tracing::info!(
        store = %store.display(),
        mountpoint = %mountpoint.display(),
        threads = n_threads,
        clone_fd = config.clone_fd,
        max_read = opts.max_read,
        "mounted"
    );
    ready.send("ready\n");

    let run = session.run();
    tracing::info!(mountpoint = %mountpoint.display(), "unmounted; closing the store");
    signals.stop();
    server.stop();
    drop(served);
    let closed = engine.close().with_context(|| format!("closing store {}", store.display()));
    let _ = std::fs::remove_file(&pidfile);
    run.context("serving the FUSE session")?;
    closed
}

/// Unmounts if start-up fails after the mount went live.
struct StartGuard {
    mountpoint: Option<PathBuf>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(mp) = self.mountpoint.take() {
            let _ = request_unmount(&mp, true);
        }
    }
}

/// Volumes unlinked while open whose daemon died before the last close.
fn remove_leftover_unlinked(engine: &Engine) {
    let Ok(list) = engine.list_volumes() else {
        return;
    };
    for info in list {
        if info.name == layout::unlinked_name(info.guid) {
            match engine.remove_volume(&info.guid.to_string(), false) {
                Ok(()) => {
                    tracing::info!(volume = %info.guid, "removed a volume unlinked while open before a crash")
                }
                Err(e) => {
                    tracing::warn!(volume = %info.guid, error = %e, "could not remove a leftover unlinked volume")
                }
            }
        } else if info.name == layout::replaced_name(info.guid) {
            tracing::warn!(volume = %info.guid, name = %info.name,
                "a volume was being replaced by a rename when strata stopped; rename or remove it with the CLI");
        }
    }
}

fn canonical_mountpoint(p: &Path) -> anyhow::Result<PathBuf> {
    let mp = p.canonicalize().map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            anyhow!(
                "{}: a previous FUSE daemon died without unmounting; run `umount -l {}` (or `fusermount3 -uz`) first",
                p.display(),
                p.display()
            )
        } else {
            anyhow!("mountpoint {}: {e}", p.display())
        }
    })?;
    if !mp.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    Ok(mp)
}

// ----- signals ----------------------------------------------------------

static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; one byte from the stack.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Turns SIGTERM/SIGINT/SIGHUP into an unmount on a named thread.
struct SignalWatcher {
    wr: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl SignalWatcher {
    fn start(mountpoint: PathBuf, mut unmounter: fuser::SessionUnmounter) -> std::io::Result<SignalWatcher> {
        let (rd, wr) = pipe()?;
        SIGNAL_PIPE.store(wr.as_raw_fd(), Ordering::Release);
        for sig in SIGNALS {
            // SAFETY: installing a handler that only calls write(2).
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        let thread = std::thread::Builder::new().name("strata-signals".into()).spawn(move || {
            let mut rd = File::from(rd);
            let mut b = [0u8; 1];
            loop {
                match rd.read(&mut b) {
                    Ok(1) if b[0] != 0 => {
                        tracing::info!(signal = b[0], "signal received: unmounting");
                        // Through fuser's own unmounter, so the session
                        // does not try a second unmount when it ends.
                        match unmounter.unmount() {
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                                if let Err(e) = detach(&mountpoint) {
                                    tracing::error!(error = %e, "detaching on signal failed");
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "unmount on signal failed"),
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // 0 = stop(); EOF or error: nothing more will come.
                    _ => return,
                }
            }
        })?;
        Ok(SignalWatcher { wr, thread: Some(thread) })
    }

    fn stop(mut self) {
        for sig in SIGNALS {
            // SAFETY: restoring the default disposition.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        SIGNAL_PIPE.store(-1, Ordering::Release);
        let zero = 0u8;
        // SAFETY: one byte from the stack to a pipe we own; a 0 byte tells
        // the thread to exit.
        unsafe {
            libc::write(self.wr.as_raw_fd(), (&zero as *const u8).cast(), 1);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lazy unmount: the mount leaves the namespace now; the daemon serves the
/// files still open until they are closed, then the session ends.
fn detach(mp: &Path) -> anyhow::Result<()> {
    tracing::warn!(mountpoint = %mp.display(), "files are still open: detaching; they are served until closed");
    let c = CString::new(mp.as_os_str().as_bytes()).context("mountpoint contains NUL")?;
    // SAFETY: umount2 with a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(std::io::Error::last_os_error()).with_context(|| format!("detaching {}", mp.display()))
}

/// Unmount `mp`: plainly, or, if files are open and `lazy_if_busy`, by
/// detaching (the daemon then serves the open files until they close).
/// Falls back to `fusermount3 -u` when not privileged.
fn request_unmount(mp: &Path, lazy_if_busy: bool) -> anyhow::Result<()> {
    let c = CString::new(mp.as_os_str().as_bytes()).context("mountpoint contains NUL")?;
    // SAFETY: umount2 with a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) if lazy_if_busy => {
            tracing::warn!(mountpoint = %mp.display(), "files are still open: detaching; they are served until closed");
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                return Ok(());
            }
            Err(std::io::Error::last_os_error()).with_context(|| format!("detaching {}", mp.display()))
        }
        Some(libc::EBUSY) => bail!(
            "{} is busy: files on it are open (see `fuser -vm {}`); close them (stop the VMs) and retry, or use `umount -l` to detach it",
            mp.display(),
            mp.display()
        ),
        Some(libc::EPERM) => {
            let mut cmd = Command::new("fusermount3");
            cmd.arg("-u");
            if lazy_if_busy {
                cmd.arg("-z");
            }
            let out = cmd.arg("--").arg(mp).output().context("running fusermount3 -u")?;
            if !out.status.success() {
                bail!("fusermount3 -u {}: {}", mp.display(), String::from_utf8_lossy(&out.stderr).trim());
            }
            Ok(())
        }
        Some(libc::EINVAL) => bail!("{} is not mounted", mp.display()),
        _ => Err(err).with_context(|| format!("unmounting {}", mp.display())),
    }
}

// ----- umount -----------------------------------------------------------

/// How long `umount` retries a mount that is busy before reporting it.
const BUSY_RETRY: Duration = Duration::from_secs(2);

/// Unmount a strata mount and wait for its daemon to flush and exit.
pub fn umount(mountpoint: &Path) -> anyhow::Result<()> {
    let mp = match mountpoint.canonicalize() {
        Ok(p) => p,
        // A dead daemon leaves ENOTCONN: use the path as given.
        Err(_) => std::path::absolute(mountpoint).with_context(|| format!("mountpoint {}", mountpoint.display()))?,
    };
    let entry = find_mount(&mp)?.ok_or_else(|| anyhow!("{} is not mounted", mp.display()))?;
    if !entry.fstype.starts_with("fuse") {
        bail!("{} is a {} mount, not strata", mp.display(), entry.fstype);
    }
    let pid = read_pidfile(Path::new(&entry.source)).filter(|(_, m)| m == &mp).map(|(pid, _)| pid);
    // A file closed an instant ago may still pin the mount while the
    // kernel finishes releasing it: retry a busy mount briefly before
    // saying that files are open.
    let start = Instant::now();
    loop {
        match request_unmount(&mp, false) {
            Ok(()) => break,
            Err(e) if start.elapsed() < BUSY_RETRY && e.to_string().contains("is busy") => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(pid) = pid {
        let start = Instant::now();
        while process_alive(pid) {
            if start.elapsed() > EXIT_WAIT {
                bail!(
                    "{} is unmounted but the strata daemon (pid {pid}) is still flushing after {} s; see {}/{LOGFILE_NAME}",
                    mp.display(),
                    EXIT_WAIT.as_secs(),
                    entry.source
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn read_pidfile(store: &Path) -> Option<(i32, PathBuf)> {
    let text = std::fs::read_to_string(store.join(PIDFILE_NAME)).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let mp = PathBuf::from(lines.next()?.trim_end());
    Some((pid, mp))
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised name.
        Ok(stat) => {
            !matches!(stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()), Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

// ----- /proc/self/mountinfo -----------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The topmost mount at `mountpoint`, if any.
pub fn find_mount(mountpoint: &Path) -> anyhow::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text).into_iter().rev().find(|e| e.mountpoint == mountpoint))
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else {
            continue;
        };
        out.push(MountEntry {
            mountpoint: PathBuf::from(std::ffi::OsStr::from_bytes(&unescape(mp))),
            fstype: String::from_utf8_lossy(&unescape(fstype)).into_owned(),
            source: String::from_utf8_lossy(&unescape(source)).into_owned(),
        });
    }
    out
}

/// Undo mountinfo's octal escapes (`\040` for space, ...).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64 + (oct[1] - b'0') as u32 * 8 + (oct[2] - b'0') as u32;
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
98 29 0:52 / /var/lib/my\\040images rw,nosuid,nodev,relatime shared:50 - fuse.strata /srv/store rw,user_id=0,group_id=0,default_permissions,allow_other
99 29 0:53 / /mnt rw - ext4 /dev/vda1 rw
";

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mountpoint, PathBuf::from("/var/lib/my images"));
        assert_eq!(m[1].fstype, "fuse.strata");
        assert_eq!(m[1].source, "/srv/store");
        assert_eq!(m[2].fstype, "ext4");
    }

    #[test]
    fn unescape_leaves_plain_backslashes_alone() {
        assert_eq!(unescape("a\\040b"), b"a b");
        assert_eq!(unescape("a\\134b"), b"a\\b");
        assert_eq!(unescape("a\\9"), b"a\\9");
        assert_eq!(unescape("end\\"), b"end\\");
    }

    #[test]
    fn process_alive_knows_ourselves_and_not_pid_zero() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(0));
        assert!(!process_alive(-1));
    }

    #[test]
    fn a_pidfile_gives_pid_and_mountpoint() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(PIDFILE_NAME), "123\n/mnt/x\n").unwrap();
        assert_eq!(read_pidfile(d.path()), Some((123, PathBuf::from("/mnt/x"))));
        std::fs::write(d.path().join(PIDFILE_NAME), "garbage").unwrap();
        assert_eq!(read_pidfile(d.path()), None);
    }
}
