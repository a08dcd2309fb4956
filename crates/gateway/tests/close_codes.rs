//! Every close code, garbage input, oversize messages, and the slow consumer.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn ten_bad_frames_in_a_row_close_with_4000() {
    let server = start(&[]).await;
    let mut c = Client::connect(server.addr, "u", Fmt::Json).await;
    // Nine bad frames, then a good one, reset the count.
    for i in 0..9 {
        c.send_raw(Message::text(format!("garbage {i}"))).await;
        let r = c.recv_msg().await;
        assert_eq!(
            (r["id"].clone(), r["error"]["code"].clone()),
            (json!(null), json!("bad_request"))
        );
    }
    c.ok(json!({"op": "ping"})).await;
    // An id is echoed when it can be read.
    c.send(json!({"id": 77, "op": "nope"})).await;
    assert_eq!(c.reply_to(77).await["error"]["code"], "bad_request");
    for _ in 0..9 {
        c.send_raw(Message::text("{")).await;
    }
    assert_eq!(c.closed().await, 4000);
}

#[tokio::test]
async fn tokens_close_with_4001() {
    let server = start(&[]).await;
    let mut bad = Client::open(server.addr, "token=not.a.jwt", Fmt::Json).await;
    assert_eq!(bad.closed().await, 4001);
}

#[tokio::test]
async fn missing_token_without_anonymous_closes_with_4001() {
    let mut cfg = config(&[]);
    cfg.allow_anonymous = false;
    let server = start_config(cfg).await;
    let mut c = Client::open(server.addr, "format=json", Fmt::Json).await;
    assert_eq!(c.closed().await, 4001);
    let mut ok = Client::connect(server.addr, "someone", Fmt::Json).await;
    assert_eq!(ok.welcome["user"], "someone");
    ok.ok(json!({"op": "ping"})).await;
    assert!(
        server
            .node
            .metrics
            .connections_rejected
            .with_label_values(&["auth"])
            .get()
            >= 1
    );
}

#[tokio::test]
async fn connections_per_ip_close_with_4008() {
    let server = start(&["--max-conns-per-ip", "2"]).await;
    let a = Client::connect(server.addr, "a", Fmt::Json).await;
    let _b = Client::connect(server.addr, "b", Fmt::Json).await;
    let mut c = Client::open(server.addr, "format=json", Fmt::Json).await;
    assert_eq!(c.closed().await, 4008);
    // A slot frees when a connection ends.
    drop(a);
    let node = server.node.clone();
    eventually("slot freed", || node.registry.connection_count() == 1).await;
    Client::connect(server.addr, "d", Fmt::Json).await;
}

#[tokio::test]
async fn oversize_messages_close_with_1009() {
    let server = start(&["--max-message-bytes", "1000"]).await;
    // Unfragmented.
    let mut c = Client::connect(server.addr, "u", Fmt::Json).await;
    c.send_raw(Message::text(format!(
        "{{\"id\":1,\"op\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(2000)
    )))
    .await;
    assert_eq!(c.closed().await, 1009);
    // Fragmented: each frame is small, the whole message is not.
    let mut c = Client::connect(server.addr, "u", Fmt::Json).await;
    c.send_frame(OpCode::Data(Data::Text), false, vec![b' '; 600])
        .await;
    c.send_frame(OpCode::Data(Data::Continue), false, vec![b' '; 600])
        .await;
    assert_eq!(c.closed().await, 1009);
    // Exactly at the limit is fine, fragmented or not.
    let mut c = Client::connect(server.addr, "u", Fmt::Json).await;
    let msg = format!(
        "{{\"id\":1,\"op\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(1000 - 29)
    );
    assert_eq!(msg.len(), 1000);
    let (head, tail) = msg.as_bytes().split_at(400);
    c.send_frame(OpCode::Data(Data::Text), false, head.to_vec())
        .await;
    c.send_raw(Message::Ping(b"mid".to_vec().into())).await;
    c.send_frame(OpCode::Data(Data::Continue), true, tail.to_vec())
        .await;
    assert!(c.reply_to(1).await["ok"]["pong"].is_u64());
    c.send_raw(Message::text(msg)).await;
    assert!(c.reply_to(1).await["ok"].is_object());
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let server = start(&[]).await;
    let mut c = Client::connect(server.addr, "u", Fmt::Json).await;
    c.send_text_bytes(vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(c.closed().await, 1007);
    // Split across fragments.
    let mut c = Client::connect(server.addr, "u", Fmt::Json).await;
    c.send_frame(OpCode::Data(Data::Text), false, b"{\"a\":\"".to_vec())
        .await;
    c.send_frame(
        OpCode::Data(Data::Continue),
        true,
        vec![0xc3, 0x28, b'"', b'}'],
    )
    .await;
    assert_eq!(c.closed().await, 1007);
}

#[tokio::test]
async fn framing_violations_close_with_1002() {
    let server = start(&[]).await;
    let mut c = Client::connect(server.addr, "u", Fmt::Json).await;
    c.send_frame(OpCode::Data(Data::Continue), true, b"orphan".to_vec())
        .await;
    assert_eq!(c.closed().await, 1002);
}

#[tokio::test]
async fn garbage_frames_get_bad_request_and_harm_no_one() {
    let server = start(&[]).await;
    let mut bystander = Client::connect(server.addr, "by", Fmt::Json).await;
    bystander
        .ok(json!({"op": "create_room", "room": "calm"}))
        .await;
    let mut publisher = Client::connect(server.addr, "pub", Fmt::MsgPack).await;
    publisher.ok(json!({"op": "join", "room": "calm"})).await;

    let mut j = Client::connect(server.addr, "j", Fmt::Json).await;
    let mut m = Client::connect(server.addr, "m", Fmt::MsgPack).await;
    let noise: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    // Binary noise to a JSON connection, and to a MessagePack one.
    j.send_raw(Message::binary(noise.clone())).await;
    assert_eq!(j.recv_msg().await["error"]["code"], "bad_request");
    m.send_raw(Message::binary(noise)).await;
    assert_eq!(m.recv_msg().await["error"]["code"], "bad_request");
    // Text to a MessagePack connection.
    m.send_raw(Message::text("{\"id\":1,\"op\":\"ping\"}"))
        .await;
    assert_eq!(m.recv_msg().await["error"]["code"], "bad_request");
    // Deep nesting: JSON and MessagePack.
    let deep = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    j.send_raw(Message::text(deep)).await;
    assert_eq!(j.recv_msg().await["error"]["code"], "bad_request");
    let mut deep_mp = vec![0x91u8; 60_000];
    deep_mp.push(0);
    m.send_raw(Message::binary(deep_mp)).await;
    assert_eq!(m.recv_msg().await["error"]["code"], "bad_request");
    let mut nested = json!(1);
    for _ in 0..100 {
        nested = json!([nested]);
    }
    j.ok(json!({"op": "join", "room": "calm"})).await;
    let e = j
        .err(json!({"op": "publish", "room": "calm", "data": nested}))
        .await;
    assert_eq!(e["code"], "bad_request");
    // Wrong types, huge ids, nulls.
    for bad in [
        json!({"id": 1, "op": 5}),
        json!({"id": u64::MAX, "op": "join", "room": null}),
        json!("str"),
        json!(null),
    ] {
        j.send(bad).await;
        assert_eq!(j.recv_msg().await["error"]["code"], "bad_request");
    }
    // Both still work, and the room never noticed.
    j.ok(json!({"op": "ping"})).await;
    m.ok(json!({"op": "ping"})).await;
    publisher
        .ok(json!({"op": "publish", "room": "calm", "data": "still here"}))
        .await;
    assert_eq!(bystander.event("message").await["data"], "still here");
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_with_4009_while_others_keep_receiving() {
    let server = start(&[
        "--outbound-queue-bytes",
        "262144",
        "--publish-rate",
        "100000",
        "--publish-burst",
        "100000",
        "--max-message-bytes",
        "65536",
    ])
    .await;
    let addr = server.addr;
    let mut publisher = Client::connect(addr, "pub", Fmt::Json).await;
    publisher
        .ok(json!({"op": "create_room", "room": "firehose"}))
        .await;
    let mut reader = Client::connect(addr, "reader", Fmt::Json).await;
    reader.ok(json!({"op": "join", "room": "firehose"})).await;
    let mut slow = Client::connect(addr, "slow", Fmt::MsgPack).await;
    slow.ok(json!({"op": "join", "room": "firehose"})).await;
    // `slow` now stops reading. Publish in paced batches that the healthy reader keeps up
    // with, until the server gives up on `slow`.
    let blob = "x".repeat(16_000);
    let node = server.node.clone();
    let mut sent = 0u64;
    let mut id = 1000;
    while node.metrics.slow_consumers.get() == 0 {
        assert!(sent < 5_000, "the slow consumer was never cut off");
        for _ in 0..8 {
            id += 1;
            publisher
                .send(json!({"id": id, "op": "publish", "room": "firehose", "data": blob}))
                .await;
            sent += 1;
        }
        for _ in 0..8 {
            reader.event("message").await;
        }
        // The publisher's own copies and replies, up to the last reply.
        while publisher.recv_msg().await["id"] != json!(id) {}
    }
    // The healthy member got every message, in order, and is still served.
    publisher
        .ok(json!({"op": "publish", "room": "firehose", "data": "after"}))
        .await;
    loop {
        let m = reader.event("message").await;
        if m["data"] == "after" {
            assert_eq!(m["offset"].as_u64().unwrap(), sent + 1);
            break;
        }
    }
    // The slow one, once it reads again, finds a 4009 after whatever was in flight.
    assert_eq!(slow.closed().await, 4009);
    eventually("disconnect counted", || {
        node.metrics
            .disconnects
            .with_label_values(&["slow_consumer"])
            .get()
            == 1
    })
    .await;
}
