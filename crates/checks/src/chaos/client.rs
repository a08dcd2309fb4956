//! One `chaos` client through its whole life: connect, join (with `since` on a re-join),
//! publish on schedule if it is a publisher (retrying as publish.rs says), check every
//! delivery, and reconnect whenever its socket ends, until the run is over.

use super::positions::Positions;
use super::publish::{Outbox, View};
use super::record::{ClientLog, EpochChange, OffsetAnomaly, PublisherLog, Session};
use super::{at_ms, now_ms, Ctx, DRAIN, END, GAP_MS, HISTORY, RUN};
use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use roomcast_loadtest::ws::{self, Conn, Dial, Sink};
use roomcast_loadtest::{mint, Seen};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Per-client checking state (not reported).
#[derive(Default)]
pub struct Check {
    epoch: Option<String>,
    offset: u64,
    pub seen: Seen,
    last_seq: HashMap<u64, u64>,
    /// What was delivered at each (epoch, offset), for the divergence check.
    pub positions: Positions,
}

pub struct Client {
    pub ctx: Arc<Ctx>,
    pub log: ClientLog,
    pub publog: Option<PublisherLog>,
    pub check: Check,
    /// A publisher's messages whose fate is not known yet.
    outbox: Outbox,
    seq: u64,
    /// Next schedule slot of a publisher.
    slot: u64,
}

/// How one session ended.
enum Ended {
    /// The socket ended; reconnect after this many ms (a `reconnect` event's `afterMs`).
    Dropped(Option<u64>),
    /// The run is over.
    RunOver,
}

impl Client {
    pub fn new(ctx: Arc<Ctx>, g: u64) -> Client {
        let room = g / ctx.s.members;
        let publog = ctx.publisher_of(g).map(|p| PublisherLog {
            publisher: p,
            room,
            client: g,
            start_ms: ctx.start_ms,
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
            outbox: Outbox::default(),
            seq: 0,
            slot: 0,
        }
    }

    fn room_name(&self) -> String {
        self.ctx.room(self.log.room)
    }

    /// The client's whole life: join, serve, reconnect, until the run is over.
    pub async fn run(mut self) -> Client {
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
                Ok(conn) => {
                    attempt = 0;
                    match self.session(conn).await {
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
        if let Some(pl) = self.publog.as_mut() {
            self.outbox.finish(pl);
        }
        self
    }

    /// Connects, reads the welcome, joins (creating the room first for member 0 on the first
    /// join; with `since` on a re-join).
    async fn open(&mut self) -> Result<Conn> {
        let mut conn = self.connect().await?;
        let room = self.room_name();
        if self.log.first_joined_ms.is_none() && self.log.client.is_multiple_of(self.ctx.s.members)
        {
            let options = json!({ "historySize": HISTORY });
            match conn
                .request("create_room", json!({ "room": room, "options": options }))
                .await?
            {
                Ok(_) => {}
                Err(f) if f.code == "room_exists" => {}
                Err(f) => bail!("create_room: {}", f.code),
            }
        }
        self.join(&mut conn, &room).await?;
        Ok(conn)
    }

    /// A new connection through the next `--url`, and its session record (the welcome names
    /// the node).
    async fn connect(&mut self) -> Result<Conn> {
        let g = self.log.client;
        let s = &self.ctx.s;
        let token = s
            .jwt_secret
            .as_deref()
            .and_then(|k| mint(k, &format!("chaos-{}-{g}", self.ctx.run_id)));
        let url = &s.url[(g as usize + self.log.sessions.len()) % s.url.len()];
        let mut conn = ws::connect(url, s.protocol, token.as_deref(), &Dial::default()).await?;
        let connected_ms = now_ms();
        let welcome = conn.welcome(Duration::from_secs(5)).await?;
        let node = welcome["node"].as_str().unwrap_or("?");
        self.log.sessions.push(Session::new(connected_ms, node));
        Ok(conn)
    }

    /// Joins `room`, with `since` = the last offset and epoch seen; retries `unavailable`,
    /// `not_found` and `internal` for up to 20 s, as the error's `retryAfterMs` says.
    async fn join(&mut self, conn: &mut Conn, room: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut args = json!({ "room": room });
            if let Some(epoch) = &self.check.epoch {
                args["since"] = json!({ "offset": self.check.offset, "epoch": epoch });
            }
            let failed = match conn.request("join", args).await? {
                Ok(ok) => {
                    self.joined(&ok);
                    return Ok(());
                }
                Err(failed) => failed,
            };
            let code = failed.code;
            *self.log.join_errors.entry(code.clone()).or_default() += 1;
            let again = matches!(code.as_str(), "unavailable" | "not_found" | "internal");
            if !again || tokio::time::Instant::now() > deadline || self.ctx.phase() >= END {
                bail!("join: {code}");
            }
            let retry = failed.retry_after_ms.unwrap_or(200);
            tokio::time::sleep(Duration::from_millis(retry.clamp(100, 2000))).await;
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
        self.skip_missed_slots(now);
    }

    /// A publisher resumes at the next slot from `now`; the ones it was away for are skipped.
    fn skip_missed_slots(&mut self, now: u64) {
        let Some(p) = self.log.publisher else {
            return;
        };
        let mut k = self.slot;
        while self.ctx.slot_ms(p, k) < now && self.ctx.phase() >= RUN {
            k += 1;
        }
        if let Some(pl) = self.publog.as_mut() {
            pl.skipped += k - self.slot;
        }
        self.slot = k;
    }

    /// Records one delivered message: offsets, then content.
    fn deliver(&mut self, m: &Value, source: &'static str) {
        let now = now_ms();
        self.check_offset(m, source, now);
        let data = &m["data"];
        let (Some(p), Some(s)) = (data["p"].as_u64(), data["s"].as_u64()) else {
            return;
        };
        let sent = data["t"].as_u64().unwrap_or(0);
        let (epoch, offset) = (m["epoch"].as_str().unwrap_or(""), m["offset"].as_u64());
        self.check
            .positions
            .record(epoch, offset.unwrap_or(0), (p, s, sent));
        if !self.check.seen.insert(p, s) {
            let places = self.check.positions.places(p, s);
            self.log.duplicates.push((p, s, sent, now, places));
            return;
        }
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

    /// Within an epoch, each message must carry the last offset + 1; a new epoch is recorded.
    fn check_offset(&mut self, m: &Value, source: &'static str, now: u64) {
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
    }

    /// Serves one joined session until the socket ends or the run is over.
    async fn session(&mut self, mut conn: Conn) -> Ended {
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
            let retry = self.outbox.next_due().filter(|_| p == RUN || p == DRAIN);
            tokio::select! {
                _ = phase.changed() => {}
                _ = tokio::time::sleep_until(at_ms(next_slot)), if publishing => {
                    if let Err(e) = self.publish(&mut conn.sink, &pad).await {
                        self.end_session(&format!("error: {e}"));
                        break Ended::Dropped(None);
                    }
                }
                _ = tokio::time::sleep_until(at_ms(retry.unwrap_or(u64::MAX))), if retry.is_some() => {
                    if let Err(e) = self.send_due(&mut conn.sink).await {
                        self.end_session(&format!("error: {e}"));
                        break Ended::Dropped(None);
                    }
                }
                frame = conn.stream.next() => {
                    if let Some(how) = self.on_frame(frame, &mut reconnect_after) {
                        self.end_session(&how);
                        break Ended::Dropped(reconnect_after);
                    }
                }
            }
        };
        if matches!(ended, Ended::RunOver) {
            self.end_session("end");
            let _ = conn.sink.close().await;
        }
        ended
    }

    /// Sends the publish of the current slot: a new message with its own `msgId`.
    async fn publish(&mut self, sink: &mut Sink, pad: &str) -> Result<()> {
        let Some(pb) = self.log.publisher else {
            return Ok(());
        };
        self.slot += 1;
        self.seq += 1;
        let sent = now_ms();
        let data = json!({ "p": pb, "s": self.seq, "t": sent, "x": pad });
        let view = self.view();
        (self.outbox).add(self.seq, data, format!("p{pb}-{}", self.seq), sent, view);
        self.send_due(sink).await
    }

    /// Sends every message that is due: a new one, or a retry.
    async fn send_due(&mut self, sink: &mut Sink) -> Result<()> {
        let Some(pl) = self.publog.as_mut() else {
            return Ok(());
        };
        let now = now_ms();
        let room = self.ctx.room(self.log.room);
        for seq in self.outbox.due(now) {
            if let Some((id, args)) = self.outbox.attempt(seq, &room, now, pl) {
                sink.send(self.ctx.s.protocol.request(id, "publish", args))
                    .await?;
            }
        }
        Ok(())
    }

    /// The publisher's view of its room: the epoch and last offset it has seen.
    fn view(&self) -> View {
        (self.check.epoch.clone()).map(|e| (e, self.check.offset))
    }

    /// One frame of a session; `Some(how)` when the socket ended.
    fn on_frame(
        &mut self,
        frame: Option<Result<Message, WsError>>,
        reconnect_after: &mut Option<u64>,
    ) -> Option<String> {
        let msg = match frame {
            None => return Some("eof".into()),
            Some(Err(e)) => return Some(format!("error: {e}")),
            Some(Ok(m)) => m,
        };
        if let Message::Close(c) = &msg {
            return Some(format!("close {}", ws::close_code(c.as_ref())));
        }
        let v = self.ctx.s.protocol.value(&msg)?;
        if let Some(id) = v["id"].as_u64() {
            self.answered(id, &v);
            return None;
        }
        match v["event"].as_str() {
            Some("message") if v["room"].as_str() == Some(self.room_name().as_str()) => {
                self.deliver(&v, "live");
            }
            Some("reconnect") => {
                let after = v["afterMs"].as_u64().unwrap_or(0);
                *reconnect_after = Some(after);
                if let Some(s) = self.log.sessions.last_mut() {
                    s.reconnect_after_ms = Some(after);
                }
            }
            _ => {}
        }
        None
    }

    /// The answer to a publish: acknowledged, or an error (retried or given up).
    fn answered(&mut self, id: u64, v: &Value) {
        let view = self.view();
        if let Some(pl) = self.publog.as_mut() {
            self.outbox.answered(id, v, now_ms(), &view, pl);
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
            self.outbox.connection_lost(now_ms(), pl);
        }
    }
}
