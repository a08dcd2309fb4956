//! Tail reconciliation after a change of a shard's owner.
//!
//! Pub/sub is at-most-once and a hard failover (a killed or paused primary) can lose or
//! rewrite acknowledged history, so after any change of owner the node compares the recent
//! tail of each local room on that shard with what the new owner holds:
//! - the owner holds offsets the node never delivered (publishes acknowledged by the new
//!   owner while this node still listened to the old one): they are delivered, in order;
//! - the owner lacks an offset the node delivered, or holds other content at it (the old
//!   primary accepted writes that were never replicated): the epoch is retired, so members
//!   see a new epoch instead of a silent gap or a second content for one offset.
//!
//! The comparison itself is [`crate::sequencer::Sequencer::reconcile`], run by the room's
//! worker (which owns the sequencer, so it stays in order with live messages). This task only
//! reads the tails. Bounded: rooms with local members only, at most [`TAIL`] offsets per room,
//! rooms read in slot order, [`BATCH`] at a time.
//!
//! Triggers: an owner change in `CLUSTER SLOTS` (read every probe interval by its own task,
//! and at once on a topology event of the publishing clients), a subscriber reconnect, and a shard's self-probe coming back
//! after being overdue (what a paused primary looks like).

use super::worker::Job;
use super::Inner;
use fred::interfaces::ClusterInterface;
use fred::types::Value;
use protocol::channel;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Offsets per room compared with the owner.
pub(super) const TAIL: usize = 32;
/// Rooms whose tails are read at once.
const BATCH: usize = 64;
/// Reads that failed (the new owner not reachable yet) are retried this often, this many times.
const RETRY_EVERY: Duration = Duration::from_secs(1);
const ATTEMPTS: u32 = 10;
/// Triggers within this window make one pass (a failover raises several events).
const SETTLE: Duration = Duration::from_millis(200);
/// When the second reconcile pass after an owner change runs (plus the probe timeout): by
/// then a failover has settled and what was published during the move is in the history.
const SECOND_PASS_AFTER: Duration = Duration::from_secs(2);

/// Slots to reconcile: inclusive ranges.
pub(super) type Slots = Vec<(u16, u16)>;

/// A request for a pass over some slots.
pub(super) struct Request {
    slots: Slots,
    attempt: u32,
}

/// A slot range and the primary that owns it, as the publishing clients last saw it.
pub(super) type Owners = Vec<(u16, u16, String)>;

/// The owners as a `CLUSTER SLOTS` reply lists them (parsed by `redis_cluster`). `None` on a
/// reply of another shape.
fn parse_slots(reply: Value) -> Option<Owners> {
    let mut owners: Owners = redis_cluster::parse_slots(reply, "")?
        .into_iter()
        .map(|(start, end, host, port)| (start, end, format!("{host}:{port}")))
        .collect();
    owners.sort();
    Some(owners)
}

impl Inner {
    /// Asks for a reconcile of the local rooms in `slots`.
    pub(super) fn reconcile(&self, slots: Slots) {
        if !slots.is_empty() {
            let _ = self.reconcile_tx.send(Request { slots, attempt: 0 });
        }
    }

    /// Reads the slots' owners from the cluster (`CLUSTER SLOTS`, not fred's cached routing,
    /// which a graceful failover leaves stale until some command meets a MOVED) and
    /// reconciles the slots whose owner changed since the last read.
    pub(super) async fn reconcile_owner_changes(&self) {
        let reply: Result<Value, _> = self.publisher.next().cluster_slots().await;
        let Some(now) = reply.ok().and_then(parse_slots) else {
            return;
        };
        if now.is_empty() {
            return;
        }
        let changed: Slots = {
            let mut known = self.owners.lock();
            if *known == now {
                return;
            }
            let changed = if known.is_empty() {
                // The first view: nothing to compare with.
                Vec::new()
            } else {
                now.iter()
                    .filter(|o| !known.contains(o))
                    .map(|(start, end, _)| (*start, *end))
                    .collect()
            };
            *known = now;
            changed
        };
        if !changed.is_empty() {
            tracing::info!(?changed, "shard owners changed; reconciling local rooms");
            self.reconcile(changed.clone());
            // Once more, later (the pass resubscribes first, then reads): a message published
            // while the subscription was moving to the new owner, and not followed by another
            // (nothing reveals that gap), is in the owner's history by then.
            let tx = self.reconcile_tx.clone();
            let later = SECOND_PASS_AFTER + self.config.probe_timeout;
            tokio::spawn(async move {
                tokio::time::sleep(later).await;
                let _ = tx.send(Request {
                    slots: changed,
                    attempt: 0,
                });
            });
        }
    }

    /// The slot range of the shard that holds `slot` (the whole keyspace when the cluster's
    /// layout is not known yet).
    pub(super) fn shard_of_slot(&self, slot: u16) -> Slots {
        let range = self
            .owners
            .lock()
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(start, end, _)| (*start, *end));
        vec![range.unwrap_or((0, 16383))]
    }

    /// The slot ranges a primary `server` (`host:port`) owned when last seen.
    pub(super) fn slots_of_server(&self, server: &str) -> Slots {
        self.owners
            .lock()
            .iter()
            .filter(|(_, _, owner)| owner == server)
            .map(|(start, end, _)| (*start, *end))
            .collect()
    }
}

/// Reads the owners every `probe_every`, in a task of its own: a read that waits on a paused
/// node delays nothing else.
pub(super) async fn watch_owners(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.probe_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inner.reconcile_owner_changes().await;
    }
}

/// Runs reconcile passes as they are asked for, merging requests that come close together.
pub(super) async fn run(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Request>) {
    while let Some(first) = rx.recv().await {
        tokio::time::sleep(SETTLE).await;
        let mut slots = first.slots;
        let mut attempt = first.attempt;
        while let Ok(more) = rx.try_recv() {
            slots.extend(more.slots);
            attempt = attempt.min(more.attempt);
        }
        // Subscribe first (on the new owner), then read: what is published after the read
        // arrives live, what was published before is in the tail.
        inner.resubscribe_all().await;
        let failed = pass(&inner, &slots).await;
        if !failed.is_empty() && attempt + 1 < ATTEMPTS {
            let tx = inner.reconcile_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RETRY_EVERY).await;
                let _ = tx.send(Request {
                    slots: failed,
                    attempt: attempt + 1,
                });
            });
        }
    }
}

/// One pass: reads the tails of the local rooms in `slots` and hands each to its room's
/// worker. Returns the slots of the rooms whose tail could not be read.
async fn pass(inner: &Arc<Inner>, slots: &[(u16, u16)]) -> Slots {
    let in_scope = |slot: u16| slots.iter().any(|(a, b)| (*a..=*b).contains(&slot));
    let mut rooms: Vec<(u16, String)> = inner
        .wanted
        .lock()
        .keys()
        .filter(|room| inner.registry.has_room(room))
        .map(|room| {
            let slot = fred::util::redis_keyslot(channel::room(room).as_bytes());
            (slot, room.clone())
        })
        .filter(|(slot, _)| in_scope(*slot))
        .collect();
    rooms.sort();
    let mut failed: Slots = Vec::new();
    let (mut delivered, mut total) = (0usize, rooms.len());
    for batch in rooms.chunks(BATCH) {
        let read_at = Instant::now();
        let mut reads = JoinSet::new();
        for (slot, room) in batch.iter().cloned() {
            let history = inner.history.clone();
            reads.spawn(async move {
                let tail = history.tail(&room, TAIL).await;
                (slot, room, tail)
            });
        }
        while let Some(read) = reads.join_next().await {
            let Ok((slot, room, tail)) = read else {
                continue;
            };
            match tail {
                Ok(Some(tail)) => {
                    let job = Job::Reconcile {
                        room: room.clone(),
                        tail,
                        read_at,
                    };
                    if inner.worker_for(&room).send(job).await.is_ok() {
                        delivered += 1;
                    }
                }
                Ok(None) => total -= 1,
                Err(e) => {
                    tracing::debug!(room, error = %e, "tail read failed; retrying");
                    failed.push((slot, slot));
                }
            }
        }
    }
    if total > 0 {
        tracing::info!(
            rooms = total,
            compared = delivered,
            failed = failed.len(),
            "reconciled local rooms with their shards' owners"
        );
    }
    failed
}
