//! `RateLimits` on Redis Cluster: one key per user and limit, each in its own slot, so limits
//! spread over every shard and hold across every node.

use super::keys;
use super::{array, int, RedisState};
use crate::error::StateError;
use crate::limits::RateLimits;
use crate::model::{Decision, Grant};
use crate::observer::Command;
use async_trait::async_trait;

fn decision(reply: Vec<fred::types::Value>) -> Result<Decision, StateError> {
    if int(reply.first())? == 1 {
        Ok(Decision::ALLOW)
    } else {
        Ok(Decision::deny(int(reply.get(1))?.max(1) as u64))
    }
}

#[async_trait]
impl RateLimits for RedisState {
    async fn window_acquire(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Decision, StateError> {
        let member = format!("{now_ms}:{:x}", fastrand::u64(..));
        let args = vec![
            now_ms.to_string(),
            window_ms.to_string(),
            limit.to_string(),
            member,
        ];
        decision(array(
            self.eval(Command::WindowAcquire, vec![keys::window(key)], args)
                .await?,
        ))
    }

    async fn window_release(&self, key: &str, now_ms: u64) -> Result<(), StateError> {
        self.eval(
            Command::WindowRelease,
            vec![keys::window(key)],
            vec![now_ms.to_string()],
        )
        .await?;
        Ok(())
    }

    async fn bucket_take_n(
        &self,
        key: &str,
        rate_per_sec: f64,
        burst: u32,
        n: u32,
        now_ms: u64,
    ) -> Result<Grant, StateError> {
        let args = vec![
            now_ms.to_string(),
            rate_per_sec.to_string(),
            burst.to_string(),
            n.to_string(),
        ];
        let reply = array(
            self.eval(Command::BucketTake, vec![keys::bucket(key)], args)
                .await?,
        );
        let granted = int(reply.first())?.max(0) as u32;
        Ok(Grant {
            granted,
            retry_after_ms: if granted > 0 {
                0
            } else {
                int(reply.get(1))?.max(1) as u64
            },
        })
    }
}
