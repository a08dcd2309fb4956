//! The fan-out conformance suite on both adapters: in memory, and on a real Redis Cluster
//! (`make test` provides it in `ROOMCAST_TEST_REDIS_CLUSTER`).

#![allow(clippy::unwrap_used)]

use fan_out::redis::{RedisFanOut, RedisFanOutConfig, StoreHistory};
use fan_out::{testsuite, MemoryFanOut, NoHooks, Registry};
use room_state::{RedisSettings, RedisState};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn memory() {
    let registry = Arc::new(Registry::new());
    let fanout = MemoryFanOut::new(registry.clone(), Arc::new(NoHooks));
    testsuite::run(&fanout, &registry, "m:").await;
}

#[tokio::test]
async fn redis_cluster() {
    let urls = std::env::var("ROOMCAST_TEST_REDIS_CLUSTER")
        .expect("ROOMCAST_TEST_REDIS_CLUSTER is not set: run `make test`");
    let settings = RedisSettings {
        urls: urls.split(',').map(str::to_string).collect(),
        pool_size: 2,
        command_timeout: Duration::from_secs(2),
        durable_publish: false,
        durable_timeout: Duration::from_millis(500),
        default_history: 100,
        default_ttl_ms: 60_000,
    };
    let state = Arc::new(RedisState::connect(settings.clone()).await.unwrap());
    let subscriber = room_state::redis::builder(&settings)
        .unwrap()
        .build_subscriber_client()
        .unwrap();
    let registry = Arc::new(Registry::new());
    let node = format!("suite-{:x}", fastrand_u32());
    let fanout = RedisFanOut::start(
        subscriber,
        state.pool().clone(),
        registry.clone(),
        Arc::new(NoHooks),
        Arc::new(NoHooks),
        Arc::new(StoreHistory(state.clone())),
        RedisFanOutConfig::new(&node),
    )
    .await
    .unwrap();
    testsuite::run(&fanout, &registry, &format!("{node}:")).await;
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}
