//! Webhooks on the embedded backend (one node in this process): every event type, in order
//! per room, signed; a failing app gets the same batch again until it answers 2xx.
//! The cluster half (3 gateways, Redis Cluster, kill -9, the app down for 30 s) is
//! `tests/webhooks_cluster.rs`.

#![allow(clippy::unwrap_used)]

mod support;
mod webhook_app;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::time::Duration;
use support::{http, unique, Client, Fmt, API_KEY};
use webhook_app::{of_room, of_user, App};

const SECRET: &str = "hook-secret";

/// Waits (up to 10 s) until `f` holds for what the app accepted, deduped by id.
async fn until(app: &App, what: &str, f: impl Fn(&[serde_json::Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = app.deduped();
        if f(&events) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; got {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(t, u)| (t.to_string(), u.to_string()))
        .collect()
}

#[tokio::test]
async fn every_event_type_arrives_signed_and_in_order() {
    let app = App::start().await;
    let url = app.url();
    let node = support::start(&["--webhook-url", &url, "--webhook-secret", SECRET]).await;
    let room = unique("wh");

    let mut ann = Client::connect(node.addr, "ann", Fmt::Json).await;
    ann.ok(json!({"op": "create_room", "room": room})).await;
    let mut bob = Client::connect(node.addr, "bob", Fmt::Json).await;
    bob.ok(json!({"op": "join", "room": room})).await;
    // A second connection of bob's: no second user_online, no second occupied.
    let mut bob2 = Client::connect(node.addr, "bob", Fmt::Json).await;
    bob2.ok(json!({"op": "join", "room": room})).await;
    bob2.ok(json!({"op": "leave", "room": room})).await;
    drop(bob2);
    bob.ok(json!({"op": "leave", "room": room})).await;
    drop(ann);
    drop(bob);
    // The close must come after ann's disconnect reached the room (or she is not a member
    // any more when she is cleaned up, and the close is the room's last event anyway).
    until(&app, "the room vacated", |e| {
        of_room(e, &room).iter().any(|(t, _)| t == "room_vacated")
    })
    .await;
    let (status, _) = http(
        node.addr,
        "DELETE",
        &format!("/api/rooms/{room}"),
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200);

    let expected = pairs(&[
        ("room_created", "ann"),
        ("room_occupied", ""),
        ("member_joined", "ann"),
        ("member_joined", "bob"),
        ("member_joined", "bob"),
        ("member_left", "bob"),
        ("member_left", "bob"),
        ("member_left", "ann"),
        ("room_vacated", ""),
        ("room_closed", ""),
    ]);
    until(&app, "the room's events", |e| {
        of_room(e, &room).len() >= expected.len()
    })
    .await;
    until(&app, "both offline", |e| {
        of_user(e, "bob").len() >= 2 && of_user(e, "ann").len() >= 2
    })
    .await;
    let events = app.deduped();
    assert_eq!(of_room(&events, &room), expected);
    assert_eq!(of_user(&events, "ann"), ["user_online", "user_offline"]);
    assert_eq!(of_user(&events, "bob"), ["user_online", "user_offline"]);

    // Every event has the documented fields; ids are unique.
    let node_id = events[0]["node"].as_str().unwrap().to_string();
    for e in &events {
        assert_eq!(e["id"].as_str().unwrap().len(), 32, "{e}");
        assert!(e["ts"].as_u64().unwrap() > 0, "{e}");
        assert_eq!(e["node"], node_id.as_str());
    }
    let member = events
        .iter()
        .find(|e| e["type"] == "member_joined")
        .unwrap();
    assert!(member["conn"].as_str().is_some_and(|c| !c.is_empty()));

    // Every POST carries the HMAC-SHA256 of its exact body.
    for r in app.received() {
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(r.body.as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(r.signature, Some(format!("sha256={hex}")));
    }
    node.drain().await;
}

#[tokio::test]
async fn a_failing_app_gets_the_same_batch_again_in_order() {
    let app = App::start().await;
    app.answer_next(&[500, 500]);
    let url = app.url();
    let node = support::start(&["--webhook-url", &url]).await;
    let room = unique("retry");
    let mut ann = Client::connect(node.addr, "carl", Fmt::Json).await;
    ann.ok(json!({"op": "create_room", "room": room})).await;
    for _ in 0..3 {
        ann.ok(json!({"op": "leave", "room": room})).await;
        ann.ok(json!({"op": "join", "room": room})).await;
    }
    let mut expected = pairs(&[
        ("room_created", "carl"),
        ("room_occupied", ""),
        ("member_joined", "carl"),
    ]);
    for _ in 0..3 {
        expected.extend(pairs(&[
            ("member_left", "carl"),
            ("room_vacated", ""),
            ("room_occupied", ""),
            ("member_joined", "carl"),
        ]));
    }
    until(&app, "the room's events", |e| {
        of_room(e, &room).len() >= expected.len()
    })
    .await;
    assert_eq!(of_room(&app.deduped(), &room), expected);
    // Two refusals (the room's shard and the user's may share them); every refused event
    // was sent again and accepted, and nothing of a shard overtook a refused batch.
    let received = app.received();
    let refused: Vec<_> = received.iter().filter(|r| r.status == 500).collect();
    assert_eq!(refused.len(), 2);
    let refused_ids: Vec<serde_json::Value> = refused
        .iter()
        .flat_map(|r| serde_json::from_str::<Vec<serde_json::Value>>(&r.body).unwrap())
        .map(|e| e["id"].clone())
        .collect();
    until(&app, "every refused event accepted", |e| {
        refused_ids
            .iter()
            .all(|id| e.iter().any(|a| &a["id"] == id))
    })
    .await;
    // Without --webhook-secret: no signature.
    assert!(received.iter().all(|r| r.signature.is_none()));
    // Nothing accepted twice: the batch left the queue after its 2xx.
    assert_eq!(app.accepted().len(), app.deduped().len());
    node.drain().await;
}

#[tokio::test]
async fn a_drain_delivers_the_events_of_the_connections_it_closes() {
    let app = App::start().await;
    let url = app.url();
    let node = support::start(&["--webhook-url", &url]).await;
    let room = unique("drain");
    let mut dan = Client::connect(node.addr, "dan", Fmt::Json).await;
    dan.ok(json!({"op": "create_room", "room": room})).await;
    until(&app, "the join", |e| of_room(e, &room).len() >= 3).await;
    // The drain closes dan's connection; what that queues is sent before the node stops.
    node.drain().await;
    let events = app.deduped();
    assert_eq!(
        of_room(&events, &room),
        pairs(&[
            ("room_created", "dan"),
            ("room_occupied", ""),
            ("member_joined", "dan"),
            ("member_left", "dan"),
            ("room_vacated", ""),
        ])
    );
    assert_eq!(of_user(&events, "dan"), ["user_online", "user_offline"]);
    drop(dan);
}

#[tokio::test]
async fn a_slow_app_times_out_and_gets_the_batch_again_while_clients_carry_on() {
    let app = App::start().await;
    app.delay_next(&[Duration::from_secs(2)]);
    let url = app.url();
    let node = support::start(&["--webhook-url", &url, "--webhook-timeout", "300ms"]).await;
    let room = unique("slow");
    let mut eve = Client::connect(node.addr, "eve", Fmt::Json).await;
    eve.ok(json!({"op": "create_room", "room": room})).await;
    // Ops do not wait for the app: they only queue.
    for _ in 0..3 {
        eve.ok(json!({"op": "leave", "room": room})).await;
        eve.ok(json!({"op": "join", "room": room})).await;
    }
    // Both shards (the room's and eve's) delivered: the slow POST was one of them.
    until(&app, "the room's events and eve online", |e| {
        of_room(e, &room).len() >= 15 && !of_user(e, "eve").is_empty()
    })
    .await;
    let events = of_room(&app.deduped(), &room);
    assert_eq!(
        events[..3],
        pairs(&[
            ("room_created", "eve"),
            ("room_occupied", ""),
            ("member_joined", "eve"),
        ])
    );
    assert_eq!(events.len(), 15);
    // The slow POST was given up on at the gateway (the app's handler was cancelled with the
    // connection, so it recorded nothing) and sent again.
    let failures = http(node.addr, "GET", "/metrics", None, "").await.1;
    assert!(
        failures
            .lines()
            .any(|l| l.starts_with("roomcast_webhook_failures_total ") && !l.ends_with(" 0")),
        "no failure counted"
    );
    node.drain().await;
}

/// The `reason` of each of `room`'s events, in order ("" when it has none).
fn reasons(events: &[serde_json::Value], room: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["room"] == room)
        .map(|e| e["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn a_close_reports_its_members_and_an_expiry_reports_the_room_closed() {
    let app = App::start().await;
    let url = app.url();
    let node = support::start(&["--webhook-url", &url]).await;
    let (room, brief) = (unique("whcl"), unique("whex"));

    // Closed through the API with two members: each left, the room vacated, then closed.
    let mut ann = Client::connect(node.addr, "ann", Fmt::Json).await;
    ann.ok(json!({"op": "create_room", "room": room})).await;
    let mut bob = Client::connect(node.addr, "bob", Fmt::Json).await;
    bob.ok(json!({"op": "join", "room": room})).await;
    let path = format!("/api/rooms/{room}");
    let (status, _) = http(node.addr, "DELETE", &path, Some(API_KEY), "").await;
    assert_eq!(status, 200);
    bob.event("room_closed").await;
    // Leaving (or disconnecting) after the close is no second departure.
    drop(bob);

    // Nobody joins this one: it expires a second after its creation.
    ann.ok(json!({"op": "create_room", "room": brief, "options": {"ttlSecs": 1}}))
        .await;
    ann.ok(json!({"op": "leave", "room": brief})).await;

    let expected = pairs(&[
        ("room_created", "ann"),
        ("room_occupied", ""),
        ("member_joined", "ann"),
        ("member_joined", "bob"),
        ("member_left", "ann"),
        ("member_left", "bob"),
        ("room_vacated", ""),
        ("room_closed", ""),
    ]);
    let expired = pairs(&[
        ("room_created", "ann"),
        ("room_occupied", ""),
        ("member_joined", "ann"),
        ("member_left", "ann"),
        ("room_vacated", ""),
        ("room_closed", ""),
    ]);
    until(&app, "the close and the expiry", |e| {
        of_room(e, &room).len() >= expected.len() && of_room(e, &brief).len() >= expired.len()
    })
    .await;
    until(&app, "bob offline", |e| of_user(e, "bob").len() >= 2).await;
    let events = app.deduped();
    // The close's members come in the order the backend listed them.
    let mut closed = of_room(&events, &room);
    closed[4..6].sort();
    assert_eq!(closed, expected);
    let want: Vec<&str> = vec!["", "", "", "", "closed", "closed", "closed", "closed"];
    assert_eq!(reasons(&events, &room), want);
    assert_eq!(of_room(&events, &brief), expired);
    assert_eq!(reasons(&events, &brief)[5], "expired");
    drop(ann);
}

#[test]
fn a_webhook_timeout_past_the_shard_lease_is_refused() {
    // A POST longer than what is left of a shard's lease after a renewal could overlap with
    // the next holder's delivery of the same shard (docs/architecture.md, webhooks).
    let with = |timeout: &str| {
        support::bare_config(&[
            "--allow-anonymous",
            "--webhook-url",
            "http://127.0.0.1:9/hooks",
            "--webhook-timeout",
            timeout,
        ])
        .validate()
    };
    assert!(with("5s").is_ok());
    let err = with("8s").unwrap_err();
    assert!(err.contains("--webhook-timeout must be under"), "{err}");
    assert!(with("30s").is_err());
}
