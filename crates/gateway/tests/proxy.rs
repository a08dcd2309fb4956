//! The app's back end in the loop: the connect proxy (`--connect-proxy`) and the publish proxy
//! (`--publish-proxy`), against a small HTTP app inside the test that records what it is sent
//! and answers as each test says. Native and Socket.IO clients; both fail modes against an app
//! that is slow, answers 500 or garbage, or is down; and one run on the Redis Cluster with
//! two gateway processes (`ROOMCAST_TEST_REDIS_CLUSTER`).

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

/// Two gateway processes on the Redis Cluster: the connect proxy's info is shown by presence on
/// the other node, and a rewrite made on one node is what the member on the other receives.
#[tokio::test]
async fn proxies_across_two_gateways_on_redis_cluster() {
    let app = App::start(|path, body| match path {
        "/connect" => connect_app(path, body),
        _ => publish_app(path, body),
    })
    .await;
    let (connect, publish) = (app.url("/connect"), app.url("/publish"));
    let [a, b] = cluster_gateways::<2>(
        "ROOMCAST_TEST_REDIS_CLUSTER",
        "proxy",
        &["--connect-proxy", &connect, "--publish-proxy", &publish],
    )
    .await;
    let mut ca = Client::connect(a.addr, "ada", Fmt::Json).await;
    let mut cb = Client::connect(b.addr, "bea", Fmt::MsgPack).await;
    assert_eq!(ca.welcome["user"], "app-ada");
    let room = unique("granted-rc");
    ca.ok(json!({"op": "create_room", "room": room})).await;
    cb.ok(json!({"op": "join", "room": room})).await;
    let p = cb.ok(json!({"op": "presence", "room": room})).await;
    assert_eq!(
        p["members"],
        json!([
            {"user": "app-ada", "connId": ca.conn_id(), "info": {"name": "ada", "tier": 2}},
            {"user": "app-bea", "connId": cb.conn_id(), "info": {"name": "bea", "tier": 2}},
        ])
    );
    ca.ok(json!({"op": "publish", "room": room, "data": {"act": "rewrite"}}))
        .await;
    let m = cb.event("message").await;
    assert_eq!(m["data"], json!({"rewritten": true, "by": "app-ada"}));
    let e = cb
        .err(json!({"op": "publish", "room": room, "data": {"act": "reject"}}))
        .await;
    assert_eq!(e["code"], "rejected");
}

/// Not a test: connect latency with and without the connect proxy, 1,000 sequential native
/// connects each (median and p99 printed; nothing asserted). Run it in release:
/// `cargo test --release -p gateway --test proxy -- --ignored --nocapture connect_latency`.
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
