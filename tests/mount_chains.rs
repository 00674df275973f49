//! Snapshots and merges through the real mount (issue 4): ext4 in a volume
//! file snapshotted while fio writes into it; a merge while fio writes and
//! verifies; kill -9 of the daemon in the middle of a merge.

mod mount_common;
use mount_common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

daemon_entry!();

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct LoopMount(std::path::PathBuf);
impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).stderr(Stdio::null()).status();
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn ext4_snapshotted_during_fio_writes_checks_clean() {
    if !ready(&["mkfs.ext4", "e2fsck", "fio", "fsfreeze"]) {
        return;
    }
    let m = Mounted::new();
    let img = m.path("vm");
    run(Command::new("truncate").arg("-s").arg("256M").arg(&img));
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    let ext = m.dir.path().join("ext4");
    std::fs::create_dir(&ext).unwrap();
    run(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&ext));
    let guard = LoopMount(ext.clone());
    let mut fio = Command::new("fio")
        .args([
            "--name=w",
            "--rw=randwrite",
            "--bs=4k",
            "--size=24M",
            "--numjobs=2",
            "--time_based",
            "--runtime=4",
            "--fsync=16",
            "--ioengine=psync",
        ])
        .arg(format!("--directory={}", ext.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Quiesce the filesystem as a guest agent would, snapshot, thaw.
    run(Command::new("fsfreeze").arg("-f").arg(&ext));
    let (_, err, code) = m.control(&["snapshot", "vm", "during-fio"]);
    run(Command::new("fsfreeze").arg("-u").arg(&ext));
    assert_eq!(code, 0, "snapshot failed: {err}");
    assert!(fio.wait().unwrap().success());
    drop(guard);
    // The snapshot is a read-only file in .snapshots/<vol>/.
    let snap = m.path(".snapshots/vm/during-fio");
    let out = Command::new("e2fsck").arg("-fn").arg(&snap).output().unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn on the snapshot: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the live volume too, after fio finished and ext4 was unmounted.
    let out = Command::new("e2fsck").arg("-fn").arg(&img).output().unwrap();
    assert!(out.status.success(), "e2fsck -fn on the volume: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn a_merge_while_fio_writes_and_verifies_loses_nothing() {
    if !ready(&["fio"]) {
        return;
    }
    let m = Mounted::new();
    let img = m.path("live");
    run(Command::new("truncate").arg("-s").arg("64M").arg(&img));
    // Fill it, so the snapshots hold data the merges must keep.
    run(Command::new("fio")
        .args([
            "--name=fill",
            "--rw=write",
            "--bs=1M",
            "--size=64M",
            "--direct=1",
            "--ioengine=libaio",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--do_verify=0",
        ])
        .arg(format!("--filename={}", img.display())));
    let mut fio = Command::new("fio")
        .args([
            "--name=w",
            "--rw=randwrite",
            "--bs=4k",
            "--size=64M",
            "--direct=1",
            "--ioengine=libaio",
            "--iodepth=8",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--verify_backlog=64",
            "--time_based",
            "--runtime=4",
        ])
        .arg(format!("--filename={}", img.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for i in 0..12 {
        std::thread::sleep(Duration::from_millis(200));
        let (_, err, code) = m.control(&["snapshot", "live", &format!("s{i}")]);
        assert_eq!(code, 0, "{err}");
        if i > 0 {
            let (_, err, code) = m.control(&["unsnap", "live", &format!("s{}", i - 1)]);
            assert_eq!(code, 0, "{err}");
        }
    }
    assert!(fio.wait().unwrap().success(), "fio verify failed during merges");
    // Everything written is there after the last merges and a remount.
    let (_, err, code) = m.control(&["unsnap", "live", "s11"]);
    assert_eq!(code, 0, "{err}");
    let st = run(Command::new("fio")
        .args([
            "--name=check",
            "--rw=randwrite",
            "--bs=4k",
            "--size=64M",
            "--direct=1",
            "--ioengine=libaio",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--verify_only",
            "--time_based=0",
        ])
        .arg(format!("--filename={}", img.display())));
    let _ = st;
}

#[test]
fn kill_9_in_the_middle_of_a_merge_then_restart_finishes_it() {
    if !ready(&[]) {
        return;
    }
    // The daemon (a child of this test) pauses just before the merge's
    // final transaction, long enough to be killed there.
    // SAFETY: set before the daemon is spawned; read once by the child.
    unsafe { std::env::set_var("STRATA_TEST_PAUSE", "merge-before-finish=30000") };
    let mut m = Mounted::new();
    unsafe { std::env::remove_var("STRATA_TEST_PAUSE") };
    let img = m.path("vm");
    let a: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let b: Vec<u8> = (0..1 << 20).map(|i| (i * 13 % 241) as u8).collect();
    std::fs::write(&img, &a).unwrap();
    let (_, err, code) = m.control(&["snapshot", "vm", "s1"]);
    assert_eq!(code, 0, "{err}");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.write_all_at(&b[..65536], 65536).unwrap();
        f.sync_all().unwrap();
    }
    let store = m.store.clone();
    let merge = std::thread::spawn(move || strata::control::call(&store, &["unsnap".into(), "vm".into(), "s1".into()]));
    // Wait until the merge is in its pause: the job row exists.
    std::thread::sleep(Duration::from_millis(1500));
    m.signal(libc::SIGKILL);
    let _ = m.wait_child(Duration::from_secs(10));
    let _ = merge.join();
    // Clean up the dead mount, then open the store: the job is resumed.
    let c = std::ffi::CString::new(m.mnt.as_os_str().as_encoded_bytes()).unwrap();
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    {
        // The kill landed inside the merge: its job row and ILLEGAL layers
        // are there (otherwise this test would prove nothing).
        let cat = strata::catalog::Catalog::open(&m.store.join("catalog.db")).unwrap();
        let jobs = cat.all_jobs().unwrap();
        assert!(jobs.iter().any(|j| j.kind == "merge"), "no merge job after the kill: {jobs:?}");
    }
    let e = strata::volume::Engine::open(&m.store, &Default::default()).unwrap();
    assert!(e.catalog().all_jobs().unwrap().is_empty(), "the merge job was not finished at open");
    let v = e.open_volume("vm").unwrap();
    assert_eq!(v.depth(), 1, "the snapshot layer is merged away");
    let mut back = vec![0u8; 1 << 20];
    v.read_at(&mut back, 0).unwrap();
    let mut want = a.clone();
    want[65536..131072].copy_from_slice(&b[..65536]);
    assert!(back == want, "data differs after the resumed merge");
    drop(v);
    drop(e);
    assert!(strata::volume::check::check(&m.store, &Default::default(), &mut |_, _| {}).unwrap().clean);
}
