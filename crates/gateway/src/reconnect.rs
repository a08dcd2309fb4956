//! Telling every local client to reconnect elsewhere: the drain does it, and so does a node
//! that learns its peers declared it dead.

use fan_out::Registry;
use protocol::codec::encode;
use protocol::frame::Event;
use protocol::CloseCode;
use std::time::Duration;
use tokio::time::{sleep, Instant};

/// Tells every local client to `reconnect` (with a jittered `afterMs`) and closes it with
/// 1012, in batches spread over `window`, so that they do not land on the other nodes all at
/// once. Used by the drain, and by a node that learns its peers declared it dead.
pub async fn send_reconnect(
    registry: &Registry,
    window: Duration,
    reason: &'static str,
    deadline: Option<Instant>,
) {
    let conns = registry.all();
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
