//! The adapter's own fred clients: one subscriber, a small clustered pool for watching the
//! cluster's topology, and a router (one client per primary) for its publishes, so a failing
//! primary delays only the publishes to its own shard. fred stays inside this crate and
//! `redis-cluster`; the gateway hands over plain settings ([`super::RedisFanOutConfig`]).
//!
//! Every client takes its fred settings from `redis_cluster::configure`, shared with the room
//! store's (room-state): reconnect policy, timeouts, unresponsive-socket detection, and event
//! channels sized to what each client
//! reads (`redis_cluster::Events`).

use super::RedisFanOutConfig;
use crate::adapter::FanOutError;
use fred::clients::{Pool, SubscriberClient};
use fred::prelude::{Builder, ClientLike};
use redis_cluster::Router;

/// The subscriber, the topology pool and the publishing router, connected (or connecting: a
/// node may start before Redis, and stays unready until the cluster answers).
pub(super) async fn connect(
    config: &RedisFanOutConfig,
) -> Result<(SubscriberClient, Pool, Router), FanOutError> {
    let unavailable = |e: fred::error::Error| FanOutError::Unavailable(e.to_string());
    let subscriber = builder(config, redis_cluster::Events::Messages)?
        .build_subscriber_client()
        .map_err(unavailable)?;
    // The pool only watches the topology: few events.
    let publisher = builder(config, redis_cluster::Events::Few)?
        .build_pool(config.pool_size.max(1))
        .map_err(unavailable)?;
    subscriber.init().await.map_err(unavailable)?;
    publisher.init().await.map_err(unavailable)?;
    let router = Router::connect(&config.urls, config.command_timeout)
        .await
        .map_err(FanOutError::Config)?;
    Ok((subscriber, publisher, router))
}

/// A clustered fred builder with the settings every roomcast client uses
/// (`redis_cluster::configure`).
fn builder(
    config: &RedisFanOutConfig,
    events: redis_cluster::Events,
) -> Result<Builder, FanOutError> {
    redis_cluster::builder(&config.urls, config.command_timeout, events)
        .map_err(FanOutError::Config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_urls_must_be_redis_urls_with_ports() {
        let mut config = RedisFanOutConfig::new("n", vec!["redis://127.0.0.1:7000/".into()]);
        assert!(builder(&config, redis_cluster::Events::Few).is_ok());
        for bad in ["127.0.0.1:7000", "redis://127.0.0.1", "redis://h:port"] {
            config.urls = vec![bad.into()];
            assert!(
                matches!(
                    builder(&config, redis_cluster::Events::Few),
                    Err(FanOutError::Config(_))
                ),
                "{bad}"
            );
        }
        config.urls.clear();
        assert!(matches!(
            builder(&config, redis_cluster::Events::Few),
            Err(FanOutError::Config(_))
        ));
    }
}
