//! One Socket.IO connection's transport: the Engine.IO open packet and heartbeat, text and
//! binary messages, and the assembly of binary attachments. What the packets mean is in
//! [`super::namespace`].
//!
//! Server events reach this client through the shared fan-out already encoded as Socket.IO
//! text (`Format::SocketIo`): one encoding per broadcast, whatever the protocol mix.

use super::namespace::{push, random_id, Live, Next, Sockets};
use crate::admission::Slot;
use crate::metrics::DisconnectReason;
use crate::native::connection::reason_for_close;
use crate::native::writer::{self, Read, WriterConfig, WriterEnd};
use crate::node::Node;
use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::WebSocket;
use protocol::socketio::{self as sio, EnginePacket, Packet};
use protocol::{CloseCode, Format};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout};

/// A BINARY_EVENT (or BINARY_ACK) waiting for its attachments.
struct Pending {
    packet: Packet,
    attachments: Vec<Vec<u8>>,
    bytes: usize,
}

/// What the endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Socket.IO over Engine.IO (`/socket.io/`).
    SocketIo,
    /// A bare Engine.IO echo (`/engine.io/`, conformance mode only).
    EngineEcho,
}

/// Runs a connection to its end; `_slot` holds its place under the node's connection cap.
pub async fn run(node: Arc<Node>, upgrade: UpgradeFut, ip: IpAddr, _slot: Slot, mode: Mode) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(_) => {
            node.release_ip(ip);
            return;
        }
    };
    node.metrics.connections_accepted.inc();
    let gauge = node
        .metrics
        .connections
        .with_label_values(&["socketio", "socketio"]);
    gauge.inc();
    // Its own task, so that a panic in it still ends in a full cleanup (see native).
    let live = Live::default();
    let task = tokio::spawn({
        let (node, live) = (node.clone(), live.clone());
        async move { serve(&node, ws, ip, mode, live).await }
    });
    let reason = match task.await {
        Ok(reason) => reason,
        Err(e) => {
            tracing::error!(error = %e, "Socket.IO connection task failed; cleaning up");
            let sessions: Vec<(Arc<str>, String)> = live.lock().drain(..).collect();
            for (conn_id, user) in sessions {
                crate::native::connection::abandon(&node, &conn_id, &user).await;
            }
            DisconnectReason::ProtocolError
        }
    };
    gauge.dec();
    node.metrics.disconnect(reason);
    node.release_ip(ip);
}

async fn serve<S>(
    node: &Arc<Node>,
    ws: WebSocket<S>,
    ip: IpAddr,
    mode: Mode,
    live: Live,
) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &node.config;
    // Engine.IO carries its own heartbeat below; WebSocket-level pings are not needed.
    let never = Duration::from_secs(365 * 24 * 3600);
    let mut socket = writer::open(
        ws,
        Format::SocketIo,
        cfg.socketio_max_payload,
        cfg.outbound_queue_bytes,
        WriterConfig {
            ping_interval: never,
            pong_timeout: never,
            write_timeout: cfg.write_timeout,
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
    // The server pings; the first ping goes out one full interval after the open packet.
    let pong = Arc::new(Notify::new());
    let heartbeat = tokio::spawn({
        let (outbound, pong) = (outbound.clone(), pong.clone());
        let (interval, limit) = (cfg.socketio_ping_interval, cfg.socketio_ping_timeout);
        async move {
            loop {
                sleep(interval).await;
                if outbound.push(Bytes::from_static(b"2")).is_err() {
                    return;
                }
                if timeout(limit, pong.notified()).await.is_err() {
                    outbound.close(CloseCode::HEARTBEAT_TIMEOUT, "ping timeout");
                    return;
                }
            }
        }
    });

    let mut conn = Sockets::new(node, ip, outbound.clone(), live);
    // Whether the sockets' state is kept for recovery: not after a protocol error.
    let mut recoverable = true;
    let mut pending: Option<Pending> = None;
    let connect_deadline = sleep(cfg.socketio_connect_timeout);
    tokio::pin!(connect_deadline);
    let mut reason = DisconnectReason::Client;
    loop {
        let read = tokio::select! {
            biased;
            read = socket.read() => read,
            _ = &mut connect_deadline, if !conn.ever_joined && mode == Mode::SocketIo => {
                outbound.close(CloseCode::NORMAL, "connect timeout");
                reason = DisconnectReason::Timeout;
                break;
            }
        };
        let (text, payload) = match read {
            Read::Message { text, payload } => (text, payload),
            Read::Ended { violation } => {
                if violation {
                    reason = DisconnectReason::ProtocolError;
                    recoverable = false;
                }
                break;
            }
        };
        let next = if text {
            if pending.is_some() {
                Next::Close(
                    CloseCode::PROTOCOL_ERROR,
                    "text packet while attachments are due",
                )
            } else {
                let text = String::from_utf8_lossy(&payload);
                match sio::decode_engine(&text) {
                    Err(_) => Next::Close(CloseCode::PROTOCOL_ERROR, "invalid Engine.IO packet"),
                    Ok(EnginePacket::Close) => Next::Close(CloseCode::NORMAL, ""),
                    Ok(EnginePacket::Ping) => {
                        Next::Close(CloseCode::PROTOCOL_ERROR, "invalid heartbeat direction")
                    }
                    Ok(EnginePacket::Pong) => {
                        pong.notify_one();
                        Next::Continue
                    }
                    Ok(EnginePacket::Ignored) => Next::Continue,
                    Ok(EnginePacket::Message(m)) if mode == Mode::EngineEcho => {
                        push(&outbound, format!("4{m}"));
                        Next::Continue
                    }
                    Ok(EnginePacket::Message(m)) => match sio::decode(m) {
                        Err(_) => {
                            Next::Close(CloseCode::PROTOCOL_ERROR, "invalid Socket.IO packet")
                        }
                        Ok(p) if p.attachments > 0 => {
                            pending = Some(Pending {
                                packet: p,
                                attachments: Vec::new(),
                                bytes: 0,
                            });
                            Next::Continue
                        }
                        Ok(p) => conn.packet(p, Vec::new()).await,
                    },
                }
            }
        } else {
            match pending.as_mut() {
                None if mode == Mode::EngineEcho => {
                    let _ = outbound.push_message(false, Bytes::from(payload));
                    Next::Continue
                }
                None => Next::Close(CloseCode::PROTOCOL_ERROR, "unexpected binary message"),
                Some(p) if p.bytes + payload.len() > cfg.socketio_max_payload => {
                    Next::Close(CloseCode::MESSAGE_TOO_BIG, "attachments too large")
                }
                Some(p) => {
                    p.bytes += payload.len();
                    p.attachments.push(payload);
                    if p.attachments.len() < p.packet.attachments {
                        Next::Continue
                    } else {
                        let Some(Pending {
                            packet,
                            attachments,
                            ..
                        }) = pending.take()
                        else {
                            continue;
                        };
                        conn.packet(packet, attachments).await
                    }
                }
            }
        };
        if let Next::Close(code, why) = next {
            outbound.close(code, why);
            if code != CloseCode::NORMAL {
                reason = DisconnectReason::ProtocolError;
                recoverable = false;
            }
            break;
        }
    }

    heartbeat.abort();
    // Save (or drop) the sockets first: a recovering client may be back within milliseconds.
    conn.end_all(recoverable).await;
    let end = socket.finish(cfg.write_timeout).await;
    match end {
        Some(WriterEnd::Closed(code)) => reason_for_close(code, reason),
        _ if outbound.is_discarding() => DisconnectReason::SlowConsumer,
        _ => reason,
    }
}
