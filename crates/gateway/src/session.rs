//! What a client can do, independent of its wire protocol: one function per op, from a
//! decoded request to a reply body. The native WebSocket connection calls this, and so will
//! the Socket.IO endpoint.

use crate::auth::Identity;
use crate::clock::now_ms;
use crate::node::Node;
use fan_out::{deliver_held, Outbound};
use protocol::envelope::Envelope;
use protocol::frame::{
    ErrorBody, OkBody, Op, PresenceAction, RoomOptions, Since, MAX_HISTORY_LIMIT,
};
use protocol::{Data, ErrorCode};
use room_state::{MemberRecord, RoomConfig, StateError};
use std::sync::Arc;

/// One client connection as the ops see it.
#[derive(Debug)]
pub struct Session {
    pub conn_id: Arc<str>,
    pub identity: Identity,
    pub outbound: Arc<Outbound>,
    /// Put before every room name this session uses: `""` for native clients and Socket.IO's
    /// `/`, `admin/` for the namespace `/admin` (see `socketio::namespace`).
    pub room_prefix: String,
}

/// Work to do once the reply is queued.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// Release live messages held during a join (see `Registry::activate`).
    Activate {
        room: String,
        epoch: String,
        offset: u64,
    },
}

pub type OpResult = Result<OkBody, ErrorBody>;

fn state_error(node: &Node, op: &str, e: StateError) -> ErrorBody {
    match e {
        StateError::NotFound => ErrorBody::new(ErrorCode::NotFound, "room not found"),
        StateError::RoomExists => ErrorBody::new(ErrorCode::RoomExists, "room already exists"),
        StateError::RoomFull => ErrorBody::new(ErrorCode::RoomFull, "room is full"),
        StateError::NotMember => ErrorBody::new(ErrorCode::NotMember, "not a member of this room"),
        // Internals stay in the log and the metrics, not in the client's error.
        StateError::Unavailable(detail) => {
            node.metrics.backend_errors.with_label_values(&[op]).inc();
            tracing::warn!(op, %detail, "backend unavailable");
            ErrorBody::new(ErrorCode::Unavailable, "service temporarily unavailable")
                .retry_after(1000)
        }
        StateError::Internal(detail) => {
            node.metrics.backend_errors.with_label_values(&[op]).inc();
            tracing::error!(op, %detail, "backend error");
            ErrorBody::new(ErrorCode::Internal, "internal error")
        }
    }
}

fn forbidden(room: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        format!("your token does not allow room '{room}'"),
    )
}

/// Runs one op.
pub async fn handle(node: &Node, s: &Session, op: Op) -> (OpResult, After) {
    let name = op.name();
    let timer = node
        .metrics
        .command_duration
        .with_label_values(&[name])
        .start_timer();
    let result = match op {
        Op::CreateRoom { room, options } => create_room(node, s, room, options).await,
        Op::Join { room, since } => join(node, s, &room, since.as_ref()).await,
        Op::Leave { room } => (leave(node, s, &room).await, After::Nothing),
        Op::Publish { room, data } => (publish(node, s, &room, data).await, After::Nothing),
        Op::Presence { room } => (presence(node, s, &room).await, After::Nothing),
        Op::History {
            room,
            limit,
            before,
        } => (history(node, s, &room, limit, before).await, After::Nothing),
        Op::Ping => (Ok(OkBody::Pong { pong: now_ms() }), After::Nothing),
    };
    timer.observe_duration();
    result
}

/// Queues what a join held back, after its reply went out.
pub fn after_reply(node: &Node, s: &Session, after: After) {
    if let After::Activate {
        room,
        epoch,
        offset,
    } = after
    {
        let (conn, held) = node.registry.activate(&room, &s.conn_id, &epoch, offset);
        if let Some(conn) = conn {
            node.backends.fanout.track(&room, &epoch, offset);
            deliver_held(&conn, &held, &*node.metrics);
        }
    }
}

fn room_config(node: &Node, options: &RoomOptions) -> Result<RoomConfig, ErrorBody> {
    let c = &node.config;
    let bad = |m: &str| Err(ErrorBody::new(ErrorCode::BadRequest, m));
    if options.max_members == Some(0) {
        return bad("maxMembers must be at least 1");
    }
    if options.ttl_secs == Some(0) {
        return bad("ttlSecs must be at least 1");
    }
    let history_size = options.history_size.unwrap_or(c.history_size);
    if history_size > c.max_history_size {
        return bad("historySize is over the server's maximum");
    }
    Ok(RoomConfig {
        max_members: options.max_members,
        history_size,
        ttl_secs: options.ttl_secs.unwrap_or(c.room_ttl.as_secs().max(1)),
    })
}

/// A short room code: 8 characters, lower-case letters and digits without look-alikes.
fn room_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    (0..8)
        .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
        .collect()
}

async fn create_room(
    node: &Node,
    s: &Session,
    room: Option<String>,
    options: RoomOptions,
) -> (OpResult, After) {
    let fail = |e| (Err(e), After::Nothing);
    match &room {
        Some(room) if !s.identity.may_use(room) => return fail(forbidden(room)),
        None if !s.identity.may_use_any(&s.room_prefix) => {
            return fail(ErrorBody::new(
                ErrorCode::Forbidden,
                "your token allows only named rooms: give `room`",
            ))
        }
        _ => {}
    }
    let config = match room_config(node, &options) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let b = &node.backends;
    let now = now_ms();

    // The global gate first: at `critical` or at the cap nobody creates.
    let buckets = match b
        .traffic
        .creation_buckets(now, crate::traffic::WINDOW_MS)
        .await
    {
        Ok(buckets) => buckets,
        Err(e) => return fail(state_error(node, "create_room", e)),
    };
    let current = node.traffic.current();
    let status = node.traffic.compute(
        &buckets,
        current.active_rooms,
        current.active_connections,
        now,
    );
    if !status.room_creation_enabled {
        node.metrics.creation_paused.inc();
        let retry = status.retry_after.unwrap_or(1000);
        return fail(
            ErrorBody::new(
                ErrorCode::CreationPaused,
                "room creation is paused: traffic is critical",
            )
            .retry_after(retry),
        );
    }

    // Then the user's own sliding window; a refused attempt is not recorded.
    let key = format!("create:{}", s.identity.user);
    let window = 60_000;
    match b
        .limits
        .window_acquire(&key, node.config.room_create_limit, window, now)
        .await
    {
        Ok(d) if d.allowed => {}
        Ok(d) => {
            node.metrics
                .rate_limited
                .with_label_values(&["room_create"])
                .inc();
            return fail(
                ErrorBody::new(
                    ErrorCode::RateLimited,
                    "too many rooms created; wait before creating another",
                )
                .retry_after(d.retry_after_ms),
            );
        }
        Err(e) => return fail(state_error(node, "create_room", e)),
    }

    let explicit = room.is_some();
    let mut attempt = 0;
    let info = loop {
        let name = room
            .clone()
            .unwrap_or_else(|| format!("{}{}", s.room_prefix, room_code()));
        match b.rooms.create(&name, &config, now).await {
            Ok(info) => break info,
            Err(StateError::RoomExists) if !explicit && attempt < 5 => attempt += 1,
            Err(e) => {
                // The attempt failed, so it must not count against the user.
                let _ = b.limits.window_release(&key, now).await;
                return fail(state_error(node, "create_room", e));
            }
        }
    };
    if let Err(e) = b.traffic.record_creation(now).await {
        tracing::warn!(error = %e, "could not record a room creation");
    }
    node.metrics.room_creations.inc();
    node.traffic_nudge.notify_one();

    match join(node, s, &info.room, None).await {
        (
            Ok(OkBody::Joined {
                room,
                offset,
                epoch,
                members,
                ..
            }),
            after,
        ) => (
            Ok(OkBody::Created {
                room,
                epoch,
                offset,
                members,
            }),
            after,
        ),
        other => other,
    }
}

async fn join(node: &Node, s: &Session, room: &str, since: Option<&Since>) -> (OpResult, After) {
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
    };
    let outcome = match node
        .backends
        .rooms
        .join(room, &member, since, now_ms())
        .await
    {
        Ok(outcome) => outcome,
        Err(e) => {
            if !already_local && registry.leave(room, &s.conn_id) == Some(true) {
                node.backends.fanout.unsubscribe(room);
            }
            return fail(state_error(node, "join", e));
        }
    };
    if !outcome.already_member {
        let presence = Envelope::Presence {
            room: room.to_string(),
            action: PresenceAction::Join,
            user: member.user.clone(),
            conn_id: member.conn_id.clone(),
        };
        if let Err(e) = node.backends.fanout.publish(presence).await {
            tracing::warn!(error = %e, "presence join not published");
        }
    }
    let after = After::Activate {
        room: room.to_string(),
        epoch: outcome.epoch.clone(),
        offset: outcome.offset,
    };
    let body = OkBody::Joined {
        room: room.to_string(),
        offset: outcome.offset,
        epoch: outcome.epoch,
        members: outcome.members,
        recovered: outcome.recovered,
        missed: since.map(|_| outcome.missed),
    };
    (Ok(body), after)
}

/// Takes a connection out of a room: backend, registry, subscription, presence.
/// Returns whether it was a member.
pub async fn leave_room(
    node: &Node,
    conn_id: &str,
    user: &str,
    room: &str,
) -> Result<bool, StateError> {
    let was_member = node.backends.rooms.leave(room, conn_id, now_ms()).await?;
    if node.registry.leave(room, conn_id) == Some(true) {
        node.backends.fanout.unsubscribe(room);
    }
    if was_member {
        let presence = Envelope::Presence {
            room: room.to_string(),
            action: PresenceAction::Leave,
            user: user.to_string(),
            conn_id: conn_id.to_string(),
        };
        if let Err(e) = node.backends.fanout.publish(presence).await {
            tracing::warn!(error = %e, "presence leave not published");
        }
    }
    Ok(was_member)
}

async fn leave(node: &Node, s: &Session, room: &str) -> OpResult {
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

async fn publish(node: &Node, s: &Session, room: &str, data: Data) -> OpResult {
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
    match b
        .rooms
        .publish(room, Some(&s.conn_id), &s.identity.user, data, now)
        .await
    {
        Ok(p) => {
            node.metrics.messages_published.inc();
            Ok(OkBody::Published { offset: p.offset })
        }
        Err(e) => Err(state_error(node, "publish", e)),
    }
}

async fn presence(node: &Node, s: &Session, room: &str) -> OpResult {
    if !s.identity.may_use(room) {
        return Err(forbidden(room));
    }
    match node.backends.rooms.members(room, Some(&s.conn_id)).await {
        Ok(members) => Ok(OkBody::Presence { members }),
        Err(e) => Err(state_error(node, "presence", e)),
    }
}

async fn history(
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

/// Everything a closing connection leaves behind: rooms, presence, registry.
pub async fn cleanup(node: &Node, conn_id: &str, user: &str) {
    for room in node.registry.rooms_of(conn_id) {
        if let Err(e) = leave_room(node, conn_id, user, &room).await {
            tracing::warn!(error = %e, room = %room, "leave on disconnect failed");
        }
    }
    node.registry.unregister(conn_id);
}
