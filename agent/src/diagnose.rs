//! The one-shot `diagnose` command: sample a service's processes for a while, then run the
//! engine on what was gathered. No collector needed (embedded mode).

use std::time::{Duration, Instant};

use scalewise_core::engine::{diagnose, Diagnosis, Thresholds};
use serde::Serialize;

use crate::session::{ErrorCounts, Session, SessionConfig, SessionError};

/// A whole `diagnose` run's output: the contract's `services`, plus the agent's own health.
#[derive(Clone, Debug, Serialize)]
pub struct DiagnoseOutput {
    pub services: Vec<Diagnosis>,
    pub agent: AgentHealth,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentHealth {
    pub version: &'static str,
    /// Sampler errors by sampler and kind, as counted by `scalewise_agent_sampler_errors_total`.
    pub sampler_errors: Vec<SamplerErrors>,
    /// The OTLP traces receiver's counters, when `--otlp-listen` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp: Option<crate::spans::receiver::StatsSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SamplerErrors {
    pub sampler: &'static str,
    pub kind: &'static str,
    pub count: u64,
}

fn health(errors: &ErrorCounts) -> AgentHealth {
    AgentHealth {
        version: env!("CARGO_PKG_VERSION"),
        sampler_errors: errors
            .iter()
            .map(|(&(sampler, kind), &count)| SamplerErrors {
                sampler,
                kind,
                count,
            })
            .collect(),
        otlp: None,
    }
}

/// The service name when none is given: the first process's command name.
pub fn default_service_name(proc_root: &std::path::Path, pid: u32) -> String {
    std::fs::read(proc_root.join(pid.to_string()).join("comm"))
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("pid-{pid}"))
}

/// Samples for `duration` (or until every process has exited) and diagnoses.
/// `progress` is called about once a second with a human-readable line.
pub fn run(
    cfg: SessionConfig,
    service: Option<String>,
    duration: Duration,
    thresholds: &Thresholds,
    progress: &mut dyn FnMut(&str),
) -> Result<DiagnoseOutput, SessionError> {
    run_with_spans(
        cfg,
        service,
        duration,
        thresholds,
        None,
        &Stop::NEVER,
        progress,
    )
}

/// What closes a window before its duration (the CLI's first Ctrl-C): asked between rounds and
/// every [`STOP_POLL`] while waiting for the next, so it is answered within a round. The window
/// then ends as at its normal end (the last full round included) and the evidence says it was
/// cut short, by what and when.
pub struct Stop<'a> {
    /// `Some(cause)` once the window should close; the cause names it ("SIGINT").
    pub requested: &'a dyn Fn() -> Option<&'static str>,
    /// Added to the progress line that says the window is closing, e.g. "Ctrl-C again to abort".
    pub hint: &'a str,
}

fn never() -> Option<&'static str> {
    None
}

impl Stop<'static> {
    /// A window that always runs its course.
    pub const NEVER: Stop<'static> = Stop {
        requested: &never,
        hint: "",
    };
}

/// The longest sleep between two looks at the stop condition.
pub const STOP_POLL: Duration = Duration::from_millis(100);

/// Spans for [`run_with_spans`]: the running receiver, and how long to wait after the window for
/// the service's exporter to send the spans that ended in it.
pub struct SpanSource<'a> {
    pub spans: &'a crate::spans::Spans,
    pub flush_wait: Duration,
}

/// [`run`], with the request side taken from spans when the service sends them, and a window
/// that `stop` can close early.
pub fn run_with_spans(
    cfg: SessionConfig,
    service: Option<String>,
    duration: Duration,
    thresholds: &Thresholds,
    spans: Option<SpanSource<'_>>,
    stop: &Stop<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<DiagnoseOutput, SessionError> {
    let interval = cfg.sample_interval;
    let given_name = service.clone();
    let names = crate::deps::DependencyNames::new(&cfg.dependencies);
    let Some(&first_pid) = cfg.pids.first() else {
        return Err(SessionError::NoPids);
    };
    let mut service = service.unwrap_or_else(|| default_service_name(&cfg.proc_root, first_pid));
    // For the rewrite report: the runtime while the processes surely live, memory at the end.
    let proc_root = cfg.proc_root.clone();
    let runtime = crate::runtime::detect(&proc_root, &cfg.pids);
    let memory_at_start = crate::runtime::resident_bytes(&proc_root, &cfg.pids);
    let mut session = Session::new(cfg)?;
    let wall_start = std::time::SystemTime::now();
    if let Some(src) = &spans {
        src.spans.pin(wall_start);
    }
    let start = Instant::now();
    let deadline = start + duration;
    session.step(start);
    let mut next = start + interval;
    let mut next_progress = start + Duration::from_secs(1);
    let mut now = start;
    // Why and when the window was closed early, if it was.
    let mut cut: Option<(&str, f64)> = None;
    while now < deadline && session.any_alive() {
        let wake = next.min(deadline);
        // Sleep in slices, looking at the stop condition between them.
        let cause = loop {
            let cause = (stop.requested)();
            match wake.checked_duration_since(Instant::now()) {
                Some(d) if cause.is_none() && !d.is_zero() => std::thread::sleep(d.min(STOP_POLL)),
                _ => break cause,
            }
        };
        now = Instant::now();
        if let Some(cause) = cause {
            let at = now.duration_since(start).as_secs_f64();
            let mut line = format!("stopping: finishing the window at {at:.0} s");
            if !stop.hint.is_empty() {
                line.push_str("; ");
                line.push_str(stop.hint);
            }
            progress(&line);
            // The window closes here, with the full last round of `finish`.
            cut = Some((cause, at));
            break;
        }
        next += interval;
        // After a stall (suspended agent, loaded host) skip the missed rounds instead of bursting.
        if next < now {
            next = now + interval;
        }
        if now >= deadline {
            break;
        }
        session.step(now);
        if now >= next_progress {
            next_progress += Duration::from_secs(1);
            let p = &session.progress;
            progress(&format!(
                "sampling {service}: {:.0}/{:.0}s, {} threads, {} inbound / {} outbound connections",
                now.duration_since(start).as_secs_f64(),
                duration.as_secs_f64(),
                p.threads,
                p.inbound,
                p.outbound
            ));
        }
    }
    let mut budget = session.finish(Instant::now());
    if let Some((cause, at)) = cut {
        budget.notes.push(format!(
            "window cut short by {cause} at {at:.1} s of {} s",
            (duration.as_secs_f64() * 10.0).round() / 10.0
        ));
    }
    let wall_end = std::time::SystemTime::now();
    let mut otlp = None;
    if let Some(src) = spans {
        let pids = session.pids();
        src.spans
            .wait_for(given_name.as_deref(), &pids, wall_end, src.flush_wait);
        let matched = src.spans.apply(
            &mut budget,
            given_name.as_deref(),
            &pids,
            wall_start,
            wall_end,
            &names,
        );
        // Without --service, the name the service gives itself beats its command name.
        if let (None, Some(m)) = (&given_name, matched) {
            service = m.service().to_string();
        }
        otlp = Some(src.spans.receiver.snapshot());
    }
    let mut d = diagnose(&service, &session.pids(), &budget, thresholds);
    d.runtime = runtime;
    d.memory_bytes =
        crate::runtime::resident_bytes(&proc_root, &session.pids()).or(memory_at_start);
    let mut agent = health(&session.errors);
    agent.otlp = otlp;
    Ok(DiagnoseOutput {
        services: vec![d],
        agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_pids_is_an_error_not_a_panic() {
        let out = run(
            SessionConfig::new(Vec::new()),
            None,
            Duration::from_secs(1),
            &Thresholds::default(),
            &mut |_| {},
        );
        assert!(matches!(out, Err(SessionError::NoPids)), "{out:?}");
    }

    #[test]
    fn a_stop_closes_the_window_within_a_round_and_says_so() {
        let start = Instant::now();
        let stop_at = Duration::from_millis(700);
        let requested = move || (start.elapsed() >= stop_at).then_some("a test");
        let mut lines = Vec::new();
        let out = run_with_spans(
            SessionConfig::new(vec![std::process::id()]),
            Some("self".into()),
            Duration::from_secs(60),
            &Thresholds::default(),
            None,
            &Stop {
                requested: &requested,
                hint: "again to abort",
            },
            &mut |l| lines.push(l.to_string()),
        )
        .expect("diagnose");
        assert!(start.elapsed() < Duration::from_secs(5), "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("stopping: finishing the window at ")
                    && l.ends_with(" s; again to abort")),
            "{lines:?}"
        );
        let d = &out.services[0];
        assert!(d.window_s >= 0.7 && d.window_s < 3.0, "{d:?}");
        assert!(
            d.evidence
                .iter()
                .any(|e| e.starts_with("window cut short by a test at ")
                    && e.ends_with(" s of 60 s")),
            "{:?}",
            d.evidence
        );
        // Nothing to serve, nothing to say.
        assert_eq!(d.verdict.as_str(), "insufficient_data");
    }
}
