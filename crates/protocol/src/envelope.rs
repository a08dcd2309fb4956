//! The inter-node envelope: what crosses from one gateway node to another through the fan-out.
//!
//! Encoded as MessagePack maps (`rmp_serde::to_vec_named`) so nodes of different versions
//! tolerate added fields. Decoding is as defensive as for client frames: a peer node or a
//! corrupted channel can send anything.

use crate::frame::{PresenceAction, Publication};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
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
            Envelope::DisconnectUser { .. } => None,
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
        ];
        for env in envs {
            let bytes = env.encode().expect("encode");
            assert_eq!(Envelope::decode(&bytes).expect("decode"), env);
        }
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Envelope::decode(b"\xc1garbage").is_err());
        assert!(Envelope::decode(&[]).is_err());
    }
}
