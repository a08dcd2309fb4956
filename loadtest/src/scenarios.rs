//! The scenarios that are not publishing runs: `connections` (idle clients held open) and
//! `churn` (create, join, publish, leave, reconnect at a rate).

use crate::client::connect;
use crate::engine::{now_us, Plan};
use crate::proto::Incoming;
use crate::stats::Report;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Opens this worker's share of `clients`, each in room `g % rooms`, and holds them until
/// `hold_until_us`, answering pings.
pub async fn connections(plan: Arc<Plan>, clients: u64, hold_until_us: u64) -> Report {
    let mut report = Report {
        scenario: "connections".into(),
        protocol: format!("{:?}", plan.protocol).to_lowercase(),
        ..Report::default()
    };
    let started = std::time::Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::new();
    for g in (0..clients).filter(|g| g % plan.workers == plan.worker) {
        let plan = plan.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let conn = {
                let _permit = sem.acquire().await.ok()?;
                let token = plan.token_for(g);
                let mut conn = connect(
                    plan.url_for(g),
                    plan.protocol,
                    plan.source_for(g),
                    token.as_deref(),
                )
                .await
                .ok()?;
                let room = plan.room(g % plan.rooms);
                let ok = if g < plan.rooms {
                    conn.call("create_room", json!({ "room": room }))
                        .await
                        .ok()?
                        .is_none()
                } else {
                    let mut ok = false;
                    for _ in 0..100 {
                        match conn.call("join", json!({ "room": room })).await.ok()? {
                            None => {
                                ok = true;
                                break;
                            }
                            Some(code) if code == "not_found" => {
                                tokio::time::sleep(Duration::from_millis(100)).await
                            }
                            Some(_) => break,
                        }
                    }
                    ok
                };
                ok.then_some(conn)?
            };
            let connected = std::time::Instant::now();
            let mut conn = conn;
            let stop = tokio::time::Instant::now()
                + Duration::from_micros(hold_until_us.saturating_sub(now_us()));
            while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(stop, conn.stream.next()).await {
                if let Incoming::Ping = conn.protocol.decode(&msg) {
                    if let Some(pong) = conn.protocol.pong() {
                        let _ = conn.sink.send(pong).await;
                    }
                }
            }
            let _ = conn.sink.close().await;
            Some(connected)
        }));
    }
    let mut last_connect = started;
    for t in tasks {
        match t.await {
            Ok(Some(at)) => {
                report.clients += 1;
                last_connect = last_connect.max(at);
            }
            _ => report.connect_failures += 1,
        }
    }
    report.connect_seconds = last_connect.duration_since(started).as_secs_f64();
    report
}

/// Clients that keep creating, joining, publishing, leaving and reconnecting, at `rate` ops
/// per second in total, until `end_us`.
pub async fn churn(plan: Arc<Plan>, clients: u64, rate: f64, end_us: u64) -> Report {
    let mut report = Report {
        scenario: "churn".into(),
        protocol: format!("{:?}", plan.protocol).to_lowercase(),
        ..Report::default()
    };
    let mut tasks = Vec::new();
    let per_client = rate / clients.max(1) as f64;
    for g in (0..clients).filter(|g| g % plan.workers == plan.worker) {
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            let mut r = Report::default();
            let token = plan.token_for(g);
            let interval = Duration::from_secs_f64(1.0 / per_client.max(0.001));
            let mut rooms: Vec<String> = Vec::new();
            let mut made = 0u64;
            let Ok(mut conn) = connect(
                plan.url_for(g),
                plan.protocol,
                plan.source_for(g),
                token.as_deref(),
            )
            .await
            else {
                r.connect_failures += 1;
                return r;
            };
            r.clients += 1;
            // The first clients make the shared rooms that others join at random.
            if g < plan.rooms {
                let _ = conn
                    .call("create_room", json!({ "room": plan.room(g) }))
                    .await;
            }
            tokio::time::sleep(Duration::from_micros(
                plan.start_at_us.saturating_sub(now_us()),
            ))
            .await;
            tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
            while now_us() < end_us {
                let roll = fastrand::u8(..100);
                let (op, result) = if roll < 25 || rooms.is_empty() {
                    made += 1;
                    let room = format!("lt-{}-c{g}-{made}", plan.run_id);
                    let res = conn.call("create_room", json!({ "room": room })).await;
                    if matches!(res, Ok(None)) {
                        rooms.push(room);
                    }
                    ("create_room", res)
                } else if roll < 40 {
                    let room = plan.room(fastrand::u64(..plan.rooms.max(1)));
                    ("join", conn.call("join", json!({ "room": room })).await)
                } else if roll < 70 {
                    let room = &rooms[fastrand::usize(..rooms.len())];
                    (
                        "publish",
                        conn.call(
                            "publish",
                            json!({ "room": room, "data": { "t": now_us() } }),
                        )
                        .await,
                    )
                } else if roll < 90 {
                    let room = rooms.swap_remove(fastrand::usize(..rooms.len()));
                    ("leave", conn.call("leave", json!({ "room": room })).await)
                } else {
                    let _ = conn.sink.close().await;
                    rooms.clear();
                    match connect(
                        plan.url_for(g),
                        plan.protocol,
                        plan.source_for(g),
                        token.as_deref(),
                    )
                    .await
                    {
                        Ok(c) => {
                            conn = c;
                            ("reconnect", Ok(None))
                        }
                        Err(_) => ("reconnect", Ok(Some("connect_failed".to_string()))),
                    }
                };
                *r.ops.entry(op.to_string()).or_default() += 1;
                match result {
                    Ok(None) => {}
                    Ok(Some(code)) => *r.errors.entry(code).or_default() += 1,
                    Err(_) => *r.errors.entry("io".into()).or_default() += 1,
                }
                // Watch the traffic level go by.
                for level in conn.levels.drain(..) {
                    if !r.levels_seen.contains(&level) {
                        r.levels_seen.push(level);
                    }
                }
                tokio::time::sleep(interval).await;
            }
            let _ = conn.sink.close().await;
            r
        }));
    }
    for t in tasks {
        if let Ok(r) = t.await {
            report.merge(&r);
        }
    }
    report.scenario = "churn".into();
    report.elapsed_seconds = end_us.saturating_sub(plan.start_at_us) as f64 / 1e6;
    report
}
