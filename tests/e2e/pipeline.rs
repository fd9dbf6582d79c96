//! The whole system with real parts: workloads under load, one real `scalewise-agent run` per
//! process, a real `scalewise-collector`. At the same time: a PostgreSQL-bound service of two
//! processes (two agents, one service, two instances) and a lock-contended (scale-out) service.
//! For each, the collector's window over an interval must agree with `diagnose` run over the same
//! interval (same verdict, every share within 0.05) and with the workloads' ground truth (within
//! 0.10).
//!
//! Pinned interface used: `scalewise-agent run --pid PID [--pid ...] [--service NAME]
//! --collector URL [--export-interval SECONDS]`.

use std::time::{Duration, Instant};

use scalewise_e2e::collector::Collector;
use scalewise_e2e::harness::{
    diagnose, exclusive, orders_on, orders_on_postgres, Load, RunAgent, Service,
};
use scalewise_e2e::workload::Truth;

const WINDOW_S: u64 = 20;

/// `scalewise-agent run` watching `pids` as `service`, exporting to `collector` every 2 s.
fn agent(pids: &[u32], service: &str, collector: &str) -> RunAgent {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let mut args: Vec<&str> = pids.iter().flat_map(|p| ["--pid", p.as_str()]).collect();
    args.extend(["--service", service, "--collector", collector]);
    args.extend(["--export-interval", "2"]);
    RunAgent::start(&args).expect("scalewise-agent run")
}

fn add(a: &Truth, b: &Truth) -> Truth {
    Truth {
        requests: a.requests + b.requests,
        latency_s: a.latency_s + b.latency_s,
        cpu_s: a.cpu_s + b.cpu_s,
        cpu_wait_s: a.cpu_wait_s + b.cpu_wait_s,
        downstream_s: a.downstream_s + b.downstream_s,
        lock_wait_s: a.lock_wait_s + b.lock_wait_s,
        pool_wait_s: a.pool_wait_s + b.pool_wait_s,
        worker_wait_s: a.worker_wait_s + b.worker_wait_s,
        gc_s: a.gc_s + b.gc_s,
        wall_s: a.wall_s.max(b.wall_s),
    }
}

fn compare(name: &str, collector: &serde_json::Value, diag: &serde_json::Value, truth: &Truth) {
    eprintln!(
        "pipeline {name}: collector {} {} | diagnose {} {}",
        collector["verdict"], collector["breakdown"], diag["verdict"], diag["breakdown"]
    );
    assert_eq!(
        collector["verdict"], diag["verdict"],
        "{name}: {collector:#}"
    );
    let t = truth.shares();
    for (k, want) in [
        ("cpu", t.cpu),
        ("gc", t.gc),
        ("cpu_wait", t.cpu_wait),
        ("downstream", t.downstream),
        ("local_wait", t.local_wait),
    ] {
        let got = collector["breakdown"][k].as_f64().expect("share");
        let d = diag["breakdown"][k].as_f64().expect("share");
        assert!(
            (got - d).abs() <= 0.05,
            "{name} {k}: collector {got:.3}, diagnose {d:.3}"
        );
        assert!(
            (got - want).abs() <= 0.10,
            "{name} {k}: collector {got:.3}, truth {want:.3}"
        );
    }
}

#[test]
fn agents_and_collector_agree_with_diagnose_and_the_truth() {
    let _x = exclusive();
    let collector = Collector::start(&[]).expect("collector");
    let (pg, first) = orders_on_postgres().expect("orders on postgres");
    let orders = [first, orders_on(&pg).expect("db service")];
    let locks = Service::workload(&["serve", "--workers", "8", "--cpu-ms", "1", "--lock-ms", "5"])
        .expect("lock service");
    let run_s = (WINDOW_S + 15) as f64;
    let _loads = [
        Load::start(orders[0].port, 3, run_s, 0.0).expect("load"),
        Load::start(orders[1].port, 3, run_s, 0.0).expect("load"),
        Load::start(locks.port, 8, run_s, 0.0).expect("load"),
    ];
    let url = collector.url();
    let _agents = [
        agent(&[orders[0].pid], "orders", &url),
        agent(&[orders[1].pid], "orders", &url),
        agent(&[locks.pid], "locks", &url),
    ];
    std::thread::sleep(Duration::from_secs(4));

    let before =
        [orders[0].truth(), orders[1].truth(), locks.truth()].map(|t| t.expect("truth before"));
    let started = Instant::now();
    let orders_pids = [orders[0].pid, orders[1].pid];
    let locks_pid = locks.pid;
    let d_orders = std::thread::spawn(move || {
        diagnose(&orders_pids, WINDOW_S as f64, &["--service", "orders"]).expect("diagnose")
    });
    let d_locks =
        std::thread::spawn(move || diagnose(&[locks_pid], WINDOW_S as f64, &[]).expect("diagnose"));
    let d_orders = d_orders.join().expect("diagnose orders");
    let d_locks = d_locks.join().expect("diagnose locks");
    let after =
        [orders[0].truth(), orders[1].truth(), locks.truth()].map(|t| t.expect("truth after"));
    // One more export lands after the interval; the window covers it from its start.
    std::thread::sleep(Duration::from_secs(3));
    let window = started.elapsed().as_secs();

    let c_orders = collector
        .json(&format!("/api/v1/services/orders?window={window}s"))
        .expect("orders");
    let c_locks = collector
        .json(&format!("/api/v1/services/locks?window={window}s"))
        .expect("locks");
    assert_eq!(c_orders["instances"], 2, "{c_orders:#}");
    let truth_orders = add(&after[0].delta(&before[0]), &after[1].delta(&before[1]));
    compare(
        "orders (two processes, PostgreSQL)",
        &c_orders,
        &d_orders,
        &truth_orders,
    );
    assert_eq!(c_orders["verdict"], "dependency");
    // What the report needs beyond the budget travels too: the runtime the agents detected
    // (as `diagnose` does) and an instance's resident memory.
    assert!(c_orders["runtime"]["name"].is_string(), "{c_orders:#}");
    assert_eq!(
        c_orders["runtime"]["name"], d_orders["runtime"]["name"],
        "{c_orders:#}"
    );
    let rss = c_orders["memory_bytes"].as_f64().unwrap_or(0.0);
    assert!(rss > 1e6 && rss < 1e9, "{c_orders:#}");
    compare("locks", &c_locks, &d_locks, &after[2].delta(&before[2]));
    assert_eq!(c_locks["verdict"], "scale_out");
}
