//! Spans in, per-service request and dependency time out. Pure: decoded OTLP requests and the
//! time are parameters, nothing here reads a clock or a socket, so it is unit-tested and fuzzed.
//!
//! A service's requests are its SERVER (and CONSUMER) spans: each one is a request whose
//! duration its clients waited for, so their count and the sum of their durations are the exact
//! request count and request-seconds `R`. Its dependencies are its CLIENT spans, keyed like the
//! sockets path (`server.address:server.port`). A client span counts only inside a server span of
//! the same service and trace, clipped to it, and the client spans of one server span are merged
//! as a union of intervals, per dependency and overall, so parallel or nested calls never count
//! the same wall time twice (when two dependencies are awaited at once, each keeps its own time
//! and both are scaled down so that together they fill the union).
//!
//! Client spans end before their server span, so an exporter sends them in the same batch or an
//! earlier one: they wait in a bounded buffer keyed by (service, trace) until their server span
//! arrives, and age out if it never does (a background job's calls, a sampled-out parent).
//!
//! Totals are kept in 100 ms buckets by the server span's end time, so any window (the
//! `diagnose` run, an export interval) can be read back; buckets older than [`RETAIN_NS`] fold
//! into a cumulative base. Every map is bounded: services, dependencies per service, buffered
//! client spans, buckets; what does not fit is counted, never stored.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use scalewise_core::DependencyTime;
use serde::Serialize;

/// Width of a time bucket.
pub const BUCKET_NS: u64 = 100_000_000;
/// How long buckets stay readable one by one before they fold into the cumulative base.
pub const RETAIN_NS: u64 = 120 * 1_000_000_000;
/// Spans ending further than this after `now` are a clock problem, not data.
pub const MAX_FUTURE_NS: u64 = 600 * 1_000_000_000;
/// How long a client span waits for its server span.
pub const PENDING_TTL_NS: u64 = 60 * 1_000_000_000;
/// A sidecar sees one service or a few; 64 bound the memory (about 1,200 buckets each).
pub const MAX_SERVICES: usize = 64;
pub const MAX_DEPENDENCIES: usize = 64;
pub const MAX_PENDING_SPANS: usize = 100_000;
pub const MAX_PENDING_TRACES: usize = 100_000;
/// Longest service, endpoint or dependency name kept (longer ones are cut at a char boundary).
pub const MAX_NAME_LEN: usize = 128;
const MAX_PIDS: usize = 32;
/// The dependency that collects every endpoint past [`MAX_DEPENDENCIES`].
pub const OVERFLOW_ENDPOINT: &str = "other";

/// What the aggregate has seen and refused, for the agent's self-metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AggregateStats {
    pub spans: u64,
    pub server_spans: u64,
    pub client_spans: u64,
    /// End before start, or no start time.
    pub invalid_spans: u64,
    /// Ending implausibly far in the future.
    pub future_spans: u64,
    /// Spans of services past [`MAX_SERVICES`].
    pub services_overflow: u64,
    /// Client spans counted under [`OVERFLOW_ENDPOINT`].
    pub dependencies_overflow: u64,
    /// Client spans whose server span never came (or the buffer was full).
    pub client_spans_unmatched: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Totals {
    requests: u64,
    request_s: f64,
    /// Indexed like `ServiceState::deps`.
    downstream: Vec<f64>,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.request_s += other.request_s;
        if self.downstream.len() < other.downstream.len() {
            self.downstream.resize(other.downstream.len(), 0.0);
        }
        for (mine, theirs) in self.downstream.iter_mut().zip(&other.downstream) {
            *mine += theirs;
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Dependency {
    endpoint: String,
    kind: String,
    name: Option<String>,
}

#[derive(Debug, Default)]
struct ServiceState {
    name: String,
    pids: BTreeSet<u32>,
    deps: Vec<Dependency>,
    dep_index: HashMap<String, usize>,
    base: Totals,
    /// Folded buckets at or after the pin (see [`SpanAggregate::pin`]).
    pinned: Totals,
    buckets: BTreeMap<u64, Totals>,
    /// Latest end time of any of its server spans.
    last_end_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct ClientSpan {
    start: u64,
    end: u64,
    dep: usize,
}

/// Request and dependency time of one service over a window, from its spans.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanWindow {
    pub service: String,
    pub requests: f64,
    pub request_s: f64,
    pub downstream: BTreeMap<String, DependencyTime>,
    /// Seconds of span time the figures cover (whole buckets inside the window asked for).
    pub covered_s: f64,
}

/// Which span service a session's processes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// By the name given with `--service`.
    Name(String),
    /// By a `process.pid` resource attribute equal to one of the session's pids.
    Pid(String),
    /// The only service that sent spans.
    Only(String),
}

impl Match {
    pub fn service(&self) -> &str {
        match self {
            Match::Name(s) | Match::Pid(s) | Match::Only(s) => s,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Match::Name(s) => format!("service.name {s:?}, as --service says"),
            Match::Pid(s) => format!("service.name {s:?}, matched by process.pid"),
            Match::Only(s) => format!("service.name {s:?}, the only service sending spans"),
        }
    }
}

/// Every service's span totals. Not thread-safe by itself: the receiver wraps it in a mutex.
#[derive(Debug, Default)]
pub struct SpanAggregate {
    services: Vec<ServiceState>,
    by_name: HashMap<String, usize>,
    pending: HashMap<(usize, u128), Vec<ClientSpan>>,
    /// Buffered traces oldest first, with the end time of the span that opened each.
    pending_order: VecDeque<((usize, u128), u64)>,
    pending_spans: usize,
    /// First bucket of a window being read (a `diagnose` run): buckets from here on that fold
    /// keep apart from the base, so the window stays readable however long it is.
    pin: Option<u64>,
    pub stats: AggregateStats,
}

fn cut(s: &str) -> String {
    scalewise_core::text::cut(s, MAX_NAME_LEN).0
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| match attr(attrs, k) {
        Some(Value::StringValue(s)) if !s.is_empty() => Some(s.as_str()),
        _ => None,
    })
}

fn int_attr(attrs: &[KeyValue], keys: &[&str]) -> Option<i64> {
    keys.iter().find_map(|k| match attr(attrs, k) {
        Some(Value::IntValue(i)) => Some(*i),
        // Some SDKs send ports and pids as strings.
        Some(Value::StringValue(s)) => s.trim().parse().ok(),
        Some(Value::DoubleValue(d)) if d.fract() == 0.0 && d.abs() < 1e15 => Some(*d as i64),
        _ => None,
    })
}

/// The dependency a client span calls, named like the sockets path names endpoints.
fn dependency(attrs: &[KeyValue]) -> Dependency {
    let address = str_attr(
        attrs,
        &[
            "server.address",
            "net.peer.name",
            "network.peer.address",
            "net.sock.peer.addr",
        ],
    );
    let port = int_attr(
        attrs,
        &[
            "server.port",
            "net.peer.port",
            "network.peer.port",
            "net.sock.peer.port",
        ],
    )
    .filter(|p| (0..=65_535).contains(p));
    let peer = str_attr(attrs, &["service.peer.name", "peer.service"]);
    let rpc_service = str_attr(attrs, &["rpc.service"]);
    let db = str_attr(attrs, &["db.system.name", "db.system"]);
    let http = attr(attrs, "http.request.method").is_some() || attr(attrs, "http.method").is_some();
    let kind = db
        .map(str::to_string)
        .or_else(|| {
            rpc_service.map(|_| {
                str_attr(attrs, &["rpc.system"])
                    .unwrap_or("rpc")
                    .to_string()
            })
        })
        .or_else(|| http.then(|| "http".to_string()))
        .unwrap_or_else(|| "unknown".to_string());
    let endpoint = match (address, port) {
        (Some(a), Some(p)) if a.contains(':') && !a.starts_with('[') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, _) => peer.or(rpc_service).or(db).unwrap_or("unknown").to_string(),
    };
    Dependency {
        endpoint: cut(&endpoint),
        kind: cut(&kind),
        name: peer.or(rpc_service).map(cut),
    }
}

fn trace_key(id: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    for (i, x) in id.iter().enumerate() {
        // Ids of another length (hostile or broken) still map to some key.
        b[i % 16] ^= x;
    }
    u128::from_be_bytes(b)
}

/// Total length of the union of `[start, end)` intervals (sorted in place).
fn union_ns(iv: &mut [(u64, u64)]) -> u64 {
    iv.sort_unstable();
    let mut total = 0u64;
    let mut cur: Option<(u64, u64)> = None;
    for &(s, e) in iv.iter() {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

impl SpanAggregate {
    pub fn new() -> Self {
        SpanAggregate::default()
    }

    fn service_index(&mut self, name: &str) -> Option<usize> {
        if let Some(&i) = self.by_name.get(name) {
            return Some(i);
        }
        if self.services.len() >= MAX_SERVICES {
            return None;
        }
        let i = self.services.len();
        self.services.push(ServiceState {
            name: name.to_string(),
            ..ServiceState::default()
        });
        self.by_name.insert(name.to_string(), i);
        Some(i)
    }

    /// Adds one export request's spans, received at `now_ns` (unix nanoseconds).
    pub fn ingest(&mut self, req: &ExportTraceServiceRequest, now_ns: u64) {
        // Client spans first, whatever the order in the request: their server span may follow.
        let mut servers: Vec<(usize, u128, u64, u64)> = Vec::new();
        for rs in &req.resource_spans {
            let attrs = rs
                .resource
                .as_ref()
                .map_or(&[][..], |r| r.attributes.as_slice());
            let name = cut(str_attr(attrs, &["service.name"]).unwrap_or("unknown_service"));
            let pid = int_attr(attrs, &["process.pid"]).and_then(|p| u32::try_from(p).ok());
            let mut service = None;
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                self.stats.spans += 1;
                let kind = SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified);
                let is_server = matches!(kind, SpanKind::Server | SpanKind::Consumer);
                if !is_server && kind != SpanKind::Client {
                    continue;
                }
                let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
                if start == 0 || end < start {
                    self.stats.invalid_spans += 1;
                    continue;
                }
                if end > now_ns.saturating_add(MAX_FUTURE_NS) {
                    self.stats.future_spans += 1;
                    continue;
                }
                let idx = match service {
                    Some(i) => i,
                    None => match self.service_index(&name) {
                        Some(i) => {
                            service = Some(i);
                            if let Some(pid) = pid {
                                let pids = &mut self.services[i].pids;
                                if pids.len() < MAX_PIDS {
                                    pids.insert(pid);
                                }
                            }
                            i
                        }
                        None => {
                            self.stats.services_overflow += 1;
                            continue;
                        }
                    },
                };
                let trace = trace_key(&span.trace_id);
                if is_server {
                    self.stats.server_spans += 1;
                    servers.push((idx, trace, start, end));
                } else {
                    self.stats.client_spans += 1;
                    let dep = self.dependency_index(idx, dependency(&span.attributes));
                    self.buffer_client(idx, trace, ClientSpan { start, end, dep });
                }
            }
        }
        for (idx, trace, start, end) in servers {
            self.record_server(idx, trace, start, end, now_ns);
        }
        self.expire(now_ns);
    }

    fn dependency_index(&mut self, service: usize, dep: Dependency) -> usize {
        let s = &mut self.services[service];
        if let Some(&i) = s.dep_index.get(&dep.endpoint) {
            return i;
        }
        let dep = if s.deps.len() + 1 >= MAX_DEPENDENCIES {
            self.stats.dependencies_overflow += 1;
            Dependency {
                endpoint: OVERFLOW_ENDPOINT.to_string(),
                kind: "unknown".to_string(),
                name: None,
            }
        } else {
            dep
        };
        if let Some(&i) = s.dep_index.get(&dep.endpoint) {
            return i;
        }
        let i = s.deps.len();
        s.dep_index.insert(dep.endpoint.clone(), i);
        s.deps.push(dep);
        i
    }

    fn buffer_client(&mut self, service: usize, trace: u128, span: ClientSpan) {
        let key = (service, trace);
        let list = self.pending.entry(key).or_default();
        if list.is_empty() {
            self.pending_order.push_back((key, span.end));
        }
        list.push(span);
        self.pending_spans += 1;
    }

    fn record_server(&mut self, service: usize, trace: u128, start: u64, end: u64, now_ns: u64) {
        let key = (service, trace);
        let mut inside: Vec<ClientSpan> = Vec::new();
        if let Some(list) = self.pending.get_mut(&key) {
            let before = list.len();
            list.retain(|c| {
                let overlaps = c.start < end && c.end > start;
                if overlaps {
                    inside.push(ClientSpan {
                        start: c.start.max(start),
                        end: c.end.min(end),
                        dep: c.dep,
                    });
                }
                !overlaps
            });
            self.pending_spans -= before - list.len();
            if list.is_empty() {
                self.pending.remove(&key);
            }
        }
        let s = &mut self.services[service];
        let mut per_dep = vec![0.0; s.deps.len()];
        if !inside.is_empty() {
            let mut all: Vec<(u64, u64)> = inside.iter().map(|c| (c.start, c.end)).collect();
            let total = union_ns(&mut all) as f64;
            let mut sum = 0.0;
            for (dep, slot) in per_dep.iter_mut().enumerate() {
                let mut iv: Vec<(u64, u64)> = inside
                    .iter()
                    .filter(|c| c.dep == dep)
                    .map(|c| (c.start, c.end))
                    .collect();
                if !iv.is_empty() {
                    *slot = union_ns(&mut iv) as f64;
                    sum += *slot;
                }
            }
            let scale = if sum > total && sum > 0.0 {
                total / sum
            } else {
                1.0
            };
            for v in &mut per_dep {
                *v *= scale / 1e9;
            }
        }
        let add = Totals {
            requests: 1,
            request_s: (end - start) as f64 / 1e9,
            downstream: per_dep,
        };
        if end.saturating_add(RETAIN_NS) < now_ns {
            // Late: past the buckets, still in the totals.
            if self.pin.is_some_and(|p| end / BUCKET_NS >= p) {
                s.pinned.add(&add);
            } else {
                s.base.add(&add);
            }
        } else {
            s.buckets.entry(end / BUCKET_NS).or_default().add(&add);
        }
        s.last_end_ns = s.last_end_ns.max(end);
    }

    fn expire(&mut self, now_ns: u64) {
        let oldest_bucket = now_ns.saturating_sub(RETAIN_NS) / BUCKET_NS;
        for s in &mut self.services {
            while let Some(entry) = s.buckets.first_entry() {
                if *entry.key() >= oldest_bucket {
                    break;
                }
                let pinned = self.pin.is_some_and(|p| *entry.key() >= p);
                let t = entry.remove();
                if pinned {
                    s.pinned.add(&t);
                } else {
                    s.base.add(&t);
                }
            }
        }
        let cutoff = now_ns.saturating_sub(PENDING_TTL_NS);
        while let Some(&(key, opened)) = self.pending_order.front() {
            let over = self.pending_spans > MAX_PENDING_SPANS
                || self.pending_order.len() > MAX_PENDING_TRACES;
            if opened >= cutoff && !over {
                break;
            }
            self.pending_order.pop_front();
            if let Some(list) = self.pending.remove(&key) {
                self.pending_spans -= list.len();
                self.stats.client_spans_unmatched += list.len() as u64;
            }
        }
    }

    /// Names of the services that sent spans.
    pub fn services(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }

    /// Latest end time of the service's server spans (0 if none).
    pub fn last_end_ns(&self, service: &str) -> u64 {
        self.by_name
            .get(service)
            .map_or(0, |&i| self.services[i].last_end_ns)
    }

    /// Which service a session is: by `name` if it sent spans, else by `process.pid`, else the
    /// only service that sent any.
    pub fn select(&self, name: Option<&str>, pids: &[u32]) -> Option<Match> {
        if let Some(n) = name {
            if self.by_name.contains_key(n) {
                return Some(Match::Name(n.to_string()));
            }
        }
        if let Some(s) = self
            .services
            .iter()
            .find(|s| pids.iter().any(|p| s.pids.contains(p)))
        {
            return Some(Match::Pid(s.name.clone()));
        }
        match self.services.as_slice() {
            [only] => Some(Match::Only(only.name.clone())),
            _ => None,
        }
    }

    fn to_window(s: &ServiceState, t: &Totals, covered_s: f64) -> SpanWindow {
        let mut downstream = BTreeMap::new();
        for (dep, &v) in s.deps.iter().zip(&t.downstream) {
            if v > 0.0 {
                downstream.insert(
                    dep.endpoint.clone(),
                    DependencyTime {
                        kind: dep.kind.clone(),
                        name: dep.name.clone(),
                        awaiting_s: v,
                        connection_s: 0.0,
                    },
                );
            }
        }
        SpanWindow {
            service: s.name.clone(),
            requests: t.requests as f64,
            request_s: t.request_s,
            downstream,
            covered_s,
        }
    }

    /// Keeps a window starting at `from_ns` readable by [`SpanAggregate::window`] past the
    /// retention of single buckets (one pin at a time; a `diagnose` run sets it at its start).
    pub fn pin(&mut self, from_ns: u64) {
        self.pin = Some(from_ns.div_ceil(BUCKET_NS));
        for s in &mut self.services {
            s.pinned = Totals::default();
        }
    }

    /// The service's server spans that ended in the whole buckets inside `[from_ns, to_ns)`.
    /// `None` when the service is unknown or the window holds no whole bucket. A window older
    /// than [`RETAIN_NS`] is complete only from the [`SpanAggregate::pin`] it starts at.
    pub fn window(&self, service: &str, from_ns: u64, to_ns: u64) -> Option<SpanWindow> {
        let s = &self.services[*self.by_name.get(service)?];
        let first = from_ns.div_ceil(BUCKET_NS);
        let last = to_ns / BUCKET_NS; // exclusive
        if last <= first {
            return None;
        }
        let mut t = if self.pin == Some(first) {
            s.pinned.clone()
        } else {
            Totals::default()
        };
        for (_, b) in s.buckets.range(first..last) {
            t.add(b);
        }
        let covered_s = ((last - first) * BUCKET_NS) as f64 / 1e9;
        Some(Self::to_window(s, &t, covered_s))
    }

    /// Everything the service's server spans ended before `to_ns`, since the start (cumulative,
    /// for exporters that send counters).
    pub fn cumulative(&self, service: &str, to_ns: u64) -> Option<SpanWindow> {
        let s = &self.services[*self.by_name.get(service)?];
        let mut t = s.base.clone();
        t.add(&s.pinned);
        for (_, b) in s.buckets.range(..to_ns / BUCKET_NS) {
            t.add(b);
        }
        Some(Self::to_window(s, &t, 0.0))
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
