//! The storage seam: every pack and journal read, write and fsync goes
//! through these functions, so tests can inject EIO, ENOSPC, torn (partial)
//! writes and failed fsyncs at chosen points, in-process ([`Faults::arm`])
//! or in a daemon through the `STRATA_FAULTS` environment variable.
//!
//! `STRATA_FAULTS` holds comma-separated rules `POINT=FAULT[@SKIP][xTIMES]`:
//! POINT is one of `pack-write`, `pack-read`, `pack-sync`, `journal-write`,
//! `journal-sync`, `meta-write`; FAULT is `eio`, `enospc`, `torn` or
//! `fsync`. `pack-write=enospc@10x3` lets 10 pack writes through, then
//! fails the next 3 with ENOSPC. Without `x`, the fault repeats forever.
//!
//! With nothing armed the cost is one relaxed atomic load per I/O.
//!
//! Depends on nothing else in the crate.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    PackWrite,
    PackRead,
    PackSync,
    JournalWrite,
    JournalSync,
    /// Checkpoint files and the superblock.
    MetaWrite,
}

impl Point {
    fn parse(s: &str) -> Option<Point> {
        Some(match s {
            "pack-write" => Point::PackWrite,
            "pack-read" => Point::PackRead,
            "pack-sync" => Point::PackSync,
            "journal-write" => Point::JournalWrite,
            "journal-sync" => Point::JournalSync,
            "meta-write" => Point::MetaWrite,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Eio,
    Enospc,
    /// Write half of the buffer, then fail with EIO.
    Torn,
    /// fsync reports EIO.
    FsyncFail,
}

impl Fault {
    fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "eio" => Fault::Eio,
            "enospc" => Fault::Enospc,
            "torn" => Fault::Torn,
            "fsync" => Fault::FsyncFail,
            _ => return None,
        })
    }

    fn error(self) -> io::Error {
        match self {
            Fault::Enospc => io::Error::from_raw_os_error(libc::ENOSPC),
            _ => io::Error::from_raw_os_error(libc::EIO),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    point: Point,
    fault: Fault,
    skip: u64,
    /// None = forever.
    times: Option<u64>,
}

/// The armed faults of one store.
#[derive(Default, Debug)]
pub struct Faults {
    armed: AtomicBool,
    rules: Mutex<Vec<Rule>>,
}

impl Faults {
    pub fn new() -> Arc<Faults> {
        Arc::new(Faults::default())
    }

    /// Parse `STRATA_FAULTS` (see the module doc); unknown rules are an
    /// error so a typo in a test never passes silently.
    pub fn parse(spec: &str) -> Result<Arc<Faults>, String> {
        let f = Faults::new();
        for rule in spec.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (point, rest) =
                rule.split_once('=').ok_or_else(|| format!("fault rule {rule:?}: expected POINT=FAULT"))?;
            let point = Point::parse(point).ok_or_else(|| format!("fault rule {rule:?}: unknown point {point:?}"))?;
            let (rest, times) = match rest.split_once('x') {
                Some((r, t)) => (r, Some(t.parse::<u64>().map_err(|e| format!("fault rule {rule:?}: {e}"))?)),
                None => (rest, None),
            };
            let (fault, skip) = match rest.split_once('@') {
                Some((f, s)) => (f, s.parse::<u64>().map_err(|e| format!("fault rule {rule:?}: {e}"))?),
                None => (rest, 0),
            };
            let fault = Fault::parse(fault).ok_or_else(|| format!("fault rule {rule:?}: unknown fault {fault:?}"))?;
            f.arm(point, fault, skip, times);
        }
        Ok(f)
    }

    /// From `STRATA_FAULTS`, or none armed.
    pub fn from_env() -> Result<Arc<Faults>, String> {
        match std::env::var("STRATA_FAULTS") {
            Ok(s) => Faults::parse(&s),
            Err(_) => Ok(Faults::new()),
        }
    }

    /// Fail `point` with `fault` after `skip` successful operations, `times`
    /// times (None: forever).
    pub fn arm(&self, point: Point, fault: Fault, skip: u64, times: Option<u64>) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).push(Rule { point, fault, skip, times });
        self.armed.store(true, Ordering::Release);
    }

    pub fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.armed.store(false, Ordering::Release);
    }

    /// Does this operation fail, and how?
    pub fn hit(&self, point: Point) -> Option<Fault> {
        if !self.armed.load(Ordering::Relaxed) {
            return None;
        }
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        for r in rules.iter_mut().filter(|r| r.point == point) {
            if r.skip > 0 {
                r.skip -= 1;
                continue;
            }
            match r.times {
                Some(0) => continue,
                Some(ref mut n) => *n -= 1,
                None => {}
            }
            return Some(r.fault);
        }
        None
    }
}

/// A named pause for crash tests: `STRATA_TEST_PAUSE=NAME=MS[,NAME=MS…]`
/// makes the code sleep MS milliseconds when it reaches `pause_point(NAME)`,
/// so a test can kill the process exactly there. Unset: no cost beyond one
/// cached lookup.
pub fn pause_point(name: &str) {
    static RULES: std::sync::OnceLock<Vec<(String, u64)>> = std::sync::OnceLock::new();
    let rules = RULES.get_or_init(|| {
        std::env::var("STRATA_TEST_PAUSE")
            .map(|s| {
                s.split(',')
                    .filter_map(|r| {
                        r.split_once('=').and_then(|(n, ms)| Some((n.trim().to_string(), ms.trim().parse().ok()?)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    if let Some((_, ms)) = rules.iter().find(|(n, _)| n == name) {
        tracing::warn!(point = name, ms, "test pause");
        std::thread::sleep(std::time::Duration::from_millis(*ms));
    }
}

/// `pwrite` through the seam.
pub fn write_at(faults: &Faults, point: Point, file: &File, buf: &[u8], off: u64) -> io::Result<()> {
    match faults.hit(point) {
        None => file.write_all_at(buf, off),
        Some(Fault::Torn) => {
            // Whole 4 KiB blocks of an aligned (O_DIRECT) buffer.
            let half = if buf.len().is_multiple_of(4096) { (buf.len() / 2) & !4095 } else { buf.len() / 2 };
            file.write_all_at(&buf[..half], off)?;
            Err(Fault::Torn.error())
        }
        Some(f) => Err(f.error()),
    }
}

/// `pread` through the seam.
pub fn read_exact_at(faults: &Faults, point: Point, file: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    match faults.hit(point) {
        None | Some(Fault::FsyncFail) => file.read_exact_at(buf, off),
        Some(f) => Err(f.error()),
    }
}

/// `fdatasync` through the seam.
pub fn sync_data(faults: &Faults, point: Point, file: &File) -> io::Result<()> {
    match faults.hit(point) {
        None => file.sync_data(),
        Some(f) => Err(f.error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_skip_and_count() {
        let f = Faults::parse("pack-write=enospc@2x1, journal-sync=fsync").unwrap();
        assert_eq!(f.hit(Point::PackWrite), None);
        assert_eq!(f.hit(Point::PackWrite), None);
        assert_eq!(f.hit(Point::PackWrite), Some(Fault::Enospc));
        assert_eq!(f.hit(Point::PackWrite), None);
        assert_eq!(f.hit(Point::JournalSync), Some(Fault::FsyncFail));
        assert_eq!(f.hit(Point::JournalSync), Some(Fault::FsyncFail));
        assert!(Faults::parse("pack-wrte=eio").is_err());
        assert!(Faults::parse("pack-write=boom").is_err());
    }
}
