//! The shared conformance suite, run unchanged against a real PostgreSQL server.
//!
//! Runs when `ROOMCAST_TEST_POSTGRES` holds a URL (`make test` starts a server with
//! deploy/local/postgres.sh and sets it); without it every test says it is skipped and passes.
//! Tests share the database: each uses its own prefix for rooms and users.

#![allow(clippy::unwrap_used)]

use archive::{testsuite, Archive, PostgresArchive};

const VAR: &str = "ROOMCAST_TEST_POSTGRES";

/// The archive on the test server, or `None` (said on stderr) when none is configured.
async fn archive(test: &str) -> Option<PostgresArchive> {
    let Ok(url) = std::env::var(VAR) else {
        eprintln!(
            "skipped {test}: {VAR} is not set (deploy/local/postgres.sh start 55432, then \
             {VAR}=$(deploy/local/postgres.sh url 55432))"
        );
        return None;
    };
    Some(PostgresArchive::connect(&url, 4).await.unwrap())
}

fn prefix(name: &str) -> String {
    format!("t{:x}:{name}:", fastrand::u32(..))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let Some(archive) = archive(stringify!($name)).await else { return };
            testsuite::$name(&archive, &prefix(stringify!($name))).await;
        }
    )*};
}

conformance!(
    idempotent_append,
    paging,
    page_cap,
    binary_round_trip,
    sleeping_rooms,
    retention,
    purge_room,
    purge_user,
    bad_input,
);

/// Gateways start together: migrations run concurrently apply once, and a second connect
/// finds them applied.
#[tokio::test]
async fn concurrent_migrations() {
    let Ok(url) = std::env::var(VAR) else {
        eprintln!("skipped concurrent_migrations: {VAR} is not set");
        return;
    };
    let (a, b, c) = tokio::join!(
        PostgresArchive::connect(&url, 1),
        PostgresArchive::connect(&url, 1),
        PostgresArchive::connect(&url, 1),
    );
    let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(applied, 1);
    let p = prefix("mig");
    assert_eq!(a.high_water(&p, "e").await.unwrap(), None);
}

/// A server that is not there is `Unavailable` (retry), not a panic or `Internal`.
#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // A unix socket in a directory that does not exist: no port is touched.
    let url = "postgres://nobody@localhost/none?host=/nonexistent-roomcast-socket-dir";
    let err = PostgresArchive::connect(url, 1).await.err().unwrap();
    assert!(
        matches!(err, archive::ArchiveError::Unavailable(_)),
        "{err:?}"
    );
}
