//! `create_room`: who may create, whether the cluster lets anyone create right now, the
//! user's own creation window, then the room itself, joined by its creator.

use super::membership::join;
use super::{forbidden, state_error, After, OpResult, Session};
use crate::clock::now_ms;
use crate::node::Node;
use crate::webhooks::{Event, Kind};
use protocol::frame::{ErrorBody, OkBody, RoomOptions};
use protocol::ErrorCode;
use room_state::{RoomConfig, RoomInfo, StateError};

/// The window of `--room-create-limit`.
const CREATE_WINDOW_MS: u64 = 60_000;

pub(super) async fn create_room(
    node: &Node,
    s: &Session,
    room: Option<String>,
    options: RoomOptions,
) -> (OpResult, After) {
    let now = now_ms();
    let created = async {
        may_create(s, room.as_deref())?;
        let config = room_config(node, &options)?;
        creation_enabled(node, now).await?;
        let key = take_creation_slot(node, s, now).await?;
        let info = create_named(node, s, room.as_deref(), &config, now).await;
        if info.is_err() {
            // The attempt failed, so it must not count against the user.
            let _ = node.backends.limits.window_release(&key, now).await;
        }
        info
    };
    let info = match created.await {
        Ok(info) => info,
        Err(e) => return (Err(e), After::Nothing),
    };
    if let Err(e) = node.backends.traffic.record_creation(now).await {
        tracing::warn!(error = %e, "could not record a room creation");
    }
    node.metrics.room_creations.inc();
    node.traffic_nudge.notify_one();

    // The creator joins; its reply is the join's, named `created`.
    match join(node, s, &info.room, None).await {
        (
            Ok(OkBody::Joined {
                room,
                offset,
                epoch,
                members,
                ephemeral,
                ..
            }),
            after,
        ) => (
            Ok(OkBody::Created {
                room,
                epoch,
                offset,
                members,
                ephemeral,
            }),
            after,
        ),
        other => other,
    }
}

/// The token's `rooms` claim: a named room must match it; a server-chosen name needs `*`.
fn may_create(s: &Session, room: Option<&str>) -> Result<(), ErrorBody> {
    match room {
        Some(room) if !s.identity.may_use(room) => Err(forbidden(room)),
        None if !s.identity.may_use_any(&s.room_prefix) => Err(ErrorBody::new(
            ErrorCode::Forbidden,
            "your token allows only named rooms: give `room`",
        )),
        _ => Ok(()),
    }
}

/// The global gate: at `critical` or at the cap nobody creates. Computed from fresh
/// creation counts, not the last upkeep round, so that a burst cannot overshoot the cap.
async fn creation_enabled(node: &Node, now: u64) -> Result<(), ErrorBody> {
    let buckets = node
        .backends
        .traffic
        .creation_buckets(now, crate::traffic::WINDOW_MS)
        .await
        .map_err(|e| state_error(node, "create_room", e))?;
    let current = node.traffic.current();
    let status = node.traffic.compute(
        &buckets,
        current.active_rooms,
        current.active_connections,
        now,
    );
    if status.room_creation_enabled {
        return Ok(());
    }
    node.metrics.creation_paused.inc();
    Err(ErrorBody::new(
        ErrorCode::CreationPaused,
        "room creation is paused: traffic is critical",
    )
    .retry_after(status.retry_after.unwrap_or(1000)))
}

/// The user's own sliding window (`--room-create-limit` a minute); a refused attempt is not
/// recorded. Returns the window's key, to give the slot back if the creation fails.
async fn take_creation_slot(node: &Node, s: &Session, now: u64) -> Result<String, ErrorBody> {
    let key = format!("create:{}", s.identity.user);
    let limit = node.config.room_create_limit;
    let decision = node
        .backends
        .limits
        .window_acquire(&key, limit, CREATE_WINDOW_MS, now)
        .await
        .map_err(|e| state_error(node, "create_room", e))?;
    if decision.allowed {
        return Ok(key);
    }
    node.metrics
        .rate_limited
        .with_label_values(&["room_create"])
        .inc();
    Err(ErrorBody::new(
        ErrorCode::RateLimited,
        "too many rooms created; wait before creating another",
    )
    .retry_after(decision.retry_after_ms))
}

/// Creates the room under its given name, or under a fresh code (retried on a collision).
async fn create_named(
    node: &Node,
    s: &Session,
    room: Option<&str>,
    config: &RoomConfig,
    now: u64,
) -> Result<RoomInfo, ErrorBody> {
    let mut attempt = 0;
    loop {
        let name = match room {
            Some(room) => room.to_string(),
            None => format!("{}{}", s.room_prefix, room_code()),
        };
        if room.is_some() {
            // A sleeping room exists: it is woken, and its name is taken.
            match crate::wake::wake(node, &name).await {
                Ok(crate::wake::Woke::Awake) => {
                    return Err(state_error(node, "create_room", StateError::RoomExists))
                }
                Ok(_) => {}
                Err(e) => return Err(state_error(node, "create_room", e)),
            }
        }
        match node.backends.rooms.create(&name, config, now).await {
            Ok(info) => {
                let created = Event::room(Kind::RoomCreated, &name).with_user(&s.identity.user);
                node.webhooks.emit(created).await;
                return Ok(info);
            }
            Err(StateError::RoomExists) if room.is_none() && attempt < 5 => attempt += 1,
            Err(e) => return Err(state_error(node, "create_room", e)),
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
