//! The Engine.IO heartbeat (in v4 the server pings): the first ping goes out one full
//! interval after the session opened, and a client that does not answer within the timeout
//! is closed.
//!
//! The deadline is also readable from outside the task ([`Clock::overdue`]): a long-polling
//! request that arrives after it must find the session closed, even when the timer task has
//! not run yet (a busy machine). Deadlines count from when a ping was due, not from when the
//! task got to send it, for the same reason.

use bytes::Bytes;
use fan_out::Outbound;
use protocol::CloseCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{sleep_until, timeout_at, Instant};

/// A session's heartbeat clock: when it started, and when the pending pong is due.
#[derive(Debug)]
pub struct Clock {
    epoch: Instant,
    /// Milliseconds after `epoch` by which the pending pong must arrive; 0 when none is.
    due_ms: AtomicU64,
}

impl Clock {
    /// A clock starting now: the session's open packet is being sent.
    pub fn start() -> Arc<Clock> {
        Arc::new(Clock {
            epoch: Instant::now(),
            due_ms: AtomicU64::new(0),
        })
    }

    /// Whether a pong is overdue.
    pub fn overdue(&self) -> bool {
        let due = self.due_ms.load(Ordering::Acquire);
        due != 0 && self.epoch.elapsed().as_millis() as u64 >= due
    }

    fn set_due(&self, at: Option<Instant>) {
        let ms = at.map_or(0, |at| (at - self.epoch).as_millis().max(1) as u64);
        self.due_ms.store(ms, Ordering::Release);
    }
}

/// Pings every `interval` after the last pong; closes the connection (4010) when a pong is
/// more than `limit` late.
pub async fn run(
    clock: Arc<Clock>,
    outbound: Arc<Outbound>,
    pong: Arc<Notify>,
    interval: Duration,
    limit: Duration,
) {
    let mut next = clock.epoch + interval;
    loop {
        sleep_until(next).await;
        if outbound.push(Bytes::from_static(b"2")).is_err() {
            return;
        }
        let due = next + limit;
        clock.set_due(Some(due));
        if timeout_at(due, pong.notified()).await.is_err() {
            outbound.close(CloseCode::HEARTBEAT_TIMEOUT, "ping timeout");
            return;
        }
        clock.set_due(None);
        next = Instant::now() + interval;
    }
}
