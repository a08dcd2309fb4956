//! `chaos`: the fan-out load of `fanout`, made to survive faults, for `make chaos`
//! (`deploy/local/chaos.sh`).
//!
//! `--rooms` × `--members` clients, `--publishers` of them publishing at an open-loop total
//! `--rate`. Unlike `fanout`, every client lives through disconnections: when its socket ends
//! (a killed node, a drain's `reconnect` event and close 1012, an error), it reconnects through
//! `--url` with a backoff and re-joins its room with `since` = the last offset and epoch it saw,
//! then goes on checking. Publishers reconnect too and keep their schedule; slots that fall in a
//! disconnection are skipped, not sent late.
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
//! client saw is reported apart from silent loss.
//!
//! `--readyz URL,…` polls `GET /readyz` of each gateway every 150 ms and records each change of
//! answer. The run publishes until `--stop-file` exists (or `--secs` passed), waits
//! [`GRACE_SECS`] for stragglers, and writes everything, with wall-clock times (Unix ms), to
//! `--json`, for `deploy/local/chaos_report.py` to set against the injected faults.

use crate::client::{connect, Sink, Stream};
use crate::engine::{mint, now_us};
use crate::proto::Protocol;
use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Seconds of listening after publishing stopped, for late and repaired deliveries.
pub const GRACE_SECS: u64 = 6;
/// Rooms keep this many messages (the gateway's default `--max-history-size`), so that a
/// client away for tens of seconds can still recover everything with `since`.
const HISTORY: u64 = 1000;
/// A silence between two deliveries at one client at least this long is recorded.
const GAP_MS: u64 = 250;
/// How often `/readyz` is polled.
const READYZ_EVERY: Duration = Duration::from_millis(150);
/// At most this many missing messages are listed per client (all are counted).
const LIST_CAP: usize = 5000;

/// Run phases, broadcast to every task.
const SETUP: u8 = 0;
const RUN: u8 = 1;
const DRAIN: u8 = 2; // publishing stopped, still listening
const END: u8 = 3;

#[derive(Debug, Clone)]
pub struct Settings {
    pub urls: Vec<String>,
    pub protocol: Protocol,
    pub jwt_secret: Option<String>,
    pub rooms: u64,
    pub members: u64,
    pub publishers: u64,
    pub rate: f64,
    pub secs: f64,
    pub payload: usize,
    pub setup_secs: f64,
    pub readyz: Vec<String>,
    pub stop_file: Option<String>,
    pub json: Option<String>,
}

fn now_ms() -> u64 {
    now_us() / 1000
}

/// A tokio deadline for a wall-clock time in Unix ms (at most a day ahead).
fn at_ms(ms: u64) -> tokio::time::Instant {
    let ahead = ms.saturating_sub(now_ms()).min(86_400_000);
    tokio::time::Instant::now() + Duration::from_millis(ahead)
}

#[derive(Debug, Serialize)]
struct Session {
    connected_ms: u64,
    node: String,
    joined_ms: Option<u64>,
    /// `recovered` of the re-join (absent on a first join).
    recovered: Option<bool>,
    missed: usize,
    end_ms: Option<u64>,
    /// How it ended: `close <code>`, `eof`, `error: …`, `end` (the run ended).
    end: String,
    /// `afterMs` of a `reconnect` event received in this session.
    reconnect_after_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct EpochChange {
    ms: u64,
    from: String,
    from_offset: u64,
    to: String,
    to_offset: u64,
    /// `live` (a message of a new epoch) or `rejoin` (`recovered: false`).
    how: &'static str,
}

#[derive(Debug, Serialize)]
struct OffsetAnomaly {
    ms: u64,
    epoch: String,
    expected: u64,
    got: u64,
    /// `live` or `missed` (inside a recovery).
    source: &'static str,
}

#[derive(Debug, Default, Serialize)]
struct ClientLog {
    client: u64,
    room: u64,
    publisher: Option<u64>,
    first_joined_ms: Option<u64>,
    sessions: Vec<Session>,
    /// Silences of at least `GAP_MS` between deliveries: (from, to), Unix ms.
    gaps: Vec<(u64, u64)>,
    last_delivery_ms: u64,
    delivered: u64,
    /// (publisher, seq, sent ms, delivered ms)
    duplicates: Vec<(u64, u64, u64, u64)>,
    out_of_order: Vec<(u64, u64, u64, u64)>,
    offset_anomalies: Vec<OffsetAnomaly>,
    epoch_changes: Vec<EpochChange>,
    /// Connection or join attempts that failed.
    failed_attempts: u64,
    /// Error codes of failed joins.
    join_errors: BTreeMap<String, u64>,
    connected_at_end: bool,
    /// Filled in at the end: acknowledged, sent after the first join, never delivered.
    lost: u64,
    lost_behind_epoch_change: u64,
    /// (publisher, seq, sent ms), at most `LIST_CAP`.
    lost_list: Vec<(u64, u64, u64)>,
}

#[derive(Debug, Default, Serialize)]
struct PublisherLog {
    publisher: u64,
    room: u64,
    client: u64,
    sent: u64,
    acked: u64,
    /// Schedule slots that fell while the publisher was not joined.
    skipped: u64,
    /// Acknowledged publishes per second since the start of publishing.
    acked_per_sec: Vec<u64>,
    /// (seq, sent ms, answer ms, code)
    failed: Vec<(u64, u64, u64, String)>,
    /// Sent but the connection ended before the answer: (seq, sent ms).
    unanswered: Vec<(u64, u64)>,
    /// Filled in at the end: failed or unanswered publishes that members received anyway.
    failed_but_delivered: u64,
    unanswered_but_delivered: u64,
    #[serde(skip)]
    acked_seqs: Vec<(u64, u64)>, // (seq, sent ms)
}

/// Per-client checking state (not reported).
#[derive(Default)]
struct Check {
    epoch: Option<String>,
    offset: u64,
    seen: HashMap<u64, Vec<u64>>,
    last_seq: HashMap<u64, u64>,
}

struct Client {
    ctx: Arc<Ctx>,
    log: ClientLog,
    publog: Option<PublisherLog>,
    check: Check,
    /// Publish request id → (seq, sent ms).
    pending: HashMap<u64, (u64, u64)>,
    next_id: u64,
    seq: u64,
    /// Next schedule slot of a publisher.
    slot: u64,
}

struct Ctx {
    s: Settings,
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

fn decode(protocol: Protocol, msg: &Message) -> Option<Value> {
    match (protocol, msg) {
        (Protocol::Json, Message::Text(t)) => serde_json::from_str(t).ok(),
        (Protocol::Msgpack, Message::Binary(b)) => rmp_serde::from_slice(b).ok(),
        _ => None,
    }
}

/// What one session's frames asked of the client.
enum Ended {
    /// The socket ended; reconnect after this many ms (a `reconnect` event's `afterMs`).
    Dropped(Option<u64>),
    /// The run is over.
    RunOver,
}

impl Client {
    fn new(ctx: Arc<Ctx>, g: u64) -> Client {
        let room = g / ctx.s.members;
        let publog = ctx.publisher_of(g).map(|p| PublisherLog {
            publisher: p,
            room,
            client: g,
            ..PublisherLog::default()
        });
        Client {
            log: ClientLog {
                client: g,
                room,
                publisher: publog.as_ref().map(|p| p.publisher),
                ..ClientLog::default()
            },
            publog,
            ctx,
            check: Check::default(),
            pending: HashMap::new(),
            next_id: 0,
            seq: 0,
            slot: 0,
        }
    }

    fn room_name(&self) -> String {
        self.ctx.room(self.log.room)
    }

    fn request(&mut self, op: &str, args: Value) -> (u64, Message) {
        self.next_id += 1;
        (
            self.next_id,
            self.ctx.s.protocol.request(self.next_id, op, args),
        )
    }

    /// Records one delivered message: offsets, then content.
    fn deliver(&mut self, m: &Value, source: &'static str) {
        let now = now_ms();
        let epoch = m["epoch"].as_str().unwrap_or("").to_string();
        let offset = m["offset"].as_u64().unwrap_or(0);
        match &self.check.epoch {
            Some(e) if *e == epoch => {
                if offset != self.check.offset + 1 {
                    self.log.offset_anomalies.push(OffsetAnomaly {
                        ms: now,
                        epoch: epoch.clone(),
                        expected: self.check.offset + 1,
                        got: offset,
                        source,
                    });
                }
                self.check.offset = self.check.offset.max(offset);
            }
            other => {
                self.log.epoch_changes.push(EpochChange {
                    ms: now,
                    from: other.clone().unwrap_or_default(),
                    from_offset: self.check.offset,
                    to: epoch.clone(),
                    to_offset: offset,
                    how: "live",
                });
                self.check.epoch = Some(epoch);
                self.check.offset = offset;
            }
        }
        let data = &m["data"];
        let (Some(p), Some(s)) = (data["p"].as_u64(), data["s"].as_u64()) else {
            return;
        };
        let sent = data["t"].as_u64().unwrap_or(0);
        let bits = self.check.seen.entry(p).or_default();
        let (word, bit) = ((s / 64) as usize, s % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.log.duplicates.push((p, s, sent, now));
            return;
        }
        bits[word] |= 1 << bit;
        self.log.delivered += 1;
        let last = self.check.last_seq.entry(p).or_insert(0);
        if s < *last {
            self.log.out_of_order.push((p, s, sent, now));
        }
        *last = (*last).max(s);
        if self.log.last_delivery_ms > 0 && now.saturating_sub(self.log.last_delivery_ms) >= GAP_MS
        {
            self.log.gaps.push((self.log.last_delivery_ms, now));
        }
        self.log.last_delivery_ms = now;
    }

    /// Connects, reads the welcome, joins (creating the room first for member 0 on the first
    /// join; with `since` on a re-join).
    async fn open(&mut self) -> Result<(Sink, Stream)> {
        let g = self.log.client;
        let s = &self.ctx.s;
        let token = s
            .jwt_secret
            .as_deref()
            .and_then(|k| mint(k, &format!("chaos-{}-{g}", self.ctx.run_id)));
        let url = &s.urls[(g as usize + self.log.sessions.len()) % s.urls.len()];
        let conn = connect(url, s.protocol, None, token.as_deref()).await?;
        let (mut sink, mut stream) = (conn.sink, conn.stream);
        let protocol = s.protocol;
        let connected_ms = now_ms();
        // The welcome names the node.
        let node = loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .map_err(|_| anyhow!("no welcome"))?
                .ok_or_else(|| anyhow!("closed before welcome"))??;
            if let Message::Close(c) = &msg {
                bail!("closed before welcome: {c:?}");
            }
            if let Some(v) = decode(protocol, &msg) {
                if v["event"] == "welcome" {
                    break v["node"].as_str().unwrap_or("?").to_string();
                }
            }
        };
        self.log.sessions.push(Session {
            connected_ms,
            node,
            joined_ms: None,
            recovered: None,
            missed: 0,
            end_ms: None,
            end: String::new(),
            reconnect_after_ms: None,
        });
        let room = self.room_name();
        let first = self.log.first_joined_ms.is_none();
        if first && g.is_multiple_of(s.members) {
            let (id, msg) = self.request(
                "create_room",
                json!({ "room": room, "options": { "historySize": HISTORY } }),
            );
            sink.send(msg).await?;
            match self.reply(&mut stream, id).await? {
                Ok(_) => {}
                Err((code, _)) if code == "room_exists" => {}
                Err((code, _)) => bail!("create_room: {code}"),
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut args = json!({ "room": room });
            if let Some(epoch) = &self.check.epoch {
                args["since"] = json!({ "offset": self.check.offset, "epoch": epoch });
            }
            let (id, msg) = self.request("join", args);
            sink.send(msg).await?;
            match self.reply(&mut stream, id).await? {
                Ok(ok) => {
                    self.joined(&ok);
                    return Ok((sink, stream));
                }
                Err((code, retry)) => {
                    *self.log.join_errors.entry(code.clone()).or_default() += 1;
                    let again = matches!(code.as_str(), "unavailable" | "not_found" | "internal");
                    if !again || tokio::time::Instant::now() > deadline || self.ctx.phase() >= END {
                        bail!("join: {code}");
                    }
                    tokio::time::sleep(Duration::from_millis(retry.clamp(100, 2000))).await;
                }
            }
        }
    }

    /// Waits for the reply to `id`: `Ok(ok body)` or `Err((code, retryAfterMs))`. Messages
    /// cannot arrive before a join's reply (the gateway holds them), so others are skipped.
    async fn reply(
        &mut self,
        stream: &mut Stream,
        id: u64,
    ) -> Result<std::result::Result<Value, (String, u64)>> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .map_err(|_| anyhow!("no reply"))?
                .ok_or_else(|| anyhow!("closed"))??;
            if let Message::Close(c) = &msg {
                bail!("closed: {c:?}");
            }
            let Some(v) = decode(self.ctx.s.protocol, &msg) else {
                continue;
            };
            if v["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(e) = v.get("error") {
                let code = e["code"].as_str().unwrap_or("error").to_string();
                return Ok(Err((code, e["retryAfterMs"].as_u64().unwrap_or(200))));
            }
            return Ok(Ok(v["ok"].clone()));
        }
    }

    /// A join's `ok`: set the starting point, or recover.
    fn joined(&mut self, ok: &Value) {
        let now = now_ms();
        let epoch = ok["epoch"].as_str().unwrap_or("").to_string();
        let offset = ok["offset"].as_u64().unwrap_or(0);
        let recovered = ok["recovered"].as_bool();
        let missed = ok["missed"].as_array().cloned().unwrap_or_default();
        if let Some(session) = self.log.sessions.last_mut() {
            session.joined_ms = Some(now);
            session.recovered = recovered;
            session.missed = missed.len();
        }
        if self.log.first_joined_ms.is_none() {
            self.log.first_joined_ms = Some(now);
        }
        match (recovered, self.check.epoch.clone()) {
            (Some(true), Some(_)) => {
                for m in &missed {
                    self.deliver(m, "missed");
                }
                if self.check.epoch.as_deref() != Some(epoch.as_str())
                    || self.check.offset != offset
                {
                    self.log.offset_anomalies.push(OffsetAnomaly {
                        ms: now,
                        epoch: epoch.clone(),
                        expected: self.check.offset,
                        got: offset,
                        source: "missed",
                    });
                }
            }
            (_, Some(old)) => {
                self.log.epoch_changes.push(EpochChange {
                    ms: now,
                    from: old,
                    from_offset: self.check.offset,
                    to: epoch.clone(),
                    to_offset: offset,
                    how: "rejoin",
                });
            }
            (_, None) => {}
        }
        self.check.epoch = Some(epoch);
        self.check.offset = offset;
        // A publisher resumes at the next slot from now; the ones it was away for are skipped.
        if let Some(p) = self.log.publisher {
            let mut k = self.slot;
            while self.ctx.slot_ms(p, k) < now && self.ctx.phase() >= RUN {
                k += 1;
            }
            if let Some(pl) = self.publog.as_mut() {
                pl.skipped += k - self.slot;
            }
            self.slot = k;
        }
    }

    /// Serves one joined session until the socket ends or the run is over.
    async fn session(&mut self, mut sink: Sink, mut stream: Stream) -> Ended {
        let mut phase = self.ctx.phase.clone();
        let mut reconnect_after: Option<u64> = None;
        let pad = "x".repeat(self.ctx.s.payload);
        let ended = loop {
            let p = *phase.borrow();
            if p >= END {
                break Ended::RunOver;
            }
            let publishing = p == RUN && self.log.publisher.is_some();
            let next_slot = self
                .log
                .publisher
                .map_or(u64::MAX, |pb| self.ctx.slot_ms(pb, self.slot));
            tokio::select! {
                _ = phase.changed() => {}
                _ = tokio::time::sleep_until(at_ms(next_slot)), if publishing => {
                    let Some(pb) = self.log.publisher else { continue };
                    self.slot += 1;
                    self.seq += 1;
                    let sent = now_ms();
                    let data = json!({ "p": pb, "s": self.seq, "t": sent, "x": pad });
                    let room = self.room_name();
                    let (id, msg) = self.request("publish", json!({ "room": room, "data": data }));
                    self.pending.insert(id, (self.seq, sent));
                    if let Some(pl) = self.publog.as_mut() {
                        pl.sent += 1;
                    }
                    if let Err(e) = sink.send(msg).await {
                        self.end_session(&format!("error: {e}"));
                        break Ended::Dropped(None);
                    }
                }
                frame = stream.next() => {
                    let msg = match frame {
                        None => { self.end_session("eof"); break Ended::Dropped(reconnect_after); }
                        Some(Err(e)) => { self.end_session(&format!("error: {e}")); break Ended::Dropped(reconnect_after); }
                        Some(Ok(m)) => m,
                    };
                    if let Message::Close(c) = &msg {
                        let code = c.as_ref().map_or(1005, |c| u16::from(c.code));
                        self.end_session(&format!("close {code}"));
                        break Ended::Dropped(reconnect_after);
                    }
                    let Some(v) = decode(self.ctx.s.protocol, &msg) else { continue };
                    if let Some(id) = v["id"].as_u64() {
                        self.answered(id, &v);
                        continue;
                    }
                    match v["event"].as_str() {
                        Some("message") if v["room"].as_str() == Some(self.room_name().as_str()) => {
                            self.deliver(&v, "live");
                        }
                        Some("reconnect") => {
                            let after = v["afterMs"].as_u64().unwrap_or(0);
                            reconnect_after = Some(after);
                            if let Some(s) = self.log.sessions.last_mut() {
                                s.reconnect_after_ms = Some(after);
                            }
                        }
                        _ => {}
                    }
                }
            }
        };
        if matches!(ended, Ended::RunOver) {
            self.end_session("end");
            let _ = sink.close().await;
        }
        ended
    }

    fn answered(&mut self, id: u64, v: &Value) {
        let Some((seq, sent)) = self.pending.remove(&id) else {
            return;
        };
        let now = now_ms();
        let start = self.ctx.start_ms;
        let Some(pl) = self.publog.as_mut() else {
            return;
        };
        if let Some(e) = v.get("error") {
            let code = e["code"].as_str().unwrap_or("error").to_string();
            pl.failed.push((seq, sent, now, code));
        } else {
            pl.acked += 1;
            pl.acked_seqs.push((seq, sent));
            let second = (now.saturating_sub(start) / 1000) as usize;
            if pl.acked_per_sec.len() <= second {
                pl.acked_per_sec.resize(second + 1, 0);
            }
            pl.acked_per_sec[second] += 1;
        }
    }

    fn end_session(&mut self, how: &str) {
        if let Some(s) = self.log.sessions.last_mut() {
            if s.end_ms.is_none() {
                s.end_ms = Some(now_ms());
                s.end = how.to_string();
            }
        }
        if let Some(pl) = self.publog.as_mut() {
            let mut left: Vec<(u64, u64)> = self.pending.drain().map(|(_, v)| v).collect();
            left.sort_unstable();
            pl.unanswered.extend(left);
        }
    }

    /// The client's whole life: join, serve, reconnect, until the run is over.
    async fn run(mut self) -> Client {
        let mut phase = self.ctx.phase.clone();
        let mut attempt = 0u32;
        let mut wait: Option<u64> = None;
        loop {
            if let Some(ms) = wait.take() {
                let sleep = tokio::time::sleep(Duration::from_millis(ms));
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        _ = phase.changed() => if *phase.borrow() >= END { break },
                    }
                }
            }
            if self.ctx.phase() >= END {
                break;
            }
            match self.open().await {
                Ok((sink, stream)) => {
                    attempt = 0;
                    match self.session(sink, stream).await {
                        Ended::RunOver => {
                            self.log.connected_at_end = true;
                            break;
                        }
                        // A drain says when; otherwise a short backoff, with jitter.
                        Ended::Dropped(after) => {
                            wait = Some(after.unwrap_or(50).min(5000) + fastrand::u64(0..100));
                        }
                    }
                }
                Err(e) => {
                    self.log.failed_attempts += 1;
                    self.end_session(&format!("error: {e}"));
                    attempt += 1;
                    wait = Some((100u64 << attempt.min(5)).min(2000) + fastrand::u64(0..250));
                }
            }
        }
        self
    }
}

/// One `GET /readyz`: `200`, `503 <reason>`, `refused`, `timeout` or `error`.
async fn readyz_once(addr: &str) -> String {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_string())
    };
    match tokio::time::timeout(Duration::from_secs(1), get).await {
        Err(_) => "timeout".into(),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused".into(),
        Ok(Err(_)) => "error".into(),
        Ok(Ok(text)) => {
            let code = text.split_whitespace().nth(1).unwrap_or("?").to_string();
            let body = text.rsplit("\r\n\r\n").next().unwrap_or("").trim();
            if code == "200" || body.is_empty() {
                code
            } else {
                format!("{code} {body}")
            }
        }
    }
}

#[derive(Debug, Default, Serialize)]
struct ReadyzLog {
    /// (Unix ms, answer) at every change of answer.
    changes: Vec<(u64, String)>,
    polls: u64,
    /// The longest time between two polls, in ms (shows whether polling kept up).
    max_poll_gap_ms: u64,
}

async fn poll_readyz(base: String, phase: watch::Receiver<u8>) -> ReadyzLog {
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut log = ReadyzLog::default();
    let mut last_poll = 0u64;
    while *phase.borrow() < END {
        let now = now_ms();
        if last_poll > 0 {
            log.max_poll_gap_ms = log.max_poll_gap_ms.max(now.saturating_sub(last_poll));
        }
        last_poll = now;
        let answer = readyz_once(&addr).await;
        log.polls += 1;
        if log.changes.last().map(|c| &c.1) != Some(&answer) {
            log.changes.push((now, answer));
        }
        tokio::time::sleep(READYZ_EVERY).await;
    }
    log
}

#[derive(Debug, Serialize)]
struct Summary {
    clients: u64,
    joined_at_start: u64,
    reconnects: u64,
    failed_attempts: u64,
    failed_to_reconnect: Vec<u64>,
    sent: u64,
    acked: u64,
    failed: u64,
    unanswered: u64,
    failed_but_delivered: u64,
    unanswered_but_delivered: u64,
    delivered: u64,
    lost: u64,
    lost_behind_epoch_change: u64,
    /// Acknowledged messages that reached none of their room's members.
    lost_everywhere: u64,
    duplicates: u64,
    out_of_order: u64,
    offset_anomalies: u64,
    epoch_changes: u64,
}

/// Runs the scenario, prints a summary and writes `--json`.
pub async fn main(s: Settings) -> Result<()> {
    if s.protocol == Protocol::Socketio {
        bail!("chaos speaks the native protocol only (json or msgpack)");
    }
    if s.rooms == 0 || s.members == 0 || s.publishers == 0 || s.urls.is_empty() {
        bail!("chaos needs rooms, members, publishers and a url");
    }
    let s = Settings {
        publishers: s.publishers.min(s.rooms * s.members),
        ..s
    };
    let run_id = format!("{:08x}", fastrand::u32(..));
    let start_ms = now_ms() + (s.setup_secs * 1000.0) as u64;
    let (phase_tx, phase_rx) = watch::channel(SETUP);
    let ctx = Arc::new(Ctx {
        s: s.clone(),
        run_id,
        start_ms,
        phase: phase_rx.clone(),
    });

    let pollers: Vec<_> = s
        .readyz
        .iter()
        .map(|u| {
            let u = u.clone();
            (u.clone(), tokio::spawn(poll_readyz(u, phase_rx.clone())))
        })
        .collect();
    // Clients connect with bounded concurrency, member 0 of each room first.
    let total = s.rooms * s.members;
    let mut order: Vec<u64> = (0..total).filter(|g| g % s.members == 0).collect();
    order.extend((0..total).filter(|g| g % s.members != 0));
    let mut tasks = Vec::new();
    for (i, g) in order.into_iter().enumerate() {
        let client = Client::new(ctx.clone(), g);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i as u64 * 5)).await;
            client.run().await
        }));
    }

    // The clock: publish from start_ms until the stop file or --secs, then listen a while.
    tokio::time::sleep_until(at_ms(start_ms)).await;
    let _ = phase_tx.send(RUN);
    let publish_until = start_ms + (s.secs * 1000.0) as u64;
    loop {
        if now_ms() >= publish_until
            || s.stop_file
                .as_deref()
                .is_some_and(|f| std::path::Path::new(f).exists())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publish_end_ms = now_ms();
    let _ = phase_tx.send(DRAIN);
    tokio::time::sleep(Duration::from_secs(GRACE_SECS)).await;
    let _ = phase_tx.send(END);
    let end_ms = now_ms();

    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await?);
    }
    let mut readyz = BTreeMap::new();
    for (u, t) in pollers {
        readyz.insert(u, t.await?);
    }
    let summary = settle(&mut clients, &s);
    let (logs, pubs): (Vec<ClientLog>, Vec<Option<PublisherLog>>) =
        clients.into_iter().map(|c| (c.log, c.publog)).unzip();
    let pubs: Vec<PublisherLog> = pubs.into_iter().flatten().collect();

    println!(
        "chaos: {} clients ({} joined at start), {} reconnects, {} failed attempts, failed to reconnect {:?}",
        summary.clients, summary.joined_at_start, summary.reconnects, summary.failed_attempts, summary.failed_to_reconnect
    );
    println!(
        "  publishes: sent {} acked {} failed {} (delivered anyway {}) unanswered {} (delivered anyway {})",
        summary.sent, summary.acked, summary.failed, summary.failed_but_delivered, summary.unanswered, summary.unanswered_but_delivered
    );
    println!(
        "  deliveries {}: lost {} (behind an epoch change {}; acked but reached no member {}) dup {} ooo {} offset anomalies {} epoch changes {}",
        summary.delivered, summary.lost, summary.lost_behind_epoch_change, summary.lost_everywhere, summary.duplicates, summary.out_of_order, summary.offset_anomalies, summary.epoch_changes
    );
    for (u, r) in &readyz {
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
    if let Some(path) = &s.json {
        let doc = json!({
            "scenario": "chaos",
            "settings": {
                "urls": s.urls, "protocol": format!("{:?}", s.protocol).to_lowercase(),
                "rooms": s.rooms, "members": s.members, "publishers": s.publishers,
                "rate": s.rate, "payload": s.payload, "history": HISTORY, "gap_ms": GAP_MS,
                "readyz_every_ms": READYZ_EVERY.as_millis() as u64, "grace_secs": GRACE_SECS,
            },
            "run_id": ctx.run_id,
            "rooms": (0..s.rooms).map(|r| ctx.room(r)).collect::<Vec<_>>(),
            "start_ms": start_ms,
            "publish_end_ms": publish_end_ms,
            "end_ms": end_ms,
            "summary": summary,
            "clients": logs,
            "publishers": pubs,
            "readyz": readyz,
        });
        std::fs::write(path, serde_json::to_string(&doc)?)?;
    }
    Ok(())
}

/// Who lost what: compares every member's deliveries with its room's acknowledged publishes.
fn settle(clients: &mut [Client], s: &Settings) -> Summary {
    // Acknowledged (publisher, seq, sent) per room; and who received each.
    let mut acked: HashMap<u64, Vec<(u64, u64, u64)>> = HashMap::new();
    for c in clients.iter() {
        if let Some(pl) = &c.publog {
            let list = acked.entry(pl.room).or_default();
            list.extend(
                pl.acked_seqs
                    .iter()
                    .map(|(seq, t)| (pl.publisher, *seq, *t)),
            );
        }
    }
    let got = |c: &Client, p: u64, seq: u64| -> bool {
        c.check.seen.get(&p).is_some_and(|bits| {
            bits.get((seq / 64) as usize)
                .is_some_and(|w| w & (1 << (seq % 64)) != 0)
        })
    };
    let mut reached: HashMap<(u64, u64), u64> = HashMap::new();
    for client in clients.iter_mut() {
        let room = client.log.room;
        let Some(joined) = client.log.first_joined_ms else {
            continue;
        };
        let mut lost = Vec::new();
        let mut behind = 0u64;
        for &(p, seq, sent) in acked.get(&room).map(Vec::as_slice).unwrap_or(&[]) {
            if sent < joined {
                continue;
            }
            if got(client, p, seq) {
                *reached.entry((p, seq)).or_default() += 1;
                continue;
            }
            if client.log.epoch_changes.iter().any(|e| e.ms >= sent) {
                behind += 1;
            }
            lost.push((p, seq, sent));
        }
        let log = &mut client.log;
        log.lost = lost.len() as u64;
        log.lost_behind_epoch_change = behind;
        lost.truncate(LIST_CAP);
        log.lost_list = lost;
    }
    // Failed or unanswered publishes that were delivered after all.
    for i in 0..clients.len() {
        let Some(pl) = &clients[i].publog else {
            continue;
        };
        let (p, room) = (pl.publisher, pl.room);
        let delivered_anywhere = |seq: u64| {
            clients
                .iter()
                .filter(|c| c.log.room == room)
                .any(|c| got(c, p, seq))
        };
        let failed = pl.failed.iter().filter(|f| delivered_anywhere(f.0)).count() as u64;
        let unanswered = pl
            .unanswered
            .iter()
            .filter(|u| delivered_anywhere(u.0))
            .count() as u64;
        if let Some(pl) = clients[i].publog.as_mut() {
            pl.failed_but_delivered = failed;
            pl.unanswered_but_delivered = unanswered;
        }
    }
    let logs = clients.iter().map(|c| &c.log);
    let pubs: Vec<&PublisherLog> = clients.iter().filter_map(|c| c.publog.as_ref()).collect();
    let lost_everywhere = acked
        .values()
        .flatten()
        .filter(|(p, seq, _)| !reached.contains_key(&(*p, *seq)))
        .count() as u64;
    Summary {
        clients: s.rooms * s.members,
        joined_at_start: clients
            .iter()
            .filter(|c| c.log.first_joined_ms.is_some_and(|j| j <= c.ctx.start_ms))
            .count() as u64,
        reconnects: logs
            .clone()
            .map(|l| {
                l.sessions
                    .iter()
                    .filter(|s| s.joined_ms.is_some())
                    .count()
                    .saturating_sub(1) as u64
            })
            .sum(),
        failed_attempts: logs.clone().map(|l| l.failed_attempts).sum(),
        failed_to_reconnect: logs
            .clone()
            .filter(|l| !l.connected_at_end)
            .map(|l| l.client)
            .collect(),
        sent: pubs.iter().map(|p| p.sent).sum(),
        acked: pubs.iter().map(|p| p.acked).sum(),
        failed: pubs.iter().map(|p| p.failed.len() as u64).sum(),
        unanswered: pubs.iter().map(|p| p.unanswered.len() as u64).sum(),
        failed_but_delivered: pubs.iter().map(|p| p.failed_but_delivered).sum(),
        unanswered_but_delivered: pubs.iter().map(|p| p.unanswered_but_delivered).sum(),
        delivered: logs.clone().map(|l| l.delivered).sum(),
        lost: logs.clone().map(|l| l.lost).sum(),
        lost_behind_epoch_change: logs.clone().map(|l| l.lost_behind_epoch_change).sum(),
        lost_everywhere,
        duplicates: logs.clone().map(|l| l.duplicates.len() as u64).sum(),
        out_of_order: logs.clone().map(|l| l.out_of_order.len() as u64).sum(),
        offset_anomalies: logs.clone().map(|l| l.offset_anomalies.len() as u64).sum(),
        epoch_changes: logs
            .map(|l| {
                l.epoch_changes
                    .iter()
                    .filter(|e| !e.from.is_empty())
                    .count() as u64
            })
            .sum(),
    }
}
