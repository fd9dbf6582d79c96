//! The diagnosis engine: a window of budget counters in, a verdict with numbers out.
//!
//! Pure: no I/O, no clock. The agent's one-shot `diagnose` and the collector's per-service windows
//! both call [`diagnose`], so a service gets the same answer wherever it is computed.
//!
//! The order of the rules matters and is the model's main idea: saturation of the CPU a service may
//! use decides first (time queued for a worker on a saturated box shows up as in-process waiting,
//! yet only more or faster CPU helps); only then does the largest group of request time win. Like
//! tokio-console's warnings, the engine says `insufficient_data` rather than guess.
//!
//! This module holds the public contract (the types `diagnose` returns, the knobs it takes) and
//! the composition of the steps; each step has its own module so each can be read alone:
//! `measures` (the window's headline figures), `shares` (request time split into shares),
//! `rules` (the verdict, an ordered list of rules), `evidence` (the sentences that explain it)
//! and `confidence` (what the verdict is worth given the data).

mod confidence;
mod evidence;
mod limit;
mod measures;
mod rules;
mod shares;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::budget::Budget;
pub use limit::Limit;
use measures::Measures;
use shares::Shares;

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
    /// Mean connections open to it over the window (a pool's size), where they are seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<f64>,
    /// Mean of them with a request outstanding on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    pub used_cores: f64,
    pub capacity_cores: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Requests {
    pub rate_per_s: f64,
    /// `null` when the request side is contradicted by the components measured inside it
    /// (several requests at once on one connection, as HTTP/2 and gRPC carry them): no figure
    /// rather than a wrong one.
    #[serde(default)]
    pub mean_latency_ms: Option<f64>,
    pub source: String,
    /// Mean requests in flight over the window (R / window).
    #[serde(default)]
    pub mean_in_flight: f64,
}

impl Requests {
    /// The mean latency as people read it: `12.3 ms`, or `not measured`.
    pub fn latency_text(&self) -> String {
        self.mean_latency_ms
            .map_or_else(|| "not measured".to_string(), |ms| format!("{ms:.1} ms"))
    }
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
    /// What limits the service and what to change; `null` when nothing stands out.
    #[serde(default)]
    pub limit: Option<Limit>,
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

/// What the steps after the first two read: the budget and the knobs, and the figures and shares
/// computed once from them, so every sentence and every rule sees the same numbers.
struct Facts<'a> {
    b: &'a Budget,
    t: &'a Thresholds,
    m: Measures,
    s: Shares,
}

/// Turns a window of counters into a diagnosis.
pub fn diagnose(service: &str, pids: &[u32], b: &Budget, t: &Thresholds) -> Diagnosis {
    let mut m = Measures::of(b, t);
    let s = shares::split(b, t, &m);
    if s.overflow {
        m.requests.mean_latency_ms = None;
    }
    m.r = s.r;
    if s.unseen {
        // Dependencies were awaited for requests: the service did not wait on its clients.
        if let Some(l) = m.load.as_mut() {
            l.waiting_on_clients = false;
        }
    }
    let f = Facts { b, t, m, s };
    // The evidence reads in this order, and the order is part of the output (the goldens hold
    // it): what was measured, then why the verdict (the rules' sentences), then what lies behind
    // the shares.
    let mut evidence = evidence::measured(&f);
    let decided = rules::decide(&f, &mut evidence);
    evidence::details(&f, &mut evidence);
    let (verdict, confidence) = confidence::weigh(decided, &f);
    let limit = limit::name(&f, verdict);

    let gc_cpu_cores =
        (b.gc_thread_cpu_s > 0.0).then(|| round(f.m.per_window(b.gc_thread_cpu_s), 3));
    let Facts { m, s, .. } = f;
    // Rounded only here, at the edge: the rules and the evidence read the unrounded shares.
    let rb = |x: f64| round(x, 3);
    Diagnosis {
        service: service.to_string(),
        pids: pids.to_vec(),
        window_s: round(m.window, 2),
        verdict,
        confidence: round(confidence.clamp(0.0, 1.0), 2),
        breakdown: Breakdown {
            cpu: rb(s.breakdown.cpu),
            gc: rb(s.breakdown.gc),
            cpu_wait: rb(s.breakdown.cpu_wait),
            downstream: rb(s.breakdown.downstream),
            local_wait: rb(s.breakdown.local_wait),
        },
        dependencies: s
            .dependencies
            .into_iter()
            .map(|d| DependencyShare {
                share: rb(d.share),
                connections: d.connections.map(|c| round(c, 2)),
                busy: d.busy.map(|c| round(c, 2)),
                ..d
            })
            .collect(),
        cpu: m.cpu,
        requests: m.requests,
        limit,
        evidence,
        load: m.load,
        runtime: None,
        memory_bytes: None,
        gc_cpu_cores,
    }
}
