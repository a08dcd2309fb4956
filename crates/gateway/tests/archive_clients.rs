//! History past the Redis window, read by the clients that carry bytes natively: a MessagePack
//! client pages it and gets `bin` (never the `$bin` wrapper), a Socket.IO client pages it and
//! gets placeholders and attachments; every message carries a byte string, so every page
//! that reaches the archive shows the bytes survived a round trip through it.
//!
//! On the embedded backend with a SQLite archive (always), and on Redis Cluster
//! (`ROOMCAST_TEST_REDIS_CLUSTER`) with PostgreSQL (`ROOMCAST_TEST_POSTGRES`) when both are
//! set; otherwise that test prints `skipped` and passes.

#![allow(clippy::unwrap_used)]

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use protocol::value::Plain;
use serde_json::{json, Value};
use support::archival::{caught_up, sqlite_url};
use support::sio::{sio, sio_binary, sio_join, sio_text, Ws};
use support::*;
use tokio_tungstenite::tungstenite::Message;

const N: u64 = 30;
const HISTORY: u64 = 4;

/// The bytes of message `i`: every byte value class (0, high bit, 0xff) and `i` itself.
fn bytes(i: u64) -> Vec<u8> {
    vec![i as u8, 0x00, 0xff, 0x80, (i * 7) as u8]
}

fn payload(i: u64) -> Value {
    json!({"i": i, "b": {"$bin": STANDARD.encode(bytes(i))}, "more": [{"$bin": ""}]})
}

/// MessagePack `bin8` of `b`.
fn bin8(b: &[u8]) -> Vec<u8> {
    let mut out = vec![0xc4, u8::try_from(b.len()).unwrap()];
    out.extend_from_slice(b);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A room of `N` messages (window `HISTORY`), all archived; its epoch.
async fn filled(node: &gateway::Running, room: &str) -> String {
    let mut c = Client::connect(node.addr, &unique("writer"), Fmt::Json).await;
    let created = c
        .ok(json!({"op": "create_room", "room": room, "options": {"historySize": HISTORY}}))
        .await;
    let epoch = created["epoch"].as_str().unwrap().to_string();
    for i in 1..=N {
        let ok = c
            .ok(json!({"op": "publish", "room": room, "data": payload(i)}))
            .await;
        assert_eq!(ok["offset"], json!(i));
    }
    let archive = node.node.archive().unwrap().clone();
    caught_up(archive.as_ref(), room, &epoch, N).await;
    epoch
}

/// Puts a page (offsets oldest first) in front of what was seen; the next `before`, or
/// `None` at the end.
fn step(seen: &mut Vec<u64>, page: Vec<u64>) -> Option<u64> {
    let first = *page.first()?;
    assert!(page.windows(2).all(|w| w[1] == w[0] + 1), "{page:?}");
    if let Some(&oldest) = seen.first() {
        assert_eq!(*page.last().unwrap() + 1, oldest, "a gap at the seam");
    }
    seen.splice(0..0, page);
    Some(first)
}

/// The raw MessagePack reply to request `id`.
async fn mp_reply(c: &mut Client, id: u64) -> Vec<u8> {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => {
                let Plain(v) = rmp_serde::from_slice(&b).unwrap();
                if v["id"] == id {
                    return b.to_vec();
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a MessagePack frame, got {other:?}"),
        }
    }
}

/// A MessagePack client pages from the newest message to the first, 7 at a time.
async fn msgpack_pages(node: &gateway::Running, room: &str, epoch: &str) {
    let mut c = Client::connect(node.addr, &unique("mp"), Fmt::MsgPack).await;
    c.ok(json!({"op": "join", "room": room})).await;
    let (mut seen, mut before, mut id) = (Vec::new(), None::<u64>, 1000u64);
    loop {
        id += 1;
        let mut op = json!({"id": id, "op": "history", "room": room, "limit": 7});
        if let Some(b) = before {
            op["before"] = json!(b);
        }
        c.send(op).await;
        let raw = mp_reply(&mut c, id).await;
        assert!(
            !contains(&raw, b"$bin"),
            "the wrapper reached a MessagePack client"
        );
        let Plain(reply) = rmp_serde::from_slice(&raw).unwrap();
        assert_eq!(reply["ok"]["epoch"], json!(epoch), "{reply}");
        let messages = reply["ok"]["messages"].as_array().unwrap();
        let mut page = Vec::new();
        for m in messages {
            let offset = m["offset"].as_u64().unwrap();
            // `Plain` turns `bin` back into the wrapper: the same data as published.
            assert_eq!(m["data"], payload(offset), "offset {offset}");
            assert!(contains(&raw, &bin8(&bytes(offset))), "offset {offset}");
            page.push(offset);
        }
        match step(&mut seen, page) {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
}

/// A Socket.IO `history` acknowledgement with id `ack`: its body, with each placeholder
/// replaced by the wrapper of its attachment (so it compares with what was published).
async fn sio_history(ws: &mut Ws, room: &str, ack: u64, before: Option<u64>) -> Value {
    let mut args = json!({"room": room, "limit": 5});
    if let Some(b) = before {
        args["before"] = json!(b);
    }
    ws.send(Message::text(format!(r#"42{ack}["history",{args}]"#)))
        .await
        .unwrap();
    loop {
        let t = sio_text(ws).await;
        if let Some(body) = t.strip_prefix(&format!("43{ack}")) {
            let v: Value = serde_json::from_str(body).unwrap();
            return v[0].clone();
        }
        let Some(rest) = t.strip_prefix("46") else {
            continue;
        };
        let (count, rest) = rest.split_once('-').unwrap();
        let Some(body) = rest.strip_prefix(&ack.to_string()) else {
            continue;
        };
        let mut v: Value = serde_json::from_str(body).unwrap();
        let count: usize = count.parse().unwrap();
        let mut attachments = Vec::new();
        for _ in 0..count {
            attachments.push(sio_binary(ws).await);
        }
        fill_placeholders(&mut v, &attachments);
        return v[0].clone();
    }
}

fn fill_placeholders(v: &mut Value, attachments: &[Vec<u8>]) {
    match v {
        Value::Object(map) if map.get("_placeholder") == Some(&json!(true)) => {
            let num = map["num"].as_u64().unwrap() as usize;
            *v = json!({"$bin": STANDARD.encode(&attachments[num])});
        }
        Value::Object(map) => map
            .values_mut()
            .for_each(|x| fill_placeholders(x, attachments)),
        Value::Array(list) => list
            .iter_mut()
            .for_each(|x| fill_placeholders(x, attachments)),
        _ => {}
    }
}

/// A Socket.IO client pages from the newest message to the first, 5 at a time: 10
/// attachments a page, the most one packet carries (more would make the page `partial`).
async fn socketio_pages(node: &gateway::Running, room: &str, epoch: &str) {
    let mut ws = sio(node.addr).await;
    sio_join(&mut ws, room, 1).await;
    let (mut seen, mut before, mut ack) = (Vec::new(), None, 1u64);
    loop {
        ack += 1;
        let body = sio_history(&mut ws, room, ack, before).await;
        assert_eq!(body["ok"]["epoch"], json!(epoch), "{body}");
        assert!(body["ok"].get("partial").is_none(), "{body}");
        let mut page = Vec::new();
        for m in body["ok"]["messages"].as_array().unwrap() {
            let offset = m["offset"].as_u64().unwrap();
            assert_eq!(m["data"], payload(offset), "offset {offset}");
            page.push(offset);
        }
        match step(&mut seen, page) {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
}

async fn scenario(archive_url: &str, redis: Option<&str>) {
    let mut args = vec!["--archive", archive_url, "--publish-rate", "10000"];
    args.extend(["--publish-burst", "10000"]);
    if let Some(urls) = redis {
        args.extend(["--redis-cluster", urls]);
    }
    let node = start(&args).await;
    let room = unique("bin-archived");
    let epoch = filled(&node, &room).await;
    msgpack_pages(&node, &room, &epoch).await;
    socketio_pages(&node, &room, &epoch).await;
    node.drain().await;
}

#[tokio::test]
async fn binary_history_past_the_window_from_sqlite() {
    let (url, dir) = sqlite_url("archive-clients");
    scenario(&url, None).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn binary_history_past_the_window_from_postgres_on_redis_cluster() {
    let (Ok(redis), Ok(pg)) = (
        std::env::var("ROOMCAST_TEST_REDIS_CLUSTER"),
        std::env::var("ROOMCAST_TEST_POSTGRES"),
    ) else {
        eprintln!("skipped: ROOMCAST_TEST_REDIS_CLUSTER and ROOMCAST_TEST_POSTGRES not both set");
        return;
    };
    scenario(&pg, Some(&redis)).await;
}
