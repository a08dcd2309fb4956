//! What a webhook event is: its type, what it is about, and its JSON (docs/webhooks.md).

use serde_json::json;

/// The event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RoomCreated,
    RoomClosed,
    /// The room's first member anywhere in the cluster.
    RoomOccupied,
    /// The room's last member anywhere left.
    RoomVacated,
    MemberJoined,
    MemberLeft,
    /// A user's first connection anywhere in the cluster.
    UserOnline,
    /// A user's last connection anywhere closed.
    UserOffline,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RoomCreated => "room_created",
            Kind::RoomClosed => "room_closed",
            Kind::RoomOccupied => "room_occupied",
            Kind::RoomVacated => "room_vacated",
            Kind::MemberJoined => "member_joined",
            Kind::MemberLeft => "member_left",
            Kind::UserOnline => "user_online",
            Kind::UserOffline => "user_offline",
        }
    }
}

/// Why a member left or a user went offline, when it was not a plain leave or disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The member's own leave, or its connection closed.
    Normal,
    /// Its node was declared dead (or restarted) and a live node removed it.
    NodeDead,
    /// The room was closed through the API (`room_closed` itself, and the `member_left` /
    /// `room_vacated` of the members the close removed).
    Closed,
    /// The room expired: empty for its TTL (`room_closed` only).
    Expired,
}

impl Cause {
    /// The event's `reason`; none for a plain leave or disconnect.
    fn reason(self) -> Option<&'static str> {
        match self {
            Cause::Normal => None,
            Cause::NodeDead => Some("node_dead"),
            Cause::Closed => Some("closed"),
            Cause::Expired => Some("expired"),
        }
    }
}

/// One event, before it is queued.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: Kind,
    pub room: Option<String>,
    pub user: Option<String>,
    pub conn: Option<String>,
    pub cause: Cause,
}

impl Event {
    pub fn room(kind: Kind, room: &str) -> Event {
        Event {
            kind,
            room: Some(room.to_string()),
            user: None,
            conn: None,
            cause: Cause::Normal,
        }
    }

    pub fn member(kind: Kind, room: &str, user: &str, conn: &str) -> Event {
        Event {
            user: Some(user.to_string()),
            conn: Some(conn.to_string()),
            ..Event::room(kind, room)
        }
    }

    pub fn user(kind: Kind, user: &str, conn: &str) -> Event {
        Event {
            kind,
            room: None,
            user: Some(user.to_string()),
            conn: Some(conn.to_string()),
            cause: Cause::Normal,
        }
    }

    pub fn with_user(mut self, user: &str) -> Event {
        self.user = Some(user.to_string());
        self
    }

    pub fn caused_by(mut self, cause: Cause) -> Event {
        self.cause = cause;
        self
    }

    /// What orders it: events of one room (or, for user events, of one user) share a queue
    /// shard, so they are delivered in the order they were queued.
    pub fn order_key(&self) -> String {
        match &self.room {
            Some(room) => format!("r:{room}"),
            None => format!("u:{}", self.user.as_deref().unwrap_or_default()),
        }
    }

    /// The JSON the app receives; absent fields are left out.
    pub fn to_json(&self, id: &str, ts_ms: u64, node: &str) -> String {
        let mut v = json!({
            "id": id,
            "type": self.kind.as_str(),
            "ts": ts_ms,
            "node": node,
        });
        if let Some(map) = v.as_object_mut() {
            for (key, value) in [
                ("room", &self.room),
                ("user", &self.user),
                ("conn", &self.conn),
            ] {
                if let Some(value) = value {
                    map.insert(key.into(), json!(value));
                }
            }
            if let Some(reason) = self.cause.reason() {
                map.insert("reason".into(), json!(reason));
            }
        }
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields_only() {
        let e =
            Event::member(Kind::MemberLeft, "lobby", "ann", "n1.a.1").caused_by(Cause::NodeDead);
        let v: serde_json::Value =
            serde_json::from_str(&e.to_json("id1", 5, "n2")).unwrap_or_default();
        assert_eq!(
            v,
            json!({"id": "id1", "type": "member_left", "ts": 5, "node": "n2", "room": "lobby",
                   "user": "ann", "conn": "n1.a.1", "reason": "node_dead"})
        );
        let e = Event::user(Kind::UserOnline, "ann", "c");
        assert_eq!(e.order_key(), "u:ann");
        assert_eq!(Event::room(Kind::RoomCreated, "x").order_key(), "r:x");
        let e = Event::room(Kind::RoomClosed, "x").caused_by(Cause::Expired);
        let v: serde_json::Value =
            serde_json::from_str(&e.to_json("id2", 6, "n1")).unwrap_or_default();
        assert_eq!(v["reason"], json!("expired"));
    }
}
