//! `strata check [--repair]` through the real binary: a clean store exits 0,
//! a damaged pack is reported with exit 7 and repaired, and a store in use
//! is refused with exit 6.

#[path = "support/bytes.rs"]
mod bytes;
mod cli_support;
use cli_support::{Store, strata};

fn noise(len: usize) -> Vec<u8> {
    bytes::xorshift_bytes(len, 0x9E37_79B9_7F4A_7C15)
}

#[test]
fn check_reports_damage_with_exit_7_and_repair_makes_it_clean() {
    let s = Store::new();
    let src = s.scratch().join("a.raw");
    std::fs::write(&src, noise(1 << 20)).unwrap();
    s.run(&["import", src.to_str().unwrap(), "vm1"]).ok();
    let r = s.run(&["check"]).ok();
    assert!(r.stdout.contains("clean"), "{}", r.stdout);

    // Flip bytes inside the first pack's records.
    let packs = s.path.join("packs");
    let pack = std::fs::read_dir(&packs).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&pack).unwrap();
    for b in &mut bytes[5000..5004] {
        *b ^= 0xFF;
    }
    std::fs::write(&pack, bytes).unwrap();

    let r = s.run(&["check"]).expect(7);
    assert!(r.stdout.contains("vm1") && r.stdout.contains("PROBLEMS FOUND"), "{}", r.stdout);
    let r = s.run(&["check", "--format", "json"]).expect(7);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["clean"], false);

    let r = s.run(&["check", "--repair"]).ok();
    assert!(r.stdout.contains("repaired"), "{}", r.stdout);
    s.run(&["check"]).ok();
    s.run(&["volume", "show", "vm1"]).ok();
}

#[test]
fn check_takes_the_store_as_its_argument_and_refuses_one_in_use() {
    let s = Store::new();
    strata(&["check", s.path.to_str().unwrap()]).ok();
    let engine = strata::volume::Engine::open(&s.path, &Default::default()).unwrap();
    let r = strata(&["check", s.path.to_str().unwrap()]).expect(6);
    assert!(r.stderr.contains("unmount"), "{}", r.stderr);
    drop(engine);
    let dir = tempfile::tempdir().unwrap();
    strata(&["check", dir.path().join("none").to_str().unwrap()]).expect(3);
}
