//! Delivery: one worker per queue shard on every node; a worker works its shard while its
//! node holds the shard's lease (room-state's lease, as the archiver's shards), so a shard has
//! one reader and one batch in flight, which is what keeps events in order per room.
//!
//! A worker's round: read up to `--webhook-batch` events from the head of the shard's queue,
//! POST them as one JSON array, and remove them only after a 2xx. Any other answer, a
//! timeout or a refused connection retries the same batch after a backoff (doubling from
//! [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], with jitter), so a later event of the shard never
//! overtakes an earlier one. A node killed mid-batch leaves the batch at the head; its lease
//! lapses after [`LEASE_TTL`] and another node's worker sends the batch again (at least once:
//! the app dedupes by event id).

use super::post::Poster;
use super::queue_name;
use crate::clock::now_ms;
use crate::node::Node;
use parking_lot::Mutex;
use room_state::EVENT_SHARDS;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A shard's lease lasts this long without renewal: how long a killed node's shards wait.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// The longest `--webhook-timeout`: a POST must end within what is left of the lease after a
/// renewal, so a live, connected node never loses its shard mid-POST (two nodes delivering
/// one shard at once would duplicate and could reorder a room's events).
pub const MAX_POST_TIMEOUT: Duration = LEASE_TTL.saturating_sub(LEASE_RENEW);
/// How often a held lease is renewed and a free one tried.
pub const LEASE_RENEW: Duration = Duration::from_secs(2);
/// How often an empty queue is read again.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Backoff after a failed POST, doubled up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The running workers, stopped by [`Delivery::stop`].
pub struct Delivery {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Delivery")
    }
}

/// The lease of queue shard `shard`: whoever holds it delivers the shard.
fn lease_name(shard: u64) -> String {
    format!("webhook:{shard}")
}

/// Starts the workers when `--webhook-url` is set. Without it, on Redis Cluster, checks
/// once whether other nodes deliver webhooks ([`warn_if_on_elsewhere`]).
pub fn start(node: &Arc<Node>) -> Option<Delivery> {
    let Some(url) = node.config.webhook_url.as_ref() else {
        if !node.config.redis_cluster.is_empty() {
            tokio::spawn(warn_if_on_elsewhere(node.clone()));
        }
        return None;
    };
    let url = url.parse::<hyper::Uri>().ok()?;
    let poster = Arc::new(Poster::new(
        url,
        node.config.webhook_secret.clone(),
        node.config.webhook_timeout,
    ));
    let (stop, stop_rx) = watch::channel(false);
    let oldest = Arc::new(Mutex::new(vec![0u64; EVENT_SHARDS as usize]));
    let tasks = (0..EVENT_SHARDS)
        .map(|shard| {
            let worker = Worker {
                node: node.clone(),
                poster: poster.clone(),
                shard,
                oldest: oldest.clone(),
            };
            tokio::spawn(worker.run(stop_rx.clone()))
        })
        .collect();
    Some(Delivery { stop, tasks })
}

/// How many times a node without `--webhook-url` reads the webhook leases at start, one
/// [`LEASE_RENEW`] apart, while the backend does not answer.
const ELSEWHERE_ATTEMPTS: u32 = 30;

/// A node without `--webhook-url` in a cluster whose other nodes have it queues none of its
/// events (its connections' joins, leaves, online / offline, its rooms' creations, and the
/// departures of the dead nodes it happens to reap), and nothing in the cluster can tell the
/// app they are missing: so say it in this node's log, once, at start. Other nodes deliver
/// webhooks when some queue shard's lease is held. Read after one renewal period, so that
/// nodes started together have taken their leases.
async fn warn_if_on_elsewhere(node: Arc<Node>) {
    let feed = node.backends.archive_feed.clone();
    for _ in 0..ELSEWHERE_ATTEMPTS {
        tokio::time::sleep(LEASE_RENEW).await;
        let mut holders = Vec::new();
        let mut answered = true;
        for shard in 0..EVENT_SHARDS {
            match feed.lease_holder(&lease_name(shard), now_ms()).await {
                Ok(Some(holder)) => holders.push(holder),
                Ok(None) => {}
                Err(_) => {
                    answered = false;
                    break;
                }
            }
        }
        if !answered {
            continue;
        }
        if let Some(holder) = holders.first() {
            tracing::warn!(
                shards = holders.len(),
                %holder,
                "webhooks are on in this cluster but not on this node (no --webhook-url): \
                 the events of its connections and rooms, and of the dead nodes it reaps, \
                 will be missing; start every node with the same --webhook-url"
            );
        }
        return;
    }
}

impl Delivery {
    /// The drain's last stage: each worker sends what its shard holds while the app accepts
    /// it, then gives its lease up so that another node takes the shard at once. Waits at most
    /// `within`; what is left stays queued for the next lease holder.
    pub async fn stop(self, node: &Node, within: Duration) {
        // First what the closing connections emitted reaches the queue.
        let deadline = tokio::time::Instant::now() + within;
        node.webhooks.flushed(within / 2).await;
        let within = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("webhook delivery did not finish in time; the rest stays queued");
        }
    }
}

struct Worker {
    node: Arc<Node>,
    poster: Arc<Poster>,
    shard: u64,
    /// Per shard: when its oldest queued event was appended (ms; 0 = none or not held), for
    /// the lag gauge, which is the oldest over the shards this node works.
    oldest: Arc<Mutex<Vec<u64>>>,
}

impl Worker {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let lease = lease_name(self.shard);
        let queue = queue_name(self.shard);
        let feed = self.node.backends.archive_feed.clone();
        let events = self.node.backends.events.clone();
        let series = &self.node.metrics.webhooks;
        let batch = self.node.config.webhook_batch;
        // Spread the workers' first lease attempts a little over the first renewal period.
        let mut next_renew = Instant::now() + LEASE_RENEW.mul_f64(fastrand::f64() / 4.0);
        let mut held_until: Option<Instant> = None;
        let mut retry_at = Instant::now();
        // The last POST failed: a drain does not try it again (the next holder will).
        let mut failing = false;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let stopping = *stop.borrow();
            let now = Instant::now();
            if now >= next_renew {
                if stopping && held_until.is_none() {
                    return;
                }
                let was_held = held_until.is_some_and(|t| t > now);
                let ttl = LEASE_TTL.as_millis() as u64;
                match feed.lease(&lease, &self.node.id, ttl, now_ms()).await {
                    // Counted from before the call: a margin for the round trip.
                    Ok(true) => held_until = Some(now + LEASE_TTL - LEASE_RENEW),
                    Ok(false) => held_until = None,
                    Err(e) => {
                        tracing::debug!(error = %e, shard = self.shard, "webhook lease not renewed")
                    }
                }
                let is_held = held_until.is_some_and(|t| t > now);
                if is_held != was_held {
                    if is_held {
                        series.shards_held.inc();
                    } else {
                        series.shards_held.dec();
                        self.set_oldest(0);
                    }
                }
                next_renew = now + LEASE_RENEW;
            }
            let held = held_until.is_some_and(|t| t > Instant::now());
            if !held {
                if stopping {
                    return;
                }
                sleep_until(next_renew, &mut stop).await;
                continue;
            }
            if Instant::now() < retry_at {
                if stopping && failing {
                    break;
                }
                // Draining and only idle: read now what the closing connections queued.
                if stopping {
                    retry_at = Instant::now();
                    continue;
                }
                sleep_until(retry_at.min(next_renew), &mut stop).await;
                continue;
            }
            let head = match events.read_events(&queue, batch).await {
                Ok(head) => head,
                Err(e) => {
                    tracing::debug!(error = %e, shard = self.shard, "webhook queue not read");
                    failing = true;
                    retry_at = Instant::now() + IDLE_POLL;
                    continue;
                }
            };
            failing = false;
            self.set_oldest(head.first().map_or(0, |e| e.appended_ms));
            if head.is_empty() {
                if stopping {
                    break;
                }
                retry_at = Instant::now() + IDLE_POLL;
                continue;
            }
            let bodies: Vec<&str> = head.iter().map(|e| e.body.as_str()).collect();
            match self.poster.post(&bodies).await {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    failing = false;
                    series.delivered.inc_by(head.len() as u64);
                    let entries: Vec<String> = head.into_iter().map(|e| e.entry).collect();
                    if let Err(e) = events.ack_events(&queue, &entries).await {
                        // Sent again next round: a duplicate, which the ids let the app drop.
                        tracing::warn!(error = %e, shard = self.shard, "delivered webhook batch not removed; it will be sent again");
                        failing = true;
                        retry_at = Instant::now() + IDLE_POLL;
                    }
                }
                Err(e) => {
                    series.failures.inc();
                    failing = true;
                    tracing::warn!(error = %e, shard = self.shard, events = bodies.len(), ?backoff, "webhook POST failed; retrying");
                    if stopping {
                        break;
                    }
                    retry_at = Instant::now() + jittered(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Stopping with the lease: hand the shard over now rather than after its TTL.
        if let Err(e) = feed.release_lease(&lease, &self.node.id).await {
            tracing::debug!(error = %e, shard = self.shard, "webhook lease not released; it lapses");
        }
        series.shards_held.dec();
        self.set_oldest(0);
    }

    fn set_oldest(&self, appended_ms: u64) {
        let mut oldest = self.oldest.lock();
        if let Some(slot) = oldest.get_mut(self.shard as usize) {
            *slot = appended_ms;
        }
        let min = oldest.iter().copied().filter(|&t| t > 0).min();
        drop(oldest);
        let lag_ms = min.map_or(0, |t| now_ms().saturating_sub(t));
        self.node
            .metrics
            .webhooks
            .lag_seconds
            .set((lag_ms / 1000) as i64);
    }
}

/// Half the backoff plus a random part of the other half: nodes retrying after one outage do
/// not all come back at once.
fn jittered(backoff: Duration) -> Duration {
    backoff / 2 + backoff.mul_f64(fastrand::f64() / 2.0)
}

/// Sleeps until `at`, or until the drain starts.
async fn sleep_until(at: Instant, stop: &mut watch::Receiver<bool>) {
    if *stop.borrow() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(at) => {}
        changed = stop.changed() => {
            // The sender is gone (the node was dropped without a drain): just sleep.
            if changed.is_err() {
                tokio::time::sleep_until(at).await;
            }
        }
    }
}
