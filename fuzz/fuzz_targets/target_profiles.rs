//! The rewrite report's target profiles (`--profiles DIR`, TOML files of the shape shipped in
//! `core/profiles/`): one file's text through `Profile::parse` and
//! `Profiles::with_overrides` on top of the built-in ones, as `report::options` reads them; an
//! accepted profile is then used as a rewrite target and as the current runtime of a fixed
//! diagnosis, rendered in every format.
//!
//! Asserts: no panic; an accepted profile's ranges are finite and ordered, its name is a valid
//! profile name, it serialises back to TOML that parses to the same profile, and it replaces the
//! built-in of its name; reports built on it render (JSON parses) or are refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scalewise_core::engine::{self, Thresholds};
use scalewise_core::report::{self, Format, Profile, Profiles, ReportOptions, Workload};
use scalewise_core::Budget;

fn diagnosis() -> engine::Diagnosis {
    let b = Budget {
        window_s: 30.0,
        request_s: 60.0,
        requests: 3000.0,
        cpu_s: 80.0,
        gc_s: 10.0,
        capacity_core_s: 120.0,
        ..Budget::default()
    };
    engine::diagnose("orders", &[1], &b, &Thresholds::default())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Profile::parse("fuzz.toml", text);
    let Ok(builtin) = Profiles::builtin() else {
        panic!("built-in profiles parse");
    };
    let merged = builtin.with_overrides([("fuzz.toml", text)]);
    assert_eq!(parsed.is_ok(), merged.is_ok());
    let (Ok(p), Ok(profiles)) = (parsed, merged) else {
        return;
    };
    assert!(!p.name.is_empty());
    for r in [
        &p.cpu.web,
        &p.cpu.compute,
        &p.gc.pause_ratio,
        &p.memory.runtime_mib,
        &p.memory.heap_multiplier,
    ]
    .into_iter()
    .chain(p.gc.tune_factor.as_ref())
    {
        assert!(
            r.low.is_finite() && r.high.is_finite() && r.low <= r.central && r.central <= r.high
        );
    }
    assert_eq!(profiles.get(&p.name), Some(&p));
    let printed = toml::to_string(&p).expect("an accepted profile prints");
    let back = Profile::parse("printed.toml", &printed).expect("a printed profile parses");
    assert_eq!(back, p, "{printed}");

    let d = diagnosis();
    let as_target = ReportOptions {
        targets: vec![p.name.clone()],
        current: Some(if p.name == "go" { "java" } else { "go" }.to_string()),
        peak_rps: Some(1e6),
        price_core_hour: Some(0.05),
        price_gib_hour: Some(0.01),
        profiles: Some(profiles.clone()),
        ..ReportOptions::default()
    };
    let as_current = ReportOptions {
        current: Some(p.name.clone()),
        workload: Workload::Compute,
        profiles: Some(profiles),
        ..ReportOptions::default()
    };
    for opts in [&as_target, &as_current] {
        for format in [Format::Json, Format::Md, Format::Html] {
            if let Ok(out) = report::render(&d, opts, format) {
                if format == Format::Json {
                    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
                }
            }
        }
    }
});
