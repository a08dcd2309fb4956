//! Client formats and the request decoder.
//!
//! Decoding never trusts its input: any byte string yields a [`Request`] or a [`DecodeError`]
//! that carries the request `id` when one could be read, so the gateway can answer
//! `bad_request` to the right request.

use crate::frame::{Event, Op, Publication, Request};
use crate::room_name;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

/// How a connection encodes its frames, chosen once at connect time (`?format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON in WebSocket text frames (the default).
    Json,
    /// MessagePack maps with the same field names, in binary frames.
    MsgPack,
    /// Socket.IO v5 text packets: events as `42["name",{…}]` (the object without `event`).
    /// Only events are encoded this way; replies are acks built by the Socket.IO endpoint.
    SocketIo,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Json, Format::MsgPack, Format::SocketIo];

    /// Parses the `format` query value.
    pub fn from_query(value: &str) -> Option<Format> {
        match value {
            "json" => Some(Format::Json),
            "msgpack" => Some(Format::MsgPack),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::MsgPack => "msgpack",
            Format::SocketIo => "socketio",
        }
    }

    /// Index into per-format arrays (0 json, 1 msgpack, 2 socketio).
    pub fn index(self) -> usize {
        match self {
            Format::Json => 0,
            Format::MsgPack => 1,
            Format::SocketIo => 2,
        }
    }

    /// Whether frames of this format travel as WebSocket text (else binary).
    pub fn is_text(self) -> bool {
        matches!(self, Format::Json | Format::SocketIo)
    }
}

/// Why a frame could not become a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The request id, when the frame was an object with a readable `id`.
    pub id: Option<u64>,
    /// A short, client-safe explanation.
    pub message: String,
}

impl DecodeError {
    fn new(id: Option<u64>, message: impl Into<String>) -> DecodeError {
        DecodeError {
            id,
            message: message.into(),
        }
    }
}

/// Serialization failed; only possible for values that the format cannot represent.
#[derive(Debug, thiserror::Error)]
#[error("encode failed: {0}")]
pub struct EncodeError(String);

/// Decodes one client message in the given format.
pub fn decode_request(bytes: &[u8], format: Format) -> Result<Request, DecodeError> {
    let value: Value = match format {
        // Socket.IO requests arrive as events and are decoded by the Socket.IO endpoint.
        Format::Json | Format::SocketIo => crate::value::from_slice(bytes)
            .map_err(|e| DecodeError::new(None, format!("invalid JSON: {e}")))?,
        Format::MsgPack => {
            // The envelope adds two levels (request object, `data` field) above the payload.
            if !crate::msgpack_depth::depth_within(bytes, crate::data::MAX_DEPTH + 2) {
                return Err(DecodeError::new(None, "MessagePack nested too deeply"));
            }
            rmp_serde::from_slice::<crate::value::Plain>(bytes)
                .map(|p| p.0)
                .map_err(|e| DecodeError::new(None, format!("invalid MessagePack: {e}")))?
        }
    };
    request_from_value(value)
}

/// Turns a decoded value tree into a request. Shared by both formats.
pub fn request_from_value(value: Value) -> Result<Request, DecodeError> {
    let Value::Object(ref map) = value else {
        return Err(DecodeError::new(None, "a request must be an object"));
    };
    let id = match map.get("id") {
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let Some(id) = id else {
        return Err(DecodeError::new(
            None,
            "`id` must be an unsigned 64-bit integer",
        ));
    };
    match map.get("op") {
        Some(Value::String(_)) => {}
        Some(_) => return Err(DecodeError::new(Some(id), "`op` must be a string")),
        None => return Err(DecodeError::new(Some(id), "missing `op`")),
    }
    let op: Op = serde_json::from_value(value).map_err(|e| {
        let text = e.to_string();
        if text.starts_with("unknown variant") {
            DecodeError::new(Some(id), "unknown op")
        } else {
            DecodeError::new(Some(id), format!("invalid fields: {text}"))
        }
    })?;
    if let Some(room) = op.room() {
        if !room_name::is_valid(room) {
            return Err(DecodeError::new(
                Some(id),
                "room names are 1-128 characters of [A-Za-z0-9_.:-]",
            ));
        }
    }
    Ok(Request { id, op })
}

/// Encodes a server event in the given format: [`encode`], but for the one every delivery
/// makes, a room's message to a Socket.IO client, which is written straight from the
/// publication when its data holds no byte strings. The general path prints the event, parses
/// it back into a value tree, moves `event` out and prints the tree again, with a copy of the
/// data at every step: the largest item of a broadcast's encoding in the gateways' profile
/// (docs/bench/findings.md). The two give the same JSON values (the `data` fuzz target checks
/// it); the bytes may differ where the general path re-prints what the client sent (`\u00e9`
/// comes out as `é`, `1.0e2` as `100.0`).
pub fn encode_event(event: &Event<'_>, format: Format) -> Result<Bytes, EncodeError> {
    match (event, format) {
        (Event::Message(p), Format::SocketIo) if !p.data.has_binary() => socketio_message(p),
        _ => encode(event, format),
    }
}

/// `42["message",{room,offset,epoch,from,data,ts},"<recovery offset>"]`, the shape the general
/// path gives: the event's object without `event`, then the recovery offset when the message
/// has one (an ephemeral room's has none).
fn socketio_message(p: &Publication) -> Result<Bytes, EncodeError> {
    let mut out = Vec::with_capacity(p.data.as_json().len() + p.room.len() * 2 + 96);
    out.extend_from_slice(b"42[\"message\",");
    serde_json::to_writer(&mut out, p).map_err(|e| EncodeError(e.to_string()))?;
    if !p.is_ephemeral() && !p.epoch.is_empty() {
        out.push(b',');
        let offset = crate::socketio::recovery_offset(&p.room, &p.epoch, p.offset);
        serde_json::to_writer(&mut out, &offset).map_err(|e| EncodeError(e.to_string()))?;
    }
    out.push(b']');
    Ok(Bytes::from(out))
}

/// Encodes any reply or event in the given format.
pub fn encode<T: Serialize + ?Sized>(value: &T, format: Format) -> Result<Bytes, EncodeError> {
    match format {
        Format::Json => serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| EncodeError(e.to_string())),
        Format::MsgPack => rmp_serde::to_vec_named(value)
            .map(Bytes::from)
            .map_err(|e| EncodeError(e.to_string())),
        Format::SocketIo => {
            // Through text, not `serde_json::to_value`: that would re-parse every `Data` with
            // serde_json's raw-value magic (see `crate::value`).
            let text = serde_json::to_vec(value).map_err(|e| EncodeError(e.to_string()))?;
            let mut v = crate::value::from_slice(&text).map_err(|e| EncodeError(e.to_string()))?;
            let name = v
                .as_object_mut()
                .and_then(|o| o.shift_remove("event"))
                .and_then(|n| n.as_str().map(str::to_string))
                .ok_or_else(|| EncodeError("only events have a Socket.IO encoding".into()))?;
            // A message carries its recovery offset as a last argument, the form that
            // Socket.IO clients track (connection state recovery).
            let offset = (name == "message")
                .then(|| {
                    let room = v.get("room")?.as_str()?;
                    let epoch = v.get("epoch")?.as_str()?;
                    let offset = v.get("offset")?.as_u64()?;
                    Some(crate::socketio::recovery_offset(room, epoch, offset))
                })
                .flatten();
            // Byte strings become placeholders and attachments: a BINARY_EVENT, queued as one
            // bundle (see `crate::socketio::BUNDLE`).
            // The walk only when the text can hold a wrapper (`"$bin"`, or a key spelled with
            // `\u` escapes, which text from the store may have): most events have no bytes.
            let may_hold_bytes =
                text.windows(4).any(|w| w == b"bin\"") || text.windows(2).any(|w| w == b"\\u");
            let attachments = if may_hold_bytes {
                crate::socketio::extract_binary(&mut v)
            } else {
                Vec::new()
            };
            if !attachments.is_empty() {
                let args = match offset {
                    Some(o) => serde_json::json!([name, v, o]),
                    None => serde_json::json!([name, v]),
                };
                let text = crate::socketio::binary(false, "/", None, attachments.len(), &args);
                return Ok(Bytes::from(crate::socketio::bundle(&text, &attachments)));
            }
            Ok(Bytes::from(match offset {
                Some(o) => crate::socketio::event_with_offset(&name, &v, &o),
                None => crate::socketio::event("/", &name, &v),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Event, MsgId, OkBody, Reply, Since};
    use crate::{Data, ErrorCode};
    use serde_json::json;

    fn json_req(v: Value) -> Result<Request, DecodeError> {
        decode_request(v.to_string().as_bytes(), Format::Json)
    }

    #[test]
    fn decodes_every_op() {
        let r = json_req(json!({"id": 1, "op": "create_room"})).expect("ok");
        assert!(matches!(r.op, Op::CreateRoom { room: None, .. }));
        let r = json_req(json!({"id": 2, "op": "create_room", "room": "a",
            "options": {"maxMembers": 3, "historySize": 5, "ttlSecs": 9}}))
        .expect("ok");
        let Op::CreateRoom { room, options } = r.op else {
            panic!("wrong op")
        };
        assert_eq!(room.as_deref(), Some("a"));
        assert_eq!(options.max_members, Some(3));
        assert_eq!(options.history_size, Some(5));
        assert_eq!(options.ttl_secs, Some(9));
        let r = json_req(json!({"id": 3, "op": "join", "room": "a",
            "since": {"offset": 4, "epoch": "e"}}))
        .expect("ok");
        assert_eq!(
            r.op,
            Op::Join {
                room: "a".into(),
                since: Some(Since {
                    offset: 4,
                    epoch: "e".into()
                })
            }
        );
        for op in ["leave", "presence"] {
            assert!(json_req(json!({"id": 4, "op": op, "room": "a"})).is_ok());
        }
        let r = json_req(json!({"id": 5, "op": "publish", "room": "a", "data": {"x": [1]}}))
            .expect("ok");
        let Op::Publish { data, .. } = r.op else {
            panic!("wrong op")
        };
        assert_eq!(data.as_json(), r#"{"x":[1]}"#);
        let r =
            json_req(json!({"id": 5, "op": "publish", "room": "a", "data": 1, "msgId": "p1-42"}))
                .expect("ok");
        let Op::Publish { msg_id, .. } = r.op else {
            panic!("wrong op")
        };
        assert_eq!(msg_id.as_ref().map(MsgId::as_str), Some("p1-42"));
        for bad in [json!(""), json!("a b"), json!("x".repeat(65)), json!(7)] {
            let e =
                json_req(json!({"id": 5, "op": "publish", "room": "a", "data": 1, "msgId": bad}))
                    .expect_err("bad msgId");
            assert_eq!(e.id, Some(5));
        }
        let r = json_req(json!({"id": 6, "op": "history", "room": "a", "limit": 500, "before": 9}))
            .expect("ok");
        assert_eq!(
            r.op,
            Op::History {
                room: "a".into(),
                limit: Some(500),
                before: Some(9)
            }
        );
        assert_eq!(
            json_req(json!({"id": 7, "op": "ping"})).expect("ok").op,
            Op::Ping
        );
    }

    #[test]
    fn every_op_name_is_listed() {
        for name in Op::NAMES {
            let r = json_req(json!({"id": 1, "op": name, "room": "a", "data": 1, "token": "t"}))
                .expect(name);
            assert_eq!(r.op.name(), name);
        }
    }

    #[test]
    fn msgpack_uses_the_same_names() {
        let bytes =
            rmp_serde::to_vec_named(&json!({"id": 9, "op": "join", "room": "r"})).expect("encode");
        let r = decode_request(&bytes, Format::MsgPack).expect("ok");
        assert_eq!(r.id, 9);
    }

    #[test]
    fn errors_keep_the_id_when_readable() {
        let e = decode_request(b"not json", Format::Json).expect_err("bad");
        assert_eq!(e.id, None);
        let e = json_req(json!([1, 2])).expect_err("bad");
        assert_eq!(e.id, None);
        let e = json_req(json!({"id": -1, "op": "ping"})).expect_err("bad");
        assert_eq!(e.id, None);
        let e = json_req(json!({"id": 5, "op": "fly"})).expect_err("bad");
        assert_eq!((e.id, e.message.as_str()), (Some(5), "unknown op"));
        let e = json_req(json!({"id": 6})).expect_err("bad");
        assert_eq!(e.id, Some(6));
        let e = json_req(json!({"id": 7, "op": "join"})).expect_err("bad");
        assert_eq!(e.id, Some(7));
        let e = json_req(json!({"id": 8, "op": "join", "room": "no spaces"})).expect_err("bad");
        assert_eq!(e.id, Some(8));
        let e = json_req(json!({"id": 10, "op": "history", "room": "a", "limit": "x"}))
            .expect_err("bad");
        assert_eq!(e.id, Some(10));
        let e = decode_request(&[0xc1, 0xff, 0x00], Format::MsgPack).expect_err("bad");
        assert_eq!(e.id, None);
    }

    #[test]
    fn deep_json_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_request(deep.as_bytes(), Format::Json).is_err());
        let mut payload = String::from(r#"{"id":1,"op":"publish","room":"a","data":"#);
        payload.push_str(&"[".repeat(100));
        payload.push_str(&"]".repeat(100));
        payload.push('}');
        let e = decode_request(payload.as_bytes(), Format::Json).expect_err("too deep");
        assert_eq!(e.id, Some(1));
    }

    #[test]
    fn the_raw_value_token_is_plain_data() {
        // Found by the `data` fuzz target (fuzz/regressions/): serde_json's Value re-parsed a
        // string under this key with a fresh recursion limit, so nesting it overflowed the stack.
        const TOKEN: &str = "$serde_json::private::RawValue";
        let r = json_req(json!({"id": 1, "op": "publish", "room": "a", "data": {TOKEN: "[1]"}}))
            .expect("ok");
        let Op::Publish { data, .. } = r.op else {
            panic!("wrong op")
        };
        assert_eq!(data.to_value(), json!({TOKEN: "[1]"}));
        let event = crate::Publication {
            room: "a".into(),
            offset: 1,
            epoch: "e".into(),
            from: "u".into(),
            data,
            ts: 1,
        };
        let sio = encode(&Event::Message(&event), Format::SocketIo).expect("socketio");
        assert!(std::str::from_utf8(&sio).expect("utf8").contains(TOKEN));
        let mut nested = String::from("1");
        for _ in 0..10 {
            nested = format!(
                "{}{{\"{TOKEN}\":{}}}{}",
                "[".repeat(120),
                Value::from(nested),
                "]".repeat(120)
            );
        }
        let payload = format!(r#"{{"id":2,"op":"publish","room":"a","data":{nested}}}"#);
        let e = decode_request(payload.as_bytes(), Format::Json).expect_err("too deep");
        assert_eq!(e.id, Some(2));
    }

    #[test]
    fn deep_msgpack_is_an_error_not_a_crash() {
        // 0x91 is a one-element array: 100k of them nest 100k deep.
        let mut bytes = vec![0x91u8; 100_000];
        bytes.push(0x01);
        assert!(decode_request(&bytes, Format::MsgPack).is_err());
    }

    #[test]
    fn socketio_events() {
        let status = crate::TrafficStatus {
            level: crate::TrafficLevel::High,
            active_rooms: 1,
            active_connections: 2,
            room_creation_enabled: true,
            message: None,
            retry_after: None,
            timestamp: 3,
        };
        let bytes = encode(&Event::TrafficStatus(&status), Format::SocketIo).expect("event");
        assert_eq!(
            bytes.as_ref(),
            br#"42["traffic_status",{"level":"high","activeRooms":1,"activeConnections":2,"roomCreationEnabled":true,"timestamp":3}]"#
        );
        assert!(encode(&Reply::ok(1, OkBody::Empty {}), Format::SocketIo).is_err());
    }

    #[test]
    fn replies_and_events_encode_as_documented() {
        let reply = Reply::ok(
            3,
            OkBody::Published {
                offset: 7,
                duplicate: false,
                epoch: None,
            },
        );
        assert_eq!(
            encode(&reply, Format::Json).expect("json").as_ref(),
            br#"{"id":3,"ok":{"offset":7}}"#
        );
        let err = Reply::error(
            None,
            crate::frame::ErrorBody::new(ErrorCode::RateLimited, "slow down").retry_after(50),
        );
        assert_eq!(
            encode(&err, Format::Json).expect("json").as_ref(),
            br#"{"id":null,"error":{"code":"rate_limited","message":"slow down","retryAfterMs":50}}"#
        );
        let p = crate::Publication {
            room: "r".into(),
            offset: 1,
            epoch: "e".into(),
            from: "u".into(),
            data: Data::from_value(&json!({"t": 1})).expect("data"),
            ts: 5,
        };
        assert_eq!(
            encode(&Event::Message(&p), Format::Json).expect("json").as_ref(),
            br#"{"event":"message","room":"r","offset":1,"epoch":"e","from":"u","data":{"t":1},"ts":5}"#
        );
        let m = encode(&Event::Message(&p), Format::MsgPack).expect("mp");
        let back: Value = rmp_serde::from_slice(&m).expect("decode");
        assert_eq!(
            back,
            json!({"event":"message","room":"r","offset":1,"epoch":"e","from":"u","data":{"t":1},"ts":5})
        );
        let leave = Reply::ok(4, OkBody::Empty {});
        assert_eq!(
            encode(&leave, Format::Json).expect("json").as_ref(),
            br#"{"id":4,"ok":{}}"#
        );
    }

    #[test]
    fn binary_data_in_every_format() {
        let p = crate::Publication {
            room: "r".into(),
            offset: 2,
            epoch: "e".into(),
            from: "u".into(),
            data: Data::from_value(&json!({"file": {"$bin": "AQID"}, "name": "a.png",
                "parts": [{"$bin": "/w=="}]}))
            .expect("data"),
            ts: 5,
        };
        let text = encode(&Event::Message(&p), Format::Json).expect("json");
        assert_eq!(
            std::str::from_utf8(&text).expect("utf8"),
            r#"{"event":"message","room":"r","offset":2,"epoch":"e","from":"u","data":{"file":{"$bin":"AQID"},"name":"a.png","parts":[{"$bin":"/w=="}]},"ts":5}"#
        );
        let mp = encode(&Event::Message(&p), Format::MsgPack).expect("msgpack");
        // The payload's byte strings are `bin` (0xc4), not base64 text.
        assert!(mp.windows(5).any(|w| w == [0xc4, 3, 1, 2, 3]));
        assert!(mp.windows(3).any(|w| w == [0xc4, 1, 0xff]));
        let sio = encode(&Event::Message(&p), Format::SocketIo).expect("socketio");
        let parts: Vec<(bool, &[u8])> = crate::socketio::messages(&sio).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            std::str::from_utf8(parts[0].1).expect("utf8"),
            r#"452-["message",{"room":"r","offset":2,"epoch":"e","from":"u","data":{"file":{"_placeholder":true,"num":0},"name":"a.png","parts":[{"_placeholder":true,"num":1}]},"ts":5},"2:e:r"]"#
        );
        assert_eq!(
            &parts[1..],
            &[(false, &[1u8, 2, 3][..]), (false, &[0xff][..])]
        );
        // A MessagePack client's `bin` comes in as the same data.
        let request = rmp_serde::to_vec_named(&json!({"id": 1, "op": "publish", "room": "r"}))
            .expect("encode");
        let mut request = request;
        // Append `data: bin8(2) "hi"` to the fixmap of 3 entries, making it 4.
        request[0] = 0x84;
        request.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a', 0xc4, 2, b'h', b'i']);
        let r = decode_request(&request, Format::MsgPack).expect("bin accepted");
        let Op::Publish { data, .. } = r.op else {
            panic!("wrong op")
        };
        assert_eq!(data.as_json(), r#"{"$bin":"aGk="}"#);
        assert_eq!(data.size(), 2);
        // The wrapper is checked in requests of every format.
        let e = json_req(json!({"id": 3, "op": "publish", "room": "a", "data": {"$bin": "?"}}))
            .expect_err("bad wrapper");
        assert_eq!(e.id, Some(3));
    }

    #[test]
    fn an_escaped_wrapper_key_is_still_binary_for_socketio() {
        // Text from the store keeps its spelling; `\u0024bin` is `$bin`.
        let p = crate::Publication {
            room: "r".into(),
            offset: 1,
            epoch: "e".into(),
            from: "u".into(),
            data: Data::from_json_text(r#"{"\u0024bin":"aGk="}"#.into()).expect("data"),
            ts: 5,
        };
        assert!(p.data.has_binary());
        let sio = encode(&Event::Message(&p), Format::SocketIo).expect("socketio");
        let parts: Vec<(bool, &[u8])> = crate::socketio::messages(&sio).collect();
        assert_eq!(parts.len(), 2, "{:?}", String::from_utf8_lossy(&sio));
        assert_eq!(parts[1], (false, &b"hi"[..]));
    }
}
