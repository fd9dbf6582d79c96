//! `scalewise-agent report --input diagnosis.json`: the saved diagnosis (or a collector's service
//! answer) through `report::parse_input`, then every service that parsed through `render_one` in
//! HTML, Markdown and JSON, once with the default options and once with large ones (every
//! target, a peak rate, prices, many instances, compute workload), as `report` would.
//!
//! Asserts: no panic on any parsed input (huge or negative numbers, odd strings, odd runtimes);
//! a refusal names the input; output is bounded (a fixed size plus a multiple of the input);
//! JSON output parses; HTML output is one document and carries no markup from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scalewise_agent::report::{parse_input, render_one};
use scalewise_core::report::{Format, ReportOptions, Workload};

fn options() -> [ReportOptions; 2] {
    let large = ReportOptions {
        targets: ["rust", "go", "java", "csharp", "node", "python", "native"]
            .map(String::from)
            .to_vec(),
        peak_rps: Some(1e9),
        instances: Some(1e6),
        price_core_hour: Some(1e6),
        price_gib_hour: Some(1e-9),
        target_utilisation: 1.0,
        workload: Workload::Compute,
        ..ReportOptions::default()
    };
    [ReportOptions::default(), large]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let services = match parse_input("diagnosis.json", text) {
        Ok(s) => s,
        Err(e) => {
            assert!(e.to_string().contains("diagnosis.json"));
            return;
        }
    };
    let bound = (1 << 20) + 64 * text.len();
    for (d, instances) in &services {
        for opts in &options() {
            for format in [Format::Html, Format::Md, Format::Json] {
                let Ok(out) = render_one(d, *instances, opts, format) else {
                    continue;
                };
                assert!(out.len() <= bound, "{} bytes of report", out.len());
                match format {
                    Format::Json => {
                        let v: serde_json::Value =
                            serde_json::from_str(&out).expect("JSON report parses");
                        assert!(v.is_object());
                    }
                    Format::Html => {
                        assert!(out.starts_with("<!doctype html>"));
                        assert_eq!(out.matches("</html>").count(), 1);
                        assert!(!out.contains("<script"));
                    }
                    Format::Md => assert!(!out.is_empty()),
                }
            }
        }
    }
});
