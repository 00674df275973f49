//! Errors of the engine facade. `fs::errno` maps every variant to an errno,
//! exhaustively; the CLI maps them to exit codes.

use crate::{catalog, journal, store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("I/O at offset {offset} length {len} is outside the volume (capacity {capacity} bytes)")]
    OutOfRange { offset: u64, len: u64, capacity: u64 },
    #[error("the store is read-only: {0}")]
    ReadOnly(String),
    #[error("no space left in the store's filesystem: {0}")]
    NoSpace(String),
    #[error("corrupt data in volume {volume} at offset {offset}: {detail}")]
    Corrupt { volume: String, offset: u64, detail: String },
    #[error(
        "store {path} is in use by another strata process ({detail}); stop it, or run the command while the store is mounted so it goes through the daemon"
    )]
    Busy { path: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
    /// A multi-step operation on the volume did not finish (a job record or
    /// an ILLEGAL layer remains); the message says what to run.
    #[error("{0}")]
    Incomplete(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Journal(#[from] journal::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}
