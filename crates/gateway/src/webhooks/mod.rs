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
//! in the same script. [`Webhooks::emit`] hands the event to the shard's appender task (one per
//! shard, so a shard's events are appended in the order they were made, and a queue shard
//! whose primary is down holds up no other shard) and waits for the append, at most
//! [`EMIT_WAIT`], before the op answers: a change the client has seen acknowledged is queued
//! before any change it causes next, through any node (join through one gateway, then close
//! through another: `member_joined` comes first). A node that dies before the append loses
//! those events (see docs/webhooks.md, "Guarantees").
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
use tokio::sync::{mpsc, oneshot};

/// Attempts at appending one event before it is counted lost.
const APPEND_ATTEMPTS: u32 = 5;
/// Events waiting for their shard's appender; past this a new event is counted lost (the
/// queue's Redis primary has been unreachable for a while).
const APPENDER_BACKLOG: usize = 10_000;
/// How long an op waits for its events to be queued before it answers anyway: normally one
/// Redis round trip; longer only while the queue's primary is unreachable, when the op goes
/// on and the event, appended later, may land after the next change's.
pub const EMIT_WAIT: Duration = Duration::from_secs(1);

/// What a shard's appender is handed: the event's JSON, when it was made, its type (for the
/// logs), and who waits for the append.
type Queued = (String, u64, &'static str, oneshot::Sender<()>);

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
    /// Per shard: the appender's inbox.
    appenders: Vec<mpsc::Sender<Queued>>,
    /// Events handed to an appender and not yet appended (or given up on).
    pending: Arc<AtomicUsize>,
    node: String,
    metrics: Arc<Metrics>,
}

impl Inner {
    /// Hands one event to its shard's appender; what resolves once it is appended (or given
    /// up on), unless it was lost at once.
    fn hand_over(&self, event: Event) -> Option<oneshot::Receiver<()>> {
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let now = now_ms();
        let body = event.to_json(&id, now, &self.node);
        let shard = event_shard(&event.order_key()) as usize;
        let appender = self.appenders.get(shard)?;
        let (done, appended) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::AcqRel);
        if appender
            .try_send((body, now, event.kind.as_str(), done))
            .is_err()
        {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                kind = event.kind.as_str(),
                "webhook event lost: its shard's backlog is full"
            );
            self.metrics
                .webhooks
                .events
                .with_label_values(&["lost"])
                .inc();
            return None;
        }
        Some(appended)
    }
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

    /// Queues `event`: hands it to its shard's appender and waits until it is appended (or
    /// given up on), at most [`EMIT_WAIT`]. A failure is logged and counted, never returned:
    /// the state change it reports has happened.
    pub async fn emit(&self, event: Event) {
        self.emit_all(vec![event]).await;
    }

    /// Queues events in order, and waits for all of them as [`Webhooks::emit`] does.
    pub async fn emit_all(&self, events: Vec<Event>) {
        let Some(inner) = &self.inner else {
            return;
        };
        let mut appended = Vec::with_capacity(events.len());
        for event in events {
            if let Some(done) = inner.hand_over(event) {
                appended.push(done);
            }
        }
        if appended.is_empty() {
            return;
        }
        let all = futures_util::future::join_all(appended);
        if tokio::time::timeout(EMIT_WAIT, all).await.is_err() {
            tracing::debug!("webhook events not queued yet; the op goes on");
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
    mut inbox: mpsc::Receiver<Queued>,
    queue: Arc<dyn EventQueue>,
    name: String,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let series = &metrics.webhooks;
    while let Some((body, now, kind, done)) = inbox.recv().await {
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
        // The op may have stopped waiting: nobody to tell then.
        let _ = done.send(());
    }
}
