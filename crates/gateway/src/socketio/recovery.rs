//! Socket.IO connection state recovery.
//!
//! Every `message` event carries `<offset>:<epoch>:<room>` as its last argument
//! (`protocol::socketio::recovery_offset`), and the client keeps the last one it received.
//! That names one message, not a position in every room; the server supplies the rest: a
//! socket's outbound journals what it queued, in queue order (`fan_out::Journal`). Everything
//! queued before the reported message reached the client, so each room's position is its
//! last journal entry up to there.
//!
//! When a socket is lost (not left with `41`, not closed for a protocol error), its rooms
//! and journal are saved in the backend under its `pid` for `--socketio-recovery-window`, so
//! that any node can restore it. A CONNECT with `{pid, offset}` takes the state (single use),
//! checks that the same user owns it, and rejoins every room with `since` from the same
//! history as the native protocol. All or nothing: if any room cannot be replayed in full,
//! every room joined so far is left again and the client gets a normal, fresh connect.

use crate::node::Node;
use crate::session::{self, After, Session};
use fan_out::{Journal, Position};
use protocol::codec::encode;
use protocol::frame::{Event, OkBody, Op, Publication, Since};
use protocol::socketio::parse_recovery_offset;
use protocol::Format;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Messages a socket's journal remembers. A client further behind than this cannot recover.
pub const JOURNAL_LEN: usize = 4096;

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    sid: String,
    user: String,
    namespace: String,
    rooms: Vec<String>,
    /// `(room, epoch, offset)`, oldest first.
    entries: Vec<(String, String, u64)>,
    base: Vec<(String, String, u64)>,
}

/// A restored socket: the ids to answer the CONNECT with.
#[derive(Debug)]
pub struct Restored {
    pub sid: String,
    pub pid: String,
}

/// Saves a lost socket's rooms and journal under `pid`.
pub async fn save(node: &Node, session: &Session, namespace: &str, sid: &str, pid: &str) {
    let Some(journal) = session.outbound.journal() else {
        return;
    };
    let rooms: Vec<String> = node
        .registry
        .rooms_of(&session.conn_id)
        .iter()
        .map(|r| r.to_string())
        .collect();
    let keep = |r: &str| rooms.iter().any(|x| x == r);
    let saved = Saved {
        sid: sid.to_string(),
        user: session.identity.user.clone(),
        namespace: namespace.to_string(),
        entries: journal
            .entries
            .iter()
            .filter(|(r, _)| keep(r))
            .map(|(r, (e, o))| (r.to_string(), e.clone(), *o))
            .collect(),
        base: journal
            .base
            .iter()
            .filter(|(r, _)| keep(r))
            .map(|(r, (e, o))| (r.to_string(), e.clone(), *o))
            .collect(),
        rooms,
    };
    let Ok(blob) = serde_json::to_string(&saved) else {
        return;
    };
    let ttl = node.config.socketio_recovery_window.as_millis() as u64;
    match node.backends.sessions.save_session(pid, &blob, ttl).await {
        Ok(()) => node
            .metrics
            .socketio_recovery
            .with_label_values(&["saved"])
            .inc(),
        Err(e) => tracing::warn!(error = %e, "socket state not saved for recovery"),
    }
}

/// Restores a socket from the CONNECT payload's `{pid, offset}`, or `None` (a fresh
/// connect).
pub async fn restore(
    node: &Node,
    session: &Session,
    namespace: &str,
    auth: Option<&Value>,
) -> Option<Restored> {
    let pid = auth?.get("pid")?.as_str()?;
    let outcome = try_restore(node, session, namespace, pid, auth).await;
    let label = if outcome.is_some() {
        "recovered"
    } else {
        "failed"
    };
    node.metrics
        .socketio_recovery
        .with_label_values(&[label])
        .inc();
    outcome
}

async fn try_restore(
    node: &Node,
    session: &Session,
    namespace: &str,
    pid: &str,
    auth: Option<&Value>,
) -> Option<Restored> {
    let blob = node.backends.sessions.take_session(pid).await.ok()??;
    let saved: Saved = serde_json::from_str(&blob).ok()?;
    // A pid is a bearer secret, but a stolen one is still not another user's socket.
    if saved.user != session.identity.user || saved.namespace != namespace {
        return None;
    }
    let mut journal = Journal {
        cap: JOURNAL_LEN,
        ..Journal::default()
    };
    for (room, epoch, offset) in saved.entries {
        journal
            .entries
            .push_back((Arc::from(room), (epoch, offset)));
    }
    for (room, epoch, offset) in saved.base {
        journal.base.insert(Arc::from(room), (epoch, offset));
    }
    // A missing offset means the client received no message at all; a malformed one fails.
    let last = match auth.and_then(|a| a.get("offset")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let (room, epoch, offset) = parse_recovery_offset(s)?;
            Some((room.to_string(), (epoch.to_string(), offset)))
        }
        Some(_) => return None,
    };
    let positions: HashMap<Arc<str>, Position> =
        journal.positions_at(last.as_ref().map(|(r, p)| (r.as_str(), p)))?;

    // Join every room first; only when all of them replay in full is anything sent.
    let mut joined: Vec<(String, Vec<Publication>, After)> = Vec::new();
    let mut complete = true;
    for room in &saved.rooms {
        let Some((epoch, offset)) = positions.get(room.as_str()) else {
            complete = false;
            break;
        };
        let op = Op::Join {
            room: room.clone(),
            since: Some(Since {
                epoch: epoch.clone(),
                offset: *offset,
            }),
        };
        let (result, after) = session::handle(node, session, op).await;
        match result {
            Ok(OkBody::Joined {
                recovered: Some(true),
                missed,
                ..
            }) => joined.push((room.clone(), missed.unwrap_or_default(), after)),
            _ => {
                // Joined but not replayable, or refused: release and give up.
                session::after_reply(node, session, after);
                complete = false;
                if node.registry.is_in(room, &session.conn_id) {
                    let _ =
                        session::leave_room(node, &session.conn_id, &session.identity.user, room)
                            .await;
                }
                break;
            }
        }
    }
    if !complete {
        for (room, _, after) in joined {
            session::after_reply(node, session, after);
            let _ =
                session::leave_room(node, &session.conn_id, &session.identity.user, &room).await;
        }
        return None;
    }
    // The replay goes out before any live message: live ones are held until `after_reply`.
    for (room, missed, after) in joined {
        if let Some((epoch, offset)) = positions.get(room.as_str()) {
            session.outbound.journal_base(&room, epoch, *offset);
        }
        for p in &missed {
            if let Ok(bytes) = encode(&Event::Message(p), Format::SocketIo) {
                let _ = session.outbound.push_publication(bytes, p);
            }
        }
        session::after_reply(node, session, after);
    }
    Some(Restored {
        sid: saved.sid,
        pid: pid.to_string(),
    })
}
