//! Stores on disk that must keep working: one clean store per format
//! version that must open forever, and damaged stores with the exact report
//! `strata check` must give for them.
//!
//! Regenerate (only when a format version changes — then add, never
//! replace, the old version's store):
//!   cargo test --test fixtures -- --ignored regenerate_fixtures

#[path = "support/bytes.rs"]
mod bytes;

use std::path::{Path, PathBuf};
use strata::volume::check::{self, CheckOptions};
use strata::volume::{Compression, Engine, InitOptions, OpenOptions, WritePolicy};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Compressible: the low 4 bits of [`bytes::pattern`].
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    bytes::pattern(len, seed).into_iter().map(|b| b & 0x0f).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// The content the v1 store was made with.
fn v1_content() -> (Vec<u8>, Vec<u8>) {
    (pattern(96 * 1024, 1), pattern(8192, 2))
}

fn make_v1(dir: &Path) {
    Engine::init(dir, &InitOptions { write_policy: WritePolicy::Async, ..Default::default() }).unwrap();
    let e = Engine::open(dir, &OpenOptions::default()).unwrap();
    let (a, b) = v1_content();
    e.create_volume("vm1", 1 << 20).unwrap();
    let v = e.open_volume("vm1").unwrap();
    v.write_at(&a, 0).unwrap();
    e.snapshot_create("vm1", "before-upgrade").unwrap();
    v.write_at(&b, 8192).unwrap();
    e.create_volume("empty", 4 << 20).unwrap();
    e.set_property("vm1", "owner", "fixtures").unwrap();
    drop(v);
    e.close().unwrap();
    // Remove the lock file's PID and SQLite side files: not part of the format.
    let _ = std::fs::write(dir.join("lock"), b"");
}

/// Format 2: the v1 content, the first write compressed by the packer and
/// the second still deferred (raw records with flag bit 1).
fn make_v2(dir: &Path) {
    Engine::init(dir, &InitOptions { write_policy: WritePolicy::Async, compression: Compression::Deferred }).unwrap();
    let e = Engine::open(dir, &OpenOptions::default()).unwrap();
    let (a, b) = v1_content();
    e.create_volume("vm1", 1 << 20).unwrap();
    let v = e.open_volume("vm1").unwrap();
    v.write_at(&a, 0).unwrap();
    e.snapshot_create("vm1", "before-upgrade").unwrap();
    assert!(e.pack_deferred(true, &|| false).unwrap() > 0);
    v.write_at(&b, 8192).unwrap();
    e.create_volume("empty", 4 << 20).unwrap();
    e.set_property("vm1", "owner", "fixtures").unwrap();
    drop(v);
    e.close().unwrap();
    let _ = std::fs::write(dir.join("lock"), b"");
    // The GC space reserve is 8 MiB of nothing: not part of the format.
    let _ = std::fs::remove_file(dir.join("reserve"));
}

fn damage(kind: &str, dir: &Path) {
    match kind {
        "flipped-pack-byte" => {
            let p = dir.join("packs/00000001.pack");
            let mut b = std::fs::read(&p).unwrap();
            b[64 + 64 + 20] ^= 0x10;
            std::fs::write(&p, b).unwrap();
        }
        "truncated-map" => {
            let mut maps: Vec<PathBuf> =
                std::fs::read_dir(dir.join("maps")).unwrap().flatten().map(|e| e.path()).collect();
            maps.sort();
            let m = &maps[0];
            let len = std::fs::metadata(m).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(m).unwrap().set_len(len - 9).unwrap();
        }
        "corrupt-catalogue-row" => rusqlite_free_sql(dir),
        "flipped-table-byte" => {
            let p = dir.join("chunks.tbl");
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len();
            b[n - 3] ^= 0x01;
            std::fs::write(&p, b).unwrap();
        }
        _ => panic!("unknown damage {kind}"),
    }
}

/// Make one volume row unreadable (an unknown voltype), as a bad disk or
/// a buggy tool would, bypassing the CHECK constraint.
fn rusqlite_free_sql(dir: &Path) {
    let st = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import sqlite3; c=sqlite3.connect('{}'); c.execute('PRAGMA ignore_check_constraints=ON'); \
             c.execute(\"UPDATE volumes SET voltype='BOGUS' WHERE voltype='INTERNAL'\"); c.commit(); c.close()",
            dir.join("catalog.db").display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
}

const DAMAGES: &[&str] = &["flipped-pack-byte", "truncated-map", "corrupt-catalogue-row", "flipped-table-byte"];

fn report(dir: &Path) -> String {
    let r = check::check(dir, &CheckOptions::default(), &mut |_, _| {}).unwrap();
    check::render(&r)
}

#[test]
#[ignore]
fn regenerate_fixtures() {
    let root = fixtures();
    // Each format's store is made once, by the release that wrote that
    // format, and never replaced: v1-store came from format 1.
    let v1 = root.join("v1-store");
    if !v1.exists() {
        make_v1(&v1);
    }
    let v2 = root.join("v2-store");
    if !v2.exists() {
        make_v2(&v2);
    }
    for d in DAMAGES {
        let dir = root.join("damaged").join(d);
        let _ = std::fs::remove_dir_all(&dir);
        let store = dir.join("store");
        copy_dir(&v1, &store);
        damage(d, &store);
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("store");
        copy_dir(&store, &work);
        std::fs::write(dir.join("check.txt"), report(&work)).unwrap();
    }
}

#[test]
fn the_v1_store_still_opens_and_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("store");
    copy_dir(&fixtures().join("v1-store"), &work);
    let e = Engine::open(&work, &OpenOptions::default()).unwrap();
    let (a, b) = v1_content();
    let mut now = a.clone();
    now[8192..16384].copy_from_slice(&b);
    let mut buf = vec![0u8; a.len()];
    e.open_volume("vm1").unwrap().read_at(&mut buf, 0).unwrap();
    assert!(buf == now);
    e.open_snapshot("vm1", "before-upgrade").unwrap().read_at(&mut buf, 0).unwrap();
    assert!(buf == a);
    assert_eq!(e.get_property("vm1", "owner").unwrap().as_deref(), Some("fixtures"));
    assert_eq!(e.volume_info("empty").unwrap().capacity, 4 << 20);
    // The first writable open upgraded it to the current format.
    assert_eq!(e.status().unwrap().format_version, strata::volume::FORMAT_VERSION);
    drop(e);
    assert!(check::check(&work, &CheckOptions::default(), &mut |_, _| {}).unwrap().clean);
}

#[test]
fn the_v2_store_still_opens_reads_back_and_packs_its_deferred_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("store");
    copy_dir(&fixtures().join("v2-store"), &work);
    assert!(check::check(&work, &CheckOptions::default(), &mut |_, _| {}).unwrap().clean);
    let e = Engine::open(&work, &OpenOptions::default()).unwrap();
    assert_eq!(e.compression(), Compression::Deferred);
    let (a, b) = v1_content();
    let mut now = a.clone();
    now[8192..16384].copy_from_slice(&b);
    let read = |e: &Engine| {
        let mut buf = vec![0u8; a.len()];
        e.open_volume("vm1").unwrap().read_at(&mut buf, 0).unwrap();
        let mut snap = vec![0u8; a.len()];
        e.open_snapshot("vm1", "before-upgrade").unwrap().read_at(&mut snap, 0).unwrap();
        (buf, snap)
    };
    assert!(read(&e) == (now.clone(), a.clone()));
    // The two deferred blocks written last get compressed now.
    assert_eq!(e.pack_deferred(true, &|| false).unwrap(), 2);
    assert!(read(&e) == (now, a));
    drop(e);
    assert!(check::check(&work, &CheckOptions::default(), &mut |_, _| {}).unwrap().clean);
}

#[test]
fn damaged_stores_give_the_recorded_check_report() {
    for d in DAMAGES {
        let dir = fixtures().join("damaged").join(d);
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("store");
        copy_dir(&dir.join("store"), &work);
        let want = std::fs::read_to_string(dir.join("check.txt")).unwrap();
        let got = report(&work);
        assert_eq!(got, want, "check report for fixture {d} changed");
        assert!(got.contains("PROBLEMS FOUND"), "{d}: {got}");
    }
}

#[test]
fn repair_makes_every_damaged_store_open_except_a_broken_catalogue() {
    for d in DAMAGES {
        let dir = fixtures().join("damaged").join(d);
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("store");
        copy_dir(&dir.join("store"), &work);
        let r = check::check(&work, &CheckOptions { repair: true, force_rebuild: false }, &mut |_, _| {}).unwrap();
        if *d == "corrupt-catalogue-row" {
            assert!(!r.clean, "{d}");
            continue;
        }
        assert!(r.clean, "{d}: {}", check::render(&r));
        let e = Engine::open(&work, &OpenOptions::default()).unwrap();
        let mut buf = vec![0u8; 4096];
        e.open_volume("vm1").unwrap().read_at(&mut buf, 90 * 1024).unwrap();
    }
}
