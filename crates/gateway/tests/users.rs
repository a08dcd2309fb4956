//! Users across the cluster, on three real gateway processes and the shared Redis Cluster
//! (started by `make test`): the per-user cap spans nodes and forgets a killed node's
//! connections once it is reaped, `GET /api/users/{user}` says where a user is, a user
//! publish reaches the user's connections on every node and no one else, a drained node
//! leaves no entry behind (serial: it pauses writes on a primary). Token refresh and expiry
//! run on one embedded node: they involve no other node.

#![allow(clippy::unwrap_used)]

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const VAR: &str = "ROOMCAST_TEST_REDIS_CLUSTER";

async fn user_info(addr: std::net::SocketAddr, user: &str) -> Value {
    let (status, body) = http_json(
        addr,
        "GET",
        &format!("/api/users/{user}"),
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `GET /api/users/{user}` until it lists `n` connections (within 15 s).
async fn until_listed(addr: std::net::SocketAddr, user: &str, n: usize) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let info = user_info(addr, user).await;
        if info["connections"].as_array().map(Vec::len) == Some(n) {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never {n} listed: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_per_user_cap_spans_nodes_and_a_killed_nodes_connections_lapse() {
    let mut nodes: [Gateway; 3] =
        cluster_gateways(VAR, "u", &["--node-ttl", "2s", "--max-conns-per-user", "3"]).await;
    let user = unique("capped");
    let unknown = user_info(nodes[0].addr, &unique("nobody")).await;
    assert_eq!(unknown["online"], false, "{unknown}");
    assert_eq!(unknown["connections"], json!([]));

    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(Client::connect(node.addr, &user, Fmt::Json).await);
    }
    // A fourth anywhere is over the cap, though each node holds one.
    let query = format!("format=json&token={}", token(&user, json!({})));
    let mut over = Client::open(nodes[0].addr, &query, Fmt::Json).await;
    assert_eq!(over.closed().await, 4008);

    let info = until_listed(nodes[1].addr, &user, 3).await;
    assert_eq!(info["online"], true);
    let mut listed: Vec<String> = info["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["transport"], "native", "{c}");
            c["connId"].as_str().unwrap().to_string()
        })
        .collect();
    listed.sort();
    let mut ids: Vec<String> = clients.iter().map(Client::conn_id).collect();
    ids.sort();
    assert_eq!(listed, ids);
    let mut node_ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    node_ids.sort();
    assert_eq!(info["nodes"], json!(node_ids));

    // A disconnect frees its place.
    drop(clients.remove(0));
    until_listed(nodes[1].addr, &user, 2).await;
    clients.insert(0, Client::connect(nodes[0].addr, &user, Fmt::Json).await);

    // kill -9: the dead node's connection counts until the node is reaped, then not.
    nodes[2].kill9();
    until_listed(nodes[0].addr, &user, 2).await;
    let _again = Client::connect(nodes[1].addr, &user, Fmt::Json).await;
    let mut over = Client::open(nodes[1].addr, &query, Fmt::Json).await;
    assert_eq!(over.closed().await, 4008, "the cap holds again at 3");
}

#[tokio::test]
async fn a_user_publish_reaches_the_users_connections_on_every_node_only() {
    let nodes: [Gateway; 3] = cluster_gateways(VAR, "up", &["--node-ttl", "2s"]).await;
    let (user, other) = (unique("to"), unique("other"));
    let mut a = Client::connect(nodes[0].addr, &user, Fmt::Json).await;
    let mut b = Client::connect(nodes[1].addr, &user, Fmt::MsgPack).await;
    let mut c = Client::connect(nodes[2].addr, &other, Fmt::Json).await;
    until_listed(nodes[2].addr, &user, 2).await;

    let path = format!("/api/users/{user}/publish");
    let (status, body) = http_json(
        nodes[2].addr,
        "POST",
        &path,
        Some(API_KEY),
        r#"{"n":[1,"é"]}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"accepted": true, "connections": 2, "nodes": 2})
    );
    for client in [&mut a, &mut b] {
        let m = client.event("user_message").await;
        assert_eq!(m["data"], json!({"n": [1, "é"]}), "{m}");
        assert!(m["ts"].as_u64().is_some());
        assert!(m.get("room").is_none());
    }
    c.quiet(300).await;
    a.quiet(200).await;

    // Bad input: not JSON, no API key.
    let (status, _) = http_json(nodes[0].addr, "POST", &path, Some(API_KEY), "{").await;
    assert_eq!(status, 400);
    let (status, _) = http_json(nodes[0].addr, "POST", &path, None, "1").await;
    assert_eq!(status, 401);
    // An unknown user: accepted, nobody reached.
    let path = format!("/api/users/{}/publish", unique("nobody"));
    let (status, body) = http_json(nodes[0].addr, "POST", &path, Some(API_KEY), "1").await;
    assert_eq!((status, body["connections"].clone()), (200, json!(0)));
}

#[tokio::test]
async fn refresh_extends_a_connection_and_an_expired_token_closes_it() {
    let server = start(&["--jwt-leeway", "0s"]).await;
    let soon = |user: &str, secs: u64| token(user, json!({"exp": now_secs() + secs}));
    let query = |t: String| format!("format=json&token={t}");

    let mut kept = Client::connect_query(server.addr, &query(soon("ann", 2)), Fmt::Json).await;
    let mut lapsed = Client::connect_query(server.addr, &query(soon("ann", 2)), Fmt::Json).await;
    // Refused refreshes leave the connection as it was.
    let e = kept
        .err(json!({"op": "refresh", "token": soon("bob", 3600)}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = kept.err(json!({"op": "refresh", "token": "garbage"})).await;
    assert_eq!(e["code"], "unauthorized", "{e}");
    let e = kept.err(json!({"op": "refresh", "token": ""})).await;
    assert_eq!(e["code"], "bad_request", "{e}");
    let expires = now_secs() + 3600;
    let ok = kept
        .ok(json!({"op": "refresh", "token": token("ann", json!({"exp": expires}))}))
        .await;
    assert_eq!(ok["expiresAt"], json!(expires * 1000));

    assert_eq!(lapsed.closed().await, 4011, "expired unrefreshed");
    kept.ok(json!({"op": "ping"})).await;
    kept.quiet(1_500).await;
    kept.ok(json!({"op": "ping"})).await;
}

/// Socket.IO on the wire: `refresh` as an event with an ack, `user_message` reaching a
/// Socket.IO socket, an expired token's `token_expired` event, DISCONNECT and close 4011.
#[tokio::test]
async fn socketio_refresh_user_message_and_expiry() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = start(&["--jwt-leeway", "0s"]).await;
    let user = unique("sio");
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let _open = ws.next().await.unwrap().unwrap();
        let t = token(&user, json!({"exp": now_secs() + 2}));
        ws.send(Message::text(format!(r#"40{{"token":"{t}"}}"#)))
            .await
            .unwrap();
        sockets.push(ws);
    }
    // The next text frame that starts with `prefix` (CONNECT replies, traffic_status,
    // pings skipped); `None` once closed, with the close code.
    async fn next_with(
        ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
        prefix: &str,
    ) -> Result<String, Option<u16>> {
        loop {
            match tokio::time::timeout(Duration::from_secs(6), ws.next())
                .await
                .expect("nothing within 6 s")
            {
                Some(Ok(Message::Text(t))) if t.starts_with(prefix) => return Ok(t.to_string()),
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code.into())),
                None | Some(Err(_)) => return Err(None),
                Some(Ok(_)) => {}
            }
        }
    }
    let (kept, lapsed) = sockets.split_at_mut(1);
    let (kept, lapsed) = (&mut kept[0], &mut lapsed[0]);
    let fresh = now_secs() + 3600;
    let t = token(&user, json!({"exp": fresh}));
    kept.send(Message::text(format!(
        r#"427["refresh",{{"token":"{t}"}}]"#
    )))
    .await
    .unwrap();
    let ack = next_with(kept, "437").await.unwrap();
    assert_eq!(
        ack,
        format!(r#"437[{{"ok":{{"expiresAt":{}}}}}]"#, fresh * 1000)
    );
    kept.send(Message::text(r#"428["refresh",{"token":"bad"}]"#))
        .await
        .unwrap();
    let ack = next_with(kept, "438").await.unwrap();
    assert!(ack.contains(r#""code":"unauthorized""#), "{ack}");

    let path = format!("/api/users/{user}/publish");
    let (status, body) = http_json(server.addr, "POST", &path, Some(API_KEY), r#"{"k":1}"#).await;
    assert_eq!(
        (status, body["connections"].clone()),
        (200, json!(2)),
        "{body}"
    );
    let m = next_with(kept, r#"42["user_message""#).await.unwrap();
    assert!(m.contains(r#"{"data":{"k":1},"ts":"#), "{m}");

    let expired = next_with(lapsed, r#"42["token_expired""#).await.unwrap();
    assert!(expired.contains("4011"), "{expired}");
    assert_eq!(next_with(lapsed, "41").await.unwrap(), "41");
    assert_eq!(next_with(lapsed, "none").await, Err(Some(4011)));
    // The refreshed socket is still served.
    kept.send(Message::text(format!(
        r#"429["refresh",{{"token":"{t}"}}]"#
    )))
    .await
    .unwrap();
    let ack = next_with(kept, "439").await.unwrap();
    assert!(ack.contains("expiresAt"), "{ack}");
}

/// The port of the primary that serves `key`'s slot in the cluster named by [`VAR`].
fn primary_of(key: &str) -> u16 {
    let base = port(redis_urls(VAR).split(',').next().unwrap());
    let slot: u16 = redis_cli(base, &["cluster", "keyslot", key])
        .trim()
        .parse()
        .unwrap();
    let nodes = redis_cli(base, &["cluster", "nodes"]);
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        for range in &f[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                if (a..=b).contains(&slot) {
                    return port(f[1]);
                }
            }
        }
    }
    panic!("no primary for {key}");
}

/// A drained gateway leaves no user registry entry behind, even when the registry is slow
/// at that moment: its process exits only after the removals of the connections it closed,
/// so `GET /api/users/{user}` lists none of them at once (not a `--node-ttl` later, when a
/// peer would reap the node as dead). The user's registry primary holds writes for 1.5 s
/// across the drain (`CLIENT PAUSE ... WRITE`), which the drain itself needs not: it closes
/// connections that are in no room. Serial: the pause holds every test's writes on that
/// primary.
#[tokio::test]
async fn serial_a_drained_nodes_user_entries_are_gone_when_it_exits() {
    let mut nodes: [Gateway; 2] = cluster_gateways(
        VAR,
        "ud",
        &[
            "--node-ttl",
            "60s",
            "--drain-delay",
            "0s",
            "--drain-window",
            "300ms",
            "--drain-deadline",
            "5s",
        ],
    )
    .await;
    let user = unique("drained");
    let stay = Client::connect(nodes[0].addr, &user, Fmt::Json).await;
    let n = 20;
    let mut readers = Vec::new();
    for _ in 0..n {
        let mut c = Client::connect(nodes[1].addr, &user, Fmt::Json).await;
        // Read until the drain closes it (the close handshake needs a reader).
        readers.push(tokio::spawn(async move {
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(10), c.ws.next()).await
            {}
        }));
    }
    until_listed(nodes[0].addr, &user, n + 1).await;
    let primary = primary_of(&format!("rc:{{u:{user}}}:c"));
    let paused = redis_cli(primary, &["client", "pause", "1500", "write"]);
    assert!(paused.contains("OK"), "{paused}");
    assert!(nodes[1].sigterm());
    // Polled, not waited for: the readers must run meanwhile.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = nodes[1].child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the drain never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    for r in readers {
        r.await.unwrap();
    }
    // Read once the process is gone: nothing of it is left to reap.
    let info = user_info(nodes[0].addr, &user).await;
    let listed: Vec<Value> = info["connections"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "left behind by the drained node: {info}");
    assert_eq!(listed[0]["connId"], json!(stay.conn_id()));
}
