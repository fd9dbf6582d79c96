//! The window's headline figures: CPU use, request rate and latency, how busy the clients keep
//! the service. They are computed once, apart from the shares, because the shares, the rules, the
//! evidence and the output all read them and must agree to the bit.

use super::{round, CpuUse, Load, Requests, Thresholds};
use crate::budget::Budget;

pub(super) struct Measures {
    /// The window, seconds; never negative, so a broken clock cannot flip a sign.
    pub(super) window: f64,
    /// Request-seconds in the window (R); never negative either.
    pub(super) r: f64,
    /// Share of the window the busiest application thread was on CPU or runnable, at most 1.
    pub(super) busiest: f64,
    /// Used cores over capacity, from the rounded figures: the percentage the evidence prints is
    /// then the ratio of the two numbers printed next to it.
    pub(super) utilisation: f64,
    /// Share of connection samples that could not be resolved.
    pub(super) unresolved: f64,
    pub(super) cpu: CpuUse,
    pub(super) requests: Requests,
    pub(super) load: Option<Load>,
}

impl Measures {
    pub(super) fn of(b: &Budget, t: &Thresholds) -> Measures {
        let window = b.window_s.max(0.0);
        let r = b.request_s.max(0.0);
        let per_window = |x: f64| if window > 0.0 { x / window } else { 0.0 };
        let cpu = CpuUse {
            used_cores: round(per_window(b.used_core_s()), 3),
            capacity_cores: round(per_window(b.capacity_core_s), 3),
        };
        let requests = Requests {
            rate_per_s: round(per_window(b.requests), 2),
            mean_latency_ms: Some(if b.requests > 0.0 {
                round(r / b.requests * 1000.0, 2)
            } else {
                0.0
            }),
            source: b.request_source.as_str().to_string(),
            mean_in_flight: round(per_window(r), 3),
        };
        let busiest = if window > 0.0 {
            (b.busiest_thread_busy_s / window).min(1.0)
        } else {
            0.0
        };
        let utilisation = if cpu.capacity_cores > 0.0 {
            cpu.used_cores / cpu.capacity_cores
        } else {
            0.0
        };
        let load = (b.inbound_conn_s > 0.0 && window > 0.0).then(|| {
            let connections = b.inbound_conn_s / window;
            let per_conn = (r / b.inbound_conn_s).min(1.0);
            Load {
                connections: round(connections, 2),
                in_flight_per_connection: round(per_conn, 3),
                busiest_thread_busy: round(busiest, 3),
                waiting_on_clients: r / window < t.idle_in_flight
                    && per_conn < 0.5
                    && busiest < 0.5
                    && utilisation < 0.5,
            }
        });
        let unresolved = if b.socket_samples > 0 {
            b.ambiguous_samples as f64 / b.socket_samples as f64
        } else {
            0.0
        };
        Measures {
            window,
            r,
            busiest,
            utilisation,
            unresolved,
            cpu,
            requests,
            load,
        }
    }

    /// A rate over the window; zero for an empty window rather than a division by zero.
    pub(super) fn per_window(&self, x: f64) -> f64 {
        if self.window > 0.0 {
            x / self.window
        } else {
            0.0
        }
    }
}
