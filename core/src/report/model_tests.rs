use super::*;
use crate::engine::{Breakdown, CpuUse, DependencyShare, Requests, Runtime};

/// 1,000 req/s, 4 cores, L = 10 ms split as given.
fn diag(
    cpu: f64,
    gc: f64,
    cpu_wait: f64,
    downstream: f64,
    local_wait: f64,
    used: f64,
) -> Diagnosis {
    Diagnosis {
        service: "s".into(),
        pids: vec![1],
        window_s: 60.0,
        verdict: Verdict::Dependency,
        confidence: 0.9,
        breakdown: Breakdown {
            cpu,
            gc,
            cpu_wait,
            downstream,
            local_wait,
        },
        dependencies: if downstream > 0.0 {
            vec![DependencyShare {
                endpoint: "10.0.0.5:5432".into(),
                kind: "postgresql".into(),
                name: None,
                share: downstream,
                connections: None,
                busy: None,
            }]
        } else {
            vec![]
        },
        cpu: CpuUse {
            used_cores: used,
            capacity_cores: 4.0,
        },
        requests: Requests {
            rate_per_s: 1000.0,
            mean_latency_ms: Some(10.0),
            source: "sockets".into(),
            mean_in_flight: 10.0,
        },
        limit: None,
        evidence: vec![],
        runtime: Some(Runtime {
            name: "go".into(),
            version: None,
            evidence: String::new(),
        }),
        memory_bytes: Some(256 << 20),
        gc_cpu_cores: None,
        load: None,
    }
}

fn opt<'a>(r: &'a Report, name: &str) -> &'a Projection {
    r.options
        .iter()
        .find(|o| o.option == name)
        .unwrap_or_else(|| {
            panic!(
                "no {name} in {:?}",
                r.options.iter().map(|o| &o.option).collect::<Vec<_>>()
            )
        })
}

#[test]
fn current_is_the_measurement() {
    let r = build(
        &diag(0.1, 0.0, 0.0, 0.8, 0.1, 1.0),
        &ReportOptions::default(),
    )
    .expect("report");
    let c = &r.options[0];
    assert_eq!(c.option, "current");
    assert_eq!(c.latency_ms.central, 10.0);
    assert_eq!(c.latency_change, Range::exact(0.0));
    // 1 core-ms per request, 4 cores at 70%: 2,800 req/s per instance.
    assert_eq!(c.throughput_per_instance.central, 2800.0);
    assert_eq!(c.instances.central, 1.0);
    assert_eq!(c.memory_mib.map(|m| m.central), Some(256.0));
    assert_eq!(r.ceiling, 0.1);
}

#[test]
fn a_peak_needs_more_instances_and_more_cpu_queueing() {
    let d = diag(0.1, 0.0, 0.01, 0.79, 0.1, 1.0);
    let o = ReportOptions {
        peak_rps: Some(10_000.0),
        ..ReportOptions::default()
    };
    let r = build(&d, &o).expect("report");
    let c = opt(&r, "current");
    // 10,000 req/s x 1 core-ms = 10 cores; at 70% of 4 cores per instance: 4 instances.
    assert_eq!(c.instances.central, 4.0);
    assert_eq!(r.plan.source, "peak_rps");
    // Each of the 4 runs at 62.5%, busier than today's 25%: waiting for a CPU grows.
    assert!(c.components_ms.cpu_wait > 0.1, "{:?}", c.components_ms);
}

#[test]
fn targets_are_checked_and_the_current_runtime_is_not_a_target() {
    let d = diag(0.5, 0.0, 0.0, 0.4, 0.1, 2.0);
    let o = ReportOptions {
        targets: vec!["go".into(), "rust".into()],
        ..ReportOptions::default()
    };
    let r = build(&d, &o).expect("report");
    assert!(r.options.iter().all(|o| o.option != "rewrite:go"));
    assert!(r.options.iter().any(|o| o.option == "rewrite:rust"));
    let bad = ReportOptions {
        targets: vec!["cobol".into()],
        ..ReportOptions::default()
    };
    assert!(matches!(
        build(&d, &bad),
        Err(ReportError::UnknownRuntime { .. })
    ));
    let zero = ReportOptions {
        target_utilisation: 0.0,
        ..ReportOptions::default()
    };
    assert!(matches!(build(&d, &zero), Err(ReportError::Option(_))));
}

#[test]
fn without_a_runtime_native_is_assumed_and_said() {
    let mut d = diag(0.5, 0.0, 0.0, 0.4, 0.1, 2.0);
    d.runtime = None;
    let r = build(&d, &ReportOptions::default()).expect("report");
    assert_eq!(r.current.name, "native");
    assert_eq!(r.current.source, "assumed");
    assert!(r.assumptions.iter().any(|a| a.contains("--current")));
}

#[test]
fn compute_ranges_promise_more_than_web_ranges() {
    let d = diag(0.6, 0.0, 0.05, 0.3, 0.05, 3.0);
    let web = build(&d, &ReportOptions::default()).expect("web");
    let compute = build(
        &d,
        &ReportOptions {
            workload: Workload::Compute,
            ..ReportOptions::default()
        },
    )
    .expect("compute");
    let w = opt(&web, "rewrite:rust").throughput_per_instance;
    let c = opt(&compute, "rewrite:rust").throughput_per_instance;
    assert!(c.central > w.central && c.high > w.high, "{w:?} {c:?}");
}

#[test]
fn prices_give_costs_that_follow_instances_and_memory() {
    let mut d = diag(0.7, 0.0, 0.2, 0.05, 0.05, 3.6);
    d.verdict = Verdict::ScaleUp;
    let o = ReportOptions {
        instances: Some(10.0),
        price_core_hour: Some(0.05),
        price_gib_hour: Some(0.01),
        ..ReportOptions::default()
    };
    let r = build(&d, &o).expect("report");
    let c = opt(&r, "current");
    let cost = c.cost_per_month.expect("cost").central;
    let cores = c.cores.central;
    let mem = c.memory_total_mib.expect("memory").central;
    assert!((cost - sig((cores * 0.05 + mem / 1024.0 * 0.01) * 730.0, 3)).abs() < 1e-6);
    let rust = opt(&r, "rewrite:rust");
    assert!(rust.cost_per_month.expect("cost").central < cost);
}

#[test]
fn tune_gc_needs_a_tracing_gc_that_matters() {
    let mut d = diag(0.4, 0.2, 0.05, 0.3, 0.05, 2.0);
    d.verdict = Verdict::ScaleUp;
    let r = build(&d, &ReportOptions::default()).expect("go");
    let t = opt(&r, "tune_gc");
    assert!(
        t.components_ms.gc < 2.0 && t.components_ms.gc >= 0.7,
        "{:?}",
        t.components_ms
    );
    assert!(
        t.memory_mib.expect("memory").central > 256.0,
        "tuning costs memory"
    );
    d.runtime = Some(Runtime {
        name: "python".into(),
        version: None,
        evidence: String::new(),
    });
    let r = build(&d, &ReportOptions::default()).expect("python");
    assert!(
        r.options.iter().all(|o| o.kind != "tune_gc"),
        "no tuning model for refcounting"
    );
    let small = diag(0.4, 0.01, 0.05, 0.49, 0.05, 2.0);
    let r = build(&small, &ReportOptions::default()).expect("small gc");
    assert!(r.options.iter().all(|o| o.kind != "tune_gc"));
}

#[test]
fn a_pool_bound_service_is_told_to_grow_its_pool() {
    // Most time queued in-process, CPU mostly idle: a worker pool that is too small.
    let mut d = diag(0.05, 0.0, 0.0, 0.35, 0.6, 0.5);
    d.verdict = Verdict::ScaleOut;
    let r = build(&d, &ReportOptions::default()).expect("report");
    let p = r.measured.pool_size.expect("a pool is inferred");
    // Hold 4 ms at 1,000 req/s = 4 Erlangs: the pool is a little above that.
    assert!((5..=8).contains(&p), "{p}");
    let g = opt(&r, "grow_pool");
    assert!(g.latency_change.central < -0.4, "{g:?}");
    assert_eq!(
        r.recommendation.option, "grow_pool",
        "{}",
        r.recommendation.text
    );
    // The inferred pool reproduces the measured wait.
    let hold = 4.0;
    let w = wait(p, 1000.0 * hold / 1000.0, hold);
    assert!(w <= 6.0 && wait(p - 1, 4.0, hold) > 6.0, "{w}");
}

#[test]
fn insufficient_data_projects_nothing() {
    let mut d = diag(0.5, 0.0, 0.0, 0.4, 0.1, 2.0);
    d.verdict = Verdict::InsufficientData;
    let r = build(&d, &ReportOptions::default()).expect("report");
    assert!(r.options.is_empty());
    assert_eq!(r.recommendation.verdict, "insufficient_data");
    let mut idle = diag(0.5, 0.0, 0.0, 0.4, 0.1, 2.0);
    idle.requests.rate_per_s = 0.0;
    let r = build(&idle, &ReportOptions::default()).expect("report");
    assert!(
        r.recommendation.text.contains("no requests"),
        "{}",
        r.recommendation.text
    );
}

#[test]
fn short_windows_and_low_confidence_widen_the_ranges() {
    let d = diag(0.5, 0.0, 0.05, 0.4, 0.05, 2.0);
    let mut short = d.clone();
    short.window_s = 5.0;
    short.confidence = 0.5;
    let a = build(&d, &ReportOptions::default()).expect("long");
    let b = build(&short, &ReportOptions::default()).expect("short");
    assert!(b.uncertainty > a.uncertainty);
    let width = |r: &Report| {
        let l = opt(r, "rewrite:rust").latency_ms;
        l.high - l.low
    };
    assert!(width(&b) > width(&a));
    assert_eq!(
        opt(&a, "rewrite:rust").latency_ms.central,
        opt(&b, "rewrite:rust").latency_ms.central
    );
}

#[test]
fn hostile_numbers_neither_panic_nor_hang() {
    // The collector renders reports from counters it received: any number may arrive.
    let weird = [
        0.0,
        -1.0,
        1e-300,
        1e300,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    for &x in &weird {
        for field in 0..6 {
            let mut d = diag(0.3, 0.1, 0.1, 0.3, 0.2, 2.0);
            match field {
                0 => d.requests.rate_per_s = x,
                1 => d.requests.mean_latency_ms = Some(x),
                2 => d.cpu.capacity_cores = x,
                3 => d.cpu.used_cores = x,
                4 => d.breakdown.local_wait = x,
                _ => d.gc_cpu_cores = Some(x),
            }
            for f in [
                super::super::Format::Json,
                super::super::Format::Md,
                super::super::Format::Html,
            ] {
                let _ = super::super::render(&d, &ReportOptions::default(), f);
            }
        }
    }
}
