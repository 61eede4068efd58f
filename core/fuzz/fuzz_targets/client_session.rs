//! A client `Connection` (committed test keys, server key pinned) fed an
//! arbitrary byte stream after it sent its ClientHello; see
//! `hytun_core_fuzz::single` for the input layout and the properties.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hytun_core_fuzz::single::run(data, false);
});
