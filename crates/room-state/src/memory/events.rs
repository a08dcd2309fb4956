//! `EventQueue` for the embedded backend: one in-process queue per shard. Lost with the
//! process, like every other embedded state; the node that holds it is the only reader.

use super::MemoryState;
use crate::error::StateError;
use crate::events::{EventQueue, QueuedEvent};
use async_trait::async_trait;
use std::sync::atomic::Ordering;

#[async_trait]
impl EventQueue for MemoryState {
    async fn append_event(&self, queue: &str, body: &str, now_ms: u64) -> Result<(), StateError> {
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed);
        self.events
            .lock()
            .entry(queue.to_string())
            .or_default()
            .push_back(QueuedEvent {
                entry: format!("{now_ms}-{seq}"),
                appended_ms: now_ms,
                body: body.to_string(),
            });
        Ok(())
    }

    async fn read_events(&self, queue: &str, limit: usize) -> Result<Vec<QueuedEvent>, StateError> {
        Ok(self
            .events
            .lock()
            .get(queue)
            .map(|q| q.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn ack_events(&self, queue: &str, entries: &[String]) -> Result<(), StateError> {
        let mut events = self.events.lock();
        if let Some(q) = events.get_mut(queue) {
            q.retain(|e| !entries.contains(&e.entry));
            if q.is_empty() {
                events.remove(queue);
            }
        }
        Ok(())
    }

    async fn queued_events(&self, queue: &str) -> Result<u64, StateError> {
        Ok(self.events.lock().get(queue).map_or(0, |q| q.len() as u64))
    }
}
