//! Webhooks (`--webhook-url`): room, member and user events POSTed to the app, at least once,
//! batched, in order per room (docs/webhooks.md).
//!
//! Two halves. [`Webhooks::emit`] is called where a state change happens (room creation and
//! close, join and leave, a user's first and last connection, a dead node's members and
//! connections removed by its one claimer), with what the backend's atomic step answered:
//! `occupied` / `vacated` / `first` / `last` come from the scripts (Redis) or the room's lock
//! (memory), never from this node's local view, so each change is reported once, cluster-wide.
//! The event goes into room-state's [`EventQueue`], shard [`event_shard`] of its room (or
//! user), *right after* the state change: the queue is in another slot than the room, so not
//! in the same script. A node that dies between the two loses that one event (see
//! docs/webhooks.md, "Guarantees").
//!
//! [`deliver`] runs on every node: one worker per queue shard, working it while it holds the
//! shard's lease, so each shard has one reader and one batch in flight: order per shard, hence
//! per room. A batch is removed from the queue only after the app answered 2xx; a node that
//! dies mid-batch leaves it at the head, and the next lease holder sends it again.

pub mod deliver;
pub mod event;
mod post;

use crate::clock::now_ms;
use crate::config::Config;
use crate::metrics::Metrics;
pub use event::{Cause, Event, Kind};
use room_state::{event_shard, EventQueue};
use std::sync::Arc;
use std::time::Duration;

/// Attempts at queueing one event before it is counted lost.
const APPEND_ATTEMPTS: u32 = 3;

/// The queue (shard) an event goes to: `wh:K`.
pub fn queue_name(shard: u64) -> String {
    format!("wh:{shard}")
}

/// The emitting half: cheap to clone; does nothing without `--webhook-url`.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: Arc<dyn EventQueue>,
    node: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl Webhooks {
    /// On when `--webhook-url` is set.
    pub fn new(
        config: &Config,
        queue: Arc<dyn EventQueue>,
        node: &str,
        metrics: Arc<Metrics>,
    ) -> Webhooks {
        if config.webhook_url.is_none() {
            return Webhooks::default();
        }
        Webhooks {
            inner: Some(Arc::new(Inner {
                queue,
                node: node.to_string(),
                metrics,
            })),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `event` (retried a few times; a failure is logged and counted, never returned:
    /// the state change it reports has happened).
    pub async fn emit(&self, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let now = now_ms();
        let body = event.to_json(&id, now, &inner.node);
        let queue = queue_name(event_shard(&event.order_key()));
        let series = &inner.metrics.webhooks;
        for attempt in 1..=APPEND_ATTEMPTS {
            match inner.queue.append_event(&queue, &body, now).await {
                Ok(()) => {
                    series.events.with_label_values(&["queued"]).inc();
                    return;
                }
                Err(e) if attempt == APPEND_ATTEMPTS => {
                    tracing::warn!(error = %e, kind = event.kind.as_str(), "webhook event lost: not queued");
                    series.events.with_label_values(&["lost"]).inc();
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await,
            }
        }
    }

    /// Queues events in order.
    pub async fn emit_all(&self, events: Vec<Event>) {
        if self.inner.is_none() {
            return;
        }
        for event in events {
            self.emit(event).await;
        }
    }
}
