//! A budget as an OTLP export request, built from [`wire::budget_points`]: what an agent sends.
//!
//! The collector itself only receives; this builder exists so tests, the benchmark and any Rust
//! sender produce exactly the wire format without hand-written protobuf.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use scalewise_core::budget::Budget;
use scalewise_core::wire;

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

/// `service.name`, `service.instance.id` and, when given, `process.pid`.
pub fn resource_attrs(service: &str, instance: &str, pid: Option<u32>) -> Vec<KeyValue> {
    let mut v = vec![
        kv("service.name", service),
        kv("service.instance.id", instance),
    ];
    if let Some(pid) = pid {
        v.push(KeyValue {
            key: "process.pid".to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i64::from(pid))),
            }),
            ..KeyValue::default()
        });
    }
    v
}

/// The budget's counters as one resource's metrics: cumulative monotonic Sums started at
/// `start_ns`, read at `time_ns` (the gauges as Gauges).
pub fn resource_metrics(
    attrs: &[KeyValue],
    b: &Budget,
    start_ns: u64,
    time_ns: u64,
) -> ResourceMetrics {
    let mut metrics: Vec<Metric> = Vec::new();
    for p in wire::budget_points(b) {
        let dp = NumberDataPoint {
            attributes: p.attrs.iter().map(|(k, v)| kv(k, v)).collect(),
            start_time_unix_nano: start_ns,
            time_unix_nano: time_ns,
            value: Some(number_data_point::Value::AsDouble(p.value)),
            ..NumberDataPoint::default()
        };
        let is_sum = wire::METRICS
            .iter()
            .find(|m| m.0 == p.metric)
            .is_some_and(|m| m.2);
        match metrics.iter_mut().find(|m| m.name == p.metric) {
            Some(Metric {
                data: Some(metric::Data::Sum(s)),
                ..
            }) => s.data_points.push(dp),
            Some(Metric {
                data: Some(metric::Data::Gauge(g)),
                ..
            }) => g.data_points.push(dp),
            _ => {
                let unit = wire::METRICS
                    .iter()
                    .find(|m| m.0 == p.metric)
                    .map_or("", |m| m.1);
                let data = if is_sum {
                    metric::Data::Sum(Sum {
                        data_points: vec![dp],
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })
                } else {
                    metric::Data::Gauge(Gauge {
                        data_points: vec![dp],
                    })
                };
                metrics.push(Metric {
                    name: p.metric.to_string(),
                    unit: unit.to_string(),
                    data: Some(data),
                    ..Metric::default()
                });
            }
        }
    }
    ResourceMetrics {
        resource: Some(Resource {
            attributes: attrs.to_vec(),
            ..Resource::default()
        }),
        scope_metrics: vec![ScopeMetrics {
            metrics,
            ..ScopeMetrics::default()
        }],
        ..ResourceMetrics::default()
    }
}

/// One request holding one resource.
pub fn request(
    attrs: &[KeyValue],
    b: &Budget,
    start_ns: u64,
    time_ns: u64,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![resource_metrics(attrs, b, start_ns, time_ns)],
    }
}

/// The protobuf bytes of a request (the `application/x-protobuf` body).
pub fn encode(req: &ExportMetricsServiceRequest) -> Vec<u8> {
    req.encode_to_vec()
}

/// Data points in a request.
pub fn count_points(req: &ExportMetricsServiceRequest) -> usize {
    req.resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            _ => 0,
        })
        .sum()
}
