//! Per-room offset continuity for adapters whose transport may lose or repeat messages
//! (Redis pub/sub is at-most-once). Pure bookkeeping; the adapter does the I/O.

use crate::history::Tail;
use protocol::frame::Publication;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

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

/// What reconciling a room with its owner's tail ([`Sequencer::reconcile`]) calls for.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// What the node delivered matches the owner (or the room is not followed).
    InSync,
    /// The owner holds messages the node has not delivered: deliver them, in this order.
    Missing(Vec<Publication>),
    /// The owner lacks an offset the node delivered, or holds other content at it: the
    /// shard lost or rewrote acknowledged history, and `epoch` must be retired.
    Diverged { epoch: String },
}

/// How many recent offsets per room keep a fingerprint, to tell a duplicate from a reuse.
const FINGERPRINTS: usize = 256;

/// One recent delivery.
#[derive(Debug, Clone, Copy)]
struct Sent {
    offset: u64,
    fingerprint: u64,
    at: Instant,
}

#[derive(Debug, Default)]
struct RoomSeq {
    epoch: String,
    last: u64,
    /// Recent deliveries, oldest first.
    recent: VecDeque<Sent>,
}

#[derive(Debug, Default)]
pub struct Sequencer {
    rooms: HashMap<String, RoomSeq>,
}

impl Sequencer {
    pub fn new() -> Sequencer {
        Sequencer::default()
    }

    /// What to do with `p`, given what its room has delivered so far. An ephemeral room's
    /// message (no offset) is always delivered: the worker does not even ask, this is the
    /// rule should anyone else.
    pub fn check(&self, p: &Publication) -> Verdict {
        if p.is_ephemeral() {
            return Verdict::Deliver;
        }
        let Some(room) = self.rooms.get(&p.room) else {
            return Verdict::Deliver;
        };
        if room.epoch != p.epoch {
            return Verdict::Deliver;
        }
        if p.offset <= room.last {
            let seen = room.recent.iter().find(|s| s.offset == p.offset);
            return match seen {
                Some(s) if s.fingerprint != p.fingerprint() => Verdict::Conflict,
                _ => Verdict::Duplicate,
            };
        }
        if p.offset == room.last + 1 {
            Verdict::Deliver
        } else {
            Verdict::Gap { after: room.last }
        }
    }

    /// Records that `p` went out. Nothing is kept of an ephemeral message: it has no
    /// position, and it must not start a sequence (its empty epoch would look like a new one).
    pub fn delivered(&mut self, p: &Publication) {
        if p.is_ephemeral() {
            return;
        }
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
        room.recent.push_back(Sent {
            offset: p.offset,
            fingerprint: p.fingerprint(),
            at: Instant::now(),
        });
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

    /// Compares what `room` delivered with `tail`, the newest messages of the room as its
    /// shard's owner holds them, read starting at `read_at`. Only deliveries made before
    /// `read_at` are judged: the read cannot know what came after it.
    ///
    /// - Same epoch: an offset the node delivered that the owner lacks (beyond its last
    ///   offset, or missing inside the span its tail covers), or holds with other content,
    ///   is [`Reconciled::Diverged`]. Otherwise the owner's messages past the node's last
    ///   offset are [`Reconciled::Missing`].
    /// - Another epoch: the node cannot tell which is newer, and retiring the owner's epoch
    ///   would be wrong if it is. When the tail holds that epoch from its first offset, the
    ///   node delivers it (members move to the new epoch with nothing skipped); otherwise the
    ///   next live message shows members the new epoch.
    pub fn reconcile(&self, room: &str, tail: &Tail, read_at: Instant) -> Reconciled {
        let Some(r) = self.rooms.get(room) else {
            return Reconciled::InSync;
        };
        if r.epoch != tail.epoch {
            let fresh: Vec<Publication> = tail
                .messages
                .iter()
                .filter(|m| m.epoch == tail.epoch)
                .cloned()
                .collect();
            let complete = fresh
                .iter()
                .enumerate()
                .all(|(i, m)| m.offset == i as u64 + 1);
            return if complete && !fresh.is_empty() {
                Reconciled::Missing(fresh)
            } else {
                Reconciled::InSync
            };
        }
        let first = tail.messages.first().map(|m| m.offset);
        for sent in r.recent.iter().filter(|s| s.at < read_at) {
            let diverged = if sent.offset > tail.offset {
                true
            } else if first.is_some_and(|f| sent.offset >= f) {
                tail.messages
                    .iter()
                    .find(|m| m.offset == sent.offset)
                    .is_none_or(|m| m.fingerprint() != sent.fingerprint)
            } else {
                false
            };
            if diverged {
                return Reconciled::Diverged {
                    epoch: r.epoch.clone(),
                };
            }
        }
        let missing: Vec<Publication> = tail
            .messages
            .iter()
            .filter(|m| m.epoch == r.epoch && m.offset > r.last)
            .cloned()
            .collect();
        if missing.is_empty() {
            Reconciled::InSync
        } else {
            Reconciled::Missing(missing)
        }
    }

    /// The last offset delivered in a room, with its epoch.
    #[cfg(test)]
    fn last(&self, room: &str) -> Option<(&str, u64)> {
        self.rooms.get(room).map(|r| (r.epoch.as_str(), r.last))
    }

    /// The node no longer follows the room.
    /// Whether the room has a starting point (a join's hint, or a delivery).
    pub fn knows(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

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

    fn with_data(offset: u64, data: &str) -> Publication {
        Publication {
            data: Data::from_value(&serde_json::json!(data)).expect("data"),
            ..p(offset, "e")
        }
    }

    fn tail(epoch: &str, offset: u64, messages: Vec<Publication>) -> Tail {
        Tail {
            epoch: epoch.into(),
            offset,
            messages,
        }
    }

    #[test]
    fn reconcile_delivers_what_the_owner_has_and_the_node_missed() {
        let mut s = Sequencer::new();
        for o in 1..=3 {
            s.delivered(&p(o, "e"));
        }
        let now = Instant::now();
        let owner = tail("e", 5, (1..=5).map(|o| p(o, "e")).collect());
        assert_eq!(
            s.reconcile("r", &owner, now),
            Reconciled::Missing(vec![p(4, "e"), p(5, "e")])
        );
        let same = tail("e", 3, (2..=3).map(|o| p(o, "e")).collect());
        assert_eq!(s.reconcile("r", &same, now), Reconciled::InSync);
        assert_eq!(
            s.reconcile("other", &owner, now),
            Reconciled::InSync,
            "a room the node does not follow"
        );
    }

    #[test]
    fn reconcile_retires_when_the_owner_lacks_or_rewrote_a_delivered_offset() {
        let mut s = Sequencer::new();
        for o in 1..=3 {
            s.delivered(&p(o, "e"));
        }
        let now = Instant::now();
        let shorter = tail("e", 2, (1..=2).map(|o| p(o, "e")).collect());
        let diverged = Reconciled::Diverged { epoch: "e".into() };
        assert_eq!(s.reconcile("r", &shorter, now), diverged);
        let rewritten = tail("e", 4, vec![p(2, "e"), with_data(3, "other"), p(4, "e")]);
        assert_eq!(s.reconcile("r", &rewritten, now), diverged);
        let empty = tail("e", 1, Vec::new());
        assert_eq!(s.reconcile("r", &empty, now), diverged, "history off");
        // Offsets older than the owner's tail are not judged.
        let newer = tail("e", 4, vec![p(3, "e"), p(4, "e")]);
        assert_eq!(
            s.reconcile("r", &newer, now),
            Reconciled::Missing(vec![p(4, "e")])
        );
    }

    #[test]
    fn reconcile_judges_only_deliveries_before_the_read() {
        let mut s = Sequencer::new();
        s.delivered(&p(1, "e"));
        let read_at = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        // Delivered after the owner was read: the tail cannot hold it yet.
        s.delivered(&p(2, "e"));
        let before = tail("e", 1, vec![p(1, "e")]);
        assert_eq!(s.reconcile("r", &before, read_at), Reconciled::InSync);
        assert_eq!(
            s.reconcile("r", &before, Instant::now()),
            Reconciled::Diverged { epoch: "e".into() }
        );
    }

    #[test]
    fn reconcile_across_epochs_delivers_only_a_complete_new_epoch() {
        let mut s = Sequencer::new();
        s.delivered(&p(7, "e"));
        let now = Instant::now();
        let complete = tail("f", 2, vec![p(1, "f"), p(2, "f")]);
        assert_eq!(
            s.reconcile("r", &complete, now),
            Reconciled::Missing(vec![p(1, "f"), p(2, "f")])
        );
        let partial = tail("f", 3, vec![p(2, "f"), p(3, "f")]);
        assert_eq!(s.reconcile("r", &partial, now), Reconciled::InSync);
    }

    #[test]
    fn ephemeral_messages_are_not_sequenced() {
        let mut s = Sequencer::new();
        s.delivered(&p(4, "e"));
        let ephemeral = p(Publication::EPHEMERAL_OFFSET, "");
        for _ in 0..3 {
            assert_eq!(s.check(&ephemeral), Verdict::Deliver, "never a duplicate");
            s.delivered(&ephemeral);
        }
        assert_eq!(
            s.last("r"),
            Some(("e", 4)),
            "the room's sequence is untouched"
        );
        assert!(s.rooms.get("r").is_some_and(|r| r.recent.len() == 1));
        assert!(!Sequencer::new().knows("r"));
        let mut fresh = Sequencer::new();
        fresh.delivered(&ephemeral);
        assert!(!fresh.knows("r"), "no fingerprint, no starting point");
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
