//! Prometheus metrics, all prefixed `roomcast_`, grouped below by concern: connections, client
//! ops, delivery and pub/sub, the cluster, and the Redis backend.
//!
//! Every labelled series whose labels are known in advance is created at zero, so dashboards
//! and alerts see it before the first event. A labelled child is found by hashing its label
//! values under a lock; the children used per op or per backend command are therefore found
//! once, here, and kept: [`Metrics::op_duration`], [`Metrics::disconnect`] and the Redis series
//! behind [`CommandObserver`]. The other labelled series are looked up where they are used, on
//! per-connection or error paths.

use crate::admission::rejection::Rejection;
use fan_out::{DeliveryHooks, PubSubHooks};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use room_state::{Command, CommandObserver};

/// Why a connection ended; the `reason` label of `roomcast_disconnects_total`.
///
/// The discriminants are the positions in [`DisconnectReason::ALL`] (a test holds them to it),
/// which is how [`Metrics::disconnect`] finds its counter without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    Client,
    SlowConsumer,
    ProtocolError,
    Auth,
    Drain,
    Kicked,
    Timeout,
    Policy,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 8] = [
        DisconnectReason::Client,
        DisconnectReason::SlowConsumer,
        DisconnectReason::ProtocolError,
        DisconnectReason::Auth,
        DisconnectReason::Drain,
        DisconnectReason::Kicked,
        DisconnectReason::Timeout,
        DisconnectReason::Policy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Client => "client",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::ProtocolError => "protocol_error",
            DisconnectReason::Auth => "auth",
            DisconnectReason::Drain => "drain",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::Timeout => "timeout",
            DisconnectReason::Policy => "policy",
        }
    }
}

/// The client ops: the `op` label of op durations and backend errors.
const OPS: [&str; 8] = protocol::frame::Op::NAMES;

/// Buckets of every latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    registry: Registry,
    // Connections.
    pub connections: IntGaugeVec,
    pub connections_accepted: IntCounter,
    pub connections_rejected: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub outbound_queue_bytes: Histogram,
    pub slow_consumers: IntCounter,
    disconnects_by_reason: Vec<IntCounter>,
    // Client ops.
    pub command_duration: HistogramVec,
    pub backend_errors: IntCounterVec,
    pub messages_published: IntCounter,
    pub rate_limited: IntCounterVec,
    pub room_creations: IntCounter,
    pub creation_paused: IntCounter,
    pub socketio_recovery: IntCounterVec,
    pub socketio_relayed: IntCounterVec,
    pub socketio_emitter_messages: IntCounterVec,
    op_durations: Vec<(&'static str, Histogram)>,
    // The app's proxies.
    pub proxy_requests: IntCounterVec,
    pub proxy_duration: HistogramVec,
    // Delivery and pub/sub.
    pub messages_delivered: IntCounter,
    pub publish_latency: Histogram,
    pub subscribed_channels: IntGauge,
    pub pubsub_dropped: IntCounter,
    pub pubsub_resubscribes: IntCounter,
    pub history_repairs: IntCounter,
    pub pubsub_duplicates: IntCounter,
    pub offset_conflicts: IntCounter,
    // The cluster, as this node sees it.
    pub local_rooms: IntGauge,
    pub live_nodes: IntGauge,
    pub traffic_level: IntGauge,
    pub cluster_rooms: IntGauge,
    pub cluster_connections: IntGauge,
    pub creations_per_minute: IntGauge,
    pub dead_nodes_reaped: IntCounter,
    pub node_resets: IntCounter,
    pub ready: IntGauge,
    // The Redis backend.
    pub redis_duration: HistogramVec,
    pub redis_errors: IntCounterVec,
    /// Per [`Command`], indexed by `command as usize`.
    redis_by_command: Vec<(Histogram, IntCounter)>,
    // The archiver.
    pub archive: ArchiveSeries,
    // Webhooks.
    pub webhooks: WebhookSeries,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Series(Registry::new());
        #[cfg(target_os = "linux")]
        r.0.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let ConnectionSeries {
            connections,
            connections_accepted,
            connections_rejected,
            disconnects,
            bytes_in,
            bytes_out,
            outbound_queue_bytes,
            slow_consumers,
            disconnects_by_reason,
        } = ConnectionSeries::new(&r)?;
        let OpSeries {
            command_duration,
            backend_errors,
            messages_published,
            rate_limited,
            room_creations,
            creation_paused,
            socketio_recovery,
            socketio_relayed,
            socketio_emitter_messages,
            op_durations,
        } = OpSeries::new(&r)?;
        let proxy_requests = r.counter_vec(
            "proxy_requests_total",
            "Calls to the app's connect and publish proxies, by kind and result: allow, deny (connect), accept, reject, rewrite (publish), or a failure (timeout, unreachable, status, garbage, overloaded) handled by the fail mode.",
            &["kind", "result"],
        )?;
        let proxy_duration = r.histogram_vec(
            "proxy_duration_seconds",
            "Time the app's proxies took to answer (failures included), by kind.",
            LATENCY_BUCKETS.to_vec(),
            &["kind"],
        )?;
        let DeliverySeries {
            messages_delivered,
            publish_latency,
            subscribed_channels,
            pubsub_dropped,
            pubsub_resubscribes,
            history_repairs,
            pubsub_duplicates,
            offset_conflicts,
        } = DeliverySeries::new(&r)?;
        let ClusterSeries {
            local_rooms,
            live_nodes,
            traffic_level,
            cluster_rooms,
            cluster_connections,
            creations_per_minute,
            dead_nodes_reaped,
            node_resets,
            ready,
        } = ClusterSeries::new(&r)?;
        let RedisSeries {
            redis_duration,
            redis_errors,
            redis_by_command,
        } = RedisSeries::new(&r)?;
        let archive = ArchiveSeries::new(&r)?;
        let webhooks = WebhookSeries::new(&r)?;
        Ok(Metrics {
            registry: r.0,
            connections,
            connections_accepted,
            connections_rejected,
            disconnects,
            bytes_in,
            bytes_out,
            outbound_queue_bytes,
            slow_consumers,
            disconnects_by_reason,
            command_duration,
            backend_errors,
            messages_published,
            rate_limited,
            room_creations,
            creation_paused,
            socketio_recovery,
            socketio_relayed,
            socketio_emitter_messages,
            op_durations,
            proxy_requests,
            proxy_duration,
            messages_delivered,
            publish_latency,
            subscribed_channels,
            pubsub_dropped,
            pubsub_resubscribes,
            history_repairs,
            pubsub_duplicates,
            offset_conflicts,
            local_rooms,
            live_nodes,
            traffic_level,
            cluster_rooms,
            cluster_connections,
            creations_per_minute,
            dead_nodes_reaped,
            node_resets,
            ready,
            redis_duration,
            redis_errors,
            redis_by_command,
            archive,
            webhooks,
        })
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .is_err()
        {
            out.clear();
        }
        out
    }

    /// Counts a refused connection.
    pub fn rejected(&self, why: Rejection) {
        self.connections_rejected
            .with_label_values(&[why.as_str()])
            .inc();
    }

    pub fn disconnect(&self, reason: DisconnectReason) {
        self.disconnects_by_reason[reason as usize].inc();
    }

    /// The duration histogram of a client op (`Op::name`), kept from start-up: no label
    /// lookup on the op path.
    pub fn op_duration(&self, op: &str) -> Histogram {
        match self.op_durations.iter().find(|(name, _)| *name == op) {
            Some((_, h)) => h.clone(),
            None => self.command_duration.with_label_values(&[op]),
        }
    }
}

/// Creates series in the `roomcast` namespace and registers them.
struct Series(Registry);

impl Series {
    fn register<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        c: C,
    ) -> prometheus::Result<C> {
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn opts(name: &str, help: &str) -> Opts {
        Opts::new(name, help).namespace("roomcast")
    }

    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.register(IntCounter::with_opts(Series::opts(name, help))?)
    }

    fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.register(IntCounterVec::new(Series::opts(name, help), labels)?)
    }

    fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.register(IntGauge::with_opts(Series::opts(name, help))?)
    }

    fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        self.register(IntGaugeVec::new(Series::opts(name, help), labels)?)
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> prometheus::Result<Histogram> {
        let opts = HistogramOpts::new(name, help)
            .namespace("roomcast")
            .buckets(buckets);
        self.register(Histogram::with_opts(opts)?)
    }

    fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        let opts = HistogramOpts::new(name, help)
            .namespace("roomcast")
            .buckets(buckets);
        self.register(HistogramVec::new(opts, labels)?)
    }
}

/// Client connections: opened, refused, ended, and their traffic.
struct ConnectionSeries {
    connections: IntGaugeVec,
    connections_accepted: IntCounter,
    connections_rejected: IntCounterVec,
    disconnects: IntCounterVec,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
    outbound_queue_bytes: Histogram,
    slow_consumers: IntCounter,
    disconnects_by_reason: Vec<IntCounter>,
}

impl ConnectionSeries {
    fn new(r: &Series) -> prometheus::Result<ConnectionSeries> {
        let connections = r.gauge_vec(
            "connections",
            "Open client connections by protocol and format.",
            &["protocol", "format"],
        )?;
        for (protocol, format) in [
            ("native", "json"),
            ("native", "msgpack"),
            ("socketio", "socketio"),
        ] {
            connections.with_label_values(&[protocol, format]);
        }
        let connections_rejected = r.counter_vec(
            "connections_rejected_total",
            "Connections refused, by reason.",
            &["reason"],
        )?;
        for reason in Rejection::ALL {
            connections_rejected.with_label_values(&[reason.as_str()]);
        }
        let disconnects = r.counter_vec(
            "disconnects_total",
            "Connections ended, by reason.",
            &["reason"],
        )?;
        let disconnects_by_reason = DisconnectReason::ALL
            .iter()
            .map(|reason| disconnects.with_label_values(&[reason.as_str()]))
            .collect();
        Ok(ConnectionSeries {
            connections,
            connections_accepted: r.counter(
                "connections_accepted_total",
                "WebSocket connections accepted.",
            )?,
            connections_rejected,
            disconnects,
            bytes_in: r.counter("bytes_in_total", "WebSocket payload bytes received.")?,
            bytes_out: r.counter("bytes_out_total", "WebSocket payload bytes written.")?,
            outbound_queue_bytes: r.histogram(
                "outbound_queue_bytes",
                "Outbound queue depth when a frame is written.",
                prometheus::exponential_buckets(64.0, 4.0, 10)?,
            )?,
            slow_consumers: r.counter(
                "slow_consumers_total",
                "Connections whose outbound queue overflowed (closed with 4009).",
            )?,
            disconnects_by_reason,
        })
    }
}

/// Client ops: how long they take, how they fail, what they did.
struct OpSeries {
    command_duration: HistogramVec,
    backend_errors: IntCounterVec,
    messages_published: IntCounter,
    rate_limited: IntCounterVec,
    room_creations: IntCounter,
    creation_paused: IntCounter,
    socketio_recovery: IntCounterVec,
    socketio_relayed: IntCounterVec,
    socketio_emitter_messages: IntCounterVec,
    op_durations: Vec<(&'static str, Histogram)>,
}

impl OpSeries {
    fn new(r: &Series) -> prometheus::Result<OpSeries> {
        let command_duration = r.histogram_vec(
            "command_duration_seconds",
            "Time to answer a client op.",
            LATENCY_BUCKETS.to_vec(),
            &["op"],
        )?;
        let op_durations = OPS
            .iter()
            .map(|op| (*op, command_duration.with_label_values(&[op])))
            .collect();
        let backend_errors = r.counter_vec(
            "backend_errors_total",
            "State backend errors, by operation.",
            &["op"],
        )?;
        // `traffic` is the node's upkeep round, which is not a client op.
        for op in OPS.iter().chain(&["traffic"]) {
            backend_errors.with_label_values(&[op]);
        }
        let rate_limited = r.counter_vec(
            "rate_limited_total",
            "Requests refused by a rate limit, by limit.",
            &["limit"],
        )?;
        for limit in ["publish", "room_create"] {
            rate_limited.with_label_values(&[limit]);
        }
        let socketio_recovery = r.counter_vec(
            "socketio_recovery_total",
            "Socket.IO connection state recovery: states saved, recovered, failed.",
            &["outcome"],
        )?;
        for outcome in ["saved", "recovered", "failed"] {
            socketio_recovery.with_label_values(&[outcome]);
        }
        let socketio_relayed = r.counter_vec(
            "socketio_relayed_total",
            "Engine.IO requests for a session another node owns: relayed to the owner, or failed (owner unreachable).",
            &["outcome"],
        )?;
        for outcome in ["relayed", "failed"] {
            socketio_relayed.with_label_values(&[outcome]);
        }
        let socketio_emitter_messages = r.counter_vec(
            "socketio_emitter_messages_total",
            "Messages read from @socket.io/redis-emitter channels, by result: delivered (to at least one local socket), no_recipient, a request done (disconnect) or ignored (unsupported), or dropped (malformed, bad_data, bad_event, too_large, unknown_namespace, queue_full).",
            &["result"],
        )?;
        for result in crate::socketio::emitter::RESULTS {
            socketio_emitter_messages.with_label_values(&[result]);
        }
        Ok(OpSeries {
            command_duration,
            backend_errors,
            messages_published: r.counter(
                "messages_published_total",
                "Messages accepted for publishing.",
            )?,
            rate_limited,
            room_creations: r
                .counter("room_creations_total", "Rooms created through this node.")?,
            creation_paused: r.counter(
                "creation_paused_total",
                "create_room answered creation_paused.",
            )?,
            socketio_recovery,
            socketio_relayed,
            socketio_emitter_messages,
            op_durations,
        })
    }
}

/// Delivery to local sockets, and the pub/sub path between nodes.
struct DeliverySeries {
    messages_delivered: IntCounter,
    publish_latency: Histogram,
    subscribed_channels: IntGauge,
    pubsub_dropped: IntCounter,
    pubsub_resubscribes: IntCounter,
    history_repairs: IntCounter,
    pubsub_duplicates: IntCounter,
    offset_conflicts: IntCounter,
}

impl DeliverySeries {
    fn new(r: &Series) -> prometheus::Result<DeliverySeries> {
        Ok(DeliverySeries {
            messages_delivered: r.counter(
                "messages_delivered_total",
                "Frames queued to clients by fan-out.",
            )?,
            publish_latency: r.histogram(
                "publish_to_deliver_seconds",
                "From publish to local delivery.",
                LATENCY_BUCKETS.to_vec(),
            )?,
            subscribed_channels: r
                .gauge("subscribed_channels", "Room channels this node receives.")?,
            pubsub_dropped: r.counter(
                "pubsub_dropped_total",
                "Pub/sub messages dropped before delivery (full queues, client lag).",
            )?,
            pubsub_resubscribes: r.counter(
                "pubsub_resubscribes_total",
                "Room channels subscribed again by reconcile or probes.",
            )?,
            history_repairs: r.counter(
                "history_repairs_total",
                "Messages recovered from history after an offset gap.",
            )?,
            pubsub_duplicates: r.counter(
                "pubsub_duplicates_total",
                "Pub/sub messages received twice and dropped.",
            )?,
            offset_conflicts: r.counter(
                "offset_conflicts_total",
                "Offsets reused after a hard failover lost writes (epoch retired).",
            )?,
        })
    }
}

/// The cluster as this node sees it: traffic, nodes, readiness.
struct ClusterSeries {
    local_rooms: IntGauge,
    live_nodes: IntGauge,
    traffic_level: IntGauge,
    cluster_rooms: IntGauge,
    cluster_connections: IntGauge,
    creations_per_minute: IntGauge,
    dead_nodes_reaped: IntCounter,
    node_resets: IntCounter,
    ready: IntGauge,
}

impl ClusterSeries {
    fn new(r: &Series) -> prometheus::Result<ClusterSeries> {
        Ok(ClusterSeries {
            local_rooms: r.gauge(
                "local_rooms",
                "Rooms with at least one member on this node.",
            )?,
            live_nodes: r.gauge("live_nodes", "Gateway nodes with a live heartbeat.")?,
            traffic_level: r.gauge(
                "traffic_level",
                "Traffic level: 0 normal, 1 high, 2 critical.",
            )?,
            cluster_rooms: r.gauge("cluster_active_rooms", "Rooms in the whole cluster.")?,
            cluster_connections: r.gauge(
                "cluster_active_connections",
                "Connections in the whole cluster.",
            )?,
            creations_per_minute: r.gauge(
                "room_creations_per_minute",
                "Room creations in the last sliding minute, cluster-wide.",
            )?,
            dead_nodes_reaped: r.counter(
                "dead_nodes_reaped_total",
                "Dead nodes whose members this node removed from presence.",
            )?,
            node_resets: r.counter(
                "node_resets_total",
                "Times this node learned that its peers had declared it dead (its clients were told to reconnect).",
            )?,
            ready: r.gauge(
                "ready",
                "1 while the node is ready (backend usable, pub/sub probes passing, not draining).",
            )?,
        })
    }
}

/// The Redis backend's commands, as its [`CommandObserver`] reports them. Created on every
/// node, embedded ones included, so the series are the same whatever the backend.
struct RedisSeries {
    redis_duration: HistogramVec,
    redis_errors: IntCounterVec,
    redis_by_command: Vec<(Histogram, IntCounter)>,
}

impl RedisSeries {
    fn new(r: &Series) -> prometheus::Result<RedisSeries> {
        let redis_duration = r.histogram_vec(
            "redis_command_duration_seconds",
            "Redis command and script duration.",
            LATENCY_BUCKETS.to_vec(),
            &["command"],
        )?;
        let redis_errors = r.counter_vec(
            "redis_errors_total",
            "Redis commands that failed, by command.",
            &["command"],
        )?;
        let redis_by_command = Command::ALL
            .iter()
            .map(|c| {
                (
                    redis_duration.with_label_values(&[c.as_str()]),
                    redis_errors.with_label_values(&[c.as_str()]),
                )
            })
            .collect();
        Ok(RedisSeries {
            redis_duration,
            redis_errors,
            redis_by_command,
        })
    }
}

/// Webhooks (`crate::webhooks`): what was queued, delivered, retried, and how far behind.
pub struct WebhookSeries {
    /// Events made on this node, by `result`: `queued`, `lost` (the queue refused it through
    /// every retry).
    pub events: IntCounterVec,
    /// Events the app acknowledged (2xx), sent by this node.
    pub delivered: IntCounter,
    /// POSTs that failed (not 2xx, timeout, no connection); each is retried.
    pub failures: IntCounter,
    /// Age of the oldest undelivered event in the shards this node delivers.
    pub lag_seconds: IntGauge,
    /// Queue shards this node delivers (holds the lease of).
    pub shards_held: IntGauge,
}

impl WebhookSeries {
    fn new(r: &Series) -> prometheus::Result<WebhookSeries> {
        let events = r.counter_vec(
            "webhook_events_total",
            "Webhook events made on this node, by result (queued, lost).",
            &["result"],
        )?;
        for result in ["queued", "lost"] {
            events.with_label_values(&[result]);
        }
        Ok(WebhookSeries {
            events,
            delivered: r.counter(
                "webhook_delivered_total",
                "Webhook events the app acknowledged (2xx), sent by this node.",
            )?,
            failures: r.counter(
                "webhook_failures_total",
                "Webhook POSTs that failed (not 2xx, timeout, no connection) and are retried.",
            )?,
            lag_seconds: r.gauge(
                "webhook_lag_seconds",
                "Age of the oldest undelivered webhook event in the shards this node delivers.",
            )?,
            shards_held: r.gauge(
                "webhook_shards_held",
                "Webhook queue shards this node delivers (holds the lease of).",
            )?,
        })
    }
}

/// The archiver (`crate::archiver`): how far behind the archive is, and what it stored.
pub struct ArchiveSeries {
    /// Messages not yet archived in the dirty rooms this node read in its last round.
    pub lag_messages: IntGauge,
    /// Age of the oldest dirty mark in the shards this node archives: when the room's oldest
    /// unarchived message arrived, to within a round.
    pub lag_seconds: IntGauge,
    /// Messages handed to the archive, by `result`: `stored`, `duplicate` (already there: a
    /// retry after a crash or a failover), `failed` (the batch will be retried).
    pub messages: IntCounterVec,
    /// Dirty-room shards this node holds the lease of.
    pub shards_held: IntGauge,
    /// Messages dropped by `--archive-retention`.
    pub retention_dropped: IntCounter,
    /// Rooms by `event`: `slept` (saved to the archive and removed from room-state), `woken`
    /// (brought back by this node), `saved_at_drain` (the embedded backend's rooms, saved as
    /// the node stops).
    pub rooms: IntCounterVec,
}

impl ArchiveSeries {
    fn new(r: &Series) -> prometheus::Result<ArchiveSeries> {
        let messages = r.counter_vec(
            "archive_messages_total",
            "Messages the archiver handed to the archive, by result (stored, duplicate, failed).",
            &["result"],
        )?;
        for result in ["stored", "duplicate", "failed"] {
            messages.with_label_values(&[result]);
        }
        let rooms = r.counter_vec(
            "archive_rooms_total",
            "Rooms put to sleep in the archive, woken from it, or saved at a drain, by event.",
            &["event"],
        )?;
        for event in ["slept", "woken", "saved_at_drain"] {
            rooms.with_label_values(&[event]);
        }
        Ok(ArchiveSeries {
            lag_messages: r.gauge(
                "archive_lag_messages",
                "Messages not yet archived, in the dirty rooms of the shards this node archives.",
            )?,
            lag_seconds: r.gauge(
                "archive_lag_seconds",
                "Age of the oldest message not yet archived, in the shards this node archives.",
            )?,
            messages,
            shards_held: r.gauge(
                "archive_shards_held",
                "Dirty-room shards this node archives (holds the lease of).",
            )?,
            retention_dropped: r.counter(
                "archive_retention_dropped_total",
                "Archived messages dropped by --archive-retention.",
            )?,
            rooms,
        })
    }
}

impl CommandObserver for Metrics {
    fn observe(&self, command: Command, seconds: f64, failed: bool) {
        let (duration, errors) = &self.redis_by_command[command as usize];
        duration.observe(seconds);
        if failed {
            errors.inc();
        }
    }
}

impl PubSubHooks for Metrics {
    fn pubsub_dropped(&self, n: u64) {
        self.pubsub_dropped.inc_by(n);
    }

    /// Not counted: no message was lost, and `pubsub_dropped_total` counts messages.
    fn hint_dropped(&self) {}

    fn resubscribed(&self, n: u64) {
        self.pubsub_resubscribes.inc_by(n);
    }

    fn repaired(&self, n: u64) {
        self.history_repairs.inc_by(n);
    }

    fn duplicate(&self) {
        self.pubsub_duplicates.inc();
    }

    fn conflict(&self) {
        self.offset_conflicts.inc();
    }
}

impl DeliveryHooks for Metrics {
    fn delivered(&self, frames: u64, _bytes: u64) {
        self.messages_delivered.inc_by(frames);
    }

    fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    fn publish_latency(&self, ms: f64) {
        self.publish_latency.observe(ms / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_reasons_are_positions() {
        for (i, reason) in DisconnectReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{}", reason.as_str());
        }
    }

    #[test]
    fn kept_children_are_the_labelled_series() {
        let m = Metrics::new().expect("metrics");
        m.disconnect(DisconnectReason::Kicked);
        m.op_duration("join").observe(0.01);
        m.observe(Command::BucketTake, 0.001, true);
        assert_eq!(m.disconnects.with_label_values(&["kicked"]).get(), 1);
        assert_eq!(
            m.command_duration
                .with_label_values(&["join"])
                .get_sample_count(),
            1
        );
        assert_eq!(m.redis_errors.with_label_values(&["bucket_take"]).get(), 1);
        let text = String::from_utf8(m.render()).expect("utf-8");
        // Known series exist at zero before any event.
        assert!(text.contains(r#"roomcast_redis_errors_total{command="reset_epoch"} 0"#));
        assert!(text.contains(r#"roomcast_backend_errors_total{op="traffic"} 0"#));
        assert!(text.contains(r#"roomcast_disconnects_total{reason="policy"} 0"#));
    }
}
