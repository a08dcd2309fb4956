//! The adapter's own fred clients: one subscriber, and a small pool for its publishes and for
//! watching the cluster's topology. fred stays inside this crate; the gateway hands over plain
//! settings ([`super::RedisFanOutConfig`]).
//!
//! fred's defaults do not suit a server (see `docs/architecture.md`, "fred"): no reconnect
//! policy, no command timeout, no unresponsive-socket detection, and event channels of 32,
//! which drop pub/sub messages (`Lagged`) under any burst. Every one is set here. The room
//! store's clients (room-state) make the same choices, for the same reasons.

use super::RedisFanOutConfig;
use crate::adapter::FanOutError;
use fred::clients::{Pool, SubscriberClient};
use fred::prelude::{Builder, ClientLike, Config, ServerConfig};
use fred::types::config::{ReconnectPolicy, UnresponsiveConfig};
use std::time::Duration;

/// The subscriber and the publishing pool, connected (or connecting: a node may start
/// before Redis, and stays unready until the cluster answers).
pub(super) async fn connect(
    config: &RedisFanOutConfig,
) -> Result<(SubscriberClient, Pool), FanOutError> {
    let unavailable = |e: fred::error::Error| FanOutError::Unavailable(e.to_string());
    let subscriber = builder(config)?
        .build_subscriber_client()
        .map_err(unavailable)?;
    let publisher = builder(config)?
        .build_pool(config.pool_size.max(1))
        .map_err(unavailable)?;
    subscriber.init().await.map_err(unavailable)?;
    publisher.init().await.map_err(unavailable)?;
    Ok((subscriber, publisher))
}

/// A fred builder with every setting that matters made explicit.
fn builder(config: &RedisFanOutConfig) -> Result<Builder, FanOutError> {
    let bad = |what: String| FanOutError::Config(what);
    let mut hosts = Vec::new();
    for url in &config.urls {
        let rest = url
            .trim()
            .strip_prefix("redis://")
            .ok_or_else(|| bad(format!("not a redis:// URL: {url}")))?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("no port in {url}")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("bad port in {url}")))?;
        hosts.push((host.to_string(), port));
    }
    if hosts.is_empty() {
        return Err(bad("no Redis Cluster seed nodes".into()));
    }
    let fred_config = Config {
        server: ServerConfig::new_clustered(hosts),
        // A node may start before Redis; it reports unready until the cluster answers.
        fail_fast: false,
        ..Config::default()
    };
    let timeout = config.command_timeout;
    let mut builder = Builder::from_config(fred_config);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_urls_must_be_redis_urls_with_ports() {
        let mut config = RedisFanOutConfig::new("n", vec!["redis://127.0.0.1:7000/".into()]);
        assert!(builder(&config).is_ok());
        for bad in ["127.0.0.1:7000", "redis://127.0.0.1", "redis://h:port"] {
            config.urls = vec![bad.into()];
            assert!(
                matches!(builder(&config), Err(FanOutError::Config(_))),
                "{bad}"
            );
        }
        config.urls.clear();
        assert!(matches!(builder(&config), Err(FanOutError::Config(_))));
    }
}
