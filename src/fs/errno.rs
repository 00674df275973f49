//! The one place where engine errors become errno values for the kernel.
//!
//! Every variant of [`volume::Error`] and of the lower layers' errors it
//! wraps is matched by name, without a `_` arm, so a new variant fails to
//! compile here until someone decides its errno. fuser turns an
//! `io::Error` without an OS code into EIO silently; deciding the errno
//! ourselves keeps ENOSPC, EROFS and EINVAL visible to qemu and the guest.
//!
//! Corruption is also logged here (volume and offset), because the kernel
//! only passes EIO on and nobody else would ever see which block was bad.

use crate::volume::Error;
use crate::{catalog, journal, store};
use fuser::Errno;

/// Map an engine error to the errno returned to the kernel. `op` names the
/// FUSE operation for the log line of errors that deserve one.
pub fn to_errno(err: &Error, op: &str) -> Errno {
    match err {
        Error::NotFound(_) => Errno::ENOENT,
        Error::AlreadyExists(_) => Errno::EEXIST,
        Error::InvalidArgument(_) => Errno::EINVAL,
        Error::OutOfRange { .. } => Errno::EINVAL,
        Error::ReadOnly(_) => Errno::EROFS,
        Error::NoSpace(_) => Errno::ENOSPC,
        Error::Corrupt { volume, offset, detail } => {
            tracing::error!(op, volume = %volume, offset, detail = %detail, "corrupt data: returning EIO");
            Errno::EIO
        }
        Error::Busy { .. } => Errno::EBUSY,
        Error::Unsupported(_) => Errno::EOPNOTSUPP,
        // An unfinished multi-step operation (ILLEGAL layer, job record):
        // the volume is not served until it is resolved. The kernel can
        // only carry EIO, so the log says what to run.
        Error::Incomplete(what) => {
            tracing::error!(op, detail = %what, "volume has an unfinished operation: returning EIO");
            Errno::EIO
        }
        Error::Io { what, source } => {
            let errno = io_errno(source);
            if errno == Errno::EIO {
                tracing::error!(op, what = %what, error = %source, "I/O error in the store");
            }
            errno
        }
        Error::Catalog(e) => catalog_errno(e, op),
        Error::Store(e) => store_errno(e, op),
        Error::Journal(e) => journal_errno(e, op),
    }
}

/// An OS error keeps its code (ENOSPC, EDQUOT, EROFS, ...); anything
/// without one is EIO.
pub fn io_errno(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(code) if code > 0 => Errno::from_i32(code),
        _ => Errno::EIO,
    }
}

fn catalog_errno(e: &catalog::Error, op: &str) -> Errno {
    match e {
        catalog::Error::Sqlite { path, source } => {
            use rusqlite::ffi::ErrorCode;
            // SQLite's own result codes say whether the disk is full or
            // read-only; everything else is an I/O failure of the catalogue.
            match source.sqlite_error_code() {
                Some(ErrorCode::DiskFull) => Errno::ENOSPC,
                Some(ErrorCode::ReadOnly) => Errno::EROFS,
                Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => Errno::EBUSY,
                Some(ErrorCode::ConstraintViolation) => Errno::EEXIST,
                _ => {
                    tracing::error!(op, path = %path, error = %source, "catalogue error");
                    Errno::EIO
                }
            }
        }
        catalog::Error::TooNew { found, supported } => {
            tracing::error!(op, found, supported, "catalogue schema too new");
            Errno::EIO
        }
        catalog::Error::NameExists(_) => Errno::EEXIST,
        catalog::Error::NotFound(_) => Errno::ENOENT,
        catalog::Error::Corrupt(what) => {
            tracing::error!(op, what = %what, "catalogue is inconsistent: returning EIO");
            Errno::EIO
        }
        // `name` is not settable as a property; the fs only writes
        // `fs.*`/`xattr.*` keys, so this is a caller bug, not a user error.
        catalog::Error::ReservedKey(_) => Errno::EINVAL,
        catalog::Error::InvalidName { .. } => Errno::EINVAL,
        // A size past 2^63-1: what ftruncate(2) says for a too-large file.
        catalog::Error::CapacityTooLarge(_) => Errno::EFBIG,
        // Clones are based on it: the volume is in use.
        catalog::Error::HasDependents { .. } => Errno::EBUSY,
        catalog::Error::NoSuchJob(_) => Errno::ENOENT,
        catalog::Error::Io { path, source } => {
            tracing::error!(op, path = %path, error = %source, "catalogue I/O error");
            io_errno(source)
        }
    }
}

fn store_errno(e: &store::Error, op: &str) -> Errno {
    match e {
        store::Error::Io { what, source } => {
            let errno = io_errno(source);
            tracing::error!(op, what = %what, error = %source, "chunk store I/O error");
            errno
        }
        store::Error::NoSpace { source, .. } => match source.raw_os_error() {
            Some(libc::EDQUOT) => Errno::from_i32(libc::EDQUOT),
            _ => Errno::ENOSPC,
        },
        store::Error::ReadOnly { .. } => Errno::EROFS,
        store::Error::Corrupt { chunk_id, pack_id, offset, detail } => {
            tracing::error!(op, chunk_id, pack_id, pack_offset = offset, detail = %detail, "corrupt chunk: returning EIO");
            Errno::EIO
        }
        store::Error::MissingChunk(chunk_id) => {
            tracing::error!(op, chunk_id, "referenced chunk is missing: returning EIO");
            Errno::EIO
        }
        store::Error::BadFile { path, detail } => {
            tracing::error!(op, path = %path, detail = %detail, "bad store file: returning EIO");
            Errno::EIO
        }
    }
}

fn journal_errno(e: &journal::Error, op: &str) -> Errno {
    match e {
        journal::Error::Io { path, source } => {
            tracing::error!(op, path = %path, error = %source, "journal I/O error");
            io_errno(source)
        }
        // The journal refuses further appends; the engine goes read-only.
        journal::Error::Fatal { path, detail } => {
            tracing::error!(op, path = %path, detail = %detail, "journal failed: returning EIO");
            Errno::EIO
        }
        journal::Error::Corrupt { path, detail } => {
            tracing::error!(op, path = %path, detail = %detail, "journal is corrupt: returning EIO");
            Errno::EIO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plain_variant_has_the_documented_errno() {
        let cases: Vec<(Error, Errno)> = vec![
            (Error::NotFound("x".into()), Errno::ENOENT),
            (Error::AlreadyExists("x".into()), Errno::EEXIST),
            (Error::InvalidArgument("x".into()), Errno::EINVAL),
            (Error::OutOfRange { offset: 1, len: 2, capacity: 0 }, Errno::EINVAL),
            (Error::ReadOnly("x".into()), Errno::EROFS),
            (Error::NoSpace("x".into()), Errno::ENOSPC),
            (Error::Corrupt { volume: "v".into(), offset: 4096, detail: "bad".into() }, Errno::EIO),
            (Error::Busy { path: "p".into(), detail: "d".into() }, Errno::EBUSY),
            (Error::Unsupported("x".into()), Errno::EOPNOTSUPP),
            (Error::Catalog(catalog::Error::NameExists("a".into())), Errno::EEXIST),
            (Error::Catalog(catalog::Error::NotFound("a".into())), Errno::ENOENT),
            (Error::Catalog(catalog::Error::InvalidName { name: "a/b".into(), reason: "slash" }), Errno::EINVAL),
            (Error::Catalog(catalog::Error::CapacityTooLarge(u64::MAX)), Errno::EFBIG),
            (
                Error::Store(store::Error::ReadOnly {
                    what: "p".into(),
                    source: std::io::Error::from_raw_os_error(libc::EROFS),
                }),
                Errno::EROFS,
            ),
            (
                Error::Store(store::Error::NoSpace {
                    what: "p".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                }),
                Errno::ENOSPC,
            ),
            (Error::Store(store::Error::MissingChunk(3)), Errno::EIO),
            (Error::Journal(journal::Error::Corrupt { path: "j".into(), detail: "d".into() }), Errno::EIO),
        ];
        for (err, want) in cases {
            assert_eq!(to_errno(&err, "test"), want, "{err:?}");
        }
    }

    #[test]
    fn io_errors_keep_their_os_code_and_others_become_eio() {
        let full = Error::io("writing pack", std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(to_errno(&full, "test"), Errno::ENOSPC);
        let dquot = Error::io("writing pack", std::io::Error::from_raw_os_error(libc::EDQUOT));
        assert_eq!(to_errno(&dquot, "test"), Errno::from_i32(libc::EDQUOT));
        let plain = Error::io("reading map", std::io::Error::other("short read"));
        assert_eq!(to_errno(&plain, "test"), Errno::EIO);
    }
}
