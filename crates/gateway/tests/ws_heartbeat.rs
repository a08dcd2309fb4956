//! WebSocket-level heartbeats over raw TCP: the server pings every `--ping-interval`, a client
//! that answers (or sends anything) stays, a client silent for longer than `--ping-interval` +
//! `--pong-timeout` is closed with 4010; Socket.IO connections get no WebSocket pings but
//! Engine.IO's (`2`), which only a pong packet (`3`) answers. Also: frames that arrive with the
//! upgrade request itself are read.
//!
//! Pings of both kinds come from one ticker per ping schedule (`transport/heartbeat.rs`), not a
//! timer per connection; these tests pin what that must keep.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::raw_ws::{close_code, pong, text, Got, RawWs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const INTERVAL: Duration = Duration::from_millis(300);
const PONG_TIMEOUT: Duration = Duration::from_millis(300);

async fn node() -> gateway::Running {
    support::start(&[
        "--test-echo",
        "--ping-interval",
        "300ms",
        "--pong-timeout",
        "300ms",
    ])
    .await
}

/// The next frame from the server, pings included and not answered; `None` at EOF.
async fn next_raw(ws: &mut RawWs) -> Option<Got> {
    loop {
        if let Some(got) = ws.buffered().unwrap() {
            return Some(got);
        }
        if !timeout(Duration::from_secs(5), ws.read_more())
            .await
            .expect("the server said nothing for 5 s")
            .unwrap()
        {
            return None;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_every_interval_and_an_answering_client_stays() {
    let node = node().await;
    let mut ws = RawWs::open(node.addr, "/test/echo").await.unwrap();
    let opened = Instant::now();
    let mut pings = Vec::new();
    while pings.len() < 5 {
        match next_raw(&mut ws).await {
            Some(Got::Ping(p)) => {
                pings.push(opened.elapsed());
                ws.write(&pong(p).encode()).await.unwrap();
            }
            other => panic!("want a ping, got {other:?}"),
        }
    }
    // The first one whole interval after the open (and not much later), then one an interval.
    assert!(pings[0] >= INTERVAL, "first ping at {:?}", pings[0]);
    assert!(pings[0] < INTERVAL * 2, "first ping at {:?}", pings[0]);
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > INTERVAL * 2 / 3 && gap < INTERVAL * 2,
            "pings at {pings:?}"
        );
    }
    // Alive after five intervals: well past interval + timeout.
    ws.write(&text("still here").encode()).await.unwrap();
    assert_eq!(ws.next().await.unwrap(), Got::Text(b"still here".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_with_4010() {
    let node = node().await;
    let mut ws = RawWs::open(node.addr, "/test/echo").await.unwrap();
    let opened = Instant::now();
    let mut pings = 0;
    let closed_at = loop {
        match next_raw(&mut ws).await {
            Some(Got::Ping(_)) => pings += 1,
            Some(Got::Close(payload)) => {
                assert_eq!(close_code(&payload).unwrap(), Some(4010));
                break opened.elapsed();
            }
            other => panic!("want a ping or a close, got {other:?}"),
        }
    };
    assert!(pings >= 1);
    // Never before interval + timeout of silence; within about another interval of it.
    assert!(
        closed_at > INTERVAL + PONG_TIMEOUT,
        "closed at {closed_at:?}"
    );
    assert!(
        closed_at < INTERVAL * 2 + PONG_TIMEOUT + Duration::from_millis(700),
        "closed at {closed_at:?}"
    );
    assert_eq!(next_raw(&mut ws).await, None, "TCP closed after the Close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_frame_counts_as_an_answer() {
    let node = node().await;
    let mut ws = RawWs::open(node.addr, "/test/echo").await.unwrap();
    let opened = Instant::now();
    // Pings are never answered, but a message goes out every 100 ms.
    let mut sent = 0;
    while opened.elapsed() < INTERVAL * 5 {
        ws.write(&text(format!("m{sent}")).encode()).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut echoed = 0;
    let mut pings = 0;
    while echoed < sent {
        match next_raw(&mut ws).await {
            Some(Got::Ping(_)) => pings += 1,
            Some(Got::Text(_)) => echoed += 1,
            other => panic!("want an echo or a ping, got {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_connections_are_pinged_and_socketio_ones_are_not() {
    let node = node().await;
    let token = support::token("hb-user", json!({}));
    let mut native = RawWs::open(node.addr, &format!("/ws?format=json&token={token}"))
        .await
        .unwrap();
    let mut sio = RawWs::open(node.addr, "/socket.io/?EIO=4&transport=websocket")
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        match next_raw(&mut native).await {
            Some(Got::Ping(_)) => break,
            Some(Got::Text(_)) => continue,
            other => panic!("native: {other:?}"),
        }
    }
    assert!(started.elapsed() < INTERVAL * 3);
    // Socket.IO: Engine.IO's open packet, and no WebSocket ping for three intervals.
    let deadline = tokio::time::Instant::now() + INTERVAL * 3;
    loop {
        match tokio::time::timeout_at(deadline, next_raw(&mut sio)).await {
            Err(_) => break,
            Ok(Some(Got::Text(_))) => continue,
            Ok(other) => panic!("socket.io: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_io_pings_come_from_the_ticker_and_only_pongs_answer_them() {
    let node = support::start(&[
        "--socketio-ping-interval",
        "300ms",
        "--socketio-ping-timeout",
        "300ms",
    ])
    .await;
    let mut ws = RawWs::open(node.addr, "/socket.io/?EIO=4&transport=websocket")
        .await
        .unwrap();
    let opened = Instant::now();
    match next_raw(&mut ws).await {
        Some(Got::Text(open)) => assert!(open.starts_with(b"0{"), "open packet"),
        other => panic!("want the open packet, got {other:?}"),
    }
    // Three pings, each answered with `3`: one interval apart, the first a whole interval
    // after the open.
    let mut pings = Vec::new();
    while pings.len() < 3 {
        match next_raw(&mut ws).await {
            Some(Got::Text(t)) if t == b"2" => {
                pings.push(opened.elapsed());
                ws.write(&text("3").encode()).await.unwrap();
            }
            other => panic!("want an Engine.IO ping, got {other:?}"),
        }
    }
    assert!(pings[0] >= INTERVAL, "first ping at {:?}", pings[0]);
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > INTERVAL * 2 / 3 && gap < INTERVAL * 2,
            "pings at {pings:?}"
        );
    }
    // From now on WebSocket pongs and a noop packet (`6`), but no `3`: that is no answer.
    let stopped = Instant::now();
    let closed = loop {
        ws.write(&pong("").encode()).await.unwrap();
        ws.write(&text("6").encode()).await.unwrap();
        match next_raw(&mut ws).await {
            Some(Got::Text(t)) if t == b"2" => continue,
            Some(Got::Close(payload)) => break payload,
            other => panic!("want a ping or a close, got {other:?}"),
        }
    };
    assert_eq!(close_code(&closed).unwrap(), Some(4010));
    assert_eq!(&closed[2..], b"ping timeout");
    assert!(
        stopped.elapsed() > PONG_TIMEOUT,
        "closed {:?} after the last answer",
        stopped.elapsed()
    );
}

/// The masked client frame for a text message.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x81, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Sends the upgrade request and `after` in one write, and returns what the server sends in
/// `wait`.
async fn pipelined(addr: SocketAddr, after: &[u8], wait: Duration) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut bytes = format!(
        "GET /test/echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(after);
    tcp.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_sent_with_the_upgrade_request_are_read() {
    let node = node().await;
    let mut after = masked_text(b"one");
    after.extend(masked_text(b"two"));
    let got = pipelined(node.addr, &after, Duration::from_millis(200)).await;
    let end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(&got[end..], b"\x81\x03one\x81\x03two");
}
