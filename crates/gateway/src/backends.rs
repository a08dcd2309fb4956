//! The backends a node runs on, and the one place that picks their implementations: embedded
//! (in memory) or Redis Cluster. The rest of the gateway sees trait objects only, and no Redis
//! client type: each backend crate builds its own clients from plain settings.
//!
//! This is also where room-state and fan-out meet: the fan-out repairs gaps from a room's
//! history through its own [`HistorySource`] trait, and [`StoreHistory`] serves it from the
//! room store, so neither crate depends on the other.

use crate::config::Config;
use crate::metrics::Metrics;
use async_trait::async_trait;
use fan_out::{
    FanOut, HistorySource, MemoryFanOut, RedisFanOut, RedisFanOutConfig, Registry, Tail,
};
use protocol::envelope::Envelope;
use protocol::frame::Publication;
use room_state::{
    ArchiveFeed, EventQueue, MemoryState, RateLimits, RedisSettings, RedisState, RoomStore,
    SessionStore, StateError, TrafficCounters, UserRegistry,
};
use std::sync::Arc;

/// The state backends, whichever implementation is behind them.
pub struct Backends {
    pub rooms: Arc<dyn RoomStore>,
    pub limits: Arc<dyn RateLimits>,
    pub traffic: Arc<dyn TrafficCounters>,
    /// Saved Socket.IO socket state, for connection state recovery.
    pub sessions: Arc<dyn SessionStore>,
    /// Every live connection of a user, on every node (`crate::users`).
    pub users: Arc<dyn UserRegistry>,
    pub fanout: Arc<dyn FanOut>,
    /// What the archiver reads: dirty rooms, messages after a cursor, leases.
    pub archive_feed: Arc<dyn ArchiveFeed>,
    /// The webhook event queue (`crate::webhooks`).
    pub events: Arc<dyn EventQueue>,
    pub name: &'static str,
}

impl Backends {
    /// Everything in this process, for a single node. The fan-out delivers into `registry`.
    pub fn embedded(registry: &Arc<Registry>, metrics: &Arc<Metrics>) -> Backends {
        let state = Arc::new(MemoryState::new());
        let fanout = Arc::new(MemoryFanOut::new(registry.clone(), metrics.clone()));
        // The room store hands each publication over under the room's lock: delivery order
        // is offset order.
        let sink = fanout.clone();
        state.set_sink(Arc::new(move |publication| {
            sink.deliver_now(&Envelope::Message(publication.clone()));
        }));
        Backends {
            rooms: state.clone(),
            limits: state.clone(),
            sessions: state.clone(),
            archive_feed: state.clone(),
            events: state.clone(),
            users: state.clone(),
            traffic: state,
            fanout,
            name: "memory",
        }
    }

    /// Room state and fan-out on the Redis Cluster of `--redis-cluster`, for node `node_id`.
    /// The fan-out delivers into `registry`; both report to `metrics`. Succeeds even when the
    /// cluster is down: the node is then unready until the cluster answers.
    pub async fn redis_cluster(
        config: &Config,
        node_id: &str,
        registry: &Arc<Registry>,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Backends> {
        let state = RedisState::connect(RedisSettings {
            urls: config.redis_cluster.clone(),
            pool_size: config.redis_pool_size,
            command_timeout: config.redis_command_timeout,
            durable_publish: config.durable_publish,
            durable_timeout: config.durable_timeout,
            default_history: config.history_size,
            default_ttl_ms: config.room_ttl.as_millis() as u64,
        })
        .await?;
        state.set_observer(metrics.clone());
        let fanout = RedisFanOut::connect(
            RedisFanOutConfig {
                pool_size: config.redis_pool_size,
                command_timeout: config.redis_command_timeout,
                ..RedisFanOutConfig::new(node_id, config.redis_cluster.clone())
            },
            registry.clone(),
            metrics.clone(),
            metrics.clone(),
            Arc::new(StoreHistory(state.clone())),
        )
        .await?;
        Ok(Backends {
            rooms: state.clone(),
            limits: state.clone(),
            sessions: state.clone(),
            archive_feed: state.clone(),
            events: state.clone(),
            users: state.clone(),
            traffic: state,
            fanout: Arc::new(fanout),
            name: "redis-cluster",
        })
    }
}

/// The archive `--archive` names, opened and migrated, or `None` for `none`.
pub async fn open_archive(config: &Config) -> anyhow::Result<Option<Arc<dyn archive::Archive>>> {
    let Some(url) = config.archive_url() else {
        return Ok(None);
    };
    // The error names the scheme only: the URL may hold a password.
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    let archive = archive::open(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the --archive ({scheme}): {e}"))?;
    Ok(Some(archive))
}

/// Gap repair reads the room store's own history.
struct StoreHistory(Arc<dyn RoomStore>);

#[async_trait]
impl HistorySource for StoreHistory {
    async fn range(&self, room: &str, after: u64, before: u64) -> Result<Vec<Publication>, String> {
        let wanted = before.saturating_sub(after + 1) as usize;
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let (messages, _) = self
            .0
            .history(room, None, wanted, Some(before))
            .await
            .map_err(|e| e.to_string())?;
        Ok(messages.into_iter().filter(|p| p.offset > after).collect())
    }

    async fn retire_epoch(&self, room: &str, epoch: &str) -> Result<(), String> {
        self.0
            .reset_epoch(room, epoch)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn tail(&self, room: &str, limit: usize) -> Result<Option<Tail>, String> {
        let (messages, epoch) = match self.0.history(room, None, limit, None).await {
            Ok(read) => read,
            Err(StateError::NotFound) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        // The newest entry of the stream is the room's last offset, unless history is off
        // or empty: then ask the room itself.
        let offset = match messages.last() {
            Some(last) if last.epoch == epoch => last.offset,
            _ => match self.0.info(room).await {
                Ok(info) if info.epoch == epoch => info.offset,
                Ok(_) => return Err("the room changed epoch while it was read".into()),
                Err(StateError::NotFound) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            },
        };
        Ok(Some(Tail {
            epoch,
            offset,
            messages,
        }))
    }
}
