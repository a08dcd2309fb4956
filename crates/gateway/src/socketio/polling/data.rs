//! `POST` on a polling session: a payload of packets for the driver.
//!
//! The body is read under `--socketio-max-payload` (the reference server's
//! `maxHttpBufferSize`): a larger one is refused with 413 and ends the session, as an
//! oversized WebSocket message does (1009), since the packets it carried are lost. A payload
//! that does not decode ends it too (400). Otherwise the packets go to the driver, and `ok`
//! is answered once it has handled them all.

use super::session::{Busy, Inbound, Session, Stage};
use crate::http::response::Body;
use crate::node::Node;
use crate::socketio::refuse;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use protocol::polling::decode_payload;
use protocol::CloseCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Answers one POST.
pub async fn data(node: &Node, session: Arc<Session>, req: Request<Incoming>) -> Response<Body> {
    if session.stage() == Stage::Upgraded {
        return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
    }
    if session.posting.swap(true, Ordering::AcqRel) {
        session.fail(CloseCode::PROTOCOL_ERROR, "overlapping posts");
        return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
    }
    let _busy = Busy(&session.posting);
    // Engine.IO v4 sends binary as base64 text; a binary body is v3 (XHR2), not ours.
    if req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/octet-stream"))
    {
        session.fail(CloseCode::PROTOCOL_ERROR, "binary payload");
        return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
    }
    let limit = node.config.socketio_max_payload;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(&session);
    }
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(&session),
        Err(_) => {
            // The client went away mid-body.
            session.fail(CloseCode::NORMAL, "post abandoned");
            return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
        }
    };
    node.metrics.bytes_in.inc_by(body.len() as u64);
    let packets = match decode_payload(&body) {
        Ok(packets) => packets,
        Err(_) => {
            session.fail(CloseCode::PROTOCOL_ERROR, "invalid payload");
            return refuse(StatusCode::BAD_REQUEST, 3, "Bad request");
        }
    };
    let (done, handled) = oneshot::channel();
    if session
        .inbound
        .send(Inbound::Payload { packets, done })
        .await
        .is_err()
    {
        return refuse(StatusCode::BAD_REQUEST, 1, "Session ID unknown");
    }
    match handled.await {
        Ok(()) => ok(),
        // The driver ended the session over these packets (a protocol error).
        Err(_) => refuse(StatusCode::BAD_REQUEST, 3, "Bad request"),
    }
}

fn too_large(session: &Session) -> Response<Body> {
    session.fail(CloseCode::MESSAGE_TOO_BIG, "payload too large");
    refuse(StatusCode::PAYLOAD_TOO_LARGE, 3, "Payload too large")
}

/// `ok`, as `text/html` like the reference server (some user agents offer `text/plain`
/// responses as downloads).
fn ok() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}
