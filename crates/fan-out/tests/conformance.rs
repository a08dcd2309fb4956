//! The fan-out conformance suite on both adapters: in memory, and on a real Redis Cluster
//! (`make test` provides it in `ROOMCAST_TEST_REDIS_CLUSTER`).

#![allow(clippy::unwrap_used)]

use fan_out::{testsuite, MemoryFanOut, NoHooks, RedisFanOut, RedisFanOutConfig, Registry};
use std::sync::Arc;

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
    let node = format!("suite-{:x}", fastrand_u32());
    let config = RedisFanOutConfig::new(&node, urls.split(',').map(str::to_string).collect());
    let registry = Arc::new(Registry::new());
    let fanout = RedisFanOut::connect(
        config,
        registry.clone(),
        Arc::new(NoHooks),
        Arc::new(NoHooks),
        Arc::new(testsuite::NoHistory),
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
