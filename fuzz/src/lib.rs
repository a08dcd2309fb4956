//! Shared code of the fuzz targets: every property lives in [`checks`], which
//! `crates/protocol/tests/fuzz_seeds.rs` also includes, so `cargo test` on stable replays the
//! seeds and the fixed crash inputs through exactly the same assertions.

pub mod checks;
