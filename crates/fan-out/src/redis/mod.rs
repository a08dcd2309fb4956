//! The Redis Cluster adapter: sharded pub/sub (SSUBSCRIBE/SPUBLISH), one channel per room,
//! named by `protocol::channel`.
//!
//! - A node subscribes to a room's channel while it has local members, and unsubscribes
//!   lazily, `unsubscribe_delay` after the last one left, so join/leave churn costs nothing.
//!   New subscriptions are batched per hash slot (Redis refuses cross-slot SSUBSCRIBE).
//! - The read loop never blocks: each message goes into a bounded queue of one of a few
//!   workers, picked by room, which keeps per-room order. A full queue drops and counts.
//! - Workers check offset continuity per room ([`crate::sequencer::Sequencer`]): duplicates
//!   are dropped and a gap is repaired from the room's history before the next message goes out.
//! - Liveness: the node re-SSUBSCRIBEs every channel it wants whenever a subscription may have
//!   been lost: the subscriber reconnected, a slot changed owner (fred 10.1 drops the
//!   unrequested `sunsubscribe` Redis pushes after a failover), or a shard's self-probe is
//!   overdue; and every `resubscribe_every` as a backstop. The self-probe per shard also
//!   feeds readiness.
//! - After a change of a shard's owner, the tail of every local room on that shard is
//!   compared with the new owner's history: missed offsets are delivered, a divergence
//!   retires the epoch (`reconcile`).
//!
//! Files: `client` builds the fred clients; `subscriptions` receives and keeps the
//! subscriptions; `worker` sequences and delivers; `liveness` probes and watches topology;
//! `reconcile` compares local rooms with a new owner's history; `emitter` is the classic
//! pub/sub subscriber for `@socket.io/redis-emitter` channels, apart from the rest.

mod client;
pub mod emitter;
mod liveness;
mod reconcile;
mod subscriptions;
mod worker;

use crate::adapter::{FanOut, FanOutError};
use crate::dispatch::{DeliveryHooks, PubSubHooks};
use crate::history::HistorySource;
use crate::registry::Registry;
use async_trait::async_trait;
use fred::clients::{Pool, SubscriberClient};
use fred::interfaces::{EventInterface, PubsubInterface};
use parking_lot::Mutex;
use protocol::channel;
use protocol::envelope::Envelope;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use worker::Job;

/// How to reach the cluster, and how to run the adapter.
#[derive(Debug, Clone)]
pub struct RedisFanOutConfig {
    /// Seed nodes, `redis://host:port`.
    pub urls: Vec<String>,
    /// Clients in the publishing pool (each holds a connection to every primary).
    pub pool_size: usize,
    /// A publish that takes longer fails.
    pub command_timeout: Duration,
    /// This node's id: its self-probes carry it.
    pub node_id: String,
    /// Delivery workers; a room always goes to the same one, which keeps its order.
    pub workers: usize,
    /// Messages each worker may have waiting before new ones are dropped (and counted).
    pub queue: usize,
    pub unsubscribe_delay: Duration,
    /// The backstop resubscribe of every channel; the real triggers are events (see above).
    pub resubscribe_every: Duration,
    pub probe_every: Duration,
    pub probe_timeout: Duration,
}

impl RedisFanOutConfig {
    pub fn new(node_id: &str, urls: Vec<String>) -> RedisFanOutConfig {
        RedisFanOutConfig {
            urls,
            pool_size: 2,
            command_timeout: Duration::from_secs(2),
            node_id: node_id.to_string(),
            workers: 4,
            queue: 4096,
            unsubscribe_delay: Duration::from_secs(1),
            resubscribe_every: Duration::from_secs(30),
            probe_every: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(3),
        }
    }
}

/// What the tasks of one adapter share.
struct Inner {
    subscriber: SubscriberClient,
    /// Watches the topology (cluster-change events, `CLUSTER SLOTS`, fred's cached routing).
    publisher: Pool,
    /// Publishes: one client per primary.
    router: redis_cluster::Router,
    registry: Arc<Registry>,
    delivery: Arc<dyn DeliveryHooks>,
    pubsub: Arc<dyn PubSubHooks>,
    history: Arc<dyn HistorySource>,
    config: RedisFanOutConfig,
    /// Rooms this node follows → when to unsubscribe (`None` while it has members).
    wanted: Mutex<HashMap<String, Option<Instant>>>,
    new_subs: mpsc::UnboundedSender<String>,
    /// Channels whose SSUBSCRIBE failed: the manager retries them on its next tick.
    failed_subs: Mutex<Vec<String>>,
    workers: Vec<mpsc::Sender<Job>>,
    /// Probe channel → when a probe last came back.
    probes: Mutex<HashMap<String, Instant>>,
    healthy: AtomicBool,
    probe_seq: AtomicU64,
    reconcile_tx: mpsc::UnboundedSender<reconcile::Request>,
    /// Slot ranges and their primaries, as last seen (owner changes trigger a reconcile).
    owners: Mutex<reconcile::Owners>,
}

#[derive(Clone)]
pub struct RedisFanOut {
    inner: Arc<Inner>,
}

impl RedisFanOut {
    /// Connects its own clients to the cluster and starts the read loop, workers,
    /// subscription manager and probes. Does not fail when the cluster is down: the adapter
    /// is unhealthy until it answers. Fails on settings that can never work (a bad URL).
    pub async fn connect(
        config: RedisFanOutConfig,
        registry: Arc<Registry>,
        delivery: Arc<dyn DeliveryHooks>,
        pubsub: Arc<dyn PubSubHooks>,
        history: Arc<dyn HistorySource>,
    ) -> Result<RedisFanOut, FanOutError> {
        let (subscriber, publisher, router) = client::connect(&config).await?;
        // Not fred's `manage_subscriptions`: its `resubscribe_all` sends SUBSCRIBE with no
        // channels first ("ERR wrong number of arguments for 'subscribe'") and stops there,
        // so it never resubscribed a shard channel. `subscriptions::on_reconnect` does it.
        let (new_subs, new_subs_rx) = mpsc::unbounded_channel();
        let (reconcile_tx, reconcile_rx) = mpsc::unbounded_channel();
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
            router,
            registry,
            delivery,
            pubsub,
            history,
            config,
            wanted: Mutex::new(HashMap::new()),
            new_subs,
            failed_subs: Mutex::new(Vec::new()),
            workers,
            probes: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(false),
            probe_seq: AtomicU64::new(0),
            reconcile_tx,
            owners: Mutex::new(Vec::new()),
        });
        for rx in worker_rxs {
            tokio::spawn(worker::run(inner.clone(), rx));
        }
        tokio::spawn(subscriptions::read_loop(inner.clone()));
        tokio::spawn(subscriptions::manager(inner.clone(), new_subs_rx));
        tokio::spawn(subscriptions::on_reconnect(
            inner.clone(),
            inner.subscriber.reconnect_rx(),
        ));
        tokio::spawn(reconcile::run(inner.clone(), reconcile_rx));
        tokio::spawn(reconcile::watch_owners(inner.clone()));
        tokio::spawn(liveness::probe_loop(inner.clone()));
        tokio::spawn(liveness::watch_router(
            inner.clone(),
            inner.router.changes(),
        ));
        for client in inner.publisher.clients() {
            tokio::spawn(liveness::watch_topology(
                inner.clone(),
                client.cluster_change_rx(),
            ));
        }
        if let Err(e) = inner.subscriber.ssubscribe(channel::CONTROL).await {
            tracing::warn!(error = %e, "control channel not subscribed yet; the reconcile will retry");
        }
        Ok(RedisFanOut { inner })
    }
}

impl Inner {
    /// The worker that handles `room`: always the same one, which keeps the room's order.
    fn worker_for(&self, room: &str) -> &mpsc::Sender<Job> {
        let n = protocol::hash::fnv1a(room.as_bytes()) % self.workers.len() as u64;
        &self.workers[n as usize]
    }

    /// Every channel this node should be subscribed to.
    fn all_channels(&self) -> Vec<String> {
        let mut channels: Vec<String> = self
            .wanted
            .lock()
            .keys()
            .map(|r| channel::room(r))
            .collect();
        channels.push(channel::CONTROL.to_string());
        channels.extend(self.probes.lock().keys().cloned());
        channels
    }

    /// Lets a room's subscription go after `unsubscribe_delay`, unless a member comes back.
    fn release_later(&self, room: &str) {
        let due = Instant::now() + self.config.unsubscribe_delay;
        if let Some(at) = self.wanted.lock().get_mut(room) {
            *at = Some(due);
        }
    }
}

#[async_trait]
impl FanOut for RedisFanOut {
    async fn publish(&self, envelope: Envelope) -> Result<(), FanOutError> {
        let channel = match envelope.room() {
            Some(room) => channel::room(room),
            None => channel::CONTROL.to_string(),
        };
        let bytes = envelope
            .encode()
            .map_err(|e| FanOutError::Unavailable(e.to_string()))?;
        let receivers: i64 = self
            .inner
            .router
            .run(&channel, |client| {
                let channel = channel.clone();
                let bytes = bytes.clone();
                async move { client.spublish(channel, bytes).await }
            })
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
        self.inner.release_later(room);
    }

    fn track(&self, room: &str, epoch: &str, offset: u64) {
        let job = Job::Hint {
            room: room.to_string(),
            epoch: epoch.to_string(),
            offset,
        };
        if self.inner.worker_for(room).try_send(job).is_err() {
            self.inner.pubsub.hint_dropped();
        }
    }

    fn subscribed(&self) -> usize {
        self.inner.wanted.lock().len()
    }

    fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }
}
