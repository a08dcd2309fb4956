//! The PostgreSQL archive, for a cluster of gateways.
//!
//! One batch is one statement (`INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT DO
//! NOTHING`): one round trip and one transaction whatever the batch size, and duplicates
//! inside a batch or against stored rows are skipped by the primary key.

use crate::archive::Archive;
use crate::error::ArchiveError;
use crate::model::SleepingRoom;
use crate::rows::{self, db_error, MessageRow, RoomRow};
use async_trait::async_trait;
use protocol::Publication;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::Row;
use std::time::Duration;

/// An archive in PostgreSQL, over a pool of connections.
#[derive(Clone)]
pub struct PostgresArchive {
    pool: PgPool,
}

impl std::fmt::Debug for PostgresArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresArchive").finish_non_exhaustive()
    }
}

const COLUMNS: &str = r#"room, epoch, "offset", user_id, created_ms, payload"#;

impl PostgresArchive {
    /// Connects (`postgres://user@host:port/db`), and runs the migrations that are not yet
    /// applied (`migrations/postgres/`; sqlx holds an advisory lock meanwhile, so gateways
    /// starting together apply each once).
    ///
    /// Errors: [`ArchiveError::Unavailable`] when the server cannot be reached,
    /// [`ArchiveError::Setup`] for a bad URL or a failed migration.
    pub async fn connect(url: &str, max_connections: u32) -> Result<PostgresArchive, ArchiveError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| match e {
                sqlx::Error::Configuration(e) => ArchiveError::Setup(format!("postgres URL: {e}")),
                e => db_error(e),
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| ArchiveError::Setup(format!("postgres migrations: {e}")))?;
        Ok(PostgresArchive { pool })
    }

    /// The pool, for tests and metrics.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn message(row: &PgRow) -> Result<Publication, ArchiveError> {
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
impl Archive for PostgresArchive {
    async fn append(&self, batch: &[Publication]) -> Result<u64, ArchiveError> {
        let rows = rows::message_rows(batch)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        let (mut room, mut epoch, mut offset) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut user, mut created, mut payload) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for MessageRow {
            room: r,
            epoch: e,
            offset: o,
            user_id: u,
            created_ms: c,
            payload: p,
        } in rows
        {
            room.push(r);
            epoch.push(e);
            offset.push(o);
            user.push(u);
            created.push(c);
            payload.push(p);
        }
        let done = sqlx::query(&format!(
            "INSERT INTO messages ({COLUMNS}) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::bytea[]) \
             ON CONFLICT DO NOTHING"
        ))
        .bind(room)
        .bind(epoch)
        .bind(offset)
        .bind(user)
        .bind(created)
        .bind(payload)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected())
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
               WHERE room = $1 AND epoch = $2 AND "offset" < $3
               ORDER BY "offset" DESC LIMIT $4"#
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
            r#"SELECT MAX("offset") FROM messages WHERE room = $1 AND epoch = $2"#,
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
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
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
               FROM rooms WHERE room = $1"#,
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
        let done = sqlx::query("DELETE FROM rooms WHERE room = $1")
            .bind(room)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn drop_older_than(&self, before_ms: u64) -> Result<u64, ArchiveError> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        let done = sqlx::query("DELETE FROM messages WHERE created_ms < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn purge_room(&self, room: &str) -> Result<u64, ArchiveError> {
        rows::check_names(&[room])?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let messages = sqlx::query("DELETE FROM messages WHERE room = $1")
            .bind(room)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?
            .rows_affected();
        let record = sqlx::query("DELETE FROM rooms WHERE room = $1")
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
        let done = sqlx::query("DELETE FROM messages WHERE user_id = $1")
            .bind(user)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }
}
