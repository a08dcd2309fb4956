//! Rooms go to sleep instead of vanishing. With the archive on, a room empty past its TTL
//! stays in room-state until this sweep has saved it to the archive (`save_room`: its epoch,
//! last offset, options), and only then is it removed, in one atomic step that checks it is
//! still as saved (same epoch and offset, no member). So a room never leaves room-state with
//! messages the archive lacks: one not fully archived waits for the archiver's next rounds.
//! A room is woken again by `crate::wake` when a client asks for it.
//!
//! The sweep of shard K runs on the node holding archive shard K's lease (the rooms index
//! shards are the archive shards), after that shard's archive round: one sweeper per shard.
//!
//! The embedded backend's state dies with the process, so a node draining saves every room
//! ([`save_dying`]) after its last archive round: a restarted single node finds them asleep.

use super::RoundError;
use crate::clock::now_ms;
use crate::node::Node;
use archive::{Archive, SleepingRoom};
use room_state::{ArchiveFeed, SleepState};

/// Rooms put to sleep per shard and round, at most.
pub const SLEEPS_PER_ROUND: usize = 64;

fn record(s: &SleepState, now: u64) -> SleepingRoom {
    SleepingRoom {
        room: s.room.clone(),
        epoch: s.epoch.clone(),
        offset: s.offset,
        max_members: s.config.max_members,
        history_size: s.config.history_size,
        ttl_secs: s.config.ttl_secs,
        created_ms: s.created_at,
        saved_ms: now,
    }
}

/// Puts shard `shard`'s rooms that are due to sleep. Returns how many slept.
pub(super) async fn sweep(
    archive: &dyn Archive,
    feed: &dyn ArchiveFeed,
    shard: u64,
    node: &Node,
) -> Result<usize, RoundError> {
    let now = now_ms();
    let mut slept = 0;
    for room in feed.expired_rooms(shard, now, SLEEPS_PER_ROUND).await? {
        let Some(state) = feed.sleep_state(&room).await? else {
            // Gone already (closed): drops its index entry.
            feed.forget_slept(&room, "", 0, now).await?;
            continue;
        };
        if state.members > 0 {
            // Occupied after all (its index entry was stale): not due.
            continue;
        }
        if state.archived < state.offset {
            // Messages still to archive: normally the archiver's next round has them, but a
            // room whose dirty mark was lost (and that nobody publishes to, to mark it
            // again) would never get there: archive them here; it sleeps in a later round.
            catch_up(archive, feed, &room).await?;
            continue;
        }
        archive.save_room(&record(&state, now)).await?;
        if feed
            .forget_slept(&room, &state.epoch, state.offset, now)
            .await?
        {
            slept += 1;
            node.metrics
                .archive
                .rooms
                .with_label_values(&["slept"])
                .inc();
            tracing::debug!(room, epoch = %state.epoch, offset = state.offset, "room asleep");
        } else {
            // Woken between the read and the removal (a join, a publish): it is awake, so
            // its record goes (a record exists while a room sleeps, see `crate::wake`).
            archive.close_room(&room).await?;
        }
    }
    Ok(slept)
}

/// Archives what `room` has after its cursor (one batch), as an archive round does.
async fn catch_up(
    archive: &dyn Archive,
    feed: &dyn ArchiveFeed,
    room: &str,
) -> Result<(), RoundError> {
    let Some(read) = feed.read_unarchived(room, super::BATCH).await? else {
        return Ok(());
    };
    // No message after the cursor although the offset is past it: they are not in the
    // history any more (see the archive round): nothing to copy.
    let upto = read.messages.last().map_or(read.offset, |m| m.offset);
    if !read.messages.is_empty() {
        archive.append(&read.messages).await?;
    }
    feed.advance_cursor(room, &read.epoch, upto, now_ms())
        .await?;
    Ok(())
}

/// At a drain, after the last archive round: saves every room of a backend whose state dies
/// with the process (the embedded one; a shared backend lists none). A room whose last
/// messages could not be archived is saved with its offset all the same, so that its offsets
/// are never assigned twice; those messages are lost with the process.
pub(super) async fn save_dying(archive: &dyn Archive, feed: &dyn ArchiveFeed, node: &Node) {
    let rooms = match feed.dying_rooms().await {
        Ok(rooms) => rooms,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the rooms to save at drain");
            return;
        }
    };
    let now = now_ms();
    for state in rooms {
        if state.archived < state.offset {
            tracing::warn!(room = %state.room, from = state.archived + 1, to = state.offset, "messages not archived at drain are lost with the process");
        }
        match archive.save_room(&record(&state, now)).await {
            Ok(()) => node
                .metrics
                .archive
                .rooms
                .with_label_values(&["saved_at_drain"])
                .inc(),
            Err(e) => tracing::warn!(error = %e, room = %state.room, "room not saved at drain"),
        }
    }
}
