//! The divergence check at the end of a `chaos` run: a position (room, epoch, offset) names
//! one message, so
//! - no two members, nor one member twice, may hold two different (publisher, seq) at one
//!   position;
//! - an acknowledged message's offset must be where members got it: acknowledged at offset
//!   `o` while members got it only at other offsets is a divergence; and no member may hold
//!   another message at the acknowledged position.
//!
//! An acknowledgement names no epoch unless the gateway gives one (`ok.epoch`). Otherwise its
//! epoch is the one in which members got the message at the acknowledged offset, or failing
//! that (nobody got it) the publisher's own epoch when that is unambiguous (record.rs,
//! `AckedMsg::seen_epoch`); an acknowledgement with neither is not set against positions. A
//! position in an epoch that a member later saw replaced is still a position: a new epoch
//! never reuses one, so "behind an epoch change" excuses loss, never two messages at one place.

use super::positions::{Content, Positions};
use super::record::AckedMsg;
use serde::Serialize;
use std::collections::HashMap;

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
    /// Whether an acknowledgement is among them (a `position` divergence).
    pub acked: bool,
    /// `ack_offset`: where members got the message, (epoch, offset).
    pub delivered_at: Vec<(String, u64)>,
    /// The earliest first-send time of the messages involved (Unix ms).
    pub sent_ms: u64,
}

#[derive(Default)]
struct Slot {
    contents: Vec<(u64, u64)>,
    sent_ms: u64,
    acked: bool,
}

/// Every position held by a member or an acknowledgement, and where each message was got.
#[derive(Default)]
struct Board<'a> {
    epoch_ids: HashMap<&'a str, u32>,
    epochs: Vec<&'a str>,
    slots: HashMap<(u64, u32, u64), Slot>,
    /// (room, publisher, seq) → the positions members got it at.
    got_at: HashMap<(u64, u64, u64), Vec<(u32, u64)>>,
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

    fn hold(&mut self, room: u64, e: u32, offset: u64, c: Content, acked: bool) {
        let slot = self.slots.entry((room, e, offset)).or_insert_with(|| Slot {
            sent_ms: c.2,
            ..Slot::default()
        });
        if !slot.contents.contains(&(c.0, c.1)) {
            slot.contents.push((c.0, c.1));
            slot.sent_ms = slot.sent_ms.min(c.2);
            slot.acked |= acked;
        }
    }

    fn member_got(&mut self, room: u64, e: u32, offset: u64, c: Content) {
        self.hold(room, e, offset, c, false);
        let at = self.got_at.entry((room, c.0, c.1)).or_default();
        if !at.contains(&(e, offset)) {
            at.push((e, offset));
        }
    }
}

/// Every divergence, earliest first: `members` are (room, what the member got), `acks` are
/// (room, publisher, its acknowledged messages).
pub fn find<'a>(
    members: impl Iterator<Item = (u64, &'a Positions)>,
    acks: impl Iterator<Item = (u64, u64, &'a [AckedMsg])>,
) -> Vec<Divergence> {
    let mut board = Board::default();
    for (room, positions) in members {
        for (epoch, offset, content) in positions.all() {
            let e = board.epoch(epoch);
            board.member_got(room, e, offset, content);
        }
    }
    let mut out = Vec::new();
    for (room, p, acked) in acks {
        for a in acked {
            if let Some(d) = place_ack(&mut board, room, p, a) {
                out.push(d);
            }
        }
    }
    for ((room, e, offset), slot) in &board.slots {
        if slot.contents.len() > 1 {
            let mut contents = slot.contents.clone();
            contents.sort_unstable();
            out.push(Divergence {
                kind: "position",
                room: *room,
                epoch: board.epochs[*e as usize].to_string(),
                offset: *offset,
                contents,
                acked: slot.acked,
                delivered_at: Vec::new(),
                sent_ms: slot.sent_ms,
            });
        }
    }
    out.sort_by_key(|d| (d.sent_ms, d.room, d.offset));
    out
}

/// Sets acknowledgement `a` of publisher `p` against what members got: an `ack_offset`
/// divergence, or its position held on the board.
fn place_ack<'a>(board: &mut Board<'a>, room: u64, p: u64, a: &'a AckedMsg) -> Option<Divergence> {
    let at = board
        .got_at
        .get(&(room, p, a.seq))
        .cloned()
        .unwrap_or_default();
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
            acked: true,
            delivered_at: at.iter().map(|(e, o)| (name(*e), *o)).collect(),
            sent_ms: a.sent,
        });
    }
    let e = ack_epoch
        .or_else(|| at.iter().find(|x| here(x)).map(|x| x.0))
        .or_else(|| a.seen_epoch.as_deref().map(|e| board.epoch(e)))?;
    board.hold(room, e, a.offset, (p, a.seq, a.sent), true);
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

    fn member(got: &[(&str, u64, u64, u64)]) -> Positions {
        let mut p = Positions::default();
        for (e, o, pb, s) in got {
            p.record(e, *o, (*pb, *s, 100 + s));
        }
        p
    }

    #[test]
    fn agreeing_members_and_acks_do_not_diverge() {
        let a = member(&[("e1", 1, 0, 1), ("e1", 2, 1, 1), ("e2", 1, 0, 2)]);
        let b = member(&[("e1", 2, 1, 1), ("e2", 1, 0, 2)]);
        let acks0 = [ack(1, 1, None, Some("e1")), ack(2, 1, None, None)];
        let acks1 = [ack(1, 2, Some("e1"), None)];
        let members = [(0, &a), (0, &b)].into_iter();
        let acks = [(0, 0, &acks0[..]), (0, 1, &acks1[..])].into_iter();
        assert!(find(members, acks).is_empty());
    }

    #[test]
    fn two_messages_at_one_position_diverge() {
        let a = member(&[("e1", 5, 0, 1)]);
        let b = member(&[("e1", 5, 1, 1)]);
        let d = find([(0, &a), (0, &b)].into_iter(), std::iter::empty());
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].kind, d[0].offset, d[0].contents.clone()),
            ("position", 5, vec![(0, 1), (1, 1)])
        );
        // The same offset in another room or epoch is another position.
        let c = member(&[("e2", 5, 1, 1)]);
        assert!(find([(0, &a), (1, &b), (0, &c)].into_iter(), std::iter::empty()).is_empty());
    }

    #[test]
    fn an_ack_at_a_position_held_by_another_message_diverges() {
        // Acknowledged, lost, and its position handed to another message in the same epoch.
        let a = member(&[("e1", 5, 1, 1)]);
        let acks0 = [ack(7, 5, None, Some("e1"))];
        let d = find([(0, &a)].into_iter(), [(0, 0, &acks0[..])].into_iter());
        assert_eq!((d.len(), d[0].kind, d[0].acked), (1, "position", true));
        // Two acknowledgements at one position, nobody got either.
        let acks1 = [ack(3, 9, None, Some("e1"))];
        let d = find(
            std::iter::empty(),
            [(0, 0, &acks0[..]), (0, 1, &acks1[..])].into_iter(),
        );
        assert!(d.is_empty(), "different offsets");
        let acks1 = [ack(3, 5, None, Some("e1"))];
        let d = find(
            std::iter::empty(),
            [(0, 0, &acks0[..]), (0, 1, &acks1[..])].into_iter(),
        );
        assert_eq!(d.len(), 1);
        // Without a known epoch it is not placed.
        let acks1 = [ack(3, 5, None, None)];
        assert!(find([(0, &a)].into_iter(), [(0, 1, &acks1[..])].into_iter()).is_empty());
    }

    #[test]
    fn an_ack_at_the_wrong_offset_diverges() {
        let a = member(&[("e1", 4, 0, 7)]);
        let acks0 = [ack(7, 5, None, Some("e1"))];
        let d = find([(0, &a)].into_iter(), [(0, 0, &acks0[..])].into_iter());
        assert_eq!((d.len(), d[0].kind), (1, "ack_offset"));
        assert_eq!(d[0].delivered_at, vec![("e1".to_string(), 4)]);
        // A retry re-applied in a new epoch: acknowledged where it was got the second time.
        let b = member(&[("e1", 4, 0, 7), ("e2", 1, 0, 7)]);
        let acks0 = [ack(7, 1, None, None)];
        assert!(find([(0, &b)].into_iter(), [(0, 0, &acks0[..])].into_iter()).is_empty());
    }
}
