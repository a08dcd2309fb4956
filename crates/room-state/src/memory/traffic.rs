//! `TrafficCounters` for the embedded backend.

use super::MemoryState;
use crate::error::StateError;
use crate::model::NodeInfo;
use crate::traffic::{TrafficCounters, BUCKET_MS};
use async_trait::async_trait;

/// Buckets older than this are dropped; no caller asks for more than a few minutes.
const KEEP_MS: u64 = 10 * 60_000;

#[async_trait]
impl TrafficCounters for MemoryState {
    async fn record_creation(&self, now_ms: u64) -> Result<(), StateError> {
        let bucket = now_ms - now_ms % BUCKET_MS;
        let mut creations = self.creations.lock();
        match creations.back_mut() {
            Some((start, count)) if *start == bucket => *count += 1,
            _ => creations.push_back((bucket, 1)),
        }
        while creations
            .front()
            .is_some_and(|(start, _)| start + KEEP_MS <= now_ms)
        {
            creations.pop_front();
        }
        Ok(())
    }

    async fn creation_buckets(
        &self,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Vec<(u64, u64)>, StateError> {
        Ok(self
            .creations
            .lock()
            .iter()
            .filter(|(start, _)| start + window_ms > now_ms)
            .copied()
            .collect())
    }

    async fn heartbeat(
        &self,
        node: &NodeInfo,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StateError> {
        self.nodes
            .lock()
            .insert(node.id.clone(), (node.clone(), now_ms + ttl_ms));
        Ok(self.reaped.lock().get(&node.id).copied())
    }

    async fn live_nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, StateError> {
        let nodes = self.nodes.lock();
        let mut live: Vec<NodeInfo> = nodes
            .values()
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(n, _)| n.clone())
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    async fn claim_dead_nodes(&self, now_ms: u64) -> Result<Vec<String>, StateError> {
        let mut nodes = self.nodes.lock();
        let dead: Vec<String> = nodes
            .iter()
            .filter(|(_, (_, expires))| *expires <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        let mut reaped = self.reaped.lock();
        for id in &dead {
            nodes.remove(id);
            reaped.insert(id.clone(), now_ms);
        }
        Ok(dead)
    }
}
