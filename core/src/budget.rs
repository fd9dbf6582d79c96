//! The request time budget as cumulative counters.
//!
//! Every component is kept in *request-seconds* (or core-seconds for capacity), summed since some
//! start. Counters, not shares, are what travels: two budgets of the same service add up (threads,
//! processes, agents), and the window between two snapshots is their difference. Shares, verdicts
//! and confidence are derived from a window by [`crate::engine`], never stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::counters::{Merge, COUNTERS};

/// Where the total request time `R` came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestSource {
    /// Server spans sent by the service: exact per-request time.
    Spans,
    /// Inbound connections sampled while a request on them awaits our response.
    Sockets,
    /// No request signal: the budget cannot be turned into shares.
    #[default]
    None,
}

impl RequestSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestSource::Spans => "spans",
            RequestSource::Sockets => "sockets",
            RequestSource::None => "none",
        }
    }
}

/// Time spent with a request outstanding on the wire to one downstream endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DependencyTime {
    /// Well-known kind from the port (`postgresql`, `redis`, ...) or `unknown`.
    pub kind: String,
    /// User-given name (`--dependency 10.0.0.5:5432=orders-db`), if any.
    pub name: Option<String>,
    /// Request-seconds awaiting a response from this endpoint.
    pub awaiting_s: f64,
    /// Connection-seconds: the service's open connections to this endpoint x time, so that over
    /// a window `connection_s / window_s` is the mean number open (a pool's size) and
    /// `awaiting_s / connection_s` how busy they are. 0 where connections are not seen (spans,
    /// unix sockets).
    pub connection_s: f64,
}

/// Cumulative budget counters of one service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// Wall-clock seconds covered.
    pub window_s: f64,
    /// `R`: total request time (mean in-flight requests x window).
    pub request_s: f64,
    /// Requests completed (an estimate when the source is sockets).
    pub requests: f64,
    pub request_source: RequestSource,
    /// On-CPU time of application threads (runtime GC threads excluded).
    pub cpu_s: f64,
    /// Stop-the-world pause seconds x in-flight requests at the time.
    pub gc_s: f64,
    /// Run-queue delay of application threads (includes cgroup throttling).
    pub cpu_wait_s: f64,
    /// Downstream time per endpoint (`ip:port`).
    pub downstream: BTreeMap<String, DependencyTime>,
    /// Wall seconds of stop-the-world pauses (not weighted by in-flight).
    pub gc_pause_s: f64,
    /// The part of `cpu_s` and `cpu_wait_s` spent by event-loop threads (seen waiting in epoll or
    /// select): when they do the service's work, requests unread in their sockets wait for them.
    pub loop_cpu_s: f64,
    pub loop_delay_s: f64,
    /// On-CPU time of runtime GC threads (concurrent collection is work, not a pause).
    pub gc_thread_cpu_s: f64,
    /// Core-seconds the service may use (capacity cores x window).
    pub capacity_core_s: f64,
    /// Seconds the service's cgroup was throttled by its CPU quota.
    pub throttled_s: f64,
    /// Seconds at least one task of the service's cgroup waited for a CPU (`cpu.pressure` some).
    pub cpu_pressure_s: f64,
    /// Thread-seconds application threads were sampled blocked on locks/futexes.
    pub blocked_lock_s: f64,
    /// Largest share of the window any single thread spent on CPU or runnable.
    /// Not additive: merging takes the maximum.
    pub busiest_thread_busy_s: f64,
    /// Name of that thread (for evidence).
    pub busiest_thread: Option<String>,
    /// Part of `request_s` during which the request's bytes sat unread in the service's socket
    /// (queued for a thread or an event loop to read it).
    pub queued_s: f64,
    /// The part of `queued_s` in processes served by an event loop (a thread waiting in epoll or
    /// select reads every connection): there a request waits for that thread.
    pub loop_queued_s: f64,
    /// Part of `request_s` during which the response was written but not yet all sent or
    /// acknowledged (Nagle's algorithm holding a small write, a full send window).
    pub send_queue_s: f64,
    /// Inbound connection-seconds (mean open inbound connections x window): against `request_s`,
    /// how busy the clients keep the service.
    pub inbound_conn_s: f64,
    /// Socket samples taken, and how many nothing could resolve (their value was estimated from
    /// the resolved ones).
    pub socket_samples: u64,
    pub ambiguous_samples: u64,
    /// Things the samplers could not see, said once each (missing capability, no GC source...).
    pub notes: Vec<String>,
}

impl Budget {
    /// Sum of every downstream endpoint's time.
    pub fn downstream_s(&self) -> f64 {
        self.downstream.values().map(|d| d.awaiting_s).sum()
    }

    /// On-CPU core-seconds of all the service's threads (application and GC).
    pub fn used_core_s(&self) -> f64 {
        self.cpu_s + self.gc_thread_cpu_s
    }

    /// Adds another part of the same service over the same window (another process or agent):
    /// each counter as its row in [`COUNTERS`] says (most add; the sampled time and the busiest
    /// thread take the larger part's), dependencies by endpoint, notes once each.
    pub fn merge(&mut self, other: &Budget) {
        // All values first: the socket-sample rows read each other's fields.
        let merged: Vec<f64> = COUNTERS
            .iter()
            .map(|c| match c.merge {
                Merge::Add => (c.get)(self) + (c.get)(other),
                Merge::Max => (c.get)(self).max((c.get)(other)),
            })
            .collect();
        if other.busiest_thread_busy_s > self.busiest_thread_busy_s {
            self.busiest_thread = other.busiest_thread.clone();
        }
        for (c, v) in COUNTERS.iter().zip(merged) {
            (c.set)(self, v);
        }
        if self.request_source == RequestSource::None {
            self.request_source = other.request_source;
        }
        for (endpoint, dep) in &other.downstream {
            let mine = self
                .downstream
                .entry(endpoint.clone())
                .or_insert_with(|| DependencyTime {
                    kind: dep.kind.clone(),
                    name: dep.name.clone(),
                    awaiting_s: 0.0,
                    connection_s: 0.0,
                });
            mine.awaiting_s += dep.awaiting_s;
            mine.connection_s += dep.connection_s;
        }
        for note in &other.notes {
            if !self.notes.contains(note) {
                self.notes.push(note.clone());
            }
        }
    }

    /// The window from `earlier` to `self`, both cumulative snapshots of the same counters: every
    /// row of [`COUNTERS`] as a difference, as the collector's windows count them.
    ///
    /// Returns `None` when any counter went backwards (the source restarted): a reset has no
    /// meaningful difference, and a negative share would be a lie.
    pub fn since(&self, earlier: &Budget) -> Option<Budget> {
        fn d(now: f64, then: f64) -> Option<f64> {
            let v = now - then;
            // Float sums can wobble by an ulp; anything more is a reset.
            if v < -1e-9 {
                None
            } else {
                Some(v.max(0.0))
            }
        }
        let mut out = Budget {
            request_source: self.request_source,
            busiest_thread: self.busiest_thread.clone(),
            notes: self.notes.clone(),
            ..Budget::default()
        };
        for c in &COUNTERS {
            (c.set)(&mut out, d((c.get)(self), (c.get)(earlier))?);
        }
        for (endpoint, dep) in &self.downstream {
            let then = earlier.downstream.get(endpoint);
            out.downstream.insert(
                endpoint.clone(),
                DependencyTime {
                    awaiting_s: d(dep.awaiting_s, then.map_or(0.0, |e| e.awaiting_s))?,
                    connection_s: d(dep.connection_s, then.map_or(0.0, |e| e.connection_s))?,
                    ..dep.clone()
                },
            );
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Budget {
        let mut b = Budget {
            window_s: 10.0,
            request_s: 40.0,
            requests: 1000.0,
            request_source: RequestSource::Sockets,
            cpu_s: 5.0,
            cpu_wait_s: 1.0,
            capacity_core_s: 20.0,
            ..Budget::default()
        };
        b.downstream.insert(
            "127.0.0.1:5432".into(),
            DependencyTime {
                kind: "postgresql".into(),
                name: None,
                awaiting_s: 30.0,
                connection_s: 0.0,
            },
        );
        b
    }

    #[test]
    fn merge_adds_counters_and_keeps_the_largest_maximum() {
        let a = sample();
        let mut two = a.clone();
        two.merge(&a);
        assert_eq!(two.request_s, 80.0);
        assert_eq!(two.downstream_s(), 60.0);
        assert_eq!(two.window_s, 10.0);
        let mut busier = a.clone();
        busier.busiest_thread_busy_s = 4.0;
        busier.busiest_thread = Some("w-1".into());
        busier.socket_samples = 10;
        busier.ambiguous_samples = 3;
        two.merge(&busier);
        assert_eq!(two.busiest_thread_busy_s, 4.0);
        assert_eq!(two.busiest_thread.as_deref(), Some("w-1"));
        assert_eq!((two.socket_samples, two.ambiguous_samples), (10, 3));
        assert_eq!(two.window_s, 10.0);
    }

    #[test]
    fn since_subtracts_and_refuses_a_reset() {
        let a = sample();
        let mut two = a.clone();
        two.merge(&a);
        let w = two.since(&a).expect("no reset");
        assert_eq!(w.request_s, 40.0);
        assert_eq!(w.downstream_s(), 30.0);
        let mut restarted = a.clone();
        restarted.cpu_s = 1.0;
        assert!(restarted.since(&a).is_none());
    }

    #[test]
    fn budget_round_trips_through_json() {
        let a = sample();
        let text = serde_json::to_string(&a).expect("serialise");
        let back: Budget = serde_json::from_str(&text).expect("parse");
        assert_eq!(a, back);
    }
}
