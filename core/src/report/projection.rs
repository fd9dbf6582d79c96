//! One option projected into the report's ranges: latency, CPU per request, throughput,
//! instances, cores, memory and cost. The scenario model (`scenario`) gives three points
//! (optimistic, central, pessimistic); this widens them by the measurement's uncertainty and
//! counts what they cost, the same way for every option.

use super::baseline::Baseline;
use super::format::{dec, sig};
use super::model::{effort_weeks, Projection};
use super::options::{Action, Candidate};
use super::profiles::Profile;
use super::scenario::{Ctx, Point};
use super::{Range, ReportOptions};

pub(super) const HOURS_PER_MONTH: f64 = 730.0;

/// The option's projection; `benefit` and `value` are left at zero for the ranking, which needs
/// every option's projection (`recommend::score`).
pub(super) fn project(
    c: &Candidate,
    ctx: &Ctx,
    base: &Baseline,
    opts: &ReportOptions,
    current: &Profile,
) -> Projection {
    let u = base.uncertainty;
    let pts = [0, 1, 2].map(|j| ctx.point(&c.action, j));
    let (latency_ms, latency_change) = latency(&pts, base.l, u, &c.action);
    let cpu_ms = Range::sorted(
        sig(pts[0].s_ms * (1.0 - u), 3),
        sig(pts[1].s_ms, 3),
        sig(pts[2].s_ms * (1.0 + u), 3),
    );
    // The pessimistic scenario serves the least.
    let x = Range::sorted(
        sig(pts[2].throughput * (1.0 - u), 3),
        sig(pts[1].throughput, 3),
        sig(pts[0].throughput * (1.0 + u), 3),
    );
    let instances = instances(&x, base, &c.action);
    let cores = instances.map(|k| sig(k * base.ci, 3));
    let memory_mib = base.mem_i.map(|mib| memory(mib, c, current, u));
    let memory_total_mib = memory_mib.map(|r| Range {
        low: sig(r.low * instances.low, 3),
        central: sig(r.central * instances.central, 3),
        high: sig(r.high * instances.high, 3),
    });
    Projection {
        option: c.name.clone(),
        kind: c.kind.to_string(),
        title: c.title.clone(),
        effort_weeks: effort_weeks(c.kind),
        latency_ms,
        latency_change,
        components_ms: pts[1].comps.rounded(),
        cpu_ms_per_request: cpu_ms,
        throughput_per_instance: x,
        instances,
        cores,
        memory_mib,
        memory_total_mib,
        cost_per_month: cost(opts, &cores, memory_total_mib),
        benefit: 0.0,
        value: 0.0,
        notes: c.notes.clone(),
    }
}

fn widen_low(x: f64, u: f64) -> f64 {
    x - u * x.abs()
}

fn widen_high(x: f64, u: f64) -> f64 {
    x + u * x.abs()
}

/// Mean latency, and its change against the measured `l`. `current` is the measurement: its
/// change is zero by definition, whatever the scenario model's round trip gives.
fn latency(pts: &[Point; 3], l: f64, u: f64, action: &Action) -> (Range, Range) {
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
    (latency_ms, latency_change)
}

/// Instances for the planned load at each end of the throughput range (the most throughput, the
/// fewest instances); scaling out means at least one more than now.
fn instances(x: &Range, base: &Baseline, action: &Action) -> Range {
    let count = |thr: f64| {
        let needed = if thr > 0.0 && thr.is_finite() {
            (base.lambda_plan / thr - 1e-9).ceil().max(1.0)
        } else {
            1.0
        };
        if matches!(action, Action::ScaleOut) {
            (base.n + 1.0).max(needed)
        } else {
            needed
        }
    };
    Range::sorted(count(x.high), count(x.central), count(x.low))
}

/// Resident MiB per instance: only a rewrite (the target's runtime and heap) and GC tuning (a
/// larger heap) change it.
fn memory(mib: f64, c: &Candidate, current: &Profile, u: f64) -> Range {
    let mj = [0, 1, 2].map(|j| match (&c.action, c.target) {
        (Action::Rewrite { .. }, Some(t)) => rewrite_memory(mib, current, t, j),
        (Action::TuneGc { .. }, _) => tuned_memory(mib, current, j),
        _ => mib,
    });
    Range::sorted(
        sig(mj[0] * (1.0 - u), 3),
        sig(mj[1], 3),
        sig(mj[2] * (1.0 + u), 3),
    )
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

/// Cost a month of the cores and (when measured) resident memory, when a price was given.
fn cost(opts: &ReportOptions, cores: &Range, memory_total: Option<Range>) -> Option<Range> {
    if opts.price_core_hour.is_none() && opts.price_gib_hour.is_none() {
        return None;
    }
    let pc = opts.price_core_hour.unwrap_or(0.0);
    let pg = opts.price_gib_hour.unwrap_or(0.0);
    let at = |core_count: f64, mem_total: Option<f64>| {
        sig(
            (core_count * pc + mem_total.unwrap_or(0.0) / 1024.0 * pg) * HOURS_PER_MONTH,
            3,
        )
    };
    Some(Range::sorted(
        at(cores.low, memory_total.map(|r| r.low)),
        at(cores.central, memory_total.map(|r| r.central)),
        at(cores.high, memory_total.map(|r| r.high)),
    ))
}
