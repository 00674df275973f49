//! Shared harness for the tests that go through the real kernel.
//!
//! Each test gets a fresh store and mountpoint in a temp dir and a daemon
//! started the way `strata mount` starts one: `fs::spawn_daemon` re-runs
//! this test executable with `--exact daemon_entry` and the mount
//! configuration in environment variables, and that test function calls
//! `fs::mount(.., foreground = true)`. So the daemonizing, readiness,
//! pidfile and unmount paths are the production ones, without depending on
//! the CLI.
//!
//! Cleanup: [`Mounted`] unmounts in `Drop` (lazily if busy) and then waits
//! for, and if needed kills, only the daemon PID it started. Nothing here
//! kills by name.
//!
//! Skipping: without root, /dev/fuse, a needed tool, or the engine, a test
//! prints `skipped: <reason>` and passes — unless `CI` is set, where the
//! same condition fails the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata::fs::{ControlHandler, MountConfig};
use strata::volume::{Engine, InitOptions};

pub const ENV_DAEMON: &str = "STRATA_TEST_DAEMON";
const ENV_STORE: &str = "STRATA_TEST_STORE";
const ENV_MNT: &str = "STRATA_TEST_MNT";
const ENV_OPTS: &str = "STRATA_TEST_OPTS";
/// Daemonize like `strata mount` (used by the mount-helper test).
const ENV_SPAWN: &str = "STRATA_TEST_SPAWN";

/// Put `daemon_entry!();` in every test file: the function the daemon
/// child runs. In a normal test run it does nothing.
#[macro_export]
macro_rules! daemon_entry {
    () => {
        #[test]
        fn daemon_entry() {
            mount_common::run_daemon_if_asked();
        }
    };
}

/// Skip (or fail under CI) with a reason.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("CI is set, so this test may not skip: {reason}");
    }
    eprintln!("skipped: {reason}");
}

/// Root, /dev/fuse, the tools, and a working engine; else skip.
pub fn ready(tools: &[&str]) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root (FUSE mounts with allow_other, loop devices)");
        return false;
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_err() {
        skip("/dev/fuse is missing or not usable (modprobe fuse)");
        return false;
    }
    for t in tools {
        if !have_tool(t) {
            skip(&format!("{t} is not installed"));
            return false;
        }
    }
    if let Err(why) = engine_works() {
        skip(&why);
        return false;
    }
    true
}

pub fn have_tool(t: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {t}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The engine is developed in parallel: until `Engine::init` works, the
/// kernel tests have nothing to serve.
fn engine_works() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let store = dir.path().join("probe");
    let r = std::panic::catch_unwind(|| Engine::init(&store, &InitOptions::default()));
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the engine cannot create a store here: {e}")),
        Err(_) => Err("the engine is not implemented yet (Engine::init panicked)".into()),
    }
}

/// A tiny command language for the control socket tests, standing in for
/// the CLI: `create NAME SIZE`, `remove NAME`, `rename A B`, `resize NAME SIZE`,
/// `snapshot VOL SNAP`, `revert VOL SNAP`, `unsnap VOL SNAP`, `names`;
/// and for the crash harness `status` (the `StoreStatus` as JSON),
/// `checkpoint` and `gc`.
pub fn test_handler() -> ControlHandler {
    Arc::new(|engine: &Engine, argv: &[String]| {
        let a: Vec<&str> = argv.iter().map(String::as_str).collect();
        let r = match a.as_slice() {
            ["create", name, size] => engine.create_volume(name, size.parse().unwrap_or(0)).map(|_| String::new()),
            ["remove", name] => engine.remove_volume(name, false).map(|_| String::new()),
            ["rename", from, to] => engine.rename_volume(from, to).map(|_| String::new()),
            ["resize", name, size] => {
                engine.resize_volume(name, size.parse().unwrap_or(0), true).map(|_| String::new())
            }
            ["snapshot", vol, snap] => engine.snapshot_create(vol, snap).map(|_| String::new()),
            ["revert", vol, snap] => engine.snapshot_revert(vol, snap, None).map(|_| String::new()),
            ["unsnap", vol, snap] => engine.snapshot_remove(vol, snap).map(|_| String::new()),
            ["names"] => engine.list_volumes().map(|v| v.into_iter().map(|i| i.name + "\n").collect()),
            ["status"] => engine.status().map(|s| serde_json::to_string(&s).unwrap_or_default() + "\n"),
            ["checkpoint"] => engine.checkpoint().map(|_| String::new()),
            ["gc"] => engine.gc(&mut |_, _| {}).map(|r| format!("{r:?}\n")),
            _ => return (String::new(), format!("unknown test command {a:?}\n"), 2),
        };
        match r {
            Ok(out) => (out, String::new(), 0),
            Err(e) => (String::new(), format!("{e}\n"), 1),
        }
    })
}

/// Called by `daemon_entry`: serve the mount described by the environment.
pub fn run_daemon_if_asked() {
    if std::env::var_os(ENV_DAEMON).is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = MountConfig {
        store: PathBuf::from(std::env::var_os(ENV_STORE).expect("store")),
        mountpoint: PathBuf::from(std::env::var_os(ENV_MNT).expect("mountpoint")),
        foreground: true,
        options: std::env::var(ENV_OPTS).ok().filter(|s| !s.is_empty()).into_iter().collect(),
        threads: None,
    };
    if std::env::var_os(ENV_SPAWN).is_some() {
        // Play `strata mount` without --foreground: start the daemon (this
        // executable again, foreground) and return once it is live.
        let mut cmd = Command::new(std::env::current_exe().expect("test exe"));
        cmd.args(["--exact", "daemon_entry", "--nocapture", "--test-threads=1"]).env_remove(ENV_SPAWN);
        let code = match strata::fs::spawn_daemon(&cfg, cmd) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("strata: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
    let code = match strata::fs::mount(&cfg, test_handler()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("strata test daemon: {e:#}");
            1
        }
    };
    // Leave before libtest prints anything or runs other tests.
    std::process::exit(code);
}

/// The command that runs this test executable as the mount daemon of
/// `store` on `mnt` (its `daemon_entry` test); hand it to
/// `strata::fs::spawn_daemon`.
pub fn daemon_command(store: &Path, mnt: &Path, options: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test exe"));
    cmd.args(["--exact", "daemon_entry", "--nocapture", "--test-threads=1"])
        .env(ENV_DAEMON, "1")
        .env(ENV_STORE, store)
        .env(ENV_MNT, mnt)
        .env(ENV_OPTS, options);
    cmd
}

/// A store and a live mount of it, cleaned up on drop.
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
    pub options: String,
    child: Option<Child>,
}

impl Mounted {
    /// A new store, mounted.
    pub fn new() -> Mounted {
        Self::with_options("")
    }

    pub fn with_options(options: &str) -> Mounted {
        let dir = tempfile::Builder::new().prefix("strata-mt").tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        Engine::init(&store, &InitOptions::default()).expect("init store");
        let mut m = Mounted { dir, store, mnt, options: options.into(), child: None };
        m.mount();
        m
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn mount(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        let cfg = MountConfig {
            store: self.store.clone(),
            mountpoint: self.mnt.clone(),
            foreground: false,
            options: vec![],
            threads: None,
        };
        let cmd = daemon_command(&self.store, &self.mnt, &self.options);
        match strata::fs::spawn_daemon(&cfg, cmd) {
            Ok(child) => self.child = Some(child),
            Err(e) => panic!("mount failed: {e:#}\n--- daemon log ---\n{}", self.log()),
        }
    }

    /// `strata umount`: unmount and wait for the daemon to exit; returns
    /// its exit status.
    pub fn umount(&mut self) -> std::process::ExitStatus {
        strata::fs::umount(&self.mnt).unwrap_or_else(|e| panic!("umount: {e:#}\n--- daemon log ---\n{}", self.log()));
        self.wait_child(Duration::from_secs(120)).expect("daemon did not exit after umount")
    }

    pub fn remount(&mut self) {
        let st = self.umount();
        assert!(st.success(), "daemon exit status {st}\n{}", self.log());
        self.mount();
    }

    /// Wait for the daemon we started to exit.
    pub fn wait_child(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.child = Some(child);
                    return None;
                }
            }
        }
    }

    /// Send a signal to the daemon we started (by its PID only).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's PID.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }

    pub fn is_mounted(&self) -> bool {
        strata::fs::daemon::find_mount(&self.mnt.canonicalize().unwrap_or(self.mnt.clone())).ok().flatten().is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.store.join(strata::fs::daemon::LOGFILE_NAME)).unwrap_or_default()
    }

    /// Run a command through the control socket (as the CLI would).
    pub fn control(&self, argv: &[&str]) -> (String, String, i32) {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        strata::control::call(&self.store, &argv).expect("control call").expect("no daemon on the control socket")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.child.is_none() && !self.is_mounted() {
            return;
        }
        if self.is_mounted() {
            let c = std::ffi::CString::new(self.mnt.as_os_str().as_encoded_bytes()).expect("path");
            // SAFETY: umount2 on our own temp mountpoint; lazy if a test left
            // something open so the temp dir can still go away.
            unsafe {
                if libc::umount2(c.as_ptr(), 0) != 0 {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
        if self.wait_child(Duration::from_secs(60)).is_none()
            && let Some(mut child) = self.child.take()
        {
            eprintln!("daemon {} did not exit; killing it", child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Run a command, panic with its output if it fails; return stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(script: &str) -> String {
    run(Command::new("sh").arg("-ec").arg(script))
}

pub fn stat(p: &Path) -> std::fs::Metadata {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
}

/// A loop-mount guard for ext4-in-a-volume tests.
pub struct LoopMount {
    pub dir: PathBuf,
}

impl LoopMount {
    pub fn new(image: &Path, dir: &Path) -> LoopMount {
        std::fs::create_dir_all(dir).expect("mkdir");
        run(Command::new("mount").arg("-o").arg("loop").arg(image).arg(dir));
        LoopMount { dir: dir.to_path_buf() }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        if strata::fs::daemon::find_mount(&self.dir).ok().flatten().is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
