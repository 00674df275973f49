//! An ext4 filesystem inside a volume file: mkfs.ext4, loop mount, a file
//! tree copied in, e2fsck clean, and the same checksums after strata is
//! unmounted and mounted again.
//!
//! Needs root, /dev/fuse, mkfs.ext4, e2fsck, sha256sum and loop devices.
//! Run: `cargo test --test mount_ext4`.

mod mount_common;

use mount_common::{LoopMount, Mounted, ready, run, sh};
use std::path::Path;
use std::process::Command;

daemon_entry!();

/// A small tree: 150 files of 1–160 KiB of pseudo-random data, some of them
/// duplicates (dedup), some all zeros, in nested folders.
fn make_tree(root: &Path) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..150u64 {
        let dir = root.join(format!("d{}/e{}", i % 7, i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let len = (next() % (160 * 1024)) as usize + 1024;
        let data: Vec<u8> = match i % 10 {
            0 => vec![0; len],
            1 => b"the same block again ".iter().cycle().take(len).copied().collect(),
            _ => (0..len).map(|_| next() as u8).collect(),
        };
        std::fs::write(dir.join(format!("f{i}.bin")), data).unwrap();
    }
}

fn checksums(root: &Path) -> String {
    sh(&format!("cd {} && find . -type f -print0 | sort -z | xargs -0 sha256sum", root.display()))
}

#[test]
fn ext4_in_a_volume_survives_fsck_and_a_remount_byte_for_byte() {
    if !ready(&["mkfs.ext4", "e2fsck", "sha256sum", "losetup"]) {
        return;
    }
    let mut m = Mounted::new();
    let image = m.path("fs.img");
    run(Command::new("truncate").args(["-s", "192M"]).arg(&image));
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));

    let src = m.dir.path().join("tree");
    make_tree(&src);
    let want = checksums(&src);
    let lo = m.dir.path().join("lo");
    {
        let l = LoopMount::new(&image, &lo);
        sh(&format!("cp -a {}/. {}/ && sync", src.display(), l.dir.display()));
        assert_eq!(checksums(&l.dir), want);
    }
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&image));

    m.remount();
    run(Command::new("e2fsck").args(["-f", "-n"]).arg(&image));
    let l = LoopMount::new(&image, &lo);
    assert_eq!(checksums(&l.dir), want, "the tree changed across a strata remount");
}
