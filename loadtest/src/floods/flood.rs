//! One user floods publishes through every gateway at once; the per-user token bucket lives
//! in the backend (Redis Cluster), so it must hold across nodes. Other users keep publishing
//! at a modest rate in their own rooms, and their publish→receive latency is compared between
//! a quiet phase and the flood.

use super::{join, lock, pcts, pcts_line, peer, pick, Common, OnMessage, Outcome, Peer};
use crate::engine::now_us;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// The gateways' `--publish-rate` (tokens per second per user).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// The gateways' `--publish-burst`.
    #[arg(long, default_value_t = 40.0)]
    pub burst: f64,
    /// Quiet phase before the flood, and the flood, in seconds.
    #[arg(long, default_value_t = 5.0)]
    pub baseline_secs: f64,
    #[arg(long, default_value_t = 5.0)]
    pub flood_secs: f64,
    /// The flooding user's connections per gateway, and requests in flight on each.
    #[arg(long, default_value_t = 2)]
    pub flood_conns_per_node: usize,
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Other users (each publishes and receives), their rooms, and each one's publish rate.
    #[arg(long, default_value_t = 12)]
    pub others: usize,
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    #[arg(long, default_value_t = 5.0)]
    pub other_rate: f64,
    /// Accepted publishes may exceed burst + rate × seconds by this fraction (plus one).
    #[arg(long, default_value_t = 0.02)]
    pub tolerance: f64,
    /// Fail if the other users' p99 during the flood is above this (ms); 0 = report only.
    #[arg(long, default_value_t = 0.0)]
    pub max_p99_ms: f64,
}

/// What one receiver saw in its room.
#[derive(Default)]
struct Watch {
    last_offset: u64,
    received: u64,
    gaps: u64,
    repeats: u64,
}

struct Phases {
    flood_from: AtomicU64,
    flood_to: AtomicU64,
    hists: Mutex<[hdrhistogram::Histogram<u64>; 3]>,
}

pub async fn run(args: Args) -> Result<()> {
    let run = super::run_id();
    let c = &args.common;
    let nodes = c.url.len();
    let sources = c.sources()?;
    let phases = Arc::new(Phases {
        flood_from: AtomicU64::new(u64::MAX),
        flood_to: AtomicU64::new(u64::MAX),
        hists: Mutex::new([super::histogram(), super::histogram(), super::histogram()]),
    });

    // Other users: user i on node i % nodes, in room i % rooms.
    let mut others: Vec<(usize, Arc<Peer>, Arc<Mutex<Watch>>)> = Vec::new();
    for i in 0..args.others {
        let watch = Arc::new(Mutex::new(Watch::default()));
        let (w2, ph) = (watch.clone(), phases.clone());
        let on_message: OnMessage = Arc::new(move |v: &Value| {
            let now = now_us();
            let off = v["offset"].as_u64().unwrap_or(0);
            {
                let mut w = lock(&w2);
                w.received += 1;
                if off <= w.last_offset {
                    w.repeats += 1;
                } else {
                    if w.last_offset != 0 && off != w.last_offset + 1 {
                        w.gaps += off - w.last_offset - 1;
                    }
                    w.last_offset = off;
                }
            }
            if let Some(t) = v["data"]["t"].as_u64() {
                let k = if t < ph.flood_from.load(Ordering::Acquire) {
                    0
                } else if t < ph.flood_to.load(Ordering::Acquire) {
                    1
                } else {
                    2
                };
                let _ = lock(&ph.hists)[k].record(now.saturating_sub(t).clamp(1, 60_000_000));
            }
        });
        let p = peer(
            &c.url[i % nodes],
            pick(&sources, i),
            &c.token(&format!("flood-{run}-u{i}")),
            Some(on_message),
        )
        .await
        .with_context(|| format!("other user {i}"))?;
        others.push((i % args.rooms, Arc::new(p), watch));
    }
    for (r, p, _) in others.iter().take(args.rooms) {
        p.ok("create_room", json!({ "room": format!("flood-{run}-{r}") }))
            .await?;
    }
    for (r, p, _) in others.iter().skip(args.rooms) {
        join(p, &format!("flood-{run}-{r}")).await?;
    }
    // The flooder, on every node, and one listener per node in its room.
    let target = format!("flood-{run}-target");
    let mut flooders = Vec::new();
    for k in 0..nodes * args.flood_conns_per_node {
        let p = peer(
            &c.url[k % nodes],
            pick(&sources, 1000 + k),
            &c.token(&format!("flood-{run}-flooder")),
            None,
        )
        .await
        .context("flooder")?;
        if k == 0 {
            p.ok("create_room", json!({ "room": target })).await?;
        } else {
            join(&p, &target).await?;
        }
        flooders.push(Arc::new(p));
    }
    let mut listeners = Vec::new();
    for n in 0..nodes {
        let p = peer(
            &c.url[n],
            pick(&sources, 2000 + n),
            &c.token(&format!("flood-{run}-l{n}")),
            None,
        )
        .await?;
        join(&p, &target).await?;
        listeners.push(p);
    }

    let start = now_us() + 500_000;
    let flood_from = start + (args.baseline_secs * 1e6) as u64;
    let flood_to = flood_from + (args.flood_secs * 1e6) as u64;
    let end = flood_to + 2_000_000;
    phases.flood_from.store(flood_from, Ordering::Release);
    phases.flood_to.store(flood_to, Ordering::Release);

    // Other users publish open-loop until `end`; replies are counted per room.
    let room_max: Arc<Mutex<BTreeMap<usize, u64>>> = Arc::default();
    let other_errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let other_ok = Arc::new(AtomicU64::new(0));
    let mut pubs = Vec::new();
    for (r, p, _) in &others {
        let (p, r) = (p.clone(), *r);
        let room = format!("flood-{run}-{r}");
        let (room_max, other_errors, other_ok) =
            (room_max.clone(), other_errors.clone(), other_ok.clone());
        let interval = 1e6 / args.other_rate;
        pubs.push(tokio::spawn(async move {
            let offset = fastrand::u64(..interval as u64);
            let mut k = 0u64;
            let mut calls = Vec::new();
            loop {
                let at = start + offset + (k as f64 * interval) as u64;
                if at >= end {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(at.saturating_sub(now_us()))).await;
                let (p, room, room_max, other_errors, other_ok) = (
                    p.clone(),
                    room.clone(),
                    room_max.clone(),
                    other_errors.clone(),
                    other_ok.clone(),
                );
                calls.push(tokio::spawn(async move {
                    let data = json!({ "t": at });
                    let reply = p
                        .call("publish", json!({ "room": room, "data": data }))
                        .await;
                    match reply {
                        Ok(v) => match v["ok"]["offset"].as_u64() {
                            Some(off) => {
                                other_ok.fetch_add(1, Ordering::Relaxed);
                                let mut m = lock(&room_max);
                                let e = m.entry(r).or_default();
                                *e = (*e).max(off);
                            }
                            None => {
                                let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
                                *lock(&other_errors).entry(code).or_default() += 1;
                            }
                        },
                        Err(_) => *lock(&other_errors).entry("io".into()).or_default() += 1,
                    }
                }));
                k += 1;
            }
            for c in calls {
                let _ = c.await;
            }
        }));
    }

    // The flood: every flooder connection keeps `window` publishes in flight.
    let accepted = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let limited_without_retry = Arc::new(AtomicU64::new(0));
    let flood_other: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let first_send = Arc::new(AtomicU64::new(u64::MAX));
    let last_reply = Arc::new(AtomicU64::new(0));
    let mut floods = Vec::new();
    for p in &flooders {
        for _ in 0..args.window {
            let p = p.clone();
            let target = target.clone();
            let (accepted, limited, lwr, other, first_send, last_reply) = (
                accepted.clone(),
                limited.clone(),
                limited_without_retry.clone(),
                flood_other.clone(),
                first_send.clone(),
                last_reply.clone(),
            );
            floods.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(flood_from.saturating_sub(now_us())))
                    .await;
                let mut n = 0u64;
                while now_us() < flood_to {
                    n += 1;
                    first_send.fetch_min(now_us(), Ordering::AcqRel);
                    let reply = p
                        .call("publish", json!({ "room": target, "data": { "n": n } }))
                        .await;
                    last_reply.fetch_max(now_us(), Ordering::AcqRel);
                    match reply {
                        Ok(v) if v.get("ok").is_some() => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(v) if v["error"]["code"] == "rate_limited" => {
                            limited.fetch_add(1, Ordering::Relaxed);
                            if v["error"]["retryAfterMs"].as_u64().is_none() {
                                lwr.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(v) => {
                            let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
                            *lock(&other).entry(code).or_default() += 1;
                        }
                        Err(_) => {
                            *lock(&other).entry("io".into()).or_default() += 1;
                            break;
                        }
                    }
                }
            }));
        }
    }
    for f in floods {
        let _ = f.await;
    }
    for p in pubs {
        let _ = p.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Numbers.
    let accepted = accepted.load(Ordering::Relaxed);
    let limited = limited.load(Ordering::Relaxed);
    let limited_without_retry = limited_without_retry.load(Ordering::Relaxed);
    let first = first_send.load(Ordering::Relaxed);
    let last = last_reply.load(Ordering::Relaxed);
    let secs = last.saturating_sub(first) as f64 / 1e6;
    let allowed = args.burst + args.rate * secs;
    let bound = allowed * (1.0 + args.tolerance) + 1.0;
    let flood_other = lock(&flood_other).clone();
    let attempts = accepted + limited + flood_other.values().sum::<u64>();
    let delivered: Vec<u64> = listeners
        .iter()
        .map(|l| l.stats.messages.load(Ordering::Relaxed))
        .collect();
    let room_max = lock(&room_max).clone();
    let other_errors = lock(&other_errors).clone();
    let (mut lost, mut repeats, mut gaps) = (0i64, 0u64, 0u64);
    for (r, _, w) in &others {
        let w = lock(w);
        let expected = room_max.get(r).copied().unwrap_or(0);
        lost += expected as i64 - w.received as i64 + w.repeats as i64;
        repeats += w.repeats;
        gaps += w.gaps;
    }
    let others_open = others.iter().all(|(_, p, _)| p.is_open());
    let hists = lock(&phases.hists).clone();
    let (quiet, during, after) = (&hists[0], &hists[1], &hists[2]);

    let mut o = Outcome::new("flood from one user across nodes");
    o.row("gateways", nodes);
    o.row(
        "flooding user: connections (per node × nodes), requests in flight each",
        format!(
            "{} ({} × {nodes}), {}",
            flooders.len(),
            args.flood_conns_per_node,
            args.window
        ),
    );
    o.row(
        "bucket: rate / burst",
        format!("{} per s / {}", args.rate, args.burst),
    );
    o.row(
        "flood duration (first send → last reply)",
        format!("{secs:.2} s"),
    );
    o.row(
        "publish attempts (per second)",
        format!("{attempts} ({:.0}/s)", attempts as f64 / secs.max(1e-9)),
    );
    o.row("accepted", accepted);
    o.row(
        "allowed: burst + rate × seconds",
        format!("{allowed:.1} (bound with tolerance {bound:.1})"),
    );
    o.row("rate_limited replies", limited);
    o.row("other errors of the flooder", format!("{flood_other:?}"));
    o.row(
        "flood room: messages delivered per node's listener",
        format!("{delivered:?}"),
    );
    o.row(
        "other users: publishers, rooms, rate each",
        format!("{}, {}, {}/s", args.others, args.rooms, args.other_rate),
    );
    o.row(
        "other users: accepted / errors",
        format!("{} / {other_errors:?}", other_ok.load(Ordering::Relaxed)),
    );
    o.row(
        "other users: lost / gaps / repeats",
        format!("{lost} / {gaps} / {repeats}"),
    );
    o.row("other users' latency, quiet", pcts_line(quiet));
    o.row("other users' latency, during the flood", pcts_line(during));
    o.row("other users' latency, after", pcts_line(after));
    o.val("accepted", accepted);
    o.val("rate_limited", limited);
    o.val("attempts", attempts);
    o.val("seconds", secs);
    o.val("allowed", allowed);
    o.val("bound", bound);
    o.val("flood_other_errors", &flood_other);
    o.val("delivered_per_listener", &delivered);
    o.val("others_errors", &other_errors);
    o.val("others_lost", lost);
    o.val(
        "latency",
        json!({"quiet": pcts(quiet), "flood": pcts(during), "after": pcts(after)}),
    );

    o.check(
        format!(
            "accepted {accepted} ≤ burst + rate × {secs:.2} s (+{}%, +1) = {bound:.1}",
            args.tolerance * 100.0
        ),
        (accepted as f64) <= bound,
    );
    o.check(
        format!("accepted {accepted} ≥ 80% of allowed ({:.1}): the limit is not stricter than configured", 0.8 * allowed),
        (accepted as f64) >= 0.8 * allowed,
    );
    o.check("the flooder got rate_limited errors", limited > 0);
    o.check(
        "every rate_limited reply carried retryAfterMs",
        limited_without_retry == 0,
    );
    o.check("the flooder got no other errors", flood_other.is_empty());
    o.check(
        "every node's listener received exactly the accepted publishes",
        delivered.iter().all(|d| *d == accepted),
    );
    o.check(
        "other users: no errors, nothing lost, no gaps or repeats, still connected",
        other_errors.is_empty() && lost == 0 && gaps == 0 && repeats == 0 && others_open,
    );
    if args.max_p99_ms > 0.0 {
        let p99 = during.value_at_quantile(0.99) as f64 / 1000.0;
        o.check(
            format!(
                "other users' p99 during the flood {p99:.1} ms ≤ {} ms",
                args.max_p99_ms
            ),
            !during.is_empty() && p99 <= args.max_p99_ms,
        );
    }
    for p in flooders.iter().chain(others.iter().map(|(_, p, _)| p)) {
        p.close().await;
    }
    for l in &listeners {
        l.close().await;
    }
    o.finish(c.json.as_deref())
}
