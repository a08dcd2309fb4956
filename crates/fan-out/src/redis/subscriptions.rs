//! Receiving: the read loop that hands each message to its room's worker, and the manager that
//! keeps the subscriptions (new ones batched by slot, retries, lazy unsubscribes, the
//! backstop resubscribe).

use super::worker::Job;
use super::Inner;
use fred::interfaces::{EventInterface, PubsubInterface};
use fred::types::config::Server;
use fred::types::Value;
use protocol::channel;
use protocol::envelope::Envelope;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Groups channels by hash slot: Redis refuses an SSUBSCRIBE across slots.
pub(super) fn by_slot(channels: impl IntoIterator<Item = String>) -> BTreeMap<u16, Vec<String>> {
    let mut groups: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for c in channels {
        groups
            .entry(fred::util::redis_keyslot(c.as_bytes()))
            .or_default()
            .push(c);
    }
    groups
}

/// Slot groups subscribed at once. fred pipelines concurrent commands on the connection, so a
/// resubscribe of thousands of rooms costs a few round trips rather than one per group.
const GROUPS_IN_FLIGHT: usize = 64;

impl Inner {
    /// SSUBSCRIBEs `channels`, by slot group, `GROUPS_IN_FLIGHT` groups at a time. A group
    /// that fails is kept for the manager's next tick (not the next backstop resubscribe,
    /// which is far away). Returns how many channels were subscribed.
    pub(super) async fn ssubscribe_grouped(&self, channels: Vec<String>) -> usize {
        let mut done = 0;
        let mut groups = by_slot(channels).into_values();
        loop {
            let mut set = tokio::task::JoinSet::new();
            for group in groups.by_ref().take(GROUPS_IN_FLIGHT) {
                let subscriber = self.subscriber.clone();
                set.spawn(async move {
                    let r = subscriber.ssubscribe(group.clone()).await;
                    (group, r)
                });
            }
            if set.is_empty() {
                return done;
            }
            while let Some(joined) = set.join_next().await {
                let Ok((group, r)) = joined else { continue };
                match r {
                    Ok(()) => done += group.len(),
                    Err(e) => {
                        tracing::debug!(error = %e, "ssubscribe failed; retrying shortly");
                        self.failed_subs.lock().extend(group);
                    }
                }
            }
        }
    }

    /// Subscribes again to everything this node wants, and counts it.
    pub(super) async fn resubscribe_all(&self) {
        let n = self.ssubscribe_grouped(self.all_channels()).await;
        self.pubsub.resubscribed(n as u64);
    }

    /// Subscribes again to the channels whose SSUBSCRIBE failed, if still wanted.
    async fn retry_failed(&self) {
        let failed: Vec<String> = std::mem::take(&mut *self.failed_subs.lock());
        if failed.is_empty() {
            return;
        }
        let wanted: std::collections::HashSet<String> = self.all_channels().into_iter().collect();
        let mut retry: Vec<String> = failed.into_iter().filter(|c| wanted.contains(c)).collect();
        retry.sort();
        retry.dedup();
        self.ssubscribe_grouped(retry).await;
    }
}

/// Receives every pub/sub message. Never awaits anything but the next message.
pub(super) async fn read_loop(inner: Arc<Inner>) {
    let mut rx = inner.subscriber.message_rx();
    loop {
        let msg = match rx.recv().await {
            Ok(msg) => msg,
            Err(RecvError::Lagged(n)) => {
                // Lost inside fred's event channel: counted; the gap repair recovers them.
                inner.pubsub.pubsub_dropped(n);
                continue;
            }
            Err(RecvError::Closed) => {
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
                let now = Instant::now();
                let was_overdue = inner.probes.lock().get_mut(channel).is_some_and(|seen| {
                    let overdue = now.duration_since(*seen) > inner.config.probe_timeout;
                    *seen = now;
                    overdue
                });
                if was_overdue {
                    // A shard that went silent and came back (a paused primary looks like
                    // this): what its owner holds now may differ from what was delivered.
                    let slot = fred::util::redis_keyslot(channel.as_bytes());
                    tracing::info!(
                        channel,
                        "self-probe back after being overdue; reconciling its shard"
                    );
                    inner.reconcile(inner.shard_of_slot(slot));
                }
            }
            continue;
        }
        let room = envelope
            .room()
            .or_else(|| channel::room_of(channel))
            .unwrap_or("");
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

/// After the subscriber reconnected to a node: subscribe again at once, and reconcile the rooms of the node's shard,
/// whose messages during the outage were lost on the way.
pub(super) async fn on_reconnect(inner: Arc<Inner>, mut rx: broadcast::Receiver<Server>) {
    loop {
        match rx.recv().await {
            Ok(server) => {
                tracing::info!(%server, "subscriber reconnected; resubscribing");
                inner.resubscribe_all().await;
                inner.reconcile(inner.slots_of_server(&server.to_string()));
            }
            Err(RecvError::Lagged(_)) => {
                inner.resubscribe_all().await;
                inner.reconcile(vec![(0, 16383)]);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// New subscriptions (batched by slot), retries of failed ones, lazy unsubscribes, and the
/// backstop resubscribe.
///
/// Resubscribing is driven by what can lose a subscription: a reconnect
/// ([`on_reconnect`]), a change of slot owners (`liveness::watch_router`,
/// `reconcile::watch_owners`) and an overdue self-probe (`liveness::probe_loop`). The
/// periodic pass here is only a backstop: re-sending every channel every 2 s was about 75 % of
/// an idle gateway's CPU with 3,000 rooms (docs/bench/findings.md).
pub(super) async fn manager(inner: Arc<Inner>, mut new_subs: mpsc::UnboundedReceiver<String>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut backstop = tokio::time::interval(inner.config.resubscribe_every);
    backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            Some(first) = new_subs.recv() => {
                let mut batch = vec![channel::room(&first)];
                while let Ok(room) = new_subs.try_recv() {
                    batch.push(channel::room(&room));
                }
                inner.ssubscribe_grouped(batch).await;
            }
            _ = tick.tick() => {
                inner.retry_failed().await;
                unsubscribe_due(&inner).await;
            }
            _ = backstop.tick() => inner.resubscribe_all().await,
        }
    }
}

/// Lets go of the rooms whose unsubscribe delay has passed with no local member back.
async fn unsubscribe_due(inner: &Inner) {
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
    for (_, group) in by_slot(due.iter().map(|r| channel::room(r))) {
        if let Err(e) = inner.subscriber.sunsubscribe(group).await {
            tracing::debug!(error = %e, "sunsubscribe failed");
        }
    }
}
