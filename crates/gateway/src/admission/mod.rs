//! Admission: what a node lets in before it spends a socket and memory on a client. One step,
//! the same for every WebSocket endpoint (native, Socket.IO, the test echo), in order of cost:
//!
//! 1. Before the upgrade, as HTTP: the browser `Origin` (403), then the node's connection cap
//!    and handshake rate (503 with `Retry-After`, so that a reconnect storm is spread out
//!    instead of absorbed all at once). [`admit`] returns a [`Ticket`] holding the slot.
//! 2. After the upgrade, as a close code, because browsers cannot read the status of a failed
//!    upgrade but do see a close code: connections per address (4008, [`Ticket::admit_ip`]),
//!    then the protocol's own checks, a token (4001) and connections per user (4008,
//!    [`admit_user`]). Socket.IO answers the last two per namespace with `connect_error`.
//!
//! The places a connection holds are guards ([`gate`]): dropping them frees the places, so a
//! connection that ends any way at all, a panic included, gives them back.

pub mod gate;
pub mod rejection;

pub use rejection::Rejection;

use crate::auth::{AuthError, Identity};
use crate::backend_hooks::connect::Refused;
use crate::client_ip::client_ip;
use crate::http::response::{error, Body};
use crate::node::Node;
use gate::{IpSlot, Slot, UserSlot};
use hyper::header::RETRY_AFTER;
use hyper::{HeaderMap, Response, StatusCode};
use protocol::CloseCode;
use std::net::{IpAddr, SocketAddr};

/// A refusal after the upgrade: the close code and reason the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rejection: Rejection,
    pub code: u16,
    pub reason: String,
}

impl Refusal {
    /// A connection the app's connect proxy refused (close 4012, with the app's code and
    /// message as the reason), or could not check (close 1013, try again later).
    pub fn proxy(refused: &Refused) -> Refusal {
        match refused {
            Refused::App(e) => Refusal {
                rejection: Rejection::Proxy,
                code: CloseCode::APP_REFUSED,
                reason: close_reason(&if e.message.is_empty() {
                    e.code.clone()
                } else {
                    format!("{}: {}", e.code, e.message)
                }),
            },
            Refused::Unavailable => Refusal {
                rejection: Rejection::Proxy,
                code: CloseCode::TRY_AGAIN_LATER,
                reason: "the application could not check this connection; retry".into(),
            },
        }
    }

    /// A refused token (close 4001).
    pub fn auth(e: &AuthError) -> Refusal {
        Refusal {
            rejection: Rejection::Auth,
            code: CloseCode::BAD_TOKEN,
            reason: e.to_string(),
        }
    }
}

/// What passed the HTTP half of admission: the connection's slot under the node's cap, and
/// its address, whose limit is checked after the upgrade. Held for the connection's life.
#[derive(Debug)]
pub struct Ticket {
    pub ip: IpAddr,
    _slot: Slot,
    ip_slot: Option<IpSlot>,
}

impl Ticket {
    /// Takes the connection's place under `--max-conns-per-ip` (held until the ticket drops),
    /// or the refusal to send.
    pub fn admit_ip(&mut self, node: &Node) -> Result<(), Refusal> {
        match node.gate.admit_ip(self.ip) {
            Some(slot) => {
                self.ip_slot = Some(slot);
                Ok(())
            }
            None => Err(Refusal {
                rejection: Rejection::IpLimit,
                code: CloseCode::CONNECTION_POLICY,
                reason: "too many connections from your address".into(),
            }),
        }
    }
}

/// The HTTP half of admission, for every WebSocket endpoint: `Origin`, the connection cap and
/// the handshake rate. The refusal is the response to send.
pub fn admit(
    node: &Node,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Result<Ticket, Box<Response<Body>>> {
    if !origin_allowed(&node.config.allowed_origins, headers) {
        node.metrics.rejected(Rejection::Origin);
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "origin not allowed",
        )));
    }
    let slot = node.gate.admit().map_err(|rejection| {
        node.metrics.rejected(rejection);
        let (message, retry_after_secs) = match rejection {
            Rejection::Capacity => ("this node is full, try again later", 5u64),
            _ => ("too many connection attempts, try again later", 1),
        };
        // A full node frees slots slower than a rate limit refills.
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        r.headers_mut().insert(RETRY_AFTER, retry_after_secs.into());
        Box::new(r)
    })?;
    Ok(Ticket {
        ip: client_ip(peer.ip(), headers, &node.config.trusted_proxy),
        _slot: slot,
        ip_slot: None,
    })
}

/// A close frame's reason holds at most 123 bytes (RFC 6455 5.5: 125 less the code).
fn close_reason(s: &str) -> String {
    let mut end = s.len().min(123);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The browser `Origin` check (`--allowed-origins`). Clients that send no `Origin` are not
/// browsers, and a page cannot make a browser omit it, so they pass.
fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(origin) = headers.get(hyper::header::ORIGIN) else {
        return true;
    };
    origin
        .to_str()
        .is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

/// Takes one of `identity`'s places under `--max-conns-per-user`, or the refusal to send.
pub fn admit_user(node: &Node, identity: &Identity) -> Result<UserSlot, Refusal> {
    node.gate.admit_user(&identity.user).ok_or_else(|| Refusal {
        rejection: Rejection::UserLimit,
        code: CloseCode::CONNECTION_POLICY,
        reason: "too many connections for this user".into(),
    })
}
