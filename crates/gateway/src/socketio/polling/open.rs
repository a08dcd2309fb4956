//! The long-polling handshake: `GET /socket.io/?EIO=4&transport=polling` without a `sid`.
//! Admission is the WebSocket endpoints' (Origin, cap, handshake rate, then the per-address
//! limit, which has no close code to travel in here and is answered as HTTP); then a session
//! is opened, its driver started, and the open packet is the answer.

use super::session::Session;
use super::{poll, Listed};
use crate::admission;
use crate::backend_hooks::connect::Handshake;
use crate::http::response::Body;
use crate::node::Node;
use crate::socketio::connection::{self, Mode, SocketIo};
use crate::socketio::engine::{self, Engine};
use crate::socketio::heartbeat::Clock;
use crate::socketio::refuse;
use crate::transport::{serve_admitted, Driver};
use fan_out::Outbound;
use hyper::{HeaderMap, Response, StatusCode};
use protocol::socketio as sio;
use protocol::Format;
use std::net::SocketAddr;
use std::sync::Arc;

/// Opens a session and answers its first poll.
pub async fn open(
    node: Arc<Node>,
    peer: SocketAddr,
    headers: &HeaderMap,
    mode: Mode,
    handshake: Option<Arc<Handshake>>,
) -> Response<Body> {
    let mut ticket = match admission::admit(&node, peer, headers) {
        Ok(ticket) => ticket,
        Err(refused) => return *refused,
    };
    if let Err(refusal) = ticket.admit_ip(&node) {
        node.metrics.rejected(refusal.rejection);
        return refuse(StatusCode::FORBIDDEN, 4, &refusal.reason);
    }
    let cfg = &node.config;
    let clock = Clock::start();
    let sid = engine::new_sid(&node);
    let (outbound, rx) = Outbound::new(Format::SocketIo, cfg.outbound_queue_bytes);
    let outbound = Arc::new(outbound);
    let _ = outbound.push(
        sio::open_packet(
            &sid,
            &["websocket"],
            cfg.socketio_ping_interval.as_millis() as u64,
            cfg.socketio_ping_timeout.as_millis() as u64,
            cfg.socketio_max_payload as u64,
        )
        .into(),
    );
    let (session, inbound) = Session::new(sid.clone(), outbound, rx, clock);
    node.polling.insert(session.clone());
    let listed = Listed {
        node: node.clone(),
        sid,
    };
    let engine = Engine::polling(session.clone(), inbound, listed);
    let driver = SocketIo {
        mode,
        ip: ticket.ip,
        handshake,
    };
    let labels = driver.labels();
    tokio::spawn(serve_admitted(
        node.clone(),
        ticket,
        labels,
        move |node, live| connection::serve(node, engine, driver, live),
    ));
    poll::poll(&node, session, false).await
}
