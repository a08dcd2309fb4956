//! `GET /ws`: reads what the handshake asks for (`format`, a token from `?token=` or
//! `Authorization: Bearer`), admits the connection, and hands the upgraded socket to the
//! shared lifecycle with the native driver.

use super::connection::{Native, ProxyAsk};
use crate::admission;
use crate::auth::bearer;
use crate::backend_hooks::connect::Handshake;
use crate::http::query;
use crate::http::response::{error, Body};
use crate::node::Node;
use crate::transport;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use protocol::Format;
use std::net::SocketAddr;
use std::sync::Arc;

pub fn upgrade(node: Arc<Node>, peer: SocketAddr, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "bad_request",
            "expected a WebSocket upgrade",
        );
    }
    let ticket = match admission::admit(&node, peer, req.headers()) {
        Ok(ticket) => ticket,
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
    // The query wins over the header when both are given.
    let token = params
        .get("token")
        .map(String::as_str)
        .or_else(|| bearer(req.headers()));
    let (auth, claims) = match node.auth.authenticate_claims(token, ticket.ip) {
        Ok((identity, claims)) => (Ok(identity), claims),
        Err(e) => (Err(e), None),
    };
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
    let mut driver = Native::new(format, auth);
    if node.hooks.connect.is_some() {
        driver = driver.with_proxy(ProxyAsk {
            ip: ticket.ip,
            claims,
            handshake: Handshake::new("websocket", &params),
        });
    }
    tokio::spawn(transport::run(node, upgrade, ticket, driver));
    response.map(|_| Full::new(Bytes::new()))
}
