//! Cumulative counters turned into budget totals: per-thread schedstat and the process's CPU
//! ticks, cgroup capacity, throttling and pressure, and GC pauses weighted by the requests they
//! stalled. Totals are assigned, not added, where the counter allows it, so reading them more
//! often changes nothing.

use foldhash::{HashMap, HashMapExt};

use super::{notes, Session};
use crate::gc::GcSemantics;

impl Session {
    /// Schedstat, process CPU, cgroup throttling and GC: cumulative counters turned into budget
    /// totals (assigned, not added, so reading them more often changes nothing). `last`: the
    /// final read of a window (GC sources that rate-limit are read anyway).
    pub(super) fn read_counters(&mut self, last: bool) {
        self.read_cpu();
        self.read_cgroups();
        self.read_gc(last);
    }

    /// Per-thread schedstat and the process's CPU ticks: CPU, GC-thread CPU, run-queue wait,
    /// the event loop's CPU and delay, the busiest thread, and the progress counts.
    fn read_cpu(&mut self) {
        let mut app_cpu_ns = 0u64;
        let mut gc_cpu_ns = 0u64;
        let mut delay_ns = 0u64;
        let (mut loop_cpu_ns, mut loop_delay_ns) = (0u64, 0u64);
        let mut ticks = 0u64;
        let mut busiest: Option<(String, u64)> = None;
        let mut busiest_interval: Option<(String, u64)> = None;
        let mut threads = 0;
        let mut alive = 0;
        for t in self.targets.iter_mut() {
            let totals = t.threads.read_schedstat();
            app_cpu_ns += totals.app_cpu_ns;
            gc_cpu_ns += totals.gc_cpu_ns;
            delay_ns += totals.app_delay_ns;
            // Requests wait unread for a loop none of whose threads has been seen in epoll (one
            // saturated on a busy host is always running or runnable when looked at, and looking
            // takes a CPU from it): the thread doing most of the process's work stands for it.
            if totals.loop_cpu_ns == 0
                && self.threads_known.loop_queue_pids.contains(&t.pid)
                && !self.threads_known.reader_pids.contains(&t.pid)
            {
                loop_cpu_ns += totals.busiest_cpu_ns;
                loop_delay_ns += totals.busiest_delay_ns;
            } else {
                loop_cpu_ns += totals.loop_cpu_ns;
                loop_delay_ns += totals.loop_delay_ns;
            }
            ticks += t.ticks.saturating_sub(t.base_ticks.unwrap_or(t.ticks));
            threads += totals.live_threads;
            if let Some((name, b)) = totals.busiest {
                if busiest.as_ref().map_or(true, |(_, x)| b > *x) {
                    busiest = Some((format!("{name} (pid {})", t.pid), b));
                }
            }
            if let Some((name, b)) = totals.busiest_interval {
                if busiest_interval.as_ref().map_or(true, |(_, x)| b > *x) {
                    busiest_interval = Some((format!("{name} (pid {})", t.pid), b));
                }
            }
            if t.alive {
                alive += 1;
            }
        }
        // The process's own CPU counter includes threads that exited between two schedstat
        // reads; per-thread schedstat is exact for the threads it saw. Take the larger.
        let gc_cpu_s = gc_cpu_ns as f64 / 1e9;
        let process_cpu_s = ticks as f64 / self.clock_ticks;
        let app_cpu_s = app_cpu_ns as f64 / 1e9;
        self.budget.cpu_s = app_cpu_s.max(process_cpu_s - gc_cpu_s);
        self.budget.gc_thread_cpu_s = gc_cpu_s;
        self.budget.cpu_wait_s = delay_ns as f64 / 1e9;
        // Which threads are the loop can change (one caught in epoll, a process found reading):
        // the totals under the current classification may then drop. The budget's counters
        // only grow, by each interval's increase under the classification of the moment.
        let (last_cpu, last_delay) = self.loop_totals;
        self.budget.loop_cpu_s += loop_cpu_ns.saturating_sub(last_cpu) as f64 / 1e9;
        self.budget.loop_delay_s += loop_delay_ns.saturating_sub(last_delay) as f64 / 1e9;
        self.loop_totals = (loop_cpu_ns, loop_delay_ns);
        // The wire's `scalewise.thread.busiest.time`: the busiest thread of each interval
        // between reads, summed (a counter, so windows are differences); named after the latest.
        if let Some((name, busy)) = busiest_interval {
            self.budget.busiest_thread_busy_s += busy as f64 / 1e9;
            self.budget.busiest_thread = Some(name);
        } else if let Some((name, _)) = busiest {
            self.budget.busiest_thread = Some(name);
        }
        self.progress.threads = threads;
        self.progress.alive = alive;
    }

    /// Cgroup capacity, throttling and CPU pressure. Processes sharing a cgroup share its
    /// capacity and its throttling: each cgroup is counted once.
    fn read_cgroups(&mut self) {
        let mut throttled_total = 0.0;
        let mut pressure_total = 0.0;
        let mut capacity: HashMap<&str, f64> = HashMap::new();
        for t in self.targets.iter().filter(|t| t.alive) {
            if capacity.contains_key(t.cgroup_key.as_str()) {
                continue;
            }
            let reading = t.limits.read(self.host_cores);
            capacity.insert(&t.cgroup_key, reading.capacity_cores);
            if let Some(th) = reading.throttled_s {
                let base = *self.throttled.entry(t.cgroup_key.clone()).or_insert(th);
                throttled_total += (th - base).max(0.0);
            }
            if let Some(p) = reading.pressure_some_s {
                let base = *self.pressure.entry(t.cgroup_key.clone()).or_insert(p);
                pressure_total += (p - base).max(0.0);
            }
        }
        self.budget.throttled_s = throttled_total;
        self.budget.cpu_pressure_s = pressure_total;
        if !capacity.is_empty() {
            self.capacity_cores = capacity.values().sum();
        }
    }

    /// GC pauses from each process's source. Pauses stall every request in flight: a change is
    /// weighted by the mean in flight since the reading last changed.
    fn read_gc(&mut self, last: bool) {
        let mut errors = Vec::new();
        for t in self.targets.iter_mut().filter(|t| t.alive) {
            let Some(src) = t.gc.as_mut() else { continue };
            let reading = if last { src.read_final() } else { src.read() };
            match reading {
                Ok(r) => {
                    tracing::debug!(
                        pid = t.pid,
                        source = r.source,
                        pause_s = r.pause_s,
                        last,
                        "GC reading"
                    );
                    if matches!(r.semantics, GcSemantics::CountsOnly) {
                        self.notes.add(notes::gc_counts_only(t.pid, r.source));
                    }
                    // Pauses stall every request in flight: weight a change by the mean in-flight
                    // since the reading last changed (a rate-limited source repeats itself).
                    let (w0, r0) = t.gc_mark;
                    let since = self.budget.window_s - w0;
                    let in_flight = if since > 0.0 {
                        (self.budget.request_s - r0) / since
                    } else {
                        0.0
                    };
                    match t.gc_last {
                        Some(prev) if r.pause_s == prev => continue,
                        Some(prev) if r.pause_s > prev => {
                            let d = r.pause_s - prev;
                            self.budget.gc_pause_s += d;
                            self.budget.gc_s += d * in_flight;
                        }
                        // First reading, or a smaller value (a restart, a torn read): rebase.
                        _ => {}
                    }
                    t.gc_last = Some(r.pause_s);
                    t.gc_mark = (self.budget.window_s, self.budget.request_s);
                }
                Err(e) => {
                    tracing::debug!(pid = t.pid, error = %e, "GC source unreadable");
                    errors.push(e.kind());
                }
            }
        }
        for kind in errors {
            self.count("gc", kind);
        }
    }
}
