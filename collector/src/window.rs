//! Windows from cumulative snapshots, with Prometheus `increase()` semantics.
//!
//! An instance's snapshots are the cumulative counters it reported at some times. The increase
//! over a window is the sum of the increases between consecutive snapshots; a counter that goes
//! down, or a new `start_time_unix_nano`, is a reset (the instance restarted) and the later value
//! counts whole, as counted from zero at its start. Nothing ever subtracts to a negative number.
//! A service's window is the sum of its instances' increases, except the busiest-thread counter,
//! which does not add across instances (the largest instance's is taken).
//!
//! Pure: snapshots and times in, a [`Budget`] out. No clock, no locks, no I/O.

use scalewise_core::budget::{Budget, DependencyTime, RequestSource};
use scalewise_core::wire::COUNTERS;

pub use scalewise_core::wire::counters::slot;
/// Fixed counters per snapshot (the counter table's rows, in slot order); dependency `i` of the
/// instance is at `N_FIXED + i`.
pub use scalewise_core::wire::N_FIXED;

/// One cumulative report of one instance, compact: a few hundred bytes, so thousands of
/// instances with minutes of history fit in little memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// When the counters were read (the data points' `time_unix_nano`), in milliseconds.
    pub t_ms: i64,
    /// When the instance started counting (`start_time_unix_nano`).
    pub start_ns: u64,
    /// Counter values: [`slot`] indices, then one per dependency. Missing trailing values are 0.
    pub vals: Vec<f64>,
}

impl Snapshot {
    pub fn new(t_ms: i64, start_ns: u64) -> Snapshot {
        Snapshot {
            t_ms,
            start_ns,
            vals: vec![0.0; N_FIXED],
        }
    }

    pub fn get(&self, i: usize) -> f64 {
        self.vals.get(i).copied().unwrap_or(0.0)
    }

    pub fn set(&mut self, i: usize, v: f64) {
        if self.vals.len() <= i {
            self.vals.resize(i + 1, 0.0);
        }
        self.vals[i] = v;
    }
}

/// A dependency's connection-seconds are a series of their own: an entry of
/// [`InstanceMeta::dependencies`] keyed by the endpoint and this suffix (no endpoint, an address
/// and port or a socket path, ends with it), stored at a slot by the same rule as every
/// dependency's. Stores written before the series existed read unchanged.
const CONNECTIONS_SUFFIX: &str = " #connections";

/// The key of `endpoint`'s connection-seconds series.
pub fn connections_key(endpoint: &str) -> String {
    format!("{endpoint}{CONNECTIONS_SUFFIX}")
}

/// The endpoint a dependency series key is about.
pub fn endpoint_of(key: &str) -> &str {
    key.strip_suffix(CONNECTIONS_SUFFIX).unwrap_or(key)
}

/// What an instance's counters mean beyond their values: its dependencies (in slot order) and
/// the latest names and notes it sent.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct InstanceMeta {
    /// Dependency `i` is counted at `N_FIXED + i`: (endpoint, kind, user-given name).
    pub dependencies: Vec<(String, String, Option<String>)>,
    pub request_source: RequestSource,
    pub busiest_thread: Option<String>,
    pub notes: Vec<String>,
}

/// The increase of each counter of one instance over `(from_ms, to_ms]`, or `None` when the
/// instance has no usable pair of snapshots there.
///
/// `snaps` must be sorted by time. The baseline is the last snapshot at or before `from_ms`; an
/// instance that started inside the window (its first snapshot's start is after `from_ms`) is
/// counted from zero at its start; an instance seen only inside the window without that proof
/// is counted from its first snapshot there.
pub fn instance_increase(snaps: &[Snapshot], from_ms: i64, to_ms: i64) -> Option<Vec<f64>> {
    let first_in = snaps.partition_point(|s| s.t_ms <= from_ms);
    let end = snaps.partition_point(|s| s.t_ms <= to_ms);
    if first_in >= end {
        return None;
    }
    let inside = &snaps[first_in..end];
    let from_ns = u64::try_from(from_ms)
        .unwrap_or(0)
        .saturating_mul(1_000_000);
    let mut acc: Vec<f64> = vec![0.0; N_FIXED];
    let add = |acc: &mut Vec<f64>, i: usize, v: f64| {
        if acc.len() <= i {
            acc.resize(i + 1, 0.0);
        }
        acc[i] += v;
    };
    let mut prev: Option<&Snapshot> = if first_in > 0 {
        Some(&snaps[first_in - 1])
    } else {
        None
    };
    let mut counted = false;
    for s in inside {
        match prev {
            None => {
                if s.start_ns > 0 && s.start_ns >= from_ns {
                    // Started counting inside the window: its whole value is in the window.
                    for (i, v) in s.vals.iter().enumerate() {
                        add(&mut acc, i, v.max(0.0));
                    }
                    counted = true;
                }
            }
            Some(p) => {
                let reset = p.start_ns != s.start_ns
                    || (0..s.vals.len().max(p.vals.len())).any(|i| s.get(i) < p.get(i) - 1e-9);
                for i in 0..s.vals.len().max(p.vals.len()) {
                    let d = if reset { s.get(i) } else { s.get(i) - p.get(i) };
                    add(&mut acc, i, d.max(0.0));
                }
                counted = true;
            }
        }
        prev = Some(s);
    }
    counted.then_some(acc)
}

/// One instance's increases as a budget, with its dependencies' names.
pub fn to_budget(inc: &[f64], meta: &InstanceMeta) -> Budget {
    let g = |i: usize| inc.get(i).copied().unwrap_or(0.0);
    let mut b = Budget {
        request_source: meta.request_source,
        busiest_thread: meta.busiest_thread.clone(),
        notes: meta.notes.clone(),
        ..Budget::default()
    };
    for c in &COUNTERS {
        (c.set)(&mut b, g(c.slot));
    }
    for (i, (key, kind, name)) in meta.dependencies.iter().enumerate() {
        let v = g(N_FIXED + i);
        if v > 0.0 {
            let endpoint = endpoint_of(key);
            let dep = b
                .downstream
                .entry(endpoint.to_string())
                .or_insert_with(|| DependencyTime {
                    kind: kind.clone(),
                    name: name.clone(),
                    ..DependencyTime::default()
                });
            if endpoint.len() == key.len() {
                dep.awaiting_s = v;
            } else {
                dep.connection_s = v;
            }
        }
    }
    b
}

/// A service's window: the sum over its instances (`Budget::merge`: counters add, the sampled
/// wall time and the busiest thread take the largest instance's). Returns the budget and the
/// positions of the instances that contributed (those with a usable pair of snapshots).
pub fn service_window<'a>(
    instances: impl IntoIterator<Item = (&'a [Snapshot], &'a InstanceMeta)>,
    from_ms: i64,
    to_ms: i64,
) -> (Budget, Vec<usize>) {
    let mut total = Budget::default();
    let mut counted = Vec::new();
    for (i, (snaps, meta)) in instances.into_iter().enumerate() {
        if let Some(inc) = instance_increase(snaps, from_ms, to_ms) {
            total.merge(&to_budget(&inc, meta));
            counted.push(i);
        }
    }
    (total, counted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(t_s: i64, start_s: u64, request: f64, cpu: f64) -> Snapshot {
        let mut s = Snapshot::new(t_s * 1000, start_s * 1_000_000_000);
        s.set(slot::SAMPLED, (t_s as f64 - start_s as f64).max(0.0));
        s.set(slot::REQUEST, request);
        s.set(slot::CPU, cpu);
        s.set(slot::REQUESTS, request * 10.0);
        s
    }

    #[test]
    fn increase_is_last_minus_baseline() {
        let s = vec![
            snap(100, 50, 10.0, 2.0),
            snap(110, 50, 20.0, 4.0),
            snap(120, 50, 30.0, 6.0),
        ];
        let inc = instance_increase(&s, 100_000, 120_000).expect("data");
        assert_eq!(inc[slot::REQUEST], 20.0);
        assert_eq!(inc[slot::CPU], 4.0);
        assert_eq!(inc[slot::SAMPLED], 20.0);
        // Only the part of the window that has points counts.
        let inc = instance_increase(&s, 105_000, 115_000).expect("data");
        assert_eq!(inc[slot::REQUEST], 10.0);
    }

    #[test]
    fn a_reset_counts_the_new_value_whole_and_never_negative() {
        // The agent restarted at t=112 (new start) and counted 3 request-seconds by t=120.
        let s = vec![
            snap(100, 50, 10.0, 2.0),
            snap(110, 50, 20.0, 4.0),
            snap(120, 112, 3.0, 1.0),
        ];
        let inc = instance_increase(&s, 100_000, 120_000).expect("data");
        assert_eq!(inc[slot::REQUEST], 13.0);
        assert_eq!(inc[slot::CPU], 3.0);
        // A counter that goes down with the same start is a reset too, not a negative increase.
        let s = vec![snap(100, 50, 10.0, 2.0), snap(110, 50, 4.0, 1.0)];
        let inc = instance_increase(&s, 100_000, 200_000).expect("data");
        assert!(inc.iter().all(|v| *v >= 0.0));
        assert_eq!(inc[slot::REQUEST], 4.0);
    }

    #[test]
    fn an_instance_started_inside_the_window_counts_from_its_start() {
        let s = vec![snap(110, 105, 5.0, 1.0), snap(120, 105, 15.0, 3.0)];
        let inc = instance_increase(&s, 100_000, 120_000).expect("data");
        assert_eq!(inc[slot::REQUEST], 15.0);
        // Started before the window and first seen inside: counted from its first snapshot.
        let s = vec![snap(110, 50, 5.0, 1.0), snap(120, 50, 15.0, 3.0)];
        let inc = instance_increase(&s, 100_000, 120_000).expect("data");
        assert_eq!(inc[slot::REQUEST], 10.0);
        // One snapshot of an old instance is not a window.
        assert!(instance_increase(&s[..1], 100_000, 120_000).is_none());
    }

    #[test]
    fn a_gap_loses_no_counts() {
        // Nothing arrived between 100 and 160 (collector down): the counters carry it all.
        let s = vec![snap(100, 50, 10.0, 2.0), snap(160, 50, 70.0, 14.0)];
        let inc = instance_increase(&s, 90_000, 170_000).expect("data");
        assert_eq!(inc[slot::REQUEST], 60.0);
    }

    #[test]
    fn instances_add_and_the_busiest_thread_does_not() {
        let meta = InstanceMeta {
            dependencies: vec![("127.0.0.1:5432".into(), "postgresql".into(), None)],
            request_source: RequestSource::Sockets,
            ..InstanceMeta::default()
        };
        let mk = |busiest: f64, dep: f64| {
            let mut a = snap(100, 50, 0.0, 0.0);
            let mut b = snap(110, 50, 10.0, 2.0);
            a.set(slot::BUSIEST, 0.0);
            b.set(slot::BUSIEST, busiest);
            b.set(N_FIXED, dep);
            vec![a, b]
        };
        let one = mk(9.0, 5.0);
        let two = mk(4.0, 3.0);
        let (b, counted) = service_window([(&one[..], &meta), (&two[..], &meta)], 100_000, 110_000);
        assert_eq!(counted, [0, 1]);
        assert_eq!(b.request_s, 20.0);
        assert_eq!(b.cpu_s, 4.0);
        assert_eq!(b.window_s, 10.0);
        assert_eq!(b.busiest_thread_busy_s, 9.0);
        assert_eq!(b.downstream_s(), 8.0);
    }

    #[test]
    fn snapshots_of_unequal_length_compare_as_zero() {
        // A dependency that appears later starts from zero.
        let a = snap(100, 50, 1.0, 1.0);
        let mut b = snap(110, 50, 2.0, 2.0);
        b.set(N_FIXED + 1, 7.0);
        let inc = instance_increase(&[a, b], 100_000, 110_000).expect("data");
        assert_eq!(inc[N_FIXED + 1], 7.0);
        assert_eq!(inc[N_FIXED], 0.0);
    }
}
