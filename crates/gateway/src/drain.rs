//! Graceful drain on SIGTERM, with a deadline.
//!
//! 1. Readiness turns false at once, so the load balancer stops sending new clients.
//! 2. The node keeps serving for `--drain-delay`, while the load balancer notices.
//! 3. It stops accepting connections.
//! 4. It tells its clients to `reconnect`, with a jittered `afterMs`, and closes them with
//!    1012, in batches spread over `--drain-window`, so they do not land on the other nodes
//!    all at once.
//! 5. It returns when every connection is gone, or at `--drain-deadline`, whichever is first.

use crate::node::Node;
use protocol::codec::encode;
use protocol::frame::Event;
use protocol::CloseCode;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

/// Tells every local client to `reconnect` (with a jittered `afterMs`) and closes it with
/// 1012, in batches spread over `window`, so that they do not land on the other nodes all at
/// once. Used by the drain, and by a node that learns its peers declared it dead.
pub async fn send_reconnect(
    node: &Node,
    window: Duration,
    reason: &'static str,
    deadline: Option<Instant>,
) {
    let conns = node.registry.all();
    let batches = (window.as_millis() / BATCH_EVERY.as_millis()).max(1) as usize;
    let per_batch = conns.len().div_ceil(batches).max(1);
    // Clients wait a random while before reconnecting, on top of the batch spread.
    let jitter_ms = (window.as_millis() as u64).clamp(1, 5_000);
    tracing::info!(
        connections = conns.len(),
        batches,
        per_batch,
        reason,
        "sending reconnect"
    );
    for batch in conns.chunks(per_batch) {
        for conn in batch {
            let event = Event::Reconnect {
                after_ms: fastrand::u64(0..=jitter_ms),
                reason,
            };
            if let Ok(bytes) = encode(&event, conn.outbound.format()) {
                let _ = conn.outbound.push(bytes);
            }
            conn.outbound
                .close(CloseCode::SERVICE_RESTART, "server restarting");
        }
        if deadline.is_none_or(|d| Instant::now() + BATCH_EVERY < d) {
            sleep(BATCH_EVERY).await;
        }
    }
}

/// Pause between two batches of closes.
const BATCH_EVERY: Duration = Duration::from_millis(100);

pub async fn run(node: &Node, stop_accepting: &watch::Sender<bool>) {
    let config = &node.config;
    let deadline = Instant::now() + config.drain_deadline;
    node.start_draining();
    tracing::info!(delay = ?config.drain_delay, window = ?config.drain_window, deadline = ?config.drain_deadline, "draining");
    sleep(config.drain_delay).await;
    let _ = stop_accepting.send(true);

    send_reconnect(node, config.drain_window, "drain", Some(deadline)).await;
    // Wait for connections to finish their close handshakes and clean up.
    let wait = async {
        while node.registry.connection_count() > 0 {
            sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = wait => tracing::info!("drained"),
        _ = sleep_until(deadline - Duration::from_millis(200).min(config.drain_deadline)) => {
            tracing::warn!(left = node.registry.connection_count(), "drain deadline reached");
        }
    }
}
