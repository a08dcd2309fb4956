//! Every op and event of protocol v1, over real sockets, in JSON and in MessagePack.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::*;

async fn every_op_and_event(fmt: Fmt) {
    let server = start(&[]).await;
    let addr = server.addr;
    let mut alice = Client::connect(addr, "alice", fmt).await;
    assert_eq!(alice.welcome["user"], "alice");
    assert_eq!(alice.welcome["node"], json!(server.node.id));

    // create_room without a name: a short code; the creator is a member.
    let created = alice.ok(json!({"op": "create_room"})).await;
    let room = created["room"].as_str().unwrap().to_string();
    assert_eq!(room.len(), 8);
    assert!(created["epoch"].is_string());
    assert_eq!(created["members"][0]["user"], "alice");

    // create_room with a name and options.
    let named = alice
        .ok(json!({"op": "create_room", "room": "lobby", "options": {"maxMembers": 5, "historySize": 3, "ttlSecs": 60}}))
        .await;
    assert_eq!(named["room"], "lobby");

    // join: reply has offset, epoch, members; others get a presence join, the joiner does not.
    let mut bob = Client::connect(addr, "bob", fmt).await;
    let joined = bob.ok(json!({"op": "join", "room": room})).await;
    assert_eq!(joined["offset"], 0);
    assert_eq!(joined["epoch"], created["epoch"]);
    assert_eq!(joined["members"].as_array().unwrap().len(), 2);
    assert!(joined.get("recovered").is_none());
    let p = alice.event("presence").await;
    assert_eq!(
        (p["action"].as_str(), p["user"].as_str(), p["room"].as_str()),
        (Some("join"), Some("bob"), Some(room.as_str()))
    );
    assert_eq!(p["connId"], json!(bob.conn_id()));
    bob.quiet(100).await;

    // publish: everyone gets the message, the publisher included; offsets 1, 2, 3.
    for n in 1..=3u64 {
        let r = alice
            .ok(json!({"op": "publish", "room": room, "data": {"n": n, "text": "hi"}}))
            .await;
        assert_eq!(r["offset"], n);
    }
    for client in [&mut alice, &mut bob] {
        for n in 1..=3u64 {
            let m = client.event("message").await;
            assert_eq!(m["offset"], n);
            assert_eq!(m["epoch"], created["epoch"]);
            assert_eq!(m["from"], "alice");
            assert_eq!(m["room"], json!(room));
            assert_eq!(m["data"], json!({"n": n, "text": "hi"}));
            assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
        }
    }

    // presence
    let members = bob.ok(json!({"op": "presence", "room": room})).await;
    let users: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, vec!["alice", "bob"]);

    // history: newest last, limit, before; limit over 100 is clamped.
    let h = bob.ok(json!({"op": "history", "room": room})).await;
    assert_eq!(h["epoch"], created["epoch"]);
    let offsets: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2, 3]);
    let h = bob
        .ok(json!({"op": "history", "room": room, "limit": 1, "before": 3}))
        .await;
    assert_eq!(h["messages"][0]["offset"], 2);
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    let h = bob
        .ok(json!({"op": "history", "room": room, "limit": 100000}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 3);

    // join with since: recovered, with what was missed.
    let mut carol = Client::connect(addr, "carol", fmt).await;
    let j = carol
        .ok(json!({"op": "join", "room": room, "since": {"offset": 1, "epoch": created["epoch"]}}))
        .await;
    assert_eq!(j["recovered"], true);
    let missed: Vec<u64> = j["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(missed, vec![2, 3]);
    let j = carol
        .ok(json!({"op": "join", "room": room, "since": {"offset": 3, "epoch": "stale"}}))
        .await;
    assert_eq!(
        (j["recovered"].clone(), j["missed"].clone()),
        (json!(false), json!([]))
    );
    alice.event("presence").await;
    bob.event("presence").await;

    // ping
    let pong = alice.ok(json!({"op": "ping"})).await;
    assert!(pong["pong"].is_u64());

    // leave: others get a presence leave; the leaver stops receiving.
    assert_eq!(
        carol.ok(json!({"op": "leave", "room": room})).await,
        json!({})
    );
    let p = alice.event("presence").await;
    assert_eq!(
        (p["action"].as_str(), p["user"].as_str()),
        (Some("leave"), Some("carol"))
    );
    alice
        .ok(json!({"op": "publish", "room": room, "data": 4}))
        .await;
    assert_eq!(bob.event("message").await["offset"], 4);
    carol.quiet(150).await;

    // A disconnect is a leave for the others.
    drop(carol);
    bob.ws.close(None).await.unwrap();
    let p = alice.event("presence").await;
    assert_eq!(
        (p["action"].as_str(), p["user"].as_str()),
        (Some("leave"), Some("bob"))
    );

    // room_closed through the server API.
    let (status, body) = http_json(
        addr,
        "DELETE",
        &format!("/api/rooms/{room}"),
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!((status, body["closed"].clone()), (200, json!(true)));
    let closed = alice.event("room_closed").await;
    assert_eq!(
        (closed["room"].as_str(), closed["reason"].as_str()),
        (Some(room.as_str()), Some("closed"))
    );
    assert_eq!(
        alice
            .err(json!({"op": "publish", "room": room, "data": 1}))
            .await["code"],
        "not_found"
    );

    // reconnect on drain, then close 1012.
    let mut dave = Client::connect(addr, "dave", fmt).await;
    server.drain().await;
    let r = dave.event("reconnect").await;
    assert_eq!(r["reason"], "drain");
    assert!(r["afterMs"].is_u64());
    assert_eq!(dave.closed().await, 1012);
}

#[tokio::test]
async fn every_op_and_event_json() {
    every_op_and_event(Fmt::Json).await;
}

#[tokio::test]
async fn every_op_and_event_msgpack() {
    every_op_and_event(Fmt::MsgPack).await;
}

#[tokio::test]
async fn json_and_msgpack_clients_share_a_room() {
    let server = start(&[]).await;
    let mut j = Client::connect(server.addr, "j", Fmt::Json).await;
    let mut m = Client::connect(server.addr, "m", Fmt::MsgPack).await;
    let room = j.ok(json!({"op": "create_room", "room": "mixed"})).await["room"].clone();
    m.ok(json!({"op": "join", "room": room})).await;
    m.ok(json!({"op": "publish", "room": room, "data": {"nested": [1, 2.5, "x", null, true]}}))
        .await;
    let got = j.event("message").await;
    assert_eq!(got["data"], json!({"nested": [1, 2.5, "x", null, true]}));
    assert_eq!(got["from"], "m");
}

#[tokio::test]
async fn publish_with_a_msg_id_is_delivered_once() {
    let server = start(&[]).await;
    let addr = server.addr;
    let mut alice = Client::connect(addr, "alice", Fmt::Json).await;
    let mut bob = Client::connect(addr, "bob", Fmt::MsgPack).await;
    let room = alice.ok(json!({"op": "create_room"})).await["room"].clone();
    bob.ok(json!({"op": "join", "room": room})).await;

    let publish =
        |key: &str, n: u64| json!({"op": "publish", "room": room, "data": {"n": n}, "msgId": key});
    let first = alice.ok(publish("a-1", 1)).await;
    assert_eq!(
        first,
        json!({"offset": 1}),
        "no duplicate flag on a first publish"
    );
    let retry = alice.ok(publish("a-1", 1)).await;
    assert_eq!(
        (&retry["offset"], &retry["duplicate"]),
        (&json!(1), &json!(true))
    );
    assert!(retry["epoch"].is_string(), "{retry}");
    // The same key from another user is another message.
    let bobs = bob.ok(publish("a-1", 2)).await;
    assert_eq!(bobs, json!({"offset": 2}));
    assert_eq!(alice.ok(publish("a-2", 3)).await, json!({"offset": 3}));

    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(bob.event("message").await["offset"].as_u64().unwrap());
    }
    assert_eq!(got, vec![1, 2, 3]);
    bob.quiet(200).await;

    let bad = alice
        .err(json!({"op": "publish", "room": room, "data": 1, "msgId": "has space"}))
        .await;
    assert_eq!(bad["code"], "bad_request");

    // The server API takes the key as a header.
    let path = format!("/api/rooms/{}/publish", room.as_str().unwrap());
    let key = [("Idempotency-Key", "srv-1")];
    for duplicate in [None, Some(true)] {
        let (status, body) = http_with(addr, "POST", &path, Some(API_KEY), &key, "{\"x\":1}").await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            (body["offset"].as_u64(), body["duplicate"].as_bool()),
            (Some(4), duplicate)
        );
    }
}

#[tokio::test]
async fn server_api() {
    let server = start(&[]).await;
    let addr = server.addr;
    let mut alice = Client::connect(addr, "alice", Fmt::Json).await;
    alice.ok(json!({"op": "create_room", "room": "news"})).await;

    let (status, body) = http_json(
        addr,
        "POST",
        "/api/rooms/news/publish",
        Some(API_KEY),
        r#"{"headline":"hello"}"#,
    )
    .await;
    assert_eq!((status, body["offset"].clone()), (200, json!(1)));
    let m = alice.event("message").await;
    assert_eq!(
        (m["from"].as_str(), m["data"]["headline"].as_str()),
        (Some("server"), Some("hello"))
    );

    let (status, info) = http_json(addr, "GET", "/api/rooms/news", Some(API_KEY), "").await;
    assert_eq!(status, 200);
    assert_eq!(
        (info["members"].clone(), info["offset"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(info["presence"][0]["user"], "alice");

    // Errors: bad key, unknown room, bad body, bad room name, oversize body.
    let (status, body) = http_json(addr, "GET", "/api/rooms/news", Some("wrong"), "").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    assert_eq!(http(addr, "GET", "/api/rooms/news", None, "").await.0, 401);
    assert_eq!(
        http(addr, "GET", "/api/rooms/nope", Some(API_KEY), "")
            .await
            .0,
        404
    );
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/rooms/news/publish",
            Some(API_KEY),
            "{bad"
        )
        .await
        .0,
        400
    );
    assert_eq!(
        http(addr, "GET", "/api/rooms/bad%20name", Some(API_KEY), "")
            .await
            .0,
        400
    );
    let big = format!("\"{}\"", "x".repeat(70_000));
    let (status, body) =
        http_json(addr, "POST", "/api/rooms/news/publish", Some(API_KEY), &big).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (413, json!("payload_too_large"))
    );

    // Disconnect a user: every connection of theirs closes with 4003.
    let mut second = Client::connect(addr, "alice", Fmt::MsgPack).await;
    let (status, _) = http_json(
        addr,
        "POST",
        "/api/users/alice/disconnect",
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(alice.closed().await, 4003);
    assert_eq!(second.closed().await, 4003);
    let node = server.node.clone();
    eventually("kicked counted", || {
        node.metrics
            .disconnects
            .with_label_values(&["kicked"])
            .get()
            == 2
    })
    .await;
}

#[tokio::test]
async fn status_probes_and_metrics() {
    let server = start(&[]).await;
    let addr = server.addr;
    let (status, body) = http_json(addr, "GET", "/status", None, "").await;
    assert_eq!(status, 200);
    assert_eq!(body["level"], "normal");
    assert_eq!(body["roomCreationEnabled"], true);
    for key in ["activeRooms", "activeConnections", "timestamp"] {
        assert!(body[key].is_u64(), "{key} in {body}");
    }
    assert_eq!(http(addr, "GET", "/healthz", None, "").await.0, 200);
    assert_eq!(http(addr, "GET", "/readyz", None, "").await.0, 200);
    assert_eq!(http(addr, "GET", "/nope", None, "").await.0, 404);
    let mut c = Client::connect(addr, "m", Fmt::Json).await;
    c.ok(json!({"op": "create_room", "room": "metrics"})).await;
    c.ok(json!({"op": "publish", "room": "metrics", "data": 1}))
        .await;
    let (status, text) = http(addr, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    for name in [
        "roomcast_connections{format=\"json\",protocol=\"native\"} 1",
        "roomcast_messages_published_total 1",
        "roomcast_messages_delivered_total 1",
        "roomcast_room_creations_total 1",
        "roomcast_traffic_level 0",
        "roomcast_command_duration_seconds_bucket{op=\"publish\"",
        "roomcast_publish_to_deliver_seconds_count 1",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}

#[tokio::test]
async fn empty_rooms_expire_after_their_ttl() {
    let server = start(&[]).await;
    let mut c = Client::connect(server.addr, "t", Fmt::Json).await;
    c.ok(json!({"op": "create_room", "room": "brief", "options": {"ttlSecs": 1}}))
        .await;
    c.ok(json!({"op": "leave", "room": "brief"})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    assert_eq!(
        c.err(json!({"op": "join", "room": "brief"})).await["code"],
        "not_found"
    );
    // The name is free again.
    c.ok(json!({"op": "create_room", "room": "brief"})).await;
}

#[tokio::test]
async fn a_member_sees_every_offset_once_while_joining_under_load() {
    // A publisher floods a room while others join: each joiner's stream must continue
    // exactly after the offset in its join reply, with no gap and no duplicate.
    let server = start(&["--publish-rate", "100000", "--publish-burst", "100000"]).await;
    let addr = server.addr;
    let mut publisher = Client::connect(addr, "pub", Fmt::Json).await;
    publisher
        .ok(json!({"op": "create_room", "room": "busy"}))
        .await;
    let flood = tokio::spawn(async move {
        for n in 0..400u64 {
            publisher
                .send(json!({"id": n + 100, "op": "publish", "room": "busy", "data": n}))
                .await;
            if n % 50 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        publisher
    });
    let mut joiners = Vec::new();
    for i in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let mut c = Client::connect(
            addr,
            &format!("j{i}"),
            if i % 2 == 0 { Fmt::Json } else { Fmt::MsgPack },
        )
        .await;
        let j = c.ok(json!({"op": "join", "room": "busy"})).await;
        joiners.push((c, j["offset"].as_u64().unwrap()));
    }
    let _publisher = flood.await.unwrap();
    for (mut c, start) in joiners {
        let mut expect = start + 1;
        while expect <= 400 {
            let m = c.event("message").await;
            assert_eq!(m["offset"].as_u64().unwrap(), expect, "joined at {start}");
            expect += 1;
        }
    }
}
