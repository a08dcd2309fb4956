//! An iterative scan of MessagePack nesting, run before serde touches the bytes.
//!
//! Why: rmp-serde recurses once per nesting level and allows 1024 levels, which overflows a
//! 2 MiB thread stack in debug builds. A hostile 100 kB frame of `0x91` bytes would abort the
//! process. This scan walks the structure with an explicit stack and refuses anything deeper
//! than the limit, so the recursive decoder only ever sees shallow input.

/// Whether `bytes` nests containers at most `max_depth` deep. Truncated or malformed input
/// returns `true`: the real decoder reports those errors with better messages.
pub fn depth_within(bytes: &[u8], max_depth: usize) -> bool {
    // Each entry counts the values still expected inside one open container.
    let mut pending: Vec<u64> = vec![1];
    let mut pos = 0usize;
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let Some(&marker) = bytes.get(pos) else {
            return true;
        };
        pos += 1;
        let (skip, children): (usize, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc1 => return true,
            0xc4 | 0xd9 => match read_len(bytes, pos, 1) {
                Some(n) => (1 + n, 0),
                None => return true,
            },
            0xc5 | 0xda => match read_len(bytes, pos, 2) {
                Some(n) => (2 + n, 0),
                None => return true,
            },
            0xc6 | 0xdb => match read_len(bytes, pos, 4) {
                Some(n) => (4 + n, 0),
                None => return true,
            },
            0xc7 => match read_len(bytes, pos, 1) {
                Some(n) => (2 + n, 0),
                None => return true,
            },
            0xc8 => match read_len(bytes, pos, 2) {
                Some(n) => (3 + n, 0),
                None => return true,
            },
            0xc9 => match read_len(bytes, pos, 4) {
                Some(n) => (5 + n, 0),
                None => return true,
            },
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => match read_len(bytes, pos, 2) {
                Some(n) => (2, n as u64),
                None => return true,
            },
            0xdd => match read_len(bytes, pos, 4) {
                Some(n) => (4, n as u64),
                None => return true,
            },
            0xde => match read_len(bytes, pos, 2) {
                Some(n) => (2, 2 * n as u64),
                None => return true,
            },
            0xdf => match read_len(bytes, pos, 4) {
                Some(n) => (4, 2 * n as u64),
                None => return true,
            },
        };
        pos = pos.saturating_add(skip);
        let is_container = matches!(marker, 0x80..=0x9f | 0xdc..=0xdf);
        if is_container {
            if pending.len() > max_depth {
                return false;
            }
            pending.push(children);
        }
    }
    true
}

fn read_len(bytes: &[u8], pos: usize, width: usize) -> Option<usize> {
    let slice = bytes.get(pos..pos.checked_add(width)?)?;
    Some(
        slice
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_nesting() {
        let shallow = rmp_serde::to_vec_named(&serde_json::json!({"a": [1, [2, {"b": "x"}]]}))
            .expect("encode");
        assert!(depth_within(&shallow, 4));
        assert!(!depth_within(&shallow, 3));
        let mut deep = vec![0x91u8; 10_000];
        deep.push(0x01);
        assert!(!depth_within(&deep, 64));
        assert!(depth_within(&[0x91, 0x91, 0x01], 2));
        assert!(!depth_within(&[0x91, 0x91, 0x01], 1));
    }

    #[test]
    fn truncated_input_is_left_to_the_decoder() {
        assert!(depth_within(&[0xdd, 0xff], 4));
        assert!(depth_within(&[], 4));
        assert!(depth_within(&[0xc1], 4));
    }
}
