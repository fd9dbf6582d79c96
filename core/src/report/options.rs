//! The options a report weighs against the current state: rewrites in each target runtime,
//! fixing a dependency, scaling out, growing a pool, tuning the GC. Each option says only what it
//! changes in the measured request ([`Action`]) and why it is on the list; projecting it is the
//! same for every option (`scenario`, `projection`). Each kind has its own function so its
//! conditions (when it is worth proposing at all) read in one place.

use super::baseline::Baseline;
use super::format::{dec, num, pct};
use super::model::DependencyMs;
use super::profiles::{GcKind, Profile};
use super::{Range, ReportOptions, Workload};

/// What an option does to the measured request.
#[derive(Clone, Debug)]
pub(super) enum Action {
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

/// An option to project.
pub(super) struct Candidate<'a> {
    /// `current`, `rewrite:<target>`, `fix_dependency:<name>`, `scale_out`, ...
    pub(super) name: String,
    pub(super) kind: &'static str,
    pub(super) title: String,
    pub(super) action: Action,
    pub(super) notes: Vec<String>,
    /// A rewrite's target profile (for its memory model).
    pub(super) target: Option<&'a Profile>,
}

/// Every option worth projecting, `current` first (the others are measured against it), in the
/// order the report lists them.
pub(super) fn candidates<'a>(
    opts: &ReportOptions,
    base: &Baseline,
    current: &Profile,
    targets: &[&'a Profile],
) -> Vec<Candidate<'a>> {
    let mut all = vec![current_state(current)];
    all.extend(targets.iter().map(|t| rewrite(opts, current, t)));
    all.extend(fix_dependencies(opts, base));
    all.push(scale_out());
    all.extend(grow_pool(opts, base));
    all.extend(tune_gc(base, current));
    all
}

/// The profile's range name for the workload, as the notes and assumptions say it.
pub(super) fn workload_ranges(workload: Workload) -> &'static str {
    match workload {
        Workload::Web => "web-service",
        Workload::Compute => "compute-kernel",
    }
}

fn current_state<'a>(current: &Profile) -> Candidate<'a> {
    Candidate {
        name: "current".to_string(),
        kind: "current",
        title: format!("Current ({})", current.display),
        action: Action::Current,
        notes: vec!["as measured".to_string()],
        target: None,
    }
}

fn rewrite<'a>(opts: &ReportOptions, current: &Profile, t: &'a Profile) -> Candidate<'a> {
    let factor_of = |p: &Profile| match opts.workload {
        Workload::Web => p.cpu.web,
        Workload::Compute => p.cpu.compute,
    };
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
        workload_ranges(opts.workload)
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
    Candidate {
        name: format!("rewrite:{}", t.name),
        kind: "rewrite",
        title: format!("Rewrite in {}", t.display),
        action: Action::Rewrite { ratio, pause },
        notes,
        target: Some(t),
    }
}

/// The three largest dependencies of at least 5% of request time, each its own option; when
/// none is that large alone but downstream time together is, one option for all of it.
fn fix_dependencies<'a>(opts: &ReportOptions, base: &Baseline) -> Vec<Candidate<'a>> {
    let named_deps: Vec<&DependencyMs> = base
        .dependencies
        .iter()
        .filter(|dep| dep.share >= 0.05)
        .take(3)
        .collect();
    let mut out: Vec<Candidate> = named_deps
        .iter()
        .map(|dep| Candidate {
            name: format!("fix_dependency:{}", dep.name),
            kind: "fix_dependency",
            title: format!("Fix {} ({})", dep.name, dep.kind),
            action: Action::FixDependency {
                ms: dep.share * base.l,
            },
            notes: vec![format!(
                "{}'s time per request x{} (a faster query, an index, a cache); the fix itself is not modelled",
                dep.name,
                num(opts.dependency_factor)
            )],
            target: None,
        })
        .collect();
    if named_deps.is_empty() && base.shares.downstream >= 0.05 {
        out.push(Candidate {
            name: "fix_dependency:downstream".to_string(),
            kind: "fix_dependency",
            title: "Fix the downstream calls".to_string(),
            action: Action::FixDependency {
                ms: base.m.downstream,
            },
            notes: vec![format!(
                "downstream time per request x{}",
                num(opts.dependency_factor)
            )],
            target: None,
        });
    }
    out
}

/// Always proposed: more instances of the same code are always possible, so the report always
/// says what they would buy.
fn scale_out<'a>() -> Candidate<'a> {
    Candidate {
        name: "scale_out".to_string(),
        kind: "scale_out",
        title: "Scale out".to_string(),
        action: Action::ScaleOut,
        notes: vec![
            "more instances of the same code: less CPU and pool queueing per instance".to_string(),
        ],
        target: None,
    }
}

fn grow_pool<'a>(opts: &ReportOptions, base: &Baseline) -> Option<Candidate<'a>> {
    let p = base.pool?;
    // Only when in-process waiting dominates and CPU has room: more workers on a busy or
    // starved CPU queue for the CPU instead (the pool model does not see that).
    let room = base.rho_now < opts.target_utilisation && base.shares.cpu_wait < 0.1;
    (base.waiting_dominates && room).then(|| Candidate {
        name: "grow_pool".to_string(),
        kind: "grow_pool",
        title: "Grow the pool".to_string(),
        action: Action::GrowPool,
        notes: vec![format!(
            "in-process pool of about {p} doubled to {}; more connections also load the dependency behind it",
            p * 2
        )],
        target: None,
    })
}

/// Only for a tracing GC with a tuning model, and only when GC is a material cost.
fn tune_gc<'a>(base: &Baseline, current: &Profile) -> Option<Candidate<'a>> {
    let b = &base.shares;
    let gc_material = b.gc >= 0.05 || (base.used > 0.0 && base.gc_cores / base.used >= 0.1);
    let (GcKind::Tracing, Some(tf), true) = (current.gc.kind, &current.gc.tune_factor, gc_material)
    else {
        return None;
    };
    Some(Candidate {
        name: "tune_gc".to_string(),
        kind: "tune_gc",
        title: "Tune the GC".to_string(),
        action: Action::TuneGc { factor: triple(tf) },
        notes: vec![format!(
            "GC cost x{} ({}–{}) by doubling the heap target (GOGC / heap size): more memory",
            num(tf.central),
            num(tf.low),
            num(tf.high)
        )],
        target: None,
    })
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
