//! Accuracy of `scalewise-agent diagnose` against the ground truth the workloads record about
//! themselves, on real processes, a real PostgreSQL and a real JVM.
//!
//! Each scenario: start the service, put a bounded closed-loop load on it from another process,
//! let it settle, read the truth, run `diagnose`, read the truth again, and compare every
//! breakdown component over the same window (tolerance 0.10) and the verdict. The tests share
//! a 2-core machine, so they run one at a time.

use scalewise_e2e::harness::{diagnose, exclusive, Load, Postgres, Service};
use scalewise_e2e::workload::TruthShares;

const WINDOW_S: f64 = 8.0;
const TOLERANCE: f64 = 0.10;

struct Scenario<'a> {
    name: &'a str,
    service: Service,
    concurrency: u32,
    think_ms: f64,
    verdict: Option<&'a str>,
    /// Components the workload cannot measure about itself (the JVM does not see its run queue).
    skip: &'a [&'a str],
    /// Extra flags for `diagnose`.
    flags: Vec<String>,
    /// Extra flags for the load generator.
    load_flags: &'a [&'a str],
}

fn run(s: Scenario) -> (serde_json::Value, TruthShares) {
    let load = Load::start_with(
        s.service.port,
        s.concurrency,
        WINDOW_S + 6.0,
        s.think_ms,
        s.load_flags,
    )
    .expect("start load");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = s.service.truth().expect("truth before");
    let flags: Vec<&str> = s.flags.iter().map(String::as_str).collect();
    let d = diagnose(&[s.service.pid], WINDOW_S, &flags).expect("diagnose");
    let after = s.service.truth().expect("truth after");
    drop(load);
    let window = after.delta(&before);
    let truth = window.shares();
    eprintln!(
        "in flight {}: measured {:.2}, truth {:.2}; rate measured {}, truth {:.1}",
        s.name,
        d["requests"]["mean_in_flight"],
        window.latency_s / window.wall_s.max(1e-9),
        d["requests"]["rate_per_s"],
        window.requests / window.wall_s.max(1e-9)
    );
    let b = &d["breakdown"];
    let got = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
    let want = |k: &str| match k {
        "cpu" => truth.cpu,
        "gc" => truth.gc,
        "cpu_wait" => truth.cpu_wait,
        "downstream" => truth.downstream,
        _ => truth.local_wait,
    };
    let keys = ["cpu", "gc", "cpu_wait", "downstream", "local_wait"];
    let line: Vec<String> = keys
        .iter()
        .map(|k| format!("{k} {:.2} (truth {:.2})", got(k), want(k)))
        .collect();
    eprintln!(
        "accuracy {}: verdict {} confidence {} | {}",
        s.name,
        d["verdict"],
        d["confidence"],
        line.join(", ")
    );
    let mut errors = Vec::new();
    for k in keys.iter().filter(|k| !s.skip.contains(k)) {
        if (got(k) - want(k)).abs() > TOLERANCE || got(k).is_nan() {
            errors.push(format!("{k}: measured {:.3}, truth {:.3}", got(k), want(k)));
        }
    }
    if let Some(v) = s.verdict {
        if d["verdict"] != v {
            errors.push(format!(
                "verdict {} != {v}; evidence {}",
                d["verdict"], d["evidence"]
            ));
        }
    }
    assert!(
        errors.is_empty(),
        "{}: {}\n{d:#}",
        s.name,
        errors.join("; ")
    );
    (d, truth)
}

#[test]
fn cpu_saturated_thread_per_request() {
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "4", "--cpu-ms", "15"]).expect("service");
    run(Scenario {
        name: "cpu-saturated",
        service: svc,
        concurrency: 8,
        think_ms: 0.0,
        verdict: Some("scale_up"),
        skip: &[],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn dependency_bound_on_postgresql_thread_per_request() {
    let _x = exclusive();
    let pg = Postgres::start().expect("postgres");
    let svc = Service::workload(&[
        "serve",
        "--workers",
        "8",
        "--cpu-ms",
        "2",
        "--db",
        &pg.addr(),
        "--db-ms",
        "25",
    ])
    .expect("service");
    // A private cluster listens on a free port, not 5432: name it, as a user would.
    let (d, _) = run(Scenario {
        name: "pg-thread-per-request",
        service: svc,
        concurrency: 6,
        think_ms: 0.0,
        verdict: Some("dependency"),
        skip: &[],
        flags: vec![
            "--dependency".into(),
            format!("{}=orders-db:postgresql", pg.addr()),
        ],
        load_flags: &[],
    });
    assert_eq!(
        d["dependencies"][0]["endpoint"],
        pg.addr().as_str(),
        "{d:#}"
    );
    assert_eq!(d["dependencies"][0]["name"], "orders-db");
    assert_eq!(d["dependencies"][0]["kind"], "postgresql");
}

#[test]
fn dependency_bound_through_an_event_loop() {
    let _x = exclusive();
    let pg = Postgres::start().expect("postgres");
    let svc = Service::workload(&[
        "serve-async",
        "--cpu-ms",
        "0.3",
        "--db",
        &pg.addr(),
        "--db-ms",
        "25",
        "--pool",
        "8",
    ])
    .expect("service");
    // An event loop leaves in-tick ties unresolvable from thread states; clients with a few
    // milliseconds between requests keep exchanges apart (the regime the socket signal needs).
    // The workload's truth is the time around `simple_query().await`, which also holds the loop's
    // scheduling delay before the query reaches the wire and after the result arrives (in-process
    // waiting, by the model). Short CPU bursts on the loop keep that inside the instrument's error.
    run(Scenario {
        name: "pg-event-loop",
        service: svc,
        concurrency: 6,
        think_ms: 10.0,
        verdict: Some("dependency"),
        skip: &[],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn lock_contended() {
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "8", "--cpu-ms", "1", "--lock-ms", "5"])
        .expect("service");
    run(Scenario {
        name: "lock-contended",
        service: svc,
        concurrency: 8,
        think_ms: 0.0,
        verdict: Some("scale_out"),
        skip: &[],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn connection_pool_starved_in_front_of_a_fast_database() {
    let _x = exclusive();
    let pg = Postgres::start().expect("postgres");
    let svc = Service::workload(&[
        "serve",
        "--workers",
        "8",
        "--cpu-ms",
        "0.3",
        "--db",
        &pg.addr(),
        "--db-ms",
        "4",
        "--pool",
        "2",
    ])
    .expect("service");
    run(Scenario {
        name: "pool-starved",
        service: svc,
        concurrency: 8,
        think_ms: 0.0,
        verdict: Some("scale_out"),
        skip: &[],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn mixed_cpu_and_database() {
    let _x = exclusive();
    let pg = Postgres::start().expect("postgres");
    let svc = Service::workload(&[
        "serve",
        "--workers",
        "4",
        "--cpu-ms",
        "8",
        "--db",
        &pg.addr(),
        "--db-ms",
        "12",
    ])
    .expect("service");
    // The numbers matter more than the verdict here.
    run(Scenario {
        name: "mixed-40-60",
        service: svc,
        concurrency: 3,
        think_ms: 0.0,
        verdict: None,
        skip: &[],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn jvm_cpu_bound() {
    let _x = exclusive();
    let svc = Service::java(&["-Xmx128m"], &["--workers", "4", "--cpu-ms", "10"]).expect("jvm");
    run(Scenario {
        name: "jvm-cpu-bound",
        service: svc,
        concurrency: 4,
        think_ms: 0.0,
        verdict: Some("scale_up"),
        // The JVM cannot see its own run-queue delay: cpu_wait and local_wait have no truth.
        skip: &["cpu_wait", "local_wait"],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn jvm_lock_contended() {
    let _x = exclusive();
    let svc = Service::java(
        &["-Xmx128m"],
        &["--workers", "8", "--cpu-ms", "1", "--lock-ms", "5"],
    )
    .expect("jvm");
    run(Scenario {
        name: "jvm-lock-contended",
        service: svc,
        concurrency: 8,
        think_ms: 0.0,
        verdict: Some("scale_out"),
        skip: &["cpu_wait"],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn jvm_gc_heavy_stop_the_world() {
    let _x = exclusive();
    // Small heap, a stop-the-world collector, lots of short-lived garbage: GC is a large share.
    let svc = Service::java(
        &["-Xmx40m", "-Xmn8m", "-XX:+UseSerialGC"],
        &["--workers", "4", "--cpu-ms", "1", "--alloc-mb", "24"],
    )
    .expect("jvm");
    let (d, truth) = run(Scenario {
        name: "jvm-gc-heavy",
        service: svc,
        concurrency: 4,
        think_ms: 0.0,
        verdict: Some("scale_up"),
        // Allocation is CPU the JVM's thread clock sees only partly; the GC share is the point.
        skip: &["cpu", "cpu_wait", "local_wait"],
        flags: vec![],
        load_flags: &[],
    });
    assert!(
        truth.gc >= 0.25,
        "the workload must spend >= 25% of wall time in GC: {truth:?}"
    );
    assert!(d["evidence"].to_string().contains("GC"), "{d:#}");
}

#[test]
fn jvm_g1_low_gc() {
    let _x = exclusive();
    let svc = Service::java(
        &["-Xmx256m", "-XX:+UseG1GC"],
        &["--workers", "4", "--cpu-ms", "2", "--lock-ms", "3"],
    )
    .expect("jvm");
    let (d, _) = run(Scenario {
        name: "jvm-g1-low-gc",
        service: svc,
        concurrency: 4,
        think_ms: 0.0,
        verdict: None,
        skip: &["cpu_wait"],
        flags: vec![],
        load_flags: &[],
    });
    assert!(d["breakdown"]["gc"].as_f64().unwrap_or(1.0) < 0.05, "{d:#}");
}

/// A slow HTTP backend for the Python and Node services.
fn backend() -> Service {
    Service::workload(&["backend", "--port", "0", "--ms", "20"]).expect("backend")
}

fn script(dir: &str, file: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join(file)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn python_threads_waiting_on_a_backend() {
    let _x = exclusive();
    let b = backend();
    let svc = Service::spawn(
        "python3",
        &[
            &script("python", "workload.py"),
            "--cpu-ms",
            "2",
            "--backend",
            &b.addr(),
            "--backend-ms",
            "20",
        ],
    )
    .expect("python");
    run(Scenario {
        name: "python-threads-backend",
        service: svc,
        concurrency: 4,
        think_ms: 0.0,
        verdict: Some("dependency"),
        // CPython records no run-queue delay of its own.
        skip: &["cpu_wait"],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn python_gil_and_lock_contention() {
    let _x = exclusive();
    let svc = Service::spawn(
        "python3",
        &[
            &script("python", "workload.py"),
            "--cpu-ms",
            "1",
            "--lock-ms",
            "5",
        ],
    )
    .expect("python");
    run(Scenario {
        name: "python-lock",
        service: svc,
        concurrency: 6,
        think_ms: 0.0,
        verdict: Some("scale_out"),
        skip: &["cpu_wait"],
        flags: vec![],
        load_flags: &[],
    });
}

#[test]
fn node_event_loop_waiting_on_a_backend() {
    let _x = exclusive();
    let b = backend();
    let svc = Service::spawn(
        "node",
        &[
            &script("node", "workload.js"),
            "--cpu-ms",
            "2",
            "--backend",
            &b.addr(),
            "--backend-ms",
            "20",
        ],
    )
    .expect("node");
    let port = svc.port;
    let (d, truth) = run(Scenario {
        name: "node-event-loop-backend",
        service: svc,
        concurrency: 6,
        think_ms: 10.0,
        verdict: Some("dependency"),
        // cpu_s is loop time spent burning, as the script measures it; GC is checked below.
        skip: &["cpu_wait", "gc"],
        flags: vec![
            "--metrics-url".into(),
            format!("http://127.0.0.1:{port}/metrics"),
        ],
        load_flags: &[],
    });
    let gc = d["breakdown"]["gc"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (gc - truth.gc).abs() <= TOLERANCE,
        "gc {gc} vs {}: {d:#}",
        truth.gc
    );
}

#[test]
fn node_saturated_event_loop_is_scale_up() {
    let _x = exclusive();
    let svc =
        Service::spawn("node", &[&script("node", "workload.js"), "--cpu-ms", "8"]).expect("node");
    // One loop thread on a 2-core machine: the box has headroom, the loop has none.
    let (d, _) = run(Scenario {
        name: "node-hot-loop",
        service: svc,
        concurrency: 4,
        think_ms: 0.0,
        verdict: Some("scale_up"),
        skip: &["cpu", "cpu_wait", "downstream", "local_wait", "gc"],
        flags: vec![],
        load_flags: &[],
    });
    assert!(
        d["evidence"]
            .to_string()
            .contains("single saturated thread"),
        "{d:#}"
    );
}

#[test]
fn short_lived_connections_one_request_each() {
    let _x = exclusive();
    let svc = Service::workload(&["serve", "--workers", "4", "--cpu-ms", "2", "--lock-ms", "4"])
        .expect("service");
    // Connections live one request: invisible to lookups of known sockets, so the sampler must
    // notice the churn and dump the socket table every round.
    let (d, _) = run(Scenario {
        name: "short-lived-connections",
        service: svc,
        concurrency: 4,
        think_ms: 0.0,
        verdict: Some("scale_out"),
        skip: &[],
        flags: vec![],
        load_flags: &["--reconnect", "1"],
    });
    assert!(d["evidence"].to_string().contains("short-lived"), "{d:#}");
}
