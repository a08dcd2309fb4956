//! Wall-clock milliseconds since the Unix epoch: the unit of every timestamp on the wire
//! (`ts`, `pong`, expiries). Reading the clock is not I/O, and every crate needs the same
//! reading, so it lives here rather than in three copies.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch; 0 if the clock is set before 1970.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
