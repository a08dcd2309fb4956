//! Untrusted input to [`serde_json::Value`], without serde_json's raw-value magic.
//!
//! With the `raw_value` feature (which [`crate::data::Data`] needs), `Value`'s own
//! `Deserialize` treats an object whose first key is `$serde_json::private::RawValue` as a
//! string of JSON to parse again, with a fresh recursion limit. A client can nest that: a
//! 3 kB frame then recursed thousands of levels deep and overflowed the stack (found by the
//! `data` fuzz target; see docs/fuzzing.md). [`Plain`] builds the same `Value` as serde_json
//! does, but keeps every key as an ordinary key, so serde_json's recursion limit (128) and the
//! MessagePack depth guard bound the whole tree. MessagePack `bin` becomes the `$bin` wrapper
//! (see [`crate::data`]).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A [`Value`] deserialized without special keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Plain(pub Value);

/// Parses JSON bytes into a [`Value`], keeping every key literally.
pub fn from_slice(bytes: &[u8]) -> serde_json::Result<Value> {
    serde_json::from_slice::<Plain>(bytes).map(|p| p.0)
}

/// Parses JSON text into a [`Value`], keeping every key literally.
pub fn from_str(text: &str) -> serde_json::Result<Value> {
    serde_json::from_str::<Plain>(text).map(|p| p.0)
}

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Plain, D::Error> {
        deserializer.deserialize_any(PlainVisitor).map(Plain)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json: NaN and infinities (possible in MessagePack) become null.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        // MessagePack `bin`: JSON has no bytes, so they become the `$bin` wrapper that
        // `crate::data` holds byte strings as (and that MessagePack clients get back as `bin`).
        Ok(crate::data::binary_value(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Plain::deserialize(deserializer).map(|p| p.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Plain(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((key, Plain(value))) = map.next_entry::<String, Plain>()? {
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TOKEN: &str = "$serde_json::private::RawValue";

    #[test]
    fn builds_the_same_values_as_serde_json() {
        let text = r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"a":0,"c":18446744073709551615}"#;
        let ours = from_str(text).expect("plain");
        let theirs: Value = serde_json::from_str(text).expect("serde_json");
        assert_eq!(ours, theirs);
        let packed = rmp_serde::to_vec_named(&theirs).expect("pack");
        let Plain(unpacked) = rmp_serde::from_slice(&packed).expect("unpack");
        assert_eq!(unpacked, theirs);
    }

    #[test]
    fn the_raw_value_token_is_an_ordinary_key() {
        let text = format!(r#"{{"{TOKEN}":"[1,2]"}}"#);
        assert_eq!(from_str(&text).expect("plain"), json!({ TOKEN: "[1,2]" }));
        // What serde_json's own Value does with it: parse the string as JSON.
        let theirs: Value = serde_json::from_str(&text).expect("serde_json");
        assert_eq!(theirs, json!([1, 2]));
    }
}
