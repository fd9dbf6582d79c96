//! The stories behind scalewise as data: each `report_cases/*.toml` holds a diagnosis, report
//! options, and the options and ranges the report must give. One test runs them all; a second
//! checks that the Markdown and HTML of every case print only the JSON model's numbers.

use std::collections::BTreeMap;

use scalewise_core::engine::Diagnosis;
use scalewise_core::report::{self, Format};
use serde::Deserialize;

mod common;
use common::CaseOptions;

/// `deny_unknown_fields` cannot sit beside `flatten`: an unknown check key fails in `value`.
#[derive(Deserialize)]
struct ExpectOption {
    option: String,
    #[serde(default)]
    absent: bool,
    #[serde(flatten)]
    checks: BTreeMap<String, [f64; 2]>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    recommendation: Option<String>,
    verdict: Option<String>,
    ceiling: Option<[f64; 2]>,
    #[serde(default)]
    text_contains: Vec<String>,
    options: Option<usize>,
    #[serde(default)]
    option: Vec<ExpectOption>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    #[serde(default)]
    options: CaseOptions,
    diagnosis: Diagnosis,
    expect: Expect,
}

fn cases() -> Vec<(String, Case)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/report_cases");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("report_cases dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "expected the story files in {}",
        dir.display()
    );
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).expect("read case");
            let case: Case =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, case)
        })
        .collect()
}

fn at(v: &serde_json::Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// A check's value: a dotted path into the option's JSON, or `<what>_vs_current`, the option's
/// central value over the current one's (`throughput_high_vs_current`: its high end over
/// current's central).
fn value(opt: &serde_json::Value, current: &serde_json::Value, key: &str) -> Option<f64> {
    if let Some(what) = key.strip_suffix("_vs_current") {
        let (field, end) = match what {
            "throughput" => ("throughput_per_instance", "central"),
            "throughput_high" => ("throughput_per_instance", "high"),
            "instances" => ("instances", "central"),
            "memory" => ("memory_mib", "central"),
            "cost" => ("cost_per_month", "central"),
            "latency" => ("latency_ms", "central"),
            _ => return None,
        };
        let a = at(opt, &format!("{field}.{end}"))?;
        let b = at(current, &format!("{field}.central"))?;
        return Some(a / b);
    }
    at(opt, key)
}

#[test]
fn report_cases() {
    let mut failures = Vec::new();
    for (name, case) in cases() {
        let r = report::build(&case.diagnosis, &case.options.report_options())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let v = serde_json::to_value(&r).expect("json");
        let mut fail = |msg: String| {
            failures.push(format!(
                "{name} ({}): {msg}\n  recommendation: {}",
                case.description, r.recommendation.text
            ))
        };
        let e = &case.expect;
        if let Some(want) = &e.recommendation {
            if &r.recommendation.option != want {
                fail(format!("recommended {} != {want}", r.recommendation.option));
            }
        }
        if let Some(want) = &e.verdict {
            if &r.recommendation.verdict != want {
                fail(format!("verdict {} != {want}", r.recommendation.verdict));
            }
        }
        if let Some([lo, hi]) = e.ceiling {
            if r.ceiling < lo || r.ceiling > hi {
                fail(format!("ceiling {} outside [{lo}, {hi}]", r.ceiling));
            }
        }
        for t in &e.text_contains {
            if !r.recommendation.text.contains(t.as_str()) {
                fail(format!("text lacks {t:?}"));
            }
        }
        if let Some(n) = e.options {
            if r.options.len() != n {
                fail(format!("{} options, expected {n}", r.options.len()));
            }
        }
        let opts = v["options"].as_array().cloned().unwrap_or_default();
        let current = opts
            .iter()
            .find(|o| o["option"] == "current")
            .cloned()
            .unwrap_or_default();
        for x in &e.option {
            let found = opts.iter().find(|o| o["option"] == x.option.as_str());
            match (found, x.absent) {
                (Some(_), true) => fail(format!("option {} should be absent", x.option)),
                (None, false) => fail(format!(
                    "option {} missing; have {:?}",
                    x.option,
                    opts.iter().map(|o| o["option"].clone()).collect::<Vec<_>>()
                )),
                (None, true) => {}
                (Some(o), false) => {
                    for (k, [lo, hi]) in &x.checks {
                        match value(o, &current, k) {
                            Some(got) if got >= *lo && got <= *hi => {}
                            got => fail(format!(
                                "{} {k} = {got:?} outside [{lo}, {hi}]; option: {o}",
                                x.option
                            )),
                        }
                    }
                }
            }
        }
        // Always: ranges are ordered, and no rewrite beats the ceiling.
        for o in &r.options {
            for (what, rg) in [
                ("latency_ms", o.latency_ms),
                ("throughput_per_instance", o.throughput_per_instance),
                ("instances", o.instances),
            ] {
                if !(rg.low <= rg.central && rg.central <= rg.high) {
                    fail(format!("{} {what} unordered: {rg:?}", o.option));
                }
            }
            if o.kind == "rewrite" && -o.latency_change.central > r.ceiling + 1e-3 {
                fail(format!(
                    "{} saves {} of latency, beyond the ceiling {}",
                    o.option, -o.latency_change.central, r.ceiling
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Numbers as a reader sees them: digits with thousands commas and at most one decimal point.
fn numbers(text: &str) -> Vec<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let mut s = String::new();
            let mut seen_dot = false;
            while i < chars.len() {
                let c = chars[i];
                let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
                if c.is_ascii_digit() {
                    s.push(c);
                } else if c == ',' && next_digit {
                    // thousands separator
                } else if c == '.' && next_digit && !seen_dot {
                    seen_dot = true;
                    s.push(c);
                } else {
                    break;
                }
                i += 1;
            }
            if let Ok(x) = s.parse::<f64>() {
                out.push(x);
            }
        } else {
            i += 1;
        }
    }
    out
}

fn allowed(v: &serde_json::Value, out: &mut Vec<f64>) {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push(x.abs());
                out.push((x.abs() * 100.0 * 1e4).round() / 1e4);
            }
        }
        serde_json::Value::String(s) => out.extend(numbers(s)),
        serde_json::Value::Array(a) => a.iter().for_each(|x| allowed(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| allowed(x, out)),
        _ => {}
    }
}

/// The text a person reads in the HTML: no style block, no tags, entities decoded.
fn visible_text(html: &str) -> String {
    let no_style = match (html.find("<style>"), html.find("</style>")) {
        (Some(a), Some(b)) => format!("{}{}", &html[..a], &html[b + 8..]),
        _ => html.to_string(),
    };
    let mut out = String::new();
    let mut in_tag = false;
    for c in no_style.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[test]
fn markdown_and_html_print_only_the_json_numbers() {
    for (name, case) in cases() {
        let opts = case.options.report_options();
        let json = report::render(&case.diagnosis, &opts, Format::Json).expect("json");
        let v: serde_json::Value = serde_json::from_str(&json).expect("parse");
        let mut ok = Vec::new();
        allowed(&v, &mut ok);
        let md = report::render(&case.diagnosis, &opts, Format::Md).expect("md");
        let html = report::render(&case.diagnosis, &opts, Format::Html).expect("html");
        for (format, text) in [("markdown", md.clone()), ("html", visible_text(&html))] {
            let stray: Vec<f64> = numbers(&text)
                .into_iter()
                .filter(|x| !ok.iter().any(|a| (a - x).abs() <= 1e-9 * x.abs().max(1.0)))
                .collect();
            assert!(
                stray.is_empty(),
                "{name}: {format} prints numbers the JSON does not have: {stray:?}\n{text}"
            );
        }
        // And the other way: the recommendation, every option and its central latency are shown.
        for o in v["options"].as_array().into_iter().flatten() {
            let name_o = o["option"].as_str().unwrap_or_default();
            assert!(
                md.contains(name_o) && html.contains(name_o),
                "{name}: {name_o}"
            );
            let lat = scalewise_core::report::format::num(
                o["latency_ms"]["central"].as_f64().unwrap_or(-1.0),
            );
            assert!(
                md.contains(&lat) && html.contains(&lat),
                "{name}: {name_o} latency {lat}"
            );
        }
        let text = v["recommendation"]["text"].as_str().unwrap_or_default();
        assert!(
            md.contains(text),
            "{name}: markdown lacks the recommendation"
        );
        assert!(
            visible_text(&html).contains(text),
            "{name}: html lacks the recommendation"
        );
        assert!(
            !html.contains("<script")
                && !html.contains("http://")
                && !html.contains("https://")
                && !html.contains("@import"),
            "{name}: the HTML must be self-contained"
        );
    }
}
