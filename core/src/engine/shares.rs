//! Request time split into shares: the breakdown and each dependency's share. This is the one
//! place where sampled components (CPU, GC, waiting for a CPU) and measured ones (downstream) are
//! reconciled with the request time R, so every later figure uses the same scale.

use super::measures::Measures;
use super::{Breakdown, DependencyShare, Thresholds};
use crate::budget::{Budget, RequestSource};

pub(super) struct Shares {
    /// Requests unread in socket buffers were waiting for event-loop threads' CPU, and are
    /// counted in `cpu_wait` (see [`split`]).
    pub(super) queued_is_cpu: bool,
    /// Downstream request-seconds.
    pub(super) down: f64,
    /// Sampled plus downstream request-seconds, before scaling into R.
    pub(super) known: f64,
    /// Spans measured downstream time exactly (and it fits in R): only the sampled side scales.
    pub(super) spans_exact: bool,
    /// The components overflowed R by more than sampling noise: the shares were normalised.
    pub(super) normalised: bool,
    /// They overflowed it by more than half with R from sockets: requests in flight were
    /// undercounted (several at once on one connection: HTTP/2, gRPC) or requests fan out in
    /// parallel; which, the data cannot tell, so R gives no latency and no confident verdict.
    pub(super) overflow: bool,
    /// No request was caught in flight on the service's connections, yet requests were served
    /// and dependencies awaited: R is taken as the measured components (a lower bound), and
    /// [`Shares::overflow`] holds (the same not knowing, at its extreme).
    pub(super) unseen: bool,
    /// The request-seconds the shares are of: R, or the components when `unseen`.
    pub(super) r: f64,
    /// Unrounded; the output rounds it.
    pub(super) breakdown: Breakdown,
    /// Largest share first; unrounded.
    pub(super) dependencies: Vec<DependencyShare>,
}

/// Components this many times R contradict the request side (see [`Shares::overflow`]);
/// parallel work inside requests and sampling noise stay below it in every scenario measured.
const OVERFLOW: f64 = 1.5;

pub(super) fn split(b: &Budget, t: &Thresholds, m: &Measures) -> Shares {
    // Requests waiting unread in socket buffers wait for whoever reads them. In a process whose
    // event-loop threads do most of its work (Node, Redis, nginx, Go, tokio), that is the loop
    // thread's CPU: the same kind of wait as run-queue delay, and counted with it (less the
    // loop's own run-queue delay, which already stands for one of those requests). Where the
    // loop only dispatches to a pool of workers (JDK HttpServer, Netty with a business pool), or
    // in a thread-per-connection server, they wait for a free worker: in-process waiting.
    // A loop saturated to the point of never being caught waiting in epoll is the busiest thread;
    // but where loop threads were seen and do little of the work, they dispatch to workers, and
    // a busiest thread near 100% on a CPU-starved host is a worker waiting for a CPU, not a loop.
    let loops_seen = b.loop_cpu_s > 0.0;
    let queued_is_cpu = b.loop_queued_s > 0.0
        && (b.loop_cpu_s >= t.loop_cpu_share * b.cpu_s
            || (!loops_seen && m.busiest >= t.hot_thread));
    let cpu_wait_s = b.cpu_wait_s
        + if queued_is_cpu {
            (b.loop_queued_s - b.loop_delay_s).max(0.0)
        } else {
            0.0
        };
    // Components in request-seconds; local_wait is what is left of R.
    let down = b.downstream_s();
    let sampled = b.cpu_s + b.gc_s + cpu_wait_s;
    let known = sampled + down;
    // One connection carrying several requests at once (HTTP/2, gRPC) moves both ways within
    // every clock tick: the sockets cannot tell how many requests it holds, and may read none.
    // Requests served and dependencies awaited mean requests were in flight: the components are
    // then all there is of request time, and what cannot be known is said (as for `overflow`).
    let unseen =
        m.r <= 0.0 && b.request_source == RequestSource::Sockets && b.requests > 0.0 && down > 0.0;
    let r = if unseen { known } else { m.r };
    // Spans measure downstream time exactly (client spans inside server spans); what overflows R
    // then is the sampled side (an event loop's CPU for other requests overlaps this one's
    // waits), so only that is scaled, into what the spans leave. Otherwise everything is.
    let spans_exact = b.request_source == RequestSource::Spans && down <= r;
    let (scale, down_scale) = if r > 0.0 && known > r {
        if spans_exact && sampled > 0.0 {
            ((r - down) / sampled, 1.0)
        } else {
            (r / known, r / known)
        }
    } else {
        (1.0, 1.0)
    };
    // A few percent over is sampling noise; beyond that the model does not fit and is said so.
    let normalised = unseen || (r > 0.0 && known > r * 1.05);
    let overflow = unseen || (normalised && !spans_exact && known > r * OVERFLOW);
    let share = |x: f64| if r > 0.0 { x * scale / r } else { 0.0 };
    let down_share = |x: f64| if r > 0.0 { x * down_scale / r } else { 0.0 };
    let breakdown = Breakdown {
        cpu: share(b.cpu_s),
        gc: share(b.gc_s),
        cpu_wait: share(cpu_wait_s),
        downstream: down_share(down),
        local_wait: if r > 0.0 {
            ((r - sampled * scale - down * down_scale) / r).max(0.0)
        } else {
            0.0
        },
    };
    let mut dependencies: Vec<DependencyShare> = b
        .downstream
        .iter()
        .map(|(endpoint, d)| {
            // Over the sampled window, only where the sockets saw the connections.
            let seen = d.connection_s > 0.0 && m.window > 0.0;
            DependencyShare {
                endpoint: endpoint.clone(),
                kind: d.kind.clone(),
                name: d.name.clone(),
                share: down_share(d.awaiting_s),
                connections: seen.then(|| d.connection_s / m.window),
                busy: seen.then(|| d.awaiting_s / m.window),
            }
        })
        .collect();
    dependencies.sort_by(|a, b| b.share.total_cmp(&a.share));
    Shares {
        queued_is_cpu,
        down,
        known,
        spans_exact,
        normalised,
        overflow,
        unseen,
        r,
        breakdown,
        dependencies,
    }
}
