//! A sampling session: the samplers of one service's processes, run round by round, feeding one
//! cumulative [`Budget`].
//!
//! Time is a parameter: [`Session::step`] takes `now`, so the loop that calls it (the one-shot
//! `diagnose`, later the sidecar daemon) owns the clock and the sleeping. Each round is cheap
//! (a socket dump and, only when ties need it, a thread-state sample); slower work (new threads,
//! the fd table, schedstat, cgroup files, GC sources) runs at the refresh interval.
//!
//! Rooms: [`round`] turns a socket round into budget time; [`refresh`] is the slow work (process
//! liveness, threads, fd tables, what the next round visits); [`fds`] reads fd tables;
//! [`counters`] turns cumulative counters (schedstat, CPU, cgroups, GC) into budget totals;
//! [`oracle`] answers the socket sampler's questions from thread states; [`notes`] is the
//! evidence said in words.

mod counters;
mod fds;
mod jobs;
mod notes;
mod oracle;
mod refresh;
mod round;
mod unix;

use std::collections::BTreeMap;

// foldhash: the per-round maps of thread samples and fds are probed thousands of times a round at
// 10,000 connections (SipHash was a tenth of the agent there).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use scalewise_core::{Budget, RequestSource};
use thiserror::Error;

use crate::cgroup::{host_cores, CpuLimits};
use crate::deps::{DependencyNames, DependencySpec};
use crate::gc::{GcOptions, GcSource};
use crate::proc_files::parse_stat;
use crate::sampler::sockets::{SocketSampler, Visit};
use crate::sampler::threads::ThreadTable;
use fds::FdMark;
use notes::{InFlightSample, Notes, PerPid};
use oracle::ThreadKnowledge;
use unix::UnixDependencies;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("no process with pid {0} (is it running, and in this PID namespace?)")]
    UnknownPid(u32),
    #[error("pid {pid}: cannot read {path}: {source}")]
    Unreadable {
        pid: u32,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no pid given")]
    NoPids,
}

/// How often each part samples. Defaults keep the agent under 1% of a core on a busy service
/// (see BENCHMARKS.md).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub pids: Vec<u32>,
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Socket rounds: in-flight requests and dependency waits.
    pub sample_interval: Duration,
    /// Connections looked up per socket round at most, beyond those not known idle (see
    /// [`crate::sampler::sockets::SocketSampler::limit_lookups`]).
    pub max_lookups: usize,
    /// The refresh of the service's processes: new threads, fd table, schedstat, cgroup
    /// capacity, GC sources (not `run`'s `--discovery-interval`, which finds the processes).
    pub refresh_interval: Duration,
    /// Thread-state sampling when no socket tie asked for it (lock-wait corroboration).
    pub thread_state_interval: Duration,
    pub dependencies: Vec<DependencySpec>,
    pub gc: GcOptions,
}

impl SessionConfig {
    pub fn new(pids: Vec<u32>) -> Self {
        SessionConfig {
            pids,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
            sample_interval: Duration::from_millis(200),
            max_lookups: crate::sampler::sockets::DEFAULT_MAX_LOOKUPS,
            refresh_interval: Duration::from_secs(2),
            thread_state_interval: Duration::from_secs(2),
            dependencies: Vec::new(),
            gc: GcOptions::default(),
        }
    }
}

/// One of the service's processes.
struct Target {
    pid: u32,
    starttime: u64,
    threads: ThreadTable,
    limits: CpuLimits,
    cgroup_key: String,
    base_ticks: Option<u64>,
    ticks: u64,
    fds: HashMap<i32, u64>,
    /// The process's epoll instances (their interest lists say which connections an event loop
    /// is waiting on).
    epoll_fds: Vec<i32>,
    fds_denied: bool,
    /// Whether `/proc/PID/fd` was read at least once (so a refusal came mid-window).
    fds_read: bool,
    /// The fd table's mark (see [`fds::fd_table_mark`]) when it was last listed.
    fds_mark: Option<FdMark>,
    gc: Option<Box<dyn GcSource>>,
    gc_last: Option<f64>,
    /// (window_s, request_s) when the GC reading last changed.
    gc_mark: (f64, f64),
    alive: bool,
}

impl Target {
    /// The process `pid` as it is now, its GC source found; what is learnt of its runtime is
    /// said through `say`.
    fn open(cfg: &SessionConfig, pid: u32, say: &mut PerPid) -> Result<Target, SessionError> {
        let dir = cfg.proc_root.join(pid.to_string());
        let stat_path = dir.join("stat");
        let stat = match std::fs::read(&stat_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SessionError::UnknownPid(pid))
            }
            Err(source) => {
                return Err(SessionError::Unreadable {
                    pid,
                    path: stat_path,
                    source,
                })
            }
        };
        let stat = parse_stat(&stat).map_err(|e| SessionError::Unreadable {
            pid,
            path: stat_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let cgroup = std::fs::read(dir.join("cgroup")).unwrap_or_default();
        let (gc, gc_notes) = crate::gc::detect(&cfg.proc_root, pid, &cfg.gc);
        for n in gc_notes {
            say.add(n, pid);
        }
        if let Some(src) = &gc {
            say.add(notes::gc_source(src.as_ref()), pid);
        }
        Ok(Target {
            pid,
            starttime: stat.starttime,
            threads: ThreadTable::new(&cfg.proc_root, pid),
            limits: CpuLimits::resolve(&cfg.sys_root, &cgroup),
            cgroup_key: String::from_utf8_lossy(&cgroup).into_owned(),
            base_ticks: None,
            ticks: 0,
            fds: HashMap::new(),
            epoll_fds: Vec::new(),
            fds_denied: false,
            fds_read: false,
            fds_mark: None,
            gc,
            gc_last: None,
            gc_mark: (0.0, 0.0),
            alive: true,
        })
    }
}

/// Counts of sampler errors by (sampler, kind): the numbers behind
/// `scalewise_agent_sampler_errors_total`.
pub type ErrorCounts = BTreeMap<(&'static str, &'static str), u64>;

/// A short summary of the last round, for progress lines.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub threads: usize,
    pub inbound: usize,
    pub outbound: usize,
    pub alive: usize,
}

pub struct Session {
    cfg: SessionConfig,
    targets: Vec<Target>,
    sockets: Option<SocketSampler>,
    names: DependencyNames,
    budget: Budget,
    inode_owner: HashMap<u64, (u32, i32)>,
    /// The fd map being replaced during a scan (reused across targets and refreshes).
    fd_scratch: HashMap<i32, u64>,
    refreshes: u64,
    /// The service's socket inodes (from its fd tables) at the last full dump: a refresh
    /// whose fd scan finds none outside it has no new connection to find, and skips the dump.
    inodes_at_dump: HashSet<u64>,
    /// The next refresh visits every connection (the last round of a window).
    visit_all: bool,
    /// Event-loop CPU and run-queue delay totals at the last read (ns).
    loop_totals: (u64, u64),
    threads_known: ThreadKnowledge,
    host_cores: u32,
    clock_ticks: f64,
    last_step: Option<Instant>,
    last_refresh: Option<Instant>,
    last_thread_states: Option<Instant>,
    throttled: HashMap<String, f64>,
    pressure: HashMap<String, f64>,
    /// The namespace's accepted connections while inbound connections churn.
    accepted: round::Accepted,
    /// When closed connections in TIME_WAIT were last counted (the window's first round
    /// until then), and the new requests counted since from what the rounds saw.
    time_wait_counted: Option<Instant>,
    requests_since_time_wait: f64,
    /// Cores the service may use, re-read at each refresh (quotas change rarely).
    capacity_cores: f64,
    pub errors: ErrorCounts,
    pub progress: Progress,
    notes: Notes,
    /// The last sampling rate of idle connections.
    idle_sampling: Option<(usize, f64)>,
    /// Rounds of the in-flight time sample, for its standard error.
    in_flight_sample: InFlightSample,
    /// Dependencies over unix-domain sockets, found from the threads blocked reading them.
    unix: UnixDependencies,
    /// A worker's job sources (`jobs`).
    jobs: jobs::Jobs,
}

/// Connections a refresh at the configured interval is allowed; see
/// [`Session::refresh_every`].
pub const CONNS_PER_REFRESH: usize = 2000;

impl Session {
    pub fn new(cfg: SessionConfig) -> Result<Session, SessionError> {
        if cfg.pids.is_empty() {
            return Err(SessionError::NoPids);
        }
        let mut notes = Notes::default();
        // Runtime findings are said once per service, naming the processes they apply to.
        let mut per_pid = PerPid::default();
        let mut targets = Vec::new();
        for &pid in &cfg.pids {
            targets.push(Target::open(&cfg, pid, &mut per_pid)?);
        }
        per_pid.say(&mut notes);
        let sockets = match SocketSampler::new() {
            Ok(mut s) => {
                s.limit_lookups(cfg.max_lookups);
                Some(s)
            }
            Err(e) => {
                notes.add(notes::sockets_unavailable(&e));
                None
            }
        };
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Ok(Session {
            names: DependencyNames::new(&cfg.dependencies),
            host_cores: host_cores(&cfg.sys_root),
            clock_ticks: if hz > 0 { hz as f64 } else { 100.0 },
            cfg,
            targets,
            sockets,
            budget: Budget {
                request_source: RequestSource::None,
                ..Budget::default()
            },
            inode_owner: HashMap::new(),
            fd_scratch: HashMap::new(),
            refreshes: 0,
            inodes_at_dump: HashSet::new(),
            visit_all: false,
            loop_totals: (0, 0),
            threads_known: ThreadKnowledge::default(),
            last_step: None,
            last_refresh: None,
            last_thread_states: None,
            throttled: HashMap::new(),
            pressure: HashMap::new(),
            accepted: round::Accepted::default(),
            time_wait_counted: None,
            requests_since_time_wait: 0.0,
            capacity_cores: 0.0,
            errors: ErrorCounts::new(),
            progress: Progress::default(),
            notes,
            idle_sampling: None,
            in_flight_sample: InFlightSample::default(),
            unix: UnixDependencies::default(),
            jobs: jobs::Jobs::default(),
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.targets.iter().map(|t| t.pid).collect()
    }

    /// True while at least one of the service's processes is alive.
    pub fn any_alive(&self) -> bool {
        self.targets.iter().any(|t| t.alive)
    }

    fn count(&mut self, sampler: &'static str, kind: &'static str) {
        *self.errors.entry((sampler, kind)).or_default() += 1;
    }

    /// The refresh interval, stretched with the service's connections: a refresh walks the
    /// kernel's whole socket table and the service's fd table, a cost that grows with
    /// connections, so beyond [`CONNS_PER_REFRESH`] it comes proportionally less often (up to
    /// five times the configured interval), holding its cost per second about level. New
    /// connections are then found up to that much later; connections that churn still switch
    /// every round to a full dump.
    fn refresh_every(&self) -> Duration {
        let conns = self.sockets.as_ref().map_or(0, |s| s.connections());
        let stretch = (conns / CONNS_PER_REFRESH).clamp(1, 5) as u32;
        self.cfg.refresh_interval * stretch
    }

    /// One sampling round at time `now`.
    pub fn step(&mut self, now: Instant) {
        let dt = self
            .last_step
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last_step = Some(now);
        let every = self.refresh_every();
        let refresh_due = self
            .last_refresh
            .map_or(true, |t| now.saturating_duration_since(t) >= every);
        let visit = if refresh_due {
            self.last_refresh = Some(now);
            self.refresh()
        } else if self.sockets.as_ref().is_some_and(|s| s.outbound_churns()) {
            self.relist_fds()
        } else {
            Visit::Sampled
        };
        self.budget.window_s += dt;
        self.budget.capacity_core_s += self.capacity_cores * dt;
        self.socket_round(now, dt, refresh_due, visit);
    }

    /// The budget so far, with a final read of the slow counters.
    pub fn finish(&mut self, now: Instant) -> Budget {
        // The last round is a refresh that visits every connection (by lookups, or a full dump
        // when the fd scan found new sockets), so the requests on connections that sampling
        // skipped lately (idle ones, looked up with probability p) are counted to the end.
        self.last_refresh = None;
        self.visit_all = true;
        self.step(now);
        self.read_counters(true);
        let mut b = self.budget.clone();
        let (mut denied, mut malformed) = (0, 0);
        for t in &self.targets {
            denied += t.threads.errors.permission_denied;
            malformed += t.threads.errors.malformed;
        }
        for (kind, n) in [("permission_denied", denied), ("malformed", malformed)] {
            if n > 0 {
                *self.errors.entry(("threads", kind)).or_default() += n;
            }
        }
        if self.targets.iter().any(|t| t.threads.syscall_denied) {
            self.notes.add(notes::THREADS_UNREADABLE.to_string());
        }
        if let Some(text) = self.in_flight_sample.error_note(b.request_s, b.window_s) {
            self.notes.add(text);
        }
        if let Some((idle, p)) = self.idle_sampling {
            self.notes.add(notes::idle_sampling(idle, p));
        }
        b.notes = self.notes.to_vec();
        b
    }

    /// The budget so far without ending the session: the slow counters are read now (as at a
    /// refresh) and the notes attached. What the long-running `run` exports at each interval.
    pub fn snapshot(&mut self, _now: Instant) -> Budget {
        self.read_counters(false);
        let mut b = self.budget.clone();
        b.notes = self.notes.to_vec();
        if self.targets.iter().any(|t| t.threads.syscall_denied) {
            b.notes.push(notes::THREADS_UNREADABLE.to_string());
        }
        b
    }

    /// Sampler errors so far, the thread table's included, without changing [`Session::errors`].
    pub fn error_counts(&self) -> ErrorCounts {
        let mut errors = self.errors.clone();
        for t in &self.targets {
            for (kind, n) in [
                ("permission_denied", t.threads.errors.permission_denied),
                ("malformed", t.threads.errors.malformed),
            ] {
                if n > 0 {
                    *errors.entry(("threads", kind)).or_default() += n;
                }
            }
        }
        errors
    }

    /// Resident memory of the live processes, from `/proc/PID/statm` (pages × page size).
    pub fn rss_bytes(&self) -> u64 {
        let live: Vec<u32> = self
            .targets
            .iter()
            .filter(|t| t.alive)
            .map(|t| t.pid)
            .collect();
        crate::runtime::resident_bytes(&self.cfg.proc_root, &live).unwrap_or(0)
    }
}
