//! Engine scenarios as data: each `engine_cases/*.toml` holds a budget and the verdict and share
//! ranges it must give. One test runs them all, so a new case is a new file.

use std::collections::BTreeMap;

use scalewise_core::{diagnose, Budget, Thresholds};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    expect_verdict: String,
    #[serde(default)]
    min_confidence: f64,
    /// At most this confidence (a case the data cannot settle must not sound sure).
    #[serde(default = "one")]
    max_confidence: f64,
    /// A piece of text some evidence line must contain.
    #[serde(default)]
    expect_evidence: Option<String>,
    /// The limit's kind (`none`: no limit named).
    #[serde(default)]
    expect_limit: Option<String>,
    /// The mean latency must be withheld (`null`): the request side cannot give it.
    #[serde(default)]
    no_latency: bool,
    budget: Budget,
    #[serde(default)]
    expect: BTreeMap<String, [f64; 2]>,
}

fn one() -> f64 {
    1.0
}

#[test]
fn engine_cases() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/engine_cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("engine_cases dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the scenario files in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read case");
        let case: Case = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let d = diagnose("case", &[1], &case.budget, &Thresholds::default());
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if d.verdict.as_str() != case.expect_verdict {
            failures.push(format!(
                "{name} ({}): verdict {} != {}; evidence: {:?}",
                case.description,
                d.verdict.as_str(),
                case.expect_verdict,
                d.evidence
            ));
        }
        if let Some(want) = &case.expect_limit {
            let got = d.limit.as_ref().map_or("none", |l| l.kind.as_str());
            if got != want {
                failures.push(format!("{name}: limit {got} (want {want}): {:?}", d.limit));
            }
        }
        if case.no_latency != d.requests.mean_latency_ms.is_none() {
            failures.push(format!(
                "{name}: mean latency {:?}, withheld expected: {}",
                d.requests.mean_latency_ms, case.no_latency
            ));
        }
        if d.confidence < case.min_confidence {
            failures.push(format!(
                "{name}: confidence {} < {}",
                d.confidence, case.min_confidence
            ));
        }
        if d.confidence > case.max_confidence {
            failures.push(format!(
                "{name}: confidence {} > {}",
                d.confidence, case.max_confidence
            ));
        }
        if let Some(text) = &case.expect_evidence {
            if !d.evidence.iter().any(|e| e.contains(text.as_str())) {
                failures.push(format!(
                    "{name}: no evidence mentions {text:?}: {:?}",
                    d.evidence
                ));
            }
        }
        let b = &d.breakdown;
        for (k, [lo, hi]) in &case.expect {
            let v = match k.as_str() {
                "cpu" => b.cpu,
                "gc" => b.gc,
                "cpu_wait" => b.cpu_wait,
                "downstream" => b.downstream,
                "local_wait" => b.local_wait,
                other => panic!("{name}: unknown share {other}"),
            };
            if v < *lo || v > *hi {
                failures.push(format!("{name}: {k} = {v} outside [{lo}, {hi}]"));
            }
        }
        let sum = b.cpu + b.gc + b.cpu_wait + b.downstream + b.local_wait;
        if d.verdict.as_str() != "insufficient_data" && (sum - 1.0).abs() > 0.01 {
            failures.push(format!("{name}: shares sum to {sum}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
