//! One webhook POST: a batch of events as a JSON array, signed, with a timeout.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use std::time::Duration;

/// The signature header: `sha256=<hex HMAC-SHA256 of the body, keyed by --webhook-secret>`.
pub const SIGNATURE_HEADER: &str = "x-roomcast-signature";

/// The most of an answer's body read. What the app answers is not used; reading it to its
/// end lets the connection be reused, and a longer body is dropped with its connection
/// rather than read for as long as the timeout allows.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a POST did not count as delivered.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("the app answered {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("bad request: {0}")]
    Build(#[from] hyper::http::Error),
}

/// The app's endpoint, with a pool of kept-alive connections.
pub struct Poster {
    client: Client<HttpConnector, Full<Bytes>>,
    url: hyper::Uri,
    secret: Option<String>,
    timeout: Duration,
}

impl Poster {
    pub fn new(url: hyper::Uri, secret: Option<String>, timeout: Duration) -> Poster {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(16)
            .build(connector);
        Poster {
            client,
            url,
            secret,
            timeout,
        }
    }

    /// POSTs `events` (each one event's JSON text) as one array. Ok only on a 2xx.
    pub async fn post(&self, events: &[&str]) -> Result<(), PostError> {
        let mut body = String::with_capacity(events.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
        body.push('[');
        body.push_str(&events.join(","));
        body.push(']');
        let mut request = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "roomcast-webhooks");
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(secret, body.as_bytes()));
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            // Read the answer to its end, so the connection can be reused; what it says is
            // not used, and past MAX_ANSWER_BYTES the connection is dropped instead.
            let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await;
            Ok::<_, PostError>(status)
        };
        let status = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PostError::Timeout(self.timeout))??;
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(status.as_u16()))
        }
    }
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        // HMAC takes a key of any length; this cannot happen.
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn signature_matches_rfc_4231_case_2() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
