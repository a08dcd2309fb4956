//! `RoomStore` for the embedded backend.

use super::{new_epoch, MemoryState};
use crate::error::StateError;
use crate::model::{
    Departed, Departure, Idempotency, JoinOutcome, MemberRecord, Published, Publisher, RoomConfig,
    RoomInfo, Wake,
};
use crate::recovery::recover;
use crate::rooms::RoomStore;
use async_trait::async_trait;
use parking_lot::Mutex;
use protocol::frame::{Member, Publication, Since};
use protocol::Data;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(crate) struct Room {
    pub(super) name: String,
    pub(super) epoch: String,
    pub(super) offset: u64,
    pub(super) config: RoomConfig,
    /// In join order, so presence lists are stable.
    pub(super) members: Vec<MemberRecord>,
    pub(super) history: VecDeque<Publication>,
    pub(super) created_at: u64,
    /// Set while the room is empty: when it expires.
    expires_at: Option<u64>,
    /// Set when the room was removed from the map, for holders of a stale `Arc`.
    pub(super) closed: bool,
    /// Idempotency keys published, and when each is forgotten.
    seen: Seen,
    /// The last offset of this epoch the archive holds (0: none).
    pub(super) arch: u64,
}

/// Idempotency keys → (epoch, offset), forgotten in expiry order.
#[derive(Debug, Default)]
struct Seen {
    offsets: HashMap<String, (String, u64, u64)>,
    by_expiry: VecDeque<(u64, String)>,
}

impl Seen {
    /// Where a live key was published.
    fn get(&mut self, key: &str, now_ms: u64) -> Option<(String, u64)> {
        while let Some((expiry, _)) = self.by_expiry.front() {
            if *expiry > now_ms {
                break;
            }
            if let Some((_, k)) = self.by_expiry.pop_front() {
                // A key recorded again later has a later expiry of its own.
                if self.offsets.get(&k).is_some_and(|(_, _, e)| *e <= now_ms) {
                    self.offsets.remove(&k);
                }
            }
        }
        self.offsets
            .get(key)
            .map(|(epoch, offset, _)| (epoch.clone(), *offset))
    }

    fn record(&mut self, key: &str, epoch: &str, offset: u64, expiry: u64) {
        self.offsets
            .insert(key.to_string(), (epoch.to_string(), offset, expiry));
        self.by_expiry.push_back((expiry, key.to_string()));
    }
}

impl Room {
    fn member_list(&self) -> Vec<Member> {
        self.members.iter().map(MemberRecord::to_member).collect()
    }

    fn is_member(&self, conn_id: &str) -> bool {
        self.members.iter().any(|m| m.conn_id == conn_id)
    }

    fn check_member(&self, requester: Option<&str>) -> Result<(), StateError> {
        match requester {
            Some(conn) if !self.is_member(conn) => Err(StateError::NotMember),
            _ => Ok(()),
        }
    }

    fn info(&self) -> RoomInfo {
        RoomInfo {
            room: self.name.clone(),
            epoch: self.epoch.clone(),
            offset: self.offset,
            members: self.member_list(),
            config: self.config.clone(),
            created_at: self.created_at,
        }
    }

    pub(super) fn expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|at| now_ms >= at)
    }

    fn new(name: &str, epoch: String, config: &RoomConfig, now_ms: u64) -> Room {
        Room {
            name: name.to_string(),
            epoch,
            offset: 0,
            config: config.clone(),
            members: Vec::new(),
            history: VecDeque::new(),
            created_at: now_ms,
            expires_at: Some(now_ms + config.ttl_secs * 1000),
            closed: false,
            seen: Seen::default(),
            arch: 0,
        }
    }
}

impl MemoryState {
    fn room(&self, name: &str) -> Result<Arc<Mutex<Room>>, StateError> {
        self.rooms
            .read()
            .get(name)
            .cloned()
            .ok_or(StateError::NotFound)
    }

    /// Runs `f` on a live room. Rooms that expired but were not swept yet count as absent,
    /// unless the archive is on: then a room leaves only through the sleep sweep (saved
    /// first), and until then it is as alive as in Redis, where its keys stay too.
    pub(super) fn with_room<T>(
        &self,
        name: &str,
        now_ms: Option<u64>,
        f: impl FnOnce(&mut Room) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let room = self.room(name)?;
        let mut room = room.lock();
        if self.gone(&room, now_ms) {
            return Err(StateError::NotFound);
        }
        f(&mut room)
    }

    fn gone(&self, room: &Room, now_ms: Option<u64>) -> bool {
        let archiving = self.archiving.load(Ordering::Acquire);
        room.closed || (!archiving && now_ms.is_some_and(|now| room.expired(now)))
    }
}

impl MemoryState {
    /// Puts a new room in the map unless a live one has the name (create and wake).
    fn insert_room(&self, name: &str, room: Room, now_ms: u64) -> Result<RoomInfo, StateError> {
        let mut rooms = self.rooms.write();
        if let Some(existing) = rooms.get(name) {
            if !self.gone(&existing.lock(), Some(now_ms)) {
                return Err(StateError::RoomExists);
            }
        }
        let info = room.info();
        self.ephemeral.learn(name, room.config.is_ephemeral());
        rooms.insert(name.to_string(), Arc::new(Mutex::new(room)));
        Ok(info)
    }

    /// `publish`, which never waits: everything happens under the room's lock.
    fn publish_now(
        &self,
        room: &str,
        conn_id: Option<&str>,
        from: &str,
        data: Data,
        idempotency: Option<Idempotency<'_>>,
        now_ms: u64,
    ) -> Result<Published, StateError> {
        let sink = self.sink.read().clone();
        self.with_room(room, Some(now_ms), |r| {
            r.check_member(conn_id)?;
            if r.config.is_ephemeral() {
                // Not sequenced: no offset, no history, no key. Still handed over under the
                // room's lock, so one connection's messages keep their order.
                self.ephemeral.learn(&r.name, true);
                let publication = Publication {
                    room: r.name.clone(),
                    offset: Publication::EPHEMERAL_OFFSET,
                    epoch: String::new(),
                    from: from.to_string(),
                    data,
                    ts: now_ms,
                };
                if let Some(sink) = &sink {
                    sink(&publication);
                }
                return Ok(Published {
                    publication,
                    duplicate: false,
                });
            }
            if let Some((epoch, offset)) = idempotency.and_then(|i| r.seen.get(i.key, now_ms)) {
                let publication = Publication {
                    room: r.name.clone(),
                    offset,
                    epoch,
                    from: from.to_string(),
                    data,
                    ts: now_ms,
                };
                return Ok(Published {
                    publication,
                    duplicate: true,
                });
            }
            let archiving = self.archiving.load(Ordering::Acquire);
            let cap = self.archive_backlog_cap.load(Ordering::Acquire);
            if archiving && r.offset - r.arch.min(r.offset) >= cap {
                // The history keeps what the archive lacks; past the cap, refuse rather than
                // lose messages from the archive.
                return Err(StateError::Unavailable("archive backlog full".into()));
            }
            r.offset += 1;
            if let Some(i) = idempotency {
                let (epoch, offset) = (r.epoch.clone(), r.offset);
                r.seen.record(i.key, &epoch, offset, now_ms + i.window_ms);
            }
            let publication = Publication {
                room: r.name.clone(),
                offset: r.offset,
                epoch: r.epoch.clone(),
                from: from.to_string(),
                data,
                ts: now_ms,
            };
            r.history.push_back(publication.clone());
            while r.history.len() > r.config.history_size as usize {
                // Not past the archive cursor: the archiver reads the history.
                if archiving && r.history.front().is_some_and(|p| p.offset > r.arch) {
                    break;
                }
                r.history.pop_front();
            }
            if archiving {
                self.dirty.lock().entry(r.name.clone()).or_insert(now_ms);
            }
            // Still under the room lock: delivery order is offset order.
            if let Some(sink) = &sink {
                sink(&publication);
            }
            Ok(Published {
                publication,
                duplicate: false,
            })
        })
    }
}

#[async_trait]
impl RoomStore for MemoryState {
    async fn create(
        &self,
        room: &str,
        config: &RoomConfig,
        now_ms: u64,
    ) -> Result<RoomInfo, StateError> {
        self.insert_room(room, Room::new(room, new_epoch(), config, now_ms), now_ms)
    }

    async fn wake(&self, room: &str, wake: &Wake, now_ms: u64) -> Result<RoomInfo, StateError> {
        let mut new = Room::new(room, wake.epoch.clone(), &wake.config, now_ms);
        new.offset = wake.offset;
        new.arch = wake.offset;
        new.created_at = wake.created_at;
        let keep = wake.config.history_size as usize;
        let fits = |p: &&Publication| p.epoch == wake.epoch && p.offset <= wake.offset;
        let history: Vec<&Publication> = wake.history.iter().filter(fits).collect();
        let skip = history.len().saturating_sub(keep);
        new.history = history.into_iter().skip(skip).cloned().collect();
        self.insert_room(room, new, now_ms)
    }

    async fn join(
        &self,
        room: &str,
        member: &MemberRecord,
        since: Option<&Since>,
        now_ms: u64,
    ) -> Result<JoinOutcome, StateError> {
        self.with_room(room, Some(now_ms), |r| {
            let already_member = r.is_member(&member.conn_id);
            let occupied = !already_member && r.members.is_empty();
            if !already_member {
                if let Some(max) = r.config.max_members {
                    if r.members.len() >= max as usize {
                        return Err(StateError::RoomFull);
                    }
                }
                r.members.push(member.clone());
                r.expires_at = None;
            }
            let (recovered, missed) = match since {
                // Nothing is kept, so nothing can be recovered.
                Some(_) if r.config.is_ephemeral() => (Some(false), Vec::new()),
                Some(since) => {
                    let history: Vec<Publication> = r.history.iter().cloned().collect();
                    let (ok, missed) = recover(since, &r.epoch, r.offset, &history);
                    (Some(ok), missed)
                }
                None => (None, Vec::new()),
            };
            Ok(JoinOutcome {
                offset: r.offset,
                epoch: r.epoch.clone(),
                members: r.member_list(),
                already_member,
                occupied,
                recovered,
                missed,
                ephemeral: r.config.is_ephemeral(),
            })
        })
    }

    async fn depart(
        &self,
        room: &str,
        conn_id: &str,
        now_ms: u64,
    ) -> Result<Departure, StateError> {
        match self.with_room(room, None, |r| {
            let before = r.members.len();
            r.members.retain(|m| m.conn_id != conn_id);
            let was_member = r.members.len() < before;
            if r.members.is_empty() && was_member {
                r.expires_at = Some(now_ms + r.config.ttl_secs * 1000);
            }
            Ok(Departure {
                was_member,
                vacated: was_member && r.members.is_empty(),
            })
        }) {
            Err(StateError::NotFound) => Ok(Departure::default()),
            other => other,
        }
    }

    async fn publish(
        &self,
        room: &str,
        publisher: Option<Publisher<'_>>,
        from: &str,
        data: Data,
        idempotency: Option<Idempotency<'_>>,
        now_ms: u64,
    ) -> Result<Published, StateError> {
        // Applied at the call, under the room's lock: calls in order are sequenced in order,
        // so `seq` needs no check here.
        let conn_id = publisher.map(|p| p.conn_id);
        self.publish_now(room, conn_id, from, data, idempotency, now_ms)
    }

    /// The same as `publish` (which handles ephemeral rooms), membership checked under the
    /// room's lock: in one process that costs no round trip.
    async fn publish_ephemeral(
        &self,
        room: &str,
        conn_id: &str,
        from: &str,
        data: Data,
        now_ms: u64,
    ) -> Result<Published, StateError> {
        self.publish_now(room, Some(conn_id), from, data, None, now_ms)
    }

    fn is_ephemeral(&self, room: &str) -> bool {
        self.ephemeral.contains(room)
    }

    async fn members(
        &self,
        room: &str,
        requester: Option<&str>,
    ) -> Result<Vec<Member>, StateError> {
        self.with_room(room, None, |r| {
            r.check_member(requester)?;
            Ok(r.member_list())
        })
    }

    async fn history(
        &self,
        room: &str,
        requester: Option<&str>,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<Publication>, String), StateError> {
        self.with_room(room, None, |r| {
            r.check_member(requester)?;
            // The window, not what is kept beyond it for the archiver.
            let oldest = r.offset.saturating_sub(u64::from(r.config.history_size));
            let eligible: Vec<&Publication> = r
                .history
                .iter()
                .filter(|p| p.offset > oldest && before.is_none_or(|b| p.offset < b))
                .collect();
            let skip = eligible.len().saturating_sub(limit);
            let messages = eligible.into_iter().skip(skip).cloned().collect();
            Ok((messages, r.epoch.clone()))
        })
    }

    async fn info(&self, room: &str) -> Result<RoomInfo, StateError> {
        self.with_room(room, None, |r| Ok(r.info()))
    }

    async fn close(&self, room: &str) -> Result<Vec<MemberRecord>, StateError> {
        let removed = self
            .rooms
            .write()
            .remove(room)
            .ok_or(StateError::NotFound)?;
        let mut removed = removed.lock();
        self.ephemeral.learn(room, false);
        if removed.closed {
            return Err(StateError::NotFound);
        }
        removed.closed = true;
        Ok(std::mem::take(&mut removed.members))
    }

    async fn count(&self) -> Result<u64, StateError> {
        Ok(self.rooms.read().len() as u64)
    }

    async fn remove_node_members(
        &self,
        node: &str,
        keep: &(dyn for<'c> Fn(&'c str) -> bool + Send + Sync),
    ) -> Result<Vec<Departed>, StateError> {
        let rooms: Vec<Arc<Mutex<Room>>> = self.rooms.read().values().cloned().collect();
        let mut removed = Vec::new();
        let kept = |m: &MemberRecord| keep(&m.conn_id);
        let now_ms = protocol::clock::now_ms();
        for room in rooms {
            let mut r = room.lock();
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut r.members)
                .into_iter()
                .partition(|m| m.node == node && !kept(m));
            r.members = kept;
            // As if they left one by one: the last one out empties the room.
            let emptied = !gone.is_empty() && r.members.is_empty();
            if emptied {
                r.expires_at = Some(now_ms + r.config.ttl_secs * 1000);
            }
            let last = gone.len().saturating_sub(1);
            removed.extend(gone.into_iter().enumerate().map(|(i, member)| Departed {
                room: r.name.clone(),
                member,
                vacated: emptied && i == last,
            }));
        }
        Ok(removed)
    }

    async fn maintain(&self, now_ms: u64) -> Result<Vec<String>, StateError> {
        if self.archiving.load(Ordering::Acquire) {
            // Rooms leave through the sleep sweep, saved first (`ArchiveFeed::forget_slept`).
            return Ok(Vec::new());
        }
        let mut rooms = self.rooms.write();
        let mut expired = Vec::new();
        rooms.retain(|name, room| {
            let mut r = room.lock();
            if r.expired(now_ms) && r.members.is_empty() {
                r.closed = true;
                self.ephemeral.learn(name, false);
                expired.push(name.clone());
                false
            } else {
                true
            }
        });
        Ok(expired)
    }

    async fn health(&self) -> Result<(), StateError> {
        Ok(())
    }

    async fn reset_epoch(&self, room: &str, old_epoch: &str) -> Result<(String, bool), StateError> {
        self.with_room(room, None, |r| {
            if r.epoch != old_epoch {
                return Ok((r.epoch.clone(), false));
            }
            r.epoch = new_epoch();
            r.offset = 0;
            r.arch = 0;
            r.history.clear();
            Ok((r.epoch.clone(), true))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ephemeral_publishes_reach_the_sink_unsequenced_in_order() {
        let state = MemoryState::new();
        let seen: Arc<Mutex<Vec<Publication>>> = Arc::default();
        let sink = seen.clone();
        state.set_sink(Arc::new(move |p| sink.lock().push(p.clone())));
        let config = RoomConfig {
            max_members: None,
            history_size: 0,
            ttl_secs: 60,
        };
        state.create("r", &config, 1).await.unwrap();
        let a = MemberRecord {
            user: "a".into(),
            conn_id: "c1".into(),
            node: "n".into(),
            info: None,
        };
        state.join("r", &a, None, 1).await.unwrap();
        for n in 0..5 {
            let data = Data::from_value(&serde_json::json!(n)).unwrap();
            state
                .publish_ephemeral("r", "c1", "a", data, 2)
                .await
                .unwrap();
        }
        let seen = seen.lock().clone();
        let data: Vec<&str> = seen.iter().map(|p| p.data.as_json()).collect();
        assert_eq!(data, ["0", "1", "2", "3", "4"]);
        assert!(seen.iter().all(|p| p.is_ephemeral() && p.epoch.is_empty()));
        assert_eq!(state.info("r").await.unwrap().offset, 0);
        // The in-process store checks membership on this path too: it costs nothing here.
        let data = Data::from_value(&serde_json::json!(9)).unwrap();
        assert_eq!(
            state
                .publish_ephemeral("r", "stranger", "s", data, 2)
                .await
                .unwrap_err(),
            StateError::NotMember
        );
    }
}
