//! The one-shot `diagnose` command: sample a service's processes for a while, then run the
//! engine on what was gathered. No collector needed (embedded mode).

use std::time::{Duration, Instant};

use scalewise_collector::engine::{diagnose, Diagnosis, Thresholds};
use serde::Serialize;

use crate::session::{ErrorCounts, Session, SessionConfig, SessionError};

/// A whole `diagnose` run's output: the contract's `services`, plus the agent's own health.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub services: Vec<Diagnosis>,
    pub agent: AgentHealth,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentHealth {
    pub version: &'static str,
    /// Sampler errors by sampler and kind, as counted by `scalewise_agent_sampler_errors_total`.
    pub sampler_errors: Vec<SamplerErrors>,
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
) -> Result<Report, SessionError> {
    let interval = cfg.sample_interval;
    let service = service.unwrap_or_else(|| default_service_name(&cfg.proc_root, cfg.pids[0]));
    // For the rewrite report: the runtime while the processes surely live, memory at the end.
    let proc_root = cfg.proc_root.clone();
    let runtime = crate::runtime::detect(&proc_root, &cfg.pids);
    let memory_at_start = crate::runtime::resident_bytes(&proc_root, &cfg.pids);
    let mut session = Session::new(cfg)?;
    let start = Instant::now();
    let deadline = start + duration;
    session.step(start);
    let mut next = start + interval;
    let mut next_progress = start + Duration::from_secs(1);
    let mut now = start;
    while now < deadline && session.any_alive() {
        let wake = next.min(deadline);
        if let Some(d) = wake.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        now = Instant::now();
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
    let budget = session.finish(Instant::now());
    let mut d = diagnose(&service, &session.pids(), &budget, thresholds);
    d.runtime = runtime;
    d.memory_bytes =
        crate::runtime::resident_bytes(&proc_root, &session.pids()).or(memory_at_start);
    Ok(Report {
        services: vec![d],
        agent: health(&session.errors),
    })
}
