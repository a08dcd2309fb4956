//! Graceful drain on SIGTERM, with a deadline.
//!
//! 1. Readiness turns false at once, so the load balancer stops sending new clients.
//! 2. The node keeps serving for `--drain-delay`, while the load balancer notices.
//! 3. It stops accepting connections.
//! 4. It tells its clients to `reconnect`, with a jittered `afterMs`, and closes them with
//!    1012, in batches spread over `--drain-window`, so they do not land on the other nodes
//!    all at once.
//! 5. It returns when every connection is gone, or at `--drain-deadline`, whichever is first.
//! 6. Then (`Running::drain`) the user registry entries of the closed connections are
//!    removed (what is left of the deadline, at least a second when no connection is left):
//!    each removal was handed to a task when its connection closed, and the process must not
//!    exit under it.
//! 7. The archiver, if any, runs one last round, so what was published until the end is
//!    archived, and gives its shards' leases up for another node to take at once; it gets
//!    what is left of the deadline, at least a second. Then webhooks send what their shards
//!    hold (docs/webhooks.md, "Drain").

use crate::node::Node;
use crate::reconnect::send_reconnect;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

/// Runs the stages above; returns when the node is drained or the deadline passed.
pub async fn run(node: &Node, stop_accepting: &watch::Sender<bool>) {
    let config = &node.config;
    let deadline = Instant::now() + config.drain_deadline;
    node.start_draining();
    tracing::info!(delay = ?config.drain_delay, window = ?config.drain_window, deadline = ?config.drain_deadline, "draining");
    sleep(config.drain_delay).await;
    let _ = stop_accepting.send(true);

    send_reconnect(&node.registry, config.drain_window, "drain", Some(deadline)).await;
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
