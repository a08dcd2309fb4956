//! The inter-node envelope: what crosses from one gateway node to another through the fan-out.
//!
//! Encoded as MessagePack maps (`rmp_serde::to_vec_named`) so nodes of different versions
//! tolerate added fields. A message's `data` travels as JSON text: that is what the Redis
//! publish script packs with `cmsgpack`, and it is what history stores. Byte strings travel in
//! it as `{"$bin":"<base64>"}` wrappers (see [`crate::data`]), so binary needs nothing of the
//! envelope or the script, and is checked on arrival like any data. Decoding is as
//! defensive as for client frames: a peer node or a corrupted channel can send anything.
//!
//! Wire form: a map with `t` (`message`, `presence`, `room_closed`, `disconnect_user`,
//! `user_message`, `probe`) and the variant's fields; `message` has `room, offset, epoch, from, data, ts`.
//!
//! One `message` envelope is not built by this codec: the Redis publish script builds it in
//! Lua, inside the atomic step that assigns the offset. It takes the map's names from
//! [`message`], and the test `message_names_are_the_codecs` holds those names to the codec.
//! Where an envelope travels is [`crate::channel`].

use crate::data::Data;
use crate::frame::{PresenceAction, Publication};
use serde::{Deserialize, Serialize};

/// The key of the variant tag in every envelope map.
pub const TAG: &str = "t";

/// The names of a `message` envelope's map, for code that builds the map itself instead of
/// calling [`Envelope::encode`] (the Redis publish script). `offset` and `ts` are integers;
/// the others are strings, `data` being the payload as JSON text.
pub mod message {
    /// The value of [`super::TAG`].
    pub const TAG_VALUE: &str = "message";
    pub const ROOM: &str = "room";
    pub const OFFSET: &str = "offset";
    pub const EPOCH: &str = "epoch";
    pub const FROM: &str = "from";
    pub const DATA: &str = "data";
    pub const TS: &str = "ts";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Wire", into = "Wire")]
pub enum Envelope {
    /// A publication in a room, with its offset and epoch.
    Message(Publication),
    /// A member joined or left a room.
    Presence {
        room: String,
        action: PresenceAction,
        user: String,
        conn_id: String,
    },
    /// The room was closed (server API or expiry); local members are told and removed.
    RoomClosed { room: String, reason: String },
    /// Disconnect every connection of a user, on every node (server API).
    DisconnectUser { user: String },
    /// An event for every connection of a user, on every node (server API); not stored.
    UserMessage { user: String, data: Data, ts: u64 },
    /// A node's pub/sub self-probe, sent to itself through one shard.
    Probe { node: String, seq: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Wire {
    Message {
        room: String,
        offset: u64,
        epoch: String,
        from: String,
        data: String,
        ts: u64,
    },
    Presence {
        room: String,
        action: PresenceAction,
        user: String,
        conn_id: String,
    },
    RoomClosed {
        room: String,
        reason: String,
    },
    DisconnectUser {
        user: String,
    },
    UserMessage {
        user: String,
        data: String,
        ts: u64,
    },
    Probe {
        node: String,
        seq: u64,
    },
}

impl From<Envelope> for Wire {
    fn from(e: Envelope) -> Wire {
        match e {
            Envelope::Message(p) => Wire::Message {
                room: p.room,
                offset: p.offset,
                epoch: p.epoch,
                from: p.from,
                data: p.data.as_json().to_string(),
                ts: p.ts,
            },
            Envelope::Presence {
                room,
                action,
                user,
                conn_id,
            } => Wire::Presence {
                room,
                action,
                user,
                conn_id,
            },
            Envelope::RoomClosed { room, reason } => Wire::RoomClosed { room, reason },
            Envelope::DisconnectUser { user } => Wire::DisconnectUser { user },
            Envelope::UserMessage { user, data, ts } => Wire::UserMessage {
                user,
                data: data.as_json().to_string(),
                ts,
            },
            Envelope::Probe { node, seq } => Wire::Probe { node, seq },
        }
    }
}

impl TryFrom<Wire> for Envelope {
    type Error = String;

    fn try_from(w: Wire) -> Result<Envelope, String> {
        Ok(match w {
            Wire::Message {
                room,
                offset,
                epoch,
                from,
                data,
                ts,
            } => Envelope::Message(Publication {
                room,
                offset,
                epoch,
                from,
                data: Data::from_json_text(data).map_err(|e| e.to_string())?,
                ts,
            }),
            Wire::Presence {
                room,
                action,
                user,
                conn_id,
            } => Envelope::Presence {
                room,
                action,
                user,
                conn_id,
            },
            Wire::RoomClosed { room, reason } => Envelope::RoomClosed { room, reason },
            Wire::DisconnectUser { user } => Envelope::DisconnectUser { user },
            Wire::UserMessage { user, data, ts } => Envelope::UserMessage {
                user,
                data: Data::from_json_text(data).map_err(|e| e.to_string())?,
                ts,
            },
            Wire::Probe { node, seq } => Envelope::Probe { node, seq },
        })
    }
}

/// The envelope could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("bad envelope: {0}")]
pub struct EnvelopeError(String);

impl Envelope {
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        rmp_serde::to_vec_named(self).map_err(|e| EnvelopeError(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        // Envelope map, publication, then the payload's own levels.
        if !crate::msgpack_depth::depth_within(bytes, crate::data::MAX_DEPTH + 2) {
            return Err(EnvelopeError("nested too deeply".into()));
        }
        rmp_serde::from_slice(bytes).map_err(|e| EnvelopeError(e.to_string()))
    }

    /// The room the envelope belongs to, if it is room-scoped.
    pub fn room(&self) -> Option<&str> {
        match self {
            Envelope::Message(p) => Some(&p.room),
            Envelope::Presence { room, .. } | Envelope::RoomClosed { room, .. } => Some(room),
            Envelope::DisconnectUser { .. }
            | Envelope::UserMessage { .. }
            | Envelope::Probe { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Data;

    #[test]
    fn round_trips() {
        let envs = vec![
            Envelope::Message(Publication {
                room: "r".into(),
                offset: 3,
                epoch: "e1".into(),
                from: "u".into(),
                data: Data::from_value(&serde_json::json!({"a": [1, "x", null]})).expect("d"),
                ts: 42,
            }),
            Envelope::Presence {
                room: "r".into(),
                action: PresenceAction::Leave,
                user: "u".into(),
                conn_id: "c".into(),
            },
            Envelope::RoomClosed {
                room: "r".into(),
                reason: "closed".into(),
            },
            Envelope::DisconnectUser { user: "u".into() },
            Envelope::UserMessage {
                user: "u".into(),
                data: Data::from_value(&serde_json::json!({"n": [1, "é"]})).expect("d"),
                ts: 7,
            },
            Envelope::Probe {
                node: "n".into(),
                seq: 9,
            },
        ];
        for env in envs {
            let bytes = env.encode().expect("encode");
            assert_eq!(Envelope::decode(&bytes).expect("decode"), env);
        }
    }

    #[test]
    fn message_names_are_the_codecs() {
        // The names the publish script builds its map from are exactly the codec's.
        let env = Envelope::Message(Publication {
            room: "r".into(),
            offset: 7,
            epoch: "e".into(),
            from: "u".into(),
            data: Data::from_value(&serde_json::json!([1])).expect("d"),
            ts: 9,
        });
        let bytes = env.encode().expect("encode");
        let map: serde_json::Map<String, serde_json::Value> =
            rmp_serde::from_slice(&bytes).expect("a map");
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut names = vec![
            TAG,
            message::ROOM,
            message::OFFSET,
            message::EPOCH,
            message::FROM,
            message::DATA,
            message::TS,
        ];
        names.sort_unstable();
        assert_eq!(keys, names);
        assert_eq!(map[TAG], message::TAG_VALUE);
        assert!(map[message::OFFSET].is_u64() && map[message::TS].is_u64());
        assert_eq!(map[message::DATA], "[1]", "data travels as JSON text");
    }

    #[test]
    fn message_data_travels_as_json_text() {
        // The shape the Redis publish script packs with cmsgpack.
        let wire = serde_json::json!({"t": "message", "room": "r", "offset": 7, "epoch": "e",
            "from": "u", "data": "{\"a\":[1,2]}", "ts": 1_795_000_000_000u64});
        let bytes = rmp_serde::to_vec_named(&wire).expect("encode");
        let Envelope::Message(p) = Envelope::decode(&bytes).expect("decode") else {
            panic!("not a message")
        };
        assert_eq!((p.offset, p.data.as_json()), (7, r#"{"a":[1,2]}"#));
        let bad = rmp_serde::to_vec_named(&serde_json::json!({"t": "message", "room": "r",
            "offset": 7, "epoch": "e", "from": "u", "data": "{not json", "ts": 1}))
        .expect("encode");
        assert!(Envelope::decode(&bad).is_err());
        // Binary inside, as its wrapper; a broken wrapper is refused as a client's would be.
        let wire = serde_json::json!({"t": "message", "room": "r", "offset": 8, "epoch": "e",
            "from": "u", "data": "{\"f\":{\"$bin\":\"AAEC\"}}", "ts": 1});
        let bytes = rmp_serde::to_vec_named(&wire).expect("encode");
        let Envelope::Message(p) = Envelope::decode(&bytes).expect("decode") else {
            panic!("not a message")
        };
        assert!(p.data.has_binary());
        assert_eq!(p.data.size(), 3 + r#"{"f":}"#.len());
        let bad = rmp_serde::to_vec_named(&serde_json::json!({"t": "message", "room": "r",
            "offset": 7, "epoch": "e", "from": "u", "data": "{\"$bin\":\"!\"}", "ts": 1}))
        .expect("encode");
        assert!(Envelope::decode(&bad).is_err());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Envelope::decode(b"\xc1garbage").is_err());
        assert!(Envelope::decode(&[]).is_err());
    }
}
