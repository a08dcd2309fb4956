//! The Redis Cluster backend, through fred. fred stays inside this module: the public surface
//! is [`RedisSettings`] (plain data) in, and [`RedisState`] with the store traits out.
//!
//! Commands go through a [`redis_cluster::Router`]: one client per primary, so a failing
//! primary stalls only the rooms (and keys) of its own shard. Its fred settings are the ones
//! `redis_cluster::configure` makes explicit, shared with the fan-out's clients.

mod archive_feed;
mod audit;
mod events;
mod keys;
mod limits;
mod rooms;
mod scripts;
mod sessions;
mod traffic;
mod users;
mod warm;

use crate::ephemeral::EphemeralRooms;
use crate::error::StateError;
use crate::observer::{Command, CommandObserver};
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::Value;
use std::sync::Arc;
use std::time::Duration;

/// How to reach and use the cluster.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// Seed nodes, `redis://host:port`.
    pub urls: Vec<String>,
    /// Unused since commands go through one client per primary; kept for the settings'
    /// shape (`--redis-pool-size`).
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

/// All scripts, one per [`Command`] that is a script, loaded on first use by SHA. Looking a
/// script up by its command is what keeps the name reported to the observer the name of the
/// script that ran.
struct Scripts([Option<Script>; Command::ALL.len()]);

impl Scripts {
    fn new() -> Scripts {
        Scripts(Command::ALL.map(|c| lua(c).map(Script::from_lua)))
    }

    fn get(&self, command: Command) -> Result<&Script, StateError> {
        self.0
            .get(command as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| StateError::Internal(format!("{} is not a script", command.as_str())))
    }

    /// Every script, for loading them ahead of use (`warm`).
    fn all(&self) -> impl Iterator<Item = &Script> {
        self.0.iter().flatten()
    }
}

/// A command's script; `None` for a plain command.
fn lua(command: Command) -> Option<String> {
    Some(match command {
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
        Command::ArchiveRead => scripts::archive_read(),
        Command::ArchiveAdvance => scripts::ARCHIVE_ADVANCE.into(),
        Command::Lease => scripts::LEASE.into(),
        Command::Wake => scripts::WAKE.into(),
        Command::SleepState => scripts::SLEEP_STATE.into(),
        Command::SleepForget => scripts::SLEEP_FORGET.into(),
        Command::IndexForget => scripts::INDEX_FORGET.into(),
        Command::ExpireRooms => scripts::EXPIRE_ROOMS.into(),
        Command::UserAdd => scripts::USER_ADD.into(),
        Command::UserRemove => scripts::USER_REMOVE.into(),
        Command::EphemeralPublish => return None,
    })
}

/// Room state, limits and traffic counters in a Redis Cluster.
pub struct RedisState {
    router: redis_cluster::Router,
    scripts: Scripts,
    settings: RedisSettings,
    observer: parking_lot::RwLock<Option<Arc<dyn CommandObserver>>>,
    /// Redis's clock minus ours, in ms, from the last health check: a publish's deadline is
    /// given in Redis's time.
    clock_skew_ms: std::sync::atomic::AtomicI64,
    /// Recent acknowledgements, checked against a slot's new owner (`audit`).
    audit: audit::Audit,
    /// The ephemeral rooms this node knows of (`RoomStore::is_ephemeral`), learned from
    /// create and join replies (and the publish script's ephemeral answer).
    ephemeral: EphemeralRooms,
    /// Whether publishes mark rooms for the archiver (`ArchiveFeed::enable_archiving`).
    archiving: std::sync::atomic::AtomicBool,
    /// Unarchived messages per room past which a publish is refused (`--archive-backlog-cap`).
    archive_backlog_cap: std::sync::atomic::AtomicU64,
}

impl RedisState {
    /// Connects a client per primary, and starts the acknowledgement audit. Does not fail
    /// when the cluster is down: commands then answer `unavailable` or `timeout` until it is
    /// reachable.
    pub async fn connect(settings: RedisSettings) -> Result<Arc<RedisState>, StateError> {
        let router = redis_cluster::Router::connect(&settings.urls, settings.command_timeout)
            .await
            .map_err(StateError::Internal)?;
        let state = Arc::new(RedisState {
            router,
            scripts: Scripts::new(),
            settings,
            observer: parking_lot::RwLock::new(None),
            clock_skew_ms: std::sync::atomic::AtomicI64::new(0),
            audit: audit::Audit::default(),
            ephemeral: EphemeralRooms::default(),
            archiving: std::sync::atomic::AtomicBool::new(false),
            archive_backlog_cap: std::sync::atomic::AtomicU64::new(
                crate::archive_feed::ARCHIVE_BACKLOG_CAP,
            ),
        });
        audit::start(&state);
        warm::start(&state);
        Ok(state)
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

    /// Runs a command's script on its first key's primary, and reports it.
    async fn eval(
        &self,
        command: Command,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Value, StateError> {
        Ok(self.eval_routed(command, keys, args).await?.0 .0)
    }

    /// Runs a command's script on its first key's primary (once more on the new owner after
    /// a MOVED), and reports it. Returns the client that ran it (the connection that wrote),
    /// and the address of the primary it reaches, when the slot's owner was known.
    async fn eval_routed(
        &self,
        command: Command,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<((Value, Client), Option<Arc<str>>), StateError> {
        let script = self.scripts.get(command)?;
        let route = keys.first().cloned().unwrap_or_default();
        self.timed(
            command,
            self.router.run_at(&route, |client| {
                let keys = keys.clone();
                let args = args.clone();
                async move {
                    let v = script
                        .evalsha_with_reload::<Value, _, _>(&client, keys, args)
                        .await?;
                    Ok((v, client))
                }
            }),
        )
        .await
    }

    /// The client of `key`'s primary, for a plain keyed command.
    fn on(&self, key: &str) -> Client {
        self.router.client_for_key(key)
    }

    /// Maps a plain command's error, asking the router to read the slot map again (the
    /// error may be a MOVED, or a primary gone).
    fn failed(&self, e: Error) -> StateError {
        self.router.refresh_soon();
        fred_error(e)
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
