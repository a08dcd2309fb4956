//! Per-room offset continuity for adapters whose transport may lose or repeat messages
//! (Redis pub/sub is at-most-once). Pure bookkeeping; the adapter does the I/O.

use protocol::frame::Publication;
use protocol::hash::Fnv1a;
use std::collections::HashMap;

/// What to do with an incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The next one (or the first one, or a new epoch): deliver it.
    Deliver,
    /// Already delivered: drop it.
    Duplicate,
    /// Offsets after `after` and before this message are missing: repair them from history
    /// first, then deliver this one.
    Gap { after: u64 },
    /// An offset already delivered came again with different content: the room's state was
    /// rolled back (a primary lost writes in a hard failover) and offsets are being reused.
    /// The epoch must be retired; the message is not delivered under a reused offset.
    Conflict,
}

/// How many recent offsets per room keep a fingerprint, to tell a duplicate from a reuse.
const FINGERPRINTS: usize = 256;

#[derive(Debug, Default)]
struct RoomSeq {
    epoch: String,
    last: u64,
    /// (offset, fingerprint) of recent deliveries, oldest first.
    recent: std::collections::VecDeque<(u64, u64)>,
}

#[derive(Debug, Default)]
pub struct Sequencer {
    rooms: HashMap<String, RoomSeq>,
}

/// Identifies a message's content: who, when, what. A separator between the parts keeps
/// `("ab", "c")` apart from `("a", "bc")`.
fn fingerprint(p: &Publication) -> u64 {
    let mut h = Fnv1a::new();
    for part in [
        p.from.as_bytes(),
        &p.ts.to_le_bytes(),
        p.data.as_json().as_bytes(),
    ] {
        h.write(part).write(&[0xff]);
    }
    h.finish()
}

impl Sequencer {
    pub fn new() -> Sequencer {
        Sequencer::default()
    }

    /// What to do with `p`, given what its room has delivered so far.
    pub fn check(&self, p: &Publication) -> Verdict {
        let Some(room) = self.rooms.get(&p.room) else {
            return Verdict::Deliver;
        };
        if room.epoch != p.epoch {
            return Verdict::Deliver;
        }
        if p.offset <= room.last {
            let seen = room.recent.iter().find(|(o, _)| *o == p.offset);
            return match seen {
                Some((_, f)) if *f != fingerprint(p) => Verdict::Conflict,
                _ => Verdict::Duplicate,
            };
        }
        if p.offset == room.last + 1 {
            Verdict::Deliver
        } else {
            Verdict::Gap { after: room.last }
        }
    }

    /// Records that `p` went out.
    pub fn delivered(&mut self, p: &Publication) {
        let room = self.rooms.entry(p.room.clone()).or_default();
        if room.epoch != p.epoch {
            *room = RoomSeq {
                epoch: p.epoch.clone(),
                last: p.offset,
                recent: Default::default(),
            };
        } else {
            room.last = room.last.max(p.offset);
        }
        room.recent.push_back((p.offset, fingerprint(p)));
        while room.recent.len() > FINGERPRINTS {
            room.recent.pop_front();
        }
    }

    /// A member joined at `(epoch, offset)`. Sets the starting point when the room had none,
    /// or when the room started a new epoch.
    pub fn hint(&mut self, room: &str, epoch: &str, offset: u64) {
        match self.rooms.get_mut(room) {
            Some(r) if r.epoch == epoch => {}
            _ => {
                self.rooms.insert(
                    room.to_string(),
                    RoomSeq {
                        epoch: epoch.to_string(),
                        last: offset,
                        recent: Default::default(),
                    },
                );
            }
        }
    }

    /// The last offset delivered in a room, with its epoch.
    #[cfg(test)]
    fn last(&self, room: &str) -> Option<(&str, u64)> {
        self.rooms.get(room).map(|r| (r.epoch.as_str(), r.last))
    }

    /// The node no longer follows the room.
    pub fn forget(&mut self, room: &str) {
        self.rooms.remove(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Data;

    fn p(offset: u64, epoch: &str) -> Publication {
        Publication {
            room: "r".into(),
            offset,
            epoch: epoch.into(),
            from: "u".into(),
            data: Data::from_value(&serde_json::json!(offset)).expect("data"),
            ts: 0,
        }
    }

    #[test]
    fn continuity() {
        let mut s = Sequencer::new();
        assert_eq!(s.check(&p(5, "e")), Verdict::Deliver);
        s.delivered(&p(5, "e"));
        assert_eq!(s.check(&p(6, "e")), Verdict::Deliver);
        s.delivered(&p(6, "e"));
        assert_eq!(s.check(&p(6, "e")), Verdict::Duplicate);
        assert_eq!(s.check(&p(3, "e")), Verdict::Duplicate);
        assert_eq!(s.check(&p(9, "e")), Verdict::Gap { after: 6 });
        assert_eq!(
            s.check(&p(1, "f")),
            Verdict::Deliver,
            "a new epoch restarts"
        );
        s.delivered(&p(1, "f"));
        assert_eq!(s.last("r"), Some(("f", 1)));
    }

    #[test]
    fn hints_set_the_starting_point_once() {
        let mut s = Sequencer::new();
        s.hint("r", "e", 10);
        assert_eq!(s.check(&p(12, "e")), Verdict::Gap { after: 10 });
        s.hint("r", "e", 3);
        assert_eq!(
            s.last("r"),
            Some(("e", 10)),
            "a later, lower hint changes nothing"
        );
        s.hint("r", "g", 2);
        assert_eq!(
            s.last("r"),
            Some(("g", 2)),
            "a new epoch replaces the old one"
        );
        s.forget("r");
        assert_eq!(s.last("r"), None);
    }
}
