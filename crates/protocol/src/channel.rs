//! The Redis Cluster shard channels nodes talk through: the names both sides must agree on.
//! The publishing side (room-state's publish script, and the fan-out's own publishes) and the
//! subscribing side (the fan-out) both name channels here, and nowhere else.
//!
//! | channel | carries |
//! |---|---|
//! | `rc:{r:ROOM}:ch` | the room's [`Envelope`](crate::envelope::Envelope)s |
//! | `rc:{ctl}:ch` | node-wide envelopes (`disconnect_user`) |
//! | `rc:{probe:NODE:N}:ch` | a node's self-probes, one channel per shard |
//!
//! A room channel carries the hash tag `{r:ROOM}`, the same as the room's keys, so it lives in
//! the room's slot: the publish script may only SPUBLISH inside the slot of the keys it
//! touches. Room names cannot contain `{` or `}` (see [`crate::room_name`]), so a name never
//! breaks out of its tag.

/// The channel every node listens on for node-wide envelopes.
pub const CONTROL: &str = "rc:{ctl}:ch";

/// The room's shard channel.
pub fn room(room: &str) -> String {
    format!("rc:{{r:{room}}}:ch")
}

/// The room a channel belongs to, if it is a room channel.
pub fn room_of(channel: &str) -> Option<&str> {
    channel.strip_prefix("rc:{r:")?.strip_suffix("}:ch")
}

/// A node's `n`-th candidate self-probe channel. Each candidate hashes to some slot; the node
/// picks one per shard, so that every shard's delivery path is probed.
pub fn probe(node: &str, n: u32) -> String {
    format!("rc:{{probe:{node}:{n}}}:ch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_channels_round_trip_and_others_are_not_rooms() {
        assert_eq!(room("game:42"), "rc:{r:game:42}:ch");
        assert_eq!(room_of(&room("game:42")), Some("game:42"));
        assert_eq!(room_of(CONTROL), None);
        assert_eq!(room_of(&probe("n-1", 3)), None);
    }
}
