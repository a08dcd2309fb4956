//! Socket.IO v5 over Engine.IO v4, WebSocket transport only (`GET /socket.io/`): stock
//! Socket.IO clients use roomcast through the same ops as the native protocol.

pub mod connection;
pub mod namespace;
pub mod recovery;

use crate::http::{json, Body};
use crate::node::Node;
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

/// Checks the handshake in the reference server's order, then upgrades.
pub fn upgrade(
    node: Arc<Node>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
    mode: connection::Mode,
) -> Response<Body> {
    let params = crate::http::query::parse(req.uri().query().unwrap_or(""));
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
    if let Err(refused) = crate::http::origin_allowed(&node, &req) {
        return *refused;
    }
    let slot = match crate::http::admit(&node) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let ip = crate::client_ip::client_ip(peer.ip(), req.headers(), &node.config.trusted_proxy);
    if !node.admit_ip(ip) {
        node.metrics
            .connections_rejected
            .with_label_values(&["ip_limit"])
            .inc();
        return refuse(StatusCode::SERVICE_UNAVAILABLE, 4, "Forbidden");
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(_) => {
            node.release_ip(ip);
            return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
        }
    };
    tokio::spawn(connection::run(node, fut, ip, slot, mode));
    response.map(|_| http_body_util::Full::new(bytes::Bytes::new()))
}
