//! Every budget counter walked from a session's budget to `/metrics`: the agent's wire points, an
//! OTLP/HTTP protobuf body into the collector's router, the SQLite store (the collector is
//! reopened from its data directory), a window, the engine, the REST answer and `/metrics`. A
//! counter that any leg drops or misplaces fails here by name.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use scalewise_collector::{now_ms, otlp_request, router, App, Config};
use scalewise_core::budget::{Budget, DependencyTime, RequestSource};
use scalewise_core::engine::{diagnose, Thresholds};
use scalewise_core::wire::{counters::COUNTERS, prom};
use tower::ServiceExt;

/// A budget with every counter at a value of its own (whole numbers: sample counts are integers).
fn budget(scale: f64) -> Budget {
    let mut b = Budget {
        request_source: RequestSource::Sockets,
        busiest_thread: Some("worker-3 (pid 42)".into()),
        ..Budget::default()
    };
    for c in &COUNTERS {
        (c.set)(&mut b, scale * (10.0 + c.slot as f64));
    }
    b.downstream.insert(
        "127.0.0.1:5432".into(),
        DependencyTime {
            kind: "postgresql".into(),
            name: Some("orders-db".into()),
            awaiting_s: scale * 7.0,
            connection_s: 0.0,
        },
    );
    b
}

async fn call(app: &Arc<App>, req: Request<Body>) -> (u16, String) {
    let resp = router(app.clone()).oneshot(req).await.expect("router");
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn temp_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("scalewise-counter-walk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[tokio::test]
async fn every_counter_reaches_the_window_the_engine_and_metrics() {
    let dir = temp_dir();
    let config = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    let now = now_ms();
    let t0 = now - 20_000;
    let ns = |ms: i64| u64::try_from(ms).expect("time") * 1_000_000;
    let attrs = otlp_request::resource_attrs("walk", "instance-1", Some(42));
    {
        let app = App::open(config.clone()).expect("open");
        // Two cumulative snapshots 10 s apart: the window between them is `budget(1.0)`.
        for (t, scale) in [(t0 + 5_000, 1.0), (t0 + 15_000, 2.0)] {
            let body = otlp_request::encode(&otlp_request::request(
                &attrs,
                &budget(scale),
                ns(t0),
                ns(t),
            ));
            let req = Request::post("/v1/metrics")
                .header("content-type", "application/x-protobuf")
                .body(Body::from(body))
                .expect("request");
            let (status, text) = call(&app, req).await;
            assert_eq!(status, 200, "{text}");
        }
        assert!(
            app.flush().expect("flush") > 0,
            "nothing written to the store"
        );
    }
    // A new collector on the same data directory: what follows comes from SQLite.
    let app = App::open(config).expect("reopen");
    let window_ms = now - (t0 + 10_000);
    let got = app
        .service_budget("walk", window_ms, now)
        .expect("service in the store");
    let want = budget(1.0);
    let mut dropped = Vec::new();
    for c in &COUNTERS {
        let (g, w) = ((c.get)(&got), (c.get)(&want));
        if (g - w).abs() > 1e-9 {
            dropped.push(format!(
                "{} {:?} (slot {}): {g} != {w}",
                c.wire, c.wire_attr, c.slot
            ));
        }
    }
    assert!(
        dropped.is_empty(),
        "counters lost on the way:\n{}",
        dropped.join("\n")
    );
    assert_eq!(got.downstream, want.downstream);
    assert_eq!(got.request_source, want.request_source);
    assert_eq!(got.busiest_thread, want.busiest_thread);

    // The engine on that window is what REST serves.
    let expected = diagnose("walk", &[42], &got, &Thresholds::default());
    let view = app.service_view("walk", window_ms, now).expect("view");
    assert_eq!(view.diagnosis.breakdown, expected.breakdown);
    assert_eq!(view.diagnosis.verdict, expected.verdict);
    let (status, rest) = call(
        &app,
        Request::get(format!(
            "/api/v1/services/walk?window={}s",
            window_ms / 1000
        ))
        .body(Body::empty())
        .expect("request"),
    )
    .await;
    assert_eq!(status, 200, "{rest}");
    let json: serde_json::Value = serde_json::from_str(&rest).expect("json");
    assert_eq!(json["service"], "walk");
    assert_eq!(json["requests"]["source"], "sockets");

    // `/metrics`: every counter's series, at the latest cumulative value.
    let (status, text) = call(
        &app,
        Request::get("/metrics")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, 200);
    let latest = budget(2.0);
    let top = prom::top_dependencies(&latest, 20);
    let mut missing = Vec::new();
    for series in prom::budget_series(&latest, &|e| top.iter().any(|t| t == e)) {
        let found = text.lines().any(|line| {
            line.starts_with(&format!("{}{{", series.name))
                && line.contains("service_instance_id=\"instance-1\"")
                && series
                    .labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
                && line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| (v - series.value).abs() < 1e-9)
        });
        if !found {
            missing.push(format!(
                "{} {:?} = {}",
                series.name, series.labels, series.value
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "not in /metrics:\n{}",
        missing.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
