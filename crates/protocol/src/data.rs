//! The application payload of a publication: any JSON value or byte string, kept as JSON text
//! in which a byte string is the wrapper `{"$bin":"<standard base64>"}`.
//!
//! Why text: a message is stored once (history), sent between nodes once, and encoded once per
//! client format per broadcast. JSON text passes through all of that without re-parsing for
//! JSON clients; MessagePack clients get it transcoded once per broadcast.
//!
//! Why the wrapper, and not MessagePack as the canonical form: the wrapper is what JSON clients
//! see and send (they have no bytes), so the JSON encoding stays a copy of the stored text, and
//! history, the inter-node envelope and the Redis publish script (which packs `data` as a Lua
//! string) carry binary with no change to their format. The encoders that have bytes turn it
//! back: MessagePack into `bin` ([`Data`]'s `Serialize`), Socket.IO into placeholders and
//! attachments (`crate::socketio::extract_binary`). The cost is base64 (4/3) in storage and
//! between nodes, paid only by payloads that carry bytes.
//!
//! The wrapper is reserved in every format: an object with a `$bin` key must have no other key
//! and a string of standard, padded base64 as its value, or the payload is refused
//! ([`DataError::Binary`]). So ordinary user data cannot be mistaken for bytes, and the rule is
//! checked on every path that takes data in (clients, other nodes, Redis).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{DeserializeSeed, IgnoredAny};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::Arc;

/// Payloads nested deeper than this are refused (`bad_request`). The bound keeps every decoder
/// and encoder on the path (serde_json's own limit is 128) far from stack exhaustion. A byte
/// string counts as one level (its wrapper object).
pub const MAX_DEPTH: usize = 64;

/// The one key of the object that stands for a byte string.
pub const BIN_KEY: &str = "$bin";

/// Any JSON value (byte strings as the `$bin` wrapper), held as validated JSON text and cheap
/// to clone.
#[derive(Clone)]
pub struct Data(Arc<Inner>);

struct Inner {
    raw: Box<RawValue>,
    /// The size counted against `--max-data-bytes`: see [`Data::size`].
    size: usize,
    /// Whether any byte string is inside: the encoders that have bytes take the slow path
    /// only then.
    binary: bool,
    /// How many byte strings are inside (see [`MAX_BYTE_STRINGS`]).
    byte_strings: usize,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.raw.get())
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.0.raw.get() == other.0.raw.get()
    }
}

/// The most byte strings one published message may hold: what one Socket.IO packet may carry
/// as attachments (the stock client's decoder refuses more, and closes the connection), so
/// that a message from any client can reach every Socket.IO member as one event.
pub const MAX_BYTE_STRINGS: usize = crate::socketio::MAX_ATTACHMENTS;

/// Why a payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataError {
    #[error("data is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("data is not valid JSON")]
    Invalid,
    #[error("`$bin` is reserved for binary: an object with only that key, holding standard padded base64")]
    Binary,
}

impl Data {
    /// Wraps a decoded value, checking its depth and its byte strings.
    pub fn from_value(value: &Value) -> Result<Data, DataError> {
        if depth(value) > MAX_DEPTH {
            return Err(DataError::TooDeep);
        }
        let text = serde_json::to_string(value).map_err(|_| DataError::Invalid)?;
        Data::from_json_text(text)
    }

    /// Wraps JSON text from a store (history) or another node, checking it like a client's
    /// payload: valid JSON, at most [`MAX_DEPTH`] deep, `$bin` only as a byte string. The
    /// validation does not build a value.
    pub fn from_json_text(text: String) -> Result<Data, DataError> {
        let raw = RawValue::from_string(text).map_err(|_| DataError::Invalid)?;
        // serde_json validates raw values without a depth limit, accepts numbers out of f64
        // range (`1e400`) and lone surrogates (`"\ud800"`), all of which its parser refuses.
        // Refuse them here, so that text from a corrupted channel cannot reach the encoders
        // that parse it (MessagePack clients would get `null`, Socket.IO an encode error).
        if !text_depth_within(raw.get(), MAX_DEPTH) {
            return Err(DataError::TooDeep);
        }
        let mut stats = Stats::default();
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let checked = Check(&mut stats).deserialize(&mut de);
        if stats.bad_binary {
            return Err(DataError::Binary);
        }
        checked.map_err(|_| DataError::Invalid)?;
        let size = raw
            .get()
            .len()
            .saturating_sub(stats.wrapper_chars)
            .saturating_add(stats.binary_bytes);
        Ok(Data(Arc::new(Inner {
            raw,
            size,
            binary: stats.binaries > 0,
            byte_strings: stats.binaries,
        })))
    }

    /// The JSON text, byte strings as `{"$bin":"<base64>"}`.
    pub fn as_json(&self) -> &str {
        self.0.raw.get()
    }

    /// The size counted against `--max-data-bytes`: the JSON text's length, with each byte
    /// string counted as its bytes rather than as its base64 wrapper. So a client's limit is
    /// the same whatever the format it sends bytes in.
    pub fn size(&self) -> usize {
        self.0.size
    }

    /// How many byte strings the payload holds. A publish may carry at most
    /// [`MAX_BYTE_STRINGS`].
    pub fn byte_strings(&self) -> usize {
        self.0.byte_strings
    }

    /// Whether the payload holds at least one byte string.
    pub fn has_binary(&self) -> bool {
        self.0.binary
    }

    /// The payload as a parsed value, byte strings as their wrappers (used for MessagePack
    /// clients and tests).
    pub fn to_value(&self) -> Value {
        crate::value::from_str(self.0.raw.get()).unwrap_or(Value::Null)
    }
}

/// The bytes of a `{"$bin":"<base64>"}` wrapper, if `value` is one with valid base64.
pub fn as_binary(value: &Value) -> Option<Vec<u8>> {
    let Value::Object(map) = value else {
        return None;
    };
    if map.len() != 1 {
        return None;
    }
    let Value::String(b64) = map.get(BIN_KEY)? else {
        return None;
    };
    STANDARD.decode(b64).ok()
}

/// Whether `value` has the shape of a byte string's wrapper (`{"$bin": "<text>"}`), without
/// decoding it. Data that reached a reply was checked on the way in.
pub fn is_binary_wrapper(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.len() == 1 && matches!(map.get(BIN_KEY), Some(Value::String(_))))
}

/// The wrapper for a byte string.
pub fn binary_value(bytes: &[u8]) -> Value {
    let mut map = serde_json::Map::new();
    map.insert(BIN_KEY.to_string(), Value::String(STANDARD.encode(bytes)));
    Value::Object(map)
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_json is human-readable and emits the raw text verbatim. rmp-serde is not, and
        // needs a real value tree to produce native MessagePack maps, arrays and `bin`.
        if serializer.is_human_readable() {
            self.0.raw.serialize(serializer)
        } else if self.0.binary {
            WithBytes(&self.to_value()).serialize(serializer)
        } else {
            self.to_value().serialize(serializer)
        }
    }
}

/// A value serialized with its `$bin` wrappers as byte strings (MessagePack `bin`). Recursive,
/// but only over values that passed the depth check ([`MAX_DEPTH`]).
struct WithBytes<'a>(&'a Value);

impl Serialize for WithBytes<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&WithBytes(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                if let Some(bytes) = as_binary(self.0) {
                    return serializer.serialize_bytes(&bytes);
                }
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(k, &WithBytes(v))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Data, D::Error> {
        let crate::value::Plain(value) = crate::value::Plain::deserialize(deserializer)?;
        Data::from_value(&value).map_err(serde::de::Error::custom)
    }
}

/// What the validation learnt about byte strings.
#[derive(Default)]
struct Stats {
    binaries: usize,
    /// Decoded bytes of every byte string.
    binary_bytes: usize,
    /// Characters of the wrappers' JSON text, as written compactly.
    wrapper_chars: usize,
    /// Set when a `$bin` key broke the wrapper rule (the error itself is a serde one).
    bad_binary: bool,
}

/// Any JSON value, parsed as strictly as into a [`Value`] but without building it, checking
/// the `$bin` rule on the way. Only used on text already known to nest at most [`MAX_DEPTH`]
/// deep, so its recursion is bounded.
struct Check<'s>(&'s mut Stats);

impl<'de> DeserializeSeed<'de> for Check<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Check<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Check(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let mut first = true;
        while let Some(IsBinKey(is_bin)) = map.next_key()? {
            if !is_bin {
                map.next_value_seed(Check(&mut *self.0))?;
                first = false;
                continue;
            }
            // `$bin`: the first and only key, its value base64.
            let b64: Option<String> = if first { map.next_value().ok() } else { None };
            let bytes = b64.as_deref().and_then(|s| STANDARD.decode(s).ok());
            let (Some(b64), Some(bytes)) = (b64, bytes) else {
                self.0.bad_binary = true;
                return Err(A::Error::custom("bad $bin"));
            };
            if map.next_key::<IgnoredAny>()?.is_some() {
                self.0.bad_binary = true;
                return Err(A::Error::custom("bad $bin"));
            }
            self.0.binaries += 1;
            self.0.binary_bytes += bytes.len();
            // `{"$bin":""}` is 11 characters around the base64.
            self.0.wrapper_chars += b64.len() + 11;
            return Ok(());
        }
        Ok(())
    }
}

/// Whether a map key is `$bin`, read without allocating.
struct IsBinKey(bool);

impl<'de> Deserialize<'de> for IsBinKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IsBinKey, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IsBinKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E>(self, v: &str) -> Result<IsBinKey, E> {
                Ok(IsBinKey(v == BIN_KEY))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// Whether valid JSON text nests at most `max` deep (counted as [`depth`] does), by counting
/// brackets outside strings: one pass, no allocation.
fn text_depth_within(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for b in text.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Nesting depth of a value: scalars are 0, `[]` is 1, `[[1]]` is 2.
pub fn depth(value: &Value) -> usize {
    // Iterative, so that the check itself cannot overflow the stack.
    let mut max = 0;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                stack.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!([])), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": 2}]})), 3);
    }

    #[test]
    fn too_deep_is_refused() {
        let mut v = json!(1);
        for _ in 0..=MAX_DEPTH {
            v = json!([v]);
        }
        assert_eq!(Data::from_value(&v), Err(DataError::TooDeep));
    }

    #[test]
    fn too_deep_text_is_refused() {
        // Found by the `data` fuzz target (fuzz/regressions/data/): RawValue validation has no
        // depth limit, so text from history or another node could exceed MAX_DEPTH.
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(Data::from_json_text(nested(MAX_DEPTH)).is_ok());
        assert_eq!(
            Data::from_json_text(nested(MAX_DEPTH + 1)),
            Err(DataError::TooDeep)
        );
        assert_eq!(
            Data::from_json_text(nested(100_000)),
            Err(DataError::TooDeep)
        );
        // Brackets inside strings, escaped quotes included, do not count.
        let text = format!(
            r#"{{"a":"{}\"{}","b":[1]}}"#,
            "[".repeat(200),
            "{".repeat(200)
        );
        assert_eq!(
            Data::from_json_text(text).map(|d| depth(&d.to_value())),
            Ok(2)
        );
    }

    #[test]
    fn text_the_encoders_cannot_parse_is_refused() {
        // Found with the `data` fuzz target's property (fuzz/regressions/data/): accepted, they
        // became `null` for MessagePack clients and an encode error for Socket.IO ones.
        for bad in [
            r#"[1e400]"#,
            "-1e999",
            r#"{"a":["\ud800"]}"#,
            r#""\udc00x""#,
        ] {
            assert_eq!(
                Data::from_json_text(bad.into()),
                Err(DataError::Invalid),
                "{bad}"
            );
        }
        for good in [
            r#""\ud83d\ude00""#,
            "1e300",
            "-0.0",
            "18446744073709551616",
            " [1] ",
        ] {
            let d = Data::from_json_text(good.into()).expect(good);
            assert_ne!(d.to_value(), serde_json::Value::Null, "{good}");
        }
    }

    #[test]
    fn serializes_verbatim_in_json_and_natively_in_msgpack() {
        let d = Data::from_value(&json!({"text": "hi", "n": [1, 2]})).expect("valid");
        assert_eq!(
            serde_json::to_string(&d).expect("json"),
            r#"{"text":"hi","n":[1,2]}"#
        );
        let bytes = rmp_serde::to_vec_named(&d).expect("msgpack");
        let back: serde_json::Value = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, json!({"text": "hi", "n": [1, 2]}));
    }

    #[test]
    fn binary_wrappers_are_checked_and_counted() {
        let d = Data::from_json_text(r#"{"file":{"$bin":"AAEC/w=="},"name":"a.png"}"#.into())
            .expect("binary");
        assert!(d.has_binary());
        // 33 characters of text, of which the 19-character wrapper is 4 bytes.
        assert_eq!(d.size(), d.as_json().len() - 19 + 4);
        let plain = Data::from_value(&json!({"bin": "AAEC", "$binary": 1})).expect("plain");
        assert!(!plain.has_binary());
        assert_eq!(plain.size(), plain.as_json().len());
        for bad in [
            r#"{"$bin":"not base64!"}"#,
            r#"{"$bin":"AAE"}"#,
            r#"{"$bin":1}"#,
            r#"{"$bin":{"$bin":"AA=="}}"#,
            r#"{"$bin":"AA==","name":"x"}"#,
            r#"{"name":"x","$bin":"AA=="}"#,
            r#"[{"$bin":"AA==","$bin":"AA=="}]"#,
        ] {
            assert_eq!(
                Data::from_json_text(bad.into()),
                Err(DataError::Binary),
                "{bad}"
            );
        }
        assert_eq!(
            Data::from_value(&json!({"$bin": "x", "y": 1})),
            Err(DataError::Binary)
        );
        assert!(Data::from_value(&json!({"$bin": ""}))
            .expect("empty")
            .has_binary());
    }

    #[test]
    fn binary_is_msgpack_bin() {
        let d = Data::from_value(&json!([{"$bin": "AAEC/w=="}, {"n": {"$bin": "aGk="}}, 3]))
            .expect("binary");
        let bytes = rmp_serde::to_vec_named(&d).expect("msgpack");
        // fixarray(3), bin8(4) 00 01 02 ff, fixmap(1) "n" bin8(2) "hi", 3
        assert_eq!(
            bytes,
            [0x93, 0xc4, 4, 0, 1, 2, 0xff, 0x81, 0xa1, b'n', 0xc4, 2, b'h', b'i', 3]
        );
        let crate::value::Plain(back) = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(Data::from_value(&back).expect("again"), d);
        assert_eq!(
            as_binary(&json!({"$bin": "aGk="})).as_deref(),
            Some(&b"hi"[..])
        );
        assert_eq!(binary_value(b"hi"), json!({"$bin": "aGk="}));
    }
}
