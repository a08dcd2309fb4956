//! `RoomStore` on Redis Cluster.

use super::keys::{self, RoomKeys};
use super::{array, fred_error, int, string, RedisState};
use crate::error::StateError;
use crate::memory::new_epoch;
use crate::model::{
    Departed, Departure, Idempotency, JoinOutcome, MemberRecord, Published, Publisher, RoomConfig,
    RoomInfo, Wake,
};
use crate::observer::Command;
use crate::rooms::RoomStore;
use async_trait::async_trait;
use fred::prelude::*;
use fred::types::Value;
use futures_util::StreamExt;
use protocol::envelope::Envelope;
use protocol::frame::{Member, Publication, Since};
use protocol::Data;

impl RedisState {
    fn common_args(&self, now_ms: u64) -> Vec<String> {
        vec![
            new_epoch(),
            self.settings.default_history.to_string(),
            self.settings.default_ttl_ms.to_string(),
            now_ms.to_string(),
        ]
    }

    /// How long an empty room's keys outlive its TTL: while the archive is on, the sleep
    /// sweep removes rooms (saved first), and the keys' own expiry is only a backstop.
    pub(super) fn ttl_extra_ms(&self) -> u64 {
        if self.archiving.load(std::sync::atomic::Ordering::Acquire) {
            crate::archive_feed::SLEEP_BACKSTOP_MS
        } else {
            0
        }
    }

    /// Marks a room occupied (`+inf`) or empty (expiring) in the active-rooms index.
    pub(super) async fn index(&self, room: &str, expires_at: Option<u64>) {
        let score = expires_at.map_or(f64::INFINITY, |t| t as f64);
        let key = keys::room_index(room);
        let r: Result<Value, _> = self
            .on(&key)
            .zadd(&key, None, None, false, false, (score, room))
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, room, "room index update failed");
        }
        if self.archiving.load(std::sync::atomic::Ordering::Acquire) {
            // The sleep sweep's own index: empty rooms only, by when they are due.
            let key = keys::sleep_index(room);
            let r: Result<Value, _> = match expires_at {
                Some(t) => {
                    self.on(&key)
                        .zadd(&key, None, None, false, false, (t as f64, room))
                        .await
                }
                None => self.on(&key).zrem(&key, room).await,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, room, "sleep index update failed");
            }
        }
    }

    async fn track_member(&self, node: &str, room: &str, conn: &str, add: bool) {
        let key = keys::node_members(node);
        let entry = format!("{room}\n{conn}");
        let r: Result<Value, _> = if add {
            self.on(&key).sadd(&key, entry).await
        } else {
            self.on(&key).srem(&key, entry).await
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, node, "node member index update failed");
        }
    }

    async fn leave_inner(
        &self,
        room: &str,
        conn_id: &str,
        now_ms: u64,
    ) -> Result<Option<(MemberRecord, bool)>, StateError> {
        let k = RoomKeys::new(room);
        let reply = array(
            self.eval(
                Command::Leave,
                k.all(),
                vec![conn_id.to_string(), self.ttl_extra_ms().to_string()],
            )
            .await?,
        );
        if int(reply.first())? == 0 {
            return Ok(None);
        }
        let who = string(reply.get(2))?;
        let mut parts = who.splitn(3, '\n');
        let record = MemberRecord {
            user: parts.next().unwrap_or_default().to_string(),
            conn_id: conn_id.to_string(),
            node: parts.next().unwrap_or_default().to_string(),
            info: parts.next().map(str::to_string),
        };
        let vacated = int(reply.get(1))? == 1;
        if vacated {
            // Nobody is left anywhere: the room may expire and come back with other options.
            self.ephemeral.learn(room, false);
            let ttl = self
                .room_ttl(room)
                .await
                .unwrap_or(self.settings.default_ttl_ms);
            self.index(room, Some(now_ms + ttl)).await;
        }
        if !record.node.is_empty() {
            self.track_member(&record.node, room, conn_id, false).await;
        }
        Ok(Some((record, vacated)))
    }

    async fn room_ttl(&self, room: &str) -> Option<u64> {
        let meta = RoomKeys::new(room).meta;
        let v: Option<String> = self.on(&meta).hget(&meta, "ttl").await.ok()?;
        v?.parse().ok()
    }
}

fn members(v: Option<&Value>) -> Vec<Member> {
    member_records(v)
        .iter()
        .map(MemberRecord::to_member)
        .collect()
}

/// Decodes the scripts' `conn\nuser\nnode[\ninfo]` member entries.
fn member_records(v: Option<&Value>) -> Vec<MemberRecord> {
    let Some(Value::Array(items)) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(Value::as_string)
        .map(|s| {
            let mut parts = s.splitn(4, '\n');
            MemberRecord {
                conn_id: parts.next().unwrap_or_default().to_string(),
                user: parts.next().unwrap_or_default().to_string(),
                node: parts.next().unwrap_or_default().to_string(),
                info: parts.next().map(str::to_string),
            }
        })
        .collect()
}

/// Decodes `offset\nfrom\nts\ndata` entries.
pub(super) fn publications(
    room: &str,
    epoch: &str,
    v: Option<&Value>,
) -> Result<Vec<Publication>, StateError> {
    let Some(Value::Array(items)) = v else {
        return Ok(Vec::new());
    };
    items
        .iter()
        .map(|item| {
            let s = item
                .as_string()
                .ok_or_else(|| StateError::Internal("bad history entry".into()))?;
            let mut parts = s.splitn(4, '\n');
            let bad = || StateError::Internal("bad history entry".into());
            let offset = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            let from = parts.next().ok_or_else(bad)?.to_string();
            let ts = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
            let data = Data::from_json_text(parts.next().ok_or_else(bad)?.to_string())
                .map_err(|_| bad())?;
            Ok(Publication {
                room: room.to_string(),
                offset,
                epoch: epoch.to_string(),
                from,
                data,
                ts,
            })
        })
        .collect()
}

/// A publish script's answer for an ephemeral room (see `scripts::publish`).
const EPHEMERAL: i64 = 4;
/// Index entries a maintenance round looks at per index shard: the rest wait for the next.
const EXPIRE_BATCH: i64 = 200;
/// Members a node removal (`remove_node_members`) takes out at once.
const NODE_MEMBERS_IN_FLIGHT: usize = 32;
/// How long past its score an entry of a room that still exists is kept (see `maintain`).
const STALE_INDEX_MS: u64 = 60_000;

/// An ephemeral room's publication: not sequenced, so offset 0 and no epoch (see
/// `protocol::frame::Publication`).
fn ephemeral_publication(room: &str, from: &str, data: Data, now_ms: u64) -> Publication {
    Publication {
        room: room.to_string(),
        offset: Publication::EPHEMERAL_OFFSET,
        epoch: String::new(),
        from: from.to_string(),
        data,
        ts: now_ms,
    }
}

/// A publication's `message` envelope, and the publication back, without copying it.
fn encode_message(p: Publication) -> Result<(bytes::Bytes, Publication), StateError> {
    let envelope = Envelope::Message(p);
    let bytes = envelope
        .encode()
        .map_err(|e| StateError::Internal(e.to_string()))?;
    match envelope {
        Envelope::Message(p) => Ok((bytes.into(), p)),
        _ => Err(StateError::Internal("not a message envelope".into())),
    }
}

fn status(reply: &[Value]) -> Result<(), StateError> {
    match int(reply.first())? {
        // 2: a publish's idempotency key was seen; 4: an ephemeral room's publish (see
        // `scripts::publish`).
        1 | 2 | EPHEMERAL => Ok(()),
        0 => Err(StateError::NotFound),
        -1 => Err(StateError::RoomFull),
        -2 => Err(StateError::NotMember),
        -3 => Err(StateError::Unavailable(
            "the publish reached Redis after its deadline and was not applied".into(),
        )),
        -5 => Err(StateError::Unavailable(
            "the archive is too far behind in this room; retry later".into(),
        )),
        -4 => Err(StateError::Unavailable(
            "a later publish of this connection to this room was sequenced first; this one \
             was not applied, to keep the connection's order"
                .into(),
        )),
        _ => Err(StateError::Internal("unexpected script status".into())),
    }
}

impl RedisState {
    /// When a publish sent now must be applied by, in Redis's clock: the command timeout,
    /// after which the caller answers `timeout`, less a margin for the reply's way back.
    fn publish_deadline(&self) -> i64 {
        let skew = self
            .clock_skew_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        let timeout = self.settings.command_timeout.as_millis() as i64;
        protocol::clock::now_ms() as i64 + skew + timeout * 3 / 4
    }

    /// Reads Redis's clock (`TIME`) and keeps its difference from ours, taken at the middle
    /// of the round trip. A failure keeps the last value.
    async fn measure_clock_skew(&self) {
        let before = protocol::clock::now_ms() as i64;
        let time_cmd =
            fred::types::CustomCommand::new_static("TIME", fred::types::ClusterHash::Random, false);
        let time: Result<Vec<String>, _> = self
            .router
            .any()
            .custom(time_cmd, Vec::<String>::new())
            .await;
        let after = protocol::clock::now_ms() as i64;
        let Ok(time) = time else { return };
        let (Some(secs), Some(micros)) = (
            time.first().and_then(|s| s.parse::<i64>().ok()),
            time.get(1).and_then(|s| s.parse::<i64>().ok()),
        ) else {
            return;
        };
        let server = secs * 1000 + micros / 1000;
        let skew = server - (before + after) / 2;
        self.clock_skew_ms
            .store(skew, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait]
impl RoomStore for RedisState {
    async fn create(
        &self,
        room: &str,
        config: &RoomConfig,
        now_ms: u64,
    ) -> Result<RoomInfo, StateError> {
        let k = RoomKeys::new(room);
        let epoch = new_epoch();
        let ttl_ms = config.ttl_secs.max(1) * 1000;
        let args = vec![
            epoch.clone(),
            config.max_members.unwrap_or(0).to_string(),
            config.history_size.to_string(),
            ttl_ms.to_string(),
            now_ms.to_string(),
            self.ttl_extra_ms().to_string(),
        ];
        let created = self.eval(Command::Create, k.all(), args).await?;
        if created.as_i64() != Some(1) {
            return Err(StateError::RoomExists);
        }
        self.index(room, Some(now_ms + ttl_ms)).await;
        self.ephemeral.learn(room, config.is_ephemeral());
        Ok(RoomInfo {
            room: room.to_string(),
            epoch,
            offset: 0,
            members: Vec::new(),
            config: config.clone(),
            created_at: now_ms,
        })
    }

    async fn wake(&self, room: &str, wake: &Wake, now_ms: u64) -> Result<RoomInfo, StateError> {
        let k = RoomKeys::new(room);
        let config = &wake.config;
        let ttl_ms = config.ttl_secs.max(1) * 1000;
        let mut args = vec![
            wake.epoch.clone(),
            wake.offset.to_string(),
            config.max_members.unwrap_or(0).to_string(),
            config.history_size.to_string(),
            ttl_ms.to_string(),
            wake.created_at.to_string(),
            self.ttl_extra_ms().to_string(),
        ];
        // The window's worth, in offset order (the stream's ids must rise).
        let keep = config.history_size as usize;
        let fits: Vec<&Publication> = wake
            .history
            .iter()
            .filter(|p| p.epoch == wake.epoch && p.offset <= wake.offset && p.offset > 0)
            .collect();
        let mut last = 0;
        for p in fits.iter().skip(fits.len().saturating_sub(keep)) {
            if p.offset <= last {
                continue;
            }
            last = p.offset;
            args.extend([
                p.offset.to_string(),
                p.from.clone(),
                p.ts.to_string(),
                p.data.as_json().to_string(),
            ]);
        }
        let woken = self.eval(Command::Wake, k.all(), args).await?;
        if woken.as_i64() != Some(1) {
            return Err(StateError::RoomExists);
        }
        self.index(room, Some(now_ms + ttl_ms)).await;
        self.ephemeral.learn(room, config.is_ephemeral());
        Ok(RoomInfo {
            room: room.to_string(),
            epoch: wake.epoch.clone(),
            offset: wake.offset,
            members: Vec::new(),
            config: config.clone(),
            created_at: wake.created_at,
        })
    }

    async fn join(
        &self,
        room: &str,
        member: &MemberRecord,
        since: Option<&Since>,
        now_ms: u64,
    ) -> Result<JoinOutcome, StateError> {
        let k = RoomKeys::new(room);
        let mut args = self.common_args(now_ms);
        args.extend([
            member.conn_id.clone(),
            member.user.clone(),
            // The `who` field is `user\nnode`, and `\ninfo` after it when there is info
            // (compact JSON: no line break of its own); the script stores it as it comes.
            match &member.info {
                Some(info) => format!("{}\n{info}", member.node),
                None => member.node.clone(),
            },
            since.map(|s| s.offset.to_string()).unwrap_or_default(),
            since.map(|s| s.epoch.clone()).unwrap_or_default(),
        ]);
        let reply = array(self.eval(Command::Join, k.all(), args).await?);
        status(&reply)?;
        let offset = int(reply.get(1))? as u64;
        let epoch = string(reply.get(2))?;
        let already_member = int(reply.get(3))? == 1;
        let occupied = !already_member && int(reply.get(7))? == 1;
        let recovered = match int(reply.get(5))? {
            -1 => None,
            r => Some(r == 1),
        };
        let missed = publications(room, &epoch, reply.get(6))?;
        // The room's history size: how the gateway learns a room is ephemeral, with the join
        // it makes anyway.
        let ephemeral = int(reply.get(8))? == 0;
        self.ephemeral.learn(room, ephemeral);
        if !already_member {
            if occupied {
                self.index(room, None).await;
            }
            self.track_member(&member.node, room, &member.conn_id, true)
                .await;
        }
        Ok(JoinOutcome {
            offset,
            epoch,
            members: members(reply.get(4)),
            already_member,
            occupied,
            recovered,
            missed,
            ephemeral,
        })
    }

    async fn depart(
        &self,
        room: &str,
        conn_id: &str,
        now_ms: u64,
    ) -> Result<Departure, StateError> {
        Ok(match self.leave_inner(room, conn_id, now_ms).await? {
            Some((_, vacated)) => Departure {
                was_member: true,
                vacated,
            },
            None => Departure::default(),
        })
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
        let k = RoomKeys::new(room);
        let mut keys = k.all();
        if let Some(i) = idempotency {
            keys.push(k.idempotency(room, i.key));
        }
        let mut args = self.common_args(now_ms);
        args.extend([
            publisher.map_or("", |p| p.conn_id).to_string(),
            from.to_string(),
            data.as_json().to_string(),
            k.channel.clone(),
            room.to_string(),
            if self.settings.durable_publish {
                "0"
            } else {
                "1"
            }
            .to_string(),
            idempotency.map_or(String::new(), |i| i.window_ms.to_string()),
            self.publish_deadline().to_string(),
            publisher.map_or(String::new(), |p| p.seq.to_string()),
            if self.archiving.load(std::sync::atomic::Ordering::Acquire) {
                self.archive_backlog_cap
                    .load(std::sync::atomic::Ordering::Acquire)
                    .to_string()
            } else {
                String::new()
            },
        ]);
        // The script and the WAIT on one client, the room's primary's: WAIT follows the
        // write on the connection that carried it.
        let ((reply, client), primary) = self.eval_routed(Command::Publish, keys, args).await?;
        let reply = array(reply);
        status(&reply)?;
        if int(reply.first())? == EPHEMERAL {
            // Published by the script without an offset: nothing to audit, nothing to wait
            // for (nothing was written), and the next publish can skip the script.
            self.ephemeral.learn(room, true);
            return Ok(Published {
                publication: ephemeral_publication(room, from, data, now_ms),
                duplicate: false,
            });
        }
        if reply.get(3).and_then(Value::as_i64) == Some(1) {
            // Marked dirty just now: into the dirty-rooms index (another slot). Once per room
            // per archive round, not per message.
            self.mark_dirty(room, now_ms).await;
        }
        let duplicate = int(reply.first())? == 2;
        let offset = int(reply.get(1))? as u64;
        let epoch = string(reply.get(2))?;
        let publication = Publication {
            room: room.to_string(),
            offset,
            epoch,
            from: from.to_string(),
            data,
            ts: now_ms,
        };
        if let (Some(primary), false) = (primary, duplicate) {
            // The new owner, should the slot move, must hold this: see `audit`. Not a
            // duplicate: its publication carries the retry's time, not the stored message's.
            let slot = fred::util::redis_keyslot(k.meta.as_bytes());
            self.audit.record(self, primary, slot, &publication);
        }
        if self.settings.durable_publish {
            // Only a replicated message is announced. Concurrent durable publishes may be
            // announced out of order; receivers repair the gap from history. The envelope is
            // the codec's own here; the script's Lua-built one takes its names from it. A
            // duplicate is waited for (its first attempt may have ended before the WAIT) but
            // not announced again: this envelope would carry the retry's time, which receivers
            // would take for other content at a delivered offset and retire the epoch. If the
            // first attempt was never announced, the room's next message reveals the gap and
            // it is repaired from history.
            self.wait_for_replica(&client).await?;
            if duplicate {
                return Ok(Published {
                    publication,
                    duplicate,
                });
            }
            let bytes = Envelope::Message(publication.clone())
                .encode()
                .map_err(|e| StateError::Internal(e.to_string()))?;
            let _: Value = client
                .spublish(&k.channel, bytes)
                .await
                .map_err(fred_error)?;
        }
        Ok(Published {
            publication,
            duplicate,
        })
    }

    fn is_ephemeral(&self, room: &str) -> bool {
        self.ephemeral.contains(room)
    }

    /// One SPUBLISH of the envelope on the room's channel, the very envelope the publish
    /// script would build, with offset 0 and an empty epoch: no script, no key read or
    /// written, no WAIT (even with `--durable-publish`: nothing is stored, so there is nothing
    /// to replicate first), no audit. Membership is the caller's check (the gateway's local
    /// registry), because checking it here would need the script this path exists to avoid.
    ///
    /// Sent on the first poll, on the room's primary's connection, like the script: so one
    /// connection's pipelined publishes reach Redis, and its subscribers, in order.
    async fn publish_ephemeral(
        &self,
        room: &str,
        _conn_id: &str,
        from: &str,
        data: Data,
        now_ms: u64,
    ) -> Result<Published, StateError> {
        let (bytes, publication) = encode_message(ephemeral_publication(room, from, data, now_ms))?;
        // Shared buffers: a retry after a MOVED copies nothing.
        let channel = fred::bytes_utils::Str::from(protocol::channel::room(room));
        let _: Value = self
            .timed(
                Command::EphemeralPublish,
                self.router.run(&channel, |client| {
                    let (channel, bytes) = (channel.clone(), bytes.clone());
                    async move { client.spublish(channel, bytes).await }
                }),
            )
            .await?;
        Ok(Published {
            publication,
            duplicate: false,
        })
    }

    async fn members(
        &self,
        room: &str,
        requester: Option<&str>,
    ) -> Result<Vec<Member>, StateError> {
        let k = RoomKeys::new(room);
        let reply = array(
            self.eval(
                Command::Members,
                k.all(),
                vec![requester.unwrap_or_default().to_string()],
            )
            .await?,
        );
        status(&reply)?;
        Ok(members(reply.get(1)))
    }

    async fn history(
        &self,
        room: &str,
        requester: Option<&str>,
        limit: usize,
        before: Option<u64>,
    ) -> Result<(Vec<Publication>, String), StateError> {
        let k = RoomKeys::new(room);
        let args = vec![
            requester.unwrap_or_default().to_string(),
            limit.to_string(),
            before.map(|b| b.to_string()).unwrap_or_default(),
        ];
        let reply = array(self.eval(Command::History, k.all(), args).await?);
        status(&reply)?;
        let epoch = string(reply.get(1))?;
        Ok((publications(room, &epoch, reply.get(2))?, epoch))
    }

    async fn info(&self, room: &str) -> Result<RoomInfo, StateError> {
        let k = RoomKeys::new(room);
        let reply = array(self.eval(Command::Info, k.all(), Vec::new()).await?);
        status(&reply)?;
        let max = int(reply.get(3))?;
        Ok(RoomInfo {
            room: room.to_string(),
            epoch: string(reply.get(1))?,
            offset: int(reply.get(2))? as u64,
            config: RoomConfig {
                max_members: (max > 0).then_some(max as u32),
                history_size: int(reply.get(4))? as u32,
                ttl_secs: (int(reply.get(5))? as u64) / 1000,
            },
            created_at: int(reply.get(6))? as u64,
            members: members(reply.get(7)),
        })
    }

    async fn close(&self, room: &str) -> Result<Vec<MemberRecord>, StateError> {
        let k = RoomKeys::new(room);
        let reply = array(self.eval(Command::Close, k.all(), Vec::new()).await?);
        self.ephemeral.learn(room, false);
        status(&reply)?;
        let former = member_records(reply.get(1));
        let index = keys::room_index(room);
        let _: Result<Value, _> = self.on(&index).zrem(&index, room).await;
        let sleep = keys::sleep_index(room);
        let _: Result<Value, _> = self.on(&sleep).zrem(&sleep, room).await;
        for m in &former {
            self.track_member(&m.node, room, &m.conn_id, false).await;
        }
        Ok(former)
    }

    async fn count(&self) -> Result<u64, StateError> {
        let now = protocol::clock::now_ms();
        let mut total = 0u64;
        for shard in 0..keys::ROOM_INDEX_SHARDS {
            let key = keys::room_index_shard(shard);
            let n: u64 = self
                .on(&key)
                .zcount(&key, (now + 1) as f64, f64::INFINITY)
                .await
                .map_err(|e| self.failed(e))?;
            total += n;
        }
        Ok(total)
    }

    async fn remove_node_members(
        &self,
        node: &str,
        keep: &(dyn for<'c> Fn(&'c str) -> bool + Send + Sync),
    ) -> Result<Vec<Departed>, StateError> {
        let key = keys::node_members(node);
        let entries: Vec<String> = self
            .on(&key)
            .smembers(&key)
            .await
            .map_err(|e| self.failed(e))?;
        let now = protocol::clock::now_ms();
        let key = &key;
        // Many at a time: a node that held 19,000 members took 25 s one by one, and its
        // ghosts stayed in presence that long.
        // Each entry is `room\nconn`; kept with where its `\n` is.
        let gone = entries.into_iter().filter_map(|entry| {
            let at = entry.find('\n')?;
            (!keep(&entry[at + 1..])).then_some((entry, at))
        });
        let mut leaves = futures_util::stream::iter(gone)
            .map(|(entry, at)| async move {
                let (room, conn) = (&entry[..at], &entry[at + 1..]);
                let left = self.leave_inner(room, conn, now).await?;
                // Entry by entry: the set may hold members the node keeps.
                let _: Result<Value, _> = self.on(key).srem(key, entry.as_str()).await;
                Ok::<_, StateError>(left.map(|(member, vacated)| Departed {
                    room: room.to_string(),
                    member,
                    vacated,
                }))
            })
            .buffer_unordered(NODE_MEMBERS_IN_FLIGHT);
        let mut removed = Vec::new();
        while let Some(left) = leaves.next().await {
            removed.extend(left?);
        }
        Ok(removed)
    }

    async fn maintain(&self, now_ms: u64) -> Result<Vec<String>, StateError> {
        // Redis expires the rooms themselves; this takes them out of the index and reports
        // each once: a room whose score passed and whose meta hash is gone expired (unless it
        // was created again meanwhile, which the script's score check sees). A room still
        // there is left alone (a join's index update may not have landed yet, or Redis has
        // not expired it yet) until its entry is `STALE_INDEX_MS` old: then its index update
        // was lost, and the entry is dropped without a report, as before.
        let mut expired = Vec::new();
        for shard in 0..keys::ROOM_INDEX_SHARDS {
            let key = keys::room_index_shard(shard);
            let due: Vec<(String, f64)> = self
                .on(&key)
                .zrangebyscore(
                    &key,
                    f64::NEG_INFINITY,
                    now_ms as f64,
                    true,
                    Some((0, EXPIRE_BATCH)),
                )
                .await
                .map_err(|e| self.failed(e))?;
            if due.is_empty() {
                continue;
            }
            let mut args = vec![now_ms.to_string()];
            for (room, score) in due {
                let meta = RoomKeys::new(&room).meta;
                let alive: u64 = self
                    .on(&meta)
                    .exists(&meta)
                    .await
                    .map_err(|e| self.failed(e))?;
                let report = match alive {
                    0 => "1",
                    _ if score + (STALE_INDEX_MS as f64) < now_ms as f64 => "0",
                    _ => continue,
                };
                args.push(room);
                args.push(report.to_string());
            }
            if args.len() == 1 {
                continue;
            }
            let reply = self.eval(Command::ExpireRooms, vec![key], args).await?;
            for room in array(reply) {
                if let Value::String(room) = room {
                    expired.push(room.to_string());
                }
            }
        }
        Ok(expired)
    }

    async fn health(&self) -> Result<(), StateError> {
        let _: Value = self
            .router
            .any()
            .ping(None)
            .await
            .map_err(|e| self.failed(e))?;
        self.measure_clock_skew().await;
        Ok(())
    }

    async fn reset_epoch(&self, room: &str, old_epoch: &str) -> Result<(String, bool), StateError> {
        let k = RoomKeys::new(room);
        let reply = array(
            self.eval(
                Command::ResetEpoch,
                k.all(),
                vec![old_epoch.to_string(), new_epoch()],
            )
            .await?,
        );
        status(&reply)?;
        Ok((string(reply.get(2))?, int(reply.get(1))? == 1))
    }
}

impl RedisState {
    /// `WAIT 1` on the connection that wrote `key`, so the publish is on a replica before it is
    /// acknowledged.
    async fn wait_for_replica(&self, client: &Client) -> Result<(), StateError> {
        let timeout = self.settings.durable_timeout.as_millis() as i64;
        // `client` is the room's primary's own client, whose connection carried the write
        // (a replica or a former primary would have answered the script with MOVED).
        let acks: i64 = client.wait(1, timeout).await.map_err(|e| self.failed(e))?;
        if acks >= 1 {
            return Ok(());
        }
        tracing::warn!(acks, "WAIT: no replica acknowledged");
        // The write is on the primary, not known to be on a replica: the outcome is unknown.
        Err(StateError::Timeout(
            "no replica acknowledged the publish".into(),
        ))
    }
}
