//! Collector ingest benchmark: prints figures, asserts nothing about time.
//!
//! `cargo bench -p scalewise-collector --bench ingest`
//!
//! 1. Throughput: OTLP protobuf bodies (100 resources each, as an OpenTelemetry Collector batch
//!    would send) decoded and taken in on one thread: data points per second per core, with the
//!    points the collector counted as received equal to the points sent and none rejected.
//! 2. Memory: 1,000 services x 10 instances, each sending 10 minutes of 10 s exports (60
//!    snapshots, the default memory retention), then the process's resident set size.

use std::time::Instant;

use scalewise_collector::config::Config;
use scalewise_collector::ingest::decode_body;
use scalewise_collector::{otlp_request, App};
use scalewise_core::budget::{Budget, DependencyTime, RequestSource};

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
            connection_s: 0.0,
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

/// CPU time of this thread, in seconds (the machine is shared: wall time would count others).
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
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
        let mut req = otlp_request::request(&[], &Budget::default(), 0, 0);
        req.resource_metrics.clear();
        for s in 0..services {
            for i in 0..instances {
                let attrs = otlp_request::resource_attrs(
                    &format!("service-{s}"),
                    &format!("service-{s}-{i}"),
                    None,
                );
                req.resource_metrics.push(otlp_request::resource_metrics(
                    &attrs,
                    &budget(secs, s),
                    start,
                    t,
                ));
                if req.resource_metrics.len() == 100 {
                    points += otlp_request::count_points(&req);
                    out.push(otlp_request::encode(&req));
                    req.resource_metrics.clear();
                }
            }
        }
        if !req.resource_metrics.is_empty() {
            points += otlp_request::count_points(&req);
            out.push(otlp_request::encode(&req));
        }
    }
    (out, points)
}

/// One export step of the given services, 100 resources per body.
fn bodies_for(
    services: std::ops::Range<usize>,
    instances: usize,
    step: u64,
    start: u64,
) -> (Vec<Vec<u8>>, usize) {
    let t = start + step * 10_000_000_000;
    let secs = (t - start) as f64 / 1e9;
    let mut out = Vec::new();
    let mut points = 0;
    let mut req = otlp_request::request(&[], &Budget::default(), 0, 0);
    req.resource_metrics.clear();
    for s in services {
        for i in 0..instances {
            let attrs = otlp_request::resource_attrs(
                &format!("service-{s}"),
                &format!("service-{s}-{i}"),
                None,
            );
            req.resource_metrics.push(otlp_request::resource_metrics(
                &attrs,
                &budget(secs, s),
                start,
                t,
            ));
            if req.resource_metrics.len() == 100 {
                points += otlp_request::count_points(&req);
                out.push(otlp_request::encode(&req));
                req.resource_metrics.clear();
            }
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
                let resp = app.ingest(&req, "http", scalewise_collector::now_ms());
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

/// CPU seconds of the whole process (user + system), from /proc/self/stat.
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime), counted from after the command name.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// POSTs every body over one keep-alive HTTP/1.1 connection; returns how many got a 200.
fn post_all(addr: std::net::SocketAddr, bodies: &[Vec<u8>]) -> usize {
    use std::io::{BufRead, BufReader, Read, Write};
    let Ok(stream) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let mut w = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return 0,
    };
    let mut r = BufReader::new(stream);
    let mut ok = 0;
    for b in bodies {
        let head = format!(
            "POST /v1/metrics HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            b.len()
        );
        if w.write_all(head.as_bytes())
            .and_then(|_| w.write_all(b))
            .is_err()
        {
            break;
        }
        let mut status = String::new();
        let _ = r.read_line(&mut status);
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        let _ = r.read_exact(&mut body);
        if status.contains(" 200 ") {
            ok += 1;
        }
    }
    ok
}

fn received(app: &App) -> u64 {
    app.telemetry
        .points_received
        .with_label_values(&["http"])
        .get()
}

fn main() {
    // Memory first, in a fresh process, so the throughput runs' garbage does not count.
    memory();
    throughput();
}

fn throughput() {
    // 1. Throughput on one thread.
    let (b, sent) = bodies(100, 10, 1..=30, now_ns() - 301_000_000_000);
    let bytes: usize = b.iter().map(Vec::len).sum();
    let a = app("throughput");
    let started = Instant::now();
    let cpu0 = thread_cpu_s();
    ingest_all(&a, &b);
    let cpu = thread_cpu_s() - cpu0;
    let secs = started.elapsed().as_secs_f64();
    let got = received(&a);
    println!(
        "ingest: {sent} points in {} requests ({:.1} MiB protobuf), decoded and stored on one thread in {cpu:.2} s of CPU ({secs:.2} s wall): {:.0} points/s per core; sent {sent}, received {got}{}",
        b.len(),
        bytes as f64 / 1048576.0,
        sent as f64 / cpu.max(1e-9),
        if got == sent as u64 { " (equal)" } else { " (MISMATCH)" }
    );
    let started = Instant::now();
    let flushed = a.flush().unwrap_or(0);
    println!(
        "flush: {flushed} snapshots to SQLite in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(a);

    // 1b. The same bodies over real HTTP (axum on a 1-thread runtime, one keep-alive client):
    // points per CPU-second of the whole process, server and client together.
    let a = app("http");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let listener = match rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    };
    let addr = listener.local_addr().ok();
    let router = scalewise_collector::router(a.clone());
    let server = std::thread::spawn(move || {
        rt.block_on(async move {
            let _ = axum::serve(listener, router).await;
        })
    });
    let cpu0 = process_cpu_s();
    let started = Instant::now();
    let ok = addr.map_or(0, |addr| post_all(addr, &b));
    let cpu = process_cpu_s() - cpu0;
    let secs = started.elapsed().as_secs_f64();
    let got = received(&a);
    println!(
        "ingest over HTTP: {ok}/{} requests accepted, {got} of {sent} points received, {cpu:.2} s of process CPU ({secs:.2} s wall): {:.0} points/s per core",
        b.len(),
        sent as f64 / cpu.max(1e-9)
    );
    drop(server);
    drop(b);
}

fn memory() {
    // 2. Memory for 1,000 services x 10 instances with 10 minutes of snapshots. Bodies are made
    // one request at a time, so they do not inflate the measurement.
    let before = rss_bytes();
    let a = app("memory");
    let mut total = 0;
    let start = now_ns() - 601_000_000_000;
    for step in 1..=60u64 {
        for s in 0..10u64 {
            // 100 services x 10 instances per request.
            let services = (s as usize) * 100..(s as usize + 1) * 100;
            let (b, n) = bodies_for(services, 10, step, start);
            total += n;
            ingest_all(&a, &b);
        }
        if step % 6 == 0 {
            // What the server's loop does: flush every few seconds, maintain once a minute (at
            // the simulated time of this export).
            let _ = a.flush();
            let t_ms = ((start + step * 10_000_000_000) / 1_000_000) as i64;
            let _ = a.maintain(t_ms + 1000);
        }
    }
    let _ = a.flush();
    // The once-a-minute maintenance: thin memory to the steady state.
    let _ = a.maintain(scalewise_collector::now_ms());
    let window_started = Instant::now();
    let services = a.summaries(300_000, scalewise_collector::now_ms()).len();
    let summaries_s = window_started.elapsed().as_secs_f64();
    let after = rss_bytes();
    println!(
        "memory: 1000 services x 10 instances, {total} points: RSS {:.1} MiB (process {:.1} MiB before the store), {services} services diagnosed over 5m in {summaries_s:.2} s",
        after as f64 / 1048576.0,
        before as f64 / 1048576.0
    );
}
