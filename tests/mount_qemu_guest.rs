//! A real guest on a volume file: qemu-system-x86_64 (TCG) boots a distro
//! kernel with a busybox initramfs whose /init writes a pattern to a
//! virtio disk that lives on the mount, with `cache=none,aio=native`
//! (O_DIRECT + Linux AIO: the libvirt default for raw images) and
//! `discard=unmap`, flushes, TRIMs a range, reads back, and powers off. The
//! host then checks the volume file byte for byte, also after a remount.
//!
//! Tools: qemu-system-x86_64, a kernel in /boot with its modules,
//! busybox-static, cpio, gzip (.ci/run installs them). Outside CI this test
//! is skipped with the install commands when they are missing; under `CI`
//! it fails instead. The install lines:
//!
//! ```sh
//! echo 'deb http://deb.debian.org/debian bookworm-backports main' > /etc/apt/sources.list.d/backports.list
//! apt-get update
//! apt-get install -y --no-remove --no-install-recommends -t bookworm-backports qemu-system-x86
//! apt-get install -y --no-remove --no-install-recommends linux-image-cloud-amd64 busybox-static cpio
//! ```
//!
//! Run: `cargo test --test mount_qemu_guest -- --nocapture`.

#[path = "support/bytes.rs"]
mod bytes;
mod mount_common;

use mount_common::{Mounted, ready, run, sh, stat};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

daemon_entry!();

const MIB: usize = 1 << 20;
const APT_HINT: &str = "install: apt-get install --no-remove --no-install-recommends -t bookworm-backports qemu-system-x86; \
     apt-get install --no-remove --no-install-recommends linux-image-cloud-amd64 busybox-static cpio";

/// A kernel we can read, with virtio modules for it.
fn find_kernel() -> Option<(PathBuf, String)> {
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = name.strip_prefix("vmlinuz-")?.to_string();
            Path::new("/lib/modules").join(&ver).is_dir().then(|| (e.path(), ver))
        })
        .collect();
    found.sort();
    found.pop()
}

fn static_busybox() -> Option<PathBuf> {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        let out = Command::new("ldd").arg(p).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if Path::new(p).exists() && text.contains("not a dynamic executable") {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// The guest-side tools (kernel, busybox, qemu-system), or why they are missing.
fn guest_tools() -> Result<(PathBuf, String, PathBuf), String> {
    for t in ["qemu-system-x86_64", "cpio", "gzip", "modprobe"] {
        if !mount_common::have_tool(t) {
            return Err(format!("{t} is not installed ({APT_HINT})"));
        }
    }
    let (kernel, ver) = find_kernel().ok_or(format!("no /boot/vmlinuz-* with modules ({APT_HINT})"))?;
    let busybox = static_busybox().ok_or(format!("no static busybox ({APT_HINT})"))?;
    Ok((kernel, ver, busybox))
}

/// The modules (in load order) that give the guest a virtio-blk disk.
fn virtio_modules(ver: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for m in ["virtio_pci", "virtio_blk"] {
        let text = run(Command::new("modprobe").args(["--show-depends", "-S", ver, m]));
        for line in text.lines() {
            // "insmod /lib/modules/.../x.ko" (builtin modules print "builtin x").
            if let Some(p) = line.trim().strip_prefix("insmod ") {
                let p = PathBuf::from(p.split_whitespace().next().unwrap_or(""));
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

fn pattern(len: usize) -> Vec<u8> {
    bytes::xorshift_bytes(len, 0x1234_5678_9abc_def1)
}

/// What the guest does, in busybox sh.
const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod "/modules/$m" || echo "GUEST-ERROR insmod $m"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -b /dev/vda ] || { echo "GUEST-ERROR no /dev/vda"; poweroff -f; }
echo "GUEST-SIZE $(cat /sys/block/vda/size)"
# 4 MiB of the pattern at 0, one more copy at 32 MiB; flush to the host.
for n in 0 1 2 3 32; do dd if=/pattern of=/dev/vda bs=1M seek=$n conv=notrunc,fsync 2>/dev/null || echo "GUEST-ERROR dd $n"; done
sync
# Guest TRIM of the second MiB (qemu discard=unmap -> fallocate punch hole).
blkdiscard -o 1048576 -l 1048576 /dev/vda && echo "GUEST-DISCARD ok" || echo "GUEST-DISCARD failed"
sync
echo 3 > /proc/sys/vm/drop_caches
want=$(sha256sum < /pattern | cut -d' ' -f1)
for n in 0 2 3 32; do
  got=$(dd if=/dev/vda bs=1M skip=$n count=1 2>/dev/null | sha256sum | cut -d' ' -f1)
  [ "$got" = "$want" ] && echo "GUEST-READ $n ok" || echo "GUEST-READ $n BAD"
done
echo GUEST-DONE
poweroff -f
"#;

fn build_initramfs(dir: &Path, busybox: &Path, modules: &[PathBuf]) -> PathBuf {
    let root = dir.join("initramfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("modules")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let mut list = String::new();
    for m in modules {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(m, root.join("modules").join(&name)).unwrap();
        list.push_str(&name);
        list.push('\n');
    }
    std::fs::write(root.join("modules.list"), list).unwrap();
    std::fs::write(root.join("pattern"), pattern(MIB)).unwrap();
    std::fs::write(root.join("init"), GUEST_INIT).unwrap();
    sh(&format!("chmod 755 {r}/init {r}/bin/busybox", r = root.display()));
    let out = dir.join("initramfs.cpio.gz");
    sh(&format!("cd {} && find . | cpio -o -H newc --quiet | gzip -1 > {}", root.display(), out.display()));
    out
}

#[test]
fn a_qemu_guest_writes_flushes_and_trims_a_volume_with_cache_none() {
    if !ready(&[]) {
        return;
    }
    let (kernel, ver, busybox) = match guest_tools() {
        Ok(t) => t,
        Err(why) => {
            // .ci/run installs the kernel, busybox and qemu-system: under CI
            // this test must run.
            mount_common::skip(&why);
            return;
        }
    };
    let mut m = Mounted::new();
    let disk = m.path("guest.raw");
    run(Command::new("truncate").args(["-s", "64M"]).arg(&disk));
    let initrd = build_initramfs(m.dir.path(), &busybox, &virtio_modules(&ver));

    let console = m.dir.path().join("console.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "256", "-smp", "1", "-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init quiet"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio,cache=none,aio=native,discard=unmap", disk.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("starting qemu-system-x86_64");
    // Kill only our qemu, and only if it hangs.
    let start = Instant::now();
    let status = loop {
        if let Some(st) = qemu.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(300) {
            let _ = qemu.kill();
            let _ = qemu.wait();
            panic!(
                "guest did not power off in 300 s; console:\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // The serial console carries terminal escapes (SeaBIOS clears the
    // screen); keep printable text only so a failure message stays readable.
    let log: String = std::fs::read_to_string(&console)
        .unwrap_or_default()
        .chars()
        .filter(|c| *c == '\n' || (!c.is_control() && *c != '\u{1b}'))
        .collect();
    let guest: Vec<&str> = log.lines().filter(|l| l.contains("GUEST-")).collect();
    eprintln!("guest said:\n{}", guest.join("\n"));
    assert!(status.success(), "qemu exited with {status}; console:\n{log}");
    assert!(log.contains("GUEST-DONE"), "guest did not finish; console:\n{log}");
    assert!(!log.contains("GUEST-ERROR") && !log.contains(" BAD"), "guest reported errors:\n{}", guest.join("\n"));
    assert!(log.contains(&format!("GUEST-SIZE {}", 64 * MIB / 512)), "{}", guest.join("\n"));

    let check = |m: &Mounted| {
        let data = std::fs::read(m.path("guest.raw")).unwrap();
        let p = pattern(MIB);
        assert_eq!(data.len(), 64 * MIB);
        for n in [0usize, 2, 3, 32] {
            assert!(data[n * MIB..(n + 1) * MIB] == p[..], "MiB {n} differs from what the guest wrote");
        }
        if log.contains("GUEST-DISCARD ok") {
            assert!(data[MIB..2 * MIB].iter().all(|&b| b == 0), "the guest's TRIM must read as zeros");
        }
    };
    check(&m);
    let blocks = stat(&disk).blocks() as usize * 512;
    assert!((4 * MIB..=5 * MIB).contains(&blocks), "allocated {blocks} bytes; expected 4 MiB of data after the TRIM");
    m.remount();
    check(&m);
}
