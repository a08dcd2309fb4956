//! `ArchiveFeed` for the embedded backend: the dirty marks and leases are maps beside the
//! rooms; a room's cursor sits in the room, under its lock.

use super::rooms::Room;
use super::MemoryState;
use crate::archive_feed::{archive_shard, ArchiveFeed, ArchiveRead, DirtyRoom, SleepState};
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

    async fn lease_holder(&self, name: &str, now_ms: u64) -> Result<Option<String>, StateError> {
        let leases = self.leases.lock();
        Ok(leases
            .get(name)
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(holder, _)| holder.clone()))
    }

    async fn expired_rooms(
        &self,
        shard: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        let rooms: Vec<_> = self.rooms.read().values().cloned().collect();
        let mut expired: Vec<String> = rooms
            .iter()
            .filter_map(|room| {
                let r = room.lock();
                let due = !r.closed && r.expired(now_ms) && r.members.is_empty();
                (due && archive_shard(&r.name) == shard).then(|| r.name.clone())
            })
            .collect();
        expired.sort();
        expired.truncate(limit);
        Ok(expired)
    }

    async fn sleep_state(&self, room: &str) -> Result<Option<SleepState>, StateError> {
        match self.with_room(room, None, |r| Ok(sleep_state(r))) {
            Ok(state) => Ok(Some(state)),
            Err(StateError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn forget_slept(
        &self,
        room: &str,
        epoch: &str,
        offset: u64,
        now_ms: u64,
    ) -> Result<bool, StateError> {
        let mut rooms = self.rooms.write();
        let Some(existing) = rooms.get(room).cloned() else {
            return Ok(true);
        };
        let mut r = existing.lock();
        if !r.closed {
            let still =
                r.epoch == epoch && r.offset == offset && r.members.is_empty() && r.expired(now_ms);
            if !still {
                return Ok(false);
            }
            r.closed = true;
        }
        rooms.remove(room);
        self.ephemeral.learn(room, false);
        self.dirty.lock().remove(room);
        Ok(true)
    }

    async fn dying_rooms(&self) -> Result<Vec<SleepState>, StateError> {
        let rooms: Vec<_> = self.rooms.read().values().cloned().collect();
        Ok(rooms
            .iter()
            .filter_map(|room| {
                let r = room.lock();
                (!r.closed).then(|| sleep_state(&r))
            })
            .collect())
    }
}

fn sleep_state(r: &Room) -> SleepState {
    SleepState {
        room: r.name.clone(),
        epoch: r.epoch.clone(),
        offset: r.offset,
        archived: r.arch,
        config: r.config.clone(),
        created_at: r.created_at,
        members: r.members.len(),
    }
}
