//! The limit, named: after the verdict says what kind of scale limits a service, which thing
//! limits it and what to change, from the same window's figures. Each kind is a small check in
//! the order a performance engineer would look, and `None` when nothing stands out: no limit
//! rather than a guess.
//!
//! Named here from the budget alone: the CPU kinds (`cpu_quota`, `cpu_saturated`,
//! `cpu_contended`), `event_loop`, `gc`, `send_queue`, `dependency`, `lock` and `worker_pool`
//! (its occupancy; its size needs the threads, which the budget does not carry).
//! `connection_pool` from each dependency's connection-seconds (the pool's size) beside its
//! request-seconds on the wire (how busy it is). `interpreter_lock` needs per-runtime figures
//! the counters do not carry yet.

use super::{pct, DependencyShare, Facts, Verdict};
use serde::{Deserialize, Serialize};

/// What limits the service, and what to change (the diagnose contract's `limit`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limit {
    /// `cpu_quota`, `cpu_saturated`, `cpu_contended`, `event_loop`, `gc`, `send_queue`,
    /// `dependency`, `lock`, `worker_pool`, `connection_pool`, `interpreter_lock`.
    pub kind: String,
    /// What it names: an endpoint, a thread, the cores.
    pub name: String,
    /// Pool or worker count, cores, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<f64>,
    /// Mean occupied (of `size` where there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy: Option<f64>,
    /// One sentence: what to change and what it buys.
    pub action: String,
}

/// A share of request time below this does not name a limit.
const MATERIAL: f64 = 0.2;
/// A pool whose connections have a request outstanding this share of the time or more is full:
/// a request that needs one waits.
const POOL_FULL: f64 = 0.9;

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0 + 0.0
}

/// A dependency as a limit names it: the user's name and the endpoint, or the endpoint and kind.
fn dependency_name(d: &DependencyShare) -> String {
    match &d.name {
        Some(n) => format!("{n} ({})", d.endpoint),
        None => format!("{} ({})", d.endpoint, d.kind),
    }
}

/// A dependency whose connections are all busy while requests wait in-process with more of
/// them in flight than there are connections: the requests queue for a connection (a client
/// pool's cap: `MaxConnsPerHost`, `pg.Pool`'s `max`, HikariCP's `maximumPoolSize`), whatever the
/// runtime shows of that wait (futexes, an event loop's callbacks, nothing at all).
fn connection_pool(f: &Facts, in_flight: f64) -> Option<Limit> {
    let s = &f.s.breakdown;
    if s.local_wait < MATERIAL {
        return None;
    }
    let (dep, size, busy) =
        f.s.dependencies
            .iter()
            .filter_map(|d| Some((d, d.connections?, d.busy?)))
            .filter(|&(_, size, busy)| size >= 0.5 && busy >= POOL_FULL * size)
            .filter(|&(_, size, _)| in_flight > size + 0.5)
            .max_by(|a, b| a.2.total_cmp(&b.2))?;
    // Without the wait, each request in flight spends its remaining time as now: the share on
    // this dependency grows by 1 / (1 - local_wait), and so do the connections it holds, up to
    // one per request in flight.
    let want = (busy / (1.0 - s.local_wait).max(0.05))
        .min(in_flight)
        .ceil();
    Some(Limit {
        kind: "connection_pool".to_string(),
        name: dependency_name(dep),
        size: Some(round2(size)),
        busy: Some(round2(busy)),
        action: format!(
            "grow the pool: its {size:.0} connections have a request outstanding {} of the time while requests wait {} of their time in-process; without that wait the requests in flight would hold about {want:.0} at once at the dependency's present latency (watch that latency as the pool grows: more connections can slow it)",
            pct((busy / size).min(1.0)),
            pct(s.local_wait)
        ),
    })
}

/// The limit behind `verdict`, or `None` when nothing stands out.
pub(super) fn name(f: &Facts, verdict: Verdict) -> Option<Limit> {
    let (b, m, s) = (f.b, &f.m, &f.s.breakdown);
    let (window, r) = (m.window, m.r);
    if window <= 0.0 || r <= 0.0 {
        return None;
    }
    let in_flight = r / window;
    let ceiling = s.cpu + s.gc + s.cpu_wait;
    let limit = |kind: &str, name: String, size: Option<f64>, busy: Option<f64>, action: String| {
        Some(Limit {
            kind: kind.to_string(),
            name,
            size: size.map(round2),
            busy: busy.map(round2),
            action,
        })
    };
    match verdict {
        Verdict::InsufficientData => None,
        Verdict::ScaleUp => {
            let (cap, used) = (m.cpu.capacity_cores, m.cpu.used_cores);
            let throttled = b.throttled_s / window;
            if throttled >= 0.05 {
                // Throttled while using less than the limit on average: the bursts need more.
                let want = (used / 0.7).max(cap * (1.0 + throttled));
                return limit(
                    "cpu_quota",
                    format!("the cgroup's CPU limit ({cap:.2} cores)"),
                    Some(cap),
                    Some(used),
                    format!(
                        "raise the CPU limit from {cap:.2} to about {want:.1} cores and measure again: the quota throttled the service {} of the time while it used {used:.2} cores on average (its bursts hit the limit)",
                        pct(throttled)
                    ),
                );
            }
            if m.utilisation >= f.t.saturation {
                return limit(
                    "cpu_saturated",
                    format!("{cap:.2} cores"),
                    Some(cap),
                    Some(used),
                    format!(
                        "more or faster cores, or less CPU per request: {} of request time is CPU work, GC or waiting for a CPU, the most a rewrite could save",
                        pct(ceiling)
                    ),
                );
            }
            // One thread saturated, or requests unread behind a busy loop.
            let hot = m.busiest >= f.t.hot_thread;
            if hot || (f.s.queued_is_cpu && s.cpu_wait >= MATERIAL) {
                let thread = b.busiest_thread.as_deref().unwrap_or("?");
                let (name, action) = if hot {
                    (
                        format!("thread '{thread}'"),
                        format!(
                            "spread the work over more threads or processes (one loop per core, cluster mode), or make each request cheaper: one thread is busy {} of the time",
                            pct(m.busiest)
                        ),
                    )
                } else {
                    (
                        format!("the event loop (busiest thread '{thread}')"),
                        format!(
                            "spread the work over more loops or processes, or make each request cheaper: requests wait {} of their time unread behind the loop",
                            pct(s.cpu_wait)
                        ),
                    )
                };
                return limit("event_loop", name, Some(1.0), Some(m.busiest), action);
            }
            let pressure = b.cpu_pressure_s / window;
            if s.cpu_wait >= MATERIAL && m.utilisation < 0.5 && pressure >= 0.2 {
                return limit(
                    "cpu_contended",
                    "the host's CPU".to_string(),
                    None,
                    Some(used),
                    format!(
                        "give it CPU the host's other processes cannot take (a CPU request or reservation, a quieter host): requests wait {} of their time for a CPU while the service uses {} of its own capacity",
                        pct(s.cpu_wait),
                        pct(m.utilisation)
                    ),
                );
            }
            if s.gc >= MATERIAL {
                return limit(
                    "gc",
                    "stop-the-world GC pauses".to_string(),
                    None,
                    None,
                    format!(
                        "shorten the pauses (a larger heap, fewer allocations, a concurrent collector): they hold requests {} of their time",
                        pct(s.gc)
                    ),
                );
            }
            None
        }
        Verdict::Dependency => {
            let top = f.s.dependencies.first()?;
            if top.share < MATERIAL {
                return None;
            }
            limit(
                "dependency",
                dependency_name(top),
                None,
                Some(top.share * in_flight),
                format!(
                    "make its answers faster or fewer (a cache, batching, an index): requests wait on it {} of their time, while a rewrite could save at most {}",
                    pct(top.share),
                    pct(ceiling)
                ),
            )
        }
        Verdict::ScaleOut => {
            let send_queue = (b.send_queue_s / r).min(s.local_wait);
            if send_queue >= MATERIAL {
                return limit(
                    "send_queue",
                    "responses held by Nagle's algorithm".to_string(),
                    None,
                    Some(b.send_queue_s / window),
                    format!(
                        "set TCP_NODELAY on the service's sockets or write each response in one send: responses wait {} of request time for the client's delayed ACK",
                        pct(send_queue)
                    ),
                );
            }
            if let Some(pool) = connection_pool(f, in_flight) {
                return Some(pool);
            }
            let local_s = s.local_wait * r;
            let locked = b.blocked_lock_s.min(local_s);
            let queued = (b.queued_s - b.loop_queued_s).max(0.0).min(local_s);
            if locked >= queued && locked >= MATERIAL * r {
                return limit(
                    "lock",
                    "threads blocked on futexes (a lock, or a pool's wait for a free connection)".to_string(),
                    None,
                    Some(b.blocked_lock_s / window),
                    format!(
                        "shorten the critical section or shard the lock (or, if it is a pool's wait, grow the pool): {:.1} threads wait at once on average, {} of request time",
                        b.blocked_lock_s / window,
                        pct(locked / r)
                    ),
                );
            }
            if queued >= MATERIAL * r {
                return limit(
                    "worker_pool",
                    "the worker pool (requests unread until a worker is free)".to_string(),
                    None,
                    Some(in_flight - queued / window),
                    format!(
                        "more workers (threads or processes), if the CPU and the dependencies have room: requests wait {} of their time for a free one",
                        pct(queued / r)
                    ),
                );
            }
            None
        }
    }
}
