//! The engine's and the report's exact output on every case file, held against a checked-in copy.
//!
//! The case tests check ranges; this one checks that a refactor changes nothing at all: the
//! diagnosis JSON of every engine case, and the JSON, Markdown and HTML report of every report
//! case, byte for byte. A deliberate change rewrites the copies with `UPDATE_GOLDEN=1 cargo test
//! -p scalewise-core --test golden` and the diff shows what moved.

use std::path::{Path, PathBuf};

use scalewise_core::engine::Diagnosis;
use scalewise_core::report::{self, Format};
use scalewise_core::{diagnose, Budget, Thresholds};
use serde::Deserialize;

mod common;
use common::CaseOptions;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn case_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
        .expect("case dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Compares `text` with the golden file, or writes it under `UPDATE_GOLDEN`; returns a failure.
fn check(golden: &str, text: &str) -> Option<String> {
    let path = root().join("golden").join(golden);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write golden");
        return None;
    }
    match std::fs::read_to_string(&path) {
        Ok(want) if want == text => None,
        Ok(want) => {
            let line = want
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(want.lines().count().min(text.lines().count()));
            Some(format!("{golden}: differs from line {}", line + 1))
        }
        Err(e) => Some(format!("{golden}: {e} (UPDATE_GOLDEN=1 writes it)")),
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct EngineCase {
    budget: Budget,
}

#[test]
fn engine_output_is_unchanged() {
    let files = case_files("engine_cases");
    assert!(!files.is_empty());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            let case: EngineCase = toml::from_str(&text).expect("case");
            let d = diagnose("case", &[1], &case.budget, &Thresholds::default());
            let json = serde_json::to_string_pretty(&d).expect("json") + "\n";
            check(&format!("engine/{}.json", stem(f)), &json)
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[derive(Deserialize)]
struct ReportCase {
    #[serde(default)]
    options: CaseOptions,
    diagnosis: Diagnosis,
}

#[test]
fn report_output_is_unchanged() {
    let files = case_files("report_cases");
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let case: ReportCase = toml::from_str(&text).expect("case");
        let opts = case.options.report_options();
        for (format, ext) in [
            (Format::Json, "json"),
            (Format::Md, "md"),
            (Format::Html, "html"),
        ] {
            let out = report::render(&case.diagnosis, &opts, format).expect("render");
            failures.extend(check(&format!("report/{}.{ext}", stem(f)), &out));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
