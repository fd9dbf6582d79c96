//! Collector ingest benchmark: prints figures, asserts nothing about time.
//!
//! `cargo bench -p scalewise-collector --features server --bench ingest`
//!
//! 1. Throughput: OTLP protobuf bodies (100 resources each, as an OpenTelemetry Collector batch
//!    would send) decoded and taken in on one thread: data points per second per core, with the
//!    points the collector counted as received equal to the points sent and none rejected.
//! 2. Memory: 1,000 services x 10 instances, each sending 10 minutes of 10 s exports (60
//!    snapshots, the default memory retention), then the process's resident set size.

use std::time::Instant;

use scalewise_collector::budget::{Budget, DependencyTime, RequestSource};
use scalewise_collector::server::config::Config;
use scalewise_collector::server::ingest::decode_body;
use scalewise_collector::server::{otlp, App};

fn budget(secs: f64, k: usize) -> Budget {
    let mut b = Budget {
        window_s: secs,
        request_s: 4.0 * secs,
        requests: (200.0 * secs).round(),
        request_source: RequestSource::Sockets,
        cpu_s: 0.4 * secs,
        cpu_wait_s: 0.1 * secs,
        capacity_core_s: 4.0 * secs,
        busiest_thread_busy_s: 0.2 * secs,
        busiest_thread: Some("worker".into()),
        socket_samples: (secs * 100.0) as u64,
        ..Budget::default()
    };
    b.downstream.insert(
        format!("10.0.{}.1:5432", k % 200),
        DependencyTime {
            kind: "postgresql".into(),
            name: None,
            awaiting_s: 3.0 * secs,
        },
    );
    b
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Bodies for `services` x `instances`, exports `steps` (10 s apart) of instances that started
/// counting at `start`.
fn bodies(
    services: usize,
    instances: usize,
    steps: std::ops::RangeInclusive<u64>,
    start: u64,
) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut points = 0;
    for step in steps {
        let t = start + step * 10_000_000_000;
        let secs = (t - start) as f64 / 1e9;
        let mut req = otlp::request(&[], &Budget::default(), 0, 0);
        req.resource_metrics.clear();
        for s in 0..services {
            for i in 0..instances {
                let attrs = otlp::resource_attrs(
                    &format!("service-{s}"),
                    &format!("service-{s}-{i}"),
                    None,
                );
                req.resource_metrics.push(otlp::resource_metrics(
                    &attrs,
                    &budget(secs, s),
                    start,
                    t,
                ));
                if req.resource_metrics.len() == 100 {
                    points += otlp::count_points(&req);
                    out.push(otlp::encode(&req));
                    req.resource_metrics.clear();
                }
            }
        }
        if !req.resource_metrics.is_empty() {
            points += otlp::count_points(&req);
            out.push(otlp::encode(&req));
        }
    }
    (out, points)
}

fn app(tag: &str) -> std::sync::Arc<App> {
    let dir = std::env::temp_dir().join(format!("scalewise-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = Config {
        data_dir: dir,
        ..Config::default()
    };
    match App::open(cfg) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}

fn ingest_all(app: &App, bodies: &[Vec<u8>]) {
    let limits = app.config.limits.clone();
    for b in bodies {
        match decode_body(Some("application/x-protobuf"), None, b, &limits) {
            Ok((req, _)) => {
                let resp = app.ingest(&req, "http", scalewise_collector::server::now_ms());
                if let Some(p) = resp.partial_success {
                    eprintln!("bench: rejected {p:?}");
                    std::process::exit(1);
                }
            }
            Err(e) => {
                eprintln!("bench: {e}");
                std::process::exit(1);
            }
        }
    }
}

fn received(app: &App) -> u64 {
    app.telemetry
        .points_received
        .with_label_values(&["http"])
        .get()
}

fn main() {
    // 1. Throughput on one thread.
    let (b, sent) = bodies(100, 10, 1..=30, now_ns() - 301_000_000_000);
    let bytes: usize = b.iter().map(Vec::len).sum();
    let a = app("throughput");
    let started = Instant::now();
    ingest_all(&a, &b);
    let secs = started.elapsed().as_secs_f64();
    let got = received(&a);
    println!(
        "ingest: {sent} points in {} requests ({:.1} MiB protobuf) in {secs:.2} s on one thread: {:.0} points/s per core; sent {sent}, received {got}{}",
        b.len(),
        bytes as f64 / 1048576.0,
        sent as f64 / secs,
        if got == sent as u64 { " (equal)" } else { " (MISMATCH)" }
    );
    let started = Instant::now();
    let flushed = a.flush().unwrap_or(0);
    println!(
        "flush: {flushed} snapshots to SQLite in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(a);
    drop(b);

    // 2. Memory for 1,000 services x 10 instances with 10 minutes of snapshots.
    let before = rss_bytes();
    let a = app("memory");
    let mut total = 0;
    let start = now_ns() - 601_000_000_000;
    for chunk in 0..6u64 {
        // Ten exports at a time, so the bodies themselves do not dominate the measurement.
        let (b, n) = bodies(1000, 10, chunk * 10 + 1..=chunk * 10 + 10, start);
        total += n;
        ingest_all(&a, &b);
        let _ = a.flush();
    }
    let window_started = Instant::now();
    let services = a
        .summaries(300_000, scalewise_collector::server::now_ms())
        .len();
    let summaries_s = window_started.elapsed().as_secs_f64();
    let after = rss_bytes();
    println!(
        "memory: 1000 services x 10 instances, {total} points: RSS {:.1} MiB (process {:.1} MiB before the store), {services} services diagnosed over 5m in {summaries_s:.2} s",
        after as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
}
