//! Sample services with known behaviour that record their own ground truth, and a load
//! generator. The truth is per request and cumulative: thread CPU time (CLOCK_THREAD_CPUTIME_ID),
//! run-queue delay (the thread's own schedstat), time around each downstream call, and time
//! waiting for a worker, a lock or a pooled connection. `GET /truth` returns the sums.

pub mod http;
pub mod load;
pub mod pg;
pub mod prefork;
pub mod serve;
pub mod serve_async;
pub mod worker;

use serde::{Deserialize, Serialize};

/// Cumulative ground truth of a service, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub requests: f64,
    pub latency_s: f64,
    pub cpu_s: f64,
    pub cpu_wait_s: f64,
    pub downstream_s: f64,
    pub lock_wait_s: f64,
    pub pool_wait_s: f64,
    pub worker_wait_s: f64,
    #[serde(default)]
    pub gc_s: f64,
    pub wall_s: f64,
}

/// Shares of request time, the same five components the agent reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TruthShares {
    pub cpu: f64,
    pub gc: f64,
    pub cpu_wait: f64,
    pub downstream: f64,
    pub local_wait: f64,
}

impl Truth {
    pub fn delta(&self, e: &Truth) -> Truth {
        Truth {
            requests: self.requests - e.requests,
            latency_s: self.latency_s - e.latency_s,
            cpu_s: self.cpu_s - e.cpu_s,
            cpu_wait_s: self.cpu_wait_s - e.cpu_wait_s,
            downstream_s: self.downstream_s - e.downstream_s,
            lock_wait_s: self.lock_wait_s - e.lock_wait_s,
            pool_wait_s: self.pool_wait_s - e.pool_wait_s,
            worker_wait_s: self.worker_wait_s - e.worker_wait_s,
            gc_s: self.gc_s - e.gc_s,
            wall_s: self.wall_s - e.wall_s,
        }
    }

    /// GC is a stop-the-world share of wall time: every request in flight stalls.
    pub fn shares(&self) -> TruthShares {
        self.shares_of(self.latency_s)
    }

    /// Shares of request time `request_s` measured elsewhere (by the clients, whose requests
    /// also spend time in the server's send queue and the network): the server's own components
    /// over it, the rest in-process waiting.
    pub fn shares_of(&self, request_s: f64) -> TruthShares {
        let l = request_s.max(1e-9);
        let gc = if self.wall_s > 0.0 {
            self.gc_s / self.wall_s
        } else {
            0.0
        };
        let cpu = self.cpu_s / l;
        let cpu_wait = self.cpu_wait_s / l;
        let downstream = self.downstream_s / l;
        TruthShares {
            cpu,
            gc,
            cpu_wait,
            downstream,
            local_wait: (1.0 - cpu - cpu_wait - downstream - gc).max(0.0),
        }
    }
}

/// This thread's CPU time in seconds.
pub fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// This thread's run-queue delay in seconds (second field of its schedstat).
pub fn thread_run_delay_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Burns `ms` milliseconds of this thread's CPU time on real arithmetic (not wall time, so it
/// stays right when the CPU is contended).
pub fn burn_cpu_ms(ms: f64) {
    let until = thread_cpu_s() + ms / 1000.0;
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while thread_cpu_s() < until {
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
    }
}

/// Reads `--name value` flags.
pub struct Args(Vec<String>);

impl Args {
    pub fn new(v: Vec<String>) -> Self {
        Args(v)
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        let flag = format!("--{name}");
        self.0
            .iter()
            .position(|a| *a == flag)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }
    pub fn num(&self, name: &str, default: f64) -> f64 {
        self.get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }
}
