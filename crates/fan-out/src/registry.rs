//! The local registry: the connections this node holds, their rooms and their users.
//!
//! One `RwLock` guards three maps that must agree. It is never held across an `.await`, and
//! delivery takes only the read lock.

use crate::outbound::Outbound;
use parking_lot::{Mutex, RwLock};
use protocol::frame::Publication;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One local connection.
#[derive(Debug, Clone)]
pub struct LocalConn {
    pub conn_id: Arc<str>,
    pub user: Arc<str>,
    pub outbound: Arc<Outbound>,
    /// The Socket.IO namespace of a Socket.IO socket (one per joined namespace); `None` for
    /// a native connection. What `@socket.io/redis-emitter` broadcasts are matched against.
    pub namespace: Option<Arc<str>>,
}

/// Messages that arrive for a joiner before its join reply was queued are held here, then
/// merged by [`Registry::activate`]. Bounded: a joiner that somehow stays pending past this
/// many messages is treated as a slow consumer.
pub const MAX_PENDING: usize = 1024;

/// A connection's membership in one room, as this node sees it.
#[derive(Debug)]
pub struct RoomMember {
    pub conn: LocalConn,
    /// `Some` while the join is in flight: messages wait here instead of going out.
    pub pending: Option<Mutex<Vec<Publication>>>,
    /// The join reply's `(epoch, offset)`: messages at or below it were not for this member.
    /// It guards against a repair re-sending what the join already covered.
    pub floor: Option<(String, u64)>,
}

impl RoomMember {
    /// Whether a message is one this member has already been given (by its join reply).
    pub fn covers(&self, p: &Publication) -> bool {
        self.floor
            .as_ref()
            .is_some_and(|(epoch, offset)| *epoch == p.epoch && p.offset <= *offset)
    }
}

#[derive(Debug, Default)]
struct Inner {
    conns: HashMap<Arc<str>, (LocalConn, Vec<Arc<str>>)>,
    rooms: HashMap<Arc<str>, Vec<RoomMember>>,
    users: HashMap<Arc<str>, Vec<Arc<str>>>,
}

#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a connection.
    pub fn register(&self, conn: LocalConn) {
        let mut inner = self.inner.write();
        inner
            .users
            .entry(conn.user.clone())
            .or_default()
            .push(conn.conn_id.clone());
        inner.conns.insert(conn.conn_id.clone(), (conn, Vec::new()));
    }

    /// Removes a connection and returns the rooms it was in, each with whether this node
    /// has no local member left there.
    pub fn unregister(&self, conn_id: &str) -> Vec<(Arc<str>, bool)> {
        let mut inner = self.inner.write();
        let Some((conn, rooms)) = inner.conns.remove(conn_id) else {
            return Vec::new();
        };
        if let Some(conns) = inner.users.get_mut(&conn.user) {
            conns.retain(|c| &**c != conn_id);
            if conns.is_empty() {
                inner.users.remove(&conn.user);
            }
        }
        rooms
            .into_iter()
            .map(|room| {
                let last = remove_member(&mut inner.rooms, &room, conn_id);
                (room, last)
            })
            .collect()
    }

    /// Puts a connection in a room, pending: live messages are held until [`Self::activate`].
    /// Joining before the backend's join, and merging after, is what makes the join reply's
    /// offset and the live stream meet with no gap and no duplicate.
    ///
    /// Returns `Some(first)` where `first` says the room had no local member before, or `None`
    /// if the connection is unknown or already in the room.
    pub fn join(&self, room: &str, conn_id: &str) -> Option<bool> {
        let mut inner = self.inner.write();
        let Inner { conns, rooms, .. } = &mut *inner;
        let (conn, conn_rooms) = conns.get_mut(conn_id)?;
        if conn_rooms.iter().any(|r| &**r == room) {
            return None;
        }
        let room: Arc<str> = Arc::from(room);
        conn_rooms.push(room.clone());
        let members = rooms.entry(room).or_default();
        members.push(RoomMember {
            conn: conn.clone(),
            pending: Some(Mutex::new(Vec::new())),
            floor: None,
        });
        Some(members.len() == 1)
    }

    /// Ends a pending join whose reply said `epoch` at `offset`: queues the held messages that
    /// came after it, in order, and lets later ones flow. Returns the held messages to send.
    pub fn activate(
        &self,
        room: &str,
        conn_id: &str,
        epoch: &str,
        offset: u64,
    ) -> (Option<LocalConn>, Vec<Publication>) {
        let mut inner = self.inner.write();
        let Some(member) = inner
            .rooms
            .get_mut(room)
            .and_then(|ms| ms.iter_mut().find(|m| &*m.conn.conn_id == conn_id))
        else {
            return (None, Vec::new());
        };
        let held = member
            .pending
            .take()
            .map(Mutex::into_inner)
            .unwrap_or_default();
        member.floor = Some((epoch.to_string(), offset));
        member.conn.outbound.journal_base(room, epoch, offset);
        let after: Vec<Publication> = held
            .into_iter()
            .filter(|p| p.epoch != epoch || p.offset > offset)
            .collect();
        (Some(member.conn.clone()), after)
    }

    /// Takes a connection out of a room. Returns `Some(last)` where `last` says no local
    /// member is left, or `None` if it was not in the room.
    pub fn leave(&self, room: &str, conn_id: &str) -> Option<bool> {
        let mut inner = self.inner.write();
        let (_, conn_rooms) = inner.conns.get_mut(conn_id)?;
        let pos = conn_rooms.iter().position(|r| &**r == room)?;
        conn_rooms.swap_remove(pos);
        Some(remove_member(&mut inner.rooms, room, conn_id))
    }

    /// Removes every local member of a room (it was closed). Returns them.
    pub fn clear_room(&self, room: &str) -> Vec<LocalConn> {
        let mut inner = self.inner.write();
        let members = inner.rooms.remove(room).unwrap_or_default();
        for m in &members {
            if let Some((_, rooms)) = inner.conns.get_mut(&m.conn.conn_id) {
                rooms.retain(|r| &**r != room);
            }
        }
        members.into_iter().map(|m| m.conn).collect()
    }

    /// Whether a connection is in a room, as this node knows it.
    pub fn is_in(&self, room: &str, conn_id: &str) -> bool {
        self.inner
            .read()
            .conns
            .get(conn_id)
            .is_some_and(|(_, rooms)| rooms.iter().any(|r| &**r == room))
    }

    /// Whether this node has any local member in a room.
    pub fn has_room(&self, room: &str) -> bool {
        self.inner.read().rooms.contains_key(room)
    }

    /// The rooms a connection is in.
    pub fn rooms_of(&self, conn_id: &str) -> Vec<Arc<str>> {
        self.inner
            .read()
            .conns
            .get(conn_id)
            .map(|(_, rooms)| rooms.clone())
            .unwrap_or_default()
    }

    /// Runs `f` on a room's local members (empty when none), under the read lock. `f` must
    /// not block.
    pub fn with_members<R>(&self, room: &str, f: impl FnOnce(&[RoomMember]) -> R) -> R {
        f(self.inner.read().rooms.get(room).map_or(&[], Vec::as_slice))
    }

    /// The Socket.IO sockets of `namespace` that an emitter broadcast reaches: those in any of
    /// `rooms` (every socket of the namespace when `rooms` is empty) and in none of `except`,
    /// each once. Room names are the emitter's; `prefix` is the namespace's internal room
    /// prefix. A name that is a socket's own id also names that socket (Socket.IO's private
    /// room).
    pub fn socketio_targets(
        &self,
        namespace: &str,
        prefix: &str,
        rooms: &[String],
        except: &[String],
    ) -> Vec<LocalConn> {
        let inner = self.inner.read();
        let in_namespace = |c: &LocalConn| c.namespace.as_deref() == Some(namespace);
        // The sockets a room name covers: the room's members, or the socket of that id.
        let named = |room: &str| -> Vec<&LocalConn> {
            let mut out: Vec<&LocalConn> = inner
                .rooms
                .get(format!("{prefix}{room}").as_str())
                .map(|ms| ms.iter().map(|m| &m.conn).collect())
                .unwrap_or_default();
            if let Some((c, _)) = inner.conns.get(room) {
                out.push(c);
            }
            out.retain(|c| in_namespace(c));
            out
        };
        let excluded: HashSet<&str> = except
            .iter()
            .flat_map(|r| named(r))
            .map(|c| &*c.conn_id)
            .collect();
        let mut seen: HashSet<&str> = HashSet::new();
        let candidates: Vec<&LocalConn> = if rooms.is_empty() {
            inner
                .conns
                .values()
                .map(|(c, _)| c)
                .filter(|c| in_namespace(c))
                .collect()
        } else {
            rooms.iter().flat_map(|r| named(r)).collect()
        };
        candidates
            .into_iter()
            .filter(|c| !excluded.contains(&*c.conn_id) && seen.insert(&c.conn_id))
            .cloned()
            .collect()
    }

    /// The connections of a user on this node.
    pub fn conns_of_user(&self, user: &str) -> Vec<LocalConn> {
        let inner = self.inner.read();
        inner
            .users
            .get(user)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| inner.conns.get(id).map(|(c, _)| c.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every local connection (traffic broadcasts, drain).
    pub fn all(&self) -> Vec<LocalConn> {
        self.inner
            .read()
            .conns
            .values()
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// How many connections this node holds.
    pub fn connection_count(&self) -> usize {
        self.inner.read().conns.len()
    }

    /// How many rooms have a local member.
    pub fn room_count(&self) -> usize {
        self.inner.read().rooms.len()
    }

    /// How many connections of a user this node holds.
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.inner.read().users.get(user).map_or(0, Vec::len)
    }
}

fn remove_member(
    rooms: &mut HashMap<Arc<str>, Vec<RoomMember>>,
    room: &str,
    conn_id: &str,
) -> bool {
    let Some(members) = rooms.get_mut(room) else {
        return false;
    };
    members.retain(|m| &*m.conn.conn_id != conn_id);
    if members.is_empty() {
        rooms.remove(room);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Format;

    fn conn(id: &str, user: &str) -> LocalConn {
        let (outbound, _rx) = Outbound::new(Format::Json, 1024);
        LocalConn {
            conn_id: id.into(),
            user: user.into(),
            outbound: Arc::new(outbound),
            namespace: None,
        }
    }

    #[test]
    fn tracks_first_and_last_local_member() {
        let r = Registry::new();
        r.register(conn("a", "alice"));
        r.register(conn("b", "bob"));
        assert_eq!(r.join("room", "a"), Some(true));
        assert_eq!(r.join("room", "a"), None);
        assert_eq!(r.join("room", "b"), Some(false));
        assert_eq!(r.join("room", "zzz"), None);
        assert!(r.is_in("room", "a"));
        assert_eq!(r.leave("room", "a"), Some(false));
        assert_eq!(r.leave("room", "a"), None);
        assert_eq!(r.unregister("b"), vec![(Arc::from("room"), true)]);
        assert_eq!(r.room_count(), 0);
        assert_eq!(r.connection_count(), 1);
        assert_eq!(r.conns_of_user("alice").len(), 1);
        assert_eq!(r.user_connection_count("bob"), 0);
    }

    #[test]
    fn socketio_targets_follow_rooms_except_and_namespace() {
        let r = Registry::new();
        let sio = |id: &str, ns: &str| LocalConn {
            namespace: Some(Arc::from(ns)),
            ..conn(id, id)
        };
        r.register(conn("native", "n"));
        r.register(sio("a", "/"));
        r.register(sio("b", "/"));
        r.register(sio("c", "/"));
        r.register(sio("x", "/admin"));
        for (room, id) in [
            ("r1", "native"),
            ("r1", "a"),
            ("r1", "b"),
            ("r2", "b"),
            ("r2", "c"),
        ] {
            r.join(room, id);
        }
        r.join("admin/r1", "x");
        let ids = |ns: &str, prefix: &str, rooms: &[&str], except: &[&str]| {
            let rooms: Vec<String> = rooms.iter().map(|s| s.to_string()).collect();
            let except: Vec<String> = except.iter().map(|s| s.to_string()).collect();
            let mut ids: Vec<String> = r
                .socketio_targets(ns, prefix, &rooms, &except)
                .iter()
                .map(|c| c.conn_id.to_string())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(ids("/", "", &["r1"], &[]), ["a", "b"]);
        assert_eq!(ids("/", "", &["r1", "r2"], &[]), ["a", "b", "c"]);
        assert_eq!(ids("/", "", &["r1", "r2"], &["r2"]), ["a"]);
        assert_eq!(ids("/", "", &[], &[]), ["a", "b", "c"]);
        assert_eq!(ids("/", "", &[], &["r1"]), ["c"]);
        assert_eq!(ids("/", "", &["c"], &[]), ["c"], "a socket's own room");
        assert_eq!(ids("/admin", "admin/", &["r1"], &[]), ["x"]);
        assert_eq!(ids("/admin", "admin/", &[], &[]), ["x"]);
        assert!(ids("/admin", "admin/", &["r2"], &[]).is_empty());
        assert!(ids("/other", "other/", &[], &[]).is_empty());
    }

    #[test]
    fn clear_room_removes_membership_everywhere() {
        let r = Registry::new();
        r.register(conn("a", "alice"));
        r.join("x", "a");
        r.join("y", "a");
        assert_eq!(r.clear_room("x").len(), 1);
        assert_eq!(r.rooms_of("a"), vec![Arc::<str>::from("y")]);
    }

    #[test]
    fn pending_joins_hold_messages_until_activated() {
        let r = Registry::new();
        r.register(conn("a", "alice"));
        r.join("x", "a");
        let p = |offset| Publication {
            room: "x".into(),
            offset,
            epoch: "e".into(),
            from: "u".into(),
            data: protocol::Data::from_value(&serde_json::json!(offset)).expect("data"),
            ts: 0,
        };
        r.with_members("x", |members| {
            for m in members {
                let pending = m.pending.as_ref().expect("pending");
                pending.lock().extend([p(4), p(5), p(6)]);
            }
        });
        let (conn, after) = r.activate("x", "a", "e", 5);
        assert!(conn.is_some());
        assert_eq!(after.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![6]);
        r.with_members("x", |members| {
            assert!(members.iter().all(|m| m.pending.is_none()))
        });
    }
}
