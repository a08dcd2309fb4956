//! Socket.IO v5 over Engine.IO v4, WebSocket transport only (`GET /socket.io/`): stock
//! Socket.IO clients use roomcast through the same ops as the native protocol.
//!
//! - this file: the handshake checks, in the reference server's order, then admission.
//! - [`connection`]: the Engine.IO side of one connection: open packet, heartbeat, packets
//!   and their binary attachments.
//! - [`namespace`]: the Socket.IO side: the namespaces a connection joined, events → ops.
//! - [`recovery`]: connection state recovery.

pub mod connection;
pub mod namespace;
pub mod recovery;

use crate::admission;
use crate::http::query;
use crate::http::response::{json, Body};
use crate::node::Node;
use crate::transport;
use connection::{Mode, SocketIo};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;

/// The reference server's refusal: `{"code":N,"message":"…"}`.
fn refuse(status: StatusCode, code: u8, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "code": code, "message": message }),
    )
}

/// Checks the handshake in the reference server's order, admits, then upgrades.
pub fn upgrade(
    node: Arc<Node>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    mode: Mode,
) -> Response<Body> {
    let params = query::parse(req.uri().query().unwrap_or(""));
    if params.get("transport").map(String::as_str) != Some("websocket") {
        return refuse(StatusCode::BAD_REQUEST, 0, "Transport unknown");
    }
    if params.contains_key("sid") {
        return refuse(StatusCode::BAD_REQUEST, 1, "Session ID unknown");
    }
    if req.method() != Method::GET {
        return refuse(StatusCode::BAD_REQUEST, 2, "Bad handshake method");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
    }
    if params.get("EIO").map(String::as_str) != Some("4") {
        return refuse(StatusCode::BAD_REQUEST, 5, "Unsupported protocol version");
    }
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
    };
    tokio::spawn(transport::run(node, fut, ticket, driver));
    response.map(|_| http_body_util::Full::new(bytes::Bytes::new()))
}
