//! The JVM's hsperfdata file: written by the monitored process.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = scalewise_agent::gc::hsperf::parse_hsperfdata(data) {
        let _ = d.gc_reading();
    }
});
