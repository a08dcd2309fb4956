//! The three client protocols the tools speak: roomcast's native protocol in JSON or
//! MessagePack, and Socket.IO v5 over WebSocket (Engine.IO v4), for the Node peer and for
//! roomcast's own Socket.IO endpoint.

use clap::ValueEnum;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// Native protocol v1, JSON text frames.
    Json,
    /// Native protocol v1, MessagePack binary frames.
    Msgpack,
    /// Socket.IO v5 over the WebSocket transport.
    Socketio,
}

/// An error reply: its code, and its `retryAfterMs` when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub code: String,
    pub retry_after_ms: Option<u64>,
}

/// A reply: its `ok` body, or the error.
pub type Reply = Result<Value, Failed>;

/// What a server frame means to a client.
#[derive(Debug)]
pub enum Incoming {
    /// The reply to request `id`.
    Reply { id: u64, reply: Reply },
    /// A `message` event's `data`.
    Message(Value),
    /// A `traffic_status` event's level.
    Traffic(String),
    /// An Engine.IO ping that must be answered.
    Ping,
    /// Anything else (welcome, presence, …).
    Other,
}

impl Protocol {
    /// The WebSocket URL for a server base such as `ws://127.0.0.1:8080`.
    pub fn url(self, base: &str, token: Option<&str>) -> String {
        let base = base.trim_end_matches('/');
        match self {
            Protocol::Json | Protocol::Msgpack => {
                let format = if self == Protocol::Json {
                    "json"
                } else {
                    "msgpack"
                };
                match token {
                    Some(t) => format!("{base}/ws?format={format}&token={t}"),
                    None => format!("{base}/ws?format={format}"),
                }
            }
            Protocol::Socketio => format!("{base}/socket.io/?EIO=4&transport=websocket"),
        }
    }

    /// The Socket.IO namespace CONNECT packet (with the token as auth), sent after the open.
    pub fn connect_packet(self, token: Option<&str>) -> Option<Message> {
        (self == Protocol::Socketio).then(|| match token {
            Some(t) => Message::text(format!("40{}", json!({ "token": t }))),
            None => Message::text("40"),
        })
    }

    /// A request: `op` with its fields in `args` (an object).
    pub fn request(self, id: u64, op: &str, args: Value) -> Message {
        match self {
            Protocol::Json | Protocol::Msgpack => {
                let mut body = args;
                if let Some(obj) = body.as_object_mut() {
                    obj.insert("id".into(), json!(id));
                    obj.insert("op".into(), json!(op));
                }
                if self == Protocol::Json {
                    Message::text(body.to_string())
                } else {
                    Message::binary(rmp_serde::to_vec_named(&body).unwrap_or_default())
                }
            }
            Protocol::Socketio => Message::text(format!("42{id}{}", json!([op, args]))),
        }
    }

    /// The pong for an Engine.IO ping.
    pub fn pong(self) -> Option<Message> {
        (self == Protocol::Socketio).then(|| Message::text("3"))
    }

    pub fn decode(self, msg: &Message) -> Incoming {
        match (self, msg) {
            (Protocol::Socketio, Message::Text(t)) => socketio(t),
            (Protocol::Socketio, _) => Incoming::Other,
            _ => self.value(msg).map_or(Incoming::Other, native),
        }
    }

    /// A native frame as a whole (`None` for Socket.IO, and for frames of the other format).
    pub fn value(self, msg: &Message) -> Option<Value> {
        match (self, msg) {
            (Protocol::Json, Message::Text(t)) => serde_json::from_str(t).ok(),
            (Protocol::Msgpack, Message::Binary(b)) => rmp_serde::from_slice(b).ok(),
            _ => None,
        }
    }
}

/// A reply body (`{"ok": …}` or `{"error": {"code", "retryAfterMs"}}`) as a [`Reply`].
fn reply(mut body: Value) -> Reply {
    match body.get("error") {
        Some(e) => Err(Failed {
            code: e["code"].as_str().unwrap_or("error").to_string(),
            retry_after_ms: e["retryAfterMs"].as_u64(),
        }),
        None => Ok(body.get_mut("ok").map(Value::take).unwrap_or(Value::Null)),
    }
}

fn native(v: Value) -> Incoming {
    if let Some(id) = v.get("id").and_then(Value::as_u64) {
        return Incoming::Reply {
            id,
            reply: reply(v),
        };
    }
    match v.get("event").and_then(Value::as_str) {
        Some("message") => Incoming::Message(v["data"].clone()),
        Some("traffic_status") => Incoming::Traffic(v["level"].as_str().unwrap_or("").to_string()),
        _ => Incoming::Other,
    }
}

/// The id of a native JSON reply, told by its first bytes (`{"id":N,`) without parsing it.
pub fn json_reply_id(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("{\"id\":")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// `None` for a native JSON `ok` reply, else its error code. Only an error reply is parsed (a
/// join reply in a huge room lists every member).
pub fn json_reply_error(text: &str) -> Option<String> {
    let rest = text.strip_prefix("{\"id\":")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if rest[digits..].starts_with(",\"ok\"") {
        return None;
    }
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    Some(v["error"]["code"].as_str().unwrap_or("error").to_string())
}

/// Engine.IO packet type, then Socket.IO packet type and an optional ack id.
fn socketio(t: &str) -> Incoming {
    if t == "2" {
        return Incoming::Ping;
    }
    let Some(rest) = t.strip_prefix('4') else {
        return Incoming::Other;
    };
    let kind = rest.chars().next();
    let body = &rest[kind.map_or(0, char::len_utf8)..];
    match kind {
        Some('3') => {
            // ACK: `3<id>[reply]`, the reply shaped like the native reply body.
            let digits: String = body.chars().take_while(char::is_ascii_digit).collect();
            let Ok(id) = digits.parse() else {
                return Incoming::Other;
            };
            let mut args: Value =
                serde_json::from_str(&body[digits.len()..]).unwrap_or(Value::Null);
            Incoming::Reply {
                id,
                reply: reply(args[0].take()),
            }
        }
        Some('2') => {
            let args: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            match args[0].as_str() {
                Some("message") => Incoming::Message(args[1]["data"].clone()),
                Some("traffic_status") => {
                    Incoming::Traffic(args[1]["level"].as_str().unwrap_or("").to_string())
                }
                _ => Incoming::Other,
            }
        }
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socketio_frames() {
        let m = Protocol::Socketio.request(7, "publish", json!({"room": "r", "data": 1}));
        assert_eq!(
            m.to_text().unwrap_or(""),
            r#"427["publish",{"room":"r","data":1}]"#
        );
        assert!(matches!(socketio("2"), Incoming::Ping));
        let Incoming::Reply {
            id: 7,
            reply: Ok(ok),
        } = socketio(r#"437[{"ok":{"offset":1}}]"#)
        else {
            panic!()
        };
        assert_eq!(ok["offset"], 1);
        let Incoming::Reply { reply, .. } =
            socketio(r#"438[{"error":{"code":"rate_limited","retryAfterMs":40}}]"#)
        else {
            panic!()
        };
        assert_eq!(
            reply,
            Err(Failed {
                code: "rate_limited".into(),
                retry_after_ms: Some(40)
            })
        );
        let Incoming::Message(d) = socketio(r#"42["message",{"room":"r","data":{"s":3}}]"#) else {
            panic!()
        };
        assert_eq!(d["s"], 3);
    }

    #[test]
    fn json_replies_are_told_apart_without_parsing_successes() {
        let ok = r#"{"id":12,"ok":{"members":[]}}"#;
        assert_eq!((json_reply_id(ok), json_reply_error(ok)), (Some(12), None));
        let err = r#"{"id":3,"error":{"code":"rate_limited","retryAfterMs":40}}"#;
        assert_eq!(json_reply_error(err).as_deref(), Some("rate_limited"));
        assert_eq!(json_reply_id(r#"{"event":"message"}"#), None);
    }

    #[test]
    fn native_frames() {
        let Incoming::Reply { id, reply } =
            native(json!({"id": 4, "error": {"code": "not_found"}}))
        else {
            panic!()
        };
        assert_eq!(
            (id, reply.map_err(|f| f.code)),
            (4, Err("not_found".to_string()))
        );
        assert!(matches!(
            native(json!({"event": "message", "data": 1})),
            Incoming::Message(_)
        ));
        let m = Protocol::Msgpack.request(1, "ping", json!({}));
        let back: Value = rmp_serde::from_slice(&m.into_data()).unwrap_or(Value::Null);
        assert_eq!(back, json!({"id": 1, "op": "ping"}));
    }
}
