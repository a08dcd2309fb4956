//! The WebSocket transport every endpoint shares, so that the native protocol, Socket.IO and
//! the test echo endpoint differ only in what they say, and the conformance tests that run
//! against the echo endpoint cover what clients really talk to.
//!
//! - [`socket`]: one upgraded WebSocket: open (down to the TCP stream's owned halves), read
//!   whole messages, finish; or a probe that is handed an existing queue later (the
//!   Engine.IO upgrade from long-polling).
//! - [`frames`]: the read half: bytes in, whole messages out; pings and closes answered; no
//!   read buffer held between reads.
//! - [`decoder`]: bytes into frames, a pure state machine (RFC 6455 section 5).
//! - [`reassembly`]: fragments into messages under the size cap; UTF-8 checked as it comes.
//! - [`writer`]: the write task: the outbound queue onto the socket, batched; pings.
//! - [`heartbeat`]: one ticker per ping schedule instead of a timer per connection, for
//!   WebSocket and Engine.IO pings alike.
//! - [`close`]: the close handshake: codes for read errors, a peer's Close, refusals.
//! - [`lifecycle`]: one connection's life: admission after the upgrade, the driver (a
//!   panic caught at its poll; a long-polling session's in a task of its own), cleanup
//!   whatever happens.
//! - [`echo`]: `--test-echo`, the endpoint the WebSocket conformance tests talk to.

mod close;
mod decoder;
pub mod echo;
mod frames;
mod heartbeat;
mod lifecycle;
mod reassembly;
mod socket;
mod writer;

pub use close::reject;
pub use frames::{Ending, Read};
pub use heartbeat::Liveness;
pub use lifecycle::{disconnect_reason, run, serve_admitted, Driver, Live, Ws};
pub use socket::{Probe, Socket, SocketConfig};
pub use writer::WriterConfig;
pub use writer::WriterEnd;
