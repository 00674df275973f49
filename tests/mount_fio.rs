//! fio with crc32c verification through the mount: 4 KiB random writes and
//! 1 MiB sequential writes with O_DIRECT, libaio, queue depth 16; two
//! volumes at once; and an unmount while I/O is in flight.
//!
//! Needs root, /dev/fuse and fio. Sizes are small so the suite runs in
//! minutes on 2 cores. Run: `cargo test --test mount_fio`.

mod mount_common;

use mount_common::{Mounted, ready, run};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

daemon_entry!();

/// Whether any process has `path` open (a /proc/*/fd scan).
fn open_by_some_process(path: &Path) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    for p in procs.flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == path) {
                return true;
            }
        }
    }
    false
}

fn fio(file: &Path, name: &str, rw: &str, bs: &str, size: &str, extra: &[&str]) -> Command {
    let mut c = Command::new("fio");
    c.arg(format!("--name={name}"))
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--size={size}"))
        .args(["--direct=1", "--ioengine=libaio", "--iodepth=16", "--verify=crc32c", "--verify_fatal=1"])
        // fio would otherwise leave *-verify.state files in the cwd.
        .arg("--verify_state_save=0")
        .args(extra);
    c
}

#[test]
fn fio_verify_4k_random_and_1m_sequential_writes() {
    if !ready(&["fio"]) {
        return;
    }
    let mut m = Mounted::new();
    let a = m.path("rand4k.raw");
    let b = m.path("seq1m.raw");
    run(Command::new("truncate").args(["-s", "32M"]).arg(&a));
    run(Command::new("truncate").args(["-s", "128M"]).arg(&b));
    run(&mut fio(&a, "rand4k", "randwrite", "4k", "32M", &[]));
    run(&mut fio(&b, "seq1m", "write", "1M", "128M", &[]));
    // The same data verifies after a remount (verify-only pass).
    m.remount();
    run(&mut fio(&a, "rand4k", "randwrite", "4k", "32M", &["--verify_only"]));
    run(&mut fio(&b, "seq1m", "write", "1M", "128M", &["--verify_only"]));
}

#[test]
fn fio_on_two_volumes_at_once() {
    if !ready(&["fio"]) {
        return;
    }
    let m = Mounted::new();
    let a = m.path("one.raw");
    let b = m.path("two.raw");
    for p in [&a, &b] {
        run(Command::new("truncate").args(["-s", "32M"]).arg(p));
    }
    let mut c1 = fio(&a, "one", "randwrite", "4k", "32M", &[]).stdout(Stdio::null()).spawn().unwrap();
    let mut c2 = fio(&b, "two", "randrw", "64k", "32M", &[]).stdout(Stdio::null()).spawn().unwrap();
    let s1 = c1.wait().unwrap();
    let s2 = c2.wait().unwrap();
    assert!(s1.success() && s2.success(), "{s1} {s2}\n{}", m.log());
}

#[test]
fn unmount_during_io_loses_nothing_that_was_written() {
    if !ready(&["fio"]) {
        return;
    }
    let mut m = Mounted::new();
    let p = m.path("busy.raw");
    run(Command::new("truncate").args(["-s", "48M"]).arg(&p));
    // Write with verification headers but do not verify yet; rate-limited
    // so the writes are still going on when the signal comes (~3 s).
    let mut writer = fio(&p, "busy", "randwrite", "4k", "48M", &["--do_verify=0", "--rate_iops=4000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until fio (its job process) really has the file open on the
    // mount, then give it a moment of writes.
    let start = std::time::Instant::now();
    while !open_by_some_process(&p) {
        assert!(start.elapsed() < Duration::from_secs(20), "fio never opened {}", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SIGTERM while fio is writing: the daemon detaches the mount and keeps
    // serving the open file until fio closes it, then flushes and exits.
    let in_flight = writer.try_wait().unwrap().is_none() && open_by_some_process(&p);
    m.signal(libc::SIGTERM);
    let ws = writer.wait().unwrap();
    assert!(ws.success(), "fio failed during the unmount: {ws}\n{}", m.log());
    assert!(!m.is_mounted(), "SIGTERM detaches the mount at once");
    let st = m.wait_child(Duration::from_secs(120)).expect("daemon exits after the last close");
    assert!(st.success(), "{st}\n{}", m.log());
    if in_flight {
        assert!(m.log().contains("detaching"), "the unmount should have found fio's file open:\n{}", m.log());
    } else {
        eprintln!("note: fio finished before the signal; the unmount was not concurrent");
    }
    m.mount();
    run(&mut fio(&p, "busy", "randwrite", "4k", "48M", &["--verify_only"]));
}

/// Not a pass/fail test: prints what the mount does on this machine with
/// the settings the research notes recommend. Run it on a release build:
/// `cargo test --release --test mount_fio -- --ignored --nocapture fio_numbers`.
#[test]
#[ignore]
fn fio_numbers() {
    if !ready(&["fio"]) {
        return;
    }
    let m = Mounted::new();
    let p = m.path("bench.raw");
    run(Command::new("truncate").args(["-s", "1G"]).arg(&p));
    let job = |name: &str, rw: &str, bs: &str, qd: &str, extra: &[&str]| -> String {
        let mut c = Command::new("fio");
        c.arg(format!("--name={name}"))
            .arg(format!("--filename={}", p.display()))
            .arg(format!("--rw={rw}"))
            .arg(format!("--bs={bs}"))
            .arg(format!("--iodepth={qd}"))
            .args(["--size=1G", "--direct=1", "--ioengine=libaio", "--output-format=terse", "--terse-version=3"])
            .args(extra);
        let out = run(&mut c);
        let f: Vec<&str> = out.trim().split(';').collect();
        // terse v3: read iops = field 8, write iops = 49, read bw KiB/s = 7, write bw = 48
        let (iops, bw) = if rw.contains("read") { (f[7], f[6]) } else { (f[48], f[47]) };
        format!("{name:<20} {iops:>8} IOPS {:>8} MiB/s", bw.parse::<u64>().unwrap_or(0) / 1024)
    };
    let timed = ["--time_based", "--runtime=5"];
    eprintln!("{}", job("seqwrite-1m-qd16", "write", "1M", "16", &[]));
    eprintln!("{}", job("randread-4k-qd1", "randread", "4k", "1", &timed));
    eprintln!("{}", job("randread-4k-qd16", "randread", "4k", "16", &timed));
    eprintln!("{}", job("randwrite-4k-qd16", "randwrite", "4k", "16", &timed));
    eprintln!("{}", job("seqread-1m-qd16", "read", "1M", "16", &timed));
}
