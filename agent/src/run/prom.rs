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
use scalewise_core::wire::{self, prom};

use super::{InstanceView, Shared};

/// Dependencies per service instance kept as their own series; the rest add up as `other`.
pub const MAX_DEPENDENCIES: usize = 20;

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

/// One instance's budget ([`prom::budget_series`], the same series as the collector's
/// `/metrics`), its resident memory and its notes.
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
    let top = prom::top_dependencies(&v.budget, MAX_DEPENDENCIES);
    let keep = |endpoint: &str| top.iter().any(|e| e == endpoint);
    for series in prom::budget_series(&v.budget, &keep) {
        let mut labels = base.clone();
        labels.extend(series.labels.iter().map(|(k, v)| (*k, v.as_str())));
        f.add(
            series.name,
            series.help,
            series.counter,
            &labels,
            series.value,
        );
    }
    f.add(
        "scalewise_memory_rss_bytes",
        "Resident memory of the instance's processes.",
        false,
        &base,
        v.rss_bytes as f64,
    );
    for note in v.budget.notes.iter().take(wire::MAX_NOTES) {
        let bounded = wire::bounded(note);
        let mut labels = base.clone();
        labels.push(("note", bounded.as_str()));
        f.add(
            "scalewise_note",
            "Something the samplers could not see, in words (value 1).",
            false,
            &labels,
            1.0,
        );
    }
}

/// The agent's own CPU seconds and resident bytes.
fn self_usage() -> Option<(f64, f64)> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
    let rss = crate::runtime::resident_bytes(std::path::Path::new("/proc"), &[std::process::id()])?;
    Some((cpu, rss as f64))
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

/// `GET /metrics` (fresh snapshots, at most a second old), `GET /healthz` (the process answers)
/// and `GET /readyz` (200 once the first discovery round is done, 503 before it and while
/// stopping).
pub fn router(shared: Arc<Shared>) -> axum::Router {
    use axum::routing::get;
    let ready = shared.clone();
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
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move { readyz(&ready) }
            }),
        )
}

fn readyz(shared: &Shared) -> (axum::http::StatusCode, &'static str) {
    use axum::http::StatusCode;
    if shared.stop.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
    } else if shared.discovered.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "starting: first discovery round not done\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalewise_core::{Budget, DependencyTime};

    #[test]
    fn ready_after_the_first_discovery_round_and_not_while_stopping() {
        let s = Shared::default();
        assert_eq!(readyz(&s).0, 503);
        s.discovered.store(true, Ordering::SeqCst);
        assert_eq!(readyz(&s).0, 200);
        s.stop.store(true, Ordering::SeqCst);
        assert_eq!(readyz(&s).0, 503);
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
                    connection_s: 0.0,
                },
            );
        }
        let mut f = Families::default();
        let view = InstanceView {
            meta: Arc::new(super::super::InstanceMeta {
                id: "i-1".into(),
                service: super::super::discovery::ServiceInfo {
                    name: "api".into(),
                    attrs: Vec::new(),
                },
                pids: vec![1],
                host: "h".into(),
                start: std::time::SystemTime::UNIX_EPOCH,
                members: Vec::new(),
                runtime: None,
            }),
            budget: b,
            rss_bytes: 0,
            errors: Default::default(),
            ended: false,
        };
        instance_series(&mut f, "i-1", &view);
        let deps = &f.by_name[prom::DEPENDENCY_NAME];
        assert_eq!(deps.get_metric().len(), MAX_DEPENDENCIES + 1);
        let total: f64 = deps
            .get_metric()
            .iter()
            .map(|m| m.get_counter().get_value())
            .sum();
        assert_eq!(total, (0..30).sum::<i32>() as f64);
        assert!(deps.get_metric().iter().any(|m| m
            .get_label()
            .iter()
            .any(|l| l.name() == "dependency" && l.value() == prom::OTHER)));
    }
}
