//! One Socket.IO connection's Engine.IO side: the heartbeat, text and binary messages, and
//! the assembly of binary attachments. What the packets mean is in [`super::namespace`];
//! where they come from (a WebSocket, or long-polling, upgraded or not) is
//! [`super::engine::Engine`]'s business, not this file's.
//!
//! Server events reach this client through the shared fan-out already encoded as Socket.IO
//! text (`Format::SocketIo`): one encoding per broadcast, whatever the protocol mix.

use super::engine::{Engine, Pings};
use super::heartbeat;
use super::namespace::{push, random_id, Next, Sockets};
use crate::backend_hooks::connect::Handshake;
use crate::config::Config;
use crate::metrics::DisconnectReason;
use crate::node::Node;
use crate::session;
use crate::transport::{
    disconnect_reason, Driver, Ending, Live, Liveness, Read, Socket, SocketConfig, WriterConfig, Ws,
};
use bytes::Bytes;
use fan_out::Outbound;
use futures_util::stream::{FuturesUnordered, StreamExt};
use protocol::socketio::{self as sio, EnginePacket, Kind, Packet};
use protocol::{CloseCode, Format};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::Notify;
use tokio::time::{sleep, Sleep};

/// The reason of the close that answers the client's own close packet (`1`): over polling it
/// is acknowledged with a noop rather than a close packet.
pub const CLIENT_CLOSED: &str = "client closed";

/// What the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Socket.IO over Engine.IO (`/socket.io/`).
    SocketIo,
    /// A bare Engine.IO echo (`/engine.io/`, conformance mode only).
    EngineEcho,
}

/// The Socket.IO driver. Tokens come per namespace (in CONNECT packets), so it has no
/// admission of its own after the upgrade.
#[derive(Debug)]
pub struct SocketIo {
    pub mode: Mode,
    /// The client's address, for anonymous identities.
    pub ip: IpAddr,
    /// What the connect proxy is shown of the Engine.IO handshake, when there is one.
    pub handshake: Option<Arc<Handshake>>,
}

impl Driver for SocketIo {
    fn labels(&self) -> [&'static str; 2] {
        ["socketio", "socketio"]
    }

    /// A WebSocket-only session (no `sid`): the open packet offers no upgrade. Its Engine.IO
    /// pings come from the shared ping ticker, written by its writer task (see `serve`).
    // An `async move` block rather than an async fn: this future lives as long as the
    // connection, and an async fn's keeps each argument twice (see `lifecycle::run`).
    #[allow(clippy::manual_async_fn)] // on purpose: the comment above says why
    fn serve(
        self,
        node: Arc<Node>,
        ws: Ws,
        live: Live,
    ) -> impl std::future::Future<Output = DisconnectReason> + Send {
        async move {
            let config = SocketConfig {
                writer: WriterConfig::with_engine_io_pings(&node.config),
                ..socket_config(&node.config)
            };
            let socket = Socket::open(ws, config, node.metrics.clone());
            let cfg = &node.config;
            push(
                &socket.outbound,
                sio::open_packet(
                    &random_id(),
                    &[],
                    cfg.socketio_ping_interval.as_millis() as u64,
                    cfg.socketio_ping_timeout.as_millis() as u64,
                    cfg.socketio_max_payload as u64,
                ),
            );
            serve(node, Engine::websocket(socket), self, live).await
        }
    }
}

/// How a Socket.IO WebSocket is opened by an upgrade: without pings from the writer, since the
/// session's own heartbeat task, started while it was polling, goes on pinging through the same
/// queue (see `serve`). A WebSocket from the start replaces `writer`.
pub fn socket_config(cfg: &Config) -> SocketConfig {
    SocketConfig {
        format: Format::SocketIo,
        max_message_bytes: cfg.socketio_max_payload,
        queue_bytes: cfg.outbound_queue_bytes,
        // Engine.IO carries its own heartbeat; WebSocket-level pings are not needed.
        writer: WriterConfig::without_pings(cfg),
    }
}

/// Where the driver reports a pong packet (`3`): to whichever heartbeat sends the session's
/// Engine.IO pings.
///
/// A WebSocket session from the start uses the shared ping ticker (`transport::heartbeat`):
/// its writer task writes the pings, and no timer or task is kept per connection, which is
/// what makes an idle connection cheap. A session that begins with long-polling has no writer
/// task to wake (its queue is drained by whichever GET comes), and a poll must be able to tell
/// from the session's [`heartbeat::Clock`] that a pong is overdue even if no timer ran yet; so it keeps a
/// heartbeat task of its own ([`heartbeat::run`]), pushing `2` into the session's queue. It
/// keeps that task after an upgrade too: the pings stay in queue order with everything else,
/// and the deadline of a ping sent over polling carries over to the WebSocket unchanged,
/// which a switch of heartbeat mid-session could not promise. Upgraded sessions are the fewer
/// and pay a task each, as every Socket.IO session did before.
enum Pongs {
    Ticker(Liveness),
    Task(Arc<Notify>),
}

impl Pongs {
    fn heard(&self) {
        match self {
            Pongs::Ticker(liveness) => liveness.heard(),
            Pongs::Task(pong) => pong.notify_one(),
        }
    }
}

/// Serves one Engine.IO session whose open packet is queued: heartbeat, packets, and the
/// end (the sockets saved for recovery or dropped, then the transport finished).
// An `async move` block rather than an async fn: this future lives as long as the
// connection, and an async fn's keeps each argument twice (see `lifecycle::run`).
#[allow(clippy::manual_async_fn)] // on purpose: the comment above says why
pub fn serve(
    node: Arc<Node>,
    mut engine: Engine,
    driver: SocketIo,
    live: Live,
) -> impl std::future::Future<Output = DisconnectReason> + Send {
    async move {
        let cfg = &node.config;
        let outbound = engine.outbound().clone();
        // See `Pongs` for which heartbeat drives the pings.
        let (pongs, heartbeat) = match engine.pings() {
            Pings::Own(clock) => {
                let pong = Arc::new(Notify::new());
                let task = tokio::spawn(heartbeat::run(
                    clock,
                    outbound.clone(),
                    pong.clone(),
                    cfg.socketio_ping_interval,
                    cfg.socketio_ping_timeout,
                ));
                (Pongs::Task(pong), Some(task))
            }
            Pings::Ticker(liveness) => (Pongs::Ticker(liveness), None),
        };
        let mut sockets = Sockets::new(&node, driver.ip, outbound.clone(), live);
        sockets.handshake = driver.handshake.clone();
        let (reason, recoverable) =
            packet_loop(cfg, &mut engine, &mut sockets, driver.mode, &pongs).await;
        if let Some(task) = heartbeat {
            task.abort();
        }
        // Save (or drop) the sockets first: a recovering client may be back within milliseconds.
        // Boxed, like the packet handling below: this future lives as long as the connection,
        // and inline these would make every idle connection pay for their largest state.
        Box::pin(sockets.end_all(recoverable)).await;
        let end = engine
            .finish(cfg.write_timeout, reason == DisconnectReason::Client)
            .await;
        disconnect_reason(end, &outbound, reason)
    }
}

/// Reads packets until the connection ends. Returns why it ended and whether the sockets'
/// state is kept for recovery (not after a protocol error).
async fn packet_loop(
    cfg: &Config,
    engine: &mut Engine,
    sockets: &mut Sockets<'_>,
    mode: Mode,
    pong: &Pongs,
) -> (DisconnectReason, bool) {
    let outbound = engine.outbound().clone();
    let mut incoming = Incoming {
        mode,
        max_payload: cfg.socketio_max_payload,
        pending: None,
    };
    // Boxed, and dropped once a namespace is joined: an idle connection then holds no timer
    // (none in its future, none in the runtime's wheel to fire later and wake it for nothing).
    let mut connect_deadline =
        (mode == Mode::SocketIo).then(|| Box::pin(sleep(cfg.socketio_connect_timeout)));
    // Publishes in flight (see `Next::Publish`); any other packet waits for them.
    let mut in_flight = FuturesUnordered::new();
    loop {
        if sockets.ever_joined {
            connect_deadline = None;
        }
        let read = engine.read();
        tokio::pin!(read);
        let read = loop {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                read = &mut read, if in_flight.len() < session::MAX_PUBLISHES_IN_FLIGHT => break read,
                _ = expired(&mut connect_deadline), if connect_deadline.is_some() => {
                    outbound.close(CloseCode::NORMAL, "connect timeout");
                    return (DisconnectReason::Timeout, true);
                }
            }
        };
        let step = match read {
            Read::Message {
                text: true,
                payload,
            } => incoming.text(&payload, &outbound, pong),
            Read::Message {
                text: false,
                payload,
            } => incoming.binary(payload, &outbound),
            Read::Ended(ending) => {
                while in_flight.next().await.is_some() {}
                return match ending {
                    Ending::Violation => (DisconnectReason::ProtocolError, false),
                    _ => (DisconnectReason::Client, true),
                };
            }
        };
        let next = match step {
            Step::Next(next) => next,
            Step::Packet(packet, attachments) => {
                if !is_publish(&packet) {
                    // Anything but a publish is a barrier: the publishes before it finish first.
                    while in_flight.next().await.is_some() {}
                }
                // Boxed: kept out of the connection's long-lived future (see `serve`).
                Box::pin(sockets.packet(packet, attachments)).await
            }
        };
        match next {
            Next::Continue => {}
            Next::Publish(mut publish) => {
                // The first poll sends the store command: before the next packet is read.
                let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx)));
                if first.await.is_pending() {
                    in_flight.push(publish);
                }
            }
            Next::Close(code, why) => {
                outbound.close(code, why);
                return if code == CloseCode::NORMAL {
                    (DisconnectReason::Client, true)
                } else {
                    (DisconnectReason::ProtocolError, false)
                };
            }
        }
    }
}

/// Completes when the deadline passes; never without one.
async fn expired(deadline: &mut Option<Pin<Box<Sleep>>>) {
    match deadline {
        Some(deadline) => deadline.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Whether a packet is a `publish` event: the only kind that does not wait for the publishes
/// in flight (the namespace layer pipelines it, or answers it at once).
fn is_publish(p: &Packet) -> bool {
    matches!(p.kind, Kind::Event | Kind::BinaryEvent)
        && p.event().is_some_and(|(name, _)| name == "publish")
}

/// What one WebSocket message amounts to.
enum Step {
    Next(Next),
    /// A whole Socket.IO packet with its binary attachments, for the namespaces.
    Packet(Packet, Vec<Vec<u8>>),
}

/// A BINARY_EVENT (or BINARY_ACK) waiting for its attachments.
struct Pending {
    packet: Packet,
    attachments: Vec<Vec<u8>>,
    bytes: usize,
}

/// Engine.IO decoding of one connection's messages, and the attachments still due.
struct Incoming {
    mode: Mode,
    max_payload: usize,
    pending: Option<Pending>,
}

impl Incoming {
    fn text(&mut self, payload: &[u8], outbound: &Outbound, pong: &Pongs) -> Step {
        if self.pending.is_some() {
            return Step::Next(Next::Close(
                CloseCode::PROTOCOL_ERROR,
                "text packet while attachments are due",
            ));
        }
        let text = String::from_utf8_lossy(payload);
        let next = match sio::decode_engine(&text) {
            Err(_) => Next::Close(CloseCode::PROTOCOL_ERROR, "invalid Engine.IO packet"),
            Ok(EnginePacket::Close) => Next::Close(CloseCode::NORMAL, CLIENT_CLOSED),
            Ok(EnginePacket::Ping) => {
                Next::Close(CloseCode::PROTOCOL_ERROR, "invalid heartbeat direction")
            }
            Ok(EnginePacket::Pong) => {
                pong.heard();
                Next::Continue
            }
            Ok(EnginePacket::Ignored) => Next::Continue,
            Ok(EnginePacket::Message(m)) if self.mode == Mode::EngineEcho => {
                push(outbound, format!("4{m}"));
                Next::Continue
            }
            Ok(EnginePacket::Message(m)) => match sio::decode(m) {
                Err(_) => Next::Close(CloseCode::PROTOCOL_ERROR, "invalid Socket.IO packet"),
                Ok(packet) if packet.attachments > 0 => {
                    self.pending = Some(Pending {
                        packet,
                        attachments: Vec::new(),
                        bytes: 0,
                    });
                    Next::Continue
                }
                Ok(packet) => return Step::Packet(packet, Vec::new()),
            },
        };
        Step::Next(next)
    }

    fn binary(&mut self, payload: Vec<u8>, outbound: &Outbound) -> Step {
        let Some(p) = self.pending.as_mut() else {
            if self.mode == Mode::EngineEcho {
                let _ = outbound.push_message(false, Bytes::from(payload));
                return Step::Next(Next::Continue);
            }
            return Step::Next(Next::Close(
                CloseCode::PROTOCOL_ERROR,
                "unexpected binary message",
            ));
        };
        if p.bytes + payload.len() > self.max_payload {
            return Step::Next(Next::Close(
                CloseCode::MESSAGE_TOO_BIG,
                "attachments too large",
            ));
        }
        p.bytes += payload.len();
        p.attachments.push(payload);
        if p.attachments.len() < p.packet.attachments {
            return Step::Next(Next::Continue);
        }
        match self.pending.take() {
            Some(Pending {
                packet,
                attachments,
                ..
            }) => Step::Packet(packet, attachments),
            None => Step::Next(Next::Continue),
        }
    }
}
