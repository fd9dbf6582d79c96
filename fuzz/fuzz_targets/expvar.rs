//! A Go service's /debug/vars JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scalewise_agent::gc::expvar::gc_from_expvar(data);
});
