//! Where a room's state lives: rooms, members (presence), history, rate limits and traffic
//! counters, behind traits with two implementations: in memory, and on Redis Cluster.
//!
//! Map of the crate:
//! - [`rooms`]: the [`RoomStore`] trait: create, wake (a sleeping room back from the archive,
//!   with its epoch and offset), join (with recovery), leave, publish, history, presence,
//!   close.
//! - [`archive_feed`]: the [`ArchiveFeed`] trait: what the gateway's archiver reads (dirty
//!   rooms, messages after a cursor, leases) and its sleep sweep (rooms due, their removal). Publish assigns gapless offsets per epoch, except in an *ephemeral*
//!   room (`history_size` 0), where it delivers without an offset, at most once
//!   ([`RoomStore::publish_ephemeral`]; `ephemeral` tracks which rooms a node knows to be).
//! - [`limits`]: the [`RateLimits`] trait: sliding windows and token buckets keyed by user.
//! - [`lease`]: [`LeasedBuckets`], a node's slices of the shared publish buckets.
//! - [`traffic`]: the [`TrafficCounters`] trait: room creations per second, node heartbeats.
//! - [`sessions`]: the [`SessionStore`] trait: saved Socket.IO socket state, taken once.
//! - [`users`]: the [`UserRegistry`] trait: every live connection of a user, per node.
//! - [`events`]: the [`EventQueue`] trait: the durable, sharded queue of webhook events.
//! - [`recovery`]: the pure rule that decides whether a `since` position can be recovered.
//! - [`model`]: plain data passed through the traits.
//! - [`observer`]: the [`CommandObserver`] a backend reports its remote commands to (metrics).
//! - [`memory`]: the embedded backend, used by a single node and by unit tests.
//! - [`redis`]: the Redis Cluster backend: one slot per room, Lua scripts per op. fred stays
//!   inside it: [`RedisSettings`] in, [`RedisState`] out.
//! - [`testsuite`]: one conformance suite that every backend must pass.
//!
//! Invariants every backend keeps:
//! - offsets in a room go 1, 2, 3… within one epoch, with no gaps and no reuse (an ephemeral
//!   room assigns none: its messages carry offset 0 and no epoch);
//! - a room whose state was lost comes back with a new epoch, never with reused offsets;
//! - a publish is handed to the fan-out in offset order, as part of the same atomic step. On
//!   Redis that hand-off is an SPUBLISH on the room's `protocol::channel`, of a
//!   `protocol::envelope`, so this crate and the fan-out share only the `protocol` crate.

pub mod archive_feed;
mod ephemeral;
pub mod error;
pub mod events;
pub mod lease;
pub mod limits;
pub mod memory;
pub mod model;
pub mod observer;
pub mod recovery;
pub mod redis;
pub mod rooms;
pub mod sessions;
pub mod testsuite;
pub mod traffic;
pub mod users;

pub use archive_feed::{
    ArchiveFeed, ArchiveRead, DirtyRoom, SleepState, ARCHIVE_BACKLOG_CAP, ARCHIVE_SHARDS,
    SLEEP_BACKSTOP_MS,
};
pub use error::StateError;
pub use events::{event_shard, EventQueue, QueuedEvent, EVENT_SHARDS};
pub use lease::LeasedBuckets;
pub use limits::RateLimits;
pub use memory::MemoryState;
pub use model::{
    Decision, Departed, Departure, Grant, Idempotency, JoinOutcome, MemberRecord, NodeInfo,
    Published, Publisher, RoomConfig, RoomInfo, Wake,
};
pub use observer::{Command, CommandObserver};
pub use redis::{RedisSettings, RedisState};
pub use rooms::{PublishSink, RoomStore};
pub use sessions::SessionStore;
pub use traffic::TrafficCounters;
pub use users::{RemovedUserConn, UserAdmission, UserConn, UserRegistry};
