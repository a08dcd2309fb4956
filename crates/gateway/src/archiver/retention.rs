//! `--archive-retention`: drops archived messages older than the retention, one node at a
//! time (the `archive-retention` lease), every [`interval`] of the retention.

use crate::clock::now_ms;
use crate::node::Node;
use archive::Archive;
use room_state::ArchiveFeed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const LEASE: &str = "archive-retention";

/// How often retention runs: a quarter of the retention (a message outlives it by at most
/// that much), between 250 ms and a minute.
pub fn interval(keep: Duration) -> Duration {
    (keep / 4).clamp(Duration::from_millis(250), Duration::from_secs(60))
}

pub async fn run(
    node: Arc<Node>,
    archive: Arc<dyn Archive>,
    feed: Arc<dyn ArchiveFeed>,
    keep: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let every = interval(keep);
    // Held across a few runs, so one node keeps the chore while it lives.
    let ttl = (every * 3).max(Duration::from_secs(1)).as_millis() as u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let now = now_ms();
        match feed.lease(LEASE, &node.id, ttl, now).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "retention lease failed");
                continue;
            }
        }
        let before = now.saturating_sub(keep.as_millis() as u64);
        match archive.drop_older_than(before).await {
            Ok(dropped) => {
                node.metrics.archive.retention_dropped.inc_by(dropped);
                if dropped > 0 {
                    tracing::info!(dropped, "archive retention dropped old messages");
                }
            }
            // Next time: nothing is lost by waiting.
            Err(e) => tracing::warn!(error = %e, "archive retention failed"),
        }
    }
    let _ = feed.release_lease(LEASE, &node.id).await;
}
