//! The native protocol v1 over WebSocket (`GET /ws`): JSON or MessagePack frames, one request
//! and one reply per op. The transport is [`crate::transport`]; this module only speaks the
//! protocol.
//!
//! - [`upgrade`]: the handshake: format, token, admission.
//! - [`connection`]: the ops loop of one connection.

pub mod connection;
pub mod upgrade;
