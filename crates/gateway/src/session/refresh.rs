//! `refresh`: a new token on an open connection. It must verify and name the same user;
//! then the connection's deadline (`crate::expiry`) becomes the new token's `exp`. A refused
//! token leaves the connection as it was, deadline included. The `rooms` claim stays the
//! one the connection opened with, and so is a user the connect proxy named (a new token
//! must name the user the first token named).

use super::{OpResult, Session};
use crate::auth::AuthError;
use crate::node::Node;
use protocol::frame::{ErrorBody, OkBody};
use protocol::ErrorCode;
use std::net::{IpAddr, Ipv4Addr};

pub fn refresh(node: &Node, s: &Session, token: &str) -> OpResult {
    if token.is_empty() {
        return Err(ErrorBody::new(ErrorCode::BadRequest, "token is empty"));
    }
    // The address only names a token without `sub` (`anon:<ip>`), which can never be the
    // same user as the connection's: such a refresh is refused below either way.
    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let identity = node
        .auth
        .authenticate(Some(token), unspecified)
        .map_err(|e| {
            let message = match e {
                AuthError::Expired => "token expired",
                _ => "invalid token",
            };
            ErrorBody::new(ErrorCode::Unauthorized, message)
        })?;
    // A user the connect proxy renamed refreshes with tokens that name the token's user.
    let token_user = s.identity.token_user.as_ref().unwrap_or(&s.identity.user);
    if identity.user != *token_user {
        return Err(ErrorBody::new(
            ErrorCode::Forbidden,
            "the token is for another user",
        ));
    }
    if !node.expiries.refresh(&s.conn_id, identity.expires_at_ms) {
        // Expired (and closing) between the check and now.
        return Err(ErrorBody::new(ErrorCode::Unauthorized, "token expired"));
    }
    Ok(OkBody::Refreshed {
        expires_at: identity.expires_at_ms,
    })
}
