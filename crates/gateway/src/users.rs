//! A connection's entry in the cluster-wide user registry (`room_state::UserRegistry`):
//! what makes `--max-conns-per-user` hold across nodes, and what `GET /api/users/{user}`
//! reads. The node's own per-user count (`admission::gate`) is checked first, as before: it
//! costs no round trip and refuses most of what the registry would.
//!
//! An entry is a guard: dropping it removes the connection from the registry, in a task
//! of its own, retried, so no path out of a connection (a panic included) forgets it. Each
//! attempt takes one of the node's disconnect places first (`node::Departures`), as the
//! connection's leaves do: a mass disconnect would otherwise send every removal at once. What
//! still escapes (the backend down through every retry) is removed by the node's own
//! reconcile every 30 s, or when the node is reaped or restarts (`node/upkeep.rs`).
//!
//! A registry that cannot be reached does not lock users out: the connection is admitted
//! under the node's own cap (fail open), counted in `roomcast_backend_errors_total{op="users"}`.
//!
//! Each entry is counted ([`Entries`]) from its creation until its removal is done, so that
//! a drain can wait for none to be left: the process exits right after its last connection
//! closes, and a removal cut off there would leave the entry counting against the user until
//! a peer reaps the node (`--node-ttl`), with the `user_offline` it owes made late, as
//! `node_dead`. Counted from creation, not from the drop: a connection leaves the node's
//! registry (what the drain watches) just before its entry is dropped, and a count that began
//! at the drop could be read as zero in between.

use crate::admission::{Refusal, Rejection};
use crate::clock::now_ms;
use crate::node::{Departures, Node};
use crate::webhooks::{Event, Kind, Webhooks};
use protocol::CloseCode;
use room_state::{UserAdmission, UserConn, UserRegistry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Attempts at removing an entry before it is left to the node's reaping.
const REMOVE_ATTEMPTS: u32 = 3;

/// The node's user registry entries not yet removed: held by a connection, or being removed
/// (or given up on) after it closed.
#[derive(Debug, Clone, Default)]
pub struct Entries(Arc<AtomicUsize>);

impl Entries {
    /// How many there are.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Waits until none is left, at most `within`; whether none is.
    pub async fn none_left(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.count() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// One entry counted in [`Entries`] until dropped (removed, given up on, or its removal task
/// cancelled).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(entries: &Entries) -> Counted {
        entries.0.fetch_add(1, Ordering::AcqRel);
        Counted(entries.0.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection counted in the registry; dropping it removes it.
pub struct UserEntry {
    registry: Arc<dyn UserRegistry>,
    /// Moved into the removal task, so that the entry counts until it is removed.
    counted: Option<Counted>,
    /// `user_offline` when the removal was the user's last connection.
    webhooks: Webhooks,
    departures: Departures,
    user: String,
    node: String,
    conn_id: String,
}

impl std::fmt::Debug for UserEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserEntry")
            .field("user", &self.user)
            .field("conn_id", &self.conn_id)
            .finish()
    }
}

impl Drop for UserEntry {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let registry = self.registry.clone();
        let webhooks = self.webhooks.clone();
        let departures = self.departures.clone();
        let counted = self.counted.take();
        let (user, node, conn_id) = (
            std::mem::take(&mut self.user),
            std::mem::take(&mut self.node),
            std::mem::take(&mut self.conn_id),
        );
        runtime.spawn(async move {
            let _counted = counted;
            for attempt in 1..=REMOVE_ATTEMPTS {
                let place = departures.place().await;
                let removed = registry.remove_user_conn(&user, &node, &conn_id).await;
                drop(place);
                match removed {
                    Ok(last) => {
                        if last {
                            let offline = Event::user(Kind::UserOffline, &user, &conn_id);
                            webhooks.emit(offline).await;
                        }
                        return;
                    }
                    Err(e) if attempt == REMOVE_ATTEMPTS => {
                        tracing::warn!(error = %e, %conn_id, "user registry entry left to reaping");
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await
                    }
                }
            }
        });
    }
}

/// Counts connection `conn_id` of `user` in the cluster-wide registry, or refuses it over
/// `--max-conns-per-user` with the same refusal as the node's own cap (close 4008; Socket.IO
/// `connect_error` code `connection_limit`).
pub async fn register(
    node: &Node,
    user: &str,
    conn_id: &str,
    transport: &'static str,
) -> Result<UserEntry, Refusal> {
    let conn = UserConn {
        conn_id: conn_id.to_string(),
        node: node.id.clone(),
        transport: transport.to_string(),
        since_ms: now_ms(),
    };
    let max = node.config.max_conns_per_user as u64;
    let entry = || UserEntry {
        registry: node.backends.users.clone(),
        counted: Some(Counted::new(&node.user_entries)),
        webhooks: node.webhooks.clone(),
        departures: node.departures.clone(),
        user: user.to_string(),
        node: node.id.clone(),
        conn_id: conn_id.to_string(),
    };
    match node.backends.users.add_user_conn(user, &conn, max).await {
        Ok(UserAdmission::Admitted { first }) => {
            if first {
                node.webhooks
                    .emit(Event::user(Kind::UserOnline, user, conn_id))
                    .await;
            }
            Ok(entry())
        }
        // Not counted: nothing to remove.
        Ok(UserAdmission::Full { .. }) => Err(Refusal {
            rejection: Rejection::UserLimit,
            code: CloseCode::CONNECTION_POLICY,
            reason: "too many connections for this user".into(),
        }),
        Err(e) => {
            // May have been applied (a timeout): the entry still removes it at the end.
            tracing::warn!(error = %e, "user registry unavailable: admitted under the node's own cap");
            node.metrics
                .backend_errors
                .with_label_values(&["users"])
                .inc();
            Ok(entry())
        }
    }
}
