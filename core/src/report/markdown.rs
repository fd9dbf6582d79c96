//! The report as Markdown, for a design doc or a pull request: the verdict line, the ceiling, a
//! table of the options, the assumptions. Prints the model's numbers, computes none.

use std::fmt::Write;

use super::format::{num, pct, pct_range, range};
use super::model::Report;

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn opt_range(r: &Option<super::Range>, unit: &str) -> String {
    r.as_ref()
        .map(|r| range(r, unit))
        .unwrap_or_else(|| "–".to_string())
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Should we rewrite `{}`?\n", cell(&r.service));
    let _ = writeln!(o, "**Verdict:** {}\n", r.recommendation.text);
    let m = &r.measured;
    let _ = writeln!(
        o,
        "Current runtime: {}{} ({}). Diagnosis: `{}`, confidence {}, over a {} s window: {} req/s on {} cores ({} busy), mean latency {} ms{}.\n",
        r.current.display,
        r.current
            .version
            .as_deref()
            .map(|v| format!(" {v}"))
            .unwrap_or_default(),
        r.current.source,
        r.diagnosis_verdict,
        pct(r.confidence),
        num(r.window_s),
        num(m.rate_per_s),
        num(m.capacity_cores),
        pct(m.utilisation),
        num(m.latency_ms),
        m.memory_mib
            .map(|x| format!(", {} MiB resident per instance", num(x)))
            .unwrap_or_default()
    );
    if !r.options.is_empty() {
        let _ = writeln!(
        o,
        "**Ceiling:** even an infinitely fast rewrite saves at most {} of request time ({} ms of {} ms).\n",
        pct(r.ceiling),
        num(r.ceiling_ms),
        num(m.latency_ms)
    );
    }
    if r.options.is_empty() {
        let _ = writeln!(o, "No options are projected without enough data.\n");
    } else {
        let _ = writeln!(
            o,
            "## Options\n\nCentral value (low–high). Instances for {} req/s at {} CPU per instance.\n",
            num(r.plan.rate_per_s),
            pct(r.plan.target_utilisation)
        );
        let _ = writeln!(
            o,
            "| option | mean latency | change | throughput per instance | instances | memory per instance | cost per month | effort (weeks) |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
        for p in &r.options {
            let mark = if p.option == r.recommendation.option {
                " **(recommended)**"
            } else {
                ""
            };
            let _ = writeln!(
                o,
                "| `{}`{} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&p.option),
                mark,
                range(&p.latency_ms, "ms"),
                pct_range(&p.latency_change),
                range(&p.throughput_per_instance, "req/s"),
                range(&p.instances, ""),
                opt_range(&p.memory_mib, "MiB"),
                opt_range(&p.cost_per_month, ""),
                num(p.effort_weeks)
            );
        }
        let _ = writeln!(o, "\n## Where a request's time would go (ms, central)\n");
        let _ = writeln!(
            o,
            "| option | cpu | gc | cpu_wait | downstream | local_wait |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for p in &r.options {
            let c = &p.components_ms;
            let _ = writeln!(
                o,
                "| `{}` | {} | {} | {} | {} | {} |",
                cell(&p.option),
                num(c.cpu),
                num(c.gc),
                num(c.cpu_wait),
                num(c.downstream),
                num(c.local_wait)
            );
        }
        let _ = writeln!(o, "\n### What each option assumes\n");
        for p in &r.options {
            let _ = writeln!(o, "- `{}`: {}", cell(&p.option), p.notes.join("; "));
        }
    }
    let _ = writeln!(o, "\n## Assumptions\n");
    for a in &r.assumptions {
        let _ = writeln!(o, "- {a}");
    }
    let _ = writeln!(o, "\n## Evidence ({} s window)\n", num(r.window_s));
    for e in &r.evidence {
        let _ = writeln!(o, "- {e}");
    }
    o
}
