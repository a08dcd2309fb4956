//! `GET /test/echo` (only with `--test-echo`): sends every message back as it came, text as
//! text and binary as binary. The WebSocket conformance tests run against it; it uses the
//! same read loop, reassembly, close rules and writer as the real endpoints, so what they
//! check is what clients get.

use super::writer::{self, Read, WriterConfig};
use crate::http::{error, Body};
use crate::node::Node;
use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use protocol::Format;
use std::sync::Arc;

pub fn upgrade(node: Arc<Node>, mut req: Request<Incoming>) -> Response<Body> {
    let slot = match crate::http::admit(&node) {
        Ok(slot) => slot,
        Err(refused) => return *refused,
    };
    match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok((response, fut)) => {
            tokio::spawn(async move {
                let _slot = slot;
                serve(node, fut).await;
            });
            response.map(|_| http_body_util::Full::new(Bytes::new()))
        }
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "bad WebSocket handshake",
        ),
    }
}

async fn serve(node: Arc<Node>, upgrade: UpgradeFut) {
    let Ok(ws) = upgrade.await else { return };
    let config = &node.config;
    let mut socket = writer::open(
        ws,
        Format::Json,
        config.max_message_bytes,
        config.outbound_queue_bytes,
        WriterConfig {
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            write_timeout: config.write_timeout,
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
}
