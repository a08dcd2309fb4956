//! One user floods publishes through every gateway at once; the per-user token bucket lives
//! in the backend (Redis Cluster), so it must hold across nodes. Other users keep publishing
//! at a modest rate in their own rooms, and their publish→receive latency is compared between
//! a quiet phase and the flood.

use super::measure::{pcts, pcts_line, OffsetWatch};
use super::outcome::Outcome;
use super::peer::{join, peer, OnMessage, Peer};
use super::{lock, pick, Common};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use roomcast_loadtest::{histogram, now_us};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

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

/// The other users' latency in three phases: quiet, flood, after.
struct Phases {
    flood_from: AtomicU64,
    flood_to: AtomicU64,
    hists: Mutex<[Histogram<u64>; 3]>,
}

/// Another user: its room, its client, and what it received.
struct Other {
    room: usize,
    peer: Arc<Peer>,
    watch: Arc<Mutex<OffsetWatch>>,
}

/// Unix µs: publishing starts, the flood starts and ends, the other users stop.
#[derive(Clone, Copy)]
struct Schedule {
    start: u64,
    flood_from: u64,
    flood_to: u64,
    end: u64,
}

/// The other users' publish replies: the highest offset per room, errors, successes.
#[derive(Default)]
struct OthersTally {
    room_max: Mutex<BTreeMap<usize, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    ok: AtomicU64,
}

/// The flooder's replies, and the first send and last reply (µs).
struct FloodTally {
    accepted: AtomicU64,
    limited: AtomicU64,
    limited_without_retry: AtomicU64,
    other: Mutex<BTreeMap<String, u64>>,
    first_send: AtomicU64,
    last_reply: AtomicU64,
}

pub async fn run(args: Args) -> Result<()> {
    let run = super::run_id();
    let c = &args.common;
    let nodes = c.url.len();
    let sources = c.sources()?;
    let phases = Arc::new(Phases {
        flood_from: AtomicU64::new(u64::MAX),
        flood_to: AtomicU64::new(u64::MAX),
        hists: Mutex::new([histogram(), histogram(), histogram()]),
    });
    let others = start_others(&args, &run, &sources, &phases).await?;
    // The flooder, on every node, and one listener per node in its room.
    let target = format!("flood-{run}-target");
    let flooders = start_flooders(&args, &run, &sources, &target).await?;
    let mut listeners = Vec::new();
    for n in 0..nodes {
        let token = c.token(&format!("flood-{run}-l{n}"));
        let p = peer(&c.url[n], pick(&sources, 2000 + n), &token, None).await?;
        join(&p, &target).await?;
        listeners.push(p);
    }

    let start = now_us() + 500_000;
    let flood_from = start + (args.baseline_secs * 1e6) as u64;
    let flood_to = flood_from + (args.flood_secs * 1e6) as u64;
    let at = Schedule {
        start,
        flood_from,
        flood_to,
        end: flood_to + 2_000_000,
    };
    phases.flood_from.store(flood_from, Ordering::Release);
    phases.flood_to.store(flood_to, Ordering::Release);
    let others_tally = Arc::new(OthersTally::default());
    let pubs: Vec<_> = (others.iter())
        .map(|o| tokio::spawn(other_publishes(o, &run, args.other_rate, at, &others_tally)))
        .collect();
    let flood_tally = Arc::new(FloodTally {
        accepted: AtomicU64::new(0),
        limited: AtomicU64::new(0),
        limited_without_retry: AtomicU64::new(0),
        other: Mutex::default(),
        first_send: AtomicU64::new(u64::MAX),
        last_reply: AtomicU64::new(0),
    });
    for f in flood(&flooders, &target, args.window, at, &flood_tally) {
        let _ = f.await;
    }
    for p in pubs {
        let _ = p.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let m = measure(
        &others,
        &listeners,
        &phases,
        &others_tally,
        &flood_tally,
        &args,
    );
    let mut o = Outcome::new("flood from one user across nodes");
    table(&mut o, &args, &m, flooders.len());
    values(&mut o, &m);
    bounds(&mut o, &args, &m);
    for p in flooders.iter().chain(others.iter().map(|o| &o.peer)) {
        p.close().await;
    }
    for l in &listeners {
        l.close().await;
    }
    o.finish(c.json.as_deref())
}

/// Other users: user i on node i % nodes, in room i % rooms; the first of each room creates
/// it. Each times its deliveries into the phase they were sent in.
async fn start_others(
    args: &Args,
    run: &str,
    sources: &[IpAddr],
    phases: &Arc<Phases>,
) -> Result<Vec<Other>> {
    let c = &args.common;
    let mut others = Vec::new();
    for i in 0..args.others {
        let watch = Arc::new(Mutex::new(OffsetWatch::default()));
        let (w2, ph) = (watch.clone(), phases.clone());
        let on_message: OnMessage = Arc::new(move |v: &Value| {
            let now = now_us();
            lock(&w2).on(v["offset"].as_u64().unwrap_or(0));
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
        let token = c.token(&format!("flood-{run}-u{i}"));
        let p = peer(
            &c.url[i % c.url.len()],
            pick(sources, i),
            &token,
            Some(on_message),
        )
        .await
        .with_context(|| format!("other user {i}"))?;
        others.push(Other {
            room: i % args.rooms,
            peer: Arc::new(p),
            watch,
        });
    }
    for o in others.iter().take(args.rooms) {
        let room = format!("flood-{run}-{}", o.room);
        o.peer.ok("create_room", json!({ "room": room })).await?;
    }
    for o in others.iter().skip(args.rooms) {
        join(&o.peer, &format!("flood-{run}-{}", o.room)).await?;
    }
    Ok(others)
}

/// The flooding user's connections, `--flood-conns-per-node` on every node, in `target`.
async fn start_flooders(
    args: &Args,
    run: &str,
    sources: &[IpAddr],
    target: &str,
) -> Result<Vec<Arc<Peer>>> {
    let c = &args.common;
    let nodes = c.url.len();
    let mut flooders = Vec::new();
    for k in 0..nodes * args.flood_conns_per_node {
        let token = c.token(&format!("flood-{run}-flooder"));
        let p = peer(&c.url[k % nodes], pick(sources, 1000 + k), &token, None)
            .await
            .context("flooder")?;
        if k == 0 {
            p.ok("create_room", json!({ "room": target })).await?;
        } else {
            join(&p, target).await?;
        }
        flooders.push(Arc::new(p));
    }
    Ok(flooders)
}

/// One other user publishes open-loop at `rate` until the end; replies are counted per room.
fn other_publishes(
    other: &Other,
    run: &str,
    rate: f64,
    at: Schedule,
    tally: &Arc<OthersTally>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (p, r, tally) = (other.peer.clone(), other.room, tally.clone());
    let room = format!("flood-{run}-{r}");
    let interval = 1e6 / rate;
    async move {
        let offset = fastrand::u64(..interval as u64);
        let mut calls = Vec::new();
        for k in 0u64.. {
            let when = at.start + offset + (k as f64 * interval) as u64;
            if when >= at.end {
                break;
            }
            tokio::time::sleep(Duration::from_micros(when.saturating_sub(now_us()))).await;
            let (p, room, tally) = (p.clone(), room.clone(), tally.clone());
            calls.push(tokio::spawn(async move {
                let data = json!({ "t": when });
                let reply = p
                    .call("publish", json!({ "room": room, "data": data }))
                    .await;
                match reply {
                    Ok(v) => match v["ok"]["offset"].as_u64() {
                        Some(off) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let mut m = lock(&tally.room_max);
                            let e = m.entry(r).or_default();
                            *e = (*e).max(off);
                        }
                        None => {
                            let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
                            *lock(&tally.errors).entry(code).or_default() += 1;
                        }
                    },
                    Err(_) => *lock(&tally.errors).entry("io".into()).or_default() += 1,
                }
            }));
        }
        for c in calls {
            let _ = c.await;
        }
    }
}

/// The flood: every flooder connection keeps `window` publishes in flight from `flood_from`
/// to `flood_to`.
fn flood(
    flooders: &[Arc<Peer>],
    target: &str,
    window: usize,
    at: Schedule,
    tally: &Arc<FloodTally>,
) -> Vec<JoinHandle<()>> {
    let mut floods = Vec::new();
    for p in flooders {
        for _ in 0..window {
            let (p, target, t) = (p.clone(), target.to_string(), tally.clone());
            floods.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(
                    at.flood_from.saturating_sub(now_us()),
                ))
                .await;
                let mut n = 0u64;
                while now_us() < at.flood_to {
                    n += 1;
                    t.first_send.fetch_min(now_us(), Ordering::AcqRel);
                    let reply = p
                        .call("publish", json!({ "room": target, "data": { "n": n } }))
                        .await;
                    t.last_reply.fetch_max(now_us(), Ordering::AcqRel);
                    if !t.count(reply) {
                        break;
                    }
                }
            }));
        }
    }
    floods
}

impl FloodTally {
    /// Counts one reply; false when the connection failed.
    fn count(&self, reply: Result<Value>) -> bool {
        match reply {
            Ok(v) if v.get("ok").is_some() => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(v) if v["error"]["code"] == "rate_limited" => {
                self.limited.fetch_add(1, Ordering::Relaxed);
                if v["error"]["retryAfterMs"].as_u64().is_none() {
                    self.limited_without_retry.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(v) => {
                let code = v["error"]["code"].as_str().unwrap_or("?").to_string();
                *lock(&self.other).entry(code).or_default() += 1;
            }
            Err(_) => {
                *lock(&self.other).entry("io".into()).or_default() += 1;
                return false;
            }
        }
        true
    }
}

/// The numbers of a run.
struct Measured {
    accepted: u64,
    limited: u64,
    limited_without_retry: u64,
    flood_other: BTreeMap<String, u64>,
    attempts: u64,
    /// First send → last reply of the flood, the bucket's allowance over it, and the bound.
    secs: f64,
    allowed: f64,
    bound: f64,
    delivered: Vec<u64>,
    others_ok: u64,
    other_errors: BTreeMap<String, u64>,
    lost: i64,
    gaps: u64,
    repeats: u64,
    others_open: bool,
    /// The other users' latency: quiet, during the flood, after.
    hists: [Histogram<u64>; 3],
}

fn measure(
    others: &[Other],
    listeners: &[Peer],
    phases: &Phases,
    ot: &OthersTally,
    ft: &FloodTally,
    args: &Args,
) -> Measured {
    let accepted = ft.accepted.load(Ordering::Relaxed);
    let limited = ft.limited.load(Ordering::Relaxed);
    let first = ft.first_send.load(Ordering::Relaxed);
    let last = ft.last_reply.load(Ordering::Relaxed);
    let secs = last.saturating_sub(first) as f64 / 1e6;
    let allowed = args.burst + args.rate * secs;
    let flood_other = lock(&ft.other).clone();
    let room_max = lock(&ot.room_max).clone();
    let (mut lost, mut repeats, mut gaps) = (0i64, 0u64, 0u64);
    for o in others {
        let w = lock(&o.watch);
        let expected = room_max.get(&o.room).copied().unwrap_or(0);
        lost += expected as i64 - w.received as i64 + w.repeats as i64;
        repeats += w.repeats;
        gaps += w.gaps;
    }
    Measured {
        accepted,
        limited,
        limited_without_retry: ft.limited_without_retry.load(Ordering::Relaxed),
        attempts: accepted + limited + flood_other.values().sum::<u64>(),
        flood_other,
        secs,
        allowed,
        bound: allowed * (1.0 + args.tolerance) + 1.0,
        delivered: listeners
            .iter()
            .map(|l| l.stats.messages.load(Ordering::Relaxed))
            .collect(),
        others_ok: ot.ok.load(Ordering::Relaxed),
        other_errors: lock(&ot.errors).clone(),
        lost,
        gaps,
        repeats,
        others_open: others.iter().all(|o| o.peer.is_open()),
        hists: lock(&phases.hists).clone(),
    }
}

fn table(o: &mut Outcome, args: &Args, m: &Measured, flooders: usize) {
    let nodes = args.common.url.len();
    o.row("gateways", nodes);
    o.row(
        "flooding user: connections (per node × nodes), requests in flight each",
        format!(
            "{flooders} ({} × {nodes}), {}",
            args.flood_conns_per_node, args.window
        ),
    );
    o.row(
        "bucket: rate / burst",
        format!("{} per s / {}", args.rate, args.burst),
    );
    o.row(
        "flood duration (first send → last reply)",
        format!("{:.2} s", m.secs),
    );
    o.row(
        "publish attempts (per second)",
        format!(
            "{} ({:.0}/s)",
            m.attempts,
            m.attempts as f64 / m.secs.max(1e-9)
        ),
    );
    o.row("accepted", m.accepted);
    o.row(
        "allowed: burst + rate × seconds",
        format!("{:.1} (bound with tolerance {:.1})", m.allowed, m.bound),
    );
    o.row("rate_limited replies", m.limited);
    o.row(
        "other errors of the flooder",
        format!("{:?}", m.flood_other),
    );
    o.row(
        "flood room: messages delivered per node's listener",
        format!("{:?}", m.delivered),
    );
    o.row(
        "other users: publishers, rooms, rate each",
        format!("{}, {}, {}/s", args.others, args.rooms, args.other_rate),
    );
    o.row(
        "other users: accepted / errors",
        format!("{} / {:?}", m.others_ok, m.other_errors),
    );
    o.row(
        "other users: lost / gaps / repeats",
        format!("{} / {} / {}", m.lost, m.gaps, m.repeats),
    );
    let [quiet, during, after] = &m.hists;
    o.row("other users' latency, quiet", pcts_line(quiet));
    o.row("other users' latency, during the flood", pcts_line(during));
    o.row("other users' latency, after", pcts_line(after));
}

fn values(o: &mut Outcome, m: &Measured) {
    o.val("accepted", m.accepted);
    o.val("rate_limited", m.limited);
    o.val("attempts", m.attempts);
    o.val("seconds", m.secs);
    o.val("allowed", m.allowed);
    o.val("bound", m.bound);
    o.val("flood_other_errors", &m.flood_other);
    o.val("delivered_per_listener", &m.delivered);
    o.val("others_errors", &m.other_errors);
    o.val("others_lost", m.lost);
    let [quiet, during, after] = &m.hists;
    o.val(
        "latency",
        json!({"quiet": pcts(quiet), "flood": pcts(during), "after": pcts(after)}),
    );
}

fn bounds(o: &mut Outcome, args: &Args, m: &Measured) {
    let (accepted, allowed) = (m.accepted, m.allowed);
    o.check(
        format!(
            "accepted {accepted} ≤ burst + rate × {:.2} s (+{}%, +1) = {:.1}",
            m.secs,
            args.tolerance * 100.0,
            m.bound
        ),
        (accepted as f64) <= m.bound,
    );
    o.check(
        format!("accepted {accepted} ≥ 80% of allowed ({:.1}): the limit is not stricter than configured", 0.8 * allowed),
        (accepted as f64) >= 0.8 * allowed,
    );
    o.check("the flooder got rate_limited errors", m.limited > 0);
    o.check(
        "every rate_limited reply carried retryAfterMs",
        m.limited_without_retry == 0,
    );
    o.check("the flooder got no other errors", m.flood_other.is_empty());
    o.check(
        "every node's listener received exactly the accepted publishes",
        m.delivered.iter().all(|d| *d == accepted),
    );
    o.check(
        "other users: no errors, nothing lost, no gaps or repeats, still connected",
        m.other_errors.is_empty() && m.lost == 0 && m.gaps == 0 && m.repeats == 0 && m.others_open,
    );
    if args.max_p99_ms > 0.0 {
        let during = &m.hists[1];
        let p99 = during.value_at_quantile(0.99) as f64 / 1000.0;
        o.check(
            format!(
                "other users' p99 during the flood {p99:.1} ms ≤ {} ms",
                args.max_p99_ms
            ),
            !during.is_empty() && p99 <= args.max_p99_ms,
        );
    }
}
