//! One native-protocol connection, from upgrade to cleanup.
//!
//! Two tasks per connection: this one reads (and runs ops, one at a time, in order), and the
//! writer task owns the write half. `read_frame` is not cancel-safe, so it is only ever raced
//! against the writer's end, after which the connection is closing anyway.

use super::writer::{self, Read, WriterConfig, WriterEnd};
use crate::admission::Slot;
use crate::auth::{AuthError, Identity};
use crate::metrics::DisconnectReason;
use crate::node::Node;
use crate::session::{self, Session};
use fan_out::{LocalConn, Outbound};
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{Frame, OpCode, WebSocket};
use protocol::codec::{decode_request, encode};
use protocol::frame::{ErrorBody, Event, Reply};
use protocol::{CloseCode, ErrorCode, Format};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

/// Undecodable or invalid frames in a row that end a connection (close 4000).
pub const MAX_BAD_FRAMES: u32 = 10;

/// How long to wait for the client's Close after ours, for a clean close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the HTTP layer decided before the upgrade.
#[derive(Debug)]
pub struct Admission {
    pub ip: IpAddr,
    pub format: Format,
    pub auth: Result<Identity, AuthError>,
    /// Whether the per-IP policy admitted the connection (else it is closed with 4008).
    pub ip_admitted: bool,
    /// The node-wide connection slot, held for the connection's life.
    pub slot: Slot,
}

/// Runs a connection to its end.
pub async fn run(node: Arc<Node>, upgrade: UpgradeFut, admission: Admission) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            if admission.ip_admitted {
                node.release_ip(admission.ip);
            }
            return;
        }
    };
    if !admission.ip_admitted {
        node.metrics
            .connections_rejected
            .with_label_values(&["ip_limit"])
            .inc();
        reject(
            ws,
            CloseCode::CONNECTION_POLICY,
            "too many connections from your address",
        )
        .await;
        return;
    }
    let identity = match admission.auth {
        Ok(identity) => identity,
        Err(e) => {
            node.release_ip(admission.ip);
            node.metrics
                .connections_rejected
                .with_label_values(&["auth"])
                .inc();
            node.metrics.disconnect(DisconnectReason::Auth);
            let reason = match e {
                AuthError::Missing => "a token is required",
                AuthError::Expired => "token expired",
                AuthError::Invalid => "invalid token",
            };
            reject(ws, CloseCode::BAD_TOKEN, reason).await;
            return;
        }
    };
    let Some(_user_slot) = node.gate.admit_user(&identity.user) else {
        node.release_ip(admission.ip);
        node.metrics
            .connections_rejected
            .with_label_values(&["user_limit"])
            .inc();
        reject(
            ws,
            CloseCode::CONNECTION_POLICY,
            "too many connections for this user",
        )
        .await;
        return;
    };
    node.metrics.connections_accepted.inc();
    let gauge = node
        .metrics
        .connections
        .with_label_values(&["native", admission.format.as_str()]);
    gauge.inc();
    // The connection runs in its own task so that a panic in it (none is known: the decoders
    // are fuzzed and frame sequences property-tested) still ends in a full cleanup.
    let conn_id: Arc<str> = Arc::from(node.next_conn_id());
    let user = identity.user.clone();
    let task = tokio::spawn({
        let (node, conn_id) = (node.clone(), conn_id.clone());
        async move { serve(&node, ws, admission.format, identity, conn_id).await }
    });
    let reason = match task.await {
        Ok(reason) => reason,
        Err(e) => {
            tracing::error!(error = %e, conn = %conn_id, "connection task failed; cleaning up");
            abandon(&node, &conn_id, &user).await;
            DisconnectReason::ProtocolError
        }
    };
    gauge.dec();
    node.metrics.disconnect(reason);
    node.release_ip(admission.ip);
}

/// Closes a connection that was never admitted, with a proper close handshake.
async fn reject<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocket<S>, code: u16, reason: &str) {
    if ws
        .write_frame(Frame::close(code, reason.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let _ = ws.flush().await;
    let _ = timeout(CLOSE_GRACE, async {
        while let Ok(frame) = ws.read_frame().await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    })
    .await;
}

/// After a connection task failed: close its socket (1011) and leave its rooms.
pub(crate) async fn abandon(node: &Node, conn_id: &str, user: &str) {
    for conn in node.registry.conns_of_user(user) {
        if &*conn.conn_id == conn_id {
            conn.outbound
                .close(CloseCode::INTERNAL_ERROR, "internal error");
        }
    }
    session::cleanup(node, conn_id, user).await;
}

async fn serve<S>(
    node: &Arc<Node>,
    ws: WebSocket<S>,
    format: Format,
    identity: Identity,
    conn_id: Arc<str>,
) -> DisconnectReason
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &node.config;
    let mut socket = writer::open(
        ws,
        format,
        config.max_message_bytes,
        config.outbound_queue_bytes,
        WriterConfig {
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            write_timeout: config.write_timeout,
        },
        node.metrics.clone(),
    );
    let outbound = socket.outbound.clone();
    let user: Arc<str> = Arc::from(identity.user.as_str());
    node.registry.register(LocalConn {
        conn_id: conn_id.clone(),
        user: user.clone(),
        outbound: outbound.clone(),
    });
    let session = Session {
        conn_id: conn_id.clone(),
        identity,
        outbound: outbound.clone(),
        room_prefix: String::new(),
    };
    let welcome = Event::Welcome {
        conn_id: &conn_id,
        node: &node.id,
        user: &user,
    };
    push(&outbound, &welcome, format);
    push(
        &outbound,
        &Event::TrafficStatus(&node.traffic.current()),
        format,
    );

    let mut bad_in_row = 0u32;
    let mut reason = DisconnectReason::Client;
    loop {
        let (text, payload) = match socket.read().await {
            Read::Message { text, payload } => (text, payload),
            Read::Ended { violation } => {
                if violation {
                    reason = DisconnectReason::ProtocolError;
                }
                break;
            }
        };
        let decoded = if text != format.is_text() {
            Err(protocol::DecodeError {
                id: None,
                message: format!(
                    "{} connections send {} frames",
                    format.as_str(),
                    if format.is_text() { "text" } else { "binary" }
                ),
            })
        } else {
            decode_request(&payload, format)
        };
        match decoded {
            Err(e) => {
                bad_in_row += 1;
                let reply = Reply::error(e.id, ErrorBody::new(ErrorCode::BadRequest, e.message));
                push(&outbound, &reply, format);
                if bad_in_row >= MAX_BAD_FRAMES {
                    outbound.close(CloseCode::TOO_MANY_ERRORS, "too many protocol errors");
                    reason = DisconnectReason::ProtocolError;
                    break;
                }
            }
            Ok(request) => {
                bad_in_row = 0;
                let (result, after) = session::handle(node, &session, request.op).await;
                let reply = match result {
                    Ok(body) => Reply::ok(request.id, body),
                    Err(error) => Reply::error(Some(request.id), error),
                };
                push(&outbound, &reply, format);
                session::after_reply(node, &session, after);
            }
        }
    }

    // Let the writer send our Close, then give the client a moment to answer it.
    let end = socket.finish(config.write_timeout).await;
    session::cleanup(node, &conn_id, &user).await;
    match end {
        Some(WriterEnd::Closed(code)) => reason_for_close(code, reason),
        Some(WriterEnd::HeartbeatTimeout) => DisconnectReason::Timeout,
        // A slow consumer whose socket stayed blocked never got its Close frame.
        _ if outbound.is_discarding() => DisconnectReason::SlowConsumer,
        _ => reason,
    }
}

/// The disconnect reason for a Close that the writer sent.
pub(crate) fn reason_for_close(code: u16, fallback: DisconnectReason) -> DisconnectReason {
    match code {
        CloseCode::SERVICE_RESTART => DisconnectReason::Drain,
        CloseCode::KICKED => DisconnectReason::Kicked,
        CloseCode::SLOW_CONSUMER => DisconnectReason::SlowConsumer,
        CloseCode::HEARTBEAT_TIMEOUT => DisconnectReason::Timeout,
        _ => fallback,
    }
}

fn push<T: serde::Serialize>(outbound: &Outbound, value: &T, format: Format) {
    match encode(value, format) {
        Ok(bytes) => {
            let _ = outbound.push(bytes);
        }
        Err(e) => tracing::error!(error = %e, "could not encode a frame"),
    }
}
