//! The collector as a process: real `scalewise-collector` binaries on free loopback ports, fed
//! OTLP over real HTTP (and gRPC) by senders that play agents, with cumulative counters built by
//! `wire::budget_points`. Each window is compared with `engine::diagnose` of the budget the
//! sender knows it sent.

use std::process::Command;
use std::time::Duration;

use prost::Message;

use scalewise_collector::otlp_request;
use scalewise_core::budget::Budget;
use scalewise_core::engine::{diagnose, Thresholds};
use scalewise_e2e::collector::{collector_bin, gzip, now_ns, post, Collector, Instance, Profile};
use scalewise_e2e::harness::{self, TempDir};
use scalewise_e2e::prometheus::promtool_check_metrics;

const S: u64 = 1_000_000_000;

/// The collector's answer must be `diagnose` of `expected`, share for share.
fn assert_matches_engine(answer: &serde_json::Value, service: &str, expected: &Budget) {
    let d = diagnose(service, &[], expected, &Thresholds::default());
    assert_eq!(answer["service"], service);
    assert_eq!(answer["verdict"], d.verdict.as_str(), "{answer:#}");
    assert_eq!(
        answer["confidence"].as_f64(),
        Some(d.confidence),
        "{answer:#}"
    );
    let b = serde_json::to_value(d.breakdown).expect("json");
    for c in ["cpu", "gc", "cpu_wait", "downstream", "local_wait"] {
        let got = answer["breakdown"][c].as_f64().expect("share");
        let want = b[c].as_f64().expect("share");
        assert!(
            (got - want).abs() < 1e-9,
            "{c}: {got} vs {want}\n{answer:#}"
        );
        assert!(got >= 0.0);
    }
    assert_eq!(
        answer["requests"]["rate_per_s"].as_f64(),
        Some(d.requests.rate_per_s)
    );
    assert_eq!(
        answer["cpu"]["capacity_cores"].as_f64(),
        Some(d.cpu.capacity_cores)
    );
}

/// Two instances' budgets over the same time, as the service's window.
fn sum(parts: &[Budget]) -> Budget {
    let mut total = Budget::default();
    for p in parts {
        total.merge(p);
    }
    total
}

#[test]
fn windows_over_real_http_match_the_engine() {
    let c = Collector::start(&[]).expect("collector");
    let t0 = now_ns() - 100 * S;
    // `orders`: two instances (one started 30 s after the other), dependency-bound.
    // `render`: one instance, CPU-bound. Exports every 10 s, the last one 5 s ago.
    let a = Instance::new("orders", "orders-a", 101, Profile::dependency_bound(), t0);
    let b = Instance::new(
        "orders",
        "orders-b",
        102,
        Profile::dependency_bound(),
        t0 + 30 * S,
    );
    let r = Instance::new("render", "render-1", 201, Profile::cpu_bound(), t0);
    let end = t0 + 90 * S;
    let mut t = t0 + 10 * S;
    while t <= end {
        a.send(&c, t).expect("a");
        if t > b.start_ns {
            b.send(&c, t).expect("b");
        }
        // The same snapshot as JSON and gzip: one instance, many encodings, same counters.
        let attrs = otlp_request::resource_attrs("render", "render-1", Some(201));
        let secs = (t - t0) as f64 / 1e9;
        let req = otlp_request::request(&attrs, &r.profile.budget(secs), t0, t);
        let body = serde_json::to_vec(&req).expect("json");
        let (status, resp) = c
            .post("application/json", Some("gzip"), &gzip(&body))
            .expect("post");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        let resp: serde_json::Value = serde_json::from_slice(&resp).expect("json answer");
        assert!(
            resp.get("partialSuccess").is_none_or(|p| p.is_null()),
            "{resp}"
        );
        t += 10 * S;
    }
    // Window over everything: each instance counted from its start.
    let secs = |i: &Instance| (end - i.start_ns) as f64 / 1e9;
    let orders = c.json("/api/v1/services/orders?window=5m").expect("orders");
    let want = sum(&[a.profile.budget(secs(&a)), b.profile.budget(secs(&b))]);
    assert_matches_engine(&orders, "orders", &want);
    assert_eq!(orders["verdict"], "dependency");
    assert_eq!(orders["instances"], 2);
    assert_eq!(orders["pids"], serde_json::json!([101, 102]));
    assert_eq!(orders["dependencies"][0]["endpoint"], "127.0.0.1:5432");
    assert_eq!(orders["dependencies"][0]["kind"], "postgresql");
    // Each instance's pool (connection-seconds, a series of their own in the store) arrives whole:
    // the service's connections and busy ones are the engine's on the same budget.
    let engine = diagnose("orders", &[], &want, &Thresholds::default());
    for k in ["connections", "busy"] {
        let got = orders["dependencies"][0][k].as_f64();
        assert!(got.is_some_and(|v| v > 0.0), "{k}: {orders:#}");
        let want = serde_json::to_value(&engine.dependencies[0]).expect("json")[k].as_f64();
        assert_eq!(got, want, "{k}: {orders:#}");
    }
    assert!(orders["window_start_unix"].as_f64() < orders["window_end_unix"].as_f64());
    let render = c
        .json("/api/v1/services/render?window=300")
        .expect("render");
    assert_matches_engine(&render, "render", &r.profile.budget(secs(&r)));

    // A window of the last 40 s: increases between snapshots (baseline at t0+60 s).
    let now = now_ns();
    let w = 40u64;
    let from = now - w * S;
    let snap_at = |t: u64| {
        // The last export at or before t.
        let k = (t.saturating_sub(t0)) / (10 * S);
        t0 + k * 10 * S
    };
    let base = snap_at(from).max(t0 + 10 * S);
    let want = sum(&[
        a.profile
            .budget((end - a.start_ns) as f64 / 1e9)
            .since(&a.profile.budget((base - a.start_ns) as f64 / 1e9))
            .expect("no reset"),
        b.profile
            .budget((end - b.start_ns) as f64 / 1e9)
            .since(&b.profile.budget((base - b.start_ns) as f64 / 1e9))
            .expect("no reset"),
    ]);
    let recent = c
        .json(&format!("/api/v1/services/orders?window={w}s"))
        .expect("40s");
    assert_matches_engine(&recent, "orders", &want);

    // The fleet, history, probes and a 404.
    let list = c.json("/api/v1/services").expect("list");
    let names: Vec<&str> = list["services"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["service"].as_str())
        .collect();
    assert_eq!(names, ["orders", "render"]);
    for key in [
        "verdict",
        "confidence",
        "breakdown",
        "instances",
        "last_seen_unix",
    ] {
        assert!(list["services"][0].get(key).is_some(), "{key}");
    }
    let h = c
        .json("/api/v1/services/orders/history?window=2m&step=20s")
        .expect("history");
    let points = h["points"].as_array().expect("points");
    assert_eq!(points.len(), 6);
    assert!(
        points
            .iter()
            .any(|p| p["verdict"] == "dependency"
                && p["breakdown"]["downstream"].as_f64() > Some(0.5))
    );
    let (status, body) = c.get("/api/v1/services/nope").expect("404");
    assert_eq!(status, 404);
    assert!(body.contains("unknown service"), "{body}");
    assert_eq!(
        c.get("/api/v1/services/orders?window=banana")
            .expect("400")
            .0,
        400
    );
    assert_eq!(c.get("/healthz").expect("health").0, 200);
    assert_eq!(c.get("/readyz").expect("ready").0, 200);
}

#[test]
fn grpc_export_is_received_like_http() {
    let grpc_port = scalewise_e2e::harness::free_port();
    let c =
        Collector::start(&["--grpc-listen", &format!("127.0.0.1:{grpc_port}")]).expect("collector");
    let t0 = now_ns() - 60 * S;
    let i = Instance::new("grpc-svc", "g-1", 7, Profile::cpu_bound(), t0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
        let mut client = MetricsServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
            .await
            .expect("connect")
            .send_compressed(tonic::codec::CompressionEncoding::Gzip);
        for k in 1..=5u64 {
            let t = t0 + k * 10 * S;
            let attrs = otlp_request::resource_attrs("grpc-svc", "g-1", Some(7));
            let req = otlp_request::request(&attrs, &i.profile.budget((k * 10) as f64), t0, t);
            let resp = client.export(req).await.expect("export").into_inner();
            assert!(resp.partial_success.is_none(), "{resp:?}");
        }
    });
    // Under the size limit but ~60 times that once decoded (2-byte empty messages): refused by
    // the estimate before prost decodes it, and counted.
    let bomb: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 2 << 20)
        .flatten()
        .collect();
    let status = rt
        .block_on(raw_grpc(grpc_port, bomb, None))
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("once decoded"), "{status}");
    let got = c
        .json("/api/v1/services/grpc-svc?window=5m")
        .expect("answer");
    assert_matches_engine(&got, "grpc-svc", &i.profile.budget(50.0));
    assert!(
        c.metric(
            "scalewise_collector_requests_rejected_total",
            &[("reason", "too_large")]
        )
        .expect("m")
            >= 1.0
    );
    assert!(
        c.metric(
            "scalewise_collector_points_received_total",
            &[("transport", "grpc")]
        )
        .expect("m")
            > 0.0
    );
}

/// Sends `body` as the Export method's message, bytes as they are, with an optional token.
async fn raw_grpc(port: u16, body: Vec<u8>, token: Option<&str>) -> Result<(), tonic::Status> {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    #[derive(Clone, Default)]
    struct Raw;
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
            use prost::bytes::BufMut;
            buf.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Self::Error> {
            use prost::bytes::Buf;
            Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .map_err(|e| tonic::Status::unknown(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(body);
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    );
    grpc.unary(req, path, Raw).await.map(|_| ())
}

/// One healthy service whose answer must not move while others misbehave.
fn healthy(c: &Collector) -> (Instance, serde_json::Value) {
    let t0 = now_ns() - 60 * S;
    let i = Instance::new("steady", "s-1", 1, Profile::dependency_bound(), t0);
    for k in 1..=5 {
        i.send(c, t0 + k * 10 * S).expect("send");
    }
    let mut answer = c
        .json("/api/v1/services/steady?window=10m")
        .expect("steady");
    strip_window(&mut answer);
    (i, answer)
}

fn strip_window(v: &mut serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("window_start_unix");
        o.remove("window_end_unix");
    }
}

fn partial(body: &[u8]) -> i64 {
    opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse::decode(body)
        .ok()
        .and_then(|r| r.partial_success)
        .map_or(0, |p| p.rejected_data_points)
}

/// `google.rpc.Status` as OTLP/HTTP sends it (the fields a client reads).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[test]
fn hostile_input_is_refused_or_counted_and_changes_no_other_answer() {
    let c = Collector::start(&["--max-services", "1000"]).expect("collector");
    let (_, before) = healthy(&c);
    let pb = "application/x-protobuf";
    let now = now_ns();

    // Truncated protobuf, JSON of the wrong shape, an unknown media type.
    let good = Instance::new("x", "x", 1, Profile::cpu_bound(), now - 10 * S).body_at(now);
    let (status, body) = c.post(pb, None, &good[..good.len() / 2]).expect("post");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // OTLP/HTTP: the refusal is a google.rpc.Status in the request's encoding.
    let refusal = RpcStatus::decode(&body[..]).expect("a google.rpc.Status");
    assert_eq!(refusal.code, 3, "INVALID_ARGUMENT");
    assert!(refusal.message.contains("decode"), "{}", refusal.message);
    let (status, body) = c
        .post("application/json", None, br#"{"resourceMetrics": 7}"#)
        .expect("post");
    assert_eq!(status, 400);
    let refusal: serde_json::Value = serde_json::from_slice(&body).expect("JSON Status");
    assert_eq!(refusal["code"], 3, "{refusal}");
    assert!(refusal["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(c.post("text/plain", None, b"hi").expect("post").0, 415);

    // A gzip bomb (64 MiB of zeros in ~64 KiB) and a body over the limit.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 4 << 20);
    let (status, body) = c.post(pb, Some("gzip"), &bomb).expect("post");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    // Refused from its Content-Length, before it is read: the client either reads the 413 or,
    // still writing, finds the connection closed under it. Either way nothing was inflated.
    match c.post(pb, None, &vec![0u8; 5 << 20]) {
        Ok((status, _)) => assert_eq!(status, 413),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(
                text.contains("Broken pipe") || text.contains("reset"),
                "over-limit body: {text}"
            );
        }
    }
    assert_eq!(c.post(pb, Some("gzip"), b"not gzip").expect("post").0, 400);
    // Empty messages, 2 bytes each, under every size limit: ~60 times larger decoded. Refused
    // from the estimate before decoding, in protobuf and in JSON.
    let empties: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 1900 << 10)
        .flatten()
        .collect();
    let (status, body) = c.post(pb, None, &empties).expect("post");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("once decoded"));
    let mut json = b"{\"resourceMetrics\":[".to_vec();
    json.extend(std::iter::repeat_n(&b"{},"[..], 1300 << 10).flatten());
    json.extend_from_slice(b"{}]}");
    assert_eq!(
        c.post("application/json", None, &json).expect("post").0,
        413
    );

    // NaN, negative values, far-future timestamps, no service.name: refused point by point.
    let attrs = otlp_request::resource_attrs("weird", "w", None);
    let mut b = Profile::cpu_bound().budget(10.0);
    b.cpu_s = f64::NAN;
    b.request_s = -3.0;
    let (status, body) = c
        .post(
            pb,
            None,
            &otlp_request::encode(&otlp_request::request(&attrs, &b, now - 10 * S, now)),
        )
        .expect("post");
    assert_eq!(status, 200);
    assert_eq!(partial(&body), 2);
    let future = otlp_request::request(
        &attrs,
        &Profile::cpu_bound().budget(10.0),
        now,
        now + 3600 * S,
    );
    let n = otlp_request::count_points(&future) as i64;
    let (_, body) = c
        .post(pb, None, &otlp_request::encode(&future))
        .expect("post");
    assert_eq!(partial(&body), n);
    let anonymous = otlp_request::request(&[], &Profile::cpu_bound().budget(10.0), now - S, now);
    let (_, body) = c
        .post(pb, None, &otlp_request::encode(&anonymous))
        .expect("post");
    assert_eq!(partial(&body), n);

    // Decreasing counters: a reset, never a negative share.
    let dec = Instance::new("decreasing", "d", 1, Profile::cpu_bound(), now - 100 * S);
    dec.send(&c, now - 10 * S).expect("send");
    let smaller = otlp_request::request(
        &otlp_request::resource_attrs("decreasing", "d", Some(1)),
        &Profile::cpu_bound().budget(5.0),
        now - 100 * S,
        now - 5 * S,
    );
    assert_eq!(
        c.post(pb, None, &otlp_request::encode(&smaller))
            .expect("post")
            .0,
        200
    );
    let d = c
        .json("/api/v1/services/decreasing?window=1h")
        .expect("answer");
    for (k, v) in d["breakdown"].as_object().expect("shares") {
        assert!(v.as_f64() >= Some(0.0), "{k} {v}");
    }

    // 10,000 dependencies in one service: 64 kept.
    let mut b = Profile::dependency_bound().budget(10.0);
    for k in 0..10_000u32 {
        b.downstream.insert(
            format!("10.{}.{}.{}:80", k / 65536, (k / 256) % 256, k % 256),
            scalewise_core::budget::DependencyTime {
                kind: "http".into(),
                name: None,
                awaiting_s: 0.0001,
                connection_s: 0.0,
            },
        );
    }
    let fat = otlp_request::request(
        &otlp_request::resource_attrs("fat-deps", "fat", None),
        &b,
        now - 10 * S,
        now,
    );
    let (status, body) = c
        .post(pb, Some("gzip"), &gzip(&otlp_request::encode(&fat)))
        .expect("post");
    assert_eq!(status, 200);
    assert_eq!(partial(&body), 10_000 + 1 - 64, "{}", partial(&body));
    let fat = c.json("/api/v1/services/fat-deps?window=1h").expect("fat");
    assert_eq!(fat["dependencies"].as_array().map(Vec::len), Some(64));

    // A name with markup: served as data, escaped on the page.
    let evil = "<script>alert(1)</script>";
    Instance::new(evil, "e", 1, Profile::cpu_bound(), now - 20 * S)
        .send(&c, now - 10 * S)
        .expect("send");
    let (_, page) = c.get("/").expect("page");
    assert!(!page.contains(evil));
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // 100,000 service names: 1,000 kept, the rest dropped and counted, memory bounded.
    let mut dropped_req = 0i64;
    for chunk in 0..10 {
        let mut req = otlp_request::request(&[], &Budget::default(), 0, 0);
        req.resource_metrics.clear();
        for k in 0..10_000 {
            let name = format!("svc-{chunk}-{k}");
            let mut rm = otlp_request::resource_metrics(
                &otlp_request::resource_attrs(&name, "i", None),
                &Budget::default(),
                now - S,
                now,
            );
            // One point per resource keeps the request small.
            rm.scope_metrics[0].metrics.truncate(1);
            req.resource_metrics.push(rm);
        }
        let (status, body) = c
            .post(pb, Some("gzip"), &gzip(&otlp_request::encode(&req)))
            .expect("post");
        assert_eq!(status, 200);
        dropped_req += partial(&body);
    }
    assert!(dropped_req >= 99_000, "{dropped_req}");
    assert_eq!(
        c.metric("scalewise_collector_services", &[]).expect("m"),
        1000.0
    );
    assert!(
        c.metric(
            "scalewise_collector_overflow_dropped_total",
            &[("limit", "services")]
        )
        .expect("m")
            >= 99_000.0
    );

    // After all that: the healthy service's answer is unchanged, and the process is small.
    let mut after = c
        .json("/api/v1/services/steady?window=10m")
        .expect("steady");
    strip_window(&mut after);
    assert_eq!(after, before);
    let rss = c.rss_bytes();
    assert!(rss < 200 << 20, "collector RSS {} MiB", rss >> 20);
    for reason in ["decode", "too_large", "bad_gzip"] {
        assert!(
            c.metric(
                "scalewise_collector_requests_rejected_total",
                &[("reason", reason)]
            )
            .expect("counted")
                >= 1.0,
            "{reason}"
        );
    }
    for reason in ["bad_value", "future_timestamp", "no_service_name"] {
        assert!(
            c.metric(
                "scalewise_collector_points_rejected_total",
                &[("reason", reason)]
            )
            .expect("counted")
                >= 1.0,
            "{reason}"
        );
    }
}

#[test]
fn promtool_accepts_a_real_scrape() {
    let c = Collector::start(&[]).expect("collector");
    let t0 = now_ns() - 60 * S;
    for (name, p) in [
        ("db-bound", Profile::dependency_bound()),
        ("cpu-bound", Profile::cpu_bound()),
    ] {
        let i = Instance::new(name, &format!("{name}-1"), 3, p, t0);
        for k in 1..=5 {
            i.send(&c, t0 + k * 10 * S).expect("send");
        }
    }
    let (status, text) = c.get("/metrics").expect("scrape");
    assert_eq!(status, 200);
    for name in [
        "scalewise_component_share_ratio{",
        "scalewise_verdict{",
        "scalewise_request_time_seconds_total{",
        "scalewise_dependency_time_seconds_total{",
        "scalewise_collector_points_received_total{",
        "scalewise_build_info{",
    ] {
        assert!(text.contains(name), "no {name} in\n{text}");
    }
    assert!(text.contains("scalewise_verdict{service_name=\"db-bound\",verdict=\"dependency\"} 1"));
    let (ok, out) = promtool_check_metrics(&text)
        .expect("promtool (scripts/install-deps installs Debian's prometheus package)");
    assert!(ok, "promtool check metrics:\n{out}");
}

#[test]
fn a_restart_keeps_windows_and_history() {
    let mut c = Collector::start(&[]).expect("collector");
    let (_, before) = healthy(&c);
    let hist_before = c
        .json("/api/v1/services/steady/history?window=10m&step=5m")
        .expect("history");
    c.restart().expect("restart");
    let mut after = c.json("/api/v1/services/steady?window=10m").expect("after");
    strip_window(&mut after);
    assert_eq!(after, before);
    let hist_after = c
        .json("/api/v1/services/steady/history?window=10m&step=5m")
        .expect("history");
    let verdicts = |h: &serde_json::Value| -> Vec<String> {
        h["points"]
            .as_array()
            .map(|p| p.iter().map(|x| x["verdict"].to_string()).collect())
            .unwrap_or_default()
    };
    // Steps are aligned to "now", which moved by the restart; the verdicts per step agree.
    assert_eq!(verdicts(&hist_after), verdicts(&hist_before));
    assert_eq!(
        verdicts(&hist_after),
        ["\"insufficient_data\"", "\"dependency\""]
    );
}

#[test]
fn kill_9_loses_at_most_one_flush_and_never_corrupts() {
    let mut c = Collector::start(&[]).expect("collector");
    let start = now_ns() - 30 * S;
    let i = Instance::new("survivor", "v-1", 9, Profile::dependency_bound(), start);
    let mut t = start + S;
    for _ in 0..20 {
        i.send(&c, t).expect("send");
        t += S / 2;
    }
    let acked = t - S / 2;
    // Wait until everything acknowledged so far is durable (the next flush wrote it).
    while c
        .metric("scalewise_collector_pending_snapshots", &[])
        .unwrap_or(1.0)
        > 0.0
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    // Keep ingesting and kill it in the middle.
    for _ in 0..20 {
        i.send(&c, t).expect("send");
        t += S / 2;
    }
    c.kill9().expect("kill -9");
    c.restart().expect("the store opens after kill -9");
    let got = c
        .json("/api/v1/services/survivor?window=10m")
        .expect("answer");
    let last_seen = got["last_seen_unix"].as_f64().expect("last seen");
    assert!(
        last_seen >= acked as f64 / 1e9 - 1e-3,
        "flushed data lost: last seen {last_seen}, flushed {acked}"
    );
    assert_eq!(got["verdict"], "dependency");
    // And it keeps working: more data, a consistent window.
    i.send(&c, t).expect("send after restart");
    let got = c
        .json("/api/v1/services/survivor?window=10m")
        .expect("answer");
    assert_matches_engine(
        &got,
        "survivor",
        &i.profile.budget((t - start) as f64 / 1e9),
    );
}

#[test]
fn an_outage_loses_no_request_seconds_and_a_reset_is_not_doubled() {
    let mut c = Collector::start(&[]).expect("collector");
    let t0 = now_ns() - 200 * S;
    let i = Instance::new("outage", "o-1", 5, Profile::dependency_bound(), t0);
    for k in 1..=5 {
        i.send(&c, t0 + k * 10 * S).expect("send");
    }
    // The collector is down while the agent keeps counting; nothing arrives for 100 s.
    c.stop().expect("stop");
    c.restart().expect("start");
    i.send(&c, t0 + 150 * S).expect("send after the outage");
    let got = c
        .json("/api/v1/services/outage?window=10m")
        .expect("answer");
    assert_matches_engine(&got, "outage", &i.profile.budget(150.0));
    let r = got["requests"]["mean_in_flight"]
        .as_f64()
        .expect("in flight");
    assert!((r - i.profile.in_flight).abs() < 1e-6, "{r}");

    // The agent restarts: new start time, counters from zero. The window holds both lives.
    let t1 = t0 + 160 * S;
    let reborn = Instance::new("outage", "o-1", 5, Profile::dependency_bound(), t1);
    reborn.send(&c, t0 + 170 * S).expect("send");
    reborn.send(&c, t0 + 180 * S).expect("send");
    let got = c
        .json("/api/v1/services/outage?window=10m")
        .expect("answer");
    let want = sum(&[i.profile.budget(150.0), reborn.profile.budget(20.0)]);
    // Sampled time adds across the two lives of one instance, unlike across instances.
    let mut want = want;
    want.window_s = 170.0;
    assert_matches_engine(&got, "outage", &want);

    // A target restarted under a new pid and instance id: one service, continuous.
    let next = Instance::new(
        "outage",
        "o-2",
        6,
        Profile::dependency_bound(),
        t0 + 185 * S,
    );
    next.send(&c, t0 + 195 * S).expect("send");
    let got = c
        .json("/api/v1/services/outage?window=10m")
        .expect("answer");
    assert_eq!(got["instances"], 2);
    assert_eq!(got["pids"], serde_json::json!([5, 6]));
    let b = got["breakdown"]["downstream"].as_f64().expect("share");
    assert!((b - 0.75).abs() < 1e-9, "{b}");
}

#[test]
fn two_shards_answer_exactly_as_one_collector() {
    let all = Collector::start(&[]).expect("one");
    let shards = [
        Collector::start(&[]).expect("shard a"),
        Collector::start(&[]).expect("shard b"),
    ];
    let t0 = now_ns() - 120 * S;
    let services: Vec<Instance> = (0..6)
        .flat_map(|k| {
            let p = if k % 2 == 0 {
                Profile::dependency_bound()
            } else {
                Profile::cpu_bound()
            };
            (0..2).map(move |j| {
                Instance::new(
                    &format!("svc-{k}"),
                    &format!("svc-{k}-{j}"),
                    100 + j,
                    p.clone(),
                    t0 + j as u64 * 20 * S,
                )
            })
        })
        .collect();
    for step in 1..=10u64 {
        let t = t0 + step * 10 * S;
        for (n, i) in services.iter().enumerate() {
            if t <= i.start_ns {
                continue;
            }
            i.send(&all, t).expect("all");
            // Routed by service name, as the load-balancing exporter does with routing_key: service.
            i.send(&shards[(n / 2) % 2], t).expect("shard");
        }
    }
    for k in 0..6 {
        let path = format!("/api/v1/services/svc-{k}?window=10m");
        let mut one = all.json(&path).expect("one");
        let mut shard = shards[k % 2].json(&path).expect("shard");
        strip_window(&mut one);
        strip_window(&mut shard);
        assert_eq!(one, shard, "svc-{k}");
        assert_eq!(shards[(k + 1) % 2].get(&path).expect("other").0, 404);
    }
}

#[test]
fn exposed_listens_need_tokens_and_tokens_are_checked() {
    // A non-loopback listen without a token file is refused before binding.
    let data = TempDir::new("exposed").expect("temp dir");
    let out = Command::new(collector_bin())
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));
    // The shipped example config parses.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/collector.toml");
    let out = Command::new(collector_bin())
        .arg("--config")
        .arg(&example)
        .arg("--print-config")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("metrics_window = \"5m\""));

    let dir = TempDir::new("tokens").expect("temp dir");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "# ops\ns3cret\n").expect("write");
    let grpc_port = scalewise_e2e::harness::free_port();
    let c = Collector::start(&[
        "--token-file",
        tokens.to_str().expect("utf8"),
        "--grpc-listen",
        &format!("127.0.0.1:{grpc_port}"),
    ])
    .expect("start");
    // gRPC: the token is checked from the headers, before the message is decoded (an
    // undecodable body still gets "unauthenticated", not a decode error).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for token in [None, Some("wrong")] {
        let status = rt
            .block_on(raw_grpc(grpc_port, b"\xff\xff".to_vec(), token))
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
    }
    let status = rt
        .block_on(raw_grpc(grpc_port, b"\xff\xff".to_vec(), Some("s3cret")))
        .expect_err("undecodable");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    let ok = otlp_request::request(
        &otlp_request::resource_attrs("auth-grpc", "g", None),
        &Profile::cpu_bound().budget(10.0),
        now_ns() - 10 * S,
        now_ns(),
    )
    .encode_to_vec();
    rt.block_on(raw_grpc(grpc_port, ok, Some("s3cret")))
        .expect("accepted with the token");
    let t = now_ns();
    let body = Instance::new("auth", "a", 1, Profile::cpu_bound(), t - 10 * S).body_at(t);
    let url = format!("{}/v1/metrics", c.url());
    let pb = "application/x-protobuf";
    assert_eq!(post(&url, pb, None, &body, None).expect("post").0, 401);
    assert_eq!(
        post(&url, pb, None, &body, Some("wrong")).expect("post").0,
        401
    );
    assert_eq!(
        post(&url, pb, None, &body, Some("s3cret")).expect("post").0,
        200
    );
    let api = format!("{}/api/v1/services", c.url());
    assert_eq!(
        scalewise_e2e::collector::get(&api, None).expect("get").0,
        401
    );
    assert_eq!(
        scalewise_e2e::collector::get(&api, Some("s3cret"))
            .expect("get")
            .0,
        200
    );
    assert_eq!(c.get("/healthz").expect("health").0, 200);
}

/// Headless Chromium ([`harness::chromium`]) in a 1400x900 window; its stdout.
fn chromium(args: &[&str]) -> String {
    let mut all = vec!["--window-size=1400,900"];
    all.extend(args);
    let out = harness::chromium(&all)
        .expect("chromium (scripts/install-deps installs Debian's chromium package)");
    assert!(
        out.status.is_some_and(|s| s.success()),
        "chromium failed: {}",
        out.stderr
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Distinct colours in a PNG (a blank page has one).
fn colours(path: &std::path::Path) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(path).expect("screenshot"),
    ));
    let mut reader = decoder.read_info().expect("png");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("frame");
    let px = info.color_type.samples();
    let mut seen = std::collections::HashSet::new();
    for p in buf[..info.buffer_size()].chunks(px) {
        seen.insert(p.to_vec());
        if seen.len() > 1000 {
            break;
        }
    }
    seen.len()
}

#[test]
fn the_web_page_shows_services_and_verdicts_in_a_real_browser() {
    let c = Collector::start(&[]).expect("collector");
    let t0 = now_ns() - 300 * S;
    let evil = "<script>document.title='pwned'</script>";
    for (name, p) in [
        ("orders", Profile::dependency_bound()),
        ("render", Profile::cpu_bound()),
        (evil, Profile::cpu_bound()),
    ] {
        let i = Instance::new(name, &format!("{name}-1"), 4, p, t0);
        for k in 1..=29 {
            i.send(&c, t0 + k * 10 * S).expect("send");
        }
    }
    let list = c.json("/api/v1/services").expect("list");
    let dir = TempDir::new("screens").expect("temp dir").keep();
    let shot = dir.join("fleet.png");
    chromium(&[&format!("--screenshot={}", shot.display()), &c.url()]);
    let dom = chromium(&["--dump-dom", &c.url()]);
    // Had the name become markup, its script would have renamed the page and left a tag.
    assert!(
        dom.contains("<title>scalewise: fleet</title>"),
        "a service name ran as script"
    );
    assert!(!dom.to_ascii_lowercase().contains("<script"), "{dom}");
    for s in list["services"].as_array().expect("services") {
        let name = s["service"].as_str().expect("name");
        let verdict = s["verdict"].as_str().expect("verdict");
        assert!(
            dom.contains(&format!("data-verdict=\"{verdict}\"")),
            "{verdict} not on the page"
        );
        if name != evil {
            assert!(
                dom.contains(&format!(">{name}</a>")),
                "{name} not on the page"
            );
        }
    }
    assert!(
        dom.contains("&lt;script&gt;document.title="),
        "escaped name shown as text"
    );
    assert!(colours(&shot) > 10, "fleet screenshot looks blank");

    let shot = dir.join("service.png");
    chromium(&[
        &format!("--screenshot={}", shot.display()),
        &format!("{}/services/orders", c.url()),
    ]);
    let dom = chromium(&["--dump-dom", &format!("{}/services/orders", c.url())]);
    assert!(dom.contains("id=\"history\""));
    assert!(dom.contains("127.0.0.1:5432"));
    assert!(dom.contains("data-verdict=\"dependency\""));
    assert!(colours(&shot) > 10, "service screenshot looks blank");
    eprintln!("screenshots in {}", dir.display());
}
