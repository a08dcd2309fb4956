//! Ephemeral rooms (`historySize: 0`): messages without offsets, delivered at most once, no
//! history, no recovery; membership still required. On one embedded node, over the native
//! protocol (JSON and MessagePack) and Socket.IO; and across three gateway processes on the
//! Redis Cluster of `ROOMCAST_TEST_REDIS_CLUSTER`, when one is given.

#![allow(clippy::unwrap_used)]

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// An ephemeral `message` event: no `offset`, no `epoch`, and the rest as usual.
fn assert_ephemeral_message(m: &Value, room: &str, from: &str) {
    assert_eq!(m["event"], "message", "{m}");
    assert!(m.get("offset").is_none(), "an offset: {m}");
    assert!(m.get("epoch").is_none(), "an epoch: {m}");
    assert_eq!(
        (m["room"].as_str(), m["from"].as_str()),
        (Some(room), Some(from)),
        "{m}"
    );
    assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000, "{m}");
}

async fn members_non_members_and_history(fmt: Fmt) {
    let server = start(&[]).await;
    let addr = server.addr;
    let room = unique("typing");
    let mut alice = Client::connect(addr, "alice", fmt).await;
    let mut bob = Client::connect(addr, "bob", fmt).await;
    let mut carol = Client::connect(addr, "carol", fmt).await;

    let created = alice
        .ok(json!({"op": "create_room", "room": room, "options": {"historySize": 0}}))
        .await;
    assert_eq!(
        (created["ephemeral"].clone(), created["offset"].clone()),
        (json!(true), json!(0))
    );
    let joined = bob.ok(json!({"op": "join", "room": room})).await;
    assert_eq!(joined["ephemeral"], true, "{joined}");
    assert_eq!(alice.event("presence").await["user"], "bob");

    // A non-member is refused, as in any room.
    let e = carol
        .err(json!({"op": "publish", "room": room, "data": "psst"}))
        .await;
    assert_eq!(e["code"], "not_member");

    // The ack is `{ephemeral: true}`, nothing else; a repeated msgId does not apply (at most
    // once: a retry is another message).
    for n in 1..=5 {
        let ack = alice
            .ok(json!({"op": "publish", "room": room, "data": {"n": n}, "msgId": "same"}))
            .await;
        assert_eq!(ack, json!({"ephemeral": true}));
    }
    let ack = bob
        .ok(json!({"op": "publish", "room": room, "data": {"n": 6}}))
        .await;
    assert_eq!(ack, json!({"ephemeral": true}));
    // Every member gets every message, the publisher included, in the order sent.
    for client in [&mut alice, &mut bob] {
        for n in 1..=6 {
            let m = client.event("message").await;
            assert_ephemeral_message(&m, &room, if n == 6 { "bob" } else { "alice" });
            assert_eq!(m["data"], json!({"n": n}));
        }
    }
    carol.quiet(100).await;

    // The server API publishes there too.
    let (status, body) = http_json(
        addr,
        "POST",
        &format!("/api/rooms/{room}/publish"),
        Some(API_KEY),
        r#"{"n":7}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ephemeral": true}));
    for client in [&mut alice, &mut bob] {
        let m = client.event("message").await;
        assert_ephemeral_message(&m, &room, "server");
        assert_eq!(m["data"], json!({"n": 7}));
    }

    // Nothing was kept: history is empty, the room's offset never moved, `since` recovers
    // nothing.
    let h = bob.ok(json!({"op": "history", "room": room})).await;
    assert_eq!(h, json!({"messages": [], "epoch": created["epoch"]}));
    let (_, info) = http_json(
        addr,
        "GET",
        &format!("/api/rooms/{room}"),
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(info["offset"], 0, "{info}");
    let mut dave = Client::connect(addr, "dave", fmt).await;
    let j = dave
        .ok(json!({"op": "join", "room": room, "since": {"offset": 0, "epoch": created["epoch"]}}))
        .await;
    assert_eq!(
        (
            j["recovered"].clone(),
            j["missed"].clone(),
            j["ephemeral"].clone()
        ),
        (json!(false), json!([]), json!(true))
    );

    // After leaving, a member is a non-member again.
    bob.ok(json!({"op": "leave", "room": room})).await;
    let e = bob
        .err(json!({"op": "publish", "room": room, "data": "late"}))
        .await;
    assert_eq!(e["code"], "not_member");

    // A room with history is unaffected.
    let plain = alice
        .ok(json!({"op": "create_room", "room": unique("chat"), "options": {"historySize": 5}}))
        .await;
    assert!(plain.get("ephemeral").is_none(), "{plain}");
    let ack = alice
        .ok(json!({"op": "publish", "room": plain["room"], "data": 1}))
        .await;
    assert_eq!(ack, json!({"offset": 1}));
}

#[tokio::test]
async fn members_get_ephemeral_messages_json() {
    members_non_members_and_history(Fmt::Json).await;
}

#[tokio::test]
async fn members_get_ephemeral_messages_msgpack() {
    members_non_members_and_history(Fmt::MsgPack).await;
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame that is not a ping.
async fn sio_text(ws: &mut Ws) -> String {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("nothing within 5 s");
        match next {
            Some(Ok(Message::Text(t))) if t.as_str() != "2" => return t.to_string(),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// Socket.IO gets the same shapes: the ack body `{ok: {ephemeral: true}}`, and `message`
/// events without offset and epoch, and without the recovery offset argument (which names a
/// position; an ephemeral message has none).
#[tokio::test]
async fn socketio_gets_the_same_shapes() {
    let server = start(&[]).await;
    let room = unique("cursors");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        server.addr
    ))
    .await
    .unwrap();
    assert!(sio_text(&mut ws).await.starts_with('0'), "the open packet");
    let tok = token("sio-eph", json!({}));
    ws.send(Message::text(format!(r#"40{{"token":"{tok}"}}"#)))
        .await
        .unwrap();
    assert!(sio_text(&mut ws).await.starts_with("40"));
    ws.send(Message::text(format!(
        r#"421["create_room",{{"room":"{room}","options":{{"historySize":0}}}}]"#
    )))
    .await
    .unwrap();
    ws.send(Message::text(format!(
        r#"422["publish",{{"room":"{room}","data":{{"x":1}}}}]"#
    )))
    .await
    .unwrap();
    let (mut created, mut acked, mut message) = (None, None, None);
    while created.is_none() || acked.is_none() || message.is_none() {
        let t = sio_text(&mut ws).await;
        if let Some(body) = t.strip_prefix("431") {
            created = Some(serde_json::from_str::<Value>(body).unwrap());
        } else if let Some(body) = t.strip_prefix("432") {
            acked = Some(body.to_string());
        } else if t.starts_with(r#"42["message""#) {
            message = Some(t);
        }
    }
    assert_eq!(created.unwrap()[0]["ok"]["ephemeral"], true);
    assert_eq!(acked.unwrap(), r#"[{"ok":{"ephemeral":true}}]"#);
    let message = message.unwrap();
    let v: Value = serde_json::from_str(message.strip_prefix("42").unwrap()).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "no recovery offset: {message}"
    );
    assert_eq!(
        v[1],
        json!({"room": room, "from": "sio-eph", "data": {"x": 1}, "ts": v[1]["ts"]})
    );
}

const VAR: &str = "ROOMCAST_TEST_REDIS_CLUSTER";

/// The next `message` event within `ms`, if any.
async fn message_within(c: &mut Client, ms: u64) -> Option<Value> {
    tokio::time::timeout(Duration::from_millis(ms), c.event("message"))
        .await
        .ok()
}

/// Three gateway processes on the Redis Cluster: members on every node get every message of
/// every publisher, each publisher's in the order it sent them, with no offset and without
/// waiting for a sequencer; a connection on a node that holds members, but that did not
/// join, is refused; history stays empty; the server API (the publish script's ephemeral
/// branch) reaches all; and the members' publishes ran no script.
#[tokio::test]
async fn cross_node_delivery_on_a_redis_cluster() {
    cross_node(&[]).await;
}

/// The same with `--durable-publish`, which does not apply to ephemeral rooms: nothing is
/// stored, so nothing waits for a replica (the script's branch publishes itself too).
#[tokio::test]
async fn cross_node_delivery_with_durable_publish() {
    cross_node(&["--durable-publish"]).await;
}

async fn cross_node(extra: &[&str]) {
    if std::env::var(VAR).is_err() {
        eprintln!("{VAR} is not set: the cross-node check of ephemeral rooms did not run");
        return;
    }
    let mut args = vec!["--publish-rate", "1000", "--publish-burst", "1000"];
    args.extend_from_slice(extra);
    let nodes = cluster_gateways::<3>(VAR, "eph", &args).await;
    let room = unique("presence-pings");
    // Users of their own: the cluster, and its per-user creation limit, is shared.
    let names = ["alice", "bob", "carol"].map(unique);
    let mut a = Client::connect(nodes[0].addr, &names[0], Fmt::Json).await;
    let mut b = Client::connect(nodes[1].addr, &names[1], Fmt::MsgPack).await;
    let mut c = Client::connect(nodes[2].addr, &names[2], Fmt::Json).await;
    let mut d = Client::connect(nodes[1].addr, &unique("dave"), Fmt::Json).await;
    let created = a
        .ok(json!({"op": "create_room", "room": room, "options": {"historySize": 0}}))
        .await;
    assert_eq!(created["ephemeral"], true);
    for client in [&mut b, &mut c] {
        let j = client.ok(json!({"op": "join", "room": room})).await;
        assert_eq!(j["ephemeral"], true);
    }

    // A node starts receiving a room's channel a moment after its first member joined
    // (SSUBSCRIBE is asynchronous), and what is published before is not repaired in an
    // ephemeral room: warm up until every member hears the room.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut heard = [false; 3];
    let mut i = 0;
    while heard.iter().any(|h| !h) {
        assert!(
            Instant::now() < deadline,
            "the room never reached every node: {heard:?}"
        );
        i += 1;
        let ack = a
            .ok(json!({"op": "publish", "room": room, "data": {"warm": i}}))
            .await;
        assert_eq!(ack, json!({"ephemeral": true}));
        for (k, client) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
            while let Some(m) = message_within(client, 100).await {
                assert_ephemeral_message(&m, &room, &names[0]);
                heard[k] = true;
            }
        }
    }
    for client in [&mut a, &mut b, &mut c] {
        while message_within(client, 300).await.is_some() {}
        client.backlog.retain(|m| m.get("id").is_none());
    }

    // A non-member on a node that holds members of the room is refused.
    let e = d
        .err(json!({"op": "publish", "room": room, "data": "psst"}))
        .await;
    assert_eq!(e["code"], "not_member");

    // All three publish, pipelined and interleaved.
    let per = 20u64;
    let started = Instant::now();
    for i in 0..per {
        for (k, client) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
            client
                .send(json!({"id": 1000 + i, "op": "publish", "room": room, "data": {"k": k, "i": i}}))
                .await;
        }
    }
    for client in [&mut a, &mut b, &mut c] {
        let mut next = [0u64; 3];
        for _ in 0..3 * per {
            let m = client.event("message").await;
            let k = m["data"]["k"].as_u64().unwrap() as usize;
            assert_ephemeral_message(&m, &room, &names[k]);
            assert_eq!(m["data"]["i"], json!(next[k]), "publisher {k} out of order");
            next[k] += 1;
        }
        // The acks: `{ephemeral: true}` each.
        let mut acks = 0;
        client.backlog.retain(|m| {
            if m.get("id").is_some() {
                assert_eq!(m["ok"], json!({"ephemeral": true}), "{m}");
                acks += 1;
                false
            } else {
                true
            }
        });
        while acks < per {
            let m = client.recv_msg().await;
            if m.get("id").is_some() {
                assert_eq!(m["ok"], json!({"ephemeral": true}), "{m}");
                acks += 1;
            } else {
                client.backlog.push_back(m);
            }
        }
    }
    // Nothing waited for a starting point (a sequenced room's first messages may wait up to
    // 3 s for the join's): everything went out as it came.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "delivery took {:?}",
        started.elapsed()
    );
    d.quiet(200).await;

    // The server API goes through the publish script, which finds the room ephemeral.
    let (status, body) = http_json(
        nodes[2].addr,
        "POST",
        &format!("/api/rooms/{room}/publish"),
        Some(API_KEY),
        r#"{"from":"api"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for client in [&mut a, &mut b, &mut c] {
        let m = client.event("message").await;
        assert_ephemeral_message(&m, &room, "server");
        assert_eq!(m["data"], json!({"from": "api"}));
    }

    // History is empty on every node; the room's offset never moved.
    for client in [&mut a, &mut b, &mut c] {
        let h = client.ok(json!({"op": "history", "room": room})).await;
        assert_eq!(h["messages"], json!([]), "{h}");
    }
    let (_, info) = http_json(
        nodes[1].addr,
        "GET",
        &format!("/api/rooms/{room}"),
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(info["offset"], 0, "{info}");

    // The members' publishes were plain SPUBLISHes: no publish script ran on the nodes that
    // only they used (node 2 ran one, for the server API).
    for (node, min) in [(&nodes[0], i + per), (&nodes[1], per)] {
        let (_, text) = http(node.addr, "GET", "/metrics", None, "").await;
        let count = |command: &str| -> u64 {
            let series =
                format!("roomcast_redis_command_duration_seconds_count{{command=\"{command}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or_else(|| panic!("no {series} in /metrics"))
                .parse()
                .unwrap()
        };
        assert_eq!(count("publish"), 0, "{}", node.id);
        assert!(count("ephemeral_publish") >= min, "{}", node.id);
    }
}
