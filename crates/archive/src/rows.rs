//! What both backends share: input checks, the payload encoding, rows back into messages,
//! and what a sqlx error means for the caller.

use crate::error::ArchiveError;
use crate::model::{SleepingRoom, MAX_PAGE};
use protocol::{Data, Publication};

/// A message as the tables hold it.
pub(crate) struct MessageRow {
    pub room: String,
    pub epoch: String,
    pub offset: i64,
    pub user_id: String,
    pub created_ms: i64,
    pub payload: Vec<u8>,
}

/// A sleeping room as the tables hold it.
pub(crate) struct RoomRow {
    pub room: String,
    pub epoch: String,
    pub offset: i64,
    pub max_members: Option<i64>,
    pub history_size: i64,
    pub ttl_secs: i64,
    pub created_ms: i64,
    pub saved_ms: i64,
}

pub(crate) fn to_i64(n: u64, what: &str) -> Result<i64, ArchiveError> {
    i64::try_from(n).map_err(|_| ArchiveError::BadInput(format!("{what} {n} is past i64::MAX")))
}

fn from_i64(n: i64, what: &str) -> Result<u64, ArchiveError> {
    u64::try_from(n).map_err(|_| ArchiveError::Internal(format!("stored {what} {n} is negative")))
}

fn non_empty(s: &str, what: &str) -> Result<(), ArchiveError> {
    if s.is_empty() {
        return Err(ArchiveError::BadInput(format!("empty {what}")));
    }
    no_nul(s, what)
}

/// PostgreSQL's `text` cannot hold NUL; refused on both backends alike.
fn no_nul(s: &str, what: &str) -> Result<(), ArchiveError> {
    if s.contains('\0') {
        return Err(ArchiveError::BadInput(format!("NUL in {what}")));
    }
    Ok(())
}

/// The payload as stored: `Data`'s MessagePack encoding, byte strings as `bin`.
fn encode(data: &Data) -> Result<Vec<u8>, ArchiveError> {
    rmp_serde::to_vec(data).map_err(|e| ArchiveError::Internal(format!("encode payload: {e}")))
}

/// A stored payload back into `Data`, checked like any MessagePack from outside (depth first,
/// then the `$bin` rule), so a corrupt row is an error and never a panic.
fn decode(bytes: &[u8]) -> Result<Data, ArchiveError> {
    if !protocol::msgpack_depth::depth_within(bytes, protocol::data::MAX_DEPTH + 1) {
        return Err(ArchiveError::Internal(
            "stored payload nests too deeply".into(),
        ));
    }
    rmp_serde::from_slice(bytes)
        .map_err(|e| ArchiveError::Internal(format!("corrupt stored payload: {e}")))
}

/// The names a read or a purge is given: no NUL (PostgreSQL would refuse the query; SQLite
/// answers the same way for consistency). Empty names are allowed: they match nothing.
pub(crate) fn check_names(names: &[&str]) -> Result<(), ArchiveError> {
    names.iter().try_for_each(|n| no_nul(n, "a name"))
}

/// Checks a whole batch before anything is written, and sorts it by key: concurrent batches
/// that overlap (two archivers during a hand-over) then take row locks in the same order and
/// wait for each other instead of deadlocking.
pub(crate) fn message_rows(batch: &[Publication]) -> Result<Vec<MessageRow>, ArchiveError> {
    let mut rows = batch
        .iter()
        .map(|p| {
            non_empty(&p.room, "room")?;
            non_empty(&p.epoch, "epoch")?;
            no_nul(&p.from, "user")?;
            if p.is_ephemeral() {
                return Err(ArchiveError::BadInput(format!(
                    "offset 0 in room {:?}: ephemeral messages are not archived",
                    p.room
                )));
            }
            Ok(MessageRow {
                room: p.room.clone(),
                epoch: p.epoch.clone(),
                offset: to_i64(p.offset, "offset")?,
                user_id: p.from.clone(),
                created_ms: to_i64(p.ts, "ts")?,
                payload: encode(&p.data)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_unstable_by(|a, b| (&a.room, &a.epoch, a.offset).cmp(&(&b.room, &b.epoch, b.offset)));
    Ok(rows)
}

/// A row read back: (room, epoch, offset, user_id, created_ms, payload).
pub(crate) fn publication(
    room: String,
    epoch: String,
    offset: i64,
    user_id: String,
    created_ms: i64,
    payload: &[u8],
) -> Result<Publication, ArchiveError> {
    Ok(Publication {
        room,
        epoch,
        offset: from_i64(offset, "offset")?,
        from: user_id,
        data: decode(payload)?,
        ts: from_i64(created_ms, "created_ms")?,
    })
}

/// The `"offset" < before` bound and the row limit of a page, or `None` for an empty page.
pub(crate) fn page_bounds(before: Option<u64>, limit: usize) -> Option<(i64, i64)> {
    let limit = limit.min(MAX_PAGE);
    let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
    if limit == 0 || before <= 1 {
        return None;
    }
    // MAX_PAGE fits: the cast cannot truncate.
    Some((before, limit as i64))
}

pub(crate) fn room_row(room: &SleepingRoom) -> Result<RoomRow, ArchiveError> {
    non_empty(&room.room, "room")?;
    non_empty(&room.epoch, "epoch")?;
    Ok(RoomRow {
        room: room.room.clone(),
        epoch: room.epoch.clone(),
        offset: to_i64(room.offset, "offset")?,
        max_members: room.max_members.map(i64::from),
        history_size: i64::from(room.history_size),
        ttl_secs: to_i64(room.ttl_secs, "ttl_secs")?,
        created_ms: to_i64(room.created_ms, "created_ms")?,
        saved_ms: to_i64(room.saved_ms, "saved_ms")?,
    })
}

pub(crate) fn sleeping_room(row: RoomRow) -> Result<SleepingRoom, ArchiveError> {
    let small = |n: i64, what: &str| {
        u32::try_from(n)
            .map_err(|_| ArchiveError::Internal(format!("stored {what} {n} out of range")))
    };
    Ok(SleepingRoom {
        room: row.room,
        epoch: row.epoch,
        offset: from_i64(row.offset, "offset")?,
        max_members: row
            .max_members
            .map(|n| small(n, "max_members"))
            .transpose()?,
        history_size: small(row.history_size, "history_size")?,
        ttl_secs: from_i64(row.ttl_secs, "ttl_secs")?,
        created_ms: from_i64(row.created_ms, "created_ms")?,
        saved_ms: from_i64(row.saved_ms, "saved_ms")?,
    })
}

/// What a sqlx error means for the caller: [`ArchiveError::Unavailable`] when the database
/// could not be reached or refused for now (retry), [`ArchiveError::Internal`] otherwise.
pub(crate) fn db_error(e: sqlx::Error) -> ArchiveError {
    use sqlx::Error as E;
    match &e {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
            ArchiveError::Unavailable(e.to_string())
        }
        E::Database(db) if db.code().is_some_and(|c| retryable_code(&c)) => {
            ArchiveError::Unavailable(e.to_string())
        }
        _ => ArchiveError::Internal(e.to_string()),
    }
}

/// PostgreSQL SQLSTATEs (5 characters) and SQLite result codes (numbers) that mean "not now".
fn retryable_code(code: &str) -> bool {
    if let Ok(sqlite) = code.parse::<i64>() {
        // SQLITE_BUSY, SQLITE_LOCKED, with their extended codes (low byte).
        return matches!(sqlite & 0xff, 5 | 6);
    }
    // 08: connection exception; 53: insufficient resources (too many connections, disk
    // full); 57P01-03: shutdown, crash shutdown, cannot connect now; 40001, 40P01:
    // serialization failure, deadlock.
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
}
