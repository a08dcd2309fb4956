//! The WebSocket transport every endpoint shares, so that the native protocol, Socket.IO and
//! the test echo endpoint differ only in what they say, and the conformance tests that run
//! against the echo endpoint cover what clients really talk to.
//!
//! - [`socket`]: one upgraded WebSocket: open, read whole messages, finish; or a probe that
//!   is handed an existing queue later (the Engine.IO upgrade from long-polling).
//! - [`frames`]: the read half: frames in, whole messages out; pings and closes answered.
//! - [`reassembly`]: fragments into messages under the size cap; UTF-8 checked as it comes.
//! - [`writer`]: the write task: the outbound queue onto the socket, batched; pings.
//! - [`close`]: the close handshake: codes for read errors, a peer's Close, refusals.
//! - [`lifecycle`]: one connection's life: admission after the upgrade, a driver in its own
//!   task, cleanup whatever happens.
//! - [`echo`]: `--test-echo`, the endpoint the WebSocket conformance tests talk to.

mod close;
pub mod echo;
mod frames;
mod lifecycle;
mod reassembly;
mod socket;
mod writer;

pub use close::reject;
pub use frames::{Ending, Read};
pub use lifecycle::{disconnect_reason, run, serve_admitted, Driver, Live, Ws};
pub use socket::{Probe, Socket, SocketConfig};
pub use writer::WriterConfig;
pub use writer::WriterEnd;
