//! The web page: the fleet at `/` and one page per service, server-rendered HTML with inline CSS
//! and SVG (no scripts, no external assets, so it works offline and behind any proxy). Every
//! string a service controls (names, endpoints, evidence) goes through [`escape`].

use std::fmt::Write;

use crate::app::{History, ServiceSummary, ServiceView};
use scalewise_core::engine::{Breakdown, Verdict};

/// HTML-escapes text for element content and quoted attribute values.
pub use scalewise_core::text::escape_html as escape;

/// Percent-encodes a path segment (a service name in a link).
pub fn path_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

const COMPONENTS: [(&str, &str); 5] = [
    ("cpu", "#4e79a7"),
    ("gc", "#f28e2b"),
    ("cpu_wait", "#e15759"),
    ("downstream", "#59a14f"),
    ("local_wait", "#bab0ac"),
];

fn parts(b: &Breakdown) -> [f64; 5] {
    [b.cpu, b.gc, b.cpu_wait, b.downstream, b.local_wait]
}

fn verdict_colour(v: Verdict) -> &'static str {
    match v {
        Verdict::ScaleUp => "#c0392b",
        Verdict::ScaleOut => "#d35400",
        Verdict::Dependency => "#2e6da4",
        Verdict::InsufficientData => "#7f8c8d",
    }
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::ScaleUp => "scale up",
        Verdict::ScaleOut => "scale out",
        Verdict::Dependency => "dependency",
        Verdict::InsufficientData => "insufficient data",
    }
}

fn badge(v: Verdict) -> String {
    format!(
        "<span class=\"badge\" style=\"background:{}\" data-verdict=\"{}\">{}</span>",
        verdict_colour(v),
        v.as_str(),
        verdict_label(v)
    )
}

/// A horizontal stacked bar of the shares, as inline SVG.
fn bar(b: &Breakdown, width: f64) -> String {
    let mut s = format!(
        "<svg class=\"bar\" width=\"{width}\" height=\"14\" viewBox=\"0 0 {width} 14\" role=\"img\">"
    );
    let mut x = 0.0;
    let total: f64 = parts(b).iter().sum();
    if total <= 0.0 {
        let _ = write!(
            s,
            "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"14\" fill=\"#eee\"/>"
        );
    }
    for ((name, colour), v) in COMPONENTS.iter().zip(parts(b)) {
        let w = v.max(0.0) * width;
        if w > 0.0 {
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"0\" width=\"{w:.1}\" height=\"14\" fill=\"{colour}\"><title>{name} {:.0}%</title></rect>",
                v * 100.0
            );
        }
        x += w;
    }
    s.push_str("</svg>");
    s
}

fn legend() -> String {
    let mut s = String::from("<div class=\"legend\">");
    for (name, colour) in COMPONENTS {
        let _ = write!(
            s,
            "<span><i style=\"background:{colour}\"></i>{name}</span>"
        );
    }
    s.push_str("</div>");
    s
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#222;background:#f7f7f5}
header{background:#1f2d3d;color:#fff;padding:12px 24px}
header a{color:#fff;text-decoration:none}
header h1{margin:0;font-size:20px}
main{padding:16px 24px}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0002}
th,td{padding:6px 10px;border-bottom:1px solid #e5e5e5;text-align:left;vertical-align:middle}
th{background:#fafafa;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{color:#fff;border-radius:10px;padding:2px 9px;font-size:12px;font-weight:600;white-space:nowrap}
.legend span{margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
.muted{color:#777}
.card{background:#fff;padding:12px 16px;margin:0 0 16px;box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:20px 0 8px}
ul.evidence li{margin:3px 0}
";

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{}</title><style>{STYLE}</style></head><body>\
<header><h1><a href=\"/\">scalewise</a> <span class=\"muted\" style=\"color:#9fb3c8;font-size:14px\">where request time goes, per service</span></h1></header><main>",
        escape(title)
    )
}

fn ago(now_ms: i64, unix_s: f64) -> String {
    let s = (now_ms as f64 / 1000.0 - unix_s).max(0.0);
    if unix_s <= 0.0 {
        "never".to_string()
    } else if s < 120.0 {
        format!("{s:.0}s ago")
    } else if s < 7200.0 {
        format!("{:.0}m ago", s / 60.0)
    } else {
        format!("{:.0}h ago", s / 3600.0)
    }
}

/// The fleet: every service with its verdict, confidence, budget bar, instances, last seen.
pub fn fleet(services: &[(ServiceView, ServiceSummary)], window_ms: i64, now_ms: i64) -> String {
    let mut s = head("scalewise: fleet");
    let _ = write!(
        s,
        "<p class=\"muted\">{} services; verdicts over the last {}. {}</p>",
        services.len(),
        crate::config::Dur(u64::try_from(window_ms).unwrap_or(0)),
        legend()
    );
    s.push_str(
        "<table id=\"fleet\"><thead><tr><th>service</th><th>verdict</th><th>confidence</th>\
<th>where request time goes</th><th>requests/s</th><th>mean latency</th><th>cores used / capacity</th>\
<th>instances</th><th>last seen</th></tr></thead><tbody>",
    );
    if services.is_empty() {
        s.push_str(
            "<tr><td colspan=\"9\" class=\"muted\">No service has reported yet. Point \
`scalewise-agent run --collector URL` at this collector.</td></tr>",
        );
    }
    for (_, sum) in services {
        let _ = write!(
            s,
            "<tr class=\"service\"><td><a href=\"/services/{}\">{}</a></td><td>{}</td>\
<td class=\"num\">{:.0}%</td><td>{}</td><td class=\"num\">{:.1}</td><td class=\"num\">{}</td>\
<td class=\"num\">{:.2} / {:.2}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            path_segment(&sum.service),
            escape(&sum.service),
            badge(sum.verdict),
            sum.confidence * 100.0,
            bar(&sum.breakdown, 240.0),
            sum.requests.rate_per_s,
            sum.requests.latency_text(),
            sum.cpu.used_cores,
            sum.cpu.capacity_cores,
            sum.instances,
            ago(now_ms, sum.last_seen_unix),
        );
    }
    s.push_str("</tbody></table></main></body></html>");
    s
}

/// The shares over time as a stacked-area SVG.
fn history_svg(h: &History) -> String {
    let (w, ht) = (900.0, 220.0);
    let n = h.points.len().max(1) as f64;
    let step = w / n;
    let mut s = format!(
        "<svg id=\"history\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" role=\"img\">\
<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{ht}\" fill=\"#fafafa\" stroke=\"#ddd\"/>",
        ht + 20.0,
        ht + 20.0
    );
    for (i, p) in h.points.iter().enumerate() {
        let x = i as f64 * step;
        let mut y = ht;
        for ((name, colour), v) in COMPONENTS.iter().zip(parts(&p.breakdown)) {
            let hh = v.max(0.0) * ht;
            if hh > 0.0 {
                y -= hh;
                let _ = write!(
                    s,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{hh:.1}\" fill=\"{colour}\"><title>{name} {:.0}%</title></rect>",
                    step.max(1.0),
                    v * 100.0
                );
            }
        }
        if p.verdict != Verdict::InsufficientData {
            let _ = write!(
                s,
                "<rect x=\"{x:.1}\" y=\"{}\" width=\"{:.1}\" height=\"6\" fill=\"{}\"/>",
                ht + 4.0,
                step.max(1.0),
                verdict_colour(p.verdict)
            );
        }
    }
    let _ = write!(
        s,
        "<text x=\"2\" y=\"{}\" font-size=\"11\" fill=\"#666\">-{}s</text><text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">now</text></svg>",
        ht + 19.0,
        (h.window_end_unix - h.window_start_unix).round(),
        w - 2.0,
        ht + 19.0
    );
    s
}

/// One service: verdict, budget over time, dependencies, evidence, instances.
pub fn service(v: &ServiceView, h: &History) -> String {
    let d = &v.diagnosis;
    let mut s = head(&format!("scalewise: {}", d.service));
    let _ = write!(
        s,
        "<div class=\"card\"><h2 style=\"margin-top:0\">{} {}</h2>\
<p>confidence {:.0}% · {:.1} requests/s · mean latency {} · {:.2} of {:.2} cores · {} instance(s) · window {:.0}s</p>{}{}\
<p><a id=\"report\" href=\"/api/v1/services/{}/report?format=html\">Should we rewrite? The report for this window</a> \
(<a href=\"/api/v1/services/{}/report?format=md\">Markdown</a>, <a href=\"/api/v1/services/{}/report?format=json\">JSON</a>)</p></div>",
        escape(&d.service),
        badge(d.verdict),
        d.confidence * 100.0,
        d.requests.rate_per_s,
        d.requests.latency_text(),
        d.cpu.used_cores,
        d.cpu.capacity_cores,
        v.instances,
        d.window_s,
        bar(&d.breakdown, 600.0),
        legend(),
        path_segment(&d.service),
        path_segment(&d.service),
        path_segment(&d.service)
    );
    if let Some(l) = &d.limit {
        let _ = write!(
            s,
            "<div class=\"card\" id=\"limit\"><b>Limit:</b> {} · {}<br>{}</div>",
            escape(&l.kind),
            escape(&l.name),
            escape(&l.action)
        );
    }
    let _ = write!(
        s,
        "<h2>Budget over time (step {:.0}s)</h2><div class=\"card\">{}</div>",
        h.step_s,
        history_svg(h)
    );
    s.push_str("<h2>Dependencies</h2><table id=\"dependencies\"><thead><tr><th>endpoint</th><th>kind</th><th>share of request time</th><th>connections (busy)</th></tr></thead><tbody>");
    if d.dependencies.is_empty() {
        s.push_str("<tr><td colspan=\"4\" class=\"muted\">none seen</td></tr>");
    }
    for dep in &d.dependencies {
        let name = match &dep.name {
            Some(n) => format!("{} ({})", escape(n), escape(&dep.endpoint)),
            None => escape(&dep.endpoint),
        };
        let pool = match (dep.connections, dep.busy) {
            (Some(c), Some(b)) => format!("{c:.1} ({b:.1})"),
            _ => "-".to_string(),
        };
        let _ = write!(
            s,
            "<tr><td>{name}</td><td>{}</td><td class=\"num\">{:.1}%</td><td class=\"num\">{pool}</td></tr>",
            escape(&dep.kind),
            dep.share * 100.0
        );
    }
    s.push_str("</tbody></table><h2>Evidence</h2><div class=\"card\"><ul class=\"evidence\">");
    for e in &d.evidence {
        let _ = write!(s, "<li>{}</li>", escape(e));
    }
    s.push_str("</ul></div><h2>Instances</h2><table id=\"instances\"><thead><tr><th>instance</th><th>host</th><th>pid</th><th>pod</th></tr></thead><tbody>");
    for i in &v.instance_list {
        let r = &i.resource;
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&r.instance),
            escape(r.host.as_deref().unwrap_or("")),
            r.pid.map_or_else(String::new, |p| p.to_string()),
            escape(r.k8s_pod.as_deref().unwrap_or(""))
        );
    }
    s.push_str("</tbody></table></main></body></html>");
    s
}

pub fn not_found(service: &str) -> String {
    let mut s = head("scalewise: unknown service");
    let _ = write!(
        s,
        "<p>No service named <b>{}</b> has reported. <a href=\"/\">Back to the fleet</a>.</p></main></body></html>",
        escape(service)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_controlled_text_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(path_segment("a b/<c>"), "a%20b%2F%3Cc%3E");
        let page = not_found("<img src=x onerror=alert(1)>");
        assert!(!page.contains("<img"));
    }
}
