//! `--metrics-listen`: the budget counters and the agent's own telemetry in the Prometheus text
//! format, for a Prometheus that scrapes pods directly. Names and labels as in docs/metrics.md.
//!
//! The values are cumulative totals kept by the sessions, so the families are built at scrape
//! time from the latest snapshots (the `prometheus` crate's data model and text encoder) rather
//! than through its inc-only counters.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::Encoder;
use scalewise_core::wire::{self, WirePoint};

use super::{InstanceView, Shared};

/// Dependencies per service instance kept as their own series; the rest add up as `other`.
pub const MAX_DEPENDENCIES: usize = 20;

/// The Prometheus name of a wire metric (docs/metrics.md).
pub fn prometheus_name(metric: &str) -> Option<&'static str> {
    Some(match metric {
        wire::SAMPLED_TIME => "scalewise_sampled_seconds_total",
        wire::REQUEST_TIME => "scalewise_request_time_seconds_total",
        wire::REQUESTS => "scalewise_requests_total",
        wire::COMPONENT_TIME => "scalewise_request_component_time_seconds_total",
        wire::DEPENDENCY_TIME => "scalewise_dependency_time_seconds_total",
        wire::QUEUED_TIME => "scalewise_request_queued_seconds_total",
        wire::LOOP_QUEUED_TIME => "scalewise_request_loop_queued_seconds_total",
        wire::SEND_QUEUE_TIME => "scalewise_request_send_queue_seconds_total",
        wire::CONNECTION_TIME => "scalewise_connection_seconds_total",
        wire::LOOP_CPU_TIME => "scalewise_loop_cpu_seconds_total",
        wire::LOOP_DELAY_TIME => "scalewise_loop_delay_seconds_total",
        wire::GC_PAUSE_TIME => "scalewise_gc_pause_seconds_total",
        wire::GC_CPU_TIME => "scalewise_gc_cpu_seconds_total",
        wire::CPU_CAPACITY_TIME => "scalewise_cpu_capacity_seconds_total",
        wire::CPU_THROTTLED_TIME => "scalewise_cpu_throttled_seconds_total",
        wire::CPU_PRESSURE_TIME => "scalewise_cpu_pressure_seconds_total",
        wire::THREAD_BLOCKED_TIME => "scalewise_thread_blocked_seconds_total",
        wire::THREAD_BUSIEST_TIME => "scalewise_thread_busiest_seconds_total",
        wire::SOCKET_SAMPLES => "scalewise_socket_samples_total",
        wire::MEMORY_RSS => "scalewise_memory_rss_bytes",
        wire::NOTE => "scalewise_note",
        _ => return None,
    })
}

/// A wire attribute as Prometheus labels (`None`: not a label, e.g. the busiest thread's name,
/// which would make a new series each time another thread is the busiest).
fn labels_of(p: &WirePoint) -> Vec<(&'static str, String)> {
    let get = |k: &str| {
        p.attrs
            .iter()
            .find(|(a, _)| *a == k)
            .map(|(_, v)| v.clone())
    };
    match p.metric {
        wire::REQUEST_TIME => vec![("source", get(wire::ATTR_REQUEST_SOURCE).unwrap_or_default())],
        wire::COMPONENT_TIME => vec![("component", get(wire::ATTR_COMPONENT).unwrap_or_default())],
        wire::SOCKET_SAMPLES => vec![(
            "outcome",
            get(wire::ATTR_SAMPLE_OUTCOME).unwrap_or_default(),
        )],
        wire::NOTE => vec![("note", get(wire::ATTR_NOTE).unwrap_or_default())],
        wire::DEPENDENCY_TIME => {
            let name = get(wire::ATTR_PEER_NAME).unwrap_or_else(|| {
                let addr = get(wire::ATTR_SERVER_ADDRESS).unwrap_or_default();
                let port = get(wire::ATTR_SERVER_PORT).unwrap_or_default();
                if addr.contains(':') {
                    format!("[{addr}]:{port}")
                } else {
                    format!("{addr}:{port}")
                }
            });
            vec![
                ("dependency", name),
                (
                    "dependency_kind",
                    get(wire::ATTR_DB_SYSTEM).unwrap_or_default(),
                ),
            ]
        }
        _ => Vec::new(),
    }
}

/// Keeps the largest [`MAX_DEPENDENCIES`] dependency series, the rest summed as `other`.
fn cap_dependencies(points: Vec<WirePoint>) -> Vec<WirePoint> {
    let (mut deps, mut rest): (Vec<WirePoint>, Vec<WirePoint>) = points
        .into_iter()
        .partition(|p| p.metric == wire::DEPENDENCY_TIME);
    if deps.len() > MAX_DEPENDENCIES {
        deps.sort_by(|a, b| b.value.total_cmp(&a.value));
        let other: f64 = deps[MAX_DEPENDENCIES..].iter().map(|p| p.value).sum();
        deps.truncate(MAX_DEPENDENCIES);
        deps.push(WirePoint {
            metric: wire::DEPENDENCY_TIME,
            attrs: vec![
                (wire::ATTR_PEER_NAME, "other".to_string()),
                (wire::ATTR_DB_SYSTEM, "other".to_string()),
            ],
            value: other,
        });
    }
    rest.extend(deps);
    rest
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

#[derive(Default)]
struct Families {
    by_name: BTreeMap<&'static str, MetricFamily>,
}

impl Families {
    fn add(
        &mut self,
        name: &'static str,
        help: &str,
        counter: bool,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let fam = self.by_name.entry(name).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(if counter {
                MetricType::COUNTER
            } else {
                MetricType::GAUGE
            });
            f
        });
        let mut m = Metric::default();
        m.set_label(labels.iter().map(|(k, v)| label(k, v)).collect());
        if counter {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        fam.mut_metric().push(m);
    }
}

fn instance_series(f: &mut Families, id: &str, v: &InstanceView) {
    let mut base: Vec<(&str, &str)> = vec![
        ("service_name", v.meta.service.name.as_str()),
        ("service_instance_id", id),
    ];
    if let Some((_, ns)) = v
        .meta
        .service
        .attrs
        .iter()
        .find(|(k, _)| *k == "service.namespace")
    {
        base.push(("service_namespace", ns.as_str()));
    }
    let mut points = cap_dependencies(wire::budget_points(&v.budget));
    points.push(WirePoint {
        metric: wire::MEMORY_RSS,
        attrs: Vec::new(),
        value: v.rss_bytes as f64,
    });
    for p in &points {
        let Some(name) = prometheus_name(p.metric) else {
            continue;
        };
        let counter = wire::METRICS
            .iter()
            .any(|(m, _, sum)| *m == p.metric && *sum);
        let own = labels_of(p);
        let mut labels = base.clone();
        labels.extend(own.iter().map(|(k, v)| (*k, v.as_str())));
        f.add(name, p.metric, counter, &labels, p.value + 0.0);
    }
}

/// The agent's own CPU seconds and resident bytes.
fn self_usage() -> Option<(f64, f64)> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
    let rss = me.statm().ok()?.resident as f64 * procfs::page_size() as f64;
    Some((cpu, rss))
}

/// The whole exposition, from the latest snapshots.
pub fn render(shared: &Shared) -> String {
    let mut f = Families::default();
    let instances: Vec<(String, InstanceView)> = shared
        .instances
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut errors = shared
        .retired_errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut services = std::collections::BTreeSet::new();
    for (id, v) in &instances {
        instance_series(&mut f, id, v);
        if !v.ended {
            services.insert(v.meta.service.name.clone());
            for (k, n) in &v.errors {
                *errors.entry(*k).or_default() += n;
            }
        }
    }
    f.add(
        "scalewise_agent_samples_total",
        "Sampling rounds taken (one per instance per round)",
        true,
        &[],
        shared.samples.load(Ordering::Relaxed) as f64,
    );
    for ((sampler, kind), n) in &errors {
        f.add(
            "scalewise_agent_sampler_errors_total",
            "A sampler failed to read something; sampling goes on",
            true,
            &[("sampler", sampler), ("kind", kind)],
            *n as f64,
        );
    }
    for (result, n) in [
        ("ok", shared.exports_ok.load(Ordering::Relaxed)),
        ("failed", shared.exports_failed.load(Ordering::Relaxed)),
    ] {
        f.add(
            "scalewise_agent_exports_total",
            "OTLP exports (one per instance per interval)",
            true,
            &[("result", result)],
            n as f64,
        );
    }
    let last = shared.last_export_unix_ms.load(Ordering::Relaxed);
    if last > 0 {
        f.add(
            "scalewise_agent_last_export_timestamp_seconds",
            "When an export last succeeded (Unix seconds)",
            false,
            &[],
            last as f64 / 1000.0,
        );
    }
    if let Some((cpu, rss)) = self_usage() {
        f.add(
            "scalewise_agent_cpu_seconds_total",
            "The agent's own CPU time",
            true,
            &[],
            cpu,
        );
        f.add(
            "scalewise_agent_resident_memory_bytes",
            "The agent's own resident memory",
            false,
            &[],
            rss,
        );
    }
    f.add(
        "scalewise_agent_services",
        "Services watched",
        false,
        &[],
        services.len() as f64,
    );
    let mut skipped: BTreeMap<&'static str, f64> = BTreeMap::new();
    for s in shared
        .skipped
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
    {
        *skipped.entry(s.reason).or_default() += 1.0;
    }
    for (reason, n) in skipped {
        f.add(
            "scalewise_agent_skipped_services",
            "Services found but not sampled, by reason",
            false,
            &[("reason", reason)],
            n,
        );
    }
    f.add(
        "scalewise_build_info",
        "Build information",
        false,
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    let families: Vec<MetricFamily> = f.by_name.into_values().collect();
    let mut out = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!(error = %e, "Prometheus encoding failed");
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /metrics` (fresh snapshots, at most a second old) and `GET /healthz`.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let shared = shared.clone();
                async move {
                    shared.refresh(Duration::from_secs(1)).await;
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            prometheus::TEXT_FORMAT.to_string(),
                        )],
                        render(&shared),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalewise_core::{Budget, DependencyTime};

    #[test]
    fn every_wire_metric_has_a_prometheus_name() {
        for (m, _, sum) in wire::METRICS {
            let name = prometheus_name(m).expect(m);
            assert_eq!(name.ends_with("_total"), *sum, "{name}");
        }
    }

    #[test]
    fn dependencies_are_capped_with_an_overflow_series() {
        let mut b = Budget::default();
        for i in 0..30 {
            b.downstream.insert(
                format!("10.0.0.{i}:5432"),
                DependencyTime {
                    kind: "postgresql".into(),
                    name: None,
                    awaiting_s: i as f64,
                },
            );
        }
        let points = cap_dependencies(wire::budget_points(&b));
        let deps: Vec<&WirePoint> = points
            .iter()
            .filter(|p| p.metric == wire::DEPENDENCY_TIME)
            .collect();
        assert_eq!(deps.len(), MAX_DEPENDENCIES + 1);
        let total: f64 = deps.iter().map(|p| p.value).sum();
        assert_eq!(total, (0..30).sum::<i32>() as f64);
        let other = deps.last().map(|p| labels_of(p)).unwrap_or_default();
        assert_eq!(other[0], ("dependency", "other".to_string()));
    }
}
