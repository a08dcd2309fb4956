//! Errors of the state backends. Each maps to one protocol error code in the gateway.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("room not found")]
    NotFound,
    #[error("room already exists")]
    RoomExists,
    #[error("room is full")]
    RoomFull,
    #[error("not a member of the room")]
    NotMember,
    /// The operation was not applied: the backend could not be reached or refused it. It may
    /// be retried.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The outcome is unknown: the command may have been applied (it was sent, and no answer
    /// came in time, or the write is not yet on a replica). Retrying a publish is safe only
    /// with its idempotency key.
    #[error("backend timeout: {0}")]
    Timeout(String),
    /// The backend answered something unexpected.
    #[error("backend error: {0}")]
    Internal(String),
}
