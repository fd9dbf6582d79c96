//! The service's own /metrics text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scalewise_agent::gc::prom::gc_from_exposition(&String::from_utf8_lossy(data));
});
