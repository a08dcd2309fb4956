//! Who a client is: JWT verification, anonymous identities, and the `rooms` claim.

use crate::config::Config;
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::collections::HashSet;
use std::net::IpAddr;

/// An authenticated client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    /// Room-name patterns the user may use; `None` means any room.
    pub rooms: Option<Vec<String>>,
    /// The token's `exp`, in ms since the Unix epoch: the connection is closed then (4011)
    /// unless it `refresh`es. `None`: no `exp` (or no token), no deadline.
    pub expires_at_ms: Option<u64>,
    /// What the app's connect proxy said about this connection (`info`), if anything.
    pub info: Option<std::sync::Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The token's user when the connect proxy named another: what `refresh` compares a new
    /// token with (the client's tokens keep naming their own user).
    pub token_user: Option<String>,
}

impl Identity {
    /// Whether the user may use any room name under `prefix` (a Socket.IO namespace's room
    /// prefix, or `""`), such as a server-generated one.
    pub fn may_use_any(&self, prefix: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| p.strip_prefix(prefix) == Some("*")))
    }

    pub fn may_use(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => patterns
                .iter()
                .any(|p| protocol::room_name::pattern_matches(p, room)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    exp: Option<u64>,
}

pub struct Authenticator {
    keys: Vec<(DecodingKey, Validation)>,
    allow_anonymous: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.keys.len())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl Authenticator {
    pub fn from_config(config: &Config) -> anyhow::Result<Authenticator> {
        let mut keys = Vec::new();
        // Current key first: during a rotation most tokens are signed with it.
        for secret in config.jwt_secret.iter().chain(&config.jwt_secret_previous) {
            keys.push((
                DecodingKey::from_secret(secret.as_bytes()),
                validation(Algorithm::HS256, config),
            ));
        }
        for path in &config.jwt_public_key {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                keys.push((key, validation(Algorithm::RS256, config)));
            } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                keys.push((key, validation(Algorithm::ES256, config)));
            } else {
                anyhow::bail!("{}: not an RSA or EC public key in PEM", path.display());
            }
        }
        Ok(Authenticator {
            keys,
            allow_anonymous: config.allow_anonymous,
        })
    }

    /// Verifies a token, or admits an anonymous client when that is allowed.
    pub fn authenticate(&self, token: Option<&str>, ip: IpAddr) -> Result<Identity, AuthError> {
        self.authenticate_claims(token, ip)
            .map(|(identity, _)| identity)
    }

    /// [`Authenticator::authenticate`], and every claim of the verified token (`None` for an
    /// anonymous client): what the connect proxy shows the app.
    pub fn authenticate_claims(
        &self,
        token: Option<&str>,
        ip: IpAddr,
    ) -> Result<(Identity, Option<serde_json::Value>), AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return if self.allow_anonymous {
                Ok((anonymous(ip), None))
            } else {
                Err(AuthError::Missing)
            };
        };
        let mut result = Err(AuthError::Invalid);
        for (key, validation) in &self.keys {
            match decode::<serde_json::Value>(token, key, validation) {
                Ok(data) => {
                    // The claims we use must have their types; the rest is the app's.
                    let claims = serde_json::from_value::<Claims>(data.claims.clone())
                        .map_err(|_| AuthError::Invalid)?;
                    let identity = Identity {
                        user: claims.sub.unwrap_or_else(|| format!("anon:{ip}")),
                        rooms: claims.rooms,
                        // Past `exp` plus the leeway the check allowed: the token is
                        // refused from then on, so the connection ends then too.
                        expires_at_ms: claims
                            .exp
                            .map(|exp| exp.saturating_add(validation.leeway).saturating_mul(1000)),
                        info: None,
                        token_user: None,
                    };
                    return Ok((identity, Some(data.claims)));
                }
                Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    result = Err(AuthError::Expired);
                }
                Err(_) => {}
            }
        }
        result
    }
}

fn validation(alg: Algorithm, config: &Config) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.jwt_leeway.as_secs();
    // `exp` is checked when present, but not required: long-lived service tokens exist.
    v.required_spec_claims = HashSet::new();
    v.validate_exp = true;
    v.validate_nbf = true;
    // A configured audience or issuer is required, not only checked when present: without
    // this, a token that simply omits the claim would pass.
    match &config.jwt_audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.required_spec_claims.insert("aud".to_string());
        }
        None => v.validate_aud = false,
    }
    if let Some(iss) = &config.jwt_issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".to_string());
    }
    v
}

/// The identity of a client without a token.
pub fn anonymous(ip: IpAddr) -> Identity {
    Identity {
        user: format!("anon:{ip}"),
        rooms: None,
        expires_at_ms: None,
        info: None,
        token_user: None,
    }
}
