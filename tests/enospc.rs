//! A full backing filesystem: the writer gets ENOSPC, the store stays in
//! normal mode, and writes work again once space is freed (SPEC §8,
//! issue 5). Uses a small tmpfs, so it needs root; outside CI it is
//! skipped with a message when not root, in CI it must run.

#[path = "support/bytes.rs"]
mod bytes;
use std::path::Path;
use std::process::Command;
use strata::volume::{Engine, Error, InitOptions, Mode, OpenOptions, WritePolicy};

struct Tmpfs(std::path::PathBuf);
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn random_block(seed: u64, len: usize) -> Vec<u8> {
    bytes::pattern(len, seed)
}

#[test]
fn a_full_filesystem_gives_enospc_and_the_store_recovers_when_space_is_freed() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI must run this test as root");
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("fs");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(st.success(), "mounting a tmpfs failed");
    let _guard = Tmpfs(mnt.clone());
    let store = mnt.join("store");
    Engine::init(&store, &InitOptions { write_policy: WritePolicy::Async, ..Default::default() }).unwrap();
    let e = Engine::open(&store, &OpenOptions::default()).unwrap();
    e.create_volume("filler", 64 << 20).unwrap();
    e.create_volume("keep", 1 << 20).unwrap();
    let keep = random_block(7, 65536);
    e.open_volume("keep").unwrap().write_at(&keep, 0).unwrap();
    let v = e.open_volume("filler").unwrap();
    let mut full = None;
    for i in 0..64u64 {
        match v.write_at(&random_block(100 + i, 1 << 20), i << 20) {
            Ok(()) => {}
            Err(err) => {
                full = Some(err);
                break;
            }
        }
    }
    let err = full.expect("24 MiB filled without ENOSPC");
    assert!(matches!(err, Error::NoSpace(_)), "expected NoSpace, got {err}");
    assert_eq!(e.mode(), Mode::Normal);
    // Reads still work, and the other volume is intact.
    let mut b = vec![0u8; 65536];
    e.open_volume("keep").unwrap().read_at(&mut b, 0).unwrap();
    assert_eq!(b, keep);
    // Free space: remove the filler and collect the garbage.
    drop(v);
    e.remove_volume("filler", false).unwrap();
    e.gc(&mut |_, _| {}).unwrap();
    // GC kept the emptied pack as a spare (the filesystem had 10 % free
    // once the reserve went); tmpfs cannot zero a range to reuse it, so the
    // next append runs out of space, deletes the spares and tries again.
    assert_eq!(e.status().unwrap().spare_packs, 1);
    e.create_volume("again", 4 << 20).unwrap();
    let again = random_block(9, 1 << 20);
    let v = e.open_volume("again").unwrap();
    v.write_at(&again, 0).unwrap();
    assert_eq!(e.status().unwrap().spare_packs, 0);
    v.flush().unwrap();
    drop(v);
    e.close().unwrap();
    drop(e);
    let e = Engine::open(&store, &OpenOptions::default()).unwrap();
    let mut b = vec![0u8; 1 << 20];
    e.open_volume("again").unwrap().read_at(&mut b, 0).unwrap();
    assert_eq!(b, again);
    drop(e);
    assert!(strata::volume::check::check(&store, &Default::default(), &mut |_, _| {}).unwrap().clean);
    let _ = Path::new("");
}
