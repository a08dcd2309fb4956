//! History past the Redis window (the archive's read side): the `history` op and
//! `GET /api/rooms/{room}/messages` page from the newest message to the first across the
//! window in one ordered answer; bad paging input; erasure routes; a closed room is closed in
//! the archive. The messages reach the archive through the real archiver.
//!
//! On the embedded backend with a SQLite archive in a temporary file (always), and on Redis
//! Cluster (`ROOMCAST_TEST_REDIS_CLUSTER`) with PostgreSQL (`ROOMCAST_TEST_POSTGRES`) when
//! both are set; otherwise that test prints `skipped` and passes.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::archival::sqlite_url;
use support::*;

const N: u64 = 40;
const HISTORY: u64 = 5;

/// Message `i`: JSON, with byte strings every seventh message.
fn payload(i: u64) -> Value {
    if i.is_multiple_of(7) {
        json!({"i": i, "blob": {"$bin": "AAEC/f7/"}, "nested": [{"$bin": ""}]})
    } else {
        json!({"i": i})
    }
}

async fn start_node(archive: &str, redis: Option<&str>) -> gateway::Running {
    let mut args = vec!["--archive", archive, "--publish-rate", "10000"];
    args.extend(["--publish-burst", "10000"]);
    if let Some(urls) = redis {
        args.extend(["--redis-cluster", urls]);
    }
    start(&args).await
}

/// A room with a window of `HISTORY` and `N` messages, all archived. Returns the client (a
/// member) and the epoch.
async fn filled_room(node: &gateway::Running, user: &str, room: &str) -> (Client, String) {
    let mut c = Client::connect(node.addr, user, Fmt::Json).await;
    let created = c
        .ok(json!({"op": "create_room", "room": room, "options": {"historySize": HISTORY}}))
        .await;
    let epoch = created["epoch"].as_str().unwrap().to_string();
    for i in 1..=N {
        c.ok(json!({"op": "publish", "room": room, "data": payload(i)}))
            .await;
    }
    let archive = node.node.archive().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while archive.high_water(room, &epoch).await.unwrap() != Some(N) {
        assert!(tokio::time::Instant::now() < deadline, "archive lagging");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (c, epoch)
}

/// Checks one page (oldest first, contiguous, payloads intact) and returns its offsets.
fn offsets(messages: &Value) -> Vec<u64> {
    let list = messages.as_array().unwrap();
    for m in list {
        let offset = m["offset"].as_u64().unwrap();
        assert_eq!(m["data"], payload(offset), "offset {offset}");
    }
    list.iter().map(|m| m["offset"].as_u64().unwrap()).collect()
}

/// Puts one page (paging from the newest to the first) in front of what was seen; returns
/// the next `before`, or `None` at the end. Checks order and the seam.
fn step(seen: &mut Vec<u64>, messages: &Value) -> Option<u64> {
    let page = offsets(messages);
    if page.is_empty() {
        return None;
    }
    assert!(page.windows(2).all(|w| w[1] == w[0] + 1), "{page:?}");
    if let Some(&oldest) = seen.first() {
        assert_eq!(*page.last().unwrap() + 1, oldest, "a gap at the seam");
    }
    let before = page[0];
    seen.splice(0..0, page);
    Some(before)
}

async fn api(node: &gateway::Running, method: &str, path: &str) -> (u16, Value) {
    http_json(node.addr, method, path, Some(API_KEY), "").await
}

async fn scenario(archive_url: &str, redis: Option<&str>) {
    let node = start_node(archive_url, redis).await;
    let user = unique("reader");
    let room = unique("paged");
    let (mut c, epoch) = filled_room(&node, &user, &room).await;

    // The native op, 7 at a time across the window of 5.
    let (mut seen, mut before) = (Vec::new(), None);
    loop {
        let mut op = json!({"op": "history", "room": room, "limit": 7});
        if let Some(b) = before {
            op["before"] = json!(b);
        }
        let h = c.ok(op).await;
        assert_eq!(h["epoch"], json!(epoch));
        match step(&mut seen, &h["messages"]) {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    // One answer for everything (a limit past the cap is capped, not refused).
    let all = c
        .ok(json!({"op": "history", "room": room, "limit": 100000}))
        .await;
    assert_eq!(offsets(&all["messages"]), (1..=N).collect::<Vec<_>>());
    // `before` 0 and 1: nothing below; past the newest: the newest.
    for before in [0u64, 1] {
        let h = c
            .ok(json!({"op": "history", "room": room, "before": before}))
            .await;
        assert_eq!(h["messages"], json!([]), "before {before}");
    }
    let h = c
        .ok(json!({"op": "history", "room": room, "before": 1_000_000, "limit": 3}))
        .await;
    assert_eq!(offsets(&h["messages"]), vec![N - 2, N - 1, N]);

    // The server API, 9 at a time.
    let (mut seen, mut before) = (Vec::new(), None);
    loop {
        let path = match before {
            Some(b) => format!("/api/rooms/{room}/messages?limit=9&before={b}"),
            None => format!("/api/rooms/{room}/messages?limit=9"),
        };
        let (status, body) = api(&node, "GET", &path).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["epoch"], json!(epoch));
        match step(&mut seen, &body["messages"]) {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen, (1..=N).collect::<Vec<_>>());
    let (status, body) = api(&node, "GET", &format!("/api/rooms/{room}/messages")).await;
    assert_eq!(status, 200);
    assert_eq!(body["messages"].as_array().unwrap().len(), N as usize);
    let (status, body) = api(
        &node,
        "GET",
        &format!("/api/rooms/{room}/messages?limit=99999999999999999999999"),
    )
    .await;
    assert_eq!(
        (status, body["messages"].as_array().unwrap().len()),
        (200, 40)
    );
    for bad in ["before=abc", "limit=-1", "before=1e3"] {
        let (status, body) = api(&node, "GET", &format!("/api/rooms/{room}/messages?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, body) = api(&node, "GET", "/api/rooms/no-such-room-xyz/messages").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );

    // Erasure: a user's messages across rooms, then a room; an unknown room is 404.
    let (status, body) = api(&node, "DELETE", &format!("/api/users/{user}/messages")).await;
    assert_eq!((status, body["purged"].clone()), (200, json!(N)), "{body}");
    let (status, body) = api(&node, "DELETE", "/api/users/nobody-at-all/messages").await;
    assert_eq!((status, body["purged"].clone()), (200, json!(0)));
    // The window (Redis/memory) is not erased by the archive purge: only it is left.
    let h = c
        .ok(json!({"op": "history", "room": room, "limit": 100}))
        .await;
    assert_eq!(
        offsets(&h["messages"]),
        ((N - HISTORY + 1)..=N).collect::<Vec<_>>()
    );
    c.ok(json!({"op": "publish", "room": room, "data": payload(N + 1)}))
        .await;
    let archive = node.node.archive().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while archive.high_water(&room, &epoch).await.unwrap() != Some(N + 1) {
        assert!(tokio::time::Instant::now() < deadline, "archive lagging");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = api(&node, "DELETE", &format!("/api/rooms/{room}/messages")).await;
    assert_eq!((status, body["purged"].clone()), (200, json!(1)), "{body}");
    let (status, body) = api(&node, "DELETE", "/api/rooms/no-such-room-xyz/messages").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (404, json!("not_found"))
    );

    // A closed room leaves no sleeping record behind.
    archive
        .save_room(&archive::SleepingRoom {
            room: room.clone(),
            epoch: epoch.clone(),
            offset: N + 1,
            max_members: None,
            history_size: HISTORY as u32,
            ttl_secs: 60,
            created_ms: 1,
            saved_ms: 2,
        })
        .await
        .unwrap();
    let (status, _) = api(&node, "DELETE", &format!("/api/rooms/{room}")).await;
    assert_eq!(status, 200);
    assert_eq!(archive.load_room(&room).await.unwrap(), None);
    drop(c);
    node.drain().await;
}

#[tokio::test]
async fn pages_past_the_window_from_a_sqlite_archive() {
    let (url, dir) = sqlite_url("embedded");
    scenario(&url, None).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn pages_past_the_window_from_postgres_on_redis_cluster() {
    let (Ok(redis), Ok(pg)) = (
        std::env::var("ROOMCAST_TEST_REDIS_CLUSTER"),
        std::env::var("ROOMCAST_TEST_POSTGRES"),
    ) else {
        eprintln!("skipped: ROOMCAST_TEST_REDIS_CLUSTER and ROOMCAST_TEST_POSTGRES not both set");
        return;
    };
    scenario(&pg, Some(&redis)).await;
}
