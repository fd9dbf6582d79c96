use super::*;
use crate::budget::{DependencyTime, RequestSource};

fn base() -> Budget {
    Budget {
        window_s: 10.0,
        request_s: 40.0,
        requests: 2000.0,
        request_source: RequestSource::Sockets,
        capacity_core_s: 40.0,
        ..Budget::default()
    }
}

#[test]
fn the_postmortem_service_is_dependency_limited() {
    // 2,000 req/s on 4 cores at 20% CPU, most time waiting on the database.
    let mut b = base();
    b.cpu_s = 8.0;
    b.downstream.insert(
        "10.0.0.5:5432".into(),
        DependencyTime {
            kind: "postgresql".into(),
            name: Some("orders-db".into()),
            awaiting_s: 30.0,
            connection_s: 0.0,
        },
    );
    let d = diagnose("orders", &[1], &b, &Thresholds::default());
    assert_eq!(d.verdict, Verdict::Dependency);
    assert!((d.breakdown.downstream - 0.75).abs() < 1e-9);
    assert!((d.breakdown.local_wait - 0.05).abs() < 1e-9);
    assert_eq!(d.dependencies[0].name.as_deref(), Some("orders-db"));
    assert!(d.confidence > 0.7, "{d:?}");
    assert!(d.evidence.iter().any(|e| e.contains("rewrite ceiling")));
}

#[test]
fn saturation_decides_before_the_largest_group() {
    let mut b = base();
    b.capacity_core_s = 20.0;
    b.cpu_s = 19.0;
    // Most request time is queueing for a worker, yet the CPU is full.
    let d = diagnose("s", &[1], &b, &Thresholds::default());
    assert!(d.breakdown.local_wait > 0.5);
    assert_eq!(d.verdict, Verdict::ScaleUp);
}

#[test]
fn a_starved_neighbour_of_a_slow_dependency_is_still_dependency_limited() {
    // A busy host: a quarter of request time waiting for a CPU, most of it on the database.
    let mut b = base();
    b.cpu_s = 1.2;
    b.cpu_wait_s = 10.8;
    b.downstream.insert(
        "10.0.0.5:5432".into(),
        DependencyTime {
            kind: "postgresql".into(),
            name: None,
            awaiting_s: 28.0,
            connection_s: 0.0,
        },
    );
    let d = diagnose("s", &[1], &b, &Thresholds::default());
    assert_eq!(d.verdict, Verdict::Dependency, "{d:?}");
    assert!(d.evidence.iter().any(|e| e.contains("also CPU starved")));
    // The same starvation in front of in-process queueing is the CPU's.
    b.downstream.clear();
    let d = diagnose("s", &[1], &b, &Thresholds::default());
    assert_eq!(d.verdict, Verdict::ScaleUp, "{d:?}");
}

#[test]
fn no_requests_is_insufficient_data() {
    let mut b = base();
    b.requests = 3.0;
    let d = diagnose("s", &[1], &b, &Thresholds::default());
    assert_eq!(d.verdict, Verdict::InsufficientData);
    assert_eq!(d.confidence, 0.0);
    let none = Budget {
        window_s: 5.0,
        ..Budget::default()
    };
    let d = diagnose("s", &[1], &none, &Thresholds::default());
    assert_eq!(d.verdict, Verdict::InsufficientData);
    assert_eq!(d.breakdown, Breakdown::default());
}

#[test]
fn overfull_components_are_normalised_and_said() {
    let mut b = base();
    b.cpu_s = 60.0; // parallel work inside requests
    let d = diagnose("s", &[1], &b, &Thresholds::default());
    let sum = d.breakdown.cpu + d.breakdown.downstream + d.breakdown.local_wait;
    assert!((sum - 1.0).abs() < 1e-3);
    assert!(d.evidence.iter().any(|e| e.contains("normalised")));
}

#[test]
fn with_spans_exact_downstream_time_is_not_scaled_down() {
    let mut b = base();
    b.request_source = RequestSource::Spans;
    b.cpu_s = 6.0;
    b.cpu_wait_s = 2.0;
    b.downstream.insert(
        "127.0.0.1:8080".into(),
        DependencyTime {
            kind: "http".into(),
            name: None,
            awaiting_s: 36.0,
            connection_s: 0.0,
        },
    );
    // 8 + 36 > 40: the sampled 8 share the 4 the spans leave.
    let d = diagnose("s", &[1], &b, &Thresholds::default());
    assert!((d.breakdown.downstream - 0.9).abs() < 1e-9, "{d:?}");
    assert!((d.breakdown.cpu - 0.075).abs() < 1e-9, "{d:?}");
    assert!((d.breakdown.cpu_wait - 0.025).abs() < 1e-9, "{d:?}");
    assert_eq!(d.breakdown.local_wait, 0.0);
    assert!((d.dependencies[0].share - 0.9).abs() < 1e-9);
    assert!(d.evidence.iter().any(|e| e.contains("exact (spans)")));
    // The same budget from sockets scales everything.
    b.request_source = RequestSource::Sockets;
    let d = diagnose("s", &[1], &b, &Thresholds::default());
    assert!((d.breakdown.downstream - 36.0 / 44.0).abs() < 1e-3, "{d:?}");
}

#[test]
fn json_has_the_contract_field_names() {
    let d = diagnose("s", &[7], &base(), &Thresholds::default());
    let v = serde_json::to_value(&d).expect("serialise");
    for key in [
        "service",
        "pids",
        "window_s",
        "verdict",
        "confidence",
        "breakdown",
        "dependencies",
        "cpu",
        "requests",
        "evidence",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    for key in ["cpu", "gc", "cpu_wait", "downstream", "local_wait"] {
        assert!(v["breakdown"].get(key).is_some(), "missing breakdown.{key}");
    }
    assert!(v["cpu"].get("used_cores").is_some());
    assert!(v["requests"].get("mean_latency_ms").is_some());
}
