//! The committed man pages in `man/` must be what the current command-line
//! definitions generate.

use std::collections::BTreeMap;
use std::path::Path;

fn pages(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn committed_man_pages_match_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("man")
        .arg(tmp.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "strata man failed");

    let fresh = pages(tmp.path());
    let committed = pages(&Path::new(env!("CARGO_MANIFEST_DIR")).join("man"));
    assert!(fresh.contains_key("strata.1") && fresh.contains_key("strata-volume-create.1"), "{:?}", fresh.keys());
    let stale: Vec<_> =
        fresh.keys().chain(committed.keys()).filter(|name| fresh.get(*name) != committed.get(*name)).collect();
    assert!(
        stale.is_empty(),
        "man pages are out of date: {stale:?}\nregenerate them with `cargo run -- man man/` and commit man/"
    );
}
