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
use protocol::codec::encode_event;
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
            .map(|(r, (e, o))| (r.to_string(), e.to_string(), *o))
            .collect(),
        base: journal
            .base
            .iter()
            .filter(|(r, _)| keep(r))
            .map(|(r, (e, o))| (r.to_string(), e.to_string(), *o))
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
    let saved = load(node, session, namespace, pid).await?;
    let positions = locate(&saved, auth)?;
    let joined = rejoin_all(node, session, &saved.rooms, &positions).await?;
    replay(node, session, joined, &positions);
    Some(Restored {
        sid: saved.sid,
        pid: pid.to_string(),
    })
}

/// Takes the saved state (single use): only the same user, in the same namespace, gets it.
async fn load(node: &Node, session: &Session, namespace: &str, pid: &str) -> Option<Saved> {
    let blob = node.backends.sessions.take_session(pid).await.ok()??;
    let saved: Saved = serde_json::from_str(&blob).ok()?;
    // A pid is a bearer secret, but a stolen one is still not another user's socket.
    (saved.user == session.identity.user && saved.namespace == namespace).then_some(saved)
}

/// Turns the client's one recovery offset into a position in every saved room.
fn locate(saved: &Saved, auth: Option<&Value>) -> Option<HashMap<Arc<str>, Position>> {
    let mut journal = Journal {
        cap: JOURNAL_LEN,
        ..Journal::default()
    };
    for (room, epoch, offset) in &saved.entries {
        journal.entries.push_back((
            Arc::from(room.as_str()),
            (Arc::from(epoch.as_str()), *offset),
        ));
    }
    for (room, epoch, offset) in &saved.base {
        journal.base.insert(
            Arc::from(room.as_str()),
            (Arc::from(epoch.as_str()), *offset),
        );
    }
    // A missing offset means the client received no message at all; a malformed one fails.
    let last = match auth.and_then(|a| a.get("offset")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let (room, epoch, offset) = parse_recovery_offset(s)?;
            Some((room.to_string(), (Arc::<str>::from(epoch), offset)))
        }
        Some(_) => return None,
    };
    journal.positions_at(last.as_ref().map(|(r, p)| (r.as_str(), p)))
}

/// A room rejoined with its missed messages, its live ones held until `after_reply`.
type Rejoined = (String, Vec<Publication>, After);

/// Joins every room from its position; only when all of them replay in full is anything
/// kept. Otherwise every room joined so far is left again and `None` returned.
async fn rejoin_all(
    node: &Node,
    session: &Session,
    rooms: &[String],
    positions: &HashMap<Arc<str>, Position>,
) -> Option<Vec<Rejoined>> {
    let mut joined: Vec<Rejoined> = Vec::new();
    for room in rooms {
        match rejoin(node, session, room, positions).await {
            Some(rejoined) => joined.push(rejoined),
            None => {
                for (room, _, after) in joined {
                    session::after_reply(node, session, after);
                    let user = &session.identity.user;
                    let _ = session::leave_room(node, &session.conn_id, user, &room).await;
                }
                return None;
            }
        }
    }
    Some(joined)
}

/// Rejoins one room with `since`; `None` (and not a member) unless it replays in full.
async fn rejoin(
    node: &Node,
    session: &Session,
    room: &str,
    positions: &HashMap<Arc<str>, Position>,
) -> Option<Rejoined> {
    let (epoch, offset) = positions.get(room)?;
    let op = Op::Join {
        room: room.to_string(),
        since: Some(Since {
            epoch: epoch.to_string(),
            offset: *offset,
        }),
    };
    let (result, after) = session::handle(node, session, op).await;
    match result {
        Ok(OkBody::Joined {
            recovered: Some(true),
            missed,
            ..
        }) => return Some((room.to_string(), missed.unwrap_or_default(), after)),
        // An ephemeral room promises nothing to replay (at most once): rejoined, it does not
        // stand in the way of recovering the socket's other rooms.
        Ok(OkBody::Joined {
            ephemeral: true, ..
        }) => return Some((room.to_string(), Vec::new(), after)),
        _ => {}
    }
    // Joined but not replayable, or refused: release and give up.
    session::after_reply(node, session, after);
    if node.registry.is_in(room, &session.conn_id) {
        let user = &session.identity.user;
        let _ = session::leave_room(node, &session.conn_id, user, room).await;
    }
    None
}

/// Sends what each room missed. The replay goes out before any live message: live ones are
/// held until `after_reply`.
fn replay(
    node: &Node,
    session: &Session,
    joined: Vec<Rejoined>,
    positions: &HashMap<Arc<str>, Position>,
) {
    for (room, missed, after) in joined {
        if let Some((epoch, offset)) = positions.get(room.as_str()) {
            session.outbound.journal_base(&room, epoch, *offset);
        }
        for p in &missed {
            if let Ok(bytes) = encode_event(&Event::Message(p), Format::SocketIo) {
                // A replay: several at once, written together by the writer.
                let _ = session
                    .outbound
                    .push_publication(bytes, p, fan_out::WriteMode::Queued);
            }
        }
        session::after_reply(node, session, after);
    }
}
