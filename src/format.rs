//! Byte-level helpers.
