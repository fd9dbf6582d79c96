//! Queueing formulas for the projection: Erlang C (M/M/c) for time waiting for a CPU at a new
//! utilisation, and for time waiting for a worker or connection of a pool.
//!
//! Sources: octave.sourceforge.io/queueing/function/erlangc.html (Erlang C); pool waiting is the
//! same formula with the pool's connections as servers and Little's law (offered load = rate ×
//! hold time), as `docs/report.md` ("Queueing") describes.

/// More servers than this are not iterated over (see [`erlang_c`]).
pub const MAX_SERVERS: u32 = 100_000;

/// Erlang C: the probability that an arrival waits, with `servers` servers and offered load
/// `a` = λ·S Erlangs. 1.0 when the system is at or past saturation.
pub fn erlang_c(servers: u32, a: f64) -> f64 {
    if servers == 0 || !(a.is_finite()) || a >= servers as f64 {
        return 1.0;
    }
    if a <= 0.0 {
        return 0.0;
    }
    // The recurrence is O(servers): beyond any real machine or pool, answer without it (with so
    // many servers, waiting is all or nothing around saturation). Bounds work on hostile input.
    if servers > MAX_SERVERS {
        return if a < 0.95 * servers as f64 { 0.0 } else { 1.0 };
    }
    // Erlang B by its stable recurrence, then C from B.
    let mut b = 1.0;
    for k in 1..=servers {
        b = a * b / (k as f64 + a * b);
    }
    let c = servers as f64;
    c * b / (c - a * (1.0 - b))
}

/// Mean wait in queue (same unit as `service`) of an M/M/c queue with `servers` servers, arrival
/// rate `lambda` per unit of `service` time... expressed through the offered load `a` = λ·S.
/// Infinite at or past saturation.
pub fn wait(servers: u32, a: f64, service: f64) -> f64 {
    if servers == 0 || a >= servers as f64 {
        return f64::INFINITY;
    }
    if a <= 0.0 || service <= 0.0 {
        return 0.0;
    }
    erlang_c(servers, a) * service / (servers as f64 - a)
}

/// [`wait`] for a fractional number of servers (a CPU quota of 2.5 cores): linear between the two
/// neighbouring integers, at least one server.
pub fn wait_fractional(servers: f64, a: f64, service: f64) -> f64 {
    if !(servers.is_finite() && a.is_finite() && service.is_finite()) {
        return f64::INFINITY;
    }
    let servers = servers.clamp(1.0, 2.0 * MAX_SERVERS as f64);
    let lo = servers.floor();
    let hi = servers.ceil();
    let w_lo = wait(lo as u32, a, service);
    if hi == lo {
        return w_lo;
    }
    let w_hi = wait(hi as u32, a, service);
    if !w_lo.is_finite() {
        // Between a saturated and an unsaturated neighbour: not meaningful, call it saturated.
        return if servers - lo > 0.5 {
            w_hi
        } else {
            f64::INFINITY
        };
    }
    let t = servers - lo;
    w_lo * (1.0 - t) + w_hi * t
}

/// The smallest pool (servers) whose M/M/c wait is at most `measured_wait`, given the offered
/// load `a` and hold time `hold`: the pool size that explains the waiting we measured.
/// `None` when nothing can be inferred (no load or no hold time).
pub fn infer_pool(a: f64, hold: f64, measured_wait: f64) -> Option<u32> {
    if !(a > 0.0 && hold > 0.0 && measured_wait >= 0.0 && a < MAX_SERVERS as f64) {
        return None;
    }
    let start = (a.floor() as u32).saturating_add(1);
    // Waiting falls steeply above the load; a few thousand steps cover any real pool.
    (start..start.saturating_add(10_000)).find(|&m| wait(m, a, hold) <= measured_wait)
}

/// Projects a measured wait to a new operating point with the M/M/c shape and the measurement's
/// level: a decrease scales the measurement by the model's ratio (what the model cannot explain
/// shrinks with it); an increase adds the model's difference (never multiplies noise).
pub fn project_wait(measured: f64, model_now: f64, model_new: f64) -> f64 {
    if !model_new.is_finite() {
        return f64::INFINITY;
    }
    if model_new <= model_now {
        if model_now > 0.0 {
            measured * (model_new / model_now)
        } else {
            measured
        }
    } else {
        measured + (model_new - model_now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn erlang_c_known_values() {
        // One server: the probability of waiting is the utilisation (M/M/1).
        assert!(close(erlang_c(1, 0.5), 0.5, 1e-12));
        assert!(close(erlang_c(1, 0.9), 0.9, 1e-12));
        // Two servers at A = 1: C = A^2 / (2 + A) ... = 1/3.
        assert!(close(erlang_c(2, 1.0), 1.0 / 3.0, 1e-12));
        // Textbook call-centre figure: 10 agents, 8 Erlangs -> 40.9% wait.
        assert!(
            close(erlang_c(10, 8.0), 0.4092, 5e-4),
            "{}",
            erlang_c(10, 8.0)
        );
        // Saturation and no load.
        assert_eq!(erlang_c(4, 4.0), 1.0);
        assert_eq!(erlang_c(4, 0.0), 0.0);
        // Absurd server counts answer at once instead of iterating.
        assert_eq!(erlang_c(u32::MAX, 10.0), 0.0);
        assert!(wait_fractional(1e300, 5.0, 1.0) == 0.0);
        assert!(wait_fractional(f64::NAN, 5.0, 1.0).is_infinite());
    }

    #[test]
    fn mm1_wait_is_rho_s_over_one_minus_rho() {
        // M/M/1: Wq = ρ·S/(1−ρ).
        let s = 2.0;
        for rho in [0.1, 0.5, 0.8, 0.95] {
            assert!(close(wait(1, rho, s), rho * s / (1.0 - rho), 1e-9));
        }
        assert!(wait(1, 1.0, s).is_infinite());
    }

    #[test]
    fn the_postmortem_figures_from_the_research_note() {
        // 4 cores, 2,000 req/s: the queueing model (docs/report.md) gives Wq at ρ = 0.70, 0.85, 0.95
        // as 0.50, 1.95 and 8.5 ms (service time ρ·4/2000 s).
        for (rho, expect) in [(0.70, 0.50), (0.85, 1.95), (0.95, 8.5)] {
            let s_ms = rho * 4.0 / 2000.0 * 1000.0;
            let w = wait(4, rho * 4.0, s_ms);
            assert!(close(w, expect, 0.05 * expect), "ρ {rho}: {w}");
        }
    }

    #[test]
    fn fractional_servers_lie_between_their_neighbours() {
        let (a, s) = (1.5, 1.0);
        let w2 = wait(2, a, s);
        let w3 = wait(3, a, s);
        let w = wait_fractional(2.5, a, s);
        assert!(w < w2 && w > w3, "{w3} < {w} < {w2}");
        assert_eq!(wait_fractional(3.0, a, s), w3);
        assert!(wait_fractional(0.3, 0.5, 1.0) > 0.0, "at least one server");
    }

    #[test]
    fn inferred_pool_reproduces_the_wait_and_growing_it_helps() {
        // 8 workers, hold 10 ms, 700 req/s: A = 7.
        let w8 = wait(8, 7.0, 10.0);
        assert_eq!(infer_pool(7.0, 10.0, w8), Some(8));
        assert!(wait(16, 7.0, 10.0) < w8 / 10.0);
        assert_eq!(infer_pool(0.0, 10.0, 1.0), None);
        assert_eq!(infer_pool(f64::NAN, 10.0, 1.0), None);
        assert_eq!(infer_pool(1e12, 10.0, 1.0), None);
    }

    #[test]
    fn projected_wait_keeps_the_measured_level() {
        assert_eq!(project_wait(3.0, 1.0, 1.0), 3.0);
        assert_eq!(project_wait(3.0, 2.0, 1.0), 1.5);
        assert_eq!(project_wait(3.0, 1.0, 2.0), 4.0);
        assert_eq!(project_wait(0.5, 0.0, 0.0), 0.5);
        assert!(project_wait(1.0, 1.0, f64::INFINITY).is_infinite());
    }
}
