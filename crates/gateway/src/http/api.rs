//! The server API for application backends, behind `Authorization: Bearer <--api-key>`.
//!
//! - `POST   /api/rooms/{room}/publish`   body: any JSON value; published with `from: "server"`
//! - `GET    /api/rooms/{room}`           members count, presence, last offset, epoch
//! - `DELETE /api/rooms/{room}`           closes the room on every node (and in the archive)
//! - `POST   /api/users/{user}/disconnect` closes the user's connections on every node
//! - the archive's message routes: `GET`/`DELETE /api/rooms/{room}/messages`,
//!   `DELETE /api/users/{user}/messages` ([`super::api_messages`])
//! - `GET    /api/users/{user}`           online or not, and where: nodes, connection ids,
//!   transports (the user registry, `room_state::UserRegistry`)
//! - `POST   /api/users/{user}/publish`   body: any JSON value; a `user_message` event to every
//!   connection of the user on every node, at most once, not stored

use super::api_messages;
use super::query;
use super::response::{error, json, Body};
use crate::auth::bearer;
use crate::clock::now_ms;
use crate::node::Node;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use protocol::envelope::Envelope;
use protocol::{room_name, Data};
use room_state::{Idempotency, StateError};

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// key was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(node: &Node, req: &Request<Incoming>) -> Result<(), Box<Response<Body>>> {
    let Some(key) = &node.config.api_key else {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the server API is disabled (no --api-key)",
        )));
    };
    let given = bearer(req.headers()).unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "bad or missing API key",
        )))
    }
}

pub(super) fn state_error(e: StateError) -> Response<Body> {
    match e {
        StateError::NotFound => error(StatusCode::NOT_FOUND, "not_found", "room not found"),
        StateError::Unavailable(detail) => {
            tracing::warn!(%detail, "backend unavailable (api)");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "service temporarily unavailable",
            )
        }
        StateError::Timeout(detail) => {
            tracing::warn!(%detail, "backend timeout (api): outcome unknown");
            error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "no answer in time: the outcome is unknown; retry with the same Idempotency-Key",
            )
        }
        other => {
            tracing::error!(error = %other, "backend error (api)");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

pub async fn handle(node: &Node, req: Request<Incoming>) -> Response<Body> {
    if let Err(response) = authorized(node, &req) {
        return *response;
    }
    let segments: Vec<String> = req
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .map(query::decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::POST, ["api", "rooms", room, "publish"]) => {
            let room = room.to_string();
            publish(node, &room, req).await
        }
        (&Method::GET, ["api", "rooms", room]) => room_info(node, room).await,
        (&Method::DELETE, ["api", "rooms", room]) => close_room(node, room).await,
        (&Method::POST, ["api", "users", user, "disconnect"]) => disconnect(node, user).await,
        (&Method::GET, ["api", "rooms", room, "messages"]) => {
            api_messages::list(node, room, &req).await
        }
        (&Method::DELETE, ["api", "rooms", room, "messages"]) => {
            api_messages::purge_room(node, room).await
        }
        (&Method::DELETE, ["api", "users", user, "messages"]) => {
            api_messages::purge_user(node, user).await
        }
        (&Method::GET, ["api", "users", user]) => user_info(node, user).await,
        (&Method::POST, ["api", "users", user, "publish"]) => {
            let user = user.to_string();
            user_publish(node, &user, req).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

pub(super) fn check_room(room: &str) -> Result<(), Box<Response<Body>>> {
    if room_name::is_valid(room) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "room names are 1-128 characters of [A-Za-z0-9_.:-]",
        )))
    }
}

async fn publish(node: &Node, room: &str, req: Request<Incoming>) -> Response<Body> {
    if let Err(r) = check_room(room) {
        return *r;
    }
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().ok().and_then(protocol::frame::MsgId::new));
    let limit = node.config.max_data_bytes;
    // The body carries byte strings as base64 (4/3 of their size), and the limit counts their
    // bytes: read up to what a payload at the limit can take as text, then check its size.
    let body_limit = limit.saturating_add(limit / 3).saturating_add(64);
    let body = match Limited::new(req.into_body(), body_limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "body is over --max-data-bytes",
            )
        }
    };
    let value: serde_json::Value = match protocol::value::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error(StatusCode::BAD_REQUEST, "bad_request", "body must be JSON"),
    };
    let data = match Data::from_value(&value) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    if data.size() > limit {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "body is over --max-data-bytes",
        );
    }
    if data.byte_strings() > protocol::data::MAX_BYTE_STRINGS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "data holds more than 10 byte strings",
        );
    }
    // `Idempotency-Key` plays the part of a client's `msgId`, for the server's own retries.
    let key = match idempotency_key {
        None => None,
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "Idempotency-Key must be 1 to 64 characters of A-Z a-z 0-9 _ . : -",
            )
        }
        Some(Some(m)) => Some(format!("server\n{}", m.as_str())),
    };
    let idempotency = key.as_deref().map(|key| Idempotency {
        key,
        window_ms: node.config.idempotency_window.as_millis() as u64,
    });
    let rooms = &node.backends.rooms;
    let mut published = rooms
        .publish(room, None, "server", data.clone(), idempotency, now_ms())
        .await;
    if matches!(published, Err(StateError::NotFound)) {
        // Publishing to a sleeping room wakes it (`crate::wake`).
        published = match crate::wake::wake(node, room).await {
            Ok(crate::wake::Woke::NoArchive) => Err(StateError::NotFound),
            Ok(_) => {
                rooms
                    .publish(room, None, "server", data, idempotency, now_ms())
                    .await
            }
            Err(e) => Err(e),
        };
    }
    match published {
        Ok(p) => {
            if !p.duplicate {
                node.metrics.messages_published.inc();
            }
            if p.publication.is_ephemeral() {
                // As the clients' ack says: no offset in an ephemeral room.
                return json(StatusCode::OK, &serde_json::json!({"ephemeral": true}));
            }
            let (offset, epoch) = (p.publication.offset, p.publication.epoch);
            let mut body = serde_json::json!({"offset": offset, "epoch": epoch});
            if p.duplicate {
                body["duplicate"] = true.into();
            }
            json(StatusCode::OK, &body)
        }
        Err(e) => state_error(e),
    }
}

async fn room_info(node: &Node, room: &str) -> Response<Body> {
    if let Err(r) = check_room(room) {
        return *r;
    }
    match node.backends.rooms.info(room).await {
        Ok(info) => json(
            StatusCode::OK,
            &serde_json::json!({
                "room": info.room,
                "epoch": info.epoch,
                "offset": info.offset,
                "members": info.members.len(),
                "presence": info.members,
                "createdAt": info.created_at,
            }),
        ),
        Err(StateError::NotFound) => sleeping_room_info(node, room).await,
        Err(e) => state_error(e),
    }
}

/// A room asleep in the archive, read without waking it: no members, `"asleep": true`.
async fn sleeping_room_info(node: &Node, room: &str) -> Response<Body> {
    let not_found = || state_error(StateError::NotFound);
    let Some(archive) = node.archive() else {
        return not_found();
    };
    match archive.load_room(room).await {
        Ok(Some(saved)) => json(
            StatusCode::OK,
            &serde_json::json!({
                "room": saved.room,
                "epoch": saved.epoch,
                "offset": saved.offset,
                "members": 0,
                "presence": [],
                "createdAt": saved.created_ms,
                "asleep": true,
            }),
        ),
        Ok(None) => not_found(),
        Err(e) => state_error(crate::history::from_archive(e)),
    }
}

async fn close_room(node: &Node, room: &str) -> Response<Body> {
    if let Err(r) = check_room(room) {
        return *r;
    }
    let closed = node.backends.rooms.close(room).await;
    // Asleep or awake, a closed room must not wake again: its sleeping record goes too (an
    // awake room may still have one from an earlier sleep). Retrying after a failure here is
    // safe: the room-state part is then `not_found` and the archive part is done.
    let was_asleep = match api_messages::close_in_archive(node, room).await {
        Ok(was_asleep) => was_asleep,
        Err(response) => return *response,
    };
    let former = match closed {
        Ok(former) => former,
        Err(StateError::NotFound) if was_asleep => Vec::new(),
        Err(e) => return state_error(e),
    };
    node.webhooks.emit_all(close_events(room, &former)).await;
    let closed = Envelope::RoomClosed {
        room: room.to_string(),
        reason: "closed".to_string(),
    };
    if let Err(e) = node.backends.fanout.publish(closed).await {
        tracing::warn!(error = %e, "room_closed not published");
    }
    json(
        StatusCode::OK,
        &serde_json::json!({"closed": true, "members": former.len()}),
    )
}

/// What a close tells the app: each removed member left, the room (if it had any) went
/// empty, then it closed; all with reason `closed`, in the order a leave would give them. The
/// close script removed exactly these members, atomically, so no leave reports them too.
fn close_events(room: &str, former: &[room_state::MemberRecord]) -> Vec<crate::webhooks::Event> {
    use crate::webhooks::{Cause, Event, Kind};
    let left = former
        .iter()
        .map(|m| Event::member(Kind::MemberLeft, room, &m.user, &m.conn_id));
    let vacated = (!former.is_empty()).then(|| Event::room(Kind::RoomVacated, room));
    let closed = Event::room(Kind::RoomClosed, room);
    left.chain(vacated)
        .chain([closed])
        .map(|e| e.caused_by(Cause::Closed))
        .collect()
}

/// Where a user is connected, from the registry: an unknown user is simply offline.
async fn user_info(node: &Node, user: &str) -> Response<Body> {
    match node.backends.users.user_conns(user).await {
        Ok(conns) => {
            let mut nodes: Vec<&str> = conns.iter().map(|c| c.node.as_str()).collect();
            nodes.sort_unstable();
            nodes.dedup();
            let connections: Vec<serde_json::Value> = conns
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "connId": c.conn_id,
                        "node": c.node,
                        "transport": c.transport,
                        "since": c.since_ms,
                    })
                })
                .collect();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "user": user,
                    "online": !conns.is_empty(),
                    "nodes": nodes,
                    "connections": connections,
                }),
            )
        }
        Err(e) => state_error(e),
    }
}

/// The body of a publish API call as `Data`, under `--max-data-bytes`.
async fn read_data(node: &Node, req: Request<Incoming>) -> Result<Data, Box<Response<Body>>> {
    let limit = node.config.max_data_bytes;
    let too_large = || {
        Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "body is over --max-data-bytes",
        ))
    };
    let body_limit = limit.saturating_add(limit / 3).saturating_add(64);
    let body = Limited::new(req.into_body(), body_limit)
        .collect()
        .await
        .map_err(|_| too_large())?
        .to_bytes();
    let value: serde_json::Value = protocol::value::from_slice(&body).map_err(|_| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "body must be JSON",
        ))
    })?;
    let data = Data::from_value(&value).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &e.to_string(),
        ))
    })?;
    if data.size() > limit {
        return Err(too_large());
    }
    if data.byte_strings() > protocol::data::MAX_BYTE_STRINGS {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "data holds more than 10 byte strings",
        )));
    }
    Ok(data)
}

/// A `user_message` to every connection of the user, through the node-wide channel (as
/// `disconnect`): each node delivers to its own connections of the user. The answer counts
/// what the registry listed when it was sent (a connection opening meanwhile may get it too);
/// delivery itself is at most once and not acknowledged.
async fn user_publish(node: &Node, user: &str, req: Request<Incoming>) -> Response<Body> {
    let data = match read_data(node, req).await {
        Ok(d) => d,
        Err(r) => return *r,
    };
    // Best effort: the count is informative, the publish goes out whatever it says.
    let listed = node.backends.users.user_conns(user).await.ok();
    let envelope = Envelope::UserMessage {
        user: user.to_string(),
        data,
        ts: now_ms(),
    };
    if let Err(e) = node.backends.fanout.publish(envelope).await {
        tracing::warn!(error = %e, "user_message not published");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "service temporarily unavailable",
        );
    }
    let mut body = serde_json::json!({"accepted": true});
    if let Some(conns) = listed {
        let mut nodes: Vec<&str> = conns.iter().map(|c| c.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        body["connections"] = conns.len().into();
        body["nodes"] = nodes.len().into();
    }
    json(StatusCode::OK, &body)
}

async fn disconnect(node: &Node, user: &str) -> Response<Body> {
    let envelope = Envelope::DisconnectUser {
        user: user.to_string(),
    };
    match node.backends.fanout.publish(envelope).await {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({"ok": true})),
        Err(e) => {
            tracing::warn!(error = %e, "disconnect not published");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "service temporarily unavailable",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
