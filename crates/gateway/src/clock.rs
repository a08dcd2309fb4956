//! Wall-clock milliseconds, the unit of every timestamp in the protocol. One definition for
//! every crate, in `protocol::clock`.

pub use protocol::clock::now_ms;
