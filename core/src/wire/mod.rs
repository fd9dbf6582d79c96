//! The wire format between agents and collectors: a [`Budget`] as named cumulative counters.
//!
//! One mapping, used on both sides: the agent turns its session's budget into [`WirePoint`]s and
//! reports them through OpenTelemetry observable instruments; the collector turns the data points
//! it receives back into a budget with [`apply`]. Names follow the OpenTelemetry and Prometheus
//! conventions (`docs/metrics.md` has the table with the Prometheus spellings). Every metric is a
//! cumulative monotonic Sum whose `start_time_unix_nano` is when the instance started counting,
//! except the gauges named as such.
//!
//! Which budget field each counter is, and its store slot and Prometheus spelling, is the one
//! table in [`counters`]; [`prom`] renders a budget as Prometheus series for both `/metrics`.
//!
//! Pure: no I/O, no OpenTelemetry types, so both sides and the fuzz targets share it.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::budget::{Budget, RequestSource};

pub mod counters;
pub mod prom;

pub use counters::{Counter, COUNTERS, N_FIXED};

/// Wall seconds the instance was sampled (`Budget::window_s`).
pub const SAMPLED_TIME: &str = "scalewise.sampled.time";
/// `R`: request-seconds (mean requests in flight x time). Attribute [`ATTR_REQUEST_SOURCE`].
pub const REQUEST_TIME: &str = "scalewise.request.time";
/// Requests completed.
pub const REQUESTS: &str = "scalewise.requests";
/// Request-seconds per component. Attribute [`ATTR_COMPONENT`]: `cpu`, `gc`, `cpu_wait`,
/// `downstream` (the sum of [`DEPENDENCY_TIME`], for dashboards; receivers rebuild it from the
/// per-dependency series). `local_wait` is what is left of [`REQUEST_TIME`] and is not sent.
pub const COMPONENT_TIME: &str = "scalewise.request.component.time";
/// Request-seconds awaiting one downstream endpoint. Attributes [`ATTR_SERVER_ADDRESS`],
/// [`ATTR_SERVER_PORT`], [`ATTR_DB_SYSTEM`] (the kind) and, when the user named it,
/// [`ATTR_PEER_NAME`].
pub const DEPENDENCY_TIME: &str = "scalewise.dependency.time";
/// Connection-seconds to one downstream endpoint (`rate()` is the mean number of the service's
/// connections open to it: a pool's size). Same attributes as [`DEPENDENCY_TIME`]; sent only
/// where the connections are seen.
pub const DEPENDENCY_CONNECTION_TIME: &str = "scalewise.dependency.connection.time";
/// Part of [`REQUEST_TIME`] with the request's bytes unread in the service's socket.
pub const QUEUED_TIME: &str = "scalewise.request.queued.time";
/// Part of [`QUEUED_TIME`] in processes served by an event loop.
pub const LOOP_QUEUED_TIME: &str = "scalewise.request.loop_queued.time";
/// Part of [`REQUEST_TIME`] with the response written but not yet all sent or acknowledged.
pub const SEND_QUEUE_TIME: &str = "scalewise.request.send_queue.time";
/// On-CPU seconds of event-loop threads (a part of component `cpu`).
pub const LOOP_CPU_TIME: &str = "scalewise.loop.cpu.time";
/// Run-queue delay of event-loop threads (a part of component `cpu_wait`).
pub const LOOP_DELAY_TIME: &str = "scalewise.loop.delay.time";
/// Inbound connection-seconds: `rate()` is the mean number of open inbound connections.
pub const CONNECTION_TIME: &str = "scalewise.connection.time";
/// Wall seconds of stop-the-world GC pauses.
pub const GC_PAUSE_TIME: &str = "scalewise.gc.pause.time";
/// On-CPU seconds of runtime GC threads.
pub const GC_CPU_TIME: &str = "scalewise.gc.cpu.time";
/// Core-seconds the instance may use (capacity cores x time).
pub const CPU_CAPACITY_TIME: &str = "scalewise.cpu.capacity.time";
/// Seconds the instance's cgroup was throttled by its CPU quota.
pub const CPU_THROTTLED_TIME: &str = "scalewise.cpu.throttled.time";
/// Seconds some task of the instance's cgroup waited for a CPU (`cpu.pressure` some).
pub const CPU_PRESSURE_TIME: &str = "scalewise.cpu.pressure.time";
/// Thread-seconds application threads were sampled blocked on locks/futexes while serving.
pub const THREAD_BLOCKED_TIME: &str = "scalewise.thread.blocked.time";
/// Sum over sampling intervals of the busiest single thread's busy (on CPU or runnable) seconds
/// in that interval. Attribute [`ATTR_THREAD_NAME`] names the latest busiest thread. Instances do
/// not add: a service's value is the largest instance's.
pub const THREAD_BUSIEST_TIME: &str = "scalewise.thread.busiest.time";
/// Connection samples taken. Attribute [`ATTR_SAMPLE_OUTCOME`]: `certain` or `ambiguous`.
pub const SOCKET_SAMPLES: &str = "scalewise.socket.samples";
/// Gauge, bytes: resident memory of the instance's processes.
pub const MEMORY_RSS: &str = "scalewise.memory.rss";
/// Gauge, value 1: something the samplers could not see, said in words. Attribute
/// [`ATTR_NOTE`]; at most [`MAX_NOTES`] per instance.
pub const NOTE: &str = "scalewise.note";

pub const ATTR_REQUEST_SOURCE: &str = "scalewise.request.source";
pub const ATTR_COMPONENT: &str = "component";
pub const ATTR_SERVER_ADDRESS: &str = "server.address";
pub const ATTR_SERVER_PORT: &str = "server.port";
pub const ATTR_DB_SYSTEM: &str = "db.system.name";
pub const ATTR_PEER_NAME: &str = "service.peer.name";
pub const ATTR_THREAD_NAME: &str = "thread.name";
pub const ATTR_SAMPLE_OUTCOME: &str = "scalewise.sample.outcome";
pub const ATTR_NOTE: &str = "scalewise.note.text";

/// Longest attribute value kept; longer ones are cut at a character boundary.
pub const MAX_ATTR_LEN: usize = 256;
/// Notes per instance.
pub const MAX_NOTES: usize = 16;

/// Every metric name of the wire format, with its unit and whether it is a cumulative Sum.
pub const METRICS: &[(&str, &str, bool)] = &[
    (SAMPLED_TIME, "s", true),
    (REQUEST_TIME, "s", true),
    (REQUESTS, "{request}", true),
    (COMPONENT_TIME, "s", true),
    (DEPENDENCY_TIME, "s", true),
    (DEPENDENCY_CONNECTION_TIME, "s", true),
    (QUEUED_TIME, "s", true),
    (LOOP_QUEUED_TIME, "s", true),
    (SEND_QUEUE_TIME, "s", true),
    (CONNECTION_TIME, "s", true),
    (LOOP_CPU_TIME, "s", true),
    (LOOP_DELAY_TIME, "s", true),
    (GC_PAUSE_TIME, "s", true),
    (GC_CPU_TIME, "s", true),
    (CPU_CAPACITY_TIME, "s", true),
    (CPU_THROTTLED_TIME, "s", true),
    (CPU_PRESSURE_TIME, "s", true),
    (THREAD_BLOCKED_TIME, "s", true),
    (THREAD_BUSIEST_TIME, "s", true),
    (SOCKET_SAMPLES, "{sample}", true),
    (MEMORY_RSS, "By", false),
    (NOTE, "1", false),
];

/// One data point: a metric name, its attributes (sorted) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct WirePoint {
    pub metric: &'static str,
    pub attrs: Vec<(&'static str, String)>,
    pub value: f64,
}

fn with(metric: &'static str, attrs: Vec<(&'static str, String)>, value: f64) -> WirePoint {
    WirePoint {
        metric,
        attrs,
        value,
    }
}

/// Splits `ip:port` or `[v6]:port` into address and port.
fn split_endpoint(endpoint: &str) -> (String, String) {
    match endpoint.rsplit_once(':') {
        Some((addr, port)) if port.parse::<u16>().is_ok() => (
            addr.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port.to_string(),
        ),
        _ => (endpoint.to_string(), String::new()),
    }
}

fn join_endpoint(addr: &str, port: &str) -> String {
    if port.is_empty() {
        addr.to_string()
    } else if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// The budget's counters as data points, in a stable order: the counter table's rows, then the
/// `downstream` component, the dependencies and the notes.
pub fn budget_points(b: &Budget) -> Vec<WirePoint> {
    let mut out = Vec::with_capacity(COUNTERS.len() + 2 + b.downstream.len() + b.notes.len());
    for c in &COUNTERS {
        let mut attrs = Vec::new();
        if let Some((k, v)) = c.wire_attr {
            attrs.push((k, v.to_string()));
        }
        match c.wire {
            REQUEST_TIME => {
                attrs.push((ATTR_REQUEST_SOURCE, b.request_source.as_str().to_string()))
            }
            THREAD_BUSIEST_TIME => attrs.push((
                ATTR_THREAD_NAME,
                b.busiest_thread.clone().unwrap_or_default(),
            )),
            _ => {}
        }
        out.push(with(c.wire, attrs, (c.get)(b)));
    }
    out.push(with(
        COMPONENT_TIME,
        vec![(ATTR_COMPONENT, "downstream".to_string())],
        b.downstream_s(),
    ));
    for (endpoint, d) in &b.downstream {
        let (addr, port) = split_endpoint(endpoint);
        let mut attrs = vec![
            (ATTR_DB_SYSTEM, d.kind.clone()),
            (ATTR_SERVER_ADDRESS, addr),
            (ATTR_SERVER_PORT, port),
        ];
        if let Some(name) = &d.name {
            attrs.push((ATTR_PEER_NAME, name.clone()));
        }
        if d.connection_s > 0.0 {
            out.push(with(
                DEPENDENCY_CONNECTION_TIME,
                attrs.clone(),
                d.connection_s,
            ));
        }
        out.push(with(DEPENDENCY_TIME, attrs, d.awaiting_s));
    }
    for note in b.notes.iter().take(MAX_NOTES) {
        out.push(with(NOTE, vec![(ATTR_NOTE, bounded(note))], 1.0));
    }
    out
}

/// Cuts a value to [`MAX_ATTR_LEN`] bytes at a character boundary.
pub fn bounded(s: &str) -> String {
    crate::text::cut(s, MAX_ATTR_LEN).0
}

/// Why a data point was not taken into a budget.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("unknown metric {0}")]
    UnknownMetric(String),
    #[error("metric {metric}: value is not a finite non-negative number")]
    BadValue { metric: &'static str },
    #[error("metric {metric}: attribute {attr} missing or invalid")]
    BadAttribute {
        metric: &'static str,
        attr: &'static str,
    },
}

impl WireError {
    /// A short, fixed reason for counters (`rejected_points_total{reason}`).
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::UnknownMetric(_) => "unknown_metric",
            WireError::BadValue { .. } => "bad_value",
            WireError::BadAttribute { .. } => "bad_attribute",
        }
    }
}

/// The wire name for a received metric name, if it is one of ours.
pub fn known_metric(name: &str) -> Option<&'static str> {
    METRICS.iter().map(|m| m.0).find(|m| *m == name)
}

/// Takes one received data point into `b`. Values are cumulative: each point *sets* its counter
/// (the latest snapshot of an instance is the whole instance). `attr` looks an attribute up.
pub fn apply(
    b: &mut Budget,
    metric: &str,
    attr: &dyn Fn(&str) -> Option<String>,
    value: f64,
) -> Result<(), WireError> {
    let metric = known_metric(metric).ok_or_else(|| WireError::UnknownMetric(bounded(metric)))?;
    if !value.is_finite() || value < 0.0 {
        return Err(WireError::BadValue { metric });
    }
    let need = |a: &'static str| {
        attr(a)
            .map(|v| bounded(&v))
            .ok_or(WireError::BadAttribute { metric, attr: a })
    };
    match counters::find(metric, attr) {
        Err(missing) => {
            return Err(WireError::BadAttribute {
                metric,
                attr: missing,
            })
        }
        Ok(Some(c)) => {
            (c.set)(b, value);
            // The attributes that ride on a counter without telling it apart.
            match metric {
                REQUEST_TIME => {
                    b.request_source = match attr(ATTR_REQUEST_SOURCE).as_deref() {
                        Some("spans") => RequestSource::Spans,
                        Some("sockets") => RequestSource::Sockets,
                        _ => RequestSource::None,
                    }
                }
                THREAD_BUSIEST_TIME => {
                    b.busiest_thread = attr(ATTR_THREAD_NAME)
                        .filter(|n| !n.is_empty())
                        .map(|n| bounded(&n))
                }
                _ => {}
            }
            return Ok(());
        }
        Ok(None) => {}
    }
    match metric {
        COMPONENT_TIME => {} // `downstream`: rebuilt from the per-dependency series
        DEPENDENCY_TIME | DEPENDENCY_CONNECTION_TIME => {
            let addr = need(ATTR_SERVER_ADDRESS)?;
            let port = attr(ATTR_SERVER_PORT).unwrap_or_default();
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return Err(WireError::BadAttribute {
                    metric,
                    attr: ATTR_SERVER_PORT,
                });
            }
            let dep = b.downstream.entry(join_endpoint(&addr, &port)).or_default();
            dep.kind = attr(ATTR_DB_SYSTEM)
                .map(|k| bounded(&k))
                .unwrap_or_else(|| "unknown".to_string());
            dep.name = attr(ATTR_PEER_NAME).map(|n| bounded(&n));
            if metric == DEPENDENCY_TIME {
                dep.awaiting_s = value;
            } else {
                dep.connection_s = value;
            }
        }
        MEMORY_RSS => {} // a gauge, not a budget counter; receivers keep it per instance
        NOTE => {
            let text = need(ATTR_NOTE)?;
            if b.notes.len() < MAX_NOTES && !b.notes.contains(&text) {
                b.notes.push(text);
            }
        }
        _ => return Err(WireError::UnknownMetric(metric.to_string())),
    }
    Ok(())
}

/// Rebuilds a budget from points (the inverse of [`budget_points`]); errors are returned with the
/// point's index so a receiver can count them and go on.
pub fn budget_from_points<'a>(
    points: impl IntoIterator<Item = &'a WirePoint>,
) -> (Budget, Vec<(usize, WireError)>) {
    let mut b = Budget::default();
    let mut errors = Vec::new();
    for (i, p) in points.into_iter().enumerate() {
        let attrs: BTreeMap<&str, &str> = p.attrs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let look = |k: &str| attrs.get(k).map(|v| v.to_string());
        if let Err(e) = apply(&mut b, p.metric, &look, p.value) {
            errors.push((i, e));
        }
    }
    (b, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::DependencyTime;

    fn sample() -> Budget {
        let mut b = Budget {
            window_s: 10.0,
            request_s: 40.0,
            requests: 1000.0,
            request_source: RequestSource::Sockets,
            cpu_s: 5.0,
            gc_s: 0.5,
            cpu_wait_s: 1.0,
            gc_pause_s: 0.1,
            queued_s: 0.7,
            loop_queued_s: 0.5,
            send_queue_s: 0.2,
            inbound_conn_s: 90.0,
            loop_cpu_s: 4.0,
            loop_delay_s: 0.5,
            gc_thread_cpu_s: 0.2,
            capacity_core_s: 20.0,
            throttled_s: 0.3,
            cpu_pressure_s: 0.4,
            blocked_lock_s: 2.0,
            busiest_thread_busy_s: 3.0,
            busiest_thread: Some("worker-1 (pid 7)".into()),
            socket_samples: 500,
            ambiguous_samples: 20,
            notes: vec!["a note".into()],
            ..Budget::default()
        };
        b.downstream.insert(
            "127.0.0.1:5432".into(),
            DependencyTime {
                kind: "postgresql".into(),
                name: Some("orders-db".into()),
                awaiting_s: 30.0,
                connection_s: 0.0,
            },
        );
        b.downstream.insert(
            "[::1]:8080".into(),
            DependencyTime {
                kind: "http".into(),
                name: None,
                awaiting_s: 1.5,
                connection_s: 0.0,
            },
        );
        b
    }

    #[test]
    fn a_budget_survives_the_wire() {
        let b = sample();
        let (back, errors) = budget_from_points(&budget_points(&b));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(back, b);
    }

    #[test]
    fn every_emitted_metric_is_declared() {
        for p in budget_points(&sample()) {
            assert!(known_metric(p.metric).is_some(), "{}", p.metric);
        }
    }

    #[test]
    fn bad_points_are_refused_with_a_reason() {
        let mut b = Budget::default();
        let none = |_: &str| None;
        assert_eq!(
            apply(&mut b, "http.server.duration", &none, 1.0)
                .expect_err("refused")
                .reason(),
            "unknown_metric"
        );
        for v in [f64::NAN, f64::INFINITY, -1.0] {
            assert_eq!(
                apply(&mut b, REQUESTS, &none, v)
                    .expect_err("refused")
                    .reason(),
                "bad_value"
            );
        }
        assert_eq!(
            apply(&mut b, COMPONENT_TIME, &none, 1.0)
                .expect_err("refused")
                .reason(),
            "bad_attribute"
        );
        let bad_port = |k: &str| match k {
            ATTR_SERVER_ADDRESS => Some("db".to_string()),
            ATTR_SERVER_PORT => Some("99999".to_string()),
            _ => None,
        };
        assert!(apply(&mut b, DEPENDENCY_TIME, &bad_port, 1.0).is_err());
        assert_eq!(b, Budget::default(), "refused points change nothing");
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "é".repeat(300);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_ATTR_LEN);
        assert!(long.starts_with(&cut));
    }
}
