//! A real client/server pair, handshake completed, driven by an arbitrary
//! sequence of operations (stream calls, timers, partial delivery,
//! tampering); see `hytun_core_fuzz::established` for the properties.
#![no_main]

use hytun_core_fuzz::established::{Plan, run_plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|plan: Plan| {
    run_plan(&plan);
});
