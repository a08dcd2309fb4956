//! The native protocol v1 over WebSocket (`GET /ws`).

pub mod connection;
pub mod reader;
pub mod writer;
