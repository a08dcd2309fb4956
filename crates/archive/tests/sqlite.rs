//! The shared conformance suite, run against SQLite: each test in a file of its own, in a
//! temporary directory removed afterwards.

#![allow(clippy::unwrap_used)]

use archive::{testsuite, Archive, SqliteArchive};
use std::path::PathBuf;

/// A fresh database file, removed (with its WAL files) when dropped.
struct TempDb {
    dir: PathBuf,
    archive: SqliteArchive,
}

impl TempDb {
    async fn new(name: &str) -> TempDb {
        let dir = std::env::temp_dir().join(format!(
            "roomcast-archive-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let archive = SqliteArchive::open(&dir.join("archive.db")).await.unwrap();
        TempDb { dir, archive }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let db = TempDb::new(stringify!($name)).await;
            testsuite::$name(&db.archive, "t:").await;
        }
    )*};
}

conformance!(
    idempotent_append,
    concurrent_appends,
    paging,
    page_cap,
    binary_round_trip,
    sleeping_rooms,
    retention,
    purge_room,
    purge_user,
    bad_input,
);

/// Messages and rooms survive closing and reopening the file (a node restart), and the
/// migrations are not run twice.
#[tokio::test]
async fn survives_a_reopen() {
    let db = TempDb::new("reopen").await;
    let path = db.dir.join("archive.db");
    let data = protocol::Data::from_value(&protocol::data::binary_value(b"\x00\x01")).unwrap();
    let message = protocol::Publication {
        room: "r".into(),
        epoch: "e".into(),
        offset: 1,
        from: "u".into(),
        data,
        ts: 1,
    };
    db.archive
        .append(std::slice::from_ref(&message))
        .await
        .unwrap();
    db.archive.pool().close().await;
    let again = SqliteArchive::open(&path).await.unwrap();
    assert_eq!(again.page("r", "e", None, 10).await.unwrap(), vec![message]);
    again.pool().close().await;
}

/// `open` picks the backend from the URL, and refuses other schemes without echoing the URL.
#[tokio::test]
async fn open_by_url() {
    let db = TempDb::new("url").await;
    // A directory that does not exist yet is created (`make run`'s data directory).
    let url = format!("sqlite://{}", db.dir.join("new/dir/by-url.db").display());
    let archive = archive::open(&url).await.unwrap();
    assert_eq!(archive.high_water("r", "e").await.unwrap(), None);
    for bad in ["mysql://user:secret@host/db", "sqlite://", "none", ""] {
        let err = archive::open(bad).await.err().unwrap();
        assert!(
            matches!(err, archive::ArchiveError::Setup(_)),
            "{bad}: {err:?}"
        );
        assert!(!err.to_string().contains("secret"), "{err}");
    }
    // A file that is not a database is an error at open, not later.
    let junk = db.dir.join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
    let err = SqliteArchive::open(&junk).await.err().unwrap();
    assert!(
        !matches!(err, archive::ArchiveError::BadInput(_)),
        "{err:?}"
    );
}
