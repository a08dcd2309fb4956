//! The shared conformance suite, run against the embedded backend.

#![allow(clippy::unwrap_used)]

use room_state::{testsuite, MemoryState};

#[tokio::test]
async fn rooms() {
    testsuite::rooms(&MemoryState::new(), "t:").await;
}

#[tokio::test]
async fn idempotency() {
    testsuite::idempotency(&MemoryState::new(), "t:").await;
}

#[tokio::test]
async fn expiry() {
    testsuite::expiry(&MemoryState::new(), "t:").await;
}

#[tokio::test]
async fn limits() {
    testsuite::limits(&MemoryState::new(), "t:").await;
}

#[tokio::test]
async fn traffic() {
    testsuite::traffic(&MemoryState::new(), "t:").await;
}

#[tokio::test]
async fn sessions() {
    testsuite::sessions(&MemoryState::new(), "t:").await;
}

#[tokio::test]
async fn sleep() {
    testsuite::sleep(&MemoryState::new(), "t:").await;
}

#[tokio::test]
async fn archive_feed() {
    testsuite::archive_feed(&MemoryState::new(), "t:").await;
}

#[tokio::test]
async fn event_queue() {
    testsuite::event_queue(&MemoryState::new(), "t:").await;
}

/// Memory only (a cap of 50, as `--archive-backlog-cap 50` sets): past the cap's unarchived
/// messages a room's publishes are refused `unavailable`, and accepted again once the cursor
/// moves. The Redis script applies the same rule (`scripts::publish`, {-5}); the gateway's
/// `tests/archive_outage.rs` checks it there with the archive down.
#[tokio::test]
async fn archive_backlog_cap_refuses_then_recovers() {
    use room_state::{ArchiveFeed, RoomConfig, RoomStore, StateError};
    const CAP: u64 = 50;
    let state = MemoryState::new();
    state.enable_archiving(CAP);
    let config = RoomConfig {
        max_members: None,
        history_size: 10,
        ttl_secs: 3600,
    };
    let info = state.create("capped", &config, 1).await.unwrap();
    let data = || protocol::Data::from_value(&serde_json::json!(1)).unwrap();
    for _ in 0..CAP {
        state
            .publish("capped", None, "u", data(), None, 2)
            .await
            .unwrap();
    }
    assert!(matches!(
        state.publish("capped", None, "u", data(), None, 3).await,
        Err(StateError::Unavailable(_))
    ));
    // Nothing was trimmed past the cursor: all of it is there to archive.
    let read = state
        .read_unarchived("capped", usize::MAX)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.messages.len() as u64, CAP);
    state
        .advance_cursor("capped", &info.epoch, 10, 2)
        .await
        .unwrap();
    state
        .publish("capped", None, "u", data(), None, 4)
        .await
        .unwrap();
}

#[tokio::test]
async fn users() {
    let state = MemoryState::new();
    testsuite::users(&state, &state, "t:").await;
}
