//! The evidence said in words: the notes a budget carries (what could not be seen, what a
//! figure's precision is, what a source is), each said once.

use crate::gc::GcSource;
use crate::sockdiag::SockDiagError;

/// Notes in the order first said, each once.
#[derive(Default)]
pub(super) struct Notes(Vec<String>);

impl Notes {
    pub(super) fn add(&mut self, text: String) {
        if !self.0.contains(&text) {
            self.0.push(text);
        }
    }

    pub(super) fn to_vec(&self) -> Vec<String> {
        self.0.clone()
    }
}

/// Runtime findings, gathered per process and said once per service, naming the processes they
/// apply to.
#[derive(Default)]
pub(super) struct PerPid(Vec<(String, Vec<u32>)>);

impl PerPid {
    pub(super) fn add(&mut self, text: String, pid: u32) {
        match self.0.iter_mut().find(|(t, _)| *t == text) {
            Some((_, pids)) => pids.push(pid),
            None => self.0.push((text, vec![pid])),
        }
    }

    /// Says each finding, with its processes, into `notes`.
    pub(super) fn say(self, notes: &mut Notes) {
        for (text, pids) in self.0 {
            let list: Vec<String> = pids.iter().map(u32::to_string).collect();
            let who = if pids.len() == 1 { "pid" } else { "pids" };
            notes.add(format!("{who} {}: {text}", list.join(", ")));
        }
    }
}

pub(super) fn gc_source(src: &dyn GcSource) -> String {
    format!("GC pauses from {}", src.describe())
}

pub(super) fn sockets_unavailable(e: &SockDiagError) -> String {
    format!("socket sampling unavailable ({e}): no request or dependency signal")
}

pub(super) fn exited(pid: u32, window_s: f64) -> String {
    format!(
        "pid {pid} exited after {window_s:.1}s of sampling; the report covers what was gathered"
    )
}

/// `/proc/PID/fd` refused: `after_s`, the window so far when it had been read before (the
/// process changed credentials or made itself non-dumpable); `lacking`, the capabilities the
/// agent lacks for it.
pub(super) fn fds_unreadable(pid: u32, lacking: &str, after_s: Option<f64>) -> String {
    match after_s {
        Some(window_s) => format!(
            "pid {pid}: /proc/{pid}/fd became unreadable after {window_s:.1}s of sampling ({lacking}): connections it opens from now on are not seen; grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to follow it"
        ),
        None => format!(
            "pid {pid}: cannot read /proc/{pid}/fd ({lacking}): run as the same user as the service, or grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH; without it no request or dependency time is attributed"
        ),
    }
}

pub(super) fn gc_counts_only(pid: u32, source: &str) -> String {
    format!("pid {pid}: {source} reports GC counts only; the GC share is unknown, not zero")
}

pub(super) const THREADS_UNREADABLE: &str = "thread states unreadable (/proc/PID/task/TID/syscall needs CAP_SYS_PTRACE, or the same uid with kernel.yama.ptrace_scope=0): ties within a kernel tick on event loops left unresolved, lock waits not corroborated";

pub(super) const CHURN: &str = "inbound connections are short-lived (a request or a few each): every round walks the whole socket table, which costs more CPU";

pub(super) const OUTBOUND_CHURN: &str = "the service opens a new connection per call to a dependency: its fd table is listed and the socket table walked every round, which costs more CPU";
/// See [`OUTBOUND_CHURN`]: too many fds to list every round.
pub(super) const OUTBOUND_CHURN_UNSEEN: &str = "the service opens a new connection per call to a dependency and holds over 2,000 sockets: connections are seen only at refreshes, so time waiting on dependencies is undercounted";
pub(super) const CHURN_BOUNDS: &str = "request rate and mean latency are bounds, not measurements: connections that open and close between samples are not seen, and other processes listen in this network namespace, so its accepted-connection count is not the service's alone (shares are unaffected)";

pub(super) fn idle_sampling(idle: usize, p: f64) -> String {
    format!(
        "{idle} idle connections: about 1 in {:.0} looked up per round; each is counted over the rounds it was skipped at its next visit, from its exact exchange count and the kernel's timestamps (request counts stay exact)",
        (1.0 / p).round()
    )
}

/// Rounds of the in-flight time sample (`x`: the in flight of the connections looked up round
/// after round): sums of `dt²`, `dt² x`, `dt² x²`, `dt x` and `dt`, for its standard error
/// (rounds taken as independent: they are far apart next to most requests).
#[derive(Default)]
pub(super) struct InFlightSample {
    rounds: u64,
    sums: [f64; 5],
}

impl InFlightSample {
    pub(super) fn add(&mut self, dt: f64, x: f64) {
        self.rounds += 1;
        let sums = &mut self.sums;
        sums[0] += dt * dt;
        sums[1] += dt * dt * x;
        sums[2] += dt * dt * x * x;
        sums[3] += dt * x;
        sums[4] += dt;
    }

    /// Mean in flight is a time sample: its standard error from the spread between rounds,
    /// said when it is more than 3% of the mean (a short window on a service whose connections
    /// alternate between busy and idle), so that nobody reads a sampling wobble as a change.
    pub(super) fn error_note(&self, request_s: f64, window_s: f64) -> Option<String> {
        let (n, [s0, s1, s2, sx, sdt]) = (self.rounds, self.sums);
        if n < 2 || window_s <= 0.0 || request_s <= 0.0 || sdt <= 0.0 {
            return None;
        }
        let mean = request_s / window_s;
        // The spread of the sampled part about its own mean; the counted gaps add none.
        let m = sx / sdt;
        let var = (s2 - 2.0 * m * s1 + m * m * s0).max(0.0);
        let se = var.sqrt() / window_s;
        (se > 0.03 * mean).then(|| {
            format!(
                "mean in flight {mean:.2} is a time sample of {n} rounds: ±{se:.2} ({:.0}%) at one standard error; a longer window narrows it",
                100.0 * se / mean
            )
        })
    }
}

/// A worker and its job sources.
pub(super) fn worker(sources: &[std::net::SocketAddr]) -> String {
    let list: Vec<String> = sources.iter().map(ToString::to_string).collect();
    format!(
        "a worker: no inbound requests; jobs taken from {} are its requests (a job runs while its fetch connection is quiet; the wait for the next job is idle, not time on that dependency; jobs counted from the fetches sent)",
        list.join(", ")
    )
}
