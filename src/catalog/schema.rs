//! Schema and forward migrations of the catalogue.
pub const SCHEMA_VERSION: i64 = 1;
