//! The one error type of the qcow2 module.
//!
//! Variants are named for what failed. Messages carry the offending number
//! and the limit it broke, in hex for file offsets, so that a user holding a
//! hostile or damaged image can see what is wrong without a hex dump.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// The image file (or a backing file) could not be opened.
    #[error("opening {}: {source}", path.display())]
    Opening { path: PathBuf, source: io::Error },

    /// A read of the image failed at the OS level.
    #[error("reading {what} at offset {offset:#x}: {source}")]
    Reading { what: &'static str, offset: u64, source: io::Error },

    /// A write of an image being created failed at the OS level.
    #[error("writing {what} at offset {offset:#x}: {source}")]
    Writing { what: &'static str, offset: u64, source: io::Error },

    /// The bytes do not start with the qcow2 magic.
    #[error("not a qcow2 image: {0}")]
    NotQcow2(String),

    /// A valid image that uses a feature this module deliberately does not
    /// support (encryption, external data files, unknown feature bits...).
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),

    /// The image breaks one of this module's resource limits (L1 table size,
    /// virtual size, chain depth...). Not necessarily corrupt.
    #[error("qcow2 image exceeds a limit: {0}")]
    Limit(String),

    /// The image contradicts the qcow2 specification.
    #[error("corrupt qcow2 image: {what}")]
    Corrupt { what: String },

    /// A read or map outside the virtual disk.
    #[error("range {offset:#x}+{len:#x} is outside the virtual disk of {size:#x} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    /// The caller misused the writer (unaligned cluster, wrong length...).
    #[error("invalid qcow2 write: {0}")]
    InvalidWrite(String),

    /// A backing chain refers back to an image already in it.
    #[error("backing chain loop: {} appears twice in the chain", path.display())]
    BackingLoop { path: PathBuf },

    /// A backing chain is longer than [`super::MAX_CHAIN_DEPTH`].
    #[error("backing chain deeper than {limit} images at {}", path.display())]
    ChainTooDeep { limit: usize, path: PathBuf },

    /// A backing file name that cannot be followed as a local path.
    #[error("backing file {name:?} of {}: {reason}", image.display())]
    BadBackingFile { image: PathBuf, name: String, reason: String },

    /// An error in one member of a backing chain.
    #[error("in {}: {source}", path.display())]
    InChain { path: PathBuf, source: Box<Qcow2Error> },
}

impl Qcow2Error {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Qcow2Error::Corrupt { what: what.into() }
    }
}

pub type Result<T, E = Qcow2Error> = std::result::Result<T, E>;
