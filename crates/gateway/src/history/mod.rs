//! History past the Redis window: room-state's hot window, and below it the archive, as one
//! page (`history` op on both protocols and `GET /api/rooms/{room}/messages`).
//!
//! - `merge`: the seam, pure: what to ask the archive for, and the merge (unit-tested).
//! - `read`: the reads themselves, on a `RoomStore` and an optional `Archive`.

mod merge;
mod read;

pub use read::{from_archive, page, page_sleeping};

use crate::node::Node;
use std::sync::Arc;

/// The node's archive, when `--archive` is on (an owned handle: callers hold it across awaits).
pub fn archive_of(node: &Node) -> Option<Arc<dyn archive::Archive>> {
    node.archive().cloned()
}
