//! The measured request and load, in the report's units (milliseconds per request, cores and MiB
//! per instance): what the report shows as `measured` and what every option is projected from.
//! Apart from [`build`](super::model::build) so the options, the assumptions and the
//! recommendation all read one set of figures.

use super::format::{dec, sig};
use super::model::{Components, DependencyMs, Measured, Plan};
use super::queueing::infer_pool;
use super::ReportOptions;
use crate::engine::{Breakdown, Diagnosis};

const MIB: f64 = 1024.0 * 1024.0;

pub(super) struct Baseline {
    /// Mean latency L, ms.
    pub(super) l: f64,
    /// L split as the diagnosis' breakdown, ms.
    pub(super) m: Components,
    /// The diagnosis' breakdown (shares of L).
    pub(super) shares: Breakdown,
    /// Instances the diagnosis covers.
    pub(super) n: f64,
    /// Requests per second, all instances.
    pub(super) lambda: f64,
    /// Requests per second per instance.
    pub(super) lambda_i: f64,
    /// The load instances are counted for.
    pub(super) lambda_plan: f64,
    /// Capacity and used cores, all instances; cores per instance.
    pub(super) cap: f64,
    pub(super) used: f64,
    pub(super) ci: f64,
    /// Cores used by GC threads (part of `used`).
    pub(super) gc_cores: f64,
    /// Core-milliseconds of CPU per request, all of it and the GC threads' part.
    pub(super) s_ms: f64,
    pub(super) s_gc_ms: f64,
    /// Used over capacity, at most 1.
    pub(super) rho_now: f64,
    /// Resident memory per instance, MiB.
    pub(super) mem_i: Option<f64>,
    pub(super) dependencies: Vec<DependencyMs>,
    /// (c+g+q)/L, the most a rewrite can save.
    pub(super) ceiling: f64,
    /// The smallest pool that explains the in-process waiting, when it is material.
    pub(super) pool: Option<u32>,
    /// In-process waiting is the largest group of request time.
    pub(super) waiting_dominates: bool,
    /// The diagnosis' window, seconds (never negative).
    pub(super) window: f64,
    /// Relative widening of every range for the window length and confidence.
    pub(super) uncertainty: f64,
}

impl Baseline {
    pub(super) fn of(d: &Diagnosis, opts: &ReportOptions) -> Baseline {
        // Not measured (a multiplexed request side): projections in milliseconds are zero and
        // the assumptions say why; the shares stand.
        let l = d.requests.mean_latency_ms.unwrap_or(0.0).max(0.0);
        let b = &d.breakdown;
        let m = Components {
            cpu: b.cpu * l,
            gc: b.gc * l,
            cpu_wait: b.cpu_wait * l,
            downstream: b.downstream * l,
            local_wait: b.local_wait * l,
        };
        let n = opts.instances.unwrap_or(1.0).max(1.0);
        let lambda = d.requests.rate_per_s.max(0.0);
        let cap = d.cpu.capacity_cores.max(0.0);
        let ci = cap / n;
        let used = d.cpu.used_cores.max(0.0);
        let gc_cores = d.gc_cpu_cores.unwrap_or(0.0).clamp(0.0, used);
        let (s_ms, s_gc_ms) = if lambda > 0.0 {
            (used / lambda * 1000.0, gc_cores / lambda * 1000.0)
        } else {
            (0.0, 0.0)
        };
        let rho_now = if cap > 0.0 {
            (used / cap).min(1.0)
        } else {
            0.0
        };
        let lambda_i = lambda / n;
        let hold_now = l - m.local_wait;
        // Pool: only when in-process waiting is a material share. Below that, the smallest pool
        // that explains it sits on the steep part of Erlang C and would turn noise into big
        // projections.
        let pool = if l > 0.0 && m.local_wait >= 0.1 * l {
            infer_pool(lambda_i * hold_now / 1000.0, hold_now, m.local_wait)
        } else {
            None
        };
        let window = d.window_s.max(0.0);
        Baseline {
            l,
            m,
            shares: *b,
            n,
            lambda,
            lambda_i,
            lambda_plan: opts.peak_rps.unwrap_or(lambda),
            cap,
            used,
            ci,
            gc_cores,
            s_ms,
            s_gc_ms,
            rho_now,
            mem_i: d.memory_bytes.map(|b| b as f64 / MIB / n),
            dependencies: dependencies(d, l),
            ceiling: if l > 0.0 {
                dec(b.cpu + b.gc + b.cpu_wait, 3)
            } else {
                0.0
            },
            pool,
            waiting_dominates: b.local_wait >= (b.cpu + b.gc + b.cpu_wait).max(b.downstream),
            window,
            uncertainty: uncertainty(d.confidence, window),
        }
    }

    /// Whether the inferred pool bounds throughput per instance (see `Ctx::pool_bound`).
    pub(super) fn pool_bound(&self) -> bool {
        self.pool.is_some() && self.waiting_dominates
    }

    /// The measurement as the report shows it.
    pub(super) fn measured(&self) -> Measured {
        Measured {
            latency_ms: sig(self.l, 3),
            components_ms: self.m.rounded(),
            dependencies: self.dependencies.clone(),
            rate_per_s: sig(self.lambda, 3),
            used_cores: sig(self.used, 3),
            capacity_cores: sig(self.cap, 3),
            gc_cpu_cores: sig(self.gc_cores, 3),
            instances: self.n,
            cores_per_instance: sig(self.ci, 3),
            utilisation: dec(self.rho_now, 3),
            cpu_ms_per_request: sig(self.s_ms, 3),
            memory_mib: self.mem_i.map(|x| sig(x, 3)),
            pool_size: self.pool,
        }
    }

    /// The load the options are planned for.
    pub(super) fn plan(&self, opts: &ReportOptions) -> Plan {
        Plan {
            rate_per_s: sig(self.lambda_plan, 3),
            source: if opts.peak_rps.is_some() {
                "peak_rps"
            } else {
                "measured"
            }
            .to_string(),
            target_utilisation: opts.target_utilisation,
            workload: opts.workload,
            price_core_hour: opts.price_core_hour,
            price_gib_hour: opts.price_gib_hour,
        }
    }
}

fn dependencies(d: &Diagnosis, l: f64) -> Vec<DependencyMs> {
    d.dependencies
        .iter()
        .map(|dep| DependencyMs {
            name: dep.name.clone().unwrap_or_else(|| dep.endpoint.clone()),
            endpoint: dep.endpoint.clone(),
            kind: dep.kind.clone(),
            ms: sig(dep.share * l, 3),
            share: dec(dep.share, 3),
        })
        .collect()
}

/// A short window or a diagnosis unsure of itself widens every range.
fn uncertainty(confidence: f64, window: f64) -> f64 {
    let confidence = confidence.clamp(0.0, 1.0);
    dec(
        (0.05 + 0.5 * (1.0 - confidence) + 0.25 * (10.0 / window.max(0.1)).min(1.0))
            .clamp(0.05, 0.8),
        3,
    )
}
