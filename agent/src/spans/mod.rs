//! Spans, the exact source of request time.
//!
//! Sockets sampled a few times a second estimate how long requests take; a service instrumented
//! with OpenTelemetry already says it exactly, one span per request. The agent listens where the
//! SDKs send by default (`--otlp-listen 127.0.0.1:4318`), optionally forwards every body unchanged
//! to the team's real pipeline (`--traces-forward`), and turns the spans into the budget's request
//! side: [`aggregate`] derives per service the request count, request-seconds and per-dependency
//! time (pure, fuzzed); [`receiver`] is the OTLP/HTTP and gRPC edge; [`overlay`] puts a window of
//! span figures into a sampled [`Budget`] in place of the socket estimates, and says so.

pub mod aggregate;
pub mod receiver;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scalewise_core::{Budget, DependencyTime, RequestSource};

use crate::deps::DependencyNames;
pub use aggregate::{AggregateStats, Match, SpanAggregate, SpanWindow};
pub use receiver::{Receiver, ReceiverConfig, ReceiverError, ReceiverStats};

/// The aggregate the receiver writes and sessions read.
pub type SharedAggregate = Arc<Mutex<SpanAggregate>>;

/// Runs `f` on the aggregate. A panic elsewhere while holding the lock leaves counters that are
/// still counters: keep using them rather than propagate the poison.
pub fn with<T>(agg: &SharedAggregate, f: impl FnOnce(&mut SpanAggregate) -> T) -> T {
    let mut guard = agg.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut guard)
}

/// Unix nanoseconds of a wall-clock time (0 before 1970).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Below this share of the socket-measured request rate, spans are taken to be sampled.
pub const SAMPLED_BELOW: f64 = 0.9;

/// Replaces the request side of `budget` (requests, request-seconds, downstream time) with a
/// window of span figures, and says so in its notes. Returns false, touching nothing but a note,
/// when the window has no request.
///
/// The span window (whole 100 ms buckets) is scaled to the budget's window. When the budget has
/// a socket-measured request rate and the spans account for less than [`SAMPLED_BELOW`] of it,
/// the service samples its traces: every span figure is scaled up by socket rate / span rate.
pub fn overlay(
    budget: &mut Budget,
    w: &SpanWindow,
    matched: &Match,
    names: &DependencyNames,
) -> bool {
    if w.requests <= 0.0 || w.covered_s <= 0.0 || budget.window_s <= 0.0 {
        budget.notes.push(format!(
            "spans: {} sent spans, but no server span ended inside the window; request time from {}",
            matched.describe(),
            budget.request_source.as_str()
        ));
        return false;
    }
    let to_window = budget.window_s / w.covered_s;
    let span_rate = w.requests / w.covered_s;
    let socket_rate = (budget.request_source == RequestSource::Sockets && budget.requests > 0.0)
        .then(|| budget.requests / budget.window_s);
    let coverage = socket_rate.map(|s| span_rate / s);
    let sampled = coverage.is_some_and(|c| c < SAMPLED_BELOW);
    let factor = to_window
        * if sampled {
            1.0 / coverage.unwrap_or(1.0)
        } else {
            1.0
        };

    budget.requests = w.requests * factor;
    budget.request_s = w.request_s * factor;
    budget.request_source = RequestSource::Spans;
    budget.downstream = w
        .downstream
        .iter()
        .map(|(endpoint, d)| {
            let mut d = DependencyTime {
                awaiting_s: d.awaiting_s * factor,
                ..d.clone()
            };
            // A name given with --dependency wins over none; the span's own name over both.
            if d.name.is_none() {
                if let Ok(addr) = endpoint.parse::<SocketAddr>() {
                    let (_, name) = names.resolve(addr);
                    d.name = name;
                }
            }
            (endpoint.clone(), d)
        })
        .collect();
    let mut text = format!(
        "spans: requests, latency and downstream time from {:.0} server spans of {} ({:.1}s of spans)",
        w.requests,
        matched.describe(),
        w.covered_s
    );
    match coverage {
        Some(c) if sampled => text.push_str(&format!(
            "; they are {:.0}% of the socket-measured request rate (traces sampled), so span totals are scaled by {:.2}",
            c * 100.0,
            1.0 / c
        )),
        Some(c) => text.push_str(&format!(
            "; they cover {:.0}% of the socket-measured request rate",
            c.min(9.99) * 100.0
        )),
        None => text.push_str("; no socket-measured rate to check sampling against"),
    }
    budget.notes.push(text);
    true
}

/// The receiver with its aggregate, for one agent command.
pub struct Spans {
    pub receiver: Receiver,
    pub aggregate: SharedAggregate,
}

impl Spans {
    /// Binds the listeners and starts serving on a runtime of its own.
    pub fn start(cfg: ReceiverConfig) -> Result<Spans, ReceiverError> {
        let aggregate: SharedAggregate = Arc::default();
        let receiver = Receiver::start_owned(cfg, aggregate.clone())?;
        Ok(Spans {
            receiver,
            aggregate,
        })
    }

    /// Binds the listeners and starts serving on the given runtime (the `run` daemon's).
    pub fn start_on(
        handle: &tokio::runtime::Handle,
        cfg: ReceiverConfig,
    ) -> Result<Spans, ReceiverError> {
        let aggregate: SharedAggregate = Arc::default();
        let receiver = Receiver::start_on(handle, cfg, aggregate.clone())?;
        Ok(Spans {
            receiver,
            aggregate,
        })
    }

    /// Marks the start of a window that will be read with [`Spans::apply`] (a `diagnose` run),
    /// so that it stays whole however long it is.
    pub fn pin(&self, from: SystemTime) {
        with(&self.aggregate, |a| a.pin(unix_ns(from)));
    }

    /// Waits, at most `max`, until the service matched for `name`/`pids` has sent a server span
    /// ending at or after `until` (exporters batch: the SDKs' default is every 5 s). Returns at
    /// once when no service has sent spans at all.
    pub fn wait_for(&self, name: Option<&str>, pids: &[u32], until: SystemTime, max: Duration) {
        let deadline = Instant::now() + max;
        let until = unix_ns(until);
        loop {
            let caught_up = with(&self.aggregate, |a| match a.select(name, pids) {
                Some(m) => a.last_end_ns(m.service()) >= until,
                None => a.services().is_empty(),
            });
            if caught_up || Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// For a daemon's cumulative budget (`run`): puts everything the matched service's spans
    /// have said since the receiver started, up to `now`, into `budget` (whose `window_s` is the
    /// time since the same start). Spans still in the SDK's batch arrive in the next export.
    pub fn apply_cumulative(
        &self,
        budget: &mut Budget,
        name: Option<&str>,
        pids: &[u32],
        now: SystemTime,
        names: &DependencyNames,
    ) -> Option<Match> {
        let (matched, window) = with(&self.aggregate, |a| {
            let m = a.select(name, pids);
            let w = m
                .as_ref()
                .and_then(|m| a.cumulative(m.service(), unix_ns(now)));
            (m, w)
        });
        let m = matched?;
        let mut w = window.unwrap_or_default();
        w.covered_s = budget.window_s;
        overlay(budget, &w, &m, names);
        Some(m)
    }

    /// Puts the span figures of `[from, to)` into `budget` when a service matches. Returns the
    /// match, or `None` (with a note when spans came from services that do not match).
    pub fn apply(
        &self,
        budget: &mut Budget,
        name: Option<&str>,
        pids: &[u32],
        from: SystemTime,
        to: SystemTime,
        names: &DependencyNames,
    ) -> Option<Match> {
        let (matched, window, services) = with(&self.aggregate, |a| {
            let m = a.select(name, pids);
            let w = m
                .as_ref()
                .and_then(|m| a.window(m.service(), unix_ns(from), unix_ns(to)));
            (m, w, a.services())
        });
        let Some(m) = matched else {
            if !services.is_empty() {
                budget.notes.push(format!(
                    "spans: {} services sent spans ({}), none with this service's name or process.pid; request time from {}",
                    services.len(),
                    services.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                    budget.request_source.as_str()
                ));
            }
            return None;
        };
        let w = window.unwrap_or_else(|| SpanWindow {
            service: m.service().to_string(),
            ..SpanWindow::default()
        });
        overlay(budget, &w, &m, names);
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_budget() -> Budget {
        let mut b = Budget {
            window_s: 10.0,
            request_s: 3.0,
            requests: 1000.0,
            request_source: RequestSource::Sockets,
            cpu_s: 1.0,
            ..Budget::default()
        };
        b.downstream.insert(
            "127.0.0.1:5432".into(),
            DependencyTime {
                kind: "postgresql".into(),
                name: None,
                awaiting_s: 1.0,
                connection_s: 0.0,
            },
        );
        b
    }

    fn window(requests: f64, covered_s: f64) -> SpanWindow {
        let mut w = SpanWindow {
            service: "api".into(),
            requests,
            request_s: requests * 0.004,
            covered_s,
            ..SpanWindow::default()
        };
        w.downstream.insert(
            "127.0.0.1:5432".into(),
            DependencyTime {
                kind: "postgresql".into(),
                name: None,
                awaiting_s: requests * 0.002,
                connection_s: 0.0,
            },
        );
        w
    }

    #[test]
    fn full_coverage_replaces_the_request_side_and_scales_to_the_window() {
        let mut b = socket_budget();
        let names = DependencyNames::new(&["127.0.0.1:5432=orders".parse().expect("spec")]);
        let w = window(990.0, 9.9);
        assert!(overlay(&mut b, &w, &Match::Only("api".into()), &names));
        assert_eq!(b.request_source, RequestSource::Spans);
        assert!((b.requests - 1000.0).abs() < 1e-9, "{}", b.requests);
        assert!((b.request_s - 4.0).abs() < 1e-9);
        let d = &b.downstream["127.0.0.1:5432"];
        assert!((d.awaiting_s - 2.0).abs() < 1e-9);
        assert_eq!(d.name.as_deref(), Some("orders"));
        assert_eq!(b.cpu_s, 1.0, "the process side is untouched");
        let note = b.notes.last().expect("a note");
        assert!(note.contains("cover 100%"), "{note}");
    }

    #[test]
    fn sampled_spans_are_scaled_by_the_socket_rate() {
        let mut b = socket_budget();
        // A tenth of the 100/s the sockets saw.
        let w = window(100.0, 10.0);
        overlay(
            &mut b,
            &w,
            &Match::Only("api".into()),
            &DependencyNames::default(),
        );
        assert!((b.requests - 1000.0).abs() < 1e-6);
        assert!((b.request_s - 4.0).abs() < 1e-6, "latency stays 4 ms");
        let note = b.notes.last().expect("a note");
        assert!(note.contains("sampled") && note.contains("10.00"), "{note}");
    }

    #[test]
    fn spans_alone_when_sockets_saw_nothing() {
        let mut b = Budget {
            window_s: 5.0,
            ..Budget::default()
        };
        overlay(
            &mut b,
            &window(50.0, 5.0),
            &Match::Only("api".into()),
            &DependencyNames::default(),
        );
        assert_eq!(b.requests, 50.0);
        assert_eq!(b.request_source, RequestSource::Spans);
        assert!(b
            .notes
            .last()
            .expect("note")
            .contains("no socket-measured rate"));
    }

    #[test]
    fn an_empty_window_keeps_the_sockets_figures() {
        let mut b = socket_budget();
        let before = b.clone();
        assert!(!overlay(
            &mut b,
            &window(0.0, 10.0),
            &Match::Only("api".into()),
            &DependencyNames::default()
        ));
        assert_eq!(b.request_source, RequestSource::Sockets);
        assert_eq!(b.requests, before.requests);
        assert_eq!(b.downstream, before.downstream);
        assert_eq!(b.notes.len(), 1);
    }
}
