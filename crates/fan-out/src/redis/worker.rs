//! A delivery worker: takes its rooms' envelopes in arrival order, checks each message's
//! offset against what the room has delivered ([`Sequencer`]), and delivers locally. An
//! ephemeral room's messages have no offset and skip all of that.

use super::Inner;
use crate::dispatch::deliver;
use crate::history::Tail;
use crate::outbound::WriteMode;
use crate::sequencer::{Reconciled, Sequencer, Verdict};
use protocol::clock::now_ms;
use protocol::envelope::Envelope;
use protocol::frame::Publication;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a worker is given, in order, for the rooms it owns.
pub(super) enum Job {
    /// An envelope from the room's channel (or the control channel).
    Envelope(Envelope),
    /// A local member joined at `(epoch, offset)`: where the room's sequence starts.
    Hint {
        room: String,
        epoch: String,
        offset: u64,
    },
    /// The node no longer follows the room.
    Forget(String),
    /// The room's newest messages as its shard's (new) owner holds them, read at `read_at`:
    /// deliver what the node missed, or retire the epoch if the owner diverged.
    Reconcile {
        room: String,
        tail: Tail,
        read_at: Instant,
    },
}

/// How long a message may wait for its room's starting point (see [`Parked`]): longer than a
/// join's reply takes, even during a failover.
const PARK_FOR: Duration = Duration::from_secs(3);

/// The most messages one room holds while it waits for its starting point.
const PARK_MAX: usize = 1024;

/// Messages of rooms that have local members but no starting point yet.
///
/// Why: a node's first member of a room subscribes, then joins; the join's reply gives the
/// offset the member starts after (the hint). The subscription may become active only after a
/// message or two were published past that offset, and the hint may reach the worker after
/// the next live message. Delivered at once, that message would start the room's sequence and
/// hide the ones before it: a silent gap. Held until the hint, it reveals them as a gap that
/// is filled from history. When no hint comes (it was dropped on a full queue, or the join
/// failed) the messages go out after [`PARK_FOR`] as before.
#[derive(Default)]
struct Parked {
    rooms: HashMap<String, (Instant, Vec<Publication>)>,
}

impl Parked {
    /// The oldest parked room's deadline.
    fn next_deadline(&self) -> Option<Instant> {
        self.rooms.values().map(|(at, _)| *at + PARK_FOR).min()
    }

    /// Rooms whose wait is over.
    fn due(&mut self, now: Instant) -> Vec<Vec<Publication>> {
        let due: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, (at, _))| *at + PARK_FOR <= now)
            .map(|(room, _)| room.clone())
            .collect();
        due.into_iter()
            .filter_map(|room| self.rooms.remove(&room).map(|(_, m)| m))
            .collect()
    }
}

/// The most jobs waiting behind the current one for its deliveries still to be written
/// directly (see `run`).
const DIRECT_BACKLOG_MAX: usize = 32;

/// Runs one worker until the adapter is dropped.
pub(super) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>) {
    let mut seq = Sequencer::new();
    let mut parked = Parked::default();
    loop {
        let job = match parked.next_deadline() {
            None => rx.recv().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(job) => job,
                Err(_) => {
                    for messages in parked.due(Instant::now()) {
                        for p in messages {
                            on_message(&inner, &mut seq, p, WriteMode::Queued).await;
                        }
                    }
                    continue;
                }
            },
        };
        let Some(job) = job else { return };
        // A short backlog is what one read from Redis brings on a busy node: written as it
        // is delivered, so its last message does not wait for every recipient's writer task
        // to be scheduled (at 2,563 publishes/s, rooms of 10, this cut p99 by about a third for
        // the same CPU; docs/bench/findings.md). With a longer one the node is catching up:
        // deliveries go through the connections' queues, whose writers write each
        // connection's share of the backlog at once, where direct writes would make one
        // syscall per frame per recipient and fall further behind.
        let mode = if rx.len() < DIRECT_BACKLOG_MAX {
            WriteMode::Direct
        } else {
            WriteMode::Queued
        };
        match job {
            Job::Hint {
                room,
                epoch,
                offset,
            } => {
                seq.hint(&room, &epoch, offset);
                if let Some((_, messages)) = parked.rooms.remove(&room) {
                    for p in messages {
                        on_message(&inner, &mut seq, p, WriteMode::Queued).await;
                    }
                }
            }
            Job::Forget(room) => {
                parked.rooms.remove(&room);
                seq.forget(&room);
            }
            Job::Reconcile {
                room,
                tail,
                read_at,
            } => reconcile(&inner, &mut seq, &room, &tail, read_at).await,
            // An ephemeral room's message: no offset to check, nothing to repair or park
            // (its room has no starting point to wait for), no fingerprint to keep. Out at
            // once, in the order the channel gave it.
            Job::Envelope(Envelope::Message(p)) if p.is_ephemeral() => deliver(
                &inner.registry,
                &Envelope::Message(p),
                &*inner.delivery,
                now_ms(),
                mode,
            ),
            Job::Envelope(Envelope::Message(p)) => {
                if !seq.knows(&p.room) && inner.registry.has_room(&p.room) {
                    let (_, held) = parked
                        .rooms
                        .entry(p.room.clone())
                        .or_insert_with(|| (Instant::now(), Vec::new()));
                    if held.len() < PARK_MAX {
                        held.push(p);
                        continue;
                    }
                    // Full: out in order, the oldest first, and this one after them.
                    let held = std::mem::take(held);
                    parked.rooms.remove(&p.room);
                    for q in held {
                        on_message(&inner, &mut seq, q, WriteMode::Queued).await;
                    }
                }
                on_message(&inner, &mut seq, p, mode).await
            }
            Job::Envelope(other) => on_other(&inner, &other, mode),
        }
    }
}

/// A message: delivered once, in offset order, with any gap before it filled first.
async fn on_message(inner: &Inner, seq: &mut Sequencer, p: Publication, mode: WriteMode) {
    if !inner.registry.has_room(&p.room) {
        return;
    }
    match seq.check(&p) {
        Verdict::Deliver => deliver_message(inner, seq, p, mode),
        Verdict::Duplicate => inner.pubsub.duplicate(),
        Verdict::Conflict => {
            tracing::warn!(room = %p.room, epoch = %p.epoch, offset = p.offset, "offset reused after state loss; retiring the epoch");
            retire_epoch(inner, &p.room, &p.epoch).await
        }
        Verdict::Gap { after } => {
            repair_gap(inner, seq, &p, after).await;
            // Delivered even when the repair failed or came back short (history trimmed past
            // the gap, or unreachable): pub/sub never sends a message twice, so holding this
            // one back would stall the room for good. Members see the offsets jump and can
            // read what they missed with `history`, or rejoin with `since`.
            deliver_message(inner, seq, p, WriteMode::Queued);
        }
    }
}

/// Delivers the messages between `after` and `p` from the room's history, in order.
async fn repair_gap(inner: &Inner, seq: &mut Sequencer, p: &Publication, after: u64) {
    let missing = match inner.history.range(&p.room, after, p.offset).await {
        Ok(missing) => missing,
        Err(e) => {
            tracing::warn!(room = %p.room, error = %e, "gap repair failed");
            return;
        }
    };
    let mut n = 0;
    // Only what lies strictly inside the gap, in p's epoch: `p` itself goes out right after.
    for q in missing
        .into_iter()
        .filter(|q| q.epoch == p.epoch && q.offset > after && q.offset < p.offset)
    {
        deliver_message(inner, seq, q, WriteMode::Queued);
        n += 1;
    }
    inner.pubsub.repaired(n);
}

/// The room's state was rolled back: an offset came again with other content, or the shard's
/// new owner lacks or rewrote what the node delivered. Nothing goes out under a reused offset;
/// the epoch is retired so members see a new one.
async fn retire_epoch(inner: &Inner, room: &str, epoch: &str) {
    inner.pubsub.conflict();
    if let Err(e) = inner.history.retire_epoch(room, epoch).await {
        tracing::warn!(room, error = %e, "could not retire the epoch");
    }
}

/// After a change of the shard's owner: what the node delivered against what the owner holds.
async fn reconcile(inner: &Inner, seq: &mut Sequencer, room: &str, tail: &Tail, read_at: Instant) {
    if !inner.registry.has_room(room) {
        return;
    }
    match seq.reconcile(room, tail, read_at.into_std()) {
        Reconciled::InSync => {}
        Reconciled::Missing(missing) => {
            tracing::info!(
                room,
                n = missing.len(),
                "delivering what the shard's new owner holds and this node missed"
            );
            // Through the ordinary path: the tail holds only the newest offsets, so when the
            // node missed more than it, the first of them reveals a gap that is filled from
            // history before anything else goes out.
            let n = missing.len() as u64;
            for m in missing {
                Box::pin(on_message(inner, seq, m, WriteMode::Queued)).await;
            }
            inner.pubsub.repaired(n);
        }
        Reconciled::Diverged { epoch } => {
            tracing::warn!(room, %epoch, "the shard's new owner lacks or rewrote delivered offsets; retiring the epoch");
            retire_epoch(inner, room, &epoch).await;
        }
    }
}

fn deliver_message(inner: &Inner, seq: &mut Sequencer, p: Publication, mode: WriteMode) {
    seq.delivered(&p);
    deliver(
        &inner.registry,
        &Envelope::Message(p),
        &*inner.delivery,
        now_ms(),
        mode,
    );
}

/// Presence, room closed, disconnect: no offsets, delivered as they come.
fn on_other(inner: &Inner, envelope: &Envelope, mode: WriteMode) {
    deliver(&inner.registry, envelope, &*inner.delivery, now_ms(), mode);
    // A closed room has no local members left: let its subscription go.
    if let Envelope::RoomClosed { room, .. } = envelope {
        inner.release_later(room);
    }
}
