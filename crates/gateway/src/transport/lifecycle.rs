//! One connection's life, the same for every endpoint: the upgrade completes, the checks that
//! a client hears about as a close code run (the per-address limit here, then the driver's
//! own: a token, the per-user limit), the protocol driver serves the connection in its own
//! task, and whatever happens, a panic included, the connection's sessions are cleaned up and
//! its admission slots given back (they are guards held by the [`Ticket`]).
//!
//! A driver (native, Socket.IO, the test echo) only speaks its protocol.

use super::close;
use super::writer::WriterEnd;
use crate::admission::{Refusal, Rejection, Ticket};
use crate::metrics::DisconnectReason;
use crate::node::Node;
use crate::session;
use fan_out::Outbound;
use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::WebSocket;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use protocol::CloseCode;
use std::future::Future;
use std::sync::Arc;

/// An upgraded HTTP connection.
pub type Ws = WebSocket<TokioIo<Upgraded>>;

/// A protocol spoken over the shared transport.
pub trait Driver: Send + 'static {
    /// The `protocol` and `format` labels of `roomcast_connections`.
    fn labels(&self) -> [&'static str; 2];

    /// The protocol's own admission after the upgrade (a token, the per-user limit); a
    /// refusal closes the connection with its code before anything else is sent.
    fn admit(&mut self, _node: &Node) -> Result<(), Refusal> {
        Ok(())
    }

    /// Speaks the protocol until the connection ends. Every session it opens goes into
    /// `live` while it is open, so that a panic still cleans it up.
    fn serve(
        self,
        node: Arc<Node>,
        ws: Ws,
        live: Live,
    ) -> impl Future<Output = DisconnectReason> + Send;
}

/// One open session: `(conn_id, user)`.
type Open = (Arc<str>, Arc<str>);

/// The sessions a connection has open.
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<Mutex<Vec<Open>>>);

impl Live {
    pub fn add(&self, conn_id: Arc<str>, user: Arc<str>) {
        self.0.lock().push((conn_id, user));
    }

    pub fn remove(&self, conn_id: &str) {
        self.0.lock().retain(|(c, _)| &**c != conn_id);
    }

    fn take(&self) -> Vec<Open> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// Runs one connection from the end of its upgrade to its cleanup.
pub async fn run<D: Driver>(
    node: Arc<Node>,
    upgrade: UpgradeFut,
    mut ticket: Ticket,
    mut driver: D,
) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    if let Err(refusal) = ticket.admit_ip(&node).and_then(|()| driver.admit(&node)) {
        node.metrics.rejected(refusal.rejection);
        if refusal.rejection == Rejection::Auth {
            node.metrics.disconnect(DisconnectReason::Auth);
        }
        close::reject(ws, refusal.code, &refusal.reason).await;
        return;
    }
    let labels = driver.labels();
    serve_admitted(node, ticket, labels, move |node, live| {
        driver.serve(node, ws, live)
    })
    .await;
}

/// Serves an admitted connection, whatever carries it (a WebSocket, or an Engine.IO
/// long-polling session): counted in `roomcast_connections` under `labels`, its driver in its
/// own task, its sessions cleaned up whatever happens, and its admission places given back
/// when it ends (the `ticket` is dropped last).
pub async fn serve_admitted<F, Fut>(
    node: Arc<Node>,
    ticket: Ticket,
    labels: [&'static str; 2],
    serve: F,
) where
    F: FnOnce(Arc<Node>, Live) -> Fut,
    Fut: Future<Output = DisconnectReason> + Send + 'static,
{
    node.metrics.connections_accepted.inc();
    let gauge = node.metrics.connections.with_label_values(&labels);
    gauge.inc();
    // The driver runs in its own task so that a panic in it (none is known: the decoders are
    // fuzzed and frame sequences property-tested) still ends in a full cleanup.
    let live = Live::default();
    let task = tokio::spawn(serve(node.clone(), live.clone()));
    let reason = match task.await {
        Ok(reason) => reason,
        Err(e) => {
            tracing::error!(error = %e, "connection task failed; cleaning up");
            for (conn_id, user) in live.take() {
                session::abandon(&node, &conn_id, &user).await;
            }
            DisconnectReason::ProtocolError
        }
    };
    gauge.dec();
    node.metrics.disconnect(reason);
    drop(ticket);
}

/// Why a served connection ended, from how its writer ended; `fallback` is what the driver
/// saw (the client closed, broke the protocol, timed out).
pub fn disconnect_reason(
    end: Option<WriterEnd>,
    outbound: &Outbound,
    fallback: DisconnectReason,
) -> DisconnectReason {
    match end {
        Some(WriterEnd::Closed(code)) => match code {
            CloseCode::SERVICE_RESTART => DisconnectReason::Drain,
            CloseCode::KICKED => DisconnectReason::Kicked,
            CloseCode::SLOW_CONSUMER => DisconnectReason::SlowConsumer,
            CloseCode::HEARTBEAT_TIMEOUT => DisconnectReason::Timeout,
            _ => fallback,
        },
        Some(WriterEnd::HeartbeatTimeout) => DisconnectReason::Timeout,
        // A slow consumer whose socket stayed blocked never got its Close frame.
        _ if outbound.is_discarding() => DisconnectReason::SlowConsumer,
        _ => fallback,
    }
}
