//! Admission control: what a node lets in before it spends a socket and memory on a client.
//!
//! Checked in order of cost. Before the upgrade (an HTTP 503 with `Retry-After`): the node's
//! connection cap and its handshake rate, so that a reconnect storm is spread out instead of
//! absorbed all at once. After authentication (close 4008): connections per user. The
//! per-IP limit lives on [`crate::node::Node`].

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Why a handshake was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds `--max-connections` already.
    Capacity,
    /// Over `--max-handshake-rate`.
    HandshakeRate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::HandshakeRate => "handshake_rate",
        }
    }

    /// The `Retry-After` to send, in seconds: a full node frees slots slower than a rate
    /// limit refills.
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Refusal::Capacity => 5,
            Refusal::HandshakeRate => 1,
        }
    }
}

/// A token bucket for handshakes.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct Gate {
    max_connections: usize,
    handshake_rate: f64,
    max_per_user: usize,
    open: Arc<AtomicUsize>,
    bucket: Mutex<Bucket>,
    per_user: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of a user's connections; dropping it frees it.
#[derive(Debug)]
pub struct UserSlot {
    user: Arc<str>,
    map: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if let Some(n) = map.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

impl Gate {
    /// `max_connections` 0 means no cap; `handshake_rate` 0 means no rate limit (the burst
    /// is one second's worth); `max_per_user` 0 means no per-user limit.
    pub fn new(max_connections: usize, handshake_rate: f64, max_per_user: usize) -> Gate {
        Gate {
            max_connections,
            handshake_rate,
            max_per_user,
            open: Arc::new(AtomicUsize::new(0)),
            bucket: Mutex::new(Bucket {
                tokens: handshake_rate,
                at: Instant::now(),
            }),
            per_user: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Admits one WebSocket handshake, or says why not.
    pub fn admit(&self) -> Result<Slot, Refusal> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.open.clone());
        if self.max_connections != 0 && before >= self.max_connections {
            return Err(Refusal::Capacity);
        }
        if self.handshake_rate > 0.0 {
            let mut b = self.bucket.lock();
            let now = Instant::now();
            let refill = now.duration_since(b.at).as_secs_f64() * self.handshake_rate;
            b.tokens = (b.tokens + refill).min(self.handshake_rate);
            b.at = now;
            if b.tokens < 1.0 {
                return Err(Refusal::HandshakeRate);
            }
            b.tokens -= 1.0;
        }
        Ok(slot)
    }

    /// Admits one more connection of `user`, or `None` over `--max-conns-per-user`.
    pub fn admit_user(&self, user: &str) -> Option<UserSlot> {
        let mut map = self.per_user.lock();
        let user: Arc<str> = Arc::from(user);
        let n = map.entry(user.clone()).or_insert(0);
        if self.max_per_user != 0 && *n >= self.max_per_user {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            user,
            map: self.per_user.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_connections_and_frees_slots() {
        let gate = Gate::new(2, 0.0, 0);
        let a = gate.admit().expect("first");
        let _b = gate.admit().expect("second");
        assert_eq!(gate.admit().err(), Some(Refusal::Capacity));
        drop(a);
        assert!(gate.admit().is_ok());
    }

    #[test]
    fn limits_the_handshake_rate() {
        let gate = Gate::new(0, 3.0, 0);
        let slots: Vec<_> = (0..3).map(|_| gate.admit().expect("burst")).collect();
        assert_eq!(gate.admit().err(), Some(Refusal::HandshakeRate));
        drop(slots);
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(gate.admit().is_ok(), "refilled");
    }

    #[test]
    fn limits_connections_per_user() {
        let gate = Gate::new(0, 0.0, 2);
        let a = gate.admit_user("u").expect("1");
        let _b = gate.admit_user("u").expect("2");
        assert!(gate.admit_user("u").is_none());
        assert!(gate.admit_user("v").is_some());
        drop(a);
        assert!(gate.admit_user("u").is_some());
    }
}
