//! The collector's REST parameters as its handlers read them: the input is `SERVICE\nQUERY`, the
//! service as a path segment gives it (percent-decoded, UTF-8) and the query as axum's `Query`
//! parses it (`serde_urlencoded`). Then, per handler: `window` and `step` through
//! `config::window_param` (and `parse_duration` under it), the history's step count, the report's
//! `ReportOptions::from_query` with the report rendered in the format asked for on a fixed
//! diagnosis, and the unknown-service answers (`limits::bound_label`, `page::not_found`), plus the
//! links the page builds (`page::path_segment`, `page::escape`).
//!
//! Asserts: no panic; an accepted window or step is 1s..=90d (or the handler's default); a
//! history has 1..=2000 steps and none ends after now; a parsed duration prints and parses back
//! to itself; numeric report options are finite; the report is bounded and JSON is JSON; service
//! names never reach the pages as markup and their bounded form is a prefix of at most 256 bytes.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use scalewise_core::engine::{self, Thresholds};
use scalewise_core::report::{self, Format, ReportOptions};
use scalewise_collector::config::{parse_duration, window_param, MAX_WINDOW_MS};
use scalewise_collector::limits::bound_label;
use scalewise_collector::page;
use scalewise_core::Budget;

const NOW_MS: i64 = 1_700_000_000_000;

fn window_ok(w: i64, default_ms: i64) -> bool {
    w == default_ms || (1000..=MAX_WINDOW_MS).contains(&w)
}

fn durations(q: &HashMap<String, String>) {
    for v in q.values() {
        if let Ok(d) = parse_duration(v) {
            assert!(d.0 > 0 && d.0 <= 320_000_000_000, "{v:?} -> {d:?}");
            assert_eq!(parse_duration(&d.to_string()).ok(), Some(d), "{v:?}");
        }
    }
    // list, one, report: `window` with the 5m default.
    if let Ok(w) = window_param(q.get("window").map(String::as_str), "window", 300_000) {
        assert!(window_ok(w, 300_000), "{w}");
    }
    // history and the service page: `window` (1h default), then `step`.
    let Ok(window) = window_param(q.get("window").map(String::as_str), "window", 3_600_000) else {
        return;
    };
    assert!(window_ok(window, 3_600_000));
    let default_step = (window / 60).max(1000);
    let Ok(step) = window_param(q.get("step").map(String::as_str), "step", default_step) else {
        return;
    };
    assert!(window_ok(step, default_step));
    if window / step > 2000 {
        return; // refused: at most 2000 steps
    }
    // `App::history`'s loop bounds.
    let from = NOW_MS - window;
    let steps = (window / step.max(1)).clamp(1, 2000);
    for k in [0, steps - 1] {
        let start = from + k * step;
        let end = (start + step).min(NOW_MS);
        assert!(
            start < NOW_MS && end <= NOW_MS && start < end,
            "{window} {step} {k}"
        );
    }
}

fn report_params(pairs: &[(String, String)], diagnosis: &engine::Diagnosis) {
    let Ok((opts, format)) =
        ReportOptions::from_query(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    else {
        return;
    };
    for x in [
        opts.peak_rps,
        opts.instances,
        opts.price_core_hour,
        opts.price_gib_hour,
        Some(opts.target_utilisation),
    ]
    .into_iter()
    .flatten()
    {
        assert!(x.is_finite());
    }
    if let Ok(text) = report::render(diagnosis, &opts, format) {
        assert!(text.len() < (4 << 20), "report of {} bytes", text.len());
        if format == Format::Json {
            assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
        }
        if format == Format::Html {
            assert!(!text.contains("<script"));
        }
    }
}

fn service_name(service: &str) {
    let (bounded, cut) = bound_label(service, 256);
    assert!(bounded.len() <= 256 && service.starts_with(&bounded));
    assert_eq!(cut, bounded.len() < service.len());
    let html = page::not_found(service);
    assert!(!html.contains("<script") && !page::escape(service).contains('<'));
    let seg = page::path_segment(service);
    assert!(seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
}

fn diagnosis() -> engine::Diagnosis {
    let mut b = Budget {
        window_s: 30.0,
        request_s: 60.0,
        requests: 3000.0,
        cpu_s: 20.0,
        capacity_core_s: 120.0,
        ..Budget::default()
    };
    b.downstream.insert(
        "10.0.0.5:5432".into(),
        scalewise_core::DependencyTime {
            kind: "postgresql".into(),
            name: None,
            awaiting_s: 30.0,
            connection_s: 0.0,
        },
    );
    engine::diagnose("orders", &[1], &b, &Thresholds::default())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (service, query) = text.split_once('\n').unwrap_or((text, ""));
    service_name(service);
    if let Ok(q) = serde_urlencoded::from_str::<HashMap<String, String>>(query) {
        durations(&q);
    }
    if let Ok(pairs) = serde_urlencoded::from_str::<Vec<(String, String)>>(query) {
        report_params(&pairs, &diagnosis());
    }
});
