//! A budget as Prometheus series: the one rendering both `/metrics` pages (the agent's
//! `--metrics-listen` and the collector's) use, so a counter has one name, label and help.
//!
//! Series only, not text: each side adds its instance's labels and encodes with the `prometheus`
//! crate beside its own telemetry.

use std::collections::BTreeMap;

use super::counters::COUNTERS;
use crate::budget::Budget;

/// The dependency label of endpoints a caller does not keep as their own series.
pub const OTHER: &str = "other";

pub const DEPENDENCY_NAME: &str = "scalewise_dependency_time_seconds_total";
const DEPENDENCY_HELP: &str = "Request-seconds awaiting one downstream endpoint.";
pub const DEPENDENCY_CONNECTIONS_NAME: &str = "scalewise_dependency_connection_seconds_total";
const DEPENDENCY_CONNECTIONS_HELP: &str =
    "Connection-seconds to one downstream endpoint (rate: mean connections open, a pool's size).";
const COMPONENT_NAME: &str = "scalewise_request_component_time_seconds_total";

/// One series: its family's name, help and type, its own labels and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: &'static str,
    pub help: &'static str,
    pub counter: bool,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

fn counter(
    name: &'static str,
    help: &'static str,
    labels: Vec<(&'static str, String)>,
    value: f64,
) -> Series {
    Series {
        name,
        help,
        counter: true,
        labels,
        // -0.0 prints as "-0", which reads as a counter going below zero.
        value: value + 0.0,
    }
}

/// Every counter of `b`, the `downstream` component, and its dependencies: one series per
/// (name, kind) for the endpoints `keep` accepts, the rest summed as [`OTHER`].
pub fn budget_series(b: &Budget, keep: &dyn Fn(&str) -> bool) -> Vec<Series> {
    let mut out = Vec::with_capacity(COUNTERS.len() + 2 + b.downstream.len());
    for c in &COUNTERS {
        let mut labels = Vec::new();
        if let Some((k, v)) = c.prom_label {
            labels.push((k, v.to_string()));
        }
        if c.wire == super::REQUEST_TIME {
            labels.push(("source", b.request_source.as_str().to_string()));
        }
        out.push(counter(c.prom, c.help, labels, (c.get)(b)));
    }
    out.push(counter(
        COMPONENT_NAME,
        "Request-seconds per component.",
        vec![("component", "downstream".to_string())],
        b.downstream_s(),
    ));
    let mut per_label: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
    for (endpoint, d) in &b.downstream {
        let key = if keep(endpoint) {
            (
                d.name.clone().unwrap_or_else(|| endpoint.clone()),
                d.kind.clone(),
            )
        } else {
            (OTHER.to_string(), OTHER.to_string())
        };
        let sums = per_label.entry(key).or_default();
        sums.0 += d.awaiting_s;
        sums.1 += d.connection_s;
    }
    for ((dependency, kind), (awaiting, connections)) in per_label {
        let labels = vec![("dependency", dependency), ("dependency_kind", kind)];
        if connections > 0.0 {
            out.push(counter(
                DEPENDENCY_CONNECTIONS_NAME,
                DEPENDENCY_CONNECTIONS_HELP,
                labels.clone(),
                connections,
            ));
        }
        out.push(counter(DEPENDENCY_NAME, DEPENDENCY_HELP, labels, awaiting));
    }
    out
}

/// The `n` endpoints of `b` with the most time, for a `keep` that caps the series.
pub fn top_dependencies(b: &Budget, n: usize) -> Vec<String> {
    let mut deps: Vec<(&String, f64)> = b
        .downstream
        .iter()
        .map(|(e, d)| (e, d.awaiting_s))
        .collect();
    deps.sort_by(|a, b| b.1.total_cmp(&a.1));
    deps.into_iter().take(n).map(|(e, _)| e.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::DependencyTime;

    #[test]
    fn every_counter_is_a_series_and_dependencies_past_the_cap_are_other() {
        let mut b = Budget::default();
        for i in 0..30 {
            b.downstream.insert(
                format!("10.0.0.{i}:5432"),
                DependencyTime {
                    kind: "postgresql".into(),
                    name: None,
                    awaiting_s: i as f64,
                    connection_s: 0.0,
                },
            );
        }
        let top = top_dependencies(&b, 20);
        let series = budget_series(&b, &|e| top.iter().any(|t| t == e));
        let deps: Vec<&Series> = series
            .iter()
            .filter(|s| s.name == DEPENDENCY_NAME)
            .collect();
        assert_eq!(deps.len(), 21);
        let total: f64 = deps.iter().map(|s| s.value).sum();
        assert_eq!(total, (0..30).sum::<i32>() as f64);
        let other = deps.iter().find(|s| s.labels[0].1 == OTHER).expect("other");
        assert_eq!(other.value, (0..10).sum::<i32>() as f64);
        assert_eq!(series.len(), COUNTERS.len() + 1 + 21);
    }
}
