//! The Socket.IO endpoint on the wire: handshake refusals, the open packet, heartbeat,
//! namespaces, and malformed packets, with a raw WebSocket client.

#![allow(clippy::unwrap_used)]

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use support::*;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(addr: std::net::SocketAddr) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"))
        .await
        .unwrap()
        .0
}

/// The next text frame, or `None` when the server closed.
async fn text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("nothing within 5 s")
        {
            Some(Ok(Message::Text(t))) => return Some(t.to_string()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

async fn send(ws: &mut Ws, t: &str) {
    ws.send(Message::text(t.to_string())).await.unwrap();
}

#[tokio::test]
async fn handshake_refusals_match_the_reference_server() {
    let server = start(&[]).await;
    let a = server.addr;
    for (path, code, message) in [
        ("/socket.io/?EIO=4", 0, "Transport unknown"),
        (
            "/socket.io/?EIO=4&transport=carrier-pigeon",
            0,
            "Transport unknown",
        ),
        (
            "/socket.io/?EIO=4&transport=websocket&sid=abc",
            1,
            "Session ID unknown",
        ),
        ("/socket.io/?EIO=4&transport=websocket", 3, "Bad request"),
    ] {
        let (status, body) = http_json(a, "GET", path, None, "").await;
        assert_eq!(
            (status, body),
            (400, json!({"code": code, "message": message})),
            "{path}"
        );
    }
    let (status, body) =
        http_json(a, "POST", "/socket.io/?EIO=4&transport=websocket", None, "").await;
    assert_eq!((status, body["code"].clone()), (400, json!(2)));
    let err =
        tokio_tungstenite::connect_async(format!("ws://{a}/socket.io/?EIO=3&transport=websocket"))
            .await;
    assert!(err.is_err(), "EIO=3 must be refused");
}

#[tokio::test]
async fn open_packet_connect_and_namespaces() {
    let server = start(&[
        "--socketio-ping-interval",
        "300ms",
        "--socketio-ping-timeout",
        "200ms",
    ])
    .await;
    let mut ws = open(server.addr).await;
    let open_packet = text(&mut ws).await.unwrap();
    let v: Value = serde_json::from_str(open_packet.strip_prefix('0').unwrap()).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 5, "{v}");
    assert_eq!(
        (
            v["upgrades"].clone(),
            v["pingInterval"].clone(),
            v["pingTimeout"].clone(),
            v["maxPayload"].clone()
        ),
        (json!([]), json!(300), json!(200), json!(1_000_000))
    );
    // Unknown namespace: the exact reply, and the connection stays.
    send(&mut ws, "40/random").await;
    assert_eq!(
        text(&mut ws).await.unwrap(),
        r#"44/random,{"message":"Invalid namespace"}"#
    );
    // Anonymous CONNECT to `/` (allowed here), then the traffic status.
    send(&mut ws, "40").await;
    let reply = text(&mut ws).await.unwrap();
    let sid: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let keys: Vec<&str> = sid
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["sid", "pid"], "recovery is on by default: {reply}");
    assert!(text(&mut ws)
        .await
        .unwrap()
        .starts_with(r#"42["traffic_status","#));
    // The first ping comes after a full interval; answering keeps the connection.
    let started = std::time::Instant::now();
    assert_eq!(text(&mut ws).await.unwrap(), "2");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "ping came early"
    );
    send(&mut ws, "3").await;
    // An event with an ack id gets the native reply body.
    send(&mut ws, r#"427["create_room",{"room":"sio-wire"}]"#).await;
    let ack = text(&mut ws).await.unwrap();
    assert!(ack.starts_with(r#"437[{"ok":{"room":"sio-wire""#), "{ack}");
    // Leaving the namespace keeps Engine.IO alive: the next frame is a ping.
    send(&mut ws, "41").await;
    assert_eq!(text(&mut ws).await.unwrap(), "2");
    // Not answering a ping ends the connection.
    assert_eq!(text(&mut ws).await, None);
}

#[tokio::test]
async fn invalid_packets_and_states_close_the_connection() {
    let server = start(&[]).await;
    for (setup, bad) in [
        (vec![], "abc"),
        (vec!["40"], "42{}"),
        (vec!["40"], r#"42abc["x"]"#),
        (vec!["40"], "4abc"),
        (vec![], r#"42["event before connect"]"#),
        (vec!["40"], "40"),
        (vec!["40"], "2"),
        (vec!["40"], r#"44{"message":"from a client"}"#),
    ] {
        let mut ws = open(server.addr).await;
        text(&mut ws).await.unwrap();
        for s in &setup {
            send(&mut ws, s).await;
            text(&mut ws).await.unwrap();
            text(&mut ws).await.unwrap();
        }
        send(&mut ws, bad).await;
        assert_eq!(
            text(&mut ws).await,
            None,
            "{bad} should close the connection"
        );
    }
    // A binary message with nothing waiting for it.
    let mut ws = open(server.addr).await;
    text(&mut ws).await.unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(text(&mut ws).await, None);
}

#[tokio::test]
async fn a_bad_token_is_refused_and_a_silent_client_is_dropped() {
    let server = start(&["--socketio-connect-timeout", "300ms"]).await;
    let mut ws = open(server.addr).await;
    text(&mut ws).await.unwrap();
    send(&mut ws, r#"40{"token":"nope"}"#).await;
    assert_eq!(
        text(&mut ws).await.unwrap(),
        r#"44{"message":"invalid token","data":{"code":"unauthorized"}}"#
    );
    // No namespace joined within the connect timeout: closed.
    assert_eq!(text(&mut ws).await, None);
}

/// Connection state recovery across nodes: a socket lost on node A comes back on node B with
/// its rooms and the messages it missed, exactly once and in order, from the Redis Cluster.
#[tokio::test]
async fn recovery_on_another_node() {
    let urls = redis_urls("ROOMCAST_TEST_REDIS_CLUSTER");
    let a = start(&["--redis-cluster", &urls]).await;
    let b = start(&["--redis-cluster", &urls]).await;
    let user = unique("rec");
    let tok = token(&user, json!({}));
    let room = unique("recroom");

    // On A: connect, create, join, and receive two messages.
    let mut ws = open(a.addr).await;
    text(&mut ws).await.unwrap();
    send(&mut ws, &format!(r#"40{{"token":"{tok}"}}"#)).await;
    let reply = text(&mut ws).await.unwrap();
    let connect: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
    let (sid, pid) = (connect["sid"].clone(), connect["pid"].clone());
    assert!(pid.is_string(), "recovery is on by default: {connect}");
    send(
        &mut ws,
        &format!(r#"421["create_room",{{"room":"{room}"}}]"#),
    )
    .await;
    send(&mut ws, &format!(r#"422["join",{{"room":"{room}"}}]"#)).await;
    loop {
        let t = text(&mut ws).await.unwrap();
        if t.starts_with("432") {
            assert!(t.contains(r#""ok""#), "{t}");
            break;
        }
    }
    let mut publisher = Client::connect(b.addr, "rec-publisher", Fmt::Json).await;
    publisher.ok(json!({"op": "join", "room": room})).await;
    let mut offset = String::new();
    let mut got = Vec::new();
    for i in 1..=2 {
        publisher
            .ok(json!({"op": "publish", "room": room, "data": i}))
            .await;
    }
    while got.len() < 2 {
        let t = text(&mut ws).await.unwrap();
        if let Some(body) = t.strip_prefix("42") {
            let v: Value = serde_json::from_str(body).unwrap();
            if v[0] == "message" {
                got.push(v[1]["data"].clone());
                offset = v[2].as_str().unwrap().to_string();
            }
        }
    }
    // The transport dies without a goodbye; three messages are published meanwhile.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 3..=5 {
        publisher
            .ok(json!({"op": "publish", "room": room, "data": i}))
            .await;
    }

    // On B: recover with {pid, offset}.
    let mut ws = open(b.addr).await;
    text(&mut ws).await.unwrap();
    let auth = json!({"token": tok, "pid": pid, "offset": offset});
    send(&mut ws, &format!("40{auth}")).await;
    let mut replayed = Vec::new();
    let mut connected = None;
    while connected.is_none() || replayed.len() < 3 {
        let t = text(&mut ws).await.unwrap();
        if let Some(body) = t.strip_prefix("40") {
            connected = Some(serde_json::from_str::<Value>(body).unwrap());
        } else if let Some(body) = t.strip_prefix("42") {
            let v: Value = serde_json::from_str(body).unwrap();
            if v[0] == "message" {
                replayed.push(v[1]["data"].clone());
            }
        }
    }
    let connected = connected.unwrap();
    assert_eq!(
        (connected["sid"].clone(), connected["pid"].clone()),
        (sid, pid.clone()),
        "same ids: the client sees `recovered`"
    );
    assert_eq!(replayed, vec![json!(3), json!(4), json!(5)]);
    // Back in the room for live messages too.
    publisher
        .ok(json!({"op": "publish", "room": room, "data": 6}))
        .await;
    loop {
        let t = text(&mut ws).await.unwrap();
        if let Some(body) = t.strip_prefix("42") {
            let v: Value = serde_json::from_str(body).unwrap();
            if v[0] == "message" {
                assert_eq!(v[1]["data"], json!(6));
                break;
            }
        }
    }
    // The saved state was single use.
    let mut again = open(a.addr).await;
    text(&mut again).await.unwrap();
    send(&mut again, &format!("40{auth}")).await;
    let t = text(&mut again).await.unwrap();
    let v: Value = serde_json::from_str(t.strip_prefix("40").unwrap()).unwrap();
    assert_ne!(v["pid"], pid, "a used pid does not recover twice");
}

/// Publish events are pipelined (several wait for the store at once) and keep their order: the
/// n-th `publish` sent gets the n-th offset, and a `history` sent after them sees them all.
#[tokio::test]
async fn pipelined_publish_events_keep_their_order() {
    let node = start(&["--publish-rate", "100000", "--publish-burst", "100000"]).await;
    let mut ws = open(node.addr).await;
    text(&mut ws).await.unwrap();
    let tok = token(&unique("sio-pipe"), json!({}));
    send(&mut ws, &format!(r#"40{{"token":"{tok}"}}"#)).await;
    assert!(text(&mut ws).await.unwrap().starts_with("40"));
    let room = unique("sio-pipe");
    send(
        &mut ws,
        &format!(r#"421["create_room",{{"room":"{room}"}}]"#),
    )
    .await;
    let n = 300u64;
    for i in 0..n {
        send(
            &mut ws,
            &format!(r#"42{}["publish",{{"room":"{room}","data":{i}}}]"#, 100 + i),
        )
        .await;
    }
    send(
        &mut ws,
        &format!(r#"429["history",{{"room":"{room}","limit":1}}]"#),
    )
    .await;
    let mut acked = 0;
    loop {
        let t = text(&mut ws).await.unwrap();
        let Some(rest) = t.strip_prefix("43") else {
            continue;
        };
        let at = rest.find('[').unwrap();
        let (id, body) = (rest[..at].parse::<u64>().unwrap(), &rest[at..]);
        let v: Value = serde_json::from_str(body).unwrap();
        match id {
            1 => assert!(v[0].get("ok").is_some(), "{t}"),
            9 => {
                assert_eq!(
                    acked, n,
                    "history answered before the publishes sent ahead of it"
                );
                assert_eq!(v[0]["ok"]["messages"][0]["offset"], json!(n));
                break;
            }
            id => {
                assert_eq!(v[0]["ok"]["offset"], json!(id - 100 + 1), "{t}");
                acked += 1;
            }
        }
    }
}
