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
    /// The backend cannot be reached or timed out; the operation may be retried.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered something unexpected.
    #[error("backend error: {0}")]
    Internal(String),
}
