//! The server API's message routes (the archive, docs/archive.md), routed by [`super::api`]:
//!
//! - `GET    /api/rooms/{room}/messages?before=&limit=`  a history page, past the Redis window
//! - `DELETE /api/rooms/{room}/messages`                 erasure of a room's archived messages
//! - `DELETE /api/users/{user}/messages`                 erasure of a user's archived messages
//!
//! Plus [`close_in_archive`], what `DELETE /api/rooms/{room}` does to a sleeping room.

use super::api::{check_room, state_error};
use super::query;
use super::response::{error, json, Body};
use crate::history::{self, archive_of};
use crate::node::Node;
use archive::ArchiveError;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use protocol::frame::MAX_HISTORY_LIMIT;
use protocol::Publication;
use room_state::StateError;

#[derive(serde::Serialize)]
struct Page<'a> {
    room: &'a str,
    epoch: &'a str,
    /// Oldest first, like the `history` op.
    messages: &'a [Publication],
}

/// A decimal number; one too large for 64 bits is the largest (a bound, not an error).
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().unwrap_or(u64::MAX))
}

/// `before` and `limit` from the query string: absent, or decimal numbers (400 otherwise).
/// `limit` is capped to the `history` op's maximum ([`MAX_HISTORY_LIMIT`]).
fn page_params(req: &Request<Incoming>) -> Result<(Option<u64>, usize), Box<Response<Body>>> {
    let params = query::parse(req.uri().query().unwrap_or(""));
    let bad = |what: &str| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("{what} must be a non-negative decimal number"),
        ))
    };
    let before = match params.get("before") {
        None => None,
        Some(text) => Some(number(text).ok_or_else(|| bad("before"))?),
    };
    let limit = match params.get("limit") {
        None => MAX_HISTORY_LIMIT as u64,
        Some(text) => number(text).ok_or_else(|| bad("limit"))?,
    };
    Ok((before, limit.min(MAX_HISTORY_LIMIT as u64) as usize))
}

pub async fn list(node: &Node, room: &str, req: &Request<Incoming>) -> Response<Body> {
    if let Err(r) = check_room(room) {
        return *r;
    }
    let (before, limit) = match page_params(req) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let archive = archive_of(node);
    let archive = archive.as_deref();
    let rooms = node.backends.rooms.as_ref();
    let answer = match history::page(rooms, archive, room, None, limit, before).await {
        // Not in room-state: it may be asleep, readable without waking it.
        Err(StateError::NotFound) => history::page_sleeping(archive, room, limit, before)
            .await
            .and_then(|page| page.ok_or(StateError::NotFound)),
        other => other,
    };
    match answer {
        Ok((messages, epoch)) => json(
            StatusCode::OK,
            &Page {
                room,
                epoch: &epoch,
                messages: &messages,
            },
        ),
        Err(e) => state_error(e),
    }
}

fn no_archive() -> Response<Body> {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "no_archive",
        "the archive is off (--archive none): there is nothing to purge",
    )
}

fn archive_error(e: ArchiveError) -> Response<Body> {
    state_error(history::from_archive(e))
}

pub async fn purge_room(node: &Node, room: &str) -> Response<Body> {
    if let Err(r) = check_room(room) {
        return *r;
    }
    let Some(archive) = archive_of(node) else {
        return no_archive();
    };
    match archive.purge_room(room).await {
        Ok(purged) => json(StatusCode::OK, &serde_json::json!({ "purged": purged })),
        Err(ArchiveError::NotFound) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the archive holds no message and no record of this room",
        ),
        Err(e) => archive_error(e),
    }
}

pub async fn purge_user(node: &Node, user: &str) -> Response<Body> {
    if user.is_empty() || user.contains('\0') {
        return error(StatusCode::BAD_REQUEST, "bad_request", "bad user id");
    }
    let Some(archive) = archive_of(node) else {
        return no_archive();
    };
    match archive.purge_user(user).await {
        Ok(purged) => json(StatusCode::OK, &serde_json::json!({ "purged": purged })),
        Err(e) => archive_error(e),
    }
}

/// Forgets a room's sleeping record, so that a room closed through the API never wakes.
/// `Ok(true)` when there was one.
pub async fn close_in_archive(node: &Node, room: &str) -> Result<bool, Box<Response<Body>>> {
    let Some(archive) = archive_of(node) else {
        return Ok(false);
    };
    archive
        .close_room(room)
        .await
        .map_err(|e| Box::new(archive_error(e)))
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn numbers() {
        assert_eq!(number("0"), Some(0));
        assert_eq!(number("42"), Some(42));
        assert_eq!(number("99999999999999999999999"), Some(u64::MAX));
        assert_eq!(number(""), None);
        assert_eq!(number("-1"), None);
        assert_eq!(number("1e3"), None);
        assert_eq!(number(" 1"), None);
    }
}
