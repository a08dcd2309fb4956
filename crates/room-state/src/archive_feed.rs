//! What the gateway's archiver reads from the room state: which rooms have messages not yet
//! archived, those messages (from the room's own history, after a per-room cursor), the
//! cursor's advance once a batch is committed, and a lease so that one node at a time works
//! a shard of rooms (or runs a cluster-wide chore such as retention).
//!
//! The publish path pays almost nothing for it: a publish marks its room dirty only when the
//! room is not marked already (see the backends), so the cost is one mark per room per
//! archive round, not one per message. The messages themselves are the history entries
//! every publish writes anyway.

use crate::error::StateError;
use async_trait::async_trait;
use protocol::frame::Publication;

/// Shards of the dirty-rooms index, each worked by one node at a time (under its lease).
pub const ARCHIVE_SHARDS: u64 = 16;

/// How far the archive may fall behind in one room, beyond its history window, before the
/// room's publishes are refused (`unavailable`): the history is not trimmed past what the
/// archive holds, so this bounds what a stalled archive costs in memory per room. The
/// default of the gateway's `--archive-backlog-cap`, given to
/// [`ArchiveFeed::enable_archiving`].
pub const ARCHIVE_BACKLOG_CAP: u64 = 10_000;

/// A room with messages not yet archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyRoom {
    pub room: String,
    /// When it was marked (ms since the epoch): about the time of its oldest message not
    /// yet archived, for the lag in seconds.
    pub since_ms: u64,
}

/// A room's messages after its archive cursor, in offset order.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveRead {
    /// The room's current epoch: the cursor and every message are of this one.
    pub epoch: String,
    /// The last archived offset of this epoch (0: none).
    pub cursor: u64,
    /// The room's last offset: `offset - cursor` messages are not archived yet.
    pub offset: u64,
    pub messages: Vec<Publication>,
}

#[async_trait]
pub trait ArchiveFeed: Send + Sync {
    /// Turns marking on: from now on publishes mark their rooms dirty and the history is
    /// not trimmed past the archive cursor, up to `backlog_cap` unarchived messages per room
    /// (at least 1; [`ARCHIVE_BACKLOG_CAP`] by default); past it a publish is refused
    /// `unavailable`. Off by default, so a node without an archive leaves no marks behind.
    /// Set once at start.
    fn enable_archiving(&self, backlog_cap: u64);

    /// Up to `limit` dirty rooms of index shard `shard` (`0..ARCHIVE_SHARDS`), oldest mark
    /// first.
    async fn dirty_rooms(&self, shard: u64, limit: usize) -> Result<Vec<DirtyRoom>, StateError>;

    /// Up to `limit` messages of `room` after its cursor. `None`: the room is gone (closed or
    /// expired); its mark is dropped. History entries with offset ≤ the cursor are skipped.
    async fn read_unarchived(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Option<ArchiveRead>, StateError>;

    /// After a batch up to `upto` of `epoch` is committed to the archive: moves the cursor to
    /// `upto` if it is still lower and the room still in `epoch`, and clears the dirty mark if
    /// nothing newer arrived. Returns whether the room is still dirty (more to read); it is
    /// then marked with `mark_ms` if its mark had to be renewed (the archiver passes the
    /// mark's original time, so the lag in seconds keeps counting from it).
    async fn advance_cursor(
        &self,
        room: &str,
        epoch: &str,
        upto: u64,
        mark_ms: u64,
    ) -> Result<bool, StateError>;

    /// Takes or renews the lease `name` for `holder`, for `ttl_ms` from `now_ms`. True when
    /// `holder` holds it now; false when another holder does and it has not lapsed.
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StateError>;

    /// Gives the lease `name` up if `holder` holds it (a drained node hands its shards over
    /// at once instead of after the TTL).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StateError>;
}

/// The dirty-rooms index shard of a room: stable across processes, like the room index.
pub fn archive_shard(room: &str) -> u64 {
    protocol::hash::fnv1a(room.as_bytes()) % ARCHIVE_SHARDS
}
