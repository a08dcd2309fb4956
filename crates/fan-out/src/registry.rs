//! The local registry: the connections this node holds, their rooms and their users.
//!
//! One `RwLock` guards three maps that must agree. It is never held across an `.await`, and
//! delivery takes only the read lock.

use crate::outbound::Outbound;
use parking_lot::{Mutex, RwLock};
use protocol::frame::Publication;
use std::collections::HashMap;
use std::sync::Arc;

/// One local connection.
#[derive(Debug, Clone)]
pub struct LocalConn {
    pub conn_id: Arc<str>,
    pub user: Arc<str>,
    pub outbound: Arc<Outbound>,
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

    /// Runs `f` on every local member of a room, under the read lock. `f` must not block.
    pub fn for_each_member(&self, room: &str, mut f: impl FnMut(&RoomMember)) {
        if let Some(members) = self.inner.read().rooms.get(room) {
            members.iter().for_each(&mut f);
        }
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
        r.for_each_member("x", |m| {
            let pending = m.pending.as_ref().expect("pending");
            pending.lock().extend([p(4), p(5), p(6)]);
        });
        let (conn, after) = r.activate("x", "a", "e", 5);
        assert!(conn.is_some());
        assert_eq!(after.iter().map(|p| p.offset).collect::<Vec<_>>(), vec![6]);
        r.for_each_member("x", |m| assert!(m.pending.is_none()));
    }
}
