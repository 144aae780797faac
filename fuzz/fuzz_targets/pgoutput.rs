//! Feeds arbitrary bytes to the pgoutput decoder.
//!
//! The decoder must never panic, and whatever it accepts must survive a round trip
//! through `encode`. Run with `cargo +nightly fuzz run pgoutput` from the repository root.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walhook::source::pgoutput::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode(Bytes::copy_from_slice(data)) {
        let again = decode(Bytes::from(encode(&msg))).expect("encode output must decode");
        assert_eq!(again, msg);
    }
});
