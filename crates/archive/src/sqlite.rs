//! The SQLite archive, for a single node (`make run` keeps its rooms across restarts).
//!
//! One file, WAL journal (readers do not wait for the writer), `synchronous=FULL` (a
//! committed batch survives a power cut, not only a crash of the process), one batch = one
//! transaction of multi-row inserts (100 rows each). Parameters are SQLite's numbered `?N`
//! (the batch insert's are sqlx's `?`).

use crate::archive::Archive;
use crate::error::ArchiveError;
use crate::model::SleepingRoom;
use crate::rows::{self, db_error, RoomRow};
use async_trait::async_trait;
use protocol::Publication;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;
use std::path::Path;
use std::time::Duration;

/// An archive in one SQLite file.
#[derive(Clone)]
pub struct SqliteArchive {
    pool: SqlitePool,
}

impl std::fmt::Debug for SqliteArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteArchive").finish_non_exhaustive()
    }
}

const COLUMNS: &str = r#"room, epoch, "offset", user_id, created_ms, payload"#;

/// Rows per `INSERT` statement: 6 parameters each, far below SQLite's limit (32,766).
const ROWS_PER_INSERT: usize = 100;

impl SqliteArchive {
    /// Opens (creating it and its directory when missing) the database file at `path`, and
    /// runs the migrations not yet applied (`migrations/sqlite/`). Called once at start: the
    /// directory is created with a blocking call.
    ///
    /// Errors: [`ArchiveError::Setup`] when the directory cannot be created or for a failed
    /// migration; [`ArchiveError::Unavailable`] or [`ArchiveError::Internal`] when the file
    /// cannot be opened (busy; not a database).
    pub async fn open(path: &Path) -> Result<SqliteArchive, ArchiveError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                ArchiveError::Setup(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(db_error)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| ArchiveError::Setup(format!("sqlite migrations: {e}")))?;
        Ok(SqliteArchive { pool })
    }

    /// The pool, for tests and metrics.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn message(row: &SqliteRow) -> Result<Publication, ArchiveError> {
    rows::publication(
        row.try_get("room").map_err(db_error)?,
        row.try_get("epoch").map_err(db_error)?,
        row.try_get("offset").map_err(db_error)?,
        row.try_get("user_id").map_err(db_error)?,
        row.try_get("created_ms").map_err(db_error)?,
        row.try_get::<&[u8], _>("payload").map_err(db_error)?,
    )
}

#[async_trait]
impl Archive for SqliteArchive {
    async fn append(&self, batch: &[Publication]) -> Result<u64, ArchiveError> {
        let rows = rows::message_rows(batch)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let mut inserted = 0;
        // Multi-row inserts: each statement is one trip to the connection's worker thread.
        // Full chunks share one statement text, so sqlx's statement cache prepares it once.
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
                "INSERT INTO messages ({COLUMNS}) "
            ));
            insert.push_values(chunk, |mut values, row| {
                values
                    .push_bind(row.room.as_str())
                    .push_bind(row.epoch.as_str())
                    .push_bind(row.offset)
                    .push_bind(row.user_id.as_str())
                    .push_bind(row.created_ms)
                    .push_bind(row.payload.as_slice());
            });
            insert.push(" ON CONFLICT DO NOTHING");
            inserted += insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(db_error)?
                .rows_affected();
        }
        tx.commit().await.map_err(db_error)?;
        Ok(inserted)
    }

    async fn page(
        &self,
        room: &str,
        epoch: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Publication>, ArchiveError> {
        rows::check_names(&[room, epoch])?;
        let Some((before, limit)) = rows::page_bounds(before, limit) else {
            return Ok(Vec::new());
        };
        let found = sqlx::query(&format!(
            r#"SELECT {COLUMNS} FROM messages
               WHERE room = ?1 AND epoch = ?2 AND "offset" < ?3
               ORDER BY "offset" DESC LIMIT ?4"#
        ))
        .bind(room)
        .bind(epoch)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        found.iter().rev().map(message).collect()
    }

    async fn high_water(&self, room: &str, epoch: &str) -> Result<Option<u64>, ArchiveError> {
        rows::check_names(&[room, epoch])?;
        let max: Option<i64> = sqlx::query_scalar(
            r#"SELECT MAX("offset") FROM messages WHERE room = ?1 AND epoch = ?2"#,
        )
        .bind(room)
        .bind(epoch)
        .fetch_one(&self.pool)
        .await
        .map_err(db_error)?;
        max.map(|m| u64::try_from(m).map_err(|_| ArchiveError::Internal(format!("offset {m}"))))
            .transpose()
    }

    async fn save_room(&self, room: &SleepingRoom) -> Result<(), ArchiveError> {
        let r = rows::room_row(room)?;
        sqlx::query(
            r#"INSERT INTO rooms (room, epoch, "offset", max_members, history_size, ttl_secs, created_ms, saved_ms)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
               ON CONFLICT (room) DO UPDATE SET
                 epoch = excluded.epoch, "offset" = excluded."offset",
                 max_members = excluded.max_members, history_size = excluded.history_size,
                 ttl_secs = excluded.ttl_secs, created_ms = excluded.created_ms,
                 saved_ms = excluded.saved_ms
               WHERE rooms.epoch <> excluded.epoch OR rooms."offset" <= excluded."offset""#,
        )
        .bind(r.room)
        .bind(r.epoch)
        .bind(r.offset)
        .bind(r.max_members)
        .bind(r.history_size)
        .bind(r.ttl_secs)
        .bind(r.created_ms)
        .bind(r.saved_ms)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn load_room(&self, room: &str) -> Result<Option<SleepingRoom>, ArchiveError> {
        rows::check_names(&[room])?;
        let row = sqlx::query(
            r#"SELECT room, epoch, "offset", max_members, history_size, ttl_secs, created_ms, saved_ms
               FROM rooms WHERE room = ?1"#,
        )
        .bind(room)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let get = |name: &str| row.try_get::<i64, _>(name).map_err(db_error);
        rows::sleeping_room(RoomRow {
            room: row.try_get("room").map_err(db_error)?,
            epoch: row.try_get("epoch").map_err(db_error)?,
            offset: get("offset")?,
            max_members: row.try_get("max_members").map_err(db_error)?,
            history_size: get("history_size")?,
            ttl_secs: get("ttl_secs")?,
            created_ms: get("created_ms")?,
            saved_ms: get("saved_ms")?,
        })
        .map(Some)
    }

    async fn close_room(&self, room: &str) -> Result<bool, ArchiveError> {
        rows::check_names(&[room])?;
        let done = sqlx::query("DELETE FROM rooms WHERE room = ?1")
            .bind(room)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn drop_older_than(&self, before_ms: u64) -> Result<u64, ArchiveError> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        let done = sqlx::query("DELETE FROM messages WHERE created_ms < ?1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn purge_room(&self, room: &str) -> Result<u64, ArchiveError> {
        rows::check_names(&[room])?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let messages = sqlx::query("DELETE FROM messages WHERE room = ?1")
            .bind(room)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        let record = sqlx::query("DELETE FROM rooms WHERE room = ?1")
            .bind(room)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        tx.commit().await.map_err(db_error)?;
        if messages == 0 && record == 0 {
            return Err(ArchiveError::NotFound);
        }
        Ok(messages)
    }

    async fn purge_user(&self, user: &str) -> Result<u64, ArchiveError> {
        rows::check_names(&[user])?;
        let done = sqlx::query("DELETE FROM messages WHERE user_id = ?1")
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }
}
