//! The upgrade of a long-polling session to WebSocket
//! (`GET /socket.io/?EIO=4&transport=websocket&sid=…`), as the Engine.IO v4 spec describes:
//!
//! 1. the client sends `2probe` on the new WebSocket; we answer `3probe` on it;
//! 2. polling pauses: a pending GET is released with a noop `6`, so the client can see its
//!    polling idle;
//! 3. the client sends `5`; the WebSocket goes to the session's driver, which gives it the
//!    session's queue (see [`super::engine`]).
//!
//! Until `5`, everything still travels over polling. A probe that fails or takes longer than
//! [`UPGRADE_TIMEOUT`] is dropped, and polling carries on.

use super::connection::socket_config;
use super::polling::Session;
use super::refuse;
use crate::http::response::Body;
use crate::node::Node;
use crate::transport::{self, Probe, Read};
use fastwebsockets::upgrade::UpgradeFut;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use protocol::CloseCode;
use std::sync::Arc;
use std::time::Duration;

/// How long a client has to complete an upgrade (the reference server's `upgradeTimeout`).
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers the WebSocket handshake for a polling session, then probes in the background.
pub fn upgrade(
    node: Arc<Node>,
    session: Arc<Session>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if req.method() != Method::GET || !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, 3, "Bad request"),
    };
    let response = response.map(|_| http_body_util::Full::new(bytes::Bytes::new()));
    // One upgrade per session: a second WebSocket, during or after, is opened and closed at
    // once, as the reference server does (clients see a close, not a failed handshake).
    if !session.begin_probe() {
        tokio::spawn(async move {
            if let Ok(ws) = fut.await {
                transport::reject(ws, CloseCode::NORMAL, "already upgrading").await;
            }
        });
        return response;
    }
    tokio::spawn(async move {
        match tokio::time::timeout(UPGRADE_TIMEOUT, probe(&node, &session, fut)).await {
            Ok(Some(probed)) => {
                if !session.upgrade(Box::new(probed)).await {
                    tracing::debug!(sid = %session.sid, "session ended during its upgrade");
                }
            }
            _ => session.end_probe(),
        }
    });
    response
}

/// Steps 1 to 3 above; the WebSocket once the client sent `5`.
async fn probe(
    node: &Node,
    session: &Session,
    fut: UpgradeFut,
) -> Option<Probe<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>> {
    let ws = fut.await.ok()?;
    let mut probe = Probe::open(ws, socket_config(&node.config), node.metrics.clone());
    expect(&mut probe, "2probe").await?;
    if !probe.send_text("3probe").await {
        return None;
    }
    session.pause();
    expect(&mut probe, "5").await?;
    Some(probe)
}

async fn expect<S>(probe: &mut Probe<S>, text: &str) -> Option<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match probe.read().await {
        Read::Message {
            text: true,
            payload,
        } if payload == text.as_bytes() => Some(()),
        _ => None,
    }
}
