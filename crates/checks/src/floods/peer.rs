//! A connected client whose socket is always read (by a task of its own): replies go to their
//! callers, `message` events to a callback, everything else is counted. Many requests can be
//! in flight at once.

use super::connect::{open_retrying, Admission};
use super::{dial, lock};
use anyhow::{bail, Result};
use futures_util::SinkExt;
use futures_util::StreamExt;
use roomcast_loadtest::now_us;
use roomcast_loadtest::proto::{json_reply_error, json_reply_id, Protocol};
use roomcast_loadtest::ws::{self, Conn, Sink};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

pub type OnMessage = Arc<dyn Fn(&Value) + Send + Sync>;
pub type OnFrame = Arc<dyn Fn(&str) + Send + Sync>;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<String>>>>;

pub struct Peer {
    sink: Arc<tokio::sync::Mutex<Sink>>,
    pending: Pending,
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

/// What the reader task does with each frame.
struct Reader {
    pending: Pending,
    stats: Arc<PeerStats>,
    on_message: Option<OnMessage>,
    on_frame: Option<OnFrame>,
}

impl Reader {
    /// Reads until the socket ends; then nobody waits for a reply any more.
    async fn run(self, mut stream: ws::Stream) {
        loop {
            let text = match stream.next().await {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(frame))) => {
                    let code = ws::close_code(frame.as_ref());
                    self.stats
                        .close_code
                        .store(u64::from(code), Ordering::Release);
                    break;
                }
                Some(Ok(_)) => continue,
                _ => {
                    let _ = self.stats.close_code.compare_exchange(
                        0,
                        1,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                    break;
                }
            };
            self.frame(text.as_str());
        }
        lock(&self.pending).clear();
    }

    /// Replies and messages are told apart by their first bytes; only what is used is parsed.
    fn frame(&self, t: &str) {
        if let Some(f) = &self.on_frame {
            f(t);
        }
        if t.starts_with("{\"id\":") {
            match json_reply_id(t).and_then(|id| lock(&self.pending).remove(&id)) {
                Some(tx) => {
                    let _ = tx.send(t.to_string());
                }
                None => match json_reply_error(t) {
                    None => {
                        self.stats.unclaimed_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(code) => {
                        *lock(&self.stats.unclaimed_errors).entry(code).or_default() += 1;
                    }
                },
            }
        } else if t.starts_with("{\"event\":\"message\"") {
            self.stats.messages.fetch_add(1, Ordering::Relaxed);
            if let Some(f) = &self.on_message {
                let v: Value = serde_json::from_str(t).unwrap_or(Value::Null);
                f(&v);
            }
        } else {
            self.stats.other_events.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Peer {
    pub fn start(conn: Conn, welcome: &Value, on_message: Option<OnMessage>) -> Peer {
        Peer::start_with(conn, welcome, on_message, None)
    }

    /// Like [`Peer::start`]; `on_frame` also sees every text frame first, in order.
    pub fn start_with(
        conn: Conn,
        welcome: &Value,
        on_message: Option<OnMessage>,
        on_frame: Option<OnFrame>,
    ) -> Peer {
        let pending: Pending = Arc::default();
        let stats = Arc::new(PeerStats::default());
        let reader = Reader {
            pending: pending.clone(),
            stats: stats.clone(),
            on_message,
            on_frame,
        };
        Peer {
            sink: Arc::new(tokio::sync::Mutex::new(conn.sink)),
            pending,
            next_id: AtomicU64::new(1),
            conn_id: welcome["connId"].as_str().unwrap_or("").to_string(),
            stats,
            reader: tokio::spawn(reader.run(conn.stream)),
        }
    }

    fn request(&self, op: &str, args: Value) -> (u64, Message) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (id, Protocol::Json.request(id, op, args))
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
        Ok(json_reply_error(&text))
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
    let deadline = now_us() + 120_000_000;
    let (conn, welcome) = open_retrying(base, token, &dial(source), deadline, &mut adm).await?;
    Ok(Peer::start_with(conn, &welcome, on_message, on_frame))
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

/// The connection ids a presence listing (a `presence` reply, or a join reply) names.
pub fn conn_ids(presence: &Value) -> impl Iterator<Item = String> + '_ {
    presence["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["connId"].as_str().map(str::to_string))
}
