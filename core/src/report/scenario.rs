//! One option under one scenario: where a request's time would go and how much one instance
//! would serve. Apart from the options because this is the queueing model proper (Erlang C for
//! waiting on a CPU and on a pool, at the new operating point, anchored to what was measured),
//! and the same for every option; an option only says what it changes ([`Action`]).

use super::baseline::Baseline;
use super::model::Components;
use super::options::Action;
use super::queueing::{project_wait, wait, wait_fractional};
use super::ReportOptions;

/// Model utilisations are capped here: M/M/c is unbounded at 1 and measurements jitter past it.
const MAX_RHO: f64 = 0.98;

/// The measured state, per instance where it matters.
pub(super) struct Ctx {
    l: f64,
    m: Components,
    lambda_i: f64,
    n: f64,
    ci: f64,
    s_ms: f64,
    s_gc_ms: f64,
    lambda_plan: f64,
    u_star: f64,
    rho_now: f64,
    pool: Option<u32>,
    /// The pool bounds throughput per instance only when in-process waiting is the largest part
    /// of request time: the inferred pool is the smallest consistent one, so it always looks
    /// nearly full, and only dominant waiting makes that believable.
    pool_bound: bool,
    dep_factor: f64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Point {
    pub(super) comps: Components,
    pub(super) s_ms: f64,
    pub(super) throughput: f64,
}

/// What an action changes in the request before any queueing is re-evaluated.
struct Changed {
    cpu: f64,
    gc: f64,
    /// Core-milliseconds of CPU per request.
    s_ms: f64,
    downstream: f64,
    pool: Option<u32>,
}

fn cpu_wait_model(ci: f64, lambda_i: f64, s_ms: f64) -> f64 {
    let a = (lambda_i * s_ms / 1000.0).min(MAX_RHO * ci);
    wait_fractional(ci, a, s_ms)
}

fn pool_wait_model(m: u32, lambda_i: f64, hold_ms: f64) -> f64 {
    let a = (lambda_i * hold_ms / 1000.0).min(MAX_RHO * m as f64);
    wait(m, a, hold_ms)
}

impl Ctx {
    pub(super) fn new(base: &Baseline, opts: &ReportOptions) -> Ctx {
        Ctx {
            l: base.l,
            m: base.m,
            lambda_i: base.lambda_i,
            n: base.n,
            ci: base.ci,
            s_ms: base.s_ms,
            s_gc_ms: base.s_gc_ms,
            lambda_plan: base.lambda_plan,
            u_star: opts.target_utilisation,
            rho_now: base.rho_now,
            pool: base.pool,
            pool_bound: base.pool_bound(),
            dep_factor: opts.dependency_factor,
        }
    }

    fn pool_mult(a: &Action) -> u32 {
        if matches!(a, Action::GrowPool) {
            2
        } else {
            1
        }
    }

    /// Scenario j of what the action does to CPU, GC, downstream time and the pool.
    fn changed(&self, a: &Action, j: usize) -> Changed {
        let m = &self.m;
        let (ratio, g_new, s_new) = match a {
            Action::Rewrite { ratio, pause } => {
                (ratio[j], m.cpu * ratio[j] * pause[j], self.s_ms * ratio[j])
            }
            Action::TuneGc { factor } => (
                1.0,
                m.gc * factor[j],
                self.s_ms - self.s_gc_ms * (1.0 - factor[j]),
            ),
            _ => (1.0, m.gc, self.s_ms),
        };
        Changed {
            cpu: m.cpu * ratio,
            gc: g_new,
            s_ms: s_new,
            downstream: match a {
                Action::FixDependency { ms } => m.downstream - ms * (1.0 - self.dep_factor),
                _ => m.downstream,
            },
            pool: self.pool.map(|p| p * Self::pool_mult(a)),
        }
    }

    /// One scenario (0 optimistic, 1 central, 2 pessimistic) of an action.
    pub(super) fn point(&self, a: &Action, j: usize) -> Point {
        let m = &self.m;
        let Changed {
            cpu: c_new,
            gc: g_new,
            s_ms: s_new,
            downstream: d_new,
            pool: pool_new,
        } = self.changed(a, j);
        let cpu_now = cpu_wait_model(self.ci, self.lambda_i, self.s_ms);
        let q_at = |deploy: f64| {
            project_wait(
                m.cpu_wait,
                cpu_now,
                cpu_wait_model(self.ci, self.lambda_plan / deploy, s_new),
            )
        };
        // CPU first: throughput per instance at the target utilisation, and where it would run.
        let x_cpu = if s_new > 0.0 {
            self.u_star * self.ci * 1000.0 / s_new
        } else {
            f64::INFINITY
        };
        let needed_cpu = (self.lambda_plan / x_cpu - 1e-9).ceil().max(1.0);
        let rho_ok = |deploy: f64| {
            self.lambda_plan / deploy * s_new / 1000.0 / self.ci
                <= self.rho_now.max(self.u_star) + 1e-9
        };
        let deploy_cpu = match a {
            Action::ScaleOut => (self.n + 1.0).max(needed_cpu),
            _ if rho_ok(self.n) => self.n,
            _ => needed_cpu,
        };
        // Then the pool: a slot is held for the request's time outside the pool queue.
        let hold = c_new + g_new + q_at(deploy_cpu) + d_new;
        let x_pool = match pool_new {
            Some(p) if hold > 0.0 && self.pool_bound => {
                let util_now = self.lambda_i * (self.l - m.local_wait)
                    / 1000.0
                    / self.pool.unwrap_or(1) as f64;
                p as f64 * self.u_star.max(util_now.min(MAX_RHO)) * 1000.0 / hold
            }
            _ => f64::INFINITY,
        };
        let throughput = x_cpu.min(x_pool);
        let needed = (self.lambda_plan / throughput - 1e-9).ceil().max(1.0);
        let pool_ok = |deploy: f64| match pool_new {
            Some(p) if self.pool_bound => {
                self.lambda_plan / deploy * hold / 1000.0 < MAX_RHO * p as f64
            }
            _ => true,
        };
        let deploy = if pool_ok(deploy_cpu) {
            deploy_cpu
        } else {
            deploy_cpu.max(needed)
        };
        let lambda_new = self.lambda_plan / deploy;
        let q_new = q_at(deploy);
        let w_new = match (self.pool, pool_new) {
            (Some(p), Some(p_new)) => {
                let hold_now = self.l - m.local_wait;
                let hold_new = c_new + g_new + q_new + d_new;
                project_wait(
                    m.local_wait,
                    pool_wait_model(p, self.lambda_i, hold_now),
                    pool_wait_model(p_new, lambda_new, hold_new),
                )
            }
            _ => m.local_wait,
        };
        Point {
            comps: Components {
                cpu: c_new,
                gc: g_new,
                cpu_wait: q_new,
                downstream: d_new,
                local_wait: w_new,
            },
            s_ms: s_new,
            throughput,
        }
    }
}
