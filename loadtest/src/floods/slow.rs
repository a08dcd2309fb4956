//! Slow readers: raw WebSocket clients join a busy room and then stop reading their socket
//! (`--slow` never read again; `--pausers` stop for `--pause-secs`, then read everything to
//! see the close frame). Their outbound queues must be capped (gateway RSS growth bounded by
//! n × queue limit + slack), they must be cut off with 4009 (the
//! `roomcast_disconnects_total{reason="slow_consumer"}` counter, and the close frame a
//! pauser reads), and the members that do read must receive every message, in order.

use super::raw::RawWs;
use super::{join, lock, metric, mib, pcts_line, peer, pick, Common, OnMessage, Outcome, Peer};
use crate::engine::now_us;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

#[derive(Default)]
struct Watch {
    last: u64,
    received: u64,
    gaps: u64,
    repeats: u64,
    hist: Option<hdrhistogram::Histogram<u64>>,
    /// Deliveries over 100 ms: (send time, latency), to see when they happened.
    late: Vec<(u64, u64)>,
}

pub async fn run(args: Args) -> Result<()> {
    let run = super::run_id();
    let c = &args.common;
    let base = c.url[0].clone();
    let http = c.http(0);
    let sources = c.sources()?;
    let room = format!("slow-{run}");

    // Members that read.
    let mut members: Vec<(Arc<Peer>, Arc<Mutex<Watch>>)> = Vec::new();
    for i in 0..args.members.max(1) {
        let watch = Arc::new(Mutex::new(Watch {
            hist: Some(super::histogram()),
            ..Watch::default()
        }));
        let w2 = watch.clone();
        let on_message: OnMessage = Arc::new(move |v: &Value| {
            let now = now_us();
            let mut w = lock(&w2);
            let off = v["offset"].as_u64().unwrap_or(0);
            w.received += 1;
            if off <= w.last {
                w.repeats += 1;
            } else {
                if off != w.last + 1 {
                    w.gaps += off - w.last - 1;
                }
                w.last = off;
            }
            if let (Some(t), Some(h)) = (v["data"]["t"].as_u64(), w.hist.as_mut()) {
                let l = now.saturating_sub(t).clamp(1, 60_000_000);
                let _ = h.record(l);
                if l > 100_000 {
                    w.late.push((t, l));
                }
            }
        });
        let p = peer(
            &base,
            pick(&sources, i),
            &c.token(&format!("slow-{run}-m{i}")),
            Some(on_message),
        )
        .await
        .with_context(|| format!("member {i}"))?;
        if i == 0 {
            p.ok("create_room", json!({ "room": room })).await?;
        } else {
            join(&p, &room).await?;
        }
        members.push((Arc::new(p), watch));
    }
    let bases = vec![http.clone()];
    let tcp_mem_before = tcp_mem_bytes();
    let metric_name = "roomcast_disconnects_total";
    let label = "reason=\"slow_consumer\"";
    let cut_before = metric(&bases, metric_name, label).await?;
    let sampler = super::RssSampler::start(c.pids.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = sampler.now();

    // The slow clients join, read up to their join reply, and stop.
    let n = args.slow + args.pausers;
    let mut slow: Vec<RawWs> = Vec::new();
    for k in 0..n {
        let token = c.token(&format!("slow-{run}-s{k}"));
        let mut ws = RawWs::open(&base, pick(&sources, 100 + k), &token, args.rcvbuf)
            .await
            .with_context(|| format!("slow client {k}"))?;
        ws.until_text("{\"event\":\"welcome\"", Duration::from_secs(10))
            .await?;
        ws.send_text(&json!({"id": 1, "op": "join", "room": room}).to_string())
            .await?;
        let reply = ws.until_text("{\"id\":1,", Duration::from_secs(10)).await?;
        if !reply.contains("\"ok\"") {
            bail!("slow client {k} could not join: {reply}");
        }
        slow.push(ws);
    }
    let pausers: Vec<RawWs> = slow.split_off(args.slow);

    // Publish.
    let start = now_us() + 300_000;
    let end = start + (args.secs * 1e6) as u64;
    let publishers = args.publishers.clamp(1, members.len());
    let per = args.rate / publishers as f64;
    let pad = "x".repeat(args.payload);
    let mut pubs = Vec::new();
    for (p, _) in members.iter().take(publishers) {
        let (p, room, pad) = (p.clone(), room.clone(), pad.clone());
        pubs.push(tokio::spawn(async move {
            let interval = 1e6 / per;
            let mut k = 0u64;
            let mut sent = 0u64;
            loop {
                let at = start + (k as f64 * interval) as u64;
                if at >= end {
                    break;
                }
                let now = now_us();
                if at > now {
                    tokio::time::sleep(Duration::from_micros(at - now)).await;
                }
                let data = json!({ "t": at, "x": pad });
                if p.send("publish", json!({ "room": room, "data": data }))
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
                k += 1;
            }
            sent
        }));
    }
    // Pausers resume once the readers have received enough, and read to the close frame.
    let wmem_max: u64 = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let frame_bytes = args.payload as u64 + 80;
    let resume_bytes =
        (wmem_max + args.queue_bytes + 64 * 1024 + 2 * u64::from(args.rcvbuf)) * 5 / 4;
    let resume_after = resume_bytes / frame_bytes + 1;
    let mut resumed = Vec::new();
    for mut ws in pausers {
        let reader = members[members.len() - 1].0.clone();
        resumed.push(tokio::spawn(async move {
            while reader.stats.messages.load(Ordering::Relaxed) < resume_after
                && now_us() < end + 5_000_000
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let paused = now_us().saturating_sub(start);
            let (code, frames) = ws.drain_to_close(Duration::from_secs(30)).await;
            (code, frames, paused)
        }));
    }
    // Watch the counter until every slow client is cut off.
    let deadline = end + ((args.write_timeout_secs + 15.0) * 1e6) as u64;
    let mut all_cut_at = None;
    let mut cut = 0.0;
    let mut tcp_mem_peak = tcp_mem_before;
    while now_us() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        tcp_mem_peak = tcp_mem_peak.max(tcp_mem_bytes());
        cut = metric(&bases, metric_name, label)
            .await
            .map_or(cut, |v| v - cut_before);
        if cut >= n as f64 && all_cut_at.is_none() {
            all_cut_at = Some(now_us());
        }
        if cut >= n as f64 && now_us() > end {
            break;
        }
    }
    let mut sent = 0;
    for p in pubs {
        sent += p.await.unwrap_or(0);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_peak = sampler.peak(start, now_us());
    let rss_end = sampler.now();
    let _ = sampler.stop().await;
    let mut pauser_codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut pauser_frames = 0;
    let mut paused_max = 0;
    for r in resumed {
        let (code, frames, paused) = r.await.unwrap_or((None, 0, 0));
        pauser_frames += frames;
        paused_max = paused_max.max(paused);
        *pauser_codes
            .entry(code.map_or("none (socket ended)".into(), |c| c.to_string()))
            .or_default() += 1;
    }
    drop(slow);

    let accepted: u64 = members
        .iter()
        .map(|(p, _)| p.stats.unclaimed_ok.load(Ordering::Relaxed))
        .sum();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for (p, _) in &members {
        for (k, v) in lock(&p.stats.unclaimed_errors).iter() {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    let mut hist = super::histogram();
    let (mut lost, mut gaps, mut repeats) = (0i64, 0, 0);
    for (_, w) in &members {
        let w = lock(w);
        lost += accepted as i64 - (w.received - w.repeats) as i64;
        gaps += w.gaps;
        repeats += w.repeats;
        if let Some(h) = &w.hist {
            let _ = hist.add(h);
        }
    }
    // Late deliveries (> 100 ms) per second of publishing: count, and the worst.
    let mut late: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for (_, w) in &members {
        for (t, l) in &lock(w).late {
            let e = late.entry(t.saturating_sub(start) / 1_000_000).or_default();
            e.0 += 1;
            e.1 = e.1.max(*l / 1000);
        }
    }
    let members_open = members.iter().all(|(p, _)| p.is_open());
    let presence = members[0].0.ok("presence", json!({ "room": room })).await?;
    let mut in_room: Vec<String> = presence["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["connId"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    in_room.sort();
    let mut expected: Vec<String> = members.iter().map(|(p, _)| p.conn_id.clone()).collect();
    expected.sort();

    let growth = rss_peak.saturating_sub(rss_before);
    let per_conn_bound = args.queue_bytes + 64 * 1024 + args.payload as u64 + 256;
    let bound = n as u64 * per_conn_bound + (args.slack_mib * 1048576.0) as u64;

    let mut o = Outcome::new("slow readers");
    o.row(
        "room: members that read (publishers)",
        format!("{} ({publishers})", members.len()),
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
            mib(resume_bytes),
            paused_max as f64 / 1e6,
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
            "{cut} of {n}{}",
            all_cut_at.map_or(String::new(), |t| format!(
                ", all within {:.1} s of the first publish",
                t.saturating_sub(start) as f64 / 1e6
            ))
        ),
    );
    o.row("close codes read by pausers", format!("{pauser_codes:?}"));
    o.row("frames pausers read before the close", pauser_frames);
    o.row(
        "gateway RSS before the slow clients",
        format!("{:.1} MiB", mib(rss_before)),
    );
    o.row(
        "gateway RSS peak / growth",
        format!(
            "{:.1} MiB / {:.1} MiB ({:.0} KiB per slow client)",
            mib(rss_peak),
            mib(growth),
            growth as f64 / 1024.0 / n.max(1) as f64
        ),
    );
    o.row(
        "memory bound: n × (queue + 64 KiB batch + frame) + slack",
        format!("{:.1} MiB", mib(bound)),
    );
    o.row("gateway RSS at the end", format!("{:.1} MiB", mib(rss_end)));
    o.row(
        "kernel TCP buffer memory (all sockets, /proc/net/sockstat) before / peak",
        format!(
            "{:.1} / {:.1} MiB (not in RSS: socket buffers, both ends on this machine)",
            mib(tcp_mem_before),
            mib(tcp_mem_peak)
        ),
    );
    o.row(
        "publishes sent / accepted / errors",
        format!("{sent} / {accepted} / {errors:?}"),
    );
    o.row(
        "readers: lost / gaps / repeats",
        format!("{lost} / {gaps} / {repeats}"),
    );
    o.row("readers' latency", pcts_line(&hist));
    o.row(
        "deliveries over 100 ms by second of publishing (second: count, worst ms)",
        if late.is_empty() {
            "none".to_string()
        } else {
            late.iter()
                .map(|(s, (n, m))| format!("{s}: {n}, {m}"))
                .collect::<Vec<_>>()
                .join("; ")
        },
    );
    o.row(
        "presence afterwards: members / expected",
        format!("{} / {}", in_room.len(), expected.len()),
    );
    o.val("slow", args.slow);
    o.val("pausers", args.pausers);
    o.val("cut_off", cut);
    o.val(
        "all_cut_after_secs",
        all_cut_at.map(|t| t.saturating_sub(start) as f64 / 1e6),
    );
    o.val("pauser_close_codes", &pauser_codes);
    o.val("rss_before", rss_before);
    o.val("rss_peak", rss_peak);
    o.val("rss_growth", growth);
    o.val("rss_bound", bound);
    o.val("tcp_mem_before", tcp_mem_before);
    o.val("tcp_mem_peak", tcp_mem_peak);
    o.val("sent", sent);
    o.val("accepted", accepted);
    o.val("lost", lost);
    o.val("latency", super::pcts(&hist));
    o.val("late_by_second", &late);

    o.check(
        format!("all {n} slow clients cut off as slow consumers (counter +{cut})"),
        cut as usize == n,
    );
    o.check(
        "every pauser read close code 4009",
        pauser_codes.get("4009").copied().unwrap_or(0) == args.pausers as u64,
    );
    o.check(
        format!(
            "RSS growth {:.1} MiB ≤ {n} × {} KiB + {} MiB = {:.1} MiB",
            mib(growth),
            per_conn_bound / 1024,
            args.slack_mib,
            mib(bound)
        ),
        c.pids.is_empty() || growth <= bound,
    );
    o.check(
        format!(
            "the room carried enough to overflow every slow client ({:.1} MiB ≥ {:.1} MiB)",
            mib(sent * frame_bytes),
            mib(resume_bytes)
        ),
        sent * frame_bytes >= resume_bytes,
    );
    o.check(
        "every publish accepted, and every reader got every one, in order",
        errors.is_empty() && accepted == sent && lost == 0 && gaps == 0 && repeats == 0,
    );
    o.check("every reader is still connected", members_open);
    o.check(
        "presence is exactly the readers (slow clients left the room)",
        in_room == expected,
    );
    for (p, _) in &members {
        p.close().await;
    }
    o.finish(c.json.as_deref())
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
