//! `strata import` and `strata export` of raw images: errors, and a round
//! trip that must give back the same bytes as a sparse file.

#[path = "support/bytes.rs"]
mod bytes;
mod cli_support;
use cli_support::Store;
use std::os::unix::fs::MetadataExt;

/// Deterministic pseudo-random bytes (xorshift64), so failures reproduce.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    bytes::xorshift_bytes(len, seed | 1)
}

#[test]
fn a_missing_import_file_exits_3_and_names_it() {
    let s = Store::new();
    let missing = s.scratch().join("no-such.raw");
    let r = s.run(&["import", missing.to_str().unwrap(), "vm1"]).expect(3);
    assert!(r.stderr.contains("no-such.raw") && r.stderr.contains("no such file"), "{}", r.stderr);
    // Nothing was created.
    s.run(&["volume", "show", "vm1"]).expect(3);
}

#[test]
fn import_then_export_gives_the_same_bytes_as_a_sparse_file() {
    const MIB: usize = 1 << 20;
    let s = Store::new();
    // 1 MiB noise, 6 MiB zeros, 1 MiB repeated pattern, 64 KiB noise, and an
    // unaligned tail of zeros.
    let mut image = noise(MIB, 7);
    image.resize(7 * MIB, 0);
    image.extend(std::iter::repeat_n(0xA5u8, MIB));
    image.extend(noise(64 << 10, 11));
    image.resize(image.len() + 4096 * 3, 0);
    let src = s.scratch().join("in.raw");
    std::fs::write(&src, &image).unwrap();

    let r = s.run(&["import", src.to_str().unwrap(), "vm1"]).ok();
    assert!(r.stdout.contains("vm1"), "{}", r.stdout);
    let dst = s.scratch().join("out.raw");
    s.run(&["export", "vm1", dst.to_str().unwrap()]).ok();

    let back = std::fs::read(&dst).unwrap();
    assert_eq!(back.len(), image.len(), "exported size");
    assert!(back == image, "exported bytes differ from the imported file");

    // Sparse: the 6 MiB of zeros (and the zero tail) are holes, so the file
    // holds little more than its ~2.1 MiB of data.
    let blocks_bytes = std::fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(
        blocks_bytes < 4 * MIB as u64,
        "export is not sparse: {blocks_bytes} bytes allocated for {} bytes",
        back.len()
    );

    // Exporting over an existing file needs --force.
    let r = s.run(&["export", "vm1", dst.to_str().unwrap()]).expect(4);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    s.run(&["export", "--force", "vm1", dst.to_str().unwrap()]).ok();
    assert!(std::fs::read(&dst).unwrap() == image);
}

#[test]
fn importing_under_a_taken_name_exits_4() {
    let s = Store::new();
    s.run(&["volume", "create", "vm1", "--size", "1M"]).ok();
    let src = s.scratch().join("in.raw");
    std::fs::write(&src, noise(8192, 3)).unwrap();
    s.run(&["import", src.to_str().unwrap(), "vm1"]).expect(4);
}

#[test]
fn gc_gives_back_the_space_of_a_removed_volume() {
    let s = Store::new();
    let src = s.scratch().join("in.raw");
    std::fs::write(&src, noise(2 << 20, 5)).unwrap();
    s.run(&["import", src.to_str().unwrap(), "vm1"]).ok();
    s.run(&["volume", "remove", "vm1"]).ok();
    let r = s.run(&["gc", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let (before, after) = (v["bytes_before"].as_u64().unwrap(), v["bytes_after"].as_u64().unwrap());
    assert!(before >= 2 << 20 && after < 1 << 20, "{v}");
}

/// qemu-img is needed to make and compare qcow2 files; CI installs it.
fn have_qemu_img() -> bool {
    let ok = std::process::Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "CI is set, so this test may not skip: qemu-img is not installed");
        eprintln!("skipped: qemu-img is not installed (apt-get install qemu-utils)");
    }
    ok
}

fn qemu_img(args: &[&str]) {
    let out = std::process::Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_qcow2_chain_imports_as_a_chain_and_exports_identical() {
    if !have_qemu_img() {
        return;
    }
    let s = Store::new();
    let dir = s.scratch();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let mut base = noise(2 << 20, 13);
    base[1 << 20..].fill(0);
    std::fs::write(dir.join("base.raw"), &base).unwrap();
    qemu_img(&["convert", "-O", "qcow2", &p("base.raw"), &p("base.qcow2")]);
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", &p("top.qcow2")]);

    let r = s.run(&["import", &p("top.qcow2"), "vm1"]).ok();
    assert!(r.stdout.contains("2 layer(s)"), "{}", r.stdout);
    let r = s.run(&["snapshot", "list", "vm1"]).ok();
    assert!(r.stdout.contains("base.qcow2"), "{}", r.stdout);

    s.run(&["export", "vm1", &p("out.qcow2"), "--format", "qcow2"]).ok();
    qemu_img(&["compare", &p("top.qcow2"), &p("out.qcow2")]);
    qemu_img(&["check", &p("out.qcow2")]);
    s.run(&["export", "vm1@base.qcow2", &p("snap.qcow2"), "--format", "qcow2"]).ok();
    qemu_img(&["compare", &p("base.qcow2"), &p("snap.qcow2")]);
    s.run(&["export", "vm1", &p("chain"), "--format", "qcow2", "--chain"]).ok();
    let mut files: Vec<_> = std::fs::read_dir(dir.join("chain")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    qemu_img(&["compare", &p("top.qcow2"), files[1].to_str().unwrap()]);

    // Raw export of a snapshot equals the image it came from.
    s.run(&["export", "vm1@base.qcow2", &p("snap.raw")]).expect(0);
    qemu_img(&["compare", "-F", "qcow2", &p("snap.raw"), &p("base.qcow2")]);
    s.run(&["export", "vm1", &p("c2"), "--chain"]).expect(5);
}
