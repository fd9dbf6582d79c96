use super::*;
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// A round "now" far from zero, on a bucket boundary.
const T0: u64 = 1_700_000_000 * S;

fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, Value::StringValue(v.to_string()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, Value::IntValue(v))
}

fn span(trace: u8, kind: SpanKind, start: u64, end: u64, attrs: Vec<KeyValue>) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![1; 8],
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: attrs,
        ..Span::default()
    }
}

fn request(service: &str, pid: Option<i64>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut attributes = vec![s("service.name", service)];
    if let Some(p) = pid {
        attributes.push(i("process.pid", p));
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes,
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn pg() -> Vec<KeyValue> {
    vec![
        s("db.system.name", "postgresql"),
        s("server.address", "10.0.0.5"),
        i("server.port", 5432),
    ]
}

fn http_dep() -> Vec<KeyValue> {
    vec![
        s("http.request.method", "GET"),
        s("server.address", "127.0.0.1"),
        i("server.port", 8080),
        s("service.peer.name", "backend"),
    ]
}

fn everything(a: &SpanAggregate, service: &str) -> SpanWindow {
    a.window(service, T0 - 100 * S, T0 + 100 * S)
        .expect("window")
}

#[test]
fn server_spans_give_exact_count_and_request_seconds() {
    let mut a = SpanAggregate::new();
    let spans = (0..10)
        .map(|k| {
            span(
                k,
                SpanKind::Server,
                T0 + k as u64 * S,
                T0 + k as u64 * S + 30 * MS,
                vec![],
            )
        })
        .collect();
    a.ingest(&request("api", None, spans), T0 + 20 * S);
    // Internal and producer spans are not requests.
    a.ingest(
        &request(
            "api",
            None,
            vec![
                span(50, SpanKind::Internal, T0, T0 + S, vec![]),
                span(51, SpanKind::Producer, T0, T0 + S, vec![]),
            ],
        ),
        T0 + 20 * S,
    );
    let w = everything(&a, "api");
    assert_eq!(w.requests, 10.0);
    assert!((w.request_s - 0.3).abs() < 1e-12);
    assert!(w.downstream.is_empty());
    assert_eq!(a.stats.server_spans, 10);
    assert_eq!(a.stats.spans, 12);
}

#[test]
fn client_spans_count_once_inside_their_server_span() {
    let mut a = SpanAggregate::new();
    // One request of 100 ms: two parallel DB calls [10, 50) and [30, 70) overlap 20 ms, plus a
    // nested duplicate [40, 45) (a driver span inside the ORM's), and an HTTP call [60, 90).
    let spans = vec![
        span(1, SpanKind::Client, T0 + 10 * MS, T0 + 50 * MS, pg()),
        span(1, SpanKind::Client, T0 + 30 * MS, T0 + 70 * MS, pg()),
        span(1, SpanKind::Client, T0 + 40 * MS, T0 + 45 * MS, pg()),
        span(1, SpanKind::Client, T0 + 60 * MS, T0 + 90 * MS, http_dep()),
        // The server span last, as exporters send it.
        span(1, SpanKind::Server, T0, T0 + 100 * MS, vec![]),
    ];
    a.ingest(&request("api", None, spans), T0 + S);
    let w = everything(&a, "api");
    assert_eq!(w.requests, 1.0);
    let db = &w.downstream["10.0.0.5:5432"];
    let http = &w.downstream["127.0.0.1:8080"];
    assert_eq!(db.kind, "postgresql");
    assert_eq!(http.kind, "http");
    assert_eq!(http.name.as_deref(), Some("backend"));
    // DB union 60 ms, HTTP 30 ms, overall union [10, 90) = 80 ms: both scaled by 80/90.
    assert!(
        (db.awaiting_s - 0.060 * 80.0 / 90.0).abs() < 1e-9,
        "{}",
        db.awaiting_s
    );
    assert!((http.awaiting_s - 0.030 * 80.0 / 90.0).abs() < 1e-9);
    let total: f64 = w.downstream.values().map(|d| d.awaiting_s).sum();
    assert!((total - 0.080).abs() < 1e-9);
    assert!(total <= w.request_s);
}

#[test]
fn client_spans_from_an_earlier_batch_wait_for_their_server_span() {
    let mut a = SpanAggregate::new();
    a.ingest(
        &request(
            "api",
            None,
            vec![span(7, SpanKind::Client, T0 + 5 * MS, T0 + 25 * MS, pg())],
        ),
        T0,
    );
    assert!(a.window("api", T0 - S, T0 + S).expect("known").requests == 0.0);
    a.ingest(
        &request(
            "api",
            None,
            vec![span(7, SpanKind::Server, T0, T0 + 40 * MS, vec![])],
        ),
        T0 + S,
    );
    let w = everything(&a, "api");
    assert!((w.downstream["10.0.0.5:5432"].awaiting_s - 0.020).abs() < 1e-12);
}

#[test]
fn client_spans_are_clipped_and_never_cross_traces_or_services() {
    let mut a = SpanAggregate::new();
    let spans = vec![
        // Outlives its server span by 50 ms (a fire-and-forget call): only 10 ms inside.
        span(1, SpanKind::Client, T0 + 30 * MS, T0 + 90 * MS, pg()),
        // Another trace: not this request's.
        span(2, SpanKind::Client, T0, T0 + 40 * MS, pg()),
        span(1, SpanKind::Server, T0, T0 + 40 * MS, vec![]),
    ];
    a.ingest(&request("api", None, spans), T0 + S);
    // Another service's client span in the same trace id.
    a.ingest(
        &request(
            "other",
            None,
            vec![span(1, SpanKind::Client, T0, T0 + 40 * MS, pg())],
        ),
        T0 + S,
    );
    let w = everything(&a, "api");
    assert!((w.downstream["10.0.0.5:5432"].awaiting_s - 0.010).abs() < 1e-12);
}

#[test]
fn unmatched_client_spans_age_out_and_are_counted() {
    let mut a = SpanAggregate::new();
    a.ingest(
        &request(
            "worker",
            None,
            vec![span(9, SpanKind::Client, T0, T0 + MS, pg())],
        ),
        T0,
    );
    a.ingest(&request("worker", None, vec![]), T0 + PENDING_TTL_NS + S);
    assert_eq!(a.stats.client_spans_unmatched, 1);
    assert!(a.pending.is_empty());
}

#[test]
fn dependency_keys_follow_the_semantic_conventions() {
    let d = dependency(&[
        s("db.system", "redis"),
        s("net.peer.name", "cache"),
        i("net.peer.port", 6379),
    ]);
    assert_eq!(
        (d.endpoint.as_str(), d.kind.as_str()),
        ("cache:6379", "redis")
    );
    let d = dependency(&[
        s("rpc.system", "grpc"),
        s("rpc.service", "ledger.Ledger"),
        s("server.address", "::1"),
        s("server.port", "7000"),
    ]);
    assert_eq!(d.endpoint, "[::1]:7000");
    assert_eq!(d.kind, "grpc");
    assert_eq!(d.name.as_deref(), Some("ledger.Ledger"));
    let d = dependency(&[s("peer.service", "payments")]);
    assert_eq!(
        (d.endpoint.as_str(), d.kind.as_str()),
        ("payments", "unknown")
    );
    let d = dependency(&[
        s("server.address", &"x".repeat(1000)),
        i("server.port", 99_999),
    ]);
    assert_eq!(d.endpoint.len(), MAX_NAME_LEN);
}

#[test]
fn windows_read_whole_buckets_and_old_ones_fold_into_the_cumulative_base() {
    let mut a = SpanAggregate::new();
    let spans = (0..20)
        .map(|k| {
            let end = T0 + k as u64 * 500 * MS + 50 * MS;
            span(k, SpanKind::Server, end - 10 * MS, end, vec![])
        })
        .collect();
    a.ingest(&request("api", None, spans), T0 + 10 * S);
    // [T0 + 1 s, T0 + 3 s) holds the spans ending at 1.05, 1.55, 2.05, 2.55 s.
    let w = a.window("api", T0 + S, T0 + 3 * S).expect("window");
    assert_eq!(w.requests, 4.0);
    assert!((w.covered_s - 2.0).abs() < 1e-12);
    // A window edge inside a bucket drops that partial bucket.
    let w = a
        .window("api", T0 + S + 60 * MS, T0 + 3 * S)
        .expect("window");
    assert_eq!(w.requests, 3.0);
    assert!((w.covered_s - 1.9).abs() < 1e-9);
    assert!(a.window("api", T0, T0 + 50 * MS).is_none());
    // Much later: the buckets fold into the base; cumulative keeps every request.
    a.ingest(&request("api", None, vec![]), T0 + RETAIN_NS + 20 * S);
    assert_eq!(
        a.window("api", T0, T0 + 20 * S).expect("known").requests,
        0.0
    );
    assert_eq!(
        a.cumulative("api", T0 + RETAIN_NS).expect("known").requests,
        20.0
    );
}

#[test]
fn hostile_spans_are_counted_not_stored() {
    let mut a = SpanAggregate::new();
    let spans = vec![
        span(1, SpanKind::Server, T0 + S, T0, vec![]),
        span(1, SpanKind::Server, 0, T0, vec![]),
        span(1, SpanKind::Server, T0, u64::MAX, vec![]),
        Span {
            kind: 99,
            ..span(1, SpanKind::Server, T0, T0 + 1, vec![])
        },
        Span {
            trace_id: vec![],
            ..span(1, SpanKind::Server, T0, T0 + 1, vec![])
        },
    ];
    a.ingest(&request("api", None, spans), T0);
    assert_eq!(a.stats.invalid_spans, 2);
    assert_eq!(a.stats.future_spans, 1);
    assert_eq!(
        a.stats.server_spans, 1,
        "an empty trace id is still a request"
    );
    for k in 0..(MAX_SERVICES + 10) {
        a.ingest(
            &request(
                &format!("svc-{k}"),
                None,
                vec![span(1, SpanKind::Server, T0, T0 + 1, vec![])],
            ),
            T0,
        );
    }
    assert_eq!(a.services().len(), MAX_SERVICES);
    assert!(a.stats.services_overflow >= 10);
    let many: Vec<Span> = (0..200)
        .flat_map(|k| {
            let attrs = vec![s("server.address", "10.0.0.1"), i("server.port", k)];
            [
                span(3, SpanKind::Client, T0, T0 + 1, attrs),
                span(3, SpanKind::Server, T0, T0 + 2, vec![]),
            ]
        })
        .collect();
    a.ingest(&request("api", None, many), T0);
    assert_eq!(a.services[a.by_name["api"]].deps.len(), MAX_DEPENDENCIES);
    assert!(a.stats.dependencies_overflow > 0);
}

#[test]
fn a_session_finds_its_service_by_name_pid_or_as_the_only_one() {
    let mut a = SpanAggregate::new();
    assert_eq!(a.select(Some("api"), &[42]), None);
    a.ingest(
        &request(
            "api",
            Some(42),
            vec![span(1, SpanKind::Server, T0, T0 + 1, vec![])],
        ),
        T0,
    );
    assert_eq!(a.select(None, &[]), Some(Match::Only("api".into())));
    a.ingest(
        &request(
            "billing",
            Some(7),
            vec![span(1, SpanKind::Server, T0, T0 + 1, vec![])],
        ),
        T0,
    );
    assert_eq!(
        a.select(Some("billing"), &[42]),
        Some(Match::Name("billing".into()))
    );
    assert_eq!(
        a.select(Some("node"), &[42]),
        Some(Match::Pid("api".into()))
    );
    assert_eq!(a.select(None, &[1]), None);
}

#[test]
fn union_of_intervals() {
    assert_eq!(union_ns(&mut []), 0);
    assert_eq!(union_ns(&mut [(0, 10), (5, 15), (20, 30), (30, 31)]), 26);
    assert_eq!(union_ns(&mut [(5, 6), (0, 100), (7, 8)]), 100);
}

#[test]
fn a_pinned_window_stays_whole_past_the_retention() {
    let mut a = SpanAggregate::new();
    a.pin(T0);
    // One request a second for longer than buckets are kept, each ingested as it ends.
    let n = RETAIN_NS / S * 2;
    for k in 0..n {
        let end = T0 + k * S + 500 * MS;
        a.ingest(
            &request(
                "api",
                None,
                vec![span(1, SpanKind::Server, end - 10 * MS, end, vec![])],
            ),
            end,
        );
    }
    let to = T0 + n * S;
    let w = a.window("api", T0, to).expect("window");
    assert_eq!(w.requests, n as f64);
    assert!((w.request_s - n as f64 * 0.010).abs() < 1e-9);
    // An unpinned window that old has lost its folded part; the cumulative total has not.
    assert!(a.window("api", T0 + S, to).expect("window").requests < n as f64);
    assert_eq!(a.cumulative("api", to).expect("known").requests, n as f64);
}
