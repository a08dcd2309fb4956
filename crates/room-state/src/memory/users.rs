//! `UserRegistry` for the embedded backend: one map, user → connection id → connection.

use super::MemoryState;
use crate::error::StateError;
use crate::users::{RemovedUserConn, UserAdmission, UserConn, UserRegistry};
use async_trait::async_trait;

#[async_trait]
impl UserRegistry for MemoryState {
    async fn add_user_conn(
        &self,
        user: &str,
        conn: &UserConn,
        max: u64,
    ) -> Result<UserAdmission, StateError> {
        let mut users = self.users.lock();
        let conns = users.entry(user.to_string()).or_default();
        if let Some(known) = conns.iter_mut().find(|c| c.conn_id == conn.conn_id) {
            *known = conn.clone();
            return Ok(UserAdmission::Admitted { first: false });
        }
        let count = conns.len() as u64;
        if max != 0 && count >= max {
            if conns.is_empty() {
                users.remove(user);
            }
            return Ok(UserAdmission::Full { count });
        }
        // Exact: most users hold one connection, and a Vec's first growth makes room for 4.
        conns.reserve_exact(1);
        conns.push(conn.clone());
        Ok(UserAdmission::Admitted { first: count == 0 })
    }

    async fn remove_user_conn(
        &self,
        user: &str,
        node: &str,
        conn_id: &str,
    ) -> Result<bool, StateError> {
        let mut users = self.users.lock();
        let Some(conns) = users.get_mut(user) else {
            return Ok(false);
        };
        let Some(at) = conns
            .iter()
            .position(|c| c.conn_id == conn_id && c.node == node)
        else {
            return Ok(false);
        };
        conns.swap_remove(at);
        let last = conns.is_empty();
        if last {
            users.remove(user);
        }
        Ok(last)
    }

    async fn user_conns(&self, user: &str) -> Result<Vec<UserConn>, StateError> {
        let mut conns: Vec<UserConn> = self.users.lock().get(user).cloned().unwrap_or_default();
        // In connection id order: a stable answer for the API and the tests.
        conns.sort_by(|a, b| a.conn_id.cmp(&b.conn_id));
        Ok(conns)
    }

    async fn node_user_conns(&self, node: &str) -> Result<Vec<(String, String)>, StateError> {
        let users = self.users.lock();
        Ok(users
            .iter()
            .flat_map(|(user, conns)| {
                conns
                    .iter()
                    .filter(|c| c.node == node)
                    .map(move |c| (user.clone(), c.conn_id.clone()))
            })
            .collect())
    }

    async fn remove_node_users(
        &self,
        node: &str,
        keep_prefix: Option<&str>,
    ) -> Result<Vec<RemovedUserConn>, StateError> {
        let mut users = self.users.lock();
        let mut removed = Vec::new();
        users.retain(|user, conns| {
            conns.retain(|c| {
                let gone = c.node == node && !keep_prefix.is_some_and(|p| c.conn_id.starts_with(p));
                if gone {
                    removed.push(RemovedUserConn {
                        user: user.clone(),
                        conn_id: c.conn_id.clone(),
                        last: false,
                    });
                }
                !gone
            });
            if conns.is_empty() {
                if let Some(r) = removed.iter_mut().rev().find(|r| &r.user == user) {
                    r.last = true;
                }
            }
            !conns.is_empty()
        });
        Ok(removed)
    }
}
