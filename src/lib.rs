//! strata: a deduplicating, compressing store of virtual-disk images served
//! through FUSE as a directory of plain raw files.
//!
//! # Layers
//!
//! ```text
//!   cli ──────────────┐            command line (clap), tables, json
//!    │                │
//!    ▼                ▼
//!   fs (FUSE)      control         the kernel adapter; the daemon's socket
//!    │                │
//!    ▼                ▼
//!   volume  (Engine, Volume)       facade: catalogue row + chain + store,
//!    │        │        │           commit protocol, checkpoints, recovery
//!    ▼        ▼        ▼
//!  catalog  chain    journal       SQLite; layer block maps; metadata log
//!             │        │
//!             ▼        ▼
//!            store  ◄──┘           packs, chunk table, dedup index, zstd,
//!             │                    BLAKE3 checksums, refcounts
//!             ▼
//!           format                 byte helpers, checksums, atomic files
//!             │
//!             ▼
//!           hash                   BLAKE3 of many 4 KiB blocks at once,
//!                                  of short headers without a Hasher
//! ```
//!
//! Rules: arrows point down only. `fs` never touches packs or SQL; it calls
//! [`volume::Volume`]. `store` knows nothing of layers or volumes. Every
//! on-disk byte is described in `FORMAT.md`.

pub mod catalog;
pub mod chain;
pub mod cli;
pub mod control;
pub mod fault;
pub mod format;
pub mod fs;
pub mod guid;
pub mod hash;
pub mod journal;
pub mod qcow2;
pub mod replica;
pub mod store;
pub mod volume;

/// Deterministic test data, shared with the integration tests.
#[cfg(test)]
#[path = "../tests/support/bytes.rs"]
pub(crate) mod test_bytes;

pub use guid::Guid;
