//! The user registry: every live connection of a user, on every node. It is what makes
//! `--max-conns-per-user` a cluster-wide cap, what `GET /api/users/{user}` reads, and where
//! `user_online` / `user_offline` can later be emitted from: [`UserAdmission::Admitted`]
//! says whether a connection was its user's first, and [`RemovedUserConn::last`] whether a
//! removal left the user with none.
//!
//! Entries belong to a node. A node that dies without removing its entries (kill -9) has them
//! removed by the live node that claims it dead
//! ([`crate::TrafficCounters::claim_dead_nodes`], then [`UserRegistry::remove_node_users`]),
//! exactly as its room members are; a restarted node removes its earlier incarnations'
//! entries the same way. So a dead node's connections stop counting once it is declared dead.

use crate::error::StateError;
use async_trait::async_trait;

/// One live connection of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConn {
    pub conn_id: String,
    /// The node holding the connection.
    pub node: String,
    /// `native` or `socketio` (free text for the registry).
    pub transport: String,
    /// When it connected, ms since the Unix epoch.
    pub since_ms: u64,
}

/// The answer to [`UserRegistry::add_user_conn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserAdmission {
    /// Counted. `first`: the user had no other live connection (a future `user_online`).
    Admitted { first: bool },
    /// The user already has `count` connections, at or over the cap: not counted.
    Full { count: u64 },
}

/// A connection removed with its node ([`UserRegistry::remove_node_users`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedUserConn {
    pub user: String,
    pub conn_id: String,
    /// The user has no connection left anywhere (a future `user_offline`).
    pub last: bool,
}

#[async_trait]
pub trait UserRegistry: Send + Sync {
    /// Counts `conn` as one of `user`'s connections unless the user already has `max` (0: no
    /// cap), atomically: two nodes admitting at once never both pass the cap. Adding a
    /// connection id that is already there replaces it and admits (a retry).
    async fn add_user_conn(
        &self,
        user: &str,
        conn: &UserConn,
        max: u64,
    ) -> Result<UserAdmission, StateError>;

    /// Removes one connection of `user` held by `node`. Returns whether it was the user's
    /// last (`false` too when it was not there).
    async fn remove_user_conn(
        &self,
        user: &str,
        node: &str,
        conn_id: &str,
    ) -> Result<bool, StateError>;

    /// The user's live connections, by connection id; empty for an unknown user.
    async fn user_conns(&self, user: &str) -> Result<Vec<UserConn>, StateError>;

    /// The `(user, conn id)` of every connection `node` holds (its own reconcile: entries
    /// whose removal failed at disconnect).
    async fn node_user_conns(&self, node: &str) -> Result<Vec<(String, String)>, StateError>;

    /// Removes every connection `node` holds, but those whose id starts with `keep_prefix`
    /// (a restarted node keeps its current incarnation's). Called for a node claimed dead.
    async fn remove_node_users(
        &self,
        node: &str,
        keep_prefix: Option<&str>,
    ) -> Result<Vec<RemovedUserConn>, StateError>;
}
