//! The publishing engine behind `fanout`, `broadcast` and `max`: rooms of members spread over
//! worker processes, open-loop publishers, and receivers that check every delivery.
//!
//! Open loop: publisher `p` sends its k-th message at `start + k / rate_p`, whether or not
//! earlier ones were answered, and stamps it with that *intended* time. A server that falls
//! behind therefore shows up as latency instead of as a slower send rate (no coordinated
//! omission).
//!
//! With `msg_ids`, each publish carries an idempotency key `msgId` = `p<publisher>-<seq>`
//! (publishes are never retried here, so an `ok` with `duplicate: true` means a server took
//! two messages for one). Receivers count a (publisher, seq) delivered twice as a duplicate.

use crate::stats::{histogram, Hist, Phase, Report};
use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use roomcast_loadtest::proto::{Incoming, Protocol};
use roomcast_loadtest::ws::{self, Conn, Dial, Sink};
use roomcast_loadtest::{mint, now_us, Seen};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Who connects where, and what is published when.
#[derive(Debug, Clone)]
pub struct Plan {
    pub urls: Vec<String>,
    pub protocol: Protocol,
    pub sources: Vec<IpAddr>,
    /// HS256 secret to mint a token per client (`sub` = `lt-<run>-<client>`), if any.
    pub jwt_secret: Option<String>,
    pub run_id: String,
    pub rooms: u64,
    pub members: u64,
    pub publishers: u64,
    /// (total rate per second, seconds) per phase.
    pub phases: Vec<(f64, f64)>,
    pub payload: usize,
    pub worker: u64,
    pub workers: u64,
    /// Unix µs at which publishing starts (the same for every worker).
    pub start_at_us: u64,
    /// Keep the per-message last-member latency (broadcast).
    pub track_last: bool,
    /// Send a `msgId` with every publish.
    pub msg_ids: bool,
}

impl Plan {
    pub fn room(&self, r: u64) -> String {
        format!("lt-{}-{r}", self.run_id)
    }

    /// Client `g` (global index) is member `g % members` of room `g / members`.
    pub fn my_clients(&self) -> Vec<u64> {
        (0..self.rooms * self.members)
            .filter(|g| g % self.workers == self.worker)
            .collect()
    }

    /// Publisher `p` is member `p / rooms` of room `p % rooms`.
    pub fn publisher_of(&self, g: u64) -> Option<u64> {
        let (r, m) = (g / self.members, g % self.members);
        let p = m * self.rooms + r;
        (p < self.publishers).then_some(p)
    }

    fn token_for(&self, g: u64) -> Option<String> {
        let secret = self.jwt_secret.as_ref()?;
        mint(secret, &format!("lt-{}-{g}", self.run_id))
    }

    fn url_for(&self, g: u64) -> &str {
        &self.urls[(g as usize) % self.urls.len()]
    }

    fn source_for(&self, g: u64) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[(g as usize) % self.sources.len()])
    }

    /// Connects client `g`: its server, source address and token.
    pub async fn connect(&self, g: u64) -> Result<Conn> {
        let token = self.token_for(g);
        let dial = Dial::from(self.source_for(g));
        Ok(ws::connect(self.url_for(g), self.protocol, token.as_deref(), &dial).await?)
    }
}

/// What a receiver counts of the replies to its own publishes.
#[derive(Default)]
struct Replies {
    errors: u64,
    duplicate_acks: u64,
}

/// Per-receiver bookkeeping.
struct Receiver {
    phases: Vec<(Histogram<u64>, u64, u64, u64)>, // latency, delivered, duplicates, out of order
    timeline: Vec<(Histogram<u64>, u64)>,
    last_seq: HashMap<u64, u64>,
    seen: Seen,
    last_member: HashMap<u64, u64>,
    start_us: u64,
    track_last: bool,
}

impl Receiver {
    fn new(phases: usize, start_us: u64, track_last: bool) -> Receiver {
        Receiver {
            phases: (0..phases).map(|_| (histogram(), 0, 0, 0)).collect(),
            timeline: Vec::new(),
            last_seq: HashMap::new(),
            seen: Seen::default(),
            last_member: HashMap::new(),
            start_us,
            track_last,
        }
    }

    fn on_message(&mut self, data: &Value) {
        let (Some(p), Some(s), Some(t), Some(ph)) = (
            data["p"].as_u64(),
            data["s"].as_u64(),
            data["t"].as_u64(),
            data["ph"].as_u64(),
        ) else {
            return;
        };
        let Some(phase) = self.phases.get_mut(ph as usize) else {
            return;
        };
        if !self.seen.insert(p, s) {
            phase.2 += 1;
            return;
        }
        let now = now_us();
        let latency = now.saturating_sub(t).max(1);
        let _ = phase.0.record(latency.min(60_000_000));
        phase.1 += 1;
        let last = self.last_seq.entry(p).or_insert(0);
        if s < *last {
            phase.3 += 1;
        }
        *last = (*last).max(s);
        let second = (now.saturating_sub(self.start_us) / 1_000_000) as usize;
        if self.timeline.len() <= second {
            self.timeline.resize_with(second + 1, || (histogram(), 0));
        }
        let slot = &mut self.timeline[second];
        let _ = slot.0.record(latency.min(60_000_000));
        slot.1 += 1;
        if self.track_last {
            let key = (p << 32) | s;
            let e = self.last_member.entry(key).or_default();
            *e = (*e).max(latency);
        }
    }
}

/// Joins `room`, creating it first when `create` (it may exist already); a room that does not
/// exist yet is waited for, up to 20 s (its creator may be slower).
pub async fn join_room(conn: &mut Conn, room: &str, create: bool) -> Result<()> {
    if create {
        match conn.call("create_room", json!({ "room": room })).await? {
            None => return Ok(()),
            Some(code) if code == "room_exists" => {}
            Some(code) => anyhow::bail!("create_room: {code}"),
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match conn.call("join", json!({ "room": room })).await? {
            None => return Ok(()),
            Some(code) if code == "not_found" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some(code) => anyhow::bail!("join: {code}"),
        }
    }
}

/// Runs this worker's share of the plan and reports it.
pub async fn run(plan: Arc<Plan>) -> Report {
    let mut report = Report {
        protocol: format!("{:?}", plan.protocol).to_lowercase(),
        ..Report::default()
    };
    let connect_start = std::time::Instant::now();
    let conns = connect_all(&plan, &mut report).await;
    report.clients = conns.len() as u64;
    report.connect_seconds = connect_start.elapsed().as_secs_f64();

    // Everyone starts at the same moment.
    let wait = plan.start_at_us.saturating_sub(now_us());
    tokio::time::sleep(Duration::from_micros(wait)).await;
    let total_secs: f64 = plan.phases.iter().map(|(_, s)| s).sum();
    let end_us = plan.start_at_us + (total_secs * 1e6) as u64;

    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (g, conn) in conns {
        let Conn { sink, stream, .. } = conn;
        let sink = Arc::new(Mutex::new(sink));
        if let Some(p) = plan.publisher_of(g) {
            writers.push(tokio::spawn(publisher(plan.clone(), p, sink.clone())));
        }
        readers.push(tokio::spawn(receive(plan.clone(), stream, sink, end_us)));
    }
    let mut sent: Vec<u64> = vec![0; plan.phases.len()];
    for w in writers {
        if let Ok(s) = w.await {
            for (i, n) in s.into_iter().enumerate() {
                sent[i] += n;
            }
        }
    }
    let mut phases: Vec<Phase> = plan
        .phases
        .iter()
        .zip(&sent)
        .map(|((rate, secs), n)| Phase {
            rate: *rate,
            seconds: *secs,
            sent: *n,
            expected: n * plan.members,
            ..Phase::default()
        })
        .collect();
    let mut timeline: Vec<(Histogram<u64>, u64)> = Vec::new();
    for r in readers {
        if let Ok((rx, replies)) = r.await {
            merge_receiver(&mut phases, &mut timeline, rx, replies, plan.track_last);
        }
    }
    report.timeline_delivered = timeline.iter().map(|(_, n)| *n).collect();
    report.timeline = timeline.iter().map(|(h, _)| Hist::from(h)).collect();
    report.phases = phases;
    report.elapsed_seconds = total_secs;
    report
}

/// Connects and joins this worker's clients with bounded concurrency; counts the failures.
async fn connect_all(plan: &Arc<Plan>, report: &mut Report) -> Vec<(u64, Conn)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut joins = Vec::new();
    for g in plan.my_clients() {
        let plan = plan.clone();
        let sem = sem.clone();
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.ok()?;
            let mut conn = plan.connect(g).await.ok()?;
            let room = plan.room(g / plan.members);
            join_room(&mut conn, &room, g % plan.members == 0)
                .await
                .ok()?;
            Some((g, conn))
        }));
    }
    let mut conns = Vec::new();
    for j in joins {
        match j.await {
            Ok(Some(c)) => conns.push(c),
            _ => report.connect_failures += 1,
        }
    }
    conns
}

/// One client's receiving side until 3 s after the last phase: checks every delivery and
/// counts error and `duplicate: true` replies (to its publishes); answers pings.
async fn receive(
    plan: Arc<Plan>,
    mut stream: ws::Stream,
    sink: Arc<Mutex<Sink>>,
    end_us: u64,
) -> (Receiver, Replies) {
    let protocol = plan.protocol;
    let mut rx = Receiver::new(plan.phases.len(), plan.start_at_us, plan.track_last);
    let mut replies = Replies::default();
    let stop = tokio::time::Instant::now()
        + Duration::from_micros(end_us.saturating_sub(now_us()))
        + Duration::from_secs(3);
    loop {
        let next = tokio::time::timeout_at(stop, stream.next()).await;
        let Ok(Some(Ok(msg))) = next else { break };
        match protocol.decode(&msg) {
            Incoming::Message(data) => rx.on_message(&data),
            Incoming::Reply { reply: Err(_), .. } => replies.errors += 1,
            Incoming::Reply { reply: Ok(ok), .. } if ok["duplicate"] == true => {
                replies.duplicate_acks += 1
            }
            Incoming::Ping => {
                if let Some(pong) = protocol.pong() {
                    let _ = sink.lock().await.send(pong).await;
                }
            }
            _ => {}
        }
    }
    let _ = sink.lock().await.close().await;
    (rx, replies)
}

/// Adds one receiver's deliveries to the phases and the timeline (publish errors and
/// duplicate acks all count in the first phase).
fn merge_receiver(
    phases: &mut [Phase],
    timeline: &mut Vec<(Histogram<u64>, u64)>,
    rx: Receiver,
    replies: Replies,
    track_last: bool,
) {
    if let Some(first) = phases.first_mut() {
        first.publish_errors += replies.errors;
        first.duplicate_acks += replies.duplicate_acks;
    }
    for (i, (h, d, dup, ooo)) in rx.phases.into_iter().enumerate() {
        let ph = &mut phases[i];
        let mut merged = ph.latency.to_histogram();
        let _ = merged.add(&h);
        ph.latency = Hist::from(&merged);
        ph.delivered += d;
        ph.duplicates += dup;
        ph.out_of_order += ooo;
    }
    if timeline.len() < rx.timeline.len() {
        timeline.resize_with(rx.timeline.len(), || (histogram(), 0));
    }
    for (i, (h, n)) in rx.timeline.into_iter().enumerate() {
        let _ = timeline[i].0.add(&h);
        timeline[i].1 += n;
    }
    if track_last {
        if let Some(first) = phases.first_mut() {
            first.merge_last_member(rx.last_member);
        }
    }
}

/// Sends publisher `p`'s share of every phase on schedule; returns how many it sent per phase.
async fn publisher(plan: Arc<Plan>, p: u64, sink: Arc<Mutex<Sink>>) -> Vec<u64> {
    let room = plan.room(p % plan.rooms);
    let pad = "x".repeat(plan.payload);
    let mut sent = vec![0u64; plan.phases.len()];
    let mut seq = 0u64;
    let mut id = 1_000_000u64;
    let mut phase_start = plan.start_at_us;
    for (ph, (rate, secs)) in plan.phases.iter().enumerate() {
        let per_pub = rate / plan.publishers as f64;
        let interval_us = if per_pub > 0.0 {
            1e6 / per_pub
        } else {
            f64::INFINITY
        };
        let phase_end = phase_start + (secs * 1e6) as u64;
        let mut k = 0u64;
        // Offset publishers inside one interval so that they do not fire together.
        let offset = (interval_us * (p as f64 / plan.publishers as f64)) as u64;
        loop {
            let intended = phase_start + offset + (k as f64 * interval_us) as u64;
            if intended >= phase_end {
                break;
            }
            let now = now_us();
            if intended > now {
                tokio::time::sleep(Duration::from_micros(intended - now)).await;
            }
            seq += 1;
            id += 1;
            let data = json!({ "p": p, "s": seq, "t": intended, "ph": ph, "x": pad });
            let mut args = json!({ "room": room, "data": data });
            if plan.msg_ids {
                args["msgId"] = json!(format!("p{p}-{seq}"));
            }
            let msg = plan.protocol.request(id, "publish", args);
            if sink.lock().await.send(msg).await.is_err() {
                return sent;
            }
            sent[ph] += 1;
            k += 1;
        }
        phase_start = phase_end;
    }
    sent
}
