//! Engine.IO v4 HTTP long-polling payloads. Pure: a request body in, packets or an error
//! out; packets in, a response body out.
//!
//! A payload is packets joined by the record separator `\x1e`. A text packet is written as
//! is (type digit plus data); a binary packet (the body of a `message`) is `b` followed by
//! its base64 (standard alphabet, padded).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Separates the packets of one payload.
pub const SEPARATOR: u8 = 0x1e;

/// One packet of a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A text packet: type digit plus data, as a WebSocket text message would carry it.
    Text(String),
    /// The bytes of a binary `message` packet.
    Binary(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("empty packet in payload")]
    Empty,
    #[error("payload is not UTF-8")]
    Utf8,
    #[error("bad base64 in a binary packet")]
    Base64,
}

/// Decodes a request body. Every packet must be non-empty; whether its type digit is known
/// is for the Engine.IO decoder to say, as for a WebSocket message.
pub fn decode_payload(body: &[u8]) -> Result<Vec<Packet>, PayloadError> {
    let text = std::str::from_utf8(body).map_err(|_| PayloadError::Utf8)?;
    text.split(SEPARATOR as char)
        .map(|part| match part.strip_prefix('b') {
            _ if part.is_empty() => Err(PayloadError::Empty),
            Some(b64) => STANDARD
                .decode(b64)
                .map(Packet::Binary)
                .map_err(|_| PayloadError::Base64),
            None => Ok(Packet::Text(part.to_string())),
        })
        .collect()
}

/// Appends a text packet to a response body.
pub fn push_text(body: &mut Vec<u8>, packet: &[u8]) {
    separate(body);
    body.extend_from_slice(packet);
}

/// Appends a binary packet (`b` + base64) to a response body.
pub fn push_binary(body: &mut Vec<u8>, bytes: &[u8]) {
    separate(body);
    body.push(b'b');
    body.extend_from_slice(STANDARD.encode(bytes).as_bytes());
}

fn separate(body: &mut Vec<u8>) {
    if !body.is_empty() {
        body.push(SEPARATOR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_suites_payloads() {
        assert_eq!(
            decode_payload(b"4hello\x1ebAQIDBA=="),
            Ok(vec![
                Packet::Text("4hello".into()),
                Packet::Binary(vec![1, 2, 3, 4])
            ])
        );
        assert_eq!(
            decode_payload(b"4test1\x1e4test2\x1e4test3").map(|p| p.len()),
            Ok(3)
        );
        let mut body = Vec::new();
        push_text(&mut body, b"4hello");
        push_binary(&mut body, &[1, 2, 3, 4]);
        assert_eq!(body, b"4hello\x1ebAQIDBA==");
    }

    #[test]
    fn bad_payloads_are_errors() {
        assert_eq!(decode_payload(b""), Err(PayloadError::Empty));
        assert_eq!(decode_payload(b"4a\x1e"), Err(PayloadError::Empty));
        assert_eq!(decode_payload(b"b!!"), Err(PayloadError::Base64));
        assert_eq!(decode_payload(b"\xff"), Err(PayloadError::Utf8));
        // An unknown type digit is the Engine.IO decoder's to refuse, as over WebSocket.
        assert_eq!(decode_payload(b"abc"), Ok(vec![Packet::Text("abc".into())]));
        // `b` alone is an empty binary packet.
        assert_eq!(decode_payload(b"b"), Ok(vec![Packet::Binary(vec![])]));
    }
}
