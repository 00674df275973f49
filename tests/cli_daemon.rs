//! The daemon side of the command line: `strata::cli::execute` runs a
//! command against an engine that is already open and captures what it
//! prints, as the mount daemon does for commands sent to its socket.

use strata::cli::execute;
use strata::volume::{Engine, InitOptions, WritePolicy};

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn engine() -> (tempfile::TempDir, std::sync::Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    Engine::init(&path, &InitOptions { write_policy: WritePolicy::Async, ..Default::default() }).unwrap();
    let engine = Engine::open(&path, &Default::default()).unwrap();
    (dir, engine)
}

#[test]
fn execute_captures_output_and_exit_codes() {
    let (_dir, engine) = engine();
    let (out, err, code) = execute(&engine, &argv(&["volume", "create", "vm1", "--size", "1G"]));
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert!(out.contains("vm1"));

    let (out, _, code) = execute(&engine, &argv(&["volume", "list", "--format", "json"]));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "vm1");

    let (_, err, code) = execute(&engine, &argv(&["volume", "create", "vm1", "--size", "1G"]));
    assert_eq!(code, 4);
    assert!(err.contains("already exists"), "{err}");

    let (_, err, code) = execute(&engine, &argv(&["volume", "show", "ghost"]));
    assert_eq!(code, 3, "{err}");
}

#[test]
fn execute_reports_usage_errors_and_refuses_daemon_only_commands() {
    let (_dir, engine) = engine();
    let (_, err, code) = execute(&engine, &argv(&["volume", "frob"]));
    assert_eq!(code, 2);
    assert!(err.contains("frob"), "{err}");

    let (out, _, code) = execute(&engine, &argv(&["--help"]));
    assert_eq!(code, 0);
    assert!(out.contains("Usage"), "{out}");

    for cmd in [&["init", "/tmp/x"][..], &["mount", "/tmp/x", "/mnt"], &["umount", "/mnt"]] {
        let (_, err, code) = execute(&engine, &argv(cmd));
        assert_eq!(code, 2, "{cmd:?}: {err}");
        assert!(err.contains("run them directly"), "{err}");
    }
}
