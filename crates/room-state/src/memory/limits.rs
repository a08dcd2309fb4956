//! `RateLimits` for the embedded backend.

use super::MemoryState;
use crate::error::StateError;
use crate::limits::RateLimits;
use crate::model::{Decision, Grant};
use async_trait::async_trait;

pub(crate) struct Bucket {
    tokens: f64,
    updated_ms: u64,
}

#[async_trait]
impl RateLimits for MemoryState {
    async fn window_acquire(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Decision, StateError> {
        let mut windows = self.windows.lock();
        let log = windows.entry(key.to_string()).or_default();
        while log.front().is_some_and(|t| *t + window_ms <= now_ms) {
            log.pop_front();
        }
        if log.len() >= limit as usize {
            let oldest = log.front().copied().unwrap_or(now_ms);
            return Ok(Decision::deny(oldest + window_ms - now_ms));
        }
        log.push_back(now_ms);
        Ok(Decision::ALLOW)
    }

    async fn window_release(&self, key: &str, now_ms: u64) -> Result<(), StateError> {
        let mut windows = self.windows.lock();
        if let Some(log) = windows.get_mut(key) {
            if let Some(pos) = log.iter().rposition(|t| *t == now_ms) {
                log.remove(pos);
            }
            if log.is_empty() {
                windows.remove(key);
            }
        }
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
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: f64::from(burst),
            updated_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(bucket.updated_ms) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * rate_per_sec).min(f64::from(burst));
        bucket.updated_ms = bucket.updated_ms.max(now_ms);
        let granted = bucket.tokens.floor().clamp(0.0, f64::from(n)) as u32;
        if granted > 0 {
            bucket.tokens -= f64::from(granted);
            Ok(Grant {
                granted,
                retry_after_ms: 0,
            })
        } else if rate_per_sec <= 0.0 {
            Ok(Grant {
                granted: 0,
                retry_after_ms: 60_000,
            })
        } else {
            let wait = ((1.0 - bucket.tokens) / rate_per_sec * 1000.0).ceil() as u64;
            Ok(Grant {
                granted: 0,
                retry_after_ms: wait.max(1),
            })
        }
    }
}
