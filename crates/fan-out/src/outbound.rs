//! A connection's outbound queue, bounded in bytes.
//!
//! The queue is an unbounded channel ([`crate::frames`]) plus a byte counter: pushing is a
//! non-blocking send that is refused once the bytes still queued would exceed the limit. The
//! connection's writer task subtracts what it has written. Control frames (pong, close) bypass
//! the limit, because they are tiny and must not be lost.

use crate::frames::{FrameReceiver, FrameSender};
use bytes::Bytes;
use parking_lot::Mutex;
use protocol::frame::Publication;
use protocol::Format;
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::Notify;

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
    /// Wakes the writer for what a direct write left unwritten ([`Outbound::take_rest`]),
    /// which it writes before anything else.
    Rest,
}

/// A server (unmasked, final) data frame's header: text or binary, for `len` payload bytes.
#[derive(Debug, Clone, Copy)]
pub struct FrameHeader {
    bytes: [u8; 10],
    len: u8,
}

impl FrameHeader {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The header of a final, unmasked frame with this opcode (RFC 6455 section 5.2).
pub fn header(opcode: u8, len: usize) -> FrameHeader {
    let mut bytes = [0u8; 10];
    bytes[0] = 0x80 | opcode;
    let n = if len < 126 {
        bytes[1] = len as u8;
        2
    } else if len <= 0xffff {
        bytes[1] = 126;
        bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        bytes[1] = 127;
        bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    FrameHeader { bytes, len: n }
}

fn frame_header(text: bool, len: usize) -> FrameHeader {
    header(if text { 0x1 } else { 0x2 }, len)
}

/// A socket that data can be written to without waiting: the write half the connection's
/// writer task also uses. With one, a push to a connection whose queue is empty writes the
/// frame at once, from the pushing thread, instead of queueing it and waking the writer task.
pub trait DirectWrite: Send + Sync {
    /// Writes what the socket takes now: the number of bytes taken, or `WouldBlock` when none.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize>;
    /// `bytes` of data frames were written directly (what the writer task would have counted).
    fn wrote_data(&self, bytes: u64);
}

/// How a push may reach the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Written by the pusher itself when nothing is queued and the writer is idle: no queue,
    /// no wake-up of the writer task. Best when frames come one at a time.
    Direct,
    /// Always through the queue. For a sender with a backlog: one syscall per frame per
    /// recipient would cost more than the writer task, which wakes once and writes
    /// everything queued by then in one write (a burst of presence events to a huge room
    /// went from seconds behind to keeping up with this).
    Queued,
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
    tx: FrameSender,
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
    /// Whether a socket for direct writes is set (a WebSocket over TCP; see [`DirectWrite`]).
    direct_on: AtomicBool,
    /// Frames sent into the channel and not yet taken off it by a writer. A direct write
    /// needs 0: anything queued goes first.
    pending: AtomicUsize,
    /// Whoever writes to the socket holds this: the writer task for a batch or a ping, a
    /// pusher for one direct write. Writes never interleave, and a direct write is never
    /// made while the writer has frames in hand.
    writing: AtomicBool,
    /// The socket and what a direct write left of a frame. Locked only by whoever holds
    /// `writing` (and by the writer's end, to let go of the socket), so never contended.
    direct: Mutex<Direct>,
}

#[derive(Default)]
struct Direct {
    sink: Option<Arc<dyn DirectWrite>>,
    /// What a direct write left unwritten (the socket took part of the frame): the writer
    /// writes it before anything else.
    rest: Option<Bytes>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("sink", &self.sink.is_some())
            .field("rest", &self.rest.as_ref().map(Bytes::len))
            .finish()
    }
}

impl Outbound {
    /// A queue of at most `limit` bytes, and the receiver its writer task drains.
    pub fn new(format: Format, limit: usize) -> (Outbound, FrameReceiver) {
        let (tx, rx) = crate::frames::channel();
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
            direct_on: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
            direct: Mutex::new(Direct::default()),
        };
        (outbound, rx)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Queues data. Never waits. Over the limit, the connection is closed with 4009.
    pub fn push(&self, bytes: Bytes) -> Result<(), PushError> {
        self.enqueue(bytes, None, WriteMode::Direct)
    }

    /// [`Outbound::push`], written directly only when `mode` allows it.
    pub fn push_with(&self, bytes: Bytes, mode: WriteMode) -> Result<(), PushError> {
        self.enqueue(bytes, None, mode)
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
    pub fn push_publication(
        &self,
        bytes: Bytes,
        p: &Publication,
        mode: WriteMode,
    ) -> Result<(), PushError> {
        match self.journal.get() {
            None => self.enqueue(bytes, None, mode),
            Some(j) => {
                let mut j = j.lock();
                self.enqueue(bytes, None, mode)?;
                j.record(&p.room, &p.epoch, p.offset);
                Ok(())
            }
        }
    }

    /// Queues a text (`true`) or binary data frame, under the same limit as [`Outbound::push`].
    pub fn push_message(&self, text: bool, bytes: Bytes) -> Result<(), PushError> {
        self.enqueue(bytes, Some(text), WriteMode::Queued)
    }

    fn enqueue(&self, bytes: Bytes, text: Option<bool>, mode: WriteMode) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        if text.is_none() && mode == WriteMode::Direct && self.write_direct(&bytes) {
            return Ok(());
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
        if self.send(frame).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(PushError::Closed);
        }
        Ok(())
    }

    /// Every frame goes into the channel through here, counted in `pending`.
    fn send(&self, frame: OutFrame) -> Result<(), ()> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(frame).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(());
        }
        Ok(())
    }

    /// Writes one data frame (header and payload, from where they are) straight to the socket
    /// when nothing is queued before it and nobody else is writing: no queue, no wake-up of
    /// the writer task, no allocation. Returns false when the frame must be queued instead
    /// (no socket, something queued, the writer busy, the socket full or failed: the writer
    /// then meets the same state and deals with it). A frame the socket took only part of is
    /// finished by the writer before anything else ([`Outbound::take_rest`]).
    fn write_direct(&self, bytes: &Bytes) -> bool {
        if !self.direct_on.load(Ordering::Acquire) {
            return false;
        }
        // A Socket.IO bundle is several WebSocket messages: the writer takes it apart.
        if self.format == Format::SocketIo && bytes.first() == Some(&protocol::socketio::BUNDLE) {
            return false;
        }
        if self.pending.load(Ordering::Acquire) != 0 || !self.try_claim() {
            return false;
        }
        // Checked again now that nobody else writes: a frame queued before we claimed goes
        // first; a close asked for meanwhile stops data.
        if self.pending.load(Ordering::Acquire) != 0 || self.closed.load(Ordering::Acquire) {
            self.release();
            return false;
        }
        let mut direct = self.direct.lock();
        let Some(sink) = direct.sink.as_ref() else {
            drop(direct);
            self.release();
            return false;
        };
        let header = frame_header(self.format.is_text(), bytes.len());
        let head = header.as_slice();
        let total = head.len() + bytes.len();
        // An error takes nothing here: the frame is queued, and the writer meets the same
        // error on its next write and ends the connection.
        let written: usize = sink
            .try_write_vectored(&[IoSlice::new(head), IoSlice::new(bytes)])
            .unwrap_or(0);
        if written == 0 {
            // Nothing taken (full, or failed): queued like any frame.
            drop(direct);
            self.release();
            return false;
        }
        sink.wrote_data(bytes.len() as u64);
        if written < total {
            // Part of the frame is on the wire: the rest must follow before any other byte,
            // so it is handed to the writer, counted against the queue's bound like queued
            // data, and the writer woken.
            let rest = if written < head.len() {
                let mut v = Vec::with_capacity(total - written);
                v.extend_from_slice(&head[written..]);
                v.extend_from_slice(bytes);
                Bytes::from(v)
            } else {
                bytes.slice(written - head.len()..)
            };
            self.queued.fetch_add(rest.len(), Ordering::AcqRel);
            direct.rest = Some(rest);
            // Sent while still writing, so the writer (which must take `writing` first) finds
            // the rest when it wakes. If the writer is gone, nothing more is written anyway.
            let _ = self.send(OutFrame::Rest);
        }
        drop(direct);
        self.release();
        true
    }

    fn try_claim(&self) -> bool {
        self.writing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn release(&self) {
        self.writing.store(false, Ordering::Release);
    }

    /// Queues a pong; ignored once closing.
    pub fn pong(&self, payload: Bytes) {
        if !self.closed.load(Ordering::Acquire) {
            let _ = self.send(OutFrame::Pong(payload));
        }
    }

    /// Asks the writer to send Close and stop. Only the first call counts. Returns whether
    /// this call was the one that closed.
    pub fn close(&self, code: u16, reason: &str) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        let _ = self.closed_with.set((code, reason.to_string()));
        let _ = self.send(OutFrame::Close(code, reason.to_string()));
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

    /// Every consumer of the queue reports each frame it takes off it (see `pending`).
    pub fn took(&self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Lets pushes write to `sink` directly while nothing is queued. Set by the WebSocket
    /// writer task that owns the socket, when it starts.
    pub fn write_directly_to(&self, sink: Arc<dyn DirectWrite>) {
        self.direct.lock().sink = Some(sink);
        self.direct_on.store(true, Ordering::Release);
    }

    /// No more direct writes: the writer has ended. The socket is let go of here, so that it
    /// is closed with the connection, not when the last holder of this queue drops it.
    pub fn stop_direct(&self) {
        self.direct_on.store(false, Ordering::Release);
        self.direct.lock().sink = None;
    }

    /// The writer task waits for this before it writes anything (pushes that write directly
    /// hold it for one non-blocking write), and calls [`Outbound::done_writing`] after.
    pub async fn start_writing(&self) {
        while !self.try_claim() {
            tokio::task::yield_now().await;
        }
    }

    /// See [`Outbound::start_writing`].
    pub fn done_writing(&self) {
        self.release();
    }

    /// What a direct write left unwritten, to be written before anything else. Only while
    /// writing ([`Outbound::start_writing`]).
    pub fn take_rest(&self) -> Option<Bytes> {
        self.direct.lock().rest.take()
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

    /// A socket that takes at most `room` bytes, then would block.
    struct FakeSocket {
        room: Mutex<usize>,
        got: Mutex<Vec<u8>>,
    }

    impl DirectWrite for FakeSocket {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            let mut room = self.room.lock();
            if *room == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(*room);
                self.got.lock().extend_from_slice(&b[..take]);
                *room -= take;
                n += take;
            }
            Ok(n)
        }

        fn wrote_data(&self, _: u64) {}
    }

    fn socket(room: usize) -> Arc<FakeSocket> {
        Arc::new(FakeSocket {
            room: Mutex::new(room),
            got: Mutex::new(Vec::new()),
        })
    }

    #[test]
    fn an_empty_queue_writes_directly_and_a_busy_one_queues_in_order() {
        let (q, mut rx) = Outbound::new(Format::Json, 1 << 20);
        let sock = socket(1000);
        q.write_directly_to(sock.clone());
        q.push(Bytes::from_static(b"hi")).expect("push");
        assert_eq!(*sock.got.lock(), [0x81, 2, b'h', b'i']);
        assert!(rx.try_recv().is_err(), "nothing queued");
        assert_eq!(q.queued_bytes(), 0);

        // A pong waits in the queue: data goes behind it, not around it.
        q.pong(Bytes::from_static(b"p"));
        q.push(Bytes::from_static(b"yo")).expect("push");
        assert_eq!(sock.got.lock().len(), 4);
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Pong(_))));
        q.took();
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Data(_))));
        q.took();
        q.written(2);

        // The writer busy: queued.
        assert!(q.try_claim());
        q.push(Bytes::from_static(b"zz")).expect("push");
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Data(_))));
        q.took();
        q.written(2);
        q.release();

        // A full socket: queued.
        *sock.room.lock() = 0;
        q.push(Bytes::from_static(b"full")).expect("push");
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Data(_))));
        q.took();
        q.written(4);
    }

    #[test]
    fn what_a_direct_write_leaves_goes_out_first() {
        let (q, mut rx) = Outbound::new(Format::Json, 1 << 20);
        // Part of the header only.
        let sock = socket(1);
        q.write_directly_to(sock.clone());
        q.push(Bytes::from_static(b"abc")).expect("push");
        assert_eq!(*sock.got.lock(), [0x81]);
        // Then more: it queues behind the rest.
        q.push(Bytes::from_static(b"d")).expect("push");
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Rest)));
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Data(d)) if &d[..] == b"d"));
        assert_eq!(q.queued_bytes(), 4 + 1, "the rest counts against the bound");
        assert!(q.try_claim());
        assert_eq!(q.take_rest().as_deref(), Some(&[3, b'a', b'b', b'c'][..]));
        q.release();

        // Past the header: the rest is the payload's tail, shared, not copied.
        let (q, mut rx) = Outbound::new(Format::MsgPack, 1 << 20);
        let sock = socket(3);
        q.write_directly_to(sock.clone());
        let payload = Bytes::from(vec![1u8, 2, 3, 4]);
        q.push(payload.clone()).expect("push");
        assert_eq!(*sock.got.lock(), [0x82, 4, 1]);
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Rest)));
        let rest = q.take_rest().expect("rest");
        assert_eq!(&rest[..], &[2, 3, 4]);
        assert_eq!(rest.as_ptr(), payload[1..].as_ptr());

        // Once the writer ended, nothing is written directly.
        q.stop_direct();
        *sock.room.lock() = 100;
        q.took();
        q.push(Bytes::from_static(b"x")).expect("push");
        assert_eq!(sock.got.lock().len(), 3);
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
            q.push_publication(
                Bytes::from_static(b"x"),
                &publication(room, offset),
                WriteMode::Direct,
            )
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
        q.push_publication(
            Bytes::from_static(b"x"),
            &publication("b", 22),
            WriteMode::Direct,
        )
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
