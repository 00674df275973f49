//! Replication between two real `strata mount` daemons on 127.0.0.1,
//! driven only through the command line: peer add on both, promote one,
//! write through the Primary's mount with fsync, wait for UpToDate, compare
//! the Secondary's data (exported after stopping its daemon) with
//! `qemu-img compare`, then kill -9 the Primary under protocol C, promote
//! the Secondary and read every fsync'ed write back through its mount.
//!
//! Needs root, /dev/fuse and qemu-img: skipped (with the reason on stderr)
//! without them, except under CI (`CI` set), where skipping is a failure.

mod cli_support;
use cli_support::{Run, Store, strata};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn skip(why: &str) -> bool {
    assert!(std::env::var_os("CI").is_none(), "CI is set, so this test may not skip: {why}");
    eprintln!("skipped: {why}");
    false
}

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root");
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_err() {
        return skip("/dev/fuse is missing or not usable");
    }
    if std::process::Command::new("qemu-img").arg("--version").output().is_err() {
        return skip("qemu-img is not installed");
    }
    true
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap_or("")))
}

/// One store with its mountpoint; unmounts (lazily if needed) on drop and
/// kills only the daemon it started if that is still alive.
struct Site {
    store: Store,
    mnt: PathBuf,
    /// The network namespace the daemon runs in (None: the test's own).
    netns: Option<String>,
}

impl Site {
    fn new(netns: Option<String>) -> Site {
        let store = Store::new();
        let mnt = store.scratch().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        Site { store, mnt, netns }
    }
    fn run(&self, args: &[&str]) -> Run {
        self.store.run(args)
    }
    fn mount(&self) {
        let (store, mnt) = (self.store.path.to_str().unwrap(), self.mnt.to_str().unwrap());
        match &self.netns {
            None => {
                strata(&["mount", store, mnt]).ok();
            }
            Some(ns) => {
                // Only the network namespace: the mount stays visible here,
                // and the control socket is a path, reachable from any.
                let mut cmd = std::process::Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{ns}"))
                    .arg(env!("CARGO_BIN_EXE_strata"))
                    .args(["mount", store, mnt])
                    .env_remove("STRATA_STORE")
                    .env_remove("RUST_LOG");
                cli_support::run_cmd(cmd).ok();
            }
        }
        assert!(is_mounted(&self.mnt));
    }
    fn umount(&self) {
        strata(&["umount", self.mnt.to_str().unwrap()]).ok();
        assert!(!is_mounted(&self.mnt));
    }
    fn daemon_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.store.path.join("daemon.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
    fn status(&self) -> serde_json::Value {
        let r = self.run(&["peer", "status", "--format", "json"]).ok();
        serde_json::from_str(&r.stdout).unwrap()
    }
    /// Poll `peer status` until `f` holds.
    #[track_caller]
    fn wait(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.status();
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}: {s:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = strata(&["umount", self.mnt.to_str().unwrap()]);
        }
        if is_mounted(&self.mnt) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(pid) = self.daemon_pid() {
            // Only our own daemon, by its pid, and only if it is still ours.
            let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.contains(self.store.path.to_str().unwrap()) {
                // SAFETY: kill with a pid we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Write `data` at `offset` of the volume file and fsync it.
fn write_fsync(file: &Path, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn qemu_compare(a: &Path, b: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_daemons_replicate_and_the_secondary_takes_over_after_kill_9() {
    if !can_run() {
        return;
    }
    pair(None, "127.0.0.1", "127.0.0.1");
}

/// Two network namespaces joined by a veth pair (10.231.x.1 ↔ .2), one
/// daemon in each: the same flow over a real (virtual) link.
#[test]
fn two_daemons_in_network_namespaces_over_a_veth_pair() {
    if !can_run() {
        return;
    }
    let Some(net) = Netns::new() else { return };
    pair(Some(&net), &net.addr[0], &net.addr[1]);
}

/// Namespaces `stN-a`/`stN-b` and veth `stvNa`/`stvNb` (N: our pid),
/// deleted on drop (only these).
struct Netns {
    ns: [String; 2],
    addr: [String; 2],
}

impl Netns {
    fn new() -> Option<Netns> {
        let id = std::process::id();
        let ns = [format!("st{id}-a"), format!("st{id}-b")];
        let veth = [format!("stv{id}a"), format!("stv{id}b")];
        let subnet = 100 + id % 100;
        let addr = [format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2")];
        let net = Netns { ns: ns.clone(), addr: addr.clone() };
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip").args(args).output();
            match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim())),
                Err(e) => Err(format!("ip: {e}")),
            }
        };
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &ns[0]])?;
            ip(&["netns", "add", &ns[1]])?;
            ip(&["link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1]])?;
            for i in 0..2 {
                ip(&["link", "set", &veth[i], "netns", &ns[i]])?;
                ip(&["-n", &ns[i], "addr", "add", &format!("{}/24", addr[i]), "dev", &veth[i]])?;
                ip(&["-n", &ns[i], "link", "set", &veth[i], "up"])?;
                ip(&["-n", &ns[i], "link", "set", "lo", "up"])?;
            }
            Ok(())
        };
        match setup() {
            Ok(()) => Some(net),
            Err(e) => {
                drop(net);
                skip(&format!("network namespaces are not usable here: {e}"));
                None
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it (and its peer).
        for ns in &self.ns {
            let _ = std::process::Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn pair(net: Option<&Netns>, host_a: &str, host_b: &str) {
    let t0 = Instant::now();
    let (a, b) = (Site::new(net.map(|n| n.ns[0].clone())), Site::new(net.map(|n| n.ns[1].clone())));
    let secret = a.store.scratch().join("secret");
    std::fs::write(&secret, "0123456789abcdef-shared-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = secret.to_str().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (la, lb) = (format!("{host_a}:{pa}"), format!("{host_b}:{pb}"));

    // Configuration works offline; a world-readable secret is refused.
    let loose = a.store.scratch().join("loose");
    std::fs::write(&loose, "0123456789abcdef-shared-secret").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = a.run(&["peer", "add", "b", "--address", &lb, "--listen", &la, "--secret-file", loose.to_str().unwrap()]);
    let r = r.expect(5);
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);
    a.run(&["peer", "add", "b", "--address", &lb, "--listen", &la, "--secret-file", s]).ok();
    b.run(&["peer", "add", "a", "--address", &la, "--listen", &lb, "--secret-file", s]).ok();
    let r = a.run(&["peer", "add", "c", "--address", &lb, "--secret-file", s]).expect(4);
    assert!(r.stderr.contains("strata peer remove b"), "{}", r.stderr);
    let r = a.run(&["peer", "status"]).ok();
    assert!(r.stdout.contains("not running"), "{}", r.stdout);
    let r = a.run(&["promote", "--force"]).expect(1);
    assert!(r.stderr.contains("strata mount"), "{}", r.stderr);

    a.mount();
    b.mount();
    // A new pair is Inconsistent on both sides: promotion needs --force.
    let r = a.run(&["promote"]).expect(5);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    a.run(&["promote", "--force"]).ok();
    a.wait("the initial sync", |s| s["connection"] == "Connected" && s["peer-disk"] == "UpToDate");

    // A Secondary refuses local changes.
    let r = b.run(&["volume", "create", "nope", "--size", "1M"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(r.stderr.contains("strata promote"), "{}", r.stderr);

    a.run(&["volume", "create", "vm1", "--size", "8M"]).ok();
    let file = a.mnt.join("vm1");
    let one = pattern(1, 3 << 20);
    write_fsync(&file, 0, &one);
    let sa = a.wait("UpToDate with nothing out of sync", |s| {
        s["replication"] == "Established" && s["peer-disk"] == "UpToDate" && s["out-of-sync"] == 0
    });
    assert_eq!(sa["role"], "Primary");
    assert_eq!(sa["degraded"], false);
    let sb = b.wait("the Secondary UpToDate", |s| s["disk"] == "UpToDate");
    assert_eq!(sb["role"], "Secondary");
    assert!(sb["received"].as_u64().unwrap() >= 3 << 20, "{sb:#}");
    let r = a.run(&["status"]).ok();
    assert!(r.stdout.contains("peer b (") && r.stdout.contains("Primary UpToDate"), "{}", r.stdout);
    let r = a.run(&["peer", "verify"]).ok();
    assert!(r.stdout.contains("verify finished: 0 ranges differ"), "{}", r.stdout);
    let r = a.run(&["peer", "events", "--once"]).ok();
    assert!(r.stdout.contains("replication:Established"), "{}", r.stdout);

    // The Secondary's store is not served: stop its daemon, export the
    // volume from the store, compare, and bring the daemon back.
    b.umount();
    let copy = b.store.scratch().join("vm1.raw");
    b.run(&["export", "vm1", copy.to_str().unwrap()]).ok();
    qemu_compare(&file, &copy);
    b.mount();
    a.wait("the reconnect", |s| s["replication"] == "Established" && s["peer-disk"] == "UpToDate");

    // Protocol C: an fsync returns once the peer has the data; kill -9.
    let two = pattern(2, 1 << 20);
    write_fsync(&file, 5 << 20, &two);
    let three = pattern(3, 4096);
    write_fsync(&file, 4096, &three);
    let pid = a.daemon_pid().expect("daemon pid of the Primary");
    // SAFETY: the pid of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let _ = std::process::Command::new("umount").arg("-l").arg(&a.mnt).status();
    b.wait("the Primary's loss", |s| s["connection"] != "Connected");
    b.run(&["promote"]).ok();
    let sb = b.status();
    assert_eq!(sb["role"], "Primary", "{sb:#}");
    let mut want = vec![0u8; 8 << 20];
    want[..one.len()].copy_from_slice(&one);
    want[5 << 20..(5 << 20) + two.len()].copy_from_slice(&two);
    want[4096..8192].copy_from_slice(&three);
    let got = std::fs::read(b.mnt.join("vm1")).unwrap();
    assert!(got == want, "the promoted Secondary lacks fsync'ed writes");
    let wanted = b.store.scratch().join("want.raw");
    std::fs::write(&wanted, &want).unwrap();
    qemu_compare(&b.mnt.join("vm1"), &wanted);
    // And it takes writes now.
    write_fsync(&b.mnt.join("vm1"), 0, &pattern(4, 4096));
    b.umount();
    eprintln!("two-daemon test took {:?}", t0.elapsed());
}
