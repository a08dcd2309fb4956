//! Whether delivery works end to end: a self-probe through every shard, and a resubscribe on
//! every topology change the publishing clients see.

use super::Inner;
use fred::interfaces::{ClientLike, ClusterInterface, PubsubInterface};
use fred::types::{ClusterStateChange, Value};
use protocol::channel;
use protocol::envelope::Envelope;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;

/// A probe channel per primary, so each shard's delivery path is checked.
fn probe_channels(inner: &Inner) -> Vec<String> {
    let Some(state) = inner.publisher.next().cached_cluster_state() else {
        return Vec::new();
    };
    let mut channels = Vec::new();
    for range in state.slots() {
        for i in 0..100_000u32 {
            let channel = channel::probe(&inner.config.node_id, i);
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
pub(super) async fn probe_loop(inner: Arc<Inner>) {
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
        inner.ssubscribe_grouped(channels.clone()).await;
        let seq = inner.probe_seq.fetch_add(1, Ordering::Relaxed);
        let probe = Envelope::Probe {
            node: inner.config.node_id.clone(),
            seq,
        };
        let Ok(bytes) = probe.encode() else { continue };
        let published_all = publish_probes(&inner, &channels, bytes).await;
        let now = Instant::now();
        let overdue = inner
            .probes
            .lock()
            .values()
            .any(|seen| now.duration_since(*seen) > inner.config.probe_timeout);
        let healthy = published_all && !overdue;
        if inner.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            tracing::info!(healthy, "pub/sub self-probe changed");
        }
        if overdue {
            overdue_rounds += 1;
            inner.resubscribe_all().await;
            if overdue_rounds.is_multiple_of(3) {
                tracing::warn!("pub/sub silent after resubscribing; reconnecting the subscriber");
                let _ = inner.subscriber.force_reconnection().await;
            }
        } else {
            overdue_rounds = 0;
        }
    }
}

/// Publishes this round's probe on every probe channel. Returns whether every publish went
/// through (false with no channels: the cluster's layout is not known yet).
async fn publish_probes(inner: &Inner, channels: &[String], bytes: Vec<u8>) -> bool {
    let mut published_all = !channels.is_empty();
    for c in channels {
        let r: Result<Value, _> = inner
            .router
            .run(c, |client| {
                let bytes = bytes.clone();
                async move { client.spublish(c.as_str(), bytes).await }
            })
            .await;
        if r.is_err() {
            published_all = false;
        }
    }
    published_all
}

/// On a topology change seen by the publishing clients, resubscribe everything at once.
pub(super) async fn watch_topology(
    inner: Arc<Inner>,
    mut changes: broadcast::Receiver<Vec<ClusterStateChange>>,
) {
    loop {
        match changes.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {
                tracing::info!("cluster topology changed; resubscribing");
                inner.resubscribe_all().await;
                inner.reconcile_owner_changes().await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// On a slot owner change seen by the publishing router (its clients are per primary, so
/// fred's cluster-change events do not come from them), resubscribe everything at once.
pub(super) async fn watch_router(
    inner: Arc<Inner>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    while changes.changed().await.is_ok() {
        tracing::info!("slot owners changed; resubscribing");
        inner.resubscribe_all().await;
        inner.reconcile_owner_changes().await;
    }
}
