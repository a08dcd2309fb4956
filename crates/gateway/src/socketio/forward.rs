//! No sticky sessions: a long-polling request may reach any node. A session's `sid` starts
//! with its owner's tag ([`super::engine::new_sid`]), every node registers the address its
//! peers reach it at with its heartbeat (`--advertise-addr`), and a node that gets a request
//! for a session it does not hold sends it on to the owner with hyper's client:
//!
//! - a GET or POST is relayed, its answer relayed back (CORS and all, as the owner wrote it),
//!   over a pool of kept-alive connections per owner ([`Relay`]);
//! - the WebSocket upgrade is relayed too, so that the WebSocket ends at the owner, where the
//!   session's driver is: after the owner's 101 the two upgraded byte streams are joined with
//!   `copy_bidirectional` for the life of the WebSocket.
//!
//! A relayed request carries [`FORWARDED`] and is never relayed again, so two nodes that
//! disagree about an owner cannot bounce a request between them. When the owner is not a live
//! node, or cannot be reached, the answer is 400 "Session ID unknown", as for any dead
//! session: the client opens a new one, and connection state recovery brings its rooms back.

use super::engine::{owner_tag, sid_tag};
use super::refuse;
use crate::clock::now_ms;
use crate::http::response::Body;
use crate::node::Node;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use tokio::net::TcpStream;

/// Marks a request one node relayed to another.
pub const FORWARDED: HeaderName = HeaderName::from_static("x-roomcast-forwarded");

/// How long connecting to the owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A node's client for relaying: kept-alive HTTP/1.1 connections to its peers, reused by
/// the GETs and POSTs it relays (a polling-only client behind a round-robin balancer has most
/// of its requests relayed). A connection whose request the client abandoned is not reused.
pub struct Relay {
    pool: Client<HttpConnector, Incoming>,
}

impl Default for Relay {
    fn default() -> Relay {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let pool = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(connector);
        Relay { pool }
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Relay")
    }
}

/// Why a relay failed: the owner cannot be reached, or broke off.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("relaying to the owner: {0}")]
    Pooled(#[from] hyper_util::client::legacy::Error),
    #[error("connecting to the owner timed out")]
    ConnectTimeout,
    #[error("connecting to the owner: {0}")]
    Connect(#[from] std::io::Error),
    #[error("relaying to the owner: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request to relay: {0}")]
    Build(#[from] hyper::http::Error),
}

/// Where a request for a session this node does not hold should go: the owner's address,
/// or `None` when this node is the owner (the session is gone), the request was relayed
/// already, or the owner is not a live node.
pub async fn owner(node: &Node, sid: &str, req: &Request<Incoming>) -> Option<String> {
    if req.headers().contains_key(FORWARDED) {
        return None;
    }
    let tag = owner_tag(sid)?;
    if tag == sid_tag(&node.id) {
        return None;
    }
    if let Some(addr) = node.peer_addr(tag) {
        return Some(addr);
    }
    // Not in the last upkeep round's list: perhaps a node that started since. Ask once.
    if let Ok(nodes) = node.backends.traffic.live_nodes(now_ms()).await {
        node.remember_peers(&nodes);
    }
    node.peer_addr(tag)
}

/// Relays `req` to the owner at `addr` and answers what it answers.
pub async fn relay(node: &Node, addr: &str, req: Request<Incoming>) -> Response<Body> {
    let upgrade = req.headers().contains_key(UPGRADE);
    let result = if upgrade {
        relay_upgrade(node, addr, req).await
    } else {
        relay_http(node, addr, req).await
    };
    let outcome = if result.is_ok() { "relayed" } else { "failed" };
    node.metrics
        .socketio_relayed
        .with_label_values(&[outcome])
        .inc();
    match result {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(owner = addr, error = %e, "relay to a session's owner failed");
            refuse(StatusCode::BAD_REQUEST, 1, "Session ID unknown")
        }
    }
}

/// A connection of its own to the owner, for an upgrade (it becomes the WebSocket's); its
/// driver runs in its own task.
async fn connect(
    addr: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, RelayError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| RelayError::ConnectTimeout)??;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "relay connection ended with an error");
        }
    });
    Ok(sender)
}

/// The request as the owner gets it: same method, path, query and headers (less the
/// hop-by-hop ones, unless `upgrade`), marked as relayed. `absolute`: the URI names the owner
/// (what the pool routes by).
fn outgoing(
    node: &Node,
    addr: &str,
    req: Request<Incoming>,
    upgrade: bool,
    absolute: bool,
) -> Result<Request<Incoming>, RelayError> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = if absolute {
        format!("http://{addr}{path}")
    } else {
        path.to_string()
    };
    let mut out = Request::builder().method(parts.method).uri(uri);
    for (name, value) in &parts.headers {
        let hop = name == CONNECTION || name == UPGRADE || name == TRANSFER_ENCODING;
        if name == HOST || (hop && !upgrade) || name == FORWARDED {
            continue;
        }
        out = out.header(name, value);
    }
    Ok(out
        .header(HOST, addr)
        .header(FORWARDED, node.id.as_str())
        .body(body)?)
}

async fn relay_http(
    node: &Node,
    addr: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, RelayError> {
    let request = outgoing(node, addr, req, false, true)?;
    let response = node.relay.pool.request(request).await?;
    let (parts, body) = response.into_parts();
    // Answers are one payload at most (about a megabyte); holding one whole is fine.
    let bytes: Bytes = body.collect().await?.to_bytes();
    let mut out = Response::from_parts(parts, Full::new(bytes));
    out.headers_mut().remove(CONNECTION);
    out.headers_mut().remove(TRANSFER_ENCODING);
    Ok(out)
}

/// The WebSocket upgrade: the owner's 101 goes back to the client, and the two upgraded
/// connections are joined byte for byte until either side ends.
async fn relay_upgrade(
    node: &Node,
    addr: &str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, RelayError> {
    let from_client = hyper::upgrade::on(&mut req);
    let mut sender = connect(addr).await?;
    let mut response = sender
        .send_request(outgoing(node, addr, req, true, false)?)
        .await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = response.into_parts();
        let bytes: Bytes = body.collect().await?.to_bytes();
        return Ok(Response::from_parts(parts, Full::new(bytes)));
    }
    let from_owner = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (client, owner) = match tokio::join!(from_client, from_owner) {
            (Ok(client), Ok(owner)) => (client, owner),
            _ => return,
        };
        let (mut client, mut owner) = (TokioIo::new(client), TokioIo::new(owner));
        let _ = tokio::io::copy_bidirectional(&mut client, &mut owner).await;
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, Full::new(Bytes::new())))
}
