//! Redis failovers under a steady publish load, on a cluster of their own (`make test` starts
//! it and runs these one at a time). Every test counts, per member, what was acknowledged
//! and what arrived.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use support::*;
use tokio::time::Instant;

const VAR: &str = "ROOMCAST_TEST_FAILOVER_CLUSTER";

/// The (primary, replica) ports that serve a key's slot right now.
fn shard_of(key: &str) -> (u16, u16) {
    let base = base_port();
    let slot: u16 = redis_cli(base, &["cluster", "keyslot", key])
        .trim()
        .parse()
        .unwrap();
    let nodes = redis_cli(base, &["cluster", "nodes"]);
    let mut primary = None;
    for line in nodes.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f[2].contains("master") || f[2].contains("fail") {
            continue;
        }
        for range in &f[8..] {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                if (a..=b).contains(&slot) {
                    primary = Some((f[0].to_string(), port(f[1])));
                }
            }
        }
    }
    let (id, pport) = primary.expect("no primary for slot");
    let replica = nodes
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f[3] == id && !f[2].contains("fail"))
        .map(|f| port(f[1]))
        .expect("no replica");
    (pport, replica)
}

struct Received {
    /// (epoch, offset, data, arrival)
    messages: Vec<(String, u64, Value, Instant)>,
}

/// Reads `message` events until `stop`.
fn collect(mut c: Client, stop: Instant) -> tokio::task::JoinHandle<Received> {
    tokio::spawn(async move {
        let mut messages = Vec::new();
        while Instant::now() < stop {
            let next =
                tokio::time::timeout(Duration::from_millis(200), async { c.recv().await }).await;
            if let Ok(In::Msg(m)) = next {
                if m["event"] == "message" {
                    messages.push((
                        m["epoch"].as_str().unwrap().to_string(),
                        m["offset"].as_u64().unwrap(),
                        m["data"].clone(),
                        Instant::now(),
                    ));
                }
            }
        }
        Received { messages }
    })
}

struct Run {
    acked: Vec<(String, u64, Value)>,
    members: Vec<Received>,
    fault_at: Instant,
}

/// Two gateways, one room, a member on each, a publisher at ~50/s for `secs`; `fault` runs
/// after one second.
async fn under_load(extra: &[&str], secs: u64, fault: impl FnOnce(&str)) -> Run {
    cluster_settled().await;
    let mut args = vec!["--publish-rate", "1000", "--publish-burst", "1000"];
    args.extend_from_slice(extra);
    let [a, b] = cluster_gateways(VAR, "f", &args).await;
    let room = unique("failover");
    let mut publisher = Client::connect(a.addr, "publisher", Fmt::Json).await;
    publisher
        .ok(json!({"op": "create_room", "room": room}))
        .await;
    let mut m1 = Client::connect(a.addr, "m1", Fmt::Json).await;
    let mut m2 = Client::connect(b.addr, "m2", Fmt::MsgPack).await;
    m1.ok(json!({"op": "join", "room": room})).await;
    m2.ok(json!({"op": "join", "room": room})).await;
    let stop = Instant::now() + Duration::from_secs(secs + 4);
    let readers = [collect(m1, stop), collect(m2, stop)];

    let start = Instant::now();
    let mut acked = Vec::new();
    let mut fault = Some(fault);
    let mut fault_at = start;
    let mut i = 0u64;
    let mut errors: Vec<(Duration, String)> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        if fault.is_some() && start.elapsed() >= Duration::from_secs(1) {
            fault_at = Instant::now();
            (fault.take().unwrap())(&format!("rc:{{r:{room}}}:m"));
        }
        i += 1;
        let reply = publisher
            .request(json!({"op": "publish", "room": room, "data": i}))
            .await;
        if let Some(ok) = reply.get("ok") {
            acked.push((String::new(), ok["offset"].as_u64().unwrap(), json!(i)));
        } else {
            errors.push((
                start.elapsed(),
                format!(
                    "{}: {}",
                    reply["error"]["code"].as_str().unwrap_or("?"),
                    reply["error"]["message"].as_str().unwrap_or("?")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let (Some(first), Some(last)) = (errors.first(), errors.last()) {
        let mut codes: Vec<&str> = errors.iter().map(|e| e.1.as_str()).collect();
        codes.dedup();
        eprintln!(
            "{} publishes failed, from {:?} to {:?} ({codes:?})",
            errors.len(),
            first.0,
            last.0
        );
    }
    // The publisher's own copies tell the epoch of each acknowledged publish.
    let mut epochs: HashMap<u64, Vec<(String, Value)>> = HashMap::new();
    for m in publisher.backlog.iter().filter(|m| m["event"] == "message") {
        epochs
            .entry(m["offset"].as_u64().unwrap())
            .or_default()
            .push((m["epoch"].as_str().unwrap().to_string(), m["data"].clone()));
    }
    for (epoch, offset, data) in acked.iter_mut() {
        if let Some(seen) = epochs
            .get(offset)
            .and_then(|v| v.iter().find(|(_, d)| d == data))
        {
            *epoch = seen.0.clone();
        }
    }
    let mut members = Vec::new();
    for r in readers {
        members.push(r.await.unwrap());
    }
    drop((a, b));
    Run {
        acked,
        members,
        fault_at,
    }
}

/// The longest silence at a member after the fault, between consecutive deliveries.
fn resume_time(r: &Received, fault_at: Instant) -> Duration {
    let times: Vec<Instant> = r.messages.iter().map(|m| m.3).collect();
    let before = times
        .iter()
        .filter(|t| **t <= fault_at)
        .max()
        .copied()
        .unwrap_or(fault_at);
    let mut worst = Duration::ZERO;
    let mut prev = before;
    for t in times.iter().filter(|t| **t > fault_at) {
        worst = worst.max(t.duration_since(prev));
        prev = *t;
    }
    worst
}

/// Per member: no duplicates, no reused (epoch, offset), gapless within an epoch.
fn check_consistency(r: &Received) {
    let mut seen: HashMap<(String, u64), Value> = HashMap::new();
    let mut last: Option<(String, u64)> = None;
    for (epoch, offset, data, _) in &r.messages {
        if let Some(prev) = seen.insert((epoch.clone(), *offset), data.clone()) {
            panic!("offset {offset} of epoch {epoch} delivered twice: {prev} then {data}");
        }
        if let Some((le, lo)) = &last {
            if le == epoch {
                assert_eq!(*offset, lo + 1, "gap or reorder in epoch {epoch}");
            }
        }
        last = Some((epoch.clone(), *offset));
    }
}

/// A member's deliveries, checked for consistency: the data it received, and the
/// acknowledged publishes it never received.
fn delivery<'a>(run: &'a Run, member: &Received) -> (Vec<Value>, Vec<&'a Value>) {
    check_consistency(member);
    let got: Vec<Value> = member.messages.iter().map(|m| m.2.clone()).collect();
    let missing = run
        .acked
        .iter()
        .map(|a| &a.2)
        .filter(|d| !got.contains(d))
        .collect();
    (got, missing)
}

#[tokio::test]
async fn serial_failover_graceful_loses_nothing() {
    let run = under_load(&[], 6, |key| {
        let (_, replica) = shard_of(key);
        let out = redis_cli(replica, &["cluster", "failover"]);
        assert!(out.contains("OK"), "{out}");
    })
    .await;
    assert!(
        run.acked.len() > 100,
        "too few publishes: {}",
        run.acked.len()
    );
    for (i, member) in run.members.iter().enumerate() {
        let (got, missing) = delivery(&run, member);
        assert!(
            missing.is_empty(),
            "member {i} lost {} acknowledged messages: {missing:?}",
            missing.len()
        );
        let resumed = resume_time(member, run.fault_at);
        eprintln!("graceful failover: member {i} got {} of {} acked; longest pause after the fault {resumed:?}", got.len(), run.acked.len());
        assert!(
            resumed < Duration::from_secs(5),
            "delivery paused {resumed:?}"
        );
    }
}

fn kill_primary(key: &str) {
    let (primary, _) = shard_of(key);
    let dir = std::env::var("ROOMCAST_TEST_FAILOVER_DIR").unwrap();
    let pid = std::fs::read_to_string(format!("{dir}/{primary}/redis.pid")).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(status.success());
    // Bring it back 4 s later, as a supervisor would: it rejoins as a replica of the node that
    // replaced it, so durable publishes have a replica to wait for again.
    std::fs::write(format!("{dir}/killed"), primary.to_string()).unwrap();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(4));
        revive_killed();
    });
}

fn revive_killed() {
    let dir = std::env::var("ROOMCAST_TEST_FAILOVER_DIR").unwrap();
    let port = std::fs::read_to_string(format!("{dir}/killed")).unwrap();
    revive(port.trim().parse().unwrap());
}

#[tokio::test]
async fn serial_failover_primary_killed_durable_loses_nothing() {
    let run = under_load(&["--durable-publish"], 9, kill_primary).await;
    revive_killed();
    assert!(
        run.acked.len() > 30,
        "too few publishes: {}",
        run.acked.len()
    );
    for (i, member) in run.members.iter().enumerate() {
        let (got, missing) = delivery(&run, member);
        let resumed = resume_time(member, run.fault_at);
        eprintln!("primary killed, durable: member {i} got {} of {} acked, {} lost; longest pause {resumed:?}", got.len(), run.acked.len(), missing.len());
        assert!(
            missing.is_empty(),
            "member {i} lost acknowledged messages: {missing:?}"
        );
        // Promotion takes cluster-node-timeout (2 s) plus the election; 5 s after that.
        assert!(
            resumed < Duration::from_secs(9),
            "delivery paused {resumed:?}"
        );
    }
    cluster_settled().await;
}

#[tokio::test]
async fn serial_failover_primary_killed_never_skips_silently() {
    let run = under_load(&[], 9, kill_primary).await;
    revive_killed();
    for (i, member) in run.members.iter().enumerate() {
        let (got, _) = delivery(&run, member);
        let epochs: Vec<&String> = member.messages.iter().map(|m| &m.0).collect();
        let final_epoch = epochs.last().cloned();
        let mut explained = 0;
        for (epoch, _, data) in &run.acked {
            if got.contains(data) {
                continue;
            }
            // A lost message must be announced: the member moved on to a new epoch.
            assert!(
                final_epoch.is_some_and(|e| e != epoch),
                "member {i} silently lost {data} (epoch {epoch})"
            );
            explained += 1;
        }
        let resumed = resume_time(member, run.fault_at);
        eprintln!("primary killed, async: member {i} got {} of {} acked, {explained} lost behind an epoch change; longest pause {resumed:?}", got.len(), run.acked.len());
        assert!(
            resumed < Duration::from_secs(9),
            "delivery paused {resumed:?}"
        );
    }
    cluster_settled().await;
}

/// Room creations per minute as a node sees them (cluster-wide).
async fn creations_per_minute(addr: std::net::SocketAddr) -> u64 {
    let (_, text) = http(addr, "GET", "/metrics", None, "").await;
    text.lines()
        .find_map(|l| l.strip_prefix("roomcast_room_creations_per_minute "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn serial_traffic_levels_move_together_on_every_node() {
    cluster_settled().await;
    let urls = redis_urls(VAR);
    // The window is cluster-wide: count what earlier tests created in the last minute.
    let probe = Gateway::spawn(
        &unique("probe"),
        &[
            "--redis-cluster",
            urls.as_str(),
            "--traffic-interval",
            "200ms",
        ],
    );
    probe.ready().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = creations_per_minute(probe.addr).await;
    drop(probe);
    let (high, critical) = ((base + 3).to_string(), (base + 6).to_string());
    let args = [
        "--traffic-high",
        &high,
        "--traffic-critical",
        &critical,
        "--traffic-cap",
        "100000",
        "--room-create-limit",
        "1000",
    ];
    let nodes: [Gateway; 3] = cluster_gateways(VAR, "t", &args).await;
    let mut maker = Client::connect(nodes[0].addr, &unique("maker"), Fmt::Json).await;
    let mut w1 = Client::connect(nodes[1].addr, "w1", Fmt::Json).await;
    let mut w2 = Client::connect(nodes[2].addr, "w2", Fmt::MsgPack).await;
    // Create until node 0 itself refuses: that is the moment the level became critical.
    let mut crossed = None;
    for _ in 0..20 {
        let reply = maker.request(json!({"op": "create_room"})).await;
        if reply.get("error").is_some() {
            assert_eq!(reply["error"]["code"], "creation_paused", "{reply}");
            break;
        }
        crossed = Some(Instant::now());
    }
    let crossed = crossed.unwrap();
    for (name, w) in [("node 1", &mut w1), ("node 2", &mut w2)] {
        loop {
            let s = w.event("traffic_status").await;
            if s["level"] == "critical" {
                assert_eq!(s["roomCreationEnabled"], false);
                let took = crossed.elapsed();
                eprintln!(
                    "{name} heard `critical` {took:?} after the creation that crossed the line"
                );
                assert!(took < Duration::from_secs(2), "{name} took {took:?}");
                break;
            }
        }
    }
    // Every node now refuses creation and reports the same level.
    for n in &nodes {
        let (_, status) = http_json(n.addr, "GET", "/status", None, "").await;
        assert_eq!(
            (
                status["level"].clone(),
                status["roomCreationEnabled"].clone()
            ),
            (json!("critical"), json!(false))
        );
    }
    assert_eq!(
        w2.err(json!({"op": "create_room"})).await["code"],
        "creation_paused"
    );
}

#[tokio::test]
async fn serial_lost_room_state_starts_a_new_epoch() {
    cluster_settled().await;
    let urls = redis_urls(VAR);
    let node = Gateway::spawn(&unique("epoch"), &["--redis-cluster", urls.as_str()]);
    node.ready().await;
    let room = unique("evicted");
    let mut a = Client::connect(node.addr, "a", Fmt::Json).await;
    let created = a.ok(json!({"op": "create_room", "room": room})).await;
    for i in 0..3 {
        a.ok(json!({"op": "publish", "room": room, "data": i}))
            .await;
    }
    // The meta hash is lost (eviction, flush); members remain.
    let out = redis_cli(base_port(), &["-c", "del", &format!("rc:{{r:{room}}}:m")]);
    assert!(out.contains('1'), "{out}");
    let p = a
        .ok(json!({"op": "publish", "room": room, "data": "after"}))
        .await;
    assert_eq!(p["offset"], 1, "offsets restart in a new epoch");
    let m = loop {
        let m = a.event("message").await;
        if m["data"] == "after" {
            break m;
        }
    };
    assert_ne!(m["epoch"], created["epoch"]);
    // A client that recovers from the old epoch is told so; it never gets wrong data.
    let mut b = Client::connect(node.addr, "b", Fmt::Json).await;
    let j = b
        .ok(json!({"op": "join", "room": room, "since": {"offset": 3, "epoch": created["epoch"]}}))
        .await;
    assert_eq!(
        (j["recovered"].clone(), j["missed"].clone()),
        (json!(false), json!([]))
    );
    assert_eq!(j["epoch"], m["epoch"]);
}

/// `redis-cli -c` against the cluster (follows MOVED to the slot's owner).
fn redis_cluster_cli(args: &[&str]) -> String {
    let mut all = vec!["-c"];
    all.extend_from_slice(args);
    redis_cli(base_port(), &all)
}

/// A room with a member on a second gateway that has received offsets 1..=3. Returns the
/// gateways (kept alive), the publisher, the member and the room.
async fn room_with_three(prefix: &str) -> ([Gateway; 2], Client, Client, String) {
    cluster_settled().await;
    let gateways = cluster_gateways(VAR, prefix, &[]).await;
    let room = unique("owner");
    // A user of its own: room creations are rate limited per user.
    let user = unique("creator");
    let mut publisher = Client::connect(gateways[0].addr, &user, Fmt::Json).await;
    publisher
        .ok(json!({"op": "create_room", "room": room}))
        .await;
    let mut member = Client::connect(gateways[1].addr, "member", Fmt::Json).await;
    member.ok(json!({"op": "join", "room": room})).await;
    for i in 1..=3 {
        publisher
            .ok(json!({"op": "publish", "room": room, "data": i}))
            .await;
    }
    for offset in 1..=3u64 {
        let m = member.event("message").await;
        assert_eq!(m["offset"], json!(offset), "{m}");
    }
    (gateways, publisher, member, room)
}

/// A graceful failover of the room's shard; waits until the cluster has settled.
async fn fail_over(room: &str) {
    let (_, replica) = shard_of(&format!("rc:{{r:{room}}}:m"));
    let out = redis_cli(replica, &["cluster", "failover"]);
    assert!(out.contains("OK"), "{out}");
    cluster_settled().await;
}

/// The next `message` event within `within`, if any. Waits in short steps: `Client::recv`
/// gives up (panics) after 5 s of silence.
async fn next_message(c: &mut Client, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let step = tokio::time::timeout(Duration::from_millis(500), c.event("message"));
        if let Ok(m) = step.await {
            return Some(m);
        }
    }
    None
}

/// A message the node never received over pub/sub (written straight into the room's
/// history) reaches the member once the shard changes owner, without any later publish.
#[tokio::test]
async fn serial_owner_change_delivers_what_the_node_missed() {
    let (_gateways, mut publisher, mut member, room) = room_with_three("o").await;
    let meta = format!("rc:{{r:{room}}}:m");
    let hist = format!("rc:{{r:{room}}}:h");
    assert_eq!(
        redis_cluster_cli(&["hincrby", &meta, "offset", "1"]).trim(),
        "4"
    );
    let ts = protocol::clock::now_ms().to_string();
    let id = redis_cluster_cli(&["xadd", &hist, "4-0", "f", "ghost", "d", "4000", "t", &ts]);
    assert_eq!(id.trim(), "4-0");
    fail_over(&room).await;
    let m = next_message(&mut member, Duration::from_secs(10))
        .await
        .expect("offset 4 never reached the member after the owner changed");
    assert_eq!(
        (m["offset"].clone(), m["data"].clone()),
        (json!(4), json!(4000)),
        "{m}"
    );
    // Live delivery goes on in the same epoch, with no duplicate.
    publisher
        .ok(json!({"op": "publish", "room": room, "data": 5}))
        .await;
    let sent = Instant::now();
    let m5 = next_message(&mut member, Duration::from_secs(20))
        .await
        .expect("offset 5 never arrived");
    eprintln!("offset 5 arrived after {:?}", sent.elapsed());
    assert_eq!(
        (m5["offset"].clone(), m5["epoch"].clone()),
        (json!(5), m["epoch"].clone())
    );
}

/// The new owner holds other content at an offset the node delivered, or lacks it: the
/// epoch is retired, so the member's next message comes in a new epoch.
#[tokio::test]
async fn serial_owner_change_with_rewritten_history_retires_the_epoch() {
    for lacks in [false, true] {
        let (_gateways, mut publisher, mut member, room) = room_with_three("w").await;
        let meta = format!("rc:{{r:{room}}}:m");
        let hist = format!("rc:{{r:{room}}}:h");
        let epoch = redis_cluster_cli(&["hget", &meta, "epoch"])
            .trim()
            .to_string();
        redis_cluster_cli(&["del", &hist]);
        if lacks {
            // The owner's history ends at offset 2: offset 3 was never replicated.
            redis_cluster_cli(&["hset", &meta, "offset", "2"]);
            for o in 1..=2 {
                let id = format!("{o}-0");
                redis_cluster_cli(&["xadd", &hist, &id, "f", "publisher", "d", "0", "t", "1"]);
            }
        } else {
            let ts = protocol::clock::now_ms().to_string();
            redis_cluster_cli(&[
                "xadd",
                &hist,
                "3-0",
                "f",
                "ghost",
                "d",
                "\"other\"",
                "t",
                &ts,
            ]);
        }
        fail_over(&room).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = redis_cluster_cli(&["hget", &meta, "epoch"])
                .trim()
                .to_string();
            if !now.is_empty() && now != epoch {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "lacks={lacks}: epoch {epoch} never retired after the owner changed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        publisher
            .ok(json!({"op": "publish", "room": room, "data": "after"}))
            .await;
        let m = member.event("message").await;
        assert_eq!(m["data"], json!("after"), "lacks={lacks}: {m}");
        assert_ne!(m["epoch"], json!(epoch), "lacks={lacks}: {m}");
        assert_eq!(m["offset"], json!(1), "lacks={lacks}: {m}");
    }
}

/// Pipelined publishes against primaries whose script caches are empty (as on a fresh
/// cluster, or after a restart): every one is acknowledged, in order, none refused. The node
/// loads its scripts on every primary when it starts; without that, the publishes of one
/// burst all get `NOSCRIPT`, are re-sent each on its own, and the store's order check refuses
/// the ones that land behind a later one.
#[tokio::test]
async fn serial_pipelined_publishes_on_empty_script_caches() {
    let base = base_port();
    for p in base..base + 6 {
        redis_cli(p, &["script", "flush"]);
    }
    let [node] = cluster_gateways(
        VAR,
        "cold",
        &["--publish-rate", "100000", "--publish-burst", "100000"],
    )
    .await;
    let room = unique("cold");
    let mut a = Client::connect(node.addr, &unique("cold-a"), Fmt::Json).await;
    // Rooms on every shard: each burst meets its own primary's cache. Each room is made by
    // its own user (room creation is rate-limited per user) and joined by the publisher.
    let rooms: Vec<String> = (0..6).map(|i| format!("{room}-{i}")).collect();
    for r in &rooms {
        let mut owner = Client::connect(node.addr, &unique("cold-owner"), Fmt::Json).await;
        owner.ok(json!({"op": "create_room", "room": r})).await;
        a.ok(json!({"op": "join", "room": r})).await;
    }
    let n = 48u64;
    for i in 0..n {
        let r = &rooms[(i % 6) as usize];
        a.send(json!({"id": 1000 + i, "op": "publish", "room": r, "data": i}))
            .await;
    }
    let mut answered = 0;
    while answered < n {
        let m = a.recv_msg().await;
        let Some(id) = m["id"].as_u64() else { continue };
        assert_eq!(
            m["ok"]["offset"].as_u64(),
            Some((id - 1000) / 6 + 1),
            "publish {id} refused or out of order: {m}"
        );
        answered += 1;
    }
}
