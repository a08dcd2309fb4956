//! Membership: `join` (meeting the room's stream exactly), `leave`, and what a closing
//! connection leaves behind.

use super::{forbidden, state_error, After, OpResult, Session};
use crate::clock::now_ms;
use crate::node::Node;
use crate::presence::announce;
use crate::wake::{wake, Woke};
use crate::webhooks::{Event, Kind};
use protocol::frame::{ErrorBody, OkBody, PresenceAction, Since};
use protocol::{CloseCode, ErrorCode};
use room_state::{JoinOutcome, MemberRecord, StateError};

pub(super) async fn join(
    node: &Node,
    s: &Session,
    room: &str,
    since: Option<&Since>,
) -> (OpResult, After) {
    let fail = |e| (Err(e), After::Nothing);
    if !s.identity.may_use(room) {
        return fail(forbidden(room));
    }
    let registry = &node.registry;
    let already_local = registry.is_in(room, &s.conn_id);
    if !already_local && registry.rooms_of(&s.conn_id).len() >= node.config.max_rooms_per_conn {
        return fail(ErrorBody::new(
            ErrorCode::Forbidden,
            "too many rooms on one connection",
        ));
    }
    // Subscribe before the backend join; the registry holds live messages until the reply.
    if registry.join(room, &s.conn_id) == Some(true) {
        node.backends.fanout.subscribe(room);
    }
    let member = MemberRecord {
        user: s.identity.user.clone(),
        conn_id: s.conn_id.to_string(),
        node: node.id.clone(),
        // Compact JSON text: what the backends store for presence to show.
        info: s
            .identity
            .info
            .as_ref()
            .and_then(|info| serde_json::to_string(&**info).ok()),
    };
    let outcome = match join_or_wake(node, room, &member, since).await {
        Ok(outcome) => outcome,
        Err(e) => {
            if !already_local && registry.leave(room, &s.conn_id) == Some(true) {
                node.backends.fanout.unsubscribe(room);
            }
            return fail(state_error(node, "join", e));
        }
    };
    if !outcome.already_member {
        // The room's first member anywhere: occupied first, then who joined.
        let occupied = outcome
            .occupied
            .then(|| Event::room(Kind::RoomOccupied, room));
        let joined = Event::member(Kind::MemberJoined, room, &member.user, &member.conn_id);
        node.webhooks
            .emit_all(occupied.into_iter().chain([joined]).collect())
            .await;
        let (user, conn_id) = (member.user.clone(), member.conn_id.clone());
        announce(
            &*node.backends.fanout,
            room.to_string(),
            PresenceAction::Join,
            user,
            conn_id,
        )
        .await;
    }
    let after = After::Activate {
        room: room.to_string(),
        epoch: outcome.epoch.clone(),
        offset: outcome.offset,
        ephemeral: outcome.ephemeral,
    };
    let body = OkBody::Joined {
        room: room.to_string(),
        offset: outcome.offset,
        epoch: outcome.epoch,
        members: outcome.members,
        recovered: outcome.recovered,
        missed: since.map(|_| outcome.missed),
        ephemeral: outcome.ephemeral,
    };
    (Ok(body), after)
}

/// The backend join; a room room-state does not know may be asleep in the archive: it is
/// woken (`crate::wake`), and joined then.
async fn join_or_wake(
    node: &Node,
    room: &str,
    member: &MemberRecord,
    since: Option<&Since>,
) -> Result<JoinOutcome, StateError> {
    let rooms = &node.backends.rooms;
    match rooms.join(room, member, since, now_ms()).await {
        Err(StateError::NotFound) => match wake(node, room).await? {
            Woke::NoArchive => Err(StateError::NotFound),
            // Not asleep: unless another node woke it just now, this asks again for nothing.
            Woke::NotAsleep | Woke::Awake => rooms.join(room, member, since, now_ms()).await,
        },
        other => other,
    }
}

/// Takes a connection out of a room: backend, registry, subscription, presence.
/// Returns whether it was a member.
pub async fn leave_room(
    node: &Node,
    conn_id: &str,
    user: &str,
    room: &str,
) -> Result<bool, StateError> {
    let departure = node.backends.rooms.depart(room, conn_id, now_ms()).await?;
    let was_member = departure.was_member;
    if node.registry.leave(room, conn_id) == Some(true) {
        node.backends.fanout.unsubscribe(room);
    }
    if was_member {
        // Who left, then (the room's last member anywhere) that it is empty.
        let left = Event::member(Kind::MemberLeft, room, user, conn_id);
        let vacated = departure
            .vacated
            .then(|| Event::room(Kind::RoomVacated, room));
        node.webhooks
            .emit_all([left].into_iter().chain(vacated).collect())
            .await;
        let (user, conn_id) = (user.to_string(), conn_id.to_string());
        announce(
            &*node.backends.fanout,
            room.to_string(),
            PresenceAction::Leave,
            user,
            conn_id,
        )
        .await;
    }
    Ok(was_member)
}

pub(super) async fn leave(node: &Node, s: &Session, room: &str) -> OpResult {
    let was_local = node.registry.is_in(room, &s.conn_id);
    match leave_room(node, &s.conn_id, &s.identity.user, room).await {
        Ok(true) => Ok(OkBody::Empty {}),
        Ok(false) if was_local => Ok(OkBody::Empty {}),
        Ok(false) => Err(ErrorBody::new(
            ErrorCode::NotMember,
            "not a member of this room",
        )),
        Err(e) => Err(state_error(node, "leave", e)),
    }
}

/// Everything a closing connection leaves behind: rooms, presence, registry.
pub async fn cleanup(node: &Node, conn_id: &str, user: &str) {
    for room in node.registry.rooms_of(conn_id) {
        if let Err(e) = leave_room(node, conn_id, user, &room).await {
            tracing::warn!(error = %e, room = %room, "leave on disconnect failed");
        }
    }
    node.registry.unregister(conn_id);
    node.expiries.remove(conn_id);
}

/// After a connection's task failed: closes its socket (1011) and leaves its rooms.
pub async fn abandon(node: &Node, conn_id: &str, user: &str) {
    for conn in node.registry.conns_of_user(user) {
        if &*conn.conn_id == conn_id {
            conn.outbound
                .close(CloseCode::INTERNAL_ERROR, "internal error");
        }
    }
    cleanup(node, conn_id, user).await;
}
