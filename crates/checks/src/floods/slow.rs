//! Slow readers: clients join a busy room and then stop reading their socket (`--slow` never
//! read again; `--pausers` stop until the room has carried enough to overflow them, then read
//! everything to see the close frame). They are ordinary connections of the shared client
//! with a small receive buffer (`--rcvbuf`), simply no longer polled: nothing reads behind
//! their back. Their outbound queues must be capped (gateway RSS growth bounded by
//! n × queue limit + slack), they must be cut off with 4009 (the
//! `roomcast_disconnects_total{reason="slow_consumer"}` counter, and the close frame a
//! pauser reads), and the members that do read must receive every message, in order.

use super::connect::open;
use super::measure::{mib, pcts, pcts_line, OffsetWatch, RssSampler};
use super::outcome::Outcome;
use super::peer::{conn_ids, join, peer, OnMessage, Peer};
use super::{dial, lock, pick, Common};
use crate::http::metric;
use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use roomcast_loadtest::ws::{Conn, Dial};
use roomcast_loadtest::{histogram, now_us};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Members that read (the first `--publishers` of them publish).
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Total publishes per second in the room, payload bytes each, and for how long.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 2048)]
    pub payload: usize,
    #[arg(long, default_value_t = 8.0)]
    pub secs: f64,
    /// Clients that never read again after joining.
    #[arg(long, default_value_t = 20)]
    pub slow: usize,
    /// Clients that stop reading, then read to the close frame. They resume once the room
    /// has carried enough bytes to fill every buffer on their path (the largest TCP send
    /// buffer, `tcp_wmem`, plus the queue, a write batch and their receive buffer) with a
    /// quarter to spare, so that they are past the limit whatever the machine's speed.
    #[arg(long, default_value_t = 5)]
    pub pausers: usize,
    /// Receive buffer of the slow clients' sockets (bytes).
    #[arg(long, default_value_t = 4096)]
    pub rcvbuf: u32,
    /// The gateway's `--outbound-queue-bytes` and `--write-timeout` (seconds).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub queue_bytes: u64,
    #[arg(long, default_value_t = 10.0)]
    pub write_timeout_secs: f64,
    /// Fixed slack of the memory bound, MiB.
    #[arg(long, default_value_t = 32.0)]
    pub slack_mib: f64,
}

/// What a reading member saw: offsets, latency, and the deliveries over 100 ms.
struct Watch {
    offsets: OffsetWatch,
    hist: Histogram<u64>,
    /// Deliveries over 100 ms: (send time, latency), to see when they happened.
    late: Vec<(u64, u64)>,
}

type Member = (Arc<Peer>, Arc<Mutex<Watch>>);

const CUT_METRIC: &str = "roomcast_disconnects_total";
const CUT_LABEL: &str = "reason=\"slow_consumer\"";

/// Bytes the room must carry before the pausers resume: every buffer on their path, full,
/// with a quarter to spare.
fn resume_bytes(args: &Args) -> u64 {
    let wmem_max: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    (wmem_max + args.queue_bytes + 64 * 1024 + 2 * u64::from(args.rcvbuf)) * 5 / 4
}

/// The size of one delivered frame, about.
fn frame_bytes(args: &Args) -> u64 {
    args.payload as u64 + 80
}

pub async fn run(args: Args) -> Result<()> {
    let run = super::run_id();
    let c = &args.common;
    let sources = c.sources()?;
    let room = format!("slow-{run}");
    let members = start_members(&args, &run, &sources, &room).await?;
    let bases = vec![c.http(0)];
    let tcp_mem_before = tcp_mem_bytes();
    let cut_before = metric(&bases, CUT_METRIC, CUT_LABEL).await?;
    let sampler = RssSampler::start(c.pids.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = sampler.now();

    let mut slow = start_slow(&args, &run, &sources, &room).await?;
    let pausers = slow.split_off(args.slow);
    let start = now_us() + 300_000;
    let end = start + (args.secs * 1e6) as u64;
    let pubs = publish(&args, &members, &room, start, end);
    let reader = members[members.len() - 1].0.clone();
    let resume_after = resume_bytes(&args) / frame_bytes(&args) + 1;
    let resumed: Vec<_> = (pausers.into_iter())
        .map(|conn| tokio::spawn(pause(conn, reader.clone(), resume_after, start, end)))
        .collect();
    let deadline = end + ((args.write_timeout_secs + 15.0) * 1e6) as u64;
    let n = (args.slow + args.pausers) as f64;
    let mut cuts = watch_cuts(&bases, cut_before, n, end, deadline).await;
    cuts.tcp_mem_peak = cuts.tcp_mem_peak.max(tcp_mem_before);
    let mut sent = 0;
    for p in pubs {
        sent += p.await.unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_peak = sampler.peak(start, now_us());
    let rss_end = sampler.now();
    sampler.stop().await;
    let pausers = pausers_result(resumed).await;
    drop(slow);

    let m = Measured {
        readers: readers(&members, &room, start).await?,
        start,
        sent,
        cuts,
        pausers,
        rss_before,
        rss_peak,
        rss_end,
        tcp_mem_before,
    };
    let mut o = Outcome::new("slow readers");
    table(&mut o, &args, &m);
    values(&mut o, &args, &m);
    bounds(&mut o, &args, &m);
    for (p, _) in &members {
        p.close().await;
    }
    o.finish(c.json.as_deref())
}

/// The members that read; member 0 creates the room.
async fn start_members(
    args: &Args,
    run: &str,
    sources: &[IpAddr],
    room: &str,
) -> Result<Vec<Member>> {
    let c = &args.common;
    let mut members = Vec::new();
    for i in 0..args.members.max(1) {
        let watch = Arc::new(Mutex::new(Watch {
            offsets: OffsetWatch {
                from_first: true,
                ..OffsetWatch::default()
            },
            hist: histogram(),
            late: Vec::new(),
        }));
        let w2 = watch.clone();
        let on_message: OnMessage = Arc::new(move |v: &Value| {
            let now = now_us();
            let mut w = lock(&w2);
            w.offsets.on(v["offset"].as_u64().unwrap_or(0));
            if let Some(t) = v["data"]["t"].as_u64() {
                let l = now.saturating_sub(t).clamp(1, 60_000_000);
                let _ = w.hist.record(l);
                if l > 100_000 {
                    w.late.push((t, l));
                }
            }
        });
        let token = c.token(&format!("slow-{run}-m{i}"));
        let p = peer(&c.url[0], pick(sources, i), &token, Some(on_message))
            .await
            .with_context(|| format!("member {i}"))?;
        if i == 0 {
            p.ok("create_room", json!({ "room": room })).await?;
        } else {
            join(&p, room).await?;
        }
        members.push((Arc::new(p), watch));
    }
    Ok(members)
}

/// The slow clients (never-readers, then pausers): join, read up to the join reply, stop.
async fn start_slow(args: &Args, run: &str, sources: &[IpAddr], room: &str) -> Result<Vec<Conn>> {
    let c = &args.common;
    let mut slow = Vec::new();
    for k in 0..args.slow + args.pausers {
        let token = c.token(&format!("slow-{run}-s{k}"));
        let how = Dial {
            rcvbuf: Some(args.rcvbuf),
            ..dial(pick(sources, 100 + k))
        };
        let (mut conn, _) = open(&c.url[0], &token, &how)
            .await
            .with_context(|| format!("slow client {k}"))?;
        if let Some(code) = conn.call("join", json!({ "room": room })).await? {
            bail!("slow client {k} could not join: {code}");
        }
        slow.push(conn);
    }
    Ok(slow)
}

/// The first `--publishers` members publish `--rate` in all, `start` to `end`; each task
/// returns how many it sent.
fn publish(
    args: &Args,
    members: &[Member],
    room: &str,
    start: u64,
    end: u64,
) -> Vec<JoinHandle<u64>> {
    let publishers = args.publishers.clamp(1, members.len());
    let interval = 1e6 / (args.rate / publishers as f64);
    let pad = "x".repeat(args.payload);
    let mut pubs = Vec::new();
    for (p, _) in members.iter().take(publishers) {
        let (p, room, pad) = (p.clone(), room.to_string(), pad.clone());
        pubs.push(tokio::spawn(async move {
            let mut sent = 0u64;
            for k in 0u64.. {
                let at = start + (k as f64 * interval) as u64;
                if at >= end {
                    break;
                }
                let now = now_us();
                if at > now {
                    tokio::time::sleep(Duration::from_micros(at - now)).await;
                }
                let data = json!({ "t": at, "x": pad });
                let publish = json!({ "room": room, "data": data });
                if p.send("publish", publish).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        }));
    }
    pubs
}

/// A pauser: waits until `reader` has received `resume_after` messages (or 5 s past the end),
/// then reads everything to the close frame. Returns the close code, the frames read, and
/// how long it paused (µs from `start`).
async fn pause(
    mut conn: Conn,
    reader: Arc<Peer>,
    resume_after: u64,
    start: u64,
    end: u64,
) -> (Option<u16>, u64, u64) {
    while reader.stats.messages.load(Ordering::Relaxed) < resume_after && now_us() < end + 5_000_000
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let paused = now_us().saturating_sub(start);
    let mut frames = 0;
    let code = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match conn.stream.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => frames += 1,
                _ => return None,
            }
        }
    })
    .await;
    (code.unwrap_or(None), frames, paused)
}

/// How the cut-offs went: the counter's rise, when it reached n, kernel TCP memory's peak.
#[derive(Default)]
struct Cuts {
    cut: f64,
    all_cut_at: Option<u64>,
    tcp_mem_peak: u64,
}

/// Watches the slow-consumer counter every 250 ms until all `n` are cut off and publishing
/// is over, or `deadline`.
async fn watch_cuts(bases: &[String], before: f64, n: f64, end: u64, deadline: u64) -> Cuts {
    let mut c = Cuts::default();
    while now_us() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.tcp_mem_peak = c.tcp_mem_peak.max(tcp_mem_bytes());
        c.cut = metric(bases, CUT_METRIC, CUT_LABEL)
            .await
            .map_or(c.cut, |v| v - before);
        if c.cut >= n && c.all_cut_at.is_none() {
            c.all_cut_at = Some(now_us());
        }
        if c.cut >= n && now_us() > end {
            break;
        }
    }
    c
}

/// What the pausers read: close codes (count per code), frames, the longest pause (µs).
#[derive(Default)]
struct Pausers {
    codes: BTreeMap<String, u64>,
    frames: u64,
    paused_max: u64,
}

async fn pausers_result(resumed: Vec<JoinHandle<(Option<u16>, u64, u64)>>) -> Pausers {
    let mut p = Pausers::default();
    for r in resumed {
        let (code, frames, paused) = r.await.unwrap_or((None, 0, 0));
        p.frames += frames;
        p.paused_max = p.paused_max.max(paused);
        let key = code.map_or("none (socket ended)".into(), |c| c.to_string());
        *p.codes.entry(key).or_default() += 1;
    }
    p
}

/// The numbers of a run.
struct Measured {
    readers: Readers,
    /// Unix µs of the first publish.
    start: u64,
    sent: u64,
    cuts: Cuts,
    pausers: Pausers,
    rss_before: u64,
    rss_peak: u64,
    rss_end: u64,
    tcp_mem_before: u64,
}

/// The reading members' side.
struct Readers {
    accepted: u64,
    errors: BTreeMap<String, u64>,
    lost: i64,
    gaps: u64,
    repeats: u64,
    latency: Histogram<u64>,
    /// Late deliveries (> 100 ms) per second of publishing: count, and the worst (ms).
    late: BTreeMap<u64, (u64, u64)>,
    members: usize,
    open: bool,
    in_room: Vec<String>,
    expected: Vec<String>,
}

/// The readers' side: replies to the publishes, what each received, presence afterwards.
async fn readers(members: &[Member], room: &str, start: u64) -> Result<Readers> {
    let mut m = Readers {
        accepted: members
            .iter()
            .map(|(p, _)| p.stats.unclaimed_ok.load(Ordering::Relaxed))
            .sum(),
        errors: BTreeMap::new(),
        lost: 0,
        gaps: 0,
        repeats: 0,
        latency: histogram(),
        late: BTreeMap::new(),
        members: members.len(),
        open: members.iter().all(|(p, _)| p.is_open()),
        in_room: Vec::new(),
        expected: Vec::new(),
    };
    for (p, w) in members {
        for (k, v) in lock(&p.stats.unclaimed_errors).iter() {
            *m.errors.entry(k.clone()).or_default() += v;
        }
        let w = lock(w);
        m.lost += m.accepted as i64 - (w.offsets.received - w.offsets.repeats) as i64;
        m.gaps += w.offsets.gaps;
        m.repeats += w.offsets.repeats;
        let _ = m.latency.add(&w.hist);
        for (t, l) in &w.late {
            let e = m
                .late
                .entry(t.saturating_sub(start) / 1_000_000)
                .or_default();
            e.0 += 1;
            e.1 = e.1.max(*l / 1000);
        }
    }
    // Ask an open member: if a reader was closed, the bounds say so with its close code,
    // rather than the whole check ending on a send error.
    let asker = members.iter().find(|(p, _)| p.is_open()).ok_or_else(|| {
        let codes: Vec<u64> = (members.iter())
            .map(|(p, _)| {
                p.stats
                    .close_code
                    .load(std::sync::atomic::Ordering::Acquire)
            })
            .collect();
        anyhow::anyhow!("every reader was closed (close codes {codes:?})")
    })?;
    if !m.open {
        let codes: Vec<u64> = (members.iter())
            .map(|(p, _)| {
                p.stats
                    .close_code
                    .load(std::sync::atomic::Ordering::Acquire)
            })
            .collect();
        eprintln!("readers closed: close codes {codes:?} (0 = open, 1 = ended without one)");
    }
    let presence = asker.0.ok("presence", json!({ "room": room })).await?;
    m.in_room = conn_ids(&presence).collect();
    m.in_room.sort();
    m.expected = members.iter().map(|(p, _)| p.conn_id.clone()).collect();
    m.expected.sort();
    Ok(m)
}

/// The memory bound: n × (queue + a 64 KiB write batch + a frame) + slack; and its per-client
/// part.
fn memory_bound(args: &Args) -> (u64, u64) {
    let per_conn = args.queue_bytes + 64 * 1024 + args.payload as u64 + 256;
    let n = (args.slow + args.pausers) as u64;
    (n * per_conn + (args.slack_mib * 1048576.0) as u64, per_conn)
}

fn table(o: &mut Outcome, args: &Args, m: &Measured) {
    let n = args.slow + args.pausers;
    let members = m.readers.members;
    o.row(
        "room: members that read (publishers)",
        format!("{members} ({})", args.publishers.clamp(1, members)),
    );
    o.row(
        "publishing",
        format!(
            "{} msg/s × {} B payload for {} s ({:.1} MB/s into the room)",
            args.rate,
            args.payload,
            args.secs,
            args.rate * (args.payload as f64 + 60.0) / 1e6
        ),
    );
    o.row(
        "slow clients: never read / pause then read",
        format!(
            "{} / {} (paused until the room carried {:.1} MiB: {:.1} s), receive buffer {} B",
            args.slow,
            args.pausers,
            mib(resume_bytes(args)),
            m.pausers.paused_max as f64 / 1e6,
            args.rcvbuf
        ),
    );
    o.row(
        "gateway outbound queue limit, write timeout",
        format!(
            "{} KiB, {} s",
            args.queue_bytes / 1024,
            args.write_timeout_secs
        ),
    );
    o.row(
        "cut off (slow_consumer counter)",
        format!(
            "{} of {n}{}",
            m.cuts.cut,
            m.cuts.all_cut_at.map_or(String::new(), |t| format!(
                ", all within {:.1} s of the first publish",
                t.saturating_sub(m.start) as f64 / 1e6
            ))
        ),
    );
    o.row(
        "close codes read by pausers",
        format!("{:?}", m.pausers.codes),
    );
    o.row("frames pausers read before the close", m.pausers.frames);
    memory_rows(o, args, m);
    delivery_rows(o, m.sent, &m.readers);
}

fn memory_rows(o: &mut Outcome, args: &Args, m: &Measured) {
    let n = args.slow + args.pausers;
    let growth = m.rss_peak.saturating_sub(m.rss_before);
    o.row(
        "gateway RSS before the slow clients",
        format!("{:.1} MiB", mib(m.rss_before)),
    );
    o.row(
        "gateway RSS peak / growth",
        format!(
            "{:.1} MiB / {:.1} MiB ({:.0} KiB per slow client)",
            mib(m.rss_peak),
            mib(growth),
            growth as f64 / 1024.0 / n.max(1) as f64
        ),
    );
    o.row(
        "memory bound: n × (queue + 64 KiB batch + frame) + slack",
        format!("{:.1} MiB", mib(memory_bound(args).0)),
    );
    o.row(
        "gateway RSS at the end",
        format!("{:.1} MiB", mib(m.rss_end)),
    );
    o.row(
        "kernel TCP buffer memory (all sockets, /proc/net/sockstat) before / peak",
        format!(
            "{:.1} / {:.1} MiB (not in RSS: socket buffers, both ends on this machine)",
            mib(m.tcp_mem_before),
            mib(m.cuts.tcp_mem_peak)
        ),
    );
}

fn delivery_rows(o: &mut Outcome, sent: u64, m: &Readers) {
    o.row(
        "publishes sent / accepted / errors",
        format!("{sent} / {} / {:?}", m.accepted, m.errors),
    );
    o.row(
        "readers: lost / gaps / repeats",
        format!("{} / {} / {}", m.lost, m.gaps, m.repeats),
    );
    o.row("readers' latency", pcts_line(&m.latency));
    o.row(
        "deliveries over 100 ms by second of publishing (second: count, worst ms)",
        if m.late.is_empty() {
            "none".to_string()
        } else {
            m.late
                .iter()
                .map(|(s, (n, w))| format!("{s}: {n}, {w}"))
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    o.row(
        "presence afterwards: members / expected",
        format!("{} / {}", m.in_room.len(), m.expected.len()),
    );
}

fn values(o: &mut Outcome, args: &Args, m: &Measured) {
    o.val("slow", args.slow);
    o.val("pausers", args.pausers);
    o.val("cut_off", m.cuts.cut);
    o.val(
        "all_cut_after_secs",
        m.cuts
            .all_cut_at
            .map(|t| t.saturating_sub(m.start) as f64 / 1e6),
    );
    o.val("pauser_close_codes", &m.pausers.codes);
    o.val("rss_before", m.rss_before);
    o.val("rss_peak", m.rss_peak);
    o.val("rss_growth", m.rss_peak.saturating_sub(m.rss_before));
    o.val("rss_bound", memory_bound(args).0);
    o.val("tcp_mem_before", m.tcp_mem_before);
    o.val("tcp_mem_peak", m.cuts.tcp_mem_peak);
    o.val("sent", m.sent);
    o.val("accepted", m.readers.accepted);
    o.val("lost", m.readers.lost);
    o.val("latency", pcts(&m.readers.latency));
    o.val("late_by_second", &m.readers.late);
}

fn bounds(o: &mut Outcome, args: &Args, m: &Measured) {
    let n = args.slow + args.pausers;
    let cut = m.cuts.cut;
    o.check(
        format!("all {n} slow clients cut off as slow consumers (counter +{cut})"),
        cut as usize == n,
    );
    o.check(
        "every pauser read close code 4009",
        m.pausers.codes.get("4009").copied().unwrap_or(0) == args.pausers as u64,
    );
    let growth = m.rss_peak.saturating_sub(m.rss_before);
    let (bound, per_conn) = memory_bound(args);
    o.check(
        format!(
            "RSS growth {:.1} MiB ≤ {n} × {} KiB + {} MiB = {:.1} MiB",
            mib(growth),
            per_conn / 1024,
            args.slack_mib,
            mib(bound)
        ),
        args.common.pids.is_empty() || growth <= bound,
    );
    let (carried, needed) = (m.sent * frame_bytes(args), resume_bytes(args));
    o.check(
        format!(
            "the room carried enough to overflow every slow client ({:.1} MiB ≥ {:.1} MiB)",
            mib(carried),
            mib(needed)
        ),
        carried >= needed,
    );
    let r = &m.readers;
    o.check(
        "every publish accepted, and every reader got every one, in order",
        r.errors.is_empty() && r.accepted == m.sent && r.lost == 0 && r.gaps == 0 && r.repeats == 0,
    );
    o.check("every reader is still connected", r.open);
    o.check(
        "presence is exactly the readers (slow clients left the room)",
        r.in_room == r.expected,
    );
}

/// Memory of every TCP socket's buffers on this machine: `/proc/net/sockstat` `TCP: … mem`
/// (pages).
fn tcp_mem_bytes() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("TCP:"))?;
            let mut it = line.split_whitespace();
            it.position(|w| w == "mem")?;
            it.next()?.parse::<u64>().ok()
        })
        .map_or(0, |pages| pages * 4096)
}
