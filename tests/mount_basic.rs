//! The mount through the real kernel: layout, file operations, attributes,
//! the control socket, and the daemon's life cycle.
//!
//! Needs root and /dev/fuse (skipped with a reason otherwise; failing
//! instead when `CI` is set). Run: `cargo test --test mount_basic`.

#[path = "support/bytes.rs"]
mod bytes;
mod mount_common;

use mount_common::{Mounted, ready, stat};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

daemon_entry!();

const MIB: u64 = 1 << 20;

use bytes::pattern;

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn lseek(f: &File, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: lseek on an open fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)) } else { Ok(r) }
}

fn fallocate(f: &File, mode: i32, off: i64, len: i64) -> Result<(), i32> {
    // SAFETY: fallocate on an open fd.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) };
    if r < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)) } else { Ok(()) }
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::setxattr(cp.as_ptr(), cn.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

fn listxattr(p: &Path) -> Vec<String> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let r = unsafe { libc::listxattr(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", std::io::Error::last_os_error());
    buf.truncate(r as usize);
    buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

#[test]
fn layout_has_volume_files_snapshots_folder_and_by_guid_view() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    File::create(m.path("vm1.img")).unwrap().set_len(10 * MIB).unwrap();
    assert_eq!(names(&m.mnt), vec![".snapshots", "images", "vm1.img"]);

    let top = stat(&m.path("vm1.img"));
    assert!(top.is_file());
    assert_eq!(top.len(), 10 * MIB);
    assert_eq!(top.blocks(), 0, "a new volume is sparse");
    assert_eq!(top.blksize(), 4096);
    assert_eq!(top.nlink(), 2);

    let groups = names(&m.path("images"));
    assert_eq!(groups.len(), 1);
    let leaves = names(&m.path("images").join(&groups[0]));
    assert_eq!(leaves.len(), 1);
    let by_guid = stat(&m.path("images").join(&groups[0]).join(&leaves[0]));
    assert_eq!(by_guid.ino(), top.ino(), "the by-GUID file is the same inode");

    let snaps = m.path(".snapshots");
    assert!(stat(&snaps).is_dir());
    assert_eq!(names(&snaps), vec!["vm1.img"]);
    assert!(names(&snaps.join("vm1.img")).is_empty());

    // Views are read-only namespaces; the top level has no folders.
    assert_eq!(errno_of(std::fs::create_dir(m.path("dir"))), libc::EPERM);
    assert_eq!(errno_of(File::create(m.path("images").join("x"))), libc::EPERM);
    assert_eq!(errno_of(File::create(m.path(".snapshots/vm1.img/x"))), libc::EPERM);
    assert_eq!(errno_of(std::fs::remove_file(m.path("images").join(&groups[0]).join(&leaves[0]))), libc::EPERM);
}

#[test]
fn data_written_reads_back_and_reads_stop_at_eof() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let p = m.path("data.raw");
    let data = pattern(3 * MIB as usize + 123, 1);
    std::fs::write(&p, &data).unwrap();
    assert_eq!(stat(&p).len(), data.len() as u64, "writes past EOF grow the file");
    assert_eq!(std::fs::read(&p).unwrap(), data);

    // A read across EOF returns only what exists.
    let mut f = File::open(&p).unwrap();
    f.seek(SeekFrom::Start(data.len() as u64 - 100)).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(f.read(&mut buf).unwrap(), 100);
    assert_eq!(f.read(&mut buf).unwrap(), 0);

    // O_DIRECT with aligned buffers (qemu cache=none).
    let mut f = OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(&p).unwrap();
    let layout = std::alloc::Layout::from_size_align(MIB as usize, 4096).unwrap();
    // SAFETY: allocation of a non-zero, aligned layout; freed below.
    let ptr = unsafe { std::alloc::alloc(layout) };
    assert!(!ptr.is_null());
    // SAFETY: ptr points at MIB bytes we own.
    let aligned = unsafe { std::slice::from_raw_parts_mut(ptr, MIB as usize) };
    aligned.copy_from_slice(&pattern(MIB as usize, 2));
    f.seek(SeekFrom::Start(MIB)).unwrap();
    f.write_all(aligned).unwrap();
    f.sync_all().unwrap();
    aligned.fill(0);
    f.seek(SeekFrom::Start(MIB)).unwrap();
    f.read_exact(aligned).unwrap();
    assert_eq!(aligned, &pattern(MIB as usize, 2)[..]);
    // SAFETY: same layout as allocated.
    unsafe { std::alloc::dealloc(ptr, layout) };
}

#[test]
fn truncate_shrinks_and_grows_and_the_tail_reads_as_zeros() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let p = m.path("t.raw");
    std::fs::write(&p, pattern(2 * MIB as usize, 3)).unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(MIB).unwrap();
    assert_eq!(stat(&p).len(), MIB);
    f.set_len(2 * MIB).unwrap();
    drop(f);
    let back = std::fs::read(&p).unwrap();
    assert_eq!(&back[..MIB as usize], &pattern(2 * MIB as usize, 3)[..MIB as usize]);
    assert!(back[MIB as usize..].iter().all(|&b| b == 0), "data past a shrink must not come back");
    // O_TRUNC on open.
    File::create(&p).unwrap();
    assert_eq!(stat(&p).len(), 0);
}

#[test]
fn unlink_and_rename_change_volumes_and_rename_replaces_like_rename2() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    std::fs::write(m.path("a"), b"alpha").unwrap();
    std::fs::write(m.path("b"), b"bravo").unwrap();
    std::fs::rename(m.path("a"), m.path("c")).unwrap();
    assert_eq!(std::fs::read(m.path("c")).unwrap(), b"alpha");
    assert_eq!(errno_of(std::fs::metadata(m.path("a"))), libc::ENOENT);

    std::fs::rename(m.path("c"), m.path("b")).unwrap();
    assert_eq!(std::fs::read(m.path("b")).unwrap(), b"alpha");
    assert_eq!(m.control(&["names"]).0, "b\n", "the replaced volume is gone");

    std::fs::remove_file(m.path("b")).unwrap();
    assert_eq!(m.control(&["names"]).0, "");
    assert_eq!(names(&m.mnt), vec![".snapshots", "images"]);

    // Bad names.
    assert_eq!(errno_of(File::create(m.path("images"))), libc::EISDIR);
    assert_eq!(errno_of(File::create(m.path(&"x".repeat(256)))), libc::ENAMETOOLONG);
}

#[test]
fn an_unlinked_open_file_stays_readable_until_closed() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let p = m.path("tmp.raw");
    std::fs::write(&p, b"still here").unwrap();
    let mut f = File::open(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(errno_of(std::fs::metadata(&p)), libc::ENOENT);
    assert!(names(&m.mnt).iter().all(|n| n != "tmp.raw"));
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    // Release is asynchronous to close(): give it a moment.
    let start = std::time::Instant::now();
    while !m.control(&["names"]).0.is_empty() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.control(&["names"]).0, "", "removed at the last close");
}

#[test]
fn chmod_chown_times_and_xattrs_survive_a_remount() {
    if !ready(&[]) {
        return;
    }
    let mut m = Mounted::new();
    let p = m.path("vm.img");
    File::create(&p).unwrap().set_len(MIB).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&p, Some(107), Some(108)).unwrap();
    let mtime = std::time::UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
    File::options().write(true).open(&p).unwrap().set_modified(mtime).unwrap();
    let binary: Vec<u8> = (0..=255u8).collect();
    setxattr(&p, "user.binary", &binary);
    setxattr(&p, "trusted.libvirt.security.dac", b"+107:+108");
    let before = stat(&p);

    m.remount();

    let after = stat(&p);
    assert_eq!(after.mode() & 0o7777, 0o600);
    assert_eq!((after.uid(), after.gid()), (107, 108));
    assert_eq!(after.modified().unwrap(), mtime);
    assert_eq!(after.mtime(), before.mtime(), "mtime is stable, not 'now'");
    assert_eq!(getxattr(&p, "user.binary"), Some(binary));
    assert_eq!(getxattr(&p, "trusted.libvirt.security.dac").as_deref(), Some(&b"+107:+108"[..]));
    let mut listed = listxattr(&p);
    listed.sort();
    assert_eq!(listed, vec!["trusted.libvirt.security.dac", "user.binary"]);
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new("user.binary").unwrap();
    // SAFETY: valid C strings.
    assert_eq!(unsafe { libc::removexattr(cp.as_ptr(), cn.as_ptr()) }, 0);
    assert_eq!(getxattr(&p, "user.binary"), None);
}

#[test]
fn writes_update_the_modification_time_and_it_persists() {
    if !ready(&[]) {
        return;
    }
    let mut m = Mounted::new();
    let p = m.path("w.raw");
    File::create(&p).unwrap().set_len(MIB).unwrap();
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
    let mut f = File::options().write(true).open(&p).unwrap();
    f.write_all(b"x").unwrap();
    drop(f);
    let t = stat(&p).modified().unwrap();
    assert!(t > old, "a write moves mtime forward");
    m.remount();
    assert_eq!(stat(&p).modified().unwrap(), t);
}

#[test]
fn seek_data_and_seek_hole_follow_the_written_blocks() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let p = m.path("sparse.raw");
    let mut f = File::options().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    f.set_len(16 * MIB).unwrap();
    f.seek(SeekFrom::Start(MIB)).unwrap();
    f.write_all(&pattern(4096, 4)).unwrap();
    f.seek(SeekFrom::Start(8 * MIB)).unwrap();
    f.write_all(&pattern(8192, 5)).unwrap();
    f.sync_all().unwrap();

    assert_eq!(lseek(&f, 0, libc::SEEK_DATA), Ok(MIB as i64));
    assert_eq!(lseek(&f, MIB as i64, libc::SEEK_HOLE), Ok(MIB as i64 + 4096));
    assert_eq!(lseek(&f, MIB as i64 + 4096, libc::SEEK_DATA), Ok(8 * MIB as i64));
    assert_eq!(lseek(&f, 8 * MIB as i64, libc::SEEK_HOLE), Ok(8 * MIB as i64 + 8192));
    assert_eq!(lseek(&f, 8 * MIB as i64 + 8192, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(lseek(&f, 0, libc::SEEK_HOLE), Ok(0));
    assert_eq!(lseek(&f, 16 * MIB as i64, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(lseek(&f, 16 * MIB as i64, libc::SEEK_HOLE), Err(libc::ENXIO));
}

#[test]
fn punch_hole_and_zero_range_free_blocks_and_read_as_zeros() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let p = m.path("trim.raw");
    std::fs::write(&p, pattern(8 * MIB as usize, 6)).unwrap();
    let f = File::options().read(true).write(true).open(&p).unwrap();
    f.sync_all().unwrap();
    let full = f.metadata().unwrap().blocks();
    assert!(full >= 8 * MIB / 512, "st_blocks {full} should count 8 MiB of data");

    fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, 0, 4 * MIB as i64).unwrap();
    fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 4 * MIB as i64, 2 * MIB as i64).unwrap();
    f.sync_all().unwrap();
    let after = f.metadata().unwrap();
    assert_eq!(after.len(), 8 * MIB, "KEEP_SIZE / inside the file: size unchanged");
    assert!(after.blocks() <= full - 6 * MIB / 512, "st_blocks {} should drop by 6 MiB from {full}", after.blocks());
    let back = std::fs::read(&p).unwrap();
    assert!(back[..6 * MIB as usize].iter().all(|&b| b == 0));
    assert_eq!(&back[6 * MIB as usize..], &pattern(8 * MIB as usize, 6)[6 * MIB as usize..]);

    // Mode 0 past EOF grows; unsupported modes are refused.
    fallocate(&f, 0, 8 * MIB as i64, MIB as i64).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 9 * MIB);
    assert_eq!(fallocate(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096), Err(libc::EOPNOTSUPP));
}

#[test]
fn statfs_reports_the_stores_filesystem() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let sv = |p: &Path| {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs into a zeroed struct.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st
    };
    let a = sv(&m.mnt);
    let b = sv(&m.store);
    assert_eq!(a.f_blocks * a.f_frsize, b.f_blocks * b.f_frsize);
    assert!(a.f_bavail > 0);
}

#[test]
fn control_socket_commands_show_up_in_the_mount_at_once() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let (_, err, code) = m.control(&["create", "fromcli", "1048576"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stat(&m.path("fromcli")).len(), MIB);
    // Now cached by the kernel (1 s TTL); the daemon must invalidate.
    m.control(&["resize", "fromcli", "2097152"]);
    assert_eq!(stat(&m.path("fromcli")).len(), 2 * MIB);
    m.control(&["rename", "fromcli", "renamed"]);
    assert_eq!(errno_of(std::fs::metadata(m.path("fromcli"))), libc::ENOENT);
    assert_eq!(stat(&m.path("renamed")).len(), 2 * MIB);
    m.control(&["remove", "renamed"]);
    assert_eq!(errno_of(std::fs::metadata(m.path("renamed"))), libc::ENOENT);
    let (_, err, code) = m.control(&["bogus"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown"));
}

#[test]
fn umount_flushes_and_the_daemon_exits_zero_and_removes_its_pidfile() {
    if !ready(&[]) {
        return;
    }
    let mut m = Mounted::new();
    let pidfile = m.store.join(strata::fs::PIDFILE_NAME);
    let text = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(text.lines().next().unwrap().parse::<u32>().unwrap(), m.pid().unwrap());
    assert!(m.store.join("control.sock").exists());
    std::fs::write(m.path("keep.raw"), pattern(MIB as usize, 7)).unwrap();

    // Busy: refused with a clear message, still mounted.
    let open = File::open(m.path("keep.raw")).unwrap();
    let err = strata::fs::umount(&m.mnt).unwrap_err();
    assert!(format!("{err:#}").contains("busy"), "{err:#}");
    assert!(m.is_mounted());
    drop(open);

    let st = m.umount();
    assert!(st.success(), "{st}\n{}", m.log());
    assert!(!m.is_mounted());
    assert!(!pidfile.exists());
    assert!(!m.store.join("control.sock").exists());
    assert!(strata::control::call(&m.store, &["names".into()]).unwrap().is_none());
    m.mount();
    assert_eq!(std::fs::read(m.path("keep.raw")).unwrap(), pattern(MIB as usize, 7));
}

#[test]
fn sigterm_unmounts_cleanly_and_keeps_flushed_data() {
    if !ready(&[]) {
        return;
    }
    let mut m = Mounted::new();
    let mut f = File::create(m.path("s.raw")).unwrap();
    f.write_all(&pattern(MIB as usize, 8)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.signal(libc::SIGTERM);
    let st = m.wait_child(Duration::from_secs(60)).expect("daemon exits on SIGTERM");
    assert!(st.success(), "{st}\n{}", m.log());
    assert!(!m.is_mounted());
    m.mount();
    assert_eq!(std::fs::read(m.path("s.raw")).unwrap(), pattern(MIB as usize, 8));
}

#[test]
fn mounting_twice_on_the_same_mountpoint_is_refused() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let cfg = strata::fs::MountConfig {
        store: m.store.clone(),
        mountpoint: m.mnt.clone(),
        foreground: true,
        options: vec![],
        threads: None,
    };
    let err = strata::fs::mount(&cfg, mount_common::test_handler()).unwrap_err();
    assert!(format!("{err:#}").contains("already"), "{err:#}");
}

#[test]
fn snapshots_appear_read_only_in_both_views_and_revert_shows_at_once() {
    if !ready(&[]) {
        return;
    }
    let m = Mounted::new();
    let p = m.path("vm.img");
    std::fs::write(&p, pattern(2 * MIB as usize, 10)).unwrap();
    let ino = stat(&p).ino();
    let (_, err, code) = m.control(&["snapshot", "vm.img", "before"]);
    assert_eq!(code, 0, "{err}");
    let mut f = File::options().write(true).open(&p).unwrap();
    f.write_all(&pattern(MIB as usize, 11)).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let snap = m.path(".snapshots/vm.img/before");
    assert_eq!(names(&m.path(".snapshots/vm.img")), vec!["before"]);
    let st = stat(&snap);
    assert_eq!(st.len(), 2 * MIB);
    assert_eq!(st.mode() & 0o222, 0, "snapshots are read-only");
    assert_eq!(std::fs::read(&snap).unwrap(), pattern(2 * MIB as usize, 10));
    assert_eq!(errno_of(File::options().write(true).open(&snap)), libc::EROFS);
    assert_eq!(errno_of(std::fs::remove_file(&snap)), libc::EPERM);

    // images/<volume>/ holds the leaf and the snapshot layer; the snapshot
    // file there is the same inode.
    let group = m.path("images").join(&names(&m.path("images"))[0]);
    let layers = names(&group);
    assert_eq!(layers.len(), 2);
    let inos: Vec<u64> = layers.iter().map(|l| stat(&group.join(l)).ino()).collect();
    assert!(inos.contains(&ino), "the new leaf is still the volume's inode");
    assert!(inos.contains(&st.ino()));
    assert_eq!(stat(&p).ino(), ino, "a snapshot does not change the file's inode");

    let (_, err, code) = m.control(&["revert", "vm.img", "before"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), pattern(2 * MIB as usize, 10));
    let (_, err, code) = m.control(&["unsnap", "vm.img", "before"]);
    assert_eq!(code, 0, "{err}");
    assert!(names(&m.path(".snapshots/vm.img")).is_empty());
    assert_eq!(errno_of(std::fs::metadata(&snap)), libc::ENOENT);
    assert_eq!(std::fs::read(&p).unwrap(), pattern(2 * MIB as usize, 10));
}

#[test]
fn the_packer_compresses_deferred_blocks_in_the_background_and_nothing_changes() {
    if !ready(&[]) {
        return;
    }
    let mut m = Mounted::new();
    let p = m.path("packme.raw");
    // Compressible and unique: text-like bytes with the block number in.
    let data: Vec<u8> = (0..8 * MIB as usize)
        .map(|i| if i % 64 == 0 { (i / 4096) as u8 } else { b"strata packs deferred blocks "[i % 29] })
        .collect();
    std::fs::write(&p, &data).unwrap();
    let status = |m: &Mounted| -> serde_json::Value {
        let (out, err, code) = m.control(&["status"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    // Stored raw first (deferred); the packer compresses within seconds of
    // the writes going quiet.
    let start = std::time::Instant::now();
    loop {
        let s = status(&m);
        let ratio = s["compression_ratio"].as_f64().unwrap_or(0.0);
        if ratio > 4.0 && s["packs_awaiting_packer"] == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the packer did not finish: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(std::fs::read(&p).unwrap(), data);
    assert!(m.umount().success());
    let r = strata::volume::check::check(&m.store, &Default::default(), &mut |_, _| {}).unwrap();
    assert_eq!(r.errors(), 0, "{}", strata::volume::check::render(&r));
    m.mount();
    assert_eq!(std::fs::read(&p).unwrap(), data);
}

#[test]
fn every_fuse_lever_mounts_and_data_round_trips_through_the_page_cache() {
    if !ready(&[]) {
        return;
    }
    // Every non-default lever at once: one shared /dev/fuse fd, 128 KiB
    // requests, the page cache kept and written back.
    let m = Mounted::with_options("threads=2,clone_fd=0,max_write=128K,max_read=128K,keep_cache,writeback_cache");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts.lines().find(|l| l.contains(m.mnt.to_str().unwrap())).expect("mount listed");
    assert!(line.contains("max_read=131072"), "max_read reaches the kernel: {line}");
    // The daemon log (colours stripped) records what was negotiated.
    let mut log = String::new();
    let mut in_escape = false;
    for c in m.log().chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (false, c) => log.push(c),
            (true, _) => {}
        }
    }
    for field in ["keep_cache=true", "writeback_cache=true", "max_write=131072", "clone_fd=false"] {
        assert!(log.contains(field), "{field} not in the daemon log:\n{log}");
    }

    let p = m.path("cached.raw");
    let data = pattern(3 * MIB as usize + 4096, 20);
    std::fs::write(&p, &data).unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    assert_eq!(stat(&p).len(), data.len() as u64);
    assert_eq!(std::fs::read(&p).unwrap(), data, "buffered read back");

    // O_DIRECT bypasses the page cache and still sees the written data.
    let mut f = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&p).unwrap();
    let layout = std::alloc::Layout::from_size_align(MIB as usize, 4096).unwrap();
    // SAFETY: allocation of a non-zero, aligned layout; freed below.
    let ptr = unsafe { std::alloc::alloc(layout) };
    assert!(!ptr.is_null());
    // SAFETY: ptr points at MIB bytes we own.
    let aligned = unsafe { std::slice::from_raw_parts_mut(ptr, MIB as usize) };
    f.seek(SeekFrom::Start(MIB)).unwrap();
    f.read_exact(aligned).unwrap();
    assert_eq!(aligned, &data[MIB as usize..2 * MIB as usize]);
    // SAFETY: same layout as allocated.
    unsafe { std::alloc::dealloc(ptr, layout) };
    drop(f);

    // A revert through the control socket drops the kept pages.
    let (_, err, code) = m.control(&["snapshot", "cached.raw", "before"]);
    assert_eq!(code, 0, "{err}");
    let mut f = File::options().write(true).open(&p).unwrap();
    f.write_all(&pattern(MIB as usize, 21)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(std::fs::read(&p).unwrap()[..MIB as usize], pattern(MIB as usize, 21)[..]);
    let (_, err, code) = m.control(&["revert", "cached.raw", "before"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read(&p).unwrap(), data, "no stale cached pages after a revert");
}
