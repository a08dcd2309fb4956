//! The Redis wire format of `@socket.io/redis-emitter` (v5) and of the Node Redis adapter's
//! broadcasts, decoded from untrusted bytes: what roomcast reads so that Node back ends that
//! publish with the emitter keep working when roomcast replaces the Node servers.
//!
//! | channel | payload |
//! |---|---|
//! | `<key>#<nsp>#` | a broadcast, MessagePack `[uid, packet, opts]` |
//! | `<key>#<nsp>#<room>#` | the same, when exactly one room is targeted |
//! | `<key>-request#<nsp>#` | a request, JSON `{type, opts, rooms?, close?, data?}` |
//!
//! `<key>` is `socket.io` unless the emitter was given another one. In a broadcast, `packet` is
//! `{type: 2, data: [event, ...args], nsp}` (byte strings are MessagePack `bin`, anywhere in
//! `args`) and `opts` is `{rooms: [...], except: [...], flags: {volatile?, compress?, ...}}`.
//! Request types: 2 `socketsJoin`, 3 `socketsLeave`, 4 `disconnectSockets`; the others
//! (0 and 5 fetch sockets, 1 all rooms, 6 `serverSideEmit`) need server-side handlers or an
//! answer, which roomcast does not have.
//!
//! Decoding never panics: any byte string gives a value or an [`EmitterError`], whose
//! [`EmitterError::reason`] is the metric label of a dropped message. Byte strings become
//! the `$bin` wrapper of [`crate::data`], and the arguments obey the same limits as a
//! client's `data` ([`crate::data::MAX_DEPTH`], the `$bin` rule).

use crate::data::{Data, MAX_DEPTH};
use crate::socketio::{self, RESERVED_EVENTS};
use serde_json::{Map, Value};

/// The channel key prefix the emitter uses unless told otherwise.
pub const DEFAULT_KEY: &str = "socket.io";

/// Socket.IO packet types a broadcast may carry: EVENT, and BINARY_EVENT (a Node server's
/// own broadcasts of older adapters).
const EVENT: u64 = 2;
const BINARY_EVENT: u64 = 5;

/// Why a message was dropped.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmitterError {
    #[error("not MessagePack or JSON of the expected shape: {0}")]
    Malformed(&'static str),
    #[error("nested too deeply")]
    TooDeep,
    #[error("bad event arguments: {0}")]
    Data(#[from] crate::data::DataError),
    #[error("reserved or missing event name")]
    EventName,
}

impl EmitterError {
    /// The `result` label of `roomcast_socketio_emitter_messages_total` for this drop.
    pub fn reason(&self) -> &'static str {
        match self {
            EmitterError::Malformed(_) => "malformed",
            EmitterError::TooDeep | EmitterError::Data(_) => "bad_data",
            EmitterError::EventName => "bad_event",
        }
    }
}

/// What a broadcast's `opts.flags` said. roomcast honours none of them specially (see
/// `docs/protocol.md`), but `local` means "this server only", which no roomcast node is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub volatile: bool,
    pub compress: Option<bool>,
    pub local: bool,
}

/// One decoded broadcast: emit `event(args…)` to the sockets of `namespace` in any of `rooms`
/// (every socket when empty) and in none of `except`.
#[derive(Debug, Clone, PartialEq)]
pub struct Broadcast {
    /// The sender's uid: `emitter` for the emitter, a server id for a Node server.
    pub uid: String,
    pub namespace: String,
    pub event: String,
    /// The arguments after the event name; byte strings as `$bin` wrappers.
    pub args: Vec<Value>,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
    pub flags: Flags,
}

/// Which sockets a request applies to (the emitter's `to`/`except` before the call).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub rooms: Vec<String>,
    pub except: Vec<String>,
}

/// One decoded request of the request channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `socketsJoin(rooms)`.
    Join { target: Target, rooms: Vec<String> },
    /// `socketsLeave(rooms)`.
    Leave { target: Target, rooms: Vec<String> },
    /// `disconnectSockets(close)`.
    Disconnect { target: Target, close: bool },
    /// A request roomcast does not serve (`serverSideEmit`, fetch sockets…): its type and name.
    Unsupported { kind: u64, name: &'static str },
}

/// What a channel is, for the given key and namespace list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelKind<'a> {
    Broadcast { namespace: &'a str },
    Request { namespace: &'a str },
}

/// The broadcast channel pattern (for PSUBSCRIBE) of a namespace: `<key>#<nsp>#*`, with the
/// glob characters of key and namespace escaped. It matches the channel without a room, and
/// the channels with one.
pub fn broadcast_pattern(key: &str, namespace: &str) -> String {
    format!("{}*", glob_escape(&format!("{key}#{namespace}#")))
}

/// The request channel of a namespace: `<key>-request#<nsp>#`.
pub fn request_channel(key: &str, namespace: &str) -> String {
    format!("{key}-request#{namespace}#")
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Classifies a channel a message arrived on: a broadcast or request channel of `key` and of
/// one of `namespaces`, or `None`.
pub fn classify<'a>(key: &str, namespaces: &'a [String], channel: &str) -> Option<ChannelKind<'a>> {
    if let Some(rest) = channel.strip_prefix(key) {
        if let Some(rest) = rest.strip_prefix("-request#") {
            return namespaces
                .iter()
                .find(|ns| rest.strip_prefix(ns.as_str()) == Some("#"))
                .map(|ns| ChannelKind::Request { namespace: ns });
        }
        if let Some(rest) = rest.strip_prefix('#') {
            // The longest namespace that fits, then `#`, then nothing or `<room>#`.
            return namespaces
                .iter()
                .filter(|ns| {
                    rest.strip_prefix(ns.as_str())
                        .and_then(|r| r.strip_prefix('#'))
                        .is_some_and(|room| room.is_empty() || room.ends_with('#'))
                })
                .max_by_key(|ns| ns.len())
                .map(|ns| ChannelKind::Broadcast { namespace: ns });
        }
    }
    None
}

/// Parses MessagePack into a value tree (`bin` as `$bin` wrappers), depth checked first.
fn from_msgpack(bytes: &[u8], depth: usize) -> Result<Value, EmitterError> {
    if !crate::msgpack_depth::depth_within(bytes, depth) {
        return Err(EmitterError::TooDeep);
    }
    rmp_serde::from_slice::<crate::value::Plain>(bytes)
        .map(|p| p.0)
        .map_err(|_| EmitterError::Malformed("invalid MessagePack"))
}

/// Room names: strings, or numbers (which Socket.IO allows) as their decimal text.
fn rooms(value: Option<&Value>) -> Result<Vec<String>, EmitterError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|r| match r {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(EmitterError::Malformed("a room is not a string")),
            })
            .collect(),
        Some(_) => Err(EmitterError::Malformed("rooms is not an array")),
    }
}

fn target(opts: Option<&Value>) -> Result<Target, EmitterError> {
    let empty = Map::new();
    let opts = match opts {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => return Err(EmitterError::Malformed("opts is not a map")),
    };
    Ok(Target {
        rooms: rooms(opts.get("rooms"))?,
        except: rooms(opts.get("except"))?,
    })
}

/// Decodes a broadcast: MessagePack `[uid, {type, data: [event, ...args], nsp}, opts]`.
pub fn decode_broadcast(bytes: &[u8]) -> Result<Broadcast, EmitterError> {
    // Three levels above the arguments: the message array, the packet map, `data`.
    let value = from_msgpack(bytes, MAX_DEPTH + 3)?;
    let Value::Array(mut parts) = value else {
        return Err(EmitterError::Malformed("not an array"));
    };
    if parts.len() != 3 {
        return Err(EmitterError::Malformed("not [uid, packet, opts]"));
    }
    let opts = parts.pop().unwrap_or(Value::Null);
    let packet = parts.pop().unwrap_or(Value::Null);
    let uid = match parts.pop() {
        Some(Value::String(s)) => s,
        _ => return Err(EmitterError::Malformed("uid is not a string")),
    };
    let Value::Object(mut packet) = packet else {
        return Err(EmitterError::Malformed("packet is not a map"));
    };
    match packet.get("type").and_then(Value::as_u64) {
        Some(EVENT | BINARY_EVENT) => {}
        _ => return Err(EmitterError::Malformed("packet type is not EVENT")),
    }
    let namespace = match packet.get("nsp") {
        Some(Value::String(s)) if s.starts_with('/') => s.clone(),
        None => "/".to_string(),
        _ => return Err(EmitterError::Malformed("nsp is not a namespace")),
    };
    let Some(Value::Array(mut data)) = packet.remove("data") else {
        return Err(EmitterError::Malformed("data is not an array"));
    };
    if data.is_empty() {
        return Err(EmitterError::EventName);
    }
    let event = match data.remove(0) {
        Value::String(s) if !RESERVED_EVENTS.contains(&s.as_str()) => s,
        _ => return Err(EmitterError::EventName),
    };
    // The same rules as a client's payload: depth, and `$bin` only as a byte string.
    let args = Value::Array(data);
    Data::from_value(&args)?;
    let Value::Array(args) = args else {
        return Err(EmitterError::Malformed("data is not an array"));
    };
    let target = target(Some(&opts))?;
    let flags = match opts.get("flags") {
        Some(Value::Object(f)) => Flags {
            volatile: f.get("volatile").and_then(Value::as_bool).unwrap_or(false),
            compress: f.get("compress").and_then(Value::as_bool),
            local: f.get("local").and_then(Value::as_bool).unwrap_or(false),
        },
        None | Some(Value::Null) => Flags::default(),
        Some(_) => return Err(EmitterError::Malformed("flags is not a map")),
    };
    Ok(Broadcast {
        uid,
        namespace,
        event,
        args,
        rooms: target.rooms,
        except: target.except,
        flags,
    })
}

/// Decodes a request: JSON, as the emitter sends it (MessagePack too, which later Node
/// adapters use between servers).
pub fn decode_request(bytes: &[u8]) -> Result<Request, EmitterError> {
    let value = match bytes.first() {
        Some(b'{') => {
            crate::value::from_slice(bytes).map_err(|_| EmitterError::Malformed("invalid JSON"))?
        }
        _ => from_msgpack(bytes, MAX_DEPTH)?,
    };
    let Value::Object(map) = value else {
        return Err(EmitterError::Malformed("a request is not a map"));
    };
    let Some(kind) = map.get("type").and_then(Value::as_u64) else {
        return Err(EmitterError::Malformed("a request has no type"));
    };
    Ok(match kind {
        2 => Request::Join {
            target: target(map.get("opts"))?,
            rooms: rooms(map.get("rooms"))?,
        },
        3 => Request::Leave {
            target: target(map.get("opts"))?,
            rooms: rooms(map.get("rooms"))?,
        },
        4 => Request::Disconnect {
            target: target(map.get("opts"))?,
            close: map.get("close").and_then(Value::as_bool).unwrap_or(false),
        },
        0 => Request::Unsupported {
            kind,
            name: "fetchSockets",
        },
        1 => Request::Unsupported {
            kind,
            name: "allRooms",
        },
        5 => Request::Unsupported {
            kind,
            name: "fetchSockets",
        },
        6 => Request::Unsupported {
            kind,
            name: "serverSideEmit",
        },
        _ => Request::Unsupported {
            kind,
            name: "unknown",
        },
    })
}

/// The Socket.IO packet of a broadcast in the `/` namespace, as roomcast queues events
/// (a namespace socket's forwarder adds its namespace): `42["event",…args]`, or with byte
/// strings a BINARY_EVENT bundle (`45<n>-[…]` and its attachments, see
/// [`socketio::BUNDLE`]).
pub fn encode_socketio(b: &Broadcast) -> Vec<u8> {
    let mut all = Vec::with_capacity(b.args.len() + 1);
    all.push(Value::String(b.event.clone()));
    all.extend(b.args.iter().cloned());
    let mut payload = Value::Array(all);
    let attachments = socketio::extract_binary(&mut payload);
    if attachments.is_empty() {
        format!("42{payload}").into_bytes()
    } else {
        let text = socketio::binary(false, "/", None, attachments.len(), &payload);
        socketio::bundle(&text, &attachments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// MessagePack of a value, `$bin` wrappers packed as `bin` (as notepack packs a Buffer).
    fn pack(v: &Value) -> Vec<u8> {
        match Data::from_value(v) {
            Ok(data) => rmp_serde::to_vec_named(&data).expect("pack"),
            // Not valid data (a bad `$bin`): packed as it is.
            Err(_) => rmp_serde::to_vec_named(v).expect("pack"),
        }
    }

    fn bin(bytes: &[u8]) -> Value {
        crate::data::binary_value(bytes)
    }

    fn message(data: Value, opts: Value) -> Vec<u8> {
        pack(&json!(["emitter", {"type": 2, "data": data, "nsp": "/"}, opts]))
    }

    #[test]
    fn decodes_a_room_emit_with_binary() {
        let bytes = message(
            json!(["file", {"file": bin(&[1, 2, 3]), "name": "a.png"}, bin(&[4])]),
            json!({"rooms": ["r1"], "except": ["r2"], "flags": {"volatile": true}}),
        );
        let b = decode_broadcast(&bytes).expect("decodes");
        assert_eq!(b.uid, "emitter");
        assert_eq!(b.namespace, "/");
        assert_eq!(b.event, "file");
        assert_eq!(b.rooms, vec!["r1"]);
        assert_eq!(b.except, vec!["r2"]);
        assert!(b.flags.volatile);
        assert_eq!(b.args[1], bin(&[4]));
        let encoded = encode_socketio(&b);
        let parts: Vec<_> = socketio::messages(&encoded).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            std::str::from_utf8(parts[0].1).expect("text"),
            r#"452-["file",{"file":{"_placeholder":true,"num":0},"name":"a.png"},{"_placeholder":true,"num":1}]"#
        );
        assert_eq!(parts[1].1, &[1, 2, 3]);
        assert_eq!(parts[2].1, &[4]);
    }

    #[test]
    fn decodes_a_namespace_wide_emit_as_text() {
        let bytes = pack(&json!([
            "emitter",
            {"type": 2, "data": ["hello", "world", {"n": 1}], "nsp": "/admin"},
            {"rooms": [], "except": [], "flags": {}}
        ]));
        let b = decode_broadcast(&bytes).expect("decodes");
        assert_eq!(b.namespace, "/admin");
        assert!(b.rooms.is_empty());
        assert_eq!(
            String::from_utf8(encode_socketio(&b)).expect("text"),
            r#"42["hello","world",{"n":1}]"#
        );
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xc1],
            b"not msgpack".to_vec(),
            pack(&json!({"a": 1})),
            pack(&json!(["emitter", {"type": 2, "data": ["x"]}])),
            pack(&json!([1, {"type": 2, "data": ["x"]}, {}])),
            pack(&json!(["e", {"type": 3, "data": ["x"]}, {}])),
            pack(&json!(["e", {"type": 2, "data": "x"}, {}])),
            pack(&json!(["e", {"type": 2, "data": []}, {}])),
            pack(&json!(["e", {"type": 2, "data": ["connect"]}, {}])),
            pack(&json!(["e", {"type": 2, "data": [7]}, {}])),
            pack(&json!(["e", {"type": 2, "data": ["x"], "nsp": 5}, {}])),
            pack(&json!(["e", {"type": 2, "data": ["x"]}, {"rooms": "r"}])),
            pack(&json!(["e", {"type": 2, "data": ["x"]}, {"rooms": [{}]}])),
            pack(&json!(["e", {"type": 2, "data": ["x", {"$bin": "!"}]}, {}])),
            vec![0x91; 100_000],
        ];
        for bytes in cases {
            assert!(decode_broadcast(&bytes).is_err(), "{bytes:?}");
            let _ = decode_request(&bytes);
        }
        let mut deep = json!("x");
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        let err = decode_broadcast(&message(json!(["x", deep]), json!({}))).expect_err("too deep");
        assert_eq!(err.reason(), "bad_data");
        // Truncations of a good message never panic.
        let good = message(
            json!(["x", bin(&[1; 40]), {"a": [1, 2]}]),
            json!({"rooms": ["r"]}),
        );
        for n in 0..good.len() {
            let _ = decode_broadcast(&good[..n]);
        }
        assert!(decode_broadcast(&good).is_ok());
    }

    #[test]
    fn decodes_the_emitters_requests() {
        let join = br#"{"type":2,"opts":{"rooms":["a"],"except":["b"]},"rooms":["c","d"]}"#;
        assert_eq!(
            decode_request(join),
            Ok(Request::Join {
                target: Target {
                    rooms: vec!["a".into()],
                    except: vec!["b".into()]
                },
                rooms: vec!["c".into(), "d".into()]
            })
        );
        let leave = br#"{"type":3,"opts":{"rooms":[],"except":[]},"rooms":["c"]}"#;
        assert!(matches!(decode_request(leave), Ok(Request::Leave { .. })));
        let disconnect = br#"{"type":4,"opts":{"rooms":["a"],"except":[]},"close":true}"#;
        assert!(matches!(
            decode_request(disconnect),
            Ok(Request::Disconnect { close: true, .. })
        ));
        let sse = br#"{"uid":"emitter","type":6,"data":["hello"]}"#;
        assert_eq!(
            decode_request(sse),
            Ok(Request::Unsupported {
                kind: 6,
                name: "serverSideEmit"
            })
        );
        for bad in [
            &b"{"[..],
            b"{}",
            b"{\"type\":\"x\"}",
            b"[1]",
            b"{\"type\":2,\"rooms\":5}",
        ] {
            assert!(decode_request(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn channels_name_their_namespace() {
        let namespaces = vec!["/".to_string(), "/admin".to_string()];
        let c = |s: &str| classify("socket.io", &namespaces, s);
        assert_eq!(
            c("socket.io#/#"),
            Some(ChannelKind::Broadcast { namespace: "/" })
        );
        assert_eq!(
            c("socket.io#/#room#"),
            Some(ChannelKind::Broadcast { namespace: "/" })
        );
        assert_eq!(
            c("socket.io#/admin#r#"),
            Some(ChannelKind::Broadcast {
                namespace: "/admin"
            })
        );
        assert_eq!(
            c("socket.io-request#/admin#"),
            Some(ChannelKind::Request {
                namespace: "/admin"
            })
        );
        assert_eq!(c("socket.io#/other#"), None);
        assert_eq!(c("socket.io#/#room"), None);
        assert_eq!(c("other#/#"), None);
        assert_eq!(broadcast_pattern("socket.io", "/"), "socket.io#/#*");
        assert_eq!(broadcast_pattern("a*b", "/"), "a\\*b#/#*");
        assert_eq!(request_channel("socket.io", "/x"), "socket.io-request#/x#");
    }
}
