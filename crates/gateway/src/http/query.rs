//! Query strings and path segments, percent-decoded.

use std::collections::HashMap;

/// Parses `a=1&b=x%20y`. Later duplicates win. Invalid escapes are kept literally.
pub fn parse(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(&k.replace('+', " ")), decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Percent-decodes one component. Returns the input unchanged where it is not valid UTF-8
/// after decoding.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        let q = parse("format=msgpack&token=a.b%2Dc&x=%zz&y=%4");
        assert_eq!(q["format"], "msgpack");
        assert_eq!(q["token"], "a.b-c");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["y"], "%4");
        assert_eq!(decode("%C3%A9"), "é");
        assert_eq!(decode("%FF"), "%FF");
    }
}
