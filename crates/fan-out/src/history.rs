//! What an adapter that may lose messages needs from the room store: read back what it missed,
//! and retire an epoch whose offsets are being reused. Declared here, not taken from
//! `room-state`, so the fan-out depends on the protocol only; the gateway plugs its room store
//! in.

use async_trait::async_trait;
use protocol::frame::Publication;

/// Reads missed messages back from a room's history.
#[async_trait]
pub trait HistorySource: Send + Sync {
    /// Messages of `room` with `after < offset < before`, oldest first, as far as history
    /// still holds them.
    async fn range(&self, room: &str, after: u64, before: u64) -> Result<Vec<Publication>, String>;

    /// Retires an epoch whose offsets are being reused, so members see a new epoch.
    async fn retire_epoch(&self, room: &str, epoch: &str) -> Result<(), String>;
}
