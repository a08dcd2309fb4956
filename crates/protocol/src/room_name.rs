//! Room names: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
//!
//! The grammar keeps names safe inside Redis keys and hash tags (no `{` or `}`), URLs and logs.

/// The longest room name accepted.
pub const MAX_LEN: usize = 128;

/// Whether `name` is a valid room name.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Whether a room-name pattern from a token's `rooms` claim admits `name`.
/// A pattern is an exact name, or a prefix followed by a single trailing `*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert!(is_valid("lobby"));
        assert!(is_valid("a.b:c-d_e9"));
        assert!(is_valid(&"x".repeat(128)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"x".repeat(129)));
        assert!(!is_valid("has space"));
        assert!(!is_valid("{tag}"));
        assert!(!is_valid("é"));
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("game:*", "game:1"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("lobby", "lobby"));
        assert!(!pattern_matches("lobby", "lobby2"));
        assert!(!pattern_matches("game:*", "chat:1"));
    }
}
