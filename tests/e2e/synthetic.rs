//! An hour of synthetic scalewise series as OpenMetrics text with timestamps, for
//! `promtool tsdb create-blocks-from openmetrics`: every metric of docs/metrics.md, with its
//! pinned labels, as a collector and two agents would expose them (plus the `job`/`instance`
//! labels Prometheus adds). Two services of two instances each: `orders`, bound by PostgreSQL,
//! and `pricing`, bound by its CPU (its verdict was scale_out from 40 to 25 minutes ago).

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub const STEP_S: f64 = 15.0;
pub const HISTORY_S: f64 = 3600.0;

type Labels = Vec<(&'static str, String)>;
type Value = Box<dyn Fn(f64) -> f64>;
/// Series name, labels, value at t seconds into the hour.
type Series = (String, Labels, Value);

/// A family's series: (TYPE, series name, labels, value at t seconds into the hour).
#[derive(Default)]
struct Families(BTreeMap<&'static str, (&'static str, Vec<Series>)>);

impl Families {
    fn add(
        &mut self,
        family: &'static str,
        kind: &'static str,
        name: &str,
        labels: Labels,
        value: Value,
    ) {
        self.0.entry(family).or_insert((kind, Vec::new())).1.push((
            name.to_string(),
            labels,
            value,
        ));
    }

    /// A counter (`family` + `_total`) growing at `rate(t)` per second.
    fn counter(
        &mut self,
        family: &'static str,
        labels: Labels,
        rate: impl Fn(f64) -> f64 + 'static,
    ) {
        self.add(
            family,
            "counter",
            &format!("{family}_total"),
            labels,
            integrate(rate),
        );
    }

    fn gauge(&mut self, name: &'static str, labels: Labels, value: impl Fn(f64) -> f64 + 'static) {
        self.add(name, "gauge", name, labels, Box::new(value));
    }
}

/// The cumulative sum of `rate` over whole steps up to t.
fn integrate(rate: impl Fn(f64) -> f64 + 'static) -> Value {
    Box::new(move |t| {
        let n = (t / STEP_S).floor() as usize;
        (0..n).map(|i| rate(i as f64 * STEP_S) * STEP_S).sum()
    })
}

/// Slow variation, so the series are not flat lines.
fn wave(t: f64, period: f64, depth: f64) -> f64 {
    1.0 + depth * (t * std::f64::consts::TAU / period).sin()
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn with(mut base: Labels, extra: &[(&'static str, &str)]) -> Labels {
    base.extend(labels(extra));
    base
}

/// Per instance: requests/s, mean latency (s), request-seconds per second on CPU, waiting for a
/// CPU, in GC, and per dependency (address, kind, request-seconds per second).
struct Instance {
    service: &'static str,
    id: &'static str,
    rps: f64,
    latency: f64,
    cpu: f64,
    cpu_wait: f64,
    gc: f64,
    deps: &'static [(&'static str, &'static str, f64)],
}

const INSTANCES: &[Instance] = &[
    Instance {
        service: "orders",
        id: "orders-a",
        rps: 100.0,
        latency: 0.040,
        cpu: 0.30,
        cpu_wait: 0.02,
        gc: 0.02,
        deps: &[
            ("orders-db:5432", "postgresql", 3.2),
            ("cache:6379", "redis", 0.2),
        ],
    },
    Instance {
        service: "orders",
        id: "orders-b",
        rps: 90.0,
        latency: 0.044,
        cpu: 0.28,
        cpu_wait: 0.02,
        gc: 0.02,
        deps: &[
            ("orders-db:5432", "postgresql", 3.1),
            ("cache:6379", "redis", 0.2),
        ],
    },
    Instance {
        service: "pricing",
        id: "pricing-a",
        rps: 150.0,
        latency: 0.040,
        cpu: 1.80,
        cpu_wait: 2.0,
        gc: 0.05,
        deps: &[("pricing-cache:11211", "memcached", 0.1)],
    },
    Instance {
        service: "pricing",
        id: "pricing-b",
        rps: 140.0,
        latency: 0.042,
        cpu: 1.70,
        cpu_wait: 2.1,
        gc: 0.05,
        deps: &[("pricing-cache:11211", "memcached", 0.1)],
    },
];

fn families() -> Families {
    let mut f = Families::default();
    let collector = labels(&[
        ("job", "scalewise-collector"),
        ("instance", "127.0.0.1:4318"),
    ]);

    // Budget counters per instance, re-exported by the collector.
    for i in INSTANCES {
        let l = with(
            collector.clone(),
            &[
                ("service_namespace", "shop"),
                ("service_name", i.service),
                ("service_instance_id", i.id),
            ],
        );
        // The CPU-bound service varies less: its CPU stays under its 2-core capacity.
        let (period, depth) = if i.service == "orders" {
            (1800.0, 0.2)
        } else {
            (1200.0, 0.08)
        };
        let w = move |t: f64| wave(t, period, depth);
        let r = i.rps * i.latency;
        let rps = i.rps;
        f.counter(
            "scalewise_request_time_seconds",
            with(l.clone(), &[("source", "sockets")]),
            move |t| r * w(t),
        );
        f.counter("scalewise_requests", l.clone(), move |t| rps * w(t));
        f.counter("scalewise_sampled_seconds", l.clone(), |_| 1.0);
        let downstream: f64 = i.deps.iter().map(|d| d.2).sum();
        for (component, rate) in [
            ("cpu", i.cpu),
            ("gc", i.gc),
            ("cpu_wait", i.cpu_wait),
            ("downstream", downstream),
        ] {
            f.counter(
                "scalewise_request_component_time_seconds",
                with(l.clone(), &[("component", component)]),
                move |t| rate * w(t),
            );
        }
        for &(dep, kind, rate) in i.deps {
            f.counter(
                "scalewise_dependency_time_seconds",
                with(l.clone(), &[("dependency", dep), ("dependency_kind", kind)]),
                move |t| rate * w(t),
            );
        }
        let cpu_bound = i.service == "pricing";
        for (family, rate) in [
            ("scalewise_gc_pause_seconds", i.gc / r * 0.8),
            ("scalewise_gc_cpu_seconds", i.gc),
            ("scalewise_cpu_capacity_seconds", 2.0),
            (
                "scalewise_cpu_throttled_seconds",
                if cpu_bound { 0.15 } else { 0.0 },
            ),
            (
                "scalewise_cpu_pressure_seconds",
                if cpu_bound { 0.45 } else { 0.02 },
            ),
            ("scalewise_thread_blocked_seconds", 0.1),
        ] {
            f.counter(family, l.clone(), move |_| rate);
        }
        let busiest = (i.cpu / 4.0).min(1.0);
        f.counter(
            "scalewise_thread_busiest_seconds",
            with(l.clone(), &[("thread_name", "worker-1")]),
            move |_| busiest,
        );
        for (outcome, rate) in [("certain", 50.0), ("ambiguous", 1.0)] {
            f.counter(
                "scalewise_socket_samples",
                with(l.clone(), &[("outcome", outcome)]),
                move |_| rate,
            );
        }
        let rss = if cpu_bound { 95e6 } else { 180e6 };
        f.gauge("scalewise_memory_rss_bytes", l.clone(), move |t| {
            rss * wave(t, 900.0, 0.05)
        });
        f.gauge(
            "scalewise_note",
            with(
                l,
                &[("note_text", "no GC source: the runtime exposes none")],
            ),
            |_| 1.0,
        );
    }

    // Engine results per service.
    type Engine = (
        &'static str,
        [(&'static str, f64); 5],
        &'static [(&'static str, &'static str, f64)],
        [f64; 5],
    );
    let engine: [Engine; 2] = [
        // shares; dependency shares; confidence, used cores, requests/s, latency, rewrite ceiling
        (
            "orders",
            [
                ("cpu", 0.07),
                ("gc", 0.005),
                ("cpu_wait", 0.005),
                ("downstream", 0.85),
                ("local_wait", 0.07),
            ],
            &[
                ("orders-db:5432", "postgresql", 0.80),
                ("cache:6379", "redis", 0.05),
            ],
            [0.95, 0.62, 190.0, 0.042, 0.08],
        ),
        (
            "pricing",
            [
                ("cpu", 0.30),
                ("gc", 0.01),
                ("cpu_wait", 0.34),
                ("downstream", 0.02),
                ("local_wait", 0.33),
            ],
            &[("pricing-cache:11211", "memcached", 0.02)],
            [0.8, 3.6, 290.0, 0.041, 0.65],
        ),
    ];
    for (svc, shares, deps, [confidence, used, rps, latency, ceiling]) in engine {
        let l = with(collector.clone(), &[("service_name", svc)]);
        for (c, share) in shares {
            f.gauge(
                "scalewise_component_share_ratio",
                with(l.clone(), &[("component", c)]),
                move |_| share,
            );
        }
        for &(dep, kind, share) in deps {
            f.gauge(
                "scalewise_dependency_share_ratio",
                with(l.clone(), &[("dependency", dep), ("dependency_kind", kind)]),
                move |_| share,
            );
        }
        for verdict in ["scale_up", "scale_out", "dependency", "insufficient_data"] {
            let active: fn(f64) -> bool = match (svc, verdict) {
                ("orders", "dependency") => |_| true,
                ("pricing", "scale_up") => |t| !(1200.0..2100.0).contains(&t),
                ("pricing", "scale_out") => |t| (1200.0..2100.0).contains(&t),
                _ => |_| false,
            };
            f.gauge(
                "scalewise_verdict",
                with(l.clone(), &[("verdict", verdict)]),
                move |t| if active(t) { 1.0 } else { 0.0 },
            );
        }
        for (name, value) in [
            ("scalewise_verdict_confidence_ratio", confidence),
            ("scalewise_cpu_used_cores", used),
            ("scalewise_cpu_capacity_cores", 4.0),
            ("scalewise_requests_per_second", rps),
            ("scalewise_request_latency_seconds", latency),
            ("scalewise_requests_in_flight", rps * latency),
            ("scalewise_rewrite_ceiling_ratio", ceiling),
            ("scalewise_service_instances", 2.0),
        ] {
            f.gauge(name, l.clone(), move |_| value);
        }
        let (limit, busy) = if svc == "orders" {
            ("dependency", rps * latency * 0.8)
        } else {
            ("cpu_saturated", used)
        };
        f.gauge(
            "scalewise_limit",
            with(l.clone(), &[("kind", limit)]),
            |_| 1.0,
        );
        f.gauge(
            "scalewise_limit_busy",
            with(l.clone(), &[("kind", limit)]),
            move |_| busy,
        );
        f.gauge("scalewise_service_last_seen_timestamp_seconds", l, |t| t);
    }

    // Collector self-telemetry.
    let c = |extra: &[(&'static str, &str)]| with(collector.clone(), extra);
    f.counter(
        "scalewise_collector_points_received",
        c(&[("transport", "http")]),
        |_| 12.0,
    );
    f.counter(
        "scalewise_collector_points_rejected",
        c(&[("reason", "out_of_order")]),
        |_| 0.01,
    );
    f.counter(
        "scalewise_collector_requests_rejected",
        c(&[("reason", "unauthorized")]),
        |_| 0.0,
    );
    f.counter(
        "scalewise_collector_overflow_dropped",
        c(&[("limit", "dependencies")]),
        |_| 0.0,
    );
    f.counter(
        "scalewise_collector_connections_dropped",
        c(&[("reason", "timeout")]),
        |_| 0.0,
    );
    f.gauge("scalewise_collector_connections_open", c(&[]), |_| 3.0);
    f.counter(
        "scalewise_collector_sqlite_write_errors",
        c(&[("reason", "disk_full")]),
        |_| 0.0,
    );
    f.counter("scalewise_collector_sqlite_recreated", c(&[]), |_| 0.0);
    f.gauge("scalewise_collector_services", c(&[]), |_| 2.0);
    f.gauge("scalewise_collector_instances", c(&[]), |_| 4.0);
    let h = "scalewise_collector_sqlite_write_seconds";
    for (le, share) in [("0.001", 0.2), ("0.01", 0.9), ("0.1", 1.0), ("+Inf", 1.0)] {
        f.add(
            h,
            "histogram",
            "scalewise_collector_sqlite_write_seconds_bucket",
            c(&[("le", le)]),
            integrate(move |_| share),
        );
    }
    f.add(
        h,
        "histogram",
        "scalewise_collector_sqlite_write_seconds_count",
        c(&[]),
        integrate(|_| 1.0),
    );
    f.add(
        h,
        "histogram",
        "scalewise_collector_sqlite_write_seconds_sum",
        c(&[]),
        integrate(|_| 0.004),
    );
    f.gauge("scalewise_build_info", c(&[("version", "0.1.0")]), |_| 1.0);
    f.gauge("up", c(&[]), |_| 1.0);

    // Two agents' self-telemetry.
    for node in ["node-a:9464", "node-b:9464"] {
        let a = |extra: &[(&'static str, &str)]| {
            with(
                labels(&[("job", "scalewise-agent"), ("instance", node)]),
                extra,
            )
        };
        f.counter("scalewise_agent_samples", a(&[]), |_| 5.0);
        f.counter(
            "scalewise_agent_sampler_errors",
            a(&[("sampler", "sockets"), ("kind", "not_found")]),
            |_| 0.02,
        );
        f.counter("scalewise_agent_exports", a(&[("result", "ok")]), |_| 0.1);
        f.counter(
            "scalewise_agent_exports",
            a(&[("result", "failed")]),
            |_| 0.0,
        );
        f.gauge(
            "scalewise_agent_last_export_timestamp_seconds",
            a(&[]),
            |t| t - 5.0,
        );
        f.counter("scalewise_agent_cpu_seconds", a(&[]), |_| 0.009);
        f.gauge("scalewise_agent_resident_memory_bytes", a(&[]), |_| 9.5e6);
        f.gauge("scalewise_agent_services", a(&[]), |_| 2.0);
        f.gauge(
            "scalewise_agent_skipped_services",
            a(&[("reason", "permission_denied")]),
            |_| 0.0,
        );
        f.gauge("scalewise_build_info", a(&[("version", "0.1.0")]), |_| 1.0);
        f.gauge("up", a(&[]), |_| 1.0);
    }
    f
}

/// The hour up to `end` (unix seconds) as OpenMetrics text. Series named `*_timestamp_seconds`
/// hold unix times (last seen, last export): their values are offset by the hour's start.
pub fn openmetrics(end: f64) -> String {
    let start = (end - HISTORY_S).floor();
    let mut out = String::new();
    for (family, (kind, series)) in families().0 {
        let _ = writeln!(out, "# TYPE {family} {kind}");
        for (name, labels, value) in series {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let offset = if name.ends_with("_timestamp_seconds") {
                start
            } else {
                0.0
            };
            let mut t = 0.0;
            while t <= HISTORY_S - STEP_S {
                let _ = writeln!(
                    out,
                    "{name}{{{}}} {} {}",
                    labels.join(","),
                    value(t) + offset,
                    start + t
                );
                t += STEP_S;
            }
        }
    }
    out.push_str("# EOF\n");
    out
}
