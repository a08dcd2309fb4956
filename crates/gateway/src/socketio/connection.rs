//! One Socket.IO connection's Engine.IO side: the open packet and heartbeat, text and binary
//! messages, and the assembly of binary attachments. What the packets mean is in
//! [`super::namespace`].
//!
//! Server events reach this client through the shared fan-out already encoded as Socket.IO
//! text (`Format::SocketIo`): one encoding per broadcast, whatever the protocol mix.

use super::namespace::{push, random_id, Next, Sockets};
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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, Sleep};

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
}

impl Driver for SocketIo {
    fn labels(&self) -> [&'static str; 2] {
        ["socketio", "socketio"]
    }

    async fn serve(self, node: Arc<Node>, ws: Ws, live: Live) -> DisconnectReason {
        serve(&node, ws, self, live).await
    }
}

async fn serve(node: &Arc<Node>, ws: Ws, driver: SocketIo, live: Live) -> DisconnectReason {
    let cfg = &node.config;
    let mut socket = Socket::open(
        ws,
        SocketConfig {
            format: Format::SocketIo,
            max_message_bytes: cfg.socketio_max_payload,
            queue_bytes: cfg.outbound_queue_bytes,
            // Engine.IO's heartbeat (its ping packets, not WebSocket pings), from the shared
            // ping ticker: no timer or task of its own per connection.
            writer: WriterConfig::with_engine_io_pings(cfg),
        },
        node.metrics.clone(),
    );
    let outbound = socket.outbound.clone();
    push(
        &outbound,
        sio::open_packet(
            &random_id(),
            cfg.socketio_ping_interval.as_millis() as u64,
            cfg.socketio_ping_timeout.as_millis() as u64,
            cfg.socketio_max_payload as u64,
        ),
    );
    let liveness = socket.liveness();
    let mut sockets = Sockets::new(node, driver.ip, outbound.clone(), live);
    let (reason, recoverable) =
        packet_loop(cfg, &mut socket, &mut sockets, driver.mode, &liveness).await;
    // Save (or drop) the sockets first: a recovering client may be back within milliseconds.
    // Boxed, like the packet handling below: this future lives as long as the connection,
    // and inline these would make every idle connection pay for their largest state.
    Box::pin(sockets.end_all(recoverable)).await;
    let end = socket.finish(cfg.write_timeout).await;
    disconnect_reason(end, &outbound, reason)
}

/// Reads packets until the connection ends. Returns why it ended and whether the sockets'
/// state is kept for recovery (not after a protocol error).
async fn packet_loop<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    cfg: &Config,
    socket: &mut Socket<S>,
    sockets: &mut Sockets<'_>,
    mode: Mode,
    pong: &Liveness,
) -> (DisconnectReason, bool) {
    let outbound = socket.outbound.clone();
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
        let read = socket.read();
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
    fn text(&mut self, payload: &[u8], outbound: &Outbound, pong: &Liveness) -> Step {
        if self.pending.is_some() {
            return Step::Next(Next::Close(
                CloseCode::PROTOCOL_ERROR,
                "text packet while attachments are due",
            ));
        }
        let text = String::from_utf8_lossy(payload);
        let next = match sio::decode_engine(&text) {
            Err(_) => Next::Close(CloseCode::PROTOCOL_ERROR, "invalid Engine.IO packet"),
            Ok(EnginePacket::Close) => Next::Close(CloseCode::NORMAL, ""),
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
