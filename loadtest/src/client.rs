//! One load client: a WebSocket connection from a chosen source address.

use crate::proto::{Incoming, Protocol};
use anyhow::{anyhow, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;
pub type Stream = SplitStream<WebSocketStream<TcpStream>>;

pub struct Conn {
    pub sink: Sink,
    pub stream: Stream,
    pub protocol: Protocol,
    /// `traffic_status` levels seen while waiting for replies.
    pub levels: Vec<String>,
    next_id: u64,
}

/// Connects to `base` (`ws://host:port`), from `source` when given (to use more than one
/// address's ephemeral ports), and completes the protocol's handshake.
pub async fn connect(
    base: &str,
    protocol: Protocol,
    source: Option<IpAddr>,
    token: Option<&str>,
) -> Result<Conn> {
    let url = protocol.url(base, token);
    let request = url.as_str().into_client_request()?;
    let host = request
        .uri()
        .host()
        .ok_or_else(|| anyhow!("no host in {url}"))?
        .to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| anyhow!("cannot resolve {host}"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding {ip}"))?;
    }
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr)).await??;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, tcp),
    )
    .await??;
    let (mut sink, mut stream) = ws.split();
    if let Some(connect) = protocol.connect_packet(token) {
        // Engine.IO open, then our namespace CONNECT, then the server's CONNECT reply.
        let open = next_text(&mut stream).await?;
        if !open.starts_with('0') {
            return Err(anyhow!("expected an Engine.IO open packet, got {open}"));
        }
        sink.send(connect).await?;
        let reply = next_text(&mut stream).await?;
        if !reply.starts_with("40") {
            return Err(anyhow!("namespace connect refused: {reply}"));
        }
    }
    Ok(Conn {
        sink,
        stream,
        protocol,
        levels: Vec::new(),
        next_id: 0,
    })
}

async fn next_text(stream: &mut Stream) -> Result<String> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .ok_or_else(|| anyhow!("closed during handshake"))??;
        if let Message::Text(t) = msg {
            return Ok(t.to_string());
        }
    }
}

impl Conn {
    /// Sends a request without waiting; returns its id.
    pub async fn send(&mut self, op: &str, args: Value) -> Result<u64> {
        self.next_id += 1;
        let id = self.next_id;
        self.sink.send(self.protocol.request(id, op, args)).await?;
        Ok(id)
    }

    /// Sends a request and waits for its reply (other frames are skipped). `Ok(None)` on
    /// success, `Ok(Some(code))` on an error reply.
    pub async fn call(&mut self, op: &str, args: Value) -> Result<Option<String>> {
        let id = self.send(op, args).await?;
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await?
                .ok_or_else(|| anyhow!("closed"))??;
            match self.protocol.decode(&msg) {
                Incoming::Reply { id: got, error } if got == id => return Ok(error),
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
}
