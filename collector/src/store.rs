//! What the collector knows, in memory: per service, per instance, the recent cumulative
//! snapshots (the last `memory_retention`) and what they mean. Older windows are read back from
//! SQLite ([`super::sqlite`]). Every map here is bounded by [`Limits`]; what does not fit is
//! dropped and counted by the caller.
//!
//! Pure logic over data and a `now` passed in; the server wraps it in a mutex.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ingest::{Received, Resource, Target};
use crate::limits::Limits;
use crate::window::{connections_key, endpoint_of, InstanceMeta, Snapshot, N_FIXED};

/// Why (part of) a report was not kept. Each is a `limit` label of the overflow counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    Services,
    Instances,
    Dependencies,
}

impl Overflow {
    pub fn label(self) -> &'static str {
        match self {
            Overflow::Services => "services",
            Overflow::Instances => "instances",
            Overflow::Dependencies => "dependencies",
        }
    }
}

/// An instance's metadata as stored (its identity and what its counters mean).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredMeta {
    pub resource: Resource,
    pub counters: InstanceMeta,
    pub rss_bytes: Option<f64>,
    pub last_seen_ms: i64,
}

#[derive(Clone, Debug, Default)]
pub struct Instance {
    pub meta: StoredMeta,
    /// Sorted by time, no two at the same time.
    pub snaps: Vec<Snapshot>,
}

#[derive(Clone, Debug, Default)]
pub struct Service {
    pub instances: BTreeMap<String, Instance>,
    /// Every dependency endpoint any instance reported (bounded by the limit).
    pub dependencies: BTreeSet<String>,
    pub last_seen_ms: i64,
}

/// What one report did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub stored: bool,
    pub overflow: Vec<(Overflow, u64)>,
    pub duplicate: bool,
    /// Points refused because their counters exceed those of a later snapshot of the same
    /// start: stamped by a clock that jumped back (counters never fall within one start).
    pub out_of_order: u64,
}

/// All services in memory, plus what still has to be written to SQLite.
#[derive(Debug, Default)]
pub struct Memory {
    pub services: BTreeMap<String, Service>,
    /// Snapshots received since the last flush: (service, instance, snapshot).
    pub pending: Vec<(String, String, Snapshot)>,
    /// Instances whose metadata changed since the last flush.
    pub dirty: BTreeSet<(String, String)>,
}

impl Memory {
    pub fn instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    /// Takes one decoded report in.
    pub fn ingest(&mut self, r: Received, limits: &Limits) -> Outcome {
        let mut out = Outcome::default();
        let points = r.sets.len() as u64;
        if !self.services.contains_key(&r.resource.service)
            && self.services.len() >= limits.max_services
        {
            out.overflow.push((Overflow::Services, points.max(1)));
            return out;
        }
        let service_name = r.resource.service.clone();
        let instance_id = r.resource.instance.clone();
        let service = self.services.entry(service_name.clone()).or_default();
        if !service.instances.contains_key(&instance_id)
            && service.instances.len() >= limits.max_instances_per_service
        {
            out.overflow.push((Overflow::Instances, points.max(1)));
            if service.instances.is_empty() {
                self.services.remove(&service_name);
            }
            return out;
        }
        service.last_seen_ms = service.last_seen_ms.max(r.t_ms);
        let inst = service.instances.entry(instance_id.clone()).or_default();
        inst.meta.resource = r.resource;
        inst.meta.last_seen_ms = inst.meta.last_seen_ms.max(r.t_ms);
        if let Some(src) = r.request_source {
            inst.meta.counters.request_source = src;
        }
        if r.busiest_thread.is_some() {
            inst.meta.counters.busiest_thread = r.busiest_thread;
        }
        if !r.notes.is_empty() {
            inst.meta.counters.notes = r.notes;
        }
        if r.rss_bytes.is_some() {
            inst.meta.rss_bytes = r.rss_bytes;
        }
        self.dirty
            .insert((service_name.clone(), instance_id.clone()));
        if r.sets.is_empty() {
            return out;
        }
        // Where the snapshot goes, and what it starts from: the same time (a split export or a
        // duplicate), else the nearest earlier snapshot of the same start (a partial export
        // carries only what changed), else zero (a new start: a reset).
        let pos = inst.snaps.partition_point(|s| s.t_ms < r.t_ms);
        let same_time = inst.snaps.get(pos).is_some_and(|s| s.t_ms == r.t_ms);
        let mut snap = if same_time {
            inst.snaps[pos].clone()
        } else {
            match pos.checked_sub(1).map(|i| &inst.snaps[i]) {
                Some(prev) if prev.start_ns == r.start_ns => Snapshot {
                    t_ms: r.t_ms,
                    ..prev.clone()
                },
                _ => Snapshot::new(r.t_ms, r.start_ns),
            }
        };
        if same_time && snap.start_ns != r.start_ns {
            snap = Snapshot::new(r.t_ms, r.start_ns);
        }
        let before = snap.clone();
        let mut dropped_deps = 0u64;
        let (known, deps) = (
            &mut service.dependencies,
            &mut inst.meta.counters.dependencies,
        );
        let limit = limits.max_dependencies_per_service;
        for (target, value) in r.sets {
            let idx = match target {
                Target::Fixed(i) => i,
                Target::Dependency(endpoint, kind, name) => {
                    let key = endpoint.clone();
                    match dependency_slot(known, deps, limit, key, (endpoint, kind, name)) {
                        Some(i) => i,
                        None => {
                            dropped_deps += 1;
                            continue;
                        }
                    }
                }
                Target::DependencyConnections(endpoint, kind, name) => {
                    let key = connections_key(&endpoint);
                    match dependency_slot(known, deps, limit, key, (endpoint, kind, name)) {
                        Some(i) => i,
                        None => continue, // counted once, with its time series
                    }
                }
            };
            snap.set(idx, value);
        }
        // A later snapshot of the same start with smaller counters: this one's time is wrong
        // (its clock jumped back), and inserting it would read as a reset and count twice.
        let later = inst.snaps.get(if same_time { pos + 1 } else { pos });
        if let Some(next) = later.filter(|n| n.start_ns == snap.start_ns) {
            let ahead = |(i, v): (usize, &f64)| *v > next.vals.get(i).copied().unwrap_or(0.0);
            if snap.vals.iter().enumerate().any(ahead) {
                out.out_of_order = points.max(1);
                return out;
            }
        }
        // Exact size: thousands of instances keep dozens of these each.
        snap.vals.shrink_to_fit();
        if dropped_deps > 0 {
            out.overflow.push((Overflow::Dependencies, dropped_deps));
        }
        if same_time {
            out.duplicate = snap == before;
            inst.snaps[pos] = snap.clone();
        } else {
            inst.snaps.insert(pos, snap.clone());
        }
        if !out.duplicate {
            self.pending.push((service_name, instance_id, snap));
        }
        out.stored = true;
        out
    }

    /// Forgets snapshots older than `keep_from_ms` (keeping the last one before it, the baseline
    /// of a window starting there) and instances silent since `forget_before_ms`.
    ///
    /// Snapshots older than `thin_before_ms` are thinned to one per `resolution_ms` (the last of
    /// each step, and always the last of each instance life, so resets stay exact): a window's
    /// edge there moves by at most one step, and its shares stay ratios of the same interval.
    pub fn prune(
        &mut self,
        keep_from_ms: i64,
        forget_before_ms: i64,
        thin_before_ms: i64,
        resolution_ms: i64,
    ) {
        let res = resolution_ms.max(1);
        self.services.retain(|_, svc| {
            svc.instances.retain(|_, inst| {
                let first_kept = inst.snaps.partition_point(|s| s.t_ms < keep_from_ms);
                if first_kept > 1 {
                    inst.snaps.drain(..first_kept - 1);
                }
                let thin = inst.snaps.partition_point(|s| s.t_ms < thin_before_ms);
                if thin > 1 {
                    let old: Vec<Snapshot> = inst.snaps.drain(..thin).collect();
                    let mut kept: Vec<Snapshot> = Vec::with_capacity(old.len());
                    for (k, s) in old.iter().enumerate() {
                        let next = old.get(k + 1).or(inst.snaps.first());
                        let last_of_step = next.map_or(true, |n| n.t_ms / res != s.t_ms / res);
                        let last_of_life = next.is_some_and(|n| n.start_ns != s.start_ns);
                        if last_of_step || last_of_life {
                            kept.push(s.clone());
                        }
                    }
                    kept.append(&mut inst.snaps);
                    inst.snaps = kept;
                }
                inst.snaps.shrink_to_fit();
                inst.meta.last_seen_ms >= forget_before_ms
            });
            !svc.instances.is_empty()
        });
    }

    /// Marks every snapshot and instance held in memory as still to be written: for a store
    /// created anew under a running collector (its file was removed), so it gets back what
    /// memory still has.
    pub fn pend_all(&mut self) {
        self.pending.clear();
        for (s, svc) in &self.services {
            for (i, inst) in &svc.instances {
                self.dirty.insert((s.clone(), i.clone()));
                self.pending.extend(
                    inst.snaps
                        .iter()
                        .map(|snap| (s.clone(), i.clone(), snap.clone())),
                );
            }
        }
    }

    /// Puts back what SQLite held (at startup), without marking it pending.
    pub fn restore(
        &mut self,
        service: &str,
        instance: &str,
        meta: StoredMeta,
        snaps: Vec<Snapshot>,
    ) {
        let svc = self.services.entry(service.to_string()).or_default();
        svc.last_seen_ms = svc.last_seen_ms.max(meta.last_seen_ms);
        for d in &meta.counters.dependencies {
            svc.dependencies.insert(endpoint_of(&d.0).to_string());
        }
        svc.instances
            .insert(instance.to_string(), Instance { meta, snaps });
    }
}

/// The slot of one dependency series of an instance (`key`: the endpoint, or its
/// [`connections_key`]), added to the instance's list when new; `None` when the service already
/// has as many dependency endpoints as the limit allows and `endpoint` is not one of them.
/// `known` is the service's endpoints, `deps` the instance's series.
fn dependency_slot(
    known: &mut BTreeSet<String>,
    deps: &mut Vec<(String, String, Option<String>)>,
    limit: usize,
    key: String,
    (endpoint, kind, name): (String, String, Option<String>),
) -> Option<usize> {
    if let Some(i) = deps.iter().position(|d| d.0 == key) {
        return Some(N_FIXED + i);
    }
    if !known.contains(&endpoint) && known.len() >= limit {
        return None;
    }
    known.insert(endpoint);
    deps.push((key, kind, name));
    Some(N_FIXED + deps.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::slot;

    fn report(service: &str, instance: &str, t_s: i64, request: f64) -> Received {
        Received {
            resource: Resource {
                service: service.into(),
                instance: instance.into(),
                ..Resource::default()
            },
            t_ms: t_s * 1000,
            start_ns: 1,
            sets: vec![(Target::Fixed(slot::REQUEST), request)],
            ..Received::default()
        }
    }

    #[test]
    fn limits_drop_and_count_instead_of_growing() {
        let limits = Limits {
            max_services: 2,
            max_instances_per_service: 1,
            max_dependencies_per_service: 1,
            ..Limits::default()
        };
        let mut m = Memory::default();
        assert!(m.ingest(report("a", "1", 10, 1.0), &limits).stored);
        assert!(m.ingest(report("b", "1", 10, 1.0), &limits).stored);
        let o = m.ingest(report("c", "1", 10, 1.0), &limits);
        assert_eq!(o.overflow, vec![(Overflow::Services, 1)]);
        let o = m.ingest(report("a", "2", 10, 1.0), &limits);
        assert_eq!(o.overflow, vec![(Overflow::Instances, 1)]);
        let mut r = report("a", "1", 20, 2.0);
        for i in 0..3 {
            r.sets.push((
                Target::Dependency(format!("10.0.0.{i}:1"), "x".into(), None),
                1.0,
            ));
        }
        let o = m.ingest(r, &limits);
        assert_eq!(o.overflow, vec![(Overflow::Dependencies, 2)]);
        assert_eq!(m.services.len(), 2);
        assert_eq!(m.services["a"].dependencies.len(), 1);
    }

    #[test]
    fn late_duplicate_and_partial_reports_land_in_order() {
        let l = Limits::default();
        let mut m = Memory::default();
        m.ingest(report("a", "1", 30, 3.0), &l);
        m.ingest(report("a", "1", 10, 1.0), &l);
        let o = m.ingest(report("a", "1", 30, 3.0), &l);
        assert!(o.duplicate);
        // A partial export at t=40 carries only cpu: the request counter is carried over.
        let mut r = report("a", "1", 40, 0.0);
        r.sets = vec![(Target::Fixed(slot::CPU), 1.0)];
        m.ingest(r, &l);
        let snaps = &m.services["a"].instances["1"].snaps;
        let times: Vec<i64> = snaps.iter().map(|s| s.t_ms).collect();
        assert_eq!(times, vec![10_000, 30_000, 40_000]);
        assert_eq!(snaps[2].get(slot::REQUEST), 3.0);
        assert_eq!(m.pending.len(), 3);
    }

    #[test]
    fn a_point_from_a_clock_that_jumped_back_is_refused_not_taken_for_a_reset() {
        let l = Limits::default();
        let mut m = Memory::default();
        for t in [100, 110, 120] {
            m.ingest(report("a", "1", t, t as f64), &l);
        }
        // Read at t=130 (counter 130) but stamped an hour earlier.
        let o = m.ingest(report("a", "1", 130 - 3600, 130.0), &l);
        assert_eq!(o.out_of_order, 1);
        assert!(!o.stored);
        // Between two snapshots, with counters beyond the later one: refused too.
        let o = m.ingest(report("a", "1", 105, 115.0), &l);
        assert_eq!(o.out_of_order, 1);
        // A late point that fits (or another life's) is kept.
        assert!(m.ingest(report("a", "1", 105, 105.0), &l).stored);
        let mut other_life = report("a", "1", 50, 500.0);
        other_life.start_ns = 0;
        assert!(m.ingest(other_life, &l).stored);
        let snaps = &m.services["a"].instances["1"].snaps;
        let times: Vec<i64> = snaps.iter().map(|s| s.t_ms / 1000).collect();
        assert_eq!(times, vec![50, 100, 105, 110, 120]);
        let inc = crate::window::instance_increase(snaps, 100_000, 120_000).expect("data");
        assert_eq!(inc[slot::REQUEST], 20.0);
    }

    #[test]
    fn pend_all_marks_what_memory_holds_for_a_new_store() {
        let l = Limits::default();
        let mut m = Memory::default();
        for t in [10, 20] {
            m.ingest(report("a", "1", t, t as f64), &l);
        }
        m.ingest(report("b", "1", 10, 1.0), &l);
        m.pending.clear();
        m.dirty.clear();
        m.pend_all();
        assert_eq!(m.pending.len(), 3);
        assert_eq!(m.dirty.len(), 2);
    }

    #[test]
    fn prune_keeps_a_baseline_and_forgets_silent_instances() {
        let l = Limits::default();
        let mut m = Memory::default();
        for t in [10, 20, 30, 40] {
            m.ingest(report("a", "1", t, t as f64), &l);
        }
        m.ingest(report("b", "1", 5, 1.0), &l);
        m.prune(35_000, 8_000, 0, 1);
        let snaps = &m.services["a"].instances["1"].snaps;
        assert_eq!(
            snaps.iter().map(|s| s.t_ms).collect::<Vec<_>>(),
            vec![30_000, 40_000]
        );
        assert!(!m.services.contains_key("b"));
    }

    #[test]
    fn old_snapshots_thin_to_one_per_step_keeping_resets() {
        let l = Limits::default();
        let mut m = Memory::default();
        for t in (10..=120).step_by(10) {
            let mut r = report("a", "1", t, t as f64);
            // The agent restarted at t=55: a new life from t=60 on.
            r.start_ns = if t < 60 { 1 } else { 2 };
            m.ingest(r, &l);
        }
        // Older than t=100: one per 30 s step, plus the last of the first life (t=50).
        m.prune(0, 0, 100_000, 30_000);
        let snaps = &m.services["a"].instances["1"].snaps;
        let times: Vec<i64> = snaps.iter().map(|s| s.t_ms / 1000).collect();
        assert_eq!(times, vec![20, 50, 80, 100, 110, 120]);
        let inc = crate::window::instance_increase(snaps, 0, 120_000).expect("data");
        // Both lives counted whole: 50 + 120 request-seconds, as before thinning.
        assert_eq!(inc[slot::REQUEST], 170.0);
    }
}
