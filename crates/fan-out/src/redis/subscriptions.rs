//! Receiving: the read loop that hands each message to its room's worker, and the manager that
//! keeps the subscriptions (new ones batched by slot, retries, lazy unsubscribes, the
//! backstop that counts them and resubscribes when one is missing).

use super::worker::Job;
use super::Inner;
use fred::interfaces::{
    ClientInterface, ClientLike, ClusterInterface, EventInterface, PubsubInterface,
};
use fred::types::config::Server;
use fred::types::{ClusterHash, CustomCommand, Value};
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

    /// The backstop, every `resubscribe_every`: resubscribes everything when some primary
    /// holds fewer of this node's shard channels than the node wants there (or when that
    /// cannot be told), and every [`FULL_PASS_EVERY`]th pass regardless. Asking costs one
    /// `CLIENT LIST ID` per primary; re-sending every channel costs one SSUBSCRIBE per slot
    /// group, here and on Redis, which with thousands of rooms was most of an idle gateway's
    /// Redis work (docs/bench/findings.md).
    pub(super) async fn backstop(&self, pass: u64) {
        if pass.is_multiple_of(FULL_PASS_EVERY) {
            self.resubscribe_all().await;
            return;
        }
        match self.short_primary().await {
            Ok(None) => {}
            Ok(Some(short)) => {
                tracing::info!(%short, "a primary holds fewer of this node's subscriptions than it wants; resubscribing");
                self.resubscribe_all().await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "subscriptions not counted; resubscribing");
                self.resubscribe_all().await;
            }
        }
    }

    /// A primary whose connection from the subscriber holds fewer shard channels (`ssub` in
    /// `CLIENT LIST`) than this node wants on it, if any. Channels subscribed meanwhile may
    /// make it look short: that costs a resubscribe, never a miss.
    async fn short_primary(&self) -> Result<Option<Short>, String> {
        let routing = self
            .subscriber
            .cached_cluster_state()
            .ok_or("no cluster layout yet")?;
        let wanted = wanted_per_primary(self.all_channels(), |slot| {
            routing.get_server(slot).cloned()
        })?;
        let ids = self.subscriber.connection_ids();
        for (primary, wanted) in wanted {
            let Some(&id) = ids.get(&primary) else {
                return Ok(Some(Short {
                    primary: primary.to_string(),
                    held: 0,
                    wanted,
                }));
            };
            let line: String = self
                .publisher
                .next()
                .with_cluster_node(&primary)
                .custom(
                    CustomCommand::new_static("CLIENT", ClusterHash::Random, false),
                    vec!["LIST".to_string(), "ID".to_string(), id.to_string()],
                )
                .await
                .map_err(|e| e.to_string())?;
            let held = held_channels(&line)
                .ok_or_else(|| format!("no ssub for client {id} on {primary}: {line:?}"))?;
            if held < wanted {
                return Ok(Some(Short {
                    primary: primary.to_string(),
                    held,
                    wanted,
                }));
            }
        }
        Ok(None)
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

/// Every how many backstop passes everything is re-sent even when the counts agree: a count
/// cannot tell a lost channel from an unwanted one held in its place.
const FULL_PASS_EVERY: u64 = 10;

/// A primary found holding fewer of this node's channels than it wants there.
#[derive(Debug, PartialEq, Eq)]
struct Short {
    primary: String,
    held: usize,
    wanted: usize,
}

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} holds {} of {}", self.primary, self.held, self.wanted)
    }
}

/// How many distinct channels this node wants on each primary, by `owner` of each slot.
/// Errors when a slot has no known owner.
fn wanted_per_primary<P: Ord>(
    channels: Vec<String>,
    owner: impl Fn(u16) -> Option<P>,
) -> Result<BTreeMap<P, usize>, String> {
    let distinct: std::collections::BTreeSet<String> = channels.into_iter().collect();
    let mut wanted = BTreeMap::new();
    for (slot, group) in by_slot(distinct) {
        let primary = owner(slot).ok_or_else(|| format!("no owner known for slot {slot}"))?;
        *wanted.entry(primary).or_insert(0) += group.len();
    }
    Ok(wanted)
}

/// The `ssub` field (shard channels subscribed) of a `CLIENT LIST` line; `None` without one
/// (Redis before 7.0.3, or no such client).
fn held_channels(client_list: &str) -> Option<usize> {
    client_list
        .split_whitespace()
        .find_map(|field| field.strip_prefix("ssub="))
        .and_then(|n| n.parse().ok())
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
/// periodic pass here is only a backstop ([`Inner::backstop`]): re-sending every channel every
/// 2 s was about 75 % of an idle gateway's CPU with 3,000 rooms, and every 30 s still most of
/// its Redis work with 5,700 (docs/bench/findings.md); so it counts first.
pub(super) async fn manager(inner: Arc<Inner>, mut new_subs: mpsc::UnboundedReceiver<String>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut backstop = tokio::time::interval(inner.config.resubscribe_every);
    backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pass = 0u64;
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
            _ = backstop.tick() => {
                inner.backstop(pass).await;
                pass += 1;
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{FanOut, NoHooks, PubSubHooks, RedisFanOut, RedisFanOutConfig, Registry};
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn the_held_count_is_the_ssub_field() {
        let line = "id=275 addr=127.0.0.1:52992 laddr=127.0.0.1:7000 fd=31 name= age=145 \
                    idle=1 flags=P db=0 sub=0 psub=0 ssub=306 multi=-1 cmd=ssubscribe resp=2\n";
        assert_eq!(held_channels(line), Some(306));
        // Not `sub=` or `psub=`; nothing from a server without the field, or no client.
        assert_eq!(held_channels("id=1 sub=4 psub=2 cmd=subscribe"), None);
        assert_eq!(held_channels(""), None);
        assert_eq!(held_channels("ssub=x"), None);
    }

    #[test]
    fn channels_are_counted_once_per_owner_of_their_slot() {
        let channels: Vec<String> = ["a", "b", "c", "a", "{a}x"].map(String::from).to_vec();
        // Every slot below 8192 to one primary, the rest to another.
        let owner = |slot: u16| Some(if slot < 8192 { "p1" } else { "p2" });
        let wanted = wanted_per_primary(channels.clone(), owner).unwrap();
        let slot = |c: &str| fred::util::redis_keyslot(c.as_bytes());
        let in_p1 = ["a", "b", "c", "{a}x"]
            .iter()
            .filter(|c| slot(c) < 8192)
            .count();
        assert_eq!(wanted.get("p1").copied().unwrap_or(0), in_p1);
        assert_eq!(wanted.get("p2").copied().unwrap_or(0), 4 - in_p1);
        // A slot nobody owns cannot be counted.
        assert!(wanted_per_primary(channels, |_| None::<&str>).is_err());
    }

    /// Counts the channels resubscribed.
    #[derive(Default)]
    struct Resubscribed(AtomicU64);

    impl PubSubHooks for Resubscribed {
        fn resubscribed(&self, n: u64) {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// On a real cluster: a backstop pass that finds every channel held re-sends nothing; one
    /// lost behind the adapter's back (a silent SUNSUBSCRIBE, as Redis's unrequested one after
    /// a failover looks to fred) is found by the count and subscribed again.
    #[tokio::test]
    async fn the_backstop_resubscribes_only_when_a_primary_holds_too_few() {
        let Ok(urls) = std::env::var("ROOMCAST_TEST_REDIS_CLUSTER") else {
            println!("skipped: needs ROOMCAST_TEST_REDIS_CLUSTER (make test)");
            return;
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let node = format!("backstop-{nanos:x}");
        let mut config = RedisFanOutConfig::new(&node, urls.split(',').map(String::from).collect());
        // The passes are the test's own; the manager's timer only fires its first (full) one.
        config.resubscribe_every = Duration::from_secs(3600);
        let hooks = Arc::new(Resubscribed::default());
        let fanout = RedisFanOut::connect(
            config,
            Arc::new(Registry::new()),
            Arc::new(NoHooks),
            hooks.clone(),
            Arc::new(crate::testsuite::NoHistory),
        )
        .await
        .unwrap();
        let rooms: Vec<String> = (0..40).map(|i| format!("{node}-{i}")).collect();
        for room in &rooms {
            fanout.subscribe(room);
        }
        let inner = &fanout.inner;
        let all_held = async {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match inner.short_primary().await {
                    Ok(None) => return,
                    other => assert!(Instant::now() < deadline, "never all held: {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        all_held.await;

        let before = hooks.0.load(Ordering::Relaxed);
        inner.backstop(1).await;
        assert_eq!(
            hooks.0.load(Ordering::Relaxed),
            before,
            "nothing lost, nothing re-sent"
        );

        let lost = channel::room(&rooms[7]);
        inner.subscriber.sunsubscribe(lost.clone()).await.unwrap();
        let short = inner.short_primary().await.unwrap();
        assert!(short.is_some(), "the loss of {lost} is not seen");
        inner.backstop(2).await;
        assert!(hooks.0.load(Ordering::Relaxed) > before, "nothing re-sent");
        assert_eq!(inner.short_primary().await.unwrap(), None);
    }
}
