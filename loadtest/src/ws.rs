//! The one WebSocket client of both tools: a TCP socket from a chosen source address (and with
//! a chosen receive buffer), the upgrade with admission refusals told apart (an HTTP status and
//! its `Retry-After`, a close code before the welcome), the protocol's own handshake, and
//! [`Conn`], a connection that sends requests and waits for their replies.
//!
//! Nothing reads a socket behind the caller's back: a [`Conn`] that is not polled does not
//! read, which is what the slow readers of `roomcast-checks floods slow` rely on.

use crate::proto::{Incoming, Protocol, Reply};
use anyhow::{anyhow, bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;
pub type Sink = SplitSink<Ws, Message>;
pub type Stream = SplitStream<Ws>;

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Conn::request`] waits for its reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How to open a socket.
#[derive(Debug, Clone, Copy)]
pub struct Dial {
    /// Source address (to use more than one address's ephemeral ports).
    pub source: Option<IpAddr>,
    /// `SO_RCVBUF`, set before connecting (a small one makes the server's side fill quickly).
    pub rcvbuf: Option<u32>,
    /// An 8 KiB read buffer and no write buffer instead of tungstenite's 128 KiB: for tens of
    /// thousands of sockets in one process.
    pub small_buffers: bool,
    /// How long the upgrade may take once connected.
    pub handshake_timeout: Duration,
}

impl Default for Dial {
    fn default() -> Dial {
        Dial {
            source: None,
            rcvbuf: None,
            small_buffers: false,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Dial {
    pub fn from(source: Option<IpAddr>) -> Dial {
        Dial {
            source,
            ..Dial::default()
        }
    }
}

/// Why a connection attempt did not end in a usable socket.
#[derive(Debug, Clone)]
pub enum Refused {
    /// An HTTP status instead of the upgrade, with its `Retry-After` in seconds.
    Status { code: u16, retry_after: Option<f64> },
    /// Upgraded, then closed with this code before the welcome (4008, 4001…).
    Close(u16),
    /// TCP or WebSocket failure, or a timeout.
    Io(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Status { code, .. } => write!(f, "HTTP {code} instead of the upgrade"),
            Refused::Close(code) => write!(f, "closed before welcome: {code}"),
            Refused::Io(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Refused {}

/// A TCP connection to the host and port of `url` (`ws://host:port/…`).
pub async fn tcp(url: &str, dial: &Dial) -> Result<TcpStream> {
    let uri: Uri = url.parse().with_context(|| format!("url {url}"))?;
    let host = uri.host().ok_or_else(|| anyhow!("no host in {url}"))?;
    let port = uri.port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {host}"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = dial.rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = dial.source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding {ip}"))?;
    }
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// Connects and upgrades `url` (a whole WebSocket URL, query included).
pub async fn upgrade(url: &str, dial: &Dial) -> Result<Ws, Refused> {
    let request = url
        .into_client_request()
        .map_err(|e| Refused::Io(e.to_string()))?;
    let stream = tcp(url, dial)
        .await
        .map_err(|e| Refused::Io(format!("connect: {e}")))?;
    let config = dial.small_buffers.then(|| {
        WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
    });
    let handshake = tokio::time::timeout(
        dial.handshake_timeout,
        tokio_tungstenite::client_async_with_config(request, stream, config),
    )
    .await;
    match handshake {
        Err(_) => Err(Refused::Io("handshake timeout".into())),
        Ok(Err(WsError::Http(resp))) => Err(Refused::Status {
            code: resp.status().as_u16(),
            retry_after: resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<f64>().ok()),
        }),
        Ok(Err(e)) => Err(Refused::Io(format!("handshake: {e}"))),
        Ok(Ok((ws, _))) => Ok(ws),
    }
}

/// Connects to `base` (`ws://host:port`) in `protocol`, with `token` when given, and
/// completes the protocol's own handshake (Socket.IO's namespace connect).
pub async fn connect(
    base: &str,
    protocol: Protocol,
    token: Option<&str>,
    dial: &Dial,
) -> Result<Conn, Refused> {
    let ws = upgrade(&protocol.url(base, token), dial).await?;
    let mut conn = Conn::new(ws, protocol);
    if let Some(packet) = protocol.connect_packet(token) {
        conn.socketio_connect(packet)
            .await
            .map_err(|e| Refused::Io(e.to_string()))?;
    }
    Ok(conn)
}

/// An open connection: requests with their own ids, replies waited for in order of arrival.
pub struct Conn {
    pub sink: Sink,
    pub stream: Stream,
    pub protocol: Protocol,
    /// `traffic_status` levels seen while waiting for replies.
    pub levels: Vec<String>,
    next_id: u64,
}

impl Conn {
    pub fn new(ws: Ws, protocol: Protocol) -> Conn {
        let (sink, stream) = ws.split();
        Conn {
            sink,
            stream,
            protocol,
            levels: Vec::new(),
            next_id: 0,
        }
    }

    /// The socket again, whole (to reach the TCP stream, or to hand it on).
    pub fn into_ws(self) -> Option<Ws> {
        self.stream.reunite(self.sink).ok()
    }

    /// Engine.IO open, then our namespace CONNECT, then the server's CONNECT reply.
    async fn socketio_connect(&mut self, packet: Message) -> Result<()> {
        let open = self.next_text().await?;
        if !open.starts_with('0') {
            bail!("expected an Engine.IO open packet, got {open}");
        }
        self.sink.send(packet).await?;
        let reply = self.next_text().await?;
        if !reply.starts_with("40") {
            bail!("namespace connect refused: {reply}");
        }
        Ok(())
    }

    async fn next_text(&mut self) -> Result<String> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await?
                .ok_or_else(|| anyhow!("closed during handshake"))??;
            if let Message::Text(t) = msg {
                return Ok(t.to_string());
            }
        }
    }

    /// Reads up to the native protocol's `welcome` event and returns it; `limit` is for each
    /// frame. A close before it is [`Refused::Close`].
    pub async fn welcome(&mut self, limit: Duration) -> Result<Value, Refused> {
        loop {
            let msg = match tokio::time::timeout(limit, self.stream.next()).await {
                Err(_) => return Err(Refused::Io("no welcome".into())),
                Ok(None | Some(Err(_))) => return Err(Refused::Io("closed before welcome".into())),
                Ok(Some(Ok(msg))) => msg,
            };
            if let Message::Close(frame) = &msg {
                return Err(Refused::Close(close_code(frame.as_ref())));
            }
            if let Some(v) = self.protocol.value(&msg) {
                if v["event"] == "welcome" {
                    return Ok(v);
                }
            }
        }
    }

    /// Sends a request without waiting; returns its id.
    pub async fn send(&mut self, op: &str, args: Value) -> Result<u64> {
        self.next_id += 1;
        let id = self.next_id;
        self.sink.send(self.protocol.request(id, op, args)).await?;
        Ok(id)
    }

    /// Sends a request and waits (up to [`REPLY_TIMEOUT`]) for its reply; other frames are
    /// skipped, pings answered, traffic levels noted.
    pub async fn request(&mut self, op: &str, args: Value) -> Result<Reply> {
        let id = self.send(op, args).await?;
        let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| anyhow!("no reply to {op}"))?
                .ok_or_else(|| anyhow!("closed"))??;
            if let Message::Close(frame) = &msg {
                bail!("closed: {}", close_code(frame.as_ref()));
            }
            match self.protocol.decode(&msg) {
                Incoming::Reply { id: got, reply } if got == id => return Ok(reply),
                Incoming::Traffic(level) if !self.levels.contains(&level) => {
                    self.levels.push(level)
                }
                Incoming::Ping => {
                    if let Some(pong) = self.protocol.pong() {
                        self.sink.send(pong).await?;
                    }
                }
                _ => {}
            }
        }
    }

    /// Like [`Conn::request`]: `Ok(None)` on success, `Ok(Some(code))` on an error reply.
    pub async fn call(&mut self, op: &str, args: Value) -> Result<Option<String>> {
        Ok(self.request(op, args).await?.err().map(|f| f.code))
    }
}

/// A close frame's code; 1005 (no code) for none.
pub fn close_code(frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> u16 {
    frame.map_or(1005, |f| u16::from(f.code))
}
