//! GC sources end to end: a real Go service read through expvar and through its Prometheus
//! endpoint, and a JVM that publishes no hsperfdata file. The JVM hsperfdata scenarios with
//! ground truth are in accuracy.rs.

use scalewise_e2e::harness::{diagnose, diagnose_report, exclusive, Load, Service};

const WINDOW_S: f64 = 6.0;

/// Diagnoses the Go service with one GC flag and compares the GC share with its own truth.
fn go_gc(flag: &str, path: &str) {
    let _x = exclusive();
    let svc = Service::go(&["--alloc-kb", "4096", "--cpu-ms", "1"]).expect("go service");
    let _load = Load::start(svc.port, 4, WINDOW_S + 5.0, 0.0).expect("load");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = svc.truth().expect("truth");
    let url = format!("http://127.0.0.1:{}{path}", svc.port);
    let d = diagnose(&[svc.pid], WINDOW_S, &[flag, &url]).expect("diagnose");
    let after = svc.truth().expect("truth");
    let truth_gc = after.delta(&before).shares().gc;
    let gc = d["breakdown"]["gc"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "go gc via {flag}: measured {gc:.3}, truth {truth_gc:.3}; {}",
        d["evidence"]
    );
    let evidence = d["evidence"].to_string();
    assert!(evidence.contains("stop-the-world pauses"), "{d:#}");
    assert!(
        (gc - truth_gc).abs() <= 0.10,
        "gc {gc} vs truth {truth_gc}: {d:#}"
    );
}

#[test]
fn go_gc_through_expvar() {
    go_gc("--expvar-url", "/debug/vars");
}

#[test]
fn go_gc_through_prometheus_endpoint() {
    go_gc("--metrics-url", "/metrics");
}

#[test]
fn jvm_without_hsperfdata_is_said_so() {
    let _x = exclusive();
    let svc = Service::java(
        &["-XX:+PerfDisableSharedMem"],
        &["--workers", "2", "--cpu-ms", "1"],
    )
    .expect("jvm");
    let _load = Load::start(svc.port, 2, 5.0, 0.0).expect("load");
    let d = diagnose(&[svc.pid], 2.0, &[]).expect("diagnose");
    let evidence = d["evidence"].to_string();
    assert!(evidence.contains("without an hsperfdata file"), "{d:#}");
}

#[test]
fn an_unreachable_metrics_url_is_counted_and_sampling_goes_on() {
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "2", "--cpu-ms", "1"]).expect("service");
    let _load = Load::start(svc.port, 2, 6.0, 0.0).expect("load");
    let v = diagnose_report(
        &[svc.pid],
        3.0,
        &["--metrics-url", "http://127.0.0.1:1/metrics"],
    )
    .expect("the agent goes on without its GC source");
    let errors = v["agent"]["sampler_errors"].to_string();
    assert!(
        errors.contains("\"gc\"") && errors.contains("http"),
        "{errors}"
    );
    assert!(
        v["services"][0]["requests"]["rate_per_s"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
}
