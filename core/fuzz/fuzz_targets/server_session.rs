//! A server `Connection` (committed test keys, client key authorized) fed
//! an arbitrary byte stream; see `hytun_core_fuzz::single` for the input
//! layout and the properties checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hytun_core_fuzz::single::run(data, true);
});
