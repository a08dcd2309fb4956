//! What roomcast POSTs to the app, and what it reads back: every JSON shape of the connect
//! and publish proxies, in one place (docs/protocol.md, "The app's proxies",
//! shows them with examples).
//!
//! Answers are parsed with `protocol::value` (no serde_json raw-value re-parsing, a bounded
//! depth) and checked field by field: a field of the wrong type makes the whole answer
//! garbage, handled like an app that is down, never guessed at.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The longest `user` id, error `code` and `message` taken from the app.
pub const MAX_USER_BYTES: usize = 256;
pub const MAX_CODE_BYTES: usize = 64;
pub const MAX_MESSAGE_BYTES: usize = 512;
/// The most `rooms` patterns in a grant.
pub const MAX_GRANT_ROOMS: usize = 256;
/// The largest presence `info`, as JSON text.
pub const MAX_INFO_BYTES: usize = 4096;

/// Where a client connects from, as `client_ip.rs` computed it.
#[derive(Debug, Serialize)]
pub struct Client {
    pub ip: String,
}

/// POSTed to `--connect-proxy` for every new connection (native) or namespace CONNECT
/// (Socket.IO).
#[derive(Debug, Serialize)]
pub struct ConnectRequest<'a> {
    /// `native` or `socketio`.
    pub protocol: &'static str,
    /// `websocket` or `polling` (the transport the Socket.IO session is on when it connects).
    pub transport: &'static str,
    /// The Socket.IO namespace; `null` for native connections.
    pub namespace: Option<&'a str>,
    pub client: Client,
    pub node: &'a str,
    /// The user the token names (`sub`), or `anon:<ip>` for an anonymous client.
    pub user: &'a str,
    /// Every claim of the verified token; `null` for an anonymous client.
    pub claims: Option<&'a Value>,
    /// The handshake's query fields, but `token`.
    pub query: &'a BTreeMap<String, String>,
    /// Socket.IO's CONNECT `auth` payload, but `token`; `null` for native connections.
    pub auth: Option<&'a Value>,
}

/// POSTed to `--publish-proxy` before a matching publish is sequenced.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishRequest<'a> {
    /// The room, as the client names it (a Socket.IO namespace's prefix removed).
    pub room: &'a str,
    pub user: &'a str,
    pub conn_id: &'a str,
    pub node: &'a str,
    /// The client's data, byte strings as `{"$bin":"<base64>"}`.
    pub data: &'a RawValue,
}

/// An app's refusal: `{"error":{"code":"…","message":"…"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    pub code: String,
    pub message: String,
}

/// The connect proxy's allow (every field optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allow {
    pub user: Option<String>,
    pub rooms: Option<Vec<String>>,
    pub info: Option<Map<String, Value>>,
}

/// What the publish proxy said.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accept,
    Reject(AppError),
    /// The replacement data, not yet validated as client data.
    Rewrite(Value),
}

/// Parses a connect answer: an allow, or the app's refusal. `Err`: garbage.
pub fn connect_answer(body: &[u8]) -> Result<Result<Allow, AppError>, String> {
    let mut obj = object(body)?;
    if let Some(error) = obj.remove("error") {
        return Ok(Err(app_error(error)?));
    }
    let user = match obj.remove("user") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if !u.is_empty() && u.len() <= MAX_USER_BYTES => Some(u),
        Some(_) => {
            return Err(format!(
                "user must be a string of 1 to {MAX_USER_BYTES} bytes"
            ))
        }
    };
    let rooms = match obj.remove("rooms") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if items.len() <= MAX_GRANT_ROOMS => Some(
            items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) if valid_pattern(&s) => Ok(s),
                    _ => Err("rooms must be room names or prefixes ending in *".to_string()),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(format!(
                "rooms must be an array of at most {MAX_GRANT_ROOMS}"
            ))
        }
    };
    let info = match obj.remove("info") {
        None | Some(Value::Null) => None,
        Some(Value::Object(info))
            if Value::Object(info.clone()).to_string().len() <= MAX_INFO_BYTES =>
        {
            Some(info)
        }
        Some(_) => {
            return Err(format!(
                "info must be an object of at most {MAX_INFO_BYTES} bytes"
            ))
        }
    };
    Ok(Ok(Allow { user, rooms, info }))
}

/// Parses a publish answer: `{}` accepts, `{"error":…}` rejects, `{"data":…}` rewrites.
pub fn publish_answer(body: &[u8]) -> Result<Verdict, String> {
    let mut obj = object(body)?;
    if let Some(error) = obj.remove("error") {
        return Ok(Verdict::Reject(app_error(error)?));
    }
    Ok(match obj.remove("data") {
        Some(data) => Verdict::Rewrite(data),
        None => Verdict::Accept,
    })
}

fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match protocol::value::from_slice(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err("the answer must be a JSON object".into()),
        Err(e) => Err(format!("the answer is not JSON: {e}")),
    }
}

fn app_error(error: Value) -> Result<AppError, String> {
    let Value::Object(mut e) = error else {
        return Err("error must be an object".into());
    };
    let code = match e.remove("code") {
        Some(Value::String(c)) if !c.is_empty() && c.len() <= MAX_CODE_BYTES => c,
        _ => {
            return Err(format!(
                "error.code must be a string of 1 to {MAX_CODE_BYTES} bytes"
            ))
        }
    };
    let message = match e.remove("message") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(m)) if m.len() <= MAX_MESSAGE_BYTES => m,
        Some(_) => {
            return Err(format!(
                "error.message must be a string of at most {MAX_MESSAGE_BYTES} bytes"
            ))
        }
    };
    Ok(AppError { code, message })
}

/// A `rooms` pattern as a token's claim has them: a room name, or a prefix ending in `*`.
fn valid_pattern(p: &str) -> bool {
    let name = p.strip_suffix('*').unwrap_or(p);
    name.is_empty() && p == "*" || protocol::room_name::is_valid(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_answers() {
        assert_eq!(connect_answer(b"{}"), Ok(Ok(Allow::default())));
        let allow = connect_answer(br#"{"user":"u1","rooms":["a","b:*"],"info":{"n":1},"x":2}"#)
            .expect("valid")
            .expect("allow");
        assert_eq!(allow.user.as_deref(), Some("u1"));
        assert_eq!(allow.rooms, Some(vec!["a".to_string(), "b:*".to_string()]));
        assert_eq!(
            connect_answer(br#"{"error":{"code":"banned","message":"no"}}"#),
            Ok(Err(AppError {
                code: "banned".into(),
                message: "no".into()
            }))
        );
        for garbage in [
            &b"nope"[..],
            b"[]",
            b"",
            br#"{"user":5}"#,
            br#"{"user":""}"#,
            br#"{"rooms":"a"}"#,
            br#"{"rooms":["bad name"]}"#,
            br#"{"info":[1]}"#,
            br#"{"error":"x"}"#,
            br#"{"error":{"message":"no code"}}"#,
        ] {
            assert!(connect_answer(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn publish_answers() {
        assert_eq!(publish_answer(b"{}"), Ok(Verdict::Accept));
        assert_eq!(
            publish_answer(br#"{"data":{"t":"x"}}"#),
            Ok(Verdict::Rewrite(serde_json::json!({"t":"x"})))
        );
        assert!(matches!(
            publish_answer(br#"{"error":{"code":"spam"}}"#),
            Ok(Verdict::Reject(_))
        ));
        assert!(publish_answer(b"null").is_err());
        assert!(publish_answer(b"{\"data\":").is_err());
    }
}
