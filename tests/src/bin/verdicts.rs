//! `scalewise-verdicts [LEDGER]`: the suite-wide check on the verdict ledger
//! (`scalewise_e2e::verdicts`). Prints every scenario's verdict, truth and confidence, and exits
//! 1 if any verdict is wrong with a confidence of 0.7 or more, or if no scenario recorded one
//! (an end-to-end run that records nothing checks nothing).

use std::path::PathBuf;

use scalewise_e2e::verdicts::{ledger_path, Entry, CONFIDENT};

fn main() {
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(ledger_path);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "scalewise-verdicts: {}: {e} (no scenario recorded a verdict)",
                path.display()
            );
            std::process::exit(1);
        }
    };
    let mut entries = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => entries.push(e),
            Err(e) => {
                eprintln!("scalewise-verdicts: {}:{}: {e}", path.display(), i + 1);
                std::process::exit(1);
            }
        }
    }
    if entries.is_empty() {
        eprintln!("scalewise-verdicts: {} holds no verdict", path.display());
        std::process::exit(1);
    }
    entries.sort_by(|a, b| a.scenario.cmp(&b.scenario));
    println!(
        "{:<44} {:<28} {:<18} {:>10}",
        "scenario", "truth", "verdict", "confidence"
    );
    for e in &entries {
        let mark = match (e.right, e.confidently_wrong()) {
            (true, _) => "",
            (false, true) => "  WRONG, CONFIDENT",
            (false, false) => "  wrong, held back",
        };
        println!(
            "{:<44} {:<28} {:<18} {:>10.2}{mark}",
            e.scenario, e.truth, e.verdict, e.confidence
        );
    }
    let bad = entries.iter().filter(|e| e.confidently_wrong()).count();
    let wrong = entries.iter().filter(|e| !e.right).count();
    println!(
        "scalewise-verdicts: {} scenarios, {wrong} wrong, {bad} wrong with confidence >= {CONFIDENT}",
        entries.len()
    );
    if bad > 0 {
        std::process::exit(1);
    }
}
