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
//! in the same script. The op does not wait for it: [`Webhooks::emit`] hands the event to
//! the shard's appender task (one per shard, so a shard's events are appended in the order
//! they were made, and a queue shard whose primary is down delays no op and no other shard).
//! A node that dies before the append loses those events (see docs/webhooks.md,
//! "Guarantees").
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
use room_state::{event_shard, EventQueue, EVENT_SHARDS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Attempts at appending one event before it is counted lost.
const APPEND_ATTEMPTS: u32 = 5;
/// Events waiting for their shard's appender; past this a new event is counted lost (the
/// queue's Redis primary has been unreachable for a while).
const APPENDER_BACKLOG: usize = 10_000;

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
    /// Per shard: the appender's inbox (event JSON, when made, its type for the logs).
    appenders: Vec<mpsc::Sender<(String, u64, &'static str)>>,
    /// Events handed to an appender and not yet appended (or given up on).
    pending: Arc<AtomicUsize>,
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
    /// On when `--webhook-url` is set; starts the appenders (needs the runtime).
    pub fn new(
        config: &Config,
        queue: Arc<dyn EventQueue>,
        node: &str,
        metrics: Arc<Metrics>,
    ) -> Webhooks {
        if config.webhook_url.is_none() {
            return Webhooks::default();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("webhooks off: no runtime to run them on");
            return Webhooks::default();
        };
        let pending = Arc::new(AtomicUsize::new(0));
        let appenders = (0..EVENT_SHARDS)
            .map(|shard| {
                let (tx, rx) = mpsc::channel(APPENDER_BACKLOG);
                let appender = append(
                    rx,
                    queue.clone(),
                    queue_name(shard),
                    pending.clone(),
                    metrics.clone(),
                );
                runtime.spawn(appender);
                tx
            })
            .collect();
        Webhooks {
            inner: Some(Arc::new(Inner {
                appenders,
                pending,
                node: node.to_string(),
                metrics,
            })),
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `event`: hands it to its shard's appender and returns at once. A failure is
    /// logged and counted, never returned: the state change it reports has happened.
    pub async fn emit(&self, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let now = now_ms();
        let body = event.to_json(&id, now, &inner.node);
        let shard = event_shard(&event.order_key()) as usize;
        let Some(appender) = inner.appenders.get(shard) else {
            return;
        };
        inner.pending.fetch_add(1, Ordering::AcqRel);
        if appender.try_send((body, now, event.kind.as_str())).is_err() {
            inner.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                kind = event.kind.as_str(),
                "webhook event lost: its shard's backlog is full"
            );
            inner
                .metrics
                .webhooks
                .events
                .with_label_values(&["lost"])
                .inc();
        }
    }

    /// Queues events in order.
    pub async fn emit_all(&self, events: Vec<Event>) {
        for event in events {
            self.emit(event).await;
        }
    }

    /// Waits until every event emitted so far is appended (or given up on), at most
    /// `within`: the drain's step before its last deliveries.
    pub async fn flushed(&self, within: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        let deadline = tokio::time::Instant::now() + within;
        while inner.pending.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One shard's appender: appends its events in the order they were emitted, each retried
/// with backoff before the next (so a retry never lands after a later event).
async fn append(
    mut inbox: mpsc::Receiver<(String, u64, &'static str)>,
    queue: Arc<dyn EventQueue>,
    name: String,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let series = &metrics.webhooks;
    while let Some((body, now, kind)) = inbox.recv().await {
        for attempt in 1..=APPEND_ATTEMPTS {
            match queue.append_event(&name, &body, now).await {
                Ok(()) => {
                    series.events.with_label_values(&["queued"]).inc();
                    break;
                }
                Err(e) if attempt == APPEND_ATTEMPTS => {
                    tracing::warn!(error = %e, kind, "webhook event lost: not queued");
                    series.events.with_label_values(&["lost"]).inc();
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
            }
        }
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}
