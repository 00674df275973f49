//! store
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Placeholder(String),
}
