//! Three real gateway processes on a real Redis Cluster (started by `make test`): they act as
//! one server. Clients on different nodes share rooms, order, presence, history and limits.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;

const VAR: &str = "ROOMCAST_TEST_REDIS_CLUSTER";

/// Three ready gateways on the shared cluster.
async fn three(extra: &[&str]) -> [Gateway; 3] {
    let mut args = vec!["--node-ttl", "2s"];
    args.extend_from_slice(extra);
    cluster_gateways(VAR, "g", &args).await
}

/// Reads `n` messages and returns their offsets, checking room and epoch.
async fn offsets(c: &mut Client, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = c.event("message").await;
        out.push(m["offset"].as_u64().unwrap());
    }
    out
}

#[tokio::test]
async fn clients_on_three_nodes_share_one_room() {
    let nodes = three(&["--publish-rate", "1000", "--publish-burst", "1000"]).await;
    let room = unique("shared");
    let mut a = Client::connect(nodes[0].addr, "alice", Fmt::Json).await;
    let mut b = Client::connect(nodes[1].addr, "bob", Fmt::MsgPack).await;
    let mut c = Client::connect(nodes[2].addr, "carol", Fmt::Json).await;
    let created = a.ok(json!({"op": "create_room", "room": room})).await;
    b.ok(json!({"op": "join", "room": room})).await;
    c.ok(json!({"op": "join", "room": room})).await;
    // Presence events cross nodes; nobody gets their own join.
    assert_eq!(a.event("presence").await["user"], "bob");
    assert_eq!(a.event("presence").await["user"], "carol");
    assert_eq!(b.event("presence").await["user"], "carol");

    // All three publish, interleaved; every member sees 1..=60 once, in order.
    let per = 20;
    for i in 0..per {
        for (k, client) in [&mut a, &mut b, &mut c].into_iter().enumerate() {
            client.send(json!({"id": 1000 + i, "op": "publish", "room": room, "data": {"k": k, "i": i}})).await;
        }
    }
    let expected: Vec<u64> = (1..=3 * per).collect();
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(offsets(client, 3 * per as usize).await, expected);
    }
    for client in [&mut a, &mut b, &mut c] {
        // The publish replies, all ok: some were set aside while reading messages.
        let mut oks = 0;
        client.backlog.retain(|m| {
            if m.get("id").is_some() {
                assert!(m.get("ok").is_some(), "{m}");
                oks += 1;
                false
            } else {
                true
            }
        });
        while oks < per {
            let m = client.recv_msg().await;
            if m.get("id").is_some() {
                assert!(m.get("ok").is_some(), "{m}");
                oks += 1;
            } else {
                client.backlog.push_back(m);
            }
        }
    }

    // Presence and history agree on every node.
    let mut views = BTreeSet::new();
    for client in [&mut a, &mut b, &mut c] {
        let p = client.ok(json!({"op": "presence", "room": room})).await;
        views.insert(p.to_string());
        let h = client
            .ok(json!({"op": "history", "room": room, "limit": 100}))
            .await;
        let hist: Vec<u64> = h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(hist, expected);
        assert_eq!(h["epoch"], created["epoch"]);
    }
    assert_eq!(views.len(), 1, "presence differs between nodes: {views:?}");

    // The server API works the same on any node: delete on node 1 closes it everywhere.
    let (status, _) = http_json(
        nodes[1].addr,
        "DELETE",
        &format!("/api/rooms/{room}"),
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200);
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(client.event("room_closed").await["room"], json!(room));
    }
    // And a disconnect through node 2 reaches alice on node 0.
    let (status, body) = http_json(
        nodes[2].addr,
        "POST",
        "/api/users/alice/disconnect",
        Some(API_KEY),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.closed().await, 4003);
}

/// A connection's publishes are pipelined (many wait for Redis at once) and keep their order:
/// the n-th publish sent gets the n-th offset, and members see them in that order.
#[tokio::test]
async fn pipelined_publishes_keep_their_order() {
    let nodes = three(&["--publish-rate", "100000", "--publish-burst", "100000"]).await;
    let room = unique("pipelined");
    let mut a = Client::connect(nodes[0].addr, "pipe-a", Fmt::Json).await;
    let mut b = Client::connect(nodes[1].addr, "pipe-b", Fmt::MsgPack).await;
    a.ok(json!({"op": "create_room", "room": room})).await;
    b.ok(json!({"op": "join", "room": room})).await;
    let n = 400u64;
    for i in 0..n {
        a.send(json!({"id": 1000 + i, "op": "publish", "room": room, "data": i}))
            .await;
    }
    let mut answered = 0;
    while answered < n {
        let m = a.recv_msg().await;
        let Some(id) = m["id"].as_u64() else { continue };
        assert_eq!(
            m["ok"]["offset"].as_u64(),
            Some(id - 1000 + 1),
            "publish {id} answered out of order: {m}"
        );
        answered += 1;
    }
    for i in 0..n {
        let m = b.event("message").await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"].as_u64()),
            (Some(i + 1), Some(i))
        );
    }
}

#[tokio::test]
async fn limits_hold_across_nodes() {
    let nodes = three(&["--publish-rate", "0.2", "--publish-burst", "3"]).await;
    let user = unique("spreader");
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(Client::connect(n.addr, &user, Fmt::Json).await);
    }
    // Five rooms a minute, whichever node the user asks.
    let mut made = 0;
    for i in 0..6 {
        let reply = clients[i % 3].request(json!({"op": "create_room"})).await;
        if reply.get("ok").is_some() {
            made += 1;
        } else {
            assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
            assert_eq!(i, 5, "refused too early");
        }
    }
    assert_eq!(made, 5);
    // The publish bucket (burst 3) is shared too.
    let room = unique("bucket");
    let mut owner = Client::connect(nodes[0].addr, &unique("owner"), Fmt::Json).await;
    owner.ok(json!({"op": "create_room", "room": room})).await;
    for c in clients.iter_mut() {
        c.ok(json!({"op": "join", "room": room})).await;
    }
    let mut allowed = 0;
    for i in 0..6 {
        let reply = clients[i % 3]
            .request(json!({"op": "publish", "room": room, "data": i}))
            .await;
        if reply.get("ok").is_some() {
            allowed += 1;
        } else {
            assert_eq!(reply["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(allowed, 3);
}

#[tokio::test]
async fn a_killed_gateway_leaves_no_ghosts_and_its_clients_lose_nothing() {
    let mut nodes = three(&["--publish-rate", "1000", "--publish-burst", "1000"]).await;
    let lb = Nginx::start(&[nodes[0].addr, nodes[1].addr, nodes[2].addr]);
    let room = unique("survive");
    let mut pubr = Client::connect(nodes[2].addr, "publisher", Fmt::Json).await;
    pubr.ok(json!({"op": "create_room", "room": room})).await;
    let mut watcher = Client::connect(nodes[1].addr, "watcher", Fmt::Json).await;
    watcher.ok(json!({"op": "join", "room": room})).await;
    let mut victim = Client::connect(nodes[0].addr, "victim", Fmt::MsgPack).await;
    let joined = victim.ok(json!({"op": "join", "room": room})).await;
    let epoch = joined["epoch"].clone();
    for i in 0..5 {
        pubr.ok(json!({"op": "publish", "room": room, "data": i}))
            .await;
    }
    let seen = offsets(&mut victim, 5).await;
    let last = *seen.last().unwrap();

    // kill -9 the victim's node. Its member disappears within the node TTL (2 s).
    let killed_at = tokio::time::Instant::now();
    nodes[0].kill9();
    loop {
        let p = watcher.event("presence").await;
        if p["action"] == "leave" && p["user"] == "victim" {
            break;
        }
    }
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "ghost member stayed {took:?}"
    );
    let members = pubr.ok(json!({"op": "presence", "room": room})).await;
    assert!(!members.to_string().contains("victim"), "{members}");

    // Messages published while the victim is away.
    for i in 5..10 {
        pubr.ok(json!({"op": "publish", "room": room, "data": i}))
            .await;
    }
    // It reconnects through nginx, lands on a live node, and recovers what it missed.
    let mut back = Client::connect(lb.addr, "victim", Fmt::MsgPack).await;
    assert_ne!(back.welcome["node"], json!(nodes[0].id));
    let r = back
        .ok(json!({"op": "join", "room": room, "since": {"offset": last, "epoch": epoch}}))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    let missed: Vec<u64> = r["missed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(missed, (last + 1..=10).collect::<Vec<_>>());
    pubr.ok(json!({"op": "publish", "room": room, "data": 10}))
        .await;
    assert_eq!(back.event("message").await["offset"], 11);
}

#[tokio::test]
async fn a_draining_node_hands_its_clients_over_without_loss() {
    let [mut a, b] = cluster_gateways(
        VAR,
        "d",
        &[
            "--publish-rate",
            "1000",
            "--publish-burst",
            "1000",
            "--drain-delay",
            "1s",
            "--drain-window",
            "2s",
            "--drain-deadline",
            "6s",
        ],
    )
    .await;
    let lb = Nginx::start(&[a.addr, b.addr]);
    let room = unique("drain");
    let mut publisher = Client::connect(b.addr, "publisher", Fmt::Json).await;
    publisher
        .ok(json!({"op": "create_room", "room": room}))
        .await;

    // Six members on the node that will drain.
    let mut members = Vec::new();
    for i in 0..6 {
        let mut c = Client::connect(
            a.addr,
            &format!("m{i}"),
            if i % 2 == 0 { Fmt::Json } else { Fmt::MsgPack },
        )
        .await;
        c.ok(json!({"op": "join", "room": room})).await;
        members.push(c);
    }
    let lb_addr = lb.addr;
    let tasks: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let room = room.clone();
            tokio::spawn(async move {
                let mut got: Vec<Value> = Vec::new();
                let mut last: Option<(Value, u64)> = None;
                // Until the node says reconnect (and then closes with 1012).
                let after_ms = loop {
                    let m = c.recv_msg().await;
                    match m["event"].as_str() {
                        Some("message") => {
                            last = Some((m["epoch"].clone(), m["offset"].as_u64().unwrap()));
                            got.push(m["data"].clone());
                        }
                        Some("reconnect") => break m["afterMs"].as_u64().unwrap(),
                        _ => {}
                    }
                };
                assert_eq!(c.closed().await, 1012);
                let closed_at = tokio::time::Instant::now();
                tokio::time::sleep(Duration::from_millis(after_ms)).await;
                let mut back = Client::connect(lb_addr, &format!("m{i}"), Fmt::Json).await;
                let (epoch, offset) = last.clone().unwrap();
                let r = back.ok(json!({"op": "join", "room": room, "since": {"offset": offset, "epoch": epoch}})).await;
                assert_eq!(r["recovered"], true, "{r}");
                got.extend(r["missed"].as_array().unwrap().iter().map(|m| m["data"].clone()));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
                while tokio::time::Instant::now() < deadline {
                    if let Ok(In::Msg(m)) = tokio::time::timeout(Duration::from_millis(300), back.recv()).await {
                        if m["event"] == "message" {
                            got.push(m["data"].clone());
                        }
                    }
                }
                (got, after_ms, closed_at, back.welcome["node"].clone())
            })
        })
        .collect();

    // Publish steadily from the other node while `a` drains.
    let term_at = tokio::time::Instant::now();
    assert!(a.sigterm());
    let mut acked = Vec::new();
    let start = tokio::time::Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(5) {
        i += 1;
        if publisher
            .request(json!({"op": "publish", "room": room, "data": i}))
            .await
            .get("ok")
            .is_some()
        {
            acked.push(json!(i));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut closes = Vec::new();
    for t in tasks {
        let (got, after_ms, closed_at, node) = t.await.unwrap();
        assert_eq!(node, json!(b.id), "reconnected to a draining node");
        let missing: Vec<&Value> = acked.iter().filter(|d| !got.contains(d)).collect();
        assert!(missing.is_empty(), "lost {missing:?}");
        assert!(after_ms <= 2000, "afterMs {after_ms}");
        closes.push(closed_at.duration_since(term_at));
    }
    // The closes were spread over the window, after the delay.
    let first = closes.iter().min().copied().unwrap();
    let last = closes.iter().max().copied().unwrap();
    assert!(first >= Duration::from_millis(900), "{first:?}");
    assert!(
        last - first >= Duration::from_millis(300),
        "closes not spread: {first:?}..{last:?}"
    );
    let status = a.wait();
    assert!(status.success());
    assert!(term_at.elapsed() < Duration::from_secs(12));
}

#[tokio::test]
async fn a_node_restarted_under_its_id_issues_new_ids_and_leaves_no_ghosts() {
    let urls = redis_urls(VAR);
    // A long node TTL: the restart itself must clear the old members, not the reaper.
    let args = [
        "--redis-cluster",
        urls.as_str(),
        "--traffic-interval",
        "250ms",
        "--node-ttl",
        "60s",
    ];
    let id = unique("idc");
    let mut a = Gateway::spawn(&id, &args);
    let b = Gateway::spawn(&unique("idc-b"), &args);
    a.ready().await;
    b.ready().await;
    let room = unique("secret");
    let mut owner = Client::connect(a.addr, "owner", Fmt::Json).await;
    let old_conn = owner.conn_id();
    owner.ok(json!({"op": "create_room", "room": room})).await;
    let mut watcher = Client::connect(b.addr, "watcher", Fmt::Json).await;
    watcher.ok(json!({"op": "join", "room": room})).await;

    // kill -9, and the same node id again.
    a.kill9();
    let a = Gateway::spawn(&id, &args);
    a.ready().await;
    let mut fresh = Client::connect(a.addr, "owner", Fmt::Json).await;
    let new_conn = fresh.conn_id();
    assert_ne!(new_conn, old_conn, "a connection id was issued twice");
    assert!(new_conn.starts_with(&format!("{id}.")), "{new_conn}");
    // The fresh connection never joined: no membership inherited.
    let publish = json!({"op": "publish", "room": room, "data": "x"});
    assert_eq!(fresh.err(publish).await["code"], "not_member");
    let history = json!({"op": "history", "room": room});
    assert_eq!(fresh.err(history).await["code"], "not_member");

    // The old connection leaves presence: announced, and gone from the list.
    loop {
        let p = watcher.event("presence").await;
        if p["action"] == "leave" && p["connId"] == json!(old_conn) {
            break;
        }
    }
    let members = watcher.ok(json!({"op": "presence", "room": room})).await;
    assert!(!members.to_string().contains(&old_conn), "{members}");
}
