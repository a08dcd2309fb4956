//! One Socket.IO connection: Engine.IO open and heartbeat, the main namespace `/`, events
//! mapped onto the same ops as the native protocol, and acks carrying the native reply body.
//!
//! Server events reach this client through the shared fan-out already encoded as Socket.IO
//! text (`Format::SocketIo`): one encoding per broadcast, whatever the protocol mix.

use crate::admission::Slot;
use crate::auth::AuthError;
use crate::metrics::DisconnectReason;
use crate::native::connection::{finish_writer, reason_for_close};
use crate::native::inbound::Inbound;
use crate::native::writer::{self, WriterConfig, WriterEnd};
use crate::node::Node;
use crate::session::{self, Session};
use bytes::Bytes;
use fan_out::{LocalConn, Outbound};
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::WebSocket;
use protocol::codec::{encode, request_from_value};
use protocol::frame::{ErrorBody, Event};
use protocol::socketio::{self as sio, EnginePacket, Kind, Packet};
use protocol::{CloseCode, ErrorCode, Format};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout};

/// The events that map onto protocol ops, each with one object argument.
const OPS: [&str; 6] = [
    "create_room",
    "join",
    "leave",
    "publish",
    "presence",
    "history",
];

/// Runs a connection to its end; `_slot` holds its place under the node's connection cap.
pub async fn run(node: Arc<Node>, upgrade: UpgradeFut, ip: IpAddr, _slot: Slot) {
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
    let reason = serve(&node, ws, ip).await;
    gauge.dec();
    node.metrics.disconnect(reason);
    node.release_ip(ip);
}

fn push(outbound: &Outbound, text: String) {
    let _ = outbound.push(Bytes::from(text));
}

fn random_id() -> String {
    (0..20).map(|_| fastrand::alphanumeric()).collect()
}

/// A BINARY_EVENT (or BINARY_ACK) waiting for its attachments.
struct Pending {
    packet: Packet,
    attachments: Vec<Vec<u8>>,
    bytes: usize,
}

struct Conn<'a> {
    node: &'a Arc<Node>,
    ip: IpAddr,
    outbound: Arc<Outbound>,
    session: Option<Session>,
    ever_joined: bool,
}

/// What a packet asks of the connection.
enum Next {
    Continue,
    Close(u16, &'static str),
}

impl Conn<'_> {
    async fn packet(&mut self, p: Packet) -> Next {
        if p.namespace != "/" {
            // Only the main namespace exists; asking for another is answered, anything else in
            // a namespace we never joined is a protocol error.
            if p.kind == Kind::Connect {
                push(
                    &self.outbound,
                    sio::connect_error(&p.namespace, "Invalid namespace", None),
                );
                return Next::Continue;
            }
            return Next::Close(CloseCode::PROTOCOL_ERROR, "namespace not joined");
        }
        match p.kind {
            Kind::Connect => self.connect(&p),
            Kind::Disconnect => match self.session.take() {
                Some(s) => {
                    session::cleanup(self.node, &s.conn_id, &s.identity.user).await;
                    Next::Continue
                }
                None => Next::Close(CloseCode::PROTOCOL_ERROR, "not connected"),
            },
            Kind::Event | Kind::BinaryEvent => self.event(p).await,
            Kind::Ack | Kind::BinaryAck => Next::Continue,
            Kind::ConnectError => {
                Next::Close(CloseCode::PROTOCOL_ERROR, "CONNECT_ERROR from a client")
            }
        }
    }

    fn connect(&mut self, p: &Packet) -> Next {
        if self.session.is_some() {
            return Next::Close(CloseCode::PROTOCOL_ERROR, "namespace already joined");
        }
        let token = p
            .payload
            .as_ref()
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str);
        match self.node.auth.authenticate(token, self.ip) {
            Ok(identity) => {
                let conn_id: Arc<str> = Arc::from(self.node.next_conn_id());
                self.node.registry.register(LocalConn {
                    conn_id: conn_id.clone(),
                    user: Arc::from(identity.user.as_str()),
                    outbound: self.outbound.clone(),
                });
                push(&self.outbound, sio::connect_ok("/", &conn_id));
                if let Ok(bytes) = encode(
                    &Event::TrafficStatus(&self.node.traffic.current()),
                    Format::SocketIo,
                ) {
                    let _ = self.outbound.push(bytes);
                }
                self.session = Some(Session {
                    conn_id,
                    identity,
                    outbound: self.outbound.clone(),
                });
                self.ever_joined = true;
            }
            Err(e) => {
                self.node
                    .metrics
                    .connections_rejected
                    .with_label_values(&["auth"])
                    .inc();
                let message = match e {
                    AuthError::Missing => "a token is required",
                    AuthError::Expired => "token expired",
                    AuthError::Invalid => "invalid token",
                };
                push(
                    &self.outbound,
                    sio::connect_error("/", message, Some(json!({ "code": "unauthorized" }))),
                );
            }
        }
        Next::Continue
    }

    async fn event(&mut self, p: Packet) -> Next {
        let Some(session) = &self.session else {
            return Next::Close(CloseCode::PROTOCOL_ERROR, "namespace not joined");
        };
        let Some((name, args)) = p.event() else {
            return Next::Close(CloseCode::PROTOCOL_ERROR, "bad event");
        };
        let ack = p.ack;
        let reply = |body: Value| {
            if let Some(id) = ack {
                push(&self.outbound, sio::ack("/", id, &json!([body])));
            }
        };
        if !OPS.contains(&name) {
            reply(
                json!({ "error": ErrorBody::new(ErrorCode::BadRequest, format!("unknown event '{name}'")) }),
            );
            return Next::Continue;
        }
        // The native request: the event's object argument plus `op` (and an id for decoding).
        let mut request = match args.first() {
            Some(Value::Object(o)) => Value::Object(o.clone()),
            None => json!({}),
            Some(_) => {
                reply(
                    json!({ "error": ErrorBody::new(ErrorCode::BadRequest, "the argument must be an object") }),
                );
                return Next::Continue;
            }
        };
        if let Some(obj) = request.as_object_mut() {
            obj.insert("op".into(), json!(name));
            obj.insert("id".into(), json!(ack.unwrap_or(0)));
        }
        let op = match request_from_value(request) {
            Ok(r) => r.op,
            Err(e) => {
                reply(json!({ "error": ErrorBody::new(ErrorCode::BadRequest, e.message) }));
                return Next::Continue;
            }
        };
        let (result, after) = session::handle(self.node, session, op).await;
        match result {
            Ok(body) => reply(json!({ "ok": body })),
            Err(error) => reply(json!({ "error": error })),
        }
        session::after_reply(self.node, session, after);
        Next::Continue
    }
}

async fn serve<S>(node: &Arc<Node>, ws: WebSocket<S>, ip: IpAddr) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &node.config;
    // Engine.IO carries its own heartbeat below; WebSocket-level pings are not needed.
    let never = Duration::from_secs(365 * 24 * 3600);
    let writer::Socket {
        mut frames,
        outbound,
        mut writer_task,
    } = writer::open(
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

    let mut conn = Conn {
        node,
        ip,
        outbound: outbound.clone(),
        session: None,
        ever_joined: false,
    };
    let mut pending: Option<Pending> = None;
    let connect_deadline = sleep(cfg.socketio_connect_timeout);
    tokio::pin!(connect_deadline);
    let mut reason = DisconnectReason::Client;
    let mut writer_end = None;
    loop {
        let inbound = tokio::select! {
            biased;
            end = &mut writer_task => {
                writer_end = Some(end.unwrap_or(WriterEnd::SocketGone));
                break;
            }
            _ = &mut connect_deadline, if !conn.ever_joined => {
                outbound.close(CloseCode::NORMAL, "connect timeout");
                reason = DisconnectReason::Timeout;
                break;
            }
            inbound = frames.next() => inbound,
        };
        let (text, payload) = match inbound {
            Inbound::Message { text, payload } => (text, payload),
            Inbound::Closed => break,
            Inbound::Violation(_) => {
                reason = DisconnectReason::ProtocolError;
                break;
            }
            Inbound::Gone => {
                writer_task.abort();
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
                        Ok(p) => conn.packet(p).await,
                    },
                }
            }
        } else {
            match pending.as_mut() {
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
                            mut packet,
                            attachments,
                            ..
                        }) = pending.take()
                        else {
                            continue;
                        };
                        let filled = packet
                            .payload
                            .as_mut()
                            .map_or(Ok(()), |v| sio::fill_placeholders(v, &attachments));
                        match filled {
                            Ok(()) => conn.packet(packet).await,
                            Err(_) => {
                                Next::Close(CloseCode::PROTOCOL_ERROR, "bad attachment placeholder")
                            }
                        }
                    }
                }
            }
        };
        if let Next::Close(code, why) = next {
            outbound.close(code, why);
            if code != CloseCode::NORMAL {
                reason = DisconnectReason::ProtocolError;
            }
            break;
        }
    }

    heartbeat.abort();
    let end = finish_writer(writer_end, &mut writer_task, cfg.write_timeout).await;
    if let Some(WriterEnd::Closed(_)) = end {
        frames.await_close().await;
    }
    writer_task.abort();
    if let Some(s) = conn.session.take() {
        session::cleanup(node, &s.conn_id, &s.identity.user).await;
    }
    match end {
        Some(WriterEnd::Closed(code)) => reason_for_close(code, reason),
        _ if outbound.is_discarding() => DisconnectReason::SlowConsumer,
        _ => reason,
    }
}
