//! The evidence: plain sentences with the numbers behind a diagnosis, for a person to check the
//! verdict against. Kept apart from the rules so the rules read as decisions; only a rule's own
//! reason is written by the rule (in `rules`), between the two halves here.

use super::{pct, Facts};

/// What was measured, before the rules speak: CPU, requests, the load, and where unread and
/// unsent requests waited.
pub(super) fn measured(f: &Facts) -> Vec<String> {
    let (b, m, s) = (f.b, &f.m, &f.s);
    let (r, window) = (m.r, m.window);
    let mut evidence = Vec::new();
    evidence.push(format!(
        "CPU: {:.2} of {:.2} cores used ({}); run-queue delay {} of request time",
        m.cpu.used_cores,
        m.cpu.capacity_cores,
        pct(m.utilisation),
        pct(s.breakdown.cpu_wait)
    ));
    if b.throttled_s > 0.0 {
        evidence.push(format!(
            "cgroup CPU quota throttled the service for {:.2}s of {:.1}s",
            b.throttled_s, window
        ));
    }
    if b.cpu_pressure_s > 0.0 && window > 0.0 {
        evidence.push(format!(
            "cgroup cpu.pressure: some task waited for a CPU {} of the time",
            pct(b.cpu_pressure_s / window)
        ));
    }
    evidence.push(format!(
        "requests: {:.1}/s, mean latency {}, mean in flight {:.2} (source: {})",
        m.requests.rate_per_s,
        m.requests.latency_text(),
        m.requests.mean_in_flight,
        m.requests.source
    ));
    if let Some(l) = m.load.filter(|l| l.waiting_on_clients) {
        evidence.push(format!(
            "not the bottleneck: {:.2} requests in flight on average over {:.1} open connections ({} of their time), the busiest thread busy {} and the CPU {}: the service waits on its clients, and nothing limits it at this load (what limits the system is upstream); load it harder to see what would",
            r / window,
            l.connections,
            pct(l.in_flight_per_connection),
            pct(m.busiest),
            pct(m.utilisation)
        ));
    }
    if b.queued_s > 0.0 && r > 0.0 {
        evidence.push(if s.queued_is_cpu {
            format!(
                "requests waited unread in socket buffers for {} of request time behind event-loop threads that do {} of the service's CPU work: waiting for those threads' CPU (counted as cpu_wait)",
                pct(b.queued_s / r),
                pct(if b.cpu_s > 0.0 { (b.loop_cpu_s / b.cpu_s).min(1.0) } else { 0.0 })
            )
        } else {
            format!(
                "requests waited unread in socket buffers for {} of request time: waiting for a free worker (in-process waiting)",
                pct(b.queued_s / r)
            )
        });
    }
    if b.send_queue_s > 0.0 && r > 0.0 && b.send_queue_s / r >= 0.05 {
        evidence.push(format!(
            "responses sat written but unsent or unacknowledged for {} of request time: a response written in several small sends with Nagle's algorithm on waits for the client's delayed ACK (~40 ms); set TCP_NODELAY or write each response in one send",
            pct(b.send_queue_s / r)
        ));
    }
    evidence
}

/// What lies behind the shares, after the verdict: the dependencies, locks and GC, how well the
/// measurement fits, the rewrite ceiling, and the agent's own notes last.
pub(super) fn details(f: &Facts, evidence: &mut Vec<String>) {
    let (b, t, m, s) = (f.b, f.t, &f.m, &f.s);
    let r = m.r;
    for dep in s.dependencies.iter().take(5) {
        let label = dep.name.as_deref().unwrap_or(&dep.kind);
        evidence.push(format!(
            "downstream {} ({}): a request outstanding on the wire for {} of request time",
            dep.endpoint,
            label,
            pct(dep.share)
        ));
    }
    if s.breakdown.local_wait > 0.05 && b.blocked_lock_s > 0.0 {
        evidence.push(format!(
            "in-process waiting {}: threads were seen blocked on locks/futexes for {:.1} thread-seconds ({:.1} threads on average)",
            pct(s.breakdown.local_wait),
            b.blocked_lock_s,
            m.per_window(b.blocked_lock_s)
        ));
    }
    if b.gc_pause_s > 0.0 || b.gc_thread_cpu_s > 0.0 {
        evidence.push(format!(
            "GC: stop-the-world pauses {:.2}s ({} of wall time); GC threads used {:.2} cores",
            b.gc_pause_s,
            pct(m.per_window(b.gc_pause_s)),
            m.per_window(b.gc_thread_cpu_s)
        ));
    }
    if s.normalised && s.spans_exact {
        evidence.push(format!(
            "measured components exceed request time by {}: downstream time is exact (spans), so CPU, GC and run-queue delay were scaled into the {} of request time it leaves (an event loop's CPU for other requests overlaps this one's waits); confidence lowered",
            pct(s.known / r - 1.0),
            pct(1.0 - s.down / r)
        ));
    } else if s.unseen {
        evidence.push(format!(
            "no request was caught in flight on the service's connections, yet requests were served and its dependencies were awaited {:.2} request-seconds per second: requests in flight were not seen (several at once on one connection, as HTTP/2 and gRPC multiplex them, move both ways within every clock tick); request time is taken as the measured components, a lower bound, so mean latency is not given and the verdict rests on the shares alone (confidence at most 0.55); spans from the service would measure it exactly",
            m.per_window(s.down)
        ));
    } else if s.overflow {
        evidence.push(format!(
            "measured components exceed request time by {}: requests in flight were undercounted (several requests at once on one connection, as HTTP/2 and gRPC multiplex them) or requests work in parallel; mean latency is not given (it would be wrong), the shares are normalised and the verdict rests on them alone (confidence at most 0.55); spans from the service would measure it exactly",
            pct(s.known / r - 1.0)
        ));
    } else if s.normalised {
        evidence.push(format!(
            "measured components exceed request time by {}: parallel work inside requests or an underestimated in-flight count; shares normalised, confidence lowered",
            pct(s.known / r - 1.0)
        ));
    }
    if b.ambiguous_samples > 0 {
        evidence.push(format!(
            "{} of connection samples could not be resolved (no ordering, no learnt exchange shape, no thread state): they were given the in-flight rate of the resolved ones{}",
            pct(m.unresolved),
            if m.unresolved > t.unresolved_share {
                "; the request side is not measured well enough for a confident verdict (spans would be exact)"
            } else {
                ""
            }
        ));
    }
    if r > 0.0 {
        let ceiling = s.breakdown.cpu + s.breakdown.gc + s.breakdown.cpu_wait;
        evidence.push(format!(
            "rewrite ceiling: even an infinitely fast rewrite saves at most {} of request time",
            pct(ceiling)
        ));
    }
    evidence.extend(b.notes.iter().cloned());
}
