//! Waking a sleeping room: a room that left room-state through the archiver's sleep sweep
//! (`archiver/sleep.rs`) is brought back, when a client asks for it, from its record in the
//! archive: the same epoch, offsets going on from its last one, its options, and its history
//! window read back, so that a client's `since` and `history` work across the sleep.
//!
//! The record is consumed by the node that makes the room (closed in the archive once
//! room-state has it): a record exists while the room sleeps, not while it is awake. So a room
//! lost from room-state later (state loss, or a crash of the embedded backend) is not woken
//! from an old record: it is unknown, as before the archive, and comes back only through
//! `create_room`, with a new epoch.

use crate::clock::now_ms;
use crate::history::from_archive;
use crate::node::Node;
use room_state::{RoomConfig, StateError, Wake};

/// What [`wake`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// The node has no archive: rooms do not sleep.
    NoArchive,
    /// The archive has no sleeping record of the room. (Another node may have just woken
    /// it and consumed the record: a caller that found the room missing asks room-state
    /// once more.)
    NotAsleep,
    /// The room is in room-state now: woken by this call, or by another node at the same
    /// time (room-state's `wake` is atomic: one of them makes it, with one epoch).
    Awake,
}

/// Wakes `room` if it sleeps in the archive.
pub async fn wake(node: &Node, room: &str) -> Result<Woke, StateError> {
    let Some(archive) = node.archive().cloned() else {
        return Ok(Woke::NoArchive);
    };
    let Some(saved) = archive.load_room(room).await.map_err(from_archive)? else {
        return Ok(Woke::NotAsleep);
    };
    // A record left behind (a waker that died before consuming it) must never take the
    // offset back below what the archive holds: offsets are not assigned twice.
    let high = archive
        .high_water(room, &saved.epoch)
        .await
        .map_err(from_archive)?
        .unwrap_or(0);
    let offset = saved.offset.max(high);
    let config = RoomConfig {
        max_members: saved.max_members,
        history_size: saved.history_size,
        ttl_secs: saved.ttl_secs.max(1),
    };
    let history = if config.is_ephemeral() || offset == 0 {
        Vec::new()
    } else {
        let window = (config.history_size as usize).min(archive::MAX_PAGE);
        archive
            .page(room, &saved.epoch, Some(offset.saturating_add(1)), window)
            .await
            .map_err(from_archive)?
    };
    let woken = Wake {
        epoch: saved.epoch.clone(),
        offset,
        config,
        created_at: saved.created_ms,
        history,
    };
    match node.backends.rooms.wake(room, &woken, now_ms()).await {
        Ok(_) => {}
        // Awake already: another node woke it first, or it never left (the record is the
        // sweep's, saved just before it found the room awake again; the sweep removes it).
        Err(StateError::RoomExists) => return Ok(Woke::Awake),
        Err(e) => return Err(e),
    }
    node.metrics
        .archive
        .rooms
        .with_label_values(&["woken"])
        .inc();
    tracing::info!(room, epoch = %saved.epoch, offset, "room woke from the archive");
    // Consumed: the room is awake. Should this fail, the record stays behind; a later wake
    // then finds the room in room-state (RoomExists), and the next sleep overwrites it.
    if let Err(e) = archive.close_room(room).await {
        tracing::warn!(error = %e, room, "could not consume a woken room's sleeping record");
    }
    Ok(Woke::Awake)
}
