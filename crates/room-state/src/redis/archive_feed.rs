//! `ArchiveFeed` on Redis Cluster. A room's cursor (`arch`) and dirty mark (`ad`) live in its
//! meta hash, so the publish script reads and writes them atomically with the offset; the
//! dirty-rooms index `rc:{arch:K}` is in other slots and written by plain commands:
//!
//! - the publish that marks a room adds it (`ZADD NX`, score = when);
//! - after a commit the archiver first removes the room from the index, then runs the
//!   advance script (cursor up, mark cleared when nothing newer), and adds the room back when
//!   the script says more arrived. A publish in between finds the mark still set and does
//!   not add the room, but the script then reports it dirty, so no mark is lost; a node that
//!   dies between the two steps leaves a mark with no index entry, which the room's next
//!   publish repairs once the mark is older than `ARCHIVE_RESIGNAL_MS`.

use super::keys::{self, RoomKeys};
use super::rooms::publications;
use super::{array, int, string, RedisState};
use crate::archive_feed::{archive_shard, ArchiveFeed, ArchiveRead, DirtyRoom, SleepState};
use crate::error::StateError;
use crate::model::RoomConfig;
use crate::observer::Command;
use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Value;
use std::sync::atomic::Ordering;

impl RedisState {
    /// Adds a room to its dirty-rooms index shard, keeping an older mark's time.
    pub(super) async fn mark_dirty(&self, room: &str, now_ms: u64) {
        let key = keys::archive_dirty(archive_shard(room));
        let r: Result<Value, _> = self
            .on(&key)
            .zadd(
                &key,
                Some(SetOptions::NX),
                None,
                false,
                false,
                (now_ms as f64, room),
            )
            .await;
        if let Err(e) = r {
            // The room's next publish marks it again (see the module's comment).
            tracing::warn!(error = %e, room, "archive dirty mark failed");
        }
    }

    async fn unmark_dirty(&self, room: &str) -> Result<(), StateError> {
        let key = keys::archive_dirty(archive_shard(room));
        let _: Value = self
            .on(&key)
            .zrem(&key, room)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }
}

#[async_trait]
impl ArchiveFeed for RedisState {
    fn enable_archiving(&self, backlog_cap: u64) {
        // Stored before the flag: a publish that sees the flag sees the cap.
        self.archive_backlog_cap
            .store(backlog_cap.max(1), Ordering::Release);
        self.archiving.store(true, Ordering::Release);
    }

    async fn dirty_rooms(&self, shard: u64, limit: usize) -> Result<Vec<DirtyRoom>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = keys::archive_dirty(shard);
        let raw: Vec<(String, f64)> = self
            .on(&key)
            .zrange(&key, 0, limit as i64 - 1, None, false, None, true)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(raw
            .into_iter()
            .map(|(room, since)| DirtyRoom {
                room,
                since_ms: since.max(0.0) as u64,
            })
            .collect())
    }

    async fn read_unarchived(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Option<ArchiveRead>, StateError> {
        let k = RoomKeys::new(room);
        let reply = array(
            self.eval(Command::ArchiveRead, k.all(), vec![limit.to_string()])
                .await?,
        );
        if int(reply.first())? == 0 {
            self.unmark_dirty(room).await?;
            return Ok(None);
        }
        let epoch = string(reply.get(1))?;
        Ok(Some(ArchiveRead {
            cursor: int(reply.get(2))?.max(0) as u64,
            offset: int(reply.get(3))?.max(0) as u64,
            messages: publications(room, &epoch, reply.get(4))?,
            epoch,
        }))
    }

    async fn advance_cursor(
        &self,
        room: &str,
        epoch: &str,
        upto: u64,
        mark_ms: u64,
    ) -> Result<bool, StateError> {
        self.unmark_dirty(room).await?;
        let k = RoomKeys::new(room);
        let reply = self
            .eval(
                Command::ArchiveAdvance,
                vec![k.meta],
                vec![epoch.to_string(), upto.to_string()],
            )
            .await;
        let dirty = match reply {
            Ok(reply) => {
                let reply = array(reply);
                int(reply.first())? == 1 && int(reply.get(1))? == 1
            }
            // Unknown outcome: put the room back, a round reads it again.
            Err(e) => {
                self.mark_dirty(room, mark_ms).await;
                return Err(e);
            }
        };
        if dirty {
            self.mark_dirty(room, mark_ms).await;
        }
        Ok(dirty)
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: u64,
        _now_ms: u64,
    ) -> Result<bool, StateError> {
        let reply = self
            .eval(
                Command::Lease,
                vec![keys::lease(name)],
                vec![holder.to_string(), ttl_ms.max(1).to_string()],
            )
            .await?;
        Ok(int(Some(&reply))? == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StateError> {
        self.eval(
            Command::Lease,
            vec![keys::lease(name)],
            vec![holder.to_string(), "0".into()],
        )
        .await?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str, _now_ms: u64) -> Result<Option<String>, StateError> {
        // The key expires with the lease (`PX`): present means held.
        let key = keys::lease(name);
        self.on(&key)
            .get::<Option<String>, _>(&key)
            .await
            .map_err(|e| self.failed(e))
    }

    /// The sleep index (`keys.rs`), whose shards are the archive shards: the same hash,
    /// the same count (a test below holds them together).
    async fn expired_rooms(
        &self,
        shard: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StateError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let key = keys::sleep_index_shard(shard);
        let limit = Some((0, limit as i64));
        let rooms: Vec<String> = self
            .on(&key)
            .zrangebyscore(&key, f64::NEG_INFINITY, now_ms as f64, false, limit)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(rooms)
    }

    async fn sleep_state(&self, room: &str) -> Result<Option<SleepState>, StateError> {
        let k = RoomKeys::new(room);
        let reply = array(self.eval(Command::SleepState, k.all(), Vec::new()).await?);
        if int(reply.first())? == 0 {
            return Ok(None);
        }
        let max = int(reply.get(4))?;
        let state = SleepState {
            room: room.to_string(),
            epoch: string(reply.get(1))?,
            offset: int(reply.get(2))?.max(0) as u64,
            archived: int(reply.get(3))?.max(0) as u64,
            config: RoomConfig {
                max_members: (max > 0).then_some(max as u32),
                history_size: int(reply.get(5))?.max(0) as u32,
                ttl_secs: int(reply.get(6))?.max(0) as u64 / 1000,
            },
            created_at: int(reply.get(7))?.max(0) as u64,
            members: int(reply.get(8))?.max(0) as usize,
        };
        if state.members > 0 {
            // Due in the sleep index but occupied: an index write that failed at a join.
            // Put it right (out of the sleep index), so the sweep stops reading it.
            self.index(room, None).await;
        }
        Ok(Some(state))
    }

    async fn forget_slept(
        &self,
        room: &str,
        epoch: &str,
        offset: u64,
        now_ms: u64,
    ) -> Result<bool, StateError> {
        let k = RoomKeys::new(room);
        let reply = self
            .eval(
                Command::SleepForget,
                k.all(),
                vec![epoch.to_string(), offset.to_string()],
            )
            .await?;
        if int(Some(&reply))? != 1 {
            return Ok(false);
        }
        self.ephemeral.learn(room, false);
        // Only due entries: a node that woke the room meanwhile set later ones.
        for index in [keys::sleep_index(room), keys::room_index(room)] {
            self.eval(
                Command::IndexForget,
                vec![index],
                vec![room.to_string(), now_ms.to_string()],
            )
            .await?;
        }
        Ok(true)
    }

    async fn dying_rooms(&self) -> Result<Vec<SleepState>, StateError> {
        // Rooms in Redis outlive the node.
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rooms_index_shards_are_the_archive_shards() {
        // The archiver that holds archive shard K sweeps rooms index shard K for rooms to
        // put to sleep: a room's two shards must be the same.
        assert_eq!(
            super::keys::ROOM_INDEX_SHARDS,
            crate::archive_feed::ARCHIVE_SHARDS
        );
        for room in ["a", "game:42", "chat:x", ""] {
            assert_eq!(
                super::keys::shard_of(room, super::keys::ROOM_INDEX_SHARDS),
                crate::archive_feed::archive_shard(room)
            );
        }
    }
}
