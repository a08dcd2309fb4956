//! What an adapter that may lose messages needs from the room store: read back what it missed,
//! and retire an epoch whose offsets are being reused. Declared here, not taken from
//! `room-state`, so the fan-out depends on the protocol only; the gateway plugs its room store
//! in.

use async_trait::async_trait;
use protocol::frame::Publication;

/// The newest messages of a room as its shard's owner holds them now.
#[derive(Debug, Clone, PartialEq)]
pub struct Tail {
    /// The room's epoch in force.
    pub epoch: String,
    /// The room's last offset in that epoch (0: nothing published yet).
    pub offset: u64,
    /// Up to the requested number of the newest messages, oldest first.
    pub messages: Vec<Publication>,
}

/// Reads missed messages back from a room's history.
#[async_trait]
pub trait HistorySource: Send + Sync {
    /// Messages of `room` with `after < offset < before`, oldest first, as far as history
    /// still holds them.
    async fn range(&self, room: &str, after: u64, before: u64) -> Result<Vec<Publication>, String>;

    /// Retires an epoch whose offsets are being reused, so members see a new epoch.
    async fn retire_epoch(&self, room: &str, epoch: &str) -> Result<(), String>;

    /// The newest `limit` messages of `room`, with its epoch and last offset, read from the
    /// node that owns the room's slot now (after a change of owner, the new one). `Ok(None)`
    /// when the room does not exist. Used to reconcile what this node delivered with what
    /// the new owner holds.
    async fn tail(&self, room: &str, limit: usize) -> Result<Option<Tail>, String>;
}
