//! The archiver: copies every acknowledged message from the rooms' histories into the archive
//! (`--archive`), off the publish path, at least once and stored once by `(room, epoch,
//! offset)`. [`retention`] is its other chore, `--archive-retention`.
//!
//! Each node runs one archiver task. The rooms with messages not yet archived are listed in
//! [`ARCHIVE_SHARDS`] dirty-room shards (room-state's [`ArchiveFeed`]); a node works the shards
//! whose lease it holds, so each shard has one archiver, and a killed node's shards are taken
//! over once its leases lapse ([`LEASE_TTL`]). A round: per held shard, up to
//! [`ROOMS_PER_ROUND`] dirty rooms, oldest mark first, and their messages after each room's
//! cursor, up to [`BATCH`] per shard; one `append` of the round's messages (one transaction);
//! then, only after the commit, each room's cursor is moved. Rounds follow each other at once
//! ([`ROUND`]) while there is a backlog, and a second apart otherwise: a room costs the same
//! few Redis calls per round however many messages it carries. A crash between the commit and
//! the cursor re-sends the batch, which the archive's primary key skips. A failed append moves
//! nothing: the history keeps the messages (it is not trimmed past the cursor) and the round
//! is retried with backoff. After the round, each held shard's rooms empty past their TTL are
//! put to sleep ([`sleep`]).

mod retention;
mod sleep;

use crate::clock::now_ms;
use crate::node::Node;
use archive::{Archive, ArchiveError};
use protocol::frame::Publication;
use room_state::{ArchiveFeed, StateError, ARCHIVE_SHARDS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How soon the next round starts when the last one left a backlog (a shard's dirty list or a
/// batch was full): the archiver catches up as fast as one round after another goes.
pub const ROUND: Duration = Duration::from_millis(200);
/// How soon otherwise: with nothing dirty, or rooms that stay dirty only because new messages
/// keep coming (a round reads all they had). A room's round costs four Redis calls whatever
/// it carries, so rounds this far apart carry more messages each: under the chat shape (100
/// rooms of 10) at 338 publishes/s, rounds every 200 ms took the cluster's commands from 6,884
/// per second without the archive to 11,757, and a second apart to 9,403 (`INFO
/// commandstats`, docs/bench/archive.md). The price is archive lag: a message reaches the
/// archive about a second after its publish.
///
/// The embedded backend keeps [`ROUND`]: its rounds cost no round trips, and what it has not
/// archived is what a kill -9 of the node loses.
const CALM_ROUND: Duration = Duration::from_secs(1);
/// Messages per append, over all the rooms of a round.
pub const BATCH: usize = 500;
/// Dirty rooms read per shard and round.
pub const ROOMS_PER_ROUND: usize = 64;
/// A shard's lease lasts this long without renewal: how long a killed node's shards wait.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often leases are renewed (and free shards taken).
const LEASE_RENEW: Duration = Duration::from_secs(2);
/// Backoff after a failed round, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A running archiver (and its retention task), stopped by [`Archiver::stop`].
pub struct Archiver {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Archiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Archiver")
    }
}

/// Starts the archiver when the node has an archive; turns on the dirty marks first, so no
/// publish acknowledged from here on goes unnoticed.
pub fn start(node: &Arc<Node>) -> Option<Archiver> {
    let archive = node.archive()?.clone();
    let feed = node.backends.archive_feed.clone();
    feed.enable_archiving(node.config.archive_backlog_cap);
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(run(
        node.clone(),
        archive.clone(),
        feed.clone(),
        stop_rx.clone(),
    ))];
    if let Some(keep) = node.config.archive_retention {
        tasks.push(tokio::spawn(retention::run(
            node.clone(),
            archive,
            feed,
            keep,
            stop_rx,
        )));
    }
    Some(Archiver { stop, tasks })
}

impl Archiver {
    /// The last stage of a drain: one more round (what was published until the end is
    /// archived), then the leases are given up so that another node takes the shards at once.
    /// Waits at most `within`.
    pub async fn stop(self, within: Duration) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("archiver did not stop in time; its shards move after the lease");
        }
    }
}

/// What one round saw, over the shards this node holds.
#[derive(Debug, Default)]
struct Round {
    /// A backlog is left (a dirty list or a batch was full): go again soon.
    more: bool,
    lag_messages: u64,
    /// The oldest dirty mark seen (ms), if any.
    oldest_mark_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("room state: {0}")]
    State(#[from] StateError),
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
}

async fn run(
    node: Arc<Node>,
    archive: Arc<dyn Archive>,
    feed: Arc<dyn ArchiveFeed>,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = &node.metrics.archive;
    // Per shard: until when (local clock) this node may work it.
    let mut held: Vec<Option<tokio::time::Instant>> = vec![None; ARCHIVE_SHARDS as usize];
    let mut next_renew = tokio::time::Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let calm = if node.config.redis_cluster.is_empty() {
        ROUND
    } else {
        CALM_ROUND
    };
    loop {
        let stopping = *stop.borrow();
        let now = tokio::time::Instant::now();
        if now >= next_renew && !stopping {
            renew_leases(&node, feed.as_ref(), &mut held).await;
            next_renew = now + LEASE_RENEW;
        }
        let result = round(archive.as_ref(), feed.as_ref(), &held, &node).await;
        let pause = match result {
            Ok(round) => {
                backoff = FIRST_BACKOFF;
                metrics.lag_messages.set(round.lag_messages as i64);
                let lag_ms = round
                    .oldest_mark_ms
                    .map_or(0, |t| now_ms().saturating_sub(t));
                metrics.lag_seconds.set((lag_ms / 1000) as i64);
                if round.more {
                    ROUND
                } else {
                    calm
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "archive round failed");
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
        };
        if stopping {
            sleep::save_dying(archive.as_ref(), feed.as_ref(), &node).await;
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    for (shard, until) in held.iter().enumerate() {
        if until.is_some() {
            let _ = feed
                .release_lease(&shard_lease(shard as u64), &node.id)
                .await;
        }
    }
    metrics.shards_held.set(0);
}

fn shard_lease(shard: u64) -> String {
    format!("archive:{shard}")
}

/// Takes free shards and renews held ones. A shard whose renewal fails is worked until its
/// local expiry, which errs early (measured from before the request).
async fn renew_leases(
    node: &Node,
    feed: &dyn ArchiveFeed,
    held: &mut [Option<tokio::time::Instant>],
) {
    let ttl = LEASE_TTL.as_millis() as u64;
    for (shard, until) in held.iter_mut().enumerate() {
        let asked = tokio::time::Instant::now();
        match feed
            .lease(&shard_lease(shard as u64), &node.id, ttl, now_ms())
            .await
        {
            Ok(true) => *until = Some(asked + LEASE_TTL - LEASE_RENEW),
            Ok(false) => *until = None,
            Err(e) => {
                tracing::debug!(error = %e, shard, "archive lease renewal failed");
                if until.is_some_and(|t| t <= tokio::time::Instant::now()) {
                    *until = None;
                }
            }
        }
    }
    let count = held.iter().filter(|h| h.is_some()).count();
    node.metrics.archive.shards_held.set(count as i64);
}

/// One round over the held shards: every shard's dirty rooms read, their messages appended
/// as one batch (one transaction for the round, not one per shard), then the cursors moved
/// and each shard's expired rooms put to sleep.
async fn round(
    archive: &dyn Archive,
    feed: &dyn ArchiveFeed,
    held: &[Option<tokio::time::Instant>],
    node: &Node,
) -> Result<Round, RoundError> {
    let now = tokio::time::Instant::now();
    let mut total = Round::default();
    let mut batch = Vec::new();
    let mut reads = Vec::new();
    let mut shards = Vec::new();
    for (shard, until) in held.iter().enumerate() {
        if !until.is_some_and(|t| t > now) {
            continue;
        }
        read_shard(feed, shard as u64, &mut batch, &mut reads, &mut total).await?;
        shards.push(shard as u64);
    }
    append(archive, &batch, node).await?;
    for read in reads {
        // Still dirty (messages arrived since the read) is the steady state of a busy room,
        // not a backlog: the next round reads them.
        feed.advance_cursor(&read.room, &read.epoch, read.upto, read.mark_ms)
            .await?;
    }
    for shard in shards {
        // Sleeping is not archiving: a sweep that fails (it is retried next round) must not
        // hold up the other shards' sweeps.
        if let Err(e) = sleep::sweep(archive, feed, shard, node).await {
            tracing::warn!(error = %e, shard, "sleep sweep failed");
        }
    }
    Ok(total)
}

/// A room read in this round, to move its cursor once the batch is committed.
struct Read {
    room: String,
    epoch: String,
    upto: u64,
    /// When it was read: the mark a room still dirty after the round gets. Its unarchived
    /// messages are then newer than this, so the lag in seconds (the oldest mark) measures
    /// them, not how long the room has been busy; and a busy room goes behind the rooms
    /// marked before it rather than first again, so a shard with more busy rooms than a round
    /// reads still gets to all of them.
    mark_ms: u64,
}

/// Reads one shard's dirty rooms, up to [`BATCH`] messages, into `batch`; what each room's
/// cursor moves to once they are committed, into `reads`.
async fn read_shard(
    feed: &dyn ArchiveFeed,
    shard: u64,
    batch: &mut Vec<Publication>,
    reads: &mut Vec<Read>,
    round: &mut Round,
) -> Result<(), RoundError> {
    let dirty = feed.dirty_rooms(shard, ROOMS_PER_ROUND).await?;
    round.more |= dirty.len() == ROOMS_PER_ROUND;
    let mut taken = 0;
    for d in dirty {
        if taken >= BATCH {
            round.more = true;
            break;
        }
        round.oldest_mark_ms = Some(
            round
                .oldest_mark_ms
                .map_or(d.since_ms, |t| t.min(d.since_ms)),
        );
        // What is left after this read is newer than this: a room still dirty after the
        // round is marked again with it (see `Read::mark_ms`).
        let read_ms = now_ms();
        let Some(read) = feed.read_unarchived(&d.room, BATCH - taken).await? else {
            continue;
        };
        round.lag_messages += read.offset.saturating_sub(read.cursor);
        // No message after the cursor although the offset is past it: they are not in the
        // history (it was trimmed before the archive was turned on, or lost with a Redis
        // primary and its epoch retired): nothing to copy, move on.
        let upto = read.messages.last().map_or(read.offset, |m| m.offset);
        if let Some(first) = read.messages.first() {
            if first.offset > read.cursor + 1 {
                tracing::warn!(room = %d.room, from = read.cursor + 1, to = first.offset - 1, "messages missing from the history were not archived");
            }
        }
        // A room with more after what was read is a backlog.
        if upto < read.offset {
            round.more = true;
        }
        taken += read.messages.len();
        batch.extend(read.messages);
        reads.push(Read {
            room: d.room,
            epoch: read.epoch,
            upto,
            mark_ms: read_ms,
        });
    }
    Ok(())
}

/// Appends a round's messages (one transaction), counting what was stored.
async fn append(
    archive: &dyn Archive,
    batch: &[Publication],
    node: &Node,
) -> Result<(), RoundError> {
    if batch.is_empty() {
        return Ok(());
    }
    let metrics = &node.metrics.archive;
    match archive.append(batch).await {
        Ok(stored) => {
            metrics
                .messages
                .with_label_values(&["stored"])
                .inc_by(stored);
            metrics
                .messages
                .with_label_values(&["duplicate"])
                .inc_by((batch.len() as u64).saturating_sub(stored));
            Ok(())
        }
        Err(e) => {
            metrics
                .messages
                .with_label_values(&["failed"])
                .inc_by(batch.len() as u64);
            Err(e.into())
        }
    }
}
