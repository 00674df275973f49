//! Store-level command-line behaviour: init, finding the store, usage
//! errors, status.

mod cli_support;
use cli_support::{Store, command, run_cmd, strata};

#[test]
fn usage_errors_exit_2() {
    strata(&[]).expect(2);
    strata(&["frobnicate"]).expect(2);
    strata(&["volume", "create", "vm1"]).expect(2); // --size missing
}

#[test]
fn a_missing_store_exits_3_and_says_to_run_init() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    let r = strata(&["--store", missing.to_str().unwrap(), "volume", "list"]).expect(3);
    assert!(r.stderr.contains("no store at"), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("strata init {}", missing.display())), "{}", r.stderr);
}

#[test]
fn init_refuses_an_existing_store() {
    let store = Store::new();
    let r = strata(&["init", store.path.to_str().unwrap()]).expect(4);
    assert!(r.stderr.contains(&store.path.display().to_string()), "{}", r.stderr);
}

#[test]
fn init_takes_the_store_from_the_store_flag_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    strata(&["--store", path.to_str().unwrap(), "init"]).ok();
    strata(&["--store", path.to_str().unwrap(), "status"]).ok();
}

#[test]
fn strata_store_environment_variable_is_honoured() {
    let store = Store::new();
    let mut cmd = command();
    cmd.env("STRATA_STORE", &store.path).args(["volume", "create", "envvol", "--size", "1M"]);
    run_cmd(cmd).ok();
    // The flag wins over the environment variable.
    let mut cmd = command();
    cmd.env("STRATA_STORE", "/nonexistent/strata").arg("--store").arg(&store.path).args(["volume", "list"]);
    let r = run_cmd(cmd).ok();
    assert!(r.stdout.contains("envvol"), "{}", r.stdout);
    let mut cmd = command();
    cmd.env("STRATA_STORE", "/nonexistent/strata").args(["volume", "list"]);
    run_cmd(cmd).expect(3);
}

#[test]
fn status_prints_the_vdostats_style_fields() {
    let store = Store::new();
    let r = store.run(&["status"]).ok();
    for field in [
        "operating mode",
        "write policy",
        "effective write policy",
        "logical bytes used",
        "physical bytes used",
        "metadata overhead",
        "record headers",
        "dead space in packs",
        "saving percent",
        "dedup ratio",
        "compression ratio",
        "chunk count",
        "index memory",
    ] {
        assert!(r.stdout.contains(field), "missing {field:?} in\n{}", r.stdout);
    }
    assert!(r.stdout.contains("async"), "{}", r.stdout);
}

#[test]
fn status_json_has_exact_numbers_and_stable_names() {
    let store = Store::new();
    let r = store.run(&["status", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("status --format json is JSON");
    assert_eq!(v["operating_mode"], "normal");
    assert_eq!(v["write_policy"], "async");
    for key in [
        "logical_bytes_used",
        "physical_bytes_used",
        "metadata_bytes",
        "dead_pack_bytes",
        "chunk_table_bytes",
        "record_header_bytes",
        "chunk_count",
        "index_memory_bytes",
    ] {
        assert!(v[key].is_u64(), "{key} in {v}");
    }
}

#[test]
fn a_store_held_by_a_process_without_a_daemon_exits_6() {
    let store = Store::new();
    // This test process holds the store lock the way a daemon would, but
    // answers on no control socket.
    let engine = strata::volume::Engine::open(&store.path, &Default::default()).expect("open store");
    let r = store.run(&["volume", "list"]).expect(6);
    assert!(r.stderr.contains("in use by another strata process"), "{}", r.stderr);
    engine.close().unwrap();
    drop(engine);
    store.run(&["volume", "list"]).ok();
}

#[test]
fn the_write_policy_can_be_changed_after_init() {
    let store = Store::new();
    assert_eq!(store.run(&["config", "get", "write-policy"]).ok().stdout, "async\n");
    let r = store.run(&["config", "set", "write-policy", "sync"]).ok();
    assert!(r.stdout.contains("in effect: sync"), "{}", r.stdout);
    let r = store.run(&["status", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["write_policy"], "sync");
    assert_eq!(v["effective_write_policy"], "sync");
    store.run(&["config", "set", "write-policy", "fast"]).expect(5);
    store.run(&["config", "get", "colour"]).expect(3);
}

#[test]
fn the_map_cache_is_a_setting_shown_with_the_others_and_used_at_the_next_open() {
    let store = Store::new();
    assert_eq!(store.run(&["config", "get", "map-cache-bytes"]).ok().stdout, "0\n");
    let r = store.run(&["config", "set", "map-cache-bytes", "8M"]).ok();
    assert!(r.stdout.contains("map-cache-bytes is 8388608"), "{}", r.stdout);
    assert_eq!(store.run(&["config", "get", "map-cache-bytes"]).ok().stdout, "8388608\n");
    let r = store.run(&["config", "get"]).ok();
    assert!(r.stdout.contains("map-cache-bytes   : 8388608"), "{}", r.stdout);
    let r = store.run(&["config", "get", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["map_cache_bytes"], 8388608);
    assert_eq!(v["table_cache_bytes"], 0);
    let r = store.run(&["config", "get", "map-cache-bytes", "--format", "json"]).ok();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap(),
        serde_json::json!({"map_cache_bytes": 8388608})
    );
    store.run(&["config", "set", "map-cache-bytes", "lots"]).expect(5);
    // The next open keeps the maps' pages in the scratch file.
    store.run(&["volume", "create", "v", "--size", "1G"]).ok();
    assert!(store.path.join("maps.mem").exists());
}

#[test]
fn spare_pack_space_is_a_setting_that_takes_effect_at_once_and_shows_in_status() {
    let store = Store::new();
    // New stores keep up to 1 GiB of retired packs for reuse.
    assert_eq!(store.run(&["config", "get", "spare-pack-bytes"]).ok().stdout, "1073741824\n");
    let r = store.run(&["config", "set", "spare-pack-bytes", "256M"]).ok();
    assert!(r.stdout.contains("spare-pack-bytes is 268435456; it takes effect now"), "{}", r.stdout);
    let r = store.run(&["config", "get", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["spare_pack_bytes"], 268435456);
    store.run(&["config", "set", "spare-pack-bytes", "some"]).expect(5);
    let r = store.run(&["status", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["spare_packs"], 0);
    assert_eq!(v["spare_pack_bytes"], 0);
    let r = store.run(&["status"]).ok();
    assert!(r.stdout.contains("spare pack space"), "{}", r.stdout);
}
