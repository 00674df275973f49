//! qcow2 in and out of a store, checked with the real qemu-img (SPEC §2):
//! a backing chain imports as a strata chain with the same layers, and
//! exports (single image, snapshot, whole chain) pass `qemu-img check` and
//! compare equal with `qemu-img compare`.

use std::path::Path;
use std::process::Command;
use strata::volume::{Engine, InitOptions, OpenOptions, WritePolicy};

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI must have qemu-img");
        eprintln!("skipped: qemu-img is not installed");
    }
    ok
}

fn sh(args: &[&str], dir: &Path) -> String {
    let o = Command::new(args[0]).args(&args[1..]).current_dir(dir).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// base.qcow2 (v2) <- mid.qcow2 (v3, compressed clusters) <- top.qcow2 (v3, zero clusters)
fn make_chain(dir: &Path) {
    sh(&["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "base.qcow2", "8M"], dir);
    sh(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -P 0x12 3M 200k", "base.qcow2"], dir);
    // mid: written as raw deltas then converted with compression onto base.
    sh(&["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "mid0.qcow2"], dir);
    sh(&["qemu-io", "-f", "qcow2", "-c", "write -P 0x21 512k 1M", "-c", "write -P 0x22 6M 64k", "mid0.qcow2"], dir);
    sh(
        &["qemu-img", "convert", "-c", "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2", "mid0.qcow2", "mid.qcow2"],
        dir,
    );
    sh(&["qemu-img", "create", "-q", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "top.qcow2"], dir);
    sh(
        &[
            "qemu-io",
            "-f",
            "qcow2",
            "-c",
            "write -z 0 64k",
            "-c",
            "write -P 0x33 4096 100k",
            "-c",
            "write -z 6M 64k",
            "top.qcow2",
        ],
        dir,
    );
}

#[test]
fn a_qcow2_chain_imports_as_layers_and_exports_equal_and_clean() {
    if !have_qemu() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    make_chain(dir);
    let store = dir.join("store");
    Engine::init(&store, &InitOptions { write_policy: WritePolicy::Async, ..Default::default() }).unwrap();
    let e = Engine::open(&store, &OpenOptions::default()).unwrap();
    let info = e.import(&dir.join("top.qcow2"), "vm", &mut |_, _| {}).unwrap();
    assert_eq!(info.depth, 3, "one layer per image");
    assert!(info.jobs.is_empty());
    let snaps = e.snapshot_list("vm").unwrap();
    assert_eq!(snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["base.qcow2", "mid.qcow2"]);

    // Raw export of the volume equals the whole chain.
    e.export_raw("vm", &dir.join("vm.raw"), &mut |_, _| {}).unwrap();
    let out = sh(&["qemu-img", "compare", "-f", "raw", "-F", "qcow2", "vm.raw", "top.qcow2"], dir);
    assert!(out.contains("identical"), "{out}");

    // A snapshot equals the image it came from (with its own backing).
    e.export_qcow2("vm@mid.qcow2", &dir.join("mid-snap.qcow2"), &mut |_, _| {}).unwrap();
    sh(&["qemu-img", "check", "mid-snap.qcow2"], dir);
    let out = sh(&["qemu-img", "compare", "mid-snap.qcow2", "mid.qcow2"], dir);
    assert!(out.contains("identical"), "{out}");

    // Single-image qcow2 export: clean and equal.
    e.export_qcow2("vm", &dir.join("vm.qcow2"), &mut |_, _| {}).unwrap();
    let out = sh(&["qemu-img", "check", "vm.qcow2"], dir);
    assert!(out.contains("No errors"), "{out}");
    let out = sh(&["qemu-img", "compare", "vm.qcow2", "top.qcow2"], dir);
    assert!(out.contains("identical"), "{out}");

    // Whole chain: one image per layer, backing names preserved.
    let paths = e.export_qcow2_chain("vm", &dir.join("chain"), &mut |_, _| {}).unwrap();
    assert_eq!(paths.len(), 3);
    for p in &paths {
        let out = sh(&["qemu-img", "check", p.to_str().unwrap()], dir);
        assert!(out.contains("No errors"), "{}: {out}", p.display());
    }
    let top = paths.last().unwrap().to_str().unwrap().to_string();
    let info = sh(&["qemu-img", "info", "--backing-chain", &top], dir);
    assert_eq!(info.matches("image:").count(), 3, "{info}");
    let out = sh(&["qemu-img", "compare", &top, "top.qcow2"], dir);
    assert!(out.contains("identical"), "{out}");

    // Importing the exported chain round-trips too.
    let back = e.import(Path::new(&top), "vm2", &mut |_, _| {}).unwrap();
    assert_eq!(back.depth, 3);
    e.export_raw("vm2", &dir.join("vm2.raw"), &mut |_, _| {}).unwrap();
    let out = sh(&["qemu-img", "compare", "-f", "raw", "-F", "raw", "vm2.raw", "vm.raw"], dir);
    assert!(out.contains("identical"), "{out}");
}

#[test]
fn a_hostile_qcow2_is_refused_with_a_message_and_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    // A qcow2 header claiming a gigantic L1 table.
    let mut h = vec![0u8; 512];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&16u32.to_be_bytes());
    h[24..32].copy_from_slice(&(1u64 << 40).to_be_bytes());
    h[36..40].copy_from_slice(&u32::MAX.to_be_bytes());
    h[40..48].copy_from_slice(&4096u64.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    std::fs::write(dir.join("evil.qcow2"), &h).unwrap();
    let store = dir.join("store");
    Engine::init(&store, &InitOptions::default()).unwrap();
    let e = Engine::open(&store, &OpenOptions::default()).unwrap();
    let err = e.import(&dir.join("evil.qcow2"), "evil", &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("evil.qcow2"), "{err}");
    assert!(e.list_volumes().unwrap().is_empty());
}
