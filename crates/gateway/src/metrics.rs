//! Prometheus metrics, all prefixed `roomcast_`. Labelled children that the hot path uses are
//! looked up once and kept, because a lookup hashes its label values every time.

use fan_out::DeliveryHooks;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why a connection ended; the `reason` label of `roomcast_disconnects_total`.
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

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub connections_accepted: IntCounter,
    pub connections_rejected: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub messages_published: IntCounter,
    pub messages_delivered: IntCounter,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub rate_limited: IntCounterVec,
    pub socketio_recovery: IntCounterVec,
    pub room_creations: IntCounter,
    pub creation_paused: IntCounter,
    pub local_rooms: IntGauge,
    pub subscribed_channels: IntGauge,
    pub live_nodes: IntGauge,
    pub traffic_level: IntGauge,
    pub cluster_rooms: IntGauge,
    pub cluster_connections: IntGauge,
    pub creations_per_minute: IntGauge,
    pub command_duration: HistogramVec,
    pub publish_latency: Histogram,
    pub outbound_queue_bytes: Histogram,
    pub backend_errors: IntCounterVec,
    pub slow_consumers: IntCounter,
    pub pubsub_dropped: IntCounter,
    pub pubsub_resubscribes: IntCounter,
    pub history_repairs: IntCounter,
    pub pubsub_duplicates: IntCounter,
    pub dead_nodes_reaped: IntCounter,
    pub node_resets: IntCounter,
    pub offset_conflicts: IntCounter,
    pub ready: IntGauge,
    pub redis_duration: HistogramVec,
    pub redis_errors: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace("roomcast"))?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("roomcast"), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace("roomcast"))?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> prometheus::Result<Histogram> {
    let h = Histogram::with_opts(
        HistogramOpts::new(name, help)
            .namespace("roomcast")
            .buckets(buckets),
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let metrics = Metrics::unregistered_series()?;
        metrics.init_series();
        Ok(metrics)
    }

    fn unregistered_series() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let connections = IntGaugeVec::new(
            Opts::new(
                "connections",
                "Open client connections by protocol and format.",
            )
            .namespace("roomcast"),
            &["protocol", "format"],
        )?;
        registry.register(Box::new(connections.clone()))?;
        let command_duration = HistogramVec::new(
            HistogramOpts::new("command_duration_seconds", "Time to answer a client op.")
                .namespace("roomcast")
                .buckets(latency_buckets.clone()),
            &["op"],
        )?;
        registry.register(Box::new(command_duration.clone()))?;
        let redis_duration = HistogramVec::new(
            HistogramOpts::new(
                "redis_command_duration_seconds",
                "Redis command and script duration.",
            )
            .namespace("roomcast")
            .buckets(latency_buckets.clone()),
            &["command"],
        )?;
        registry.register(Box::new(redis_duration.clone()))?;
        Ok(Metrics {
            connections,
            connections_accepted: counter(
                &registry,
                "connections_accepted_total",
                "WebSocket connections accepted.",
            )?,
            connections_rejected: counter_vec(
                &registry,
                "connections_rejected_total",
                "Connections refused, by reason.",
                &["reason"],
            )?,
            disconnects: counter_vec(
                &registry,
                "disconnects_total",
                "Connections ended, by reason.",
                &["reason"],
            )?,
            messages_published: counter(
                &registry,
                "messages_published_total",
                "Messages accepted for publishing.",
            )?,
            messages_delivered: counter(
                &registry,
                "messages_delivered_total",
                "Frames queued to clients by fan-out.",
            )?,
            bytes_in: counter(
                &registry,
                "bytes_in_total",
                "WebSocket payload bytes received.",
            )?,
            bytes_out: counter(
                &registry,
                "bytes_out_total",
                "WebSocket payload bytes written.",
            )?,
            rate_limited: counter_vec(
                &registry,
                "rate_limited_total",
                "Requests refused by a rate limit, by limit.",
                &["limit"],
            )?,
            socketio_recovery: counter_vec(
                &registry,
                "socketio_recovery_total",
                "Socket.IO connection state recovery: states saved, recovered, failed.",
                &["outcome"],
            )?,
            room_creations: counter(
                &registry,
                "room_creations_total",
                "Rooms created through this node.",
            )?,
            creation_paused: counter(
                &registry,
                "creation_paused_total",
                "create_room answered creation_paused.",
            )?,
            local_rooms: gauge(
                &registry,
                "local_rooms",
                "Rooms with at least one member on this node.",
            )?,
            subscribed_channels: gauge(
                &registry,
                "subscribed_channels",
                "Room channels this node receives.",
            )?,
            live_nodes: gauge(
                &registry,
                "live_nodes",
                "Gateway nodes with a live heartbeat.",
            )?,
            traffic_level: gauge(
                &registry,
                "traffic_level",
                "Traffic level: 0 normal, 1 high, 2 critical.",
            )?,
            cluster_rooms: gauge(
                &registry,
                "cluster_active_rooms",
                "Rooms in the whole cluster.",
            )?,
            cluster_connections: gauge(
                &registry,
                "cluster_active_connections",
                "Connections in the whole cluster.",
            )?,
            creations_per_minute: gauge(
                &registry,
                "room_creations_per_minute",
                "Room creations in the last sliding minute, cluster-wide.",
            )?,
            command_duration,
            publish_latency: histogram(
                &registry,
                "publish_to_deliver_seconds",
                "From publish to local delivery.",
                latency_buckets,
            )?,
            outbound_queue_bytes: histogram(
                &registry,
                "outbound_queue_bytes",
                "Outbound queue depth when a frame is written.",
                prometheus::exponential_buckets(64.0, 4.0, 10)?,
            )?,
            backend_errors: counter_vec(
                &registry,
                "backend_errors_total",
                "State backend errors, by operation.",
                &["op"],
            )?,
            slow_consumers: counter(
                &registry,
                "slow_consumers_total",
                "Connections whose outbound queue overflowed (closed with 4009).",
            )?,
            pubsub_dropped: counter(
                &registry,
                "pubsub_dropped_total",
                "Pub/sub messages dropped before delivery (full queues, client lag).",
            )?,
            pubsub_resubscribes: counter(
                &registry,
                "pubsub_resubscribes_total",
                "Room channels subscribed again by reconcile or probes.",
            )?,
            history_repairs: counter(
                &registry,
                "history_repairs_total",
                "Messages recovered from history after an offset gap.",
            )?,
            pubsub_duplicates: counter(
                &registry,
                "pubsub_duplicates_total",
                "Pub/sub messages received twice and dropped.",
            )?,
            ready: gauge(
                &registry,
                "ready",
                "1 while the node is ready (backend usable, pub/sub probes passing, not draining).",
            )?,
            redis_duration,
            redis_errors: counter_vec(
                &registry,
                "redis_errors_total",
                "Redis commands that failed, by command.",
                &["command"],
            )?,
            offset_conflicts: counter(
                &registry,
                "offset_conflicts_total",
                "Offsets reused after a hard failover lost writes (epoch retired).",
            )?,
            dead_nodes_reaped: counter(
                &registry,
                "dead_nodes_reaped_total",
                "Dead nodes whose members this node removed from presence.",
            )?,
            node_resets: counter(
                &registry,
                "node_resets_total",
                "Times this node learned that its peers had declared it dead (its clients were told to reconnect).",
            )?,
            registry,
        })
    }

    /// Creates the labelled series that are known in advance, at zero, so that dashboards and
    /// alerts see them before the first event.
    pub fn init_series(&self) {
        for (protocol, format) in [
            ("native", "json"),
            ("native", "msgpack"),
            ("socketio", "socketio"),
        ] {
            self.connections.with_label_values(&[protocol, format]);
        }
        for reason in [
            "ip_limit",
            "user_limit",
            "auth",
            "origin",
            "capacity",
            "handshake_rate",
            "accept_error",
        ] {
            self.connections_rejected.with_label_values(&[reason]);
        }
        for outcome in ["saved", "recovered", "failed"] {
            self.socketio_recovery.with_label_values(&[outcome]);
        }
        for reason in [
            DisconnectReason::Client,
            DisconnectReason::SlowConsumer,
            DisconnectReason::ProtocolError,
            DisconnectReason::Auth,
            DisconnectReason::Drain,
            DisconnectReason::Kicked,
            DisconnectReason::Timeout,
            DisconnectReason::Policy,
        ] {
            self.disconnects.with_label_values(&[reason.as_str()]);
        }
        for limit in ["publish", "room_create"] {
            self.rate_limited.with_label_values(&[limit]);
        }
        for op in [
            "create_room",
            "join",
            "leave",
            "publish",
            "presence",
            "history",
            "ping",
        ] {
            self.command_duration.with_label_values(&[op]);
            self.backend_errors.with_label_values(&[op]);
        }
        self.backend_errors.with_label_values(&["traffic"]);
        for command in room_state::redis::COMMANDS {
            self.redis_errors.with_label_values(&[command]);
        }
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

    pub fn disconnect(&self, reason: DisconnectReason) {
        self.disconnects.with_label_values(&[reason.as_str()]).inc();
    }
}

impl room_state::redis::CommandObserver for Metrics {
    fn observe(&self, command: &'static str, seconds: f64, failed: bool) {
        self.redis_duration
            .with_label_values(&[command])
            .observe(seconds);
        if failed {
            self.redis_errors.with_label_values(&[command]).inc();
        }
    }
}

impl fan_out::PubSubHooks for Metrics {
    fn pubsub_dropped(&self, n: u64) {
        self.pubsub_dropped.inc_by(n);
    }

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
