//! Rooms and messages that outlive Redis: the archive, in PostgreSQL (a cluster of gateways)
//! or SQLite (a single node), behind one trait. See docs/archive.md for the schema, the choice
//! of sqlx and how it scales.
//!
//! Map of the crate:
//! - [`archive`]: the [`Archive`] trait: append batches (idempotent by `(room, epoch,
//!   offset)`), page a room's messages, the high-water mark, sleeping rooms (save, load,
//!   close), retention and erasure. Every rule about input (caps, bounds, what is an error) is
//!   written there, once, and checked by the conformance suite.
//! - [`model`]: plain data through the trait: [`SleepingRoom`], the limits ([`MAX_PAGE`]).
//! - [`error`]: [`ArchiveError`]: bad input, not found, unavailable (safe to retry), internal.
//! - `rows`: what both backends share: validation of a batch, the payload as MessagePack
//!   (`protocol::Data`'s own encoding, so byte strings stay `bin`), rows back into
//!   [`protocol::Publication`]s, sqlx errors into [`ArchiveError`].
//! - [`postgres`]: [`PostgresArchive`], one batch = one `INSERT ... SELECT FROM UNNEST`.
//! - [`sqlite`]: [`SqliteArchive`], one batch = one transaction; WAL, `synchronous=FULL`.
//! - [`mod@open`]: [`open()`] an archive from a `--archive` URL (`postgres://…`, `sqlite://PATH`),
//!   running the versioned migrations (`migrations/{postgres,sqlite}/`) first.
//! - [`testsuite`]: the conformance suite both backends pass unchanged.
//!
//! The crate knows only `protocol`: the gateway turns room-state's types into these.

pub mod archive;
pub mod error;
pub mod model;
pub mod open;
pub mod postgres;
mod rows;
pub mod sqlite;
pub mod testsuite;

pub use archive::Archive;
pub use error::ArchiveError;
pub use model::{SleepingRoom, MAX_PAGE};
pub use open::open;
pub use postgres::PostgresArchive;
pub use sqlite::SqliteArchive;
