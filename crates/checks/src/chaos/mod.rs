//! `chaos`: a checked fan-out load that survives faults, for `make chaos`
//! (`deploy/local/chaos.sh`).
//!
//! `--rooms` × `--members` clients, `--publishers` of them publishing at an open-loop total
//! `--rate` (publisher `p` is member `p / rooms` of room `p % rooms`, as in the load
//! generator's `fanout`). Every client lives through disconnections: when its socket ends
//! (a killed node, a drain's `reconnect` event and close 1012, an error), it reconnects through
//! `--url` with a backoff and re-joins its room with `since` = the last offset and epoch it saw,
//! then goes on checking. Publishers reconnect too and keep their schedule; slots that fall in a
//! disconnection are skipped, not sent late. Each message carries its own `msgId`; one answered
//! `unavailable` or `timeout`, or left unanswered by a connection that ended, is sent again
//! with the same `msgId` (bounded, publish.rs), so an acknowledged message (a first `ok` or a
//! `duplicate: true` one) has a single identity and offset.
//!
//! Every client checks every delivery two ways:
//! - offsets: within an epoch, each `message` (live or recovered through `missed`) must carry the
//!   last offset + 1; a new epoch (live, or `recovered: false` on a re-join) is recorded, since it
//!   means the room's history was lost;
//! - content: each (publisher, seq) at most once (duplicates), and per publisher in increasing
//!   seq (out of order).
//!
//! At the end, a message is *lost* for a client when its publish got an `ok` reply, it was sent
//! after the client first joined, and the client never got it. Loss behind an epoch change the
//! client saw is reported apart from silent loss. A *divergence* is a position (room, epoch,
//! offset) that two members, or a member and an acknowledgement, fill with different messages,
//! or an acknowledged offset where members did not get the message (diverge.rs).
//!
//! `--readyz URL,…` polls `GET /readyz` of each gateway every 150 ms and records each change of
//! answer. The run publishes until `--stop-file` exists (or `--secs` passed), waits
//! [`GRACE_SECS`] for stragglers, and writes everything, with wall-clock times (Unix ms), to
//! `--json`, for `deploy/local/chaos_report.py` to set against the injected faults.

mod client;
mod diverge;
mod positions;
mod publish;
mod readyz;
mod record;
mod settle;

use anyhow::{bail, Result};
use client::Client;
use readyz::{ReadyzLog, READYZ_EVERY};
use roomcast_loadtest::now_us;
use roomcast_loadtest::proto::Protocol;
use serde_json::json;
use settle::Summary;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Seconds of listening after publishing stopped, for late and repaired deliveries.
pub const GRACE_SECS: u64 = 6;
/// Rooms keep this many messages (the gateway's default `--max-history-size`), so that a
/// client away for tens of seconds can still recover everything with `since`.
const HISTORY: u64 = 1000;
/// A silence between two deliveries at one client at least this long is recorded.
const GAP_MS: u64 = 250;
/// At most this many missing messages are listed per client (all are counted).
const LIST_CAP: usize = 5000;

/// Run phases, broadcast to every task.
const SETUP: u8 = 0;
const RUN: u8 = 1;
const DRAIN: u8 = 2; // publishing stopped, still listening
const END: u8 = 3;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Base URLs (`ws://host:port`: a load balancer, or gateways), comma separated; clients go
    /// round-robin, and a reconnecting client goes to the next one.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080")]
    pub url: Vec<String>,
    /// json or msgpack (the native protocol; Socket.IO has no `since`).
    #[arg(long, value_enum, default_value = "json")]
    pub protocol: Protocol,
    /// HS256 secret to mint one token per client (the gateways' --jwt-secret).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Members per room (publishers included).
    #[arg(long, default_value_t = 10)]
    pub members: u64,
    /// Publishers, spread over the rooms.
    #[arg(long, default_value_t = 10)]
    pub publishers: u64,
    /// Total publish rate (messages per second, all publishers).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Publish for at most this long (unless --stop-file appears first).
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Padding bytes in each published payload.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Seconds allowed to connect everyone before publishing starts (default: 3 + clients / 1500).
    #[arg(long)]
    pub setup_secs: Option<f64>,
    /// Gateway base URLs (`http://host:port`) whose /readyz is polled every 150 ms.
    #[arg(long, value_delimiter = ',')]
    pub readyz: Vec<String>,
    /// Publish until this file exists (or --secs passed).
    #[arg(long)]
    pub stop_file: Option<String>,
    /// Write the whole record as JSON to this file.
    #[arg(long)]
    pub json: Option<String>,
}

impl Args {
    fn setup_secs(&self) -> f64 {
        self.setup_secs
            .unwrap_or(3.0 + (self.rooms * self.members) as f64 / 1500.0)
    }

    fn stop_file_exists(&self) -> bool {
        self.stop_file
            .as_deref()
            .is_some_and(|f| std::path::Path::new(f).exists())
    }
}

fn now_ms() -> u64 {
    now_us() / 1000
}

/// A tokio deadline for a wall-clock time in Unix ms (at most a day ahead).
fn at_ms(ms: u64) -> tokio::time::Instant {
    let ahead = ms.saturating_sub(now_ms()).min(86_400_000);
    tokio::time::Instant::now() + Duration::from_millis(ahead)
}

/// What every client task shares.
pub struct Ctx {
    s: Args,
    run_id: String,
    start_ms: u64,
    phase: watch::Receiver<u8>,
}

impl Ctx {
    fn room(&self, r: u64) -> String {
        format!("chaos-{}-{r}", self.run_id)
    }

    /// Publisher `p` is member `p / rooms` of room `p % rooms` (as in `fanout`).
    fn publisher_of(&self, g: u64) -> Option<u64> {
        let (r, m) = (g / self.s.members, g % self.s.members);
        let p = m * self.s.rooms + r;
        (p < self.s.publishers).then_some(p)
    }

    fn interval_ms(&self) -> f64 {
        1000.0 * self.s.publishers as f64 / self.s.rate.max(1e-9)
    }

    /// Unix ms of publisher `p`'s `k`-th slot.
    fn slot_ms(&self, p: u64, k: u64) -> u64 {
        let iv = self.interval_ms();
        let offset = iv * p as f64 / self.s.publishers as f64;
        self.start_ms + (offset + k as f64 * iv) as u64
    }

    fn phase(&self) -> u8 {
        *self.phase.borrow()
    }
}

/// When publishing ended and when the run ended (Unix ms).
struct Times {
    publish_end_ms: u64,
    end_ms: u64,
}

/// What the run found, besides each client's own log.
struct Record {
    times: Times,
    summary: Summary,
    found: diverge::Found,
    readyz: BTreeMap<String, ReadyzLog>,
}

/// Runs the load, prints a summary and writes `--json`.
pub async fn run(args: Args) -> Result<()> {
    if args.protocol == Protocol::Socketio {
        bail!("chaos speaks the native protocol only (json or msgpack)");
    }
    if args.rooms == 0 || args.members == 0 || args.publishers == 0 || args.url.is_empty() {
        bail!("chaos needs rooms, members, publishers and a url");
    }
    let s = Args {
        publishers: args.publishers.min(args.rooms * args.members),
        ..args
    };
    let start_ms = now_ms() + (s.setup_secs() * 1000.0) as u64;
    let (phase_tx, phase_rx) = watch::channel(SETUP);
    let ctx = Arc::new(Ctx {
        s,
        run_id: format!("{:08x}", fastrand::u32(..)),
        start_ms,
        phase: phase_rx.clone(),
    });
    let pollers: Vec<(String, JoinHandle<ReadyzLog>)> = (ctx.s.readyz.iter())
        .map(|u| {
            (
                u.clone(),
                tokio::spawn(readyz::poll(u.clone(), phase_rx.clone())),
            )
        })
        .collect();
    let tasks = start_clients(&ctx);
    let times = clock(&ctx, &phase_tx).await;
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await?);
    }
    let mut readyz = BTreeMap::new();
    for (u, t) in pollers {
        readyz.insert(u, t.await?);
    }
    let (summary, mut found) = settle::settle(&mut clients);
    print(&summary, &readyz, start_ms);
    found.divergences.truncate(LIST_CAP);
    found.behind_epoch_change.truncate(LIST_CAP);
    let record = Record {
        times,
        summary,
        found,
        readyz,
    };
    match &ctx.s.json {
        Some(path) => write_json(path, &ctx, record, clients),
        None => Ok(()),
    }
}

/// Starts every client, 5 ms apart, member 0 of each room first (it creates the room).
fn start_clients(ctx: &Arc<Ctx>) -> Vec<JoinHandle<Client>> {
    let (total, members) = (ctx.s.rooms * ctx.s.members, ctx.s.members);
    let mut order: Vec<u64> = (0..total).filter(|g| g % members == 0).collect();
    order.extend((0..total).filter(|g| g % members != 0));
    order
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let client = Client::new(ctx.clone(), g);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i as u64 * 5)).await;
                client.run().await
            })
        })
        .collect()
}

/// The run's phases: publish from the start until the stop file or `--secs`, then listen
/// [`GRACE_SECS`] more, then end.
async fn clock(ctx: &Ctx, phase: &watch::Sender<u8>) -> Times {
    tokio::time::sleep_until(at_ms(ctx.start_ms)).await;
    let _ = phase.send(RUN);
    let publish_until = ctx.start_ms + (ctx.s.secs * 1000.0) as u64;
    while now_ms() < publish_until && !ctx.s.stop_file_exists() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publish_end_ms = now_ms();
    let _ = phase.send(DRAIN);
    tokio::time::sleep(Duration::from_secs(GRACE_SECS)).await;
    let _ = phase.send(END);
    Times {
        publish_end_ms,
        end_ms: now_ms(),
    }
}

fn print(summary: &Summary, readyz: &BTreeMap<String, ReadyzLog>, start_ms: u64) {
    let s = summary;
    println!(
        "chaos: {} clients ({} joined at start), {} reconnects, {} failed attempts, failed to reconnect {:?}",
        s.clients, s.joined_at_start, s.reconnects, s.failed_attempts, s.failed_to_reconnect
    );
    println!(
        "  publishes: sent {} (attempts {}, retries {}) acked {} (duplicate acks {}) answers timeout {} unavailable {}; failed {} (delivered anyway {}, of them answered only \"not applied\" {}) unanswered {} (delivered anyway {})",
        s.sent, s.attempts, s.retries, s.acked, s.duplicate_acks, s.timeouts, s.unavailable, s.failed, s.failed_but_delivered, s.not_applied_but_delivered, s.unanswered, s.unanswered_but_delivered
    );
    println!(
        "  deliveries {}: lost {} (silently {}, behind an epoch change {}; acked but reached no member {}) duplicates delivered {} out of order {} (retries landing after newer messages {}) divergences {} (acked where members hold another message, behind an epoch change they saw: {}) offset anomalies {} epoch changes {}",
        s.delivered, s.lost, s.lost_silently, s.lost_behind_epoch_change, s.lost_everywhere, s.duplicates, s.out_of_order, s.reordered_by_retry, s.divergences, s.divergences_behind_epoch_change, s.offset_anomalies, s.epoch_changes
    );
    for (u, r) in readyz {
        let changes: Vec<String> = r
            .changes
            .iter()
            .map(|(ms, a)| format!("{:+.1}s {a}", (*ms as f64 - start_ms as f64) / 1000.0))
            .collect();
        println!(
            "  readyz {u}: {} polls, max gap {} ms: {}",
            r.polls,
            r.max_poll_gap_ms,
            changes.join(", ")
        );
    }
}

/// The record for deploy/local/chaos_report.py.
fn write_json(path: &str, ctx: &Ctx, record: Record, clients: Vec<Client>) -> Result<()> {
    let s = &ctx.s;
    let (logs, pubs): (Vec<_>, Vec<_>) = clients.into_iter().map(|c| (c.log, c.publog)).unzip();
    let pubs: Vec<_> = pubs.into_iter().flatten().collect();
    let doc = json!({
        "scenario": "chaos",
        "settings": {
            "urls": s.url, "protocol": format!("{:?}", s.protocol).to_lowercase(),
            "rooms": s.rooms, "members": s.members, "publishers": s.publishers,
            "rate": s.rate, "payload": s.payload, "history": HISTORY, "gap_ms": GAP_MS,
            "readyz_every_ms": READYZ_EVERY.as_millis() as u64, "grace_secs": GRACE_SECS,
            "max_tries": publish::MAX_TRIES, "retry_within_ms": publish::RETRY_WITHIN_MS,
        },
        "run_id": ctx.run_id,
        "rooms": (0..s.rooms).map(|r| ctx.room(r)).collect::<Vec<_>>(),
        "start_ms": ctx.start_ms,
        "publish_end_ms": record.times.publish_end_ms,
        "end_ms": record.times.end_ms,
        "summary": record.summary,
        "divergences": record.found.divergences,
        "divergences_behind_epoch_change": record.found.behind_epoch_change,
        "clients": logs,
        "publishers": pubs,
        "readyz": record.readyz,
    });
    std::fs::write(path, serde_json::to_string(&doc)?)?;
    Ok(())
}
