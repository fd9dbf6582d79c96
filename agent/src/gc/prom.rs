//! GC time from the service's own Prometheus endpoint (`--metrics-url`), for runtimes whose
//! client libraries export it: Go, Micrometer and simpleclient on the JVM, prom-client on Node,
//! .NET, Python. The exposition text is parsed with the `prometheus-parse` crate; this module
//! only knows which families mean what.

use std::time::Duration;

use prometheus_parse::{Scrape, Value};

use super::{http_get, GcError, GcReading, GcSemantics, GcSource};

/// Recognised families, best first: (family, source label, what its time means).
const FAMILIES: &[(&str, &str, GcSemantics)] = &[
    (
        "go_gc_duration_seconds",
        "prometheus:go_gc_duration_seconds",
        GcSemantics::Pauses,
    ),
    (
        "jvm_gc_pause_seconds",
        "prometheus:jvm_gc_pause_seconds",
        GcSemantics::Pauses,
    ),
    (
        "nodejs_gc_duration_seconds",
        "prometheus:nodejs_gc_duration_seconds",
        GcSemantics::Pauses,
    ),
    (
        "dotnet_gc_pause_seconds",
        "prometheus:dotnet_gc_pause_seconds",
        GcSemantics::Pauses,
    ),
    (
        "process_runtime_dotnet_gc_pause_time",
        "prometheus:process_runtime_dotnet_gc_pause_time",
        GcSemantics::Pauses,
    ),
    // simpleclient_hotspot: total collection time, concurrent work included, not pauses.
    (
        "jvm_gc_collection_seconds",
        "prometheus:jvm_gc_collection_seconds",
        GcSemantics::TotalGcTime,
    ),
];

fn scalar(v: &Value) -> Option<f64> {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => Some(*x),
        _ => None,
    }
}

/// Sums `metric` over all its label sets; `None` when absent.
fn sum(scrape: &Scrape, metric: &str) -> Option<f64> {
    let mut total = None;
    for s in scrape.samples.iter().filter(|s| s.metric == metric) {
        if let Some(v) = scalar(&s.value).filter(|v| v.is_finite() && *v >= 0.0) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// The GC reading in an exposition text, if it has a recognised family.
pub fn gc_from_exposition(text: &str) -> Result<Option<GcReading>, GcError> {
    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).map_err(|e| GcError::Malformed {
            what: "metrics exposition".into(),
            why: e.to_string(),
        })?;
    for &(family, source, semantics) in FAMILIES {
        if let Some(seconds) = sum(&scrape, &format!("{family}_sum")) {
            let count = sum(&scrape, &format!("{family}_count")).unwrap_or(0.0);
            return Ok(Some(GcReading {
                source,
                semantics,
                pause_s: seconds,
                collections: count as u64,
                collectors: vec![(family.to_string(), count as u64, seconds)],
            }));
        }
    }
    let counts = sum(&scrape, "python_gc_collections_total")
        .or_else(|| sum(&scrape, "python_gc_collections"));
    if let Some(count) = counts {
        return Ok(Some(GcReading {
            source: "prometheus:python_gc_collections_total",
            semantics: GcSemantics::CountsOnly,
            pause_s: 0.0,
            collections: count as u64,
            collectors: vec![],
        }));
    }
    Ok(None)
}

/// Scrapes a metrics URL for GC metrics.
pub struct PromSource {
    url: String,
}

impl PromSource {
    pub fn new(url: String) -> Self {
        PromSource { url }
    }
}

impl GcSource for PromSource {
    fn read(&mut self) -> Result<GcReading, GcError> {
        let body = http_get(&self.url, Duration::from_secs(2), 4 << 20)?;
        gc_from_exposition(&String::from_utf8_lossy(&body))?.ok_or_else(|| GcError::Malformed {
            what: self.url.clone(),
            why: "no recognised GC metric family".into(),
        })
    }

    fn describe(&self) -> String {
        format!("metrics {}", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_client_summary() {
        let text = "# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.\n# TYPE go_gc_duration_seconds summary\ngo_gc_duration_seconds{quantile=\"0\"} 2.1e-05\ngo_gc_duration_seconds{quantile=\"0.5\"} 4.5e-05\ngo_gc_duration_seconds{quantile=\"1\"} 0.000312\ngo_gc_duration_seconds_sum 0.0125\ngo_gc_duration_seconds_count 210\n# TYPE go_goroutines gauge\ngo_goroutines 12\n";
        let r = gc_from_exposition(text).expect("valid").expect("found");
        assert_eq!(r.semantics, GcSemantics::Pauses);
        assert!((r.pause_s - 0.0125).abs() < 1e-12);
        assert_eq!(r.collections, 210);
    }

    #[test]
    fn micrometer_and_node_histograms_sum_over_labels() {
        let mm = "# TYPE jvm_gc_pause_seconds summary\njvm_gc_pause_seconds_count{action=\"end of minor GC\",cause=\"G1 Evacuation Pause\",gc=\"G1 Young Generation\",} 31.0\njvm_gc_pause_seconds_sum{action=\"end of minor GC\",cause=\"G1 Evacuation Pause\",gc=\"G1 Young Generation\",} 0.25\njvm_gc_pause_seconds_count{action=\"end of major GC\",cause=\"System.gc()\",gc=\"G1 Old Generation\",} 1.0\njvm_gc_pause_seconds_sum{action=\"end of major GC\",cause=\"System.gc()\",gc=\"G1 Old Generation\",} 0.05\n";
        let r = gc_from_exposition(mm).expect("valid").expect("found");
        assert!((r.pause_s - 0.30).abs() < 1e-9);
        assert_eq!(r.collections, 32);
        let node = "# HELP nodejs_gc_duration_seconds Garbage collection duration by kind\n# TYPE nodejs_gc_duration_seconds histogram\nnodejs_gc_duration_seconds_bucket{le=\"0.001\",kind=\"minor\"} 10\nnodejs_gc_duration_seconds_bucket{le=\"+Inf\",kind=\"minor\"} 12\nnodejs_gc_duration_seconds_sum{kind=\"minor\"} 0.012\nnodejs_gc_duration_seconds_count{kind=\"minor\"} 12\nnodejs_gc_duration_seconds_sum{kind=\"major\"} 0.02\nnodejs_gc_duration_seconds_count{kind=\"major\"} 1\n";
        let r = gc_from_exposition(node).expect("valid").expect("found");
        assert_eq!(r.source, "prometheus:nodejs_gc_duration_seconds");
        assert!((r.pause_s - 0.032).abs() < 1e-9);
    }

    #[test]
    fn simpleclient_is_total_time_and_python_is_counts_only() {
        let sc = "# TYPE jvm_gc_collection_seconds summary\njvm_gc_collection_seconds_count{gc=\"G1 Young Generation\",} 5.0\njvm_gc_collection_seconds_sum{gc=\"G1 Young Generation\",} 0.4\n";
        let r = gc_from_exposition(sc).expect("valid").expect("found");
        assert_eq!(r.semantics, GcSemantics::TotalGcTime);
        let py = "# TYPE python_gc_collections_total counter\npython_gc_collections_total{generation=\"0\"} 120.0\npython_gc_collections_total{generation=\"1\"} 10.0\n";
        let r = gc_from_exposition(py).expect("valid").expect("found");
        assert_eq!(r.semantics, GcSemantics::CountsOnly);
        assert_eq!(r.collections, 130);
        assert_eq!(r.pause_s, 0.0);
    }

    #[test]
    fn garbage_is_not_a_reading() {
        for text in [
            "",
            "\u{0}\u{1}garbage {{{",
            "go_gc_duration_seconds_sum NaN",
            "x_sum -1",
        ] {
            assert!(
                matches!(gc_from_exposition(text), Ok(None) | Err(_)),
                "{text:?}"
            );
        }
    }
}
