//! The node's admission counters: connections, handshake rate, connections per address and
//! per user. Every admitted connection holds guards that give its places back when dropped,
//! so no code path has to remember to release them.

use super::rejection::Rejection;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A token bucket for handshakes.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limits, each 0 for none.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Handshakes per second; the burst is one second's worth.
    pub handshake_rate: f64,
    pub max_per_ip: usize,
    pub max_per_user: usize,
}

#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    open: Arc<AtomicUsize>,
    bucket: Mutex<Bucket>,
    per_ip: Counts<IpAddr>,
    per_user: Counts<Arc<str>>,
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connections per key (an address, a user), shared with the guards that give them back.
type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// One connection counted under a key; dropping it frees its place.
#[derive(Debug)]
pub struct Counted<K: Eq + Hash> {
    key: K,
    counts: Counts<K>,
}

impl<K: Eq + Hash> Drop for Counted<K> {
    fn drop(&mut self) {
        let mut map = self.counts.lock();
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// One of an address's connections.
pub type IpSlot = Counted<IpAddr>;
/// One of a user's connections.
pub type UserSlot = Counted<Arc<str>>;

/// Counts one more connection under `key`, unless `max` (0: no limit) are there already.
fn count<K: Eq + Hash + Clone>(counts: &Counts<K>, key: K, max: usize) -> Option<Counted<K>> {
    let mut map = counts.lock();
    let n = map.entry(key.clone()).or_insert(0);
    if max != 0 && *n >= max {
        return None;
    }
    *n += 1;
    Some(Counted {
        key,
        counts: counts.clone(),
    })
}

impl Gate {
    pub fn new(limits: Limits) -> Gate {
        Gate {
            limits,
            open: Arc::new(AtomicUsize::new(0)),
            bucket: Mutex::new(Bucket {
                tokens: limits.handshake_rate,
                at: Instant::now(),
            }),
            per_ip: Arc::default(),
            per_user: Arc::default(),
        }
    }

    /// Admits one WebSocket handshake under the connection cap and the handshake rate, or
    /// says why not.
    pub fn admit(&self) -> Result<Slot, Rejection> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.open.clone());
        let max = self.limits.max_connections;
        if max != 0 && before >= max {
            return Err(Rejection::Capacity);
        }
        let rate = self.limits.handshake_rate;
        if rate > 0.0 {
            let mut b = self.bucket.lock();
            let now = Instant::now();
            let refill = now.duration_since(b.at).as_secs_f64() * rate;
            b.tokens = (b.tokens + refill).min(rate);
            b.at = now;
            if b.tokens < 1.0 {
                return Err(Rejection::HandshakeRate);
            }
            b.tokens -= 1.0;
        }
        Ok(slot)
    }

    /// Admits one more connection from `ip`, or `None` over `--max-conns-per-ip`.
    pub fn admit_ip(&self, ip: IpAddr) -> Option<IpSlot> {
        count(&self.per_ip, ip, self.limits.max_per_ip)
    }

    /// Admits one more connection of `user`, or `None` over `--max-conns-per-user`.
    pub fn admit_user(&self, user: &str) -> Option<UserSlot> {
        count(&self.per_user, Arc::from(user), self.limits.max_per_user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_connections: usize, handshake_rate: f64, max_per_user: usize) -> Gate {
        Gate::new(Limits {
            max_connections,
            handshake_rate,
            max_per_ip: 1,
            max_per_user,
        })
    }

    #[test]
    fn caps_connections_and_frees_slots() {
        let gate = gate(2, 0.0, 0);
        let a = gate.admit().expect("first");
        let _b = gate.admit().expect("second");
        assert_eq!(gate.admit().err(), Some(Rejection::Capacity));
        drop(a);
        assert!(gate.admit().is_ok());
    }

    #[test]
    fn limits_the_handshake_rate() {
        let gate = gate(0, 3.0, 0);
        let slots: Vec<_> = (0..3).map(|_| gate.admit().expect("burst")).collect();
        assert_eq!(gate.admit().err(), Some(Rejection::HandshakeRate));
        drop(slots);
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert!(gate.admit().is_ok(), "refilled");
    }

    #[test]
    fn limits_connections_per_user() {
        let gate = gate(0, 0.0, 2);
        let a = gate.admit_user("u").expect("1");
        let _b = gate.admit_user("u").expect("2");
        assert!(gate.admit_user("u").is_none());
        assert!(gate.admit_user("v").is_some());
        drop(a);
        assert!(gate.admit_user("u").is_some());
    }

    #[test]
    fn limits_connections_per_address() {
        let gate = gate(0, 0.0, 0);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = gate.admit_ip(ip).expect("1");
        assert!(gate.admit_ip(ip).is_none());
        assert!(gate.admit_ip([127, 0, 0, 2].into()).is_some());
        drop(a);
        assert!(gate.admit_ip(ip).is_some());
    }
}
