//! A delivery worker: takes its rooms' envelopes in arrival order, checks each message's
//! offset against what the room has delivered ([`Sequencer`]), and delivers locally.

use super::Inner;
use crate::dispatch::deliver;
use crate::history::Tail;
use crate::sequencer::{Reconciled, Sequencer, Verdict};
use protocol::clock::now_ms;
use protocol::envelope::Envelope;
use protocol::frame::Publication;
use std::sync::Arc;
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

/// Runs one worker until the adapter is dropped.
pub(super) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Job>) {
    let mut seq = Sequencer::new();
    while let Some(job) = rx.recv().await {
        match job {
            Job::Hint {
                room,
                epoch,
                offset,
            } => seq.hint(&room, &epoch, offset),
            Job::Forget(room) => seq.forget(&room),
            Job::Reconcile {
                room,
                tail,
                read_at,
            } => reconcile(&inner, &mut seq, &room, &tail, read_at).await,
            Job::Envelope(Envelope::Message(p)) => on_message(&inner, &mut seq, p).await,
            Job::Envelope(other) => on_other(&inner, &other),
        }
    }
}

/// A message: delivered once, in offset order, with any gap before it filled first.
async fn on_message(inner: &Inner, seq: &mut Sequencer, p: Publication) {
    if !inner.registry.has_room(&p.room) {
        return;
    }
    match seq.check(&p) {
        Verdict::Deliver => deliver_message(inner, seq, p),
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
            deliver_message(inner, seq, p);
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
        deliver_message(inner, seq, q);
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
                Box::pin(on_message(inner, seq, m)).await;
            }
            inner.pubsub.repaired(n);
        }
        Reconciled::Diverged { epoch } => {
            tracing::warn!(room, %epoch, "the shard's new owner lacks or rewrote delivered offsets; retiring the epoch");
            retire_epoch(inner, room, &epoch).await;
        }
    }
}

fn deliver_message(inner: &Inner, seq: &mut Sequencer, p: Publication) {
    seq.delivered(&p);
    deliver(
        &inner.registry,
        &Envelope::Message(p),
        &*inner.delivery,
        now_ms(),
    );
}

/// Presence, room closed, disconnect: no offsets, delivered as they come.
fn on_other(inner: &Inner, envelope: &Envelope) {
    deliver(&inner.registry, envelope, &*inner.delivery, now_ms());
    // A closed room has no local members left: let its subscription go.
    if let Envelope::RoomClosed { room, .. } = envelope {
        inner.release_later(room);
    }
}
