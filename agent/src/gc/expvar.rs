//! Go GC pauses from expvar (`/debug/vars`, `memstats.PauseTotalNs`). Opt-in, and read at most
//! every 30 s by default: serving `memstats` calls `runtime.ReadMemStats`, which stops the world.

use std::time::{Duration, Instant};

use super::{http_get, GcError, GcReading, GcSemantics, GcSource};

/// Parses an expvar document.
pub fn gc_from_expvar(json: &[u8]) -> Result<GcReading, GcError> {
    let bad = |why: &str| GcError::Malformed {
        what: "expvar".into(),
        why: why.into(),
    };
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
    let m = v.get("memstats").ok_or_else(|| bad("no memstats"))?;
    let pause_ns = m
        .get("PauseTotalNs")
        .and_then(|x| x.as_u64())
        .ok_or_else(|| bad("no memstats.PauseTotalNs"))?;
    let num_gc = m.get("NumGC").and_then(|x| x.as_u64()).unwrap_or(0);
    Ok(GcReading {
        source: "expvar",
        semantics: GcSemantics::Pauses,
        pause_s: pause_ns as f64 / 1e9,
        collections: num_gc,
        collectors: vec![("go".into(), num_gc, pause_ns as f64 / 1e9)],
    })
}

pub struct ExpvarSource {
    url: String,
    min_interval: Duration,
    last: Option<(Instant, GcReading)>,
}

impl ExpvarSource {
    pub fn new(url: String, min_interval: Duration) -> Self {
        ExpvarSource {
            url,
            min_interval,
            last: None,
        }
    }
}

impl GcSource for ExpvarSource {
    fn read(&mut self) -> Result<GcReading, GcError> {
        if let Some((at, r)) = &self.last {
            if at.elapsed() < self.min_interval {
                return Ok(r.clone());
            }
        }
        let body = http_get(&self.url, Duration::from_secs(2), 16 << 20)?;
        let r = gc_from_expvar(&body)?;
        self.last = Some((Instant::now(), r.clone()));
        Ok(r)
    }

    /// The end of a window reads even inside the interval: one extra stop-the-world read per
    /// window, so a window shorter than the interval still sees a change.
    fn read_final(&mut self) -> Result<GcReading, GcError> {
        self.last = None;
        self.read()
    }

    fn describe(&self) -> String {
        format!(
            "expvar {} (every {}s at most)",
            self.url,
            self.min_interval.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pause_total() {
        let r =
            gc_from_expvar(br#"{"cmdline":["x"],"memstats":{"PauseTotalNs":2500000,"NumGC":7}}"#)
                .expect("valid");
        assert_eq!(r.pause_s, 0.0025);
        assert_eq!(r.collections, 7);
        assert!(gc_from_expvar(b"{}").is_err());
        assert!(gc_from_expvar(b"not json").is_err());
        assert!(gc_from_expvar(br#"{"memstats":{"PauseTotalNs":-1}}"#).is_err());
    }
}
