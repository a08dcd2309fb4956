//! `EventQueue` on Redis Cluster: one stream per queue, `rc:{q:NAME}`, alone in its slot.
//! Entry ids are Redis's own (`<ms>-<seq>`, increasing), field `e` holds the event.
//!
//! XADD is not idempotent: fred re-sending one after a reconnect appends the event twice.
//! The event carries its own id for exactly that (the app dedupes).

use super::{keys, RedisState};
use crate::error::StateError;
use crate::events::{EventQueue, QueuedEvent};
use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Value;
use std::collections::HashMap;

/// The most events a queue keeps (approximately, `MAXLEN ~`): a webhook app down for long
/// enough loses its oldest events rather than filling Redis' memory. At about 200 bytes an
/// event, 16 shards hold at most about 3 GB.
pub const MAX_QUEUED: i64 = 1_000_000;

#[async_trait]
impl EventQueue for RedisState {
    async fn append_event(&self, queue: &str, body: &str, _now_ms: u64) -> Result<(), StateError> {
        let key = keys::event_queue(queue);
        let _: Value = self
            .on(&key)
            .xadd(
                &key,
                false,
                ("MAXLEN", "~", MAX_QUEUED),
                "*",
                vec![("e", body)],
            )
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn read_events(&self, queue: &str, limit: usize) -> Result<Vec<QueuedEvent>, StateError> {
        let key = keys::event_queue(queue);
        let raw: Vec<(String, HashMap<String, String>)> = self
            .on(&key)
            .xrange(&key, "-", "+", Some(limit as u64))
            .await
            .map_err(|e| self.failed(e))?;
        Ok(raw
            .into_iter()
            .map(|(entry, mut fields)| QueuedEvent {
                appended_ms: entry
                    .split_once('-')
                    .and_then(|(ms, _)| ms.parse().ok())
                    .unwrap_or(0),
                body: fields.remove("e").unwrap_or_default(),
                entry,
            })
            .collect())
    }

    async fn ack_events(&self, queue: &str, entries: &[String]) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let key = keys::event_queue(queue);
        let _: Value = self
            .on(&key)
            .xdel(&key, entries.to_vec())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn queued_events(&self, queue: &str) -> Result<u64, StateError> {
        let key = keys::event_queue(queue);
        self.on(&key).xlen(&key).await.map_err(|e| self.failed(e))
    }
}
