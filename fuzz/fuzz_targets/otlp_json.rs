//! OTLP/JSON metrics bodies a service sends.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = scalewise_agent::gc::otlp::gc_from_otlp_json(data);
});
