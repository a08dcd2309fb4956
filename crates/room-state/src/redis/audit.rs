//! The acknowledgement audit: after a room's slot changes owner, the node checks that the new
//! owner holds what the old one acknowledged to this node's publishers, and retires the room's
//! epoch when it does not.
//!
//! Why the publishing node must check: without `WAIT`, a primary acknowledges a write before a
//! replica has it. When that primary then fails, the promoted replica never had the write, and
//! gives the acknowledged offset to another message. If some gateway delivered the lost message,
//! its sequencer sees the offset come again with other content and retires the epoch. If none
//! did, only the node that relayed the acknowledgement knows it; this is how it finds out. The
//! case is real: a primary paused past `cluster-node-timeout` (SIGSTOP, a VM stall) runs one
//! event-loop batch after it resumes, before it learns it was replaced or that its replica link
//! is gone, and that batch can acknowledge a publish nobody else will ever hold.
//!
//! How:
//! - every acknowledged publish is kept as an [`Ack`] (position and content fingerprint) in a
//!   ring per primary that answered it, for [`KEEP`] and at most [`PER_PRIMARY`] per primary.
//!   A ring per primary keeps a failing primary's last acknowledgements, the ones at risk, from
//!   being pushed out by traffic to the healthy ones;
//! - when the slot map changes, or when an acknowledgement came from a primary that the map no
//!   longer names as its slot's owner, the acknowledgements whose slot moved become suspects;
//! - a suspect is read back from the room's current owner: the same fingerprint at the same
//!   (epoch, offset) clears it; another message there, or an offset beyond the room's last, is a
//!   lost acknowledgement, and the epoch is retired (members see a new epoch and
//!   `recovered: false`, never a silent gap). A room in another epoch already told its members;
//!   an offset trimmed out of history cannot be checked and is let go (counted in the log).
//!   A suspect whose read fails is tried again on the next pass.

use super::RedisState;
use crate::error::StateError;
use crate::rooms::RoomStore;
use parking_lot::Mutex;
use protocol::frame::Publication;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long an acknowledgement is kept. A primary's failure is seen by the router within
/// `cluster-node-timeout` plus an election plus a slot-map refresh (2 s): well under this.
const KEEP: Duration = Duration::from_secs(60);

/// How many acknowledgements are kept per primary.
const PER_PRIMARY: usize = 16_384;

/// How often the audit looks for suspects when the slot map did not change.
const TICK: Duration = Duration::from_secs(1);

/// The most offsets one history read covers; older suspects of the room are let go.
const MAX_READ: u64 = 1_000;

/// One acknowledged publish.
#[derive(Debug, Clone)]
struct Ack {
    room: String,
    slot: u16,
    epoch: String,
    offset: u64,
    fingerprint: u64,
    at: Instant,
}

#[derive(Default)]
pub(super) struct Audit {
    /// Per primary (`host:port`) that answered, oldest first.
    acks: Mutex<HashMap<Arc<str>, VecDeque<Ack>>>,
    /// Acknowledgements whose slot moved, to be read back from the new owner.
    suspects: Mutex<Vec<Ack>>,
}

impl Audit {
    /// Keeps an acknowledgement given by `primary`. One already suspect (its slot has another
    /// owner in the map) goes straight to the suspects.
    pub(super) fn record(&self, state: &RedisState, primary: Arc<str>, slot: u16, p: &Publication) {
        let ack = Ack {
            room: p.room.clone(),
            slot,
            epoch: p.epoch.clone(),
            offset: p.offset,
            fingerprint: p.fingerprint(),
            at: Instant::now(),
        };
        if state.router.owner_of(slot).as_deref() != Some(&*primary) {
            self.suspects.lock().push(ack);
            return;
        }
        let mut acks = self.acks.lock();
        let ring = acks.entry(primary).or_default();
        if ring.len() >= PER_PRIMARY {
            ring.pop_front();
        }
        ring.push_back(ack);
    }

    /// Drops old acknowledgements; with `moved`, turns those whose slot changed owner into
    /// suspects.
    fn sweep(&self, state: &RedisState, moved: bool) {
        let now = Instant::now();
        let mut found = Vec::new();
        {
            let mut acks = self.acks.lock();
            for (primary, ring) in acks.iter_mut() {
                while ring.front().is_some_and(|a| now - a.at > KEEP) {
                    ring.pop_front();
                }
                if moved {
                    let (keep, gone): (VecDeque<Ack>, VecDeque<Ack>) =
                        ring.drain(..).partition(|a| {
                            state.router.owner_of(a.slot).as_deref() == Some(&**primary)
                        });
                    *ring = keep;
                    found.extend(gone);
                }
            }
            acks.retain(|_, ring| !ring.is_empty());
        }
        let mut suspects = self.suspects.lock();
        suspects.extend(found);
        // A suspect that could not be read back for twice the keeping time is given up.
        suspects.retain(|a| now - a.at <= 2 * KEEP);
    }
}

/// Starts the audit for `state`, while it lives.
pub(super) fn start(state: &Arc<RedisState>) {
    let weak = Arc::downgrade(state);
    let changes = state.router.changes();
    tokio::spawn(run(weak, changes));
}

async fn run(state: Weak<RedisState>, mut changes: tokio::sync::watch::Receiver<u64>) {
    loop {
        let moved = tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                true
            }
            _ = tokio::time::sleep(TICK) => false,
        };
        let Some(state) = state.upgrade() else {
            return;
        };
        state.audit.sweep(&state, moved);
        check_suspects(&state).await;
    }
}

/// Reads every suspect room back from its current owner; retires the epochs that lost an
/// acknowledged message, and keeps for the next pass the ones that could not be read.
async fn check_suspects(state: &RedisState) {
    let suspects = std::mem::take(&mut *state.audit.suspects.lock());
    if suspects.is_empty() {
        return;
    }
    let mut by_room: HashMap<(String, String), Vec<Ack>> = HashMap::new();
    for a in suspects {
        by_room
            .entry((a.room.clone(), a.epoch.clone()))
            .or_default()
            .push(a);
    }
    let mut retry = Vec::new();
    for ((room, epoch), acks) in by_room {
        match verdict(state, &room, &epoch, &acks).await {
            Ok(Verdict::Held) => {}
            Ok(Verdict::Unverifiable(n)) => {
                tracing::info!(
                    room,
                    n,
                    "acknowledged offsets trimmed from history before the audit read them back"
                )
            }
            Ok(Verdict::Lost(offset)) => {
                tracing::warn!(
                    room,
                    epoch,
                    offset,
                    "the room's new owner lacks an acknowledged message; retiring the epoch"
                );
                if let Err(e) = state.reset_epoch(&room, &epoch).await {
                    tracing::warn!(room, error = %e, "could not retire the epoch; trying again");
                    retry.extend(acks);
                }
            }
            Err(e) => {
                tracing::debug!(room, error = %e, "audit read failed; trying again");
                retry.extend(acks);
            }
        }
    }
    state.audit.suspects.lock().extend(retry);
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// The owner holds every suspect acknowledgement (or the room moved on to another epoch,
    /// which its members are told of).
    Held,
    /// The first acknowledged offset that the owner lacks or holds with other content.
    Lost(u64),
    /// Held as far as can be told; this many were trimmed out of history.
    Unverifiable(usize),
}

async fn verdict(
    state: &RedisState,
    room: &str,
    epoch: &str,
    acks: &[Ack],
) -> Result<Verdict, StateError> {
    let newest = acks.iter().map(|a| a.offset).max().unwrap_or(0);
    let oldest = acks.iter().map(|a| a.offset).min().unwrap_or(0);
    let span = (newest - oldest + 1).min(MAX_READ) as usize;
    let (messages, current) = match state.history(room, None, span, Some(newest + 1)).await {
        Ok(read) => read,
        // Gone from the owner: expired or closed, or lost whole with its shard, in which case
        // it comes back with a new epoch. Nothing can be given at a reused offset.
        Err(StateError::NotFound) => return Ok(Verdict::Held),
        Err(e) => return Err(e),
    };
    let held: HashMap<u64, u64> = messages
        .iter()
        .filter(|m| m.epoch == current)
        .map(|m| (m.offset, m.fingerprint()))
        .collect();
    let last = if current == epoch && acks.iter().any(|a| !held.contains_key(&a.offset)) {
        match state.info(room).await {
            Ok(info) if info.epoch == epoch => Some(info.offset),
            Ok(_) | Err(StateError::NotFound) => return Ok(Verdict::Held),
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    Ok(judge(epoch, &current, &held, last, acks))
}

/// The pure rule behind [`verdict`]: `held` is what the owner's history holds of the suspect
/// offsets (offset → fingerprint) in epoch `current`, and `last` the room's last offset when
/// some were not found.
fn judge(
    epoch: &str,
    current: &str,
    held: &HashMap<u64, u64>,
    last: Option<u64>,
    acks: &[Ack],
) -> Verdict {
    if current != epoch {
        return Verdict::Held;
    }
    let mut unverifiable = 0;
    let mut sorted: Vec<&Ack> = acks.iter().collect();
    sorted.sort_by_key(|a| a.offset);
    for a in sorted {
        match held.get(&a.offset) {
            Some(f) if *f == a.fingerprint => {}
            Some(_) => return Verdict::Lost(a.offset),
            None if last.is_some_and(|last| a.offset > last) => return Verdict::Lost(a.offset),
            None => unverifiable += 1,
        }
    }
    if unverifiable == 0 {
        Verdict::Held
    } else {
        Verdict::Unverifiable(unverifiable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(offset: u64, fingerprint: u64) -> Ack {
        Ack {
            room: "r".into(),
            slot: 0,
            epoch: "e".into(),
            offset,
            fingerprint,
            at: Instant::now(),
        }
    }

    #[test]
    fn an_owner_that_holds_every_acknowledgement_passes() {
        let held = HashMap::from([(4, 40), (5, 50)]);
        assert_eq!(
            judge("e", "e", &held, None, &[ack(4, 40), ack(5, 50)]),
            Verdict::Held
        );
    }

    #[test]
    fn other_content_at_an_acknowledged_offset_is_a_loss() {
        let held = HashMap::from([(4, 40), (5, 99)]);
        assert_eq!(
            judge("e", "e", &held, None, &[ack(4, 40), ack(5, 50)]),
            Verdict::Lost(5)
        );
    }

    #[test]
    fn an_offset_beyond_the_owners_last_is_a_loss() {
        let held = HashMap::from([(4, 40)]);
        assert_eq!(
            judge("e", "e", &held, Some(4), &[ack(4, 40), ack(5, 50)]),
            Verdict::Lost(5)
        );
    }

    #[test]
    fn trimmed_offsets_cannot_be_told() {
        let held = HashMap::from([(9, 90)]);
        assert_eq!(
            judge("e", "e", &held, Some(9), &[ack(2, 20), ack(9, 90)]),
            Verdict::Unverifiable(1)
        );
    }

    #[test]
    fn a_room_in_a_new_epoch_already_told_its_members() {
        assert_eq!(
            judge("e", "f", &HashMap::new(), None, &[ack(7, 70)]),
            Verdict::Held
        );
    }
}
