//! One long-polling session: what its HTTP requests share with the Socket.IO driver.
//!
//! Outbound, the driver pushes packets into the connection's [`Outbound`] queue as it would
//! for a WebSocket; a GET takes what is queued (waiting for the first packet) and answers it
//! as one payload. Inbound, a POST decodes its payload and hands the packets to the driver
//! through a channel, and answers once the driver has handled them all, so a GET that
//! follows a POST sees the replies.
//!
//! The upgrade (see [`crate::socketio::upgrade`]) goes Polling → Probing (a WebSocket asked
//! for it) → Paused (the probe was answered: a pending GET is released with a noop, and no
//! GET waits for data any more) → Upgraded (the client sent `5`): the WebSocket is handed to
//! the driver through the same channel as the POSTs, after everything posted before it, and
//! the driver gives it this queue, so the switch loses and reorders nothing.

use crate::socketio::heartbeat::Clock;
use crate::transport::Probe;
use fan_out::Outbound;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use protocol::polling::Packet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

/// A GET that came through a peer may be cut off with that peer (killed) while the client
/// lives on: the balancer sends the GET again, to another node or here, maybe before this
/// node has seen the relayed one's connection close. So a GET that finds a relayed GET pending
/// waits this long for it to end, and a relayed GET that broke off ends the session only if no
/// GET follows within this long (see [`super::poll`]).
pub const RELAY_GRACE: Duration = Duration::from_secs(1);

/// Which GET holds the session's one pending-GET slot ([`Session::begin_poll`]).
const NO_GET: u8 = 0;
const DIRECT_GET: u8 = 1;
const RELAYED_GET: u8 = 2;

/// A WebSocket whose probe succeeded.
pub type ProbedSocket = Box<Probe<TokioIo<Upgraded>>>;

/// What the driver receives from the HTTP side.
pub enum Inbound {
    /// A POST's packets; `done` fires when the driver has handled every one.
    Payload {
        packets: Vec<Packet>,
        done: oneshot::Sender<()>,
    },
    /// The client completed the upgrade on this WebSocket.
    Upgrade(ProbedSocket),
}

/// Where the upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Polling = 0,
    Probing = 1,
    Paused = 2,
    Upgraded = 3,
}

impl Stage {
    fn from_u8(n: u8) -> Stage {
        match n {
            1 => Stage::Probing,
            2 => Stage::Paused,
            3 => Stage::Upgraded,
            _ => Stage::Polling,
        }
    }
}

pub struct Session {
    pub sid: String,
    pub outbound: Arc<Outbound>,
    /// The queue's receiving end while polling drains it (`None` once the upgrade took it).
    /// A GET holds the lock while it waits, so GETs never interleave.
    pub(super) queue: Mutex<Option<fan_out::FrameReceiver>>,
    pub(super) inbound: mpsc::Sender<Inbound>,
    /// Which GET is in progress, if any (a second one at the same time is an error).
    poll: AtomicU8,
    /// Wakes a GET waiting for a relayed one to end.
    poll_ended: Notify,
    /// How many GETs began: a relayed GET that broke off ends the session unless it grew.
    pub(super) polls_begun: AtomicU64,
    /// A POST is in progress (likewise).
    pub(super) posting: AtomicBool,
    stage: AtomicU8,
    /// A GET took the close from the queue: nothing is left to answer.
    pub(super) close_taken: AtomicBool,
    /// Wakes a waiting GET when the stage changes.
    pub(super) wake: Notify,
    /// Tells the driver a GET took the close.
    close_answer: Notify,
    pub clock: Arc<Clock>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .field("stage", &self.stage())
            .finish()
    }
}

impl Session {
    /// A session draining `rx` (the receiving end of `outbound`), and the driver's end of
    /// its inbound channel.
    pub fn new(
        sid: String,
        outbound: Arc<Outbound>,
        rx: fan_out::FrameReceiver,
        clock: Arc<Clock>,
    ) -> (Arc<Session>, mpsc::Receiver<Inbound>) {
        // One POST at a time, plus an upgrade.
        let (tx, inbound) = mpsc::channel(4);
        let session = Session {
            sid,
            outbound,
            queue: Mutex::new(Some(rx)),
            inbound: tx,
            poll: AtomicU8::new(NO_GET),
            poll_ended: Notify::new(),
            polls_begun: AtomicU64::new(0),
            posting: AtomicBool::new(false),
            stage: AtomicU8::new(Stage::Polling as u8),
            close_taken: AtomicBool::new(false),
            wake: Notify::new(),
            close_answer: Notify::new(),
            clock,
        };
        (Arc::new(session), inbound)
    }

    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    fn set_stage(&self, stage: Stage) {
        self.stage.store(stage as u8, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Starts a probe; false if one is under way or the session upgraded already.
    pub fn begin_probe(&self) -> bool {
        self.stage
            .compare_exchange(
                Stage::Polling as u8,
                Stage::Probing as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The probe was answered: release a pending GET, hold no new one.
    pub fn pause(&self) {
        self.set_stage(Stage::Paused);
    }

    /// The probe failed: polling carries on.
    pub fn end_probe(&self) {
        self.set_stage(Stage::Polling);
    }

    /// The client sent `5` on `socket`: polling requests are refused from now on, and the
    /// driver gets the socket after every payload posted before. False if the driver is gone.
    pub async fn upgrade(&self, socket: ProbedSocket) -> bool {
        self.set_stage(Stage::Upgraded);
        self.inbound.send(Inbound::Upgrade(socket)).await.is_ok()
    }

    /// Takes the queue for the WebSocket writer, once the last GET let go of it.
    pub async fn take_queue(&self) -> Option<fan_out::FrameReceiver> {
        self.queue.lock().await.take()
    }

    /// Takes the slot of the session's one pending GET; false for a GET that overlaps
    /// another, which the reference server treats as a client error. Except when the pending
    /// GET was relayed ([`RELAY_GRACE`]): this one waits at most that long for it to end.
    pub(super) async fn begin_poll(&self, relayed: bool) -> bool {
        let me = if relayed { RELAYED_GET } else { DIRECT_GET };
        let deadline = tokio::time::Instant::now() + RELAY_GRACE;
        loop {
            let ended = self.poll_ended.notified();
            tokio::pin!(ended);
            // Registered before the slot is read, so an end in between wakes us.
            ended.as_mut().enable();
            match self
                .poll
                .compare_exchange(NO_GET, me, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.polls_begun.fetch_add(1, Ordering::AcqRel);
                    return true;
                }
                Err(RELAYED_GET) => {
                    if tokio::time::timeout_at(deadline, ended).await.is_err() {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Gives the pending-GET slot back.
    pub(super) fn end_poll(&self) {
        self.poll.store(NO_GET, Ordering::Release);
        self.poll_ended.notify_waiters();
    }

    /// A GET took the close from the queue.
    pub(super) fn close_answered_now(&self) {
        self.close_taken.store(true, Ordering::Release);
        self.close_answer.notify_waiters();
    }

    /// Resolves once a GET took the close from the queue.
    pub async fn close_answered(&self) {
        loop {
            let n = self.close_answer.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.close_taken.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }

    /// Ends the session for a client error (overlapping requests, a bad payload). A waiting
    /// GET answers the close; the driver sees the queue closed.
    pub fn fail(&self, code: u16, why: &str) {
        self.outbound.close(code, why);
    }
}

/// Clears a request-in-progress flag when the request ends, however it ends.
pub(super) struct Busy<'a>(pub(super) &'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
