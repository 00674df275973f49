//! mount-helper/mount.fuse.strata: mount(8)'s calling convention in, a
//! daemonized mount out, fstab-only options dropped.
//!
//! The helper is run the way mount(8) runs it
//! (`mount.fuse.strata STORE MOUNTPOINT -o opts`), with `STRATA_BIN`
//! pointing at a stand-in for the `strata` CLI that records its arguments
//! and daemonizes through `fs::spawn_daemon` exactly like `strata mount`.
//! Needs root and /dev/fuse. Run: `cargo test --test mount_helper`.

mod mount_common;

use mount_common::{ready, run};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use strata::volume::{Engine, InitOptions};

daemon_entry!();

/// Unmounts and stops the daemon (found through its pidfile, since the
/// helper started it) even if the test fails.
struct Cleanup {
    store: PathBuf,
    mnt: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.store.join(strata::fs::PIDFILE_NAME))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.parse::<i32>().ok()));
        if strata::fs::daemon::find_mount(&self.mnt).ok().flatten().is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(pid) = pid {
            for _ in 0..600 {
                if !strata::fs::process_alive(pid) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            // SAFETY: the daemon this test's helper started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helper/mount.fuse.strata")
}

#[test]
fn the_mount_helper_drops_fstab_options_and_mounts_a_live_store() {
    if !ready(&["sh"]) {
        return;
    }
    let dir = tempfile::Builder::new().prefix("strata-helper").tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    Engine::init(&store, &InitOptions::default()).unwrap();
    let mnt = mnt.canonicalize().unwrap();
    let _cleanup = Cleanup { store: store.clone(), mnt: mnt.clone() };

    let args_file = dir.path().join("args");
    let fake = dir.path().join("strata");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\n\
             echo \"$*\" > '{args}'\n\
             [ \"$1\" = mount ] || exit 64\n\
             opts=''\n\
             [ \"${{4:-}}\" = -o ] && opts=\"$5\"\n\
             STRATA_TEST_DAEMON=1 STRATA_TEST_SPAWN=1 STRATA_TEST_STORE=\"$2\" STRATA_TEST_MNT=\"$3\" STRATA_TEST_OPTS=\"$opts\" \
             exec '{exe}' --exact daemon_entry --nocapture --test-threads=1\n",
            args = args_file.display(),
            exe = std::env::current_exe().unwrap().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    // What mount(8) runs for: STORE MNT fuse.strata defaults,allow_other,_netdev,nofail,noatime
    run(Command::new("sh")
        .arg(helper())
        .arg(&store)
        .arg(&mnt)
        .args(["-n", "-o", "defaults,allow_other,_netdev,nofail,x-systemd.automount,noatime"])
        .env("STRATA_BIN", &fake));
    let args = std::fs::read_to_string(&args_file).unwrap();
    assert_eq!(args.trim(), format!("mount {} {} -o allow_other,noatime", store.display(), mnt.display()));

    let entry = strata::fs::daemon::find_mount(&mnt).unwrap().expect("mounted when the helper returns");
    assert_eq!(entry.fstype, "fuse.strata");
    assert_eq!(entry.source, store.canonicalize().unwrap().display().to_string());
    std::fs::write(mnt.join("disk.raw"), b"hello").unwrap();
    assert_eq!(std::fs::read(mnt.join("disk.raw")).unwrap(), b"hello");

    // Plain umount(8) ends the daemon too; strata::fs::umount waits for it.
    strata::fs::umount(&mnt).unwrap();
    assert!(strata::fs::daemon::find_mount(&mnt).unwrap().is_none());
    assert!(!store.join(strata::fs::PIDFILE_NAME).exists());

    // -f (fake) prints what it would run and mounts nothing.
    let out =
        Command::new("sh").arg(helper()).arg(&store).arg(&mnt).arg("-f").env("STRATA_BIN", &fake).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mount"));
    assert!(strata::fs::daemon::find_mount(&mnt).unwrap().is_none());
}
