//! The verdict rules, in the order they are asked. The order is the model: the first rule that
//! does not pass decides, so each rule only sees windows every earlier rule let through. Like
//! tokio-console's warnings, each rule is a small function that says "not my case", "cannot
//! tell" or "this verdict", and writes its reason into the evidence.

use super::{pct, Facts, Verdict};
use crate::budget::RequestSource;

/// What one rule makes of the window.
enum Call {
    /// Not this rule's case (it may have left a remark in the evidence): ask the next rule.
    Pass,
    /// Not enough to tell: the verdict is insufficient data, whatever a later rule would say.
    CannotTell,
    /// This rule's verdict, with a confidence before the data-amount factors.
    Decides(Verdict, f64),
}

type Rule = fn(&Facts, &mut Vec<String>) -> Call;

/// The rules in the order they are asked. The three gates come first, because no verdict is
/// better than a guess; then the CPU rules, because CPU trouble disguises itself as other kinds
/// of waiting. When every rule passes, [`largest_group`] decides.
const RULES: [Rule; 6] = [
    no_request_signal,
    waiting_on_clients,
    too_little_data,
    cpu_saturated,
    hot_thread,
    cpu_starved,
];

/// The verdict and its confidence before the data-amount factors; `None` is insufficient data.
pub(super) fn decide(f: &Facts, evidence: &mut Vec<String>) -> Option<(Verdict, f64)> {
    for rule in RULES {
        match rule(f, evidence) {
            Call::Pass => {}
            Call::CannotTell => return None,
            Call::Decides(verdict, confidence) => return Some((verdict, confidence)),
        }
    }
    Some(largest_group(f, evidence))
}

/// `x` from `from` (0) to `to` (1), clamped: how far past its threshold a rule's figure is.
fn ramp(x: f64, from: f64, to: f64) -> f64 {
    ((x - from) / (to - from)).clamp(0.0, 1.0)
}

/// First: without a request signal there is no request time to split, so no later rule has
/// anything to read.
fn no_request_signal(f: &Facts, evidence: &mut Vec<String>) -> Call {
    let silent = f.b.request_source == RequestSource::None || f.m.r <= 0.0;
    if !silent {
        return Call::Pass;
    }
    evidence.push(if f.b.requests > 0.0 {
        format!(
            "{:.1} requests/s were served but none was caught in flight: each takes far less than the sampling interval, so request time is not measured here (spans would measure it)",
            f.m.per_window(f.b.requests)
        )
    } else {
        "no request signal: no inbound connection carried a request and no spans arrived"
            .to_string()
    });
    Call::CannotTell
}

/// Before the amount of data is judged: a service idle while it waits on its clients is not the
/// bottleneck however long it was watched, and the measured evidence has already said so (no
/// sentence here). Any verdict would be about a load it is not under.
fn waiting_on_clients(f: &Facts, _evidence: &mut Vec<String>) -> Call {
    if f.m.load.is_some_and(|l| l.waiting_on_clients) {
        Call::CannotTell
    } else {
        Call::Pass
    }
}

/// The last gate: too few requests or too little request time make every share noise.
fn too_little_data(f: &Facts, evidence: &mut Vec<String>) -> Call {
    let (b, t, r) = (f.b, f.t, f.m.r);
    if b.requests < t.min_requests || r < t.min_request_s {
        evidence.push(format!(
            "only {:.0} requests ({:.2} request-seconds) in {:.1}s: not enough to tell (need {:.0} and {:.1})",
            b.requests, r, f.m.window, t.min_requests, t.min_request_s
        ));
        return Call::CannotTell;
    }
    Call::Pass
}

/// The first verdict: on a saturated box, time queued for a worker shows up as in-process
/// waiting, yet only more or faster CPU helps; the contest of groups would call it scale-out.
fn cpu_saturated(f: &Facts, evidence: &mut Vec<String>) -> Call {
    let (t, utilisation) = (f.t, f.m.utilisation);
    if utilisation < t.saturation {
        return Call::Pass;
    }
    evidence.push(format!(
        "CPU saturated: {} of the cores the service may use are busy; work queued for CPU shows up as in-process waiting",
        pct(utilisation)
    ));
    Call::Decides(
        Verdict::ScaleUp,
        0.7 + 0.3 * ramp(utilisation, t.saturation, 1.0),
    )
}

/// After saturation, which covers a hot thread on a full box: a single saturated thread limits
/// the service while the box looks idle, and its queued requests would otherwise be read as
/// starvation or in-process waiting.
fn hot_thread(f: &Facts, evidence: &mut Vec<String>) -> Call {
    let (b, t, window) = (f.b, f.t, f.m.window);
    // Uncapped, unlike `Measures::busiest` (the load and the event-loop test read that one): kept
    // as the rule has always read it, so the output does not change.
    let busiest = if window > 0.0 {
        b.busiest_thread_busy_s / window
    } else {
        0.0
    };
    if busiest < t.hot_thread {
        return Call::Pass;
    }
    evidence.push(format!(
        "thread '{}' is on CPU or runnable {} of the time: a single saturated thread (event loop or lone worker) limits the service; faster code helps, so would more threads or processes",
        b.busiest_thread.as_deref().unwrap_or("?"),
        pct(busiest)
    ));
    Call::Decides(
        Verdict::ScaleUp,
        0.6 + 0.3 * ramp(busiest, t.hot_thread, 1.0),
    )
}

/// The last CPU rule, and the only one that can pass with a remark: CPU starvation explains
/// in-process queueing (requests waiting behind starved workers), not time spent waiting on a
/// dependency; where that is the larger part, it goes to the contest.
fn cpu_starved(f: &Facts, evidence: &mut Vec<String>) -> Call {
    let (t, s) = (f.t, &f.s.breakdown);
    if s.cpu_wait < t.cpu_wait_share {
        return Call::Pass;
    }
    let cpu_group = s.cpu + s.gc + s.cpu_wait;
    if s.downstream > cpu_group {
        evidence.push(format!(
            "also CPU starved: requests spend {} of their time waiting for a CPU (a busy host or a CPU limit); more CPU would shorten them by that much, fixing the dependency by more",
            pct(s.cpu_wait)
        ));
        return Call::Pass;
    }
    evidence.push(format!(
        "CPU starved: requests spend {} of their time waiting for a CPU (runnable but not running, or unread behind a busy event loop)",
        pct(s.cpu_wait)
    ));
    Call::Decides(
        Verdict::ScaleUp,
        0.7 + 0.3 * ramp(s.cpu_wait, t.cpu_wait_share, 0.6),
    )
}

/// The default when no rule claims the window: the largest group of request time wins, and the
/// margin over the next one is the confidence.
fn largest_group(f: &Facts, evidence: &mut Vec<String>) -> (Verdict, f64) {
    let (b, s) = (f.b, &f.s.breakdown);
    // A response held in the send queue (Nagle's algorithm) is fixed by a socket option, not by
    // scaling anything: it is said in the evidence and left out of the contest.
    let send_queue = if b.request_s > 0.0 {
        (b.send_queue_s / b.request_s).min(s.local_wait)
    } else {
        0.0
    };
    let groups = [
        (Verdict::ScaleUp, s.cpu + s.gc + s.cpu_wait),
        (Verdict::Dependency, s.downstream),
        (Verdict::ScaleOut, s.local_wait - send_queue),
    ];
    let mut sorted = groups;
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    let (top, top_share) = sorted[0];
    let margin = top_share - sorted[1].1;
    evidence.push(format!(
        "largest part of request time: {} ({}), ahead of the next by {} points",
        match top {
            Verdict::ScaleUp => "on-CPU work, GC and CPU waiting",
            Verdict::Dependency => "waiting on dependencies",
            _ => "in-process waiting (locks, pools, queues)",
        },
        pct(top_share),
        (margin * 100.0).round()
    ));
    // The verdict speaks for the rest of request time only.
    let mut confidence = (0.5 + 0.5 * ramp(margin, 0.0, 0.4)) * (1.0 - send_queue);
    if top == Verdict::ScaleOut {
        confidence *= unexplained_waiting(f, evidence);
    }
    (top, confidence)
}

/// In-process waiting is what is left of request time once everything measured is taken out,
/// so time the agent did not see (a dependency over a socket it does not track, connections
/// opened per call) lands there too. A scale-out verdict is as sure as the waiting is explained
/// by something measured: threads contending on locks, requests queued unread for a worker, a
/// response held in the send queue. Mostly unexplained, it holds the confidence below 0.6 and
/// says what may be missing. Returns the factor on the confidence.
fn unexplained_waiting(f: &Facts, evidence: &mut Vec<String>) -> f64 {
    let (b, s, r) = (f.b, &f.s.breakdown, f.m.r);
    let local_s = s.local_wait * r;
    if local_s <= 0.0 {
        return 1.0;
    }
    let queued_for_workers = (b.queued_s - b.loop_queued_s).max(0.0);
    let explained = ((b.blocked_lock_s + queued_for_workers + b.send_queue_s) / local_s).min(1.0);
    let factor = 0.4 + 0.6 * ramp(explained, 0.1, 0.5);
    if factor < 1.0 {
        evidence.push(format!(
            "only {} of the in-process waiting is explained by what was measured (lock waits, requests queued for a worker, responses in the send queue): the rest may be waiting the agent does not see, such as a dependency over a socket it does not track or connections opened per call; the verdict is held back accordingly",
            pct(explained)
        ));
    }
    factor
}
