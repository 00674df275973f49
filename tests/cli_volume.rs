//! `strata volume ...` flows against a real store: create, list, show,
//! rename, resize, remove, properties, and the errors users hit.

mod cli_support;
use cli_support::Store;

#[test]
fn create_list_show_rename_resize_remove() {
    let s = Store::new();
    let r = s.run(&["volume", "create", "vm1", "--size", "20G"]).ok();
    assert!(r.stdout.contains("vm1"), "{}", r.stdout);

    let r = s.run(&["volume", "list"]).ok();
    for col in ["NAME", "GUID", "SIZE", "USED", "LAYERS", "vm1", "20 GiB"] {
        assert!(r.stdout.contains(col), "missing {col:?} in\n{}", r.stdout);
    }

    let r = s.run(&["volume", "show", "vm1"]).ok();
    for text in ["vm1", "LEAF", "RAW", "SPARSE", "LEGAL", "21474836480 bytes", "pending jobs"] {
        assert!(r.stdout.contains(text), "missing {text:?} in\n{}", r.stdout);
    }

    s.run(&["volume", "rename", "vm1", "vm2"]).ok();
    s.run(&["volume", "show", "vm1"]).expect(3);
    s.run(&["volume", "resize", "vm2", "1.5T"]).ok();
    let r = s.run(&["volume", "show", "vm2", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["capacity"], 3u64 << 39);

    // Shown by GUID as well as by name.
    let guid = v["guid"].as_str().unwrap().to_string();
    s.run(&["volume", "show", &guid]).ok();

    s.run(&["volume", "remove", "vm2"]).ok();
    let r = s.run(&["volume", "list", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 0);
}

#[test]
fn a_duplicate_name_exits_4_and_says_what_to_do() {
    let s = Store::new();
    s.run(&["volume", "create", "vm1", "--size", "1G"]).ok();
    let r = s.run(&["volume", "create", "vm1", "--size", "1G"]).expect(4);
    assert!(r.stderr.contains("\"vm1\" already exists"), "{}", r.stderr);
    assert!(r.stderr.contains("choose another name"), "{}", r.stderr);
    s.run(&["volume", "create", "vm2", "--size", "1G"]).ok();
    s.run(&["volume", "rename", "vm2", "vm1"]).expect(4);
}

#[test]
fn an_unknown_volume_exits_3_everywhere() {
    let s = Store::new();
    for args in [
        &["volume", "show", "ghost"][..],
        &["volume", "rename", "ghost", "x"],
        &["volume", "resize", "ghost", "1G"],
        &["volume", "remove", "ghost"],
        &["volume", "prop", "list", "ghost"],
        &["volume", "prop", "set", "ghost", "k", "v"],
    ] {
        let r = s.run(args).expect(3);
        assert!(r.stderr.contains("ghost") && r.stderr.contains("strata volume list"), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn bad_sizes_exit_5_with_an_example() {
    let s = Store::new();
    for bad in ["twenty", "1X", "-1G", "1.1K", "0"] {
        let r = s.run(&["volume", "create", "vm1", &format!("--size={bad}")]).expect(5);
        assert!(r.stderr.contains("20G"), "{bad}: {}", r.stderr);
    }
    s.run(&["volume", "create", "vm1", "--size", "4096"]).ok();
    s.run(&["volume", "resize", "vm1", "lots"]).expect(5);
}

#[test]
fn shrinking_needs_allow_shrink() {
    let s = Store::new();
    s.run(&["volume", "create", "vm1", "--size", "2G"]).ok();
    let r = s.run(&["volume", "resize", "vm1", "1G"]).expect(5);
    assert!(r.stderr.contains("--allow-shrink"), "{}", r.stderr);
    s.run(&["volume", "resize", "vm1", "1G", "--allow-shrink"]).ok();
    let r = s.run(&["volume", "show", "vm1", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["capacity"], 1u64 << 30);
}

#[test]
fn properties_get_set_unset_list_and_show_in_listings() {
    let s = Store::new();
    s.run(&["volume", "create", "vm1", "--size", "1G"]).ok();
    s.run(&["volume", "prop", "set", "vm1", "owner", "alice"]).ok();
    s.run(&["volume", "prop", "set", "vm1", "tier", "gold"]).ok();
    let r = s.run(&["volume", "prop", "get", "vm1", "owner"]).ok();
    assert_eq!(r.stdout, "alice\n");

    let r = s.run(&["volume", "prop", "list", "vm1", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["owner"], "alice");
    assert_eq!(v["tier"], "gold");

    let r = s.run(&["volume", "list", "--show-props", "owner,tier"]).ok();
    assert!(r.stdout.contains("owner") && r.stdout.contains("alice") && r.stdout.contains("gold"), "{}", r.stdout);

    s.run(&["volume", "prop", "unset", "vm1", "owner"]).ok();
    let r = s.run(&["volume", "prop", "get", "vm1", "owner"]).expect(3);
    assert!(r.stderr.contains("owner"), "{}", r.stderr);
    // Unsetting what is not set is not an error.
    s.run(&["volume", "prop", "unset", "vm1", "owner"]).ok();

    let r = s.run(&["volume", "show", "vm1"]).ok();
    assert!(r.stdout.contains("tier") && r.stdout.contains("gold"), "{}", r.stdout);
}

#[test]
fn list_and_show_json_have_exact_bytes_and_layers() {
    let s = Store::new();
    s.run(&["volume", "create", "vm1", "--size", "512M"]).ok();
    let r = s.run(&["volume", "list", "--format", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let vol = &v[0];
    assert_eq!(vol["name"], "vm1");
    assert_eq!(vol["capacity"], 512u64 << 20);
    assert_eq!(vol["depth"], 1);
    assert!(vol["guid"].is_string() && vol["leaf"].is_string());
    let layers = vol["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["parent"], "00000000-0000-0000-0000-000000000000");
    assert_eq!(layers[0]["voltype"], "Leaf");
    assert!(vol["jobs"].as_array().unwrap().is_empty());
}
