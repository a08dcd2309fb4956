//! The embedded backend: all state in this process, for a single node and for unit tests.
//!
//! Each room sits behind its own mutex, so publishes to different rooms do not contend. No
//! lock is ever held across an `.await` (the trait methods are async only to match Redis).

mod archive_feed;
mod events;
mod limits;
mod rooms;
mod traffic;
mod users;

use parking_lot::{Mutex, RwLock};
use rooms::Room;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use crate::ephemeral::EphemeralRooms;
use crate::model::NodeInfo;
use crate::rooms::PublishSink;

/// All embedded state. Cheap to share through an `Arc`.
pub struct MemoryState {
    rooms: RwLock<HashMap<String, Arc<Mutex<Room>>>>,
    /// The ephemeral rooms, kept beside the rooms so that asking (on every publish) never
    /// waits on a room's lock, which a busy room holds while it delivers.
    ephemeral: EphemeralRooms,
    sink: RwLock<Option<PublishSink>>,
    windows: Mutex<HashMap<String, VecDeque<u64>>>,
    buckets: Mutex<HashMap<String, limits::Bucket>>,
    creations: Mutex<VecDeque<(u64, u64)>>,
    nodes: Mutex<HashMap<String, (NodeInfo, u64)>>,
    /// Nodes claimed as dead and not heard from since.
    reaped: Mutex<HashMap<String, u64>>,
    /// Saved sessions: blob and expiry (ms since the epoch).
    sessions: Mutex<HashMap<String, (String, u64)>>,
    /// Whether publishes mark rooms for the archiver (`ArchiveFeed::enable_archiving`).
    archiving: AtomicBool,
    /// Unarchived messages per room past which a publish is refused (`--archive-backlog-cap`).
    archive_backlog_cap: AtomicU64,
    /// Rooms with messages not yet archived → when marked. Locked after a room's lock,
    /// never before.
    dirty: Mutex<HashMap<String, u64>>,
    /// Leases (`ArchiveFeed::lease`): name → holder, expiry (ms).
    leases: Mutex<HashMap<String, (String, u64)>>,
    /// The user registry: user → connection id → connection.
    /// user → that user's connections. A list, not a map: a user has a handful, and an empty
    /// `BTreeMap`'s first node (about 1 KiB) per connected user showed in idle RSS.
    users: Mutex<HashMap<String, Vec<crate::users::UserConn>>>,
    /// The webhook event queues (`EventQueue`): queue name → events, oldest first.
    events: Mutex<HashMap<String, VecDeque<crate::events::QueuedEvent>>>,
    /// Makes event entry ids unique within the process.
    event_seq: AtomicU64,
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState::new()
    }
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState {
            rooms: RwLock::new(HashMap::new()),
            ephemeral: EphemeralRooms::default(),
            sink: RwLock::new(None),
            windows: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            creations: Mutex::new(VecDeque::new()),
            nodes: Mutex::new(HashMap::new()),
            reaped: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            archiving: AtomicBool::new(false),
            archive_backlog_cap: AtomicU64::new(crate::archive_feed::ARCHIVE_BACKLOG_CAP),
            dirty: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            events: Mutex::new(HashMap::new()),
            event_seq: AtomicU64::new(0),
        }
    }

    /// Sets where publications go (the in-memory fan-out). Set once at start-up.
    pub fn set_sink(&self, sink: PublishSink) {
        *self.sink.write() = Some(sink);
    }
}

/// A fresh, random epoch: 12 hex digits.
pub(crate) fn new_epoch() -> String {
    format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

#[async_trait::async_trait]
impl crate::SessionStore for MemoryState {
    async fn save_session(
        &self,
        key: &str,
        blob: &str,
        ttl_ms: u64,
    ) -> Result<(), crate::StateError> {
        let now = protocol::clock::now_ms();
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, (_, expires)| *expires > now);
        sessions.insert(key.to_string(), (blob.to_string(), now + ttl_ms));
        Ok(())
    }

    async fn take_session(&self, key: &str) -> Result<Option<String>, crate::StateError> {
        let now = protocol::clock::now_ms();
        Ok(self
            .sessions
            .lock()
            .remove(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(blob, _)| blob))
    }
}
