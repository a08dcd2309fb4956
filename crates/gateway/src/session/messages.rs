//! Messages: `publish` (the user's token bucket, leased in slices, then the store: sequenced,
//! or in an ephemeral room a plain delivery), `presence` and `history`.

use super::{forbidden, state_error, OpResult, Session};
use crate::clock::now_ms;
use crate::node::Node;
use protocol::frame::{ErrorBody, MsgId, OkBody, MAX_HISTORY_LIMIT};
use protocol::{Data, ErrorCode};
use room_state::{Idempotency, Publisher};

pub(super) async fn publish(
    node: &Node,
    s: &Session,
    room: &str,
    data: Data,
    msg_id: Option<&MsgId>,
) -> OpResult {
    admit_publish(node, s, room, &data).await?;
    store_publish(node, s, room, data, msg_id).await
}

/// A publish's checks: the token's rooms, the size, and the user's publish budget. What a
/// pipelined publish awaits before its store command is sent, in request order.
pub async fn admit_publish(
    node: &Node,
    s: &Session,
    room: &str,
    data: &Data,
) -> Result<(), ErrorBody> {
    if !s.identity.may_use(room) {
        return Err(forbidden(room));
    }
    // Byte strings count as their bytes, whatever form they came in (see `Data::size`).
    if data.size() > node.config.max_data_bytes {
        return Err(ErrorBody::new(
            ErrorCode::PayloadTooLarge,
            format!("data is over {} bytes", node.config.max_data_bytes),
        ));
    }
    if data.byte_strings() > protocol::data::MAX_BYTE_STRINGS {
        return Err(ErrorBody::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "data holds more than {} byte strings",
                protocol::data::MAX_BYTE_STRINGS
            ),
        ));
    }
    let key = format!("publish:{}", s.identity.user);
    let decision = node
        .publish_budget
        .take(
            &key,
            node.config.publish_rate,
            node.config.publish_burst,
            now_ms(),
        )
        .await
        .map_err(|e| state_error(node, "publish", e))?;
    if decision.allowed {
        return Ok(());
    }
    node.metrics
        .rate_limited
        .with_label_values(&["publish"])
        .inc();
    Err(
        ErrorBody::new(ErrorCode::RateLimited, "publishing too fast")
            .retry_after(decision.retry_after_ms),
    )
}

/// A publish, once admitted: the store sequences it. The store's command goes out on the
/// future's first poll (the backends send before they first wait), which is what lets a
/// connection pipeline its publishes and keep their order.
///
/// In an ephemeral room (the store knows it from this node's joins: no I/O to ask) nothing
/// is sequenced, and on Redis the store sends one plain SPUBLISH instead of the publish
/// script, which is what would check membership. So membership is checked here, in the
/// node's own registry: the rooms this connection joined through this node, and receives
/// (a connection lives on one node, and membership is by connection id). A connection is in
/// it from its join until its leave, its close, or its room's `room_closed`; a join that
/// failed takes it out again, and its own publishes cannot overtake its join (a join is a
/// barrier for the connection's pipelined publishes). It can differ from Redis's member set
/// only when Redis dropped the member behind the node's back (the node declared dead, a
/// lost `room_closed`): then the connection may still send where it still receives. The
/// `msgId` is not used: at most once, a retry may be delivered twice.
pub async fn store_publish(
    node: &Node,
    s: &Session,
    room: &str,
    data: Data,
    msg_id: Option<&MsgId>,
) -> OpResult {
    let rooms = &node.backends.rooms;
    if rooms.is_ephemeral(room) {
        if !node.registry.is_in(room, &s.conn_id) {
            return Err(ErrorBody::new(
                ErrorCode::NotMember,
                "not a member of this room",
            ));
        }
        return match rooms
            .publish_ephemeral(room, &s.conn_id, &s.identity.user, data, now_ms())
            .await
        {
            Ok(_) => {
                node.metrics.messages_published.inc();
                Ok(OkBody::PUBLISHED_EPHEMERAL)
            }
            Err(e) => Err(state_error(node, "publish", e)),
        };
    }
    // Keys are the user's own: another user's identical msgId is another message.
    let key = msg_id.map(|m| format!("{}\n{}", s.identity.user, m.as_str()));
    let idempotency = key.as_deref().map(|key| Idempotency {
        key,
        window_ms: node.config.idempotency_window.as_millis() as u64,
    });
    // Taken before the first await, so in the order the connection sent its publishes: the
    // store keeps that order (see `MAX_PUBLISHES_IN_FLIGHT`).
    let seq = s
        .publish_seq
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    match rooms
        .publish(
            room,
            Some(Publisher {
                conn_id: &s.conn_id,
                seq,
            }),
            &s.identity.user,
            data,
            idempotency,
            now_ms(),
        )
        .await
    {
        Ok(p) => {
            if !p.duplicate {
                node.metrics.messages_published.inc();
            }
            if p.publication.is_ephemeral() {
                // The store found the room ephemeral itself (not known here yet).
                return Ok(OkBody::PUBLISHED_EPHEMERAL);
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
    let archive = crate::history::archive_of(node);
    match crate::history::page(
        node.backends.rooms.as_ref(),
        archive.as_deref(),
        room,
        Some(&s.conn_id),
        limit,
        before,
    )
    .await
    {
        Ok((messages, epoch)) => Ok(OkBody::History { messages, epoch }),
        Err(e) => Err(state_error(node, "history", e)),
    }
}
