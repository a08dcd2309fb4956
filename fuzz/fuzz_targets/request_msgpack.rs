#![no_main]
//! See `roomcast_fuzz::checks::request_msgpack` for what this target asserts.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomcast_fuzz::checks::request_msgpack(data));
