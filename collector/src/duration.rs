//! Durations as people write them in the collector's config, flags and query parameters
//! (`20s`, `5m`, `1h`, `7d`, `250ms` or seconds): one type, bounded to [1 ms, 10 years].

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Text that is not a duration, cut to 40 characters.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("not a duration: {0:?} (use 20s, 5m, 1h, 7d or seconds)")]
pub struct DurationError(pub String);

/// A duration written as `20s`, `5m`, `1h`, `30d`, `250ms` or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "DurText", into = "String")]
pub struct Dur(pub u64);

impl Dur {
    pub const fn secs(s: u64) -> Dur {
        Dur(s * 1000)
    }
    pub fn ms(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurText {
    Text(String),
    Secs(u64),
}

impl TryFrom<DurText> for Dur {
    type Error = DurationError;
    fn try_from(t: DurText) -> Result<Dur, DurationError> {
        match t {
            DurText::Text(s) => parse_duration(&s),
            // Whole seconds get the text's bounds: no zero, no overflow past ten years.
            DurText::Secs(s) => {
                bounded_ms(s as f64 * 1000.0).ok_or_else(|| DurationError(s.to_string()))
            }
        }
    }
}

impl From<Dur> for String {
    fn from(d: Dur) -> String {
        d.to_string()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, n) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms >= n && ms % n == 0 {
                return write!(f, "{}{unit}", ms / n);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// Parses `20s`, `5m`, `1h`, `7d`, `500ms` or plain seconds (`300`, `0.5`).
pub fn parse_duration(s: &str) -> Result<Dur, DurationError> {
    let t = s.trim();
    let bad = || DurationError(s.chars().take(40).collect());
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else if let Some(n) = t.strip_suffix('d') {
        (n, 86_400_000.0)
    } else {
        (t, 1000.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    bounded_ms(v * mult).ok_or_else(bad)
}

/// A duration of `ms` milliseconds, rounded, if it is at least one millisecond and at most ten
/// years (anything longer is a mistake; anything shorter would be a zero duration).
fn bounded_ms(ms: f64) -> Option<Dur> {
    let ms = ms.round();
    (ms.is_finite() && (1.0..=3.2e11).contains(&ms)).then_some(Dur(ms as u64))
}
