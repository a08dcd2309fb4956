#![no_main]
//! See `roomcast_fuzz::checks::polling_payload` for what this target asserts.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| roomcast_fuzz::checks::polling_payload(data));
