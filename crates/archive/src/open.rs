//! An archive from the `--archive` flag's URL.

use crate::archive::Archive;
use crate::error::ArchiveError;
use crate::postgres::PostgresArchive;
use crate::sqlite::SqliteArchive;
use std::path::Path;
use std::sync::Arc;

/// Connections a gateway opens to PostgreSQL: a few batch writers and history reads.
pub const POSTGRES_POOL: u32 = 8;

/// Opens the archive a URL names, migrations applied: `postgres://…` (or `postgresql://…`),
/// or `sqlite://PATH` (a file, created when missing; `sqlite:///abs/path` or
/// `sqlite://relative/path`). `none` is the gateway's business, not this crate's.
///
/// Errors: [`ArchiveError::Setup`] for any other scheme, an empty path, a bad URL or a failed
/// migration; [`ArchiveError::Unavailable`] when the database cannot be reached.
pub async fn open(url: &str) -> Result<Arc<dyn Archive>, ArchiveError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(
            PostgresArchive::connect(url, POSTGRES_POOL).await?,
        ));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(ArchiveError::Setup("sqlite:// needs a file path".into()));
        }
        return Ok(Arc::new(SqliteArchive::open(Path::new(path)).await?));
    }
    // Only the scheme is repeated: a URL may carry a password.
    let scheme = url.split_once("://").map_or("(none)", |(s, _)| s);
    Err(ArchiveError::Setup(format!(
        "archive URL must start with postgres:// or sqlite://, not scheme {scheme:?}"
    )))
}
