//! The roomcast gateway node.
//!
//! Map of the crate, from the outside in:
//! - [`config`]: flags and `ROOMCAST_*` variables.
//! - [`server`]: the accept loop and a node's life from bind to drained exit; [`drain`]: the
//!   graceful shutdown, stage by stage; [`reconnect`]: sending clients elsewhere.
//! - [`http`]: routing, `/status`, probes, `/metrics`, and the server API (`http::api`).
//! - [`admission`]: who gets a socket at all: one step for every endpoint.
//! - [`transport`]: the WebSocket transport every endpoint shares: socket, frames,
//!   reassembly, writer, close handshake, one connection lifecycle, the test echo.
//! - [`native`]: the native protocol v1 (`/ws`): its handshake and ops loop.
//! - [`socketio`]: Socket.IO v5 / Engine.IO v4 (`/socket.io/`), on the same ops.
//! - [`history`]: history pages past the Redis window (room-state's window, then the archive).
//! - [`session`]: the ops (`create_room`, `join`, …), independent of the wire protocol;
//!   [`presence`]: join and leave announcements.
//! - [`node`]: one node's shared state: backends, local registry, flags, and its upkeep
//!   (traffic, heartbeat, dead nodes, readiness).
//! - [`archiver`]: copies every acknowledged message into the archive (`--archive`),
//!   `--archive-retention`, and puts rooms empty past their TTL to sleep in the archive;
//!   [`wake`]: brings a sleeping room back when a client asks for it.
//! - [`webhooks`]: room, member and user events, queued durably and POSTed to the app
//!   (`--webhook-url`).
//! - [`traffic`]: the traffic monitor's levels and creation pause.
//! - [`auth`] and [`client_ip`]: who a client is; [`backend_hooks`]: the app's connect and
//!   publish proxies.
//! - [`metrics`], [`telemetry`], [`clock`]: Prometheus, logs, timestamps.
//!
//! The public surface is what `main` and the integration tests need: start or serve a node,
//! drain it, and build one on backends of one's own.

mod admission;
mod archiver;
mod auth;
mod backend_hooks;
mod backends;
mod client_ip;
mod clock;
mod config;
mod drain;
mod expiry;
mod history;
mod http;
mod metrics;
mod native;
mod node;
mod presence;
mod reconnect;
mod server;
mod session;
mod socketio;
mod telemetry;
mod traffic;
mod transport;
mod users;
mod wake;
mod webhooks;

pub use config::Config;
pub use metrics::Metrics;
pub use node::{Backends, Node};
pub use server::{run, serve, start, Running};
pub use telemetry::init as init_telemetry;
