//! The durable queue of webhook events (`--webhook-url`): one ordered queue per shard, read
//! from its head by the one node that holds the shard's lease, and trimmed only after the
//! app acknowledged a batch. What it holds is opaque to this crate: each entry is one event's
//! JSON text, built by the gateway.
//!
//! Why a head-trimmed stream under a lease, not a consumer group's pending list: a consumer
//! group hands entries to consumers one by one, so a claimer (`XAUTOCLAIM`) and the entries'
//! first reader, or two readers of one stream, deliver one shard concurrently and per-room
//! order is lost. Order per room needs exactly one reader per shard, which is a lease; with
//! one reader, the unacknowledged entries are simply the stream's head, and deleting them
//! after a 2xx is the acknowledgement. A reader that dies leaves them there: the next lease
//! holder reads them again (at least once).

use crate::error::StateError;
use async_trait::async_trait;

/// Shards of the event queue. Events of one room (or one user) always go to one shard.
pub const EVENT_SHARDS: u64 = 16;

/// An entry of the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// The entry's id in its queue (opaque; pass it back to [`EventQueue::ack_events`]).
    pub entry: String,
    /// When it was appended (ms since the Unix epoch, the backend's clock).
    pub appended_ms: u64,
    /// The event's JSON text, as appended.
    pub body: String,
}

#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Appends one event to queue `queue`, after every event appended there before it.
    async fn append_event(&self, queue: &str, body: &str, now_ms: u64) -> Result<(), StateError>;

    /// Up to `limit` of the oldest events of `queue`, oldest first. Reading removes nothing.
    async fn read_events(&self, queue: &str, limit: usize) -> Result<Vec<QueuedEvent>, StateError>;

    /// Removes the given entries (a delivered batch). Entries already gone are ignored.
    async fn ack_events(&self, queue: &str, entries: &[String]) -> Result<(), StateError>;

    /// How many events `queue` holds.
    async fn queued_events(&self, queue: &str) -> Result<u64, StateError>;
}

/// The queue shard of a room's events (or, for user events, of a user's): stable across
/// processes.
pub fn event_shard(key: &str) -> u64 {
    protocol::hash::fnv1a(key.as_bytes()) % EVENT_SHARDS
}
