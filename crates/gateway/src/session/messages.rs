//! Messages: `publish` (the user's token bucket, then the store), `presence` and `history`.

use super::{forbidden, state_error, OpResult, Session};
use crate::clock::now_ms;
use crate::node::Node;
use protocol::frame::{ErrorBody, MsgId, OkBody, MAX_HISTORY_LIMIT};
use protocol::{Data, ErrorCode};
use room_state::Idempotency;

pub(super) async fn publish(
    node: &Node,
    s: &Session,
    room: &str,
    data: Data,
    msg_id: Option<&MsgId>,
) -> OpResult {
    if !s.identity.may_use(room) {
        return Err(forbidden(room));
    }
    if data.as_json().len() > node.config.max_data_bytes {
        return Err(ErrorBody::new(
            ErrorCode::PayloadTooLarge,
            format!("data is over {} bytes", node.config.max_data_bytes),
        ));
    }
    let b = &node.backends;
    let now = now_ms();
    let key = format!("publish:{}", s.identity.user);
    match b
        .limits
        .bucket_take(
            &key,
            node.config.publish_rate,
            node.config.publish_burst,
            now,
        )
        .await
    {
        Ok(d) if d.allowed => {}
        Ok(d) => {
            node.metrics
                .rate_limited
                .with_label_values(&["publish"])
                .inc();
            return Err(
                ErrorBody::new(ErrorCode::RateLimited, "publishing too fast")
                    .retry_after(d.retry_after_ms),
            );
        }
        Err(e) => return Err(state_error(node, "publish", e)),
    }
    // Keys are the user's own: another user's identical msgId is another message.
    let key = msg_id.map(|m| format!("{}\n{}", s.identity.user, m.as_str()));
    let idempotency = key.as_deref().map(|key| Idempotency {
        key,
        window_ms: node.config.idempotency_window.as_millis() as u64,
    });
    match b
        .rooms
        .publish(
            room,
            Some(&s.conn_id),
            &s.identity.user,
            data,
            idempotency,
            now,
        )
        .await
    {
        Ok(p) => {
            if !p.duplicate {
                node.metrics.messages_published.inc();
            }
            Ok(OkBody::Published {
                offset: p.publication.offset,
                duplicate: p.duplicate,
                epoch: p.duplicate.then_some(p.publication.epoch),
            })
        }
        Err(e) => Err(state_error(node, "publish", e)),
    }
}

pub(super) async fn presence(node: &Node, s: &Session, room: &str) -> OpResult {
    if !s.identity.may_use(room) {
        return Err(forbidden(room));
    }
    match node.backends.rooms.members(room, Some(&s.conn_id)).await {
        Ok(members) => Ok(OkBody::Presence { members }),
        Err(e) => Err(state_error(node, "presence", e)),
    }
}

pub(super) async fn history(
    node: &Node,
    s: &Session,
    room: &str,
    limit: Option<u32>,
    before: Option<u64>,
) -> OpResult {
    if !s.identity.may_use(room) {
        return Err(forbidden(room));
    }
    let limit = limit.unwrap_or(MAX_HISTORY_LIMIT).min(MAX_HISTORY_LIMIT) as usize;
    match node
        .backends
        .rooms
        .history(room, Some(&s.conn_id), limit, before)
        .await
    {
        Ok((messages, epoch)) => Ok(OkBody::History { messages, epoch }),
        Err(e) => Err(state_error(node, "history", e)),
    }
}
