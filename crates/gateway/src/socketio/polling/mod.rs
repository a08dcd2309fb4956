//! Engine.IO v4 HTTP long-polling: a session that lives between HTTP requests.
//!
//! - this file: the node's table of polling sessions, by `sid`.
//! - [`session`]: one session: the queue its GETs drain, the channel its POSTs feed, and the
//!   state of its upgrade to WebSocket.
//! - [`open`]: the handshake (`GET` without `sid`): admission, the open packet, the driver.
//! - [`poll`]: `GET` with `sid`: waits for packets and answers them as one payload.
//! - [`data`]: `POST` with `sid`: a payload of packets for the Socket.IO driver.
//!
//! The Socket.IO driver does not know which transport it runs on: it reads packets from
//! [`super::engine::Engine`] and pushes replies into the connection's outbound queue, which a
//! GET drains here, or the WebSocket writer after an upgrade.

pub mod data;
pub mod open;
pub mod poll;
pub mod session;

pub use session::Session;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The polling sessions a node owns. A session stays listed until its connection ends, also
/// after an upgrade, so that late polling requests get "Bad request" rather than "Session ID
/// unknown". A closed session is not returned, except after the client's own close until a
/// GET took its answer (a noop): the client may send its close and its last GET at once, and
/// the reference server, handling them in order of arrival, answers that GET.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    /// The open session `sid` names.
    pub fn get(&self, sid: &str) -> Option<Arc<Session>> {
        let session = self.map.lock().get(sid).cloned()?;
        // A pong overdue is a closed session, whether or not the heartbeat task ran yet.
        if session.clock.overdue() {
            session.fail(protocol::CloseCode::HEARTBEAT_TIMEOUT, "ping timeout");
        }
        let open = !session.outbound.is_closed()
            || (session.outbound.close_reason() == Some(crate::socketio::CLIENT_CLOSED)
                && !session
                    .close_taken
                    .load(std::sync::atomic::Ordering::Acquire));
        open.then_some(session)
    }

    fn insert(&self, session: Arc<Session>) {
        self.map.lock().insert(session.sid.clone(), session);
    }

    fn remove(&self, sid: &str) {
        self.map.lock().remove(sid);
    }

    /// How many sessions are listed.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A session's place in its node's table, given up when the connection ends, a panic
/// included (it is dropped with the driver's transport).
#[derive(Debug)]
pub struct Listed {
    node: Arc<crate::node::Node>,
    sid: String,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.node.polling.remove(&self.sid);
    }
}
