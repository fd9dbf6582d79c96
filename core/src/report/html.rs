//! The report as one self-contained HTML page: inline CSS and SVG, no scripts, no external fonts
//! or images, readable printed. Prints the model's numbers, computes none (bar widths are the
//! model's milliseconds scaled to the page).

use std::fmt::Write;

use super::format::{num, pct, pct_range, range};
use super::model::{Components, Report};
use super::Range;

/// The components in bar order, with their colours (ColorBrewer Dark2, readable in greyscale
/// print by their order and labels).
const PARTS: [(&str, &str, &str); 5] = [
    ("cpu", "on CPU", "#d95f02"),
    ("gc", "GC pauses", "#7570b3"),
    ("cpu_wait", "waiting for a CPU", "#e7298a"),
    ("downstream", "waiting on dependencies", "#1b9e77"),
    ("local_wait", "waiting in-process", "#a6761d"),
];

fn part(c: &Components, key: &str) -> f64 {
    match key {
        "cpu" => c.cpu,
        "gc" => c.gc,
        "cpu_wait" => c.cpu_wait,
        "downstream" => c.downstream,
        _ => c.local_wait,
    }
}

/// Escapes text for HTML content and attribute values.
pub use crate::text::escape_html as esc;

const CSS: &str = r#"
:root { --ink: #1d232b; --muted: #5b6573; --rule: #d8dde3; --bg: #ffffff; --panel: #f5f7f9;
  --good: #1b7f4d; --bad: #b3261e; --warn: #8a5a00; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 32px 40px; }
.kicker { margin: 0; color: var(--muted); font-size: 13px; letter-spacing: .08em; text-transform: uppercase; }
h1 { margin: 4px 0 18px; font-size: 28px; line-height: 1.2; }
h2 { margin: 30px 0 10px; font-size: 19px; border-bottom: 1px solid var(--rule); padding-bottom: 4px; }
code { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: .92em; }
.verdict { border-left: 6px solid var(--bad); background: var(--panel); padding: 14px 18px; border-radius: 4px; }
.verdict.rewrite { border-color: var(--good); }
.verdict.insufficient_data { border-color: var(--warn); }
.verdict .label { margin: 0 0 6px; font-weight: 700; font-size: 20px; }
.verdict .label code { font-size: 14px; font-weight: 400; color: var(--muted); }
.pill { display: inline-block; color: #fff; background: var(--bad); border-radius: 4px; padding: 1px 9px; margin-right: 6px; font-size: 16px; vertical-align: 2px; }
.rewrite .pill { background: var(--good); }
.insufficient_data .pill { background: var(--warn); }
.verdict .text { margin: 0; font-size: 16px; }
.facts { display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px 18px; margin: 18px 0 0; }
.facts div { background: var(--panel); border-radius: 4px; padding: 8px 12px; }
.facts dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
.facts dd { margin: 2px 0 0; font-weight: 600; }
.ceiling { margin: 16px 0 0; padding: 10px 14px; border: 1px dashed var(--muted); border-radius: 4px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin: 0 0 10px; font-size: 13px; color: var(--muted); }
.legend span::before { content: ""; display: inline-block; width: 11px; height: 11px; margin-right: 5px;
  vertical-align: -1px; background: var(--c); border-radius: 2px; }
.bars { width: 100%; border-collapse: collapse; }
.bars td { padding: 5px 8px 5px 0; vertical-align: middle; }
.bars td.name { width: 210px; font-size: 14px; }
.bars td.total { width: 150px; font-size: 14px; white-space: nowrap; }
.bars svg { display: block; width: 100%; height: 22px; }
table.options { width: 100%; border-collapse: collapse; font-size: 14px; }
table.options th { text-align: left; color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase;
  letter-spacing: .04em; border-bottom: 2px solid var(--rule); padding: 6px 8px; }
table.options td { border-bottom: 1px solid var(--rule); padding: 7px 6px; vertical-align: top; }
table.options td.num { min-width: 64px; }
table.options tr.recommended td { background: #eef7f1; font-weight: 600; }
.range { color: var(--muted); font-weight: 400; font-size: 12px; display: block; }
.tag { display: inline-block; font-size: 11px; font-weight: 700; color: #fff; background: var(--good);
  border-radius: 3px; padding: 0 5px; margin-left: 6px; vertical-align: 1px; }
ul { margin: 6px 0; padding-left: 20px; }
li { margin: 3px 0; }
.small { color: var(--muted); font-size: 13px; }
footer { margin-top: 30px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--rule); padding-top: 8px; }
@media print {
  body { font-size: 11pt; }
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; }
  tr, .verdict, .facts div { break-inside: avoid; }
  table.options { font-size: 9pt; }
  .range { font-size: 8pt; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  @page { margin: 14mm; }
}
"#;

fn cell_range(r: &Range, unit: &str) -> String {
    if r.low == r.high {
        format!(
            "{}{}",
            esc(&num(r.central)),
            if unit.is_empty() {
                String::new()
            } else {
                format!(" {unit}")
            }
        )
    } else {
        let full = range(r, unit);
        let (head, tail) = full.split_once(" (").unwrap_or((full.as_str(), ""));
        format!("{}<span class=\"range\">({}</span>", esc(head), esc(tail))
    }
}

fn bar(c: &Components, scale: f64) -> String {
    const W: f64 = 600.0;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {W} 22\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{}\">",
        esc(&PARTS
            .iter()
            .map(|(k, label, _)| format!("{label} {} ms", num(part(c, k))))
            .collect::<Vec<_>>()
            .join(", "))
    );
    let _ = write!(
        svg,
        "<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"22\" fill=\"#eef1f4\"/>"
    );
    let mut x = 0.0;
    for (k, _, colour) in PARTS {
        let v = part(c, k);
        if v <= 0.0 || scale <= 0.0 {
            continue;
        }
        let w = v / scale * W;
        let _ = write!(
            svg,
            "<rect class=\"{k}\" x=\"{x:.2}\" y=\"0\" width=\"{w:.2}\" height=\"22\" fill=\"{colour}\"/>"
        );
        x += w;
    }
    svg.push_str("</svg>");
    svg
}

pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let verdict = match r.recommendation.verdict.as_str() {
        "rewrite" => "Rewrite",
        "insufficient_data" => "Not enough data",
        _ => "Do not rewrite",
    };
    let label = match r
        .options
        .iter()
        .find(|o| o.option == r.recommendation.option)
    {
        Some(o) if o.kind != "current" => format!(
            "<span class=\"pill\">{verdict}</span> Recommended: {} <code>{}</code>",
            esc(&o.title),
            esc(&o.option)
        ),
        _ => format!("<span class=\"pill\">{verdict}</span>"),
    };
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Should we rewrite {svc}? · scalewise</title><style>{CSS}</style></head><body><main>\n\
<header><p class=\"kicker\">scalewise · rewrite report</p><h1>Should we rewrite <code>{svc}</code>?</h1></header>\n\
<section class=\"verdict {v}\" id=\"verdict\"><p class=\"label\">{label}</p><p class=\"text\">{text}</p></section>\n",
        svc = esc(&r.service),
        v = esc(&r.recommendation.verdict),
        text = esc(&r.recommendation.text),
    );
    let m = &r.measured;
    let facts: Vec<(&str, String)> = vec![
        (
            "Current runtime",
            format!(
                "{}{} <span class=\"small\">({})</span>",
                esc(&r.current.display),
                r.current
                    .version
                    .as_deref()
                    .map(|v| format!(" {}", esc(v)))
                    .unwrap_or_default(),
                esc(&r.current.source)
            ),
        ),
        (
            "Diagnosis",
            format!(
                "<code>{}</code> <span class=\"small\">confidence {}</span>",
                esc(&r.diagnosis_verdict),
                esc(&pct(r.confidence))
            ),
        ),
        ("Load", format!("{} req/s", esc(&num(m.rate_per_s)))),
        ("Mean latency", format!("{} ms", esc(&num(m.latency_ms)))),
        (
            "CPU",
            format!(
                "{} of {} cores <span class=\"small\">({} busy)</span>",
                esc(&num(m.used_cores)),
                esc(&num(m.capacity_cores)),
                esc(&pct(m.utilisation))
            ),
        ),
        ("Instances", format!("{} measured", esc(&num(m.instances)))),
        (
            "Memory per instance",
            m.memory_mib
                .map(|x| format!("{} MiB", esc(&num(x))))
                .unwrap_or_else(|| "not measured".to_string()),
        ),
        (
            "Rewrite ceiling",
            if r.options.is_empty() {
                "not known".to_string()
            } else {
                format!("{} of latency", esc(&pct(r.ceiling)))
            },
        ),
    ];
    o.push_str("<dl class=\"facts\">");
    for (k, v) in &facts {
        let _ = write!(o, "<div><dt>{k}</dt><dd>{v}</dd></div>");
    }
    o.push_str("</dl>\n");
    if !r.options.is_empty() {
        let _ = writeln!(
        o,
        "<p class=\"ceiling\" id=\"ceiling\"><strong>Ceiling:</strong> even an infinitely fast rewrite saves at most {} of request time ({} ms of {} ms): on-CPU work, GC pauses and waiting for a CPU are all a rewrite can touch.</p>",
        esc(&pct(r.ceiling)),
        esc(&num(r.ceiling_ms)),
        esc(&num(m.latency_ms))
    );
    }

    if !r.options.is_empty() {
        o.push_str(
            "<section id=\"bars\"><h2>Where a request's time would go</h2><div class=\"legend\">",
        );
        for (_, label, colour) in PARTS {
            let _ = write!(o, "<span style=\"--c:{colour}\">{label}</span>");
        }
        o.push_str("</div><table class=\"bars\">");
        let scale = r
            .options
            .iter()
            .map(|p| p.components_ms.total())
            .fold(0.0, f64::max);
        for p in &r.options {
            let _ = write!(
                o,
                "<tr><td class=\"name\"><code>{}</code></td><td>{}</td><td class=\"total\">{} ms <span class=\"small\">{}</span></td></tr>",
                esc(&p.option),
                bar(&p.components_ms, scale),
                esc(&num(p.latency_ms.central)),
                esc(&if p.option == "current" {
                    "measured".to_string()
                } else {
                    super::format::signed_pct(p.latency_change.central)
                })
            );
        }
        o.push_str("</table></section>\n");

        let _ = write!(
            o,
            "<section id=\"options\"><h2>Options</h2><p class=\"small\">Central value, range below. Instances for {} req/s ({}) at {} CPU per instance{}.</p>\
<table class=\"options\"><thead><tr><th>Option</th><th>Mean latency</th><th>Change</th><th>Throughput per instance</th><th>Instances</th><th>Memory per instance</th><th>Cost per month</th><th>Effort</th></tr></thead><tbody>",
            esc(&num(r.plan.rate_per_s)),
            esc(&r.plan.source),
            esc(&pct(r.plan.target_utilisation)),
            match (r.plan.price_core_hour, r.plan.price_gib_hour) {
                (None, None) => "; give prices for costs".to_string(),
                (c, g) => format!(
                    "; {} per core-hour, {} per GiB-hour",
                    esc(&num(c.unwrap_or(0.0))),
                    esc(&num(g.unwrap_or(0.0)))
                ),
            }
        );
        for p in &r.options {
            let rec = p.option == r.recommendation.option;
            let _ = write!(
                o,
                "<tr{}><td><code>{}</code>{}<span class=\"range\">{}</span></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{} wk</td></tr>",
                if rec { " class=\"recommended\"" } else { "" },
                esc(&p.option),
                if rec { "<span class=\"tag\">recommended</span>" } else { "" },
                esc(&p.notes.join("; ")),
                cell_range(&p.latency_ms, "ms"),
                esc(&pct_range(&p.latency_change)),
                cell_range(&p.throughput_per_instance, "req/s"),
                cell_range(&p.instances, ""),
                p.memory_mib
                    .as_ref()
                    .map(|x| cell_range(x, "MiB"))
                    .unwrap_or_else(|| "–".to_string()),
                p.cost_per_month
                    .as_ref()
                    .map(|x| cell_range(x, ""))
                    .unwrap_or_else(|| "–".to_string()),
                esc(&num(p.effort_weeks))
            );
        }
        o.push_str("</tbody></table></section>\n");
    }

    o.push_str("<section id=\"assumptions\"><h2>Assumptions</h2><ul>");
    for a in &r.assumptions {
        let _ = write!(o, "<li>{}</li>", esc(a));
    }
    let _ = write!(
        o,
        "</ul></section>\n<section id=\"evidence\"><h2>Evidence</h2><p class=\"small\">One diagnosis window of {} s.</p><ul>",
        esc(&num(r.window_s))
    );
    for e in &r.evidence {
        let _ = write!(o, "<li>{}</li>", esc(e));
    }
    let _ = write!(
        o,
        "</ul></section>\n<footer>scalewise rewrite report ({}). Ranges are low–high around the central value; the model and its sources are in docs/report.md.</footer>\n</main></body></html>\n",
        esc(&r.schema)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_needs() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn bars_are_proportional_and_end_at_the_scale() {
        let c = Components {
            cpu: 1.0,
            gc: 0.0,
            cpu_wait: 0.0,
            downstream: 3.0,
            local_wait: 0.0,
        };
        let svg = bar(&c, 4.0);
        assert!(
            svg.contains("class=\"cpu\" x=\"0.00\" y=\"0\" width=\"150.00\""),
            "{svg}"
        );
        assert!(
            svg.contains("class=\"downstream\" x=\"150.00\" y=\"0\" width=\"450.00\""),
            "{svg}"
        );
        assert!(!svg.contains("class=\"gc\""), "zero parts are not drawn");
    }
}
