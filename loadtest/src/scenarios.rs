//! The scenarios that are not publishing runs: `connections` (idle clients held open until
//! the parent has measured them) and `churn` (create, join, publish, leave, reconnect at a
//! rate).

use crate::engine::{join_room, Plan};
use crate::stats::Report;
use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use roomcast_loadtest::now_us;
use roomcast_loadtest::proto::Incoming;
use roomcast_loadtest::ws::Conn;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Attempts per `connections` client.
const CONNECT_TRIES: usize = 3;

/// How a `connections` worker tells that its clients are in, and learns when to let go.
pub struct Hold {
    /// Called once every client of this worker has connected or failed, with how many are in.
    pub connected: Box<dyn FnOnce(u64) + Send>,
    /// Turns true (or its sender goes) when the clients may close.
    pub release: watch::Receiver<bool>,
}

/// Opens this worker's share of `clients`, each in room `g % rooms`, tells `hold.connected`,
/// and holds them (reading everything, answering pings) until `hold.release`.
pub async fn connections(plan: Arc<Plan>, clients: u64, hold: Hold) -> Report {
    let mut report = Report {
        scenario: "connections".into(),
        protocol: format!("{:?}", plan.protocol).to_lowercase(),
        ..Report::default()
    };
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mine: Vec<u64> = (0..clients)
        .filter(|g| g % plan.workers == plan.worker)
        .collect();
    let total = mine.len() as u64;
    let (done, ok) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let all_done = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for g in mine {
        let plan = plan.clone();
        let sem = sem.clone();
        let (done, ok, all_done) = (done.clone(), ok.clone(), all_done.clone());
        let release = hold.release.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            // A server slow to accept (thousands of handshakes at once) gets two more tries.
            for _ in 0..CONNECT_TRIES {
                conn = async {
                    let _permit = sem.acquire().await.ok()?;
                    let mut conn = plan.connect(g).await.ok()?;
                    // The first `rooms` clients create the rooms that the others join.
                    join_room(&mut conn, &plan.room(g % plan.rooms), g < plan.rooms)
                        .await
                        .ok()?;
                    Some(conn)
                }
                .await;
                if conn.is_some() {
                    break;
                }
            }
            let connected = Instant::now();
            if conn.is_some() {
                ok.fetch_add(1, Ordering::Relaxed);
            }
            if done.fetch_add(1, Ordering::AcqRel) + 1 == total {
                all_done.notify_one();
            }
            let released = hold_open(conn?, release).await;
            Some((connected, released))
        }));
    }
    if total > 0 {
        all_done.notified().await;
    }
    (hold.connected)(ok.load(Ordering::Relaxed));
    let mut last_connect = started;
    for t in tasks {
        match t.await {
            Ok(Some((at, released))) => {
                report.clients += 1;
                report.dropped_while_held += u64::from(!released);
                last_connect = last_connect.max(at);
            }
            _ => report.connect_failures += 1,
        }
    }
    report.connect_seconds = last_connect.duration_since(started).as_secs_f64();
    report
}

/// Keeps `conn` open until `release`, reading everything and answering pings; then closes
/// it. False if the server closed it first.
async fn hold_open(mut conn: Conn, mut release: watch::Receiver<bool>) -> bool {
    let released = loop {
        tokio::select! {
            msg = conn.stream.next() => match msg {
                Some(Ok(msg)) => {
                    if let Incoming::Ping = conn.protocol.decode(&msg) {
                        if let Some(pong) = conn.protocol.pong() {
                            let _ = conn.sink.send(pong).await;
                        }
                    }
                }
                _ => break false,
            },
            changed = release.changed() => {
                if changed.is_err() || *release.borrow() {
                    break true;
                }
            }
        }
    };
    let _ = conn.sink.close().await;
    released
}

/// Clients that keep creating, joining, publishing, leaving and reconnecting, at `rate` ops
/// per second in total, until `end_us`.
pub async fn churn(plan: Arc<Plan>, clients: u64, rate: f64, end_us: u64) -> Report {
    let mut report = Report {
        scenario: "churn".into(),
        protocol: format!("{:?}", plan.protocol).to_lowercase(),
        ..Report::default()
    };
    let per_client = rate / clients.max(1) as f64;
    let interval = Duration::from_secs_f64(1.0 / per_client.max(0.001));
    let tasks: Vec<_> = (0..clients)
        .filter(|g| g % plan.workers == plan.worker)
        .map(|g| tokio::spawn(churner(plan.clone(), g, interval, end_us)))
        .collect();
    for t in tasks {
        if let Ok(r) = t.await {
            report.merge(&r);
        }
    }
    report.scenario = "churn".into();
    report.elapsed_seconds = end_us.saturating_sub(plan.start_at_us) as f64 / 1e6;
    report
}

/// One churning client: an op every `interval` (from the start, with a random offset) until
/// `end_us`; reports its ops, error codes and the traffic levels it saw.
async fn churner(plan: Arc<Plan>, g: u64, interval: Duration, end_us: u64) -> Report {
    let mut r = Report::default();
    let Ok(mut conn) = plan.connect(g).await else {
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
    let mut rooms = Churned::default();
    while now_us() < end_us {
        let (op, result) = churn_op(&plan, g, &mut conn, &mut rooms).await;
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
}

/// A churner's own rooms (the ones it created and is in), and how many it has made.
#[derive(Default)]
struct Churned {
    rooms: Vec<String>,
    made: u64,
}

/// One random op: 25% create (always when in no room), 15% join a shared room, 30% publish,
/// 20% leave, 10% reconnect. Returns its name and result.
async fn churn_op(
    plan: &Plan,
    g: u64,
    conn: &mut Conn,
    own: &mut Churned,
) -> (&'static str, Result<Option<String>>) {
    let roll = fastrand::u8(..100);
    if roll < 25 || own.rooms.is_empty() {
        own.made += 1;
        let room = format!("lt-{}-c{g}-{}", plan.run_id, own.made);
        let res = conn.call("create_room", json!({ "room": room })).await;
        if matches!(res, Ok(None)) {
            own.rooms.push(room);
        }
        ("create_room", res)
    } else if roll < 40 {
        let room = plan.room(fastrand::u64(..plan.rooms.max(1)));
        ("join", conn.call("join", json!({ "room": room })).await)
    } else if roll < 70 {
        let room = &own.rooms[fastrand::usize(..own.rooms.len())];
        let args = json!({ "room": room, "data": { "t": now_us() } });
        ("publish", conn.call("publish", args).await)
    } else if roll < 90 {
        let room = own.rooms.swap_remove(fastrand::usize(..own.rooms.len()));
        ("leave", conn.call("leave", json!({ "room": room })).await)
    } else {
        let _ = conn.sink.close().await;
        own.rooms.clear();
        match plan.connect(g).await {
            Ok(c) => {
                *conn = c;
                ("reconnect", Ok(None))
            }
            Err(_) => ("reconnect", Ok(Some("connect_failed".to_string()))),
        }
    }
}
