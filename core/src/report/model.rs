//! The projection: a diagnosis window in, options with ranges and a recommendation out.
//!
//! Per request (milliseconds): c (cpu), g (gc pauses), q (cpu_wait), d (downstream, per
//! dependency), w (local_wait); L = c+g+q+d+w. Each option changes some of them:
//! a rewrite multiplies CPU by the ratio of the profiles' factors and replaces GC pauses with the
//! target's; fixing a dependency scales its time; scaling out and growing a pool change the load
//! per server. Waiting for a CPU (q) and for a pool (w) is re-evaluated with Erlang C at the new
//! operating point, anchored to what was measured. Every option is computed three times
//! (optimistic, central, pessimistic factors), then widened by the measurement's uncertainty.
//!
//! This module holds the report's types (the JSON contract the renderers print) and [`build`],
//! which composes the steps; each step lives in its own private module so it reads alone.

use serde::{Deserialize, Serialize};

use super::assumptions;
use super::baseline::Baseline;
use super::format::{dec, num, sig};
use super::options;
use super::profiles::{Profile, Profiles};
use super::projection::project;
// The unit tests (`model_tests.rs`, `use super::*`) check inferred pools against Erlang C.
#[cfg(test)]
use super::queueing::wait;
use super::recommend::{recommend, score};
use super::scenario::Ctx;
use super::{Range, ReportError, ReportOptions, Workload};
use crate::engine::{Diagnosis, Verdict};

pub const SCHEMA: &str = "scalewise.report.v1";

/// Rough effort of each kind of option, in engineer-weeks (documented in docs/report.md): what the
/// recommendation divides benefit by.
pub fn effort_weeks(kind: &str) -> f64 {
    match kind {
        "tune_gc" | "grow_pool" | "scale_out" => 1.0,
        "fix_dependency" => 4.0,
        "rewrite" => 26.0,
        _ => 0.0,
    }
}

/// The report model: what the JSON format is, and all the HTML and Markdown print.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub service: String,
    /// The diagnosis' verdict (`scale_up`, `scale_out`, `dependency`, `insufficient_data`).
    pub diagnosis_verdict: String,
    pub confidence: f64,
    pub window_s: f64,
    pub current: CurrentRuntime,
    pub measured: Measured,
    pub plan: Plan,
    /// Relative widening applied to every range for the window length and confidence.
    pub uncertainty: f64,
    /// (c+g+q)/L: the most any rewrite can save, as a fraction of mean latency.
    pub ceiling: f64,
    pub ceiling_ms: f64,
    /// `current` first, then every option considered.
    pub options: Vec<Projection>,
    pub recommendation: Recommendation,
    pub assumptions: Vec<String>,
    /// The diagnosis' evidence, unchanged.
    pub evidence: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurrentRuntime {
    pub name: String,
    pub display: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `detected` (by the agent), `given` (`--current`) or `assumed` (nothing known: native).
    pub source: String,
}

/// Where a request's time goes, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Components {
    pub cpu: f64,
    pub gc: f64,
    pub cpu_wait: f64,
    pub downstream: f64,
    pub local_wait: f64,
}

impl Components {
    pub fn total(&self) -> f64 {
        self.cpu + self.gc + self.cpu_wait + self.downstream + self.local_wait
    }

    pub(super) fn rounded(&self) -> Components {
        Components {
            cpu: sig(self.cpu, 3),
            gc: sig(self.gc, 3),
            cpu_wait: sig(self.cpu_wait, 3),
            downstream: sig(self.downstream, 3),
            local_wait: sig(self.local_wait, 3),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DependencyMs {
    /// The user's name for it, else its endpoint.
    pub name: String,
    pub endpoint: String,
    pub kind: String,
    pub ms: f64,
    pub share: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub latency_ms: f64,
    pub components_ms: Components,
    pub dependencies: Vec<DependencyMs>,
    pub rate_per_s: f64,
    pub used_cores: f64,
    pub capacity_cores: f64,
    pub gc_cpu_cores: f64,
    pub instances: f64,
    pub cores_per_instance: f64,
    pub utilisation: f64,
    /// Core-milliseconds of CPU per request (all threads, GC included).
    pub cpu_ms_per_request: f64,
    /// Resident memory per instance, MiB; absent when not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<f64>,
    /// The smallest worker/connection pool that explains the measured in-process waiting
    /// (Erlang C); absent when there is too little waiting to tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The load instances are counted for.
    pub rate_per_s: f64,
    /// `measured` or `peak_rps`.
    pub source: String,
    pub target_utilisation: f64,
    pub workload: Workload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_core_hour: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_gib_hour: Option<f64>,
}

/// One option's projection. Ranges are numeric: `low` is the smallest number, whichever is good.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// `current`, `rewrite:<target>`, `fix_dependency:<name>`, `scale_out`, `grow_pool`, `tune_gc`.
    pub option: String,
    pub kind: String,
    /// A short human title.
    pub title: String,
    pub effort_weeks: f64,
    pub latency_ms: Range,
    /// Relative to the measured mean latency (negative = faster).
    pub latency_change: Range,
    /// Central projection of where a request's time would go.
    pub components_ms: Components,
    pub cpu_ms_per_request: Range,
    /// Requests per second one instance serves at the target utilisation.
    pub throughput_per_instance: Range,
    /// Instances for the planned load.
    pub instances: Range,
    pub cores: Range,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<Range>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_total_mib: Option<Range>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_per_month: Option<Range>,
    /// Latency gain + capacity saving (fractions), central.
    pub benefit: f64,
    /// Benefit per engineer-week of effort: what the recommendation ranks by.
    pub value: f64,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// The recommended option's name (`current` when nothing pays, `none` without data).
    pub option: String,
    /// `rewrite`, `do_not_rewrite` or `insufficient_data`.
    pub verdict: String,
    /// One plain sentence (or two) with the numbers.
    pub text: String,
}

/// Builds the report of one service.
///
/// The steps, each in its own module: the measurement in the report's units (`baseline`), the
/// options worth weighing (`options`), each projected through the queueing model (`scenario`,
/// `projection`), ranked against the current state and turned into a recommendation
/// (`recommend`), with the assumptions stated (`assumptions`).
pub fn build(d: &Diagnosis, opts: &ReportOptions) -> Result<Report, ReportError> {
    let builtin;
    let profiles: &Profiles = match &opts.profiles {
        Some(p) => p,
        None => {
            builtin = Profiles::builtin()?;
            &builtin
        }
    };
    check(opts)?;
    let (current, current_rt) = current_runtime(d, opts, profiles)?;
    let targets = target_profiles(opts, profiles, current)?;

    let base = Baseline::of(d, opts);
    let measured = base.measured();
    let plan = base.plan(opts);
    if let Some(reason) = insufficient(d, &base) {
        return Ok(without_options(
            d, &base, current_rt, measured, plan, reason,
        ));
    }

    let ctx = Ctx::new(&base, opts);
    let mut options: Vec<Projection> = options::candidates(opts, &base, current, &targets)
        .iter()
        .map(|c| project(c, &ctx, &base, opts, current))
        .collect();
    score(&mut options);
    let assumptions = assumptions::stated(d, opts, &base, &measured, &plan, &current_rt);
    let recommendation = recommend(&options, &measured, &current_rt, base.ceiling, base.pool);
    Ok(Report {
        schema: SCHEMA.to_string(),
        service: d.service.clone(),
        diagnosis_verdict: d.verdict.as_str().to_string(),
        confidence: d.confidence,
        window_s: d.window_s,
        current: current_rt,
        measured,
        plan,
        uncertainty: base.uncertainty,
        ceiling: base.ceiling,
        ceiling_ms: sig(base.ceiling * base.l, 3),
        options,
        recommendation,
        assumptions,
        evidence: d.evidence.clone(),
    })
}

/// Rejects options the model has no answer for, before anything is computed.
fn check(opts: &ReportOptions) -> Result<(), ReportError> {
    if !(opts.target_utilisation > 0.0 && opts.target_utilisation <= 1.0) {
        return Err(ReportError::Option(format!(
            "target utilisation must be in (0, 1], got {}",
            opts.target_utilisation
        )));
    }
    if !(opts.dependency_factor >= 0.0 && opts.dependency_factor < 1.0) {
        return Err(ReportError::Option(format!(
            "dependency factor must be in [0, 1), got {}",
            opts.dependency_factor
        )));
    }
    for (what, v) in [
        ("peak rps", opts.peak_rps),
        ("instances", opts.instances),
        ("price per core-hour", opts.price_core_hour),
        ("price per GiB-hour", opts.price_gib_hour),
    ] {
        if let Some(v) = v {
            if !(v.is_finite() && v >= 0.0) || (what == "instances" && v < 1.0) {
                return Err(ReportError::Option(format!(
                    "{what} must be a positive number, got {v}"
                )));
            }
        }
    }
    Ok(())
}

/// The current runtime's profile, and how the report names it: `--current` wins over what the
/// agent detected; with neither, native code is assumed (and said).
fn current_runtime<'p>(
    d: &Diagnosis,
    opts: &ReportOptions,
    profiles: &'p Profiles,
) -> Result<(&'p Profile, CurrentRuntime), ReportError> {
    let (cur_name, version, source) = match (&opts.current, &d.runtime) {
        (Some(c), _) => (c.clone(), None, "given"),
        (None, Some(r)) => (r.name.clone(), r.version.clone(), "detected"),
        (None, None) => ("native".to_string(), None, "assumed"),
    };
    let current = profiles.require(&cur_name)?;
    let rt = CurrentRuntime {
        name: current.name.clone(),
        display: current.display.clone(),
        version,
        source: source.to_string(),
    };
    Ok((current, rt))
}

/// The rewrite targets, each once and never the current runtime itself.
fn target_profiles<'p>(
    opts: &ReportOptions,
    profiles: &'p Profiles,
    current: &Profile,
) -> Result<Vec<&'p Profile>, ReportError> {
    let targets: Vec<String> = if opts.targets.is_empty() {
        profiles.default_targets()
    } else {
        opts.targets.clone()
    };
    let mut target_profiles = Vec::new();
    for t in &targets {
        let p = profiles.require(t)?;
        if p.name != current.name && !target_profiles.iter().any(|q: &&Profile| q.name == p.name) {
            target_profiles.push(p);
        }
    }
    Ok(target_profiles)
}

/// Why nothing can be projected, if so: projecting from a window without requests or capacity
/// would print confident numbers about nothing.
fn insufficient(d: &Diagnosis, base: &Baseline) -> Option<&'static str> {
    if d.verdict == Verdict::InsufficientData {
        Some("the diagnosis could not tell where request time goes (verdict insufficient_data)")
    } else if base.lambda <= 0.0 || base.l <= 0.0 {
        Some("no requests were measured")
    } else if base.cap <= 0.0 {
        Some("no CPU capacity was measured")
    } else {
        None
    }
}

/// The report without options: the measurement, and why nothing was projected.
fn without_options(
    d: &Diagnosis,
    base: &Baseline,
    current: CurrentRuntime,
    measured: Measured,
    plan: Plan,
    reason: &str,
) -> Report {
    let text = format!(
        "Not enough data to project a rewrite: {reason}. Diagnose longer under real traffic (this window: {} s, {} req/s).",
        num(dec(base.window, 2)),
        num(sig(base.lambda, 3))
    );
    Report {
        schema: SCHEMA.to_string(),
        service: d.service.clone(),
        diagnosis_verdict: d.verdict.as_str().to_string(),
        confidence: d.confidence,
        window_s: d.window_s,
        current,
        measured,
        plan,
        uncertainty: base.uncertainty,
        ceiling: base.ceiling,
        ceiling_ms: sig(base.ceiling * base.l, 3),
        options: Vec::new(),
        recommendation: Recommendation {
            option: "none".to_string(),
            verdict: "insufficient_data".to_string(),
            text,
        },
        assumptions: vec![
            "Nothing is projected without enough data: no options, no ceiling.".to_string(),
        ],
        evidence: d.evidence.clone(),
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
