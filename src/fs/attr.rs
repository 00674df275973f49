//! File attributes kept as volume properties, and how `stat` is built.
//!
//! A volume has no inode of its own on disk, so what `chmod`, `chown`,
//! `touch` and `setfattr` change is stored in the catalogue as properties
//! of the volume (LINSTOR-style Aux properties), which survive remounts,
//! renames and replication:
//!
//! | property        | value                                   |
//! |-----------------|-----------------------------------------|
//! | `fs.mode`       | permission bits in octal, e.g. `640`     |
//! | `fs.uid`        | decimal uid                              |
//! | `fs.gid`        | decimal gid                              |
//! | `fs.atime_ns`   | ns since the Unix epoch                  |
//! | `fs.mtime_ns`   | ns since the Unix epoch                  |
//! | `fs.ctime_ns`   | ns since the Unix epoch                  |
//! | `xattr.<name>`  | the xattr value, lowercase hex            |
//!
//! Missing or unparsable values fall back to defaults (mode 0644, the
//! daemon's uid/gid, the volume's creation time), so a volume created by the
//! CLI shows up with sane attributes. Times are stable: nothing here reports
//! "now" (unlike qemu-storage-daemon), so `make`, rsync and backup tools see
//! a file that changes only when it is written.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const PROP_MODE: &str = "fs.mode";
pub const PROP_UID: &str = "fs.uid";
pub const PROP_GID: &str = "fs.gid";
pub const PROP_ATIME: &str = "fs.atime_ns";
pub const PROP_MTIME: &str = "fs.mtime_ns";
pub const PROP_CTIME: &str = "fs.ctime_ns";
pub const XATTR_PREFIX: &str = "xattr.";

pub const DEFAULT_FILE_MODE: u16 = 0o644;
/// Largest xattr value accepted (the VFS limit, XATTR_SIZE_MAX).
pub const XATTR_SIZE_MAX: usize = 65536;

/// Ownership, permissions and times of one volume file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Permission bits only (no file-type bits).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileMeta {
    /// Read from a volume's properties. `created_unix` is the fallback time.
    pub fn from_props(
        props: &BTreeMap<String, String>,
        created_unix: i64,
        default_uid: u32,
        default_gid: u32,
    ) -> FileMeta {
        let created_ns = created_unix.saturating_mul(1_000_000_000);
        let num = |k: &str| props.get(k).and_then(|v| v.trim().parse::<i64>().ok());
        let id = |k: &str| props.get(k).and_then(|v| v.trim().parse::<u32>().ok());
        let perm = props
            .get(PROP_MODE)
            .and_then(|v| u16::from_str_radix(v.trim(), 8).ok())
            .map(|m| m & 0o7777)
            .unwrap_or(DEFAULT_FILE_MODE);
        let mtime_ns = num(PROP_MTIME).unwrap_or(created_ns);
        FileMeta {
            perm,
            uid: id(PROP_UID).unwrap_or(default_uid),
            gid: id(PROP_GID).unwrap_or(default_gid),
            atime_ns: num(PROP_ATIME).unwrap_or(mtime_ns),
            mtime_ns,
            ctime_ns: num(PROP_CTIME).unwrap_or(mtime_ns),
        }
    }
}

pub fn mode_value(perm: u32) -> String {
    format!("{:o}", perm & 0o7777)
}

pub fn now_ns() -> i64 {
    system_time_to_ns(SystemTime::now())
}

pub fn system_time_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

pub fn ns_to_system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// The property key holding xattr `name`.
pub fn xattr_key(name: &str) -> String {
    format!("{XATTR_PREFIX}{name}")
}

pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Decode a hex property value; None when it is not valid hex (a value
/// edited by hand), which the caller reports instead of guessing.
pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_binary_values() {
        let v: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_decode(&hex_encode(&v)), Some(v));
        assert_eq!(hex_encode(b"\x00\xff"), "00ff");
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode(""), Some(vec![]));
    }

    #[test]
    fn missing_properties_give_defaults_and_creation_time() {
        let m = FileMeta::from_props(&BTreeMap::new(), 1000, 7, 8);
        assert_eq!(m.perm, DEFAULT_FILE_MODE);
        assert_eq!((m.uid, m.gid), (7, 8));
        assert_eq!(m.mtime_ns, 1000 * 1_000_000_000);
        assert_eq!(m.atime_ns, m.mtime_ns);
        assert_eq!(m.ctime_ns, m.mtime_ns);
    }

    #[test]
    fn stored_properties_win_and_garbage_is_ignored() {
        let mut p = BTreeMap::new();
        p.insert(PROP_MODE.into(), "4755".into());
        p.insert(PROP_UID.into(), "107".into());
        p.insert(PROP_GID.into(), "not a number".into());
        p.insert(PROP_MTIME.into(), "5".into());
        let m = FileMeta::from_props(&p, 1, 0, 0);
        assert_eq!(m.perm, 0o4755);
        assert_eq!(m.uid, 107);
        assert_eq!(m.gid, 0);
        assert_eq!(m.mtime_ns, 5);
        assert_eq!(mode_value(0o100644), "644");
    }

    #[test]
    fn times_convert_both_ways_including_before_the_epoch() {
        for ns in [0i64, 1, 1_700_000_000_123_456_789, -5_000_000_000] {
            assert_eq!(system_time_to_ns(ns_to_system_time(ns)), ns);
        }
    }
}
