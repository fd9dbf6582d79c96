//! The one table of budget counters: each counter declared once, every mapping derived from it.
//!
//! A counter is a field of [`Budget`] that travels. Its row says how it is spelled on the wire
//! (the OTLP metric and, where one metric carries several counters, the attribute that tells them
//! apart), where the collector stores it (the slot in a snapshot's values: the SQLite schema
//! depends on the order, so rows are in slot order and new ones go at the end), its Prometheus
//! name, label and help, and how to read and write it in a budget. The agent's export, the
//! collector's decoding, its windows, both `/metrics` pages and the docs all walk this table.
//!
//! What is not a row: per-dependency time (one series per endpoint, after the fixed slots), the
//! `downstream` component (their sum, sent for dashboards), the request source and the busiest
//! thread's name (attributes of rows), memory and notes (gauges, not counters).
//!
//! Adding a counter: a field in [`Budget`], a wire metric name in [`super`] (and in `METRICS`), a
//! row at the end of [`COUNTERS`], a line in `docs/metrics.md`. Nothing else maps counters: the
//! tests here and the counter walk (`collector/tests/counter_walk.rs`) fail on a row left out.

use super::*;
use crate::budget::Budget;

/// One budget counter.
pub struct Counter {
    /// The OTLP metric it travels as.
    pub wire: &'static str,
    /// The attribute that tells it apart from other counters of the same metric.
    pub wire_attr: Option<(&'static str, &'static str)>,
    /// Its index in a stored snapshot's values (the collector's SQLite rows).
    pub slot: usize,
    /// Its Prometheus name, and the label that tells it apart within that name.
    pub prom: &'static str,
    pub prom_label: Option<(&'static str, &'static str)>,
    pub help: &'static str,
    /// How two parts of one service over the same window combine ([`Budget::merge`]).
    pub merge: Merge,
    pub get: fn(&Budget) -> f64,
    pub set: fn(&mut Budget, f64),
}

/// How a counter of two parts of one service (processes, instances) combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    Add,
    /// The larger part's: the sampled wall time (parts run side by side), the busiest thread.
    Max,
}

/// Slots of the fixed counters, named for code that reads one directly.
pub mod slot {
    pub const SAMPLED: usize = 0;
    pub const REQUEST: usize = 1;
    pub const REQUESTS: usize = 2;
    pub const CPU: usize = 3;
    pub const GC: usize = 4;
    pub const CPU_WAIT: usize = 5;
    pub const GC_PAUSE: usize = 6;
    pub const GC_CPU: usize = 7;
    pub const CAPACITY: usize = 8;
    pub const THROTTLED: usize = 9;
    pub const PRESSURE: usize = 10;
    pub const BLOCKED: usize = 11;
    pub const BUSIEST: usize = 12;
    pub const SOCKETS_CERTAIN: usize = 13;
    pub const SOCKETS_AMBIGUOUS: usize = 14;
    pub const QUEUED: usize = 15;
    pub const LOOP_QUEUED: usize = 16;
    pub const SEND_QUEUE: usize = 17;
    pub const CONNECTIONS: usize = 18;
    pub const LOOP_CPU: usize = 19;
    pub const LOOP_DELAY: usize = 20;
}

/// Fixed counters per snapshot; dependency `i` of an instance is stored at `N_FIXED + i`.
pub const N_FIXED: usize = COUNTERS.len();

/// Sample counts are whole numbers; the cast saturates on absurd values.
fn count(v: f64) -> u64 {
    v.round() as u64
}

macro_rules! plain {
    ($wire:expr, $slot:expr, $prom:expr, $help:expr, $field:ident) => {
        plain!($wire, $slot, $prom, $help, $field, Merge::Add)
    };
    ($wire:expr, $slot:expr, $prom:expr, $help:expr, $field:ident, $merge:expr) => {
        Counter {
            wire: $wire,
            wire_attr: None,
            slot: $slot,
            prom: $prom,
            prom_label: None,
            help: $help,
            merge: $merge,
            get: |b| b.$field,
            set: |b, v| b.$field = v,
        }
    };
}

macro_rules! component {
    ($name:literal, $slot:expr, $field:ident) => {
        Counter {
            wire: COMPONENT_TIME,
            wire_attr: Some((ATTR_COMPONENT, $name)),
            slot: $slot,
            prom: "scalewise_request_component_time_seconds_total",
            prom_label: Some(("component", $name)),
            help: "Request-seconds per component.",
            merge: Merge::Add,
            get: |b| b.$field,
            set: |b, v| b.$field = v,
        }
    };
}

/// Every budget counter, in slot order.
pub const COUNTERS: [Counter; 21] = [
    plain!(
        SAMPLED_TIME,
        slot::SAMPLED,
        "scalewise_sampled_seconds_total",
        "Wall seconds the instance was sampled.",
        window_s,
        Merge::Max
    ),
    // Its attribute `scalewise.request.source` (label `source`) is the budget's request source.
    plain!(
        REQUEST_TIME,
        slot::REQUEST,
        "scalewise_request_time_seconds_total",
        "Request-seconds (mean requests in flight x time).",
        request_s
    ),
    plain!(
        REQUESTS,
        slot::REQUESTS,
        "scalewise_requests_total",
        "Requests completed.",
        requests
    ),
    component!("cpu", slot::CPU, cpu_s),
    component!("gc", slot::GC, gc_s),
    component!("cpu_wait", slot::CPU_WAIT, cpu_wait_s),
    plain!(
        GC_PAUSE_TIME,
        slot::GC_PAUSE,
        "scalewise_gc_pause_seconds_total",
        "Wall seconds of stop-the-world GC pauses.",
        gc_pause_s
    ),
    plain!(
        GC_CPU_TIME,
        slot::GC_CPU,
        "scalewise_gc_cpu_seconds_total",
        "On-CPU seconds of runtime GC threads.",
        gc_thread_cpu_s
    ),
    plain!(
        CPU_CAPACITY_TIME,
        slot::CAPACITY,
        "scalewise_cpu_capacity_seconds_total",
        "Core-seconds the instance may use.",
        capacity_core_s
    ),
    plain!(
        CPU_THROTTLED_TIME,
        slot::THROTTLED,
        "scalewise_cpu_throttled_seconds_total",
        "Seconds throttled by the cgroup CPU quota.",
        throttled_s
    ),
    plain!(
        CPU_PRESSURE_TIME,
        slot::PRESSURE,
        "scalewise_cpu_pressure_seconds_total",
        "Seconds some task waited for a CPU (cpu.pressure some).",
        cpu_pressure_s
    ),
    plain!(
        THREAD_BLOCKED_TIME,
        slot::BLOCKED,
        "scalewise_thread_blocked_seconds_total",
        "Thread-seconds sampled blocked on locks.",
        blocked_lock_s
    ),
    // Its attribute `thread.name` is the budget's busiest thread (not a label: a new series each
    // time another thread is the busiest).
    plain!(
        THREAD_BUSIEST_TIME,
        slot::BUSIEST,
        "scalewise_thread_busiest_seconds_total",
        "Busy seconds of the busiest thread, summed over sampling intervals.",
        busiest_thread_busy_s,
        Merge::Max
    ),
    // The budget keeps the total and the ambiguous part; the wire, certain and ambiguous.
    Counter {
        wire: SOCKET_SAMPLES,
        wire_attr: Some((ATTR_SAMPLE_OUTCOME, "certain")),
        slot: slot::SOCKETS_CERTAIN,
        prom: "scalewise_socket_samples_total",
        prom_label: Some(("outcome", "certain")),
        help: "Connection samples taken.",
        merge: Merge::Add,
        get: |b| b.socket_samples.saturating_sub(b.ambiguous_samples) as f64,
        set: |b, v| b.socket_samples = count(v).saturating_add(b.ambiguous_samples),
    },
    Counter {
        wire: SOCKET_SAMPLES,
        wire_attr: Some((ATTR_SAMPLE_OUTCOME, "ambiguous")),
        slot: slot::SOCKETS_AMBIGUOUS,
        prom: "scalewise_socket_samples_total",
        prom_label: Some(("outcome", "ambiguous")),
        help: "Connection samples taken.",
        merge: Merge::Add,
        get: |b| b.ambiguous_samples as f64,
        set: |b, v| {
            let certain = b.socket_samples.saturating_sub(b.ambiguous_samples);
            b.ambiguous_samples = count(v);
            b.socket_samples = certain.saturating_add(b.ambiguous_samples);
        },
    },
    plain!(
        QUEUED_TIME,
        slot::QUEUED,
        "scalewise_request_queued_seconds_total",
        "Request-seconds with the request unread in the service's socket.",
        queued_s
    ),
    plain!(
        LOOP_QUEUED_TIME,
        slot::LOOP_QUEUED,
        "scalewise_request_loop_queued_seconds_total",
        "The part of the queued request-seconds in processes served by an event loop.",
        loop_queued_s
    ),
    plain!(
        SEND_QUEUE_TIME,
        slot::SEND_QUEUE,
        "scalewise_request_send_queue_seconds_total",
        "Request-seconds with the response written but not yet sent.",
        send_queue_s
    ),
    plain!(
        CONNECTION_TIME,
        slot::CONNECTIONS,
        "scalewise_connection_seconds_total",
        "Inbound connection-seconds (rate = mean open inbound connections).",
        inbound_conn_s
    ),
    plain!(
        LOOP_CPU_TIME,
        slot::LOOP_CPU,
        "scalewise_loop_cpu_seconds_total",
        "On-CPU seconds of event-loop threads.",
        loop_cpu_s
    ),
    plain!(
        LOOP_DELAY_TIME,
        slot::LOOP_DELAY,
        "scalewise_loop_delay_seconds_total",
        "Run-queue delay of event-loop threads.",
        loop_delay_s
    ),
];

/// The counter a received point sets: its metric, and the attribute that tells counters of one
/// metric apart. `Err` when the metric has counters but the attribute names none of them;
/// `Ok(None)` when the metric is not a counter row (dependencies, `downstream`, gauges).
pub fn find(
    metric: &str,
    attr: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<&'static Counter>, &'static str> {
    let mut rows = COUNTERS.iter().filter(|c| c.wire == metric).peekable();
    let Some(first) = rows.peek() else {
        return Ok(None);
    };
    let Some((key, _)) = first.wire_attr else {
        return Ok(Some(first));
    };
    let value = attr(key);
    let found = COUNTERS
        .iter()
        .filter(|c| c.wire == metric)
        .find(|c| c.wire_attr.map(|(_, v)| v) == value.as_deref());
    match (found, metric, value.as_deref()) {
        (Some(c), _, _) => Ok(Some(c)),
        // `downstream` is rebuilt from the per-dependency series.
        (None, COMPONENT_TIME, Some("downstream")) => Ok(None),
        (None, _, _) => Err(key),
    }
}

/// The Prometheus name of a wire metric, counter row or not.
pub fn prometheus_name(metric: &str) -> Option<&'static str> {
    if let Some(c) = COUNTERS.iter().find(|c| c.wire == metric) {
        return Some(c.prom);
    }
    Some(match metric {
        DEPENDENCY_TIME => "scalewise_dependency_time_seconds_total",
        DEPENDENCY_CONNECTION_TIME => "scalewise_dependency_connection_seconds_total",
        MEMORY_RSS => "scalewise_memory_rss_bytes",
        NOTE => "scalewise_note",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_slot_order_and_each_names_one_field() {
        for (i, c) in COUNTERS.iter().enumerate() {
            assert_eq!(c.slot, i, "{}", c.wire);
            let mut b = Budget::default();
            (c.set)(&mut b, 7.0);
            assert_eq!((c.get)(&b), 7.0, "{} {:?}", c.wire, c.wire_attr);
            for other in COUNTERS.iter().filter(|o| o.slot != c.slot) {
                assert_eq!((other.get)(&b), 0.0, "{} also moved {}", c.wire, other.wire);
            }
        }
    }

    #[test]
    fn every_counter_is_a_declared_metric_with_a_counter_name() {
        for c in &COUNTERS {
            let declared = METRICS.iter().find(|m| m.0 == c.wire).expect(c.wire);
            assert!(declared.2, "{} is a cumulative Sum", c.wire);
            assert!(c.prom.ends_with("_total"), "{}", c.prom);
        }
        for (m, _, sum) in METRICS {
            let name = prometheus_name(m).expect(m);
            assert_eq!(name.ends_with("_total"), *sum, "{name}");
        }
    }
}
