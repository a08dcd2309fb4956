//! Socket.IO v5 over Engine.IO v4 (`/socket.io/`): stock Socket.IO clients use roomcast
//! through the same ops as the native protocol, over WebSocket or HTTP long-polling (the
//! default of stock clients), upgraded to WebSocket when the client can.
//!
//! - this file: one request to the endpoint, checked in the reference server's order and
//!   sent where it belongs: a handshake (WebSocket or polling), or a request for an existing
//!   polling session (a poll, a payload, the upgrade).
//! - [`engine`]: the engine transport the driver reads packets from, WebSocket or polling,
//!   and the switch between them.
//! - [`polling`]: long-polling sessions: the handshake, GET, POST.
//! - [`upgrade`]: the probe that takes a polling session to WebSocket.
//! - [`cors`]: CORS for polling, per `--allowed-origins`.
//! - [`forward`]: no sticky sessions: a request for a session another node owns is relayed
//!   to that node.
//! - [`connection`]: the Engine.IO side of one session: packets and their binary attachments.
//! - [`heartbeat`]: the server's pings, and the pong deadline.
//! - [`namespace`]: the Socket.IO side: the namespaces a connection joined, events → ops.
//! - [`recovery`]: connection state recovery.
//! - [`emitter`]: `@socket.io/redis-emitter` broadcasts from Redis, to this node's sockets.

pub mod connection;
pub mod cors;
pub mod emitter;
pub mod engine;
pub mod forward;
pub mod heartbeat;
pub mod namespace;
pub mod polling;
pub mod recovery;
pub mod upgrade;

use crate::admission;
use crate::backend_hooks::connect::Handshake;
use crate::http::query;
use crate::http::response::{json, Body};
use crate::node::Node;
use crate::transport;
pub use connection::CLIENT_CLOSED;
use connection::{Mode, SocketIo};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// The reference server's refusal: `{"code":N,"message":"…"}`.
pub fn refuse(status: StatusCode, code: u8, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "code": code, "message": message }),
    )
}

/// Answers one request to the endpoint, with CORS headers for an allowed origin.
pub async fn handle(
    node: Arc<Node>,
    peer: SocketAddr,
    req: Request<Incoming>,
    mode: Mode,
) -> Response<Body> {
    let origin = cors::allowed_origin(&node.config.allowed_origins, req.headers());
    let mut response = route(node, peer, req, mode).await;
    // A 101 needs none, and browsers ignore them there.
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        cors::apply(origin, &mut response);
    }
    response
}

/// The checks in the reference server's order: transport, then a `sid` (an existing
/// session), then for a handshake the method, a WebSocket request that is not an upgrade,
/// the protocol version, and admission.
async fn route(
    node: Arc<Node>,
    peer: SocketAddr,
    req: Request<Incoming>,
    mode: Mode,
) -> Response<Body> {
    if req.method() == Method::OPTIONS {
        return cors::preflight(&node.config.allowed_origins, req.headers());
    }
    let params = query::parse(req.uri().query().unwrap_or(""));
    let websocket = match params.get("transport").map(String::as_str) {
        Some("websocket") => true,
        Some("polling") => false,
        _ => return refuse(StatusCode::BAD_REQUEST, 0, "Transport unknown"),
    };
    if let Some(sid) = params.get("sid") {
        let Some(session) = node.polling.get(sid) else {
            return match forward::owner(&node, sid, &req).await {
                Some(addr) => forward::relay(&node, &addr, req).await,
                None => refuse(StatusCode::BAD_REQUEST, 1, "Session ID unknown"),
            };
        };
        return match (websocket, req.method()) {
            (true, _) => upgrade::upgrade(node, session, req),
            (false, &Method::GET) => {
                let relayed = req.headers().contains_key(forward::FORWARDED);
                polling::poll::poll(&node, session, relayed).await
            }
            (false, &Method::POST) => polling::data::data(&node, session, req).await,
            (false, _) => refuse(StatusCode::BAD_REQUEST, 3, "Bad request"),
        };
    }
    if req.method() != Method::GET {
        return refuse(StatusCode::BAD_REQUEST, 2, "Bad handshake method");
    }
    if websocket && !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
    }
    if params.get("EIO").map(String::as_str) != Some("4") {
        return refuse(StatusCode::BAD_REQUEST, 5, "Unsupported protocol version");
    }
    // What the connect proxy is shown at each namespace CONNECT (only when there is one).
    let handshake = node.hooks.connect.is_some().then(|| {
        let transport = if websocket { "websocket" } else { "polling" };
        Arc::new(Handshake::new(transport, &params))
    });
    if websocket {
        websocket_handshake(node, peer, req, mode, handshake)
    } else {
        polling::open::open(node, peer, req.headers(), mode, handshake).await
    }
}

/// A WebSocket-only session: admits, then upgrades.
fn websocket_handshake(
    node: Arc<Node>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    mode: Mode,
    handshake: Option<Arc<Handshake>>,
) -> Response<Body> {
    let ticket = match admission::admit(&node, peer, req.headers()) {
        Ok(ticket) => ticket,
        Err(refused) => return *refused,
    };
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, 3, "Bad request"),
    };
    let driver = SocketIo {
        mode,
        ip: ticket.ip,
        handshake,
    };
    tokio::spawn(transport::run(node, fut, ticket, driver));
    response.map(|_| http_body_util::Full::new(bytes::Bytes::new()))
}
