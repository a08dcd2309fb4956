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
//!
//! With a [`Judge`] (`max --stop-after-failed N`, one worker process), each step is judged
//! a moment after it ends from live counters; once N steps in a row have surely missed the
//! p99 bound (fewer than 99% of their deliveries arrived within it), publishing stops and the
//! remaining steps are marked `cut`: past the knee they only measure a backlog.

use crate::stats::{histogram, Hist, Phase, Report};
use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use roomcast_loadtest::proto::{Incoming, Protocol};
use roomcast_loadtest::ws::{self, Conn, Dial, Sink};
use roomcast_loadtest::{mint, now_us, Seen};
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio_tungstenite::tungstenite::Message;

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
    /// Unix µs at which publishing starts (the same for every worker). With one worker it is
    /// a deadline: publishing starts [`START_AFTER_CONNECT`] after the last client is in, if
    /// that is sooner (the report says when it started).
    pub start_at_us: u64,
    /// Keep the per-message last-member latency (broadcast).
    pub track_last: bool,
    /// Send a `msgId` with every publish.
    pub msg_ids: bool,
    /// `max`: judge steps as they end and stop after failed ones (one worker only).
    pub judge: Option<Judge>,
    /// Small socket buffers (`connections`: tens of thousands of sockets per process).
    pub small_buffers: bool,
    /// A file created when publishing starts (for a profiler to wait on).
    pub ready_file: Option<String>,
}

/// With one worker, publishing starts this long after the last client is in.
const START_AFTER_CONNECT: Duration = Duration::from_secs(2);

/// How long receivers wait for late deliveries after the last phase.
const DRAIN: Duration = Duration::from_secs(3);

/// When a `max` run stops early.
#[derive(Debug, Clone, Copy)]
pub struct Judge {
    /// The p99 bound, µs.
    pub bound_us: u64,
    /// Stop after this many steps in a row surely missed the bound.
    pub stop_after: usize,
    /// Leading phases that are not judged (the warm-up).
    pub skip: usize,
}

/// Counters shared by the publishers, receivers and the judge of one worker, and the stop.
struct Live {
    /// Per phase: publishes sent, and deliveries within the judge's bound.
    sent: Vec<AtomicU64>,
    on_time: Vec<AtomicU64>,
    bound_us: u64,
    /// Per phase: first deliveries.
    delivered: Vec<AtomicU64>,
    /// The first phase not to run (`usize::MAX`: all of them run).
    stop: watch::Sender<usize>,
    /// Everything sent has arrived after the last phase: receivers need not wait.
    drained: watch::Sender<bool>,
    /// Publishers still sending. Nothing is drained before they are all done: a publish
    /// sent at the very end of the last phase (and counted just after) would otherwise find
    /// the receivers gone, and count as lost.
    publishing: AtomicU64,
}

impl Live {
    fn new(phases: usize, bound_us: u64) -> Live {
        Live {
            sent: (0..phases).map(|_| AtomicU64::new(0)).collect(),
            on_time: (0..phases).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..phases).map(|_| AtomicU64::new(0)).collect(),
            bound_us,
            stop: watch::channel(usize::MAX).0,
            drained: watch::channel(false).0,
            publishing: AtomicU64::new(0),
        }
    }

    fn total(counters: &[AtomicU64]) -> u64 {
        counters.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

/// The fields of a delivered message's `data` the receivers check.
#[derive(Debug, Clone, Copy, Deserialize)]
struct Stamp {
    p: u64,
    s: u64,
    t: u64,
    ph: u64,
}

/// A native `message` event, read only for its `data` (other fields skipped unparsed).
#[derive(Deserialize)]
struct Carrier {
    data: Stamp,
}

/// A Socket.IO `message` EVENT's arguments: `["message", {…, "data": …}, "offset"?]`.
struct SioMessage(Stamp);

impl<'de> Deserialize<'de> for SioMessage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SioMessage, D::Error> {
        struct Args;
        impl<'de> Visitor<'de> for Args {
            type Value = SioMessage;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a message event's arguments")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SioMessage, A::Error> {
                let name: &str = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("no event name"))?;
                if name != "message" {
                    return Err(de::Error::custom("another event"));
                }
                let carrier: Carrier = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("no event object"))?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(SioMessage(carrier.data))
            }
        }
        d.deserialize_seq(Args)
    }
}

/// A delivery's stamp, read with typed parsers that skip everything else (the load generator
/// must not be the first to run out of CPU); `None` for any other frame.
fn stamp(protocol: Protocol, msg: &Message) -> Option<Stamp> {
    match (protocol, msg) {
        (Protocol::Json, Message::Text(t)) => {
            serde_json::from_str::<Carrier>(t).ok().map(|c| c.data)
        }
        (Protocol::Msgpack, Message::Binary(b)) => {
            rmp_serde::from_slice::<Carrier>(b).ok().map(|c| c.data)
        }
        (Protocol::Socketio, Message::Text(t)) => {
            let args = t.strip_prefix("42").filter(|a| a.starts_with('['))?;
            serde_json::from_str::<SioMessage>(args).ok().map(|m| m.0)
        }
        _ => None,
    }
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
        let dial = Dial {
            small_buffers: self.small_buffers,
            ..Dial::from(self.source_for(g))
        };
        Ok(ws::connect(self.url_for(g), self.protocol, token.as_deref(), &dial).await?)
    }
}

/// What a receiver counts of the replies to its own publishes.
#[derive(Default)]
struct Replies {
    errors: u64,
    duplicate_acks: u64,
}

/// The latencies of all of a worker's receivers, kept once per worker (a histogram per
/// receiver, phase and second would take gigabytes with 10k clients): per phase, per second
/// (and its deliveries), and per message the latency to its last member (`track_last`).
struct Latencies {
    phases: Vec<Histogram<u64>>,
    timeline: Vec<(Histogram<u64>, u64)>,
    last_member: HashMap<u64, u64>,
    start_us: u64,
    track_last: bool,
}

impl Latencies {
    fn new(phases: usize, start_us: u64, track_last: bool) -> Latencies {
        Latencies {
            phases: (0..phases).map(|_| histogram()).collect(),
            timeline: Vec::new(),
            last_member: HashMap::new(),
            start_us,
            track_last,
        }
    }

    fn record(&mut self, m: Stamp, now: u64, latency: u64) {
        let v = latency.min(60_000_000);
        if let Some(h) = self.phases.get_mut(m.ph as usize) {
            let _ = h.record(v);
        }
        let second = (now.saturating_sub(self.start_us) / 1_000_000) as usize;
        if self.timeline.len() <= second {
            self.timeline.resize_with(second + 1, || (histogram(), 0));
        }
        let slot = &mut self.timeline[second];
        let _ = slot.0.record(v);
        slot.1 += 1;
        if self.track_last {
            let e = self.last_member.entry((m.p << 32) | m.s).or_default();
            *e = (*e).max(latency);
        }
    }
}

/// Per-receiver bookkeeping: what it has had, and its counts per phase.
struct Receiver {
    counts: Vec<(u64, u64, u64)>, // delivered, duplicates, out of order
    last_seq: HashMap<u64, u64>,
    seen: Seen,
    latencies: Arc<std::sync::Mutex<Latencies>>,
}

impl Receiver {
    fn new(phases: usize, latencies: Arc<std::sync::Mutex<Latencies>>) -> Receiver {
        Receiver {
            counts: vec![(0, 0, 0); phases],
            last_seq: HashMap::new(),
            seen: Seen::default(),
            latencies,
        }
    }

    /// Checks one delivery; returns its phase and latency (µs) when it is a first delivery.
    fn on_message(&mut self, m: Stamp) -> Option<(usize, u64)> {
        let Stamp { p, s, t, ph } = m;
        let counts = self.counts.get_mut(ph as usize)?;
        if !self.seen.insert(p, s) {
            counts.1 += 1;
            return None;
        }
        let now = now_us();
        let latency = now.saturating_sub(t).max(1);
        counts.0 += 1;
        let last = self.last_seq.entry(p).or_insert(0);
        if s < *last {
            counts.2 += 1;
        }
        *last = (*last).max(s);
        if let Ok(mut l) = self.latencies.lock() {
            l.record(m, now, latency);
        }
        Some((ph as usize, latency))
    }

    /// A delivery that came as a generic value (the typed parse did not apply).
    fn on_value(&mut self, data: &Value) -> Option<(usize, u64)> {
        let stamp = Stamp {
            p: data["p"].as_u64()?,
            s: data["s"].as_u64()?,
            t: data["t"].as_u64()?,
            ph: data["ph"].as_u64()?,
        };
        self.on_message(stamp)
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

    // Everyone starts at the same moment: with one worker, as soon as it is ready.
    let plan = if plan.workers == 1 {
        let soon = now_us() + START_AFTER_CONNECT.as_micros() as u64;
        Arc::new(Plan {
            start_at_us: plan.start_at_us.min(soon),
            ..(*plan).clone()
        })
    } else {
        plan
    };
    report.started_at_us = plan.start_at_us;
    let wait = plan.start_at_us.saturating_sub(now_us());
    tokio::time::sleep(Duration::from_micros(wait)).await;
    if let Some(path) = &plan.ready_file {
        let _ = std::fs::write(path, format!("{}\n", plan.start_at_us));
    }
    let total_secs: f64 = plan.phases.iter().map(|(_, s)| s).sum();
    let end_us = plan.start_at_us + (total_secs * 1e6) as u64;
    let live = Arc::new(Live::new(
        plan.phases.len(),
        plan.judge.map_or(u64::MAX, |j| j.bound_us),
    ));
    let judging = plan
        .judge
        .map(|j| tokio::spawn(judge(plan.clone(), live.clone(), j)));
    // One worker sees every delivery it expects: it can tell when all have arrived.
    let draining =
        (plan.workers == 1).then(|| tokio::spawn(drain(plan.clone(), live.clone(), end_us)));

    let latencies = Arc::new(std::sync::Mutex::new(Latencies::new(
        plan.phases.len(),
        plan.start_at_us,
        plan.track_last,
    )));
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (g, conn) in conns {
        let Conn { sink, stream, .. } = conn;
        let sink = Arc::new(Mutex::new(sink));
        if let Some(p) = plan.publisher_of(g) {
            live.publishing.fetch_add(1, Ordering::AcqRel);
            let (plan, sink, live) = (plan.clone(), sink.clone(), live.clone());
            writers.push(tokio::spawn(async move {
                let sent = publisher(plan, p, sink, live.clone()).await;
                live.publishing.fetch_sub(1, Ordering::AcqRel);
                sent
            }));
        }
        readers.push(tokio::spawn(receive(
            plan.clone(),
            stream,
            sink,
            end_us,
            live.clone(),
            latencies.clone(),
        )));
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
    for r in readers {
        if let Ok((rx, replies)) = r.await {
            merge_receiver(&mut phases, rx, replies);
        }
    }
    let latencies = match Arc::try_unwrap(latencies) {
        Ok(l) => l.into_inner().ok(),
        Err(shared) => shared.lock().ok().map(|l| Latencies {
            phases: l.phases.clone(),
            timeline: l.timeline.clone(),
            last_member: l.last_member.clone(),
            ..Latencies::new(0, 0, false)
        }),
    };
    let mut timeline = Vec::new();
    if let Some(l) = latencies {
        for (ph, h) in phases.iter_mut().zip(&l.phases) {
            ph.latency = Hist::from(h);
        }
        if plan.track_last {
            if let Some(first) = phases.first_mut() {
                first.merge_last_member(l.last_member);
            }
        }
        timeline = l.timeline;
    }
    for task in judging.into_iter().chain(draining) {
        task.abort();
    }
    // Steps from the stop on did not run (or not in full): marked, and left out of figures.
    let stop = *live.stop.borrow();
    for ph in phases.iter_mut().skip(stop) {
        ph.cut = true;
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

/// One client's receiving side until 3 s after the last phase (or after an early stop):
/// checks every delivery and counts error and `duplicate: true` replies (to its publishes);
/// answers pings.
async fn receive(
    plan: Arc<Plan>,
    mut stream: ws::Stream,
    sink: Arc<Mutex<Sink>>,
    end_us: u64,
    live: Arc<Live>,
    latencies: Arc<std::sync::Mutex<Latencies>>,
) -> (Receiver, Replies) {
    let protocol = plan.protocol;
    let mut rx = Receiver::new(plan.phases.len(), latencies);
    let mut replies = Replies::default();
    let mut stop = tokio::time::Instant::now()
        + Duration::from_micros(end_us.saturating_sub(now_us()))
        + DRAIN;
    let mut stopping = live.stop.subscribe();
    let mut drained = live.drained.subscribe();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(stop, stream.next()) => next,
            changed = stopping.changed() => {
                if changed.is_ok() {
                    stop = stop.min(tokio::time::Instant::now() + DRAIN);
                }
                continue;
            }
            _ = drained.wait_for(|d| *d) => break,
        };
        let Ok(Some(Ok(msg))) = next else { break };
        let delivered = match stamp(protocol, &msg) {
            Some(m) => rx.on_message(m),
            None => match protocol.decode(&msg) {
                Incoming::Message(data) => rx.on_value(&data),
                Incoming::Reply { reply: Err(_), .. } => {
                    replies.errors += 1;
                    None
                }
                Incoming::Reply { reply: Ok(ok), .. } => {
                    if ok["duplicate"] == true {
                        replies.duplicate_acks += 1;
                    }
                    None
                }
                Incoming::Ping => {
                    if let Some(pong) = protocol.pong() {
                        let _ = sink.lock().await.send(pong).await;
                    }
                    None
                }
                _ => None,
            },
        };
        if let Some((ph, latency)) = delivered {
            if let Some(n) = live.delivered.get(ph) {
                n.fetch_add(1, Ordering::Relaxed);
            }
            if latency <= live.bound_us {
                if let Some(n) = live.on_time.get(ph) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    let _ = sink.lock().await.close().await;
    (rx, replies)
}

/// After the last phase (or an early stop), tells the receivers once every delivery that
/// the sent messages call for has arrived.
async fn drain(plan: Arc<Plan>, live: Arc<Live>, end_us: u64) {
    let mut stopping = live.stop.subscribe();
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_micros(end_us.saturating_sub(now_us()))) => {}
        _ = stopping.changed() => {}
    }
    loop {
        let expected = Live::total(&live.sent) * plan.members;
        if live.publishing.load(Ordering::Acquire) == 0 && Live::total(&live.delivered) >= expected
        {
            live.drained.send_replace(true);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Judges each step a moment after it ends (2× the bound, at least 1 s: whatever has not
/// arrived by then is late) and stops the run after `stop_after` failed steps in a row.
async fn judge(plan: Arc<Plan>, live: Arc<Live>, judge: Judge) {
    let grace = (2 * judge.bound_us).max(1_000_000);
    let mut end = plan.start_at_us;
    let mut failed = 0;
    for (k, (_, secs)) in plan.phases.iter().enumerate() {
        end += (secs * 1e6) as u64;
        if k < judge.skip {
            continue;
        }
        let wait = (end + grace).saturating_sub(now_us());
        tokio::time::sleep(Duration::from_micros(wait)).await;
        let expected = live.sent[k].load(Ordering::Relaxed) * plan.members;
        let on_time = live.on_time[k].load(Ordering::Relaxed);
        if expected > 0 && (on_time as f64) < 0.99 * expected as f64 {
            failed += 1;
        } else {
            failed = 0;
        }
        if judge.stop_after > 0 && failed >= judge.stop_after {
            live.stop.send_replace(k + 1);
            return;
        }
    }
}

/// Adds one receiver's counts to the phases (publish errors and duplicate acks all count in
/// the first phase).
fn merge_receiver(phases: &mut [Phase], rx: Receiver, replies: Replies) {
    if let Some(first) = phases.first_mut() {
        first.publish_errors += replies.errors;
        first.duplicate_acks += replies.duplicate_acks;
    }
    for (ph, (d, dup, ooo)) in phases.iter_mut().zip(rx.counts) {
        ph.delivered += d;
        ph.duplicates += dup;
        ph.out_of_order += ooo;
    }
}

/// Sends publisher `p`'s share of every phase on schedule; returns how many it sent per phase.
async fn publisher(plan: Arc<Plan>, p: u64, sink: Arc<Mutex<Sink>>, live: Arc<Live>) -> Vec<u64> {
    let room = plan.room(p % plan.rooms);
    let pad = "x".repeat(plan.payload);
    let mut sent = vec![0u64; plan.phases.len()];
    let mut seq = 0u64;
    let mut id = 1_000_000u64;
    let mut phase_start = plan.start_at_us;
    let mut stopping = live.stop.subscribe();
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
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_micros(intended - now)) => {}
                    _ = stopping.changed() => {}
                }
            }
            if *stopping.borrow() <= ph {
                return sent;
            }
            if now_us() < intended {
                continue;
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
            live.sent[ph].fetch_add(1, Ordering::Relaxed);
            k += 1;
        }
        phase_start = phase_end;
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Message {
        Message::text(t.to_string())
    }

    #[test]
    fn stamps_are_read_from_every_protocol_and_nothing_else() {
        let data = json!({"p": 1, "s": 2, "t": 3, "ph": 0, "x": "xx"});
        let native = json!({"event": "message", "room": "r", "data": data, "offset": 5});
        let got = stamp(Protocol::Json, &text(&native.to_string())).map(|m| (m.p, m.s, m.t));
        assert_eq!(got, Some((1, 2, 3)));
        let packed = Message::binary(rmp_serde::to_vec_named(&native).unwrap_or_default());
        assert_eq!(stamp(Protocol::Msgpack, &packed).map(|m| m.s), Some(2));
        // roomcast's Socket.IO endpoint (recovery offset last) and the Node peer.
        let roomcast = format!(r#"42["message",{{"room":"r","data":{data}}},"5:e:r"]"#);
        let peer = format!(r#"42["message",{{"room":"r","from":"a","data":{data},"ts":1}}]"#);
        for t in [roomcast, peer] {
            assert_eq!(stamp(Protocol::Socketio, &text(&t)).map(|m| m.p), Some(1));
        }
        for other in [
            r#"{"id":3,"ok":{}}"#,
            r#"{"event":"presence","room":"r","joined":["a"]}"#,
        ] {
            assert!(stamp(Protocol::Json, &text(other)).is_none());
        }
        for other in [r#"431[{"ok":{}}]"#, r#"42["presence",{"room":"r"}]"#, "2"] {
            assert!(stamp(Protocol::Socketio, &text(other)).is_none());
        }
    }
}
