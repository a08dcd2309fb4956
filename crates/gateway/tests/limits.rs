//! The traffic monitor's levels and creation pause, and the per-user limits.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn traffic_levels_push_and_pause_creation() {
    // high from 3 creations a minute, critical from 5, cap 100.
    let server = start(&[
        "--traffic-high",
        "3",
        "--traffic-critical",
        "5",
        "--traffic-cap",
        "100",
        "--room-create-limit",
        "100",
    ])
    .await;
    let addr = server.addr;
    let mut watcher = Client::connect(addr, "watcher", Fmt::MsgPack).await;
    let mut maker = Client::connect(addr, "maker", Fmt::Json).await;
    for _ in 0..3 {
        maker.ok(json!({"op": "create_room"})).await;
    }
    let high = watcher.event("traffic_status").await;
    assert_eq!(high["level"], "high");
    assert_eq!(high["roomCreationEnabled"], true);
    assert!(high["message"].is_string());
    assert!(high["activeRooms"].as_u64().unwrap() >= 2, "{high}");
    assert!(high["timestamp"].is_u64());
    let (_, status) = http_json(addr, "GET", "/status", None, "").await;
    assert_eq!(status["level"], "high");

    for _ in 0..2 {
        maker.ok(json!({"op": "create_room"})).await;
    }
    let critical = watcher.event("traffic_status").await;
    assert_eq!(critical["level"], "critical");
    assert_eq!(critical["roomCreationEnabled"], false);
    let retry = critical["retryAfter"].as_u64().unwrap();
    assert!((1..=60_000).contains(&retry), "{critical}");
    while maker.event("traffic_status").await["level"] != "critical" {}

    let e = maker.err(json!({"op": "create_room"})).await;
    assert_eq!(e["code"], "creation_paused");
    assert!(
        (1..=60_000).contains(&e["retryAfterMs"].as_u64().unwrap()),
        "{e}"
    );
    // Paused for everyone, not just the maker; joining still works.
    assert_eq!(
        watcher.err(json!({"op": "create_room"})).await["code"],
        "creation_paused"
    );
    let (_, status) = http_json(addr, "GET", "/status", None, "").await;
    assert_eq!(
        (
            status["level"].clone(),
            status["roomCreationEnabled"].clone()
        ),
        (json!("critical"), json!(false))
    );
    assert_eq!(server.node.metrics.creation_paused.get(), 2);
    let (_, metrics) = http(addr, "GET", "/metrics", None, "").await;
    assert!(metrics.contains("roomcast_traffic_level 2"), "{metrics}");
    // A newcomer hears the level at once on connect.
    let mut late = Client::open(addr, "format=json", Fmt::Json).await;
    late.recv_msg().await;
    assert_eq!(late.recv_msg().await["level"], "critical");
}

#[tokio::test]
async fn the_hard_cap_pauses_creation_below_critical() {
    let server = start(&[
        "--traffic-high",
        "50",
        "--traffic-critical",
        "80",
        "--traffic-cap",
        "2",
        "--room-create-limit",
        "100",
    ])
    .await;
    let mut c = Client::connect(server.addr, "c", Fmt::Json).await;
    c.ok(json!({"op": "create_room"})).await;
    c.ok(json!({"op": "create_room"})).await;
    let e = c.err(json!({"op": "create_room"})).await;
    assert_eq!(e["code"], "creation_paused");
    let (_, status) = http_json(server.addr, "GET", "/status", None, "").await;
    assert_eq!(
        (
            status["level"].clone(),
            status["roomCreationEnabled"].clone()
        ),
        (json!("normal"), json!(false))
    );
}

#[tokio::test]
async fn five_rooms_a_minute_per_user_and_refusals_do_not_count() {
    let server = start(&[]).await;
    let mut alice = Client::connect(server.addr, "alice", Fmt::Json).await;
    let mut bob = Client::connect(server.addr, "bob", Fmt::Json).await;
    bob.ok(json!({"op": "create_room", "room": "taken"})).await;
    // A refused attempt (the name is taken) does not use up one of alice's five.
    assert_eq!(
        alice
            .err(json!({"op": "create_room", "room": "taken"}))
            .await["code"],
        "room_exists"
    );
    for _ in 0..5 {
        alice.ok(json!({"op": "create_room"})).await;
    }
    let e = alice.err(json!({"op": "create_room"})).await;
    assert_eq!(e["code"], "rate_limited");
    let retry = e["retryAfterMs"].as_u64().unwrap();
    assert!((50_000..=60_000).contains(&retry), "{e}");
    // Per user: the same user on a second connection is limited too; bob is not.
    let mut alice2 = Client::connect(server.addr, "alice", Fmt::MsgPack).await;
    assert_eq!(
        alice2.err(json!({"op": "create_room"})).await["code"],
        "rate_limited"
    );
    bob.ok(json!({"op": "create_room"})).await;
    assert_eq!(
        server
            .node
            .metrics
            .rate_limited
            .with_label_values(&["room_create"])
            .get(),
        2
    );
}

#[tokio::test]
async fn the_publish_bucket_refills() {
    let server = start(&["--publish-rate", "10", "--publish-burst", "5"]).await;
    let mut c = Client::connect(server.addr, "p", Fmt::Json).await;
    c.ok(json!({"op": "create_room", "room": "b"})).await;
    for _ in 0..5 {
        c.ok(json!({"op": "publish", "room": "b", "data": 1})).await;
    }
    let e = c
        .err(json!({"op": "publish", "room": "b", "data": 1}))
        .await;
    assert_eq!(e["code"], "rate_limited");
    let wait = e["retryAfterMs"].as_u64().unwrap();
    assert!(wait <= 100, "{e}");
    tokio::time::sleep(std::time::Duration::from_millis(wait + 20)).await;
    c.ok(json!({"op": "publish", "room": "b", "data": 1})).await;
    assert_eq!(
        server
            .node
            .metrics
            .rate_limited
            .with_label_values(&["publish"])
            .get(),
        1
    );
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = start(&["--trusted-proxy", "127.0.0.0/8", "--max-conns-per-ip", "1"]).await;
    let connect = |xff: &'static str| {
        let addr = server.addr;
        async move {
            let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
            req.headers_mut()
                .insert("x-forwarded-for", xff.parse().unwrap());
            tokio_tungstenite::connect_async(req).await.unwrap().0
        }
    };
    use futures_util::StreamExt;
    let mut a = connect("203.0.113.1").await;
    let welcome: serde_json::Value =
        serde_json::from_str(a.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(welcome["user"], "anon:203.0.113.1");
    // Another forwarded client is a different address, so the per-IP limit of 1 lets it in.
    let mut b = connect("203.0.113.2").await;
    let welcome: serde_json::Value =
        serde_json::from_str(b.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(welcome["user"], "anon:203.0.113.2");
}
