//! `strata mount` / `strata umount` through the real binary, and every other
//! command passed to the mount daemon while the store is mounted.
//!
//! Needs root and /dev/fuse: skipped (with the reason on stderr) without
//! them, except under CI (`CI` set), where skipping is a failure.

mod cli_support;
use cli_support::{Run, Store, strata};
use std::path::{Path, PathBuf};

fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_ok();
    let why = match (root, fuse) {
        (true, true) => return true,
        (false, _) => "needs root",
        (true, false) => "/dev/fuse is missing or not usable",
    };
    assert!(std::env::var_os("CI").is_none(), "CI is set, so this test may not skip: {why}");
    eprintln!("skipped: {why}");
    false
}

/// A mounted store, unmounted on drop even when the test fails.
struct Mounted {
    store: Store,
    mnt: PathBuf,
}

impl Mounted {
    fn new() -> Mounted {
        let store = Store::new();
        let mnt = store.scratch().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        strata(&["mount", store.path.to_str().unwrap(), mnt.to_str().unwrap()]).ok();
        Mounted { store, mnt }
    }

    fn run(&self, args: &[&str]) -> Run {
        self.store.run(args)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = strata(&["umount", self.mnt.to_str().unwrap()]);
        }
        if is_mounted(&self.mnt) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap_or("")))
}

#[test]
fn commands_go_through_the_daemon_while_mounted() {
    if !can_mount() {
        return;
    }
    let m = Mounted::new();
    assert!(is_mounted(&m.mnt));

    // Created through the daemon, seen at once in the mount.
    m.run(&["volume", "create", "vm1", "--size", "16M"]).ok();
    let file = m.mnt.join("vm1");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16 << 20);

    // Errors keep their exit codes and messages through the socket.
    let r = m.run(&["volume", "create", "vm1", "--size", "1M"]).expect(4);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    m.run(&["volume", "show", "ghost"]).expect(3);
    m.run(&["volume", "create", "x", "--size", "junk"]).expect(5);

    // Data written through the file is what export reads; a relative
    // export path is the caller's, not the daemon's.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let mut cmd = cli_support::command();
    cmd.current_dir(m.store.scratch()).arg("--store").arg(&m.store.path).args(["export", "vm1", "out.raw"]);
    cli_support::run_cmd(cmd).ok();
    let back = std::fs::read(m.store.scratch().join("out.raw")).unwrap();
    assert!(back[..data.len()] == data[..] && back[data.len()..].iter().all(|&b| b == 0));

    let r = m.run(&["status", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["volumes"], 1);

    strata(&["umount", m.mnt.to_str().unwrap()]).ok();
    assert!(!is_mounted(&m.mnt));
    // Unmounted: the same commands open the store directly again.
    let r = m.run(&["volume", "list"]).ok();
    assert!(r.stdout.contains("vm1"), "{}", r.stdout);
}

#[test]
fn mount_refuses_a_missing_store_or_mountpoint() {
    let dir = tempfile::tempdir().unwrap();
    let r = strata(&["mount", dir.path().join("nostore").to_str().unwrap(), dir.path().to_str().unwrap()]).expect(3);
    assert!(r.stderr.contains("strata init"), "{}", r.stderr);
    let store = Store::new();
    let r = strata(&["mount", store.path.to_str().unwrap(), dir.path().join("nodir").to_str().unwrap()]).expect(3);
    assert!(r.stderr.contains("mkdir -p"), "{}", r.stderr);
}
