//! `GET` on a polling session: the long poll. It waits for the first queued packet, takes
//! whatever else is queued (up to [`MAX_BODY`]), and answers them as one payload.
//!
//! As the reference server does: a second GET while one is pending closes the session (the
//! pending one answers `1`, the second gets 400); a GET the client abandons closes it too; a
//! GET while the upgrade is paused waits at most [`PAUSED_WAIT`] and answers a noop `6`.
//!
//! A GET another node relayed is the exception to the first two (see [`RELAY_GRACE`]): when
//! its connection breaks, the relaying node may have died while the client lives on and its
//! balancer sends the GET again. So a GET that finds a relayed one pending waits a moment for
//! it to end, and a relayed GET that broke off ends the session only if no GET follows. It
//! had taken nothing from the queue, so letting it go loses nothing.

use super::session::{Session, Stage, RELAY_GRACE};
use crate::http::response::Body;
use crate::node::Node;
use crate::socketio::{refuse, CLIENT_CLOSED};
use bytes::Bytes;
use fan_out::OutFrame;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use protocol::polling::{push_binary, push_text};
use protocol::CloseCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A response stops taking packets once it is this large (the rest waits for the next GET).
pub const MAX_BODY: usize = 1 << 20;

/// How long a GET waits while the upgrade is paused (the reference server's upgrade check
/// runs every 100 ms).
pub const PAUSED_WAIT: Duration = Duration::from_millis(100);

/// Why a GET has nothing to answer with.
enum NoPayload {
    /// The session upgraded: polling requests are refused.
    Upgraded,
}

/// Answers one GET; `relayed`: another node relayed it.
pub async fn poll(node: &Node, session: Arc<Session>, relayed: bool) -> Response<Body> {
    if session.stage() == Stage::Upgraded {
        return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
    }
    if !session.begin_poll(relayed).await {
        session.fail(CloseCode::PROTOCOL_ERROR, "overlapping polls");
        return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
    }
    let _busy = PollSlot(&session);
    // If the client gives up on this GET (hyper drops the future), the session ends, as with
    // the reference server: packets taken for a response nobody reads would be lost.
    let mut abandoned = Abandoned {
        session: Some(session.clone()),
        relayed,
    };
    let payload = next_payload(node, &session).await;
    abandoned.session = None;
    match payload {
        Ok(body) => payload_response(body),
        Err(NoPayload::Upgraded) => refuse(StatusCode::BAD_REQUEST, 3, "Bad request"),
    }
}

/// Gives the pending-GET slot back when the GET ends, however it ends.
struct PollSlot<'a>(&'a Session);

impl Drop for PollSlot<'_> {
    fn drop(&mut self) {
        self.0.end_poll();
    }
}

/// Closes the session when dropped armed: at once for a direct GET, after [`RELAY_GRACE`]
/// without another GET for a relayed one.
struct Abandoned {
    session: Option<Arc<Session>>,
    relayed: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let runtime = tokio::runtime::Handle::try_current();
        let (true, Ok(runtime)) = (self.relayed, runtime) else {
            session.fail(CloseCode::NORMAL, "poll abandoned");
            return;
        };
        let begun = session.polls_begun.load(Ordering::Acquire);
        runtime.spawn(async move {
            tokio::time::sleep(RELAY_GRACE).await;
            if session.polls_begun.load(Ordering::Acquire) == begun {
                session.fail(CloseCode::NORMAL, "poll abandoned");
            }
        });
    }
}

fn payload_response(body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

/// Waits for packets and encodes them; a noop `6` when released without any.
async fn next_payload(node: &Node, session: &Session) -> Result<Vec<u8>, NoPayload> {
    let mut queue = session.queue.lock().await;
    let Some(rx) = queue.as_mut() else {
        return Err(NoPayload::Upgraded);
    };
    let first = loop {
        if let Ok(frame) = rx.try_recv() {
            break Some(frame);
        }
        let wake = session.wake.notified();
        tokio::pin!(wake);
        // Registered before the stage is read, so a change in between wakes us.
        wake.as_mut().enable();
        match session.stage() {
            Stage::Upgraded => return Err(NoPayload::Upgraded),
            Stage::Paused => {
                tokio::select! {
                    frame = rx.recv() => break frame,
                    _ = &mut wake => continue,
                    _ = tokio::time::sleep(PAUSED_WAIT) => break None,
                }
            }
            Stage::Polling | Stage::Probing => {
                tokio::select! {
                    frame = rx.recv() => break frame,
                    _ = &mut wake => continue,
                }
            }
        }
    };
    let mut body = Vec::new();
    if let Some(first) = first {
        encode(node, session, first, rx, &mut body);
    }
    if body.is_empty() {
        push_text(&mut body, b"6");
    }
    Ok(body)
}

/// Encodes `first` and whatever else is queued, up to [`MAX_BODY`] or a close.
fn encode(
    node: &Node,
    session: &Session,
    first: OutFrame,
    rx: &mut fan_out::FrameReceiver,
    body: &mut Vec<u8>,
) {
    let outbound = &session.outbound;
    let mut data_bytes = 0u64;
    let mut next = Some(first);
    while let Some(frame) = next.take() {
        // Counted off, so that once the session is upgraded the socket's writer sees an
        // empty queue as empty (and pushes may write to the socket directly).
        outbound.took();
        match frame {
            OutFrame::Data(bytes) => {
                outbound.written(bytes.len());
                // A slow consumer's backlog is dropped so that its close goes out promptly.
                if !outbound.is_discarding() {
                    // A bundle (a packet and its attachments) is several packets: binary ones
                    // as `b` + base64.
                    for (text, part) in protocol::socketio::messages(&bytes) {
                        if text {
                            push_text(body, part);
                        } else {
                            push_binary(body, part);
                        }
                        data_bytes += part.len() as u64;
                    }
                }
            }
            OutFrame::Message { text, bytes } => {
                outbound.written(bytes.len());
                if !outbound.is_discarding() {
                    if text {
                        push_text(body, &bytes);
                    } else {
                        push_binary(body, &bytes);
                    }
                    data_bytes += bytes.len() as u64;
                }
            }
            // WebSocket-level; nothing to answer over HTTP (and no direct writes here).
            OutFrame::Pong(_) | OutFrame::Rest => {}
            OutFrame::Close(_, reason) => {
                session.close_answered_now();
                // The client's own close is acknowledged with a noop, as the reference
                // server does; a close of ours is the close packet.
                push_text(body, if reason == CLIENT_CLOSED { b"6" } else { b"1" });
                break;
            }
        }
        if body.len() < MAX_BODY {
            next = rx.try_recv().ok();
        }
    }
    if data_bytes > 0 {
        node.metrics.bytes_out.inc_by(data_bytes);
    }
}
