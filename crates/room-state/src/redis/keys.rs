//! The key layout. Every key and the channel of one room share the hash tag `{r:<room>}`, so a
//! room lives in one slot and one Lua script can touch all of it. Room names cannot contain
//! `{` or `}` (see `protocol::room_name`), so a name never breaks out of its tag. The channel
//! is named by `protocol::channel`, which the subscribing side uses too; the test below holds
//! it to the keys' slot.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `rc:{r:ROOM}:m` | hash | `epoch`, `offset`, `max`, `hist` (0: ephemeral), `ttl` (ms), `created`, `seq` |
//! | `rc:{r:ROOM}:mem` | sorted set | member conn ids, scored by join order |
//! | `rc:{r:ROOM}:who` | hash | conn id → `user\nnode` |
//! | `rc:{r:ROOM}:h` | stream | history; entry id `<offset>-0`, fields `f` (from), `d` (data JSON), `t` (ts) |
//! | `rc:{r:ROOM}:id:KEY` | string, PX = idempotency window | `epoch\toffset` of a publish's key |
//! | `rc:{r:ROOM}:ch` | shard channel | MessagePack envelopes for the room (`protocol::channel`); an ephemeral room's messages with offset 0 and epoch `""` |
//! | `rc:{rooms:K}` | sorted set | room → expiry ms (`+inf` while occupied); K = 0..15 |
//! | `rc:{sleep:K}` | sorted set | while the archive is on: empty room → expiry ms, what the sleep sweep of archive shard K reads (not the rooms index: a node without the archive trims that one); K = 0..15 |
//! | `rc:{n:NODE}:mem` | set | `room\nconn` of every member held by a node |
//! | `rc:{n:NODE}:users` | set | `user\nconn` of every user connection held by a node |
//! | `rc:{u:USER}:c` | hash | conn id → `node\ttransport\tsince` (the user registry) |
//! | `rc:nodes` | hash | node id → `addr\tconnections\tstarted\texpires` |
//! | `rc:{l:KEY}:w` | sorted set | sliding-window log (rate limits) |
//! | `rc:{l:KEY}:b` | hash | token bucket `tokens`, `ts` |
//! | `rc:{tc:K}:c` | hash | second → room creations; K = 0..7 |
//! | `rc:{arch:K}` | sorted set | dirty rooms (messages not archived yet) → when marked; K = 0..15 (`archive_feed::archive_shard`) |
//! | `rc:{lease:NAME}` | string, PX | a lease's holder (an archive shard, retention, a webhook queue) |
//! | `rc:{q:NAME}` | stream | a webhook event queue (`EventQueue`): field `e`, the event's JSON |
//!
//! The meta hash also holds, when the archive is on: `arch`, the last archived offset of the
//! epoch, and `ad`, when the room was marked dirty.

/// Shards of the active-rooms index.
pub const ROOM_INDEX_SHARDS: u64 = 16;
/// Shards of the room-creation counter.
pub const CREATION_SHARDS: u64 = 8;

pub struct RoomKeys {
    pub meta: String,
    pub members: String,
    pub who: String,
    pub history: String,
    pub channel: String,
}

impl RoomKeys {
    pub fn new(room: &str) -> RoomKeys {
        RoomKeys {
            meta: format!("rc:{{r:{room}}}:m"),
            members: format!("rc:{{r:{room}}}:mem"),
            who: format!("rc:{{r:{room}}}:who"),
            history: format!("rc:{{r:{room}}}:h"),
            channel: protocol::channel::room(room),
        }
    }

    /// Where a publish's idempotency key is remembered: in the room's slot, so the publish
    /// script reads and writes it atomically with the offset.
    pub fn idempotency(&self, room: &str, key: &str) -> String {
        format!("rc:{{r:{room}}}:id:{key}")
    }

    pub fn all(&self) -> Vec<String> {
        vec![
            self.meta.clone(),
            self.members.clone(),
            self.who.clone(),
            self.history.clone(),
        ]
    }
}

/// Spreads names over index shards; stable across processes and versions, because every node
/// must find a room in the same shard.
pub fn shard_of(name: &str, shards: u64) -> u64 {
    protocol::hash::fnv1a(name.as_bytes()) % shards
}

pub fn room_index(room: &str) -> String {
    format!("rc:{{rooms:{}}}", shard_of(room, ROOM_INDEX_SHARDS))
}

pub fn room_index_shard(k: u64) -> String {
    format!("rc:{{rooms:{k}}}")
}

/// The empty rooms of archive shard `k`, due to sleep at their score (see the table above).
pub fn sleep_index_shard(k: u64) -> String {
    format!("rc:{{sleep:{k}}}")
}

pub fn sleep_index(room: &str) -> String {
    sleep_index_shard(shard_of(room, ROOM_INDEX_SHARDS))
}

pub fn node_members(node: &str) -> String {
    format!("rc:{{n:{node}}}:mem")
}

/// The user connections a node holds (`users`), found again when the node is reaped.
pub fn node_users(node: &str) -> String {
    format!("rc:{{n:{node}}}:users")
}

/// A user's live connections on every node. A user name holding `}` only moves the key to
/// another slot: the key is used alone.
pub fn user_conns(user: &str) -> String {
    format!("rc:{{u:{user}}}:c")
}

pub const NODES: &str = "rc:nodes";

/// Node id → when a peer claimed it as dead; in the slot of [`NODES`] (same hash tag).
pub const NODES_REAPED: &str = "{rc:nodes}:reaped";

pub fn window(key: &str) -> String {
    format!("rc:{{l:{key}}}:w")
}

pub fn bucket(key: &str) -> String {
    format!("rc:{{l:{key}}}:b")
}

/// A saved Socket.IO socket state (`sessions::SessionStore`), alone in its slot.
pub fn session(key: &str) -> String {
    format!("rc:{{s:{key}}}")
}

/// The dirty-rooms index shard `k` of the archiver.
pub fn archive_dirty(k: u64) -> String {
    format!("rc:{{arch:{k}}}")
}

/// A webhook event queue, alone in its slot.
pub fn event_queue(name: &str) -> String {
    format!("rc:{{q:{name}}}")
}

/// A lease, alone in its slot.
pub fn lease(name: &str) -> String {
    format!("rc:{{lease:{name}}}")
}

pub fn creations(k: u64) -> String {
    format!("rc:{{tc:{k}}}:c")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_lives_in_one_slot() {
        let k = RoomKeys::new("game:42");
        let slot = fred::util::redis_keyslot(k.meta.as_bytes());
        for key in k.all().iter().chain([&k.channel]) {
            assert_eq!(fred::util::redis_keyslot(key.as_bytes()), slot, "{key}");
        }
        assert_eq!(protocol::channel::room_of(&k.channel), Some("game:42"));
    }

    #[test]
    fn shards_are_stable() {
        // Changing these moves rooms between index shards: nodes of two versions would
        // disagree on where a room is counted.
        assert_eq!(
            shard_of("game:42", ROOM_INDEX_SHARDS),
            0xc7b5_993e_8150_83a1 % 16
        );
        assert_eq!(shard_of("", CREATION_SHARDS), 0xcbf2_9ce4_8422_2325 % 8);
    }
}
