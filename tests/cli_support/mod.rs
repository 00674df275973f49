//! Helpers for the command-line tests: run the real `strata` binary against
//! a temporary store and look at its exit code and output.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Assert the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(self.code, code, "exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn ok(self) -> Run {
        self.expect(0)
    }
}

/// A `strata` command with a clean environment (no inherited store or log filter).
pub fn command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
    cmd.env_remove("STRATA_STORE").env_remove("RUST_LOG");
    cmd
}

pub fn run_cmd(mut cmd: Command) -> Run {
    let out = cmd.output().expect("run strata");
    Run {
        code: out.status.code().expect("strata was killed by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run `strata ARGS` (no --store added).
pub fn strata(args: &[&str]) -> Run {
    let mut cmd = command();
    cmd.args(args);
    run_cmd(cmd)
}

/// A fresh store in a temporary directory.
pub struct Store {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Store {
    pub fn new() -> Store {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store");
        strata(&["init", path.to_str().unwrap(), "--write-policy", "async"]).ok();
        Store { _dir: dir, path }
    }

    /// A scratch directory beside the store (for import/export files).
    pub fn scratch(&self) -> &Path {
        self._dir.path()
    }

    /// Run `strata --store STORE ARGS`.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut cmd = command();
        cmd.arg("--store").arg(&self.path).args(args);
        run_cmd(cmd)
    }
}
