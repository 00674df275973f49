//! Exit codes and the errors the command line reports.
//!
//! Every failure ends as one line on stderr that names the object, what
//! failed and what to do, and one of the exit codes below, so scripts can
//! tell "not there" from "already there" from "try again later" without
//! parsing text. The codes are part of the interface: README.md and the man
//! page list them, and `tests/cli_*.rs` check them.
//!
//! Engine errors are classified here and nowhere else; the match over
//! [`volume::Error`] is exhaustive so a new variant cannot slip through as a
//! generic failure unnoticed.

use std::fmt;
use std::io;
use std::path::Path;

use crate::{catalog, journal, store, volume};

/// The process exit codes (documented in README.md and `strata(1)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    /// Anything not covered below (I/O errors, internal errors).
    Failure = 1,
    /// Bad command line; clap exits with this code itself.
    Usage = 2,
    /// The store, volume, property or file does not exist.
    NotFound = 3,
    /// A store or volume of that name already exists.
    AlreadyExists = 4,
    /// A value is invalid (size, name, range, ...).
    InvalidArgument = 5,
    /// The store is locked by another process that cannot be reached, or
    /// the volume has an unfinished multi-step operation.
    Busy = 6,
    /// The store is read-only or damaged.
    ReadOnlyOrCorrupt = 7,
    /// The filesystem holding the store (or the export target) is full.
    NoSpace = 8,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Every exit code with what it means: the one list that `--help`, the man
/// page and README.md's table follow.
pub const EXIT_CODES: [(ExitCode, &str); 9] = [
    (ExitCode::Ok, "success"),
    (ExitCode::Failure, "generic failure (I/O error, internal error)"),
    (ExitCode::Usage, "usage error (unknown command or option, missing argument)"),
    (ExitCode::NotFound, "not found (store, volume, property or file)"),
    (ExitCode::AlreadyExists, "already exists (store, volume or export file)"),
    (ExitCode::InvalidArgument, "invalid argument (bad size, bad name, shrink without --allow-shrink, ...)"),
    (
        ExitCode::Busy,
        "busy (the store is locked by a process that does not answer, or the volume has an unfinished operation)",
    ),
    (ExitCode::ReadOnlyOrCorrupt, "read-only or corrupt store (for check: problems remain)"),
    (ExitCode::NoSpace, "no space left"),
];

/// The text after `strata --help`: exit codes and how the store is found.
pub fn exit_codes_help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in EXIT_CODES {
        text.push_str(&format!("  {}  {meaning}\n", code.code()));
    }
    text.push_str(
        "\nThe store is found with --store, else $STRATA_STORE, else /var/lib/strata.\n\
         While a store is mounted, commands are passed to the mount daemon.",
    );
    text
}

/// A failure already worded for the user, with its exit code. The message is
/// complete (object, what failed, what to do); nothing is appended to it.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// A failure with a given exit code and complete message.
pub fn fail(code: ExitCode, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure { code, message: message.into() })
}

/// Word an engine error for the user: `"{what}: {engine's reason}: {advice}"`,
/// with the exit code its variant maps to.
pub fn engine(what: impl fmt::Display, err: volume::Error) -> anyhow::Error {
    let code = volume_code(&err);
    let advice = volume_advice(&err);
    let message = if advice.is_empty() { format!("{what}: {err}") } else { format!("{what}: {err}: {advice}") };
    fail(code, message)
}

/// The message for a store directory that holds no store.
pub fn no_store(store: &Path) -> anyhow::Error {
    let shown = store.display();
    fail(
        ExitCode::NotFound,
        format!(
            "no store at {shown}: run `strata init {shown}` first, or point --store or STRATA_STORE at an existing store"
        ),
    )
}

/// The exit code for any error that reached the top: the first cause in the
/// chain we know how to classify decides.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if let Some(e) = cause.downcast_ref::<volume::Error>() {
            return volume_code(e);
        }
        if let Some(e) = cause.downcast_ref::<catalog::Error>() {
            return catalog_code(e);
        }
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            return io_code(e);
        }
    }
    ExitCode::Failure
}

/// Exit code per engine error; exhaustive on purpose (see module docs).
pub fn volume_code(err: &volume::Error) -> ExitCode {
    use volume::Error as E;
    match err {
        E::NotFound(_) => ExitCode::NotFound,
        E::AlreadyExists(_) => ExitCode::AlreadyExists,
        E::InvalidArgument(_) | E::OutOfRange { .. } => ExitCode::InvalidArgument,
        E::ReadOnly(_) | E::Corrupt { .. } => ExitCode::ReadOnlyOrCorrupt,
        E::NoSpace(_) => ExitCode::NoSpace,
        // An unfinished create/import holds the volume as a lock would.
        E::Busy { .. } | E::Incomplete(_) => ExitCode::Busy,
        E::Unsupported(_) => ExitCode::InvalidArgument,
        E::Io { source, .. } => io_code(source),
        E::Catalog(e) => catalog_code(e),
        E::Store(e) => store_code(e),
        E::Journal(e) => journal_code(e),
    }
}

fn store_code(err: &store::Error) -> ExitCode {
    use store::Error as E;
    match err {
        E::Io { source, .. } => io_code(source),
        E::NoSpace { .. } => ExitCode::NoSpace,
        E::ReadOnly { .. } | E::Corrupt { .. } | E::MissingChunk(_) | E::BadFile { .. } => ExitCode::ReadOnlyOrCorrupt,
    }
}

fn journal_code(err: &journal::Error) -> ExitCode {
    match err {
        journal::Error::Io { source, .. } => io_code(source),
        journal::Error::Corrupt { .. } | journal::Error::Fatal { .. } => ExitCode::ReadOnlyOrCorrupt,
    }
}

fn catalog_code(err: &catalog::Error) -> ExitCode {
    use catalog::Error as E;
    match err {
        E::Sqlite { source, .. } => sqlite_code(source),
        E::TooNew { .. } => ExitCode::Failure,
        E::NameExists(_) => ExitCode::AlreadyExists,
        E::NotFound(_) => ExitCode::NotFound,
        E::Corrupt(_) => ExitCode::ReadOnlyOrCorrupt,
        E::ReservedKey(_) | E::InvalidName { .. } | E::CapacityTooLarge(_) => ExitCode::InvalidArgument,
        // A refusal in the current state (clones depend on it), not a bad value,
        // but the caller can act on it like one: remove the dependents first.
        E::HasDependents { .. } => ExitCode::InvalidArgument,
        E::NoSuchJob(_) => ExitCode::NotFound,
        E::Io { source, .. } => io_code(source),
    }
}

fn sqlite_code(err: &rusqlite::Error) -> ExitCode {
    use rusqlite::ErrorCode as C;
    match err.sqlite_error_code() {
        Some(C::DatabaseBusy | C::DatabaseLocked) => ExitCode::Busy,
        Some(C::DiskFull) => ExitCode::NoSpace,
        Some(C::ReadOnly | C::DatabaseCorrupt | C::NotADatabase) => ExitCode::ReadOnlyOrCorrupt,
        _ => ExitCode::Failure,
    }
}

fn io_code(err: &io::Error) -> ExitCode {
    match err.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => return ExitCode::NoSpace,
        Some(libc::EROFS) => return ExitCode::ReadOnlyOrCorrupt,
        Some(libc::EBUSY | libc::EWOULDBLOCK) => return ExitCode::Busy,
        _ => {}
    }
    match err.kind() {
        io::ErrorKind::NotFound => ExitCode::NotFound,
        io::ErrorKind::AlreadyExists => ExitCode::AlreadyExists,
        io::ErrorKind::InvalidInput => ExitCode::InvalidArgument,
        io::ErrorKind::InvalidData => ExitCode::ReadOnlyOrCorrupt,
        _ => ExitCode::Failure,
    }
}

/// What the user can do about an engine error. The engine words its
/// refusals (not found, exists, invalid, incomplete, busy) for users, with
/// the command to run, so those get nothing more; errors from the layers
/// below (I/O, SQLite, packs) do not, so they get advice here.
fn volume_advice(err: &volume::Error) -> &'static str {
    use volume::Error as E;
    const LIST: &str = "`strata volume list` shows the volumes";
    const EXISTS: &str = "choose another name or remove the existing one first";
    const ARGS: &str = "check the arguments (`strata help <command>`)";
    const FULL: &str = "free space in the filesystem holding the store, or remove volumes you no longer need";
    const DAMAGED: &str = "the store is damaged; `strata status` shows its mode; restore the data from a copy";
    const DISK: &str = "check that the path exists and is writable, and the system log for disk errors";
    match err {
        E::NotFound(_) | E::InvalidArgument(_) | E::Unsupported(_) => "",
        E::AlreadyExists(_) => EXISTS,
        E::OutOfRange { .. } => ARGS,
        E::ReadOnly(_) => "the store takes no writes; `strata status` shows its operating mode",
        E::NoSpace(_) | E::Store(store::Error::NoSpace { .. }) => FULL,
        E::Corrupt { .. }
        | E::Store(store::Error::Corrupt { .. } | store::Error::MissingChunk(_) | store::Error::BadFile { .. })
        | E::Journal(journal::Error::Corrupt { .. } | journal::Error::Fatal { .. }) => DAMAGED,
        E::Busy { .. } | E::Incomplete(_) => "",
        E::Io { .. }
        | E::Store(store::Error::Io { .. } | store::Error::ReadOnly { .. })
        | E::Journal(journal::Error::Io { .. }) => DISK,
        E::Catalog(c) => match c {
            catalog::Error::NotFound(_) => LIST,
            catalog::Error::NameExists(_) => EXISTS,
            catalog::Error::ReservedKey(_)
            | catalog::Error::InvalidName { .. }
            | catalog::Error::CapacityTooLarge(_) => ARGS,
            catalog::Error::Corrupt(_) => DAMAGED,
            catalog::Error::Io { .. } => DISK,
            // Their messages already say what to do.
            catalog::Error::TooNew { .. } | catalog::Error::HasDependents { .. } | catalog::Error::NoSuchJob(_) => "",
            catalog::Error::Sqlite { .. } => {
                "run again with RUST_LOG=debug for details; `strata status` shows the store's state"
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_keep_their_code_through_wording() {
        let e = engine(
            "cannot create volume \"a\"",
            volume::Error::AlreadyExists("a volume named \"a\" already exists".into()),
        );
        assert_eq!(exit_code(&e), ExitCode::AlreadyExists);
        assert!(e.to_string().contains("choose another name"), "{e}");
    }

    #[test]
    fn io_errors_are_classified_by_errno_first() {
        let full = anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(exit_code(&full), ExitCode::NoSpace);
        let missing = anyhow::Error::new(io::Error::from(io::ErrorKind::NotFound)).context("opening x");
        assert_eq!(exit_code(&missing), ExitCode::NotFound);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), ExitCode::Failure);
    }
}
