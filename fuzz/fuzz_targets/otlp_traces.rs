//! OTLP traces bodies a service sends to `--otlp-listen`: decoded (protobuf or JSON, gzip or
//! not, as the first byte says) and aggregated, then read back every way a session reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use scalewise_agent::spans::aggregate::SpanAggregate;
use scalewise_agent::spans::receiver::{decode_http, Format};

const NOW: u64 = 1_700_000_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let format = if mode & 1 == 0 { Format::Protobuf } else { Format::Json };
    let Ok(req) = decode_http(body, format, mode & 2 != 0, 1 << 20) else {
        return;
    };
    let mut agg = SpanAggregate::new();
    agg.ingest(&req, NOW);
    agg.ingest(&req, NOW + 90_000_000_000);
    for service in agg.services() {
        let _ = agg.window(&service, NOW - 600_000_000_000, NOW + 600_000_000_000);
        let _ = agg.cumulative(&service, u64::MAX);
        let _ = agg.last_end_ns(&service);
    }
    let _ = agg.select(Some("x"), &[1]);
});
