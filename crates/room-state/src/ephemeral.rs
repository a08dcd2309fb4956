//! Which rooms a node knows to be ephemeral (`history_size` 0), so that the gateway can take
//! the unsequenced publish path without asking the backend first.

use parking_lot::RwLock;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The most rooms [`EphemeralRooms`] remembers before it starts over.
const MAX: usize = 65_536;

/// The ephemeral rooms a backend has seen on this node: learned from the replies it gets
/// anyway (create, join, an ephemeral publish), forgotten on close, when a room empties or
/// expires, and when a join finds the room is not ephemeral (re-created under its name).
///
/// Why a set at all: the gateway must know a room is ephemeral before it publishes, to make
/// one plain SPUBLISH instead of running the publish script; asking Redis would be the very
/// round trip this saves. Why it may be wrong without harm: it is only a shortcut. A room
/// missing from it goes through `RoomStore::publish`, which reads the room's own settings
/// and publishes an ephemeral room's message unsequenced all the same (then the room is
/// learned again); and the gateway takes the shortcut only for a connection it holds in the
/// room, whose join refreshed the entry. So the bound can simply start over when reached.
#[derive(Debug, Default)]
pub(crate) struct EphemeralRooms {
    rooms: RwLock<HashSet<String>>,
    /// How many rooms `rooms` holds: when none, [`EphemeralRooms::contains`] (asked on every
    /// publish) takes no lock at all. A stale read only means a miss, which is safe.
    len: AtomicUsize,
}

impl EphemeralRooms {
    pub(crate) fn contains(&self, room: &str) -> bool {
        self.len.load(Ordering::Relaxed) > 0 && self.rooms.read().contains(room)
    }

    /// Records what a reply said of a room. Takes the write lock only when that changes
    /// something, so that publishes never wait on it.
    pub(crate) fn learn(&self, room: &str, ephemeral: bool) {
        if self.contains(room) == ephemeral {
            return;
        }
        let mut rooms = self.rooms.write();
        if ephemeral {
            if rooms.len() >= MAX {
                rooms.clear();
            }
            rooms.insert(room.to_string());
        } else {
            rooms.remove(room);
        }
        self.len.store(rooms.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_forgets_and_starts_over_when_full() {
        let known = EphemeralRooms::default();
        assert!(!known.contains("a"));
        known.learn("a", true);
        known.learn("a", true);
        assert!(known.contains("a") && !known.contains("b"));
        known.learn("a", false);
        assert!(!known.contains("a"));
        for i in 0..MAX {
            known.learn(&i.to_string(), true);
        }
        known.learn("last", true);
        assert!(known.contains("last") && !known.contains("0"));
        assert_eq!(known.len.load(Ordering::Relaxed), 1);
    }
}
