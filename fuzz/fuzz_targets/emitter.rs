#![no_main]
//! See `roomcast_fuzz::checks::emitter` for what this target asserts.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomcast_fuzz::checks::emitter(data));
