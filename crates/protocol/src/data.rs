//! The application payload of a publication: any JSON value, kept as JSON text.
//!
//! Why text: a message is stored once (history), sent between nodes once, and encoded once per
//! client format per broadcast. JSON text passes through all of that without re-parsing for
//! JSON clients; MessagePack clients get it transcoded once per broadcast.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Payloads nested deeper than this are refused (`bad_request`). The bound keeps every decoder
/// and encoder on the path (serde_json's own limit is 128) far from stack exhaustion.
pub const MAX_DEPTH: usize = 64;

/// Any JSON value, held as validated JSON text and cheap to clone.
#[derive(Clone)]
pub struct Data(Arc<RawValue>);

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.get())
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DataError {
    #[error("data is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("data is not valid JSON")]
    Invalid,
}

impl Data {
    /// Wraps a decoded value, checking its depth.
    pub fn from_value(value: &serde_json::Value) -> Result<Data, DataError> {
        if depth(value) > MAX_DEPTH {
            return Err(DataError::TooDeep);
        }
        let text = serde_json::to_string(value).map_err(|_| DataError::Invalid)?;
        Data::from_json_text(text)
    }

    /// Wraps JSON text from a store (history) or another node, checking it like a client's
    /// payload: valid JSON, at most [`MAX_DEPTH`] deep. The validation does not build a value.
    pub fn from_json_text(text: String) -> Result<Data, DataError> {
        let raw = RawValue::from_string(text).map_err(|_| DataError::Invalid)?;
        // serde_json validates raw values without a depth limit, accepts numbers out of f64
        // range (`1e400`) and lone surrogates (`"\ud800"`), all of which its parser refuses.
        // Refuse them here, so that text from a corrupted channel cannot reach the encoders
        // that parse it (MessagePack clients would get `null`, Socket.IO an encode error).
        if !text_depth_within(raw.get(), MAX_DEPTH) {
            return Err(DataError::TooDeep);
        }
        serde_json::from_str::<Strict>(raw.get()).map_err(|_| DataError::Invalid)?;
        Ok(Data(Arc::from(raw)))
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The payload as a parsed value (used for MessagePack clients and tests).
    pub fn to_value(&self) -> serde_json::Value {
        crate::value::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // serde_json is human-readable and emits the raw text verbatim. rmp-serde is not, and
        // needs a real value tree to produce native MessagePack maps and arrays.
        if serializer.is_human_readable() {
            self.0.serialize(serializer)
        } else {
            self.to_value().serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Data, D::Error> {
        let crate::value::Plain(value) = crate::value::Plain::deserialize(deserializer)?;
        Data::from_value(&value).map_err(serde::de::Error::custom)
    }
}

/// Any JSON value, parsed as strictly as into a `serde_json::Value` but without building it.
/// Only used on text already known to nest at most [`MAX_DEPTH`] deep.
struct Strict;

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Strict, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_str<E>(self, _: &str) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        while seq.next_element::<Strict>()?.is_some() {}
        Ok(Strict)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        while map.next_entry::<Strict, Strict>()?.is_some() {}
        Ok(Strict)
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
pub fn depth(value: &serde_json::Value) -> usize {
    // Iterative, so that the check itself cannot overflow the stack.
    let mut max = 0;
    let mut stack: Vec<(&serde_json::Value, usize)> = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => {
                max = max.max(d + 1);
                stack.extend(items.iter().map(|i| (i, d + 1)));
            }
            serde_json::Value::Object(map) => {
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
}
