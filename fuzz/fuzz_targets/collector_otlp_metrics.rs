//! The collector's OTLP/HTTP metrics receiver as `POST /v1/metrics` runs it: `ingest::decode_body`
//! with the content type and encoding the first input byte picks (protobuf or JSON, with or without
//! parameters; no encoding, `gzip` of the rest as sent, the rest gzipped here so the inflated path
//! gets parseable bodies, or an unknown encoding), under limits scaled down so that gzip bombs
//! reach the bound in one input. A decoded request then goes through what `App::ingest` and the
//! REST reads do without a server: `ingest::reports`, the in-memory store (`store::Memory`, the
//! same request twice), windows (`window::instance_increase`, `to_budget`, `service_window`),
//! `engine::diagnose`, the step loop of `App::history`, and the web pages (`page::fleet`,
//! `page::service`).
//!
//! Asserts: no panic; a counting allocator bounds what one input may hold at once (a gzip bomb
//! or an amplifying body past it fails the run); refusals carry one of the fixed reasons; the
//! store stays within every limit and keeps snapshots sorted; increases are never negative or
//! NaN; every label kept fits `max_label_length`; diagnoses serialise to JSON.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use scalewise_core::engine::{self, Thresholds};
use scalewise_collector::ingest::{decode_body, reports};
use scalewise_collector::limits::Limits;
use scalewise_collector::store::Memory;
use scalewise_collector::window::{instance_increase, service_window, to_budget};
use scalewise_collector::app::{History, HistoryPoint, InstanceView, ServiceSummary, ServiceView};
use scalewise_collector::page;

/// Live bytes the Rust heap holds, and the most it held since the input began.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Past this, one allocation aborts at once (before the machine runs out of memory).
const HARD_CAP: usize = 1 << 30;

struct Counting;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged to the system allocator.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
    if n > HARD_CAP || live > 2 * HARD_CAP {
        // No unwinding out of an allocator: say why and abort (libFuzzer keeps the input).
        let _ = std::io::stderr().write_all(b"allocation bound exceeded\n");
        std::process::abort();
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NOW_MS: i64 = 1_700_000_000_000;

fn limits() -> Limits {
    Limits {
        max_body_bytes: 64 << 10,
        max_decompressed_bytes: 256 << 10,
        max_decoded_bytes: 2 << 20,
        max_services: 8,
        max_instances_per_service: 4,
        max_dependencies_per_service: 4,
        max_label_length: 32,
        ..Limits::default()
    }
}

/// What one input may hold at once beyond what was live before it: the decoded request is
/// estimated before decoding and refused over `max_decoded_bytes`, so the heap stays within a
/// small factor of that estimate (vector capacities), whatever the body.
fn heap_bound(l: &Limits) -> usize {
    4 * l.max_decoded_bytes + 4 * l.max_decompressed_bytes + (16 << 20)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let l = limits();
    let content_type = match mode & 7 {
        0 => Some("application/x-protobuf"),
        1 => Some("application/json"),
        2 => Some("application/protobuf; charset=binary"),
        3 => Some(" Application/JSON ; charset=utf-8"),
        4 => None,
        5 => Some("text/plain"),
        6 => Some("application/x-protobuf"),
        _ => Some("application/json"),
    };
    let zipped;
    let (encoding, body): (Option<&str>, &[u8]) = match (mode >> 3) & 3 {
        0 => (None, rest),
        1 => (Some("gzip"), rest),
        2 => {
            zipped = gzip(rest);
            (Some(" GZIP"), &zipped)
        }
        _ => (Some(if mode & 0x20 != 0 { "identity" } else { "br" }), rest),
    };
    let (req, _format) = match decode_body(content_type, encoding, body, &l) {
        Ok(x) => x,
        Err(e) => {
            assert!(matches!(
                e.reason(),
                "too_large" | "bad_gzip" | "unsupported_media_type" | "decode"
            ));
            assert!(e.to_string().len() < 4096, "refusal message unbounded");
            return;
        }
    };
    let (reps, rejected, total) = reports(&req, NOW_MS, &l);
    assert!(rejected.total() <= total, "{rejected:?} > {total}");
    assert!(rejected.messages.len() <= 5);
    for r in &reps {
        for label in [&r.resource.service, &r.resource.instance] {
            assert!(label.len() <= l.max_label_length, "{label:?}");
        }
        assert!(!r.resource.service.trim().is_empty());
    }
    let mut mem = Memory::default();
    for _ in 0..2 {
        for r in reps.iter().cloned() {
            let _ = mem.ingest(r, &l);
        }
    }
    assert!(mem.services.len() <= l.max_services);
    let mut t_min = i64::MAX;
    let mut t_max = i64::MIN;
    for svc in mem.services.values() {
        assert!(!svc.instances.is_empty());
        assert!(svc.instances.len() <= l.max_instances_per_service);
        assert!(svc.dependencies.len() <= l.max_dependencies_per_service);
        for inst in svc.instances.values() {
            assert!(inst.snaps.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
            for s in &inst.snaps {
                t_min = t_min.min(s.t_ms);
                t_max = t_max.max(s.t_ms);
            }
        }
    }
    if mem.services.is_empty() {
        return;
    }
    if t_min > t_max {
        // Only metadata arrived (memory, notes): no snapshot to span.
        (t_min, t_max) = (NOW_MS - 1, NOW_MS);
    }
    // The REST default window, and one spanning everything stored.
    let windows = [(NOW_MS - 300_000, NOW_MS), (t_min.saturating_sub(1), t_max)];
    let thresholds = Thresholds::default();
    let mut fleet = Vec::new();
    for (name, svc) in &mem.services {
        for &(from, to) in &windows {
            for inst in svc.instances.values() {
                if let Some(inc) = instance_increase(&inst.snaps, from, to) {
                    assert!(inc.iter().all(|v| *v >= 0.0), "negative or NaN: {inc:?}");
                    let _ = to_budget(&inc, &inst.meta.counters);
                }
            }
        }
        let (from, to) = windows[1];
        let (budget, counted) = service_window(
            svc.instances
                .values()
                .map(|i| (i.snaps.as_slice(), &i.meta.counters)),
            from,
            to,
        );
        let pids: Vec<u32> = svc
            .instances
            .values()
            .filter_map(|i| i.meta.resource.pid)
            .collect();
        let diagnosis = engine::diagnose(name, &pids, &budget, &thresholds);
        assert!(serde_json::to_string(&diagnosis).is_ok());
        // `App::history`'s step loop over the spanning window, four steps.
        let window_ms = (to - from).max(1);
        let step_ms = (window_ms / 4).max(1);
        let steps = (window_ms / step_ms).clamp(1, 2000);
        let mut points = Vec::new();
        for k in 0..steps {
            let start = from + k * step_ms;
            let end = (start + step_ms).min(to);
            let (b, counted_step) = service_window(
                svc.instances
                    .values()
                    .map(|i| (i.snaps.as_slice(), &i.meta.counters)),
                start,
                end,
            );
            let d = engine::diagnose(name, &pids, &b, &thresholds);
            points.push(HistoryPoint {
                start_unix: start as f64 / 1000.0,
                end_unix: end as f64 / 1000.0,
                verdict: d.verdict,
                confidence: d.confidence,
                breakdown: d.breakdown,
                requests_per_s: d.requests.rate_per_s,
                mean_latency_ms: d.requests.mean_latency_ms,
                instances: counted_step.len(),
            });
        }
        let history = History {
            service: name.clone(),
            window_start_unix: from as f64 / 1000.0,
            window_end_unix: to as f64 / 1000.0,
            step_s: step_ms as f64 / 1000.0,
            points,
        };
        let instance_list: Vec<InstanceView> = svc
            .instances
            .values()
            .map(|i| InstanceView {
                resource: i.meta.resource.clone(),
                last_seen_unix: i.meta.last_seen_ms as f64 / 1000.0,
                rss_bytes: i.meta.rss_bytes,
            })
            .collect();
        let view = ServiceView {
            diagnosis: diagnosis.clone(),
            instances: counted.len(),
            instance_list,
            window_start_unix: from as f64 / 1000.0,
            window_end_unix: to as f64 / 1000.0,
            last_seen_unix: svc.last_seen_ms as f64 / 1000.0,
            namespace: svc
                .instances
                .values()
                .find_map(|i| i.meta.resource.namespace.clone()),
        };
        assert!(serde_json::to_string(&view).is_ok());
        assert!(serde_json::to_string(&history).is_ok());
        let html = page::service(&view, &history);
        assert!(!html.contains("<script"), "markup from a service's strings");
        let summary = ServiceSummary {
            service: name.clone(),
            verdict: diagnosis.verdict,
            confidence: diagnosis.confidence,
            breakdown: diagnosis.breakdown,
            instances: counted.len(),
            last_seen_unix: view.last_seen_unix,
            window_s: diagnosis.window_s,
            requests: diagnosis.requests.clone(),
            cpu: diagnosis.cpu,
            namespace: view.namespace.clone(),
        };
        fleet.push((view, summary));
    }
    let html = page::fleet(&fleet, 300_000, NOW_MS);
    assert!(!html.contains("<script"), "markup from a service's strings");
}

fuzz_target!(|data: &[u8]| {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    check(data);
    let held = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let bound = heap_bound(&limits());
    assert!(
        held <= bound,
        "one input held {held} bytes of heap (bound {bound})"
    );
});
