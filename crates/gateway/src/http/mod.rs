//! HTTP: routing, the traffic status, probes and metrics. The WebSocket endpoints' handshakes
//! live with their protocols ([`crate::native::upgrade`], [`crate::socketio`],
//! [`crate::transport::echo`]); the server API is [`api`].

pub mod api;
mod api_messages;
pub mod query;
pub mod response;

use crate::native;
use crate::node::Node;
use crate::socketio::{self, connection::Mode};
use crate::transport::echo;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use response::{error, json, text, Body};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

/// Routes one request.
pub async fn route(
    node: Arc<Node>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/ws") => native::upgrade::upgrade(node, peer, req),
        (_, "/socket.io/" | "/socket.io") => {
            socketio::handle(node, peer, req, Mode::SocketIo).await
        }
        (_, "/engine.io/" | "/engine.io") if node.config.socketio_conformance => {
            socketio::handle(node, peer, req, Mode::EngineEcho).await
        }
        (&Method::GET, "/test/echo") if node.config.test_echo => echo::upgrade(node, peer, req),
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
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        (_, p) if p.starts_with("/api/") => api::handle(&node, req).await,
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    Ok(response)
}
