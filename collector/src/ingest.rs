//! OTLP metrics in: bodies decoded (protobuf or JSON, gzip or not, bounded), then each resource's
//! data points turned into one [`Received`]: the instance's identity and the counters it set.
//!
//! The decoding of a point is [`scalewise_core::wire::apply`], the same mapping the agent encodes with;
//! this module only adds what OTLP carries around it (resources, timestamps, temporality) and
//! counts what it refuses, by reason, so a sender learns why through partial success.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, NumberDataPoint,
};
use thiserror::Error;

use crate::limits::{bound_label, Limits};
use crate::window::slot;
use scalewise_core::budget::{Budget, RequestSource};
use scalewise_core::decoded::{self, gunzip_bounded, InflateError};
use scalewise_core::wire;

/// Why a whole request was refused (a 4xx, with this as the reason).
#[derive(Debug, Error)]
pub enum IngestError {
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error(
        "body would take about {0} bytes once decoded (limit {1}): send fewer points per request"
    )]
    DecodesTooLarge(usize, usize),
    #[error("{0}")]
    Inflate(#[from] InflateError),
    #[error("unsupported content-type {0:?}: use application/x-protobuf or application/json")]
    MediaType(String),
    #[error("unsupported content-encoding {0:?}: use gzip or none")]
    Encoding(String),
    #[error("cannot decode OTLP protobuf: {0}")]
    Protobuf(String),
    #[error("cannot decode OTLP JSON: {0}")]
    Json(String),
}

impl IngestError {
    /// A fixed reason for `scalewise_collector_requests_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::TooLarge(_) | IngestError::DecodesTooLarge(..) => "too_large",
            IngestError::Inflate(e) => e.reason(),
            IngestError::MediaType(_) | IngestError::Encoding(_) => "unsupported_media_type",
            IngestError::Protobuf(_) | IngestError::Json(_) => "decode",
        }
    }
}

/// The messages of OTLP/HTTP refusals as they were, on core's decode errors.
impl From<decoded::DecodeError> for IngestError {
    fn from(e: decoded::DecodeError) -> Self {
        match e {
            decoded::DecodeError::TooLarge { estimate, limit } => {
                IngestError::DecodesTooLarge(estimate, limit)
            }
            decoded::DecodeError::Protobuf(m) => IngestError::Protobuf(m),
            decoded::DecodeError::Json(m) => IngestError::Json(m),
        }
    }
}

/// The body's format, which the response mirrors.
pub use scalewise_core::decoded::Encoding as Format;

/// Decodes an OTLP/HTTP metrics body within the limits.
pub fn decode_body(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    limits: &Limits,
) -> Result<(ExportMetricsServiceRequest, Format), IngestError> {
    if body.len() > limits.max_body_bytes {
        return Err(IngestError::TooLarge(limits.max_body_bytes));
    }
    let format = match content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .as_deref()
    {
        Some("application/x-protobuf") | Some("application/protobuf") => Format::Protobuf,
        Some("application/json") => Format::Json,
        other => {
            return Err(IngestError::MediaType(
                other.unwrap_or("").chars().take(60).collect(),
            ))
        }
    };
    let inflated;
    let raw: &[u8] = match content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => {
            if body.len() > limits.max_decompressed_bytes {
                return Err(IngestError::TooLarge(limits.max_decompressed_bytes));
            }
            body
        }
        Some("gzip") => {
            inflated = gunzip_bounded(body, limits.max_decompressed_bytes)?;
            &inflated
        }
        Some(other) => return Err(IngestError::Encoding(other.chars().take(40).collect())),
    };
    let req = decoded::decode(raw, format, limits.max_decoded_bytes)?;
    Ok((req, format))
}

/// Who sent a report: the OTel resource attributes we keep.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resource {
    pub service: String,
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_version: Option<String>,
}

/// Where a received value goes in the instance's snapshot.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Fixed(usize),
    /// (endpoint, kind, user-given name)
    Dependency(String, String, Option<String>),
    /// The connection-seconds of a dependency: (endpoint, kind, user-given name).
    DependencyConnections(String, String, Option<String>),
}

/// One resource's data points, decoded: the instance's cumulative counters at one time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Received {
    pub resource: Resource,
    pub t_ms: i64,
    pub start_ns: u64,
    pub sets: Vec<(Target, f64)>,
    pub request_source: Option<RequestSource>,
    pub busiest_thread: Option<String>,
    pub notes: Vec<String>,
    pub rss_bytes: Option<f64>,
    /// Label values that were cut to the length limit.
    pub cut_labels: u64,
}

/// Counts by fixed reason.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rejected {
    pub by_reason: BTreeMap<&'static str, u64>,
    /// The first few reasons in words, for the partial-success message.
    pub messages: Vec<String>,
}

impl Rejected {
    pub fn add(&mut self, reason: &'static str, n: u64, message: impl FnOnce() -> String) {
        if n == 0 {
            return;
        }
        *self.by_reason.entry(reason).or_default() += n;
        if self.messages.len() < 5 {
            self.messages.push(message());
        }
    }
    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }
}

fn value_text(kv: &KeyValue) -> Option<String> {
    match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(value_text)
}

fn number(p: &NumberDataPoint) -> Option<f64> {
    match p.value? {
        number_data_point::Value::AsDouble(d) => Some(d),
        number_data_point::Value::AsInt(i) => Some(i as f64),
    }
}

/// Where a decoded point lands: its counter's slot, or the dependency [`wire::apply`] put in the
/// scratch budget.
fn target(metric: &str, scratch: &Budget, attrs: &[KeyValue]) -> Option<Target> {
    let look = |k: &str| attr(attrs, k);
    if let Ok(Some(c)) = wire::counters::find(metric, &look) {
        return Some(Target::Fixed(c.slot));
    }
    match metric {
        wire::DEPENDENCY_TIME => scratch
            .downstream
            .iter()
            .next()
            .map(|(e, d)| Target::Dependency(e.clone(), d.kind.clone(), d.name.clone())),
        wire::DEPENDENCY_CONNECTION_TIME => {
            scratch.downstream.iter().next().map(|(e, d)| {
                Target::DependencyConnections(e.clone(), d.kind.clone(), d.name.clone())
            })
        }
        _ => None,
    }
}

/// Turns a decoded request into one report per resource and the count of refused points.
/// `now_ms` is the receive time (timestamps of 0 are taken as now; far-future ones refused).
pub fn reports(
    req: &ExportMetricsServiceRequest,
    now_ms: i64,
    limits: &Limits,
) -> (Vec<Received>, Rejected, u64) {
    let mut out = Vec::new();
    let mut rejected = Rejected::default();
    let mut total = 0u64;
    let now_ns = u64::try_from(now_ms).unwrap_or(0).saturating_mul(1_000_000);
    let max_ns = now_ns.saturating_add(limits.max_future_skew_s.saturating_mul(1_000_000_000));
    for rm in &req.resource_metrics {
        let res_attrs: &[KeyValue] = rm.resource.as_ref().map_or(&[], |r| &r.attributes);
        let npoints: u64 = rm
            .scope_metrics
            .iter()
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                Some(metric::Data::Histogram(h)) => h.data_points.len(),
                Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(metric::Data::Summary(s)) => s.data_points.len(),
                None => 0,
            } as u64)
            .sum();
        total += npoints;
        let mut cut_labels = 0u64;
        let mut bound = |s: String| {
            let (v, cut) = bound_label(&s, limits.max_label_length);
            cut_labels += u64::from(cut);
            v
        };
        let service = match attr(res_attrs, "service.name").filter(|s| !s.trim().is_empty()) {
            Some(s) => bound(s),
            None => {
                rejected.add("no_service_name", npoints, || {
                    "resource without service.name".to_string()
                });
                continue;
            }
        };
        let host = attr(res_attrs, "host.name").map(&mut bound);
        let pid = attr(res_attrs, "process.pid").and_then(|p| p.parse::<u32>().ok());
        let instance = match attr(res_attrs, "service.instance.id").filter(|s| !s.is_empty()) {
            Some(id) => bound(id),
            None => bound(format!(
                "{}:{}",
                host.as_deref().unwrap_or("unknown-host"),
                pid.map_or_else(|| "0".to_string(), |p| p.to_string())
            )),
        };
        let resource = Resource {
            service,
            instance,
            namespace: attr(res_attrs, "service.namespace").map(&mut bound),
            host,
            pid,
            k8s_pod: attr(res_attrs, "k8s.pod.name").map(&mut bound),
            k8s_namespace: attr(res_attrs, "k8s.namespace.name").map(&mut bound),
            k8s_node: attr(res_attrs, "k8s.node.name").map(&mut bound),
            runtime: attr(res_attrs, "process.runtime.name").map(&mut bound),
            runtime_version: attr(res_attrs, "process.runtime.version").map(&mut bound),
        };
        let mut report = Received {
            resource,
            cut_labels,
            ..Received::default()
        };
        let mut t_max = 0u64;
        let mut start_min = u64::MAX;
        for m in rm.scope_metrics.iter().flat_map(|s| &s.metrics) {
            let (points, cumulative) = match &m.data {
                Some(metric::Data::Sum(s)) => (
                    &s.data_points,
                    s.aggregation_temporality == AggregationTemporality::Cumulative as i32,
                ),
                Some(metric::Data::Gauge(g)) => (&g.data_points, false),
                Some(metric::Data::Histogram(h)) => {
                    rejected.add("unknown_metric", h.data_points.len() as u64, || {
                        format!("unknown metric {}", wire::bounded(&m.name))
                    });
                    continue;
                }
                Some(metric::Data::ExponentialHistogram(h)) => {
                    rejected.add("unknown_metric", h.data_points.len() as u64, || {
                        format!("unknown metric {}", wire::bounded(&m.name))
                    });
                    continue;
                }
                Some(metric::Data::Summary(s)) => {
                    rejected.add("unknown_metric", s.data_points.len() as u64, || {
                        format!("unknown metric {}", wire::bounded(&m.name))
                    });
                    continue;
                }
                None => continue,
            };
            let Some(&(name, _, is_sum)) = wire::METRICS.iter().find(|x| x.0 == m.name) else {
                rejected.add("unknown_metric", points.len() as u64, || {
                    format!("unknown metric {}", wire::bounded(&m.name))
                });
                continue;
            };
            if is_sum && !cumulative {
                rejected.add("not_cumulative", points.len() as u64, || {
                    format!("{name}: only cumulative monotonic sums are accepted")
                });
                continue;
            }
            for p in points {
                let Some(value) = number(p) else {
                    rejected.add("bad_value", 1, || format!("{name}: no value"));
                    continue;
                };
                if p.time_unix_nano > max_ns {
                    rejected.add("future_timestamp", 1, || {
                        format!("{name}: timestamp in the future")
                    });
                    continue;
                }
                let mut scratch = Budget::default();
                let look = |k: &str| attr(&p.attributes, k);
                if let Err(e) = wire::apply(&mut scratch, name, &look, value) {
                    rejected.add(e.reason(), 1, || e.to_string());
                    continue;
                }
                t_max = t_max.max(p.time_unix_nano);
                if is_sum && p.start_time_unix_nano > 0 {
                    start_min = start_min.min(p.start_time_unix_nano);
                }
                match name {
                    wire::MEMORY_RSS => report.rss_bytes = Some(value),
                    wire::NOTE => report.notes.extend(scratch.notes),
                    wire::REQUEST_TIME => {
                        report.request_source = Some(scratch.request_source);
                        report.sets.push((Target::Fixed(slot::REQUEST), value));
                    }
                    wire::THREAD_BUSIEST_TIME => {
                        report.busiest_thread = scratch.busiest_thread.clone();
                        report.sets.push((Target::Fixed(slot::BUSIEST), value));
                    }
                    _ => {
                        if let Some(t) = target(name, &scratch, &p.attributes) {
                            report.sets.push((t, value));
                        }
                    }
                }
            }
        }
        if report.sets.is_empty() && report.rss_bytes.is_none() && report.notes.is_empty() {
            continue;
        }
        let t_ns = if t_max == 0 { now_ns } else { t_max };
        report.t_ms = i64::try_from(t_ns / 1_000_000).unwrap_or(i64::MAX);
        report.start_ns = if start_min == u64::MAX { 0 } else { start_min };
        out.push(report);
    }
    (out, rejected, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp_request;

    #[test]
    fn a_budget_sent_as_otlp_comes_back_as_the_same_counters() {
        let mut b = Budget {
            window_s: 10.0,
            request_s: 4.0,
            requests: 100.0,
            request_source: RequestSource::Sockets,
            cpu_s: 1.0,
            busiest_thread_busy_s: 2.0,
            busiest_thread: Some("worker".into()),
            ..Budget::default()
        };
        b.downstream.insert(
            "127.0.0.1:5432".into(),
            scalewise_core::budget::DependencyTime {
                kind: "postgresql".into(),
                name: None,
                awaiting_s: 2.5,
                connection_s: 0.0,
            },
        );
        let res = otlp_request::resource_attrs("orders", "i-1", Some(42));
        let req = otlp_request::request(&res, &b, 1_000_000_000, 11_000_000_000);
        let (reports, rejected, total) = reports(&req, 12_000, &Limits::default());
        assert_eq!(rejected.total(), 0, "{rejected:?}");
        assert_eq!(total as usize, wire::budget_points(&b).len());
        let r = &reports[0];
        assert_eq!(r.resource.service, "orders");
        assert_eq!(r.resource.pid, Some(42));
        assert_eq!(r.t_ms, 11_000);
        assert_eq!(r.start_ns, 1_000_000_000);
        assert!(r.sets.contains(&(Target::Fixed(slot::REQUEST), 4.0)));
        assert!(r.sets.contains(&(
            Target::Dependency("127.0.0.1:5432".into(), "postgresql".into(), None),
            2.5
        )));
        assert_eq!(r.busiest_thread.as_deref(), Some("worker"));
    }

    #[test]
    fn missing_service_name_and_future_points_are_refused_and_counted() {
        let b = Budget {
            request_s: 1.0,
            ..Budget::default()
        };
        let mut req = otlp_request::request(&[], &b, 1, 2_000_000_000);
        let n = wire::budget_points(&b).len() as u64;
        let (reports_, rejected, _) = reports(&req, 2_000, &Limits::default());
        assert!(reports_.is_empty());
        assert_eq!(rejected.by_reason.get("no_service_name"), Some(&n));
        req = otlp_request::request(
            &otlp_request::resource_attrs("s", "i", None),
            &b,
            1,
            4_000_000_000_000_000_000,
        );
        let (reports_, rejected, _) = reports(&req, 2_000, &Limits::default());
        assert!(reports_.is_empty());
        assert_eq!(rejected.by_reason.get("future_timestamp"), Some(&n));
    }

    #[test]
    fn no_truncation_or_corruption_of_a_body_panics() {
        let b = Budget {
            request_s: 4.0,
            requests: 10.0,
            ..Budget::default()
        };
        let body = otlp_request::encode(&otlp_request::request(
            &otlp_request::resource_attrs("s", "i", Some(1)),
            &b,
            1,
            2_000_000_000,
        ));
        let l = Limits::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for cut in 0..=body.len() {
            for ct in ["application/x-protobuf", "application/json"] {
                if let Ok((req, _)) = decode_body(Some(ct), None, &body[..cut], &l) {
                    let _ = reports(&req, 3_000, &l);
                }
            }
            // And one flipped byte at every position.
            let mut bad = body.clone();
            if cut < bad.len() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bad[cut] ^= (seed as u8) | 1;
                if let Ok((req, _)) = decode_body(Some("application/x-protobuf"), None, &bad, &l) {
                    let _ = reports(&req, 3_000, &l);
                }
            }
        }
    }

    #[test]
    fn bodies_are_bounded_and_typed() {
        let l = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        let e = decode_body(Some("application/x-protobuf"), None, &[0; 11], &l).expect_err("big");
        assert_eq!(e.reason(), "too_large");
        let e = decode_body(Some("text/plain"), None, b"", &Limits::default()).expect_err("type");
        assert_eq!(e.reason(), "unsupported_media_type");
        let e = decode_body(Some("application/x-protobuf"), None, &[0x0a, 0xff], &l)
            .expect_err("truncated");
        assert_eq!(e.reason(), "decode");
        let e = decode_body(Some("application/json"), None, b"[1,2]", &l).expect_err("shape");
        assert_eq!(e.reason(), "decode");
    }
}
