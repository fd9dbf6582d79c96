//! Spans, the exact source: `diagnose --otlp-listen` against a real Node service instrumented
//! with the OpenTelemetry SDK (tests/node/otel/instrument.js preloaded into the unchanged
//! tests/node/workload.js), compared with what its load generator's clients measured and with the
//! ground truth the service records; and the receiver's edge: every OTLP encoding, forwarding
//! unchanged, hostile bodies refused and counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
use prost::Message;
use scalewise_e2e::collector::now_ns;
use scalewise_e2e::harness::{
    diagnose_report, exclusive, free_port, wait_listening, Load, Service,
};

fn script(parts: &[&str]) -> String {
    let mut p = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    for part in parts {
        p.push(part);
    }
    p.to_string_lossy().into_owned()
}

/// The agent's `diagnose` in a thread, so the test can drive load while it samples.
fn diagnose_in_background(
    pid: u32,
    duration_s: f64,
    flags: Vec<String>,
) -> std::thread::JoinHandle<serde_json::Value> {
    std::thread::spawn(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        diagnose_report(&[pid], duration_s, &flags).expect("diagnose")
    })
}

/// Runs the instrumented Node service under closed-loop load (no think time) while `diagnose`
/// receives its spans; returns the agent's service object, the clients' summary and the truth.
fn node_with_spans(
    env: &[(&str, &str)],
    concurrency: u32,
) -> (
    serde_json::Value,
    serde_json::Value,
    scalewise_e2e::workload::Truth,
    serde_json::Value,
) {
    let otel = script(&["node", "otel", "instrument.js"]);
    assert!(
        Path::new(&script(&["node", "otel", "node_modules"])).exists(),
        "the OpenTelemetry SDK for Node is not installed: run scripts/install-deps"
    );
    // What spans cannot see, the time before the server reads a request and after it hands the
    // response to the kernel, is a fraction of a millisecond on a quiet host and a few on a
    // loaded one (docs/ARCHITECTURE.md, Spans): a 100 ms dependency keeps it under 2%.
    let backend = Service::workload(&["backend", "--port", "0", "--ms", "100"]).expect("backend");
    let otlp = free_port();
    let endpoint = format!("http://127.0.0.1:{otlp}/v1/traces");
    let mut all_env = vec![
        ("OTEL_SERVICE_NAME", "shop"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_METRICS_EXPORTER", "none"),
        ("OTEL_LOGS_EXPORTER", "none"),
    ];
    all_env.extend_from_slice(env);
    let svc = Service::spawn_env(
        "node",
        &[
            "--require",
            &otel,
            &script(&["node", "workload.js"]),
            "--cpu-ms",
            "1",
            "--backend",
            &backend.addr(),
            "--backend-ms",
            "100",
        ],
        &all_env,
    )
    .expect("node");
    // Warm the JIT and the SDK (its exporter fails quietly until the agent listens).
    Load::start(svc.port, concurrency, 1.5, 0.0)
        .expect("warm-up load")
        .finish()
        .expect("warm-up");
    let before = svc.truth().expect("truth before");
    let agent = diagnose_in_background(
        svc.pid,
        9.0,
        vec![
            "--otlp-listen".into(),
            format!("127.0.0.1:{otlp}"),
            "--otlp-flush-wait".into(),
            "3".into(),
        ],
    );
    wait_listening(otlp);
    // Every request of this load starts and ends inside the agent's window.
    std::thread::sleep(Duration::from_millis(300));
    let clients = Load::start(svc.port, concurrency, 6.0, 0.0)
        .expect("load")
        .finish()
        .expect("load summary");
    let report = agent.join().expect("agent thread");
    let after = svc.truth().expect("truth after");
    let truth = after.delta(&before);
    (report["services"][0].clone(), clients, truth, report)
}

#[test]
fn node_with_opentelemetry_latency_and_shares_come_from_spans() {
    let _x = exclusive();
    let (d, clients, window, report) = node_with_spans(&[], 8);
    let truth = window.shares();
    let measured = d["requests"]["mean_latency_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let client = clients["mean_latency_ms"].as_f64().unwrap_or(f64::NAN);
    let b = &d["breakdown"];
    let got = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "spans node: latency {measured:.3} ms, clients {client:.3} ms ({:+.2}%, {:.2} ms a request), handler's own {:.3} ms; cpu {:.3} (truth {:.3}), downstream {:.3} (truth {:.3}), local_wait {:.3} (truth {:.3}); {} client requests",
        (measured / client - 1.0) * 100.0,
        client - measured,
        window.latency_s / window.requests * 1000.0,
        got("cpu"),
        truth.cpu,
        got("downstream"),
        truth.downstream,
        got("local_wait"),
        truth.local_wait,
        clients["requests"]
    );
    eprintln!(
        "receiver: {}; dependencies: {}; evidence: {}",
        report["agent"]["otlp"], d["dependencies"], d["evidence"]
    );
    assert_eq!(d["requests"]["source"], "spans", "{d:#}");
    // Matched by process.pid, and named as the service names itself.
    assert_eq!(d["service"], "shop", "{d:#}");
    assert!(
        (measured - client).abs() <= 0.02 * client,
        "mean latency {measured} ms vs the clients' {client} ms\n{d:#}"
    );
    for (k, want) in [
        ("cpu", truth.cpu),
        ("downstream", truth.downstream),
        ("local_wait", truth.local_wait),
    ] {
        assert!(
            (got(k) - want).abs() <= 0.05,
            "{k}: measured {:.3}, truth {want:.3}\n{d:#}",
            got(k)
        );
    }
    let deps = d["dependencies"].as_array().expect("dependencies");
    assert_eq!(deps.len(), 1, "{d:#}");
    assert_eq!(deps[0]["kind"], "http", "{d:#}");
    scalewise_e2e::verdicts::record(
        "spans-node-backend",
        scalewise_e2e::verdicts::Truth::Is("dependency"),
        &d,
    );
    assert_eq!(d["verdict"], "dependency", "{d:#}");
    assert!(d["evidence"].to_string().contains("server spans"), "{d:#}");
    let otlp = &report["agent"]["otlp"];
    assert!(otlp["http_requests"].as_u64().unwrap_or(0) > 0, "{otlp}");
    assert_eq!(otlp["spans"]["invalid_spans"], 0, "{otlp}");
}

// ---------------------------------------------------------------------------------------------
// The receiver's edge.

/// An HTTP/1.1 server that keeps every POST it gets (content-type, content-encoding, body).
type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

fn forward_target() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got: Received = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let keep = keep.clone();
            std::thread::spawn(move || serve_posts(conn, keep));
        }
    });
    (port, got)
}

fn serve_posts(conn: TcpStream, keep: Received) {
    let mut w = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(conn);
    loop {
        let (mut len, mut ct, mut ce) = (0usize, String::new(), String::new());
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => ct = v.trim().to_string(),
                    "content-encoding" => ce = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        keep.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ct, ce, body));
        if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// POSTs a body to the agent's `/v1/traces`; returns the status code (0 if none came back).
fn post(port: u16, content_type: &str, encoding: Option<&str>, body: &[u8]) -> u16 {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let mut head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: agent\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(e) = encoding {
        head.push_str(&format!("Content-Encoding: {e}\r\n"));
    }
    head.push_str("\r\n");
    // Write from another thread: the agent may answer (413) before reading a large body.
    let mut w = s.try_clone().expect("clone");
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&body);
    });
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    let _ = writer.join();
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `n` server spans of 10 ms each, ending now, each with a 4 ms call to PostgreSQL inside.
fn spans(tag: u8, n: u8) -> ExportTraceServiceRequest {
    let end = now_ns();
    let kv = |k: &str, v: Value| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    };
    let mut list = Vec::new();
    for i in 0..n {
        let trace = vec![tag, i, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
        list.push(Span {
            trace_id: trace.clone(),
            span_id: vec![i, 2, 2, 2, 2, 2, 2, 2],
            kind: SpanKind::Client as i32,
            start_time_unix_nano: end - 8_000_000,
            end_time_unix_nano: end - 4_000_000,
            attributes: vec![
                kv("db.system.name", Value::StringValue("postgresql".into())),
                kv("server.address", Value::StringValue("127.0.0.1".into())),
                kv("server.port", Value::IntValue(5432)),
            ],
            ..Span::default()
        });
        list.push(Span {
            trace_id: trace,
            span_id: vec![i, 1, 1, 1, 1, 1, 1, 1],
            kind: SpanKind::Server as i32,
            start_time_unix_nano: end - 10_000_000,
            end_time_unix_nano: end,
            ..Span::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("checkout".into()))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: list,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn every_encoding_is_received_forwarded_unchanged_and_hostile_bodies_are_refused() {
    let _x = exclusive();
    // Any process will do for the sampling side: nothing but these spans carries requests.
    let idle = Service::workload(&["backend", "--port", "0", "--ms", "1"]).expect("idle service");
    let (target, received) = forward_target();
    let otlp = free_port();
    let agent = diagnose_in_background(
        idle.pid,
        4.0,
        vec![
            "--otlp-listen".into(),
            format!("127.0.0.1:{otlp}"),
            "--traces-forward".into(),
            format!("http://127.0.0.1:{target}/v1/traces"),
            "--otlp-flush-wait".into(),
            "0".into(),
        ],
    );
    wait_listening(otlp);
    std::thread::sleep(Duration::from_millis(500));

    // Good bodies: protobuf, gzipped protobuf, JSON, gRPC; 10 requests each.
    let pb = spans(1, 10).encode_to_vec();
    let pb_gz = gzip(&spans(2, 10).encode_to_vec());
    let json = serde_json::to_vec(&spans(3, 10)).expect("json");
    assert_eq!(post(otlp, "application/x-protobuf", None, &pb), 200);
    assert_eq!(
        post(otlp, "application/x-protobuf", Some("gzip"), &pb_gz),
        200
    );
    assert_eq!(post(otlp, "application/json", None, &json), 200);
    let grpc = spans(4, 10);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{otlp}"))
            .await
            .expect("gRPC connect");
        client.export(grpc.clone()).await.expect("gRPC export");
    });

    // Hostile bodies.
    assert_eq!(
        post(otlp, "application/x-protobuf", None, &pb[..pb.len() / 2]),
        400
    );
    assert_eq!(
        post(otlp, "application/json", None, b"{\"resourceSpans\": [{"),
        400
    );
    let bomb = gzip(&vec![0u8; 256 << 20]);
    assert_eq!(
        post(otlp, "application/x-protobuf", Some("gzip"), &bomb),
        413
    );
    assert_eq!(
        post(otlp, "application/x-protobuf", None, &vec![7u8; 9 << 20]),
        413
    );
    assert_eq!(post(otlp, "text/plain", None, b"hello"), 415);

    let report = agent.join().expect("agent thread");
    let d = &report["services"][0];
    let otlp_stats = &report["agent"]["otlp"];
    eprintln!("receiver counters: {otlp_stats}");
    assert_eq!(d["requests"]["source"], "spans", "{d:#}");
    assert_eq!(d["service"], "checkout", "{d:#}");
    assert!(
        (d["requests"]["mean_latency_ms"].as_f64().unwrap_or(0.0) - 10.0).abs() < 1e-6,
        "{d:#}"
    );
    // 4 ms of every 10 ms request awaited PostgreSQL.
    let dep = &d["dependencies"][0];
    assert_eq!(dep["endpoint"], "127.0.0.1:5432", "{d:#}");
    assert!(
        (dep["share"].as_f64().unwrap_or(0.0) - 0.4).abs() < 1e-6,
        "{d:#}"
    );
    assert_eq!(otlp_stats["http_requests"], 8, "{otlp_stats}");
    assert_eq!(otlp_stats["grpc_requests"], 1, "{otlp_stats}");
    assert_eq!(otlp_stats["spans"]["server_spans"], 40, "{otlp_stats}");
    let rejected = &otlp_stats["rejected"];
    assert_eq!(rejected["bad_protobuf"], 1, "{otlp_stats}");
    assert_eq!(rejected["bad_json"], 1, "{otlp_stats}");
    assert_eq!(rejected["too_large"], 2, "{otlp_stats}");
    assert_eq!(rejected["unsupported"], 1, "{otlp_stats}");

    // The forward target got each accepted body unchanged (gRPC as HTTP/protobuf), nothing else.
    let got = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let expect = [
        ("application/x-protobuf", "", pb),
        ("application/x-protobuf", "gzip", pb_gz),
        ("application/json", "", json),
        ("application/x-protobuf", "", grpc.encode_to_vec()),
    ];
    assert_eq!(got.len(), expect.len(), "forwarded {} bodies", got.len());
    for (want_ct, want_ce, want_body) in expect {
        assert!(
            got.iter()
                .any(|(ct, ce, b)| ct == want_ct && ce == want_ce && *b == want_body),
            "no forwarded {want_ct} {want_ce:?} body of {} bytes",
            want_body.len()
        );
    }
    assert_eq!(otlp_stats["forwarded"], 4, "{otlp_stats}");
}

#[test]
fn sampled_traces_are_scaled_by_the_socket_measured_rate() {
    let _x = exclusive();
    // The SDK keeps a quarter of the traces, as busy services configure it.
    let (d, clients, window, _) = node_with_spans(
        &[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ],
        8,
    );
    let truth = window.shares();
    let measured = d["requests"]["mean_latency_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let client = clients["mean_latency_ms"].as_f64().unwrap_or(f64::NAN);
    let counted =
        d["requests"]["rate_per_s"].as_f64().unwrap_or(0.0) * d["window_s"].as_f64().unwrap_or(0.0);
    let sent = clients["requests"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "sampled spans node: latency {measured:.3} ms, clients {client:.3} ms ({:+.2}%); requests {counted:.0} counted, {sent} sent; downstream {:.3} (truth {:.3}); evidence {}",
        (measured / client - 1.0) * 100.0,
        d["breakdown"]["downstream"],
        truth.downstream,
        d["evidence"]
    );
    assert_eq!(d["requests"]["source"], "spans", "{d:#}");
    assert!(
        d["evidence"].to_string().contains("traces sampled"),
        "{d:#}"
    );
    // The count comes from the sockets (scaled spans), the latency from the spans kept.
    assert!(
        (counted - sent).abs() <= 0.10 * sent,
        "{counted} vs {sent}\n{d:#}"
    );
    // A quarter of the requests estimate the mean: 5% here, 2% is the full-trace test's bound.
    assert!(
        (measured - client).abs() <= 0.05 * client,
        "mean latency {measured} ms vs the clients' {client} ms\n{d:#}"
    );
    let down = d["breakdown"]["downstream"].as_f64().unwrap_or(f64::NAN);
    assert!((down - truth.downstream).abs() <= 0.05, "{d:#}");
}

#[test]
fn bad_receiver_flags_say_what_is_wrong() {
    let pid = std::process::id().to_string();
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(scalewise_e2e::harness::agent_bin())
            .args(["diagnose", "--quiet", "--duration", "1", "--pid", &pid])
            .args(extra)
            .output()
            .expect("agent");
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--otlp-listen", "0.0.0.0:0"]);
    assert!(e.contains("not a loopback address"), "{e}");
    let e = run(&["--traces-forward", "http://127.0.0.1:9/v1/traces"]);
    assert!(e.contains("--otlp-listen"), "{e}");
    let e = run(&[
        "--otlp-listen",
        "127.0.0.1:0",
        "--traces-forward",
        "https://collector:4318/v1/traces",
    ]);
    assert!(e.contains("only http://"), "{e}");
    // A port already taken is named.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let e = run(&["--otlp-listen", &addr]);
    assert!(e.contains("cannot listen on"), "{e}");
}
