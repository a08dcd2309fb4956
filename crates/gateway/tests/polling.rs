//! Engine.IO long-polling on the wire, against a real node on 127.0.0.1:0, with a raw HTTP
//! client: the handshake, payload batching, the reference server's 400s, duplicate polls,
//! the upgrade to WebSocket (nothing lost across it), ping/pong and the ping timeout, the
//! size limit, binary as base64, and CORS.

#![allow(clippy::unwrap_used)]

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> Value {
        serde_json::from_str::<Value>(&self.body).unwrap_or(Value::Null)["code"].clone()
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut extra = String::new();
    for (n, v) in headers {
        extra.push_str(&format!("{n}: {v}\r\n"));
    }
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

const SIO: &str = "/socket.io/?EIO=4&transport=polling";

async fn get(addr: SocketAddr, sid: &str) -> Resp {
    request(addr, "GET", &format!("{SIO}&sid={sid}"), &[], "").await
}

async fn post(addr: SocketAddr, sid: &str, body: &str) -> Resp {
    request(addr, "POST", &format!("{SIO}&sid={sid}"), &[], body).await
}

/// Opens a polling session; its sid and open packet.
async fn handshake(addr: SocketAddr, path: &str) -> (String, Value) {
    let r = request(addr, "GET", path, &[], "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let open: Value = serde_json::from_str(r.body.strip_prefix('0').unwrap()).unwrap();
    (open["sid"].as_str().unwrap().to_string(), open)
}

fn packets(body: &str) -> Vec<&str> {
    body.split('\u{1e}').collect()
}

#[tokio::test]
async fn handshake_and_batched_payloads() {
    let server = start(&["--socketio-max-payload", "5000"]).await;
    let a = server.addr;
    let (sid, open) = handshake(a, SIO).await;
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["maxPayload"], json!(5000));
    assert_eq!(open.as_object().unwrap().len(), 5);
    assert!(
        sid.starts_with(&format!("{}.", server.node.id)),
        "the sid names its node: {sid}"
    );
    // CONNECT, then the reply and the pushed traffic_status come in one payload.
    assert_eq!(post(a, &sid, "40").await.body, "ok");
    let r = get(a, &sid).await;
    assert_eq!(r.header("content-type"), Some("text/plain; charset=UTF-8"));
    let got = packets(&r.body);
    assert!(got[0].starts_with("40{\"sid\":"), "{got:?}");
    assert!(got[1].starts_with("42[\"traffic_status\""), "{got:?}");
    // Two events with acks in one POST; both acks in one GET, in order.
    let room = format!("poll-{}", fastrand::u32(..));
    let body = format!(
        "421[\"create_room\",{{\"room\":\"{room}\"}}]\u{1e}422[\"publish\",{{\"room\":\"{room}\",\"data\":\"hi\"}}]"
    );
    assert_eq!(post(a, &sid, &body).await.body, "ok");
    let body = get(a, &sid).await.body;
    let got = packets(&body);
    let ack1 = got.iter().position(|p| p.starts_with("431[")).unwrap();
    let ack2 = got.iter().position(|p| p.starts_with("432[")).unwrap();
    assert!(ack1 < ack2, "{got:?}");
    assert!(got[ack2].contains("\"offset\":1"), "{got:?}");
    assert!(
        got.iter()
            .any(|p| p.starts_with("42[\"message\"") && p.contains("\"hi\"")),
        "{got:?}"
    );
}

#[tokio::test]
async fn the_reference_servers_400s() {
    let server = start(&[]).await;
    let a = server.addr;
    let cases = [
        ("GET", "/socket.io/?EIO=4", 0),
        ("GET", "/socket.io/?EIO=4&transport=carrier-pigeon", 0),
        ("GET", "/socket.io/?EIO=4&transport=polling&sid=nope", 1),
        ("POST", "/socket.io/?EIO=4&transport=polling&sid=nope", 1),
        ("GET", "/socket.io/?EIO=4&transport=websocket&sid=nope", 1),
        ("POST", "/socket.io/?EIO=4&transport=polling", 2),
        ("PUT", "/socket.io/?EIO=4&transport=polling", 2),
        ("GET", "/socket.io/?EIO=3&transport=polling", 5),
        ("GET", "/socket.io/?transport=polling", 5),
    ];
    for (method, path, code) in cases {
        let r = request(a, method, path, &[], "").await;
        assert_eq!((r.status, r.code()), (400, json!(code)), "{method} {path}");
    }
}

#[tokio::test]
async fn a_duplicate_poll_closes_the_session() {
    let server = start(&[]).await;
    let a = server.addr;
    let (sid, _) = handshake(a, SIO).await;
    let first = tokio::spawn({
        let sid = sid.clone();
        async move { get(a, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = get(a, &sid).await;
    assert_eq!((second.status, second.code()), (400, json!(3)));
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "1"));
    let after = get(a, &sid).await;
    assert_eq!((after.status, after.code()), (400, json!(1)));
    let post_after = post(a, &sid, "40").await;
    assert_eq!((post_after.status, post_after.code()), (400, json!(1)));
}

#[tokio::test]
async fn the_clients_close_answers_a_pending_poll_with_a_noop() {
    let server = start(&[]).await;
    let a = server.addr;
    let (sid, _) = handshake(a, SIO).await;
    let pending = tokio::spawn({
        let sid = sid.clone();
        async move { get(a, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(post(a, &sid, "1").await.status, 200);
    let pending = pending.await.unwrap();
    assert_eq!((pending.status, pending.body.as_str()), (200, "6"));
    assert_eq!(get(a, &sid).await.status, 400);
}

#[tokio::test]
async fn ping_pong_then_ping_timeout() {
    let server = start(&[
        "--socketio-ping-interval",
        "200ms",
        "--socketio-ping-timeout",
        "300ms",
    ])
    .await;
    let a = server.addr;
    let (sid, _) = handshake(a, SIO).await;
    for _ in 0..3 {
        let r = get(a, &sid).await;
        assert_eq!((r.status, r.body.as_str()), (200, "2"));
        assert_eq!(post(a, &sid, "3").await.body, "ok");
    }
    // No pong: the session is gone once the timeout passed.
    assert_eq!(get(a, &sid).await.body, "2");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get(a, &sid).await;
    assert_eq!((r.status, r.code()), (400, json!(1)));
    eventually("the session is unlisted", || server.node.polling.is_empty()).await;
}

#[tokio::test]
async fn an_oversized_post_is_refused_and_ends_the_session() {
    let server = start(&["--socketio-max-payload", "1000"]).await;
    let a = server.addr;
    let (sid, _) = handshake(a, SIO).await;
    let big = format!("42[\"x\",\"{}\"]", "a".repeat(2000));
    assert_eq!(post(a, &sid, &big).await.status, 413);
    assert_eq!(get(a, &sid).await.status, 400);
    // Just under the limit is fine (an unknown event, answered through nothing: no ack id).
    let (sid, _) = handshake(a, SIO).await;
    assert_eq!(post(a, &sid, "40").await.body, "ok");
    let fits = format!("42[\"x\",\"{}\"]", "a".repeat(900));
    assert_eq!(post(a, &sid, &fits).await.status, 200);
}

#[tokio::test]
async fn a_bad_payload_ends_the_session() {
    let server = start(&[]).await;
    let a = server.addr;
    for bad in ["abc", "4x\u{1e}", "b!!!"] {
        let (sid, _) = handshake(a, SIO).await;
        assert_eq!(post(a, &sid, bad).await.status, 400, "{bad:?}");
        assert_eq!(get(a, &sid).await.status, 400, "{bad:?}");
    }
}

#[tokio::test]
async fn binary_travels_as_base64() {
    let server = start(&["--socketio-conformance"]).await;
    let a = server.addr;
    let path = "/engine.io/?EIO=4&transport=polling";
    let (sid, _) = handshake(a, path).await;
    let echo = format!("{path}&sid={sid}");
    let r = request(a, "POST", &echo, &[], "4hello\u{1e}bAQIDBA==").await;
    assert_eq!(r.body, "ok");
    let r = request(a, "GET", &echo, &[], "").await;
    assert_eq!(r.body, "4hello\u{1e}bAQIDBA==");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_upgrade_loses_and_reorders_nothing() {
    let server = start(&[]).await;
    let a = server.addr;
    let (sid, _) = handshake(a, SIO).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{a}/socket.io/?EIO=4&transport=websocket&sid={sid}"
    ))
    .await
    .unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(ws_text(&mut ws).await, "3probe");
    // A second WebSocket for the session is opened and closed at once.
    let (mut second, _) = tokio_tungstenite::connect_async(format!(
        "ws://{a}/socket.io/?EIO=4&transport=websocket&sid={sid}"
    ))
    .await
    .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, second.next()).await.unwrap(),
        Some(Ok(Message::Close(_))) | None | Some(Err(_))
    ));
    // Polling is paused: a poll is released with a noop.
    let r = get(a, &sid).await;
    assert_eq!((r.status, r.body.as_str()), (200, "6"));
    // Answered over polling, never polled: the replies must come over the WebSocket, in
    // order, once the upgrade completes.
    assert_eq!(post(a, &sid, "40").await.body, "ok");
    ws.send(Message::text("5")).await.unwrap();
    assert_eq!(ws_text(&mut ws).await.get(..8), Some("40{\"sid\""));
    assert!(ws_text(&mut ws).await.starts_with("42[\"traffic_status\""));
    // After the upgrade, polling requests for the session are refused.
    eventually("the upgrade completed", || {
        server
            .node
            .polling
            .get(&sid)
            .is_some_and(|s| format!("{:?}", s.stage()) == "Upgraded")
    })
    .await;
    let r = get(a, &sid).await;
    assert_eq!((r.status, r.code()), (400, json!(3)));
    let r = post(a, &sid, "3").await;
    assert_eq!((r.status, r.code()), (400, json!(3)));
    // The session goes on over the WebSocket.
    ws.send(Message::text("421[\"presence\",{\"room\":\"nowhere\"}]"))
        .await
        .unwrap();
    assert!(ws_text(&mut ws).await.starts_with("431[{\"error\""));
    ws.close(None).await.unwrap();
    eventually("the session is unlisted", || server.node.polling.is_empty()).await;
}

/// An upgraded session keeps the heartbeat it began with (its own task, not the WebSocket
/// ticker): Engine.IO pings go on over the WebSocket, answered ones keep it, and a missed one
/// closes it with 4010.
#[tokio::test]
async fn pings_go_on_after_the_upgrade() {
    let server = start(&[
        "--socketio-ping-interval",
        "200ms",
        "--socketio-ping-timeout",
        "300ms",
    ])
    .await;
    let a = server.addr;
    let (sid, _) = handshake(a, SIO).await;
    // One ping over polling, answered there.
    let r = get(a, &sid).await;
    assert_eq!((r.status, r.body.as_str()), (200, "2"));
    assert_eq!(post(a, &sid, "3").await.body, "ok");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{a}/socket.io/?EIO=4&transport=websocket&sid={sid}"
    ))
    .await
    .unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(ws_text(&mut ws).await, "3probe");
    let r = get(a, &sid).await;
    // Released with a noop (or the next ping, if it came first: it is not lost either way,
    // only the poll answers it).
    assert_eq!(r.status, 200);
    if r.body == "2" {
        assert_eq!(post(a, &sid, "3").await.body, "ok");
    }
    ws.send(Message::text("5")).await.unwrap();
    for _ in 0..3 {
        assert_eq!(ws_text(&mut ws).await, "2");
        ws.send(Message::text("3")).await.unwrap();
    }
    // Unanswered: closed with 4010 within the timeout.
    assert_eq!(ws_text(&mut ws).await, "2");
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(4010));
    eventually("the session is unlisted", || server.node.polling.is_empty()).await;
}

#[tokio::test]
async fn cors_follows_allowed_origins() {
    let server = start(&["--allowed-origins", "https://app.example"]).await;
    let a = server.addr;
    let good = [("Origin", "https://app.example")];
    let r = request(a, "GET", SIO, &good, "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = request(
        a,
        "OPTIONS",
        SIO,
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("POST")));
    let evil = [("Origin", "https://evil.example")];
    assert_eq!(request(a, "OPTIONS", SIO, &evil, "").await.status, 403);
    let r = request(a, "GET", SIO, &evil, "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_polling_session_counts_as_a_connection() {
    let server = start(&["--max-connections", "1"]).await;
    let a = server.addr;
    let (sid, _) = handshake(a, SIO).await;
    let r = request(a, "GET", SIO, &[], "").await;
    assert_eq!(r.status, 503, "the node is full");
    assert_eq!(post(a, &sid, "1").await.status, 200);
    eventually("the place is given back", || server.node.polling.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(request(a, "GET", SIO, &[], "").await.status, 200);
}

/// Two nodes that know each other's address (as the upkeep's node registry would tell them
/// on Redis Cluster; the embedded backend knows only itself, so the test tells them).
async fn two_peers() -> (gateway::Running, gateway::Running) {
    let quiet = || {
        let mut c = config(&[]);
        c.traffic_interval = Duration::from_secs(3600);
        c
    };
    let (a, b) = (start_config(quiet()).await, start_config(quiet()).await);
    let info = |r: &gateway::Running| room_state::NodeInfo {
        id: r.node.id.clone(),
        addr: r.addr.to_string(),
        connections: 0,
        started_at: 0,
    };
    // After the first upkeep round (which lists only the node itself); the rounds that
    // follow are an hour away, and nothing here creates a room (which brings one forward).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let both = [info(&a), info(&b)];
    a.node.remember_peers(&both);
    b.node.remember_peers(&both);
    (a, b)
}

#[tokio::test]
async fn any_node_serves_any_session_by_relaying_to_its_owner() {
    let (a, b) = two_peers().await;
    let (sid, _) = handshake(a.addr, SIO).await;
    // Every request lands on the other node; it relays to the owner.
    assert_eq!(post(b.addr, &sid, "40").await.body, "ok");
    let got = get(b.addr, &sid).await;
    assert!(got.body.starts_with("40{\"sid\":"), "{}", got.body);
    let ask = "421[\"presence\",{\"room\":\"nowhere\"}]";
    assert_eq!(post(b.addr, &sid, ask).await.body, "ok");
    assert!(get(a.addr, &sid).await.body.contains("431["));
    // A long poll relayed to the owner gets what the owner queues later.
    let pending = tokio::spawn({
        let (addr, sid) = (b.addr, sid.clone());
        async move { get(addr, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ask = "422[\"presence\",{\"room\":\"nowhere\"}]";
    assert_eq!(post(a.addr, &sid, ask).await.body, "ok");
    let polled = pending.await.unwrap().body;
    assert!(polled.contains("432["), "{polled}");
    // The upgrade through the other node: the WebSocket ends at the owner.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={sid}",
        b.addr
    ))
    .await
    .unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(ws_text(&mut ws).await, "3probe");
    assert_eq!(get(b.addr, &sid).await.body, "6");
    ws.send(Message::text("5")).await.unwrap();
    ws.send(Message::text("423[\"presence\",{\"room\":\"nowhere\"}]"))
        .await
        .unwrap();
    let reply = ws_text(&mut ws).await;
    assert!(reply.starts_with("433[{\"error\""), "{reply}");
    assert_eq!(
        a.node.polling.len(),
        1,
        "the session lives on its owner only"
    );
    assert!(b.node.polling.is_empty());
    ws.close(None).await.unwrap();
    eventually("the session ended at its owner", || {
        a.node.polling.is_empty()
    })
    .await;
}

#[tokio::test]
async fn relays_never_loop_and_an_unknown_owner_is_an_unknown_session() {
    let (a, b) = two_peers().await;
    let (sid, _) = handshake(a.addr, SIO).await;
    // A request already relayed is not relayed again.
    let path = format!("{SIO}&sid={sid}");
    let relayed = [("X-Roomcast-Forwarded", "elsewhere")];
    let r = request(b.addr, "GET", &path, &relayed, "").await;
    assert_eq!((r.status, r.code()), (400, json!(1)));
    // The owner is gone (drained: its listener is closed): the relay cannot reach it.
    a.drain().await;
    let r = request(b.addr, "GET", &path, &[], "").await;
    assert_eq!((r.status, r.code()), (400, json!(1)));
    let metrics = String::from_utf8_lossy(&b.node.metrics.render()).to_string();
    assert!(
        metrics.contains("roomcast_socketio_relayed_total{outcome=\"failed\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("relayed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A sid whose node is not live (the embedded backend's registry lists only the node
    // itself, so this also forgets the peer set above): the client starts over, and recovers
    // its rooms.
    let r = get(b.addr, "ghost-node.AAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!((r.status, r.code()), (400, json!(1)));
}

#[tokio::test]
async fn a_relayed_poll_the_client_abandons_ends_the_session_at_its_owner() {
    let (a, b) = two_peers().await;
    let (sid, _) = handshake(a.addr, SIO).await;
    // Warm the pool: a relayed request that completes leaves a kept-alive connection.
    assert_eq!(post(b.addr, &sid, "3").await.body, "ok");
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let req = format!("GET {SIO}&sid={sid} HTTP/1.1\r\nHost: test\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    eventually("the owner closed the session", || {
        a.node.polling.get(&sid).is_none()
    })
    .await;
    let r = get(b.addr, &sid).await;
    assert_eq!((r.status, r.code()), (400, json!(1)));
}

#[tokio::test]
async fn a_relayed_poll_cut_off_by_the_relays_death_leaves_the_session_alive() {
    let (a, b) = two_peers().await;
    let (sid, _) = handshake(a.addr, SIO).await;
    assert_eq!(post(a.addr, &sid, "40").await.body, "ok");
    assert!(get(a.addr, &sid).await.body.starts_with("40{\"sid\":"));
    // The relaying node (b) as the owner sees it: a long poll on a connection of its own.
    let relayed = || async {
        let mut s = TcpStream::connect(a.addr).await.unwrap();
        let req = format!(
            "GET {SIO}&sid={sid} HTTP/1.1\r\nHost: test\r\nx-roomcast-forwarded: {}\r\n\r\n",
            b.node.id
        );
        s.write_all(req.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        s
    };
    let ask = |n: u32| format!("42{n}[\"presence\",{{\"room\":\"nowhere\"}}]");
    // b dies (its connection closes), then the balancer sends the GET again, here.
    drop(relayed().await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pending = tokio::spawn({
        let (addr, sid) = (a.addr, sid.clone());
        async move { get(addr, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(post(a.addr, &sid, &ask(1)).await.body, "ok");
    let polled = pending.await.unwrap();
    assert!(polled.body.contains("431["), "{}", polled.body);
    // The GET sent again gets here before the owner saw the relayed one's connection close:
    // it waits for it rather than ending the session as an overlap.
    let cut = relayed().await;
    let pending = tokio::spawn({
        let (addr, sid) = (a.addr, sid.clone());
        async move { get(addr, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(cut);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(post(a.addr, &sid, &ask(2)).await.body, "ok");
    let polled = pending.await.unwrap();
    assert!(polled.body.contains("432["), "{}", polled.body);
    // Past the grace, the session lives on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(a.node.polling.get(&sid).is_some());
    assert_eq!(post(a.addr, &sid, &ask(3)).await.body, "ok");
    assert!(get(a.addr, &sid).await.body.contains("433["));
}
