//! The [`Archive`] trait: what the gateway needs of durable storage.

use crate::error::ArchiveError;
use crate::model::SleepingRoom;
use async_trait::async_trait;
use protocol::Publication;

/// Durable rooms and messages, behind which PostgreSQL or SQLite sit.
///
/// Rules every backend keeps (the conformance suite, [`crate::testsuite`], checks each):
/// - A message is identified by `(room, epoch, offset)`. Appending one that is already there
///   changes nothing, whatever its content: the first write wins. So an archiver may re-send
///   any batch (at-least-once delivery becomes exactly-once storage).
/// - Offsets are meaningful within an epoch only (a new epoch starts again at 1), so paging is
///   per `(room, epoch)`.
/// - Nothing reads the clock: timestamps come in with the messages (`ts`) and the calls.
/// - Numbers are stored as signed 64-bit integers: an offset, `ts` or `ttl_secs` above
///   `i64::MAX` is [`ArchiveError::BadInput`].
/// - A NUL character in a room, epoch or user name is [`ArchiveError::BadInput`] in every
///   method (PostgreSQL's `text` cannot hold it); room names from clients never have one.
#[async_trait]
pub trait Archive: Send + Sync {
    /// Stores a batch of messages, in one transaction: all or none. Messages already stored
    /// (same room, epoch and offset) are skipped. Returns how many rows were new.
    ///
    /// Errors: [`ArchiveError::BadInput`] for an empty room or epoch, a NUL character in a
    /// room, epoch or user (PostgreSQL's `text` cannot hold it), an ephemeral message
    /// (offset 0: it has no identity), or a number past `i64::MAX`; nothing of the batch is
    /// written then. Any other error may be retried with the same batch.
    async fn append(&self, batch: &[Publication]) -> Result<u64, ArchiveError>;

    /// A page of one epoch of a room: the newest `limit` messages with an offset below
    /// `before` (all of them when `None`), returned **oldest first**, like room-state's
    /// `history`, so that the gateway can put an archive page straight in front of the Redis
    /// window. The next older page is `before = first offset of this one`.
    ///
    /// Bounds, none of them an error: `limit` 0 gives an empty page; a `limit` above
    /// [`crate::MAX_PAGE`] is capped to it; `before` 0 or 1 gives an empty page (nothing is
    /// below it); a `before` past the newest offset is the same as `None`. An unknown room or
    /// epoch is an empty page (the archive cannot tell "never had a message" from "unknown").
    async fn page(
        &self,
        room: &str,
        epoch: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Publication>, ArchiveError>;

    /// The highest offset stored for `(room, epoch)`, `None` when there is none. Not a promise
    /// that everything below it is stored (an archiver may write batches out of order); it is
    /// what a catch-up check compares with the room's offset in Redis.
    async fn high_water(&self, room: &str, epoch: &str) -> Result<Option<u64>, ArchiveError>;

    /// Records a room that leaves Redis, replacing what was recorded for it, except that
    /// within the same epoch the offset never goes back (a late save from a slower node does
    /// not undo a newer one).
    ///
    /// Errors: [`ArchiveError::BadInput`] for an empty room or epoch, or numbers past
    /// `i64::MAX`.
    async fn save_room(&self, room: &SleepingRoom) -> Result<(), ArchiveError>;

    /// The sleeping room, if one was saved and not closed. Loading does not remove it: the
    /// record stays true after a wake (same epoch, the room goes on from its offset), and the
    /// next sleep overwrites it.
    async fn load_room(&self, room: &str) -> Result<Option<SleepingRoom>, ArchiveError>;

    /// Forgets a room's sleeping record (a room closed through the API must not wake). Its
    /// messages stay until retention or a purge. Returns whether there was a record; closing
    /// an unknown room is not an error.
    async fn close_room(&self, room: &str) -> Result<bool, ArchiveError>;

    /// Retention: deletes every message with `ts` strictly before `before_ms`, in every room.
    /// Returns how many. Sleeping rooms are kept.
    async fn drop_older_than(&self, before_ms: u64) -> Result<u64, ArchiveError>;

    /// Erasure of a room: deletes all its messages (every epoch) and its sleeping record.
    /// Returns how many messages went.
    ///
    /// Errors: [`ArchiveError::NotFound`] when the archive holds neither a message nor a
    /// record of the room, so that a typo in a deletion request is not reported as done.
    async fn purge_room(&self, room: &str) -> Result<u64, ArchiveError>;

    /// Erasure of a user: deletes every message the user published (`from`), in every room.
    /// Returns how many; 0 for a user with none (not an error: a deletion request for a user
    /// who never published is fulfilled).
    async fn purge_user(&self, user: &str) -> Result<u64, ArchiveError>;
}
