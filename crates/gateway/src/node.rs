//! One gateway node: its configuration, backends, local registry and shared flags.

use crate::admission::Gate;
use crate::auth::Authenticator;
use crate::clock::now_ms;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::traffic::{TrafficMonitor, WINDOW_MS};
use fan_out::redis::{RedisFanOut, RedisFanOutConfig, StoreHistory};
use fan_out::{FanOut, MemoryFanOut, Registry};
use parking_lot::Mutex;
use protocol::codec::encode;
use protocol::envelope::Envelope;
use protocol::frame::Event;
use protocol::Format;
use room_state::{
    MemoryState, NodeInfo, RateLimits, RedisSettings, RedisState, RoomStore, SessionStore,
    TrafficCounters,
};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// The state backends, whichever implementation is behind them.
pub struct Backends {
    pub rooms: Arc<dyn RoomStore>,
    pub limits: Arc<dyn RateLimits>,
    pub traffic: Arc<dyn TrafficCounters>,
    /// Saved Socket.IO socket state, for connection state recovery.
    pub sessions: Arc<dyn SessionStore>,
    pub fanout: Arc<dyn FanOut>,
    pub name: &'static str,
}

pub struct Node {
    pub config: Config,
    pub id: String,
    pub addr: SocketAddr,
    pub started_at: u64,
    pub backends: Backends,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub auth: Authenticator,
    pub traffic: TrafficMonitor,
    /// Wakes the traffic task early, after a room creation.
    pub traffic_nudge: Notify,
    draining: AtomicBool,
    backend_ok: AtomicBool,
    /// When the last upkeep round against the backend completed (ms since the epoch).
    last_backend_ok_ms: AtomicU64,
    /// Since when heartbeats have succeeded without a break (0: they are failing). Dead
    /// nodes are reaped only after a full `--node-ttl` of this, so that a failover of the
    /// shard holding the heartbeats does not make every node look dead to the first one back.
    heartbeat_streak_since_ms: AtomicU64,
    /// Whether this node has heartbeated successfully before.
    heartbeated: AtomicBool,
    /// The latest claim of this node's death that it has seen (ms; 0: none).
    claim_seen_ms: AtomicU64,
    conn_seq: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connection cap, handshake rate and connections per user.
    pub gate: Gate,
    /// This node, for tasks it spawns from `&self`.
    me: Weak<Node>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl Node {
    /// A node on the embedded backend.
    pub fn embedded(config: Config, addr: SocketAddr) -> anyhow::Result<Arc<Node>> {
        let metrics = Arc::new(Metrics::new()?);
        let registry = Arc::new(Registry::new());
        let state = Arc::new(MemoryState::new());
        let fanout = Arc::new(MemoryFanOut::new(registry.clone(), metrics.clone()));
        let sink_fanout = fanout.clone();
        state.set_sink(Arc::new(move |publication| {
            sink_fanout.deliver_now(&Envelope::Message(publication.clone()));
        }));
        let backends = Backends {
            rooms: state.clone(),
            limits: state.clone(),
            sessions: state.clone(),
            traffic: state,
            fanout,
            name: "memory",
        };
        Node::with_backends(config, addr, backends, registry, metrics)
    }

    /// A node on Redis Cluster (`--redis-cluster`). Starts even when the cluster is down:
    /// it is unready until the cluster answers.
    pub async fn redis(config: Config, addr: SocketAddr) -> anyhow::Result<Arc<Node>> {
        let metrics = Arc::new(Metrics::new()?);
        let registry = Arc::new(Registry::new());
        let settings = RedisSettings {
            urls: config.redis_cluster.clone(),
            pool_size: config.redis_pool_size,
            command_timeout: config.redis_command_timeout,
            durable_publish: config.durable_publish,
            durable_timeout: config.durable_timeout,
            default_history: config.history_size,
            default_ttl_ms: config.room_ttl.as_millis() as u64,
        };
        let state = Arc::new(RedisState::connect(settings.clone()).await?);
        state.set_observer(metrics.clone());
        let subscriber = room_state::redis::builder(&settings)?.build_subscriber_client()?;
        let node_id = config.node_id.clone().unwrap_or_else(random_node_id);
        let history = Arc::new(StoreHistory(state.clone()));
        let fanout = RedisFanOut::start(
            subscriber,
            state.pool().clone(),
            registry.clone(),
            metrics.clone(),
            metrics.clone(),
            history,
            RedisFanOutConfig::new(&node_id),
        )
        .await?;
        let backends = Backends {
            rooms: state.clone(),
            limits: state.clone(),
            sessions: state.clone(),
            traffic: state,
            fanout: Arc::new(fanout),
            name: "redis-cluster",
        };
        let mut config = config;
        config.node_id = Some(node_id);
        Node::with_backends(config, addr, backends, registry, metrics)
    }

    /// A node on the given backends. `registry` must be the one the fan-out delivers into.
    pub fn with_backends(
        config: Config,
        addr: SocketAddr,
        backends: Backends,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Node>> {
        let id = config.node_id.clone().unwrap_or_else(|| {
            let suffix: String = (0..6)
                .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
                .collect();
            format!("n-{suffix}")
        });
        let auth = Authenticator::from_config(&config)?;
        let traffic = TrafficMonitor::new(
            config.traffic_high,
            config.traffic_critical,
            config.traffic_cap,
        );
        Ok(Arc::new_cyclic(|me| Node {
            me: me.clone(),
            id,
            addr,
            started_at: now_ms(),
            backends,
            registry,
            metrics,
            auth,
            traffic,
            traffic_nudge: Notify::new(),
            draining: AtomicBool::new(false),
            backend_ok: AtomicBool::new(true),
            last_backend_ok_ms: AtomicU64::new(now_ms()),
            heartbeat_streak_since_ms: AtomicU64::new(0),
            heartbeated: AtomicBool::new(false),
            claim_seen_ms: AtomicU64::new(0),
            conn_seq: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            gate: Gate::new(
                match config.max_connections {
                    0 => open_file_limit().map_or(0, |n| n.saturating_sub(256)),
                    n => n,
                },
                config.max_handshake_rate,
                config.max_conns_per_user,
            ),
            config,
        }))
    }

    /// A cluster-unique connection id: `<node>.<sequence>`.
    pub fn next_conn_id(&self) -> String {
        let n = self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}.{n:x}", self.id)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.ready.set(0);
    }

    /// Readiness: the backend answers, recently, fan-out works, and we are not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && self.backend_ok.load(Ordering::Acquire)
            && now_ms().saturating_sub(self.last_backend_ok_ms.load(Ordering::Acquire))
                <= self.backend_stale_ms()
            && self.backends.fanout.healthy()
    }

    /// How old the last good upkeep round may be before the node calls itself unready: a
    /// round that hangs (packets dropped, no error) must not leave the last answer standing.
    fn backend_stale_ms(&self) -> u64 {
        let interval = self.config.traffic_interval.as_millis() as u64;
        (3 * interval).max(interval + self.config.redis_command_timeout.as_millis() as u64)
    }

    /// Admits one more connection from `ip`, or refuses it (connection-rate policy).
    pub fn admit_ip(&self, ip: IpAddr) -> bool {
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        if self.config.max_conns_per_ip != 0 && *n >= self.config.max_conns_per_ip {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release_ip(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// Recomputes the traffic status from the backend; pushes `traffic_status` to every
    /// local client when the level changed. Also heartbeats this node and runs upkeep.
    pub async fn refresh_traffic(&self) {
        let now = now_ms();
        let me = NodeInfo {
            id: self.id.clone(),
            addr: self.addr.to_string(),
            connections: self.registry.connection_count() as u64,
            started_at: self.started_at,
        };
        let ttl = self.config.node_ttl.as_millis() as u64;
        let b = &self.backends;
        let results = (
            b.traffic.heartbeat(&me, now, ttl).await,
            b.traffic.creation_buckets(now, WINDOW_MS).await,
            b.rooms.count().await,
            b.traffic.live_nodes(now).await,
            b.rooms.maintain(now).await,
        );
        match &results.0 {
            Ok(claimed_at) => {
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
            }
            Err(_) => self.heartbeat_streak_since_ms.store(0, Ordering::Release),
        }
        let (Ok(_), Ok(buckets), Ok(rooms), Ok(nodes), Ok(_)) = results else {
            self.backend_ok.store(false, Ordering::Release);
            self.metrics.ready.set(0);
            self.metrics
                .backend_errors
                .with_label_values(&["traffic"])
                .inc();
            return;
        };
        let streak = self.heartbeat_streak_since_ms.load(Ordering::Acquire);
        if streak != 0 && now.saturating_sub(streak) >= ttl {
            self.reap_dead_nodes(now).await;
        }
        let healthy = b.rooms.health().await.is_ok();
        self.backend_ok.store(healthy, Ordering::Release);
        if healthy {
            self.last_backend_ok_ms.store(now_ms(), Ordering::Release);
        }
        let connections: u64 = nodes.iter().map(|n| n.connections).sum();
        let status = self.traffic.compute(&buckets, rooms, connections, now);
        let m = &self.metrics;
        m.traffic_level.set(status.level.as_number());
        m.cluster_rooms.set(rooms as i64);
        m.cluster_connections.set(connections as i64);
        m.live_nodes.set(nodes.len() as i64);
        m.creations_per_minute
            .set(buckets.iter().map(|(_, c)| c).sum::<u64>() as i64);
        m.local_rooms.set(self.registry.room_count() as i64);
        m.ready.set(i64::from(self.is_ready()));
        m.subscribed_channels.set(b.fanout.subscribed() as i64);
        if self.traffic.update(status.clone()) {
            tracing::info!(
                level = status.level.as_str(),
                creation = status.room_creation_enabled,
                "traffic level changed"
            );
            self.broadcast(&Event::TrafficStatus(&status));
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
        let Some(node) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            let window = node.config.drain_window;
            crate::drain::send_reconnect(&node, window, "node_reset", None).await;
        });
    }

    /// Removes the members of nodes whose heartbeat expired, and tells their rooms. Each dead
    /// node is claimed by exactly one live node.
    async fn reap_dead_nodes(&self, now: u64) {
        let dead = match self.backends.traffic.claim_dead_nodes(now).await {
            Ok(dead) => dead,
            Err(e) => {
                tracing::warn!(error = %e, "dead-node check failed");
                return;
            }
        };
        for node in dead.into_iter().filter(|n| *n != self.id) {
            let removed = match self.backends.rooms.remove_node_members(&node).await {
                Ok(removed) => removed,
                Err(e) => {
                    tracing::warn!(%node, error = %e, "could not remove a dead node's members");
                    continue;
                }
            };
            tracing::info!(%node, members = removed.len(), "dead node reaped");
            self.metrics.dead_nodes_reaped.inc();
            for (room, member) in removed {
                let leave = Envelope::Presence {
                    room,
                    action: protocol::frame::PresenceAction::Leave,
                    user: member.user,
                    conn_id: member.conn_id,
                };
                if let Err(e) = self.backends.fanout.publish(leave).await {
                    tracing::warn!(error = %e, "presence leave for a dead node not published");
                }
            }
        }
    }

    /// Sends an event to every local connection, encoded once per format.
    pub fn broadcast(&self, event: &Event<'_>) {
        let encoded: Vec<Option<bytes::Bytes>> =
            Format::ALL.iter().map(|f| encode(event, *f).ok()).collect();
        for conn in self.registry.all() {
            if let Some(bytes) = &encoded[conn.outbound.format().index()] {
                let _ = conn.outbound.push(bytes.clone());
            }
        }
    }

    /// The background upkeep: traffic, heartbeat, room expiry. Runs until the process ends.
    pub async fn run_upkeep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.traffic_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.traffic_nudge.notified() => {}
            }
            // A round that hangs (a cut-off backend drops packets) ends here, unready.
            let limit = self.config.traffic_interval + 3 * self.config.redis_command_timeout;
            if tokio::time::timeout(limit, self.refresh_traffic())
                .await
                .is_err()
            {
                self.backend_ok.store(false, Ordering::Release);
                self.metrics.ready.set(0);
                self.heartbeat_streak_since_ms.store(0, Ordering::Release);
                tracing::warn!(?limit, "backend round timed out");
            }
        }
    }
}

fn random_node_id() -> String {
    let suffix: String = (0..6)
        .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
        .collect();
    format!("n-{suffix}")
}

/// The soft open-file limit, from `/proc/self/limits` (Linux); `None` elsewhere or unlimited.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
