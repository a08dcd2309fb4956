//! Messages: `publish` (the user's token bucket, leased in slices, then the store: sequenced,
//! or in an ephemeral room a plain delivery), `presence` and `history`.

use super::{forbidden, state_error, OpResult, Session};
use crate::backend_hooks::publish::{Publishing, Turn};
use crate::clock::now_ms;
use crate::node::Node;
use protocol::frame::{ErrorBody, MsgId, OkBody, MAX_HISTORY_LIMIT};
use protocol::{Data, ErrorCode};
use room_state::{Idempotency, Publisher};
use std::future::Future;
use std::task::Poll;

pub(super) async fn publish(
    node: &Node,
    s: &Session,
    room: &str,
    data: Data,
    msg_id: Option<&MsgId>,
) -> OpResult {
    let admitted = admit_publish(node, s, room, &data).await?;
    finish_publish(node, s, room, data, msg_id, admitted).await
}

/// What an admitted publish does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Straight to the store.
    Store,
    /// The publish proxy first, then the store on this ticket's turn (see
    /// `backend_hooks::publish`).
    Proxy(u64),
}

/// A publish's checks: the token's rooms, the size, and the user's publish budget; for a room
/// the publish proxy applies to, membership too (in the node's registry, so that the app is
/// only asked about a member's message), and its ticket. What a pipelined publish awaits in
/// request order, before its store command (or its proxy call) is sent.
pub async fn admit_publish(
    node: &Node,
    s: &Session,
    room: &str,
    data: &Data,
) -> Result<Admitted, ErrorBody> {
    if !s.identity.may_use(room) {
        return Err(forbidden(room));
    }
    check_data(node, data)?;
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
    if !decision.allowed {
        node.metrics
            .rate_limited
            .with_label_values(&["publish"])
            .inc();
        return Err(
            ErrorBody::new(ErrorCode::RateLimited, "publishing too fast")
                .retry_after(decision.retry_after_ms),
        );
    }
    match &node.hooks.publish {
        Some(proxy) if proxy.applies(room) => {
            // A join is a barrier for the connection's publishes, so a join sent before this
            // publish is in the registry by now.
            if !node.registry.is_in(room, &s.conn_id) {
                return Err(ErrorBody::new(
                    ErrorCode::NotMember,
                    "not a member of this room",
                ));
            }
            Ok(Admitted::Proxy(s.publish_turns.ticket()))
        }
        _ => Ok(Admitted::Store),
    }
}

/// An admitted publish: the store, after the publish proxy when it applies. The app's call
/// runs concurrently with the connection's other publishes; the store command waits for the
/// publish's turn, so a connection's proxied publishes are sequenced in the order it sent
/// them.
pub async fn finish_publish(
    node: &Node,
    s: &Session,
    room: &str,
    data: Data,
    msg_id: Option<&MsgId>,
    admitted: Admitted,
) -> OpResult {
    let (Admitted::Proxy(ticket), Some(proxy)) = (admitted, &node.hooks.publish) else {
        return store_publish(node, s, room, data, msg_id).await;
    };
    // Passes the turn on when dropped: at the first poll of the store, or on any error.
    let turn = Turn::new(&s.publish_turns, ticket);
    let who = Publishing {
        room: room.strip_prefix(s.room_prefix.as_str()).unwrap_or(room),
        user: &s.identity.user,
        conn_id: &s.conn_id,
    };
    let verdict = proxy.check(node, who, data).await;
    turn.wait().await;
    let data = verdict?;
    // A rewrite is held to the client's limits.
    check_data(node, &data)?;
    let mut store = std::pin::pin!(store_publish(node, s, room, data, msg_id));
    // The first poll sends the store command (and takes the publish's sequence number):
    // only then may the next publish go.
    let first = std::future::poll_fn(|cx| Poll::Ready(store.as_mut().poll(cx))).await;
    drop(turn);
    match first {
        Poll::Ready(result) => result,
        Poll::Pending => store.await,
    }
}

/// The data's size and its number of byte strings, under the node's limits.
fn check_data(node: &Node, data: &Data) -> Result<(), ErrorBody> {
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
    Ok(())
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
