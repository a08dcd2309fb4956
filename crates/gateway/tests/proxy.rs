//! The app's back end in the loop: the connect proxy (`--connect-proxy`) and the publish proxy
//! (`--publish-proxy`), against a small HTTP app inside the test that records what it is sent
//! and answers as each test says. Native and Socket.IO clients; both fail modes against an app
//! that is slow, answers 500 or garbage, or is down; and both proxies on the Redis Cluster
//! with three gateway processes (`ROOMCAST_TEST_REDIS_CLUSTER`).

#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// What the app does with one request.
enum Answer {
    /// 200 with this JSON text.
    Ok(String),
    /// This status, with an empty body.
    Status(u16),
    /// Sleeps, then answers `{}`.
    Slow(Duration),
}

type Handler = dyn Fn(&str, &Value) -> Answer + Send + Sync;

/// The app: records every request as (path, body) and answers with `handler`.
struct App {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<(String, Value)>>>,
}

impl App {
    async fn start(handler: impl Fn(&str, &Value) -> Answer + Send + Sync + 'static) -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let (log2, handler2) = (log.clone(), handler.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (log, handler) = (log2.clone(), handler2.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (log, handler) = (log.clone(), handler.clone());
                            async move {
                                let path = req.uri().path().to_string();
                                let body = req.into_body().collect().await?.to_bytes();
                                let body: Value =
                                    serde_json::from_slice(&body).unwrap_or(Value::Null);
                                log.lock().push((path.clone(), body.clone()));
                                let (status, text) = match handler(&path, &body) {
                                    Answer::Ok(text) => (200, text),
                                    Answer::Status(code) => (code, String::new()),
                                    Answer::Slow(d) => {
                                        tokio::time::sleep(d).await;
                                        (200, "{}".to_string())
                                    }
                                };
                                let mut resp = Response::new(Full::new(Bytes::from(text)));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App { addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self, path: &str) -> Vec<Value> {
        let log = self.log.lock();
        log.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// A URL where nothing listens: the app is down.
fn down_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/down")
}

/// The connect answers these tests use: `deny` in the query refuses; otherwise the user, a
/// `rooms` grant and presence `info` come from the app.
fn connect_app(path: &str, body: &Value) -> Answer {
    assert_eq!(path, "/connect");
    let denied = body["query"]["deny"] == "1" || body["auth"]["deny"] == json!(true);
    if denied {
        return Answer::Ok(json!({"error": {"code": "banned", "message": "go away"}}).to_string());
    }
    let sub = body["claims"]["sub"].as_str().unwrap_or("anon");
    Answer::Ok(
        json!({"user": format!("app-{sub}"), "rooms": ["granted-*"], "info": {"name": sub, "tier": 2}})
            .to_string(),
    )
}

/// The publish answers: `{"act":"reject"}` is refused, `{"act":"rewrite"}` replaced, `delay`
/// (ms) answers late; anything else is accepted.
fn publish_app(path: &str, body: &Value) -> Answer {
    assert_eq!(path, "/publish");
    let data = &body["data"];
    if let Some(ms) = data["delay"].as_u64() {
        return Answer::Slow(Duration::from_millis(ms));
    }
    match data["act"].as_str() {
        Some("reject") => {
            Answer::Ok(json!({"error": {"code": "spam", "message": "no spam"}}).to_string())
        }
        Some("rewrite") => {
            Answer::Ok(json!({"data": {"rewritten": true, "by": body["user"]}}).to_string())
        }
        _ => Answer::Ok("{}".into()),
    }
}

#[tokio::test]
async fn connect_proxy_allows_with_user_grant_and_info_or_refuses_native() {
    let app = App::start(connect_app).await;
    let node = start(&["--connect-proxy", &app.url("/connect")]).await;
    let tok = token("ann", json!({"rooms": ["own-*"], "plan": "gold"}));

    let mut c = Client::connect_query(
        node.addr,
        &format!("format=json&token={tok}&k=v"),
        Fmt::Json,
    )
    .await;
    // The app named the user.
    assert_eq!(c.welcome["user"], "app-ann");
    let seen = app.requests("/connect");
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r["protocol"], "native");
    assert_eq!(r["transport"], "websocket");
    assert_eq!(r["namespace"], Value::Null);
    assert_eq!(r["client"]["ip"], "127.0.0.1");
    assert_eq!(r["user"], "ann");
    assert_eq!(r["claims"]["plan"], "gold");
    assert_eq!(r["query"], json!({"format": "json", "k": "v"}), "no token");
    assert_eq!(r["node"], json!(node.node.id));

    // The grant adds to the token's rooms; other rooms stay forbidden.
    let room = unique("granted");
    c.ok(json!({"op": "create_room", "room": room})).await;
    c.ok(json!({"op": "create_room", "room": unique("own")}))
        .await;
    let e = c
        .err(json!({"op": "create_room", "room": unique("other")}))
        .await;
    assert_eq!(e["code"], "forbidden");
    // Presence shows the app's info.
    let p = c.ok(json!({"op": "presence", "room": room})).await;
    assert_eq!(
        p["members"][0],
        json!({"user": "app-ann", "connId": c.conn_id(), "info": {"name": "ann", "tier": 2}})
    );

    // The client's tokens keep naming the token's user: a refresh for it is accepted.
    let fresh = token("ann", json!({"rooms": ["own-*"]}));
    c.ok(json!({"op": "refresh", "token": fresh})).await;

    // Refused: close 4012 before any frame.
    let mut d = Client::open(
        node.addr,
        &format!("format=json&token={tok}&deny=1"),
        Fmt::Json,
    )
    .await;
    assert_eq!(d.closed().await, 4012);
    assert!(d.backlog.is_empty(), "no welcome: {:?}", d.backlog);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn sio_open(addr: SocketAddr) -> Ws {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&room_hint=x");
    let mut ws = tokio_tungstenite::connect_async(url).await.unwrap().0;
    assert!(sio_text(&mut ws).await.unwrap().starts_with('0'));
    ws
}

async fn sio_text(ws: &mut Ws) -> Option<String> {
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

async fn sio_send(ws: &mut Ws, t: &str) {
    ws.send(Message::text(t.to_string())).await.unwrap();
}

/// The next ack (`43<id>[…]`) as (id, its first argument), skipping events.
async fn sio_ack(ws: &mut Ws) -> (u64, Value) {
    loop {
        let t = sio_text(ws).await.expect("closed before an ack");
        if let Some(rest) = t.strip_prefix("43") {
            let at = rest.find('[').unwrap();
            let v: Value = serde_json::from_str(&rest[at..]).unwrap();
            return (rest[..at].parse().unwrap(), v[0].clone());
        }
    }
}

#[tokio::test]
async fn connect_proxy_socketio_connect_error_carries_the_apps_reason() {
    let app = App::start(connect_app).await;
    let node = start(&["--connect-proxy", &app.url("/connect")]).await;
    let tok = token("sam", json!({}));

    let mut ws = sio_open(node.addr).await;
    sio_send(&mut ws, &format!(r#"40{{"token":"{tok}","deny":true}}"#)).await;
    assert_eq!(
        sio_text(&mut ws).await.unwrap(),
        r#"44{"message":"go away","data":{"code":"banned","message":"go away"}}"#
    );
    // The same connection may try again: allowed, as the app's user.
    sio_send(&mut ws, &format!(r#"40{{"token":"{tok}","color":"red"}}"#)).await;
    assert!(sio_text(&mut ws).await.unwrap().starts_with("40{"));
    let seen = app.requests("/connect");
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1]["protocol"], "socketio");
    assert_eq!(seen[1]["namespace"], "/");
    assert_eq!(seen[1]["transport"], "websocket");
    assert_eq!(seen[1]["auth"], json!({"color": "red"}), "no token");
    assert_eq!(seen[1]["query"]["room_hint"], "x");
    let room = unique("granted");
    sio_send(
        &mut ws,
        &format!(r#"421["create_room",{{"room":"{room}"}}]"#),
    )
    .await;
    let (_, created) = sio_ack(&mut ws).await;
    assert_eq!(created["ok"]["members"][0]["user"], "app-sam", "{created}");
    assert_eq!(created["ok"]["members"][0]["info"]["name"], "sam");
}

/// An app that fails (slow past the timeout, 500, garbage, down): `closed` refuses with 1013
/// (Socket.IO: `connect_error` `unavailable`), `open` lets the token's user in. Never stuck.
#[tokio::test]
async fn connect_proxy_failures_follow_the_fail_mode() {
    let app = App::start(|path, _| match path {
        "/slow" => Answer::Slow(Duration::from_secs(3)),
        "/500" => Answer::Status(500),
        _ => Answer::Ok("this is not json".into()),
    })
    .await;
    let urls = [
        app.url("/slow"),
        app.url("/500"),
        app.url("/garbage"),
        down_url(),
    ];
    for url in &urls {
        for fail in ["closed", "open"] {
            let node = start(&[
                "--connect-proxy",
                url,
                "--connect-proxy-timeout",
                "300ms",
                "--connect-proxy-fail",
                fail,
            ])
            .await;
            let tok = token("fay", json!({}));
            let query = format!("format=json&token={tok}");
            let began = Instant::now();
            if fail == "closed" {
                let mut c = Client::open(node.addr, &query, Fmt::Json).await;
                assert_eq!(c.closed().await, 1013, "{url}");
            } else {
                let c = Client::connect_query(node.addr, &query, Fmt::Json).await;
                assert_eq!(c.welcome["user"], "fay", "{url}");
            }
            // Bounded by the timeout, not by the app (a generous bound: the machine is shared).
            assert!(began.elapsed() < Duration::from_secs(2), "{url} {fail}");
            let mut ws = sio_open(node.addr).await;
            sio_send(&mut ws, &format!(r#"40{{"token":"{tok}"}}"#)).await;
            let answer = sio_text(&mut ws).await.unwrap();
            if fail == "closed" {
                assert!(
                    answer.starts_with("44{") && answer.contains(r#""code":"unavailable""#),
                    "{url}: {answer}"
                );
            } else {
                assert!(answer.starts_with("40{"), "{url}: {answer}");
            }
            drop(node);
        }
    }
}

#[tokio::test]
async fn publish_proxy_accepts_rejects_rewrites_and_bypasses_other_rooms() {
    let app = App::start(publish_app).await;
    let node = start(&[
        "--publish-proxy",
        &app.url("/publish"),
        "--publish-proxy-rooms",
        "checked-*,exact",
    ])
    .await;
    let mut pub_ = Client::connect(node.addr, "pia", Fmt::Json).await;
    let mut sub = Client::connect(node.addr, "sid", Fmt::Json).await;
    let room = unique("checked");
    let plain = unique("plain");
    pub_.ok(json!({"op": "create_room", "room": room})).await;
    pub_.ok(json!({"op": "create_room", "room": plain})).await;
    sub.ok(json!({"op": "join", "room": room})).await;

    // Accept: published as sent.
    let r = pub_
        .ok(json!({"op": "publish", "room": room, "data": {"text": "hi"}}))
        .await;
    assert_eq!(r["offset"], 1);
    assert_eq!(sub.event("message").await["data"], json!({"text": "hi"}));
    // Reject: the client sees `rejected` with the app's code; nothing is sequenced.
    let e = pub_
        .err(json!({"op": "publish", "room": room, "data": {"act": "reject"}}))
        .await;
    assert_eq!(
        e,
        json!({"code": "rejected", "message": "no spam", "reason": "spam"})
    );
    // Rewrite: the app's data is what members get.
    let r = pub_
        .ok(json!({"op": "publish", "room": room, "data": {"act": "rewrite"}}))
        .await;
    assert_eq!(r["offset"], 2);
    assert_eq!(
        sub.event("message").await["data"],
        json!({"rewritten": true, "by": "pia"})
    );
    // A room the patterns do not name: straight to the store, the app never asked.
    pub_.ok(json!({"op": "publish", "room": plain, "data": {"act": "reject"}}))
        .await;
    let seen = app.requests("/publish");
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|r| r["room"] == json!(room)));
    assert_eq!(seen[0]["user"], "pia");
    assert_eq!(seen[0]["connId"], json!(pub_.conn_id()));
    assert_eq!(seen[0]["data"], json!({"text": "hi"}));
    // A non-member's publish is refused before the app is asked.
    let other = unique("checked");
    sub.ok(json!({"op": "create_room", "room": other})).await;
    let e = pub_
        .err(json!({"op": "publish", "room": other, "data": 1}))
        .await;
    assert_eq!(e["code"], "not_member");
    assert_eq!(app.requests("/publish").len(), 3);

    // Socket.IO: the ack carries the same error.
    let mut ws = sio_open(node.addr).await;
    let tok = token("sio-pia", json!({}));
    sio_send(&mut ws, &format!(r#"40{{"token":"{tok}"}}"#)).await;
    assert!(sio_text(&mut ws).await.unwrap().starts_with("40{"));
    sio_send(&mut ws, r#"421["create_room",{"room":"exact"}]"#).await;
    assert!(sio_ack(&mut ws).await.1.get("ok").is_some());
    sio_send(
        &mut ws,
        r#"422["publish",{"room":"exact","data":{"act":"reject"}}]"#,
    )
    .await;
    let (id, ack) = sio_ack(&mut ws).await;
    assert_eq!(id, 2);
    assert_eq!(
        ack,
        json!({"error": {"code": "rejected", "message": "no spam", "reason": "spam"}})
    );
}

/// One connection's publishes are sequenced in the order it sent them, though the app answers
/// the first one last.
#[tokio::test]
async fn publish_proxy_keeps_one_connections_order() {
    let app = App::start(publish_app).await;
    let node = start(&[
        "--publish-proxy",
        &app.url("/publish"),
        "--publish-rate",
        "10000",
        "--publish-burst",
        "10000",
    ])
    .await;
    let mut c = Client::connect(node.addr, "oli", Fmt::Json).await;
    let room = unique("order");
    c.ok(json!({"op": "create_room", "room": room})).await;
    // Sent back to back (pipelined), with explicit ids; the first one's answer comes 400 ms late.
    let n = 12u64;
    for i in 0..n {
        let data = if i == 0 {
            json!({"i": i, "delay": 400})
        } else {
            json!({"i": i})
        };
        c.send(json!({"op": "publish", "id": 1000 + i, "room": room, "data": data}))
            .await;
    }
    // Replies (the member's own messages may come between them) in request order, with
    // offsets in request order.
    let mut replies = Vec::new();
    while replies.len() < n as usize {
        let m = c.recv_msg().await;
        if m.get("event").is_some() {
            c.backlog.push_back(m);
        } else {
            replies.push(m);
        }
    }
    for (i, reply) in (0..n).zip(&replies) {
        assert_eq!(reply["id"], json!(1000 + i), "replies in request order");
        assert_eq!(reply["ok"]["offset"], json!(i + 1), "{reply}");
    }
    for i in 0..n {
        let m = c.event("message").await;
        assert_eq!(
            (m["offset"].clone(), m["data"]["i"].clone()),
            (json!(i + 1), json!(i))
        );
    }
}

#[tokio::test]
async fn publish_proxy_failures_follow_the_fail_mode() {
    let app = App::start(|path, _| match path {
        "/slow" => Answer::Slow(Duration::from_secs(3)),
        "/500" => Answer::Status(500),
        _ => Answer::Ok("[1,2".into()),
    })
    .await;
    for url in [
        app.url("/slow"),
        app.url("/500"),
        app.url("/garbage"),
        down_url(),
    ] {
        for fail in ["closed", "open"] {
            let node = start(&[
                "--publish-proxy",
                &url,
                "--publish-proxy-timeout",
                "300ms",
                "--publish-proxy-fail",
                fail,
            ])
            .await;
            let mut c = Client::connect(node.addr, "fei", Fmt::Json).await;
            let room = unique("fail");
            c.ok(json!({"op": "create_room", "room": room})).await;
            let reply = c
                .request(json!({"op": "publish", "room": room, "data": {"x": 1}}))
                .await;
            if fail == "closed" {
                assert_eq!(reply["error"]["code"], "unavailable", "{url}: {reply}");
                assert!(reply["error"]["retryAfterMs"].is_u64(), "{reply}");
            } else {
                assert_eq!(reply["ok"]["offset"], 1, "{url}: {reply}");
            }
            // The connection is not stuck: the next op is answered.
            c.ok(json!({"op": "ping"})).await;
            drop(node);
        }
    }
}

/// The bound on calls in flight: with one place (`--*-proxy-max-in-flight 1`) taken by a call
/// the app holds, the next connect or publish fails at once (`overloaded`, handled by the fail
/// mode, here `closed`) instead of queueing behind the slow app; the held call completes.
#[tokio::test]
async fn calls_over_the_in_flight_bound_fail_at_once() {
    let app = App::start(|path, body| {
        if body["query"]["hold"] == "1" || body["data"]["hold"] == json!(true) {
            return Answer::Slow(Duration::from_millis(3500));
        }
        match path {
            "/connect" => connect_app(path, body),
            _ => publish_app(path, body),
        }
    })
    .await;
    let (connect, publish) = (app.url("/connect"), app.url("/publish"));
    let node = start(&[
        "--connect-proxy",
        &connect,
        "--connect-proxy-max-in-flight",
        "1",
        "--connect-proxy-timeout",
        "10s",
        "--publish-proxy",
        &publish,
        "--publish-proxy-max-in-flight",
        "1",
        "--publish-proxy-timeout",
        "10s",
    ])
    .await;
    let addr = node.addr;
    let held_user = unique("held");
    let query = format!("format=json&token={}&hold=1", token(&held_user, json!({})));
    let held = tokio::spawn(async move { Client::connect_query(addr, &query, Fmt::Json).await });
    eventually("the held connect reached the app", || {
        app.requests("/connect").len() == 1
    })
    .await;
    let began = Instant::now();
    let query = format!("format=json&token={}", token(&unique("over"), json!({})));
    let mut over = Client::open(addr, &query, Fmt::Json).await;
    assert_eq!(over.closed().await, 1013);
    assert!(
        began.elapsed() < Duration::from_millis(2500),
        "waited for the app"
    );
    // The held one is admitted when the app answers (`{}`: allowed as the token's user).
    let mut first = held.await.unwrap();
    assert_eq!(first.welcome["user"], json!(held_user));

    // Publish: the same with one place.
    let mut second = Client::connect(addr, &unique("pub"), Fmt::Json).await;
    let room = unique("inflight");
    first.ok(json!({"op": "create_room", "room": room})).await;
    second.ok(json!({"op": "join", "room": room})).await;
    first
        .send(json!({"op": "publish", "id": 1077, "room": room, "data": {"hold": true}}))
        .await;
    eventually("the held publish reached the app", || {
        app.requests("/publish").len() == 1
    })
    .await;
    let began = Instant::now();
    let reply = second
        .request(json!({"op": "publish", "room": room, "data": {"x": 1}}))
        .await;
    assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
    assert!(reply["error"]["retryAfterMs"].is_u64(), "{reply}");
    assert!(
        began.elapsed() < Duration::from_millis(2500),
        "waited for the app"
    );
    assert_eq!(first.reply_to(1077).await["ok"]["offset"], 1);
    let (_, metrics) = http(addr, "GET", "/metrics", None, "").await;
    for kind in ["connect", "publish"] {
        let line =
            format!("roomcast_proxy_requests_total{{kind=\"{kind}\",result=\"overloaded\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "no {line}");
    }
}

/// Long-polling on the wire, by hand: `GET`/`POST` on `/socket.io/` with a session id, each
/// on whichever node the test names (the node that does not own the session relays it).
const POLL: &str = "/socket.io/?EIO=4&transport=polling";

/// Opens a long-polling session on `addr` (the session's owner); its sid.
async fn poll_open(addr: SocketAddr, query: &str) -> String {
    let (status, body) = http(addr, "GET", &format!("{POLL}&{query}"), None, "").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    open["sid"].as_str().unwrap().to_string()
}

async fn poll_post(addr: SocketAddr, sid: &str, packets: &str) {
    let (status, body) = http(addr, "POST", &format!("{POLL}&sid={sid}"), None, packets).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

/// GETs through `addr` until a packet starting with `prefix` comes; that packet (the others
/// of those payloads are dropped). Only called when such a packet is due: a GET with nothing
/// to send would wait for the next ping.
async fn poll_until(addr: SocketAddr, sid: &str, prefix: &str) -> String {
    loop {
        let (status, body) = http(addr, "GET", &format!("{POLL}&sid={sid}"), None, "").await;
        assert_eq!(status, 200, "{body}");
        if let Some(p) = body.split('\u{1e}').find(|p| p.starts_with(prefix)) {
            return p.to_string();
        }
    }
}

/// The data of the next Socket.IO `message` event on `ws`.
async fn sio_message_data(ws: &mut Ws) -> Value {
    loop {
        let t = sio_text(ws).await.expect("closed before a message");
        if let Some(rest) = t.strip_prefix(r#"42["message","#) {
            let v: Value = serde_json::from_str(&format!("[{rest}")).unwrap();
            return v[0]["data"].clone();
        }
    }
}

/// Three gateway processes on the Redis Cluster, the app behind both proxies: a connect
/// allowed with the app's user, grant and info, or refused with its code, for a native client,
/// a Socket.IO WebSocket and a Socket.IO long-polling session whose requests land on other
/// nodes than its own; presence shows every node's members with their info; a publish is
/// accepted, rewritten or rejected, and every node's members get what the app decided (a
/// rejected message reaches no one).
#[tokio::test]
async fn proxies_allow_deny_rewrite_across_three_gateways_on_redis_cluster() {
    let app = App::start(|path, body| match path {
        "/connect" => connect_app(path, body),
        _ => publish_app(path, body),
    })
    .await;
    let (connect, publish) = (app.url("/connect"), app.url("/publish"));
    let nodes = cluster_gateways::<3>(
        "ROOMCAST_TEST_REDIS_CLUSTER",
        "proxy",
        &[
            "--connect-proxy",
            &connect,
            "--publish-proxy",
            &publish,
            "--publish-proxy-rooms",
            "granted-rc*",
        ],
    )
    .await;
    let [a, b, c] = [nodes[0].addr, nodes[1].addr, nodes[2].addr];
    let (ada, bea, cy, po) = (unique("ada"), unique("bea"), unique("cy"), unique("po"));
    // Tokens limited to `own-*`: the rooms used below are the app's grant.
    let tok = |sub: &str| token(sub, json!({"rooms": ["own-*"]}));

    // Native: allowed on node 0 and 1, refused on node 1 (4012, no welcome).
    let q = |sub: &str, fmt: Fmt| format!("{}&token={}", fmt.query(), tok(sub));
    let mut ca = Client::connect_query(a, &q(&ada, Fmt::Json), Fmt::Json).await;
    let mut cb = Client::connect_query(b, &q(&bea, Fmt::MsgPack), Fmt::MsgPack).await;
    assert_eq!(ca.welcome["user"], json!(format!("app-{ada}")));
    let query = format!("{}&deny=1", q(&bea, Fmt::Json));
    let mut denied = Client::open(b, &query, Fmt::Json).await;
    assert_eq!(denied.closed().await, 4012);
    assert!(
        denied.backlog.is_empty(),
        "no welcome: {:?}",
        denied.backlog
    );

    // Socket.IO over WebSocket on node 2: refused with the app's reason, then allowed.
    let mut ws = sio_open(c).await;
    sio_send(
        &mut ws,
        &format!(r#"40{{"token":"{}","deny":true}}"#, tok(&cy)),
    )
    .await;
    let refused = sio_text(&mut ws).await.unwrap();
    assert!(
        refused.starts_with(r#"44{"message":"go away""#),
        "{refused}"
    );
    sio_send(&mut ws, &format!(r#"40{{"token":"{}"}}"#, tok(&cy))).await;
    assert!(sio_text(&mut ws).await.unwrap().starts_with("40{"));

    // Socket.IO over long-polling, owned by node 0, its requests sent through nodes 1 and 2.
    let sid = poll_open(a, "room_hint=p").await;
    poll_post(
        b,
        &sid,
        &format!(r#"40{{"token":"{}","deny":true}}"#, tok(&po)),
    )
    .await;
    let refused = poll_until(c, &sid, "44").await;
    assert!(refused.contains(r#""code":"banned""#), "{refused}");
    poll_post(c, &sid, &format!(r#"40{{"token":"{}"}}"#, tok(&po))).await;
    poll_until(b, &sid, "40{").await;

    // What the app was asked: one call per attempt, each by the node that owns the connection.
    let asked = app.requests("/connect");
    let of =
        |sub: &str| -> Vec<Value> { asked.iter().filter(|r| r["user"] == sub).cloned().collect() };
    let node_ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(of(&ada).len(), 1);
    assert_eq!(of(&ada)[0]["node"], node_ids[0]);
    assert_eq!(of(&bea).len(), 2);
    assert!(of(&bea)
        .iter()
        .all(|r| r["node"] == node_ids[1] && r["transport"] == "websocket"));
    assert_eq!(of(&cy).len(), 2);
    assert!(of(&cy)
        .iter()
        .all(|r| r["protocol"] == "socketio" && r["node"] == node_ids[2]));
    let polled = of(&po);
    assert_eq!(polled.len(), 2, "{polled:?}");
    for r in &polled {
        assert_eq!(r["protocol"], "socketio");
        assert_eq!(r["transport"], "polling");
        assert_eq!(r["namespace"], "/");
        assert_eq!(r["node"], node_ids[0], "asked by the session's owner");
        assert_eq!(r["query"]["room_hint"], "p");
        assert_eq!(r["claims"]["rooms"], json!(["own-*"]));
        assert!(r["auth"].get("token").is_none(), "{r}");
    }

    // One room with a member through each connection; only the grant allows it.
    let room = unique("granted-rc");
    let e = ca
        .err(json!({"op": "create_room", "room": unique("other-rc")}))
        .await;
    assert_eq!(e["code"], "forbidden");
    ca.ok(json!({"op": "create_room", "room": room})).await;
    cb.ok(json!({"op": "join", "room": room})).await;
    sio_send(&mut ws, &format!(r#"421["join",{{"room":"{room}"}}]"#)).await;
    assert!(sio_ack(&mut ws).await.1.get("ok").is_some());
    poll_post(b, &sid, &format!(r#"421["join",{{"room":"{room}"}}]"#)).await;
    let joined = poll_until(c, &sid, "431").await;
    assert!(joined.contains(r#""ok""#), "{joined}");
    // Presence, read on node 2, shows every node's members with the app's info.
    let p = cb.ok(json!({"op": "presence", "room": room})).await;
    let mut seen: Vec<(String, String)> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].to_string(), m["info"]["name"].to_string()))
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = [&ada, &bea, &cy, &po]
        .iter()
        .map(|u| (json!(format!("app-{u}")).to_string(), json!(u).to_string()))
        .collect();
    want.sort();
    assert_eq!(seen, want);

    // Accepted on node 0: as sent, everywhere.
    ca.ok(json!({"op": "publish", "room": room, "data": {"text": "hi"}}))
        .await;
    assert_eq!(cb.event("message").await["data"], json!({"text": "hi"}));
    assert_eq!(sio_message_data(&mut ws).await, json!({"text": "hi"}));
    // Rejected on node 1: its client gets `rejected`, and nothing is sequenced.
    let e = cb
        .err(json!({"op": "publish", "room": room, "data": {"act": "reject"}}))
        .await;
    assert_eq!(
        e,
        json!({"code": "rejected", "message": "no spam", "reason": "spam"})
    );
    // Rewritten on node 2 (Socket.IO): the app's data reaches node 0 and 1, at the next offset.
    sio_send(
        &mut ws,
        &format!(r#"422["publish",{{"room":"{room}","data":{{"act":"rewrite"}}}}]"#),
    )
    .await;
    let (_, ack) = sio_ack(&mut ws).await;
    assert_eq!(ack["ok"]["offset"], 2, "{ack}");
    let rewritten = json!({"rewritten": true, "by": format!("app-{cy}")});
    let m = ca.event("message").await;
    assert_eq!(m["data"], json!({"text": "hi"}));
    let m = ca.event("message").await;
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(2), rewritten.clone())
    );
    assert_eq!(cb.event("message").await["data"], rewritten);
    // Rewritten through the polling session (POSTed via node 2, owned by node 0).
    poll_post(
        c,
        &sid,
        &format!(r#"422["publish",{{"room":"{room}","data":{{"act":"rewrite"}}}}]"#),
    )
    .await;
    let acked = poll_until(b, &sid, "432").await;
    assert!(acked.contains(r#""offset":3"#), "{acked}");
    let m = cb.event("message").await;
    assert_eq!(
        m["data"],
        json!({"rewritten": true, "by": format!("app-{po}")})
    );
    // The app saw every publish to the room, with the app's user names.
    let published: Vec<Value> = app
        .requests("/publish")
        .into_iter()
        .filter(|r| r["room"] == json!(room))
        .map(|r| r["user"].clone())
        .collect();
    let names: Vec<Value> = [&ada, &bea, &cy, &po]
        .iter()
        .map(|u| json!(format!("app-{u}")))
        .collect();
    assert_eq!(published, names);
}

/// `roomcast_connections` of a gateway, all protocols and formats summed.
async fn open_connections(addr: SocketAddr) -> u64 {
    let (_, body) = http(addr, "GET", "/metrics", None, "").await;
    body.lines()
        .filter(|l| l.starts_with("roomcast_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Three gateways on the Redis Cluster whose app goes bad (slow past the timeout, HTTP 500, a
/// body that is not JSON), both proxies failing closed: new connections are refused (native
/// 1013, Socket.IO `connect_error` `unavailable`) within the timeout, a proxied publish is
/// answered `unavailable` with `retryAfterMs`, and the connections admitted earlier carry on
/// (unproxied publishes reach every node). Once the app is back, the same `msgId` publishes
/// once; every client closes, and no node keeps a connection or a user entry.
#[tokio::test]
async fn a_bad_app_leaves_no_connection_stuck_across_three_gateways() {
    let mode = Arc::new(Mutex::new("good"));
    let current = mode.clone();
    let app = App::start(move |path, body| match *current.lock() {
        "slow" => Answer::Slow(Duration::from_secs(3)),
        "500" => Answer::Status(500),
        "garbage" => Answer::Ok("<html>oops</html>".into()),
        _ if path == "/connect" => connect_app(path, body),
        _ => publish_app(path, body),
    })
    .await;
    let (connect, publish) = (app.url("/connect"), app.url("/publish"));
    let nodes = cluster_gateways::<3>(
        "ROOMCAST_TEST_REDIS_CLUSTER",
        "badapp",
        &[
            "--connect-proxy",
            &connect,
            "--connect-proxy-timeout",
            "300ms",
            "--publish-proxy",
            &publish,
            "--publish-proxy-timeout",
            "300ms",
            "--publish-proxy-rooms",
            "checked-*",
        ],
    )
    .await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let users: Vec<String> = (0..3).map(|_| unique("bad")).collect();
    let mut clients = Vec::new();
    for (addr, user) in addrs.iter().zip(&users) {
        clients.push(Client::connect(*addr, user, Fmt::Json).await);
    }
    let (checked, plain) = (unique("checked"), unique("plain"));
    for room in [&checked, &plain] {
        clients[0]
            .ok(json!({"op": "create_room", "room": room}))
            .await;
        for c in &mut clients[1..] {
            c.ok(json!({"op": "join", "room": room})).await;
        }
    }

    for (round, bad) in ["slow", "500", "garbage"].into_iter().enumerate() {
        *mode.lock() = bad;
        for (i, addr) in addrs.iter().enumerate() {
            let began = Instant::now();
            let query = format!("format=json&token={}", token(&unique("new"), json!({})));
            let mut refused = Client::open(*addr, &query, Fmt::Json).await;
            assert_eq!(refused.closed().await, 1013, "{bad} node {i}");
            let mut ws = sio_open(*addr).await;
            let t = token(&unique("new"), json!({}));
            sio_send(&mut ws, &format!(r#"40{{"token":"{t}"}}"#)).await;
            let answer = sio_text(&mut ws).await.unwrap();
            assert!(
                answer.contains(r#""code":"unavailable""#),
                "{bad}: {answer}"
            );
            // Bounded by the timeouts, not by the app (which would take 6 s; generous: the
            // machine is shared).
            assert!(began.elapsed() < Duration::from_secs(4), "{bad} node {i}");
            // The refused Socket.IO connection is still served: it may try again, or close.
            sio_send(&mut ws, "1").await;
            assert_eq!(sio_text(&mut ws).await, None, "{bad}: closed on request");
        }
        // Admitted connections carry on: a proxied publish is refused, retryably...
        let msg_id = format!("m{round}");
        let reply = clients[round]
            .request(
                json!({"op": "publish", "room": checked, "msgId": msg_id, "data": {"r": round}}),
            )
            .await;
        assert_eq!(reply["error"]["code"], "unavailable", "{bad}: {reply}");
        assert!(reply["error"]["retryAfterMs"].is_u64(), "{reply}");
        // ...an unproxied one is published and reaches every node.
        clients[round]
            .ok(json!({"op": "publish", "room": plain, "data": {"plain": round}}))
            .await;
        for c in &mut clients {
            let m = c.event("message").await;
            assert_eq!(
                (m["room"].clone(), m["data"].clone()),
                (json!(plain), json!({"plain": round}))
            );
        }
        // The app is back: the retry (same msgId) is published once, everywhere.
        *mode.lock() = "good";
        let ok = clients[round]
            .ok(json!({"op": "publish", "room": checked, "msgId": msg_id, "data": {"r": round}}))
            .await;
        assert_eq!(ok["offset"], json!(round + 1), "{ok}");
        for c in &mut clients {
            let m = c.event("message").await;
            assert_eq!(
                (m["room"].clone(), m["data"].clone()),
                (json!(checked), json!({"r": round}))
            );
        }
    }
    // Every connection closes cleanly; no node keeps one, nor a user entry.
    for mut c in clients {
        c.ws.close(None).await.unwrap();
        // (Events already on their way may come before the close.)
        while let In::Msg(_) = c.recv().await {}
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for addr in &addrs {
        while open_connections(*addr).await > 0 {
            assert!(Instant::now() < deadline, "a connection stuck on {addr}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for user in &users {
        let path = format!("/api/users/{user}");
        let (status, info) = http_json(addrs[0], "GET", &path, Some(API_KEY), "").await;
        assert_eq!(
            (status, info["connections"].clone()),
            (200, json!([])),
            "{user}"
        );
    }
}

/// Not a test: connect latency with and without the connect proxy, 1,000 sequential native
/// connects each (median and p99 printed; nothing asserted). Run it in release:
/// `cargo test --release --workspace --test proxy -- --ignored --nocapture connect_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn connect_latency_with_and_without_the_connect_proxy() {
    let app = App::start(|_, _| Answer::Ok(r#"{"info":{"n":1}}"#.into())).await;
    let plain = start(&[]).await;
    let proxied = start(&["--connect-proxy", &app.url("/connect")]).await;
    let tok = token("lat", json!({}));
    let query = format!("format=json&token={tok}");
    // Interleaved, so that drift on a shared machine hits both alike.
    let mut times = [Vec::with_capacity(1000), Vec::with_capacity(1000)];
    for _ in 0..1000 {
        for (i, addr) in [plain.addr, proxied.addr].into_iter().enumerate() {
            let began = Instant::now();
            let mut c = Client::connect_query(addr, &query, Fmt::Json).await;
            times[i].push(began.elapsed());
            let _ = c.ws.close(None).await;
        }
    }
    let mut report = Vec::new();
    for (name, mut t) in ["without", "with"].into_iter().zip(times) {
        t.sort();
        report.push(format!(
            "{name} the connect proxy: median {:?}, p99 {:?}",
            t[500], t[990]
        ));
    }
    println!("{}", report.join("\n"));
}

/// One connection per prefix, each publishing `per_client` messages to a room of its own, 16
/// in flight at a time (the connection's pipeline). Rooms are named `<prefix>-…`, so
/// `--publish-proxy-rooms checked-*` decides which go to the app. Per prefix: the summed rate
/// (messages per second) of its connections, each over its own run.
async fn publish_rates(addr: SocketAddr, prefixes: &[&str], per_client: u64) -> Vec<(String, f64)> {
    let mut clients = Vec::new();
    for prefix in prefixes {
        let mut c = Client::connect(addr, &unique("thr"), Fmt::Json).await;
        let room = unique(prefix);
        c.ok(json!({"op": "create_room", "room": room, "options": {"historySize": 16}}))
            .await;
        clients.push((c, room, prefix.to_string()));
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(mut c, room, prefix)| {
            tokio::spawn(async move {
                let began = Instant::now();
                let (mut sent, mut answered) = (0u64, 0u64);
                while answered < per_client {
                    while sent < per_client && sent - answered < 16 {
                        let id = 1000 + sent;
                        c.send(
                            json!({"op": "publish", "id": id, "room": room, "data": {"i": sent}}),
                        )
                        .await;
                        sent += 1;
                    }
                    let m = c.recv_msg().await;
                    if m.get("event").is_none() {
                        assert!(m.get("ok").is_some(), "{m}");
                        answered += 1;
                    }
                }
                (prefix, per_client as f64 / began.elapsed().as_secs_f64())
            })
        })
        .collect();
    let mut rates: Vec<(String, f64)> = Vec::new();
    for t in tasks {
        let (prefix, rate) = t.await.unwrap();
        match rates.iter_mut().find(|(p, _)| *p == prefix) {
            Some((_, sum)) => *sum += rate,
            None => rates.push((prefix, rate)),
        }
    }
    rates
}

/// Not a test: client publish throughput with the publish proxy on a subset of rooms
/// (`--publish-proxy-rooms checked-*`, the app in this process answering `{}`): 4 connections
/// publishing to unproxied rooms, to proxied rooms, and 2 + 2 at once; 3 interleaved rounds,
/// the median and each figure printed (nothing asserted). Run it in release:
/// `cargo test --release --workspace --test proxy -- --ignored --nocapture publish_throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn publish_throughput_with_the_publish_proxy_on_a_subset_of_rooms() {
    let app = App::start(|_, _| Answer::Ok("{}".into())).await;
    let node = start(&[
        "--publish-proxy",
        &app.url("/publish"),
        "--publish-proxy-rooms",
        "checked-*",
        "--publish-rate",
        "1000000",
        "--publish-burst",
        "1000000",
    ])
    .await;
    let shapes: [(&str, &[&str]); 3] = [
        ("4 unproxied", &["plain", "plain", "plain", "plain"]),
        ("4 proxied", &["checked", "checked", "checked", "checked"]),
        ("2 + 2", &["plain", "plain", "checked", "checked"]),
    ];
    let mut seen: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..3 {
        for (name, prefixes) in &shapes {
            for (prefix, rate) in publish_rates(node.addr, prefixes, 2_000).await {
                let key = format!("{name}: {prefix} rooms");
                match seen.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, r)) => r.push(rate),
                    None => seen.push((key, vec![rate])),
                }
            }
        }
    }
    for (key, mut r) in seen {
        r.sort_by(f64::total_cmp);
        println!(
            "{key}: median {:.0} msg/s ({:.0} / {:.0} / {:.0})",
            r[1], r[0], r[1], r[2]
        );
    }
}
