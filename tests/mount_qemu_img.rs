//! qemu-img against volume files: create, info, convert (both ways, with
//! and without O_DIRECT), compare, check; `truncate -s` creating a volume.
//!
//! Needs root, /dev/fuse and qemu-img. Run: `cargo test --test mount_qemu_img`.

mod mount_common;

use mount_common::{Mounted, ready, run, sh, stat};
use std::os::unix::fs::MetadataExt;
use std::process::Command;

daemon_entry!();

const MIB: u64 = 1 << 20;

/// A 64 MiB raw image with data, zeros, and repeated blocks.
fn make_source(path: &std::path::Path) {
    sh(&format!(
        "truncate -s 64M {p}
         dd if=/dev/urandom of={p} bs=1M count=8 conv=notrunc status=none
         dd if=/dev/urandom of={p} bs=1M count=4 seek=40 conv=notrunc status=none
         dd if={p} of={p} bs=1M count=4 skip=40 seek=56 conv=notrunc status=none",
        p = path.display()
    ));
}

#[test]
fn qemu_img_creates_converts_compares_and_checks_on_the_mount() {
    if !ready(&["qemu-img"]) {
        return;
    }
    let mut m = Mounted::new();
    let src = m.dir.path().join("src.raw");
    make_source(&src);

    // create -f raw makes an empty sparse volume of the size asked.
    run(Command::new("qemu-img").args(["create", "-f", "raw"]).arg(m.path("new.raw")).arg("1G"));
    let st = stat(&m.path("new.raw"));
    assert_eq!(st.len(), 1 << 30);
    assert_eq!(st.blocks(), 0);

    // convert onto the mount, buffered and O_DIRECT (cache=none).
    run(Command::new("qemu-img").args(["convert", "-f", "raw", "-O", "raw"]).arg(&src).arg(m.path("disk.raw")));
    run(Command::new("qemu-img")
        .args(["convert", "-t", "none", "-f", "raw", "-O", "raw"])
        .arg(&src)
        .arg(m.path("direct.raw")));
    for name in ["disk.raw", "direct.raw"] {
        run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&src).arg(m.path(name)));
        let info = run(Command::new("qemu-img").args(["info", "--output=json"]).arg(m.path(name)));
        assert!(info.contains("\"virtual-size\": 67108864"), "{info}");
        assert!(info.contains("\"format\": \"raw\""), "{info}");
    }
    // Sparse: the 40 MiB of zeros are not allocated.
    assert!(stat(&m.path("disk.raw")).blocks() * 512 < 40 * MIB);

    // qemu-img check has nothing to check on raw; it says so.
    let out = Command::new("qemu-img").args(["check", "-f", "raw"]).arg(m.path("disk.raw")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not support checks"));

    // qcow2 on the mount (a COW image inside a volume file) and out of it.
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(m.path("disk.raw"))
        .arg(m.path("disk.qcow2")));
    run(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(m.path("disk.qcow2")));
    run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&src).arg(m.path("disk.qcow2")));
    let out_qcow = m.dir.path().join("out.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-T", "none", "-f", "raw", "-O", "qcow2"])
        .arg(m.path("disk.raw"))
        .arg(&out_qcow));
    run(Command::new("qemu-img").args(["check"]).arg(&out_qcow));
    run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&src).arg(&out_qcow));

    // Everything is still there after a remount.
    m.remount();
    run(Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "raw"]).arg(&src).arg(m.path("disk.raw")));
    run(Command::new("qemu-img").args(["check", "-f", "qcow2"]).arg(m.path("disk.qcow2")));
}

#[test]
fn truncate_creates_a_sparse_volume_and_resizes_it() {
    if !ready(&["truncate"]) {
        return;
    }
    let m = Mounted::new();
    let p = m.path("t.img");
    run(Command::new("truncate").args(["-s", "100M"]).arg(&p));
    assert_eq!(stat(&p).len(), 100 * MIB);
    run(Command::new("truncate").args(["-s", "+28M"]).arg(&p));
    assert_eq!(stat(&p).len(), 128 * MIB);
    run(Command::new("truncate").args(["-s", "64M"]).arg(&p));
    assert_eq!(stat(&p).len(), 64 * MIB);
    assert_eq!(stat(&p).blocks(), 0);
    // cp makes a volume too.
    run(Command::new("cp").arg(&p).arg(m.path("copy.img")));
    assert_eq!(stat(&m.path("copy.img")).len(), 64 * MIB);
}
