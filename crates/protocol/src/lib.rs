//! The roomcast wire protocol, as pure code with no I/O, so every decoder can be fuzzed.
//!
//! Map of the crate:
//! - [`frame`]: the native protocol v1 messages: requests (`{"id","op",…}`), replies and events.
//! - [`codec`]: the two client formats, JSON in text frames and MessagePack in binary frames,
//!   and the decoder that turns untrusted bytes into a [`frame::Request`] or a [`codec::DecodeError`].
//! - [`data`]: the opaque application payload (`data`), held as JSON text.
//! - [`codes`]: error codes of replies and WebSocket close codes.
//! - [`room_name`]: the room-name grammar.
//! - [`socketio`]: Engine.IO v4 and Socket.IO v5 packets.
//! - [`emitter`]: the Redis wire format of `@socket.io/redis-emitter` (broadcasts, requests).
//! - [`polling`]: Engine.IO v4 long-polling payloads (`\x1e`-joined packets, `b` + base64).
//! - [`msgpack_depth`]: a non-recursive depth check that guards the MessagePack decoder.
//! - [`envelope`]: what one gateway node sends another through the fan-out (MessagePack), and
//!   the names of a `message` envelope's map, for the Redis publish script that builds it.
//! - [`channel`]: the Redis shard channels envelopes travel on, named for both sides.
//! - [`traffic`]: the `traffic_status` body shared by the WebSocket event and `GET /status`.
//! - [`value`]: untrusted bytes to a `serde_json::Value`; every decoder here parses with it.
//! - [`clock`]: wall-clock milliseconds, the unit of every timestamp.
//! - [`hash`]: FNV-1a, a hash that is stable across processes and versions.
//!
//! The contract is documented for humans in `docs/protocol.md`; keep the two in step.

pub mod channel;
pub mod clock;
pub mod codec;
pub mod codes;
pub mod data;
pub mod emitter;
pub mod envelope;
pub mod frame;
pub mod hash;
pub mod msgpack_depth;
pub mod polling;
pub mod room_name;
pub mod socketio;
pub mod traffic;
pub mod value;

pub use codec::{DecodeError, Format};
pub use codes::{CloseCode, ErrorCode};
pub use data::Data;
pub use frame::{Event, Publication, Reply, Request};
pub use traffic::{TrafficLevel, TrafficStatus};
