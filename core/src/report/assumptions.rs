//! The assumptions a report states: what it took as given (the runtime, the profiles' factors,
//! the load, the queueing and memory models, the prices), so a reader can disagree with an input
//! rather than with a result. Apart from the model because it is prose about it.

use super::baseline::Baseline;
use super::format::{dec, num, pct, sig};
use super::model::{CurrentRuntime, Measured, Plan};
use super::options::workload_ranges;
use super::projection::HOURS_PER_MONTH;
use super::ReportOptions;
use crate::engine::Diagnosis;

/// The assumptions of a report that projects options, in the order the report lists them.
pub(super) fn stated(
    d: &Diagnosis,
    opts: &ReportOptions,
    base: &Baseline,
    measured: &Measured,
    plan: &Plan,
    current: &CurrentRuntime,
) -> Vec<String> {
    let mut assumptions = Vec::new();
    if d.requests.mean_latency_ms.is_none() {
        assumptions.push("Mean latency was not measured (several requests at once on one connection, as HTTP/2 and gRPC carry them, or requests working in parallel): the comparison rests on the shares of request time, and every figure in milliseconds reads zero. Spans from the service would measure it.".to_string());
    }
    assumptions.push(format!(
        "Current runtime: {}{} ({}).",
        current.display,
        current
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default(),
        match current.source.as_str() {
            "detected" => "detected by the agent",
            "given" => "given with --current",
            _ => "not detected: assumed native code; give --current",
        }
    ));
    assumptions.push(format!(
        "CPU factors are the profiles' {} ranges (CPU time for the same work, Rust = 1); a rewrite scales on-CPU time by the target's factor over the current one's, and replaces GC pauses with the target's model.",
        workload_ranges(opts.workload)
    ));
    assumptions.push(format!(
        "Throughput per instance is the request rate that keeps {} cores per instance {} busy{}; the capacity of dependencies is not modelled (a faster service sends the same queries).",
        num(measured.cores_per_instance),
        pct(opts.target_utilisation),
        if base.pool_bound() {
            format!(
                ", and keeps an in-process pool of about {} no busier",
                base.pool.unwrap_or(0)
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
        num(base.n)
    ));
    assumptions.push(match base.pool {
        Some(p) => format!(
            "Waiting for a CPU: Erlang C (M/M/c) on the cores per instance, anchored to the measured cpu_wait. Waiting in-process: Erlang C on a pool of about {p}, the smallest that explains the measured local_wait."
        ),
        None => "Waiting for a CPU: Erlang C (M/M/c) on the cores per instance, anchored to the measured cpu_wait. In-process waiting is too small to infer a pool and is kept as measured.".to_string(),
    });
    assumptions.push(format!(
        "Ranges: the profiles' low and high factors, widened by {} for a {} s window at confidence {}.",
        pct(base.uncertainty),
        num(dec(base.window, 2)),
        num(d.confidence)
    ));
    assumptions.push(match base.mem_i {
        Some(x) => format!(
            "Memory: resident = runtime size + live data x heap multiplier (per profile), from {} MiB per instance measured.",
            num(sig(x, 3))
        ),
        None => "Memory was not measured: memory and its cost are not projected.".to_string(),
    });
    if opts.price_core_hour.is_some() || opts.price_gib_hour.is_some() {
        assumptions.push(format!(
            "Cost: {} per core-hour and {} per GiB-hour of resident memory, {} hours a month.",
            num(opts.price_core_hour.unwrap_or(0.0)),
            num(opts.price_gib_hour.unwrap_or(0.0)),
            num(HOURS_PER_MONTH)
        ));
    }
    assumptions
}
