//! The archive's numbers for docs/benchmarks.md ("Archive"): not tests, so `#[ignore]`d, run
//! by hand against a real server (`ROOMCAST_TEST_POSTGRES`, as for tests/postgres.rs):
//!
//! ```text
//! cargo test --release -p archive --test bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! - `append_throughput`: messages/s into PostgreSQL and SQLite through `Archive::append`,
//!   in batches of 500 (the archiver's batch), spread over 1,000 rooms; one writer (one node
//!   working every shard) and, on PostgreSQL, four at once (four nodes sharing the shards).
//! - `paging_at_a_million_rows`: 1,000,000 rows (one room of 500,000 interleaved with 5,000
//!   rooms of 100), `EXPLAIN (ANALYZE, BUFFERS)` of the page query `postgres.rs` runs, first
//!   page and deep page, and the latency of 1,000 pages of each through `Archive::page`.
//!
//! Each removes its rows afterwards.

#![allow(clippy::unwrap_used)]

use archive::{Archive, PostgresArchive, SqliteArchive};
use protocol::frame::Publication;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Times `count` pages of 100 from `before(i)`; prints the median and p99 in ms.
async fn time_pages(
    archive: &PostgresArchive,
    room: &str,
    what: &str,
    count: usize,
    before: impl Fn(usize) -> Option<u64>,
) {
    let mut took = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        let page = archive.page(room, "e1", before(i), 100).await.unwrap();
        took.push(started.elapsed());
        assert_eq!(page.len(), 100);
    }
    took.sort();
    println!(
        "{what}: {count} pages of 100: median {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        percentile(&took, 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand with --ignored (docs/benchmarks.md)"]
async fn paging_at_a_million_rows() {
    let Ok(url) = std::env::var("ROOMCAST_TEST_POSTGRES") else {
        println!("skipped: ROOMCAST_TEST_POSTGRES is not set");
        return;
    };
    let archive = PostgresArchive::connect(&url, 2).await.unwrap();
    let pool = archive.pool();
    let p = format!("m{:x}-", fastrand::u32(..));
    let big = format!("{p}big");
    // A real payload (what the gateway's messages look like), copied into every row.
    archive
        .append(&[message(&format!("{p}seed"), 0)])
        .await
        .unwrap();
    let started = Instant::now();
    // Even rows: the big room's offsets 1..=500,000; odd rows: 5,000 rooms, 100 each; in
    // one interleaved insert, so the big room's rows are spread over the whole heap as a
    // busy room's are among many others'.
    sqlx::query(
        r#"INSERT INTO messages (room, epoch, "offset", user_id, created_ms, payload)
           SELECT CASE WHEN g % 2 = 0 THEN $1 ELSE $2 || ((g / 2) % 5000)::text END,
                  'e1',
                  CASE WHEN g % 2 = 0 THEN g / 2 ELSE (g / 2) / 5000 + 1 END,
                  'user' || (g % 97)::text,
                  1700000000000 + g,
                  (SELECT payload FROM messages WHERE room = $3 LIMIT 1)
           FROM generate_series(1, 1000000) AS g"#,
    )
    .bind(&big)
    .bind(&p)
    .bind(format!("{p}seed0"))
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE messages").execute(pool).await.unwrap();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(pool)
        .await
        .unwrap();
    println!(
        "filled 1,000,000 rows in {:.1} s (the table holds {total})",
        started.elapsed().as_secs_f64()
    );
    // The page query exactly as postgres.rs sends it (a prepared statement, parameters
    // bound); `before` i64::MAX is what a first page (no `before`) binds.
    for (what, before) in [("first page", i64::MAX), ("deep page", 1_000i64)] {
        let plan: Vec<String> = sqlx::query_scalar(
            r#"EXPLAIN (ANALYZE, BUFFERS) SELECT room, epoch, "offset", user_id, created_ms, payload FROM messages
               WHERE room = $1 AND epoch = $2 AND "offset" < $3
               ORDER BY "offset" DESC LIMIT $4"#,
        )
        .bind(&big)
        .bind("e1")
        .bind(before)
        .bind(100i64)
        .fetch_all(pool)
        .await
        .unwrap();
        println!("EXPLAIN (ANALYZE, BUFFERS), {what} (before {before}, limit 100):");
        for line in plan {
            println!("    {line}");
        }
    }
    time_pages(&archive, &big, "first page", 1000, |_| None).await;
    time_pages(&archive, &big, "deep pages (random before)", 1000, |_| {
        Some(fastrand::u64(101..=500_000))
    })
    .await;
    time_pages(
        &archive,
        &format!("{p}42"),
        "first page of a room of 100",
        1000,
        |_| Some(101),
    )
    .await;
    let gone = sqlx::query("DELETE FROM messages WHERE room LIKE $1 || '%'")
        .bind(&p)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected();
    println!("removed {gone} rows");
}
