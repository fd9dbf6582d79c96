//! The diagnosis engine: a window of budget counters in, a verdict with numbers out.
//!
//! Pure: no I/O, no clock. The agent's one-shot `diagnose` and the collector's per-service windows
//! both call [`diagnose`], so a service gets the same answer wherever it is computed.
//!
//! The order of the rules matters and is the model's main idea: saturation of the CPU a service may
//! use decides first (time queued for a worker on a saturated box shows up as in-process waiting,
//! yet only more or faster CPU helps); only then does the largest group of request time win. Like
//! tokio-console's warnings, the engine says `insufficient_data` rather than guess.

use serde::{Deserialize, Serialize};

use crate::budget::Budget;

/// What kind of scale a service is limited by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    ScaleUp,
    ScaleOut,
    Dependency,
    InsufficientData,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::ScaleUp => "scale_up",
            Verdict::ScaleOut => "scale_out",
            Verdict::Dependency => "dependency",
            Verdict::InsufficientData => "insufficient_data",
        }
    }
}

/// Shares of request time; they sum to 1 when there is any request time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Breakdown {
    pub cpu: f64,
    pub gc: f64,
    pub cpu_wait: f64,
    pub downstream: f64,
    pub local_wait: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DependencyShare {
    pub endpoint: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub share: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    pub used_cores: f64,
    pub capacity_cores: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Requests {
    pub rate_per_s: f64,
    pub mean_latency_ms: f64,
    pub source: String,
    /// Mean requests in flight over the window (R / window).
    #[serde(default)]
    pub mean_in_flight: f64,
}

/// How busy the service's clients keep it: is it the bottleneck at all?
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Mean open inbound connections.
    pub connections: f64,
    /// Mean requests in flight per open connection (1 = the clients always wait on it).
    pub in_flight_per_connection: f64,
    /// Share of the window the busiest application thread was on CPU or runnable.
    pub busiest_thread_busy: f64,
    /// True when the service is idle most of the time, waiting for its clients: whatever limits
    /// the system is upstream of it (the clients, a load balancer, a load generator).
    pub waiting_on_clients: bool,
}

/// One service's diagnosis: the public JSON contract of `diagnose` (field names are an interface).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub service: String,
    pub pids: Vec<u32>,
    pub window_s: f64,
    pub verdict: Verdict,
    pub confidence: f64,
    pub breakdown: Breakdown,
    pub dependencies: Vec<DependencyShare>,
    pub cpu: CpuUse,
    pub requests: Requests,
    pub evidence: Vec<String>,
    /// How busy the clients keep the service (absent without inbound connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// The service's runtime, when the agent recognised it (for the rewrite report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// Resident memory of the service's processes, bytes (sum of `statm` resident).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Cores used by runtime GC threads (part of `cpu.used_cores`), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_cpu_cores: Option<f64>,
}

/// A service's runtime: a report profile name (`java`, `go`, `node`, `python`, `csharp`,
/// `native`), its version when known, and how it was recognised.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default)]
    pub evidence: String,
}

/// The engine's knobs. Defaults are the documented model, not tuned to any workload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Fewer completed requests than this in the window is not enough to say anything.
    pub min_requests: f64,
    /// Less total request time (request-seconds) than this is not enough either.
    pub min_request_s: f64,
    /// Used cores / capacity at or above this is CPU saturation.
    pub saturation: f64,
    /// A run-queue delay share at or above this is CPU starvation.
    pub cpu_wait_share: f64,
    /// A single thread on CPU or runnable for this share of the window is a saturated thread
    /// (an event loop, a lone worker): the service cannot use the cores it has.
    pub hot_thread: f64,
    /// Event-loop threads doing at least this share of the service's CPU work read and serve
    /// every request themselves: time requests wait unread in their sockets is waiting for CPU.
    pub loop_cpu_share: f64,
    /// Unresolved socket samples above this share: the request side is not measured well enough
    /// for a confident verdict.
    pub unresolved_share: f64,
    /// Fewer requests in flight than this on average (the service idle most of the time), and
    /// its clients' connections idle more than half the time, with the CPU and the busiest
    /// thread below half: the service waits on its clients, and nothing limits it at this load.
    pub idle_in_flight: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            min_requests: 20.0,
            min_request_s: 0.5,
            saturation: 0.85,
            cpu_wait_share: 0.25,
            hot_thread: 0.90,
            loop_cpu_share: 0.5,
            unresolved_share: 0.25,
            idle_in_flight: 1.0,
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    // Adding 0.0 turns a rounded -0.0 into 0.0, which people read as a sign.
    (x * p).round() / p + 0.0
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// Turns a window of counters into a diagnosis.
pub fn diagnose(service: &str, pids: &[u32], b: &Budget, t: &Thresholds) -> Diagnosis {
    let window = b.window_s.max(0.0);
    let r = b.request_s.max(0.0);
    let per_window = |x: f64| if window > 0.0 { x / window } else { 0.0 };
    let cpu = CpuUse {
        used_cores: round(per_window(b.used_core_s()), 3),
        capacity_cores: round(per_window(b.capacity_core_s), 3),
    };
    let requests = Requests {
        rate_per_s: round(per_window(b.requests), 2),
        mean_latency_ms: if b.requests > 0.0 {
            round(r / b.requests * 1000.0, 2)
        } else {
            0.0
        },
        source: b.request_source.as_str().to_string(),
        mean_in_flight: round(per_window(r), 3),
    };
    let mut evidence = Vec::new();

    let busiest = if window > 0.0 {
        (b.busiest_thread_busy_s / window).min(1.0)
    } else {
        0.0
    };
    // Requests waiting unread in socket buffers wait for whoever reads them. In a process whose
    // event-loop threads do most of its work (Node, Redis, nginx, Go, tokio), that is the loop
    // thread's CPU: the same kind of wait as run-queue delay, and counted with it (less the
    // loop's own run-queue delay, which already stands for one of those requests). Where the
    // loop only dispatches to a pool of workers (JDK HttpServer, Netty with a business pool), or
    // in a thread-per-connection server, they wait for a free worker: in-process waiting.
    // A loop saturated to the point of never being caught waiting in epoll is the busiest thread.
    let queued_is_cpu = b.loop_queued_s > 0.0
        && (b.loop_cpu_s >= t.loop_cpu_share * b.cpu_s || busiest >= t.hot_thread);
    let cpu_wait_s = b.cpu_wait_s
        + if queued_is_cpu {
            (b.loop_queued_s - b.loop_delay_s).max(0.0)
        } else {
            0.0
        };
    // Components in request-seconds; local_wait is what is left of R.
    let down = b.downstream_s();
    let sampled = b.cpu_s + b.gc_s + cpu_wait_s;
    let known = sampled + down;
    // Spans measure downstream time exactly (client spans inside server spans); what overflows R
    // then is the sampled side (an event loop's CPU for other requests overlaps this one's
    // waits), so only that is scaled, into what the spans leave. Otherwise everything is.
    let spans_exact = b.request_source == crate::budget::RequestSource::Spans && down <= r;
    let (scale, down_scale) = if r > 0.0 && known > r {
        if spans_exact && sampled > 0.0 {
            ((r - down) / sampled, 1.0)
        } else {
            (r / known, r / known)
        }
    } else {
        (1.0, 1.0)
    };
    // A few percent over is sampling noise; beyond that the model does not fit and is said so.
    let normalised = r > 0.0 && known > r * 1.05;
    let share = |x: f64| if r > 0.0 { x * scale / r } else { 0.0 };
    let down_share = |x: f64| if r > 0.0 { x * down_scale / r } else { 0.0 };
    let breakdown = Breakdown {
        cpu: share(b.cpu_s),
        gc: share(b.gc_s),
        cpu_wait: share(cpu_wait_s),
        downstream: down_share(down),
        local_wait: if r > 0.0 {
            ((r - sampled * scale - down * down_scale) / r).max(0.0)
        } else {
            0.0
        },
    };
    let mut dependencies: Vec<DependencyShare> = b
        .downstream
        .iter()
        .map(|(endpoint, d)| DependencyShare {
            endpoint: endpoint.clone(),
            kind: d.kind.clone(),
            name: d.name.clone(),
            share: down_share(d.awaiting_s),
        })
        .collect();
    dependencies.sort_by(|a, b| b.share.total_cmp(&a.share));

    let utilisation = if cpu.capacity_cores > 0.0 {
        cpu.used_cores / cpu.capacity_cores
    } else {
        0.0
    };
    evidence.push(format!(
        "CPU: {:.2} of {:.2} cores used ({}); run-queue delay {} of request time",
        cpu.used_cores,
        cpu.capacity_cores,
        pct(utilisation),
        pct(breakdown.cpu_wait)
    ));
    if b.throttled_s > 0.0 {
        evidence.push(format!(
            "cgroup CPU quota throttled the service for {:.2}s of {:.1}s",
            b.throttled_s, window
        ));
    }
    if b.cpu_pressure_s > 0.0 && window > 0.0 {
        evidence.push(format!(
            "cgroup cpu.pressure: some task waited for a CPU {} of the time",
            pct(b.cpu_pressure_s / window)
        ));
    }
    evidence.push(format!(
        "requests: {:.1}/s, mean latency {:.1} ms, mean in flight {:.2} (source: {})",
        requests.rate_per_s, requests.mean_latency_ms, requests.mean_in_flight, requests.source
    ));

    let load = (b.inbound_conn_s > 0.0 && window > 0.0).then(|| {
        let connections = b.inbound_conn_s / window;
        let per_conn = (r / b.inbound_conn_s).min(1.0);
        Load {
            connections: round(connections, 2),
            in_flight_per_connection: round(per_conn, 3),
            busiest_thread_busy: round(busiest, 3),
            waiting_on_clients: r / window < t.idle_in_flight
                && per_conn < 0.5
                && busiest < 0.5
                && utilisation < 0.5,
        }
    });
    if let Some(l) = load.filter(|l| l.waiting_on_clients) {
        evidence.push(format!(
            "not the bottleneck: {:.2} requests in flight on average over {:.1} open connections ({} of their time), the busiest thread busy {} and the CPU {}: the service waits on its clients, and nothing limits it at this load (what limits the system is upstream); load it harder to see what would",
            r / window,
            l.connections,
            pct(l.in_flight_per_connection),
            pct(busiest),
            pct(utilisation)
        ));
    }
    if b.queued_s > 0.0 && r > 0.0 {
        evidence.push(if queued_is_cpu {
            format!(
                "requests waited unread in socket buffers for {} of request time behind event-loop threads that do {} of the service's CPU work: waiting for those threads' CPU (counted as cpu_wait)",
                pct(b.queued_s / r),
                pct(if b.cpu_s > 0.0 { (b.loop_cpu_s / b.cpu_s).min(1.0) } else { 0.0 })
            )
        } else {
            format!(
                "requests waited unread in socket buffers for {} of request time: waiting for a free worker (in-process waiting)",
                pct(b.queued_s / r)
            )
        });
    }
    if b.send_queue_s > 0.0 && r > 0.0 && b.send_queue_s / r >= 0.05 {
        evidence.push(format!(
            "responses sat written but unsent or unacknowledged for {} of request time: a response written in several small sends with Nagle's algorithm on waits for the client's delayed ACK (~40 ms); set TCP_NODELAY or write each response in one send",
            pct(b.send_queue_s / r)
        ));
    }
    let unresolved = if b.socket_samples > 0 {
        b.ambiguous_samples as f64 / b.socket_samples as f64
    } else {
        0.0
    };
    let verdict_and_confidence = if b.request_source == crate::budget::RequestSource::None
        || r <= 0.0
    {
        evidence.push(if b.requests > 0.0 {
            format!(
                "{:.1} requests/s were served but none was caught in flight: each takes far less than the sampling interval, so request time is not measured here (spans would measure it)",
                per_window(b.requests)
            )
        } else {
            "no request signal: no inbound connection carried a request and no spans arrived"
                .to_string()
        });
        None
    } else if load.is_some_and(|l| l.waiting_on_clients) {
        None
    } else if b.requests < t.min_requests || r < t.min_request_s {
        evidence.push(format!(
                "only {:.0} requests ({:.2} request-seconds) in {:.1}s: not enough to tell (need {:.0} and {:.1})",
                b.requests, r, window, t.min_requests, t.min_request_s
            ));
        None
    } else {
        Some(decide(b, t, &breakdown, utilisation, window, &mut evidence))
    };

    for dep in dependencies.iter().take(5) {
        let label = dep.name.as_deref().unwrap_or(&dep.kind);
        evidence.push(format!(
            "downstream {} ({}): a request outstanding on the wire for {} of request time",
            dep.endpoint,
            label,
            pct(dep.share)
        ));
    }
    if breakdown.local_wait > 0.05 && b.blocked_lock_s > 0.0 {
        evidence.push(format!(
            "in-process waiting {}: threads were seen blocked on locks/futexes for {:.1} thread-seconds ({:.1} threads on average)",
            pct(breakdown.local_wait),
            b.blocked_lock_s,
            per_window(b.blocked_lock_s)
        ));
    }
    if b.gc_pause_s > 0.0 || b.gc_thread_cpu_s > 0.0 {
        evidence.push(format!(
            "GC: stop-the-world pauses {:.2}s ({} of wall time); GC threads used {:.2} cores",
            b.gc_pause_s,
            pct(per_window(b.gc_pause_s)),
            per_window(b.gc_thread_cpu_s)
        ));
    }
    if normalised && spans_exact {
        evidence.push(format!(
            "measured components exceed request time by {}: downstream time is exact (spans), so CPU, GC and run-queue delay were scaled into the {} of request time it leaves (an event loop's CPU for other requests overlaps this one's waits); confidence lowered",
            pct(known / r - 1.0),
            pct(1.0 - down / r)
        ));
    } else if normalised {
        evidence.push(format!(
            "measured components exceed request time by {}: parallel work inside requests or an underestimated in-flight count; shares normalised, confidence lowered",
            pct(known / r - 1.0)
        ));
    }
    if b.ambiguous_samples > 0 {
        evidence.push(format!(
            "{} of connection samples could not be resolved (no ordering, no learnt exchange shape, no thread state): they were given the in-flight rate of the resolved ones{}",
            pct(unresolved),
            if unresolved > t.unresolved_share {
                "; the request side is not measured well enough for a confident verdict (spans would be exact)"
            } else {
                ""
            }
        ));
    }
    if r > 0.0 {
        let ceiling = breakdown.cpu + breakdown.gc + breakdown.cpu_wait;
        evidence.push(format!(
            "rewrite ceiling: even an infinitely fast rewrite saves at most {} of request time",
            pct(ceiling)
        ));
    }
    evidence.extend(b.notes.iter().cloned());

    let (verdict, confidence) = match verdict_and_confidence {
        None => (Verdict::InsufficientData, 0.0),
        Some((v, c)) => {
            let mut c = c * (b.requests / 100.0).min(1.0).sqrt() * (window / 5.0).min(1.0);
            if normalised {
                c *= 0.7;
            }
            if b.request_source == crate::budget::RequestSource::Sockets {
                c *= 1.0 - unresolved;
                if unresolved > t.unresolved_share {
                    c = c.min(0.55);
                }
            }
            (v, c)
        }
    };
    let rb = |x: f64| round(x, 3);
    Diagnosis {
        service: service.to_string(),
        pids: pids.to_vec(),
        window_s: round(window, 2),
        verdict,
        confidence: round(confidence.clamp(0.0, 1.0), 2),
        breakdown: Breakdown {
            cpu: rb(breakdown.cpu),
            gc: rb(breakdown.gc),
            cpu_wait: rb(breakdown.cpu_wait),
            downstream: rb(breakdown.downstream),
            local_wait: rb(breakdown.local_wait),
        },
        dependencies: dependencies
            .into_iter()
            .map(|d| DependencyShare {
                share: rb(d.share),
                ..d
            })
            .collect(),
        cpu,
        requests,
        evidence,
        load,
        runtime: None,
        memory_bytes: None,
        gc_cpu_cores: (b.gc_thread_cpu_s > 0.0).then(|| round(per_window(b.gc_thread_cpu_s), 3)),
    }
}

/// The verdict rules proper, once there is enough data. Returns the verdict and a confidence
/// before the data-amount factors.
fn decide(
    b: &Budget,
    t: &Thresholds,
    s: &Breakdown,
    utilisation: f64,
    window: f64,
    evidence: &mut Vec<String>,
) -> (Verdict, f64) {
    let ramp = |x: f64, from: f64, to: f64| ((x - from) / (to - from)).clamp(0.0, 1.0);
    if utilisation >= t.saturation {
        evidence.push(format!(
            "CPU saturated: {} of the cores the service may use are busy; work queued for CPU shows up as in-process waiting",
            pct(utilisation)
        ));
        return (
            Verdict::ScaleUp,
            0.7 + 0.3 * ramp(utilisation, t.saturation, 1.0),
        );
    }
    let busiest = if window > 0.0 {
        b.busiest_thread_busy_s / window
    } else {
        0.0
    };
    if busiest >= t.hot_thread {
        evidence.push(format!(
            "thread '{}' is on CPU or runnable {} of the time: a single saturated thread (event loop or lone worker) limits the service; faster code helps, so would more threads or processes",
            b.busiest_thread.as_deref().unwrap_or("?"),
            pct(busiest)
        ));
        return (
            Verdict::ScaleUp,
            0.6 + 0.3 * ramp(busiest, t.hot_thread, 1.0),
        );
    }
    // CPU starvation explains in-process queueing (requests waiting behind starved workers), not
    // time spent waiting on a dependency: where that is the larger part, it goes to the contest.
    let cpu_group = s.cpu + s.gc + s.cpu_wait;
    if s.cpu_wait >= t.cpu_wait_share && s.downstream > cpu_group {
        evidence.push(format!(
            "also CPU starved: requests spend {} of their time waiting for a CPU (a busy host or a CPU limit); more CPU would shorten them by that much, fixing the dependency by more",
            pct(s.cpu_wait)
        ));
    } else if s.cpu_wait >= t.cpu_wait_share {
        evidence.push(format!(
            "CPU starved: requests spend {} of their time waiting for a CPU (runnable but not running, or unread behind a busy event loop)",
            pct(s.cpu_wait)
        ));
        return (
            Verdict::ScaleUp,
            0.7 + 0.3 * ramp(s.cpu_wait, t.cpu_wait_share, 0.6),
        );
    }
    // A response held in the send queue (Nagle's algorithm) is fixed by a socket option, not by
    // scaling anything: it is said in the evidence and left out of the contest.
    let send_queue = if b.request_s > 0.0 {
        (b.send_queue_s / b.request_s).min(s.local_wait)
    } else {
        0.0
    };
    let groups = [
        (Verdict::ScaleUp, s.cpu + s.gc + s.cpu_wait),
        (Verdict::Dependency, s.downstream),
        (Verdict::ScaleOut, s.local_wait - send_queue),
    ];
    let mut sorted = groups;
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (top, top_share) = sorted[0];
    let margin = top_share - sorted[1].1;
    evidence.push(format!(
        "largest part of request time: {} ({}), ahead of the next by {} points",
        match top {
            Verdict::ScaleUp => "on-CPU work, GC and CPU waiting",
            Verdict::Dependency => "waiting on dependencies",
            _ => "in-process waiting (locks, pools, queues)",
        },
        pct(top_share),
        (margin * 100.0).round()
    ));
    // The verdict speaks for the rest of request time only.
    (
        top,
        (0.5 + 0.5 * ramp(margin, 0.0, 0.4)) * (1.0 - send_queue),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{DependencyTime, RequestSource};

    fn base() -> Budget {
        Budget {
            window_s: 10.0,
            request_s: 40.0,
            requests: 2000.0,
            request_source: RequestSource::Sockets,
            capacity_core_s: 40.0,
            ..Budget::default()
        }
    }

    #[test]
    fn the_postmortem_service_is_dependency_limited() {
        // 2,000 req/s on 4 cores at 20% CPU, most time waiting on the database.
        let mut b = base();
        b.cpu_s = 8.0;
        b.downstream.insert(
            "10.0.0.5:5432".into(),
            DependencyTime {
                kind: "postgresql".into(),
                name: Some("orders-db".into()),
                awaiting_s: 30.0,
            },
        );
        let d = diagnose("orders", &[1], &b, &Thresholds::default());
        assert_eq!(d.verdict, Verdict::Dependency);
        assert!((d.breakdown.downstream - 0.75).abs() < 1e-9);
        assert!((d.breakdown.local_wait - 0.05).abs() < 1e-9);
        assert_eq!(d.dependencies[0].name.as_deref(), Some("orders-db"));
        assert!(d.confidence > 0.7, "{d:?}");
        assert!(d.evidence.iter().any(|e| e.contains("rewrite ceiling")));
    }

    #[test]
    fn saturation_decides_before_the_largest_group() {
        let mut b = base();
        b.capacity_core_s = 20.0;
        b.cpu_s = 19.0;
        // Most request time is queueing for a worker, yet the CPU is full.
        let d = diagnose("s", &[1], &b, &Thresholds::default());
        assert!(d.breakdown.local_wait > 0.5);
        assert_eq!(d.verdict, Verdict::ScaleUp);
    }

    #[test]
    fn a_starved_neighbour_of_a_slow_dependency_is_still_dependency_limited() {
        // A busy host: a quarter of request time waiting for a CPU, most of it on the database.
        let mut b = base();
        b.cpu_s = 1.2;
        b.cpu_wait_s = 10.8;
        b.downstream.insert(
            "10.0.0.5:5432".into(),
            DependencyTime {
                kind: "postgresql".into(),
                name: None,
                awaiting_s: 28.0,
            },
        );
        let d = diagnose("s", &[1], &b, &Thresholds::default());
        assert_eq!(d.verdict, Verdict::Dependency, "{d:?}");
        assert!(d.evidence.iter().any(|e| e.contains("also CPU starved")));
        // The same starvation in front of in-process queueing is the CPU's.
        b.downstream.clear();
        let d = diagnose("s", &[1], &b, &Thresholds::default());
        assert_eq!(d.verdict, Verdict::ScaleUp, "{d:?}");
    }

    #[test]
    fn no_requests_is_insufficient_data() {
        let mut b = base();
        b.requests = 3.0;
        let d = diagnose("s", &[1], &b, &Thresholds::default());
        assert_eq!(d.verdict, Verdict::InsufficientData);
        assert_eq!(d.confidence, 0.0);
        let none = Budget {
            window_s: 5.0,
            ..Budget::default()
        };
        let d = diagnose("s", &[1], &none, &Thresholds::default());
        assert_eq!(d.verdict, Verdict::InsufficientData);
        assert_eq!(d.breakdown, Breakdown::default());
    }

    #[test]
    fn overfull_components_are_normalised_and_said() {
        let mut b = base();
        b.cpu_s = 60.0; // parallel work inside requests
        let d = diagnose("s", &[1], &b, &Thresholds::default());
        let sum = d.breakdown.cpu + d.breakdown.downstream + d.breakdown.local_wait;
        assert!((sum - 1.0).abs() < 1e-3);
        assert!(d.evidence.iter().any(|e| e.contains("normalised")));
    }

    #[test]
    fn with_spans_exact_downstream_time_is_not_scaled_down() {
        let mut b = base();
        b.request_source = RequestSource::Spans;
        b.cpu_s = 6.0;
        b.cpu_wait_s = 2.0;
        b.downstream.insert(
            "127.0.0.1:8080".into(),
            DependencyTime {
                kind: "http".into(),
                name: None,
                awaiting_s: 36.0,
            },
        );
        // 8 + 36 > 40: the sampled 8 share the 4 the spans leave.
        let d = diagnose("s", &[1], &b, &Thresholds::default());
        assert!((d.breakdown.downstream - 0.9).abs() < 1e-9, "{d:?}");
        assert!((d.breakdown.cpu - 0.075).abs() < 1e-9, "{d:?}");
        assert!((d.breakdown.cpu_wait - 0.025).abs() < 1e-9, "{d:?}");
        assert_eq!(d.breakdown.local_wait, 0.0);
        assert!((d.dependencies[0].share - 0.9).abs() < 1e-9);
        assert!(d.evidence.iter().any(|e| e.contains("exact (spans)")));
        // The same budget from sockets scales everything.
        b.request_source = RequestSource::Sockets;
        let d = diagnose("s", &[1], &b, &Thresholds::default());
        assert!((d.breakdown.downstream - 36.0 / 44.0).abs() < 1e-3, "{d:?}");
    }

    #[test]
    fn json_has_the_contract_field_names() {
        let d = diagnose("s", &[7], &base(), &Thresholds::default());
        let v = serde_json::to_value(&d).expect("serialise");
        for key in [
            "service",
            "pids",
            "window_s",
            "verdict",
            "confidence",
            "breakdown",
            "dependencies",
            "cpu",
            "requests",
            "evidence",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["cpu", "gc", "cpu_wait", "downstream", "local_wait"] {
            assert!(v["breakdown"].get(key).is_some(), "missing breakdown.{key}");
        }
        assert!(v["cpu"].get("used_cores").is_some());
        assert!(v["requests"].get("mean_latency_ms").is_some());
    }
}
