//! The connect proxy (`--connect-proxy`): asks the app about every new connection after the
//! token is checked and before the per-user limit is taken (the app may change the user).
//!
//! The token rules run first and unchanged: a bad or expired token is refused without asking
//! the app (the app never sees a forged identity), and a client without a token gets one only
//! under `--allow-anonymous` (as `anon:<ip>`, `claims: null`); the app may then name it. What
//! the app answers is applied to the connection's [`Identity`]: `user` replaces the user id,
//! `rooms` is added to the token's `rooms` claim (a token without that claim already allows
//! every room), and `info` is returned for the caller to keep.

use super::client::HookClient;
use super::wire::{self, Allow, AppError, Client, ConnectRequest};
use crate::auth::Identity;
use crate::config::FailMode;
use crate::node::Node;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The connect proxy of a node.
#[derive(Debug)]
pub struct ConnectProxy {
    pub(super) client: HookClient,
    pub(super) fail: FailMode,
}

/// What the handshake carried, beyond the token: what the app is shown.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// `websocket` or `polling`.
    pub transport: &'static str,
    /// The query fields, without `token` (credentials do not travel; their claims do).
    pub query: BTreeMap<String, String>,
}

impl Handshake {
    pub fn new<'a>(
        transport: &'static str,
        query: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Handshake {
        Handshake {
            transport,
            query: query
                .into_iter()
                .filter(|(k, _)| k.as_str() != "token")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// One connection to ask about.
#[derive(Debug)]
pub struct Asking<'a> {
    pub protocol: &'static str,
    pub namespace: Option<&'a str>,
    pub ip: IpAddr,
    pub claims: Option<&'a Value>,
    pub handshake: &'a Handshake,
    /// Socket.IO's `auth` payload (its `token` is removed here).
    pub auth: Option<&'a Value>,
}

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The app said no: the client sees its code and message.
    App(AppError),
    /// The app gave no usable answer and the fail mode is `closed`: try again later.
    Unavailable,
}

impl ConnectProxy {
    /// Asks the app, and applies its answer to `identity`. `Ok` carries the presence `info`.
    pub async fn check(
        &self,
        node: &Node,
        identity: &mut Identity,
        asking: Asking<'_>,
    ) -> Result<Option<Map<String, Value>>, Refused> {
        let auth = asking.auth.map(|a| match a {
            Value::Object(o) => {
                let mut o = o.clone();
                o.remove("token");
                Value::Object(o)
            }
            other => other.clone(),
        });
        let request = ConnectRequest {
            protocol: asking.protocol,
            transport: asking.handshake.transport,
            namespace: asking.namespace,
            client: Client {
                ip: asking.ip.to_string(),
            },
            node: &node.id,
            user: &identity.user,
            claims: asking.claims,
            query: &asking.handshake.query,
            auth: auth.as_ref(),
        };
        let answer = super::call(
            node,
            "connect",
            &self.client,
            &request,
            wire::connect_answer,
        )
        .await;
        match answer {
            Ok(Ok(allow)) => {
                super::count(node, "connect", "allow");
                Ok(apply(identity, allow))
            }
            Ok(Err(app)) => {
                super::count(node, "connect", "deny");
                Err(Refused::App(app))
            }
            Err(e) => {
                super::count(node, "connect", e.label());
                tracing::warn!(error = %e, fail = ?self.fail, "connect proxy failed");
                match self.fail {
                    FailMode::Closed => Err(Refused::Unavailable),
                    FailMode::Open => Ok(None),
                }
            }
        }
    }
}

fn apply(identity: &mut Identity, allow: Allow) -> Option<Map<String, Value>> {
    if let Some(user) = allow.user {
        if user != identity.user {
            let token_user = std::mem::replace(&mut identity.user, user);
            identity.token_user = Some(token_user);
        }
    }
    if let (Some(rooms), Some(grant)) = (identity.rooms.as_mut(), allow.rooms) {
        rooms.extend(grant);
    }
    allow.info
}
