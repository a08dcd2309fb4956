//! The room store: rooms, members, offsets and history.

use crate::error::StateError;
use crate::model::{
    Departed, Departure, Idempotency, JoinOutcome, MemberRecord, Published, Publisher, RoomConfig,
    RoomInfo, Wake,
};
use async_trait::async_trait;
use protocol::frame::{Member, Publication, Since};
use protocol::Data;
use std::sync::Arc;

/// Receives every publication, in offset order, as part of the publish itself (an ephemeral
/// room's publications, which have no offset, in the order they came).
///
/// The Redis backend publishes to the room's shard channel inside its Lua script, so the sink
/// is Redis. The memory backend calls this hook while it still holds the room's lock, which is
/// what keeps delivery order equal to offset order.
pub type PublishSink = Arc<dyn Fn(&Publication) + Send + Sync>;

#[async_trait]
pub trait RoomStore: Send + Sync {
    /// Creates an empty room. `RoomExists` if the name is taken.
    async fn create(
        &self,
        room: &str,
        config: &RoomConfig,
        now_ms: u64,
    ) -> Result<RoomInfo, StateError>;

    /// Brings a sleeping room back (see [`Wake`]): like `create`, but with the epoch, offset,
    /// options and creation time it had, its history window refilled, and its archive
    /// cursor at `offset`. Atomic like `create`: of two nodes waking the same room at once,
    /// one makes it and the other gets `RoomExists` (then joins the room the first made), so
    /// there is one epoch and no offset is assigned twice.
    async fn wake(&self, room: &str, wake: &Wake, now_ms: u64) -> Result<RoomInfo, StateError>;

    /// Adds a member. `NotFound` if there is no such room, `RoomFull` at `max_members`.
    /// With `since`, also answers whether the messages after it can be recovered (never, in
    /// an ephemeral room: nothing is kept).
    async fn join(
        &self,
        room: &str,
        member: &MemberRecord,
        since: Option<&Since>,
        now_ms: u64,
    ) -> Result<JoinOutcome, StateError>;

    /// Removes a member. Returns whether it was one. An absent room is not an error.
    async fn leave(&self, room: &str, conn_id: &str, now_ms: u64) -> Result<bool, StateError> {
        Ok(self.depart(room, conn_id, now_ms).await?.was_member)
    }

    /// [`RoomStore::leave`], also saying whether the room is now empty everywhere (the
    /// webhooks' `room_vacated`).
    async fn depart(&self, room: &str, conn_id: &str, now_ms: u64)
        -> Result<Departure, StateError>;

    /// Assigns the next offset, appends to history and hands the publication to the fan-out,
    /// atomically. `publisher` must be a member; `None` is the server API, which needs none.
    /// A publisher's `seq`, when not 0, must be above the last one sequenced for it in this
    /// room, or the publish is refused (`Unavailable`) and nothing happens (see
    /// [`Publisher`]; the memory backend applies publishes in the order they are called, so
    /// it has nothing to check).
    /// With `idempotency`, a key already published in the room's current epoch within its
    /// window is answered with the first offset (`duplicate`) and nothing is published.
    ///
    /// In an ephemeral room ([`RoomConfig::is_ephemeral`]) membership is checked the same
    /// way, but nothing is sequenced: the publication has offset
    /// [`Publication::EPHEMERAL_OFFSET`] and an empty epoch, goes to the fan-out as it is, and
    /// `idempotency` is ignored (at most once; a retry may be delivered twice). This is the
    /// path of callers that do not know the room is ephemeral (the server API, a node that
    /// has not seen the room yet); the gateway's members use [`RoomStore::publish_ephemeral`].
    async fn publish(
        &self,
        room: &str,
        publisher: Option<Publisher<'_>>,
        from: &str,
        data: Data,
        idempotency: Option<Idempotency<'_>>,
        now_ms: u64,
    ) -> Result<Published, StateError>;

    /// Whether this node knows `room` to be ephemeral, from what the store has answered here
    /// (a create, a join, an ephemeral publish), without any I/O: what lets the gateway take
    /// [`RoomStore::publish_ephemeral`] with no extra round trip. `false` when unknown, which
    /// is always safe: [`RoomStore::publish`] then finds out itself.
    fn is_ephemeral(&self, _room: &str) -> bool {
        false
    }

    /// Publishes to an ephemeral room without sequencing: offset
    /// [`Publication::EPHEMERAL_OFFSET`], an empty epoch, no history, no idempotency key,
    /// delivered at most once. On Redis this is one plain SPUBLISH of the envelope on the
    /// room's channel, no script: so the caller must have checked that `conn_id` is a member
    /// (the gateway asks its local registry, which knows the rooms its connections joined).
    /// A backend that can check membership again at no cost (memory) does. The default is
    /// [`RoomStore::publish`] without a key, which checks everything.
    async fn publish_ephemeral(
        &self,
        room: &str,
        conn_id: &str,
        from: &str,
        data: Data,
        now_ms: u64,
    ) -> Result<Published, StateError> {
        self.publish(
            room,
            Some(Publisher::member(conn_id)),
            from,
            data,
            None,
            now_ms,
        )
        .await
    }

    /// The members. `requester`, when given, must be one (`NotMember`).
    async fn members(&self, room: &str, requester: Option<&str>)
        -> Result<Vec<Member>, StateError>;

    /// Up to `limit` messages with offsets below `before` (all when `None`), newest last, and
    /// the current epoch. `requester`, when given, must be a member.
    async fn history(
        &self,
        room: &str,
        requester: Option<&str>,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<Publication>, String), StateError>;

    /// The room's current state.
    async fn info(&self, room: &str) -> Result<RoomInfo, StateError>;

    /// Deletes a room and returns its former members.
    async fn close(&self, room: &str) -> Result<Vec<MemberRecord>, StateError>;

    /// How many rooms exist (the traffic monitor's active rooms).
    async fn count(&self) -> Result<u64, StateError>;

    /// Removes the members held by `node` whose connection id `keep` does not keep, and
    /// returns them with their rooms: all of them for a dead node; for a node restarted under
    /// the same id, those of its earlier incarnations; for a live node, those whose
    /// connection is gone (a leave at disconnect that failed). Each removal says, as a leave
    /// does, whether it emptied its room.
    async fn remove_node_members(
        &self,
        node: &str,
        keep: &(dyn for<'c> Fn(&'c str) -> bool + Send + Sync),
    ) -> Result<Vec<Departed>, StateError>;

    /// Periodic upkeep, such as expiring empty rooms. Returns the rooms that expired.
    async fn maintain(&self, now_ms: u64) -> Result<Vec<String>, StateError>;

    /// Whether the backend answers (readiness).
    async fn health(&self) -> Result<(), StateError>;

    /// Retires `old_epoch`: if the room is still in it, a new epoch starts with offset 0 and
    /// empty history. Used when an offset turned out to be reused (state lost on a hard
    /// failover). Returns the epoch in force and whether this call started it.
    async fn reset_epoch(&self, room: &str, old_epoch: &str) -> Result<(String, bool), StateError>;
}
