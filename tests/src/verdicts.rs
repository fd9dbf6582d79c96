//! The suite's ledger of verdicts: every scenario with a known truth records the verdict it got
//! and its confidence, one JSON line each, and `scalewise-verdicts` (run by `scripts/test` after
//! every test binary) holds the whole suite to the rule the tool lives by: no wrong verdict with
//! a confidence of 0.7 or more, anywhere. A scenario's own test checks its figures; the ledger
//! checks the suite as a user would meet it, every shape at once.
//!
//! The ledger is `$SCALEWISE_VERDICT_LEDGER`, else `target/scalewise-verdicts.jsonl` in the
//! workspace; lines are appended with one write each, so tests running side by side do not
//! interleave them.

use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A wrong verdict at this confidence or more fails the suite.
pub const CONFIDENT: f64 = 0.7;

/// What the truth says of a scenario's verdict.
pub enum Truth<'a> {
    /// It is this verdict.
    Is(&'a str),
    /// It is none of these (a CPU-contended host is not `scale_out`).
    Not(&'a [&'a str]),
}

/// One line of the ledger.
#[derive(Debug, Serialize, Deserialize)]
pub struct Entry {
    pub scenario: String,
    pub truth: String,
    pub verdict: String,
    pub confidence: f64,
    pub right: bool,
}

impl Entry {
    /// Wrong, and said with confidence.
    pub fn confidently_wrong(&self) -> bool {
        !self.right && self.confidence >= CONFIDENT
    }
}

pub fn ledger_path() -> PathBuf {
    std::env::var_os("SCALEWISE_VERDICT_LEDGER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/scalewise-verdicts.jsonl")
        })
}

/// Records a diagnosis (one service of `diagnose`'s JSON) against its truth.
pub fn record(scenario: &str, truth: Truth, d: &serde_json::Value) {
    let verdict = d["verdict"].as_str().unwrap_or("?").to_string();
    let (truth, right) = match truth {
        Truth::Is(v) => (v.to_string(), verdict == v),
        Truth::Not(vs) => (
            format!("not {}", vs.join("/")),
            !vs.contains(&verdict.as_str()),
        ),
    };
    let entry = Entry {
        scenario: scenario.to_string(),
        truth,
        verdict,
        confidence: d["confidence"].as_f64().unwrap_or(0.0),
        right,
    };
    let mut line = serde_json::to_vec(&entry).unwrap_or_default();
    line.push(b'\n');
    let path = ledger_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&line));
    if let Err(e) = written {
        eprintln!("verdict ledger {}: {e}", path.display());
    }
}
