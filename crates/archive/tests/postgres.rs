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

/// Connections killed under the pool (a server restart, a failover of the database, an
/// administrator) make calls fail as `Unavailable`, never `Internal`; the pool reconnects and a
/// retried batch is stored once.
#[tokio::test]
async fn lost_connections_are_unavailable_then_recovered() {
    let Ok(url) = std::env::var(VAR) else {
        eprintln!("skipped lost_connections_are_unavailable_then_recovered: {VAR} is not set");
        return;
    };
    // Our own application_name, so only this test's connections are killed.
    let app = format!("roomcast-test-{:x}", fastrand::u32(..));
    let sep = if url.contains('?') { '&' } else { '?' };
    let archive = PostgresArchive::connect(&format!("{url}{sep}application_name={app}"), 2)
        .await
        .unwrap();
    let admin = PostgresArchive::connect(&url, 1).await.unwrap();
    let p = prefix("lost");
    let room = format!("{p}room");
    let batch: Vec<protocol::Publication> = (1..=20)
        .map(|offset| protocol::Publication {
            room: room.clone(),
            epoch: "e".into(),
            offset,
            from: "u".into(),
            data: protocol::Data::from_value(&serde_json::json!(offset)).unwrap(),
            ts: 1_700_000_000_000,
        })
        .collect();
    archive.append(&batch[..10]).await.unwrap();
    for round in 0..3 {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_all(admin.pool())
        .await
        .unwrap();
        assert!(!killed.is_empty(), "round {round}: no connection to kill");
        // Retry as the archiver will: Unavailable means try again; anything else is a bug.
        let mut tries = 0;
        loop {
            tries += 1;
            match archive.append(&batch).await {
                Ok(_) => break,
                Err(archive::ArchiveError::Unavailable(e)) if tries < 50 => {
                    eprintln!("round {round}: unavailable ({e}), retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("round {round}: {e:?}"),
            }
        }
    }
    let page = archive.page(&room, "e", None, 100).await.unwrap();
    assert_eq!(page, batch, "every message once, in order");
    archive.purge_room(&room).await.unwrap();
}

/// A real server restart (`deploy/local/postgres.sh restart`, given as the command in
/// `ROOMCAST_TEST_POSTGRES_RESTART`) while batches are being written: the calls meanwhile are
/// `Unavailable`, the same pool carries on afterwards, and what was committed is there once.
/// `serial_`: it disconnects every other test, so it runs alone (after the parallel run).
#[tokio::test]
async fn serial_server_restart() {
    let (Ok(url), Ok(restart)) = (
        std::env::var(VAR),
        std::env::var("ROOMCAST_TEST_POSTGRES_RESTART"),
    ) else {
        eprintln!(
            "skipped serial_server_restart: {VAR} or ROOMCAST_TEST_POSTGRES_RESTART is not set"
        );
        return;
    };
    let archive = PostgresArchive::connect(&url, 2).await.unwrap();
    let room = format!("{}room", prefix("restart"));
    let message = |offset| protocol::Publication {
        room: room.clone(),
        epoch: "e".into(),
        offset,
        from: "u".into(),
        data: protocol::Data::from_value(&serde_json::json!(offset)).unwrap(),
        ts: 1_700_000_000_000,
    };
    archive.append(&[message(1)]).await.unwrap();
    let started = || async {
        sqlx::query_scalar::<_, String>("SELECT pg_postmaster_start_time()::text")
            .fetch_one(archive.pool())
            .await
            .unwrap()
    };
    let before = started().await;
    let restarting = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&restart)
            .status()
            .unwrap()
    });
    // Keep writing through the restart, each batch retried until it is committed, as the
    // archiver does.
    let (mut unavailable, mut offset) = (0, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !restarting.is_finished() || offset < 40 {
        assert!(std::time::Instant::now() < deadline, "no progress in 30 s");
        match archive
            .append(&[message(offset), message(offset - 1)])
            .await
        {
            Ok(_) => offset += 1,
            Err(archive::ArchiveError::Unavailable(_)) => {
                unavailable += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("offset {offset}: {e:?}"),
        }
    }
    assert!(
        restarting.await.unwrap().success(),
        "the restart command failed"
    );
    assert_ne!(started().await, before, "the server did not restart");
    // Few or none: while the server is down the pool keeps trying to connect for its acquire
    // timeout (5 s) before it gives up with `Unavailable`.
    eprintln!("{unavailable} calls were unavailable during the restart");
    let page = archive.page(&room, "e", None, 1000).await.unwrap();
    assert_eq!(page, (1..offset).map(message).collect::<Vec<_>>());
    archive.purge_room(&room).await.unwrap();
}
