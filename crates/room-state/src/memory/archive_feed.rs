//! `ArchiveFeed` for the embedded backend: the dirty marks and leases are maps beside the
//! rooms; a room's cursor sits in the room, under its lock.

use super::MemoryState;
use crate::archive_feed::{archive_shard, ArchiveFeed, ArchiveRead, DirtyRoom};
use crate::error::StateError;
use async_trait::async_trait;
use std::sync::atomic::Ordering;

#[async_trait]
impl ArchiveFeed for MemoryState {
    fn enable_archiving(&self, backlog_cap: u64) {
        // Stored before the flag: a publish that sees the flag sees the cap.
        self.archive_backlog_cap
            .store(backlog_cap.max(1), Ordering::Release);
        self.archiving.store(true, Ordering::Release);
    }

    async fn dirty_rooms(&self, shard: u64, limit: usize) -> Result<Vec<DirtyRoom>, StateError> {
        let mut rooms: Vec<DirtyRoom> = self
            .dirty
            .lock()
            .iter()
            .filter(|(room, _)| archive_shard(room) == shard)
            .map(|(room, since)| DirtyRoom {
                room: room.clone(),
                since_ms: *since,
            })
            .collect();
        rooms.sort_by(|a, b| (a.since_ms, &a.room).cmp(&(b.since_ms, &b.room)));
        rooms.truncate(limit);
        Ok(rooms)
    }

    async fn read_unarchived(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Option<ArchiveRead>, StateError> {
        // Not `with_room(now)`: an expired room not swept yet still has its messages.
        let read = self.with_room(room, None, |r| {
            Ok(ArchiveRead {
                epoch: r.epoch.clone(),
                cursor: r.arch,
                offset: r.offset,
                messages: r
                    .history
                    .iter()
                    .filter(|p| p.offset > r.arch)
                    .take(limit)
                    .cloned()
                    .collect(),
            })
        });
        match read {
            Ok(read) => Ok(Some(read)),
            Err(StateError::NotFound) => {
                self.dirty.lock().remove(room);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn advance_cursor(
        &self,
        room: &str,
        epoch: &str,
        upto: u64,
        _mark_ms: u64,
    ) -> Result<bool, StateError> {
        let outcome = self.with_room(room, None, |r| {
            if r.epoch == epoch && upto > r.arch {
                r.arch = upto.min(r.offset);
            }
            let dirty = r.offset > r.arch;
            if !dirty {
                // Under the room's lock: no publish can mark it in between.
                self.dirty.lock().remove(room);
            }
            Ok(dirty)
        });
        match outcome {
            Err(StateError::NotFound) => {
                self.dirty.lock().remove(room);
                Ok(false)
            }
            other => other,
        }
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StateError> {
        let mut leases = self.leases.lock();
        match leases.get(name) {
            Some((current, expires)) if current != holder && *expires > now_ms => Ok(false),
            _ => {
                leases.insert(name.to_string(), (holder.to_string(), now_ms + ttl_ms));
                Ok(true)
            }
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StateError> {
        let mut leases = self.leases.lock();
        if leases
            .get(name)
            .is_some_and(|(current, _)| current == holder)
        {
            leases.remove(name);
        }
        Ok(())
    }
}
