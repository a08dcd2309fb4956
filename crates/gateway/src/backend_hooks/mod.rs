//! The app's back end in the loop: the connect proxy ([`connect`]) and the publish proxy
//! ([`publish`]), both JSON POSTs through a pooled, bounded HTTP client ([`client`]), with
//! every JSON shape in [`wire`]. Webhooks are not here: they are queued and retried
//! (`webhooks`), not answered in line.
//!
//! Every call is counted in `roomcast_proxy_requests_total{kind,result}` and timed in
//! `roomcast_proxy_duration_seconds{kind}`; an app that fails (down, slow, non-2xx, garbage,
//! over the in-flight bound) is handled by the proxy's `--*-proxy-fail` mode, never by a
//! stuck connection.

pub mod client;
pub mod connect;
pub mod publish;
pub mod wire;

use crate::config::Config;
use crate::node::Node;
use client::{CallError, HookClient};
use connect::ConnectProxy;
use hyper::Uri;
use publish::PublishProxy;

/// The proxies a node is configured with.
#[derive(Debug, Default)]
pub struct Hooks {
    pub connect: Option<ConnectProxy>,
    pub publish: Option<PublishProxy>,
}

impl Hooks {
    pub fn from_config(config: &Config) -> Result<Hooks, String> {
        let connect = match &config.connect_proxy {
            Some(url) => Some(ConnectProxy {
                client: HookClient::new(
                    parse_url(url)?,
                    config.connect_proxy_timeout,
                    config.connect_proxy_max_in_flight,
                ),
                fail: config.connect_proxy_fail,
            }),
            None => None,
        };
        let publish = match &config.publish_proxy {
            Some(url) => Some(PublishProxy {
                client: HookClient::new(
                    parse_url(url)?,
                    config.publish_proxy_timeout,
                    config.publish_proxy_max_in_flight,
                ),
                fail: config.publish_proxy_fail,
                rooms: config.publish_proxy_rooms.clone(),
            }),
            None => None,
        };
        Ok(Hooks { connect, publish })
    }
}

/// A proxy URL: absolute `http://` (the client speaks no TLS: put the app, or a TLS-terminating
/// sidecar, next to the gateway).
pub fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("proxy URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!("proxy URL {url:?} must be http://host[:port]/path"));
    }
    Ok(uri)
}

/// POSTs `request` and parses the answer; times the call.
async fn call<T: serde::Serialize, A>(
    node: &Node,
    kind: &str,
    client: &HookClient,
    request: &T,
    parse: impl FnOnce(&[u8]) -> Result<A, String>,
) -> Result<A, CallError> {
    let body = serde_json::to_vec(request).map_err(|e| CallError::Garbage(e.to_string()))?;
    let timer = node
        .metrics
        .proxy_duration
        .with_label_values(&[kind])
        .start_timer();
    let answer = client.post(body).await;
    timer.observe_duration();
    parse(&answer?).map_err(CallError::Garbage)
}

fn count(node: &Node, kind: &str, result: &str) {
    node.metrics
        .proxy_requests
        .with_label_values(&[kind, result])
        .inc();
}
