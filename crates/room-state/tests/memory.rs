//! The shared conformance suite, run against the embedded backend.

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
async fn users() {
    let state = MemoryState::new();
    testsuite::users(&state, &state, "t:").await;
}
