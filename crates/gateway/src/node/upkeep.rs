//! A node's upkeep, every `--traffic-interval` (and at once after a room creation), in four
//! concerns: its heartbeat (and whether its peers declared it dead), the cluster counters
//! behind the traffic level, the reaping of dead nodes, and readiness.

use super::Node;
use crate::clock::now_ms;
use crate::presence::announce;
use crate::reconnect::send_reconnect;
use crate::traffic::WINDOW_MS;
use crate::webhooks::{Cause, Event as Webhook, Kind};
use protocol::frame::{Event, PresenceAction};
use room_state::NodeInfo;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;

/// How often, in `--traffic-interval`s, a node compares what the backend holds for its
/// connections (user registry entries, room memberships) with its live connections: every
/// 30 s by default.
const RECONCILE_ROUNDS: u32 = 30;

/// The cluster-wide counters the traffic level is computed from.
struct Counters {
    /// Room creations per second over the window.
    buckets: Vec<(u64, u64)>,
    rooms: u64,
    /// Connections of every live node.
    connections: u64,
    live_nodes: usize,
}

impl Node {
    /// One upkeep round with a heartbeat first, for tests. The background upkeep
    /// ([`Node::run_upkeep`]) keeps the heartbeat on a beat of its own.
    pub async fn refresh_traffic(&self) {
        let now = now_ms();
        let heartbeat_ok = self.heartbeat(now).await;
        self.round(now, heartbeat_ok).await;
    }

    /// The rest of a round: counters, reaping, readiness, then the traffic status, pushed as
    /// `traffic_status` to every local client when the level changed. `heartbeat_ok`: whether
    /// this node's latest heartbeat went through.
    async fn round(&self, now: u64, heartbeat_ok: bool) {
        let counters = self.counters(now).await;
        let (true, Some(counters)) = (heartbeat_ok, counters) else {
            self.backend_ok.store(false, Ordering::Release);
            self.metrics.ready.set(0);
            self.metrics
                .backend_errors
                .with_label_values(&["traffic"])
                .inc();
            return;
        };
        self.clear_earlier_incarnations().await;
        let ttl = self.config.node_ttl.as_millis() as u64;
        let streak = self.heartbeat_streak_since_ms.load(Ordering::Acquire);
        if streak != 0 && now.saturating_sub(streak) >= ttl {
            self.reap_dead_nodes(now).await;
        }
        self.check_readiness().await;
        self.update_traffic(&counters, now);
        self.reconcile_leftovers(now).await;
    }

    /// Every [`RECONCILE_ROUNDS`] intervals: removes what this node's gone connections left behind
    /// because their removal at disconnect failed (through every retry: a backend cut off,
    /// or too loaded to answer, as when thousands of clients leave at once). Their user
    /// registry entries, so that an outage does not take places from users until the node
    /// restarts; and their room memberships, so that presence holds no ghost and the room
    /// can empty. Only connections issued before the previous round are judged: a
    /// connection being admitted right now is in the backend before it is local.
    async fn reconcile_leftovers(&self, now: u64) {
        let last = self.leftovers_reconciled_ms.load(Ordering::Acquire);
        let every = (self.config.traffic_interval * RECONCILE_ROUNDS).as_millis() as u64;
        if now.saturating_sub(last) < every {
            return;
        }
        self.leftovers_reconciled_ms.store(now, Ordering::Release);
        let seq_now = self.conn_seq.load(Ordering::Acquire);
        let floor = self
            .leftovers_reconciled_seq
            .swap(seq_now, Ordering::AcqRel);
        let local: std::collections::HashSet<Arc<str>> =
            self.registry.all().into_iter().map(|c| c.conn_id).collect();
        let prefix = format!("{}.", self.conn_id_prefix());
        // Earlier incarnations' connections are `clear_earlier_incarnations`' business.
        let gone = |conn_id: &str| {
            conn_id
                .strip_prefix(&prefix)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .is_some_and(|seq| seq <= floor && !local.contains(conn_id))
        };
        self.remove_gone_user_entries(&gone).await;
        match self
            .backends
            .rooms
            .remove_node_members(&self.id, &|conn| !gone(conn))
            .await
        {
            Ok(removed) => {
                if !removed.is_empty() {
                    tracing::info!(
                        members = removed.len(),
                        "room memberships of gone connections removed"
                    );
                }
                self.announce_leaves(removed).await;
            }
            Err(e) => tracing::debug!(error = %e, "membership reconcile skipped"),
        }
    }

    async fn remove_gone_user_entries(&self, gone: &(dyn Fn(&str) -> bool + Sync)) {
        let listed = match self.backends.users.node_user_conns(&self.id).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::debug!(error = %e, "user registry reconcile skipped");
                return;
            }
        };
        let mut removed = 0usize;
        for (user, conn_id) in listed {
            if !gone(&conn_id) {
                continue;
            }
            if let Ok(last) = self
                .backends
                .users
                .remove_user_conn(&user, &self.id, &conn_id)
                .await
            {
                removed += 1;
                if last {
                    let offline = Webhook::user(Kind::UserOffline, &user, &conn_id);
                    self.webhooks.emit(offline).await;
                }
            }
        }
        if removed > 0 {
            tracing::info!(removed, "stale user registry entries removed");
        }
    }

    /// Heartbeats this node into the registry of nodes. Tracks how long heartbeats have
    /// succeeded without a break, and notices a claim of this node's death.
    async fn heartbeat(&self, now: u64) -> bool {
        let me = NodeInfo {
            id: self.id.clone(),
            addr: self.advertised_addr(),
            connections: self.registry.connection_count() as u64,
            started_at: self.started_at,
        };
        let ttl = self.config.node_ttl.as_millis() as u64;
        let claimed_at = match self.backends.traffic.heartbeat(&me, now, ttl).await {
            Ok(claimed_at) => claimed_at,
            Err(_) => {
                self.heartbeat_streak_since_ms.store(0, Ordering::Release);
                return false;
            }
        };
        if self.heartbeat_streak_since_ms.load(Ordering::Acquire) == 0 {
            self.heartbeat_streak_since_ms.store(now, Ordering::Release);
        }
        // A claim seen by the first heartbeat is an earlier incarnation's.
        let before = self.heartbeated.swap(true, Ordering::AcqRel);
        let claim = claimed_at.unwrap_or(0);
        let seen = self.claim_seen_ms.fetch_max(claim, Ordering::AcqRel);
        if before && claim > seen {
            self.reset_after_reap();
        }
        true
    }

    /// Reads the shared counters and runs the rooms' expiry; `None` if any of it failed.
    async fn counters(&self, now: u64) -> Option<Counters> {
        let b = &self.backends;
        let (buckets, rooms, nodes, maintained) = (
            b.traffic.creation_buckets(now, WINDOW_MS).await,
            b.rooms.count().await,
            b.traffic.live_nodes(now).await,
            b.rooms.maintain(now).await,
        );
        if let Ok(expired) = &maintained {
            // The backend reports each expiry once, cluster-wide (docs/webhooks.md).
            let events = expired
                .iter()
                .map(|room| Webhook::room(Kind::RoomClosed, room).caused_by(Cause::Expired));
            self.webhooks.emit_all(events.collect()).await;
        }
        let (Ok(buckets), Ok(rooms), Ok(nodes), Ok(_)) = (buckets, rooms, nodes, maintained) else {
            return None;
        };
        self.remember_peers(&nodes);
        Some(Counters {
            buckets,
            rooms,
            connections: nodes.iter().map(|n| n.connections).sum(),
            live_nodes: nodes.len(),
        })
    }

    /// Whether the backend answers; a good answer refreshes the time readiness checks.
    async fn check_readiness(&self) {
        let healthy = self.backends.rooms.health().await.is_ok();
        self.backend_ok.store(healthy, Ordering::Release);
        if healthy {
            self.last_backend_ok_ms.store(now_ms(), Ordering::Release);
        }
    }

    /// Computes the traffic status, sets the gauges, and tells the clients of a new level.
    fn update_traffic(&self, c: &Counters, now: u64) {
        let status = self
            .traffic
            .compute(&c.buckets, c.rooms, c.connections, now);
        let m = &self.metrics;
        m.traffic_level.set(status.level.as_number());
        m.cluster_rooms.set(c.rooms as i64);
        m.cluster_connections.set(c.connections as i64);
        m.live_nodes.set(c.live_nodes as i64);
        m.creations_per_minute
            .set(c.buckets.iter().map(|(_, n)| n).sum::<u64>() as i64);
        m.local_rooms.set(self.registry.room_count() as i64);
        m.ready.set(i64::from(self.is_ready()));
        m.subscribed_channels
            .set(self.backends.fanout.subscribed() as i64);
        if self.traffic.update(status.clone()) {
            tracing::info!(
                level = status.level.as_str(),
                creation = status.room_creation_enabled,
                "traffic level changed"
            );
            self.broadcast(Event::TrafficStatus(&status));
        }
    }

    /// A peer claimed this node as dead (it was cut off from the
    /// backend for longer than `--node-ttl`) and removed its members from their rooms. The
    /// sockets are still open but no longer in any room, so every client is told to
    /// `reconnect` and rejoin with `since`, which restores its rooms and what it missed.
    fn reset_after_reap(&self) {
        let clients = self.registry.connection_count();
        tracing::warn!(
            clients,
            "this node was declared dead by its peers; its clients must reconnect"
        );
        self.metrics.node_resets.inc();
        if clients == 0 {
            return;
        }
        let registry = self.registry.clone();
        let window = self.config.drain_window;
        tokio::spawn(async move {
            send_reconnect(&registry, window, "node_reset", None).await;
        });
    }

    /// Removes the members of nodes whose heartbeat expired, and tells their rooms. Each dead
    /// node is claimed by exactly one live node.
    async fn reap_dead_nodes(&self, now: u64) {
        self.retry_unreaped_users().await;
        let dead = match self.backends.traffic.claim_dead_nodes(now).await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(error = %e, "dead-node check failed");
                return;
            }
        };
        for node in dead.into_iter().filter(|n| *n != self.id) {
            let removed = match self
                .backends
                .rooms
                .remove_node_members(&node, &|_| false)
                .await
            {
                Ok(removed) => removed,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "could not remove a dead node's members");
                    continue;
                }
            };
            tracing::info!(%node, members = removed.len(), "dead node reaped");
            self.metrics.dead_nodes_reaped.inc();
            self.announce_leaves(removed).await;
            if !self.remove_user_entries(&node, None).await {
                self.users_unreaped.lock().push(node);
            }
        }
    }

    /// Once per process, at the first good backend round: removes what earlier incarnations
    /// of this node id left behind (a restart under a fixed `--node-id`, a StatefulSet), so
    /// presence holds no ghost of a connection that is gone.
    async fn clear_earlier_incarnations(&self) {
        if self.earlier_cleared.load(Ordering::Acquire) {
            return;
        }
        let keep = format!("{}.", self.conn_id_prefix());
        match self
            .backends
            .rooms
            .remove_node_members(&self.id, &|conn| conn.starts_with(&keep))
            .await
        {
            Ok(removed) => {
                // Both or neither: the room removal is idempotent, so a failed user cleanup
                // runs the whole step again next round.
                if self.remove_user_entries(&self.id, Some(&keep)).await {
                    self.earlier_cleared.store(true, Ordering::Release);
                }
                if !removed.is_empty() {
                    tracing::info!(
                        members = removed.len(),
                        "removed the members of an earlier incarnation of this node"
                    );
                }
                self.announce_leaves(removed).await;
            }
            Err(e) => tracing::warn!(error = %e, "earlier incarnation not cleared yet"),
        }
    }

    /// Removes a dead node's (or an earlier incarnation's) connections from the user
    /// registry, so they no longer count under `--max-conns-per-user`. Each removal says
    /// whether it was the user's last connection: where `user_offline` will come from.
    /// Returns whether it succeeded; the callers retry in a later round, since a dead node is
    /// claimed only once.
    async fn remove_user_entries(&self, node: &str, keep: Option<&str>) -> bool {
        match self.backends.users.remove_node_users(node, keep).await {
            Ok(removed) => {
                if !removed.is_empty() {
                    let offline = removed.iter().filter(|r| r.last).count();
                    tracing::info!(%node, connections = removed.len(), offline, "user registry entries removed");
                }
                // Exactly as if they had disconnected: this node is the one that removed them.
                let events = removed.iter().filter(|r| r.last).map(|r| {
                    Webhook::user(Kind::UserOffline, &r.user, &r.conn_id).caused_by(Cause::NodeDead)
                });
                self.webhooks.emit_all(events.collect()).await;
                true
            }
            Err(e) => {
                tracing::warn!(%node, error = %e, "user registry entries not removed yet");
                false
            }
        }
    }

    /// Retries the user registry cleanup of reaped nodes whose cleanup failed.
    async fn retry_unreaped_users(&self) {
        let pending = std::mem::take(&mut *self.users_unreaped.lock());
        for node in pending {
            if !self.remove_user_entries(&node, None).await {
                self.users_unreaped.lock().push(node);
            }
        }
    }

    /// Tells the rooms of removed members that they left.
    async fn announce_leaves(&self, removed: Vec<room_state::Departed>) {
        // As if each had left: who left, then the room empty when it was the last one.
        let events = removed.iter().flat_map(|d| {
            let m = &d.member;
            let left = Webhook::member(Kind::MemberLeft, &d.room, &m.user, &m.conn_id);
            let vacated = d.vacated.then(|| Webhook::room(Kind::RoomVacated, &d.room));
            [left.caused_by(Cause::NodeDead)].into_iter().chain(vacated)
        });
        self.webhooks.emit_all(events.collect::<Vec<_>>()).await;
        for d in removed {
            let leave = PresenceAction::Leave;
            let fanout = &*self.backends.fanout;
            announce(fanout, d.room, leave, d.member.user, d.member.conn_id).await;
        }
    }

    /// The background upkeep: the heartbeat, and the rounds (traffic, room expiry, reaping,
    /// readiness), each on its own beat of `--traffic-interval`. Runs until the process ends.
    ///
    /// The heartbeat must not wait for a round: on a loaded backend a round can take seconds
    /// (every step is a command queued behind the clients' own), and a heartbeat held back
    /// past `--node-ttl` gets this node declared dead by its peers, which tells all its
    /// clients to reconnect: an overload turned into an outage. A `make bench` idle run
    /// (57,000 connections joining 5,700 rooms, the system under test on one core) had every
    /// node reset that way while its heartbeat commands themselves took milliseconds.
    ///
    /// `first_round` is told when the first round is done (or timed out), so that the node
    /// serves with its traffic status and readiness set. The heartbeat keeps its beat during
    /// that round too: it clears what an earlier incarnation of this node id left behind, and
    /// after a crash with 19,000 clients that took 25 s, well past `--node-ttl`.
    pub async fn run_upkeep(self: Arc<Self>, first_round: oneshot::Sender<()>) {
        // The first heartbeat before the first round, which goes by its outcome.
        self.beat_once().await;
        // One task for both, so that aborting it (at shutdown) stops both.
        tokio::join!(self.beat(), self.rounds(first_round));
    }

    /// Heartbeats every `--traffic-interval`, the first one an interval after the one
    /// [`Node::run_upkeep`] made.
    async fn beat(&self) {
        let period = self.config.traffic_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.beat_once().await;
        }
    }

    async fn beat_once(&self) {
        let limit = self.config.traffic_interval + self.config.redis_command_timeout;
        if tokio::time::timeout(limit, self.heartbeat(now_ms()))
            .await
            .is_err()
        {
            self.heartbeat_streak_since_ms.store(0, Ordering::Release);
            tracing::warn!(?limit, "heartbeat timed out");
        }
    }

    /// Rounds every `--traffic-interval` (or sooner, when nudged), the first one at once.
    async fn rounds(&self, first_round: oneshot::Sender<()>) {
        let mut first_round = Some(first_round);
        let mut tick = tokio::time::interval(self.config.traffic_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.traffic_nudge.notified() => {}
            }
            let heartbeat_ok = self.heartbeat_streak_since_ms.load(Ordering::Acquire) != 0;
            // A round that hangs (a cut-off backend drops packets) ends here, unready.
            let limit = self.config.traffic_interval + 3 * self.config.redis_command_timeout;
            if tokio::time::timeout(limit, self.round(now_ms(), heartbeat_ok))
                .await
                .is_err()
            {
                self.backend_ok.store(false, Ordering::Release);
                self.metrics.ready.set(0);
                self.heartbeat_streak_since_ms.store(0, Ordering::Release);
                tracing::warn!(?limit, "backend round timed out");
            }
            if let Some(done) = first_round.take() {
                let _ = done.send(());
            }
        }
    }
}
