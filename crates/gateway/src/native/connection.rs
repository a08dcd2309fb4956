//! One native-protocol connection: the welcome, then requests decoded and run, each answered
//! on the outbound queue.
//!
//! Publishes can be pipelined: up to [`session::MAX_PUBLISHES_IN_FLIGHT`] of a connection's
//! publishes wait for the store at once, and the store keeps their order (see there). Each
//! publish's checks (and its budget) run in request order in this loop, and its store command
//! is sent on the first poll, here, before the next request is read. Replies go out in
//! request order, as the protocol promises: one that is ready waits for those before it. Any
//! other op is a barrier: the publishes before it are answered first, and it runs alone.

use crate::admission::{self, gate::UserSlot, Refusal};
use crate::auth::{AuthError, Identity};
use crate::backend_hooks::connect::{Asking, Handshake};
use crate::metrics::DisconnectReason;
use crate::node::Node;
use crate::session::{self, Session};
use crate::transport::{
    disconnect_reason, Driver, Ending, Live, Read, Socket, SocketConfig, WriterConfig, Ws,
};
use fan_out::{LocalConn, Outbound};
use futures_util::future::{self, Either};
use futures_util::stream::{FuturesOrdered, StreamExt};
use protocol::codec::{decode_request, encode};
use protocol::frame::{ErrorBody, Event, Op, Reply};
use protocol::{CloseCode, DecodeError, ErrorCode, Format};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;

/// Undecodable or invalid frames in a row that end a connection (close 4000).
pub const MAX_BAD_FRAMES: u32 = 10;

/// The native protocol driver: what the handshake decided, and after admission, who the
/// client is and its place under the per-user limit.
#[derive(Debug)]
pub struct Native {
    format: Format,
    auth: Result<Identity, AuthError>,
    user_slot: Option<UserSlot>,
    /// What the connect proxy is shown, when there is one (boxed: most nodes have none, and
    /// it is dropped once admitted).
    proxy: Option<Box<ProxyAsk>>,
}

/// What the connect proxy is shown of a native handshake.
#[derive(Debug)]
pub struct ProxyAsk {
    pub ip: IpAddr,
    pub claims: Option<serde_json::Value>,
    pub handshake: Handshake,
}

impl Native {
    pub fn new(format: Format, auth: Result<Identity, AuthError>) -> Native {
        Native {
            format,
            auth,
            user_slot: None,
            proxy: None,
        }
    }

    /// Asks the connect proxy about this connection at admission.
    pub fn with_proxy(mut self, ask: ProxyAsk) -> Native {
        self.proxy = Some(Box::new(ask));
        self
    }
}

impl Driver for Native {
    fn labels(&self) -> [&'static str; 2] {
        ["native", self.format.as_str()]
    }

    async fn admit(&mut self, node: &Node) -> Result<(), Refusal> {
        let identity = self.auth.as_mut().map_err(|e| Refusal::auth(e))?;
        if let (Some(proxy), Some(ask)) = (&node.hooks.connect, self.proxy.take()) {
            let asking = Asking {
                protocol: "native",
                namespace: None,
                ip: ask.ip,
                claims: ask.claims.as_ref(),
                handshake: &ask.handshake,
                auth: None,
            };
            let info = proxy
                .check(node, identity, asking)
                .await
                .map_err(|r| Refusal::proxy(&r))?;
            identity.info = info.map(Arc::new);
        }
        self.user_slot = Some(admission::admit_user(node, identity)?);
        Ok(())
    }

    // An `async move` block rather than an async fn: its future lives as long as the
    // connection, and an async fn's keeps each argument twice (see `lifecycle::run`).
    #[allow(clippy::manual_async_fn)] // on purpose: the comment above says why
    fn serve(
        self,
        node: Arc<Node>,
        ws: Ws,
        live: Live,
    ) -> impl std::future::Future<Output = DisconnectReason> + Send {
        async move {
            let Native {
                format,
                auth,
                user_slot: _user_slot,
                proxy: _,
            } = self;
            match auth {
                Ok(identity) => {
                    // The cluster-wide count (the node's own was taken in `admit`): a refusal is
                    // the same close 4008, before anything else is sent.
                    let conn_id: Arc<str> = Arc::from(node.next_conn_id());
                    let entry =
                        match crate::users::register(&node, &identity.user, &conn_id, "native")
                            .await
                        {
                            Ok(entry) => entry,
                            Err(refusal) => {
                                node.metrics.rejected(refusal.rejection);
                                Box::pin(crate::transport::reject(
                                    ws,
                                    refusal.code,
                                    &refusal.reason,
                                ))
                                .await;
                                return DisconnectReason::Policy;
                            }
                        };
                    let reason = serve(&node, ws, format, identity, conn_id, live).await;
                    drop(entry);
                    reason
                }
                // `admit` let no refused token through.
                Err(_) => DisconnectReason::Auth,
            }
        }
    }
}

// An `async move` block rather than an async fn: this future lives as long as the
// connection, and an async fn's keeps each argument twice (see `lifecycle::run`).
#[allow(clippy::manual_async_fn)] // on purpose: the comment above says why
fn serve(
    node: &Arc<Node>,
    ws: Ws,
    format: Format,
    identity: Identity,
    conn_id: Arc<str>,
    live: Live,
) -> impl std::future::Future<Output = DisconnectReason> + Send + '_ {
    async move {
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
        let session = open_session(node, identity, conn_id, &socket.outbound, &live);
        let reason = ops_loop(node, &mut socket, &session, format).await;
        let end = socket.finish(config.write_timeout).await;
        // Boxed, like the ops below: this future lives as long as the connection, and inline
        // these would make every idle connection pay for their largest state.
        Box::pin(async {
            let _place = node.departure().await;
            session::cleanup(node, &session.conn_id, &session.identity.user).await
        })
        .await;
        live.remove(&session.conn_id);
        disconnect_reason(end, &socket.outbound, reason)
    }
}

/// Registers the connection and greets it: `welcome`, then the traffic status.
fn open_session(
    node: &Node,
    identity: Identity,
    conn_id: Arc<str>,
    outbound: &Arc<Outbound>,
    live: &Live,
) -> Session {
    node.expiries.track(
        &conn_id,
        identity.expires_at_ms,
        outbound,
        crate::expiry::Notice::Native,
    );
    let user: Arc<str> = Arc::from(identity.user.as_str());
    live.add(conn_id.clone(), user.clone());
    node.registry.register(LocalConn {
        conn_id: conn_id.clone(),
        user: user.clone(),
        outbound: outbound.clone(),
        namespace: None,
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
        publish_seq: Default::default(),
        publish_turns: Default::default(),
    }
}

/// A pipelined publish's answer: the request id, and the reply body or error.
type Answer = (u64, Result<protocol::frame::OkBody, ErrorBody>);

/// Reads requests until the connection ends; returns why it ended, as far as the reader knows.
async fn ops_loop(
    node: &Node,
    socket: &mut Socket<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>,
    session: &Session,
    format: Format,
) -> DisconnectReason {
    let outbound = &session.outbound;
    let mut bad_in_row = 0u32;
    // Answers in request order: a publish refused by its checks, or answered at its first
    // poll, joins the queue already done.
    let mut in_flight = FuturesOrdered::new();
    loop {
        let read = socket.read();
        tokio::pin!(read);
        // Answers publishes as they complete while waiting for the next request; stops
        // reading while session::MAX_PUBLISHES_IN_FLIGHT are out (back-pressure on the client's socket).
        let read = loop {
            tokio::select! {
                biased;
                Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                    answer_publish(outbound, answer, format);
                }
                read = &mut read, if in_flight.len() < session::MAX_PUBLISHES_IN_FLIGHT => break read,
            }
        };
        let (text, payload) = match read {
            Read::Message { text, payload } => (text, payload),
            Read::Ended(ending) => {
                // The publishes already sent are answered, should the writer still be up.
                while let Some(answer) = in_flight.next().await {
                    answer_publish(outbound, answer, format);
                }
                return match ending {
                    Ending::Violation => DisconnectReason::ProtocolError,
                    _ => DisconnectReason::Client,
                };
            }
        };
        let request = match decode(&payload, text, format) {
            Ok(request) => request,
            Err(e) => {
                bad_in_row += 1;
                let reply = Reply::error(e.id, ErrorBody::new(ErrorCode::BadRequest, e.message));
                push(outbound, &reply, format);
                if bad_in_row >= MAX_BAD_FRAMES {
                    outbound.close(CloseCode::TOO_MANY_ERRORS, "too many protocol errors");
                    return DisconnectReason::ProtocolError;
                }
                continue;
            }
        };
        bad_in_row = 0;
        match request.op {
            Op::Publish { room, data, msg_id } => {
                let id = request.id;
                let timer = node.metrics.op_duration("publish").start_timer();
                let admitted =
                    match Box::pin(session::admit_publish(node, session, &room, &data)).await {
                        Ok(admitted) => admitted,
                        Err(e) => {
                            timer.observe_duration();
                            if in_flight.is_empty() {
                                answer_publish(outbound, (id, Err(e)), format);
                            } else {
                                in_flight.push_back(Either::Right(future::ready((id, Err(e)))));
                            }
                            continue;
                        }
                    };
                let mut publish = Box::pin(async move {
                    let result = session::finish_publish(
                        node,
                        session,
                        &room,
                        data,
                        msg_id.as_ref(),
                        admitted,
                    )
                    .await;
                    timer.observe_duration();
                    (id, result)
                });
                // The first poll sends the store command (or the publish proxy's call): before
                // the next request is read.
                let first = std::future::poll_fn(|cx| Poll::Ready(publish.as_mut().poll(cx)));
                match first.await {
                    Poll::Ready(answer) if in_flight.is_empty() => {
                        answer_publish(outbound, answer, format)
                    }
                    Poll::Ready(answer) => {
                        in_flight.push_back(Either::Right(future::ready(answer)))
                    }
                    Poll::Pending => in_flight.push_back(Either::Left(publish)),
                }
            }
            op => {
                // A barrier: the publishes before it are answered first.
                while let Some(answer) = in_flight.next().await {
                    answer_publish(outbound, answer, format);
                }
                // Boxed: kept out of the connection's long-lived future (see `serve`).
                let (result, after) = Box::pin(session::handle(node, session, op)).await;
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

fn answer_publish(outbound: &Outbound, (id, result): Answer, format: Format) {
    let reply = match result {
        Ok(body) => Reply::ok(id, body),
        Err(error) => Reply::error(Some(id), error),
    };
    push(outbound, &reply, format);
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
