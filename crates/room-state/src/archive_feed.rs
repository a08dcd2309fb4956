//! What the gateway's archiver reads from the room state: which rooms have messages not yet
//! archived, those messages (from the room's own history, after a per-room cursor), the
//! cursor's advance once a batch is committed, and a lease so that one node at a time works
//! a shard of rooms (or runs a cluster-wide chore such as retention).
//!
//! It is also how rooms go to sleep: while the archive is on, an empty room past its TTL
//! stays until the archiver's sweep has saved it to the archive and removes it
//! ([`ArchiveFeed::expired_rooms`], [`ArchiveFeed::sleep_state`],
//! [`ArchiveFeed::forget_slept`]), so no room leaves with messages the archive lacks.
//!
//! The publish path pays almost nothing for it: a publish marks its room dirty only when the
//! room is not marked already (see the backends), so the cost is one mark per room per
//! archive round, not one per message. The messages themselves are the history entries
//! every publish writes anyway.

use crate::error::StateError;
use crate::model::RoomConfig;
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

/// While the archive is on, an empty room's keys in Redis expire only this long after its TTL:
/// the room is meant to leave Redis through the sleep sweep (saved to the archive first), and
/// this only bounds what a room the sweep never reaches costs (its index entry lost). The
/// sweep runs every archive round, so a room that reaches this had an archive down that long.
pub const SLEEP_BACKSTOP_MS: u64 = 86_400_000;

/// A room as the sleep sweep reads it: what the archive's sleeping record needs, and whether
/// it may leave now (no member, everything archived).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepState {
    pub room: String,
    pub epoch: String,
    /// The last offset assigned in `epoch`.
    pub offset: u64,
    /// The last offset of `epoch` the archive holds.
    pub archived: u64,
    pub config: RoomConfig,
    pub created_at: u64,
    pub members: usize,
}

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
    /// then marked with `mark_ms` (the archiver passes when it read the room: what is left is
    /// newer than that).
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

    /// Who holds the lease `name` at `now_ms` (`None`: nobody, or it lapsed). Only reads: a
    /// node that runs no worker for these leases can see whether others do.
    async fn lease_holder(&self, name: &str, now_ms: u64) -> Result<Option<String>, StateError>;

    /// Up to `limit` rooms of shard `shard` (the same shards as the dirty rooms: the
    /// archiver that holds a shard puts its rooms to sleep) that have been empty past their
    /// TTL at `now_ms`. While the archive is on, such a room stays until
    /// [`ArchiveFeed::forget_slept`] removes it: it never leaves on its own with messages
    /// the archive lacks.
    async fn expired_rooms(
        &self,
        shard: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StateError>;

    /// The room's state for its sleeping record; `None` when it is gone.
    async fn sleep_state(&self, room: &str) -> Result<Option<SleepState>, StateError>;

    /// After the room's sleeping record (`epoch`, `offset`) is saved: removes the room, in
    /// one atomic step, if it is still as read: same epoch and offset, no member. True when
    /// it is gone now (removed, or gone already: its index entry is dropped too); false when
    /// it woke up in between (a join, a publish), and stays.
    async fn forget_slept(
        &self,
        room: &str,
        epoch: &str,
        offset: u64,
        now_ms: u64,
    ) -> Result<bool, StateError>;

    /// Every room, when the state dies with this process (the embedded backend: a drained
    /// node saves them all, occupied or not); empty for a shared backend, whose rooms
    /// outlive the node.
    async fn dying_rooms(&self) -> Result<Vec<SleepState>, StateError>;
}

/// The dirty-rooms index shard of a room: stable across processes, like the room index.
pub fn archive_shard(room: &str) -> u64 {
    protocol::hash::fnv1a(room.as_bytes()) % ARCHIVE_SHARDS
}
