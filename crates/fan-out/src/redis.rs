//! The Redis Cluster adapter: sharded pub/sub (SSUBSCRIBE/SPUBLISH), one channel per room.
//!
//! - A node subscribes to a room's channel while it has local members, and unsubscribes
//!   lazily, `unsubscribe_delay` after the last one left, so join/leave churn costs nothing.
//!   New subscriptions are batched per hash slot (Redis refuses cross-slot SSUBSCRIBE).
//! - The read loop never blocks: each message goes into a bounded queue of one of a few
//!   workers, picked by room, which keeps per-room order. A full queue drops and counts.
//! - Workers check offset continuity per room ([`Sequencer`]): duplicates are dropped and a
//!   gap is repaired from the room's history before the next message goes out.
//! - Liveness: every `reconcile_every` the node re-SSUBSCRIBEs every channel it wants, which
//!   recovers from the silent loss fred 10.1 suffers after a failover (Redis pushes an
//!   unrequested `sunsubscribe` that fred drops). A self-probe per shard detects a
//!   subscription that went silent anyway and feeds readiness.

use crate::adapter::{FanOut, FanOutError};
use crate::dispatch::{deliver, DeliveryHooks, PubSubHooks};
use crate::registry::Registry;
use crate::sequencer::{Sequencer, Verdict};
use async_trait::async_trait;
use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::{ClientLike, ClusterInterface, EventInterface, PubsubInterface};
use fred::types::Value;
use parking_lot::Mutex;
use protocol::envelope::Envelope;
use protocol::frame::Publication;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Reads missed messages back from a room's history.
#[async_trait]
pub trait HistoryReader: Send + Sync {
    /// Messages of `room` with `after < offset < before`, oldest first, as far as history
    /// still holds them.
    async fn range(&self, room: &str, after: u64, before: u64) -> Result<Vec<Publication>, String>;

    /// Retires an epoch whose offsets are being reused, so members see a new epoch.
    async fn retire_epoch(&self, room: &str, epoch: &str) -> Result<(), String>;
}

/// Repairs from a room store's own history: what the gateway uses.
pub struct StoreHistory(pub Arc<dyn room_state::RoomStore>);

#[async_trait]
impl HistoryReader for StoreHistory {
    async fn range(&self, room: &str, after: u64, before: u64) -> Result<Vec<Publication>, String> {
        let wanted = before.saturating_sub(after + 1) as usize;
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let (messages, _) = self
            .0
            .history(room, None, wanted, Some(before))
            .await
            .map_err(|e| e.to_string())?;
        Ok(messages.into_iter().filter(|p| p.offset > after).collect())
    }

    async fn retire_epoch(&self, room: &str, epoch: &str) -> Result<(), String> {
        self.0
            .reset_epoch(room, epoch)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Tuning of the adapter.
#[derive(Debug, Clone)]
pub struct RedisFanOutConfig {
    pub node_id: String,
    pub workers: usize,
    pub queue: usize,
    pub unsubscribe_delay: Duration,
    pub reconcile_every: Duration,
    pub probe_every: Duration,
    pub probe_timeout: Duration,
}

impl RedisFanOutConfig {
    pub fn new(node_id: &str) -> RedisFanOutConfig {
        RedisFanOutConfig {
            node_id: node_id.to_string(),
            workers: 4,
            queue: 4096,
            unsubscribe_delay: Duration::from_secs(1),
            reconcile_every: Duration::from_secs(2),
            probe_every: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
        }
    }
}

/// The channel every node listens on for node-wide envelopes.
pub const CONTROL_CHANNEL: &str = "rc:{ctl}:ch";

enum Job {
    Envelope(Envelope),
    Hint {
        room: String,
        epoch: String,
        offset: u64,
    },
    Forget(String),
}

struct Inner {
    subscriber: SubscriberClient,
    publisher: Pool,
    registry: Arc<Registry>,
    delivery: Arc<dyn DeliveryHooks>,
    pubsub: Arc<dyn PubSubHooks>,
    history: Arc<dyn HistoryReader>,
    config: RedisFanOutConfig,
    /// Rooms this node follows → when to unsubscribe (`None` while it has members).
    wanted: Mutex<HashMap<String, Option<Instant>>>,
    new_subs: mpsc::UnboundedSender<String>,
    workers: Vec<mpsc::Sender<Job>>,
    /// Probe channel → when a probe last came back.
    probes: Mutex<HashMap<String, Instant>>,
    healthy: AtomicBool,
    probe_seq: AtomicU64,
}

#[derive(Clone)]
pub struct RedisFanOut {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fnv(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn room_channel(room: &str) -> String {
    format!("rc:{{r:{room}}}:ch")
}

fn room_of(channel: &str) -> Option<&str> {
    channel.strip_prefix("rc:{r:")?.strip_suffix("}:ch")
}

fn by_slot(channels: impl IntoIterator<Item = String>) -> BTreeMap<u16, Vec<String>> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for c in channels {
        groups
            .entry(fred::util::redis_keyslot(c.as_bytes()))
            .or_default()
            .push(c);
    }
    groups
}

impl RedisFanOut {
    /// Connects the subscriber and starts the read loop, workers, subscription manager and
    /// probes.
    pub async fn start(
        subscriber: SubscriberClient,
        publisher: Pool,
        registry: Arc<Registry>,
        delivery: Arc<dyn DeliveryHooks>,
        pubsub: Arc<dyn PubSubHooks>,
        history: Arc<dyn HistoryReader>,
        config: RedisFanOutConfig,
    ) -> Result<RedisFanOut, FanOutError> {
        subscriber
            .init()
            .await
            .map_err(|e| FanOutError::Unavailable(e.to_string()))?;
        // Resubscribes after a hard failure (a reconnect). Soft failures are the reconcile's job.
        // The returned handle is only for joining; dropping it leaves the task running.
        drop(subscriber.manage_subscriptions());
        let (new_subs, new_subs_rx) = mpsc::unbounded_channel();
        let mut worker_rxs = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..config.workers.max(1) {
            let (tx, rx) = mpsc::channel(config.queue.max(1));
            workers.push(tx);
            worker_rxs.push(rx);
        }
        let inner = Arc::new(Inner {
            subscriber,
            publisher,
            registry,
            delivery,
            pubsub,
            history,
            config,
            wanted: Mutex::new(HashMap::new()),
            new_subs,
            workers,
            probes: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(false),
            probe_seq: AtomicU64::new(0),
        });
        for rx in worker_rxs {
            tokio::spawn(worker(inner.clone(), rx));
        }
        tokio::spawn(read_loop(inner.clone()));
        tokio::spawn(manager(inner.clone(), new_subs_rx));
        tokio::spawn(probe_loop(inner.clone()));
        for client in inner.publisher.clients() {
            tokio::spawn(watch_topology(inner.clone(), client.cluster_change_rx()));
        }
        if let Err(e) = inner.subscriber.ssubscribe(CONTROL_CHANNEL).await {
            tracing::warn!(error = %e, "control channel not subscribed yet; the reconcile will retry");
        }
        Ok(RedisFanOut { inner })
    }
}

impl Inner {
    fn worker_for(&self, room: &str) -> &mpsc::Sender<Job> {
        &self.workers[(fnv(room) % self.workers.len() as u64) as usize]
    }

    /// Every channel this node should be subscribed to.
    fn all_channels(&self) -> Vec<String> {
        let mut channels: Vec<String> =
            self.wanted.lock().keys().map(|r| room_channel(r)).collect();
        channels.push(CONTROL_CHANNEL.to_string());
        channels.extend(self.probes.lock().keys().cloned());
        channels
    }

    async fn ssubscribe_grouped(&self, channels: Vec<String>) -> usize {
        let mut done = 0;
        for (_, group) in by_slot(channels) {
            let n = group.len();
            match self.subscriber.ssubscribe(group).await {
                Ok(()) => done += n,
                Err(e) => {
                    tracing::debug!(error = %e, "ssubscribe failed; retrying at the next reconcile")
                }
            }
        }
        done
    }
}

/// Receives every pub/sub message. Never awaits anything but the next message.
async fn read_loop(inner: Arc<Inner>) {
    let mut rx = inner.subscriber.message_rx();
    loop {
        let msg = match rx.recv().await {
            Ok(msg) => msg,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Lost inside fred's event channel: counted; the gap repair recovers them.
                inner.pubsub.pubsub_dropped(n);
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                tracing::error!("pub/sub message channel closed");
                return;
            }
        };
        let channel: &str = &msg.channel;
        let bytes: &[u8] = match &msg.value {
            Value::Bytes(b) => b,
            Value::String(s) => s.as_bytes(),
            _ => continue,
        };
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(channel, error = %e, "undecodable envelope dropped");
                continue;
            }
        };
        if let Envelope::Probe { node, .. } = &envelope {
            if *node == inner.config.node_id {
                if let Some(seen) = inner.probes.lock().get_mut(channel) {
                    *seen = Instant::now();
                }
            }
            continue;
        }
        let room = envelope.room().or_else(|| room_of(channel)).unwrap_or("");
        tracing::debug!(channel, room, "envelope received");
        if inner
            .worker_for(room)
            .try_send(Job::Envelope(envelope))
            .is_err()
        {
            inner.pubsub.pubsub_dropped(1);
        }
    }
}

/// Delivers one room's messages in order, dropping duplicates and repairing gaps.
async fn worker(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>) {
    let mut seq = Sequencer::new();
    while let Some(job) = rx.recv().await {
        match job {
            Job::Hint {
                room,
                epoch,
                offset,
            } => seq.hint(&room, &epoch, offset),
            Job::Forget(room) => seq.forget(&room),
            Job::Envelope(Envelope::Message(p)) => {
                if !inner.registry.has_room(&p.room) {
                    continue;
                }
                match seq.check(&p) {
                    Verdict::Duplicate => inner.pubsub.duplicate(),
                    Verdict::Conflict => {
                        tracing::warn!(room = %p.room, epoch = %p.epoch, offset = p.offset, "offset reused after state loss; retiring the epoch");
                        inner.pubsub.conflict();
                        if let Err(e) = inner.history.retire_epoch(&p.room, &p.epoch).await {
                            tracing::warn!(room = %p.room, error = %e, "could not retire the epoch");
                        }
                        continue;
                    }
                    Verdict::Deliver => {}
                    Verdict::Gap { after } => {
                        match inner.history.range(&p.room, after, p.offset).await {
                            Ok(missing) => {
                                let mut n = 0;
                                for q in missing
                                    .into_iter()
                                    .filter(|q| q.epoch == p.epoch && q.offset > after)
                                {
                                    deliver(
                                        &inner.registry,
                                        &Envelope::Message(q.clone()),
                                        &*inner.delivery,
                                        now_ms(),
                                    );
                                    seq.delivered(&q);
                                    n += 1;
                                }
                                inner.pubsub.repaired(n);
                            }
                            Err(e) => {
                                tracing::warn!(room = %p.room, error = %e, "gap repair failed")
                            }
                        }
                    }
                }
                if matches!(seq.check(&p), Verdict::Deliver | Verdict::Gap { .. }) {
                    seq.delivered(&p);
                    deliver(
                        &inner.registry,
                        &Envelope::Message(p),
                        &*inner.delivery,
                        now_ms(),
                    );
                }
            }
            Job::Envelope(other) => {
                deliver(&inner.registry, &other, &*inner.delivery, now_ms());
                // A closed room has no local members left: let its subscription go.
                if let Envelope::RoomClosed { room, .. } = &other {
                    let due = Instant::now() + inner.config.unsubscribe_delay;
                    if let Some(at) = inner.wanted.lock().get_mut(room) {
                        *at = Some(due);
                    }
                }
            }
        }
    }
}

/// New subscriptions (batched by slot), lazy unsubscribes, and the periodic reconcile.
async fn manager(inner: Arc<Inner>, mut new_subs: mpsc::UnboundedReceiver<String>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut reconcile = tokio::time::interval(inner.config.reconcile_every);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(first) = new_subs.recv() => {
                let mut batch = vec![room_channel(&first)];
                while let Ok(room) = new_subs.try_recv() {
                    batch.push(room_channel(&room));
                }
                inner.ssubscribe_grouped(batch).await;
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let due: Vec<String> = {
                    let mut wanted = inner.wanted.lock();
                    let due: Vec<String> = wanted
                        .iter()
                        .filter(|(room, at)| at.is_some_and(|t| t <= now) && !inner.registry.has_room(room))
                        .map(|(room, _)| room.clone())
                        .collect();
                    for room in &due {
                        wanted.remove(room);
                    }
                    due
                };
                for room in &due {
                    let _ = inner.worker_for(room).send(Job::Forget(room.clone())).await;
                }
                for (_, group) in by_slot(due.iter().map(|r| room_channel(r))) {
                    if let Err(e) = inner.subscriber.sunsubscribe(group).await {
                        tracing::debug!(error = %e, "sunsubscribe failed");
                    }
                }
            }
            _ = reconcile.tick() => {
                let n = inner.ssubscribe_grouped(inner.all_channels()).await;
                inner.pubsub.resubscribed(n as u64);
            }
        }
    }
}

/// A probe channel per primary, so each shard's delivery path is checked.
fn probe_channels(inner: &Inner) -> Vec<String> {
    let Some(state) = inner.publisher.next().cached_cluster_state() else {
        return Vec::new();
    };
    let mut channels = Vec::new();
    for range in state.slots() {
        for i in 0..100_000u32 {
            let channel = format!("rc:{{probe:{}:{i}}}:ch", inner.config.node_id);
            let slot = fred::util::redis_keyslot(channel.as_bytes());
            if slot >= range.start && slot <= range.end {
                channels.push(channel);
                break;
            }
        }
    }
    channels
}

/// Publishes a probe to each shard and checks that each came back. Unhealthy (unready) while
/// any shard's probe is overdue; then resubscribes at once, and reconnects the subscriber if
/// that did not help.
async fn probe_loop(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.probe_every);
    let mut overdue_rounds = 0u32;
    loop {
        tick.tick().await;
        let channels = probe_channels(&inner);
        {
            let mut probes = inner.probes.lock();
            let now = Instant::now();
            probes.retain(|c, _| channels.contains(c));
            for c in &channels {
                probes.entry(c.clone()).or_insert(now);
            }
        }
        let fresh: Vec<String> = channels.clone();
        inner.ssubscribe_grouped(fresh).await;
        let seq = inner.probe_seq.fetch_add(1, Ordering::Relaxed);
        let probe = Envelope::Probe {
            node: inner.config.node_id.clone(),
            seq,
        };
        let Ok(bytes) = probe.encode() else { continue };
        let mut published_all = !channels.is_empty();
        for c in &channels {
            let r: Result<Value, _> = inner
                .publisher
                .next()
                .spublish(c.as_str(), bytes.clone())
                .await;
            if r.is_err() {
                published_all = false;
            }
        }
        let now = Instant::now();
        let overdue = {
            let probes = inner.probes.lock();
            probes
                .values()
                .any(|seen| now.duration_since(*seen) > inner.config.probe_timeout)
        };
        let healthy = published_all && !overdue;
        if inner.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            tracing::info!(healthy, "pub/sub self-probe changed");
        }
        if overdue {
            overdue_rounds += 1;
            let n = inner.ssubscribe_grouped(inner.all_channels()).await;
            inner.pubsub.resubscribed(n as u64);
            if overdue_rounds.is_multiple_of(3) {
                tracing::warn!("pub/sub silent after resubscribing; reconnecting the subscriber");
                let _ = inner.subscriber.force_reconnection().await;
            }
        } else {
            overdue_rounds = 0;
        }
    }
}

/// On a topology change seen by the command clients, resubscribe everything at once.
async fn watch_topology(
    inner: Arc<Inner>,
    mut changes: tokio::sync::broadcast::Receiver<Vec<fred::types::ClusterStateChange>>,
) {
    loop {
        match changes.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                tracing::info!("cluster topology changed; resubscribing");
                let n = inner.ssubscribe_grouped(inner.all_channels()).await;
                inner.pubsub.resubscribed(n as u64);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[async_trait]
impl FanOut for RedisFanOut {
    async fn publish(&self, envelope: Envelope) -> Result<(), FanOutError> {
        let channel = match envelope.room() {
            Some(room) => room_channel(room),
            None => CONTROL_CHANNEL.to_string(),
        };
        let bytes = envelope
            .encode()
            .map_err(|e| FanOutError::Unavailable(e.to_string()))?;
        let receivers: i64 = self
            .inner
            .publisher
            .next()
            .spublish(channel.as_str(), bytes)
            .await
            .map_err(|e| FanOutError::Unavailable(e.to_string()))?;
        tracing::debug!(channel, receivers, "envelope published");
        Ok(())
    }

    fn subscribe(&self, room: &str) {
        let previous = self.inner.wanted.lock().insert(room.to_string(), None);
        if previous.is_none() {
            let _ = self.inner.new_subs.send(room.to_string());
        }
    }

    fn unsubscribe(&self, room: &str) {
        let due = Instant::now() + self.inner.config.unsubscribe_delay;
        if let Some(at) = self.inner.wanted.lock().get_mut(room) {
            *at = Some(due);
        }
    }

    fn track(&self, room: &str, epoch: &str, offset: u64) {
        let job = Job::Hint {
            room: room.to_string(),
            epoch: epoch.to_string(),
            offset,
        };
        if self.inner.worker_for(room).try_send(job).is_err() {
            self.inner.pubsub.pubsub_dropped(0);
        }
    }

    fn subscribed(&self) -> usize {
        self.inner.wanted.lock().len()
    }

    fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }
}
