//! Reconnect storm: `--clients` clients, each its own user, (re)connect to one gateway within
//! `--window-secs`. A refused client waits `Retry-After` plus up to as much again (jitter) and
//! tries again, until `--deadline-secs`. Meanwhile a client that was connected before the storm
//! publishes to itself and measures publish→receive latency, `/readyz` is polled, and the
//! gateway's RSS is sampled from /proc.
//!
//! The clients run in `--workers` child processes (one process holds ~19k sockets). A worker
//! prints `CONNECTED {json}` once each of its clients is in (or gave up), holds them until its
//! stdin closes, then prints `REPORT {json}`.

use super::{
    http_get, lock, mib, open_retrying, pcts, pcts_line, peer, pick, Admission, Common, Outcome,
    RssSampler,
};
use crate::engine::now_us;
use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    #[arg(long, hide = true)]
    pub worker_index: Option<u64>,
    #[arg(long, hide = true)]
    pub start_at_us: Option<u64>,
    #[arg(long, hide = true)]
    pub run_id: Option<String>,
}

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
    attempts_hist: std::collections::BTreeMap<u64, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Final {
    /// Connections the server ended while they were held (not released by us).
    dropped: u64,
    released: u64,
}

pub async fn run(args: Args) -> Result<()> {
    if let (Some(w), Some(t0), Some(run)) = (args.worker_index, args.start_at_us, &args.run_id) {
        return worker(&args, w, t0, run).await;
    }
    parent(args).await
}

async fn worker(args: &Args, w: u64, t0: u64, run: &str) -> Result<()> {
    let sources = args.common.sources()?;
    let base = args.common.url[0].clone();
    let deadline = t0 + (args.deadline_secs * 1e6) as u64;
    let release_at = t0 + (args.release_at_secs * 1e6) as u64;
    let state = Arc::new(Mutex::new(Connected::default()));
    let settled = Arc::new(AtomicU64::new(0));
    let fin = Arc::new(Mutex::new(Final::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mine: Vec<u64> = (0..args.clients)
        .filter(|g| g % args.workers == w)
        .collect();
    lock(&state).clients = mine.len() as u64;
    let mut tasks = Vec::new();
    for g in mine {
        let token = args.common.token(&format!("storm-{run}-{g}"));
        let source = pick(&sources, g as usize);
        let base = base.clone();
        let (state, settled, fin) = (state.clone(), settled.clone(), fin.clone());
        let mut stop = stop_rx.clone();
        let releases = g < args.release;
        let window = args.window_secs;
        tasks.push(tokio::spawn(async move {
            let start = t0 + (fastrand::f64() * window * 1e6) as u64;
            tokio::time::sleep(Duration::from_micros(start.saturating_sub(now_us()))).await;
            let mut adm = Admission::default();
            let res = open_retrying(&base, source, &token, deadline, &mut adm).await;
            {
                let mut s = lock(&state);
                s.adm.merge(&adm);
                *s.attempts_hist.entry(adm.attempts).or_default() += 1;
                match &res {
                    Ok(_) => {
                        let now = now_us();
                        s.connected += 1;
                        s.first_us = if s.first_us == 0 {
                            now
                        } else {
                            s.first_us.min(now)
                        };
                        s.last_us = s.last_us.max(now);
                    }
                    Err(_) => s.gave_up += 1,
                }
            }
            settled.fetch_add(1, Ordering::AcqRel);
            let Ok((mut ws, _)) = res else { return };
            let release = tokio::time::sleep(Duration::from_micros(if releases {
                release_at.saturating_sub(now_us())
            } else {
                u64::MAX / 4
            }));
            tokio::pin!(release);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = &mut release => {
                        lock(&fin).released += 1;
                        break;
                    }
                    m = ws.next() => match m {
                        Some(Ok(_)) => {}
                        _ => {
                            lock(&fin).dropped += 1;
                            return;
                        }
                    }
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }));
    }
    let total = tasks.len() as u64;
    while settled.load(Ordering::Acquire) < total {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("CONNECTED {}", serde_json::to_string(&*lock(&state))?);
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
    println!("REPORT {}", serde_json::to_string(&*lock(&fin))?);
    Ok(())
}

struct Probe {
    latencies: Arc<Mutex<Vec<(u64, u64)>>>,
    sent: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    peer: Arc<super::Peer>,
}

async fn start_probe(args: &Args, run: &str) -> Result<Probe> {
    let latencies: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let l2 = latencies.clone();
    let on_message: super::OnMessage = Arc::new(move |v| {
        if let Some(t) = v["data"]["t"].as_u64() {
            lock(&l2).push((t, now_us().saturating_sub(t)));
        }
    });
    let p = Arc::new(
        peer(
            &args.common.url[0],
            None,
            &args.common.token(&format!("storm-{run}-probe")),
            Some(on_message),
        )
        .await
        .context("the probe client")?,
    );
    let room = format!("storm-{run}");
    p.ok("create_room", json!({ "room": room })).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p2, s2, st2) = (p.clone(), sent.clone(), stop.clone());
    let interval = Duration::from_secs_f64(1.0 / args.probe_rate.max(0.1));
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        while !st2.load(Ordering::Acquire) {
            tick.tick().await;
            let data = json!({ "t": now_us() });
            if p2
                .send("publish", json!({ "room": room, "data": data }))
                .await
                .is_err()
            {
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

async fn parent(args: Args) -> Result<()> {
    let run = super::run_id();
    let http = args.common.http(0);
    let sampler = RssSampler::start(args.common.pids.clone());
    let probe = start_probe(&args, &run).await?;
    // /readyz every 250 ms: (unix µs, status or 0 for no answer, µs to answer).
    let ready: Arc<Mutex<Vec<(u64, u16, u64)>>> = Arc::default();
    let ready_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ready_task = {
        let (ready, stop, http) = (ready.clone(), ready_stop.clone(), http.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let at = now_us();
                let status = http_get(&http, "/readyz", Duration::from_secs(5))
                    .await
                    .map_or(0, |(s, _)| s);
                lock(&ready).push((at, status, now_us() - at));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline_rss = sampler.now();
    let t0 = now_us() + 1_500_000;

    // The storm.
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for w in 0..args.workers.max(1) {
        let child = std::process::Command::new(&exe)
            .args(std::env::args().skip(1))
            .args([
                "--worker-index",
                &w.to_string(),
                "--start-at-us",
                &t0.to_string(),
                "--run-id",
                &run,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting a storm worker")?;
        children.push(child);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut stdins = Vec::new();
    let mut waiters = Vec::new();
    for (i, mut child) in children.into_iter().enumerate() {
        stdins.push(child.stdin.take());
        let out = child.stdout.take();
        let tx = tx.clone();
        waiters.push(std::thread::spawn(move || {
            if let Some(out) = out {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send((i, line));
                }
            }
            child.wait()
        }));
    }
    drop(tx);
    let workers = args.workers.max(1) as usize;
    let mut connected: Vec<Connected> = Vec::new();
    let mut finals: Vec<Final> = Vec::new();
    while connected.len() < workers {
        let Some((_, line)) = rx.recv().await else {
            bail!("a storm worker ended early");
        };
        if let Some(j) = line.strip_prefix("CONNECTED ") {
            connected.push(serde_json::from_str(j)?);
        }
    }
    let all_in = now_us();
    tokio::time::sleep(Duration::from_secs_f64(args.hold_secs)).await;
    let held_rss = sampler.now();
    let peak_rss = sampler.peak(t0, now_us());
    let (_, metrics_text) = http_get(&http, "/metrics", Duration::from_secs(10))
        .await
        .unwrap_or((0, String::new()));
    // Everyone leaves.
    drop(stdins);
    while finals.len() < workers {
        let Some((_, line)) = rx.recv().await else {
            bail!("a storm worker ended without a report");
        };
        if let Some(j) = line.strip_prefix("REPORT ") {
            finals.push(serde_json::from_str(j)?);
        }
    }
    for w in waiters {
        let _ = w.join();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after_rss = sampler.now();
    ready_stop.store(true, Ordering::Release);
    let _ = ready_task.await;
    probe.stop.store(true, Ordering::Release);
    let _ = probe.task.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe_open = probe.peer.is_open();
    let probe_close = probe.peer.stats.close_code.load(Ordering::Acquire);
    let probe_acked = probe.peer.stats.unclaimed_ok.load(Ordering::Relaxed);
    probe.peer.close().await;
    let healthz = http_get(&http, "/healthz", Duration::from_secs(5))
        .await
        .map_or(0, |(s, _)| s);
    let readyz = http_get(&http, "/readyz", Duration::from_secs(5))
        .await
        .map_or(0, |(s, _)| s);
    let _ = sampler.stop().await;

    // Numbers.
    let mut total = Connected::default();
    for c in &connected {
        total.clients += c.clients;
        total.connected += c.connected;
        total.gave_up += c.gave_up;
        total.adm.merge(&c.adm);
        total.first_us = if total.first_us == 0 {
            c.first_us
        } else {
            total.first_us.min(c.first_us.max(1))
        };
        total.last_us = total.last_us.max(c.last_us);
        for (k, v) in &c.attempts_hist {
            *total.attempts_hist.entry(*k).or_default() += v;
        }
    }
    let dropped: u64 = finals.iter().map(|f| f.dropped).sum();
    let released: u64 = finals.iter().map(|f| f.released).sum();
    let secs_to_all = total.last_us.saturating_sub(t0) as f64 / 1e6;

    let (mut before, mut during, mut after) =
        (super::histogram(), super::histogram(), super::histogram());
    let lat = lock(&probe.latencies).clone();
    for (t, l) in &lat {
        let h = if *t < t0 {
            &mut before
        } else if *t <= total.last_us {
            &mut during
        } else {
            &mut after
        };
        let _ = h.record((*l).clamp(1, 60_000_000));
    }
    let sent = probe.sent.load(Ordering::Relaxed);
    let probe_errors: u64 = lock(&probe.peer.stats.unclaimed_errors).values().sum();
    let probe_lost = sent.saturating_sub(probe_errors) as i64 - lat.len() as i64;

    let rd = lock(&ready).clone();
    let in_storm: Vec<_> = rd
        .iter()
        .filter(|(t, _, _)| *t >= t0 && *t <= total.last_us.max(t0))
        .collect();
    let ready_ok = in_storm.iter().filter(|r| r.1 == 200).count();
    let ready_unanswered = in_storm.iter().filter(|r| r.1 == 0).count();
    let ready_max_ms = in_storm.iter().map(|r| r.2).max().unwrap_or(0) as f64 / 1000.0;
    let rejected: Vec<String> = metrics_text
        .lines()
        .filter(|l| l.starts_with("roomcast_connections_rejected_total{"))
        .filter(|l| !l.ends_with(" 0"))
        .map(|l| {
            l.trim_start_matches("roomcast_connections_rejected_total")
                .to_string()
        })
        .collect();

    let mut o = Outcome::new("reconnect storm");
    o.row("clients (each its own user)", args.clients);
    o.row(
        "first attempts spread over",
        format!("{} s", args.window_secs),
    );
    o.row("connected", total.connected);
    o.row("gave up at the deadline", total.gave_up);
    o.row("attempts in all", total.adm.attempts);
    o.row(
        "refused: HTTP 503 (with Retry-After / without)",
        format!(
            "{} ({} / {})",
            total.adm.refused_503,
            total.adm.refused_503 - total.adm.refused_503_without_retry_after,
            total.adm.refused_503_without_retry_after
        ),
    );
    o.row(
        "Retry-After values seen (s × count)",
        format!("{:?}", total.adm.retry_after_values),
    );
    o.row("refused: close 4008", total.adm.refused_4008);
    o.row(
        "other refusals: status / close / socket errors",
        format!(
            "{} / {} / {}",
            total.adm.refused_other_status, total.adm.refused_other_close, total.adm.io_errors
        ),
    );
    o.row("gateway's rejected counters", rejected.join(", "));
    o.row(
        "attempts per client (attempts × clients)",
        format!("{:?}", total.attempts_hist),
    );
    o.row("time until all connected", format!("{secs_to_all:.2} s"));
    if args.release > 0 {
        o.row(
            "released (left on purpose to free slots)",
            format!("{released} at {} s", args.release_at_secs),
        );
    }
    o.row("dropped by the server while held", dropped);
    o.row(
        "gateway RSS before",
        format!("{:.1} MiB", mib(baseline_rss)),
    );
    o.row(
        "gateway RSS peak (storm)",
        format!("{:.1} MiB", mib(peak_rss)),
    );
    o.row(
        "gateway RSS with everyone in",
        format!(
            "{:.1} MiB ({:.1} KiB per connection)",
            mib(held_rss),
            (held_rss.saturating_sub(baseline_rss)) as f64
                / 1024.0
                / (total.connected.saturating_sub(released)).max(1) as f64
        ),
    );
    o.row(
        "gateway RSS 3 s after all left",
        format!("{:.1} MiB", mib(after_rss)),
    );
    o.row(
        "/readyz during the storm: 200 / probes (unanswered within 5 s)",
        format!("{ready_ok} / {} ({ready_unanswered})", in_storm.len()),
    );
    o.row("/readyz slowest answer", format!("{ready_max_ms:.1} ms"));
    o.row(
        "/healthz and /readyz after",
        format!("{healthz} / {readyz}"),
    );
    o.row(
        "existing client: publishes sent / acknowledged / received / errors (close code)",
        format!(
            "{sent} / {probe_acked} / {} / {probe_errors} ({})",
            lat.len(),
            if probe_close == 0 {
                "still open".to_string()
            } else {
                probe_close.to_string()
            }
        ),
    );
    o.row("existing client latency before", pcts_line(&before));
    o.row(
        "existing client latency during the storm",
        pcts_line(&during),
    );
    o.row("existing client latency after", pcts_line(&after));
    o.val("clients", args.clients);
    o.val("connected", total.connected);
    o.val("gave_up", total.gave_up);
    o.val("admission", &total.adm);
    o.val("attempts_hist", &total.attempts_hist);
    o.val("seconds_until_all_connected", secs_to_all);
    o.val("released", released);
    o.val("dropped", dropped);
    o.val("rss_before", baseline_rss);
    o.val("rss_peak", peak_rss);
    o.val("rss_held", held_rss);
    o.val("rss_after", after_rss);
    o.val(
        "ready",
        json!({"probes": in_storm.len(), "ok": ready_ok, "unanswered": ready_unanswered, "max_ms": ready_max_ms}),
    );
    o.val("rejected_metrics", &rejected);
    o.val(
        "probe",
        json!({"sent": sent, "received": lat.len(), "errors": probe_errors,
               "before": pcts(&before), "during": pcts(&during), "after": pcts(&after)}),
    );
    o.val("all_in_at_us", all_in);

    let wanted = args.clients - released;
    o.check(
        format!(
            "every client that wanted in got in ({} of {wanted}), none gave up",
            total.connected - released
        ),
        total.gave_up == 0 && total.connected == args.clients,
    );
    if args.expect_refusals {
        o.check(
            "admission control refused attempts (503 or 4008)",
            total.adm.refused_503 + total.adm.refused_4008 > 0,
        );
    }
    o.check(
        "every 503 carried Retry-After",
        total.adm.refused_503_without_retry_after == 0,
    );
    o.check(
        "no other refusals than 503/4008 (no resets, no timeouts)",
        total.adm.io_errors + total.adm.refused_other_status + total.adm.refused_other_close == 0,
    );
    let bound = baseline_rss as f64
        + total.connected as f64 * args.rss_per_conn_kib * 1024.0
        + args.rss_slack_mib * 1024.0 * 1024.0;
    o.check(
        format!(
            "peak RSS {:.1} MiB ≤ before + {} KiB × connected + {} MiB = {:.1} MiB",
            mib(peak_rss),
            args.rss_per_conn_kib,
            args.rss_slack_mib,
            bound / 1048576.0
        ),
        args.common.pids.is_empty() || (peak_rss as f64) <= bound,
    );
    o.check("no held connection was dropped by the server", dropped == 0);
    o.check(
        "the gateway is alive and ready afterwards (/healthz, /readyz 200)",
        healthz == 200 && readyz == 200,
    );
    o.check(
        format!("the existing client stayed connected and lost nothing (lost {probe_lost})"),
        probe_open && probe_lost == 0 && !during.is_empty(),
    );
    o.check(
        "/readyz answered every probe during the storm (within 5 s)",
        ready_unanswered == 0,
    );
    if args.require_ready {
        o.check(
            "/readyz said 200 on every probe during the storm",
            ready_ok == in_storm.len(),
        );
    }
    o.finish(args.common.json.as_deref())
}
