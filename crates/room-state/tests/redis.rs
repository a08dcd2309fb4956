//! The shared conformance suite, run unchanged against a real Redis Cluster.
//!
//! `make test` starts a 6-process cluster (deploy/local/redis-cluster.sh) and passes its seed
//! URLs in `ROOMCAST_TEST_REDIS_CLUSTER`.

#![allow(clippy::unwrap_used)]

use protocol::envelope::Envelope;
use protocol::Data;
use room_state::{testsuite, RedisSettings, RedisState, RoomConfig, RoomStore};
use std::sync::Arc;
use std::time::Duration;

fn urls() -> Vec<String> {
    let urls = std::env::var("ROOMCAST_TEST_REDIS_CLUSTER").expect(
        "ROOMCAST_TEST_REDIS_CLUSTER is not set: run `make test`, or start a cluster with \
         deploy/local/redis-cluster.sh start 7100 and export its `urls`",
    );
    urls.split(',').map(str::to_string).collect()
}

async fn state() -> Arc<RedisState> {
    state_with(false).await
}

async fn state_with(durable_publish: bool) -> Arc<RedisState> {
    RedisState::connect(RedisSettings {
        urls: urls(),
        pool_size: 2,
        command_timeout: Duration::from_secs(2),
        durable_publish,
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
    testsuite::rooms(&*state().await, &prefix("rooms")).await;
}

#[tokio::test]
async fn idempotency() {
    testsuite::idempotency(&*state().await, &prefix("idem")).await;
}

#[tokio::test]
async fn expiry() {
    testsuite::expiry(&*state().await, &prefix("ttl")).await;
}

#[tokio::test]
async fn limits() {
    testsuite::limits(&*state().await, &prefix("limits")).await;
}

#[tokio::test]
async fn traffic() {
    testsuite::traffic(&*state().await, &prefix("traffic")).await;
}

#[tokio::test]
async fn sleep() {
    testsuite::sleep(&*state().await, &prefix("sleep")).await;
}

#[tokio::test]
async fn archive_feed() {
    testsuite::archive_feed(&*state().await, &prefix("archive")).await;
}

#[tokio::test]
async fn event_queue() {
    testsuite::event_queue(&*state().await, &prefix("events")).await;
}

#[tokio::test]
async fn sessions() {
    testsuite::sessions(&*state().await, &prefix("sessions")).await;
}

/// The cross-node contract, end to end: what a publish puts on the room's channel (as named by
/// `protocol::channel`) decodes with `protocol::envelope` into the very publication the store
/// returned. Both ways: the envelope the script builds in Lua, and the one the durable path
/// encodes after `WAIT`.
#[tokio::test]
async fn published_envelopes_decode_with_the_protocol() {
    use fred::prelude::*;
    let hosts = urls()
        .iter()
        .map(|url| {
            let (host, port) = url
                .trim_start_matches("redis://")
                .trim_end_matches('/')
                .rsplit_once(':')
                .unwrap();
            (host.to_string(), port.parse::<u16>().unwrap())
        })
        .collect();
    let config = Config {
        server: ServerConfig::new_clustered(hosts),
        ..Config::default()
    };
    let subscriber = Builder::from_config(config)
        .build_subscriber_client()
        .unwrap();
    subscriber.init().await.unwrap();
    let mut messages = subscriber.message_rx();
    for durable in [false, true] {
        let store = state_with(durable).await;
        let room = format!("{}wire", prefix(if durable { "durable" } else { "lua" }));
        let channel = protocol::channel::room(&room);
        subscriber.ssubscribe(channel.as_str()).await.unwrap();
        let config = RoomConfig {
            max_members: None,
            history_size: 10,
            ttl_secs: 60,
        };
        let now = protocol::clock::now_ms();
        store.create(&room, &config, now).await.unwrap();
        let data = Data::from_value(&serde_json::json!({"a": [1, "x", null], "b": "é"})).unwrap();
        let publication = store
            .publish(&room, None, "server", data, None, now)
            .await
            .unwrap()
            .publication;
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.recv())
            .await
            .expect("nothing published within 5 s")
            .unwrap();
        assert_eq!(&*msg.channel, channel.as_str());
        let bytes = msg.value.as_bytes().expect("a binary message");
        assert_eq!(
            Envelope::decode(bytes).unwrap(),
            Envelope::Message(publication),
            "durable: {durable}"
        );
        subscriber.sunsubscribe(channel.as_str()).await.unwrap();
        store.close(&room).await.unwrap();
    }
}

/// A connection's pipelined publishes keep their order in the store: one that arrives after a
/// later one of the same connection was sequenced is refused (a client library's re-send
/// after a failover), not sequenced behind it. Sequence 0 asks for no check; a leave forgets
/// the connection's last number.
#[tokio::test]
async fn a_connections_publishes_are_sequenced_in_its_order() {
    use room_state::{MemberRecord, Publisher, StateError};
    let store = state().await;
    let room = format!("{}order", prefix("order"));
    let config = RoomConfig {
        max_members: None,
        history_size: 10,
        ttl_secs: 60,
    };
    let now = protocol::clock::now_ms();
    store.create(&room, &config, now).await.unwrap();
    let member = MemberRecord {
        conn_id: "c1".into(),
        user: "alice".into(),
        node: "n1".into(),
        info: None,
    };
    store.join(&room, &member, None, now).await.unwrap();
    let data = |n: u64| Data::from_value(&serde_json::json!(n)).unwrap();
    let by = |seq| Some(Publisher { conn_id: "c1", seq });
    let offset = |r: Result<room_state::Published, StateError>| r.unwrap().publication.offset;
    assert_eq!(
        offset(
            store
                .publish(&room, by(2), "alice", data(2), None, now)
                .await
        ),
        1
    );
    let late = store
        .publish(&room, by(1), "alice", data(1), None, now)
        .await;
    assert!(matches!(late, Err(StateError::Unavailable(_))), "{late:?}");
    let again = store
        .publish(&room, by(2), "alice", data(2), None, now)
        .await;
    assert!(
        matches!(again, Err(StateError::Unavailable(_))),
        "{again:?}"
    );
    assert_eq!(
        offset(
            store
                .publish(&room, by(3), "alice", data(3), None, now)
                .await
        ),
        2
    );
    assert_eq!(
        offset(
            store
                .publish(&room, by(0), "alice", data(0), None, now)
                .await
        ),
        3
    );
    let (history, _) = store.history(&room, None, 10, None).await.unwrap();
    let order: Vec<String> = history
        .iter()
        .map(|m| m.data.as_json().to_string())
        .collect();
    assert_eq!(order, ["2", "3", "0"], "nothing refused was stored");
    // A leave forgets the connection's numbers (a reused id starts again at 1).
    store.leave(&room, "c1", now).await.unwrap();
    store.join(&room, &member, None, now).await.unwrap();
    assert_eq!(
        offset(
            store
                .publish(&room, by(1), "alice", data(1), None, now)
                .await
        ),
        4
    );
    store.close(&room).await.unwrap();
}

#[tokio::test]
async fn users() {
    let state = state().await;
    testsuite::users(&*state, &*state, &prefix("users")).await;
}
