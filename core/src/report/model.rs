//! The projection: a diagnosis window in, options with ranges and a recommendation out.
//!
//! Per request (milliseconds): c (cpu), g (gc pauses), q (cpu_wait), d (downstream, per
//! dependency), w (local_wait); L = c+g+q+d+w. Each option changes some of them:
//! a rewrite multiplies CPU by the ratio of the profiles' factors and replaces GC pauses with the
//! target's; fixing a dependency scales its time; scaling out and growing a pool change the load
//! per server. Waiting for a CPU (q) and for a pool (w) is re-evaluated with Erlang C at the new
//! operating point, anchored to what was measured. Every option is computed three times
//! (optimistic, central, pessimistic factors), then widened by the measurement's uncertainty.

use serde::{Deserialize, Serialize};

use super::format::{dec, num, pct, sig, signed_pct};
use super::profiles::{GcKind, Profile, Profiles};
use super::queueing::{infer_pool, project_wait, wait, wait_fractional};
use super::{Range, ReportError, ReportOptions, Workload};
use crate::engine::{Diagnosis, Verdict};

pub const SCHEMA: &str = "scalewise.report.v1";
const HOURS_PER_MONTH: f64 = 730.0;
const MIB: f64 = 1024.0 * 1024.0;
/// Model utilisations are capped here: M/M/c is unbounded at 1 and measurements jitter past it.
const MAX_RHO: f64 = 0.98;
/// Options buying less than this (latency and capacity together) are not recommended.
const MIN_BENEFIT: f64 = 0.05;

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

    fn rounded(&self) -> Components {
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

/// What an option does to the measured request.
#[derive(Clone, Debug)]
enum Action {
    Current,
    Rewrite {
        /// CPU ratio target/current: optimistic, central, pessimistic.
        ratio: [f64; 3],
        /// Target's pause per CPU time (0 for no GC).
        pause: [f64; 3],
    },
    FixDependency {
        ms: f64,
    },
    ScaleOut,
    GrowPool,
    TuneGc {
        factor: [f64; 3],
    },
}

/// An option to project: name, kind, title, what it does, its notes, its target profile.
type Candidate<'a> = (
    String,
    &'static str,
    String,
    Action,
    Vec<String>,
    Option<&'a Profile>,
);

/// The measured state, per instance where it matters.
struct Ctx {
    l: f64,
    m: Components,
    lambda_i: f64,
    n: f64,
    ci: f64,
    s_ms: f64,
    s_gc_ms: f64,
    lambda_plan: f64,
    u_star: f64,
    rho_now: f64,
    pool: Option<u32>,
    /// The pool bounds throughput per instance only when in-process waiting is the largest part
    /// of request time: the inferred pool is the smallest consistent one, so it always looks
    /// nearly full, and only dominant waiting makes that believable.
    pool_bound: bool,
    dep_factor: f64,
}

#[derive(Clone, Copy, Debug)]
struct Point {
    comps: Components,
    s_ms: f64,
    throughput: f64,
}

fn cpu_wait_model(ci: f64, lambda_i: f64, s_ms: f64) -> f64 {
    let a = (lambda_i * s_ms / 1000.0).min(MAX_RHO * ci);
    wait_fractional(ci, a, s_ms)
}

fn pool_wait_model(m: u32, lambda_i: f64, hold_ms: f64) -> f64 {
    let a = (lambda_i * hold_ms / 1000.0).min(MAX_RHO * m as f64);
    wait(m, a, hold_ms)
}

impl Ctx {
    fn pool_mult(a: &Action) -> u32 {
        if matches!(a, Action::GrowPool) {
            2
        } else {
            1
        }
    }

    /// One scenario (0 optimistic, 1 central, 2 pessimistic) of an action.
    fn point(&self, a: &Action, j: usize) -> Point {
        let m = &self.m;
        let (ratio, g_new, s_new) = match a {
            Action::Rewrite { ratio, pause } => {
                (ratio[j], m.cpu * ratio[j] * pause[j], self.s_ms * ratio[j])
            }
            Action::TuneGc { factor } => (
                1.0,
                m.gc * factor[j],
                self.s_ms - self.s_gc_ms * (1.0 - factor[j]),
            ),
            _ => (1.0, m.gc, self.s_ms),
        };
        let c_new = m.cpu * ratio;
        let d_new = match a {
            Action::FixDependency { ms } => m.downstream - ms * (1.0 - self.dep_factor),
            _ => m.downstream,
        };
        let pool_new = self.pool.map(|p| p * Self::pool_mult(a));
        let cpu_now = cpu_wait_model(self.ci, self.lambda_i, self.s_ms);
        let q_at = |deploy: f64| {
            project_wait(
                m.cpu_wait,
                cpu_now,
                cpu_wait_model(self.ci, self.lambda_plan / deploy, s_new),
            )
        };
        // CPU first: throughput per instance at the target utilisation, and where it would run.
        let x_cpu = if s_new > 0.0 {
            self.u_star * self.ci * 1000.0 / s_new
        } else {
            f64::INFINITY
        };
        let needed_cpu = (self.lambda_plan / x_cpu - 1e-9).ceil().max(1.0);
        let rho_ok = |deploy: f64| {
            self.lambda_plan / deploy * s_new / 1000.0 / self.ci
                <= self.rho_now.max(self.u_star) + 1e-9
        };
        let deploy_cpu = match a {
            Action::ScaleOut => (self.n + 1.0).max(needed_cpu),
            _ if rho_ok(self.n) => self.n,
            _ => needed_cpu,
        };
        // Then the pool: a slot is held for the request's time outside the pool queue.
        let hold = c_new + g_new + q_at(deploy_cpu) + d_new;
        let x_pool = match pool_new {
            Some(p) if hold > 0.0 && self.pool_bound => {
                let util_now = self.lambda_i * (self.l - m.local_wait)
                    / 1000.0
                    / self.pool.unwrap_or(1) as f64;
                p as f64 * self.u_star.max(util_now.min(MAX_RHO)) * 1000.0 / hold
            }
            _ => f64::INFINITY,
        };
        let throughput = x_cpu.min(x_pool);
        let needed = (self.lambda_plan / throughput - 1e-9).ceil().max(1.0);
        let pool_ok = |deploy: f64| match pool_new {
            Some(p) if self.pool_bound => {
                self.lambda_plan / deploy * hold / 1000.0 < MAX_RHO * p as f64
            }
            _ => true,
        };
        let deploy = if pool_ok(deploy_cpu) {
            deploy_cpu
        } else {
            deploy_cpu.max(needed)
        };
        let lambda_new = self.lambda_plan / deploy;
        let q_new = q_at(deploy);
        let w_new = match (self.pool, pool_new) {
            (Some(p), Some(p_new)) => {
                let hold_now = self.l - m.local_wait;
                let hold_new = c_new + g_new + q_new + d_new;
                project_wait(
                    m.local_wait,
                    pool_wait_model(p, self.lambda_i, hold_now),
                    pool_wait_model(p_new, lambda_new, hold_new),
                )
            }
            _ => m.local_wait,
        };
        Point {
            comps: Components {
                cpu: c_new,
                gc: g_new,
                cpu_wait: q_new,
                downstream: d_new,
                local_wait: w_new,
            },
            s_ms: s_new,
            throughput,
        }
    }
}

/// The target's CPU over the current's, optimistic to pessimistic. The factors co-vary: a range's
/// low end is work where languages differ little (syscalls, drivers, memcpy), its high end work
/// where they differ most, so the ratio is taken at the same end for both, never crossed (a
/// crossed Python -> Go ratio would make Go slower than Python).
fn ratio_range(target: &Range, current: &Range) -> [f64; 3] {
    let at = [
        target.low / current.low,
        target.central / current.central,
        target.high / current.high,
    ];
    let lo = at.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = at.iter().copied().fold(0.0, f64::max);
    [lo, at[1], hi]
}

fn triple(r: &Range) -> [f64; 3] {
    [r.low, r.central, r.high]
}

/// Resident MiB after a rewrite from `from` to `to` (scenario j).
fn rewrite_memory(mib: f64, from: &Profile, to: &Profile, j: usize) -> f64 {
    let (ff, fh, tf, th) = match j {
        0 => (
            from.memory.runtime_mib.high,
            from.memory.heap_multiplier.high,
            to.memory.runtime_mib.low,
            to.memory.heap_multiplier.low,
        ),
        1 => (
            from.memory.runtime_mib.central,
            from.memory.heap_multiplier.central,
            to.memory.runtime_mib.central,
            to.memory.heap_multiplier.central,
        ),
        _ => (
            from.memory.runtime_mib.low,
            from.memory.heap_multiplier.low,
            to.memory.runtime_mib.high,
            to.memory.heap_multiplier.high,
        ),
    };
    tf + (mib - ff).max(0.0) / fh * th
}

/// Resident MiB after doubling the heap target: the heap's overhead above live data doubles.
fn tuned_memory(mib: f64, p: &Profile, j: usize) -> f64 {
    let (f, h) = match j {
        0 => (p.memory.runtime_mib.high, p.memory.heap_multiplier.low),
        1 => (
            p.memory.runtime_mib.central,
            p.memory.heap_multiplier.central,
        ),
        _ => (p.memory.runtime_mib.low, p.memory.heap_multiplier.high),
    };
    let heap = (mib - f).max(0.0);
    f.min(mib) + heap * (2.0 * h - 1.0) / h
}

fn widen_low(x: f64, u: f64) -> f64 {
    x - u * x.abs()
}

fn widen_high(x: f64, u: f64) -> f64 {
    x + u * x.abs()
}

/// Builds the report of one service.
pub fn build(d: &Diagnosis, opts: &ReportOptions) -> Result<Report, ReportError> {
    let builtin;
    let profiles: &Profiles = match &opts.profiles {
        Some(p) => p,
        None => {
            builtin = Profiles::builtin()?;
            &builtin
        }
    };
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

    // The current runtime.
    let (cur_name, version, source) = match (&opts.current, &d.runtime) {
        (Some(c), _) => (c.clone(), None, "given"),
        (None, Some(r)) => (r.name.clone(), r.version.clone(), "detected"),
        (None, None) => ("native".to_string(), None, "assumed"),
    };
    let current = profiles.require(&cur_name)?;
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

    // The measured request, in milliseconds.
    let l = d.requests.mean_latency_ms.max(0.0);
    let b = &d.breakdown;
    let m = Components {
        cpu: b.cpu * l,
        gc: b.gc * l,
        cpu_wait: b.cpu_wait * l,
        downstream: b.downstream * l,
        local_wait: b.local_wait * l,
    };
    let n = opts.instances.unwrap_or(1.0).max(1.0);
    let lambda = d.requests.rate_per_s.max(0.0);
    let cap = d.cpu.capacity_cores.max(0.0);
    let ci = cap / n;
    let used = d.cpu.used_cores.max(0.0);
    let gc_cores = d.gc_cpu_cores.unwrap_or(0.0).clamp(0.0, used);
    let (s_ms, s_gc_ms) = if lambda > 0.0 {
        (used / lambda * 1000.0, gc_cores / lambda * 1000.0)
    } else {
        (0.0, 0.0)
    };
    let rho_now = if cap > 0.0 {
        (used / cap).min(1.0)
    } else {
        0.0
    };
    let lambda_i = lambda / n;
    let mem_i = d.memory_bytes.map(|b| b as f64 / MIB / n);
    let lambda_plan = opts.peak_rps.unwrap_or(lambda);
    let dependencies: Vec<DependencyMs> = d
        .dependencies
        .iter()
        .map(|dep| DependencyMs {
            name: dep.name.clone().unwrap_or_else(|| dep.endpoint.clone()),
            endpoint: dep.endpoint.clone(),
            kind: dep.kind.clone(),
            ms: sig(dep.share * l, 3),
            share: dec(dep.share, 3),
        })
        .collect();
    let ceiling = if l > 0.0 {
        dec(b.cpu + b.gc + b.cpu_wait, 3)
    } else {
        0.0
    };

    // Pool: only when there is in-process waiting worth explaining.
    let hold_now = l - m.local_wait;
    // Pool: only when in-process waiting is a material share. Below that, the smallest pool that
    // explains it sits on the steep part of Erlang C and would turn noise into big projections.
    let pool = if l > 0.0 && m.local_wait >= 0.1 * l {
        infer_pool(lambda_i * hold_now / 1000.0, hold_now, m.local_wait)
    } else {
        None
    };
    let pool_material = pool.is_some();
    let waiting_dominates = b.local_wait >= (b.cpu + b.gc + b.cpu_wait).max(b.downstream);

    let confidence = d.confidence.clamp(0.0, 1.0);
    let window = d.window_s.max(0.0);
    let uncertainty = dec(
        (0.05 + 0.5 * (1.0 - confidence) + 0.25 * (10.0 / window.max(0.1)).min(1.0))
            .clamp(0.05, 0.8),
        3,
    );

    let measured = Measured {
        latency_ms: sig(l, 3),
        components_ms: m.rounded(),
        dependencies: dependencies.clone(),
        rate_per_s: sig(lambda, 3),
        used_cores: sig(used, 3),
        capacity_cores: sig(cap, 3),
        gc_cpu_cores: sig(gc_cores, 3),
        instances: n,
        cores_per_instance: sig(ci, 3),
        utilisation: dec(rho_now, 3),
        cpu_ms_per_request: sig(s_ms, 3),
        memory_mib: mem_i.map(|x| sig(x, 3)),
        pool_size: pool,
    };
    let plan = Plan {
        rate_per_s: sig(lambda_plan, 3),
        source: if opts.peak_rps.is_some() {
            "peak_rps"
        } else {
            "measured"
        }
        .to_string(),
        target_utilisation: opts.target_utilisation,
        workload: opts.workload,
        price_core_hour: opts.price_core_hour,
        price_gib_hour: opts.price_gib_hour,
    };
    let current_rt = CurrentRuntime {
        name: current.name.clone(),
        display: current.display.clone(),
        version,
        source: source.to_string(),
    };

    let mut assumptions = Vec::new();
    let insufficient = if d.verdict == Verdict::InsufficientData {
        Some("the diagnosis could not tell where request time goes (verdict insufficient_data)")
    } else if lambda <= 0.0 || l <= 0.0 {
        Some("no requests were measured")
    } else if cap <= 0.0 {
        Some("no CPU capacity was measured")
    } else {
        None
    };
    if let Some(reason) = insufficient {
        assumptions
            .push("Nothing is projected without enough data: no options, no ceiling.".to_string());
        let text = format!(
            "Not enough data to project a rewrite: {reason}. Diagnose longer under real traffic (this window: {} s, {} req/s).",
            num(dec(window, 2)),
            num(sig(lambda, 3))
        );
        return Ok(Report {
            schema: SCHEMA.to_string(),
            service: d.service.clone(),
            diagnosis_verdict: d.verdict.as_str().to_string(),
            confidence: d.confidence,
            window_s: d.window_s,
            current: current_rt,
            measured,
            plan,
            uncertainty,
            ceiling,
            ceiling_ms: sig(ceiling * l, 3),
            options: Vec::new(),
            recommendation: Recommendation {
                option: "none".to_string(),
                verdict: "insufficient_data".to_string(),
                text,
            },
            assumptions,
            evidence: d.evidence.clone(),
        });
    }

    let ctx = Ctx {
        l,
        m,
        lambda_i,
        n,
        ci,
        s_ms,
        s_gc_ms,
        lambda_plan,
        u_star: opts.target_utilisation,
        rho_now,
        pool,
        pool_bound: pool_material && waiting_dominates,
        dep_factor: opts.dependency_factor,
    };

    // The options considered, with their titles and notes.
    let factor_of = |p: &Profile| match opts.workload {
        Workload::Web => p.cpu.web,
        Workload::Compute => p.cpu.compute,
    };
    let mut actions: Vec<Candidate> = vec![(
        "current".to_string(),
        "current",
        format!("Current ({})", current.display),
        Action::Current,
        vec!["as measured".to_string()],
        None,
    )];
    for t in &target_profiles {
        let ratio = ratio_range(&factor_of(t), &factor_of(current));
        let pause = if t.gc.kind == GcKind::None {
            [0.0; 3]
        } else {
            triple(&t.gc.pause_ratio)
        };
        let mut notes = vec![format!(
            "CPU per request x{} ({}–{}): {} over {} factors, {} range",
            num(dec(ratio[1], 3)),
            num(dec(ratio[0], 3)),
            num(dec(ratio[2], 3)),
            t.display,
            current.display,
            match opts.workload {
                Workload::Web => "web-service",
                Workload::Compute => "compute-kernel",
            }
        )];
        notes.push(if t.gc.kind == GcKind::None {
            "no garbage collector: GC pauses go to zero".to_string()
        } else {
            format!(
                "GC pauses become {} of CPU time ({} model)",
                pct(dec(t.gc.pause_ratio.central, 4)),
                t.display
            )
        });
        actions.push((
            format!("rewrite:{}", t.name),
            "rewrite",
            format!("Rewrite in {}", t.display),
            Action::Rewrite { ratio, pause },
            notes,
            Some(t),
        ));
    }
    let named_deps: Vec<&DependencyMs> = dependencies
        .iter()
        .filter(|dep| dep.share >= 0.05)
        .take(3)
        .collect();
    for dep in &named_deps {
        actions.push((
            format!("fix_dependency:{}", dep.name),
            "fix_dependency",
            format!("Fix {} ({})", dep.name, dep.kind),
            Action::FixDependency {
                ms: dep.share * l,
            },
            vec![format!(
                "{}'s time per request x{} (a faster query, an index, a cache); the fix itself is not modelled",
                dep.name,
                num(opts.dependency_factor)
            )],
            None,
        ));
    }
    if named_deps.is_empty() && b.downstream >= 0.05 {
        actions.push((
            "fix_dependency:downstream".to_string(),
            "fix_dependency",
            "Fix the downstream calls".to_string(),
            Action::FixDependency { ms: m.downstream },
            vec![format!(
                "downstream time per request x{}",
                num(opts.dependency_factor)
            )],
            None,
        ));
    }
    actions.push((
        "scale_out".to_string(),
        "scale_out",
        "Scale out".to_string(),
        Action::ScaleOut,
        vec![
            "more instances of the same code: less CPU and pool queueing per instance".to_string(),
        ],
        None,
    ));
    if let Some(p) = pool {
        // Only when in-process waiting dominates and CPU has room: more workers on a busy or
        // starved CPU queue for the CPU instead (the pool model does not see that).
        if waiting_dominates && rho_now < opts.target_utilisation && b.cpu_wait < 0.1 {
            actions.push((
                "grow_pool".to_string(),
                "grow_pool",
                "Grow the pool".to_string(),
                Action::GrowPool,
                vec![format!(
                    "in-process pool of about {p} doubled to {}; more connections also load the dependency behind it",
                    p * 2
                )],
                None,
            ));
        }
    }
    let gc_material = b.gc >= 0.05 || (used > 0.0 && gc_cores / used >= 0.1);
    if let (GcKind::Tracing, Some(tf), true) =
        (current.gc.kind, &current.gc.tune_factor, gc_material)
    {
        actions.push((
            "tune_gc".to_string(),
            "tune_gc",
            "Tune the GC".to_string(),
            Action::TuneGc { factor: triple(tf) },
            vec![format!(
                "GC cost x{} ({}–{}) by doubling the heap target (GOGC / heap size): more memory",
                num(tf.central),
                num(tf.low),
                num(tf.high)
            )],
            None,
        ));
    }

    let u = uncertainty;
    let price_core = opts.price_core_hour;
    let price_gib = opts.price_gib_hour;
    let mut options: Vec<Projection> = Vec::new();
    for (name, kind, title, action, notes, target) in &actions {
        let pts = [0, 1, 2].map(|j| ctx.point(action, j));
        let lat = pts.map(|p| p.comps.total());
        let latency_ms = Range::sorted(
            sig(widen_low(lat[0], u), 3),
            sig(lat[1], 3),
            sig(widen_high(lat[2], u), 3),
        );
        let change = lat.map(|x| (x - l) / l);
        let latency_change = if matches!(action, Action::Current) {
            Range::exact(0.0)
        } else {
            Range::sorted(
                dec(widen_low(change[0], u), 3),
                dec(change[1], 3),
                dec(widen_high(change[2], u), 3),
            )
        };
        let cpu_ms = Range::sorted(
            sig(pts[0].s_ms * (1.0 - u), 3),
            sig(pts[1].s_ms, 3),
            sig(pts[2].s_ms * (1.0 + u), 3),
        );
        let x = Range::sorted(
            sig(pts[2].throughput * (1.0 - u), 3),
            sig(pts[1].throughput, 3),
            sig(pts[0].throughput * (1.0 + u), 3),
        );
        let count = |thr: f64| {
            let needed = if thr > 0.0 && thr.is_finite() {
                (lambda_plan / thr - 1e-9).ceil().max(1.0)
            } else {
                1.0
            };
            if matches!(action, Action::ScaleOut) {
                (n + 1.0).max(needed)
            } else {
                needed
            }
        };
        let instances = Range::sorted(count(x.high), count(x.central), count(x.low));
        let cores = instances.map(|k| sig(k * ci, 3));
        let memory_mib = mem_i.map(|mib| {
            let mj = [0, 1, 2].map(|j| match (action, target) {
                (Action::Rewrite { .. }, Some(t)) => rewrite_memory(mib, current, t, j),
                (Action::TuneGc { .. }, _) => tuned_memory(mib, current, j),
                _ => mib,
            });
            Range::sorted(
                sig(mj[0] * (1.0 - u), 3),
                sig(mj[1], 3),
                sig(mj[2] * (1.0 + u), 3),
            )
        });
        let memory_total_mib = memory_mib.map(|r| Range {
            low: sig(r.low * instances.low, 3),
            central: sig(r.central * instances.central, 3),
            high: sig(r.high * instances.high, 3),
        });
        let cost_per_month = if price_core.is_some() || price_gib.is_some() {
            let pc = price_core.unwrap_or(0.0);
            let pg = price_gib.unwrap_or(0.0);
            let at = |k: f64, core_count: f64, mem_total: Option<f64>| {
                let _ = k;
                sig(
                    (core_count * pc + mem_total.unwrap_or(0.0) / 1024.0 * pg) * HOURS_PER_MONTH,
                    3,
                )
            };
            Some(Range::sorted(
                at(instances.low, cores.low, memory_total_mib.map(|r| r.low)),
                at(
                    instances.central,
                    cores.central,
                    memory_total_mib.map(|r| r.central),
                ),
                at(instances.high, cores.high, memory_total_mib.map(|r| r.high)),
            ))
        } else {
            None
        };
        options.push(Projection {
            option: name.clone(),
            kind: kind.to_string(),
            title: title.clone(),
            effort_weeks: effort_weeks(kind),
            latency_ms,
            latency_change,
            components_ms: pts[1].comps.rounded(),
            cpu_ms_per_request: cpu_ms,
            throughput_per_instance: x,
            instances,
            cores,
            memory_mib,
            memory_total_mib,
            cost_per_month,
            benefit: 0.0,
            value: 0.0,
            notes: notes.clone(),
        });
    }

    // Benefit per unit of effort, against the current option.
    let cur = options[0].clone();
    for o in options.iter_mut().skip(1) {
        let gain = -o.latency_change.central;
        let capacity = match (&o.cost_per_month, &cur.cost_per_month) {
            (Some(c), Some(c0)) if c0.central > 0.0 => (c0.central - c.central) / c0.central,
            _ => {
                let inst = (cur.instances.central - o.instances.central) / cur.instances.central;
                let mem = match (&o.memory_total_mib, &cur.memory_total_mib) {
                    (Some(mm), Some(m0)) if m0.central > 0.0 => {
                        0.25 * (m0.central - mm.central) / m0.central
                    }
                    _ => 0.0,
                };
                inst + mem
            }
        };
        o.benefit = dec(gain + capacity, 3);
        o.value = if o.effort_weeks > 0.0 {
            dec(o.benefit / o.effort_weeks, 4)
        } else {
            0.0
        };
    }

    assumptions.push(format!(
        "Current runtime: {}{} ({}).",
        current.display,
        current_rt
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default(),
        match source {
            "detected" => "detected by the agent",
            "given" => "given with --current",
            _ => "not detected: assumed native code; give --current",
        }
    ));
    assumptions.push(format!(
        "CPU factors are the profiles' {} ranges (CPU time for the same work, Rust = 1); a rewrite scales on-CPU time by the target's factor over the current one's, and replaces GC pauses with the target's model.",
        match opts.workload {
            Workload::Web => "web-service",
            Workload::Compute => "compute-kernel",
        }
    ));
    assumptions.push(format!(
        "Throughput per instance is the request rate that keeps {} cores per instance {} busy{}; the capacity of dependencies is not modelled (a faster service sends the same queries).",
        num(measured.cores_per_instance),
        pct(opts.target_utilisation),
        if pool_material && waiting_dominates {
            format!(
                ", and keeps an in-process pool of about {} no busier",
                pool.unwrap_or(0)
            )
        } else {
            String::new()
        }
    ));
    assumptions.push(format!(
        "Instances are counted for {} req/s ({}) over {} measured instance(s).",
        num(plan.rate_per_s),
        if opts.peak_rps.is_some() {
            "the given peak"
        } else {
            "the measured load"
        },
        num(n)
    ));
    assumptions.push(match pool {
        Some(p) => format!(
            "Waiting for a CPU: Erlang C (M/M/c) on the cores per instance, anchored to the measured cpu_wait. Waiting in-process: Erlang C on a pool of about {p}, the smallest that explains the measured local_wait."
        ),
        None => "Waiting for a CPU: Erlang C (M/M/c) on the cores per instance, anchored to the measured cpu_wait. In-process waiting is too small to infer a pool and is kept as measured.".to_string(),
    });
    assumptions.push(format!(
        "Ranges: the profiles' low and high factors, widened by {} for a {} s window at confidence {}.",
        pct(uncertainty),
        num(dec(window, 2)),
        num(d.confidence)
    ));
    assumptions.push(match mem_i {
        Some(x) => format!(
            "Memory: resident = runtime size + live data x heap multiplier (per profile), from {} MiB per instance measured.",
            num(sig(x, 3))
        ),
        None => "Memory was not measured: memory and its cost are not projected.".to_string(),
    });
    if price_core.is_some() || price_gib.is_some() {
        assumptions.push(format!(
            "Cost: {} per core-hour and {} per GiB-hour of resident memory, {} hours a month.",
            num(price_core.unwrap_or(0.0)),
            num(price_gib.unwrap_or(0.0)),
            num(HOURS_PER_MONTH)
        ));
    }

    let recommendation = recommend(&options, &measured, &current_rt, ceiling, pool);
    Ok(Report {
        schema: SCHEMA.to_string(),
        service: d.service.clone(),
        diagnosis_verdict: d.verdict.as_str().to_string(),
        confidence: d.confidence,
        window_s: d.window_s,
        current: current_rt,
        measured,
        plan,
        uncertainty,
        ceiling,
        ceiling_ms: sig(ceiling * l, 3),
        options,
        recommendation,
        assumptions,
        evidence: d.evidence.clone(),
    })
}

fn inst(r: &Range) -> String {
    num(r.central)
}

/// "save no instance (1 needed either way)" or "need 9 instance(s) instead of 13".
fn instances_clause(option: &Range, current: &Range) -> String {
    if option.central == current.central {
        format!("save no instance ({} needed either way)", inst(current))
    } else {
        format!(
            "need {} instance(s) instead of {}",
            inst(option),
            inst(current)
        )
    }
}

fn recommend(
    options: &[Projection],
    measured: &Measured,
    current: &CurrentRuntime,
    ceiling: f64,
    pool: Option<u32>,
) -> Recommendation {
    let cur = &options[0];
    let best = options
        .iter()
        .skip(1)
        .filter(|o| o.benefit >= MIN_BENEFIT)
        .max_by(|a, b| a.value.total_cmp(&b.value));
    let best_rewrite = options
        .iter()
        .filter(|o| o.kind == "rewrite")
        .max_by(|a, b| a.value.total_cmp(&b.value));
    let rewrite_clause = |r: &Projection| {
        format!(
            "A {} would change mean latency by {} and {}",
            r.title.replacen("Rewrite", "rewrite", 1),
            signed_pct(r.latency_change.central),
            instances_clause(&r.instances, &cur.instances)
        )
    };
    let ceiling_clause = format!(
        "Even an infinitely fast rewrite saves at most {} of request time ({} ms of {} ms).",
        pct(ceiling),
        num(sig(ceiling * measured.latency_ms, 3)),
        num(measured.latency_ms)
    );
    let gain = |o: &Projection| pct(-o.latency_change.central);
    let latency_pair = |o: &Projection| {
        format!(
            "{} → {} ms",
            num(measured.latency_ms),
            num(o.latency_ms.central)
        )
    };
    let tail = match best_rewrite {
        Some(r) => format!("{}. {}", rewrite_clause(r), ceiling_clause),
        None => ceiling_clause.clone(),
    };
    let Some(best) = best else {
        return Recommendation {
            option: "current".to_string(),
            verdict: "do_not_rewrite".to_string(),
            text: format!(
                "Keep {} as it is: no option buys more than {} at this load. {}",
                current.display,
                pct(MIN_BENEFIT),
                tail
            ),
        };
    };
    let text = match best.kind.as_str() {
        "rewrite" => format!(
            "{} pays: {} → {} req/s per instance ({} → {} instances){}, mean latency {}. {}",
            best.title,
            num(cur.throughput_per_instance.central),
            num(best.throughput_per_instance.central),
            inst(&cur.instances),
            inst(&best.instances),
            match (&cur.memory_mib, &best.memory_mib) {
                (Some(a), Some(b)) => format!(
                    ", {} → {} MiB per instance",
                    num(a.central),
                    num(b.central)
                ),
                _ => String::new(),
            },
            signed_pct(best.latency_change.central),
            ceiling_clause
        ),
        "fix_dependency" => {
            let name = best.option.trim_start_matches("fix_dependency:");
            let share = measured
                .dependencies
                .iter()
                .find(|d| d.name == name)
                .map(|d| d.share)
                .unwrap_or(0.0);
            format!(
                "Do not rewrite: fix {name} first. Requests spend {} of their time waiting on it; halving that cuts mean latency by {} ({}). {}",
                pct(share),
                gain(best),
                latency_pair(best),
                tail
            )
        }
        "scale_out" => format!(
            "Do not rewrite yet: scale out. {} → {} instances cuts mean latency by {} ({}). {}",
            num(measured.instances),
            inst(&best.instances),
            gain(best),
            latency_pair(best),
            tail
        ),
        "grow_pool" => format!(
            "Do not rewrite: grow the worker/connection pool. Requests wait {} of their time in-process; doubling a pool of about {} cuts mean latency by {} ({}). {}",
            pct(dec(measured.components_ms.local_wait / measured.latency_ms, 3)),
            pool.unwrap_or(0),
            gain(best),
            latency_pair(best),
            tail
        ),
        "tune_gc" => format!(
            "Do not rewrite yet: tune the GC. Trading memory for it{} cuts mean latency by {} ({}) and {}. {}",
            match (&cur.memory_mib, &best.memory_mib) {
                (Some(a), Some(b)) => format!(
                    " ({} → {} MiB per instance)",
                    num(a.central),
                    num(b.central)
                ),
                _ => String::new(),
            },
            gain(best),
            latency_pair(best),
            instances_clause(&best.instances, &cur.instances),
            tail
        ),
        _ => tail.clone(),
    };
    Recommendation {
        option: best.option.clone(),
        verdict: if best.kind == "rewrite" {
            "rewrite"
        } else {
            "do_not_rewrite"
        }
        .to_string(),
        text,
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
