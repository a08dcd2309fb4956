//! One native-protocol connection: the welcome, then requests decoded and run one at a time,
//! in order, each answered on the outbound queue.

use crate::admission::{self, gate::UserSlot, Refusal};
use crate::auth::{AuthError, Identity};
use crate::metrics::DisconnectReason;
use crate::node::Node;
use crate::session::{self, Session};
use crate::transport::{
    disconnect_reason, Driver, Ending, Live, Read, Socket, SocketConfig, WriterConfig, Ws,
};
use fan_out::{LocalConn, Outbound};
use protocol::codec::{decode_request, encode};
use protocol::frame::{ErrorBody, Event, Reply};
use protocol::{CloseCode, DecodeError, ErrorCode, Format};
use std::sync::Arc;

/// Undecodable or invalid frames in a row that end a connection (close 4000).
pub const MAX_BAD_FRAMES: u32 = 10;

/// The native protocol driver: what the handshake decided, and after admission, who the
/// client is and its place under the per-user limit.
#[derive(Debug)]
pub struct Native {
    format: Format,
    auth: Result<Identity, AuthError>,
    user_slot: Option<UserSlot>,
}

impl Native {
    pub fn new(format: Format, auth: Result<Identity, AuthError>) -> Native {
        Native {
            format,
            auth,
            user_slot: None,
        }
    }
}

impl Driver for Native {
    fn labels(&self) -> [&'static str; 2] {
        ["native", self.format.as_str()]
    }

    fn admit(&mut self, node: &Node) -> Result<(), Refusal> {
        let identity = self.auth.as_ref().map_err(Refusal::auth)?;
        self.user_slot = Some(admission::admit_user(node, identity)?);
        Ok(())
    }

    async fn serve(self, node: Arc<Node>, ws: Ws, live: Live) -> DisconnectReason {
        let Native {
            format,
            auth,
            user_slot: _user_slot,
        } = self;
        match auth {
            Ok(identity) => serve(&node, ws, format, identity, live).await,
            // `admit` let no refused token through.
            Err(_) => DisconnectReason::Auth,
        }
    }
}

async fn serve(
    node: &Arc<Node>,
    ws: Ws,
    format: Format,
    identity: Identity,
    live: Live,
) -> DisconnectReason {
    let config = &node.config;
    let mut socket = Socket::open(
        ws,
        SocketConfig {
            format,
            max_message_bytes: config.max_message_bytes,
            queue_bytes: config.outbound_queue_bytes,
            writer: WriterConfig::with_pings(config),
        },
        node.metrics.clone(),
    );
    let session = open_session(node, identity, &socket.outbound, &live);
    let reason = ops_loop(node, &mut socket, &session, format).await;
    let end = socket.finish(config.write_timeout).await;
    session::cleanup(node, &session.conn_id, &session.identity.user).await;
    live.remove(&session.conn_id);
    disconnect_reason(end, &socket.outbound, reason)
}

/// Registers the connection and greets it: `welcome`, then the traffic status.
fn open_session(node: &Node, identity: Identity, outbound: &Arc<Outbound>, live: &Live) -> Session {
    let conn_id: Arc<str> = Arc::from(node.next_conn_id());
    let user: Arc<str> = Arc::from(identity.user.as_str());
    live.add(conn_id.clone(), user.clone());
    node.registry.register(LocalConn {
        conn_id: conn_id.clone(),
        user: user.clone(),
        outbound: outbound.clone(),
    });
    let format = outbound.format();
    let welcome = Event::Welcome {
        conn_id: &conn_id,
        node: &node.id,
        user: &user,
    };
    push(outbound, &welcome, format);
    push(
        outbound,
        &Event::TrafficStatus(&node.traffic.current()),
        format,
    );
    Session {
        conn_id,
        identity,
        outbound: outbound.clone(),
        room_prefix: String::new(),
    }
}

/// Reads requests until the connection ends; returns why it ended, as far as the reader knows.
async fn ops_loop(
    node: &Node,
    socket: &mut Socket<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>,
    session: &Session,
    format: Format,
) -> DisconnectReason {
    let outbound = &session.outbound;
    let mut bad_in_row = 0u32;
    loop {
        let (text, payload) = match socket.read().await {
            Read::Message { text, payload } => (text, payload),
            Read::Ended(Ending::Violation) => return DisconnectReason::ProtocolError,
            Read::Ended(_) => return DisconnectReason::Client,
        };
        match decode(&payload, text, format) {
            Err(e) => {
                bad_in_row += 1;
                let reply = Reply::error(e.id, ErrorBody::new(ErrorCode::BadRequest, e.message));
                push(outbound, &reply, format);
                if bad_in_row >= MAX_BAD_FRAMES {
                    outbound.close(CloseCode::TOO_MANY_ERRORS, "too many protocol errors");
                    return DisconnectReason::ProtocolError;
                }
            }
            Ok(request) => {
                bad_in_row = 0;
                let (result, after) = session::handle(node, session, request.op).await;
                let reply = match result {
                    Ok(body) => Reply::ok(request.id, body),
                    Err(error) => Reply::error(Some(request.id), error),
                };
                push(outbound, &reply, format);
                session::after_reply(node, session, after);
            }
        }
    }
}

/// Decodes one request; a frame of the wrong kind for the format is a bad request.
fn decode(payload: &[u8], text: bool, format: Format) -> Result<protocol::Request, DecodeError> {
    if text != format.is_text() {
        return Err(DecodeError {
            id: None,
            message: format!(
                "{} connections send {} frames",
                format.as_str(),
                if format.is_text() { "text" } else { "binary" }
            ),
        });
    }
    decode_request(payload, format)
}

fn push<T: serde::Serialize>(outbound: &Outbound, value: &T, format: Format) {
    match encode(value, format) {
        Ok(bytes) => {
            let _ = outbound.push(bytes);
        }
        Err(e) => tracing::error!(error = %e, "could not encode a frame"),
    }
}
