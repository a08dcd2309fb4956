//! The one HTTP client a node uses to call the app's back end: JSON POSTs to one URL, over a
//! pool of kept-alive HTTP/1.1 connections (hyper-util's, as `socketio::forward` relays
//! with), each call bounded in time and in answer size, and the calls in flight bounded by a
//! semaphore that is never waited on: a node that already has `max_in_flight` calls out
//! fails the next one at once ([`CallError::Overloaded`]) instead of queueing connections or
//! publishes behind a slow app. The connect proxy and the publish proxy each own one, so that
//! one slow endpoint cannot starve another (webhooks POST through their own client,
//! `webhooks::post`, whose failures are retried rather than answered).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The largest answer read from the app; a bigger one is garbage. A publish rewrite is
/// bounded again by `--max-data-bytes`.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why a call gave no usable answer. Every one is a failure of the app, handled by the
/// caller's fail mode; none is the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("too many requests to the app in flight")]
    Overloaded,
    #[error("the app did not answer in time")]
    Timeout,
    #[error("the app cannot be reached: {0}")]
    Unreachable(String),
    #[error("the app answered HTTP {0}")]
    Status(u16),
    #[error("the app's answer is not valid: {0}")]
    Garbage(String),
}

impl CallError {
    /// The `result` label of `roomcast_proxy_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            CallError::Overloaded => "overloaded",
            CallError::Timeout => "timeout",
            CallError::Unreachable(_) => "unreachable",
            CallError::Status(_) => "status",
            CallError::Garbage(_) => "garbage",
        }
    }
}

/// A pooled JSON client for one URL of the app.
pub struct HookClient {
    pool: Client<HttpConnector, Full<Bytes>>,
    url: Uri,
    timeout: Duration,
    permits: Semaphore,
}

impl std::fmt::Debug for HookClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookClient")
            .field("url", &self.url)
            .finish()
    }
}

impl HookClient {
    pub fn new(url: Uri, timeout: Duration, max_in_flight: usize) -> HookClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let pool = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(max_in_flight.min(256))
            .build(connector);
        HookClient {
            pool,
            url,
            timeout,
            permits: Semaphore::new(max_in_flight),
        }
    }

    /// POSTs `body` (JSON) and returns the body of a 2xx answer. Everything, from taking a
    /// permit to the last byte of the answer, fits in the timeout; a call that is given up
    /// drops its connection rather than returning it to the pool.
    pub async fn post(&self, body: Vec<u8>) -> Result<Bytes, CallError> {
        let _permit = self
            .permits
            .try_acquire()
            .map_err(|_| CallError::Overloaded)?;
        let call = async {
            let mut req = Request::post(self.url.clone())
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let answer = self
                .pool
                .request(req)
                .await
                .map_err(|e| CallError::Unreachable(e.to_string()))?;
            if !answer.status().is_success() {
                return Err(CallError::Status(answer.status().as_u16()));
            }
            let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| CallError::Garbage(e.to_string()))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| CallError::Timeout)?
    }
}
