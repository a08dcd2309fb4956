//! Errors of the archive backends.

/// What can go wrong. Every [`Archive`](crate::Archive) method documents which it returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// The input breaks a documented rule (an offset of 0, a number past `i64::MAX`, an empty
    /// room name). Nothing was written.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The room is not in the archive (a purge of a room with neither messages nor a sleeping
    /// record).
    #[error("room not found in the archive")]
    NotFound,
    /// The database could not be reached, or refused for now (pool timeout, connection lost,
    /// server shutting down, SQLite busy). May be retried; an `append` always may.
    #[error("archive unavailable: {0}")]
    Unavailable(String),
    /// The database answered something unexpected (a corrupt payload, a constraint broken).
    #[error("archive error: {0}")]
    Internal(String),
    /// The URL is not one this crate opens, or the migrations failed at start.
    #[error("archive setup: {0}")]
    Setup(String),
}
