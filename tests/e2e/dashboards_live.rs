//! The dashboards against the real thing: a real Prometheus 2.42 with the shipped rules and
//! configuration scrapes a real `scalewise-collector`, fed by real `scalewise-agent run`
//! processes watching real workloads under load (one bound by a private PostgreSQL, one bound by
//! its CPU). Every query of every panel of every dashboard must return data, and the agent's and
//! collector's `/metrics` must pass `promtool check metrics`.
//!
//! Service-dashboard queries run once per watched service; a panel passes when at least one of
//! the services gives it data (the CPU-bound service has no dependency to show, the PostgreSQL
//! one no run-queue delay to speak of), and the test prints which service filled which panel.

use std::time::Duration;

use scalewise_e2e::collector::Collector;
use scalewise_e2e::harness::{
    exclusive, free_port, orders_on_postgres, wait_until, Load, RunAgent, Service, TempDir,
};
use scalewise_e2e::prometheus::{
    dashboard_queries, for_service, http_get, prometheus_config, promtool_check_metrics, Prometheus,
};

fn wait_http_ok(addr: &str, path: &str, what: &str) {
    wait_until(
        Duration::from_secs(30),
        &format!("{what} to answer 200 on {addr}{path}"),
        || matches!(http_get(addr, path), Ok((200, _))),
    );
}

/// `promtool check metrics` on a real scrape of `addr`'s /metrics.
fn check_metrics(addr: &str, what: &str) -> String {
    let (code, body) = http_get(addr, "/metrics").expect("scrape");
    assert_eq!(code, 200, "{what} /metrics: {body}");
    let (ok, text) = promtool_check_metrics(&body).expect("promtool check metrics");
    assert!(
        ok && text.trim().is_empty(),
        "{what}: promtool check metrics:\n{text}"
    );
    body
}

#[test]
fn every_panel_query_returns_data_from_real_agents_and_a_real_collector() {
    let _x = exclusive();
    let dir = TempDir::new("live").expect("temp dir");
    let (_pg, orders) = orders_on_postgres().expect("dependency-bound service");
    let pricing = Service::workload(&["serve", "--workers", "2", "--cpu-ms", "15"])
        .expect("CPU-bound service");
    let _load_orders = Load::start(orders.port, 6, 300.0, 0.0).expect("load");
    let _load_pricing = Load::start(pricing.port, 4, 300.0, 0.0).expect("load");

    let collector = Collector::start(&[]).expect("start scalewise-collector");
    let collector_addr = format!("127.0.0.1:{}", collector.port);

    let mut agents = Vec::new();
    let mut agent_addrs = Vec::new();
    for (svc, name) in [(&orders, "orders"), (&pricing, "pricing")] {
        let metrics = format!("127.0.0.1:{}", free_port());
        agents.push(
            RunAgent::start(&[
                "--pid",
                &svc.pid.to_string(),
                "--service",
                name,
                "--collector",
                &collector.url(),
                "--export-interval",
                "2",
                "--metrics-listen",
                &metrics,
            ])
            .expect("start scalewise-agent run"),
        );
        wait_http_ok(&metrics, "/metrics", "an agent");
        agent_addrs.push(metrics);
    }

    let config = prometheus_config(
        dir.path(),
        &agent_addrs,
        std::slice::from_ref(&collector_addr),
        "2s",
    )
    .expect("config");
    let prom = Prometheus::start(&config, &dir.path().join("tsdb")).expect("prometheus");
    // Data in: both verdicts, the budget's recording rules, agent self-telemetry.
    for expr in [
        "scalewise_verdict{service_name=\"orders\"} == 1",
        "scalewise_verdict{service_name=\"pricing\"} == 1",
        "service_component:scalewise_request_component_time_seconds:ratio_rate5m",
        "rate(scalewise_agent_samples_total[1m]) > 0",
    ] {
        prom.wait_for(expr, Duration::from_secs(90))
            .expect("data in Prometheus");
    }
    // Enough scrapes for every rate window of the dashboards ($__rate_interval is 1m here).
    std::thread::sleep(Duration::from_secs(30));

    let mut missing = Vec::new();
    for q in dashboard_queries().expect("queries") {
        let mut filled = Vec::new();
        let services: &[&str] = if q.expr.contains("$service") {
            &["orders", "pricing"]
        } else {
            &["orders"]
        };
        for service in services {
            let expr = for_service(&q.expr, service);
            match prom.query(&expr) {
                Ok(r) if !r.is_empty() => filled.push(*service),
                Ok(_) => {}
                Err(e) => missing.push(format!("{} / {}: {e:#}", q.dashboard, q.panel)),
            }
        }
        eprintln!(
            "{:<34} {:<44} {:<4} data for: {}",
            q.dashboard,
            q.panel,
            q.ref_id,
            filled.join(", ")
        );
        if filled.is_empty() {
            missing.push(format!(
                "{} / {} ({}): no data for {services:?}: {}",
                q.dashboard, q.panel, q.ref_id, q.expr
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "panels without data:\n{}",
        missing.join("\n")
    );

    // The verdicts the engine reached are the workloads' own.
    let verdict = |svc: &str| {
        prom.query(&format!("scalewise_verdict{{service_name=\"{svc}\"}} == 1"))
            .expect("query")
            .first()
            .and_then(|s| s["metric"]["verdict"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(verdict("orders"), "dependency");
    assert_eq!(verdict("pricing"), "scale_up");

    // What Prometheus scraped is well-formed exposition.
    for a in &agent_addrs {
        check_metrics(a, "agent --metrics-listen");
    }
    let body = check_metrics(&collector_addr, "collector /metrics");
    assert!(
        body.contains("scalewise_verdict{"),
        "collector exposes verdicts"
    );
    drop(prom);
}
