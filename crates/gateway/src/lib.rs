//! The roomcast gateway node.
//!
//! Map of the crate:
//! - [`config`]: flags and `ROOMCAST_*` variables.
//! - [`server`]: the accept loop and a node's life from bind to drained exit.
//! - [`http`]: routing, `/status`, probes, `/metrics`, and the server API (`http::api`).
//! - [`native`]: the native protocol v1 over WebSocket, and the WebSocket plumbing every
//!   endpoint shares: the read loop and reassembly, the writer task, the test echo endpoint.
//! - [`socketio`]: Socket.IO v5 / Engine.IO v4 over WebSocket (`/socket.io/`), on the same ops.
//! - [`session`]: the ops (`create_room`, `join`, …), independent of the wire protocol.
//! - [`node`]: one node's shared state: backends, local registry, flags, traffic upkeep.
//! - [`traffic`]: the traffic monitor's levels and creation pause.
//! - [`auth`] and [`client_ip`]: who a client is; [`admission`]: who gets a socket at all.
//! - [`drain`]: graceful shutdown.
//! - [`metrics`], [`telemetry`]: Prometheus and logs.

pub mod admission;
pub mod auth;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod drain;
pub mod http;
pub mod metrics;
pub mod native;
pub mod node;
pub mod server;
pub mod session;
pub mod socketio;
pub mod telemetry;
pub mod traffic;

pub use config::Config;
pub use server::{run, start, Running};
