//! Plain data through the [`Archive`](crate::Archive) trait.

/// The most messages one [`Archive::page`](crate::Archive::page) returns; a larger `limit` is
/// capped to it (not an error: the caller pages on from the oldest it got).
pub const MAX_PAGE: usize = 1000;

/// A room's state when it left Redis, enough to wake it with the same epoch and continuing
/// offsets (room-state's `RoomConfig` and `RoomInfo`, flattened; the gateway converts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepingRoom {
    pub room: String,
    pub epoch: String,
    /// The last offset assigned in `epoch` (0 before the first message); a woken room's next
    /// message is `offset + 1`.
    pub offset: u64,
    /// `None`: unlimited.
    pub max_members: Option<u32>,
    pub history_size: u32,
    pub ttl_secs: u64,
    /// When the room was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it was put to sleep (ms since the Unix epoch), as the caller says.
    pub saved_ms: u64,
}
