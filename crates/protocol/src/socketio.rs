//! Engine.IO v4 and Socket.IO v5 packets. Pure: text and byte strings in, packets or errors
//! out. Long-polling payloads (several packets in one HTTP body) are in [`crate::polling`].
//!
//! Engine.IO: one packet per WebSocket message; a text message is a type digit plus data
//! (`0` open, `1` close, `2` ping, `3` pong, `4` message, `5` upgrade, `6` noop); a binary
//! message is the body of a `message` packet (a Socket.IO attachment).
//!
//! Socket.IO: `<type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]`, types 0 CONNECT,
//! 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR, 5 BINARY_EVENT, 6 BINARY_ACK.

use serde_json::Value;

/// The largest number of binary attachments one packet may announce.
pub const MAX_ATTACHMENTS: usize = 10;

/// Event names a client may not emit.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// An Engine.IO packet received in a text message.
#[derive(Debug, Clone, PartialEq)]
pub enum EnginePacket<'a> {
    Close,
    Ping,
    Pong,
    /// A Socket.IO packet, still encoded.
    Message(&'a str),
    /// `upgrade` and `noop`: the transport upgrade handles them, the session ignores them.
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("unknown Engine.IO packet type")]
    EngineType,
    #[error("unknown Socket.IO packet type")]
    SocketType,
    #[error("bad attachment count")]
    Attachments,
    #[error("bad namespace")]
    Namespace,
    #[error("bad payload")]
    Payload,
    #[error("reserved event name")]
    Reserved,
}

/// Decodes a text WebSocket message as an Engine.IO packet.
pub fn decode_engine(text: &str) -> Result<EnginePacket<'_>, PacketError> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or(PacketError::EngineType)?;
    let rest = chars.as_str();
    match kind {
        '1' => Ok(EnginePacket::Close),
        '2' => Ok(EnginePacket::Ping),
        '3' => Ok(EnginePacket::Pong),
        '4' => Ok(EnginePacket::Message(rest)),
        '5' | '6' => Ok(EnginePacket::Ignored),
        _ => Err(PacketError::EngineType),
    }
}

/// The Engine.IO open packet: exactly the five standard keys. `upgrades` is `["websocket"]`
/// for a polling session, `[]` on a WebSocket.
pub fn open_packet(
    sid: &str,
    upgrades: &[&str],
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: u64,
) -> String {
    format!(
        "0{}",
        serde_json::json!({
            "sid": sid,
            "upgrades": upgrades,
            "pingInterval": ping_interval_ms,
            "pingTimeout": ping_timeout_ms,
            "maxPayload": max_payload,
        })
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

/// A decoded Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: Kind,
    /// `/` unless another namespace was named.
    pub namespace: String,
    pub ack: Option<u64>,
    /// Binary attachments still to come (BINARY_EVENT, BINARY_ACK).
    pub attachments: usize,
    pub payload: Option<Value>,
}

impl Packet {
    /// For an EVENT: the event name and its arguments.
    pub fn event(&self) -> Option<(&str, &[Value])> {
        let args = self.payload.as_ref()?.as_array()?;
        let (name, rest) = args.split_first()?;
        Some((name.as_str()?, rest))
    }
}

/// Decodes one Socket.IO packet (the data of an Engine.IO `message`), validating it the way the
/// reference server does. Any error means: close the connection.
pub fn decode(text: &str) -> Result<Packet, PacketError> {
    let bytes = text.as_bytes();
    let kind = match bytes.first() {
        Some(b'0') => Kind::Connect,
        Some(b'1') => Kind::Disconnect,
        Some(b'2') => Kind::Event,
        Some(b'3') => Kind::Ack,
        Some(b'4') => Kind::ConnectError,
        Some(b'5') => Kind::BinaryEvent,
        Some(b'6') => Kind::BinaryAck,
        _ => return Err(PacketError::SocketType),
    };
    let mut i = 1;
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || bytes.get(i) != Some(&b'-') {
            return Err(PacketError::Attachments);
        }
        attachments = text[start..i]
            .parse()
            .map_err(|_| PacketError::Attachments)?;
        if attachments > MAX_ATTACHMENTS {
            return Err(PacketError::Attachments);
        }
        i += 1;
    }
    let mut namespace = "/".to_string();
    if bytes.get(i) == Some(&b'/') {
        let end = text[i..].find(',').map_or(text.len(), |p| i + p);
        namespace = text[i..end].to_string();
        i = if end < text.len() { end + 1 } else { end };
    }
    let start = i;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        i += 1;
    }
    let ack = if i > start {
        Some(text[start..i].parse().map_err(|_| PacketError::Payload)?)
    } else {
        None
    };
    let rest = &text[i..];
    let payload: Option<Value> = if rest.is_empty() {
        None
    } else {
        Some(crate::value::from_str(rest).map_err(|_| PacketError::Payload)?)
    };
    let ok = match (kind, &payload) {
        (Kind::Connect, None) => true,
        (Kind::Connect, Some(p)) => p.is_object(),
        (Kind::Disconnect, p) => p.is_none(),
        (Kind::Event | Kind::BinaryEvent, Some(Value::Array(a))) => match a.first() {
            Some(Value::String(name)) => {
                if RESERVED_EVENTS.contains(&name.as_str()) {
                    return Err(PacketError::Reserved);
                }
                true
            }
            Some(Value::Number(_)) => true,
            _ => false,
        },
        (Kind::Ack | Kind::BinaryAck, Some(Value::Array(_))) => true,
        (Kind::ConnectError, Some(p)) => p.is_object() || p.is_string(),
        _ => false,
    };
    if !ok {
        return Err(PacketError::Payload);
    }
    Ok(Packet {
        kind,
        namespace,
        ack,
        attachments,
        payload,
    })
}

fn prefix(kind: char, namespace: &str) -> String {
    if namespace == "/" {
        format!("4{kind}")
    } else {
        format!("4{kind}{namespace},")
    }
}

/// `40{"sid":…}` (the Engine.IO `4` included): the CONNECT reply.
pub fn connect_ok(namespace: &str, sid: &str) -> String {
    format!(
        "{}{}",
        prefix('0', namespace),
        serde_json::json!({ "sid": sid })
    )
}

/// `40{"sid":…,"pid":…}`: the CONNECT reply with a recovery id (connection state recovery).
pub fn connect_ok_with_pid(namespace: &str, sid: &str, pid: &str) -> String {
    format!(
        "{}{}",
        prefix('0', namespace),
        serde_json::json!({ "sid": sid, "pid": pid })
    )
}

/// `44{"message":…,"data":…}`: a refused CONNECT.
pub fn connect_error(namespace: &str, message: &str, data: Option<Value>) -> String {
    let mut body = serde_json::json!({ "message": message });
    if let (Some(d), Some(obj)) = (data, body.as_object_mut()) {
        obj.insert("data".into(), d);
    }
    format!("{}{}", prefix('4', namespace), body)
}

/// `43<id>[args…]`: an ACK.
pub fn ack(namespace: &str, id: u64, args: &Value) -> String {
    format!("{}{id}{}", prefix('3', namespace), args)
}

/// `43<id>[{"ok":body}]`: an ACK whose one argument is a success reply with nothing to strip
/// or attach (a publish's), printed straight from `body` rather than through a value tree.
pub fn ack_ok<T: serde::Serialize + ?Sized>(
    namespace: &str,
    id: u64,
    body: &T,
) -> Result<String, serde_json::Error> {
    #[derive(serde::Serialize)]
    struct Ok<'a, T: ?Sized> {
        ok: &'a T,
    }
    Ok(format!(
        "{}{id}{}",
        prefix('3', namespace),
        serde_json::to_string(&[Ok { ok: body }])?
    ))
}

/// `42["name",arg]`: an EVENT to the client.
pub fn event(namespace: &str, name: &str, arg: &Value) -> String {
    format!(
        "{}{}",
        prefix('2', namespace),
        serde_json::json!([name, arg])
    )
}

/// `45<n>-…` or `46<n>-…`: a BINARY_EVENT (`ack` None… or an id) or BINARY_ACK whose
/// `payload` holds `attachments` placeholders; the attachments follow as binary messages.
pub fn binary(
    ack_reply: bool,
    namespace: &str,
    id: Option<u64>,
    attachments: usize,
    payload: &Value,
) -> String {
    let kind = if ack_reply { '6' } else { '5' };
    let ns = if namespace == "/" {
        String::new()
    } else {
        format!("{namespace},")
    };
    let id = id.map(|i| i.to_string()).unwrap_or_default();
    format!("4{kind}{attachments}-{ns}{id}{payload}")
}

/// `42["name",arg,"offset"]`: an EVENT with a recovery offset as its last argument.
pub fn event_with_offset(name: &str, arg: &Value, offset: &str) -> String {
    format!("42{}", serde_json::json!([name, arg, offset]))
}

/// The recovery offset of a message: `<offset>:<epoch>:<room>`. It names one message, so it
/// is the same for every recipient (one encoding per broadcast); the server keeps, per
/// socket, the order in which messages were queued, which makes it locate every room.
pub fn recovery_offset(room: &str, epoch: &str, offset: u64) -> String {
    format!("{offset}:{epoch}:{room}")
}

/// Parses a recovery offset into `(room, epoch, offset)`; `None` for anything malformed
/// (a normal recovery failure, not a protocol error).
pub fn parse_recovery_offset(s: &str) -> Option<(&str, &str, u64)> {
    let mut parts = s.splitn(3, ':');
    let offset = parts.next()?.parse().ok()?;
    let epoch = parts.next()?;
    let room = parts.next()?;
    (!epoch.is_empty() && !room.is_empty()).then_some((room, epoch, offset))
}

/// `41`: the server drops a namespace socket.
pub fn disconnect(namespace: &str) -> String {
    prefix('1', namespace)
}

/// Puts binary attachments back where their placeholders are, in order, as the `$bin`
/// wrappers that [`crate::data`] holds byte strings as. Errors on a bad or out-of-range
/// placeholder, and on a second placeholder for the same attachment: each attachment is copied
/// in at most once, so the filled payload grows by at most 4/3 of the attachment bytes received
/// (the reference encoder numbers every binary value separately, so stock clients never reuse a
/// number).
pub fn fill_placeholders(value: &mut Value, attachments: &[Vec<u8>]) -> Result<(), PacketError> {
    let mut used = vec![false; attachments.len()];
    // Iterative, with an explicit stack: no recursion on client input.
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) if map.get("_placeholder") == Some(&Value::Bool(true)) => {
                let num = map
                    .get("num")
                    .and_then(Value::as_u64)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or(PacketError::Attachments)?;
                let bytes = attachments.get(num).ok_or(PacketError::Attachments)?;
                match used.get_mut(num) {
                    Some(seen @ false) => *seen = true,
                    _ => return Err(PacketError::Attachments),
                }
                *value = crate::data::binary_value(bytes);
            }
            Value::Object(map) => stack.extend(map.values_mut()),
            Value::Array(items) => stack.extend(items.iter_mut()),
            _ => {}
        }
    }
    Ok(())
}

/// The reverse of [`fill_placeholders`]: replaces every `$bin` wrapper by a placeholder and
/// returns the attachments, numbered in document order as the reference encoder does.
pub fn extract_binary(value: &mut Value) -> Vec<Vec<u8>> {
    let mut attachments = Vec::new();
    // Iterative, and children pushed in reverse so that they are visited in order.
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        if let Some(bytes) = crate::data::as_binary(value) {
            *value = serde_json::json!({"_placeholder": true, "num": attachments.len()});
            attachments.push(bytes);
            continue;
        }
        match value {
            Value::Object(map) => stack.extend(map.values_mut().rev()),
            Value::Array(items) => stack.extend(items.iter_mut().rev()),
            _ => {}
        }
    }
    attachments
}

/// The first byte of a bundle: one encoded Socket.IO packet that is several Engine.IO messages
/// (a BINARY_EVENT or BINARY_ACK and its attachments), queued as one item so that it is
/// encoded once per broadcast, counted once against the queue's bound, journaled once, and
/// never interleaved with other packets. No text packet starts with it (Engine.IO types are
/// digits). The WebSocket writer and the long-polling GET unpack it with [`messages`].
pub const BUNDLE: u8 = 0;

/// Packs a text packet and its attachments into a bundle: [`BUNDLE`], then each part as a
/// 4-byte big-endian length and its bytes, the text first.
pub fn bundle(text: &str, attachments: &[Vec<u8>]) -> Vec<u8> {
    let total = 1 + 4 + text.len() + attachments.iter().map(|a| 4 + a.len()).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.push(BUNDLE);
    for part in std::iter::once(text.as_bytes()).chain(attachments.iter().map(Vec::as_slice)) {
        // Parts are bounded by --max-data-bytes, far below 4 GiB.
        out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The Engine.IO messages of one queued Socket.IO item, as `(is_text, bytes)`: the item itself
/// as one text message, or a bundle's parts (text, then binary attachments). A truncated
/// bundle (never built by [`bundle`]) ends early rather than failing.
pub fn messages(bytes: &[u8]) -> Messages<'_> {
    match bytes.split_first() {
        Some((&BUNDLE, rest)) => Messages {
            rest,
            bundle: true,
            first: true,
        },
        _ => Messages {
            rest: bytes,
            bundle: false,
            first: true,
        },
    }
}

/// See [`messages`].
pub struct Messages<'a> {
    rest: &'a [u8],
    bundle: bool,
    first: bool,
}

impl<'a> Iterator for Messages<'a> {
    type Item = (bool, &'a [u8]);

    fn next(&mut self) -> Option<(bool, &'a [u8])> {
        let text = std::mem::replace(&mut self.first, false);
        if !self.bundle {
            return text.then_some((true, std::mem::take(&mut self.rest)));
        }
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            self.rest = &[];
            return None;
        }
        let (part, rest) = rest.split_at(len);
        self.rest = rest;
        Some((text, part))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_printed_ack_is_the_value_trees_ack() {
        use crate::frame::OkBody;
        let bodies = [
            OkBody::Published {
                offset: 42,
                duplicate: false,
                epoch: None,
            },
            OkBody::Published {
                offset: 7,
                duplicate: true,
                epoch: Some("e\"1".into()),
            },
            OkBody::PUBLISHED_EPHEMERAL,
        ];
        for body in bodies {
            for ns in ["/", "/chat"] {
                assert_eq!(
                    ack_ok(ns, 12, &body).expect("prints"),
                    ack(ns, 12, &json!([{ "ok": body }])),
                );
            }
        }
    }

    #[test]
    fn engine_packets() {
        assert_eq!(decode_engine("2"), Ok(EnginePacket::Ping));
        assert_eq!(decode_engine("3"), Ok(EnginePacket::Pong));
        assert_eq!(decode_engine("1"), Ok(EnginePacket::Close));
        assert_eq!(decode_engine("40"), Ok(EnginePacket::Message("0")));
        assert_eq!(decode_engine("6"), Ok(EnginePacket::Ignored));
        assert_eq!(decode_engine("abc"), Err(PacketError::EngineType));
        assert_eq!(decode_engine(""), Err(PacketError::EngineType));
        let open = open_packet("lv_VI97HAXpY6yYWAAAC", &[], 300, 200, 1_000_000);
        let v: Value = serde_json::from_str(&open[1..]).expect("json");
        assert_eq!(
            v,
            json!({"sid": "lv_VI97HAXpY6yYWAAAC", "upgrades": [], "pingInterval": 300, "pingTimeout": 200, "maxPayload": 1000000})
        );
        assert_eq!(v.as_object().map(|o| o.len()), Some(5));
    }

    #[test]
    fn wire_examples_from_the_reference_notes() {
        // > 40/admin,{"token":"abc"}  < 40/admin,{"sid":…}
        let p = decode("0/admin,{\"token\":\"abc\"}").expect("connect");
        assert_eq!(
            (p.kind, p.namespace.as_str(), p.payload.clone()),
            (Kind::Connect, "/admin", Some(json!({"token": "abc"})))
        );
        assert_eq!(
            connect_ok("/admin", "oSO0OpakMV_3jnilAAAA"),
            r#"40/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#
        );
        // > 40/random  < 44/random,{"message":"Invalid namespace"}
        assert_eq!(decode("0/random").expect("connect").namespace, "/random");
        assert_eq!(
            connect_error("/random", "Invalid namespace", None),
            r#"44/random,{"message":"Invalid namespace"}"#
        );
        // > 42456["message-with-ack",1,"2",{"3":[false]}]  < 43456[1,"2",{"3":[false]}]
        let p = decode(r#"2456["message-with-ack",1,"2",{"3":[false]}]"#).expect("event");
        assert_eq!((p.kind, p.ack), (Kind::Event, Some(456)));
        let (name, args) = p.event().expect("event");
        assert_eq!(name, "message-with-ack");
        assert_eq!(
            ack("/", 456, &Value::Array(args.to_vec())),
            r#"43456[1,"2",{"3":[false]}]"#
        );
        // > 452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]
        let mut p =
            decode(r#"52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
                .expect("binary");
        assert_eq!((p.kind, p.attachments), (Kind::BinaryEvent, 2));
        let payload = p.payload.as_mut().expect("payload");
        fill_placeholders(payload, &[vec![1, 2, 3], vec![4, 5, 6]]).expect("fill");
        assert_eq!(
            p.payload,
            Some(json!(["message", {"$bin": "AQID"}, {"$bin": "BAUG"}]))
        );
        // Namespaces without a payload, and the server's DISCONNECT.
        assert_eq!(decode("1/admin,").expect("disconnect").namespace, "/admin");
        assert_eq!(decode("0/custom").expect("connect").namespace, "/custom");
        assert_eq!(disconnect("/"), "41");
        assert_eq!(
            event("/", "message", &json!({"a": 1})),
            r#"42["message",{"a":1}]"#
        );
    }

    #[test]
    fn malformed_packets_are_refused() {
        for bad in [
            "abc",
            "2abc[\"x\"]",
            "2{}",
            "2[]",
            "2[null]",
            "2[\"connect\"]",
            "1{}",
            "0[]",
            "3{}",
            "5[\"a\"]",
            "511-[\"a\"]",
            "5x-[\"a\"]",
            "4",
            "",
            "2[\"unterminated\"",
        ] {
            assert!(decode(bad).is_err(), "{bad} should fail");
        }
        let mut v = json!([{"_placeholder": true, "num": 3}]);
        assert_eq!(
            fill_placeholders(&mut v, &[vec![1]]),
            Err(PacketError::Attachments)
        );
    }

    #[test]
    fn an_attachment_fills_one_placeholder() {
        // Found by the `socketio_binary` fuzz target (fuzz/regressions/socketio_binary/): one
        // attachment referenced by many placeholders was copied into each of them, so a packet
        // could turn a 1 MB attachment into gigabytes of JSON numbers.
        let mut p =
            decode(r#"62-789[{"_placeholder":true,"num":1},{"_placeholder":true,"num":1}]"#)
                .expect("binary ack");
        let payload = p.payload.as_mut().expect("payload");
        assert_eq!(
            fill_placeholders(payload, &[vec![1, 2, 3], vec![4, 5]]),
            Err(PacketError::Attachments)
        );
        // Each attachment once, in any order, nested anywhere, is fine.
        let mut v =
            json!({"b": [{"_placeholder": true, "num": 1}], "a": {"_placeholder": true, "num": 0}});
        fill_placeholders(&mut v, &[vec![1], vec![2, 3]]).expect("fill");
        assert_eq!(v, json!({"b": [{"$bin": "AgM="}], "a": {"$bin": "AQ=="}}));
        let mut v = json!([{"_placeholder": true, "num": -1}, {"_placeholder": true}]);
        assert_eq!(
            fill_placeholders(&mut v, &[vec![1]]),
            Err(PacketError::Attachments)
        );
    }

    #[test]
    fn binary_round_trips_through_placeholders() {
        let mut v = json!(["message", {"file": {"$bin": "AQID"}, "name": "a.png",
            "more": [{"$bin": ""}, {"$bin": "/w=="}]}]);
        let original = v.clone();
        let attachments = extract_binary(&mut v);
        assert_eq!(attachments, vec![vec![1, 2, 3], vec![], vec![255]]);
        assert_eq!(
            v,
            json!(["message", {"file": {"_placeholder": true, "num": 0}, "name": "a.png",
                "more": [{"_placeholder": true, "num": 1}, {"_placeholder": true, "num": 2}]}])
        );
        fill_placeholders(&mut v, &attachments).expect("fill");
        assert_eq!(v, original);
        // Not wrappers: left alone.
        let mut v = json!([{"$bin": "bad!"}, {"$bin": "AA==", "x": 1}]);
        assert!(extract_binary(&mut v).is_empty());
    }

    #[test]
    fn bundles_unpack_into_messages() {
        let b = bundle("451-[{}]", &[vec![1, 2], vec![]]);
        let parts: Vec<(bool, &[u8])> = messages(&b).collect();
        assert_eq!(
            parts,
            vec![
                (true, &b"451-[{}]"[..]),
                (false, &[1u8, 2][..]),
                (false, &[][..])
            ]
        );
        let plain: Vec<(bool, &[u8])> = messages(b"42[1]").collect();
        assert_eq!(plain, vec![(true, &b"42[1]"[..])]);
        // Truncated: what is whole comes out, no panic.
        let parts: Vec<(bool, &[u8])> = messages(&b[..b.len() - 5]).collect();
        assert_eq!(parts, vec![(true, &b"451-[{}]"[..])]);
        assert_eq!(messages(&[BUNDLE]).count(), 0);
        assert_eq!(messages(&[BUNDLE, 0, 0, 0, 9, 1]).count(), 0);
    }
}
