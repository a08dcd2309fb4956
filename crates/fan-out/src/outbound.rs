//! A connection's outbound queue, bounded in bytes.
//!
//! The queue is an unbounded channel plus a byte counter: pushing is a non-blocking send
//! that is refused once the bytes still queued would exceed the limit. The connection's
//! writer task subtracts what it has written. Control frames (pong, close) bypass the limit,
//! because they are tiny and must not be lost.

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::frame::Publication;
use protocol::Format;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, Notify};

/// A position in a room: `(epoch, offset)`. The epoch is shared, so that journaling a
/// delivery allocates nothing.
pub type Position = (Arc<str>, u64);

/// What a queue has been given, in queue order, for Socket.IO connection state recovery.
///
/// The client reports the last message it *received*; everything queued before that one
/// arrived, everything after it may not have. So for each room, the client's position is
/// its last entry at or before the reported one, or the room's `base` (its join point, or
/// the last entry that fell off the bounded list).
#[derive(Debug, Clone, Default)]
pub struct Journal {
    pub cap: usize,
    /// `(room, epoch, offset)` of each message, oldest first.
    pub entries: VecDeque<(Arc<str>, Position)>,
    /// Per room: the position before the first entry.
    pub base: HashMap<Arc<str>, Position>,
    /// Per room: its name and latest epoch, shared by its entries.
    pub epochs: HashMap<Arc<str>, Arc<str>>,
}

impl Journal {
    /// Called for every message queued to the socket: it reuses the room's name and epoch
    /// from earlier entries, so it allocates nothing but the ring's own slots.
    fn record(&mut self, room: &str, epoch: &str, offset: u64) {
        if self.entries.len() >= self.cap {
            if let Some((old_room, old)) = self.entries.pop_front() {
                self.base.insert(old_room, old);
            }
        }
        let (room, epoch) = match self.epochs.get_key_value(room) {
            Some((r, e)) if &**e == epoch => (r.clone(), e.clone()),
            _ => {
                // A room's first message, or a new epoch: remembered for the next ones.
                let (r, e) = (Arc::<str>::from(room), Arc::<str>::from(epoch));
                self.epochs.insert(r.clone(), e.clone());
                (r, e)
            }
        };
        self.entries.push_back((room, (epoch, offset)));
    }

    /// Each room's position as of the entry `last` (`None`: nothing received at all), or
    /// `None` if `last` is not in the journal.
    pub fn positions_at(
        &self,
        last: Option<(&str, &Position)>,
    ) -> Option<HashMap<Arc<str>, Position>> {
        let upto = match last {
            None => 0,
            Some((room, pos)) => {
                self.entries
                    .iter()
                    .position(|(r, p)| &**r == room && p == pos)?
                    + 1
            }
        };
        let mut at = self.base.clone();
        for (room, pos) in self.entries.iter().take(upto) {
            at.insert(room.clone(), pos.clone());
        }
        Some(at)
    }
}

/// What the writer task sends.
#[derive(Debug)]
pub enum OutFrame {
    /// An encoded reply or event, in the connection's format. Shared bytes: one encoding, many
    /// sockets.
    Data(Bytes),
    /// A data frame with its own opcode (text or binary), whatever the connection's format:
    /// for the test echo endpoint, which sends back what it received.
    Message { text: bool, bytes: Bytes },
    /// Answer a ping.
    Pong(Bytes),
    /// Send Close with this code and reason, then stop.
    Close(u16, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("connection is closing")]
    Closed,
    #[error("slow consumer: outbound queue over its limit")]
    SlowConsumer,
}

#[derive(Debug)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<OutFrame>,
    queued: AtomicUsize,
    limit: usize,
    closed: AtomicBool,
    /// Set on a slow-consumer close: the backlog is dropped instead of written.
    discard: AtomicBool,
    format: Format,
    /// Only for Socket.IO sockets with recovery on (see [`Journal`]).
    journal: OnceLock<Mutex<Journal>>,
    /// The code and reason of the close asked for, once asked.
    closed_with: OnceLock<(u16, String)>,
    /// Wakes [`Outbound::closed`]: a transport with no writer task of its own (long-polling)
    /// learns of a close here rather than from its queue.
    on_close: Notify,
}

impl Outbound {
    /// A queue of at most `limit` bytes, and the receiver its writer task drains.
    pub fn new(format: Format, limit: usize) -> (Outbound, mpsc::UnboundedReceiver<OutFrame>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbound = Outbound {
            tx,
            queued: AtomicUsize::new(0),
            limit,
            closed: AtomicBool::new(false),
            discard: AtomicBool::new(false),
            format,
            journal: OnceLock::new(),
            closed_with: OnceLock::new(),
            on_close: Notify::new(),
        };
        (outbound, rx)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Queues data. Never waits. Over the limit, the connection is closed with 4009.
    pub fn push(&self, bytes: Bytes) -> Result<(), PushError> {
        self.enqueue(bytes, None)
    }

    /// Starts recording the messages pushed with [`Outbound::push_publication`].
    pub fn start_journal(&self, cap: usize) {
        let _ = self.journal.set(Mutex::new(Journal {
            cap,
            ..Journal::default()
        }));
    }

    /// A copy of the journal, if one is kept.
    pub fn journal(&self) -> Option<Journal> {
        self.journal.get().map(|j| j.lock().clone())
    }

    /// Sets a room's position before any message (a join reply's offset), unless the
    /// journal already reaches that far in the room (a recovery replay queued up to it).
    pub fn journal_base(&self, room: &str, epoch: &str, offset: u64) {
        if let Some(j) = self.journal.get() {
            let mut j = j.lock();
            let covered = j
                .entries
                .iter()
                .rev()
                .find(|(r, _)| &**r == room)
                .is_some_and(|(_, (e, o))| **e == *epoch && *o >= offset);
            if covered {
                return;
            }
            j.entries.retain(|(r, _)| &**r != room);
            j.base.insert(Arc::from(room), (Arc::from(epoch), offset));
        }
    }

    /// Queues a message event, and journals it when a journal is kept: under the journal's
    /// lock, so that journal order is queue order.
    pub fn push_publication(&self, bytes: Bytes, p: &Publication) -> Result<(), PushError> {
        match self.journal.get() {
            None => self.enqueue(bytes, None),
            Some(j) => {
                let mut j = j.lock();
                self.enqueue(bytes, None)?;
                j.record(&p.room, &p.epoch, p.offset);
                Ok(())
            }
        }
    }

    /// Queues a text (`true`) or binary data frame, under the same limit as [`Outbound::push`].
    pub fn push_message(&self, text: bool, bytes: Bytes) -> Result<(), PushError> {
        self.enqueue(bytes, Some(text))
    }

    fn enqueue(&self, bytes: Bytes, text: Option<bool>) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        let len = bytes.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > self.limit {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.discard.store(true, Ordering::Release);
            self.close(
                protocol::CloseCode::SLOW_CONSUMER,
                "slow consumer: outbound queue full",
            );
            return Err(PushError::SlowConsumer);
        }
        let frame = match text {
            None => OutFrame::Data(bytes),
            Some(text) => OutFrame::Message { text, bytes },
        };
        if self.tx.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(PushError::Closed);
        }
        Ok(())
    }

    /// Queues a pong; ignored once closing.
    pub fn pong(&self, payload: Bytes) {
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.tx.send(OutFrame::Pong(payload));
        }
    }

    /// Asks the writer to send Close and stop. Only the first call counts. Returns whether
    /// this call was the one that closed.
    pub fn close(&self, code: u16, reason: &str) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let _ = self.closed_with.set((code, reason.to_string()));
        let _ = self.tx.send(OutFrame::Close(code, reason.to_string()));
        self.on_close.notify_waiters();
        true
    }

    /// Resolves once a close was asked for (at once if it already was).
    pub async fn closed(&self) {
        loop {
            let notified = self.on_close.notified();
            tokio::pin!(notified);
            // Registered before the flag is read, so a close in between is not missed.
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// The code of the close asked for, if one was.
    pub fn close_code(&self) -> Option<u16> {
        self.closed_with.get().map(|(code, _)| *code)
    }

    /// The reason of the close asked for, if one was.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed_with.get().map(|(_, reason)| reason.as_str())
    }

    /// Whether queued data should be dropped rather than written (slow consumer).
    pub fn is_discarding(&self) -> bool {
        self.discard.load(Ordering::Acquire)
    }

    /// Whether a close was asked for: nothing more is queued.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The writer task reports bytes it has taken off the queue.
    pub fn written(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_closes_with_4009() {
        let (q, mut rx) = Outbound::new(Format::Json, 10);
        assert_eq!(q.push(Bytes::from_static(b"123456")), Ok(()));
        assert_eq!(
            q.push(Bytes::from_static(b"123456")),
            Err(PushError::SlowConsumer)
        );
        assert!(q.is_closed());
        assert!(q.is_discarding());
        assert_eq!(q.push(Bytes::from_static(b"1")), Err(PushError::Closed));
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Data(_))));
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Close(4009, _))));
        assert!(!q.close(1000, "again"), "only the first close counts");
    }

    #[test]
    fn written_bytes_free_room() {
        let (q, _rx) = Outbound::new(Format::Json, 10);
        q.push(Bytes::from_static(b"12345678")).expect("fits");
        q.written(8);
        q.push(Bytes::from_static(b"12345678")).expect("fits again");
        assert_eq!(q.queued_bytes(), 8);
    }

    fn publication(room: &str, offset: u64) -> Publication {
        Publication {
            room: room.into(),
            offset,
            epoch: "e".into(),
            from: "u".into(),
            data: protocol::Data::from_value(&serde_json::json!(offset)).expect("data"),
            ts: 0,
        }
    }

    #[test]
    fn the_journal_locates_the_client_in_every_room() {
        let (q, _rx) = Outbound::new(Format::SocketIo, 1 << 20);
        q.start_journal(3);
        q.journal_base("a", "e", 10);
        q.journal_base("b", "e", 20);
        for (room, offset) in [("a", 11), ("b", 21), ("a", 12)] {
            q.push_publication(Bytes::from_static(b"x"), &publication(room, offset))
                .expect("push");
        }
        let j = q.journal().expect("journal");
        // The client got up to b:21, so a:11 too, but not a:12.
        let at = j
            .positions_at(Some(("b", &(Arc::from("e"), 21))))
            .expect("known");
        assert_eq!(at.get("a"), Some(&(Arc::from("e"), 11)));
        assert_eq!(at.get("b"), Some(&(Arc::from("e"), 21)));
        // Nothing received: the join points.
        let at = j.positions_at(None).expect("known");
        assert_eq!(at.get("a"), Some(&(Arc::from("e"), 10)));
        // An offset the journal never saw fails.
        assert!(j.positions_at(Some(("a", &(Arc::from("e"), 99)))).is_none());
        // The bound: the oldest entry becomes the room's base.
        q.push_publication(Bytes::from_static(b"x"), &publication("b", 22))
            .expect("push");
        let j = q.journal().expect("journal");
        assert_eq!(j.entries.len(), 3);
        assert_eq!(j.base.get("a"), Some(&(Arc::from("e"), 11)));
        // A join base does not wipe a replay that already reaches it.
        q.journal_base("b", "e", 22);
        assert_eq!(q.journal().expect("journal").entries.len(), 3);
        q.journal_base("b", "e", 30);
        let j = q.journal().expect("journal");
        assert!(j.entries.iter().all(|(r, _)| &**r != "b"));
        assert_eq!(j.base.get("b"), Some(&(Arc::from("e"), 30)));
    }
}
