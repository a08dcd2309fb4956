//! Reconnect storm: `--clients` clients, each its own user, (re)connect to one gateway within
//! `--window-secs`. A refused client waits `Retry-After` plus up to as much again (jitter) and
//! tries again, until `--deadline-secs`. Meanwhile a client that was connected before the storm
//! publishes to itself and measures publish→receive latency, `/readyz` is polled, and the
//! gateway's RSS is sampled from /proc.
//!
//! The clients run in `--workers` child processes (one process holds ~19k sockets). A worker
//! prints `CONNECTED {json}` once each of its clients is in (or gave up), holds them until its
//! stdin closes, then prints `REPORT {json}`.

use super::connect::{open_retrying, Admission};
use super::measure::{mib, pcts, pcts_line, RssSampler};
use super::outcome::Outcome;
use super::peer::{peer, OnMessage, Peer};
use super::{dial, lock, pick, Common};
use crate::http;
use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use roomcast_loadtest::workers::{self, WorkerFlags};
use roomcast_loadtest::{histogram, now_us};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Clients in the storm.
    #[arg(long, default_value_t = 3000)]
    pub clients: u64,
    /// Every client makes its first attempt within this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub window_secs: f64,
    /// A client still out this long after the storm began gives up (counted).
    #[arg(long, default_value_t = 90.0)]
    pub deadline_secs: f64,
    /// Hold everyone this long once all are in.
    #[arg(long, default_value_t = 2.0)]
    pub hold_secs: f64,
    /// Publishes per second of the client that was there before the storm.
    #[arg(long, default_value_t = 10.0)]
    pub probe_rate: f64,
    /// The first N clients leave `--release-at-secs` after the storm began (freeing slots
    /// for clients refused because the node was full).
    #[arg(long, default_value_t = 0)]
    pub release: u64,
    #[arg(long, default_value_t = 0.0)]
    pub release_at_secs: f64,
    /// Worker processes for the storm's clients.
    #[arg(long, default_value_t = 1)]
    pub workers: u64,
    /// Bound: RSS growth per connected client, KiB (plus `--rss-slack-mib`).
    #[arg(long, default_value_t = 64.0)]
    pub rss_per_conn_kib: f64,
    #[arg(long, default_value_t = 64.0)]
    pub rss_slack_mib: f64,
    /// Fail unless admission control refused some attempts (503 or 4008).
    #[arg(long)]
    pub expect_refusals: bool,
    /// Fail unless every /readyz during the storm answered 200.
    #[arg(long)]
    pub require_ready: bool,
    #[command(flatten)]
    pub worker: WorkerFlags,
}

/// A worker's clients once every one is in or gave up (`CONNECTED`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Connected {
    clients: u64,
    connected: u64,
    gave_up: u64,
    adm: Admission,
    /// Unix µs of the first and last welcome.
    first_us: u64,
    last_us: u64,
    /// Attempts per client: histogram as (attempts, clients).
    attempts_hist: BTreeMap<u64, u64>,
}

impl Connected {
    fn merge(&mut self, c: &Connected) {
        self.clients += c.clients;
        self.connected += c.connected;
        self.gave_up += c.gave_up;
        self.adm.merge(&c.adm);
        self.first_us = if self.first_us == 0 {
            c.first_us
        } else {
            self.first_us.min(c.first_us.max(1))
        };
        self.last_us = self.last_us.max(c.last_us);
        for (k, v) in &c.attempts_hist {
            *self.attempts_hist.entry(*k).or_default() += v;
        }
    }
}

/// A worker's clients after they were let go (`REPORT`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Final {
    /// Connections the server ended while they were held (not released by us).
    dropped: u64,
    released: u64,
}

pub async fn run(args: Args) -> Result<()> {
    if let Some((w, t0, run)) = args.worker.get() {
        return worker(&args, w, t0, run).await;
    }
    parent(args).await
}

// ---------------------------------------------------------------------------------------
// A worker: its share of the storm's clients.

/// What a worker's clients share.
#[derive(Default)]
struct Tally {
    connected: Mutex<Connected>,
    /// Clients that are in or gave up.
    settled: AtomicU64,
    fin: Mutex<Final>,
}

/// When a storm client starts, gives up, and (if it is one of the first `--release`) leaves.
#[derive(Clone)]
struct Timing {
    t0: u64,
    window_secs: f64,
    deadline_us: u64,
    release_at_us: Option<u64>,
}

async fn worker(args: &Args, w: u64, t0: u64, run: &str) -> Result<()> {
    let sources = args.common.sources()?;
    let tally = Arc::new(Tally::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mine: Vec<u64> = (0..args.clients)
        .filter(|g| g % args.workers == w)
        .collect();
    lock(&tally.connected).clients = mine.len() as u64;
    let mut tasks = Vec::new();
    for g in mine {
        let timing = Timing {
            t0,
            window_secs: args.window_secs,
            deadline_us: t0 + (args.deadline_secs * 1e6) as u64,
            release_at_us: (g < args.release).then_some(t0 + (args.release_at_secs * 1e6) as u64),
        };
        tasks.push(tokio::spawn(storm_client(
            args.common.url[0].clone(),
            args.common.token(&format!("storm-{run}-{g}")),
            pick(&sources, g as usize),
            timing,
            tally.clone(),
            stop_rx.clone(),
        )));
    }
    let total = tasks.len() as u64;
    while tally.settled.load(Ordering::Acquire) < total {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "CONNECTED {}",
        serde_json::to_string(&*lock(&tally.connected))?
    );
    std::io::stdout().flush()?;
    // Hold until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
    })
    .await?;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    println!("REPORT {}", serde_json::to_string(&*lock(&tally.fin))?);
    Ok(())
}

/// One storm client: first attempt at a random moment of the window, attempts until welcomed
/// or the deadline, then held until told to stop (or released, or dropped by the server).
async fn storm_client(
    base: String,
    token: String,
    source: Option<std::net::IpAddr>,
    timing: Timing,
    tally: Arc<Tally>,
    mut stop: watch::Receiver<bool>,
) {
    let start = timing.t0 + (fastrand::f64() * timing.window_secs * 1e6) as u64;
    tokio::time::sleep(Duration::from_micros(start.saturating_sub(now_us()))).await;
    let mut adm = Admission::default();
    let res = open_retrying(&base, &token, &dial(source), timing.deadline_us, &mut adm).await;
    {
        let mut s = lock(&tally.connected);
        s.adm.merge(&adm);
        *s.attempts_hist.entry(adm.attempts).or_default() += 1;
        if res.is_ok() {
            let now = now_us();
            s.connected += 1;
            s.first_us = if s.first_us == 0 {
                now
            } else {
                s.first_us.min(now)
            };
            s.last_us = s.last_us.max(now);
        } else {
            s.gave_up += 1;
        }
    }
    tally.settled.fetch_add(1, Ordering::AcqRel);
    let Ok((mut conn, _)) = res else { return };
    let release = tokio::time::sleep(Duration::from_micros(match timing.release_at_us {
        Some(at) => at.saturating_sub(now_us()),
        None => u64::MAX / 4,
    }));
    tokio::pin!(release);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = &mut release => {
                lock(&tally.fin).released += 1;
                break;
            }
            m = conn.stream.next() => match m {
                Some(Ok(_)) => {}
                _ => {
                    lock(&tally.fin).dropped += 1;
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.sink.close()).await;
}

// ---------------------------------------------------------------------------------------
// The parent: the probe client, /readyz, the workers, the numbers.

/// The client that was there before the storm: publishes to itself and times the deliveries.
struct Probe {
    latencies: Arc<Mutex<Vec<(u64, u64)>>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    peer: Arc<Peer>,
}

/// What the probe saw, sorted by when its messages were sent.
struct ProbeResult {
    sent: u64,
    received: usize,
    acked: u64,
    errors: u64,
    lost: i64,
    open: bool,
    close_code: u64,
    /// Latency before the storm, during it (until the last client got in), after it.
    before: Histogram<u64>,
    during: Histogram<u64>,
    after: Histogram<u64>,
}

impl Probe {
    async fn start(args: &Args, run: &str) -> Result<Probe> {
        let latencies: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let l2 = latencies.clone();
        let on_message: OnMessage = Arc::new(move |v| {
            if let Some(t) = v["data"]["t"].as_u64() {
                lock(&l2).push((t, now_us().saturating_sub(t)));
            }
        });
        let token = args.common.token(&format!("storm-{run}-probe"));
        let p = peer(&args.common.url[0], None, &token, Some(on_message))
            .await
            .context("the probe client")?;
        let p = Arc::new(p);
        let room = format!("storm-{run}");
        p.ok("create_room", json!({ "room": room })).await?;
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p2, s2, st2) = (p.clone(), sent.clone(), stop.clone());
        let interval = Duration::from_secs_f64(1.0 / args.probe_rate.max(0.1));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            while !st2.load(Ordering::Acquire) {
                tick.tick().await;
                let data = json!({ "t": now_us() });
                let publish = json!({ "room": room, "data": data });
                if p2.send("publish", publish).await.is_err() {
                    break;
                }
                s2.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Probe {
            latencies,
            sent,
            stop,
            task,
            peer: p,
        })
    }

    /// Stops publishing, waits a little for the last deliveries, and sorts the latencies
    /// into before `t0`, during (until `last_in`) and after.
    async fn finish(self, t0: u64, last_in: u64) -> ProbeResult {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = &self.peer.stats;
        let (open, close_code) = (
            self.peer.is_open(),
            stats.close_code.load(Ordering::Acquire),
        );
        let acked = stats.unclaimed_ok.load(Ordering::Relaxed);
        let errors: u64 = lock(&stats.unclaimed_errors).values().sum();
        self.peer.close().await;
        let (mut before, mut during, mut after) = (histogram(), histogram(), histogram());
        let lat = lock(&self.latencies).clone();
        for (t, l) in &lat {
            let h = if *t < t0 {
                &mut before
            } else if *t <= last_in {
                &mut during
            } else {
                &mut after
            };
            let _ = h.record((*l).clamp(1, 60_000_000));
        }
        let sent = self.sent.load(Ordering::Relaxed);
        ProbeResult {
            sent,
            received: lat.len(),
            acked,
            errors,
            lost: sent.saturating_sub(errors) as i64 - lat.len() as i64,
            open,
            close_code,
            before,
            during,
            after,
        }
    }
}

/// `/readyz` every 250 ms: (unix µs, status or 0 for no answer, µs to answer).
struct ReadyPoll {
    polls: Arc<Mutex<Vec<(u64, u16, u64)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyPoll {
    fn start(http_base: String) -> ReadyPoll {
        let polls: Arc<Mutex<Vec<(u64, u16, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (p2, st2) = (polls.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st2.load(Ordering::Acquire) {
                let at = now_us();
                let status = http::get(&http_base, "/readyz", Duration::from_secs(5))
                    .await
                    .map_or(0, |(s, _)| s);
                lock(&p2).push((at, status, now_us() - at));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        ReadyPoll { polls, stop, task }
    }

    /// Stops, and sums up the polls made between `from` and `to` (µs).
    async fn finish(self, from: u64, to: u64) -> Ready {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        let polls = lock(&self.polls).clone();
        let within: Vec<_> = polls
            .iter()
            .filter(|(t, _, _)| *t >= from && *t <= to)
            .collect();
        Ready {
            probes: within.len(),
            ok: within.iter().filter(|r| r.1 == 200).count(),
            unanswered: within.iter().filter(|r| r.1 == 0).count(),
            max_ms: within.iter().map(|r| r.2).max().unwrap_or(0) as f64 / 1000.0,
        }
    }
}

/// `/readyz` during the storm.
struct Ready {
    probes: usize,
    ok: usize,
    unanswered: usize,
    max_ms: f64,
}

/// The storm's worker processes, and their stdout lines as they come.
struct StormWorkers {
    lines: mpsc::UnboundedReceiver<String>,
    stdins: Vec<Option<std::process::ChildStdin>>,
    waiters: Vec<std::thread::JoinHandle<std::io::Result<std::process::ExitStatus>>>,
    count: usize,
}

impl StormWorkers {
    fn start(count: u64, t0: u64, run: &str) -> Result<StormWorkers> {
        let (tx, lines) = mpsc::unbounded_channel::<String>();
        let (mut stdins, mut waiters) = (Vec::new(), Vec::new());
        for w in 0..count {
            let mut child = workers::spawn(w, t0, run, true)?;
            stdins.push(child.stdin.take());
            let out = child.stdout.take();
            let tx = tx.clone();
            waiters.push(std::thread::spawn(move || {
                if let Some(out) = out {
                    for line in BufReader::new(out).lines().map_while(Result::ok) {
                        let _ = tx.send(line);
                    }
                }
                child.wait()
            }));
        }
        Ok(StormWorkers {
            lines,
            stdins,
            waiters,
            count: count as usize,
        })
    }

    /// One `PREFIX {json}` line from every worker.
    async fn collect<T: for<'a> Deserialize<'a>>(&mut self, prefix: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        while out.len() < self.count {
            let Some(line) = self.lines.recv().await else {
                bail!("a storm worker ended without a {prefix} line");
            };
            if let Some(j) = line.strip_prefix(prefix) {
                out.push(serde_json::from_str(j)?);
            }
        }
        Ok(out)
    }

    /// Lets every client go (closing the workers' stdin) and collects the final reports.
    async fn finish(mut self) -> Result<Vec<Final>> {
        self.stdins.clear();
        let finals = self.collect("REPORT ").await?;
        for w in self.waiters {
            let _ = w.join();
        }
        Ok(finals)
    }
}

/// Everything the parent measured.
struct Measured {
    t0: u64,
    all_in_at_us: u64,
    total: Connected,
    dropped: u64,
    released: u64,
    rss_before: u64,
    rss_peak: u64,
    rss_held: u64,
    rss_after: u64,
    rejected: Vec<String>,
    ready: Ready,
    probe: ProbeResult,
    healthz: u16,
    readyz: u16,
}

async fn parent(args: Args) -> Result<()> {
    let run = super::run_id();
    let http_base = args.common.http(0);
    let sampler = RssSampler::start(args.common.pids.clone());
    let probe = Probe::start(&args, &run).await?;
    let ready = ReadyPoll::start(http_base.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = sampler.now();
    let t0 = now_us() + 1_500_000;

    // The storm.
    let mut workers = StormWorkers::start(args.workers.max(1), t0, &run)?;
    let mut total = Connected::default();
    for c in workers.collect::<Connected>("CONNECTED ").await? {
        total.merge(&c);
    }
    let all_in_at_us = now_us();
    tokio::time::sleep(Duration::from_secs_f64(args.hold_secs)).await;
    let rss_held = sampler.now();
    let rss_peak = sampler.peak(t0, now_us());
    let rejected = rejected_counters(&http_base).await;
    // Everyone leaves.
    let finals = workers.finish().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = sampler.now();
    let ready = ready.finish(t0, total.last_us.max(t0)).await;
    let probe = probe.finish(t0, total.last_us).await;
    let status = |path: &'static str| {
        let base = http_base.clone();
        async move {
            http::get(&base, path, Duration::from_secs(5))
                .await
                .map_or(0, |(s, _)| s)
        }
    };
    let (healthz, readyz) = (status("/healthz").await, status("/readyz").await);
    sampler.stop().await;
    let m = Measured {
        t0,
        all_in_at_us,
        total,
        dropped: finals.iter().map(|f| f.dropped).sum(),
        released: finals.iter().map(|f| f.released).sum(),
        rss_before,
        rss_peak,
        rss_held,
        rss_after,
        rejected,
        ready,
        probe,
        healthz,
        readyz,
    };
    let mut o = Outcome::new("reconnect storm");
    table(&mut o, &args, &m);
    values(&mut o, &args, &m);
    bounds(&mut o, &args, &m);
    o.finish(args.common.json.as_deref())
}

/// The gateway's non-zero `roomcast_connections_rejected_total` series.
async fn rejected_counters(http_base: &str) -> Vec<String> {
    let (_, text) = http::get(http_base, "/metrics", Duration::from_secs(10))
        .await
        .unwrap_or((0, String::new()));
    text.lines()
        .filter(|l| l.starts_with("roomcast_connections_rejected_total{"))
        .filter(|l| !l.ends_with(" 0"))
        .map(|l| {
            l.trim_start_matches("roomcast_connections_rejected_total")
                .to_string()
        })
        .collect()
}

fn table(o: &mut Outcome, args: &Args, m: &Measured) {
    let adm = &m.total.adm;
    o.row("clients (each its own user)", args.clients);
    o.row(
        "first attempts spread over",
        format!("{} s", args.window_secs),
    );
    o.row("connected", m.total.connected);
    o.row("gave up at the deadline", m.total.gave_up);
    o.row("attempts in all", adm.attempts);
    o.row(
        "refused: HTTP 503 (with Retry-After / without)",
        format!(
            "{} ({} / {})",
            adm.refused_503,
            adm.refused_503 - adm.refused_503_without_retry_after,
            adm.refused_503_without_retry_after
        ),
    );
    o.row(
        "Retry-After values seen (s × count)",
        format!("{:?}", adm.retry_after_values),
    );
    o.row("refused: close 4008", adm.refused_4008);
    o.row(
        "other refusals: status / close / socket errors",
        format!(
            "{} / {} / {}",
            adm.refused_other_status, adm.refused_other_close, adm.io_errors
        ),
    );
    o.row("gateway's rejected counters", m.rejected.join(", "));
    o.row(
        "attempts per client (attempts × clients)",
        format!("{:?}", m.total.attempts_hist),
    );
    let secs_to_all = m.total.last_us.saturating_sub(m.t0) as f64 / 1e6;
    o.row("time until all connected", format!("{secs_to_all:.2} s"));
    if args.release > 0 {
        o.row(
            "released (left on purpose to free slots)",
            format!("{} at {} s", m.released, args.release_at_secs),
        );
    }
    o.row("dropped by the server while held", m.dropped);
    memory_rows(o, m);
    o.row(
        "/readyz during the storm: 200 / probes (unanswered within 5 s)",
        format!(
            "{} / {} ({})",
            m.ready.ok, m.ready.probes, m.ready.unanswered
        ),
    );
    o.row(
        "/readyz slowest answer",
        format!("{:.1} ms", m.ready.max_ms),
    );
    o.row(
        "/healthz and /readyz after",
        format!("{} / {}", m.healthz, m.readyz),
    );
    probe_rows(o, &m.probe);
}

fn memory_rows(o: &mut Outcome, m: &Measured) {
    o.row(
        "gateway RSS before",
        format!("{:.1} MiB", mib(m.rss_before)),
    );
    o.row(
        "gateway RSS peak (storm)",
        format!("{:.1} MiB", mib(m.rss_peak)),
    );
    o.row(
        "gateway RSS with everyone in",
        format!(
            "{:.1} MiB ({:.1} KiB per connection)",
            mib(m.rss_held),
            (m.rss_held.saturating_sub(m.rss_before)) as f64
                / 1024.0
                / (m.total.connected.saturating_sub(m.released)).max(1) as f64
        ),
    );
    o.row(
        "gateway RSS 3 s after all left",
        format!("{:.1} MiB", mib(m.rss_after)),
    );
}

fn probe_rows(o: &mut Outcome, p: &ProbeResult) {
    o.row(
        "existing client: publishes sent / acknowledged / received / errors (close code)",
        format!(
            "{} / {} / {} / {} ({})",
            p.sent,
            p.acked,
            p.received,
            p.errors,
            if p.close_code == 0 {
                "still open".to_string()
            } else {
                p.close_code.to_string()
            }
        ),
    );
    o.row("existing client latency before", pcts_line(&p.before));
    o.row(
        "existing client latency during the storm",
        pcts_line(&p.during),
    );
    o.row("existing client latency after", pcts_line(&p.after));
}

fn values(o: &mut Outcome, args: &Args, m: &Measured) {
    let (t, p, r) = (&m.total, &m.probe, &m.ready);
    o.val("clients", args.clients);
    o.val("connected", t.connected);
    o.val("gave_up", t.gave_up);
    o.val("admission", &t.adm);
    o.val("attempts_hist", &t.attempts_hist);
    o.val(
        "seconds_until_all_connected",
        t.last_us.saturating_sub(m.t0) as f64 / 1e6,
    );
    o.val("released", m.released);
    o.val("dropped", m.dropped);
    o.val("rss_before", m.rss_before);
    o.val("rss_peak", m.rss_peak);
    o.val("rss_held", m.rss_held);
    o.val("rss_after", m.rss_after);
    o.val(
        "ready",
        json!({"probes": r.probes, "ok": r.ok, "unanswered": r.unanswered, "max_ms": r.max_ms}),
    );
    o.val("rejected_metrics", &m.rejected);
    o.val(
        "probe",
        json!({"sent": p.sent, "received": p.received, "errors": p.errors,
               "before": pcts(&p.before), "during": pcts(&p.during), "after": pcts(&p.after)}),
    );
    o.val("all_in_at_us", m.all_in_at_us);
}

fn bounds(o: &mut Outcome, args: &Args, m: &Measured) {
    let (t, adm) = (&m.total, &m.total.adm);
    let wanted = args.clients - m.released;
    o.check(
        format!(
            "every client that wanted in got in ({} of {wanted}), none gave up",
            t.connected - m.released
        ),
        t.gave_up == 0 && t.connected == args.clients,
    );
    if args.expect_refusals {
        o.check(
            "admission control refused attempts (503 or 4008)",
            adm.refused_503 + adm.refused_4008 > 0,
        );
    }
    o.check(
        "every 503 carried Retry-After",
        adm.refused_503_without_retry_after == 0,
    );
    o.check(
        "no other refusals than 503/4008 (no resets, no timeouts)",
        adm.io_errors + adm.refused_other_status + adm.refused_other_close == 0,
    );
    let bound = m.rss_before as f64
        + t.connected as f64 * args.rss_per_conn_kib * 1024.0
        + args.rss_slack_mib * 1024.0 * 1024.0;
    o.check(
        format!(
            "peak RSS {:.1} MiB ≤ before + {} KiB × connected + {} MiB = {:.1} MiB",
            mib(m.rss_peak),
            args.rss_per_conn_kib,
            args.rss_slack_mib,
            bound / 1048576.0
        ),
        args.common.pids.is_empty() || (m.rss_peak as f64) <= bound,
    );
    o.check(
        "no held connection was dropped by the server",
        m.dropped == 0,
    );
    o.check(
        "the gateway is alive and ready afterwards (/healthz, /readyz 200)",
        m.healthz == 200 && m.readyz == 200,
    );
    let p = &m.probe;
    o.check(
        format!(
            "the existing client stayed connected and lost nothing (lost {})",
            p.lost
        ),
        p.open && p.lost == 0 && !p.during.is_empty(),
    );
    o.check(
        "/readyz answered every probe during the storm (within 5 s)",
        m.ready.unanswered == 0,
    );
    if args.require_ready {
        o.check(
            "/readyz said 200 on every probe during the storm",
            m.ready.ok == m.ready.probes,
        );
    }
}
