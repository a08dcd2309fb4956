//! Token expiry: one table for the whole node, read by one task once a second, instead of a
//! timer per connection (the same idea as the shared ping ticker, `transport/heartbeat.rs`).
//! A connection whose token carries `exp` is entered at its deadline; a `refresh` moves it;
//! its end removes it. When a deadline passes, the connection is closed with 4011 (token
//! expired); a Socket.IO connection is first sent `token_expired` and the namespace's
//! DISCONNECT (`io server disconnect` on the client).

use fan_out::Outbound;
use parking_lot::Mutex;
use protocol::CloseCode;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};

/// How a connection is told that its token expired.
#[derive(Debug, Clone)]
pub enum Notice {
    /// Native: the close code alone.
    Native,
    /// Socket.IO: an event and the namespace's DISCONNECT on the connection's own queue.
    SocketIo { namespace: Arc<str> },
}

struct Entry {
    /// `None`: a token without `exp`; kept so that a refresh can give it one.
    deadline_ms: Option<u64>,
    /// Weak: the table never keeps a connection's queue alive.
    outbound: Weak<Outbound>,
    notice: Notice,
}

#[derive(Default)]
struct Table {
    /// (deadline, conn id), in deadline order: the ticker reads only what is due.
    due: BTreeSet<(u64, Arc<str>)>,
    conns: HashMap<Arc<str>, Entry>,
}

/// The node's token deadlines.
#[derive(Default)]
pub struct Expiries(Mutex<Table>);

impl std::fmt::Debug for Expiries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expiries")
            .field("tracked", &self.0.lock().conns.len())
            .finish()
    }
}

impl Expiries {
    /// Enters an opened connection with its token's deadline (`None`: no `exp`).
    pub fn track(
        &self,
        conn_id: &Arc<str>,
        deadline_ms: Option<u64>,
        outbound: &Arc<Outbound>,
        notice: Notice,
    ) {
        let mut t = self.0.lock();
        if let Some(deadline) = deadline_ms {
            t.due.insert((deadline, conn_id.clone()));
        }
        let old = t.conns.insert(
            conn_id.clone(),
            Entry {
                deadline_ms,
                outbound: Arc::downgrade(outbound),
                notice,
            },
        );
        if let Some(old_deadline) = old.and_then(|o| o.deadline_ms) {
            if Some(old_deadline) != deadline_ms {
                t.due.remove(&(old_deadline, conn_id.clone()));
            }
        }
    }

    /// Moves a tracked connection's deadline (a `refresh`). `false` if it is not tracked
    /// (it ended, or already expired).
    pub fn refresh(&self, conn_id: &str, deadline_ms: Option<u64>) -> bool {
        let mut t = self.0.lock();
        let Some((key, entry)) = t.conns.get_key_value(conn_id) else {
            return false;
        };
        let (key, old) = (key.clone(), entry.deadline_ms);
        if let Some(old) = old {
            t.due.remove(&(old, key.clone()));
        }
        if let Some(deadline) = deadline_ms {
            t.due.insert((deadline, key.clone()));
        }
        if let Some(entry) = t.conns.get_mut(&key) {
            entry.deadline_ms = deadline_ms;
        }
        true
    }

    /// Forgets a connection that ended.
    pub fn remove(&self, conn_id: &str) {
        let mut t = self.0.lock();
        if let Some((key, old)) = t.conns.remove_entry(conn_id) {
            if let Some(deadline) = old.deadline_ms {
                t.due.remove(&(deadline, key));
            }
        }
    }

    /// How many connections are tracked.
    pub fn len(&self) -> usize {
        self.0.lock().conns.len()
    }

    /// Takes every connection whose deadline is at or before `now_ms`, and closes it.
    /// Returns how many were closed.
    pub fn expire(&self, now_ms: u64) -> usize {
        let expired: Vec<Entry> = {
            let mut t = self.0.lock();
            let mut out = Vec::new();
            while let Some((deadline, _)) = t.due.first() {
                if *deadline > now_ms {
                    break;
                }
                let Some((_, conn_id)) = t.due.pop_first() else {
                    break;
                };
                if let Some(entry) = t.conns.remove(&conn_id) {
                    out.push(entry);
                }
            }
            out
        };
        let mut closed = 0;
        for entry in expired {
            let Some(outbound) = entry.outbound.upgrade() else {
                continue;
            };
            if let Notice::SocketIo { namespace } = &entry.notice {
                let event = protocol::socketio::event(
                    namespace,
                    "token_expired",
                    &serde_json::json!({"code": CloseCode::TOKEN_EXPIRED, "reason": "token expired"}),
                );
                let _ = outbound.push(bytes::Bytes::from(event));
                let _ = outbound.push(bytes::Bytes::from(protocol::socketio::disconnect(
                    namespace,
                )));
            }
            if outbound.close(CloseCode::TOKEN_EXPIRED, "token expired") {
                closed += 1;
            }
        }
        closed
    }

    /// Closes connections whose token expired, once a second, until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let closed = self.expire(crate::clock::now_ms());
            if closed > 0 {
                tracing::debug!(closed, "connections closed: token expired");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fan_out::OutFrame;
    use protocol::Format;

    #[test]
    fn closes_what_is_due_and_moves_what_is_refreshed() {
        let table = Expiries::default();
        let (a, mut a_rx) = Outbound::new(Format::Json, 1 << 16);
        let (b, mut b_rx) = Outbound::new(Format::Json, 1 << 16);
        let (a, b) = (Arc::new(a), Arc::new(b));
        let (ida, idb): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        table.track(&ida, Some(1_000), &a, Notice::Native);
        table.track(&idb, Some(1_000), &b, Notice::Native);
        assert!(table.refresh("b", Some(5_000)));
        assert_eq!(table.expire(999), 0);
        assert_eq!(table.expire(1_000), 1);
        assert!(matches!(a_rx.try_recv(), Ok(OutFrame::Close(4011, _))));
        assert!(b_rx.try_recv().is_err(), "refreshed");
        assert!(!table.refresh("a", Some(9_000)), "expired is gone");
        table.remove("b");
        assert_eq!(table.expire(10_000), 0, "forgotten at its end");
        assert_eq!(table.len(), 0);
        // A token without `exp` gets a deadline from a refresh.
        let (c, _c_rx) = Outbound::new(Format::Json, 1 << 16);
        let c = Arc::new(c);
        let idc: Arc<str> = Arc::from("c");
        table.track(&idc, None, &c, Notice::Native);
        assert_eq!(table.expire(u64::MAX), 0);
        assert!(table.refresh("c", Some(20_000)));
        assert_eq!(table.expire(20_000), 1);
    }
}
