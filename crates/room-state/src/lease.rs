//! Publish budget in slices: a node takes several tokens of a user's shared bucket at once
//! and spends them locally, so most publishes cost no round trip for the limit.
//!
//! Why it stays a cluster-wide limit: tokens are taken from the shared bucket before they are
//! spent, so the cluster never allows more than the bucket gives (no overshoot). The price is
//! the other way round: tokens a node leased and did not spend are lost to the user's other
//! connections on other nodes until the lease ends. That undershoot is bounded: at most one
//! slice less one token per node per user, for at most [`LEASE_MS`]. The slice is a tenth of
//! the burst, at most [`MAX_SLICE`], so a user with the default limits (20/s, burst 40) leases
//! 4 tokens at a time, and one with a burst under 20 is checked against the shared bucket on
//! every publish, as before.

use crate::error::StateError;
use crate::limits::RateLimits;
use crate::model::Decision;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// How long leased tokens stay spendable on the node that took them.
pub const LEASE_MS: u64 = 1_000;

/// The most tokens one lease takes.
pub const MAX_SLICE: u32 = 32;

/// Above this many leases, expired ones are dropped when a new one is taken.
const PRUNE_ABOVE: usize = 4_096;

/// Tokens in hand for one key.
#[derive(Debug, Clone, Copy)]
struct Lease {
    tokens: u32,
    expires_ms: u64,
}

/// A node's leases on the token buckets of one limit (the publish limit).
pub struct LeasedBuckets {
    limits: Arc<dyn RateLimits>,
    leases: Mutex<HashMap<String, Lease>>,
}

/// How many tokens a lease takes for a bucket of `burst`.
pub fn slice(burst: u32) -> u32 {
    (burst / 10).clamp(1, MAX_SLICE)
}

impl LeasedBuckets {
    pub fn new(limits: Arc<dyn RateLimits>) -> LeasedBuckets {
        LeasedBuckets {
            limits,
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`: from the node's lease when it holds one, else a new slice
    /// from the shared bucket.
    pub async fn take(
        &self,
        key: &str,
        rate_per_sec: f64,
        burst: u32,
        now_ms: u64,
    ) -> Result<Decision, StateError> {
        if self.spend(key, now_ms) {
            return Ok(Decision::ALLOW);
        }
        let want = slice(burst);
        let grant = self
            .limits
            .bucket_take_n(key, rate_per_sec, burst, want, now_ms)
            .await?;
        if grant.granted == 0 {
            return Ok(Decision::deny(grant.retry_after_ms));
        }
        if grant.granted > 1 {
            let mut leases = self.leases.lock();
            if leases.len() > PRUNE_ABOVE {
                leases.retain(|_, l| l.expires_ms > now_ms && l.tokens > 0);
            }
            // Concurrent refills of one key add up; each one's tokens came from the bucket.
            let lease = leases.entry(key.to_string()).or_insert(Lease {
                tokens: 0,
                expires_ms: 0,
            });
            if lease.expires_ms <= now_ms {
                lease.tokens = 0;
            }
            lease.tokens += grant.granted - 1;
            lease.expires_ms = now_ms + LEASE_MS;
        }
        Ok(Decision::ALLOW)
    }

    /// Spends one leased token, if the node holds an unexpired one.
    fn spend(&self, key: &str, now_ms: u64) -> bool {
        let mut leases = self.leases.lock();
        match leases.get_mut(key) {
            Some(l) if l.tokens > 0 && l.expires_ms > now_ms => {
                l.tokens -= 1;
                true
            }
            Some(_) => {
                leases.remove(key);
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::MemoryState;

    fn leased() -> (Arc<MemoryState>, LeasedBuckets) {
        let state = Arc::new(MemoryState::new());
        (state.clone(), LeasedBuckets::new(state))
    }

    async fn allowed(l: &LeasedBuckets, key: &str, burst: u32, now: u64) -> bool {
        l.take(key, 10.0, burst, now).await.unwrap().allowed
    }

    #[tokio::test]
    async fn two_nodes_never_spend_more_than_the_bucket_gives() {
        let state = Arc::new(MemoryState::new());
        let a = LeasedBuckets::new(state.clone());
        let b = LeasedBuckets::new(state);
        let mut spent = 0;
        for i in 0..200 {
            let node = if i % 3 == 0 { &a } else { &b };
            if node.take("u", 10.0, 100, 1_000).await.unwrap().allowed {
                spent += 1;
            }
        }
        assert_eq!(
            spent, 100,
            "the burst, and not a token more, at one instant"
        );
    }

    #[tokio::test]
    async fn a_small_burst_is_checked_on_every_publish() {
        let (state, l) = leased();
        for _ in 0..5 {
            assert!(allowed(&l, "u", 5, 1_000).await);
        }
        assert!(!allowed(&l, "u", 5, 1_000).await);
        // Nothing was leased: the bucket is empty, not held by the node.
        let left = state.bucket_take_n("u", 10.0, 5, 5, 1_000).await.unwrap();
        assert_eq!(left.granted, 0);
    }

    #[tokio::test]
    async fn leased_tokens_expire() {
        let (state, l) = leased();
        assert!(allowed(&l, "u", 100, 1_000).await);
        // 10 taken, 9 in hand; after the lease they are gone, not spendable.
        assert!(!l.spend("u", 1_000 + LEASE_MS));
        let left = state
            .bucket_take_n("u", 0.0, 100, 100, 1_000)
            .await
            .unwrap();
        assert_eq!(left.granted, 90);
    }

    #[tokio::test]
    async fn a_refused_take_says_when_to_retry() {
        let (_, l) = leased();
        for _ in 0..2 {
            assert!(allowed(&l, "u", 2, 0).await);
        }
        let d = l.take("u", 10.0, 2, 0).await.unwrap();
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 100);
    }
}
