//! The pub/sub adapter between gateway nodes.

use async_trait::async_trait;
use protocol::envelope::Envelope;

#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    #[error("fan-out unavailable: {0}")]
    Unavailable(String),
    /// Settings that can never work (a malformed seed URL).
    #[error("fan-out misconfigured: {0}")]
    Config(String),
}

#[async_trait]
pub trait FanOut: Send + Sync {
    /// Delivers an envelope to every node with local members in its room (or to every node,
    /// for node-wide envelopes such as `DisconnectUser`), this node included.
    ///
    /// Room messages do not come through here: `RoomStore::publish` hands them to the fan-out
    /// in the same atomic step that assigns their offset.
    async fn publish(&self, envelope: Envelope) -> Result<(), FanOutError>;

    /// This node gained its first local member in `room`: start receiving its channel.
    fn subscribe(&self, room: &str);

    /// This node lost its last local member in `room`: stop receiving (possibly lazily).
    fn unsubscribe(&self, room: &str);

    /// A local member joined `room` at `(epoch, offset)`: delivery to it continues from there.
    /// Adapters that sequence messages use it as a starting point for gap detection.
    fn track(&self, _room: &str, _epoch: &str, _offset: u64) {}

    /// How many room channels this node receives.
    fn subscribed(&self) -> usize;

    /// Whether delivery works end to end (readiness).
    fn healthy(&self) -> bool;
}
