//! Saved Socket.IO socket state: `SET … PX` and `GETDEL` on `rc:{s:KEY}`.

use super::{keys, RedisState};
use crate::error::StateError;
use crate::sessions::SessionStore;
use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Expiration;

#[async_trait]
impl SessionStore for RedisState {
    async fn save_session(&self, key: &str, blob: &str, ttl_ms: u64) -> Result<(), StateError> {
        let key = keys::session(key);
        let _: Option<String> = self
            .on(&key)
            .set(
                &key,
                blob,
                Some(Expiration::PX(ttl_ms.max(1) as i64)),
                None,
                false,
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn take_session(&self, key: &str) -> Result<Option<String>, StateError> {
        let key = keys::session(key);
        self.on(&key).getdel(&key).await.map_err(|e| self.failed(e))
    }
}
