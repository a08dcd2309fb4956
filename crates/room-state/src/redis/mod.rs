//! The Redis Cluster backend, through fred. fred stays inside this module: the public surface
//! is [`RedisSettings`] (plain data) in, and [`RedisState`] with the store traits out.
//!
//! fred's defaults do not suit a server (see `docs/architecture.md`, "fred"): no reconnect
//! policy, no command timeout, no unresponsive-socket detection, and event channels of 32.
//! `builder` sets every one of them explicitly. The fan-out's own clients (`fan-out`'s
//! `redis::client`) make the same choices, for the same reasons.

mod keys;
mod limits;
mod rooms;
mod scripts;
mod sessions;
mod traffic;

use crate::error::StateError;
use crate::observer::{Command, CommandObserver};
use fred::prelude::*;
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use fred::types::scripts::Script;
use fred::types::Value;
use std::sync::Arc;
use std::time::Duration;

/// How to reach and use the cluster.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Seed nodes, `redis://host:port`.
    pub urls: Vec<String>,
    /// Clients in the command pool (each holds a connection to every primary).
    pub pool_size: usize,
    /// A command that takes longer fails with `unavailable`.
    pub command_timeout: Duration,
    /// Acknowledge a publish only once a replica has it (WAIT 1).
    pub durable_publish: bool,
    /// How long WAIT may block.
    pub durable_timeout: Duration,
    /// Defaults used when a room's meta is rebuilt after loss.
    pub default_history: u32,
    pub default_ttl_ms: u64,
}

/// A fred builder with every setting that matters made explicit.
fn builder(settings: &RedisSettings) -> Result<Builder, StateError> {
    let mut hosts = Vec::new();
    for url in &settings.urls {
        let rest = url
            .trim()
            .strip_prefix("redis://")
            .ok_or_else(|| StateError::Internal(format!("not a redis:// URL: {url}")))?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(|| StateError::Internal(format!("no port in {url}")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| StateError::Internal(format!("bad port in {url}")))?;
        hosts.push((host.to_string(), port));
    }
    if hosts.is_empty() {
        return Err(StateError::Internal("no Redis Cluster seed nodes".into()));
    }
    let config = Config {
        server: ServerConfig::new_clustered(hosts),
        // A node may start before Redis; it reports unready until the cluster answers.
        fail_fast: false,
        ..Config::default()
    };
    let timeout = settings.command_timeout;
    let mut builder = Builder::from_config(config);
    builder
        .with_performance_config(|p| {
            p.default_command_timeout = timeout;
            // fred's event channels drop messages past this (Lagged); the default is 32.
            p.broadcast_channel_capacity = 16 * 1024;
        })
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(2);
            c.internal_command_timeout = Duration::from_secs(2);
            c.max_command_attempts = 3;
            c.max_redirections = 5;
            c.cluster_cache_update_delay = Duration::from_millis(100);
            c.unresponsive = UnresponsiveConfig {
                max_timeout: Some(Duration::from_secs(5)),
                interval: Duration::from_secs(1),
            };
            // Bounded: past it commands fail with Backpressure instead of queueing forever.
            c.max_command_buffer_len = 100_000;
        })
        // Retry forever, 50 ms doubling to 250 ms, with jitter. Short on purpose: fred 10.1
        // runs one routing task per client, and while it reconnects (a primary died and is
        // still listed in CLUSTER SLOTS until its replica is promoted) every command of the
        // client waits, whatever its shard. With a 2 s cap the retry after the promotion came
        // up to 2 s late, so healthy shards stalled ~5.5 s; now they resume within 250 ms of
        // the promotion (cluster-node-timeout plus the election).
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 250, 2));
    Ok(builder)
}

/// Sorts a fred error by what the caller can know of the command's fate.
///
/// - Not applied (`Unavailable`): fred refused to send it (backpressure, no route, a cluster
///   error before sending), or Redis answered with an error that means it refused the write:
///   a cluster that is down or moving, a replica, too few replicas (`min-replicas-to-write`).
/// - Unknown (`Timeout`): it may have been written and not answered (a timeout, a connection
///   lost or a command canceled in flight). fred may even send a queued command after the
///   caller gave up on it, which is how a publish once answered `unavailable` was delivered
///   seconds later.
pub(crate) fn fred_error(e: Error) -> StateError {
    match e.kind() {
        ErrorKind::Cluster | ErrorKind::Backpressure | ErrorKind::Routing => {
            StateError::Unavailable(e.to_string())
        }
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled => {
            StateError::Timeout(e.to_string())
        }
        _ if is_refusal(e.details()) => StateError::Unavailable(e.to_string()),
        _ => StateError::Internal(e.to_string()),
    }
}

/// Redis error replies that mean the command was not applied.
fn is_refusal(details: &str) -> bool {
    const REFUSALS: [&str; 6] = [
        "NOREPLICAS",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "READONLY",
        "MASTERDOWN",
        "LOADING",
    ];
    REFUSALS.iter().any(|r| details.trim_start().starts_with(r))
}

/// All scripts, one per [`Command`], loaded on first use by SHA. Looking a script up by its
/// command is what keeps the name reported to the observer the name of the script that ran.
struct Scripts([Script; Command::ALL.len()]);

impl Scripts {
    fn new() -> Scripts {
        Scripts(Command::ALL.map(|c| Script::from_lua(lua(c))))
    }

    fn get(&self, command: Command) -> &Script {
        &self.0[command as usize]
    }
}

fn lua(command: Command) -> String {
    match command {
        Command::Create => scripts::CREATE.into(),
        Command::Join => scripts::join(),
        Command::Leave => scripts::LEAVE.into(),
        Command::Publish => scripts::publish(),
        Command::Members => scripts::members(),
        Command::History => scripts::history(),
        Command::Info => scripts::info(),
        Command::Close => scripts::close(),
        Command::WindowAcquire => scripts::WINDOW_ACQUIRE.into(),
        Command::WindowRelease => scripts::WINDOW_RELEASE.into(),
        Command::BucketTake => scripts::BUCKET_TAKE.into(),
        Command::RecordCreation => scripts::RECORD_CREATION.into(),
        Command::ClaimDeadNodes => scripts::CLAIM_DEAD_NODES.into(),
        Command::Heartbeat => scripts::HEARTBEAT.into(),
        Command::ResetEpoch => scripts::RESET_EPOCH.into(),
    }
}

/// Room state, limits and traffic counters in a Redis Cluster.
pub struct RedisState {
    pool: Pool,
    scripts: Scripts,
    settings: RedisSettings,
    observer: parking_lot::RwLock<Option<Arc<dyn CommandObserver>>>,
}

impl RedisState {
    /// Connects the command pool. Does not fail when the cluster is down: commands then answer
    /// `unavailable` until it is reachable.
    pub async fn connect(settings: RedisSettings) -> Result<RedisState, StateError> {
        let pool = builder(&settings)?
            .build_pool(settings.pool_size.max(1))
            .map_err(fred_error)?;
        pool.init().await.map_err(fred_error)?;
        Ok(RedisState {
            pool,
            scripts: Scripts::new(),
            settings,
            observer: parking_lot::RwLock::new(None),
        })
    }

    /// Reports every command's duration and failures to `observer`.
    pub fn set_observer(&self, observer: Arc<dyn CommandObserver>) {
        *self.observer.write() = Some(observer);
    }

    /// Runs one Redis command (or script) and reports it.
    async fn timed<T>(
        &self,
        command: Command,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, StateError> {
        let start = std::time::Instant::now();
        let result = fut.await;
        if let Some(observer) = self.observer.read().as_ref() {
            observer.observe(command, start.elapsed().as_secs_f64(), result.is_err());
        }
        result.map_err(fred_error)
    }

    /// Runs a command's script on a client of the pool, and reports it.
    async fn eval(
        &self,
        command: Command,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StateError> {
        self.eval_on(self.pool.next(), command, keys, args).await
    }

    /// Runs a command's script on `client`, and reports it.
    async fn eval_on(
        &self,
        client: &Client,
        command: Command,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StateError> {
        let script = self.scripts.get(command);
        self.timed(
            command,
            script.evalsha_with_reload::<Value, _, _>(client, keys, args),
        )
        .await
    }
}

/// Reads a script's reply as an array.
pub(crate) fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

pub(crate) fn int(v: Option<&Value>) -> Result<i64, StateError> {
    v.and_then(Value::as_i64)
        .ok_or_else(|| StateError::Internal("unexpected script reply".into()))
}

pub(crate) fn string(v: Option<&Value>) -> Result<String, StateError> {
    v.and_then(Value::as_string)
        .ok_or_else(|| StateError::Internal("unexpected script reply".into()))
}
