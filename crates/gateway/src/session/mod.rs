//! What a client can do, independent of its wire protocol: one function per op, from a
//! decoded request to a reply body. The native and the Socket.IO drivers both call
//! [`handle`], then [`after_reply`] once the reply is queued.
//!
//! - [`create`]: `create_room` and its gates.
//! - [`membership`]: `join`, `leave`, and the cleanup of a closing connection.
//! - [`messages`]: `publish` (sequenced, or ephemeral: see `messages::store_publish`),
//!   `presence`, `history`.
//! - [`refresh`]: a new token on an open connection.

mod create;
mod membership;
mod messages;
mod refresh;

pub use membership::{abandon, cleanup, leave_room};
pub use messages::{admit_publish, finish_publish};

use crate::auth::Identity;
use crate::clock::now_ms;
use crate::node::Node;
use fan_out::{deliver_held, Outbound};
use protocol::frame::{ErrorBody, OkBody, Op};
use protocol::ErrorCode;
use room_state::StateError;
use std::sync::Arc;

/// The most publishes of one connection waiting for the store at once (reading stops while
/// this many are out: back-pressure on the client's socket, never an unbounded queue).
///
/// Each publish carries the connection's next sequence number ([`Session::publish_seq`],
/// taken when it is sent), and the store refuses one that arrives after a later one was
/// sequenced (`room_state::Publisher`): a publish re-sent by the client library after a
/// failover can no longer land behind the next one (the short chaos run saw 72 out-of-order
/// deliveries when this was first raised without the check).
///
/// Retries are the one way left to reorder them: when a primary answers `NOSCRIPT` or `MOVED`,
/// every pipelined publish behind the first gets the same answer and is re-sent on its own, in
/// whatever order their futures wake, and the order check must refuse the ones that land
/// behind a later publish (`unavailable`: not applied, the client may retry). The store loads
/// its scripts on every primary ahead of use (`room_state`'s `redis/warm.rs`), so that happens
/// only around a failover or a slot move, when `unavailable` answers are expected anyway; with
/// 16 in flight and no preloading, a fresh cluster's first publishes got it (the 3-node
/// Socket.IO test failed that way).
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 16;

/// One client connection as the ops see it.
#[derive(Debug)]
pub struct Session {
    pub conn_id: Arc<str>,
    pub identity: Identity,
    pub outbound: Arc<Outbound>,
    /// Put before every room name this session uses: `""` for native clients and Socket.IO's
    /// `/`, `admin/` for the namespace `/admin` (see `socketio::namespace`).
    pub room_prefix: String,
    /// The last sequence number given to one of this connection's publishes.
    pub publish_seq: std::sync::atomic::AtomicU64,
    /// The order of this connection's publishes through the publish proxy.
    pub publish_turns: crate::backend_hooks::publish::Turns,
}

/// Work to do once the reply is queued.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// Release live messages held during a join (see `Registry::activate`).
    Activate {
        room: String,
        epoch: String,
        offset: u64,
        /// An ephemeral room: the fan-out gets no starting point, it sequences nothing there.
        ephemeral: bool,
    },
}

pub type OpResult = Result<OkBody, ErrorBody>;

fn state_error(node: &Node, op: &str, e: StateError) -> ErrorBody {
    match e {
        StateError::NotFound => ErrorBody::new(ErrorCode::NotFound, "room not found"),
        StateError::RoomExists => ErrorBody::new(ErrorCode::RoomExists, "room already exists"),
        StateError::RoomFull => ErrorBody::new(ErrorCode::RoomFull, "room is full"),
        StateError::NotMember => ErrorBody::new(ErrorCode::NotMember, "not a member of this room"),
        // Internals stay in the log and the metrics, not in the client's error.
        StateError::Unavailable(detail) => {
            node.metrics.backend_errors.with_label_values(&[op]).inc();
            tracing::warn!(op, %detail, "backend unavailable");
            ErrorBody::new(ErrorCode::Unavailable, "service temporarily unavailable")
                .retry_after(1000)
        }
        StateError::Timeout(detail) => {
            node.metrics.backend_errors.with_label_values(&[op]).inc();
            tracing::warn!(op, %detail, "backend timeout: outcome unknown");
            ErrorBody::new(
                ErrorCode::Timeout,
                "no answer in time: the outcome is unknown; retry with the same msgId",
            )
        }
        StateError::Internal(detail) => {
            node.metrics.backend_errors.with_label_values(&[op]).inc();
            tracing::error!(op, %detail, "backend error");
            ErrorBody::new(ErrorCode::Internal, "internal error")
        }
    }
}

fn forbidden(room: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Forbidden,
        format!("your token does not allow room '{room}'"),
    )
}

/// Runs one op.
pub async fn handle(node: &Node, s: &Session, op: Op) -> (OpResult, After) {
    let name = op.name();
    let timer = node.metrics.op_duration(name).start_timer();
    let result = match op {
        Op::CreateRoom { room, options } => create::create_room(node, s, room, options).await,
        Op::Join { room, since } => membership::join(node, s, &room, since.as_ref()).await,
        Op::Leave { room } => (membership::leave(node, s, &room).await, After::Nothing),
        Op::Publish { room, data, msg_id } => (
            messages::publish(node, s, &room, data, msg_id.as_ref()).await,
            After::Nothing,
        ),
        Op::Presence { room } => (messages::presence(node, s, &room).await, After::Nothing),
        Op::History {
            room,
            limit,
            before,
        } => (
            messages::history(node, s, &room, limit, before).await,
            After::Nothing,
        ),
        Op::Ping => (Ok(OkBody::Pong { pong: now_ms() }), After::Nothing),
        Op::Refresh { token } => (refresh::refresh(node, s, &token), After::Nothing),
    };
    timer.observe_duration();
    result
}

/// Queues what a join held back, after its reply went out.
pub fn after_reply(node: &Node, s: &Session, after: After) {
    if let After::Activate {
        room,
        epoch,
        offset,
        ephemeral,
    } = after
    {
        let (conn, held) = node.registry.activate(&room, &s.conn_id, &epoch, offset);
        if let Some(conn) = conn {
            if !ephemeral {
                node.backends.fanout.track(&room, &epoch, offset);
            }
            deliver_held(&conn, &held, &*node.metrics);
        }
    }
}
