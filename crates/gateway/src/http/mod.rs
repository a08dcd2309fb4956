//! HTTP: the WebSocket upgrade, status and probes, metrics, and the server API.

pub mod api;
pub mod query;

use crate::admission::{Refusal, Slot};
use crate::client_ip::client_ip;
use crate::native::connection::{self, Admission};
use crate::node::Node;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use protocol::Format;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

pub type Body = Full<Bytes>;

/// Routes one request.
pub async fn route(
    node: Arc<Node>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/ws") => ws_upgrade(node, peer, req),
        (_, "/socket.io/" | "/socket.io") => {
            crate::socketio::upgrade(node, peer, req, crate::socketio::connection::Mode::SocketIo)
        }
        (_, "/engine.io/" | "/engine.io") if node.config.socketio_conformance => {
            let mode = crate::socketio::connection::Mode::EngineEcho;
            crate::socketio::upgrade(node, peer, req, mode)
        }
        (&Method::GET, "/test/echo") if node.config.test_echo => {
            crate::native::echo::upgrade(node, req)
        }
        (&Method::GET, "/status") => json(StatusCode::OK, &node.traffic.current()),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            if node.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else if node.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "backend unavailable\n")
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(node.metrics.render())));
            r.headers_mut().insert(
                CONTENT_TYPE,
                "text/plain; version=0.0.4"
                    .parse()
                    .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("text/plain")),
            );
            r
        }
        (_, p) if p.starts_with("/api/") => api::handle(&node, req).await,
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    Ok(response)
}

fn ws_upgrade(node: Arc<Node>, peer: SocketAddr, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "expected a WebSocket upgrade",
        );
    }
    if let Err(refused) = origin_allowed(&node, &req) {
        return *refused;
    }
    let slot = match admit(&node) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    let params = query::parse(req.uri().query().unwrap_or(""));
    let format = match params.get("format").map(String::as_str) {
        None => Format::Json,
        Some(f) => match Format::from_query(f) {
            Some(format) => format,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "format must be json or msgpack",
                )
            }
        },
    };
    let bearer = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let token = params.get("token").cloned().or(bearer);
    let ip = client_ip(peer.ip(), req.headers(), &node.config.trusted_proxy);
    let auth = node.auth.authenticate(token.as_deref(), ip);
    let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "bad WebSocket handshake",
            )
        }
    };
    let ip_admitted = node.admit_ip(ip);
    let admission = Admission {
        ip,
        format,
        auth,
        ip_admitted,
        slot,
    };
    tokio::spawn(connection::run(node, upgrade, admission));
    response.map(|_| Full::new(Bytes::new()))
}

/// The browser `Origin` check (`--allowed-origins`). Clients that send no `Origin` are not
/// browsers, and a page cannot make a browser omit it, so they pass.
pub fn origin_allowed<B>(node: &Node, req: &Request<B>) -> Result<(), Box<Response<Body>>> {
    let allowed = &node.config.allowed_origins;
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(origin) = req.headers().get(hyper::header::ORIGIN) else {
        return Ok(());
    };
    let ok = origin
        .to_str()
        .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
    if ok {
        Ok(())
    } else {
        node.metrics
            .connections_rejected
            .with_label_values(&["origin"])
            .inc();
        Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "origin not allowed",
        )))
    }
}

/// The node-wide gate before an upgrade: 503 with `Retry-After` when full or flooded.
pub fn admit(node: &Node) -> Result<Slot, Box<Response<Body>>> {
    node.gate.admit().map_err(|refusal| {
        node.metrics
            .connections_rejected
            .with_label_values(&[refusal.as_str()])
            .inc();
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            match refusal {
                Refusal::Capacity => "this node is full, try again later",
                Refusal::HandshakeRate => "too many connection attempts, try again later",
            },
        );
        r.headers_mut()
            .insert(RETRY_AFTER, refusal.retry_after_secs().into());
        Box::new(r)
    })
}

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// `{"error":{"code","message"}}`, the same shape as a protocol error.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    }
    r
}
