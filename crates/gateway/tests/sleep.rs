//! Inactive rooms sleep instead of vanishing (issue 14, item 4), with real `roomcast`
//! processes:
//!
//! - the embedded backend with a SQLite archive: a room, published to, survives a graceful
//!   stop (SIGTERM) and a new start on the same file: same epoch, offsets going on, `since`
//!   recovers from the refilled window, `history` answers every message; and a room empty
//!   past its TTL sleeps while the node runs, and a server publish wakes it;
//! - Redis Cluster (`ROOMCAST_TEST_REDIS_CLUSTER`) with PostgreSQL (`ROOMCAST_TEST_POSTGRES`),
//!   when both are set (otherwise `skipped`): a room empty past a 1 s TTL leaves Redis for the
//!   archive (while a gateway without the archive trims the rooms index beside), the API reads
//!   it asleep, and another gateway wakes it (`create_room` says it exists; `join` with
//!   `since` recovers).

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

/// High publish limits, and a quick drain (no load balancer to wait for).
const FLAGS: [&str; 8] = [
    "--publish-rate",
    "10000",
    "--publish-burst",
    "10000",
    "--drain-delay",
    "0s",
    "--drain-window",
    "200ms",
];

fn payload(i: u64) -> Value {
    if i.is_multiple_of(4) {
        json!({"i": i, "blob": {"$bin": "AAEC/f7/"}})
    } else {
        json!({"i": i})
    }
}

async fn publish(c: &mut Client, room: &str, first: u64, count: u64) {
    for i in first..first + count {
        let ok = c
            .ok(json!({"op": "publish", "room": room, "data": payload(i)}))
            .await;
        assert_eq!(ok["offset"], json!(i), "{ok}");
    }
}

fn offsets(messages: &Value) -> Vec<u64> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect()
}

/// Every message of `1..=upto`, in order, with its payload, through `history`.
async fn history_has_all(c: &mut Client, room: &str, upto: u64) {
    let h = c
        .ok(json!({"op": "history", "room": room, "limit": 100}))
        .await;
    assert_eq!(offsets(&h["messages"]), (1..=upto).collect::<Vec<_>>());
    for m in h["messages"].as_array().unwrap() {
        assert_eq!(m["data"], payload(m["offset"].as_u64().unwrap()), "{m}");
    }
}

/// `GET /api/rooms/{room}` until it says the room is asleep (read without waking it).
async fn asleep(addr: std::net::SocketAddr, room: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_json(
            addr,
            "GET",
            &format!("/api/rooms/{room}"),
            Some(API_KEY),
            "",
        )
        .await;
        if status == 200 && body["asleep"] == json!(true) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room} never fell asleep: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops a gateway with SIGTERM (a drain) and checks it exits cleanly.
fn stop(mut g: Gateway) {
    assert!(g.sigterm());
    assert!(g.wait().success(), "{} did not drain cleanly", g.id);
}

#[tokio::test]
async fn a_single_node_keeps_its_rooms_across_a_graceful_restart() {
    let dir = std::env::temp_dir().join(unique("roomcast-sleep"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/roomcast.db", dir.display());
    let mut args = vec!["--archive", url.as_str()];
    args.extend(FLAGS);
    let room = unique("sleeper");

    let first = Gateway::spawn(&unique("sleep-one"), &args);
    let mut c = Client::connect(first.addr, "alice", Fmt::Json).await;
    let created = c
        .ok(json!({"op": "create_room", "room": room, "options": {"historySize": 3}}))
        .await;
    let epoch = created["epoch"].as_str().unwrap().to_string();
    publish(&mut c, &room, 1, 8).await;
    drop(c);
    stop(first);

    // The new process has an empty memory backend: the room is in the archive, asleep.
    let second = Gateway::spawn(&unique("sleep-two"), &args);
    let info = asleep(second.addr, &room).await;
    assert_eq!(
        (info["epoch"].as_str(), info["offset"].as_u64()),
        (Some(epoch.as_str()), Some(8))
    );

    // `join` wakes it: the same epoch, and `since` recovers from the refilled window.
    let mut c = Client::connect(second.addr, "bob", Fmt::Json).await;
    let joined = c
        .ok(json!({"op": "join", "room": room, "since": {"offset": 5, "epoch": epoch}}))
        .await;
    assert_eq!(joined["epoch"], json!(epoch), "{joined}");
    assert_eq!(joined["offset"], json!(8));
    assert_eq!(joined["recovered"], json!(true), "{joined}");
    assert_eq!(offsets(&joined["missed"]), vec![6, 7, 8]);
    assert_eq!(joined["missed"][2]["data"], payload(8));
    history_has_all(&mut c, &room, 8).await;
    // Offsets go on; the record was consumed (the room is awake now).
    publish(&mut c, &room, 9, 1).await;
    let (status, info) = http_json(
        second.addr,
        "GET",
        &format!("/api/rooms/{room}"),
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (info["offset"].as_u64(), info["asleep"].as_bool()),
        (Some(9), None),
        "{info}"
    );
    // A position past the sleep from an older epoch is not recovered: the honest answer.
    let mut d = Client::connect(second.addr, "carol", Fmt::Json).await;
    let other = d
        .ok(json!({"op": "join", "room": room, "since": {"offset": 2, "epoch": "not-it"}}))
        .await;
    assert_eq!(other["recovered"], json!(false));
    drop((c, d));
    stop(second);

    // And again: the woken room sleeps through the next restart with its new offset.
    let third = Gateway::spawn(&unique("sleep-three"), &args);
    let info = asleep(third.addr, &room).await;
    assert_eq!(info["offset"], json!(9));
    let mut c = Client::connect(third.addr, "dave", Fmt::Json).await;
    c.ok(json!({"op": "join", "room": room})).await;
    history_has_all(&mut c, &room, 9).await;
    drop(c);
    stop(third);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_single_node_puts_an_empty_room_to_sleep_after_its_ttl() {
    let dir = std::env::temp_dir().join(unique("roomcast-sleep-ttl"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/roomcast.db", dir.display());
    let mut args = vec!["--archive", url.as_str()];
    args.extend(FLAGS);
    let node = Gateway::spawn(&unique("sleep-ttl"), &args);
    let room = unique("dozer");
    let mut c = Client::connect(node.addr, "alice", Fmt::Json).await;
    let created = c
        .ok(json!({"op": "create_room", "room": room, "options": {"historySize": 2, "ttlSecs": 1}}))
        .await;
    let epoch = created["epoch"].as_str().unwrap().to_string();
    publish(&mut c, &room, 1, 4).await;
    c.ok(json!({"op": "leave", "room": room})).await;
    let info = asleep(node.addr, &room).await;
    assert_eq!(info["offset"], json!(4));
    // A server publish wakes it too, and goes on from its offset.
    let (status, body) = http_json(
        node.addr,
        "POST",
        &format!("/api/rooms/{room}/publish"),
        Some(API_KEY),
        &payload(5).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["offset"].as_u64(), body["epoch"].as_str()),
        (Some(5), Some(epoch.as_str()))
    );
    c.ok(json!({"op": "join", "room": room})).await;
    history_has_all(&mut c, &room, 5).await;
    drop(c);
    stop(node);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_room_expires_from_redis_and_another_gateway_wakes_it() {
    let (Ok(redis), Ok(pg)) = (
        std::env::var("ROOMCAST_TEST_REDIS_CLUSTER"),
        std::env::var("ROOMCAST_TEST_POSTGRES"),
    ) else {
        println!(
            "skipped: set ROOMCAST_TEST_REDIS_CLUSTER and ROOMCAST_TEST_POSTGRES to run rooms \
             sleeping out of Redis Cluster into PostgreSQL"
        );
        return;
    };
    let mut args = vec!["--redis-cluster", redis.as_str(), "--archive", pg.as_str()];
    args.extend(FLAGS);
    let a = Gateway::spawn(&unique("sleep-a"), &args);
    let b = Gateway::spawn(&unique("sleep-b"), &args);
    // A node without the archive on the same cluster (as in `make test`'s shared cluster)
    // trims the rooms index of expired rooms every round: the sweep must not depend on it.
    let plain = Gateway::spawn(
        &unique("sleep-plain"),
        &[
            "--redis-cluster",
            redis.as_str(),
            "--traffic-interval",
            "100ms",
        ],
    );
    a.ready().await;
    b.ready().await;
    let room = unique("napper");

    let mut c = Client::connect(a.addr, "alice", Fmt::Json).await;
    let created = c
        .ok(json!({"op": "create_room", "room": room, "options": {"historySize": 3, "ttlSecs": 1}}))
        .await;
    let epoch = created["epoch"].as_str().unwrap().to_string();
    publish(&mut c, &room, 1, 6).await;
    c.ok(json!({"op": "leave", "room": room})).await;

    // Empty past its TTL, archived: it leaves Redis for the archive.
    let info = asleep(b.addr, &room).await;
    assert_eq!(
        (info["epoch"].as_str(), info["offset"].as_u64()),
        (Some(epoch.as_str()), Some(6))
    );

    // On the other gateway: the name is taken (and that wakes it), `since` recovers.
    let mut d = Client::connect(b.addr, "bob", Fmt::Json).await;
    let taken = d.err(json!({"op": "create_room", "room": room})).await;
    assert_eq!(taken["code"], "room_exists", "{taken}");
    let joined = d
        .ok(json!({"op": "join", "room": room, "since": {"offset": 4, "epoch": epoch}}))
        .await;
    assert_eq!(joined["epoch"], json!(epoch), "{joined}");
    assert_eq!(joined["offset"], json!(6));
    assert_eq!(joined["recovered"], json!(true), "{joined}");
    assert_eq!(offsets(&joined["missed"]), vec![5, 6]);
    publish(&mut d, &room, 7, 1).await;
    history_has_all(&mut d, &room, 7).await;
    // The first gateway sees the same room.
    c.ok(json!({"op": "join", "room": room})).await;
    history_has_all(&mut c, &room, 7).await;
    drop((c, d));
    stop(a);
    stop(b);
    stop(plain);
}
