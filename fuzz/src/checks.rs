//! The properties the fuzz targets assert, one public function per target.
//!
//! Each function takes arbitrary bytes, runs them through a decoder the way the gateway does,
//! and panics when a property fails; a decoder that panics by itself fails the same way. The
//! functions never use libFuzzer, so `crates/protocol/tests/fuzz_seeds.rs` includes this file
//! (`#[path]`) and replays `fuzz/seeds/` and `fuzz/regressions/` on stable in `cargo test`.
//!
//! Untrusted bytes are parsed with `protocol::value` (as the decoders do), never with
//! `serde_json::Value`'s own `Deserialize`, which gives the key `$serde_json::private::RawValue`
//! a special meaning.
//!
//! Round trips compare JSON numbers with a tolerance of a few ULPs: serde_json (without its
//! `float_roundtrip` feature, as in the workspace) may parse a float one ULP off, so
//! `decode(encode(x))` is only equal to `x` up to that.

use protocol::codec::{decode_request, encode, encode_event, request_from_value};
use protocol::data::{self, Data, MAX_DEPTH};
use protocol::emitter;
use protocol::envelope::Envelope;
use protocol::frame::{Op, Request};
use protocol::polling;
use protocol::socketio::{self, EnginePacket, Kind, Packet, MAX_ATTACHMENTS};
use protocol::value::Plain;
use protocol::{room_name, Format};
use serde_json::{Map, Value};

/// A target's check: panics when a property fails.
pub type Check = fn(&[u8]);

/// The targets by name; the name is also the directory under `fuzz/seeds/` and
/// `fuzz/regressions/`.
pub const TARGETS: [(&str, Check); 10] = [
    ("request_json", request_json),
    ("request_msgpack", request_msgpack),
    ("engineio_packet", engineio_packet),
    ("socketio_packet", socketio_packet),
    ("socketio_binary", socketio_binary),
    ("envelope", envelope),
    ("room_name", room_name),
    ("data", data),
    ("polling_payload", polling_payload),
    ("emitter", emitter),
];

/// The MessagePack decoder's refusal of deep input, which JSON has no counterpart for.
const MSGPACK_TOO_DEEP: &str = "MessagePack nested too deeply";

/// Native JSON request (`decode_request(bytes, Json)`).
///
/// - no panic, on any bytes;
/// - an accepted request satisfies the documented limits (room grammar, `data` depth);
/// - round trip: the request re-encoded as JSON and as MessagePack decodes to the same request;
/// - the formats agree: the same value tree sent as MessagePack decodes to exactly the same
///   result (request, or error with the same id and message), unless it is deeper than the
///   MessagePack guard allows.
pub fn request_json(bytes: &[u8]) {
    let result = decode_request(bytes, Format::Json);
    if let Ok(request) = &result {
        check_request(request);
    }
    let Ok(value) = protocol::value::from_slice(bytes) else {
        assert!(result.is_err(), "invalid JSON was accepted");
        return;
    };
    let packed = rmp_serde::to_vec_named(&value).expect("a JSON value always packs");
    match decode_request(&packed, Format::MsgPack) {
        Err(e) if e.message == MSGPACK_TOO_DEEP => {}
        other => assert_eq!(other, result, "JSON and MessagePack disagree"),
    }
}

/// Native MessagePack request (`decode_request(bytes, MsgPack)`).
///
/// - no panic, no stack overflow (the `msgpack_depth` guard), on any bytes;
/// - an accepted request satisfies the documented limits and round-trips through both formats;
/// - the formats agree: the decoded value tree sent as JSON gives an equivalent result.
pub fn request_msgpack(bytes: &[u8]) {
    let result = decode_request(bytes, Format::MsgPack);
    if let Ok(request) = &result {
        check_request(request);
    }
    if !protocol::msgpack_depth::depth_within(bytes, MAX_DEPTH + 2) {
        assert!(
            result.is_err(),
            "MessagePack deeper than the guard was accepted"
        );
        return;
    }
    let Ok(value) = rmp_serde::from_slice::<Plain>(bytes).map(|p| p.0) else {
        assert!(result.is_err(), "undecodable MessagePack was accepted");
        return;
    };
    let text = serde_json::to_vec(&value).expect("a value tree always prints");
    let as_json = decode_request(&text, Format::Json);
    match (&result, &as_json) {
        (Ok(a), Ok(b)) => assert_requests_equivalent(a, b),
        (Err(a), Err(b)) => assert_eq!(a.id, b.id, "MessagePack and JSON errors differ"),
        _ => panic!("MessagePack and JSON disagree: {result:?} vs {as_json:?}"),
    }
}

/// Engine.IO text packets (`socketio::decode_engine`), then the Socket.IO decoder on a
/// `message`, as the gateway does.
///
/// - no panic, on any UTF-8 text (WebSocket text frames are UTF-8 by then);
/// - the packet type is the first character; a `message` carries the rest verbatim and
///   re-encodes to the same text;
/// - the open packet built with the input as `sid` is valid JSON with exactly the five keys.
pub fn engineio_packet(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let first = text.chars().next();
    match socketio::decode_engine(text) {
        Ok(EnginePacket::Message(rest)) => {
            assert_eq!(first, Some('4'));
            assert_eq!(rest, &text[1..]);
            let again = format!("4{rest}");
            assert_eq!(
                socketio::decode_engine(&again),
                Ok(EnginePacket::Message(rest))
            );
            if let Ok(packet) = socketio::decode(rest) {
                check_packet(&packet);
            }
        }
        Ok(EnginePacket::Close) => assert_eq!(first, Some('1')),
        Ok(EnginePacket::Ping) => assert_eq!(first, Some('2')),
        Ok(EnginePacket::Pong) => assert_eq!(first, Some('3')),
        Ok(EnginePacket::Ignored) => assert!(matches!(first, Some('5' | '6'))),
        Err(_) => assert!(!matches!(first, Some('1'..='6'))),
    }
    let open = socketio::open_packet(text, &["websocket"], 25_000, 20_000, 1_000_000);
    let body = open.strip_prefix('0').expect("open packets start with 0");
    let v: Value = serde_json::from_str(body).expect("the open packet is JSON");
    assert_eq!(v.as_object().map(Map::len), Some(5));
    assert_eq!(v.get("sid").and_then(Value::as_str), Some(text));
}

/// Engine.IO long-polling payloads (`polling::decode_payload`, a POST body).
///
/// - no panic, on any bytes;
/// - an accepted payload is non-empty, and encoding its packets again gives a payload that
///   decodes to the same packets.
pub fn polling_payload(bytes: &[u8]) {
    let Ok(packets) = polling::decode_payload(bytes) else {
        return;
    };
    assert!(!packets.is_empty());
    let mut body = Vec::new();
    for p in &packets {
        match p {
            polling::Packet::Text(t) => {
                assert!(!t.is_empty() && !t.starts_with('b'));
                polling::push_text(&mut body, t.as_bytes());
            }
            polling::Packet::Binary(b) => polling::push_binary(&mut body, b),
        }
    }
    assert_eq!(polling::decode_payload(&body).as_ref(), Ok(&packets));
}

/// Socket.IO packets (`socketio::decode`, the data of an Engine.IO `message`).
///
/// - no panic, on any UTF-8 text;
/// - an accepted packet is well formed (namespace, attachment count, payload shape);
/// - round trip: the packet re-encoded decodes to an equivalent packet, also through the
///   server-side encoders (`event`, `ack`, `binary`, `disconnect`, `connect_error`);
/// - `parse_recovery_offset` (the `offset` a client sends in CONNECT) on the text and on a
///   CONNECT's `offset`: no panic, and it round-trips through `recovery_offset`;
/// - an EVENT becomes a native request the way the gateway builds it, without panicking.
pub fn socketio_packet(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    check_recovery_offset(text);
    let Ok(packet) = socketio::decode(text) else {
        return;
    };
    check_packet(&packet);
    // A CONNECT may carry a recovery offset from the client (connection state recovery).
    if let (Kind::Connect, Some(Value::Object(auth))) = (packet.kind, &packet.payload) {
        if let Some(Value::String(offset)) = auth.get("offset") {
            check_recovery_offset(offset);
        }
    }
}

/// `parse_recovery_offset` on client text: no panic, and what it accepts re-encodes with
/// `recovery_offset` to text that parses to the same `(room, epoch, offset)`.
fn check_recovery_offset(text: &str) {
    if let Some((room, epoch, offset)) = socketio::parse_recovery_offset(text) {
        assert!(!room.is_empty() && !epoch.is_empty() && !epoch.contains(':'));
        let again = socketio::recovery_offset(room, epoch, offset);
        assert_eq!(
            socketio::parse_recovery_offset(&again),
            Some((room, epoch, offset))
        );
    }
}

/// Socket.IO binary packets: the input is a text packet (with its Engine.IO `4`), then the
/// binary attachments, separated by `0xFF` bytes (never part of UTF-8 text). Replays what the
/// gateway does: decode, collect the announced attachments, `fill_placeholders`.
///
/// - no panic;
/// - after a successful fill no placeholder is left;
/// - memory: the filled payload grows by at most the attachment bytes received (each
///   attachment becomes one `$bin` wrapper, 4/3 of its bytes in text), so a packet cannot
///   multiply its attachments;
/// - round trip: `extract_binary` gives the attachments back, and filling them again gives the
///   same payload (what a Socket.IO recipient gets is what was sent).
pub fn socketio_binary(bytes: &[u8]) {
    let mut parts = bytes.split(|b| *b == 0xFF);
    let Some(Ok(text)) = parts.next().map(std::str::from_utf8) else {
        return;
    };
    let Ok(EnginePacket::Message(m)) = socketio::decode_engine(text) else {
        return;
    };
    let Ok(mut packet) = socketio::decode(m) else {
        return;
    };
    if packet.attachments == 0 {
        check_packet(&packet);
        return;
    }
    let attachments: Vec<Vec<u8>> = parts.take(packet.attachments).map(<[u8]>::to_vec).collect();
    if attachments.len() < packet.attachments {
        return;
    }
    let received: usize = attachments.iter().map(Vec::len).sum();
    let Some(payload) = packet.payload.as_mut() else {
        return;
    };
    let before = node_count(payload);
    if socketio::fill_placeholders(payload, &attachments).is_err() {
        return;
    }
    let after = node_count(payload);
    assert!(
        after <= before + received,
        "fill_placeholders grew {before} nodes to {after} from {received} attachment bytes"
    );
    assert!(!has_placeholder(payload), "a placeholder survived the fill");
    let filled = payload.clone();
    let mut again = filled.clone();
    let extracted = socketio::extract_binary(&mut again);
    let extracted_bytes: usize = extracted.iter().map(Vec::len).sum();
    assert!(
        extracted_bytes <= received,
        "extracted more bytes than received"
    );
    socketio::fill_placeholders(&mut again, &extracted).expect("our own placeholders fill");
    assert_eq!(again, filled, "placeholders do not round-trip");
    gateway_request(&packet);
}

/// The inter-node envelope (`Envelope::decode`, MessagePack from another node).
///
/// - no panic, no stack overflow, on any bytes;
/// - round trip: `decode(encode(e)) == e` exactly (the payload travels as text);
/// - a decoded message's `data` obeys the same limits as a client's (valid JSON, at most
///   `MAX_DEPTH` deep), since a corrupted channel can send anything.
pub fn envelope(bytes: &[u8]) {
    let Ok(env) = Envelope::decode(bytes) else {
        return;
    };
    let _ = env.room();
    if let Envelope::Message(p) = &env {
        check_data(&p.data);
    }
    let again = env.encode().expect("a decoded envelope encodes");
    assert_eq!(Envelope::decode(&again).expect("re-decodes"), env);
}

/// `@socket.io/redis-emitter` messages from Redis (`emitter::decode_broadcast` and
/// `emitter::decode_request`, on any bytes: a broadcast channel may carry anything).
///
/// - no panic, no stack overflow, on any bytes, for either decoder;
/// - a decoded broadcast's arguments obey the client `data` limits, never name a reserved
///   event, and its Socket.IO packet carries exactly its byte strings as attachments, which
///   fill back to the same arguments;
/// - round trip: the broadcast packed again (byte strings as `bin`) decodes to the same one.
pub fn emitter(bytes: &[u8]) {
    let _ = emitter::decode_request(bytes);
    let Ok(b) = emitter::decode_broadcast(bytes) else {
        return;
    };
    assert!(!socketio::RESERVED_EVENTS.contains(&b.event.as_str()));
    let args = Value::Array(b.args.clone());
    let d = Data::from_value(&args).expect("decoded arguments are valid data");
    check_data(&d);
    let encoded = emitter::encode_socketio(&b);
    let mut parts = socketio::messages(&encoded);
    let (is_text, text) = parts.next().expect("a packet");
    assert!(is_text);
    let attachments: Vec<Vec<u8>> = parts.map(|(_, a)| a.to_vec()).collect();
    assert_eq!(
        attachments,
        bin_wrappers(&args),
        "attachments are the byte strings"
    );
    let text = std::str::from_utf8(text).expect("UTF-8 packet");
    // Queued as an Engine.IO message: `4`, then the Socket.IO packet.
    let text = text.strip_prefix('4').expect("an Engine.IO message");
    let p = socketio::decode(text).expect("the packet decodes");
    let mut payload = p.payload.clone().expect("a payload");
    socketio::fill_placeholders(&mut payload, &attachments).expect("fills back");
    let mut all = vec![Value::String(b.event.clone())];
    all.extend(b.args.iter().cloned());
    assert!(
        values_equivalent(&payload, &Value::Array(all)),
        "Socket.IO packet differs"
    );
    let mut packet = Map::new();
    packet.insert("type".into(), Value::from(2));
    packet.insert("data".into(), payload);
    packet.insert("nsp".into(), Value::String(b.namespace.clone()));
    let mut opts = Map::new();
    opts.insert(
        "rooms".into(),
        b.rooms.iter().map(|r| Value::String(r.clone())).collect(),
    );
    opts.insert(
        "except".into(),
        b.except.iter().map(|r| Value::String(r.clone())).collect(),
    );
    let message = Value::Array(vec![
        Value::String(b.uid.clone()),
        Value::Object(packet),
        Value::Object(opts),
    ]);
    // Fill placeholders made wrappers again; pack them as `bin` through `Data`.
    let again =
        rmp_serde::to_vec_named(&Data::from_value(&message).expect("valid")).expect("packs");
    let back = emitter::decode_broadcast(&again).expect("re-decodes");
    assert_eq!(back.event, b.event);
    assert_eq!(back.rooms, b.rooms);
    assert_eq!(back.except, b.except);
    assert_eq!(back.namespace, b.namespace);
    assert!(
        values_equivalent(&Value::Array(back.args), &args),
        "round trip"
    );
}

/// Room names (`room_name::is_valid`) and token room patterns (`room_name::pattern_matches`).
/// The input is `pattern`, a NUL byte, then `name` (or only `name`).
///
/// - `is_valid` is exactly the documented grammar: 1 to 128 characters of `[A-Za-z0-9_.:-]`;
/// - a request naming the room is accepted exactly when the name is valid, in both formats;
/// - a pattern without a trailing `*` matches only itself; with one, exactly the names that
///   start with the prefix; `*` matches everything.
pub fn room_name(bytes: &[u8]) {
    let (pattern, name) = match bytes.iter().position(|b| *b == 0) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (&b""[..], bytes),
    };
    let (Ok(pattern), Ok(name)) = (std::str::from_utf8(pattern), std::str::from_utf8(name)) else {
        return;
    };
    let grammar = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    let valid = room_name::is_valid(name);
    assert_eq!(valid, grammar, "is_valid({name:?})");
    let request = serde_json::json!({"id": 1, "op": "join", "room": name});
    let json = serde_json::to_vec(&request).expect("prints");
    let packed = rmp_serde::to_vec_named(&request).expect("packs");
    for (bytes, format) in [(json, Format::Json), (packed, Format::MsgPack)] {
        let r = decode_request(&bytes, format);
        assert_eq!(r.is_ok(), valid, "{format:?} join of {name:?}: {r:?}");
        if let Ok(r) = r {
            assert_eq!(r.op.room(), Some(name));
        }
    }
    assert!(room_name::pattern_matches("*", name));
    assert!(room_name::pattern_matches(name, name));
    let expected = match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    };
    assert_eq!(room_name::pattern_matches(pattern, name), expected);
}

/// The payload type (`Data`): `from_json_text` on any text (history, envelopes) and
/// `from_value` on any parsed value (client requests).
///
/// - no panic, no stack overflow, on any text;
/// - accepted data is valid JSON at most `MAX_DEPTH` deep, serializes verbatim as JSON and
///   round-trips through MessagePack;
/// - `from_value` accepts exactly the values at most `MAX_DEPTH` deep, and keeps them.
pub fn data(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(d) = Data::from_json_text(text.to_string()) {
        // Verbatim, but for the whitespace around the value.
        let trimmed = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
        assert_eq!(d.as_json(), trimmed, "from_json_text keeps the text");
        check_data(&d);
    }
    if let Ok(value) = protocol::value::from_str(text) {
        match Data::from_value(&value) {
            Ok(d) => {
                assert!(data::depth(&value) <= MAX_DEPTH);
                assert!(
                    values_equivalent(&d.to_value(), &value),
                    "from_value changed the value"
                );
                check_data(&d);
            }
            Err(data::DataError::TooDeep) => assert!(data::depth(&value) > MAX_DEPTH),
            Err(data::DataError::Binary) => {
                assert!(has_bin_key(&value), "refused as binary without `$bin`")
            }
            Err(data::DataError::Invalid) => panic!("a parsed value was invalid"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared checks.

/// What every accepted request must satisfy, and its round trip through both formats.
fn check_request(request: &Request) {
    if let Some(room) = request.op.room() {
        assert!(room_name::is_valid(room), "accepted room {room:?}");
    }
    if let Op::Publish { data, .. } = &request.op {
        check_data(data);
    }
    let value = request_to_value(request);
    let json = serde_json::to_vec(&value).expect("prints");
    let again = decode_request(&json, Format::Json).expect("re-encoded JSON request decodes");
    assert_requests_equivalent(request, &again);
    let packed = rmp_serde::to_vec_named(&value).expect("packs");
    let again =
        decode_request(&packed, Format::MsgPack).expect("re-encoded MessagePack request decodes");
    assert_requests_equivalent(request, &again);
}

/// What every `Data` must satisfy, wherever it came from.
fn check_data(d: &Data) {
    // Every encoder (MessagePack, Socket.IO) parses the text: it must parse.
    let value: Value = match protocol::value::from_str(d.as_json()) {
        Ok(v) => v,
        Err(e) => panic!("Data holds text that does not parse: {e}"),
    };
    assert!(
        data::depth(&value) <= MAX_DEPTH,
        "Data nested {} deep",
        data::depth(&value)
    );
    assert!(values_equivalent(&d.to_value(), &value), "to_value differs");
    let json = serde_json::to_string(d).expect("Data prints");
    assert_eq!(json, d.as_json(), "Data prints verbatim");
    let packed = rmp_serde::to_vec_named(d).expect("Data packs");
    let Plain(back) = rmp_serde::from_slice(&packed).expect("packed Data unpacks");
    assert!(
        values_equivalent(&back, &value),
        "Data changed through MessagePack"
    );
    // Byte strings: MessagePack has them as `bin` (never as the wrapper map), Socket.IO as
    // attachments that fill back to the same value, and the size counts their bytes.
    let wrappers = bin_wrappers(&value);
    assert_eq!(d.has_binary(), !wrappers.is_empty(), "has_binary");
    let bin_bytes: usize = wrappers.iter().map(Vec::len).sum();
    assert!(d.size() <= d.as_json().len(), "size over the text length");
    if wrappers.is_empty() {
        assert_eq!(d.size(), d.as_json().len());
    } else {
        assert!(d.size() >= bin_bytes, "size under the bytes");
    }
    let BinCount(bins) = rmp_serde::from_slice(&packed).expect("packed Data unpacks");
    assert_eq!(bins, wrappers.len(), "byte strings are MessagePack `bin`");
    let mut sio = value.clone();
    let attachments = socketio::extract_binary(&mut sio);
    assert_eq!(
        attachments, wrappers,
        "attachments are the byte strings, in order"
    );
    socketio::fill_placeholders(&mut sio, &attachments).expect("fills back");
    assert!(
        values_equivalent(&sio, &value),
        "Data changed through Socket.IO"
    );
    // A message to Socket.IO clients: the direct encoding (`encode_event`) is the general
    // one's JSON, sequenced and ephemeral alike.
    for (offset, epoch) in [(7, "e1"), (0, "")] {
        let p = protocol::Publication {
            room: "chat:1".into(),
            offset,
            epoch: epoch.into(),
            from: "u\"1".into(),
            data: d.clone(),
            ts: 1_700_000_000_000,
        };
        let event = protocol::Event::Message(&p);
        let general = encode(&event, Format::SocketIo).expect("a message encodes");
        let direct = encode_event(&event, Format::SocketIo).expect("a message encodes");
        assert_eq!(
            general.first() == Some(&socketio::BUNDLE),
            direct.first() == Some(&socketio::BUNDLE),
            "both bundle, or neither"
        );
        if general.first() != Some(&socketio::BUNDLE) {
            let parse = |b: &[u8]| -> Value {
                let text = std::str::from_utf8(b).expect("text").strip_prefix("42");
                protocol::value::from_str(text.expect("an EVENT")).expect("parses")
            };
            assert!(
                values_equivalent(&parse(&general), &parse(&direct)),
                "the direct Socket.IO message differs"
            );
        }
    }
}

/// The byte strings of a value, in document order.
fn bin_wrappers(v: &Value) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        if let Some(bytes) = data::as_binary(v) {
            out.push(bytes);
            continue;
        }
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(map) => stack.extend(map.values().rev()),
            _ => {}
        }
    }
    out
}

/// Whether any object in a value has the `$bin` key.
fn has_bin_key(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.contains_key(data::BIN_KEY) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

/// What every accepted Socket.IO packet must satisfy, and its round trips.
fn check_packet(p: &Packet) {
    assert!(p.namespace.starts_with('/') && !p.namespace.contains(','));
    assert!(p.attachments <= MAX_ATTACHMENTS);
    let binary = matches!(p.kind, Kind::BinaryEvent | Kind::BinaryAck);
    if !binary {
        assert_eq!(p.attachments, 0);
    }
    if matches!(p.kind, Kind::Event | Kind::BinaryEvent) {
        let name = p
            .payload
            .as_ref()
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        assert!(
            matches!(name, Some(Value::String(_) | Value::Number(_))),
            "event without a name: {:?}",
            p.payload
        );
        if let Some((name, _)) = p.event() {
            assert!(!socketio::RESERVED_EVENTS.contains(&name));
        }
    }

    let again = socketio::decode(&encode_packet(p)).expect("re-encoded packet decodes");
    assert_packets_equivalent(p, &again);

    // The server's encoders produce packets the decoder reads back (Engine.IO `4` included).
    let server = match (p.kind, p.event(), &p.payload) {
        (Kind::Event, Some((name, [arg])), _) => Some(socketio::event(&p.namespace, name, arg)),
        (Kind::Ack, _, Some(args)) => Some(socketio::ack(&p.namespace, p.ack.unwrap_or(0), args)),
        (Kind::Disconnect, _, _) => Some(socketio::disconnect(&p.namespace)),
        (Kind::BinaryEvent | Kind::BinaryAck, _, Some(payload)) => Some(socketio::binary(
            p.kind == Kind::BinaryAck,
            &p.namespace,
            p.ack,
            p.attachments,
            payload,
        )),
        (Kind::ConnectError, _, Some(Value::Object(o))) => match o.get("message") {
            Some(Value::String(m)) => Some(socketio::connect_error(
                &p.namespace,
                m,
                o.get("data").cloned(),
            )),
            _ => None,
        },
        _ => None,
    };
    if let Some(text) = server {
        let Ok(EnginePacket::Message(m)) = socketio::decode_engine(&text) else {
            panic!("server packet {text:?} is not an Engine.IO message");
        };
        let back = socketio::decode(m).expect("server packet decodes");
        assert_eq!(back.namespace, p.namespace);
        assert_eq!(back.kind, p.kind);
        if matches!(p.kind, Kind::BinaryEvent | Kind::BinaryAck) {
            assert_packets_equivalent(p, &back);
        }
    }

    gateway_request(p);
}

/// The gateway's mapping of an EVENT onto a native request (socketio/connection.rs): the
/// object argument plus `op` and `id`, through `request_from_value`.
fn gateway_request(p: &Packet) {
    let Some((name, args)) = p.event() else {
        return;
    };
    let mut request = match args.first() {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        None => Value::Object(Map::new()),
        Some(_) => return,
    };
    if let Some(obj) = request.as_object_mut() {
        obj.insert("op".into(), Value::from(name));
        obj.insert("id".into(), Value::from(p.ack.unwrap_or(0)));
    }
    if let Ok(r) = request_from_value(request) {
        check_request(&r);
    }
}

// ---------------------------------------------------------------------------------------------
// Encoders the crate does not have (clients encode requests), and comparisons.

/// A request as the canonical wire object.
fn request_to_value(r: &Request) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), Value::from(r.id));
    m.insert("op".into(), Value::from(r.op.name()));
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match &r.op {
        Op::CreateRoom { room, options } => {
            if let Some(room) = room {
                put("room", Value::from(room.as_str()));
            }
            put(
                "options",
                serde_json::to_value(options).expect("options print"),
            );
        }
        Op::Join { room, since } => {
            put("room", Value::from(room.as_str()));
            if let Some(since) = since {
                put("since", serde_json::to_value(since).expect("since prints"));
            }
        }
        Op::Leave { room } | Op::Presence { room } => put("room", Value::from(room.as_str())),
        Op::Publish { room, data, msg_id } => {
            put("room", Value::from(room.as_str()));
            put("data", data.to_value());
            if let Some(key) = msg_id {
                put("msgId", Value::from(key.as_str()));
            }
        }
        Op::History {
            room,
            limit,
            before,
        } => {
            put("room", Value::from(room.as_str()));
            if let Some(limit) = limit {
                put("limit", Value::from(*limit));
            }
            if let Some(before) = before {
                put("before", Value::from(*before));
            }
        }
        Op::Ping => {}
        Op::Refresh { token } => put("token", Value::from(token.as_str())),
    }
    Value::Object(m)
}

fn assert_requests_equivalent(a: &Request, b: &Request) {
    assert!(
        values_equivalent(&request_to_value(a), &request_to_value(b)),
        "requests differ: {a:?} vs {b:?}"
    );
}

/// A Socket.IO packet as text, in the grammar the decoder reads.
fn encode_packet(p: &Packet) -> String {
    let kind = match p.kind {
        Kind::Connect => '0',
        Kind::Disconnect => '1',
        Kind::Event => '2',
        Kind::Ack => '3',
        Kind::ConnectError => '4',
        Kind::BinaryEvent => '5',
        Kind::BinaryAck => '6',
    };
    let mut s = String::from(kind);
    if matches!(p.kind, Kind::BinaryEvent | Kind::BinaryAck) {
        s.push_str(&format!("{}-", p.attachments));
    }
    if p.namespace != "/" {
        s.push_str(&p.namespace);
        s.push(',');
    }
    if let Some(ack) = p.ack {
        s.push_str(&ack.to_string());
    }
    if let Some(payload) = &p.payload {
        s.push_str(&payload.to_string());
    }
    s
}

fn assert_packets_equivalent(a: &Packet, b: &Packet) {
    let same_payload = match (&a.payload, &b.payload) {
        (None, None) => true,
        (Some(x), Some(y)) => values_equivalent(x, y),
        _ => false,
    };
    assert!(
        a.kind == b.kind
            && a.namespace == b.namespace
            && a.ack == b.ack
            && a.attachments == b.attachments
            && same_payload,
        "packets differ: {a:?} vs {b:?}"
    );
}

/// Equal values, floats within a few ULPs. Iterative: values can be deep.
pub fn values_equivalent(a: &Value, b: &Value) -> bool {
    let mut stack = vec![(a, b)];
    while let Some((a, b)) = stack.pop() {
        match (a, b) {
            (Value::Array(x), Value::Array(y)) => {
                if x.len() != y.len() {
                    return false;
                }
                stack.extend(x.iter().zip(y));
            }
            (Value::Object(x), Value::Object(y)) => {
                if x.len() != y.len() {
                    return false;
                }
                for (k, v) in x {
                    let Some(w) = y.get(k) else {
                        return false;
                    };
                    stack.push((v, w));
                }
            }
            (Value::Number(x), Value::Number(y)) => {
                if x == y {
                    continue;
                }
                let (Some(x), Some(y)) = (x.as_f64(), y.as_f64()) else {
                    return false;
                };
                if !x.is_finite() || !y.is_finite() || !floats_close(x, y) {
                    return false;
                }
            }
            (x, y) => {
                if x != y {
                    return false;
                }
            }
        }
    }
    true
}

fn floats_close(x: f64, y: f64) -> bool {
    x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
}

/// Values in a tree (each scalar, array and object counts one). Iterative.
fn node_count(v: &Value) -> usize {
    let mut n = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        n += 1;
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    n
}

fn has_placeholder(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                if map.get("_placeholder") == Some(&Value::Bool(true)) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

/// The number of MessagePack `bin` values in a tree (recursive: only used on `Data`, which is
/// at most `MAX_DEPTH` deep).
struct BinCount(usize);

impl<'de> serde::Deserialize<'de> for BinCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BinCount, D::Error> {
        d.deserialize_any(BinCountVisitor)
    }
}

struct BinCountVisitor;

impl<'de> serde::de::Visitor<'de> for BinCountVisitor {
    type Value = BinCount;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any value")
    }

    fn visit_bytes<E>(self, _: &[u8]) -> Result<BinCount, E> {
        Ok(BinCount(1))
    }

    fn visit_bool<E>(self, _: bool) -> Result<BinCount, E> {
        Ok(BinCount(0))
    }

    fn visit_i64<E>(self, _: i64) -> Result<BinCount, E> {
        Ok(BinCount(0))
    }

    fn visit_u64<E>(self, _: u64) -> Result<BinCount, E> {
        Ok(BinCount(0))
    }

    fn visit_f64<E>(self, _: f64) -> Result<BinCount, E> {
        Ok(BinCount(0))
    }

    fn visit_str<E>(self, _: &str) -> Result<BinCount, E> {
        Ok(BinCount(0))
    }

    fn visit_unit<E>(self) -> Result<BinCount, E> {
        Ok(BinCount(0))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<BinCount, A::Error> {
        let mut n = 0;
        while let Some(BinCount(k)) = seq.next_element()? {
            n += k;
        }
        Ok(BinCount(n))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<BinCount, A::Error> {
        let mut n = 0;
        while let Some((BinCount(a), BinCount(b))) = map.next_entry()? {
            n += a + b;
        }
        Ok(BinCount(n))
    }
}
