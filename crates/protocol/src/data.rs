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

    /// Wraps JSON text that came from a trusted store (history, another node).
    pub fn from_json_text(text: String) -> Result<Data, DataError> {
        RawValue::from_string(text)
            .map(|raw| Data(Arc::from(raw)))
            .map_err(|_| DataError::Invalid)
    }

    /// The JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// The payload as a parsed value (used for MessagePack clients and tests).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
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
        let value = serde_json::Value::deserialize(deserializer)?;
        Data::from_value(&value).map_err(serde::de::Error::custom)
    }
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
