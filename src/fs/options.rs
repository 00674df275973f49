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
                    "unknown mount option {opt:?}; strata understands ro, threads=N, max_background=N, noallow_other, auto_unmount, \
                     nodev, nosuid, noexec, noatime, sync, dirsync (and ignores defaults, _netdev, auto, noauto, user, nofail, x-*)"
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
    fn noallow_other_turns_sharing_off() {
        assert!(!p(&["noallow_other"]).unwrap().allow_other);
    }

    #[test]
    fn default_threads_is_at_least_two() {
        assert_eq!(default_threads(1), 2);
        assert_eq!(default_threads(8), 8);
    }
}
