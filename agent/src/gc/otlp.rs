//! GC time from OTLP metrics a service already exports (`jvm.gc.duration` of the OpenTelemetry
//! JVM runtime conventions, and the older `process.runtime.jvm.gc.duration`), in the OTLP/JSON
//! encoding of `ExportMetricsServiceRequest`. This is the parser and the mapping; the receiver
//! that feeds it arrives with the collector.
//!
//! Only cumulative histograms are summed: a delta series needs the receiver to accumulate it, so
//! a delta-only body is reported as such instead of as a too-small number.

use serde_json::Value;

use super::{GcError, GcReading, GcSemantics};

const NAMES: [&str; 2] = ["jvm.gc.duration", "process.runtime.jvm.gc.duration"];
const CUMULATIVE: i64 = 2;

fn num(v: &Value) -> Option<f64> {
    // proto3 JSON writes 64-bit integers as strings.
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn attr<'a>(point: &'a Value, key: &str) -> Option<&'a str> {
    point["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

/// Sums the GC duration histograms of an OTLP/JSON metrics body. `Ok(None)`: none present.
pub fn gc_from_otlp_json(body: &[u8]) -> Result<Option<GcReading>, GcError> {
    let bad = |why: String| GcError::Malformed {
        what: "OTLP metrics".into(),
        why,
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let resources = v["resourceMetrics"]
        .as_array()
        .ok_or_else(|| bad("no resourceMetrics".into()))?;
    let mut found = false;
    let mut delta_only = false;
    let (mut seconds, mut count) = (0.0, 0.0);
    let mut collectors: Vec<(String, u64, f64)> = Vec::new();
    for rm in resources {
        for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
            for m in sm["metrics"].as_array().into_iter().flatten() {
                let Some(name) = m["name"].as_str() else {
                    continue;
                };
                if !NAMES.contains(&name) {
                    continue;
                }
                let h = &m["histogram"];
                if h["aggregationTemporality"].as_i64() != Some(CUMULATIVE) {
                    delta_only = true;
                    continue;
                }
                let scale = if m["unit"] == "ms" { 1e-3 } else { 1.0 };
                for p in h["dataPoints"].as_array().into_iter().flatten() {
                    let (Some(s), Some(c)) = (num(&p["sum"]), num(&p["count"])) else {
                        continue;
                    };
                    if !(s.is_finite() && s >= 0.0 && c.is_finite() && c >= 0.0) {
                        return Err(bad(format!("{name}: negative or non-finite point")));
                    }
                    found = true;
                    seconds += s * scale;
                    count += c;
                    let gc = attr(p, "jvm.gc.name").or(attr(p, "gc")).unwrap_or("?");
                    let action = attr(p, "jvm.gc.action").or(attr(p, "action")).unwrap_or("");
                    collectors.push((
                        format!("{gc} {action}").trim().to_string(),
                        c as u64,
                        s * scale,
                    ));
                }
            }
        }
    }
    if !found {
        return if delta_only {
            Err(bad(
                "only delta-temporality GC histograms: they need the collector to accumulate"
                    .into(),
            ))
        } else {
            Ok(None)
        };
    }
    Ok(Some(GcReading {
        source: "otlp:jvm.gc.duration",
        // The JVM conventions record collection durations; for stop-the-world collectors (the
        // minor and major "end of ... GC" actions) these are the pauses.
        semantics: GcSemantics::Pauses,
        pause_s: seconds,
        collections: count as u64,
        collectors,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"orders"}}]},
      "scopeMetrics":[{"scope":{"name":"io.opentelemetry.runtime-telemetry-java17"},"metrics":[
        {"name":"jvm.gc.duration","unit":"s","histogram":{"aggregationTemporality":2,"dataPoints":[
          {"attributes":[{"key":"jvm.gc.action","value":{"stringValue":"end of minor GC"}},{"key":"jvm.gc.name","value":{"stringValue":"G1 Young Generation"}}],
           "count":"12","sum":0.25,"bucketCounts":["10","2"],"explicitBounds":[0.01]},
          {"attributes":[{"key":"jvm.gc.action","value":{"stringValue":"end of major GC"}},{"key":"jvm.gc.name","value":{"stringValue":"G1 Old Generation"}}],
           "count":1,"sum":0.05}]}},
        {"name":"jvm.memory.used","unit":"By","sum":{"dataPoints":[]}}]}]}]}"#;

    #[test]
    fn sums_cumulative_gc_histograms() {
        let r = gc_from_otlp_json(BODY.as_bytes())
            .expect("valid")
            .expect("found");
        assert!((r.pause_s - 0.30).abs() < 1e-9);
        assert_eq!(r.collections, 13);
        assert_eq!(r.collectors[0].0, "G1 Young Generation end of minor GC");
    }

    #[test]
    fn milliseconds_delta_and_garbage() {
        let ms = BODY
            .replace(r#""unit":"s""#, r#""unit":"ms""#)
            .replace("jvm.gc.duration", "process.runtime.jvm.gc.duration");
        let r = gc_from_otlp_json(ms.as_bytes())
            .expect("valid")
            .expect("found");
        assert!((r.pause_s - 0.0003).abs() < 1e-12);
        let delta = BODY.replace(
            r#""aggregationTemporality":2"#,
            r#""aggregationTemporality":1"#,
        );
        assert!(gc_from_otlp_json(delta.as_bytes()).is_err());
        assert!(gc_from_otlp_json(br#"{"resourceMetrics":[]}"#)
            .expect("valid")
            .is_none());
        assert!(gc_from_otlp_json(b"{").is_err());
        assert!(gc_from_otlp_json(b"[]").is_err());
        let negative = BODY.replace(r#""sum":0.25"#, r#""sum":-1"#);
        assert!(gc_from_otlp_json(negative.as_bytes()).is_err());
    }
}
