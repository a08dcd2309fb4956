//! Binary stays binary: byte strings published in one format reach every other format in its
//! own form (JSON: the `{"$bin":"<base64>"}` wrapper; MessagePack: `bin`; Socket.IO: a binary
//! event with attachments, over WebSocket and over long-polling), and so do history, a join
//! with `since`, and the server API. The limits count binary as bytes.
//!
//! On the embedded backend by default; with `ROOMCAST_TEST_REDIS_CLUSTER` set (seed URLs), the
//! same tests run on Redis Cluster, through the Lua publish script and the stream (each test
//! creates its rooms as its own user: room creation is rate-limited per user across nodes).

#![allow(clippy::unwrap_used)]

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use protocol::value::Plain;
use serde_json::{json, Value};
use support::sio::{sio, sio_binary, sio_join, sio_text_starting, Ws};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// Embedded, or Redis Cluster when the variable names one.
async fn node(extra: &[&str]) -> gateway::Running {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if let Ok(urls) = std::env::var("ROOMCAST_TEST_REDIS_CLUSTER") {
        args.push("--redis-cluster".into());
        args.push(urls);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start(&args).await
}

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The nested payload of these tests: a PNG header and a thumbnail, and a name.
const FILE: &[u8] = b"\x89PNG\r\n\x1a\n\x00\xff";
const THUMB: &[u8] = &[0, 1, 2, 3, 254, 255];

fn wrapped() -> Value {
    json!({"file": {"$bin": b64(FILE)}, "name": "a.png", "thumbs": [{"$bin": b64(THUMB)}]})
}

/// MessagePack `bin` of `bytes` (bin8: these tests use short byte strings).
fn bin8(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0xc4, u8::try_from(bytes.len()).unwrap()];
    out.extend_from_slice(bytes);
    out
}

fn fixstr(s: &str) -> Vec<u8> {
    let mut out = vec![0xa0 | u8::try_from(s.len()).unwrap()];
    out.extend_from_slice(s.as_bytes());
    out
}

/// `{"id": id, "op": "publish", "room": room, "data": {"file": bin, "name": "a.png",
/// "thumbs": [bin]}}` in MessagePack, built by hand so that the bytes are `bin`.
fn msgpack_publish(id: u8, room: &str) -> Vec<u8> {
    let mut m = vec![0x84];
    m.extend(fixstr("id"));
    m.push(id);
    m.extend(fixstr("op"));
    m.extend(fixstr("publish"));
    m.extend(fixstr("room"));
    m.extend(fixstr(room));
    m.extend(fixstr("data"));
    m.push(0x83);
    m.extend(fixstr("file"));
    m.extend(bin8(FILE));
    m.extend(fixstr("name"));
    m.extend(fixstr("a.png"));
    m.extend(fixstr("thumbs"));
    m.push(0x91);
    m.extend(bin8(THUMB));
    m
}

/// The next MessagePack frame of a native client, raw.
async fn mp_frame(c: &mut Client) -> Vec<u8> {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => return b.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a MessagePack frame, got {other:?}"),
        }
    }
}

/// The reply to request `id`, raw and decoded, skipping events.
async fn mp_reply(c: &mut Client, id: u64) -> (Vec<u8>, Value) {
    loop {
        let raw = mp_frame(c).await;
        let Plain(v) = rmp_serde::from_slice(&raw).unwrap();
        if v["id"] == id {
            return (raw, v);
        }
    }
}

/// The next MessagePack frame that is a `message` event, raw and decoded.
async fn mp_message(c: &mut Client) -> (Vec<u8>, Value) {
    loop {
        let raw = mp_frame(c).await;
        let Plain(v) = rmp_serde::from_slice(&raw).unwrap();
        if v["event"] == "message" {
            return (raw, v);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks a Socket.IO `message` event carrying [`wrapped`]: `452-["message",{…},"offset"]`
/// with placeholders, then the two attachments in order.
async fn sio_expect_message(ws: &mut Ws, room: &str) {
    let t = sio_text_starting(ws, "452-").await;
    let v: Value = serde_json::from_str(t.strip_prefix("452-").unwrap()).unwrap();
    assert_eq!(v[0], "message", "{t}");
    assert_eq!(v[1]["room"], room);
    assert_eq!(
        v[1]["data"],
        json!({"file": {"_placeholder": true, "num": 0}, "name": "a.png",
            "thumbs": [{"_placeholder": true, "num": 1}]}),
        "{t}"
    );
    assert!(v[2].is_string(), "the recovery offset: {t}");
    assert_eq!(sio_binary(ws).await, FILE);
    assert_eq!(sio_binary(ws).await, THUMB);
}

#[tokio::test]
async fn a_msgpack_bin_reaches_every_format_in_its_own_form() {
    let server = node(&[]).await;
    let a = server.addr;
    let room = unique("bin-mp");
    let mut j = Client::connect(a, &unique("json-user"), Fmt::Json).await;
    j.ok(json!({"op": "create_room", "room": room})).await;
    j.ok(json!({"op": "join", "room": room})).await;
    let mut m = Client::connect(a, "mp-user", Fmt::MsgPack).await;
    m.ok(json!({"op": "join", "room": room})).await;
    let mut s = sio(a).await;
    assert!(sio_join(&mut s, &room, 1).await.contains(r#""ok""#));

    m.send_raw(Message::binary(msgpack_publish(9, &room))).await;
    // The publisher's reply, then its own message: `bin`, not base64 text.
    let (mut reply, mut message) = (None, None);
    while reply.is_none() || message.is_none() {
        let raw = mp_frame(&mut m).await;
        let Plain(v) = rmp_serde::from_slice(&raw).unwrap();
        if v["id"] == 9 {
            reply = Some(v);
        } else if v["event"] == "message" {
            message = Some((raw, v));
        }
    }
    let reply = reply.unwrap();
    assert!(reply["ok"]["offset"].is_u64(), "{reply}");
    let (raw, event) = message.unwrap();
    assert!(contains(&raw, &bin8(FILE)) && contains(&raw, &bin8(THUMB)));
    assert!(!contains(&raw, b"$bin"), "no wrapper in MessagePack");
    assert_eq!(event["data"], wrapped());

    let got = j.event("message").await;
    assert_eq!(got["data"], wrapped(), "JSON clients get the wrapper");
    sio_expect_message(&mut s, &room).await;
}

#[tokio::test]
async fn a_socketio_client_publishes_nested_binary_with_two_attachments() {
    let server = node(&[]).await;
    let a = server.addr;
    let room = unique("bin-sio");
    let mut j = Client::connect(a, &unique("json-user"), Fmt::Json).await;
    j.ok(json!({"op": "create_room", "room": room})).await;
    j.ok(json!({"op": "join", "room": room})).await;
    let mut m = Client::connect(a, "mp-user", Fmt::MsgPack).await;
    m.ok(json!({"op": "join", "room": room})).await;
    let mut other = sio(a).await;
    sio_join(&mut other, &room, 1).await;
    let mut s = sio(a).await;
    sio_join(&mut s, &room, 1).await;

    // socket.emit("publish", {room, data: {file: Buffer, name, thumbs: [Buffer]}}, ack)
    let packet = format!(
        r#"452-2["publish",{{"room":"{room}","data":{{"file":{{"_placeholder":true,"num":0}},"name":"a.png","thumbs":[{{"_placeholder":true,"num":1}}]}}}}]"#
    );
    s.send(Message::text(packet)).await.unwrap();
    s.send(Message::binary(FILE.to_vec())).await.unwrap();
    s.send(Message::binary(THUMB.to_vec())).await.unwrap();
    let ack = sio_text_starting(&mut s, "432").await;
    assert!(ack.contains(r#""offset""#), "{ack}");

    assert_eq!(j.event("message").await["data"], wrapped());
    let (raw, event) = mp_message(&mut m).await;
    assert!(contains(&raw, &bin8(FILE)) && contains(&raw, &bin8(THUMB)));
    assert_eq!(event["data"], wrapped());
    sio_expect_message(&mut other, &room).await;
}

#[tokio::test]
async fn history_since_and_the_server_api_keep_binary() {
    let server = node(&[]).await;
    let a = server.addr;
    let room = unique("bin-hist");
    let mut j = Client::connect(a, &unique("json-user"), Fmt::Json).await;
    let created = j.ok(json!({"op": "create_room", "room": room})).await;
    let epoch = created["epoch"].clone();
    j.ok(json!({"op": "join", "room": room})).await;
    // A JSON client publishes the wrapper; the server API publishes it too.
    j.ok(json!({"op": "publish", "room": room, "data": wrapped()}))
        .await;
    let (status, body) = http_json(
        a,
        "POST",
        &format!("/api/rooms/{room}/publish"),
        Some(API_KEY),
        &wrapped().to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A broken wrapper is refused, by the API and by a client.
    let (status, _) = http_json(
        a,
        "POST",
        &format!("/api/rooms/{room}/publish"),
        Some(API_KEY),
        r#"{"$bin":"not base64"}"#,
    )
    .await;
    assert_eq!(status, 400);
    let e = j
        .err(json!({"op": "publish", "room": room, "data": {"$bin": "AA==", "x": 1}}))
        .await;
    assert_eq!(e["code"], "bad_request", "{e}");

    // History, in JSON and in MessagePack.
    let h = j.ok(json!({"op": "history", "room": room})).await;
    let data: Vec<Value> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(data, vec![wrapped(), wrapped()], "{h}");
    let mut m = Client::connect(a, "mp-user", Fmt::MsgPack).await;
    m.ok(json!({"op": "join", "room": room})).await;
    m.send(json!({"id": 5, "op": "history", "room": room}))
        .await;
    let (raw, _) = mp_reply(&mut m, 5).await;
    assert!(contains(&raw, &bin8(FILE)) && contains(&raw, &bin8(THUMB)));
    assert!(!contains(&raw, b"$bin"));

    // Join with `since` (before the first message): both recovered, binary kept.
    let mut late = Client::connect(a, "late-user", Fmt::Json).await;
    let joined = late
        .ok(json!({"op": "join", "room": room, "since": {"offset": 0, "epoch": epoch}}))
        .await;
    let missed: Vec<Value> = joined["missed"]
        .as_array()
        .unwrap_or_else(|| panic!("no missed messages: {joined}"))
        .iter()
        .map(|m| m["data"].clone())
        .collect();
    assert_eq!(missed, vec![wrapped(), wrapped()], "{joined}");

    // A Socket.IO client's history: a BINARY_ACK with four attachments.
    let mut s = sio(a).await;
    sio_join(&mut s, &room, 1).await;
    s.send(Message::text(format!(
        r#"427["history",{{"room":"{room}"}}]"#
    )))
    .await
    .unwrap();
    let t = sio_text_starting(&mut s, "464-7").await;
    let v: Value = serde_json::from_str(t.strip_prefix("464-7").unwrap()).unwrap();
    let messages = v[0]["ok"]["messages"].as_array().unwrap();
    assert_eq!(
        messages[1]["data"]["thumbs"][0],
        json!({"_placeholder": true, "num": 3}),
        "{t}"
    );
    for expected in [FILE, THUMB, FILE, THUMB] {
        assert_eq!(sio_binary(&mut s).await, expected);
    }
}

#[tokio::test]
async fn max_data_bytes_counts_binary_as_bytes() {
    let server = node(&["--max-data-bytes", "200"]).await;
    let a = server.addr;
    let room = unique("bin-limit");
    let mut j = Client::connect(a, &unique("json-user"), Fmt::Json).await;
    j.ok(json!({"op": "create_room", "room": room})).await;
    // 180 bytes are 240 characters of base64: over 200 as text, under it as bytes.
    let fits = json!({"$bin": b64(&[7u8; 180])});
    j.ok(json!({"op": "publish", "room": room, "data": fits}))
        .await;
    let over = json!({"$bin": b64(&[7u8; 201])});
    let e = j
        .err(json!({"op": "publish", "room": room, "data": over}))
        .await;
    assert_eq!(e["code"], "payload_too_large", "{e}");
    let path = format!("/api/rooms/{room}/publish");
    let (status, _) = http_json(a, "POST", &path, Some(API_KEY), &fits.to_string()).await;
    assert_eq!(status, 200);
    let (status, _) = http_json(a, "POST", &path, Some(API_KEY), &over.to_string()).await;
    assert_eq!(status, 413);
}

/// A message holds at most 10 byte strings, whatever the client (the most one Socket.IO packet
/// may carry: the stock client closes its connection on more). A Socket.IO `history` whose
/// messages hold more in all is cut to its newest messages that fit, marked `partial`.
#[tokio::test]
async fn byte_strings_fit_a_socketio_packet() {
    let server = node(&[]).await;
    let a = server.addr;
    let room = unique("bin-count");
    let mut j = Client::connect(a, &unique("json-user"), Fmt::Json).await;
    j.ok(json!({"op": "create_room", "room": room})).await;
    let bins = |n: u8| Value::Array((0..n).map(|i| json!({"$bin": b64(&[i])})).collect());
    let e = j
        .err(json!({"op": "publish", "room": room, "data": bins(11)}))
        .await;
    assert_eq!(e["code"], "payload_too_large", "{e}");
    let path = format!("/api/rooms/{room}/publish");
    let (status, _) = http_json(a, "POST", &path, Some(API_KEY), &bins(11).to_string()).await;
    assert_eq!(status, 413);
    for _ in 0..4 {
        j.ok(json!({"op": "publish", "room": room, "data": bins(4)}))
            .await;
    }
    // Native history is whole; Socket.IO's is cut to 8 attachments (two messages).
    let h = j.ok(json!({"op": "history", "room": room})).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 4);
    let mut ws = sio(a).await;
    sio_join(&mut ws, &room, 1).await;
    ws.send(Message::text(format!(
        r#"422["history",{{"room":"{room}"}}]"#
    )))
    .await
    .unwrap();
    let text = sio_text_starting(&mut ws, "468-2").await;
    let body: Value = serde_json::from_str(text.strip_prefix("468-2").unwrap()).unwrap();
    let offsets: Vec<u64> = body[0]["ok"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4]);
    assert_eq!(body[0]["ok"]["partial"], true);
}

/// Long-polling: the same binary event, its attachments as `b` + base64 packets.
#[tokio::test]
async fn socketio_over_polling_gets_attachments_as_base64() {
    let server = node(&[]).await;
    let a = server.addr;
    let room = unique("bin-poll");
    let mut j = Client::connect(a, &unique("json-user"), Fmt::Json).await;
    j.ok(json!({"op": "create_room", "room": room})).await;
    let (_, open) = http(a, "GET", "/socket.io/?EIO=4&transport=polling", None, "").await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let path = format!(
        "/socket.io/?EIO=4&transport=polling&sid={}",
        open["sid"].as_str().unwrap()
    );
    assert_eq!(http(a, "POST", &path, None, "40").await.1, "ok");
    let (_, body) = http(a, "GET", &path, None, "").await;
    assert!(body.starts_with("40"), "{body}");
    let join = format!(r#"421["join",{{"room":"{room}"}}]"#);
    assert_eq!(http(a, "POST", &path, None, &join).await.1, "ok");
    let mut seen = String::new();
    while !seen.contains("431[") {
        seen.push_str(&http(a, "GET", &path, None, "").await.1);
    }
    j.ok(json!({"op": "publish", "room": room, "data": wrapped()}))
        .await;
    let (_, body) = http(a, "GET", &path, None, "").await;
    let packets: Vec<&str> = body.split('\u{1e}').collect();
    assert_eq!(packets.len(), 3, "{body}");
    assert!(packets[0].starts_with(r#"452-["message""#), "{body}");
    assert_eq!(packets[1], format!("b{}", b64(FILE)));
    assert_eq!(packets[2], format!("b{}", b64(THUMB)));
}

/// Across nodes on Redis Cluster: the Lua publish script's envelope and the stream carry the
/// bytes (as the wrapper's text) to a Socket.IO client and a MessagePack client on another
/// node. Runs only with `ROOMCAST_TEST_REDIS_CLUSTER`.
#[tokio::test]
async fn binary_crosses_nodes_on_redis() {
    if std::env::var("ROOMCAST_TEST_REDIS_CLUSTER").is_err() {
        eprintln!("skipped: ROOMCAST_TEST_REDIS_CLUSTER is not set");
        return;
    }
    let (one, two) = (node(&[]).await, node(&[]).await);
    let room = unique("bin-nodes");
    let mut m = Client::connect(one.addr, "mp-user", Fmt::MsgPack).await;
    m.ok(json!({"op": "create_room", "room": room})).await;
    m.ok(json!({"op": "join", "room": room})).await;
    let mut far = Client::connect(two.addr, "far-mp", Fmt::MsgPack).await;
    far.ok(json!({"op": "join", "room": room})).await;
    let mut s = sio(two.addr).await;
    sio_join(&mut s, &room, 1).await;
    m.send_raw(Message::binary(msgpack_publish(9, &room))).await;
    sio_expect_message(&mut s, &room).await;
    let (raw, event) = mp_message(&mut far).await;
    assert!(contains(&raw, &bin8(FILE)) && contains(&raw, &bin8(THUMB)));
    assert_eq!(event["data"], wrapped());
    // History read back from the stream on the other node.
    let mut j = Client::connect(two.addr, "far-json", Fmt::Json).await;
    j.ok(json!({"op": "join", "room": room})).await;
    let h = j.ok(json!({"op": "history", "room": room})).await;
    assert_eq!(h["messages"][0]["data"], wrapped(), "{h}");
}
