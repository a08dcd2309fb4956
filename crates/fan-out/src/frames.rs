//! The channel between a connection's [`Outbound`](crate::Outbound) and its writer: one
//! sender (the queue), one receiver (the writer task, or a long-polling request), unbounded
//! here because `Outbound` bounds it in bytes.
//!
//! Why not `tokio::sync::mpsc::unbounded_channel`: it allocates its first block of 32 slots
//! and a cache-padded channel head when it is created, about 1.6 KiB that every connection
//! carried while idle (heaptrack, 19k idle connections: the largest item after the
//! connection's own task). Here an idle connection holds one small allocation, and the
//! frames' buffer exists only while frames wait; the writer that drains it gives a grown
//! buffer back. One lock per send and per receive, never held across anything but a
//! `VecDeque` operation, so pushers on other threads wait for nanoseconds at most.

use crate::outbound::OutFrame;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// A drained buffer above this many slots is freed rather than kept: a burst's buffer is
/// not carried by an idle connection.
const KEEP_SLOTS: usize = 16;

struct State {
    frames: VecDeque<OutFrame>,
    /// The receiver waiting for a frame.
    waker: Option<Waker>,
    sender_alive: bool,
    receiver_alive: bool,
}

type Shared = Arc<Mutex<State>>;

/// Creates a channel: the sending half for the queue, the receiving half for its writer.
pub fn channel() -> (FrameSender, FrameReceiver) {
    let shared = Arc::new(Mutex::new(State {
        frames: VecDeque::new(),
        waker: None,
        sender_alive: true,
        receiver_alive: true,
    }));
    (
        FrameSender {
            shared: shared.clone(),
        },
        FrameReceiver { shared },
    )
}

/// The queue's half. Dropping it ends the receiver once the frames sent are taken.
pub struct FrameSender {
    shared: Shared,
}

impl FrameSender {
    /// Queues `frame`; gives it back when the receiver is gone.
    pub fn send(&self, frame: OutFrame) -> Result<(), OutFrame> {
        let waker = {
            let mut state = self.shared.lock();
            if !state.receiver_alive {
                return Err(frame);
            }
            state.frames.push_back(frame);
            state.waker.take()
        };
        // Woken outside the lock: the receiver's thread may run it at once.
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.sender_alive = false;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender").finish_non_exhaustive()
    }
}

/// Why [`FrameReceiver::try_recv`] returned no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    #[error("no frame queued")]
    Empty,
    #[error("the queue is gone and empty")]
    Disconnected,
}

/// The writer's half. Dropping it refuses every later send and drops what was queued.
pub struct FrameReceiver {
    shared: Shared,
}

impl FrameReceiver {
    /// The next frame, or `None` once the sender is gone and nothing is left. Cancel-safe: a
    /// frame is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<OutFrame> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(frame) = take(&mut state) {
                return Poll::Ready(Some(frame));
            }
            if !state.sender_alive {
                return Poll::Ready(None);
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next frame if one is queued now.
    pub fn try_recv(&mut self) -> Result<OutFrame, TryRecvError> {
        let mut state = self.shared.lock();
        match take(&mut state) {
            Some(frame) => Ok(frame),
            None if state.sender_alive => Err(TryRecvError::Empty),
            None => Err(TryRecvError::Disconnected),
        }
    }
}

/// Takes the oldest frame, and frees a grown buffer once it is empty.
fn take(state: &mut State) -> Option<OutFrame> {
    let frame = state.frames.pop_front()?;
    if state.frames.is_empty() && state.frames.capacity() > KEEP_SLOTS {
        state.frames = VecDeque::new();
    }
    Some(frame)
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        let left = {
            let mut state = self.shared.lock();
            state.receiver_alive = false;
            state.waker = None;
            std::mem::take(&mut state.frames)
        };
        // Dropped outside the lock (frames hold shared bytes).
        drop(left);
    }
}

impl std::fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReceiver").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn data(b: &'static [u8]) -> OutFrame {
        OutFrame::Data(Bytes::from_static(b))
    }

    #[tokio::test]
    async fn frames_come_out_in_order_then_none_once_the_sender_is_gone() {
        let (tx, mut rx) = channel();
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Empty));
        for b in [&b"a"[..], b"b", b"c"] {
            assert!(tx.send(data(b)).is_ok());
        }
        for want in [&b"a"[..], b"b", b"c"] {
            assert!(matches!(rx.recv().await, Some(OutFrame::Data(d)) if d == want));
        }
        assert!(tx.send(data(b"d")).is_ok());
        drop(tx);
        assert!(matches!(rx.try_recv(), Ok(OutFrame::Data(d)) if d == "d"));
        assert_eq!(rx.try_recv().err(), Some(TryRecvError::Disconnected));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = channel();
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        assert!(tx.send(data(b"x")).is_ok());
        let got = waiting.await.ok().flatten();
        assert!(matches!(got, Some(OutFrame::Data(d)) if d == "x"));
    }

    #[test]
    fn a_send_after_the_receiver_is_gone_gives_the_frame_back() {
        let (tx, rx) = channel();
        assert!(tx.send(data(b"kept")).is_ok());
        drop(rx);
        assert!(matches!(tx.send(data(b"back")), Err(OutFrame::Data(d)) if d == "back"));
    }

    #[test]
    fn a_drained_burst_gives_its_buffer_back() {
        let (tx, mut rx) = channel();
        for _ in 0..1000 {
            assert!(tx.send(data(b"f")).is_ok());
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(tx.shared.lock().frames.capacity(), 0);
    }
}
