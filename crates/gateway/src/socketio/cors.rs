//! CORS for the Socket.IO endpoint, which browsers reach with XHR/fetch when polling. It
//! follows `--allowed-origins`, the same list the WebSocket handshakes check: an allowed
//! `Origin` (any, when the list is empty) is echoed with credentials allowed, since a page
//! may poll with cookies (`withCredentials`); a preflight (`OPTIONS`) is answered here.

use super::refuse;
use crate::http::response::Body;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ORIGIN, VARY,
};
use hyper::{HeaderMap, Response, StatusCode};

/// The request's `Origin`, when it is allowed.
pub fn allowed_origin(allowed: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?;
    let text = origin.to_str().ok()?;
    (allowed.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(text)))
        .then(|| origin.clone())
}

/// Adds the CORS headers for an allowed origin to a response.
pub fn apply(origin: Option<HeaderValue>, response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.append(VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// Answers a preflight: 204 for an allowed origin, 403 otherwise.
pub fn preflight(allowed: &[String], headers: &HeaderMap) -> Response<Body> {
    let Some(origin) = allowed_origin(allowed, headers) else {
        return refuse(StatusCode::FORBIDDEN, 4, "origin not allowed");
    };
    let mut r = Response::new(Full::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let asked = headers
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type"));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    apply(Some(origin), &mut r);
    r
}
