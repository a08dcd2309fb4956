//! `GET /test/echo` (only with `--test-echo`): sends every message back as it came, text as
//! text and binary as binary. The WebSocket conformance tests run against it; it goes through
//! the same admission, lifecycle, read loop, reassembly, close rules and writer as the real
//! endpoints, so what they check is what clients get.

use super::{Driver, Live, Read, Socket, SocketConfig, WriterConfig, Ws};
use crate::http::response::{error, Body};
use crate::metrics::DisconnectReason;
use crate::node::Node;
use bytes::Bytes;
use hyper::StatusCode;
use protocol::Format;
use std::sync::Arc;

/// The echo protocol.
#[derive(Debug)]
pub struct Echo;

impl Driver for Echo {
    fn labels(&self) -> [&'static str; 2] {
        ["echo", "raw"]
    }

    async fn serve(self, node: Arc<Node>, ws: Ws, _live: Live) -> DisconnectReason {
        let config = &node.config;
        let mut socket = Socket::open(
            ws,
            SocketConfig {
                format: Format::Json,
                max_message_bytes: config.max_message_bytes,
                queue_bytes: config.outbound_queue_bytes,
                writer: WriterConfig::with_pings(config),
            },
            node.metrics.clone(),
        );
        while let Read::Message { text, payload } = socket.read().await {
            if socket
                .outbound
                .push_message(text, Bytes::from(payload))
                .is_err()
            {
                break;
            }
        }
        socket.finish(config.write_timeout).await;
        DisconnectReason::Client
    }
}

/// `GET /test/echo`: the same admission as every endpoint, then the echo driver.
pub fn upgrade(
    node: Arc<Node>,
    peer: std::net::SocketAddr,
    mut req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    let ticket = match crate::admission::admit(&node, peer, req.headers()) {
        Ok(ticket) => ticket,
        Err(refused) => return *refused,
    };
    match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((response, fut)) => {
            tokio::spawn(super::run(node, fut, ticket, Echo));
            response.map(|_| http_body_util::Full::new(Bytes::new()))
        }
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad WebSocket handshake",
        ),
    }
}
