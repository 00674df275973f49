//! fio as the crash harness's load: random 4 KiB writes (fsync every 32)
//! and sequential 1 MiB writes (fdatasync every 4), O_DIRECT, libaio,
//! queue depth 16, with crc32c verification headers, on two volumes of the
//! same store, rate-limited so they are still writing when the daemon is
//! killed.
//!
//! fio saves its verify state when a job ends during the write phase
//! (`verify_state_save`, on by default): how many writes it issued and
//! which were still in flight. After the remount, the same jobs run again
//! with `--verify_only --verify_state_load=1`, which checks every write
//! fio saw complete and skips those in flight. The state files live in
//! the iteration's work directory (fio's cwd), never on the mount.

use super::ChildGuard;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct FioPlan {
    pub rand_mib: u64,
    pub seq_mib: u64,
    /// Rate limits (so fio does not finish before the kill).
    pub rand_iops: u64,
    pub seq_mib_per_s: u64,
}

pub struct FioRun {
    pub dir: PathBuf,
    pub rand: PathBuf,
    pub seq: PathBuf,
    pub seed: u64,
    pub plan: FioPlan,
}

impl FioRun {
    fn jobfile(&self, verify: bool) -> String {
        let mut s = String::from("[global]\ndirect=1\nioengine=libaio\niodepth=16\nverify=crc32c\n");
        s.push_str(&format!("randseed={}\n", self.seed));
        if verify {
            // Report every bad block, not just the first: some may be of
            // writes that were never acknowledged.
            s.push_str("do_verify=1\nverify_only=1\nverify_state_load=1\nverify_fatal=0\ncontinue_on_error=verify\n");
        } else {
            // Every successful completion with its offset: the writes fio
            // saw acknowledged (failed ones are not logged).
            s.push_str("do_verify=0\nverify_state_save=1\nlog_offset=1\n");
        }
        s.push_str(&format!(
            "\n[rand4k]\nfilename={}\nrw=randwrite\nbs=4k\nsize={}M\nfsync=32\n",
            self.rand.display(),
            self.plan.rand_mib
        ));
        if !verify {
            s.push_str(&format!("rate_iops={}\nwrite_lat_log=rand4k\n", self.plan.rand_iops));
        }
        s.push_str(&format!(
            "\n[seq1m]\nfilename={}\nrw=write\nbs=1M\nsize={}M\nfdatasync=4\n",
            self.seq.display(),
            self.plan.seq_mib
        ));
        if !verify {
            s.push_str(&format!("rate={}m\nwrite_lat_log=seq1m\n", self.plan.seq_mib_per_s));
        }
        s
    }

    /// Create both files (sparse volumes) and start the writers.
    pub fn start(&self) -> Result<ChildGuard, String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("mkdir {}: {e}", self.dir.display()))?;
        for (p, mib) in [(&self.rand, self.plan.rand_mib), (&self.seq, self.plan.seq_mib)] {
            let f = std::fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
            f.set_len(mib << 20).map_err(|e| format!("sizing {}: {e}", p.display()))?;
        }
        let job = self.dir.join("write.fio");
        std::fs::write(&job, self.jobfile(false)).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(self.dir.join("write.out")).map_err(|e| e.to_string())?;
        let child = Command::new("fio")
            .arg(&job)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("starting fio: {e}"))?;
        Ok(ChildGuard::new(child, "fio"))
    }

    /// The fio verify state files its write phase left.
    pub fn state_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().ends_with("-verify.state")).collect()
            })
            .unwrap_or_default()
    }

    /// Verify everything fio saw complete. Ok(summary) or Err(why, with
    /// fio's output).
    ///
    /// fio's verify state is not exact after an I/O error: it counts
    /// writes that failed (ECONNABORTED or ENOTCONN when the daemon died
    /// under them), and even writes it never completed, as done, and
    /// reports those blocks as bad when they did not land — which is
    /// allowed: they were never acknowledged. So a bad block fails the
    /// check exactly when fio's completion log of the write phase
    /// (`write_lat_log` with `log_offset=1`: one line per *successful*
    /// write, with its offset) shows that write as completed.
    ///
    /// Unless `early` (a kill right after the mount), fio must have
    /// completed writes, or the check would be vacuous.
    pub fn verify(&self, early: bool) -> Result<String, String> {
        let job = self.dir.join("verify.fio");
        std::fs::write(&job, self.jobfile(true)).map_err(|e| e.to_string())?;
        let out = Command::new("fio")
            .arg("--output-format=json")
            .arg(&job)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running fio: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let write_phase = std::fs::read_to_string(self.dir.join("write.out")).unwrap_or_default();
        let completed = self.completed_writes()?;
        if completed.is_empty() && !early {
            return Err(format!("fio completed no write before the kill; see {}", self.dir.display()));
        }
        let bad = bad_blocks(&format!("{stdout}\n{stderr}"));
        let unexpected: Vec<&(String, u64)> = bad.iter().filter(|b| completed.contains(b)).collect();
        let fail =
            |why: String| Err(format!("{why}\n--- fio verify ---\n{stderr}\n--- write phase ---\n{write_phase}"));
        if !unexpected.is_empty() {
            return fail(format!(
                "fio found {} bad block(s) whose writes fio saw complete successfully, first {:?}",
                unexpected.len(),
                unexpected[0]
            ));
        }
        if !out.status.success() && bad.is_empty() {
            return fail(format!("fio verify failed ({}) without naming a bad block", out.status));
        }
        let mut s = format!("{} writes completed; {}", completed.len(), summarize(&stdout));
        if !bad.is_empty() {
            s.push_str(&format!(
                "; {} block(s) of writes never acknowledged (failed or in flight at the crash) did not land (allowed)",
                bad.len()
            ));
        }
        Ok(s)
    }

    /// (file, offset) of every write the write phase completed
    /// successfully, from `<job>_clat.<n>.log` (fio 3.x: `time, value,
    /// ddir, bs, offset[, prio]`; ddir 1 = write).
    fn completed_writes(&self) -> Result<std::collections::HashSet<(String, u64)>, String> {
        let mut set = std::collections::HashSet::new();
        for (job, file) in [("rand4k", &self.rand), ("seq1m", &self.seq)] {
            let logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                    n.starts_with(&format!("{job}_clat.")) && n.ends_with(".log")
                })
                .collect();
            if logs.is_empty() {
                return Err(format!("fio left no completion log for {job} in {}", self.dir.display()));
            }
            for p in logs {
                let text = std::fs::read_to_string(&p).map_err(|e| e.to_string())?;
                for line in text.lines() {
                    let f: Vec<&str> = line.split(',').map(str::trim).collect();
                    if f.len() >= 5 && f[2] == "1" {
                        let off = f[4].parse().map_err(|_| format!("{}: bad line {line:?}", p.display()))?;
                        set.insert((file.display().to_string(), off));
                    }
                }
            }
        }
        Ok(set)
    }

    /// Remove both files from the mount (volume removal).
    pub fn remove(&self) -> Result<(), String> {
        for p in [&self.rand, &self.seq] {
            std::fs::remove_file(p).map_err(|e| format!("removing {}: {e}", p.display()))?;
        }
        Ok(())
    }
}

/// "rand4k verified N MiB, seq1m verified M MiB" from fio's JSON output.
fn summarize(stdout: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(stdout) else {
        return "fio output not understood".into();
    };
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    jobs.iter()
        .map(|j| {
            let mib = j["read"]["io_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0;
            format!("{} verified {mib:.1} MiB", j["jobname"].as_str().unwrap_or("?"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// (file, offset of the write) of every bad block fio's verify reported:
/// lines with `at file F offset O` and usually `(requested block:
/// offset=R, ...)`, where R is the write's offset.
fn bad_blocks(text: &str) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for line in text.lines() {
        let Some((_, rest)) = line.split_once(" at file ") else {
            continue;
        };
        let Some((file, tail)) = rest.split_once(" offset ") else {
            continue;
        };
        let at: Option<u64> = tail.split(',').next().and_then(|o| o.trim().parse().ok());
        let requested: Option<u64> = tail
            .split_once("requested block: offset=")
            .and_then(|(_, r)| r.split(',').next())
            .and_then(|o| o.trim().parse().ok());
        if let Some(off) = requested.or(at) {
            v.push((file.to_string(), off));
        }
    }
    v
}
