//! `TrafficCounters` on Redis Cluster.
//!
//! Room creations are counted in per-second fields of 8 hashes on different slots; each
//! creation increments one of them at random, and a reader sums all 8. The count is exact (no
//! sampling); the sharding only spreads the writes. Nodes heartbeat into one small hash.

use super::keys::{self, CREATION_SHARDS};
use super::{array, RedisState};
use crate::error::StateError;
use crate::model::NodeInfo;
use crate::observer::Command;
use crate::traffic::{TrafficCounters, BUCKET_MS};
use async_trait::async_trait;
use fred::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Seconds of creation buckets kept.
const KEEP_SECS: u64 = 600;

#[async_trait]
impl TrafficCounters for RedisState {
    async fn record_creation(&self, now_ms: u64) -> Result<(), StateError> {
        let second = now_ms / BUCKET_MS;
        let shard = fastrand::u64(..CREATION_SHARDS);
        let cleanup = if fastrand::u8(..16) == 0 { "1" } else { "0" };
        let args = vec![
            second.to_string(),
            second.saturating_sub(KEEP_SECS).to_string(),
            cleanup.to_string(),
        ];
        self.eval(Command::RecordCreation, vec![keys::creations(shard)], args)
            .await?;
        Ok(())
    }

    async fn creation_buckets(
        &self,
        now_ms: u64,
        window_ms: u64,
    ) -> Result<Vec<(u64, u64)>, StateError> {
        let mut sums: BTreeMap<u64, u64> = BTreeMap::new();
        for shard in 0..CREATION_SHARDS {
            let key = keys::creations(shard);
            let fields: HashMap<String, u64> = self
                .on(&key)
                .hgetall(&key)
                .await
                .map_err(|e| self.failed(e))?;
            for (second, count) in fields {
                let Ok(second) = second.parse::<u64>() else {
                    continue;
                };
                let start = second * BUCKET_MS;
                if start + window_ms > now_ms && start <= now_ms {
                    *sums.entry(start).or_default() += count;
                }
            }
        }
        Ok(sums.into_iter().collect())
    }

    async fn heartbeat(
        &self,
        node: &NodeInfo,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<Option<u64>, StateError> {
        let value = format!(
            "{}\t{}\t{}\t{}",
            node.addr,
            node.connections,
            node.started_at,
            now_ms + ttl_ms
        );
        let reply = self
            .eval(
                Command::Heartbeat,
                vec![keys::NODES.to_string(), keys::NODES_REAPED.to_string()],
                vec![node.id.clone(), value],
            )
            .await?;
        Ok(reply.as_string().and_then(|s| s.parse().ok()))
    }

    async fn live_nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, StateError> {
        let all: HashMap<String, String> = self
            .on(keys::NODES)
            .hgetall(keys::NODES)
            .await
            .map_err(|e| self.failed(e))?;
        let mut live: Vec<NodeInfo> = all
            .into_iter()
            .filter_map(|(id, v)| {
                let mut parts = v.split('\t');
                let addr = parts.next()?.to_string();
                let connections = parts.next()?.parse().ok()?;
                let started_at = parts.next()?.parse().ok()?;
                let expires: u64 = parts.next()?.parse().ok()?;
                (expires > now_ms).then_some(NodeInfo {
                    id,
                    addr,
                    connections,
                    started_at,
                })
            })
            .collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    async fn claim_dead_nodes(&self, now_ms: u64) -> Result<Vec<String>, StateError> {
        let reply = self
            .eval(
                Command::ClaimDeadNodes,
                vec![keys::NODES.to_string(), keys::NODES_REAPED.to_string()],
                vec![now_ms.to_string()],
            )
            .await?;
        Ok(array(reply)
            .iter()
            .filter_map(fred::types::Value::as_string)
            .collect())
    }
}
