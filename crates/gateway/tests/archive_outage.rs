//! The archive going away under load, on Redis Cluster with PostgreSQL: a real server restart
//! in the middle of a publisher load loses nothing and stores nothing twice; while the
//! archive is unreachable a room takes `--archive-backlog-cap` unarchived messages, then its
//! publishes are refused `unavailable`, and they are accepted again once it is back.
//!
//! Both need `ROOMCAST_TEST_REDIS_CLUSTER` and `ROOMCAST_TEST_POSTGRES` (the restart also
//! `ROOMCAST_TEST_POSTGRES_RESTART`, the command that restarts that server); otherwise they
//! print `skipped` and pass. `serial_`: their gateways take the shared cluster's archive
//! leases (another test's archiver would archive their rooms), and the restart disconnects
//! every client of the server. Run them one at a time (`--test-threads=1`).

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::archival::{archived, caught_up, cursor_at, error_code, lag_is_zero, PgSwitch};
use support::*;

fn payload(room: usize, i: u64) -> Value {
    if i.is_multiple_of(5) {
        json!({"r": room, "i": i, "bytes": {"$bin": "AP8Af4A="}})
    } else {
        json!({"r": room, "i": i})
    }
}

/// Publishes message `i` with `msgId` `m<i>`, retrying `unavailable` / `timeout` (the key
/// makes a retry of an applied publish a duplicate at the same offset, so message `i` is at
/// offset `i`).
async fn publish_retrying(c: &mut Client, room: &str, r: usize, i: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = c
            .request(json!({"op": "publish", "room": room, "msgId": format!("m{i}"), "data": payload(r, i)}))
            .await;
        if reply.get("ok").is_some() {
            assert_eq!(reply["ok"]["offset"], json!(i), "{reply}");
            return;
        }
        let code = error_code(&reply);
        assert!(
            (code == "unavailable" || code == "timeout") && tokio::time::Instant::now() < deadline,
            "{reply}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every offset `1..=upto` of the room's epoch is in the archive once, in order, with its
/// payload.
async fn exactly_once(
    archive: &dyn archive::Archive,
    room: &str,
    r: usize,
    epoch: &str,
    upto: u64,
) {
    let all = archived(archive, room, epoch).await;
    let offsets: Vec<u64> = all.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=upto).collect::<Vec<_>>(), "room {room}");
    for p in &all {
        let got: Value = serde_json::from_str(p.data.as_json()).unwrap();
        assert_eq!(got, payload(r, p.offset), "room {room} offset {}", p.offset);
    }
}

/// Two gateway processes archiving into PostgreSQL, a publisher on each (three rooms between
/// them), the server restarted (`pg_ctl restart -m fast`: every connection dropped) a second
/// into four seconds of load; then, once the archive has caught up and the nodes report a
/// lag of 0, every acknowledged (room, offset) is there exactly once.
#[tokio::test]
async fn serial_a_postgres_restart_under_load_loses_nothing() {
    let (Ok(_), Ok(pg), Ok(restart)) = (
        std::env::var("ROOMCAST_TEST_REDIS_CLUSTER"),
        std::env::var("ROOMCAST_TEST_POSTGRES"),
        std::env::var("ROOMCAST_TEST_POSTGRES_RESTART"),
    ) else {
        println!(
            "skipped: needs ROOMCAST_TEST_REDIS_CLUSTER, ROOMCAST_TEST_POSTGRES and \
             ROOMCAST_TEST_POSTGRES_RESTART"
        );
        return;
    };
    let gateways = cluster_gateways::<2>(
        "ROOMCAST_TEST_REDIS_CLUSTER",
        "pgrestart",
        &[
            "--archive",
            &pg,
            "--publish-rate",
            "10000",
            "--publish-burst",
            "10000",
        ],
    )
    .await;
    let rooms: Vec<String> = (0..3).map(|r| unique(&format!("restart{r}"))).collect();
    let mut clients = Vec::new();
    let mut epochs = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        let mut c = Client::connect(gateways[r % 2].addr, &unique("pub"), Fmt::Json).await;
        let created = c
            .ok(json!({"op": "create_room", "room": room, "options": {"historySize": 10}}))
            .await;
        epochs.push(created["epoch"].as_str().unwrap().to_string());
        clients.push(c);
    }
    let started = tokio::time::Instant::now();
    let mut restarting: Option<tokio::task::JoinHandle<std::process::ExitStatus>> = None;
    let mut acked = vec![0u64; rooms.len()];
    // Four seconds, and at least half a second past the restart's end.
    let mut restarted_at = None;
    while started.elapsed() < Duration::from_secs(4)
        || restarted_at
            .is_none_or(|t: tokio::time::Instant| t.elapsed() < Duration::from_millis(500))
    {
        if restarted_at.is_none() && restarting.as_ref().is_some_and(|r| r.is_finished()) {
            restarted_at = Some(tokio::time::Instant::now());
        }
        if restarting.is_none() && started.elapsed() > Duration::from_secs(1) {
            let restart = restart.clone();
            restarting = Some(tokio::task::spawn_blocking(move || {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&restart)
                    .status()
                    .unwrap()
            }));
        }
        for (r, c) in clients.iter_mut().enumerate() {
            acked[r] += 1;
            publish_retrying(c, &rooms[r], r, acked[r]).await;
        }
    }
    let status = restarting.unwrap().await.unwrap();
    assert!(status.success(), "the restart command failed: {status}");
    let archive = archive::open(&pg).await.unwrap();
    for (r, room) in rooms.iter().enumerate() {
        caught_up(archive.as_ref(), room, &epochs[r], acked[r]).await;
    }
    lag_is_zero(&gateways.iter().map(|g| g.addr).collect::<Vec<_>>()).await;
    for (r, room) in rooms.iter().enumerate() {
        exactly_once(archive.as_ref(), room, r, &epochs[r], acked[r]).await;
    }
    // Drained, not killed: their leases are given up for the next test.
    for g in &gateways {
        g.sigterm();
    }
    for mut g in gateways {
        g.wait();
    }
    eprintln!("archived {acked:?} messages across a PostgreSQL restart");
}

/// The backlog cap on Redis Cluster: a gateway with `--archive-backlog-cap 20` reaches
/// PostgreSQL through a switch; with the switch cut, a room takes 20 messages past what is
/// archived and refuses the 21st `unavailable` (the window still answers); with the switch
/// back, the archiver catches up and the room takes messages again, all archived once.
#[tokio::test]
async fn serial_the_backlog_cap_refuses_while_the_archive_is_down() {
    const CAP: u64 = 20;
    let (Ok(redis), Ok(pg)) = (
        std::env::var("ROOMCAST_TEST_REDIS_CLUSTER"),
        std::env::var("ROOMCAST_TEST_POSTGRES"),
    ) else {
        println!("skipped: needs ROOMCAST_TEST_REDIS_CLUSTER and ROOMCAST_TEST_POSTGRES");
        return;
    };
    let switch = PgSwitch::start(&pg).await;
    let cap = CAP.to_string();
    let node = start(&[
        "--redis-cluster",
        &redis,
        "--archive",
        &switch.url,
        "--archive-backlog-cap",
        &cap,
        "--publish-rate",
        "10000",
        "--publish-burst",
        "10000",
    ])
    .await;
    let direct = archive::open(&pg).await.unwrap();
    let room = unique("capped");
    let mut c = Client::connect(node.addr, &unique("cap"), Fmt::Json).await;
    let created = c
        .ok(json!({"op": "create_room", "room": room, "options": {"historySize": 5}}))
        .await;
    let epoch = created["epoch"].as_str().unwrap().to_string();
    let publish = |i: u64| json!({"op": "publish", "room": room, "data": payload(0, i)});
    // Archived through the switch (the node takes the shard leases first: up to 10 s when a
    // previous test's killed gateway held them).
    for i in 1..=3 {
        c.ok(publish(i)).await;
    }
    caught_up(direct.as_ref(), &room, &epoch, 3).await;
    // The cap counts from the cursor, which moves after the commit.
    cursor_at(&room, 3).await;
    lag_is_zero(&[node.addr]).await;

    switch.cut();
    for i in 4..=3 + CAP {
        let ok = c.ok(publish(i)).await;
        assert_eq!(ok["offset"], json!(i));
    }
    for _ in 0..3 {
        let e = c.err(publish(0)).await;
        assert_eq!(e["code"], "unavailable", "{e}");
    }
    // The room is otherwise fine: its window answers, the backlog is all kept for the archive.
    let h = c
        .ok(json!({"op": "history", "room": room, "before": 4 + CAP, "limit": 5}))
        .await;
    let window: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(window, (CAP - 1..=CAP + 3).collect::<Vec<_>>(), "{h}");
    assert_eq!(direct.high_water(&room, &epoch).await.unwrap(), Some(3));

    switch.restore();
    caught_up(direct.as_ref(), &room, &epoch, 3 + CAP).await;
    cursor_at(&room, 3 + CAP).await;
    let ok = c.ok(publish(4 + CAP)).await;
    assert_eq!(ok["offset"], json!(4 + CAP));
    caught_up(direct.as_ref(), &room, &epoch, 4 + CAP).await;
    lag_is_zero(&[node.addr]).await;
    exactly_once(direct.as_ref(), &room, 0, &epoch, 4 + CAP).await;
    drop(c);
    node.drain().await;
}
