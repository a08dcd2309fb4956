//! Command-line and environment configuration. Every flag can also be set through the
//! `ROOMCAST_*` variable named in its help.

use clap::Parser;
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// What a node does when the app behind a proxy flag cannot give an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Refuse: the connection or publish fails with a retryable error.
    Closed,
    /// Go on without the app, as if no proxy were configured.
    Open,
}

fn fail_mode(s: &str) -> Result<FailMode, String> {
    match s {
        "closed" => Ok(FailMode::Closed),
        "open" => Ok(FailMode::Open),
        _ => Err("expected open or closed".into()),
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "roomcast",
    version,
    about = "roomcast: a horizontally scaled real-time rooms gateway"
)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket.
    #[arg(long, env = "ROOMCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// The `host:port` other nodes reach this node's HTTP listener at (default: the listen
    /// address). Registered with the node's heartbeat; a node that gets a long-polling
    /// request for a session this node owns forwards it there.
    #[arg(long, env = "ROOMCAST_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,

    /// This node's id in the cluster (default: random).
    #[arg(long, env = "ROOMCAST_NODE_ID")]
    pub node_id: Option<String>,

    /// Seed nodes of a Redis Cluster (`redis://host:port`, comma separated). Without it the
    /// node runs on the embedded in-memory backend.
    #[arg(long, env = "ROOMCAST_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,

    /// Clients in the Redis command pool (each has a connection to every primary).
    #[arg(long, env = "ROOMCAST_REDIS_POOL_SIZE", default_value_t = 4)]
    pub redis_pool_size: usize,

    /// A Redis command slower than this fails (`unavailable`).
    #[arg(long, env = "ROOMCAST_REDIS_COMMAND_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub redis_command_timeout: Duration,

    /// Acknowledge a publish only after a replica has it (WAIT 1 on the writing connection).
    #[arg(long, env = "ROOMCAST_DURABLE_PUBLISH")]
    pub durable_publish: bool,

    /// How long a durable publish waits for the replica.
    #[arg(long, env = "ROOMCAST_DURABLE_TIMEOUT", default_value = "500ms", value_parser = duration)]
    pub durable_timeout: Duration,

    /// A node whose heartbeat is older than this is dead: its members leave presence.
    #[arg(long, env = "ROOMCAST_NODE_TTL", default_value = "5s", value_parser = duration)]
    pub node_ttl: Duration,

    // --- Auth ---------------------------------------------------------------------------
    /// Let clients without a token in, as `anon:<ip>`.
    #[arg(long, env = "ROOMCAST_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// HS256 secret for client JWTs.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// A second HS256 secret that is still accepted, for key rotation: sign with the new
    /// `--jwt-secret`, keep the old one here until its tokens have expired.
    #[arg(long, env = "ROOMCAST_JWT_SECRET_PREVIOUS", hide_env_values = true)]
    pub jwt_secret_previous: Option<String>,

    /// PEM files with RSA (RS256) or EC P-256 (ES256) public keys for client JWTs (comma
    /// separated; a token is accepted if any of them verifies it, for key rotation).
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY", value_delimiter = ',')]
    pub jwt_public_key: Vec<PathBuf>,

    /// Required `aud` claim, if any.
    #[arg(long, env = "ROOMCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim, if any.
    #[arg(long, env = "ROOMCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock-skew leeway for `exp` and `nbf`.
    #[arg(long, env = "ROOMCAST_JWT_LEEWAY", default_value = "30s", value_parser = duration)]
    pub jwt_leeway: Duration,

    /// Bearer key for the server API (`/api/...`). Without it the API is disabled.
    #[arg(long, env = "ROOMCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// CIDRs of proxies whose `X-Forwarded-For` is trusted (comma separated).
    #[arg(long, env = "ROOMCAST_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<IpNet>,

    // --- Limits -------------------------------------------------------------------------
    /// Largest client message, after reassembly of fragments (close 1009 above it).
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Largest `data` of a publish, as JSON text with byte strings counted as their bytes
    /// (`payload_too_large` above it).
    #[arg(long, env = "ROOMCAST_MAX_DATA_BYTES", default_value_t = 64 * 1024)]
    pub max_data_bytes: usize,

    /// How long a publish's `msgId` is remembered: a retry with the same key within it is
    /// acknowledged with the first offset and not delivered again.
    #[arg(long, env = "ROOMCAST_IDEMPOTENCY_WINDOW", default_value = "2m", value_parser = duration)]
    pub idempotency_window: Duration,

    /// Outbound queue limit per connection, in bytes (close 4009 above it).
    #[arg(long, env = "ROOMCAST_OUTBOUND_QUEUE_BYTES", default_value_t = 1024 * 1024)]
    pub outbound_queue_bytes: usize,

    /// Kernel send buffer per client socket (SO_SNDBUF; the kernel doubles it). Bounds what a
    /// client that stops reading costs outside the outbound queue (0 = kernel autotuning).
    #[arg(long, env = "ROOMCAST_TCP_SEND_BUFFER_BYTES", default_value_t = 256 * 1024)]
    pub tcp_send_buffer_bytes: usize,

    /// A single socket write that takes longer than this drops the connection.
    #[arg(long, env = "ROOMCAST_WRITE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub write_timeout: Duration,

    /// Publish token bucket: tokens per second per user.
    #[arg(long, env = "ROOMCAST_PUBLISH_RATE", default_value_t = 20.0)]
    pub publish_rate: f64,

    /// Publish token bucket: burst size per user.
    #[arg(long, env = "ROOMCAST_PUBLISH_BURST", default_value_t = 40)]
    pub publish_burst: u32,

    /// Room creations per user per sliding minute.
    #[arg(long, env = "ROOMCAST_ROOM_CREATE_LIMIT", default_value_t = 5)]
    pub room_create_limit: u32,

    /// WebSocket connections per client IP on this node (0 = unlimited).
    #[arg(long, env = "ROOMCAST_MAX_CONNS_PER_IP", default_value_t = 1000)]
    pub max_conns_per_ip: usize,

    /// Connections one user may hold across the cluster (0 = unlimited; close 4008 above it),
    /// counted in the user registry; a dead node's stop counting once it is reaped.
    #[arg(long, env = "ROOMCAST_MAX_CONNS_PER_USER", default_value_t = 100)]
    pub max_conns_per_user: usize,

    /// Connections this node holds at most; further handshakes get HTTP 503 with
    /// `Retry-After` (0 = the open-file limit less 256).
    #[arg(long, env = "ROOMCAST_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// WebSocket handshakes per second this node accepts (burst: one second's worth);
    /// further handshakes get HTTP 503 with `Retry-After` (0 = unlimited).
    #[arg(long, env = "ROOMCAST_MAX_HANDSHAKE_RATE", default_value_t = 2000.0)]
    pub max_handshake_rate: f64,

    /// Browser origins allowed to open a WebSocket, such as `https://app.example.com`
    /// (comma separated; empty = any). Requests without an `Origin` header (not browsers)
    /// are not affected.
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Rooms one connection may be in at once.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS_PER_CONN", default_value_t = 100)]
    pub max_rooms_per_conn: usize,

    // --- Rooms --------------------------------------------------------------------------
    /// Default history size of a room.
    #[arg(long, env = "ROOMCAST_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: u32,

    /// Largest `historySize` a room may ask for.
    #[arg(long, env = "ROOMCAST_MAX_HISTORY_SIZE", default_value_t = 1000)]
    pub max_history_size: u32,

    /// Default lifetime of an empty room.
    #[arg(long, env = "ROOMCAST_ROOM_TTL", default_value = "1h", value_parser = duration)]
    pub room_ttl: Duration,

    // --- Archive (docs/archive.md) ------------------------------------------------------
    /// Where every acknowledged message is archived, past the Redis window: `postgres://…`
    /// (a cluster of gateways), `sqlite://PATH` (a single node; the file is created when
    /// missing), or `none`. Opened, and its migrations run, at start: a failure stops the
    /// node.
    #[arg(
        long,
        env = "ROOMCAST_ARCHIVE",
        default_value = "none",
        hide_env_values = true
    )]
    pub archive: String,

    /// Drop archived messages older than this (such as `30d`); default: keep them forever.
    #[arg(long, env = "ROOMCAST_ARCHIVE_RETENTION", value_parser = duration)]
    pub archive_retention: Option<Duration>,

    // --- Webhooks (docs/webhooks.md) -----------------------------------------------------
    /// Where room, member and user events are POSTed, in batches (a JSON array), at least
    /// once and in order per room: `http://host:port/path`. Unset: no events are made.
    #[arg(long, env = "ROOMCAST_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Signs every webhook body: header `X-Roomcast-Signature: sha256=<hex HMAC-SHA256 of
    /// the body>`. Unset: no signature header.
    #[arg(long, env = "ROOMCAST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// A webhook POST that has not answered after this fails and is retried.
    #[arg(long, env = "ROOMCAST_WEBHOOK_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub webhook_timeout: Duration,

    /// The most events in one webhook POST.
    #[arg(long, env = "ROOMCAST_WEBHOOK_BATCH", default_value_t = 100)]
    pub webhook_batch: usize,
    /// Unarchived messages a room may hold while the archive lags or is down; past it the
    /// room's publishes are refused `unavailable` until the archiver catches up (its history
    /// is not trimmed past what the archive holds, so this bounds the memory a stalled
    /// archive costs per room).
    #[arg(long, env = "ROOMCAST_ARCHIVE_BACKLOG_CAP", default_value_t = room_state::ARCHIVE_BACKLOG_CAP)]
    pub archive_backlog_cap: u64,

    // --- Traffic monitor ----------------------------------------------------------------
    /// Room creations per minute from which the level is `high`.
    #[arg(long, env = "ROOMCAST_TRAFFIC_HIGH", default_value_t = 500)]
    pub traffic_high: u64,

    /// Room creations per minute from which the level is `critical` (creation paused).
    #[arg(long, env = "ROOMCAST_TRAFFIC_CRITICAL", default_value_t = 800)]
    pub traffic_critical: u64,

    /// Hard cap of room creations per minute.
    #[arg(long, env = "ROOMCAST_TRAFFIC_CAP", default_value_t = 1000)]
    pub traffic_cap: u64,

    /// How often the traffic monitor recomputes the level and heartbeats this node.
    #[arg(long, env = "ROOMCAST_TRAFFIC_INTERVAL", default_value = "1s", value_parser = duration)]
    pub traffic_interval: Duration,

    // --- Heartbeats ---------------------------------------------------------------------
    /// How often the server pings each WebSocket client.
    #[arg(long, env = "ROOMCAST_PING_INTERVAL", default_value = "25s", value_parser = duration)]
    pub ping_interval: Duration,

    /// How long after a ping a silent client is closed (4010).
    #[arg(long, env = "ROOMCAST_PONG_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub pong_timeout: Duration,

    // --- Socket.IO (`/socket.io/`, Engine.IO v4 over WebSocket) ---
    /// Engine.IO ping interval.
    #[arg(long, env = "ROOMCAST_SOCKETIO_PING_INTERVAL", default_value = "25s", value_parser = duration)]
    pub socketio_ping_interval: Duration,

    /// How long a Socket.IO client has to answer a ping.
    #[arg(long, env = "ROOMCAST_SOCKETIO_PING_TIMEOUT", default_value = "20s", value_parser = duration)]
    pub socketio_ping_timeout: Duration,

    /// Largest Socket.IO message (and the sum of a packet's attachments), in bytes.
    #[arg(
        long,
        env = "ROOMCAST_SOCKETIO_MAX_PAYLOAD",
        default_value_t = 1_000_000
    )]
    pub socketio_max_payload: usize,

    /// Namespaces besides `/` that clients may join (comma separated, such as `/admin`).
    /// Each is isolated: its room names do not meet those of another namespace.
    #[arg(long, env = "ROOMCAST_SOCKETIO_NAMESPACES", value_delimiter = ',')]
    pub socketio_namespaces: Vec<String>,

    /// How long after a lost connection a Socket.IO client can recover its rooms and missed
    /// messages with `{pid, offset}` (connection state recovery; 0 turns it off).
    #[arg(long, env = "ROOMCAST_SOCKETIO_RECOVERY_WINDOW", default_value = "2m", value_parser = duration)]
    pub socketio_recovery_window: Duration,

    /// Behave like the server of the official Socket.IO / Engine.IO protocol test suites:
    /// namespaces echo (`message` comes back as `message-back`, `message-with-ack` is acked
    /// with its arguments), each connect gets an `auth` event, no token is needed, and
    /// `/engine.io/` is a bare Engine.IO echo. For those suites only.
    #[arg(long, env = "ROOMCAST_SOCKETIO_CONFORMANCE")]
    pub socketio_conformance: bool,

    /// The channel key prefix of `@socket.io/redis-emitter` (its `key` option): with a Redis
    /// Cluster, every node reads the emitter's broadcasts for `/` and `--socketio-namespaces`
    /// from `<key>#<nsp>#…` and delivers them to its Socket.IO sockets.
    #[arg(long, env = "ROOMCAST_SOCKETIO_EMITTER_KEY", default_value = protocol::emitter::DEFAULT_KEY)]
    pub socketio_emitter_key: String,

    /// Do not read `@socket.io/redis-emitter` channels. (Without `--redis-cluster` they are
    /// never read: the embedded backend has no Redis.)
    #[arg(long, env = "ROOMCAST_NO_SOCKETIO_EMITTER")]
    pub no_socketio_emitter: bool,

    /// A connection that joins no namespace within this is closed.
    #[arg(long, env = "ROOMCAST_SOCKETIO_CONNECT_TIMEOUT", default_value = "45s", value_parser = duration)]
    pub socketio_connect_timeout: Duration,

    // --- The app's back end (docs/operations.md, "Connect and publish proxies") -------------
    /// POST every new connection (native, and each Socket.IO namespace CONNECT) to this
    /// `http://` URL; the app allows it (with a user, a `rooms` grant, presence `info`) or
    /// refuses it with a code the client sees.
    #[arg(long, env = "ROOMCAST_CONNECT_PROXY")]
    pub connect_proxy: Option<String>,

    /// How long the connect proxy may take to answer; slower is a failure (`--connect-proxy-fail`).
    #[arg(long, env = "ROOMCAST_CONNECT_PROXY_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub connect_proxy_timeout: Duration,

    /// Connect-proxy requests in flight at once on this node; one over it is a failure at once.
    #[arg(
        long,
        env = "ROOMCAST_CONNECT_PROXY_MAX_IN_FLIGHT",
        default_value_t = 256
    )]
    pub connect_proxy_max_in_flight: usize,

    /// When the connect proxy fails (down, slow, a non-2xx, garbage, over the in-flight
    /// bound): `closed` refuses the connection (retry later), `open` lets it in as the token
    /// alone would.
    #[arg(long, env = "ROOMCAST_CONNECT_PROXY_FAIL", default_value = "closed", value_parser = fail_mode)]
    pub connect_proxy_fail: FailMode,

    /// POST every client publish (to the rooms of `--publish-proxy-rooms`) to this `http://`
    /// URL before it is sequenced; the app accepts, rejects or rewrites it.
    #[arg(long, env = "ROOMCAST_PUBLISH_PROXY")]
    pub publish_proxy: Option<String>,

    /// Room-name patterns the publish proxy applies to (comma separated; a name, or a prefix
    /// ending in `*`, as in a token's `rooms` claim). Default: every room.
    #[arg(long, env = "ROOMCAST_PUBLISH_PROXY_ROOMS", value_delimiter = ',')]
    pub publish_proxy_rooms: Vec<String>,

    /// How long the publish proxy may take to answer; slower is a failure (`--publish-proxy-fail`).
    #[arg(long, env = "ROOMCAST_PUBLISH_PROXY_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub publish_proxy_timeout: Duration,

    /// Publish-proxy requests in flight at once on this node; one over it is a failure at once.
    #[arg(
        long,
        env = "ROOMCAST_PUBLISH_PROXY_MAX_IN_FLIGHT",
        default_value_t = 1024
    )]
    pub publish_proxy_max_in_flight: usize,

    /// When the publish proxy fails: `closed` answers the publish `unavailable` (not applied,
    /// retry), `open` sequences it unchanged.
    #[arg(long, env = "ROOMCAST_PUBLISH_PROXY_FAIL", default_value = "closed", value_parser = fail_mode)]
    pub publish_proxy_fail: FailMode,

    // --- Drain --------------------------------------------------------------------------
    /// After SIGTERM: keep serving (unready) this long, so the load balancer notices.
    #[arg(long, env = "ROOMCAST_DRAIN_DELAY", default_value = "5s", value_parser = duration)]
    pub drain_delay: Duration,

    /// Spread `reconnect` + close 1012 over this window, in batches.
    #[arg(long, env = "ROOMCAST_DRAIN_WINDOW", default_value = "10s", value_parser = duration)]
    pub drain_window: Duration,

    /// Exit no later than this after SIGTERM.
    #[arg(long, env = "ROOMCAST_DRAIN_DEADLINE", default_value = "25s", value_parser = duration)]
    pub drain_deadline: Duration,

    /// Runtime worker threads (default: one per CPU core). Fewer threads mean fewer
    /// cross-thread wake-ups when several processes share few cores.
    #[arg(long, env = "ROOMCAST_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Serve a WebSocket echo endpoint at `/test/echo`, for the WebSocket conformance tests
    /// only. It shares the read and write path of the real endpoints.
    #[arg(long, env = "ROOMCAST_TEST_ECHO")]
    pub test_echo: bool,

    // --- Telemetry ----------------------------------------------------------------------
    /// Log format: `text` or `json`.
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "ROOMCAST_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// Settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.worker_threads == Some(0) {
            return Err("--worker-threads must be at least 1".into());
        }
        if self.traffic_high > self.traffic_critical {
            return Err("--traffic-high must not exceed --traffic-critical".into());
        }
        if self.max_message_bytes == 0 || self.outbound_queue_bytes == 0 {
            return Err("message and queue limits must be positive".into());
        }
        if self.drain_delay + self.drain_window > self.drain_deadline {
            return Err("--drain-delay + --drain-window must fit in --drain-deadline".into());
        }
        if self.jwt_secret_previous.is_some() && self.jwt_secret.is_none() {
            return Err("--jwt-secret-previous needs a current --jwt-secret".into());
        }
        for ns in &self.socketio_namespaces {
            if !ns.starts_with('/') || ns == "/" || ns.contains(',') {
                return Err(format!(
                    "--socketio-namespaces: {ns:?} must start with / and not be /"
                ));
            }
        }
        if self.socketio_emitter_key.is_empty() {
            return Err(
                "--socketio-emitter-key must not be empty (use --no-socketio-emitter)".into(),
            );
        }
        if self.archive_url().is_none() && self.archive != "none" {
            // Only the scheme is repeated: the URL may carry a password.
            let scheme = self.archive.split_once("://").map_or("(none)", |(s, _)| s);
            return Err(format!(
                "--archive must be postgres://…, sqlite://PATH or none, not scheme {scheme:?}"
            ));
        }
        if self.archive_retention.is_some() && self.archive_url().is_none() {
            return Err("--archive-retention needs an --archive".into());
        }
        if self.archive_retention.is_some_and(|d| d.is_zero()) {
            return Err("--archive-retention must be positive".into());
        }
        if let Some(url) = &self.webhook_url {
            if !url.starts_with("http://") || url.parse::<hyper::Uri>().is_err() {
                return Err("--webhook-url must be an http:// URL".into());
            }
        }
        if self.webhook_secret.is_some() && self.webhook_url.is_none() {
            return Err("--webhook-secret needs a --webhook-url".into());
        }
        if self.webhook_batch == 0 || self.webhook_timeout.is_zero() {
            return Err("--webhook-batch and --webhook-timeout must be positive".into());
        }
        if self.webhook_timeout >= crate::webhooks::deliver::MAX_POST_TIMEOUT {
            return Err(format!(
                "--webhook-timeout must be under {:?}: a POST must end within a shard's lease",
                crate::webhooks::deliver::MAX_POST_TIMEOUT
            ));
        }
        for url in [&self.connect_proxy, &self.publish_proxy]
            .into_iter()
            .flatten()
        {
            crate::backend_hooks::parse_url(url)?;
        }
        if self.connect_proxy_max_in_flight == 0 || self.publish_proxy_max_in_flight == 0 {
            return Err("--*-proxy-max-in-flight must be at least 1".into());
        }
        if self.connect_proxy_timeout.is_zero() || self.publish_proxy_timeout.is_zero() {
            return Err("--*-proxy-timeout must be positive".into());
        }
        for pattern in &self.publish_proxy_rooms {
            if pattern.is_empty() || pattern.trim_end_matches('*').contains('*') {
                return Err(format!(
                    "--publish-proxy-rooms: {pattern:?} must be a name or a prefix ending in *"
                ));
            }
        }
        if self.archive_backlog_cap == 0 {
            return Err("--archive-backlog-cap must be at least 1".into());
        }
        if self.jwt_secret.is_none() && self.jwt_public_key.is_empty() && !self.allow_anonymous {
            return Err(
                "no way to authenticate: set --jwt-secret, --jwt-public-key or --allow-anonymous"
                    .into(),
            );
        }
        Ok(())
    }

    /// The archive's URL, or `None` for `--archive none`.
    pub fn archive_url(&self) -> Option<&str> {
        let url = self.archive.as_str();
        let known = ["postgres://", "postgresql://", "sqlite://"];
        known.iter().any(|p| url.starts_with(p)).then_some(url)
    }

    /// A config with every default, for tests and embedding.
    pub fn defaults() -> Config {
        Config::parse_from(["roomcast"])
    }
}
