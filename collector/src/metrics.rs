//! `/metrics`: the collector's self-telemetry (registered `prometheus` metrics), the budget
//! counters re-exported per instance (so `rate()` works across collector restarts), and the
//! engine's results per service over the default window. Names are in `docs/metrics.md`.
//!
//! The per-instance and per-service families are built at scrape time from the store, so they
//! never outlive a forgotten service and their label sets stay bounded by the store's limits.

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::app::App;
use crate::store::StoredMeta;
use crate::window::{to_budget, Snapshot};
use scalewise_core::engine::Verdict;
use scalewise_core::wire::prom;

/// Dependency labels per service in `/metrics`; the rest are summed as `other`.
pub const TOP_DEPENDENCIES: usize = 20;

pub struct Telemetry {
    pub registry: Registry,
    pub points_received: IntCounterVec,
    pub points_rejected: IntCounterVec,
    pub requests_rejected: IntCounterVec,
    pub overflow: IntCounterVec,
    pub sqlite_write_errors: IntCounterVec,
    pub sqlite_recreated: IntCounter,
    pub pending_dropped: IntCounter,
    pub sqlite_corrupt: IntCounter,
    pub services: IntGauge,
    pub instances: IntGauge,
    pub pending: IntGauge,
    pub sqlite_write: Histogram,
    pub connections_open: IntGauge,
    pub connections_dropped: IntCounterVec,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|_| unreachable_metric(name));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn unreachable_metric(name: &str) -> ! {
    // The names and labels are constants checked by the tests; this cannot happen at run time.
    panic!("invalid metric definition {name}")
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let registry = Registry::default();
        let points_received = counter_vec(
            &registry,
            "scalewise_collector_points_received_total",
            "OTLP data points received.",
            "transport",
        );
        let points_rejected = counter_vec(
            &registry,
            "scalewise_collector_points_rejected_total",
            "OTLP data points refused, by reason.",
            "reason",
        );
        let requests_rejected = counter_vec(
            &registry,
            "scalewise_collector_requests_rejected_total",
            "Whole requests refused, by reason.",
            "reason",
        );
        let overflow = counter_vec(
            &registry,
            "scalewise_collector_overflow_dropped_total",
            "Points dropped by a cardinality or length bound.",
            "limit",
        );
        let sqlite_write_errors = counter_vec(
            &registry,
            "scalewise_collector_sqlite_write_errors_total",
            "Flushes to SQLite that failed (kept in memory and retried), by reason.",
            "reason",
        );
        let sqlite_recreated = IntCounter::new(
            "scalewise_collector_sqlite_recreated_total",
            "Times the SQLite store was found removed while running and created anew.",
        )
        .unwrap_or_else(|_| unreachable_metric("sqlite_recreated"));
        let pending_dropped = IntCounter::new(
            "scalewise_collector_pending_dropped_total",
            "Snapshots never written to SQLite because writes kept failing for longer than \
             max_pending_snapshots could hold (oldest first; still served from memory while kept).",
        )
        .unwrap_or_else(|_| unreachable_metric("pending_dropped"));
        let sqlite_corrupt = IntCounter::new(
            "scalewise_collector_sqlite_corrupt_total",
            "Times the SQLite store was found corrupt (at start or by a flush), set aside as \
             scalewise.sqlite.corrupt-<time> and replaced by a new one.",
        )
        .unwrap_or_else(|_| unreachable_metric("sqlite_corrupt"));
        let services = IntGauge::new("scalewise_collector_services", "Services tracked.")
            .unwrap_or_else(|_| unreachable_metric("services"));
        let instances = IntGauge::new("scalewise_collector_instances", "Instances tracked.")
            .unwrap_or_else(|_| unreachable_metric("instances"));
        let pending = IntGauge::new(
            "scalewise_collector_pending_snapshots",
            "Snapshots received and not yet written to SQLite.",
        )
        .unwrap_or_else(|_| unreachable_metric("pending"));
        let connections_dropped = counter_vec(
            &registry,
            "scalewise_collector_connections_dropped_total",
            "Connections closed by the collector: over max_connections (limit), too slow to send \
             a handshake or headers (timeout), failed TLS handshakes (tls_handshake).",
            "reason",
        );
        let connections_open = IntGauge::new(
            "scalewise_collector_connections_open",
            "Open connections, both listeners.",
        )
        .unwrap_or_else(|_| unreachable_metric("connections_open"));
        let sqlite_write = Histogram::with_opts(
            HistogramOpts::new(
                "scalewise_collector_sqlite_write_seconds",
                "Time of one flush to SQLite.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
        )
        .unwrap_or_else(|_| unreachable_metric("sqlite"));
        for c in [
            Box::new(services.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(instances.clone()),
            Box::new(pending.clone()),
            Box::new(sqlite_write.clone()),
            Box::new(connections_open.clone()),
            Box::new(sqlite_recreated.clone()),
            Box::new(pending_dropped.clone()),
            Box::new(sqlite_corrupt.clone()),
        ] {
            let _ = registry.register(c);
        }
        // Pre-create the common series so dashboards see zeros instead of nothing.
        for t in ["http", "grpc"] {
            points_received.with_label_values(&[t]);
        }
        for l in ["services", "instances", "dependencies", "label_length"] {
            overflow.with_label_values(&[l]);
        }
        for r in ["limit", "timeout", "tls_handshake"] {
            connections_dropped.with_label_values(&[r]);
        }
        for r in ["disk_full", "io", "other"] {
            sqlite_write_errors.with_label_values(&[r]);
        }
        Telemetry {
            registry,
            points_received,
            points_rejected,
            requests_rejected,
            overflow,
            sqlite_write_errors,
            sqlite_recreated,
            pending_dropped,
            sqlite_corrupt,
            services,
            instances,
            pending,
            sqlite_write,
            connections_open,
            connections_dropped,
        }
    }

    /// One connection closed by the collector, by reason (`limit`, `timeout`, `tls_handshake`).
    pub fn dropped(&self, reason: &str) {
        self.connections_dropped.with_label_values(&[reason]).inc();
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, t: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(t);
    f
}

fn push_counter(f: &mut MetricFamily, pairs: &[(&str, &str)], v: f64) {
    let mut c = Counter::default();
    c.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    f.mut_metric().push(m);
}

fn push_gauge(f: &mut MetricFamily, pairs: &[(&str, &str)], v: f64) {
    let mut g = Gauge::default();
    g.set_value(v);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    f.mut_metric().push(m);
}

/// Every instance's budget counters ([`prom::budget_series`], the same series as the agent's
/// `/metrics`), with its dependencies past the service's top ones summed as `other`.
fn instance_counters(
    out: &mut Vec<MetricFamily>,
    latest: &[(String, StoredMeta, Snapshot)],
    top_deps: &std::collections::BTreeMap<String, Vec<String>>,
) {
    let mut fams: Vec<MetricFamily> = Vec::default();
    for (service, meta, snap) in latest {
        let ns = meta.resource.namespace.as_deref().unwrap_or("");
        let id = meta.resource.instance.as_str();
        let base = [
            ("service_name", service.as_str()),
            ("service_namespace", ns),
            ("service_instance_id", id),
        ];
        let top = top_deps.get(service);
        let keep = |endpoint: &str| top.is_some_and(|t| t.iter().any(|e| e == endpoint));
        let budget = to_budget(&snap.vals, &meta.counters);
        for series in prom::budget_series(&budget, &keep) {
            let i = match fams.iter().position(|f| f.name() == series.name) {
                Some(i) => i,
                None => {
                    fams.push(family(series.name, series.help, MetricType::COUNTER));
                    fams.len() - 1
                }
            };
            let mut pairs = base.to_vec();
            pairs.extend(series.labels.iter().map(|(k, v)| (*k, v.as_str())));
            push_counter(&mut fams[i], &pairs, series.value);
        }
    }
    out.extend(fams);
    let mut rss = family(
        "scalewise_memory_rss_bytes",
        "Resident memory of the instance's processes.",
        MetricType::GAUGE,
    );
    let mut notes = family(
        "scalewise_note",
        "Something the samplers could not see, in words (value 1).",
        MetricType::GAUGE,
    );
    for (service, meta, _) in latest {
        let ns = meta.resource.namespace.as_deref().unwrap_or("");
        let base = [
            ("service_name", service.as_str()),
            ("service_namespace", ns),
            ("service_instance_id", meta.resource.instance.as_str()),
        ];
        if let Some(v) = meta.rss_bytes {
            push_gauge(&mut rss, &base, v);
        }
        for n in &meta.counters.notes {
            let mut pairs = base.to_vec();
            pairs.push(("note", n));
            push_gauge(&mut notes, &pairs, 1.0);
        }
    }
    out.push(rss);
    out.push(notes);
}

/// The text exposition of everything, at `now_ms`.
pub fn render(app: &App, now_ms: i64) -> Vec<u8> {
    let mut fams = app.telemetry.registry.gather();
    let mut build = family(
        "scalewise_build_info",
        "Build information; value 1.",
        MetricType::GAUGE,
    );
    push_gauge(&mut build, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    fams.push(build);

    let window = app.config.metrics_window.ms();
    let summaries = app.summaries(window, now_ms);
    let g = |name: &str, help: &str| family(name, help, MetricType::GAUGE);
    let mut share = g(
        "scalewise_component_share_ratio",
        "Share of request time per component.",
    );
    let mut dep_share = g(
        "scalewise_dependency_share_ratio",
        "Share of request time awaiting one dependency.",
    );
    let mut verdict = g(
        "scalewise_verdict",
        "What limits the service: 1 for the current verdict, 0 for the others.",
    );
    let mut confidence = g(
        "scalewise_verdict_confidence_ratio",
        "Confidence of the verdict.",
    );
    let mut used = g("scalewise_cpu_used_cores", "Cores used over the window.");
    let mut capacity = g("scalewise_cpu_capacity_cores", "Cores the service may use.");
    let mut rate = g("scalewise_requests_per_second", "Request rate.");
    let mut latency = g("scalewise_request_latency_seconds", "Mean request latency.");
    let mut in_flight = g("scalewise_requests_in_flight", "Mean requests in flight.");
    let mut ceiling = g(
        "scalewise_rewrite_ceiling_ratio",
        "Share of request time on CPU, GC and run queue: the most any rewrite can save.",
    );
    let mut instances = g(
        "scalewise_service_instances",
        "Instances seen in the window.",
    );
    let mut last_seen = g(
        "scalewise_service_last_seen_timestamp_seconds",
        "Last point received from the service.",
    );
    let mut limit = g(
        "scalewise_limit",
        "What limits the service, named: 1 for the current limit's kind (none when nothing stands out).",
    );
    let mut limit_busy = g(
        "scalewise_limit_busy",
        "Mean occupancy of the named limit (cores, threads, requests outstanding), where it has one.",
    );
    let mut top_deps = std::collections::BTreeMap::default();
    for (view, _) in &summaries {
        let d = &view.diagnosis;
        let s = d.service.as_str();
        let b = &d.breakdown;
        for (c, v) in [
            ("cpu", b.cpu),
            ("gc", b.gc),
            ("cpu_wait", b.cpu_wait),
            ("downstream", b.downstream),
            ("local_wait", b.local_wait),
        ] {
            push_gauge(&mut share, &[("service_name", s), ("component", c)], v);
        }
        let mut other = 0.0;
        let mut top = Vec::default();
        for (k, dep) in d.dependencies.iter().enumerate() {
            if k < TOP_DEPENDENCIES {
                top.push(dep.endpoint.clone());
                let shown = dep.name.clone().unwrap_or_else(|| dep.endpoint.clone());
                push_gauge(
                    &mut dep_share,
                    &[
                        ("service_name", s),
                        ("dependency", &shown),
                        ("dependency_kind", &dep.kind),
                    ],
                    dep.share,
                );
            } else {
                other += dep.share;
            }
        }
        if d.dependencies.len() > TOP_DEPENDENCIES {
            push_gauge(
                &mut dep_share,
                &[
                    ("service_name", s),
                    ("dependency", "other"),
                    ("dependency_kind", "other"),
                ],
                other,
            );
        }
        top_deps.insert(s.to_string(), top);
        for v in [
            Verdict::ScaleUp,
            Verdict::ScaleOut,
            Verdict::Dependency,
            Verdict::InsufficientData,
        ] {
            push_gauge(
                &mut verdict,
                &[("service_name", s), ("verdict", v.as_str())],
                if v == d.verdict { 1.0 } else { 0.0 },
            );
        }
        let one = [("service_name", s)];
        push_gauge(&mut confidence, &one, d.confidence);
        push_gauge(&mut used, &one, d.cpu.used_cores);
        push_gauge(&mut capacity, &one, d.cpu.capacity_cores);
        push_gauge(&mut rate, &one, d.requests.rate_per_s);
        // Absent, not zero, when it was not measured.
        if let Some(ms) = d.requests.mean_latency_ms {
            push_gauge(&mut latency, &one, ms / 1000.0);
        }
        push_gauge(&mut in_flight, &one, d.requests.mean_in_flight);
        push_gauge(&mut ceiling, &one, b.cpu + b.gc + b.cpu_wait);
        push_gauge(&mut instances, &one, view.instances as f64);
        push_gauge(&mut last_seen, &one, view.last_seen_unix);
        // A bounded label: the kind, never the name (an endpoint or a thread is unbounded).
        let kind = d.limit.as_ref().map_or("none", |l| l.kind.as_str());
        push_gauge(&mut limit, &[("service_name", s), ("kind", kind)], 1.0);
        if let Some(busy) = d.limit.as_ref().and_then(|l| l.busy) {
            push_gauge(
                &mut limit_busy,
                &[("service_name", s), ("kind", kind)],
                busy,
            );
        }
    }
    fams.extend([
        share, dep_share, verdict, confidence, used, capacity, rate, latency, in_flight, ceiling,
        instances, last_seen, limit, limit_busy,
    ]);
    instance_counters(&mut fams, &app.latest(), &top_deps);
    // The text format forbids empty families' headers without samples in some parsers.
    fams.retain(|f| !f.get_metric().is_empty());
    let mut buf = Vec::default();
    if let Err(e) = TextEncoder::new().encode(&fams, &mut buf) {
        tracing::warn!(%e, "encoding /metrics");
    }
    buf
}
