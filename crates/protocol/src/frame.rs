//! Native protocol v1 messages.
//!
//! A request is `{"id":<u64>,"op":"<op>",…}`; the reply is `{"id":N,"ok":{…}}` or
//! `{"id":N,"error":{"code","message","retryAfterMs"?}}`. Events carry an `event` field.

use crate::codes::ErrorCode;
use crate::data::Data;
use crate::traffic::TrafficStatus;
use serde::{Deserialize, Serialize};

/// The largest `limit` that `history` honours; larger values are clamped.
pub const MAX_HISTORY_LIMIT: u32 = 100;

/// A decoded client request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

/// Per-room options given at creation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomOptions {
    #[serde(default)]
    pub max_members: Option<u32>,
    #[serde(default)]
    pub history_size: Option<u32>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// A publish's idempotency key: 1 to [`MsgId::MAX_LEN`] characters of `A-Z a-z 0-9 _ . : -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct MsgId(String);

impl MsgId {
    pub const MAX_LEN: usize = 64;

    /// Checks a key against the grammar.
    pub fn new(key: &str) -> Option<MsgId> {
        let ok = (1..=Self::MAX_LEN).contains(&key.len())
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        ok.then(|| MsgId(key.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for MsgId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<MsgId, D::Error> {
        let key = String::deserialize(d)?;
        MsgId::new(&key).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "msgId must be 1 to {} characters of A-Z a-z 0-9 _ . : -",
                MsgId::MAX_LEN
            ))
        })
    }
}

/// A recovery position: the last offset seen in a given epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// The operations of protocol v1.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateRoom {
        #[serde(default)]
        room: Option<String>,
        #[serde(default)]
        options: RoomOptions,
    },
    Join {
        room: String,
        #[serde(default)]
        since: Option<Since>,
    },
    Leave {
        room: String,
    },
    Publish {
        room: String,
        data: Data,
        /// The client's idempotency key: a retry with the same key is acknowledged with the
        /// first offset and never delivered twice.
        #[serde(default, rename = "msgId")]
        msg_id: Option<MsgId>,
    },
    Presence {
        room: String,
    },
    History {
        room: String,
        #[serde(default)]
        limit: Option<u32>,
        #[serde(default)]
        before: Option<u64>,
    },
    Ping,
    /// A new token for an open connection, before the current one expires. The same user
    /// (`sub`) is required; the connection's deadline becomes the new token's `exp`.
    Refresh {
        token: String,
    },
}

impl Op {
    /// Every op's name, as [`Op::name`] gives it.
    pub const NAMES: [&'static str; 8] = [
        "create_room",
        "join",
        "leave",
        "publish",
        "presence",
        "history",
        "ping",
        "refresh",
    ];

    /// The op's wire name, used as a metrics label.
    pub fn name(&self) -> &'static str {
        match self {
            Op::CreateRoom { .. } => "create_room",
            Op::Join { .. } => "join",
            Op::Leave { .. } => "leave",
            Op::Publish { .. } => "publish",
            Op::Presence { .. } => "presence",
            Op::History { .. } => "history",
            Op::Ping => "ping",
            Op::Refresh { .. } => "refresh",
        }
    }

    /// The room the op names, if any.
    pub fn room(&self) -> Option<&str> {
        match self {
            Op::CreateRoom { room, .. } => room.as_deref(),
            Op::Join { room, .. }
            | Op::Leave { room }
            | Op::Publish { room, .. }
            | Op::Presence { room }
            | Op::History { room, .. } => Some(room),
            Op::Ping | Op::Refresh { .. } => None,
        }
    }
}

/// One message in a room: what `message` events, `history` and `missed` carry.
///
/// A message of an *ephemeral* room (created with `historySize: 0`) is never sequenced: it
/// has offset [`Publication::EPHEMERAL_OFFSET`] (0, which no sequenced message has: offsets
/// start at 1) and an empty epoch, and both are left out when it is encoded, so its `message`
/// event has no `offset` and no `epoch` (and, on Socket.IO, no recovery offset argument,
/// which the Socket.IO codec derives from those fields). Between nodes the envelope carries
/// the placeholders as they are (`protocol::envelope` is unchanged).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publication {
    pub room: String,
    #[serde(default, skip_serializing_if = "is_ephemeral_offset")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    pub from: String,
    pub data: Data,
    /// Milliseconds since the Unix epoch, set by the server that accepted the publish.
    pub ts: u64,
}

fn is_ephemeral_offset(offset: &u64) -> bool {
    *offset == Publication::EPHEMERAL_OFFSET
}

impl Publication {
    /// The offset of a message of an ephemeral room: none (see [`Publication`]).
    pub const EPHEMERAL_OFFSET: u64 = 0;

    /// Whether this message belongs to an ephemeral room: not sequenced, at most once.
    pub fn is_ephemeral(&self) -> bool {
        self.offset == Self::EPHEMERAL_OFFSET
    }

    /// Identifies the content at a position: who, when, what. Two nodes compute the same
    /// value (FNV-1a), so it tells one message from another written at the same offset. A
    /// separator between the parts keeps `("ab", "c")` apart from `("a", "bc")`.
    pub fn fingerprint(&self) -> u64 {
        let mut h = crate::hash::Fnv1a::new();
        for part in [
            self.from.as_bytes(),
            &self.ts.to_le_bytes(),
            self.data.as_json().as_bytes(),
        ] {
            h.write(part).write(&[0xff]);
        }
        h.finish()
    }
}

/// A member as shown by `presence` and `join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub user: String,
    pub conn_id: String,
    /// What the app's connect proxy said about the connection (`info`), when it said anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// The error body of a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The app's own code, when its proxy refused (`rejected`, or a refused connection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            code,
            message: message.into(),
            retry_after_ms: None,
            reason: None,
        }
    }

    pub fn retry_after(mut self, ms: u64) -> ErrorBody {
        self.retry_after_ms = Some(ms);
        self
    }
}

/// The success bodies, one per op.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OkBody {
    #[serde(rename_all = "camelCase")]
    Created {
        room: String,
        epoch: String,
        offset: u64,
        members: Vec<Member>,
        /// The room is ephemeral (`historySize: 0`); sent only when true.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
    },
    #[serde(rename_all = "camelCase")]
    Joined {
        room: String,
        offset: u64,
        epoch: String,
        members: Vec<Member>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        missed: Option<Vec<Publication>>,
        /// The room is ephemeral: its messages have no offset, `since` never recovers, and
        /// history is empty. Sent only when true.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        ephemeral: bool,
    },
    /// `publish` to an ephemeral room: `{ephemeral: true}` and nothing else, since nothing
    /// was sequenced (no offset, no epoch, and no `msgId` deduplication). Use
    /// [`OkBody::PUBLISHED_EPHEMERAL`].
    PublishedEphemeral {
        ephemeral: bool,
    },
    Published {
        offset: u64,
        /// This publish repeated an earlier one's `msgId`: nothing new was published, and
        /// `offset` is the earlier one's.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
        /// For a duplicate: the epoch of the first publish (the room may be in a newer one).
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    Presence {
        members: Vec<Member>,
    },
    History {
        messages: Vec<Publication>,
        epoch: String,
    },
    Pong {
        pong: u64,
    },
    /// `refresh`: the connection's new deadline (ms since the Unix epoch), `null` for a
    /// token without `exp`.
    #[serde(rename_all = "camelCase")]
    Refreshed {
        expires_at: Option<u64>,
    },
    /// `leave`: an empty object.
    Empty {},
}

impl OkBody {
    /// The reply to a publish in an ephemeral room: `{"ephemeral":true}`.
    pub const PUBLISHED_EPHEMERAL: OkBody = OkBody::PublishedEphemeral { ephemeral: true };
}

/// A reply to one request. `id` is `None` (sent as `null`) when the request's id was unreadable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<OkBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    pub fn ok(id: u64, body: OkBody) -> Reply {
        Reply {
            id: Some(id),
            ok: Some(body),
            error: None,
        }
    }

    pub fn error(id: Option<u64>, error: ErrorBody) -> Reply {
        Reply {
            id,
            ok: None,
            error: Some(error),
        }
    }
}

/// `presence` event actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAction {
    Join,
    Leave,
}

/// Server-pushed events. Each borrows what it shows, so a broadcast encodes without copying.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    #[serde(rename_all = "camelCase")]
    Welcome {
        conn_id: &'a str,
        node: &'a str,
        user: &'a str,
    },
    TrafficStatus(&'a TrafficStatus),
    Message(&'a Publication),
    #[serde(rename_all = "camelCase")]
    Presence {
        room: &'a str,
        action: PresenceAction,
        user: &'a str,
        conn_id: &'a str,
    },
    RoomClosed {
        room: &'a str,
        reason: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Reconnect {
        after_ms: u64,
        reason: &'a str,
    },
    /// An application event for every connection of one user (`POST /api/users/{user}/publish`):
    /// not in any room, not stored, at most once.
    UserMessage {
        data: &'a Data,
        ts: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use crate::Format;
    use serde_json::{json, Value};

    fn ephemeral() -> Publication {
        Publication {
            room: "typing".into(),
            offset: Publication::EPHEMERAL_OFFSET,
            epoch: String::new(),
            from: "u".into(),
            data: crate::Data::from_value(&json!({"t": 1})).expect("data"),
            ts: 5,
        }
    }

    #[test]
    fn an_ephemeral_message_has_no_offset_and_no_epoch_in_every_format() {
        let p = ephemeral();
        assert!(p.is_ephemeral());
        let expected =
            json!({"event": "message", "room": "typing", "from": "u", "data": {"t": 1}, "ts": 5});
        let text = encode(&Event::Message(&p), Format::Json).expect("json");
        assert_eq!(
            serde_json::from_slice::<Value>(&text).expect("json"),
            expected
        );
        let mp = encode(&Event::Message(&p), Format::MsgPack).expect("msgpack");
        assert_eq!(rmp_serde::from_slice::<Value>(&mp).expect("mp"), expected);
        // Socket.IO: no recovery offset argument, so clients keep their last real one.
        let sio = encode(&Event::Message(&p), Format::SocketIo).expect("sio");
        assert_eq!(
            sio.as_ref(),
            br#"42["message",{"room":"typing","from":"u","data":{"t":1},"ts":5}]"#
        );
        // And it reads back with the placeholders.
        let back: Publication =
            serde_json::from_slice(&serde_json::to_vec(&p).expect("json")).expect("a publication");
        assert_eq!(back, p);
    }

    #[test]
    fn ephemeral_replies_have_one_shape() {
        let ack = Reply::ok(3, OkBody::PUBLISHED_EPHEMERAL);
        let text = encode(&ack, Format::Json).expect("json");
        assert_eq!(text.as_ref(), br#"{"id":3,"ok":{"ephemeral":true}}"#);
        let mp = encode(&ack, Format::MsgPack).expect("msgpack");
        assert_eq!(
            rmp_serde::from_slice::<Value>(&mp).expect("mp"),
            json!({"id": 3, "ok": {"ephemeral": true}})
        );
        // Socket.IO acks carry the same body.
        assert_eq!(
            serde_json::to_value(OkBody::PUBLISHED_EPHEMERAL).expect("json"),
            json!({"ephemeral": true})
        );
        let joined = |ephemeral| OkBody::Joined {
            room: "r".into(),
            offset: 0,
            epoch: "e".into(),
            members: Vec::new(),
            recovered: None,
            missed: None,
            ephemeral,
        };
        assert_eq!(
            serde_json::to_value(joined(true)).expect("json"),
            json!({"room": "r", "offset": 0, "epoch": "e", "members": [], "ephemeral": true})
        );
        assert!(serde_json::to_value(joined(false))
            .expect("json")
            .get("ephemeral")
            .is_none());
    }
}
