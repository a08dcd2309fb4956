//! A connection's outbound queue, bounded in bytes.
//!
//! The queue is an unbounded channel plus a byte counter: pushing is a non-blocking send
//! that is refused once the bytes still queued would exceed the limit. The connection's
//! writer task subtracts what it has written. Control frames (pong, close) bypass the limit,
//! because they are tiny and must not be lost.

use bytes::Bytes;
use protocol::Format;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::mpsc;

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
        let _ = self.tx.send(OutFrame::Close(code, reason.to_string()));
        true
    }

    /// Whether queued data should be dropped rather than written (slow consumer).
    pub fn is_discarding(&self) -> bool {
        self.discard.load(Ordering::Acquire)
    }

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
}
