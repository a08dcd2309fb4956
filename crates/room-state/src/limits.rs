//! Rate limits keyed by user, shared by every node that uses the same backend.

use crate::error::StateError;
use crate::model::{Decision, Grant};
use async_trait::async_trait;

#[async_trait]
pub trait RateLimits: Send + Sync {
    /// A sliding window: at most `limit` acquisitions per `window_ms` for `key`. An allowed
    /// acquisition is recorded at `now_ms`; a refused one is not.
    async fn window_acquire(
        &self,
        key: &str,
        limit: u32,
        window_ms: u64,
        now_ms: u64,
    ) -> Result<Decision, StateError>;

    /// Gives back the acquisition recorded at `now_ms`, for an attempt that failed later
    /// (such as a room name that was taken), so refused attempts never count.
    async fn window_release(&self, key: &str, now_ms: u64) -> Result<(), StateError>;

    /// A token bucket: `rate_per_sec` tokens a second, holding at most `burst`. Takes one.
    async fn bucket_take(
        &self,
        key: &str,
        rate_per_sec: f64,
        burst: u32,
        now_ms: u64,
    ) -> Result<Decision, StateError> {
        let grant = self
            .bucket_take_n(key, rate_per_sec, burst, 1, now_ms)
            .await?;
        Ok(if grant.granted > 0 {
            Decision::ALLOW
        } else {
            Decision::deny(grant.retry_after_ms)
        })
    }

    /// The same bucket: takes up to `n` whole tokens, as many as it holds (a lease, see
    /// [`crate::lease`]). None granted comes with how long until one is there.
    async fn bucket_take_n(
        &self,
        key: &str,
        rate_per_sec: f64,
        burst: u32,
        n: u32,
        now_ms: u64,
    ) -> Result<Grant, StateError>;
}
