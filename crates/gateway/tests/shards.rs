//! Shard isolation: a primary killed under a steady publish load stalls only the rooms of its
//! own shard. On the failover cluster (`make test` starts it and runs this one at a time).

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;
use tokio::time::Instant;

const VAR: &str = "ROOMCAST_TEST_FAILOVER_CLUSTER";

/// Slot ranges → primary port, from `cluster nodes`.
fn primaries() -> Vec<(u16, u16, u16)> {
    let nodes = redis_cli(base_port(), &["cluster", "nodes"]);
    let mut out = Vec::new();
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        for range in &f[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                out.push((a, b, port(f[1])));
            }
        }
    }
    out
}

/// The primary port that serves `key` now.
fn primary_of(key: &str, ranges: &[(u16, u16, u16)]) -> u16 {
    let slot: u16 = redis_cli(base_port(), &["cluster", "keyslot", key])
        .trim()
        .parse()
        .unwrap();
    ranges
        .iter()
        .find(|(a, b, _)| (*a..=*b).contains(&slot))
        .map(|r| r.2)
        .expect("no primary for slot")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

/// One room per primary, each with its own publisher (whose rate-limit bucket lives on the
/// same shard as the room) and member on one gateway; the primary of room 0's shard is killed.
/// Rooms on the other shards must keep delivering while it fails over.
#[tokio::test]
async fn serial_a_failing_primary_stalls_only_its_own_shard() {
    cluster_settled().await;
    let ranges = primaries();
    let mut ports: Vec<u16> = ranges.iter().map(|r| r.2).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "three primaries: {ranges:?}");
    // A room and a publishing user per primary, both on that primary.
    let mut rooms: Vec<(u16, String, String)> = Vec::new();
    for &p in &ports {
        let room = loop {
            let r = unique("shard");
            if primary_of(&format!("rc:{{r:{r}}}:m"), &ranges) == p {
                break r;
            }
        };
        let user = loop {
            let u = unique("pub");
            if primary_of(&format!("rc:{{l:publish:{u}}}:b"), &ranges) == p {
                break u;
            }
        };
        rooms.push((p, room, user));
    }
    let [gw] = cluster_gateways(
        VAR,
        "s",
        &["--publish-rate", "1000", "--publish-burst", "1000"],
    )
    .await;

    let t0 = Instant::now();
    let secs = 10u64;
    let fault_after = Duration::from_secs(2);
    let stop = t0 + Duration::from_secs(secs);
    let mut publishers = Vec::new();
    let mut members = Vec::new();
    for (_, room, user) in &rooms {
        let mut p = Client::connect(gw.addr, user, Fmt::Json).await;
        p.ok(json!({"op": "create_room", "room": room})).await;
        let mut m = Client::connect(gw.addr, &unique("m"), Fmt::Json).await;
        m.ok(json!({"op": "join", "room": room})).await;
        let room = room.clone();
        // Publishes every 20 ms; the data is the send time (µs since t0).
        publishers.push(tokio::spawn(async move {
            let mut failed = 0u32;
            while Instant::now() < stop {
                let sent = t0.elapsed().as_micros() as u64;
                let reply = p
                    .request(json!({"op": "publish", "room": room, "data": sent}))
                    .await;
                if reply.get("ok").is_none() {
                    failed += 1;
                    eprintln!(
                        "{room}: publish at {:?} failed after {:?}: {}",
                        Duration::from_micros(sent),
                        t0.elapsed().saturating_sub(Duration::from_micros(sent)),
                        reply["error"]
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failed
        }));
        // (sent, arrived) of every message.
        members.push(tokio::spawn(async move {
            let mut got: Vec<(Duration, Duration)> = Vec::new();
            let end = stop + Duration::from_secs(3);
            while Instant::now() < end {
                let next =
                    tokio::time::timeout(Duration::from_millis(200), async { m.recv().await })
                        .await;
                if let Ok(In::Msg(v)) = next {
                    if v["event"] == "message" {
                        if let Some(sent) = v["data"].as_u64() {
                            got.push((Duration::from_micros(sent), t0.elapsed()));
                        }
                    }
                }
            }
            got
        }));
    }

    tokio::time::sleep_until(t0 + fault_after).await;
    let victim = rooms[0].0;
    let dir = std::env::var("ROOMCAST_TEST_FAILOVER_DIR").unwrap();
    let pid = std::fs::read_to_string(format!("{dir}/{victim}/redis.pid")).unwrap();
    let fault = t0.elapsed();
    let status = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    // Back 4 s later, as a supervisor would: it rejoins as a replica of its replacement.
    let reviver = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        revive(victim);
    });

    let mut failures = Vec::new();
    for p in publishers {
        failures.push(p.await.unwrap());
    }
    let mut received = Vec::new();
    for m in members {
        received.push(m.await.unwrap());
    }
    reviver.join().unwrap();
    drop(gw);

    // The failover window: from the kill until the replica has surely taken over.
    let window = fault..fault + Duration::from_secs(6);
    let mut before = Vec::new();
    let mut during = Vec::new();
    let mut quiet = Vec::new();
    for (i, ((p, room, _), got)) in rooms.iter().zip(&received).enumerate() {
        let mut gap = Duration::ZERO;
        let mut prev = fault;
        for (_, arrived) in got.iter().filter(|(_, a)| *a > fault) {
            gap = gap.max(arrived.saturating_sub(prev));
            prev = *arrived;
        }
        let early = fault + Duration::from_millis(500)..fault + Duration::from_millis(2500);
        let in_early = got
            .iter()
            .filter(|(s, a)| *s >= fault && early.contains(a))
            .count();
        eprintln!(
            "room {i} on :{p}{}: {} delivered, {} publishes failed, {in_early} delivered 0.5-2.5 s after the kill, longest gap after the kill {gap:?}",
            if i == 0 { " (killed)" } else { "" },
            got.len(),
            failures[i],
        );
        if i == 0 {
            continue;
        }
        for (sent, arrived) in got {
            let latency = arrived.saturating_sub(*sent);
            if *sent < fault {
                before.push(latency);
            } else if window.contains(sent) {
                during.push(latency);
            }
        }
        if in_early == 0 {
            quiet.push(format!("{room} on :{p}"));
        }
    }
    before.sort();
    during.sort();
    eprintln!(
        "healthy shards, delivery latency before the kill: p50 {:?} p99 {:?} ({} msgs); during the failover: p50 {:?} p99 {:?} max {:?} ({} msgs)",
        percentile(&before, 0.5),
        percentile(&before, 0.99),
        before.len(),
        percentile(&during, 0.5),
        percentile(&during, 0.99),
        during.last().copied().unwrap_or_default(),
        during.len(),
    );
    assert!(
        quiet.is_empty(),
        "rooms on healthy primaries went quiet while :{victim} failed over: {quiet:?}"
    );
}
