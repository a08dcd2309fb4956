//! The engine transport: what the Socket.IO driver reads packets from, whatever carries
//! them. Replies never pass through here: the driver pushes them into the connection's
//! outbound queue, which the WebSocket writer or a long-polling GET drains.
//!
//! A long-polling session can become a WebSocket one mid-flight (the upgrade): the probed
//! WebSocket reaches [`Engine::read`] through the session's inbound channel, after every
//! payload posted before it, and is given the session's queue; from then on `read` reads the
//! WebSocket. Nothing is lost or reordered either way: inbound, the client sends nothing
//! over the WebSocket before `5`, and nothing over polling after it; outbound, one queue.

use super::heartbeat::Clock;
use super::polling::session::{Inbound, Session};
use super::polling::Listed;
use super::CLIENT_CLOSED;
use crate::node::Node;
use crate::transport::{Ending, Liveness, Read, Socket, WriterEnd};
use fan_out::Outbound;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use protocol::polling::Packet;
use protocol::CloseCode;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

type WsSocket = Socket<TokioIo<Upgraded>>;

/// How long a session closed by its client stays listed for the GET that answers the close.
const CLOSE_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// A session's engine transport.
pub enum Engine {
    WebSocket {
        socket: WsSocket,
        /// Set when the session began with polling: its listing is kept until the end.
        _listed: Option<Listed>,
    },
    Polling(Polling),
}

/// Which heartbeat sends a session's Engine.IO pings.
pub enum Pings {
    /// A task of the session's own, on this clock (a session that began with long-polling).
    Own(Arc<Clock>),
    /// The shared ping ticker, through the WebSocket's writer (a WebSocket from the start).
    Ticker(Liveness),
}

/// The driver's side of a long-polling session.
pub struct Polling {
    session: Arc<Session>,
    inbound: mpsc::Receiver<Inbound>,
    /// The rest of the payload being handled.
    batch: VecDeque<Packet>,
    /// Tells the payload's POST that every packet was handled.
    done: Option<oneshot::Sender<()>>,
    listed: Listed,
}

/// A new Engine.IO session id. It starts with the tag of the node that owns the session,
/// so that a request for it reaching another node can be sent on to the owner.
pub fn new_sid(node: &Node) -> String {
    format!("{}.{}", sid_tag(&node.id), super::namespace::random_id())
}

/// The part of a `sid` that names its node: the node id when it is URL-safe, else a hash
/// of it.
pub fn sid_tag(node_id: &str) -> String {
    let safe = !node_id.is_empty()
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if safe {
        node_id.to_string()
    } else {
        format!("h{:016x}", protocol::hash::fnv1a(node_id.as_bytes()))
    }
}

/// The node tag of a `sid`, if it has one.
pub fn owner_tag(sid: &str) -> Option<&str> {
    sid.rsplit_once('.').map(|(tag, _)| tag)
}

impl Engine {
    /// A WebSocket from the start; its writer sends the Engine.IO pings (the socket is opened
    /// with them, from the shared ticker).
    pub fn websocket(socket: WsSocket) -> Engine {
        Engine::WebSocket {
            socket,
            _listed: None,
        }
    }

    /// A long-polling session.
    pub fn polling(
        session: Arc<Session>,
        inbound: mpsc::Receiver<Inbound>,
        listed: Listed,
    ) -> Engine {
        Engine::Polling(Polling {
            session,
            inbound,
            batch: VecDeque::new(),
            done: None,
            listed,
        })
    }

    /// Where the session's pings come from, asked when the session starts (see
    /// `connection::Pongs` for why the two differ). A session upgraded later keeps what it
    /// started with.
    pub fn pings(&self) -> Pings {
        match self {
            Engine::WebSocket { socket, .. } => Pings::Ticker(socket.liveness()),
            Engine::Polling(p) => Pings::Own(p.session.clock.clone()),
        }
    }

    pub fn outbound(&self) -> &Arc<Outbound> {
        match self {
            Engine::WebSocket { socket, .. } => &socket.outbound,
            Engine::Polling(p) => &p.session.outbound,
        }
    }

    /// The next whole message, or the end of the session. Not cancel-safe on a WebSocket
    /// (see [`Socket::read`]).
    pub async fn read(&mut self) -> Read {
        loop {
            let probed = match self {
                Engine::WebSocket { socket, .. } => return socket.read().await,
                // Boxed: a WebSocket session's long-lived read future need not hold a
                // polling read's state.
                Engine::Polling(p) => match Box::pin(p.read()).await {
                    PollRead::Read(read) => return read,
                    PollRead::Upgrade(probed) => probed,
                },
            };
            // The upgrade: the WebSocket takes over the session's queue.
            let Engine::Polling(p) = self else { continue };
            let Some(rx) = Box::pin(p.session.take_queue()).await else {
                continue;
            };
            let socket = probed.attach(p.session.outbound.clone(), rx);
            let old = std::mem::replace(
                self,
                Engine::WebSocket {
                    socket,
                    _listed: None,
                },
            );
            if let (Engine::Polling(p), Engine::WebSocket { _listed, .. }) = (old, &mut *self) {
                *_listed = Some(p.listed);
            }
        }
    }

    /// After the packet loop: lets a WebSocket send our Close (see [`Socket::finish`]); on
    /// polling, the session's last POST learns whether its packets were handled (`clean`:
    /// the session ended without a protocol error). Returns how the transport ended.
    pub async fn finish(&mut self, limit: Duration, clean: bool) -> Option<WriterEnd> {
        match self {
            Engine::WebSocket { socket, .. } => socket.finish(limit).await,
            Engine::Polling(p) => {
                if clean && p.batch.is_empty() {
                    if let Some(done) = p.done.take() {
                        let _ = done.send(());
                    }
                }
                // The client's own close is answered on its next GET (see `Sessions::get`):
                // stay listed a moment for it.
                if p.session.outbound.close_reason() == Some(CLIENT_CLOSED) {
                    let _ = tokio::time::timeout(
                        limit.min(CLOSE_ANSWER_WAIT),
                        p.session.close_answered(),
                    )
                    .await;
                }
                p.session.outbound.close_code().map(WriterEnd::Closed)
            }
        }
    }
}

/// What a polling read gives.
enum PollRead {
    Read(Read),
    Upgrade(super::polling::session::ProbedSocket),
}

impl Polling {
    async fn read(&mut self) -> PollRead {
        loop {
            if let Some(packet) = self.batch.pop_front() {
                let read = match packet {
                    Packet::Text(t) => Read::Message {
                        text: true,
                        payload: t.into_bytes(),
                    },
                    Packet::Binary(b) => Read::Message {
                        text: false,
                        payload: b,
                    },
                };
                return PollRead::Read(read);
            }
            // The driver asks for more only after handling what it was given.
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
            let outbound = self.session.outbound.clone();
            tokio::select! {
                biased;
                _ = outbound.closed() => {
                    let ending = match outbound.close_code() {
                        Some(CloseCode::PROTOCOL_ERROR | CloseCode::MESSAGE_TOO_BIG) => Ending::Violation,
                        _ => Ending::Closed,
                    };
                    return PollRead::Read(Read::Ended(ending));
                }
                inbound = self.inbound.recv() => match inbound {
                    Some(Inbound::Payload { packets, done }) => {
                        self.batch = packets.into();
                        self.done = Some(done);
                    }
                    Some(Inbound::Upgrade(probed)) => return PollRead::Upgrade(probed),
                    None => return PollRead::Read(Read::Ended(Ending::Gone)),
                }
            }
        }
    }
}
