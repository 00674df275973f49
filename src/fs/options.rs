//! `-o` mount options: what strata understands, what it passes to the
//! kernel, and what it ignores because it belongs to mount(8) or fstab.
//!
//! Defaults are chosen for a virtualization host: `allow_other` (qemu runs
//! as another user) and `default_permissions` (the kernel checks mode and
//! owner, so chmod/chown by libvirt mean something) are always on;
//! `noallow_other` restricts the mount to the daemon's user.

use fuser::MountOption;

/// Options that belong to mount(8)/fstab/systemd, not to the filesystem.
/// mount.fuse.strata drops them too; they are accepted here so that
/// `strata mount -o defaults,_netdev` from a hand-written unit still works.
const IGNORED: &[&str] = &[
    "defaults", "_netdev", "auto", "noauto", "user", "users", "nouser", "nofail", "owner", "group", "rw", "async",
    "loud", "silent",
];

/// Default and bounds of `max_write` / `max_read`. 1 MiB is what the kernel
/// allows here (`fs.fuse.max_pages_limit` 256); fuser's buffers hold 16 MiB.
pub const DEFAULT_MAX_WRITE: u32 = 1 << 20;
const MIN_REQUEST: u64 = 4096;
const MAX_REQUEST: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    pub auto_unmount: bool,
    /// FUSE worker threads (`threads=N`); None = one per CPU, at least 2.
    pub threads: Option<usize>,
    /// `max_background=N` (default 64): async direct I/O requests count
    /// against it, so qemu with several queues needs more than the
    /// kernel's 12 (research/fuser-ceiling.md).
    pub max_background: u16,
    /// `clone_fd=0|1`: give every worker its own cloned `/dev/fuse` fd
    /// (1) or let all workers read one shared fd (0). None = cloned when
    /// there is more than one worker.
    pub clone_fd: Option<bool>,
    /// `max_write=BYTES` (default 1 MiB, the kernel's `max_pages_limit`
    /// here): the largest write request. fuser derives `max_pages` from
    /// it, so it also caps read requests.
    pub max_write: u32,
    /// `max_read=BYTES`: a kernel mount option capping read requests
    /// (direct I/O reads are split into pieces this big). None = no cap
    /// beyond `max_pages`.
    pub max_read: Option<u32>,
    /// `writeback_cache`: ask for FUSE_WRITEBACK_CACHE at init. Volume
    /// files are still opened FOPEN_DIRECT_IO unless `keep_cache` is also
    /// given, so alone it changes only attribute caching (the kernel then
    /// trusts its own size and mtime of open regular files).
    pub writeback_cache: bool,
    /// `keep_cache`: open volume files without FOPEN_DIRECT_IO and with
    /// FOPEN_KEEP_CACHE, so the kernel page cache serves buffered readers
    /// (O_DIRECT clients bypass it either way).
    pub keep_cache: bool,
    /// Kernel mount flags passed through (nodev, noexec, noatime, ...).
    pub kernel: Vec<MountOption>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: true,
            auto_unmount: false,
            threads: None,
            max_background: 64,
            clone_fd: None,
            max_write: DEFAULT_MAX_WRITE,
            max_read: None,
            writeback_cache: false,
            keep_cache: false,
            kernel: Vec::new(),
        }
    }
}

/// Parse `-o` values; each element may itself be a comma-separated list.
pub fn parse(options: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    for opt in options.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let number = |what: &str| -> Result<u64, String> {
            value
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("mount option {what} needs a number, as in {what}=4 (got {opt:?})"))
        };
        // A request size: a multiple of 4 KiB from 4K to 16M.
        let request_size = |what: &str| -> Result<u32, String> {
            let v =
                value.ok_or_else(|| format!("mount option {what} needs a size, as in {what}=128K (got {opt:?})"))?;
            let n = crate::cli::size::parse_size(v).map_err(|e| format!("mount option {what}: {e}"))?;
            if !(MIN_REQUEST..=MAX_REQUEST).contains(&n) || n % MIN_REQUEST != 0 {
                return Err(format!("mount option {opt}: use a multiple of 4K from 4K to 16M, e.g. 128K or 1M"));
            }
            Ok(n as u32)
        };
        // An on/off switch: bare `name` or `name=1` is on, `name=0` off.
        let switch = |what: &str| -> Result<bool, String> {
            match value {
                None | Some("1") => Ok(true),
                Some("0") => Ok(false),
                Some(_) => Err(format!("mount option {what} takes 0 or 1, as in {what}=0 (got {opt:?})")),
            }
        };
        match key {
            k if IGNORED.contains(&k) || k.starts_with("x-") || k == "comment" => {}
            "ro" => o.read_only = true,
            "allow_other" => o.allow_other = true,
            "noallow_other" => o.allow_other = false,
            // Always on; accepted so fstab lines copied from other FUSE
            // filesystems work.
            "default_permissions" | "allow_root" => {}
            "auto_unmount" => o.auto_unmount = true,
            "threads" => {
                let n = number("threads")?;
                if n == 0 || n > 256 {
                    return Err(format!("mount option threads={n}: use 1 to 256"));
                }
                o.threads = Some(n as usize);
            }
            "max_background" => {
                let n = number("max_background")?;
                o.max_background = u16::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("mount option max_background={n}: use 1 to 65535"))?;
            }
            "clone_fd" => o.clone_fd = Some(switch("clone_fd")?),
            "max_write" => o.max_write = request_size("max_write")?,
            "max_read" => o.max_read = Some(request_size("max_read")?),
            "writeback_cache" => o.writeback_cache = switch("writeback_cache")?,
            "keep_cache" => o.keep_cache = switch("keep_cache")?,
            "nodev" => o.kernel.push(MountOption::NoDev),
            "dev" => o.kernel.push(MountOption::Dev),
            "nosuid" => o.kernel.push(MountOption::NoSuid),
            "suid" => o.kernel.push(MountOption::Suid),
            "noexec" => o.kernel.push(MountOption::NoExec),
            "exec" => o.kernel.push(MountOption::Exec),
            "noatime" => o.kernel.push(MountOption::NoAtime),
            "atime" => o.kernel.push(MountOption::Atime),
            "sync" => o.kernel.push(MountOption::Sync),
            "dirsync" => o.kernel.push(MountOption::DirSync),
            "relatime" | "norelatime" | "strictatime" | "lazytime" | "nodiratime" => {}
            _ => {
                return Err(format!(
                    "unknown mount option {opt:?}; strata understands ro, threads=N, max_background=N, clone_fd=0|1, \
                     max_write=SIZE, max_read=SIZE, writeback_cache, keep_cache, noallow_other, auto_unmount, nodev, nosuid, noexec, noatime, sync, dirsync (and ignores defaults, _netdev, auto, noauto, user, nofail, x-*)"
                ));
            }
        }
    }
    Ok(o)
}

/// Worker threads for `n_cpus` CPUs: one per CPU, at least 2 (1 MiB
/// requests are memcpy-bound on one thread; research/fuser-ceiling.md).
pub fn default_threads(n_cpus: usize) -> usize {
    n_cpus.max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Result<MountOptions, String> {
        parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn no_options_give_allow_other_and_read_write() {
        let o = p(&[]).unwrap();
        assert_eq!(o, MountOptions::default());
        assert!(o.allow_other && !o.read_only);
    }

    #[test]
    fn fstab_only_options_are_ignored() {
        let o = p(&["defaults,_netdev,auto,noauto,user,nofail,x-systemd.requires=foo,comment=x"]).unwrap();
        assert_eq!(o, MountOptions::default());
    }

    #[test]
    fn comma_lists_and_separate_values_both_parse() {
        let o = p(&["ro,threads=3", "noexec", "max_background=128"]).unwrap();
        assert!(o.read_only);
        assert_eq!(o.threads, Some(3));
        assert_eq!(o.max_background, 128);
        assert_eq!(o.kernel, vec![MountOption::NoExec]);
    }

    #[test]
    fn bad_numbers_and_unknown_options_are_refused_with_the_option_named() {
        assert!(p(&["threads=0"]).unwrap_err().contains("threads=0"));
        assert!(p(&["threads=x"]).unwrap_err().contains("threads"));
        assert!(p(&["max_background=70000"]).is_err());
        assert!(p(&["frobnicate"]).unwrap_err().contains("frobnicate"));
    }

    #[test]
    fn clone_fd_takes_zero_or_one() {
        assert_eq!(p(&[]).unwrap().clone_fd, None);
        assert_eq!(p(&["clone_fd=0"]).unwrap().clone_fd, Some(false));
        assert_eq!(p(&["clone_fd=1"]).unwrap().clone_fd, Some(true));
        assert_eq!(p(&["clone_fd"]).unwrap().clone_fd, Some(true));
        let e = p(&["clone_fd=yes"]).unwrap_err();
        assert!(e.contains("clone_fd") && e.contains("0 or 1"), "{e}");
    }

    #[test]
    fn max_write_takes_a_size_in_4k_steps() {
        assert_eq!(p(&[]).unwrap().max_write, 1 << 20);
        assert_eq!(p(&["max_write=128K"]).unwrap().max_write, 128 << 10);
        assert_eq!(p(&["max_write=1M"]).unwrap().max_write, 1 << 20);
        assert_eq!(p(&["max_write=65536"]).unwrap().max_write, 65536);
        assert_eq!(p(&["max_write=16M"]).unwrap().max_write, 16 << 20);
        for bad in ["max_write=1000", "max_write=0", "max_write=32M", "max_write=2K"] {
            let e = p(&[bad]).unwrap_err();
            assert!(e.contains(bad) && e.contains("multiple of 4K"), "{bad}: {e}");
        }
        let e = p(&["max_write=lots"]).unwrap_err();
        assert!(e.contains("max_write") && e.contains("invalid size"), "{e}");
        assert!(p(&["max_write"]).unwrap_err().contains("needs a size"));
    }

    #[test]
    fn max_read_takes_a_size_in_4k_steps() {
        assert_eq!(p(&[]).unwrap().max_read, None);
        assert_eq!(p(&["max_read=128K"]).unwrap().max_read, Some(128 << 10));
        assert_eq!(p(&["max_read=4096"]).unwrap().max_read, Some(4096));
        let e = p(&["max_read=5000"]).unwrap_err();
        assert!(e.contains("max_read=5000") && e.contains("multiple of 4K"), "{e}");
        assert!(p(&["max_read=1X"]).unwrap_err().contains("max_read"));
        assert!(p(&["max_read"]).unwrap_err().contains("needs a size"));
    }

    #[test]
    fn writeback_cache_and_keep_cache_are_switches_off_by_default() {
        let o = p(&[]).unwrap();
        assert!(!o.writeback_cache && !o.keep_cache);
        let o = p(&["writeback_cache,keep_cache"]).unwrap();
        assert!(o.writeback_cache && o.keep_cache);
        let o = p(&["writeback_cache=1", "keep_cache=0"]).unwrap();
        assert!(o.writeback_cache && !o.keep_cache);
        for bad in ["writeback_cache=on", "keep_cache=2"] {
            let e = p(&[bad]).unwrap_err();
            assert!(e.contains(bad) && e.contains("0 or 1"), "{bad}: {e}");
        }
    }

    #[test]
    fn noallow_other_turns_sharing_off() {
        assert!(!p(&["noallow_other"]).unwrap().allow_other);
    }

    #[test]
    fn default_threads_is_at_least_two() {
        assert_eq!(default_threads(1), 2);
        assert_eq!(default_threads(8), 8);
    }
}
