//! The ranking and the recommendation: benefit per week of effort against `current`, and one
//! plain sentence with the numbers. Apart from the projections because ranking needs all of them
//! at once, and the sentence depends on which kind of option won.

use super::format::{dec, num, pct, sig, signed_pct};
use super::model::{CurrentRuntime, Measured, Projection, Recommendation};
use super::Range;

/// Options buying less than this (latency and capacity together) are not recommended.
const MIN_BENEFIT: f64 = 0.05;

/// Each option's benefit against the current option (the first) and its value, the benefit per
/// week of effort that the recommendation ranks by.
pub(super) fn score(options: &mut [Projection]) {
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

/// The recommendation: of the options worth having at all, the one with the most value; the
/// current code when none is worth it.
pub(super) fn recommend(
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
    let ceiling_clause = format!(
        "Even an infinitely fast rewrite saves at most {} of request time ({} ms of {} ms).",
        pct(ceiling),
        num(sig(ceiling * measured.latency_ms, 3)),
        num(measured.latency_ms)
    );
    // Unless a rewrite is recommended (its sentence then says what it buys), the sentence ends
    // with what the best rewrite would do and the ceiling: the report answers "should we
    // rewrite?" whatever wins.
    let tail = match best_rewrite {
        Some(r) => format!("{}. {}", rewrite_clause(r, cur), ceiling_clause),
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
    let clauses = Clauses {
        ceiling: &ceiling_clause,
        tail: &tail,
    };
    Recommendation {
        option: best.option.clone(),
        verdict: if best.kind == "rewrite" {
            "rewrite"
        } else {
            "do_not_rewrite"
        }
        .to_string(),
        text: sentence(best, cur, measured, pool, &clauses),
    }
}

/// The closing clauses every sentence ends with.
struct Clauses<'a> {
    /// What an infinitely fast rewrite would save.
    ceiling: &'a str,
    /// The best rewrite's effect (if any rewrite was considered), then the ceiling.
    tail: &'a str,
}

fn rewrite_clause(r: &Projection, cur: &Projection) -> String {
    format!(
        "A {} would change mean latency by {} and {}",
        r.title.replacen("Rewrite", "rewrite", 1),
        signed_pct(r.latency_change.central),
        instances_clause(&r.instances, &cur.instances)
    )
}

fn gain(o: &Projection) -> String {
    pct(-o.latency_change.central)
}

fn latency_pair(measured: &Measured, o: &Projection) -> String {
    format!(
        "{} → {} ms",
        num(measured.latency_ms),
        num(o.latency_ms.central)
    )
}

/// The recommendation's sentence, one per kind of option: each says what to do and what it buys
/// in the numbers that matter for that kind.
fn sentence(
    best: &Projection,
    cur: &Projection,
    measured: &Measured,
    pool: Option<u32>,
    clauses: &Clauses,
) -> String {
    let tail = clauses.tail;
    match best.kind.as_str() {
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
            clauses.ceiling
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
                latency_pair(measured, best),
                tail
            )
        }
        "scale_out" => format!(
            "Do not rewrite yet: scale out. {} → {} instances cuts mean latency by {} ({}). {}",
            num(measured.instances),
            inst(&best.instances),
            gain(best),
            latency_pair(measured, best),
            tail
        ),
        "grow_pool" => format!(
            "Do not rewrite: grow the worker/connection pool. Requests wait {} of their time in-process; doubling a pool of about {} cuts mean latency by {} ({}). {}",
            pct(dec(measured.components_ms.local_wait / measured.latency_ms, 3)),
            pool.unwrap_or(0),
            gain(best),
            latency_pair(measured, best),
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
            latency_pair(measured, best),
            instances_clause(&best.instances, &cur.instances),
            tail
        ),
        _ => tail.to_string(),
    }
}
