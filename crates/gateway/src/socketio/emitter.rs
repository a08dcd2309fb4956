//! `@socket.io/redis-emitter` compatibility: Node back ends that publish with the emitter
//! (`emitter.to(room).emit("event", …)`) keep working when roomcast replaces the Node servers.
//!
//! Like each Node server with the Redis adapter, every roomcast node subscribes to the
//! emitter's channels (classic pub/sub reaches every node of a Redis Cluster; the subscriber is
//! `fan_out::redis::emitter`) for `/` and each of `--socketio-namespaces`, decodes each message
//! (`protocol::emitter`, which never panics; a bad message is counted and dropped) and delivers
//! the event to its own Socket.IO sockets of that namespace: those in the named rooms (room
//! names are the namespace's own, as its clients `join` them; a socket's id is its own room),
//! or every socket of the namespace when no room is named, minus those in an `except` room.
//! The event is encoded once (text, or a BINARY_EVENT bundle when it carries byte strings)
//! and the same bytes are queued to every recipient (`fan_out::deliver_encoded`).
//!
//! Not in any room's history: no offset, no recovery replay, at most once (as with the Node
//! adapter). Requests: `disconnectSockets` closes the matching sockets' connections;
//! `socketsJoin`, `socketsLeave`, `serverSideEmit` and fetches are ignored (counted,
//! `unsupported`). See docs/protocol.md.

use super::namespace::room_prefix;
use crate::node::Node;
use bytes::Bytes;
use fan_out::redis::emitter::{subscribe_classic, ClassicSubscription};
use protocol::emitter::{self, ChannelKind, Request};
use protocol::CloseCode;
use std::sync::Arc;
use std::time::Duration;

/// The `result` labels of `roomcast_socketio_emitter_messages_total`.
pub const RESULTS: [&str; 11] = [
    "delivered",
    "no_recipient",
    "disconnect",
    "unsupported",
    "malformed",
    "bad_data",
    "bad_event",
    "too_large",
    "unknown_namespace",
    "queue_full",
    "local_flag",
];

/// Messages that may wait between the subscriber and delivery.
const QUEUE: usize = 4096;

/// The namespaces whose emitter channels this node reads: `/` and `--socketio-namespaces`.
fn namespaces(node: &Node) -> Vec<String> {
    let mut out = vec!["/".to_string()];
    out.extend(node.config.socketio_namespaces.iter().cloned());
    out
}

/// Subscribes (with a Redis Cluster, unless turned off) and delivers in a task of its own.
pub async fn start(node: Arc<Node>) -> anyhow::Result<()> {
    let config = &node.config;
    if config.redis_cluster.is_empty() || config.no_socketio_emitter || config.socketio_conformance
    {
        return Ok(());
    }
    let key = config.socketio_emitter_key.clone();
    let namespaces = namespaces(&node);
    let metrics = node.metrics.clone();
    let dropped = Arc::new(move |n: u64| {
        metrics
            .socketio_emitter_messages
            .with_label_values(&["queue_full"])
            .inc_by(n);
    });
    let mut rx = subscribe_classic(
        ClassicSubscription {
            urls: config.redis_cluster.clone(),
            command_timeout: config.redis_command_timeout,
            patterns: namespaces
                .iter()
                .map(|ns| emitter::broadcast_pattern(&key, ns))
                .collect(),
            channels: namespaces
                .iter()
                .map(|ns| emitter::request_channel(&key, ns))
                .collect(),
            queue: QUEUE,
            resubscribe_every: Duration::from_secs(30),
        },
        dropped,
    )
    .await?;
    tracing::info!(
        key,
        ?namespaces,
        "reading @socket.io/redis-emitter channels"
    );
    tokio::spawn(async move {
        while let Some((channel, bytes)) = rx.recv().await {
            let result = handle(&node, &key, &namespaces, &channel, &bytes);
            node.metrics
                .socketio_emitter_messages
                .with_label_values(&[result])
                .inc();
        }
    });
    Ok(())
}

/// Handles one message; returns its metric result.
fn handle(
    node: &Node,
    key: &str,
    namespaces: &[String],
    channel: &str,
    bytes: &Bytes,
) -> &'static str {
    match emitter::classify(key, namespaces, channel) {
        Some(ChannelKind::Broadcast { namespace }) => broadcast(node, namespace, bytes),
        Some(ChannelKind::Request { namespace }) => request(node, namespace, bytes),
        None => "unknown_namespace",
    }
}

fn broadcast(node: &Node, namespace: &str, bytes: &[u8]) -> &'static str {
    let b = match emitter::decode_broadcast(bytes) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!(error = %e, "emitter message dropped");
            return e.reason();
        }
    };
    if b.namespace != namespace {
        return "malformed";
    }
    if b.flags.local {
        // "This server only": sent by a Node server for its own sockets, never for ours.
        return "local_flag";
    }
    let payload = Bytes::from(emitter::encode_socketio(&b));
    if payload.len() > node.config.socketio_max_payload {
        return "too_large";
    }
    let targets =
        node.registry
            .socketio_targets(namespace, &room_prefix(namespace), &b.rooms, &b.except);
    if fan_out::deliver_encoded(&targets, &payload, node.metrics.as_ref()) > 0 {
        "delivered"
    } else {
        "no_recipient"
    }
}

fn request(node: &Node, namespace: &str, bytes: &[u8]) -> &'static str {
    let request = match emitter::decode_request(bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "emitter request dropped");
            return e.reason();
        }
    };
    match request {
        Request::Disconnect { target, close } => {
            let targets = node.registry.socketio_targets(
                namespace,
                &room_prefix(namespace),
                &target.rooms,
                &target.except,
            );
            tracing::debug!(n = targets.len(), close, "emitter disconnectSockets");
            for conn in targets {
                conn.outbound
                    .close(CloseCode::KICKED, "disconnected by the server");
            }
            "disconnect"
        }
        Request::Join { .. } | Request::Leave { .. } | Request::Unsupported { .. } => {
            let name = match &request {
                Request::Join { .. } => "socketsJoin",
                Request::Leave { .. } => "socketsLeave",
                Request::Unsupported { name, .. } => name,
                Request::Disconnect { .. } => "disconnectSockets",
            };
            tracing::debug!(
                request = name,
                namespace,
                "unsupported emitter request ignored"
            );
            "unsupported"
        }
    }
}
