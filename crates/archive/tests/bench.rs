//! The archive's numbers for docs/benchmarks.md ("Archive"): not tests, so `#[ignore]`d, run
//! by hand against a real server (`ROOMCAST_TEST_POSTGRES`, as for tests/postgres.rs):
//!
//! ```text
//! cargo test -p archive --test bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `append_throughput`: messages/s into PostgreSQL and SQLite through `Archive::append`,
//!   in batches of 500 (the archiver's batch), spread over 1,000 rooms; one writer (one node
//!   working every shard) and, on PostgreSQL, four at once (four nodes sharing the shards).
//!
//! It removes its rows afterwards. The page query at a million rows is measured by
//! loadtest/archive_paging.sh (SQL only: psql and pgbench).

#![allow(clippy::unwrap_used)]

use archive::{Archive, PostgresArchive, SqliteArchive};
use protocol::frame::Publication;
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 500;
const MESSAGES: u64 = 100_000;
const ROOMS: u64 = 1_000;

/// The load tool's payload: a sequence number and 64 bytes of padding.
fn message(prefix: &str, n: u64) -> Publication {
    Publication {
        room: format!("{prefix}{}", n % ROOMS),
        epoch: "e1".into(),
        offset: n / ROOMS + 1,
        from: format!("user{}", n % 97),
        data: protocol::Data::from_value(&serde_json::json!({"n": n, "pad": "x".repeat(64)}))
            .unwrap(),
        ts: 1_700_000_000_000 + n,
    }
}

/// Appends `MESSAGES` messages in batches of `BATCH`, from `writers` tasks at once (writer `w`
/// takes batches `w`, `w + writers`, …); messages/s.
async fn append_rate(archive: Arc<dyn Archive>, prefix: &str, writers: u64) -> f64 {
    let batches: Vec<Vec<Publication>> = (0..MESSAGES)
        .map(|n| message(prefix, n))
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(<[Publication]>::to_vec)
        .collect();
    let batches = Arc::new(batches);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (archive, batches) = (archive.clone(), batches.clone());
            tokio::spawn(async move {
                for b in batches.iter().skip(w as usize).step_by(writers as usize) {
                    assert_eq!(archive.append(b).await.unwrap(), b.len() as u64);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    MESSAGES as f64 / started.elapsed().as_secs_f64()
}

async fn purge_rooms(archive: &dyn Archive, prefix: &str) {
    for r in 0..ROOMS {
        archive.purge_room(&format!("{prefix}{r}")).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand with --ignored (docs/benchmarks.md)"]
async fn append_throughput() {
    let tag = fastrand::u32(..);
    let dir = std::env::temp_dir().join(format!("roomcast-bench-{tag:x}"));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite: Arc<dyn Archive> =
        Arc::new(SqliteArchive::open(&dir.join("bench.db")).await.unwrap());
    let rate = append_rate(sqlite, &format!("b{tag:x}s"), 1).await;
    println!("sqlite, 1 writer: {MESSAGES} messages in batches of {BATCH}: {rate:.0} messages/s");
    let _ = std::fs::remove_dir_all(&dir);

    let Ok(url) = std::env::var("ROOMCAST_TEST_POSTGRES") else {
        println!("postgres: skipped (ROOMCAST_TEST_POSTGRES is not set)");
        return;
    };
    let pg: Arc<dyn Archive> = Arc::new(PostgresArchive::connect(&url, 8).await.unwrap());
    for writers in [1, 4] {
        let prefix = format!("b{tag:x}p{writers}-");
        let rate = append_rate(pg.clone(), &prefix, writers).await;
        println!(
            "postgres, {writers} writer(s): {MESSAGES} messages in batches of {BATCH}: {rate:.0} messages/s"
        );
        purge_rooms(pg.as_ref(), &prefix).await;
    }
}
