//! The publish proxy (`--publish-proxy`): asks the app about a client's publish to a matching
//! room (`--publish-proxy-rooms`) before it is sequenced.
//!
//! It runs inside `session::admit_publish`, after the client's own checks (rooms claim, size,
//! rate budget), which a connection awaits in request order before its next request is read
//! (native) or its next packet handled (Socket.IO): so while the app thinks about message 1,
//! message 2 is not yet read, and cannot be sequenced first. The cost: a connection's
//! publishes to proxied rooms go one app round trip at a time (publishes to other rooms
//! still pipeline). The server API's publish does not pass through it: it is the app's own.
//!
//! A rewrite is client data again: it must pass the same checks (depth and `$bin` here, in
//! `Data::from_value`; size and byte strings in the caller).

use super::client::HookClient;
use super::wire::{self, PublishRequest, Verdict};
use crate::config::FailMode;
use crate::node::Node;
use protocol::frame::ErrorBody;
use protocol::{Data, ErrorCode};
use serde_json::value::RawValue;

/// The publish proxy of a node.
#[derive(Debug)]
pub struct PublishProxy {
    pub(super) client: HookClient,
    pub(super) fail: FailMode,
    /// `--publish-proxy-rooms`; empty: every room.
    pub(super) rooms: Vec<String>,
}

/// Who publishes.
#[derive(Debug)]
pub struct Publishing<'a> {
    /// The room as the client named it (a Socket.IO namespace's prefix removed).
    pub room: &'a str,
    pub user: &'a str,
    pub conn_id: &'a str,
}

impl PublishProxy {
    /// Whether the proxy applies to `room` (as the client names it).
    pub fn applies(&self, room: &str) -> bool {
        self.rooms.is_empty()
            || self
                .rooms
                .iter()
                .any(|p| protocol::room_name::pattern_matches(p, room))
    }

    /// Asks the app: the data to sequence (the client's, or the app's rewrite), or the error
    /// the client gets.
    pub async fn check(
        &self,
        node: &Node,
        who: Publishing<'_>,
        data: Data,
    ) -> Result<Data, ErrorBody> {
        let raw: &RawValue = serde_json::from_str(data.as_json())
            .map_err(|_| ErrorBody::new(ErrorCode::Internal, "internal error"))?;
        let request = PublishRequest {
            room: who.room,
            user: who.user,
            conn_id: who.conn_id,
            node: &node.id,
            data: raw,
        };
        match super::call(
            node,
            "publish",
            &self.client,
            &request,
            wire::publish_answer,
        )
        .await
        {
            Ok(Verdict::Accept) => {
                super::count(node, "publish", "accept");
                Ok(data)
            }
            Ok(Verdict::Reject(app)) => {
                super::count(node, "publish", "reject");
                let message = if app.message.is_empty() {
                    "rejected by the application".to_string()
                } else {
                    app.message
                };
                let mut e = ErrorBody::new(ErrorCode::Rejected, message);
                e.reason = Some(app.code);
                Err(e)
            }
            Ok(Verdict::Rewrite(value)) => match Data::from_value(&value) {
                Ok(rewritten) => {
                    super::count(node, "publish", "rewrite");
                    Ok(rewritten)
                }
                Err(e) => {
                    // The app's mistake, but a rewrite cannot be half-applied: refused.
                    super::count(node, "publish", "garbage");
                    tracing::warn!(error = %e, "publish proxy rewrote into invalid data");
                    Err(ErrorBody::new(
                        ErrorCode::Rejected,
                        format!("the application's rewrite is not valid data: {e}"),
                    ))
                }
            },
            Err(e) => {
                super::count(node, "publish", e.label());
                tracing::warn!(error = %e, fail = ?self.fail, "publish proxy failed");
                match self.fail {
                    FailMode::Open => Ok(data),
                    FailMode::Closed => Err(ErrorBody::new(
                        ErrorCode::Unavailable,
                        "the application could not check this message; not published, retry",
                    )
                    .retry_after(1000)),
                }
            }
        }
    }
}
