//! The traffic monitor's inputs: room creations per second, and the node registry that sums
//! connections across the cluster.

use crate::error::StateError;
use crate::model::NodeInfo;
use async_trait::async_trait;

/// Counters are kept per second; a window of 60 buckets gives creations per minute.
pub const BUCKET_MS: u64 = 1_000;

#[async_trait]
pub trait TrafficCounters: Send + Sync {
    /// Counts one room creation at `now_ms`.
    async fn record_creation(&self, now_ms: u64) -> Result<(), StateError>;

    /// The creation counts of the last `window_ms`, as `(bucket start ms, count)`, oldest first.
    async fn creation_buckets(
        &self,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Vec<(u64, u64)>, StateError>;

    /// Records this node as alive until `now_ms + ttl_ms`, with its connection count.
    /// Returns when a peer last claimed this node as dead (see
    /// [`TrafficCounters::claim_dead_nodes`]), if it ever did: a newer claim than the node has
    /// seen means its members were removed from presence.
    async fn heartbeat(
        &self,
        node: &NodeInfo,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StateError>;

    /// The nodes whose heartbeat has not expired.
    async fn live_nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, StateError>;

    /// Removes the registry entries of nodes whose heartbeat expired, and returns the ids that
    /// this caller removed. Each dead node is returned to exactly one caller, which then
    /// cleans up after it (its members' presence).
    async fn claim_dead_nodes(&self, now_ms: u64) -> Result<Vec<String>, StateError>;
}
