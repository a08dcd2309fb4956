//! The shared conformance suite, run unchanged against a real Redis Cluster.
//!
//! `make test` starts a 6-process cluster (deploy/local/redis-cluster.sh) and passes its seed
//! URLs in `ROOMCAST_TEST_REDIS_CLUSTER`.

#![allow(clippy::unwrap_used)]

use room_state::{testsuite, RedisSettings, RedisState};
use std::time::Duration;

async fn state() -> RedisState {
    let urls = std::env::var("ROOMCAST_TEST_REDIS_CLUSTER").expect(
        "ROOMCAST_TEST_REDIS_CLUSTER is not set: run `make test`, or start a cluster with \
         deploy/local/redis-cluster.sh start 7100 and export its `urls`",
    );
    RedisState::connect(RedisSettings {
        urls: urls.split(',').map(str::to_string).collect(),
        pool_size: 2,
        command_timeout: Duration::from_secs(2),
        durable_publish: false,
        durable_timeout: Duration::from_millis(500),
        default_history: 100,
        default_ttl_ms: 3_600_000,
    })
    .await
    .unwrap()
}

fn prefix(name: &str) -> String {
    format!("t{:x}:{name}:", fastrand::u32(..))
}

#[tokio::test]
async fn rooms() {
    testsuite::rooms(&state().await, &prefix("rooms")).await;
}

#[tokio::test]
async fn expiry() {
    testsuite::expiry(&state().await, &prefix("ttl")).await;
}

#[tokio::test]
async fn limits() {
    testsuite::limits(&state().await, &prefix("limits")).await;
}

#[tokio::test]
async fn traffic() {
    testsuite::traffic(&state().await, &prefix("traffic")).await;
}

#[tokio::test]
async fn sessions() {
    testsuite::sessions(&state().await, &prefix("sessions")).await;
}
