//! The native protocol v1 over WebSocket (`GET /ws`), and the WebSocket plumbing that every
//! endpoint shares: `reader` (reassembly and close rules, pure), `inbound` (the read loop),
//! `writer` (the write task and frame encoding).

pub mod connection;
pub mod echo;
pub mod inbound;
pub mod reader;
pub mod writer;
