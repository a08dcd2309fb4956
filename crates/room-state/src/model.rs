//! Plain data that crosses the state traits.

use protocol::frame::{Member, Publication};

/// Settings fixed at room creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomConfig {
    /// `None` means unlimited.
    pub max_members: Option<u32>,
    /// How many recent messages history keeps. 0 makes the room *ephemeral*: see
    /// [`RoomConfig::is_ephemeral`].
    pub history_size: u32,
    /// How long an empty room lives.
    pub ttl_secs: u64,
}

impl RoomConfig {
    /// A room without history is ephemeral: its publishes are not sequenced (no offset, no
    /// epoch, no idempotency key), delivered at most once, and `since` never recovers. With
    /// nothing kept, an offset could not be used for anything: not for history, not for
    /// recovery, not for gap repair.
    pub fn is_ephemeral(&self) -> bool {
        self.history_size == 0
    }
}

/// A member as stored: the protocol's member plus the node that holds its connection, so that
/// a dead node's members can be found and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub user: String,
    pub conn_id: String,
    pub node: String,
    /// What the app's connect proxy said about the connection: a JSON object's text (compact,
    /// so it holds no line break), shown by presence. `None`: nothing.
    pub info: Option<String>,
}

impl MemberRecord {
    pub fn to_member(&self) -> Member {
        Member {
            user: self.user.clone(),
            conn_id: self.conn_id.clone(),
            // Written by the gateway from a JSON object; anything else is not shown.
            info: self
                .info
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok()),
        }
    }
}

/// Who publishes: a member connection, and the publish's place in that connection's order.
///
/// A connection may have several publishes in flight (pipelined). A retry inside the client
/// library (a command re-sent after a reconnect, or to a new owner after a failover) can then
/// reach Redis after a later publish of the same connection went straight there. The store
/// refuses a publish whose `seq` is not above the last one it sequenced for the connection in
/// that room (`Unavailable`: not applied, safe to retry), so what it acknowledges keeps the
/// connection's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publisher<'a> {
    pub conn_id: &'a str,
    /// 1, 2, 3… in the order the connection sent its publishes; 0: no order to keep.
    pub seq: u64,
}

impl<'a> Publisher<'a> {
    /// A member whose publishes are not pipelined: no order check.
    pub fn member(conn_id: &'a str) -> Publisher<'a> {
        Publisher { conn_id, seq: 0 }
    }
}

/// A publish's idempotency key, scoped by the caller (the gateway prefixes the user), and
/// how long a repeat of it is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub window_ms: u64,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The message as sequenced. For a duplicate: the first publish's offset and epoch. In
    /// an ephemeral room: offset [`Publication::EPHEMERAL_OFFSET`] and an empty epoch.
    pub publication: Publication,
    /// The key was seen within its window in the current epoch: nothing was published.
    pub duplicate: bool,
}

/// What a room looks like right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    pub room: String,
    pub epoch: String,
    /// The last offset assigned in this epoch (0 before the first message).
    pub offset: u64,
    pub members: Vec<Member>,
    pub config: RoomConfig,
    pub created_at: u64,
}

/// What a sleeping room wakes up with (`RoomStore::wake`): its epoch, offset and options
/// as they were, and the end of its history, read back from the archive.
#[derive(Debug, Clone, PartialEq)]
pub struct Wake {
    pub epoch: String,
    /// The last offset assigned before the sleep: the next publish gets `offset + 1`.
    pub offset: u64,
    pub config: RoomConfig,
    pub created_at: u64,
    /// The newest messages of `epoch`, oldest first, offsets up to `offset` (the backend
    /// keeps those in its window); all archived already, so the archive cursor starts at
    /// `offset`.
    pub history: Vec<Publication>,
}

/// The result of a successful join.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinOutcome {
    pub offset: u64,
    pub epoch: String,
    /// Every member after the join, the joiner included.
    pub members: Vec<Member>,
    /// The connection was already a member (the join changed nothing).
    pub already_member: bool,
    /// The room had no member anywhere before this join (`room_occupied`), as the backend's
    /// atomic join saw it: exactly one join per empty-to-occupied change says so.
    pub occupied: bool,
    /// With `since`: whether every message after it was still in history.
    pub recovered: Option<bool>,
    /// With `since`: the messages after it, oldest first; empty when not recovered.
    pub missed: Vec<Publication>,
    /// The room is ephemeral ([`RoomConfig::is_ephemeral`]). Carried by the join so that the
    /// gateway knows it without asking again on every publish.
    pub ephemeral: bool,
}

/// What [`crate::RoomStore::depart`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Departure {
    /// The connection was a member (and is no longer).
    pub was_member: bool,
    /// It was the room's last member anywhere (`room_vacated`), as the backend's atomic
    /// leave saw it: exactly one leave per occupied-to-empty change says so.
    pub vacated: bool,
}

/// A member removed with its node ([`crate::RoomStore::remove_node_members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departed {
    pub room: String,
    pub member: MemberRecord,
    /// Its removal left the room with no member anywhere.
    pub vacated: bool,
}

/// A rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// When refused: how long until a retry can succeed.
    pub retry_after_ms: u64,
}

impl Decision {
    pub const ALLOW: Decision = Decision {
        allowed: true,
        retry_after_ms: 0,
    };

    pub fn deny(retry_after_ms: u64) -> Decision {
        Decision {
            allowed: false,
            retry_after_ms: retry_after_ms.max(1),
        }
    }
}

/// Tokens taken from a bucket: up to the number asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub granted: u32,
    /// When none was granted: how long until one can be.
    pub retry_after_ms: u64,
}

/// One gateway node, as it heartbeats into the node registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub addr: String,
    pub connections: u64,
    pub started_at: u64,
}
