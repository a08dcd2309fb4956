//! The publish proxy (`--publish-proxy`): asks the app about a client's publish to a matching
//! room (`--publish-proxy-rooms`) before it is sequenced.
//!
//! `session::admit_publish` runs the client's own checks first (rooms claim, size, rate
//! budget) and, for a room the proxy applies to, the membership check (the node's registry:
//! a non-member's message never costs the app a request); only then is the app asked, and
//! only its answer goes to the store.
//!
//! The app's answer takes a round trip, and a connection pipelines its publishes (up to
//! `session::MAX_PUBLISHES_IN_FLIGHT`): so the calls for one connection's publishes run
//! concurrently, and each proxied publish then waits for its [`Turns`] before its store
//! command is sent. A connection's proxied publishes therefore reach the store in the order
//! the client sent them, whichever answer comes first. Publishes to rooms the proxy does not
//! apply to keep the direct path (they never wait for the app); a room is either proxied or
//! not, so the order within a room is kept either way. The server API's publish does not pass
//! through the proxy: it is the app's own.
//!
//! A rewrite is client data again: it must pass the same checks (depth and `$bin` here, in
//! `Data::from_value`; size and byte strings in the caller).

use super::client::HookClient;
use super::wire::{self, PublishRequest, Verdict};
use crate::config::FailMode;
use crate::node::Node;
use protocol::frame::ErrorBody;
use protocol::{Data, ErrorCode};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

/// The publish proxy of a node.
#[derive(Debug)]
pub struct PublishProxy {
    pub(super) client: HookClient,
    pub(super) fail: FailMode,
    /// `--publish-proxy-rooms`; empty: every room.
    pub(super) rooms: Vec<String>,
}

/// The order in which one connection's proxied publishes may reach the store: each takes a
/// ticket in request order ([`Turns::ticket`], in the connection's read loop) and sends its
/// store command only on its turn ([`Turn::wait`]); dropping the [`Turn`] (store command
/// sent, or no store at all: rejected, failed) passes the turn on.
// No heap behind it (a `Notify` and two counters, not a watch channel): every session has
// one, proxy or not, and an idle connection's size counts (issue 12).
#[derive(Debug, Default)]
pub struct Turns {
    issued: AtomicU64,
    turn: AtomicU64,
    moved: Notify,
}

impl Turns {
    /// The next ticket. Must be called in the order the client sent its publishes.
    pub fn ticket(&self) -> u64 {
        self.issued.fetch_add(1, Ordering::Relaxed)
    }
}

/// One publish's place in [`Turns`]; passes the turn on when dropped.
#[derive(Debug)]
pub struct Turn<'a> {
    turns: &'a Turns,
    ticket: u64,
}

impl<'a> Turn<'a> {
    pub fn new(turns: &'a Turns, ticket: u64) -> Turn<'a> {
        Turn { turns, ticket }
    }

    /// Waits until every publish ticketed before this one sent its store command (or gave
    /// up).
    pub async fn wait(&self) {
        loop {
            // Registered before the check, so a turn passed on in between is not missed.
            let moved = self.turns.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.turns.turn.load(Ordering::Acquire) >= self.ticket {
                return;
            }
            moved.await;
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Only from its own turn: a publish dropped before its turn (the connection is gone)
        // must not let later ones overtake earlier ones.
        let ticket = self.ticket;
        let passed = self.turns.turn.compare_exchange(
            ticket,
            ticket + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if passed.is_ok() {
            self.turns.moved.notify_waiters();
        }
    }
}

/// Who publishes.
#[derive(Debug)]
pub struct Publishing<'a> {
    /// The room as the client named it (a Socket.IO namespace's prefix removed).
    pub room: &'a str,
    pub user: &'a str,
    pub conn_id: &'a str,
}

impl PublishProxy {
    /// Whether the proxy applies to `room`, by its full name (a Socket.IO namespace's prefix
    /// included: `admin/x`), as docs/protocol.md says.
    pub fn applies(&self, room: &str) -> bool {
        self.rooms.is_empty()
            || self
                .rooms
                .iter()
                .any(|p| protocol::room_name::pattern_matches(p, room))
    }

    /// Asks the app: the data to sequence (the client's, or the app's rewrite), or the error
    /// the client gets.
    pub async fn check(
        &self,
        node: &Node,
        who: Publishing<'_>,
        data: Data,
    ) -> Result<Data, ErrorBody> {
        let raw: &RawValue = serde_json::from_str(data.as_json())
            .map_err(|_| ErrorBody::new(ErrorCode::Internal, "internal error"))?;
        let request = PublishRequest {
            room: who.room,
            user: who.user,
            conn_id: who.conn_id,
            node: &node.id,
            data: raw,
        };
        match super::call(
            node,
            "publish",
            &self.client,
            &request,
            wire::publish_answer,
        )
        .await
        {
            Ok(Verdict::Accept) => {
                super::count(node, "publish", "accept");
                Ok(data)
            }
            Ok(Verdict::Reject(app)) => {
                super::count(node, "publish", "reject");
                let message = if app.message.is_empty() {
                    "rejected by the application".to_string()
                } else {
                    app.message
                };
                let mut e = ErrorBody::new(ErrorCode::Rejected, message);
                e.reason = Some(app.code);
                Err(e)
            }
            Ok(Verdict::Rewrite(value)) => match Data::from_value(&value) {
                Ok(rewritten) => {
                    super::count(node, "publish", "rewrite");
                    Ok(rewritten)
                }
                Err(e) => {
                    // The app's mistake, but a rewrite cannot be half-applied: refused.
                    super::count(node, "publish", "garbage");
                    tracing::warn!(error = %e, "publish proxy rewrote into invalid data");
                    Err(ErrorBody::new(
                        ErrorCode::Rejected,
                        format!("the application's rewrite is not valid data: {e}"),
                    ))
                }
            },
            Err(e) => {
                super::count(node, "publish", e.label());
                tracing::warn!(error = %e, fail = ?self.fail, "publish proxy failed");
                match self.fail {
                    FailMode::Open => Ok(data),
                    FailMode::Closed => Err(ErrorBody::new(
                        ErrorCode::Unavailable,
                        "the application could not check this message; not published, retry",
                    )
                    .retry_after(1000)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Turns come in ticket order, whichever publish is ready first; a turn dropped after its
    /// time passes it on, and one dropped early does not let a later one overtake.
    #[tokio::test]
    async fn turns_follow_tickets() {
        let turns = Turns::default();
        let (t0, t1, t2) = (turns.ticket(), turns.ticket(), turns.ticket());
        let order = parking_lot::Mutex::new(Vec::new());
        let go = |ticket: u64, delay_ms: u64| {
            let (turns, order) = (&turns, &order);
            async move {
                let turn = Turn::new(turns, ticket);
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                turn.wait().await;
                order.lock().push(ticket);
            }
        };
        // The first is ready last.
        tokio::join!(go(t0, 60), go(t1, 0), go(t2, 20));
        assert_eq!(*order.lock(), vec![0, 1, 2]);

        let (t3, t4) = (turns.ticket(), turns.ticket());
        // Dropped before its turn: the turn stays where it is.
        drop(Turn::new(&turns, t4));
        assert_eq!(turns.turn.load(Ordering::Acquire), 3);
        drop(Turn::new(&turns, t3));
        assert_eq!(turns.turn.load(Ordering::Acquire), 4);
    }
}
