//! Where a message crosses nodes, and where it reaches the local sockets.
//!
//! Map of the crate:
//! - [`adapter`]: the [`FanOut`] trait: publish an envelope to a room's channel; subscribe to a
//!   room's channel while this node has local members in it.
//! - [`memory`]: the in-memory adapter for a single node: publish is local delivery.
//! - [`redis`]: the Redis Cluster adapter: sharded pub/sub on the channels `protocol::channel`
//!   names, lazy unsubscribe, reconcile, self-probes, gap repair. It builds its own fred
//!   clients from plain settings; fred appears in no public signature.
//! - [`history`]: the [`HistorySource`] the Redis adapter repairs gaps from. The gateway
//!   plugs its room store in, so this crate depends on `protocol` only.
//! - [`sequencer`]: per-room offset continuity: deliver, drop a duplicate, or repair a gap.
//! - [`registry`]: the local registry: which connections this node holds, in which rooms, for
//!   which users.
//! - [`frames`]: the channel from a connection's queue to its writer, with no heap while
//!   idle.
//! - [`outbound`]: each connection's bounded outbound queue (in bytes). Pushing never waits; a
//!   queue over its limit marks its connection a slow consumer, to be closed with 4009.
//! - [`dispatch`]: local delivery of one envelope: encode once per format, push the same bytes
//!   to every local member; and the hooks deliveries and pub/sub report to (metrics).
//! - [`testsuite`]: the conformance suite every adapter passes unchanged.
//!
//! Invariant: nothing on the delivery path awaits or blocks on a client. A slow client only
//! ever harms itself.

pub mod adapter;
pub mod dispatch;
pub mod frames;
pub mod history;
pub mod memory;
pub mod outbound;
pub mod redis;
pub mod registry;
pub mod sequencer;
pub mod testsuite;

pub use adapter::{FanOut, FanOutError};
pub use dispatch::{
    broadcast, deliver, deliver_encoded, deliver_held, DeliveryHooks, NoHooks, PubSubHooks,
};
pub use frames::{FrameReceiver, TryRecvError};
pub use history::{HistorySource, Tail};
pub use memory::MemoryFanOut;
pub use outbound::{
    header, DirectWrite, FrameHeader, Journal, OutFrame, Outbound, Position, PushError, WriteMode,
};
pub use redis::{RedisFanOut, RedisFanOutConfig};
pub use registry::{LocalConn, Registry};
