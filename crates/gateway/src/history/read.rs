//! The two reads behind one history page: the window from room-state, then, only when the
//! window does not fill the page, the archive below it (same epoch).

use super::merge::{archive_request, merge};
use archive::{Archive, ArchiveError};
use protocol::Publication;
use room_state::{RoomStore, StateError};

/// A page of `room`'s current epoch: up to `limit` messages below `before`, oldest first, and
/// the epoch. `requester`, when given, must be a member (checked by room-state before the
/// archive is read). Without an archive this is room-state's `history` unchanged.
///
/// An archive that cannot answer makes the whole page fail (`Unavailable`) rather than come
/// back short: a short page would read as "no older messages".
pub async fn page(
    rooms: &dyn RoomStore,
    archive: Option<&dyn Archive>,
    room: &str,
    requester: Option<&str>,
    limit: usize,
    before: Option<u64>,
) -> Result<(Vec<Publication>, String), StateError> {
    let (window, epoch) = rooms.history(room, requester, limit, before).await?;
    let Some(archive) = archive else {
        return Ok((window, epoch));
    };
    // An ephemeral room has no epoch and keeps nothing.
    if epoch.is_empty() {
        return Ok((window, epoch));
    }
    let Some((below, wanted)) = archive_request(&window, before, limit) else {
        return Ok((window, epoch));
    };
    let older = archive
        .page(room, &epoch, below, wanted)
        .await
        .map_err(from_archive)?;
    Ok((merge(window, older, before, limit), epoch))
}

/// A page of a room that is asleep (not in room-state, saved in the archive): the server API
/// reads it without waking it. `Ok(None)` when the archive has no such room (or there is no
/// archive).
pub async fn page_sleeping(
    archive: Option<&dyn Archive>,
    room: &str,
    limit: usize,
    before: Option<u64>,
) -> Result<Option<(Vec<Publication>, String)>, StateError> {
    let Some(archive) = archive else {
        return Ok(None);
    };
    let Some(saved) = archive.load_room(room).await.map_err(from_archive)? else {
        return Ok(None);
    };
    let messages = match before {
        Some(b) if b <= 1 => Vec::new(),
        _ => archive
            .page(room, &saved.epoch, before, limit)
            .await
            .map_err(from_archive)?,
    };
    Ok(Some((messages, saved.epoch)))
}

/// Archive errors as the callers already report room-state's: retry later, or internal.
pub fn from_archive(e: ArchiveError) -> StateError {
    match e {
        ArchiveError::Unavailable(detail) => StateError::Unavailable(format!("archive: {detail}")),
        other => StateError::Internal(format!("archive: {other}")),
    }
}
