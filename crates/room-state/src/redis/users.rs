//! `UserRegistry` on Redis Cluster. A user's connections are one hash, `rc:{u:USER}:c`
//! (connection id → `node\ttransport\tsince`), so the cap is checked and the connection added
//! in one script on one key. Each node also lists what it holds in `rc:{n:NODE}:users`
//! (`user\nconn`), which is how a dead node's entries are found: the same scheme as its room
//! members (`rc:{n:NODE}:mem`).
//!
//! The two keys are in different slots, so they are written one after the other, in the order
//! that leaves nothing counted and unfindable: the node's index first at add, last at remove.
//! A stray index entry costs one no-op removal when the node is reaped.

use super::{array, int, keys, RedisState};
use crate::error::StateError;
use crate::observer::Command;
use crate::users::{RemovedUserConn, UserAdmission, UserConn, UserRegistry};
use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Value;
use std::collections::HashMap;

/// The node index entry of one connection. Connection ids hold no newline; user names might,
/// so the entry is split at its last one.
fn entry(user: &str, conn_id: &str) -> String {
    format!("{user}\n{conn_id}")
}

fn parse(conn_id: String, value: &str) -> Option<UserConn> {
    let mut parts = value.split('\t');
    let node = parts.next()?.to_string();
    let transport = parts.next()?.to_string();
    let since_ms = parts.next()?.parse().ok()?;
    Some(UserConn {
        conn_id,
        node,
        transport,
        since_ms,
    })
}

impl RedisState {
    /// Removes one connection from its user's hash; whether it was there and the last.
    async fn remove_from_user(&self, user: &str, conn_id: &str) -> Result<bool, StateError> {
        let reply = self
            .eval(
                Command::UserRemove,
                vec![keys::user_conns(user)],
                vec![conn_id.to_string()],
            )
            .await?;
        let reply = array(reply);
        Ok(int(reply.first())? == 1 && int(reply.get(1))? == 0)
    }
}

#[async_trait]
impl UserRegistry for RedisState {
    async fn add_user_conn(
        &self,
        user: &str,
        conn: &UserConn,
        max: u64,
    ) -> Result<UserAdmission, StateError> {
        let index = keys::node_users(&conn.node);
        let item = entry(user, &conn.conn_id);
        let _: Value = self
            .on(&index)
            .sadd(&index, item.as_str())
            .await
            .map_err(|e| self.failed(e))?;
        let value = format!("{}\t{}\t{}", conn.node, conn.transport, conn.since_ms);
        let reply = self
            .eval(
                Command::UserAdd,
                vec![keys::user_conns(user)],
                vec![conn.conn_id.clone(), value, max.to_string()],
            )
            .await?;
        let reply = array(reply);
        let (admitted, n) = (int(reply.first())?, int(reply.get(1))?);
        if admitted == 1 {
            return Ok(UserAdmission::Admitted { first: n == 1 });
        }
        // Refused: the index entry goes again (should this fail, reaping removes nothing).
        let _: Result<Value, _> = self.on(&index).srem(&index, item.as_str()).await;
        Ok(UserAdmission::Full {
            count: n.max(0) as u64,
        })
    }

    async fn remove_user_conn(
        &self,
        user: &str,
        node: &str,
        conn_id: &str,
    ) -> Result<bool, StateError> {
        let last = self.remove_from_user(user, conn_id).await?;
        let index = keys::node_users(node);
        let _: Value = self
            .on(&index)
            .srem(&index, entry(user, conn_id).as_str())
            .await
            .map_err(|e| self.failed(e))?;
        Ok(last)
    }

    async fn user_conns(&self, user: &str) -> Result<Vec<UserConn>, StateError> {
        let key = keys::user_conns(user);
        let all: HashMap<String, String> = self
            .on(&key)
            .hgetall(&key)
            .await
            .map_err(|e| self.failed(e))?;
        let mut conns: Vec<UserConn> = all
            .into_iter()
            .filter_map(|(conn_id, v)| parse(conn_id, &v))
            .collect();
        conns.sort_by(|a, b| a.conn_id.cmp(&b.conn_id));
        Ok(conns)
    }

    async fn node_user_conns(&self, node: &str) -> Result<Vec<(String, String)>, StateError> {
        let index = keys::node_users(node);
        let entries: Vec<String> = self
            .on(&index)
            .smembers(&index)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(entries
            .iter()
            .filter_map(|item| item.rsplit_once('\n'))
            .map(|(user, conn)| (user.to_string(), conn.to_string()))
            .collect())
    }

    async fn remove_node_users(
        &self,
        node: &str,
        keep_prefix: Option<&str>,
    ) -> Result<Vec<RemovedUserConn>, StateError> {
        let index = keys::node_users(node);
        let mut removed = Vec::new();
        for (user, conn_id) in self.node_user_conns(node).await? {
            if keep_prefix.is_some_and(|p| conn_id.starts_with(p)) {
                continue;
            }
            let last = self.remove_from_user(&user, &conn_id).await?;
            // Entry by entry: the set may hold the node's current incarnation's entries.
            let item = entry(&user, &conn_id);
            let _: Result<Value, _> = self.on(&index).srem(&index, item.as_str()).await;
            removed.push(RemovedUserConn {
                user,
                conn_id,
                last,
            });
        }
        Ok(removed)
    }
}
