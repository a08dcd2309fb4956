//! Plain HTTP answers: JSON, text, and errors in the protocol's `{"error":{code,message}}`
//! shape.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};

pub type Body = Full<Bytes>;

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// `{"error":{"code","message"}}`, the same shape as a protocol error.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
    }
    r
}
