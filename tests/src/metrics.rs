//! Prometheus text exposition, as the agent (`run --metrics-listen`) and the collector (`/metrics`)
//! serve it, read the one way every test reads it: parsed with the `prometheus-parse` crate (the
//! parser the agent uses for runtimes' endpoints), then looked up by name and labels. Tests
//! compare values, not lines of text, so a reordered label or a new series moves nothing.

use prometheus_parse::{Sample, Scrape, Value};

/// The counter, gauge or untyped samples of an exposition (histogram and summary groups are no
/// series a test reads).
fn samples(text: &str) -> Vec<Sample> {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map(|s| s.samples)
        .unwrap_or_default()
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => Some(*x),
        Value::Histogram(_) | Value::Summary(_) => None,
    }
}

/// The value of the first series of `name` whose labels include every pair of `labels` (`&[]`:
/// the first series of `name`); `None` when there is none.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text)
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| number(&s.value))
}

/// The sum of every series of `name` (0 when there is none).
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text)
        .iter()
        .filter(|s| s.metric == name)
        .filter_map(|s| number(&s.value))
        .sum::<f64>()
        // An empty sum is -0.0.
        + 0.0
}

/// The body of `GET http://127.0.0.1:PORT/metrics` (an agent's `--metrics-listen`), fetched from
/// the test's own network namespace.
pub fn scrape(port: u16) -> anyhow::Result<String> {
    let (_, body) = crate::collector::get(&format!("http://127.0.0.1:{port}/metrics"), None)?;
    Ok(body)
}
