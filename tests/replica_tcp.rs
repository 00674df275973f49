//! Replication end to end with two real engines in one process over
//! loopback TCP (no FUSE): issue 6, test layer (a).
//!
//! Each test builds two stores, starts a replication node on each
//! (`replica::node`), and drives writes through the engine API. Timeouts
//! are short (ping 100 ms, timeout 800 ms) so the suite stays quick.

#[path = "support/bytes.rs"]
mod bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strata::replica::node::{Node, NodeConfig};
use strata::replica::{AdminCommand, ConnState, DiskState, Protocol, ReplState, Role};
use strata::volume::{Engine, InitOptions, OpenOptions, WritePolicy};

const SECRET: &[u8] = b"correct horse battery staple";
const WAIT: Duration = Duration::from_secs(20);

fn store(d: &tempfile::TempDir, name: &str) -> (PathBuf, Arc<Engine>) {
    let p = d.path().join(name);
    Engine::init(&p, &InitOptions { write_policy: WritePolicy::Async, ..Default::default() }).unwrap();
    let e = Engine::open(&p, &OpenOptions::default()).unwrap();
    (p, e)
}

fn reopen(p: &std::path::Path) -> Arc<Engine> {
    Engine::open(p, &OpenOptions::default()).unwrap()
}

fn cfg(peer: &str, protocol: Protocol) -> NodeConfig {
    let mut c = NodeConfig::new("r0", peer, SECRET);
    c.protocol = protocol;
    c.ping_interval_ms = 100;
    c.timeout_ms = 800;
    c.tick_ms = 20;
    c
}

/// The secondary: listens on a free port, never dials.
fn start_secondary(e: &Arc<Engine>, protocol: Protocol, secret: &[u8]) -> Node {
    let mut c = cfg("127.0.0.1:9", protocol);
    c.secret = secret.to_vec();
    c.listen = Some("127.0.0.1:0".parse().unwrap());
    c.dial = Some(false);
    Node::start(e.clone(), c).unwrap()
}

/// The primary: promoted (forced: a new pair), then dials the secondary.
fn start_primary(e: &Arc<Engine>, sec: &Node, protocol: Protocol) -> Node {
    let mut c = cfg(&sec.listen_addr.unwrap().to_string(), protocol);
    c.dial = Some(true);
    c.connect = false;
    let n = Node::start(e.clone(), c).unwrap();
    n.admin(AdminCommand::Promote { force: true }).unwrap();
    n.admin(AdminCommand::Connect).unwrap();
    n
}

use bytes::pattern;

fn in_sync(n: &Node) {
    let s = n
        .wait_status(WAIT, |s| {
            s.connection == ConnState::Connected
                && s.replication == ReplState::Established
                && s.disk == DiskState::UpToDate
                && s.peer_disk == DiskState::UpToDate
                && s.out_of_sync == 0
        })
        .unwrap_or_else(|| panic!("not in sync: {:?}\nevents: {:#?}", n.status(), n.events()));
    assert!(!s.degraded);
}

/// Both nodes report the same generation ids (the target adopted the
/// source's after the sync and the source has heard so).
fn same_generation(a: &Node, b: &Node) {
    let g = b.wait_status(WAIT, |s| s.disk == DiskState::UpToDate).unwrap().generation;
    a.wait_status(WAIT, |s| s.generation == g)
        .unwrap_or_else(|| panic!("generations differ: {:?} {:?}", a.status(), b.status()));
    std::thread::sleep(Duration::from_millis(200));
}

fn read_all(e: &Engine, name: &str) -> Vec<u8> {
    let v = e.open_volume(name).unwrap();
    let mut buf = vec![0u8; v.capacity() as usize];
    v.read_at(&mut buf, 0).unwrap();
    buf
}

fn assert_same_volumes(a: &Engine, b: &Engine) {
    let mut na: Vec<_> = a.list_volumes().unwrap().into_iter().map(|v| (v.name, v.capacity)).collect();
    let mut nb: Vec<_> = b.list_volumes().unwrap().into_iter().map(|v| (v.name, v.capacity)).collect();
    na.sort();
    nb.sort();
    assert_eq!(na, nb, "volume lists differ");
    for (n, _) in &na {
        assert!(read_all(a, n) == read_all(b, n), "volume {n} differs");
    }
}

#[test]
fn initial_sync_then_live_writes_leave_every_volume_byte_equal() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    // Data before replication starts: the initial full sync ships it.
    a.create_volume("vm1", 4 << 20).unwrap();
    a.create_volume("vm2", 1 << 20).unwrap();
    let v1 = a.open_volume("vm1").unwrap();
    v1.write_at(&pattern(1 << 20, 1), 0).unwrap();
    // A duplicate of the same data (dedup: its chunks travel once).
    v1.write_at(&pattern(1 << 20, 1), 2 << 20).unwrap();
    a.open_volume("vm2").unwrap().write_at(&pattern(5000, 2), 777).unwrap();
    a.set_property("vm2", "owner", "alice").unwrap();
    drop(v1);
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let na = start_primary(&a, &nb, Protocol::C);
    in_sync(&na);
    let st = nb.status().unwrap();
    // 256 distinct chunks + 2 odd ones: the duplicate MiB did not travel.
    assert!(st.chunk_bytes_received < (3 << 20) / 2 + (1 << 20), "{st:?}");
    // Live writes, a snapshot, a new volume, then a flush (protocol C).
    let v1 = a.open_volume("vm1").unwrap();
    v1.write_at(&pattern(300_000, 3), 123_456).unwrap();
    a.snapshot_create("vm1", "s1").unwrap();
    v1.write_at(&pattern(8192, 4), 0).unwrap();
    a.create_volume("vm3", 65536).unwrap();
    a.open_volume("vm3").unwrap().write_at(&pattern(4096, 5), 4096).unwrap();
    v1.flush().unwrap();
    drop(v1);
    in_sync(&na);
    nb.stop();
    na.stop();
    assert_same_volumes(&a, &b);
    assert_eq!(b.snapshot_list("vm1").unwrap().len(), 1);
    assert_eq!(b.get_property("vm2", "owner").unwrap().as_deref(), Some("alice"));
    let e = b.open_snapshot("vm1", "s1").unwrap();
    let mut snap = vec![0u8; 8192];
    e.read_at(&mut snap, 0).unwrap();
    assert_eq!(snap, pattern(1 << 20, 1)[..8192].to_vec(), "the snapshot kept the old data");
}

/// Protocol C: every flushed write survives the primary's crash on the
/// promoted secondary.
#[test]
fn protocol_c_crash_of_the_primary_then_promote_keeps_every_acknowledged_write() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (pb, b) = store(&d, "b");
    a.create_volume("vm", 2 << 20).unwrap();
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let na = start_primary(&a, &nb, Protocol::C);
    in_sync(&na);
    let v = a.open_volume("vm").unwrap();
    let mut acked = vec![0u8; 2 << 20];
    for i in 0..40u64 {
        let data = pattern(6000, 100 + i);
        let off = (i * 37_000) % ((2 << 20) - 6000);
        v.write_at(&data, off).unwrap();
        if i % 4 == 3 {
            v.flush().unwrap();
            // Everything written so far is acknowledged.
            acked = read_all(&a, "vm");
        }
    }
    // Unflushed writes after the last acknowledgement may or may not
    // arrive; crash now (no close, no checkpoint).
    v.write_at(&pattern(4096, 999), 0).unwrap();
    a.simulate_crash();
    drop(na);
    drop(v);
    nb.wait_status(WAIT, |s| s.connection != ConnState::Connected).unwrap();
    nb.admin(AdminCommand::Promote { force: false }).unwrap();
    assert_eq!(nb.status().unwrap().role, Role::Primary);
    nb.stop();
    // Restart the survivor too, as after a failover reboot.
    drop(b);
    let b = reopen(&pb);
    let got = read_all(&b, "vm");
    let last = pattern(4096, 999);
    // Every acknowledged byte is there, except where the unacknowledged
    // last write (block 0) may have landed on top.
    assert_eq!(got[4096..], acked[4096..]);
    assert!(got[..4096] == acked[..4096] || got[..4096] == last[..]);
}

/// Protocol A: the secondary always holds a prefix of the primary's writes.
#[test]
fn protocol_a_crash_leaves_a_consistent_prefix_on_the_secondary() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    a.create_volume("log", 1 << 20).unwrap();
    let nb = start_secondary(&b, Protocol::A, SECRET);
    let na = start_primary(&a, &nb, Protocol::A);
    in_sync(&na);
    let v = a.open_volume("log").unwrap();
    // An append-only log: block i written after block i-1.
    let n = 200u64;
    for i in 0..n {
        v.write_at(&pattern(4096, 1000 + i), i * 4096).unwrap();
        v.flush().unwrap(); // local only under protocol A
    }
    a.simulate_crash();
    drop(na);
    drop(v);
    nb.wait_status(WAIT, |s| s.connection != ConnState::Connected).unwrap();
    nb.admin(AdminCommand::Promote { force: true }).unwrap();
    nb.stop();
    let got = read_all(&b, "log");
    let mut k = 0;
    while k < n && got[(k * 4096) as usize..((k + 1) * 4096) as usize] == pattern(4096, 1000 + k)[..] {
        k += 1;
    }
    assert!(got[(k * 4096) as usize..].iter().all(|&x| x == 0), "not a prefix: block {k} is neither written nor empty");
    eprintln!("secondary holds the first {k} of {n} writes");
}

/// A disconnect, writes, a reconnect: the resync ships about the changed
/// data, not the volume.
#[test]
fn reconnect_resyncs_only_what_changed_with_bytes_on_the_wire_measured() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    a.create_volume("big", 16 << 20).unwrap();
    let v = a.open_volume("big").unwrap();
    for i in 0..8u64 {
        v.write_at(&pattern(1 << 20, 50 + i), i * (2 << 20)).unwrap();
    }
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let na = start_primary(&a, &nb, Protocol::C);
    in_sync(&na);
    let (full, _) = na.wire_bytes();
    na.admin(AdminCommand::Disconnect).unwrap();
    na.wait_status(WAIT, |s| s.connection == ConnState::StandAlone).unwrap();
    // 64 KiB of new data, 64 KiB of data the peer already has (dedup),
    // and a zeroed 128 KiB range.
    v.write_at(&pattern(65536, 77), 5 << 20).unwrap();
    v.write_at(&pattern(65536, 50), 9 << 20).unwrap();
    v.write_at(&vec![0u8; 131072], 1 << 20).unwrap();
    v.flush().unwrap(); // degraded: completes locally
    assert!(na.status().unwrap().out_of_sync >= 256 * 1024);
    let before = na.wire_bytes().0;
    na.admin(AdminCommand::Connect).unwrap();
    in_sync(&na);
    let resync = na.wire_bytes().0 - before;
    eprintln!("initial sync {full} bytes; resync after 256 KiB of changes {resync} bytes");
    assert!(resync < 256 << 10, "resync sent {resync} bytes for 64 KiB of new data");
    assert!(full > 4 << 20);
    drop(v);
    nb.stop();
    na.stop();
    assert_same_volumes(&a, &b);
}

#[test]
fn split_brain_is_detected_and_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    a.create_volume("vm", 1 << 20).unwrap();
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let na = start_primary(&a, &nb, Protocol::C);
    in_sync(&na);
    same_generation(&na, &nb);
    na.admin(AdminCommand::Disconnect).unwrap();
    nb.admin(AdminCommand::Disconnect).unwrap();
    // Both sides write while apart.
    a.open_volume("vm").unwrap().write_at(&pattern(4096, 1), 0).unwrap();
    nb.admin(AdminCommand::Promote { force: true }).unwrap();
    b.open_volume("vm").unwrap().write_at(&pattern(4096, 2), 0).unwrap();
    nb.admin(AdminCommand::Demote).unwrap();
    nb.admin(AdminCommand::Connect).unwrap();
    na.admin(AdminCommand::Connect).unwrap();
    let s = na
        .wait_status(WAIT, |s| s.connection == ConnState::StandAlone && s.last_error.is_some())
        .unwrap_or_else(|| panic!("no refusal: {:?} {:#?}", na.status(), na.events()));
    let why = s.last_error.unwrap();
    assert!(why.to_lowercase().contains("split"), "{why}\nA: {:#?}\nB: {:#?}", na.events(), nb.events());
    // Nothing was overwritten on either side.
    assert_eq!(read_all(&a, "vm")[..4096], pattern(4096, 1)[..]);
    assert_eq!(read_all(&b, "vm")[..4096], pattern(4096, 2)[..]);
    nb.stop();
    na.stop();
}

/// Resolving a split brain with discard-my-data resyncs the victim from
/// the survivor and keeps the victim's divergent data as a local-only
/// volume `split-brain-<generation>-<vol>` that survives the resync, later
/// catalogue changes, a restart of the link and a verify.
#[test]
fn discard_my_data_resolves_a_split_brain_and_keeps_the_victims_data() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    a.create_volume("vm", 1 << 20).unwrap();
    a.open_volume("vm").unwrap().write_at(&pattern(8192, 7), 8192).unwrap();
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let na = start_primary(&a, &nb, Protocol::C);
    in_sync(&na);
    same_generation(&na, &nb);
    na.admin(AdminCommand::Disconnect).unwrap();
    nb.admin(AdminCommand::Disconnect).unwrap();
    a.open_volume("vm").unwrap().write_at(&pattern(4096, 1), 0).unwrap();
    nb.admin(AdminCommand::Promote { force: true }).unwrap();
    b.open_volume("vm").unwrap().write_at(&pattern(4096, 2), 0).unwrap();
    let victim = read_all(&b, "vm");
    nb.admin(AdminCommand::Demote).unwrap();
    nb.admin(AdminCommand::Connect).unwrap();
    na.admin(AdminCommand::Connect).unwrap();
    na.wait_status(WAIT, |s| s.connection == ConnState::StandAlone && s.last_error.is_some())
        .unwrap_or_else(|| panic!("no refusal: {:?} {:#?}", na.status(), na.events()));

    // Resolve on B: it becomes the target and drops its changes...
    nb.admin(AdminCommand::DiscardMyData).unwrap();
    na.admin(AdminCommand::Connect).unwrap();
    in_sync(&na);
    same_generation(&na, &nb);
    assert!(read_all(&b, "vm") == read_all(&a, "vm"), "the victim was not resynced");
    // ...but keeps them, byte for byte, in a local-only volume.
    let kept: Vec<String> =
        b.list_volumes().unwrap().into_iter().map(|v| v.name).filter(|n| n.starts_with("split-brain-")).collect();
    assert_eq!(kept.len(), 1, "{kept:?}\nB: {:#?}", nb.events());
    assert!(kept[0].ends_with("-vm"), "{kept:?}");
    assert!(read_all(&b, &kept[0]) == victim, "the preserved copy differs from the victim's data");
    assert!(a.list_volumes().unwrap().iter().all(|v| !v.name.starts_with("split-brain-")), "shipped to the survivor");

    // Later catalogue changes and writes from the Primary leave it alone.
    a.create_volume("vm2", 1 << 20).unwrap();
    a.open_volume("vm").unwrap().write_at(&pattern(4096, 3), 4096).unwrap();
    a.open_volume("vm").unwrap().flush().unwrap();
    in_sync(&na);
    assert!(b.list_volumes().unwrap().iter().any(|v| v.name == "vm2"));
    assert!(read_all(&b, &kept[0]) == victim);
    // Verify ignores local-only volumes.
    let from = na.events().len();
    na.admin(AdminCommand::Verify).unwrap();
    assert!(na.wait_event("verify:finished", WAIT));
    let line = na.events()[from..].iter().find(|l| l.contains("verify:finished")).cloned().unwrap();
    assert!(line.contains("ov-mismatches:0"), "{line}");
    // A restart of the victim's link (full catalogue on reconnect) too.
    nb.stop();
    let nb = start_secondary(&b, Protocol::C, SECRET);
    na.admin(AdminCommand::Disconnect).unwrap();
    let mut c = cfg(&nb.listen_addr.unwrap().to_string(), Protocol::C);
    c.dial = Some(true);
    c.connect = false;
    na.stop();
    let na = Node::start(a.clone(), c).unwrap();
    na.admin(AdminCommand::Promote { force: false }).ok();
    na.admin(AdminCommand::Connect).unwrap();
    in_sync(&na);
    assert!(read_all(&b, &kept[0]) == victim);
    assert_same_volumes_except_local(&a, &b);
    nb.stop();
    na.stop();
}

fn assert_same_volumes_except_local(a: &Engine, b: &Engine) {
    let names = |e: &Engine| {
        let mut v: Vec<String> =
            e.list_volumes().unwrap().into_iter().map(|v| v.name).filter(|n| !n.starts_with("split-brain-")).collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b));
    for n in names(a) {
        assert!(read_all(a, &n) == read_all(b, &n), "volume {n} differs");
    }
}

#[test]
fn a_wrong_secret_is_refused_with_a_reason() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    let nb = start_secondary(&b, Protocol::C, b"another secret entirely");
    let na = start_primary(&a, &nb, Protocol::C);
    let s = na
        .wait_status(WAIT, |s| s.connection == ConnState::StandAlone && s.last_error.is_some())
        .unwrap_or_else(|| panic!("no refusal: {:?}", na.status()));
    let why = s.last_error.unwrap();
    assert!(why.contains("auth") || why.contains("secret") || why.contains("response"), "{why}");
    assert_eq!(s.replication, ReplState::Off);
    nb.stop();
    na.stop();
}

/// A peer that stops reading and writing (SIGSTOP, a silent partition) is
/// detected by the keepalive timeout, not only a closed socket.
#[test]
fn a_silent_peer_is_detected_within_the_timeout() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let na = start_primary(&a, &nb, Protocol::C);
    in_sync(&na);
    let t0 = std::time::Instant::now();
    nb.stall_reads(true);
    na.wait_status(Duration::from_secs(5), |s| s.connection != ConnState::Connected)
        .unwrap_or_else(|| panic!("silence not detected: {:?}", na.status()));
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(2500), "detected after {took:?}");
    assert!(na.events().iter().any(|l| l.contains("Timeout")), "{:#?}", na.events());
    nb.stall_reads(false);
    // It comes back by itself once the peer answers again.
    in_sync(&na);
    nb.stop();
    na.stop();
}

/// Peers configured in the catalogue (what `strata peer add` writes),
/// started the way the mount daemon does; a Secondary refuses local writes.
#[test]
fn catalogue_configured_peers_replicate_and_a_secondary_refuses_local_writes() {
    use std::os::unix::fs::PermissionsExt;
    use strata::catalog::PeerRow;
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    let secret = d.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let row = |name: &str, address: String, listen: Option<String>| PeerRow {
        name: name.into(),
        address,
        secret_file: secret.display().to_string(),
        protocol: "C".into(),
        listen,
        created_unix: 0,
    };
    a.catalog().peer_add(&row("b", format!("127.0.0.1:{port}"), None)).unwrap();
    b.catalog().peer_add(&row("a", "127.0.0.1:1".into(), Some(format!("127.0.0.1:{port}")))).unwrap();
    // A world-readable secret is refused with the reason.
    let err = strata::replica::node::start_configured(&a).err().unwrap();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let nb = strata::replica::node::start_configured(&b).unwrap().unwrap();
    let na = strata::replica::node::start_configured(&a).unwrap().unwrap();
    na.admin(AdminCommand::Promote { force: true }).unwrap();
    a.create_volume("vm", 1 << 20).unwrap();
    a.open_volume("vm").unwrap().write_at(&pattern(10_000, 9), 100).unwrap();
    a.flush().unwrap();
    in_sync(&na);
    let err = b.create_volume("local", 4096).unwrap_err().to_string();
    assert!(err.contains("Secondary"), "{err}");
    let err = b.open_volume("vm").unwrap().write_at(&[1], 0).unwrap_err().to_string();
    assert!(err.contains("Secondary"), "{err}");
    // A Secondary refuses promotion while the Primary is connected.
    let err = nb.admin(AdminCommand::Promote { force: false }).unwrap_err();
    assert!(err.contains("Primary"), "{err}");
    nb.stop();
    na.stop();
    assert_same_volumes(&a, &b);
}

/// The dirty set survives a crash of the primary: writes made while the
/// peer was away reach it after the primary restarts, via `replica.state`
/// (dirty set + activity log), without a full resync.
#[test]
fn the_dirty_set_survives_a_primary_crash_and_restart() {
    let d = tempfile::tempdir().unwrap();
    let (pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    a.create_volume("vm", 8 << 20).unwrap();
    a.open_volume("vm").unwrap().write_at(&pattern(4 << 20, 1), 0).unwrap();
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let na = start_primary(&a, &nb, Protocol::C);
    in_sync(&na);
    same_generation(&na, &nb);
    let peer = nb.listen_addr.unwrap().to_string();
    nb.admin(AdminCommand::Disconnect).unwrap();
    na.wait_status(WAIT, |s| s.connection != ConnState::Connected).unwrap();
    let v = a.open_volume("vm").unwrap();
    v.write_at(&pattern(100_000, 2), 3 << 20).unwrap();
    v.write_at(&pattern(5000, 3), 7 << 20).unwrap();
    // No flush, no close: the writes exist in the page cache / journal only.
    a.simulate_crash();
    drop(v);
    drop(na);
    drop(a);
    let a = reopen(&pa);
    let mut c = cfg(&peer, Protocol::C);
    c.dial = Some(true);
    let na = Node::start(a.clone(), c).unwrap();
    assert!(na.status().unwrap().out_of_sync >= 100_000, "{:?}", na.status());
    let before = na.wire_bytes().0;
    nb.admin(AdminCommand::Connect).unwrap();
    in_sync(&na);
    // Re-promoted by itself (the wish is in replica.state).
    na.wait_status(WAIT, |s| s.role == Role::Primary).unwrap();
    let sent = na.wire_bytes().0 - before;
    assert!(sent < 2 << 20, "resync sent {sent} bytes");
    nb.stop();
    na.stop();
    assert_same_volumes(&a, &b);
}

/// Online verify compares map digests by hash: equal stores report no
/// mismatch; pause/resume and the rate limit are accepted while connected.
#[test]
fn verify_reports_no_mismatch_on_equal_stores_and_sync_can_be_paused() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    a.create_volume("vm", 2 << 20).unwrap();
    a.open_volume("vm").unwrap().write_at(&pattern(1 << 20, 4), 4096).unwrap();
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let na = start_primary(&a, &nb, Protocol::C);
    in_sync(&na);
    na.admin(AdminCommand::Verify).unwrap();
    assert!(na.wait_event("verify:finished", WAIT), "{:#?}", na.events());
    let line = na.events().into_iter().find(|l| l.contains("verify:finished")).unwrap();
    assert!(line.contains("ov-mismatches:0"), "{line}");
    na.admin(AdminCommand::PauseSync).unwrap();
    na.admin(AdminCommand::SetRate { bytes_per_s: 1 << 20 }).unwrap();
    na.admin(AdminCommand::ResumeSync).unwrap();
    in_sync(&na);
    nb.stop();
    na.stop();
}

/// A new pair that connects *before* one side is promoted (both just
/// created: "no sync") still gets its initial sync when the promotion
/// comes (found by the two-daemon test, where the two orders race).
#[test]
fn a_forced_promotion_after_a_new_pair_connected_starts_the_initial_sync() {
    let d = tempfile::tempdir().unwrap();
    let (_pa, a) = store(&d, "a");
    let (_pb, b) = store(&d, "b");
    a.create_volume("v", 1 << 20).unwrap();
    let nb = start_secondary(&b, Protocol::C, SECRET);
    let mut c = cfg(&nb.listen_addr.unwrap().to_string(), Protocol::C);
    c.dial = Some(true);
    c.connect = false;
    let na = Node::start(a.clone(), c).unwrap();
    na.admin(AdminCommand::Connect).unwrap();
    na.wait_status(WAIT, |s| s.connection == ConnState::Connected && s.replication == ReplState::Established)
        .unwrap_or_else(|| panic!("the new pair did not connect: {:?}", na.status()));
    assert_eq!(na.status().unwrap().peer_disk, DiskState::Inconsistent);
    na.admin(AdminCommand::Promote { force: true }).unwrap();
    in_sync(&na);
    assert_eq!(read_all(&a, "v"), read_all(&b, "v"));
    nb.stop();
    na.stop();
}
