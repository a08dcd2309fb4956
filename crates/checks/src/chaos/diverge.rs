//! The divergence check at the end of a `chaos` run: a position (room, epoch, offset) names
//! one message, so
//! - no two members, nor one member twice, may hold two different (publisher, seq) at one
//!   position, ever;
//! - an acknowledged message's offset must be where members got it: acknowledged at offset
//!   `o` while members got it only at other offsets is a divergence; and no member may hold
//!   another message at the acknowledged position, unless that epoch was then announced
//!   replaced to every member holding it (it saw the room move on from that epoch, live or as
//!   `recovered: false`): the room told them its history there was lost, the acknowledged
//!   message is lost behind an epoch change, and that is reported apart
//!   ([`Found::behind_epoch_change`]), not as a divergence.
//!
//! An acknowledgement names no epoch unless the gateway gives one (`ok.epoch`). Otherwise its
//! epoch is the one in which members got the message at the acknowledged offset, or failing
//! that (nobody got it) the publisher's own epoch when that is unambiguous (record.rs,
//! `AckedMsg::seen_epoch`); an acknowledgement with neither is not set against positions.

use super::positions::{Content, Positions};
use super::record::AckedMsg;
use serde::Serialize;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Serialize)]
pub struct Divergence {
    /// `position`: different messages at one position; `ack_offset`: acknowledged at an offset
    /// where no member got it, while members got it at other offsets.
    pub kind: &'static str,
    pub room: u64,
    /// `?` when unknown (an `ack_offset` without the epoch in the acknowledgement).
    pub epoch: String,
    pub offset: u64,
    /// The different (publisher, seq) involved.
    pub contents: Vec<(u64, u64)>,
    /// The ones of them acknowledged at this position (a `position` divergence).
    pub acked_here: Vec<(u64, u64)>,
    /// `ack_offset`: where members got the message, (epoch, offset).
    pub delivered_at: Vec<(String, u64)>,
    /// The earliest first-send time of the messages involved (Unix ms).
    pub sent_ms: u64,
}

/// One member, for the check: its room, what it got where, and the epochs it saw replaced.
pub struct Member<'a> {
    pub room: u64,
    pub got: &'a Positions,
    pub left: Vec<&'a str>,
}

/// What the check found.
#[derive(Debug, Default)]
pub struct Found {
    /// Failures, earliest first.
    pub divergences: Vec<Divergence>,
    /// A position held by a member with one message and acknowledged for another, in an epoch
    /// every holder then saw replaced (not failures).
    pub behind_epoch_change: Vec<Divergence>,
}

#[derive(Default)]
struct Slot {
    /// (member, content) for every member holding something here.
    holders: Vec<(usize, (u64, u64))>,
    acked: Vec<(u64, u64)>,
    sent_ms: u64,
}

impl Slot {
    fn contents(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = self.holders.iter().map(|h| h.1).collect();
        all.extend(&self.acked);
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Every position held by a member or an acknowledgement, and where each message was got.
#[derive(Default)]
struct Board<'a> {
    epoch_ids: HashMap<&'a str, u32>,
    epochs: Vec<&'a str>,
    slots: HashMap<(u64, u32, u64), Slot>,
    /// (room, publisher, seq) → the positions members got it at.
    got_at: HashMap<(u64, u64, u64), Vec<(u32, u64)>>,
    /// Per member: its room and the epochs it saw replaced.
    members: Vec<(u64, HashSet<u32>)>,
}

impl<'a> Board<'a> {
    fn epoch(&mut self, e: &'a str) -> u32 {
        let next = self.epochs.len() as u32;
        let id = *self.epoch_ids.entry(e).or_insert(next);
        if id == next {
            self.epochs.push(e);
        }
        id
    }

    fn slot(&mut self, room: u64, e: u32, offset: u64, sent_ms: u64) -> &mut Slot {
        let slot = self.slots.entry((room, e, offset)).or_insert_with(|| Slot {
            sent_ms,
            ..Slot::default()
        });
        slot.sent_ms = slot.sent_ms.min(sent_ms);
        slot
    }

    fn add_member(&mut self, m: &Member<'a>) {
        let left = m.left.iter().map(|e| self.epoch(e)).collect();
        let id = self.members.len();
        self.members.push((m.room, left));
        for (epoch, offset, c) in m.got.all() {
            let e = self.epoch(epoch);
            let slot = self.slot(m.room, e, offset, c.2);
            if !slot.holders.contains(&(id, (c.0, c.1))) {
                slot.holders.push((id, (c.0, c.1)));
            }
            let at = self.got_at.entry((m.room, c.0, c.1)).or_default();
            if !at.contains(&(e, offset)) {
                at.push((e, offset));
            }
        }
    }

    fn ack(&mut self, room: u64, e: u32, offset: u64, c: Content) {
        let slot = self.slot(room, e, offset, c.2);
        if !slot.acked.contains(&(c.0, c.1)) {
            slot.acked.push((c.0, c.1));
        }
    }

    /// Whether epoch `e` of `room` was announced replaced to every member holding something
    /// at the slot (to some member of the room, when nobody holds anything there).
    fn announced(&self, room: u64, e: u32, slot: &Slot) -> bool {
        if slot.holders.is_empty() {
            return (self.members.iter()).any(|(r, left)| *r == room && left.contains(&e));
        }
        (slot.holders.iter()).all(|(m, _)| self.members[*m].1.contains(&e))
    }
}

/// Sets every member's deliveries and every acknowledgement (`acks`: room, publisher, its
/// acknowledged messages) side by side.
pub fn find<'a>(
    members: &[Member<'a>],
    acks: impl Iterator<Item = (u64, u64, &'a [AckedMsg])>,
) -> Found {
    let mut board = Board::default();
    for m in members {
        board.add_member(m);
    }
    let mut found = Found::default();
    for (room, p, acked) in acks {
        for a in acked {
            if let Some(d) = place_ack(&mut board, room, p, a) {
                found.divergences.push(d);
            }
        }
    }
    for ((room, e, offset), slot) in &board.slots {
        let contents = slot.contents();
        if contents.len() < 2 {
            continue;
        }
        let d = Divergence {
            kind: "position",
            room: *room,
            epoch: board.epochs[*e as usize].to_string(),
            offset: *offset,
            contents,
            acked_here: slot.acked.clone(),
            delivered_at: Vec::new(),
            sent_ms: slot.sent_ms,
        };
        let mut held: Vec<(u64, u64)> = slot.holders.iter().map(|h| h.1).collect();
        held.sort_unstable();
        held.dedup();
        if held.len() < 2 && board.announced(*room, *e, slot) {
            found.behind_epoch_change.push(d);
        } else {
            found.divergences.push(d);
        }
    }
    for list in [&mut found.divergences, &mut found.behind_epoch_change] {
        list.sort_by_key(|d| (d.sent_ms, d.room, d.offset));
    }
    found
}

/// Sets acknowledgement `a` of publisher `p` against what members got: an `ack_offset`
/// divergence, or its position held on the board.
fn place_ack<'a>(board: &mut Board<'a>, room: u64, p: u64, a: &'a AckedMsg) -> Option<Divergence> {
    let at = (board.got_at.get(&(room, p, a.seq)).cloned()).unwrap_or_default();
    let ack_epoch = a.epoch.as_deref().map(|e| board.epoch(e));
    let here = |(e, o): &(u32, u64)| *o == a.offset && ack_epoch.is_none_or(|ae| ae == *e);
    if !at.is_empty() && !at.iter().any(here) {
        let name = |e: u32| board.epochs[e as usize].to_string();
        return Some(Divergence {
            kind: "ack_offset",
            room,
            epoch: ack_epoch.map_or_else(|| "?".to_string(), name),
            offset: a.offset,
            contents: vec![(p, a.seq)],
            acked_here: Vec::new(),
            delivered_at: at.iter().map(|(e, o)| (name(*e), *o)).collect(),
            sent_ms: a.sent,
        });
    }
    let e = ack_epoch
        .or_else(|| at.iter().find(|x| here(x)).map(|x| x.0))
        .or_else(|| a.seen_epoch.as_deref().map(|e| board.epoch(e)))?;
    board.ack(room, e, a.offset, (p, a.seq, a.sent));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u64, offset: u64, epoch: Option<&str>, seen: Option<&str>) -> AckedMsg {
        AckedMsg {
            seq,
            sent: 100 + seq,
            offset,
            epoch: epoch.map(str::to_string),
            seen_epoch: seen.map(str::to_string),
        }
    }

    fn got(list: &[(&str, u64, u64, u64)]) -> Positions {
        let mut p = Positions::default();
        for (e, o, pb, s) in list {
            p.record(e, *o, (*pb, *s, 100 + s));
        }
        p
    }

    fn member<'a>(room: u64, got: &'a Positions, left: &[&'a str]) -> Member<'a> {
        Member {
            room,
            got,
            left: left.to_vec(),
        }
    }

    fn check(members: &[Member<'_>], acks: &[(u64, u64, &[AckedMsg])]) -> Found {
        find(members, acks.iter().copied())
    }

    #[test]
    fn agreeing_members_and_acks_do_not_diverge() {
        let a = got(&[("e1", 1, 0, 1), ("e1", 2, 1, 1), ("e2", 1, 0, 2)]);
        let b = got(&[("e1", 2, 1, 1), ("e2", 1, 0, 2)]);
        let acks0 = [ack(1, 1, None, Some("e1")), ack(2, 1, None, None)];
        let acks1 = [ack(1, 2, Some("e1"), None)];
        let f = check(
            &[member(0, &a, &[]), member(0, &b, &[])],
            &[(0, 0, &acks0), (0, 1, &acks1)],
        );
        assert!(f.divergences.is_empty() && f.behind_epoch_change.is_empty());
    }

    #[test]
    fn two_members_with_two_messages_at_one_position_diverge_even_behind_an_epoch_change() {
        let a = got(&[("e1", 5, 0, 1)]);
        let b = got(&[("e1", 5, 1, 1)]);
        let f = check(&[member(0, &a, &["e1"]), member(0, &b, &["e1"])], &[]);
        assert_eq!(f.divergences.len(), 1);
        let d = &f.divergences[0];
        assert_eq!(
            (d.kind, d.offset, d.contents.clone()),
            ("position", 5, vec![(0, 1), (1, 1)])
        );
        // The same offset in another room or epoch is another position.
        let c = got(&[("e2", 5, 1, 1)]);
        let f = check(
            &[member(0, &a, &[]), member(1, &b, &[]), member(0, &c, &[])],
            &[],
        );
        assert!(f.divergences.is_empty());
    }

    #[test]
    fn an_ack_at_a_position_held_by_another_message_diverges_unless_the_epoch_was_replaced() {
        // Acknowledged, lost, and its position handed to another message in the same epoch.
        let a = got(&[("e1", 5, 1, 1)]);
        let b = got(&[("e1", 5, 1, 1)]);
        let acks0 = [ack(7, 5, None, Some("e1"))];
        let f = check(
            &[member(0, &a, &[]), member(0, &b, &["e1"])],
            &[(0, 0, &acks0)],
        );
        assert_eq!(f.divergences.len(), 1);
        assert_eq!(f.divergences[0].acked_here, vec![(0, 7)]);
        // Every holder then saw e1 replaced: lost behind an epoch change, reported apart.
        let f = check(
            &[member(0, &a, &["e1"]), member(0, &b, &["e1"])],
            &[(0, 0, &acks0)],
        );
        assert_eq!((f.divergences.len(), f.behind_epoch_change.len()), (0, 1));
        // Two acknowledgements at one position, nobody got either.
        let none = Positions::default();
        let acks1 = [ack(3, 9, None, Some("e1"))];
        assert!(check(&[], &[(0, 0, &acks0), (0, 1, &acks1)])
            .divergences
            .is_empty());
        let acks1 = [ack(3, 5, None, Some("e1"))];
        assert_eq!(
            check(&[], &[(0, 0, &acks0), (0, 1, &acks1)])
                .divergences
                .len(),
            1
        );
        let f = check(
            &[member(0, &none, &["e1"])],
            &[(0, 0, &acks0), (0, 1, &acks1)],
        );
        assert_eq!((f.divergences.len(), f.behind_epoch_change.len()), (0, 1));
        // Without a known epoch an acknowledgement is not placed.
        let acks1 = [ack(3, 5, None, None)];
        assert!(check(&[member(0, &a, &[])], &[(0, 1, &acks1)])
            .divergences
            .is_empty());
    }

    #[test]
    fn an_ack_at_the_wrong_offset_diverges() {
        let a = got(&[("e1", 4, 0, 7)]);
        let acks0 = [ack(7, 5, None, Some("e1"))];
        let f = check(&[member(0, &a, &["e1"])], &[(0, 0, &acks0)]);
        assert_eq!(
            (f.divergences.len(), f.divergences[0].kind),
            (1, "ack_offset")
        );
        assert_eq!(f.divergences[0].delivered_at, vec![("e1".to_string(), 4)]);
        // A retry applied again in a new epoch: acknowledged where it was got the second time.
        let b = got(&[("e1", 4, 0, 7), ("e2", 1, 0, 7)]);
        let acks0 = [ack(7, 1, None, None)];
        assert!(check(&[member(0, &b, &["e1"])], &[(0, 0, &acks0)])
            .divergences
            .is_empty());
    }
}
