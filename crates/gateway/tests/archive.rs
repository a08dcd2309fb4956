//! The archiver: every message acknowledged over the native protocol reaches the archive,
//! once, with its payload (binary included), off the publish path; what is published right
//! before a drain is archived by the drain; `--archive-retention` drops old messages.
//!
//! On the embedded backend with a SQLite archive in a temporary file (always), and on Redis
//! Cluster (`ROOMCAST_TEST_REDIS_CLUSTER`) with PostgreSQL (`ROOMCAST_TEST_POSTGRES`) when
//! both are set; otherwise that test prints `skipped` and passes.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use support::archival::{archived, caught_up, sqlite_url};
use support::*;

/// Messages per test: more than the room's history window, so the archiver must read past
/// what `history` answers.
const N: u64 = 60;
const HISTORY: u64 = 5;

/// The payload of message `i`: JSON, with a byte string every tenth message.
fn payload(i: u64) -> Value {
    if i.is_multiple_of(10) {
        json!({"i": i, "blob": {"$bin": "AAEC/f7/"}, "nested": [{"$bin": ""}]})
    } else {
        json!({"i": i, "text": format!("message {i}"), "q": "it's \"quoted\""})
    }
}

async fn start_node(archive: &str, redis: Option<&str>, extra: &[&str]) -> gateway::Running {
    let mut args = vec![
        "--archive",
        archive,
        "--publish-rate",
        "10000",
        "--publish-burst",
        "10000",
    ];
    if let Some(urls) = redis {
        args.extend(["--redis-cluster", urls]);
    }
    args.extend_from_slice(extra);
    start(&args).await
}

/// Publishes `count` messages after `first - 1`.
async fn publish(c: &mut Client, room: &str, first: u64, count: u64) {
    for i in first..first + count {
        let ok = c
            .ok(json!({"op": "publish", "room": room, "data": payload(i)}))
            .await;
        assert_eq!(ok["offset"], json!(i), "{ok}");
    }
}

/// Creates a room with `options`; returns its epoch.
async fn create(c: &mut Client, room: &str, options: Value) -> String {
    let ok = c
        .ok(json!({"op": "create_room", "room": room, "options": options}))
        .await;
    ok["epoch"].as_str().unwrap().to_string()
}

/// Every offset `1..=upto` is there exactly once, in order, with its payload.
async fn check_all(archive: &dyn archive::Archive, room: &str, epoch: &str, upto: u64) {
    let page = archive.page(room, epoch, None, 1000).await.unwrap();
    let offsets: Vec<u64> = page.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=upto).collect::<Vec<_>>());
    for p in &page {
        let got: Value = serde_json::from_str(p.data.as_json()).unwrap();
        assert_eq!(got, payload(p.offset), "offset {}", p.offset);
        assert_eq!(p.epoch, epoch);
    }
}

/// The whole scenario on one node: publish past the window, catch up, check; publish more
/// and drain at once: the drain archives them.
async fn scenario(archive_url: &str, redis: Option<&str>) {
    let node = start_node(archive_url, redis, &[]).await;
    let user = unique("arch");
    let room = unique("archived");
    let mut c = Client::connect(node.addr, &user, Fmt::Json).await;
    let epoch = create(&mut c, &room, json!({"historySize": HISTORY})).await;
    publish(&mut c, &room, 1, N).await;
    let archive: Arc<dyn archive::Archive> = node.node.archive().unwrap().clone();
    caught_up(archive.as_ref(), &room, &epoch, N).await;
    check_all(archive.as_ref(), &room, &epoch, N).await;
    // `history` reads past the window from the archive (tests/archive_read.rs pages it).
    let history = c
        .ok(json!({"op": "history", "room": room, "limit": 100}))
        .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len() as u64,
        N,
        "{history}"
    );

    publish(&mut c, &room, N + 1, 5).await;
    drop(c);
    node.drain().await;
    let reopened = archive::open(archive_url).await.unwrap();
    check_all(reopened.as_ref(), &room, &epoch, N + 5).await;
}

#[tokio::test]
async fn every_acknowledged_message_reaches_a_sqlite_archive() {
    let (url, dir) = sqlite_url("embedded");
    scenario(&url, None).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn every_acknowledged_message_reaches_postgres_from_redis_cluster() {
    let (Ok(redis), Ok(pg)) = (
        std::env::var("ROOMCAST_TEST_REDIS_CLUSTER"),
        std::env::var("ROOMCAST_TEST_POSTGRES"),
    ) else {
        println!(
            "skipped: set ROOMCAST_TEST_REDIS_CLUSTER and ROOMCAST_TEST_POSTGRES to run the \
             archiver on Redis Cluster with PostgreSQL"
        );
        return;
    };
    scenario(&pg, Some(&redis)).await;
}

#[tokio::test]
async fn retention_drops_old_messages() {
    let (url, dir) = sqlite_url("retention");
    let node = start_node(&url, None, &["--archive-retention", "1s"]).await;
    let room = unique("kept");
    let mut c = Client::connect(node.addr, &unique("ret"), Fmt::Json).await;
    let epoch = create(&mut c, &room, json!({})).await;
    publish(&mut c, &room, 1, 3).await;
    let archive = node.node.archive().unwrap().clone();
    // Retention runs every 250 ms here and drops what is older than 1 s, which a message may
    // already be when the archiver (a round a second) stores it: so the counters tell that
    // all three were stored and then dropped, not a look at the archive in between.
    let counter = |metrics: &str, name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, metrics) = http(node.addr, "GET", "/metrics", None, "").await;
        let stored = counter(
            &metrics,
            "roomcast_archive_messages_total{result=\"stored\"} ",
        );
        let dropped = counter(&metrics, "roomcast_archive_retention_dropped_total ");
        if stored == 3 && dropped == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored {stored}, dropped {dropped}: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(archive.high_water(&room, &epoch).await.unwrap(), None);
    drop(c);
    node.drain().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_archive_url_stops_the_start() {
    let config = config(&["--archive", "sqlite:///dev/null/roomcast.db"]);
    let err = gateway::start(config).await.unwrap_err().to_string();
    assert!(err.contains("cannot open the --archive"), "{err}");
    let bad = bare_config(&["--allow-anonymous", "--archive", "mysql://u:secret@h/db"]);
    let err = bad.validate().unwrap_err();
    assert!(err.contains("mysql") && !err.contains("secret"), "{err}");
}

/// Three gateway processes on Redis Cluster archiving into PostgreSQL (`--durable-publish`), a
/// publisher on one of them, the gateway started first (which took every shard's lease) killed
/// with -9, then the room's Redis primary failed over (gracefully: `CLUSTER FAILOVER` on its
/// replica): the shards move when the leases lapse, and every acknowledged offset ends up in
/// PostgreSQL exactly once; paging from the newest to the first returns them all in order.
/// `serial_`: its gateways hold the shared cluster's archive leases while it runs.
#[tokio::test]
async fn serial_a_killed_gateway_and_a_failover_lose_nothing_from_the_archive() {
    let (Ok(_), Ok(pg)) = (
        std::env::var("ROOMCAST_TEST_REDIS_CLUSTER"),
        std::env::var("ROOMCAST_TEST_POSTGRES"),
    ) else {
        println!("skipped: needs ROOMCAST_TEST_REDIS_CLUSTER and ROOMCAST_TEST_POSTGRES");
        return;
    };
    let mut gateways = cluster_gateways::<3>(
        "ROOMCAST_TEST_REDIS_CLUSTER",
        "arch",
        &[
            "--archive",
            &pg,
            "--durable-publish",
            "--publish-rate",
            "10000",
            "--publish-burst",
            "10000",
        ],
    )
    .await;
    let room = unique("killed");
    let mut c = Client::connect(gateways[1].addr, &unique("pub"), Fmt::Json).await;
    let epoch = create(&mut c, &room, json!({"historySize": 10})).await;
    let start = tokio::time::Instant::now();
    let mut acked = 0u64;
    let mut killed = false;
    let mut failed_over = false;
    while start.elapsed() < Duration::from_secs(5) {
        if !killed && start.elapsed() > Duration::from_secs(1) {
            gateways[0].kill9();
            killed = true;
        }
        if !failed_over && start.elapsed() > Duration::from_secs(2) {
            fail_over_room(&room);
            failed_over = true;
        }
        acked += 1;
        publish_retrying(&mut c, &room, acked).await;
    }
    cluster_settled_at(first_redis_port()).await;
    let archive = archive::open(&pg).await.unwrap();
    caught_up(archive.as_ref(), &room, &epoch, acked).await;
    // Newest to first, a page of 100 at a time.
    let all = archived(archive.as_ref(), &room, &epoch).await;
    let offsets: Vec<u64> = all.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=acked).collect::<Vec<_>>());
    for p in &all {
        let got: Value = serde_json::from_str(p.data.as_json()).unwrap();
        assert_eq!(got, payload(p.offset));
    }
    eprintln!("archived {acked} messages across a kill -9 and a failover");
}

/// Publishes message `i` with `msgId` = `i`, retrying on `unavailable` / `timeout` (a
/// failover in progress): the key makes a retry of an applied publish a duplicate at the same
/// offset, so message `i` is at offset `i`.
async fn publish_retrying(c: &mut Client, room: &str, i: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = c
            .request(json!({"op": "publish", "room": room, "msgId": format!("m{i}"), "data": payload(i)}))
            .await;
        if reply.get("ok").is_some() {
            assert_eq!(reply["ok"]["offset"], json!(i), "{reply}");
            return;
        }
        let code = reply["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            (code == "unavailable" || code == "timeout") && tokio::time::Instant::now() < deadline,
            "{reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `CLUSTER FAILOVER` on the replica of the room's primary.
fn fail_over_room(room: &str) {
    let base = first_redis_port();
    let key = format!("rc:{{r:{room}}}:m");
    let slot: u16 = redis_cli(base, &["cluster", "keyslot", &key])
        .trim()
        .parse()
        .unwrap();
    let nodes = redis_cli(base, &["cluster", "nodes"]);
    let rows: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let primary = rows
        .iter()
        .find(|f| {
            f[2].contains("master")
                && !f[2].contains("fail")
                && f[8..].iter().any(|r| {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    }
                })
        })
        .expect("no primary for the room's slot");
    let replica = rows
        .iter()
        .find(|f| f[3] == primary[0] && !f[2].contains("fail"))
        .map(|f| port(f[1]))
        .expect("no replica");
    let out = redis_cli(replica, &["cluster", "failover"]);
    assert!(out.contains("OK"), "{out}");
}
