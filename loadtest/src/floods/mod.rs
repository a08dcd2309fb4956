//! Floods and slow consumers (issue 7): four checks that run real clients over real sockets
//! against running gateways, print their numbers, and fail (exit code 1) when a bound does not
//! hold.
//!
//! | subcommand | what it does |
//! |---|---|
//! | `storm` | N clients (re)connect to one gateway within a window; they honour `Retry-After` |
//! | `flood` | one user publishes as fast as it can through every gateway; others measure latency |
//! | `slow-readers` | raw clients that stop reading, in a busy room: 4009, memory, the others |
//! | `huge-room` | one room of N members over every gateway, plus churn; presence must be exact |
//!
//! `loadtest/floods.sh` starts the gateways and Redis Cluster and runs them (`make floods`).

pub mod flood;
pub mod raw;
pub mod room;
pub mod slow;
pub mod storm;

use crate::engine::now_us;
use anyhow::{anyhow, bail, Result};
use clap::{Parser, Subcommand};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The subcommands this module answers.
pub const NAMES: &[&str] = &["storm", "flood", "slow-readers", "huge-room"];

#[derive(Debug, Parser)]
#[command(
    name = "roomcast-loadtest",
    about = "Floods and slow consumers: checks with bounds"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Reconnect storm against one gateway.
    Storm(storm::Args),
    /// One user floods publishes through every gateway.
    Flood(flood::Args),
    /// Clients that stop reading, in a busy room.
    SlowReaders(slow::Args),
    /// One huge room over every gateway, with churn; presence must be exact.
    HugeRoom(room::Args),
}

/// Runs a flood check when the first argument names one; `None` otherwise.
pub async fn dispatch() -> Option<Result<()>> {
    let first = std::env::args().nth(1)?;
    if !NAMES.contains(&first.as_str()) {
        return None;
    }
    let cli = Cli::parse();
    Some(match cli.cmd {
        Cmd::Storm(a) => storm::run(a).await,
        Cmd::Flood(a) => flood::run(a).await,
        Cmd::SlowReaders(a) => slow::run(a).await,
        Cmd::HugeRoom(a) => room::run(a).await,
    })
}

/// Flags every check takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Gateway base URLs (`ws://host:port`), comma separated; clients go round-robin.
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8281")]
    pub url: Vec<String>,
    /// HS256 secret the gateways verify (`--jwt-secret`); one user per client.
    #[arg(long, default_value = "floods-secret")]
    pub jwt_secret: String,
    /// Source addresses for client sockets, e.g. `127.0.0.2-127.0.0.40`.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Gateway pids, to sample their resident memory from /proc.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Write the numbers as JSON to this file.
    #[arg(long)]
    pub json: Option<String>,
}

impl Common {
    pub fn sources(&self) -> Result<Vec<IpAddr>> {
        match &self.source_ips {
            Some(spec) => parse_sources(spec),
            None => Ok(Vec::new()),
        }
    }

    /// `http://host:port` of gateway `i`.
    pub fn http(&self, i: usize) -> String {
        self.url[i % self.url.len()].replacen("ws://", "http://", 1)
    }

    pub fn token(&self, user: &str) -> String {
        crate::engine::mint(&self.jwt_secret, user).unwrap_or_default()
    }
}

/// The main tool's `--source-ips` parser, shared.
pub(crate) use crate::parse_sources;

pub fn pick(sources: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!sources.is_empty()).then(|| sources[i % sources.len()])
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh run id, so that rooms and users of one run never meet another's.
pub fn run_id() -> String {
    format!("{:06x}", fastrand::u32(..0xff_ffff))
}

// ---------------------------------------------------------------------------------------
// Connecting, with admission refusals told apart.

pub type Ws = WebSocketStream<TcpStream>;
pub type Sink = SplitSink<Ws, Message>;

/// Why a connection attempt did not end in a welcome.
#[derive(Debug, Clone)]
pub enum Refused {
    /// An HTTP status instead of the upgrade, with its `Retry-After` in seconds.
    Status { code: u16, retry_after: Option<f64> },
    /// Upgraded, then closed with this code (4008, 4001…).
    Close(u16),
    /// TCP or WebSocket failure, or a timeout.
    Io(#[allow(dead_code)] String),
}

/// A TCP connection from `source` (if any) to `base`'s host and port.
pub async fn tcp(base: &str, source: Option<IpAddr>, rcvbuf: Option<u32>) -> Result<TcpStream> {
    let hostport = base
        .trim_start_matches("ws://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let addr: SocketAddr = tokio::net::lookup_host(hostport)
        .await?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {hostport}"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// One attempt: upgrade `base/ws` with `token` and read the welcome.
pub async fn open(base: &str, source: Option<IpAddr>, token: &str) -> Result<(Ws, Value), Refused> {
    let url = format!(
        "{}/ws?format=json&token={token}",
        base.trim_end_matches('/')
    );
    let request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Refused::Io(e.to_string()))?;
    let stream = tcp(base, source, None)
        .await
        .map_err(|e| Refused::Io(format!("connect: {e}")))?;
    // tungstenite's default 128 KiB read buffer per socket would be 2.5 GiB for 20k clients.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let handshake = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await;
    let mut ws = match handshake {
        Err(_) => return Err(Refused::Io("handshake timeout".into())),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok());
            return Err(Refused::Status {
                code: resp.status().as_u16(),
                retry_after,
            });
        }
        Ok(Err(e)) => return Err(Refused::Io(format!("handshake: {e}"))),
        Ok(Ok((ws, _))) => ws,
    };
    loop {
        let next = tokio::time::timeout(Duration::from_secs(15), ws.next()).await;
        match next {
            Err(_) => return Err(Refused::Io("no welcome".into())),
            Ok(None) | Ok(Some(Err(_))) => return Err(Refused::Io("closed before welcome".into())),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(Refused::Close(frame.map_or(1005, |f| u16::from(f.code))))
            }
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                if v["event"] == "welcome" {
                    return Ok((ws, v));
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Refusals seen on the way in.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Admission {
    pub attempts: u64,
    /// HTTP 503 answers, and those among them without a usable `Retry-After`.
    pub refused_503: u64,
    pub refused_503_without_retry_after: u64,
    /// Other HTTP statuses.
    pub refused_other_status: u64,
    /// Closed with 4008 after the upgrade.
    pub refused_4008: u64,
    pub refused_other_close: u64,
    pub io_errors: u64,
    /// The `Retry-After` values seen (seconds → count).
    pub retry_after_values: BTreeMap<String, u64>,
}

impl Admission {
    pub fn merge(&mut self, o: &Admission) {
        self.attempts += o.attempts;
        self.refused_503 += o.refused_503;
        self.refused_503_without_retry_after += o.refused_503_without_retry_after;
        self.refused_other_status += o.refused_other_status;
        self.refused_4008 += o.refused_4008;
        self.refused_other_close += o.refused_other_close;
        self.io_errors += o.io_errors;
        for (k, v) in &o.retry_after_values {
            *self.retry_after_values.entry(k.clone()).or_default() += v;
        }
    }
}

/// Connects until welcomed or `deadline_us` passes, waiting `Retry-After` plus up to as much
/// again (jitter) after a 503, and about a second (with jitter) after anything else.
pub async fn open_retrying(
    base: &str,
    source: Option<IpAddr>,
    token: &str,
    deadline_us: u64,
    adm: &mut Admission,
) -> Result<(Ws, Value)> {
    loop {
        adm.attempts += 1;
        let wait = match open(base, source, token).await {
            Ok(pair) => return Ok(pair),
            Err(Refused::Status { code, retry_after }) => {
                if code == 503 {
                    adm.refused_503 += 1;
                    match retry_after {
                        Some(s) => *adm.retry_after_values.entry(format!("{s}")).or_default() += 1,
                        None => adm.refused_503_without_retry_after += 1,
                    }
                } else {
                    adm.refused_other_status += 1;
                }
                retry_after.unwrap_or(1.0)
            }
            Err(Refused::Close(code)) => {
                if code == 4008 {
                    adm.refused_4008 += 1;
                } else {
                    adm.refused_other_close += 1;
                }
                1.0
            }
            Err(Refused::Io(_)) => {
                adm.io_errors += 1;
                1.0
            }
        };
        let sleep = wait * (1.0 + fastrand::f64());
        if now_us() + (sleep * 1e6) as u64 > deadline_us {
            bail!("gave up at the deadline");
        }
        tokio::time::sleep(Duration::from_secs_f64(sleep)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A connected client whose socket is always read: replies go to their callers, `message`
// events to a callback, everything else is counted.

pub type OnMessage = Arc<dyn Fn(&Value) + Send + Sync>;
pub type OnFrame = Arc<dyn Fn(&str) + Send + Sync>;

pub struct Peer {
    sink: Arc<tokio::sync::Mutex<Sink>>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<String>>>>,
    next_id: AtomicU64,
    pub conn_id: String,
    pub stats: Arc<PeerStats>,
    reader: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
pub struct PeerStats {
    /// Frames that were neither replies nor messages (presence, traffic_status…).
    pub other_events: AtomicU64,
    pub messages: AtomicU64,
    /// Replies nobody waited for (sent with [`Peer::send`]): ok, and error codes.
    pub unclaimed_ok: AtomicU64,
    pub unclaimed_errors: Mutex<BTreeMap<String, u64>>,
    /// The close code the server sent, 0 while open, 1 if the socket ended without one.
    pub close_code: AtomicU64,
}

impl Peer {
    pub fn start(ws: Ws, welcome: &Value, on_message: Option<OnMessage>) -> Peer {
        Peer::start_with(ws, welcome, on_message, None)
    }

    /// Like [`Peer::start`]; `on_frame` also sees every text frame first, in order.
    pub fn start_with(
        ws: Ws,
        welcome: &Value,
        on_message: Option<OnMessage>,
        on_frame: Option<OnFrame>,
    ) -> Peer {
        let (sink, mut stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<String>>>> = Arc::default();
        let stats = Arc::new(PeerStats::default());
        let (p2, s2) = (pending.clone(), stats.clone());
        let reader = tokio::spawn(async move {
            loop {
                let msg = match stream.next().await {
                    Some(Ok(m)) => m,
                    _ => {
                        let _ = s2.close_code.compare_exchange(
                            0,
                            1,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        break;
                    }
                };
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Close(frame) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        s2.close_code.store(u64::from(code), Ordering::Release);
                        break;
                    }
                    _ => continue,
                };
                let t = text.as_str();
                if let Some(f) = &on_frame {
                    f(t);
                }
                if let Some(rest) = t.strip_prefix("{\"id\":") {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let id: Option<u64> = rest[..digits].parse().ok();
                    let waiter = id.and_then(|id| lock(&p2).remove(&id));
                    match waiter {
                        Some(tx) => {
                            let _ = tx.send(t.to_string());
                        }
                        None => match reply_error(t) {
                            None => {
                                s2.unclaimed_ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Some(code) => {
                                *lock(&s2.unclaimed_errors).entry(code).or_default() += 1;
                            }
                        },
                    }
                } else if t.starts_with("{\"event\":\"message\"") {
                    s2.messages.fetch_add(1, Ordering::Relaxed);
                    if let Some(f) = &on_message {
                        let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
                        f(&v);
                    }
                } else {
                    s2.other_events.fetch_add(1, Ordering::Relaxed);
                }
            }
            lock(&p2).clear();
        });
        Peer {
            sink,
            pending,
            next_id: AtomicU64::new(1),
            conn_id: welcome["connId"].as_str().unwrap_or("").to_string(),
            stats,
            reader,
        }
    }

    fn request(&self, op: &str, mut args: Value) -> (u64, Message) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(o) = args.as_object_mut() {
            o.insert("id".into(), json!(id));
            o.insert("op".into(), json!(op));
        }
        (id, Message::text(args.to_string()))
    }

    /// Sends a request and waits for its whole reply (`{"id","ok"}` or `{"id","error"}`).
    pub async fn call(&self, op: &str, args: Value) -> Result<Value> {
        let text = self.call_text(op, args).await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Sends a request; `None` when it succeeded, else the error code. The reply is not
    /// parsed when it is a success (a join reply in a huge room lists every member).
    pub async fn call_status(&self, op: &str, args: Value) -> Result<Option<String>> {
        let text = self.call_text(op, args).await?;
        Ok(reply_error(&text))
    }

    async fn call_text(&self, op: &str, args: Value) -> Result<String> {
        let (id, msg) = self.request(op, args);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        if let Err(e) = self.sink.lock().await.send(msg).await {
            lock(&self.pending).remove(&id);
            bail!("send: {e}");
        }
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => bail!("connection ended before the reply to {op}"),
            Err(_) => {
                lock(&self.pending).remove(&id);
                bail!("no reply to {op} within 60 s")
            }
        }
    }

    /// Like [`Peer::call`], but an error reply is an error.
    pub async fn ok(&self, op: &str, args: Value) -> Result<Value> {
        let v = self.call(op, args).await?;
        match v.get("ok") {
            Some(ok) => Ok(ok.clone()),
            None => bail!("{op}: {}", v["error"]),
        }
    }

    /// Sends without waiting; the reply is only counted.
    pub async fn send(&self, op: &str, args: Value) -> Result<()> {
        let (_, msg) = self.request(op, args);
        self.sink.lock().await.send(msg).await?;
        Ok(())
    }

    pub fn is_open(&self) -> bool {
        self.stats.close_code.load(Ordering::Acquire) == 0
    }

    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.sink.lock().await.close().await;
        })
        .await;
        self.reader.abort();
    }
}

/// `None` for an `ok` reply, else its error code; only an error reply is parsed.
pub fn reply_error(text: &str) -> Option<String> {
    let rest = text.strip_prefix("{\"id\":")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if rest[digits..].starts_with(",\"ok\"") {
        return None;
    }
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    Some(v["error"]["code"].as_str().unwrap_or("error").to_string())
}

/// Connects (retrying refusals for up to two minutes) and starts a [`Peer`].
pub async fn peer(
    base: &str,
    source: Option<IpAddr>,
    token: &str,
    on_message: Option<OnMessage>,
) -> Result<Peer> {
    peer_with(base, source, token, on_message, None).await
}

pub async fn peer_with(
    base: &str,
    source: Option<IpAddr>,
    token: &str,
    on_message: Option<OnMessage>,
    on_frame: Option<OnFrame>,
) -> Result<Peer> {
    let mut adm = Admission::default();
    let (ws, welcome) =
        open_retrying(base, source, token, now_us() + 120_000_000, &mut adm).await?;
    Ok(Peer::start_with(ws, &welcome, on_message, on_frame))
}

/// Joins `room`, waiting for it to exist (it may be created through another node).
pub async fn join(p: &Peer, room: &str) -> Result<()> {
    for _ in 0..100 {
        match p.call_status("join", json!({ "room": room })).await? {
            None => return Ok(()),
            Some(code) if code == "not_found" => {}
            Some(code) => bail!("join {room}: {code}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("join {room}: still not found")
}

// ---------------------------------------------------------------------------------------
// HTTP probes and /proc samples.

/// `GET path` on `http://host:port`: status and body, within `limit`.
pub async fn http_get(base: &str, path: &str, limit: Duration) -> Result<(u16, String)> {
    tokio::time::timeout(limit, async {
        let hostport = base.trim_start_matches("http://").trim_end_matches('/');
        let mut s = TcpStream::connect(hostport).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("no status line"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await
    .map_err(|_| anyhow!("no answer within {limit:?}"))?
}

/// The sum of a Prometheus counter over the series whose labels contain `labels`
/// (e.g. `reason="slow_consumer"`), from `/metrics` of every base.
pub async fn metric(bases: &[String], name: &str, labels: &str) -> Result<f64> {
    let mut sum = 0.0;
    for b in bases {
        let (_, text) = http_get(b, "/metrics", Duration::from_secs(10)).await?;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
                continue;
            }
            if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                sum += v;
            }
        }
    }
    Ok(sum)
}

/// Resident memory of `pids` (bytes), sampled every 100 ms while `stop` is false.
pub struct RssSampler {
    pub samples: Arc<Mutex<Vec<(u64, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> RssSampler {
        let samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s2, st2) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            while !st2.load(Ordering::Acquire) {
                let rss = crate::procs::sample(&pids).rss_bytes;
                lock(&s2).push((now_us(), rss));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssSampler {
            samples,
            stop,
            task,
        }
    }

    pub fn now(&self) -> u64 {
        lock(&self.samples).last().map_or(0, |s| s.1)
    }

    /// The highest sample between two instants (µs).
    pub fn peak(&self, from: u64, to: u64) -> u64 {
        lock(&self.samples)
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|s| s.1)
            .max()
            .unwrap_or(0)
    }

    pub async fn stop(self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Release);
        let _ = self.task.await;
        let v = lock(&self.samples).clone();
        v
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn histogram() -> Histogram<u64> {
    crate::stats::histogram()
}

/// p50/p99/max of a latency histogram in µs, as milliseconds.
pub fn pcts(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 10.0).round() / 100.0;
    if h.is_empty() {
        return json!({ "n": 0 });
    }
    json!({
        "n": h.len(),
        "p50_ms": ms(h.value_at_quantile(0.5)),
        "p99_ms": ms(h.value_at_quantile(0.99)),
        "max_ms": ms(h.max()),
    })
}

pub fn pcts_line(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    )
}

// ---------------------------------------------------------------------------------------
// Results: a table of numbers and a list of checked bounds.

#[derive(Debug, Default)]
pub struct Outcome {
    pub check: String,
    pub rows: Vec<(String, String)>,
    pub asserts: Vec<(String, bool)>,
    pub json: serde_json::Map<String, Value>,
}

impl Outcome {
    pub fn new(check: &str) -> Outcome {
        Outcome {
            check: check.to_string(),
            ..Outcome::default()
        }
    }

    pub fn row(&mut self, name: &str, value: impl std::fmt::Display) {
        self.rows.push((name.to_string(), value.to_string()));
    }

    pub fn val(&mut self, key: &str, value: impl serde::Serialize) {
        self.json.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    pub fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.asserts.push((what.into(), ok));
    }

    /// Prints the table and the bounds; writes JSON; fails if any bound failed.
    pub fn finish(mut self, json_path: Option<&str>) -> Result<()> {
        println!("\n## {}\n", self.check);
        println!("| measure | value |\n|---|---|");
        for (k, v) in &self.rows {
            println!("| {k} | {v} |");
        }
        println!();
        let mut failed = 0;
        for (what, ok) in &self.asserts {
            println!("{} {what}", if *ok { "PASS" } else { "FAIL" });
            failed += usize::from(!ok);
        }
        let rows: Vec<Value> = self.rows.iter().map(|(k, v)| json!([k, v])).collect();
        self.json.insert("table".into(), json!(rows));
        let asserts: Vec<Value> = self
            .asserts
            .iter()
            .map(|(k, ok)| json!({"bound": k, "ok": ok}))
            .collect();
        self.json.insert("bounds".into(), json!(asserts));
        if let Some(path) = json_path {
            std::fs::write(path, serde_json::to_string_pretty(&self.json)?)?;
        }
        if failed > 0 {
            bail!("{}: {failed} bound(s) failed", self.check);
        }
        println!("{}: all {} bounds hold", self.check, self.asserts.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_told_apart_without_parsing_successes() {
        assert_eq!(reply_error(r#"{"id":12,"ok":{"members":[]}}"#), None);
        assert_eq!(
            reply_error(r#"{"id":3,"error":{"code":"rate_limited","retryAfterMs":40}}"#).as_deref(),
            Some("rate_limited")
        );
        assert_eq!(
            parse_sources("127.0.0.2-127.0.0.4,10.0.0.1")
                .ok()
                .map(|v| v.len()),
            Some(4)
        );
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
    }
}
