//! The human-readable form of a diagnosis: a verdict, the budget as bars, dependencies, evidence.
//! Plain text with no colour codes, so it reads the same in a terminal, a pipe or a CI log.

use std::fmt::Write;

use scalewise_core::engine::{Diagnosis, Verdict};

fn headline(v: Verdict) -> &'static str {
    match v {
        Verdict::ScaleUp => "SCALE-UP LIMITED (CPU-bound: faster code or bigger CPUs help)",
        Verdict::ScaleOut => {
            "SCALE-OUT LIMITED (waiting in-process with CPU to spare: more workers/instances help)"
        }
        Verdict::Dependency => {
            "DEPENDENCY LIMITED (waiting on downstream: fix the dependency; a rewrite will not help)"
        }
        Verdict::InsufficientData => "INSUFFICIENT DATA (not enough traffic or samples to say)",
    }
}

fn bar(share: f64, width: usize) -> String {
    let n = (share.clamp(0.0, 1.0) * width as f64).round() as usize;
    "#".repeat(n)
}

pub fn text(d: &Diagnosis) -> String {
    let mut out = String::new();
    let pids: Vec<String> = d.pids.iter().map(|p| p.to_string()).collect();
    let _ = writeln!(
        out,
        "scalewise: {} (pid {}) over {:.1}s",
        d.service,
        pids.join(", "),
        d.window_s
    );
    let _ = writeln!(
        out,
        "  verdict     {}  confidence {:.2}",
        headline(d.verdict),
        d.confidence
    );
    let _ = writeln!(
        out,
        "  requests    {:.1}/s, mean latency {}, {:.2} in flight (source: {})",
        d.requests.rate_per_s,
        d.requests.latency_text(),
        d.requests.mean_in_flight,
        d.requests.source
    );
    let _ = writeln!(
        out,
        "  cpu         {:.2} of {:.2} cores",
        d.cpu.used_cores, d.cpu.capacity_cores
    );
    if let Some(l) = &d.limit {
        let _ = writeln!(out, "  limit       {}: {}", l.kind, l.name);
        let _ = writeln!(out, "              {}", l.action);
    }
    if let Some(rt) = &d.runtime {
        let _ = writeln!(
            out,
            "  runtime     {}{} ({}){}",
            rt.name,
            rt.version
                .as_deref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default(),
            rt.evidence,
            d.memory_bytes
                .map(|b| format!(", {:.0} MiB resident", b as f64 / (1024.0 * 1024.0)))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\n  where request time goes");
    let b = &d.breakdown;
    for (name, share) in [
        ("cpu", b.cpu),
        ("gc", b.gc),
        ("cpu_wait", b.cpu_wait),
        ("downstream", b.downstream),
        ("local_wait", b.local_wait),
    ] {
        let _ = writeln!(
            out,
            "    {name:<11}{:>4.0}%  {}",
            share * 100.0,
            bar(share, 40)
        );
    }
    if !d.dependencies.is_empty() {
        let _ = writeln!(out, "\n  dependencies");
        for dep in d.dependencies.iter().take(8) {
            let pool = match (dep.connections, dep.busy) {
                (Some(c), Some(b)) => format!("  {c:.1} connections, {b:.1} busy"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "    {:<24} {:<12} {:>4.0}%  {}{pool}",
                dep.endpoint,
                dep.name.as_deref().unwrap_or(&dep.kind),
                dep.share * 100.0,
                bar(dep.share, 20)
            );
        }
    }
    let _ = writeln!(out, "\n  evidence");
    for e in &d.evidence {
        let _ = writeln!(out, "    - {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalewise_core::budget::{Budget, RequestSource};
    use scalewise_core::engine::{diagnose, Thresholds};

    #[test]
    fn text_shows_verdict_bars_and_evidence() {
        let b = Budget {
            window_s: 10.0,
            request_s: 10.0,
            requests: 500.0,
            request_source: RequestSource::Sockets,
            cpu_s: 9.0,
            capacity_core_s: 40.0,
            ..Budget::default()
        };
        let d = diagnose("api", &[42], &b, &Thresholds::default());
        let t = text(&d);
        assert!(t.contains("SCALE-UP"), "{t}");
        assert!(t.contains("cpu          90%"), "{t}");
        assert!(t.contains("rewrite ceiling"), "{t}");
        assert!(t.contains("pid 42"), "{t}");
        assert!(
            !t.contains("runtime"),
            "no runtime line when none was detected: {t}"
        );
        let mut d = d;
        d.runtime = Some(scalewise_core::engine::Runtime {
            name: "go".into(),
            version: Some("go1.22.1".into()),
            evidence: "ELF .go.buildinfo section".into(),
        });
        d.memory_bytes = Some(64 << 20);
        let t = text(&d);
        assert!(
            t.contains("runtime     go go1.22.1 (ELF .go.buildinfo section), 64 MiB resident"),
            "{t}"
        );
    }
}
