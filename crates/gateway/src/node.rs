//! One gateway node: its configuration, backends, local registry and shared flags. Its
//! periodic upkeep is in [`upkeep`].

mod departures;
mod upkeep;

use crate::admission::gate::{Gate, Limits};
use crate::auth::Authenticator;
use crate::clock::now_ms;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::traffic::TrafficMonitor;
use fan_out::Registry;
use parking_lot::RwLock;
use protocol::frame::Event;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

pub use crate::backends::Backends;
pub use departures::{Departures, Place};

pub struct Node {
    pub config: Config,
    pub id: String,
    pub addr: SocketAddr,
    pub started_at: u64,
    /// This process's incarnation of the node id, in every connection id it issues, so that
    /// a node restarted under the same `--node-id` never issues an id again.
    pub incarnation: String,
    pub backends: Backends,
    /// Webhook events (`--webhook-url`; a no-op without it).
    pub webhooks: crate::webhooks::Webhooks,
    /// The archive (`--archive`), or `None` when it is off: see [`Node::archive`].
    archive: Option<Arc<dyn archive::Archive>>,
    /// This node's slices of the users' shared publish buckets.
    pub publish_budget: room_state::LeasedBuckets,
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
    /// When this node last reconciled what its connections hold in the backend (user registry
    /// entries, room memberships), and the connection sequence number then: what connections
    /// issued before it hold, and that are no longer local, is left over (see `upkeep`).
    leftovers_reconciled_ms: AtomicU64,
    leftovers_reconciled_seq: AtomicU64,
    /// Reaped nodes whose user registry entries are still to remove (a failed attempt).
    users_unreaped: parking_lot::Mutex<Vec<String>>,
    /// Whether what earlier incarnations of this node id left is cleared (see `upkeep`).
    earlier_cleared: AtomicBool,
    /// Places for disconnects' backend work ([`Node::departure`]).
    pub departures: Departures,
    /// This node's user registry entries not yet removed (a drain waits for them).
    pub user_entries: crate::users::Entries,
    /// Connection cap, handshake rate, connections per address and per user.
    pub gate: Gate,
    /// Every connection's token deadline, closed by one ticker (`crate::expiry`).
    pub expiries: Arc<crate::expiry::Expiries>,
    /// The Engine.IO long-polling sessions this node owns.
    pub polling: crate::socketio::polling::Sessions,
    /// Live nodes' addresses by `sid` tag, from the last upkeep round (see `peer_addr`).
    peers: RwLock<HashMap<String, String>>,
    /// Kept-alive connections to peers, for relayed long-polling requests.
    pub relay: crate::socketio::forward::Relay,
    /// The app's connect and publish proxies, when configured.
    pub hooks: crate::backend_hooks::Hooks,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

impl Node {
    /// The node the config names: on Redis Cluster with `--redis-cluster`, else on the
    /// embedded backend; with the archive of `--archive` opened (migrations run) unless it
    /// is `none`. An archive that cannot be opened is an error: a node that was asked to
    /// archive does not start without it.
    pub async fn open(config: Config, addr: SocketAddr) -> anyhow::Result<Arc<Node>> {
        let archive = crate::backends::open_archive(&config).await?;
        let metrics = Arc::new(Metrics::new()?);
        let registry = Arc::new(Registry::new());
        let mut config = config;
        let backends = if config.redis_cluster.is_empty() {
            Backends::embedded(&registry, &metrics)
        } else {
            let node_id = config.node_id.clone().unwrap_or_else(random_node_id);
            let backends = Backends::redis_cluster(&config, &node_id, &registry, &metrics).await?;
            config.node_id = Some(node_id);
            backends
        };
        Node::assemble(config, addr, backends, archive, registry, metrics)
    }

    /// A node on the embedded backend, without an archive.
    pub fn embedded(config: Config, addr: SocketAddr) -> anyhow::Result<Arc<Node>> {
        let metrics = Arc::new(Metrics::new()?);
        let registry = Arc::new(Registry::new());
        let backends = Backends::embedded(&registry, &metrics);
        Node::with_backends(config, addr, backends, registry, metrics)
    }

    /// A node on Redis Cluster (`--redis-cluster`), without an archive. Starts even when the
    /// cluster is down: it is unready until the cluster answers.
    pub async fn redis(config: Config, addr: SocketAddr) -> anyhow::Result<Arc<Node>> {
        let metrics = Arc::new(Metrics::new()?);
        let registry = Arc::new(Registry::new());
        let node_id = config.node_id.clone().unwrap_or_else(random_node_id);
        let backends = Backends::redis_cluster(&config, &node_id, &registry, &metrics).await?;
        let mut config = config;
        config.node_id = Some(node_id);
        Node::with_backends(config, addr, backends, registry, metrics)
    }

    /// A node on the given backends, without an archive. `registry` must be the one the
    /// fan-out delivers into.
    pub fn with_backends(
        config: Config,
        addr: SocketAddr,
        backends: Backends,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Node>> {
        Node::assemble(config, addr, backends, None, registry, metrics)
    }

    /// A node on the given backends and archive (`None`: off).
    pub fn assemble(
        config: Config,
        addr: SocketAddr,
        backends: Backends,
        archive: Option<Arc<dyn archive::Archive>>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Node>> {
        let id = config.node_id.clone().unwrap_or_else(random_node_id);
        let auth = Authenticator::from_config(&config)?;
        let traffic = TrafficMonitor::new(
            config.traffic_high,
            config.traffic_critical,
            config.traffic_cap,
        );
        let gate = Gate::new(Limits {
            max_connections: match config.max_connections {
                0 => open_file_limit().map_or(0, |n| n.saturating_sub(256)),
                n => n,
            },
            handshake_rate: config.max_handshake_rate,
            max_per_ip: config.max_conns_per_ip,
            max_per_user: config.max_conns_per_user,
        });
        let started_at = now_ms();
        let webhooks =
            crate::webhooks::Webhooks::new(&config, backends.events.clone(), &id, metrics.clone());
        Ok(Arc::new(Node {
            webhooks,
            id,
            addr,
            started_at,
            incarnation: base36(started_at),
            publish_budget: room_state::LeasedBuckets::new(backends.limits.clone()),
            backends,
            archive,
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
            earlier_cleared: AtomicBool::new(false),
            departures: Departures::new(config.redis_command_timeout),
            user_entries: crate::users::Entries::default(),
            leftovers_reconciled_ms: AtomicU64::new(now_ms()),
            leftovers_reconciled_seq: AtomicU64::new(0),
            users_unreaped: Default::default(),
            gate,
            expiries: Arc::default(),
            polling: Default::default(),
            peers: RwLock::default(),
            relay: Default::default(),
            hooks: crate::backend_hooks::Hooks::from_config(&config).map_err(anyhow::Error::msg)?,
            config,
        }))
    }

    /// The archive every acknowledged message is copied to (`--archive`), or `None` when it
    /// is off. Node-wide like the backends: sessions and the server API read history past
    /// the Redis window from it, the archiver writes to it.
    pub fn archive(&self) -> Option<&Arc<dyn archive::Archive>> {
        self.archive.as_ref()
    }

    /// A cluster-unique connection id: `<node>.<sequence>`.
    pub fn next_conn_id(&self) -> String {
        let n = self.conn_seq.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}.{n:x}", self.conn_id_prefix())
    }

    /// What every connection id of this incarnation starts with: `<node>.<incarnation>`.
    pub fn conn_id_prefix(&self) -> String {
        format!("{}.{}", self.id, self.incarnation)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// A place for one disconnect's backend work (see [`Departures`]).
    pub async fn departure(&self) -> Option<Place> {
        self.departures.place().await
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

    /// The address peers reach this node at (`--advertise-addr`, else the listen address).
    pub fn advertised_addr(&self) -> String {
        self.config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| self.addr.to_string())
    }

    /// Keeps the live nodes' addresses, by the tag their Engine.IO `sid`s start with.
    pub fn remember_peers(&self, nodes: &[room_state::NodeInfo]) {
        let peers = nodes
            .iter()
            .map(|n| (crate::socketio::engine::sid_tag(&n.id), n.addr.clone()))
            .collect();
        *self.peers.write() = peers;
    }

    /// The address of the live node whose `sid` tag is `tag`, as of the last upkeep round.
    pub fn peer_addr(&self, tag: &str) -> Option<String> {
        self.peers.read().get(tag).cloned()
    }

    /// Sends an event to every local connection, encoded once per format.
    pub fn broadcast(&self, event: Event<'_>) {
        fan_out::broadcast(&self.registry, event);
    }
}

fn random_node_id() -> String {
    let suffix: String = (0..6)
        .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
        .collect();
    format!("n-{suffix}")
}

/// Lower-case base 36: an incarnation from the start time in milliseconds (8 characters
/// until the year 5188), which restarts more than a millisecond apart never repeat.
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The soft open-file limit, from `/proc/self/limits` (Linux); `None` elsewhere or unlimited.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
