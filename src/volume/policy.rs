//! Resolving the `auto` write policy from the backing device, as VDO does
//! (seed 003): a volatile write-back cache means writes are not durable
//! until flushed, so `async` is the honest choice; no cache or a
//! write-through cache means `sync` costs little.
//!
//! We look at the block device holding the store directory:
//! `/sys/dev/block/MAJ:MIN` (the partition's parent when it is a partition),
//! then `queue/write_cache` ("write back" / "write through") and the SCSI
//! `device/scsi_disk/*/cache_type` ("write back", "write through", "None",
//! …). When nothing can be read (tmpfs, overlayfs, a network filesystem),
//! `auto` assumes a volatile cache and chooses `async`: it never claims a
//! durability the device may not give.

use super::WritePolicy;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Map a cache-type string from sysfs to a policy.
fn policy_for(cache: &str) -> Option<WritePolicy> {
    let c = cache.trim().to_ascii_lowercase();
    if c.starts_with("write back") || c.starts_with("write-back") {
        Some(WritePolicy::Async)
    } else if c.starts_with("write through") || c.starts_with("write-through") || c == "none" {
        Some(WritePolicy::Sync)
    } else {
        None
    }
}

/// Decide `auto` for the device `major:minor` under `sysfs` (normally
/// "/sys"). Returns the policy and the reason, for `status`.
pub fn resolve_auto_for_dev(sysfs: &Path, major: u32, minor: u32) -> (WritePolicy, String) {
    let mut dev = sysfs.join(format!("dev/block/{major}:{minor}"));
    if dev.join("partition").exists() {
        dev = dev.join("..");
    }
    let scsi = dev.join("device/scsi_disk");
    if let Ok(rd) = std::fs::read_dir(&scsi) {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("cache_type"))
                && let Some(p) = policy_for(&s)
            {
                return (p, format!("{}/cache_type is {:?}", e.path().display(), s.trim()));
            }
        }
    }
    let wc = dev.join("queue/write_cache");
    if let Ok(s) = std::fs::read_to_string(&wc)
        && let Some(p) = policy_for(&s)
    {
        return (p, format!("{} is {:?}", wc.display(), s.trim()));
    }
    (WritePolicy::Async, format!("no cache type found for device {major}:{minor}; assuming a volatile cache"))
}

/// Decide `auto` for the filesystem holding `store`.
pub fn resolve_auto(store: &Path) -> (WritePolicy, String) {
    match std::fs::metadata(store) {
        Ok(m) => {
            let dev = m.dev();
            resolve_auto_for_dev(Path::new("/sys"), libc::major(dev), libc::minor(dev))
        }
        Err(e) => (WritePolicy::Async, format!("cannot stat the store ({e}); assuming a volatile cache")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn write_back_cache_selects_async_and_none_selects_sync() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("dev/block/8:0");
        fs::create_dir_all(dev.join("queue")).unwrap();
        fs::write(dev.join("queue/write_cache"), "write back\n").unwrap();
        assert_eq!(resolve_auto_for_dev(d.path(), 8, 0).0, WritePolicy::Async);
        fs::write(dev.join("queue/write_cache"), "write through\n").unwrap();
        assert_eq!(resolve_auto_for_dev(d.path(), 8, 0).0, WritePolicy::Sync);
        // The SCSI cache type wins when present.
        let sd = dev.join("device/scsi_disk/0:0:0:0");
        fs::create_dir_all(&sd).unwrap();
        fs::write(sd.join("cache_type"), "None\n").unwrap();
        assert_eq!(resolve_auto_for_dev(d.path(), 8, 0).0, WritePolicy::Sync);
        fs::write(sd.join("cache_type"), "write back\n").unwrap();
        assert_eq!(resolve_auto_for_dev(d.path(), 8, 0).0, WritePolicy::Async);
    }

    #[test]
    fn a_partition_uses_its_parent_disk() {
        let d = tempfile::tempdir().unwrap();
        // /sys/dev/block/8:1 -> the partition directory inside the disk's.
        let disk = d.path().join("devices/sda");
        let part = disk.join("sda1");
        fs::create_dir_all(disk.join("queue")).unwrap();
        fs::create_dir_all(&part).unwrap();
        fs::write(part.join("partition"), "1\n").unwrap();
        fs::write(disk.join("queue/write_cache"), "write through\n").unwrap();
        fs::create_dir_all(d.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink(&part, d.path().join("dev/block/8:1")).unwrap();
        let (p, why) = resolve_auto_for_dev(d.path(), 8, 1);
        assert_eq!(p, WritePolicy::Sync, "{why}");
    }

    #[test]
    fn unknown_devices_assume_a_volatile_cache() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(resolve_auto_for_dev(d.path(), 0, 42).0, WritePolicy::Async);
    }
}
