//! Webhooks across three real gateways on the Redis Cluster (`ROOMCAST_TEST_REDIS_CLUSTER`):
//! occupied / vacated / online / offline are reported once for the whole cluster; a gateway
//! killed with -9 while the app is down leaves events in the queue shards it delivered, which
//! the others take over, and its members produce their leave / vacated / offline events
//! through the node that claims it dead; a close reports the members it removed, and an
//! expiry is reported once; after 30 s down, the app gets everything, in order
//! per room. Serial: a killed node must be claimed by a node that has webhooks on, and the
//! queues and leases are the cluster's own, so no other webhook test may share them.

#![allow(clippy::unwrap_used)]

mod support;
mod webhook_app;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::Duration;
use support::*;
use webhook_app::{of_room, of_user, App};

const VAR: &str = "ROOMCAST_TEST_REDIS_CLUSTER";
const HOOK_SECRET: &str = "hook-secret";

/// Waits up to `secs` until `f` holds for what the app accepted, deduped by id.
async fn until(app: &App, secs: u64, what: &str, f: impl Fn(&[Value]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let events = app.deduped();
        if f(&events) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; got {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(t, u)| (t.to_string(), u.to_string()))
        .collect()
}

/// `roomcast_webhook_shards_held` of a gateway.
async fn shards_held(g: &Gateway) -> u64 {
    let (_, body) = http(g.addr, "GET", "/metrics", None, "").await;
    body.lines()
        .find_map(|l| l.strip_prefix("roomcast_webhook_shards_held "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn serial_webhooks_survive_a_killed_node_and_an_app_outage() {
    let app = App::start().await;
    let url = app.url();
    let mut nodes = cluster_gateways::<3>(
        VAR,
        "wh",
        &[
            "--node-ttl",
            "2s",
            "--room-create-limit",
            "100",
            "--webhook-url",
            &url,
        ],
    )
    .await;
    let (dora, gus, finn) = (unique("dora"), unique("gus"), unique("finn"));
    let room = unique("whc");

    // One user on two nodes, one room with members on two nodes: online once, occupied once.
    let mut dora0 = Client::connect(nodes[0].addr, &dora, Fmt::Json).await;
    dora0.ok(json!({"op": "create_room", "room": room})).await;
    let mut dora1 = Client::connect(nodes[1].addr, &dora, Fmt::Json).await;
    dora1.ok(json!({"op": "join", "room": room})).await;
    drop(dora1);
    let start = pairs(&[
        ("room_created", &dora),
        ("room_occupied", ""),
        ("member_joined", &dora),
        ("member_joined", &dora),
        ("member_left", &dora),
    ]);
    // The user's events ride in another shard than the room's: waited for too, not assumed
    // to have come with them (a local CI run saw the room's first).
    until(&app, 15, "the room's and the user's first events", |e| {
        of_room(e, &room).len() >= start.len() && !of_user(e, &dora).is_empty()
    })
    .await;
    assert_eq!(of_room(&app.deduped(), &room), start);
    assert_eq!(of_user(&app.deduped(), &dora), ["user_online"]);

    // A close through node 2 of a room with members on nodes 0 and 1: each member left once,
    // the room vacated, then closed. A room nobody joins expires after 1 s: all three nodes
    // trim the index, one reports it.
    let (shut, brief) = (unique("whs"), unique("whe"));
    dora0.ok(json!({"op": "create_room", "room": shut})).await;
    let mut dora1 = Client::connect(nodes[1].addr, &dora, Fmt::Json).await;
    dora1.ok(json!({"op": "join", "room": shut})).await;
    let path = format!("/api/rooms/{shut}");
    let (status, _) = http(nodes[2].addr, "DELETE", &path, Some(API_KEY), "").await;
    assert_eq!(status, 200);
    dora1.event("room_closed").await;
    drop(dora1);
    dora0
        .ok(json!({"op": "create_room", "room": brief, "options": {"ttlSecs": 1}}))
        .await;
    dora0.ok(json!({"op": "leave", "room": brief})).await;
    let closed = pairs(&[
        ("room_created", &dora),
        ("room_occupied", ""),
        ("member_joined", &dora),
        ("member_joined", &dora),
        ("member_left", &dora),
        ("member_left", &dora),
        ("room_vacated", ""),
        ("room_closed", ""),
    ]);
    let expired = pairs(&[
        ("room_created", &dora),
        ("room_occupied", ""),
        ("member_joined", &dora),
        ("member_left", &dora),
        ("room_vacated", ""),
        ("room_closed", ""),
    ]);
    until(&app, 15, "the close and the expiry", |e| {
        of_room(e, &shut).len() >= closed.len() && of_room(e, &brief).len() >= expired.len()
    })
    .await;
    // Three more maintenance rounds on every node: a second report would have come by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = app.deduped();
    assert_eq!(of_room(&events, &shut), closed);
    assert_eq!(of_room(&events, &brief), expired);
    let last = events
        .iter()
        .rfind(|e| e["room"] == brief.as_str())
        .unwrap();
    assert_eq!(last["reason"], "expired");
    let left = events
        .iter()
        .filter(|e| e["room"] == shut.as_str() && e["type"] == "member_left");
    assert!(left.clone().all(|e| e["reason"] == "closed"));
    assert_eq!(left.count(), 2);
    assert_eq!(of_user(&events, &dora), ["user_online"]);

    // The app goes down; events pile up in the queues, some in shards node 0 delivers.
    app.set_down(true);
    let down_at = tokio::time::Instant::now();
    assert!(shards_held(&nodes[0]).await > 0, "node 0 delivers no shard");
    let mut gus0 = Client::connect(nodes[0].addr, &gus, Fmt::Json).await;
    let g_room = unique("whg");
    gus0.ok(json!({"op": "create_room", "room": g_room})).await;
    let mut finn2 = Client::connect(nodes[2].addr, &finn, Fmt::Json).await;
    let rooms: Vec<String> = (0..8).map(|_| unique("whx")).collect();
    for r in &rooms {
        finn2.ok(json!({"op": "create_room", "room": r})).await;
        finn2.ok(json!({"op": "leave", "room": r})).await;
    }

    // Node 0 dies with dora (the room's last member) and gus on it.
    nodes[0].kill9();
    let dead = nodes[0].id.clone();

    // Down for 30 s in all, then back.
    tokio::time::sleep_until(down_at + Duration::from_secs(30)).await;
    app.set_down(false);

    let mut expected_room = start.clone();
    expected_room.extend(pairs(&[("member_left", &dora), ("room_vacated", "")]));
    let expected_g = pairs(&[
        ("room_created", &gus),
        ("room_occupied", ""),
        ("member_joined", &gus),
        ("member_left", &gus),
        ("room_vacated", ""),
    ]);
    let expected_x = pairs(&[
        ("room_created", &finn),
        ("room_occupied", ""),
        ("member_joined", &finn),
        ("member_left", &finn),
        ("room_vacated", ""),
    ]);
    // The backoff is at most 30 s (jittered down to 15 s) by the time the app is back.
    until(&app, 45, "every event after the outage", |e| {
        of_room(e, &room).len() >= expected_room.len()
            && of_room(e, &g_room).len() >= expected_g.len()
            && rooms
                .iter()
                .all(|r| of_room(e, r).len() >= expected_x.len())
            && of_user(e, &dora).len() >= 2
            && of_user(e, &gus).len() >= 2
            && !of_user(e, &finn).is_empty()
    })
    .await;
    let events = app.deduped();
    assert_eq!(of_room(&events, &room), expected_room);
    assert_eq!(of_room(&events, &g_room), expected_g);
    for r in &rooms {
        assert_eq!(of_room(&events, r), expected_x, "room {r}");
    }
    assert_eq!(of_user(&events, &dora), ["user_online", "user_offline"]);
    assert_eq!(of_user(&events, &gus), ["user_online", "user_offline"]);
    // finn's socket is not read during the outage, so it answers no ping and may be closed
    // for that (then offline follows): only the first event is certain.
    assert_eq!(of_user(&events, &finn)[0], "user_online");
    // The dead node's departures were made by the live node that claimed it.
    let reaped: Vec<&Value> = events
        .iter()
        // (Earlier runs' dead gateways may be reaped now too: only this run's users count.)
        .filter(|e| e["reason"] == "node_dead" && (e["user"] == dora || e["user"] == gus))
        .collect();
    assert_eq!(reaped.len(), 4, "{reaped:#?}"); // dora and gus: left, offline
    assert!(reaped.iter().all(|e| e["node"] != dead.as_str()));
    drop(finn2);
    drop(gus0);
    drop(dora0);
}

/// `roomcast_connections` of a gateway, all protocols and formats summed.
async fn open_connections(g: &Gateway) -> u64 {
    let (_, body) = http(g.addr, "GET", "/metrics", None, "").await;
    body.lines()
        .filter(|l| l.starts_with("roomcast_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The app answering badly on three gateways: too slowly for `--webhook-timeout`, HTTP 500,
/// 503, a redirect, and 2xx with a body that is not JSON (`ok`, which webhooks ignore). Each
/// failed batch is sent again until a 2xx: every event arrives, as specified (fields, signature),
/// in order per room; clients
/// are not held up meanwhile (every op answered at once), and every connection closes and
/// produces its events. Serial, like the test above: the queues and leases are the cluster's.
#[tokio::test]
async fn serial_webhooks_through_bad_answers_on_three_gateways() {
    let app = App::start().await;
    let url = app.url();
    // The first POST answers after 2 s (given up on at 300 ms), the next three fail.
    app.delay_next(&[Duration::from_secs(2)]);
    app.answer_next(&[500, 503, 302]);
    let nodes = cluster_gateways::<3>(
        VAR,
        "whb",
        &[
            "--webhook-url",
            &url,
            "--webhook-timeout",
            "300ms",
            "--webhook-secret",
            HOOK_SECRET,
        ],
    )
    .await;
    let users: Vec<String> = (0..3).map(|_| unique("whb")).collect();
    let room = unique("whbr");
    let mut clients = Vec::new();
    for (node, user) in nodes.iter().zip(&users) {
        clients.push(Client::connect(node.addr, user, Fmt::Json).await);
    }
    // Ops made while the app fails, each answered at once (a generous bound: the machine is
    // shared). Between nodes a pause, so that the room's events are queued in op order
    // (docs/webhooks.md: two nodes' events at the same moment have no order).
    let pause = Duration::from_millis(150);
    let timed = std::time::Instant::now();
    clients[0]
        .ok(json!({"op": "create_room", "room": room}))
        .await;
    tokio::time::sleep(pause).await;
    clients[1].ok(json!({"op": "join", "room": room})).await;
    tokio::time::sleep(pause).await;
    clients[2].ok(json!({"op": "join", "room": room})).await;
    tokio::time::sleep(pause).await;
    clients[1].ok(json!({"op": "leave", "room": room})).await;
    tokio::time::sleep(pause).await;
    clients[2]
        .ok(json!({"op": "publish", "room": room, "data": 1}))
        .await;
    assert!(
        timed.elapsed() < Duration::from_secs(3),
        "ops held up by the app: {:?}",
        timed.elapsed()
    );
    // Every connection closes (node 2's, then node 0's, then node 1's).
    for i in [2, 0, 1] {
        let mut c = clients.remove(
            clients
                .iter()
                .position(|c| c.welcome["user"] == users[i].as_str())
                .unwrap(),
        );
        c.ws.close(None).await.unwrap();
        while let In::Msg(_) = c.recv().await {}
        tokio::time::sleep(pause).await;
    }

    let expected = pairs(&[
        ("room_created", &users[0]),
        ("room_occupied", ""),
        ("member_joined", &users[0]),
        ("member_joined", &users[1]),
        ("member_joined", &users[2]),
        ("member_left", &users[1]),
        ("member_left", &users[2]),
        ("member_left", &users[0]),
        ("room_vacated", ""),
    ]);
    // Leases of an earlier serial test's gateways may take 10 s to lapse, then the backoff.
    until(&app, 40, "every event through the bad answers", |e| {
        of_room(e, &room).len() >= expected.len() && users.iter().all(|u| of_user(e, u).len() >= 2)
    })
    .await;
    let events = app.deduped();
    assert_eq!(of_room(&events, &room), expected);
    for u in &users {
        assert_eq!(of_user(&events, u), ["user_online", "user_offline"], "{u}");
    }
    // Every event as docs/webhooks.md specifies it: fields, and who made it.
    let node_ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    let ours = events
        .iter()
        .filter(|e| e["room"] == room.as_str() || users.iter().any(|u| e["user"] == u.as_str()));
    for e in ours {
        let id = e["id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{e}"
        );
        assert!(e["ts"].as_u64().unwrap() > 0, "{e}");
        assert!(node_ids.contains(&e["node"].as_str().unwrap()), "{e}");
        let kind = e["type"].as_str().unwrap();
        let has_conn = kind.starts_with("member_") || kind.starts_with("user_");
        assert_eq!(e["conn"].is_string(), has_conn, "{e}");
        assert!(
            e.get("reason").is_none(),
            "their own leaves and closes: {e}"
        );
    }
    // Every POST, refused or not, is signed over its exact body; some carried a batch.
    let received = app.received();
    for r in &received {
        let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
        mac.update(r.body.as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(r.signature, Some(format!("sha256={hex}")));
    }
    assert!(
        received
            .iter()
            .any(|r| serde_json::from_str::<Vec<Value>>(&r.body).unwrap().len() > 1),
        "no batch of more than one event"
    );
    // The bad answers were given, and every event they refused came again and was accepted.
    let refused: Vec<_> = received
        .iter()
        .filter(|r| !(200..300).contains(&r.status))
        .collect();
    let mut statuses: Vec<u16> = refused.iter().map(|r| r.status).collect();
    statuses.sort();
    assert_eq!(statuses, [302, 500, 503]);
    for r in refused {
        // Only this test's events: a batch may also carry what an earlier serial test's
        // gateways left in the shared queues, delivered on its own schedule.
        let batch = serde_json::from_str::<Vec<Value>>(&r.body).unwrap();
        let mine = batch.into_iter().filter(|e| {
            e["room"] == room.as_str() || users.iter().any(|u| e["user"] == u.as_str())
        });
        for e in mine {
            assert!(
                events.iter().any(|a| a["id"] == e["id"]),
                "never accepted: {e}"
            );
        }
    }
    let mut failures = 0;
    for node in &nodes {
        let (_, body) = http(node.addr, "GET", "/metrics", None, "").await;
        failures += body
            .lines()
            .find_map(|l| l.strip_prefix("roomcast_webhook_failures_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert!(failures >= 4, "timeout + three statuses: {failures}");
    // No connection is left open anywhere.
    for node in &nodes {
        assert_eq!(open_connections(node).await, 0, "{}", node.id);
    }
}

/// A gateway started without `--webhook-url` in a cluster whose other nodes deliver webhooks
/// says so in its log at start, naming the consequence (docs/operations.md, "Webhooks").
/// Serial: the webhook node takes the cluster's queue leases (given back by its drain).
#[tokio::test]
async fn serial_a_node_without_webhooks_in_a_webhook_cluster_warns() {
    let app = App::start().await;
    let url = app.url();
    let [with] = cluster_gateways::<1>(
        VAR,
        "whw",
        &[
            "--webhook-url",
            &url,
            "--drain-delay",
            "0s",
            "--drain-window",
            "100ms",
        ],
    )
    .await;
    // Every shard taken: the first lease attempts are spread over 2 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while shards_held(&with).await < 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "shards never all held"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let [without] = cluster_gateways::<1>(VAR, "whn", &[]).await;
    let log = std::env::temp_dir().join(format!("roomcast-test-{}.log", without.id));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("webhooks are on in this cluster"))
        {
            break serde_json::from_str::<Value>(line).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning in {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(warning["level"], "WARN", "{warning}");
    assert_eq!(warning["fields"]["holder"], with.id.as_str(), "{warning}");
    // Drained, not killed: its leases are given back for the next test at once.
    assert!(with.sigterm());
    let mut with = with;
    let _ = tokio::task::spawn_blocking(move || with.wait()).await;
}
