//! `strata snapshot ...`, `strata clone` and `strata chain dump` through the
//! real binary: the chain grows and shrinks as the commands say, data seen
//! through a snapshot, a clone and a revert is what was there when the
//! snapshot was taken.

mod cli_support;
use cli_support::Store;

fn json(r: &cli_support::Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", r.stdout))
}

#[test]
fn snapshots_grow_the_chain_and_removal_merges_them_out() {
    let s = Store::new();
    s.run(&["volume", "create", "vm1", "--size", "64M"]).ok();
    s.run(&["snapshot", "create", "vm1", "s1"]).ok();
    s.run(&["snapshot", "create", "vm1", "s2"]).ok();
    let r = s.run(&["snapshot", "create", "vm1", "s1"]).expect(4);
    assert!(r.stderr.contains("s1"), "{}", r.stderr);

    let list = json(&s.run(&["snapshot", "list", "vm1", "--format", "json"]).ok());
    let names: Vec<_> = list.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["s1", "s2"]);
    let r = s.run(&["snapshot", "list", "vm1"]).ok();
    assert!(r.stdout.contains("s1") && r.stdout.contains("s2"), "{}", r.stdout);

    let v = json(&s.run(&["volume", "show", "vm1", "--format", "json"]).ok());
    assert_eq!(v["depth"], 3);

    s.run(&["snapshot", "remove", "vm1", "s1"]).ok();
    let v = json(&s.run(&["volume", "show", "vm1", "--format", "json"]).ok());
    assert_eq!(v["depth"], 2);
    let r = s.run(&["snapshot", "remove", "vm1", "s1"]).expect(3);
    assert!(r.stderr.contains("strata snapshot list"), "{}", r.stderr);
}

#[test]
fn revert_and_clone_see_the_data_of_the_snapshot() {
    let s = Store::new();
    let raw = s.scratch().join("a.raw");
    let data = vec![0x11u8; 1 << 20];
    std::fs::write(&raw, &data).unwrap();
    s.run(&["import", raw.to_str().unwrap(), "vm1"]).ok();
    s.run(&["snapshot", "create", "vm1", "before"]).ok();

    // The CLI cannot write into a volume (the mount does), so the clone is
    // checked by its bytes and the revert by the chain it leaves.
    s.run(&["clone", "vm1@before", "c1"]).ok();
    let out = s.scratch().join("c1.raw");
    s.run(&["export", "c1", out.to_str().unwrap()]).ok();
    assert!(std::fs::read(&out).unwrap() == data, "clone reads differently from its snapshot");
    let c = json(&s.run(&["volume", "show", "c1", "--format", "json"]).ok());
    assert!(c["properties"]["cloned-from"].is_string(), "{c}");

    // The snapshot is the clone's base: removing it is refused until the clone is flattened.
    let r = s.run(&["snapshot", "remove", "vm1", "before"]).expect(5);
    assert!(r.stderr.contains("strata volume flatten"), "{}", r.stderr);
    s.run(&["volume", "flatten", "c1"]).ok();
    let c = json(&s.run(&["volume", "show", "c1", "--format", "json"]).ok());
    assert_eq!(c["depth"], 1);
    std::fs::remove_file(&out).unwrap();
    s.run(&["export", "c1", out.to_str().unwrap()]).ok();
    assert!(std::fs::read(&out).unwrap() == data, "flattening changed the clone's bytes");

    s.run(&["snapshot", "revert", "vm1", "before", "--keep-old-as", "old"]).ok();
    let list = json(&s.run(&["snapshot", "list", "vm1", "--format", "json"]).ok());
    let names: Vec<_> = list.as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect();
    assert!(names.contains(&"old".to_string()) && names.contains(&"before".to_string()), "{names:?}");

    s.run(&["clone", "vm1", "c2"]).expect(5);
    s.run(&["clone", "vm1@nope", "c2"]).expect(3);
    s.run(&["clone", "vm1@before", "c1"]).expect(4);
}

#[test]
fn chain_dump_lists_every_layer_base_first() {
    let s = Store::new();
    s.run(&["volume", "create", "vm1", "--size", "1G"]).ok();
    s.run(&["snapshot", "create", "vm1", "s1"]).ok();
    let d = json(&s.run(&["chain", "dump", "--format", "json"]).ok());
    let image = &d["images"][0];
    assert_eq!(image["name"], "vm1");
    let chain = image["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["parent"], "00000000-0000-0000-0000-000000000000");
    assert_eq!(chain[0]["snapshot"], "s1");
    assert_eq!(chain[1]["voltype"], "Leaf");
    assert!(image["problems"].as_array().unwrap().is_empty());

    let r = s.run(&["chain", "dump", "vm1"]).ok();
    assert!(
        r.stdout.contains("INTERNAL") && r.stdout.contains("LEAF") && r.stdout.contains("snapshot \"s1\""),
        "{}",
        r.stdout
    );
    s.run(&["chain", "dump", "ghost"]).expect(3);
}
