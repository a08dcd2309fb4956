//! Saved connection state: an opaque blob per key with an expiry, taken at most once.
//! The Socket.IO endpoint keeps a lost socket's rooms and position here, so that the client
//! can recover them on any node within the recovery window.

use crate::StateError;
use async_trait::async_trait;

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Saves `blob` under `key` for `ttl_ms`, replacing what was there.
    async fn save_session(&self, key: &str, blob: &str, ttl_ms: u64) -> Result<(), StateError>;

    /// Reads and deletes the blob under `key` in one step: a saved state is used once.
    async fn take_session(&self, key: &str) -> Result<Option<String>, StateError>;
}
