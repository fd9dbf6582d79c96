//! A sampling session: the samplers of one service's processes, run round by round, feeding one
//! cumulative [`Budget`].
//!
//! Time is a parameter: [`Session::step`] takes `now`, so the loop that calls it (the one-shot
//! `diagnose`, later the sidecar daemon) owns the clock and the sleeping. Each round is cheap
//! (a socket dump and, only when ties need it, a thread-state sample); slower work (new threads,
//! the fd table, schedstat, cgroup files, GC sources) runs at the discovery interval.

use std::collections::BTreeMap;

// foldhash: the per-round maps of thread samples and fds are probed thousands of times a round at
// 10,000 connections (SipHash was a tenth of the agent there).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use scalewise_core::{Budget, DependencyTime, RequestSource};
use thiserror::Error;

use crate::cgroup::{host_cores, CpuLimits};
use crate::deps::{DependencyNames, DependencySpec};
use crate::gc::{GcOptions, GcSemantics, GcSource};
use crate::proc_files::{is_epoll_link, parse_epoll_fdinfo, parse_socket_link, parse_stat};
use crate::sampler::sockets::{Reader, SocketSampler, ThreadOracle, Visit};
use crate::sampler::threads::{read_pollfds, Blocked, ThreadTable};

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
    /// New threads, fd table, schedstat, cgroup capacity, GC sources.
    pub discovery_interval: Duration,
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
            discovery_interval: Duration::from_secs(2),
            thread_state_interval: Duration::from_secs(2),
            dependencies: Vec::new(),
            gc: GcOptions::default(),
        }
    }
}

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
    /// The fd table's mark (see [`fd_table_mark`]) when it was last listed.
    fds_mark: Option<FdMark>,
    gc: Option<Box<dyn GcSource>>,
    gc_last: Option<f64>,
    /// (window_s, request_s) when the GC reading last changed.
    gc_mark: (f64, f64),
    alive: bool,
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
    /// The fd map being replaced during a scan (reused across targets and discoveries).
    fd_scratch: HashMap<i32, u64>,
    discoveries: u64,
    /// The service's socket inodes (from its fd tables) at the last full dump: a discovery
    /// whose fd scan finds none outside it has no new connection to find, and skips the dump.
    inodes_at_dump: HashSet<u64>,
    /// The next discovery visits every connection (the last round of a window).
    visit_all: bool,
    /// Event-loop CPU and run-queue delay totals at the last read (ns).
    loop_totals: (u64, u64),
    threads_known: ThreadKnowledge,
    host_cores: u32,
    clock_ticks: f64,
    last_step: Option<Instant>,
    last_discovery: Option<Instant>,
    last_thread_states: Option<Instant>,
    throttled: HashMap<String, f64>,
    pressure: HashMap<String, f64>,
    /// The namespace's accepted-connection counter at the previous churn round.
    passive_opens: Option<u64>,
    /// Cores the service may use, re-read at each discovery (quotas change rarely).
    capacity_cores: f64,
    pub errors: ErrorCounts,
    pub progress: Progress,
    notes: Vec<String>,
    /// The last sampling rate of idle connections.
    idle_sampling: Option<(usize, f64)>,
    /// Rounds of the in-flight time sample (`x`: the in flight of the connections looked up
    /// round after round): sums of `dt²`, `dt² x`, `dt² x²`, `dt x` and `dt`, for its standard
    /// error (rounds taken as independent: they are far apart next to most requests).
    rounds: (u64, [f64; 5]),
}

/// Connections a discovery at the configured interval is allowed; see
/// [`Session::discovery_every`].
pub const CONNS_PER_DISCOVERY: usize = 2000;

fn note(notes: &mut Vec<String>, text: String) {
    if !notes.contains(&text) {
        notes.push(text);
    }
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Result<Session, SessionError> {
        if cfg.pids.is_empty() {
            return Err(SessionError::NoPids);
        }
        let mut notes = Vec::new();
        // Runtime findings are said once per service, naming the processes they apply to.
        let mut per_pid: Vec<(String, Vec<u32>)> = Vec::new();
        let mut say = |text: String, pid: u32| match per_pid.iter_mut().find(|(t, _)| *t == text) {
            Some((_, pids)) => pids.push(pid),
            None => per_pid.push((text, vec![pid])),
        };
        let mut targets = Vec::new();
        for &pid in &cfg.pids {
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
                say(n, pid);
            }
            if let Some(src) = &gc {
                say(format!("GC pauses from {}", src.describe()), pid);
            }
            targets.push(Target {
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
            });
        }
        for (text, pids) in per_pid {
            let list: Vec<String> = pids.iter().map(u32::to_string).collect();
            let who = if pids.len() == 1 { "pid" } else { "pids" };
            note(&mut notes, format!("{who} {}: {text}", list.join(", ")));
        }
        let sockets = match SocketSampler::new() {
            Ok(mut s) => {
                s.limit_lookups(cfg.max_lookups);
                Some(s)
            }
            Err(e) => {
                note(
                    &mut notes,
                    format!("socket sampling unavailable ({e}): no request or dependency signal"),
                );
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
            discoveries: 0,
            inodes_at_dump: HashSet::new(),
            visit_all: false,
            loop_totals: (0, 0),
            threads_known: ThreadKnowledge::default(),
            last_step: None,
            last_discovery: None,
            last_thread_states: None,
            throttled: HashMap::new(),
            pressure: HashMap::new(),
            passive_opens: None,
            capacity_cores: 0.0,
            errors: ErrorCounts::new(),
            progress: Progress::default(),
            notes,
            idle_sampling: None,
            rounds: (0, [0.0; 5]),
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

    /// The discovery interval, stretched with the service's connections: a discovery walks the
    /// kernel's whole socket table and the service's fd table, a cost that grows with
    /// connections, so beyond [`CONNS_PER_DISCOVERY`] it comes proportionally less often (up to
    /// five times the configured interval), holding its cost per second about level. New
    /// connections are then found up to that much later; connections that churn still switch
    /// every round to a full dump.
    fn discovery_every(&self) -> Duration {
        let conns = self.sockets.as_ref().map_or(0, |s| s.connections());
        let stretch = (conns / CONNS_PER_DISCOVERY).clamp(1, 5) as u32;
        self.cfg.discovery_interval * stretch
    }

    /// One sampling round at time `now`.
    pub fn step(&mut self, now: Instant) {
        let dt = self
            .last_step
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last_step = Some(now);
        let every = self.discovery_every();
        let discovery_due = self
            .last_discovery
            .map_or(true, |t| now.saturating_duration_since(t) >= every);
        let visit = if discovery_due {
            self.last_discovery = Some(now);
            self.discover(now)
        } else {
            Visit::Sampled
        };
        self.budget.window_s += dt;
        self.budget.capacity_core_s += self.capacity_cores * dt;
        self.socket_round(now, dt, discovery_due, visit);
    }

    fn socket_round(&mut self, now: Instant, dt: f64, discover: bool, visit: Visit) {
        let Some(mut sockets) = self.sockets.take() else {
            return;
        };
        let owner = &self.inode_owner;
        let owned = |inode: u64| inode != 0 && owner.contains_key(&inode);
        let mut oracle = Oracle {
            targets: &mut self.targets,
            owner,
            memory: &mut self.threads_known,
            sampled: false,
            reading: HashSet::new(),
            futex_blocked: 0,
            scratch: Vec::new(),
            fds: Vec::new(),
            interest: HashMap::new(),
            proc_root: &self.cfg.proc_root,
            schedstat_fresh: discover,
        };
        let result = sockets.sample(&owned, &mut oracle, discover, visit);
        // Lock-wait corroboration at its own pace, reusing a sample a tie already paid for.
        // Due after its interval, or half of it in a discovery round, which has just read every
        // thread's schedstat: the sample then reads only the syscall files of threads that ran.
        let states_due = self.last_thread_states.map_or(true, |t| {
            let since = now.saturating_duration_since(t);
            since >= self.cfg.thread_state_interval
                || (discover && since >= self.cfg.thread_state_interval / 2)
        });
        if states_due || oracle.sampled {
            if !oracle.sampled {
                oracle.sample();
            }
            let interval = self
                .last_thread_states
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
            self.budget.blocked_lock_s += oracle.futex_blocked as f64 * interval;
            self.last_thread_states = Some(now);
        }
        match result {
            Ok(round) => {
                if sockets.sees_listeners() {
                    self.budget.request_source = RequestSource::Sockets;
                }
                tracing::trace!(
                    full = round.full_dump,
                    churn = sockets.churns(),
                    in_flight = round.in_flight,
                    inbound = round.inbound_conns,
                    dt,
                    "socket round"
                );
                // Connections sampling skipped are counted over their whole gap at their next
                // visit: request-seconds as they are.
                self.budget.request_s += round.in_flight * dt + round.gap_s;
                // Only the connections looked up round after round are a time sample; a gap's
                // request time is counted (exact exchanges, each at a kernel-timestamped
                // duration) and lands in lumps at the visits that end gaps, which are no spread
                // of the mean (at 10,000 connections they made a right figure read ±67%).
                let x = round.in_flight;
                self.rounds.0 += 1;
                let sums = &mut self.rounds.1;
                sums[0] += dt * dt;
                sums[1] += dt * dt * x;
                sums[2] += dt * dt * x * x;
                sums[3] += dt * x;
                sums[4] += dt;
                if let Some(sample) = sockets.idle_sample() {
                    self.idle_sampling = Some(sample);
                }
                // Connections that open and close between two rounds are never seen; when they
                // churn and every listener in the namespace is the service's, the kernel's
                // count of accepted connections is a floor on new requests.
                let mut new_requests = round.new_requests;
                if let Some(accepted) =
                    self.accepted_since_last(sockets.churns() && !sockets.others_listen())
                {
                    new_requests = new_requests.max(accepted);
                }
                self.budget.requests += new_requests;
                self.budget.socket_samples += round.samples;
                self.budget.ambiguous_samples += round.unresolved;
                for &(inode, v) in &round.queued {
                    self.budget.queued_s += v * dt;
                    // Not a thread-per-connection process: an event loop (seen in epoll, or too
                    // busy ever to be seen there) reads this socket.
                    let owner = self.inode_owner.get(&inode).map(|&(pid, _)| pid);
                    if owner.is_some_and(|pid| {
                        self.threads_known.event_loop_pids.contains(&pid)
                            || !self.threads_known.reader_pids.contains(&pid)
                    }) {
                        self.budget.loop_queued_s += v * dt;
                        if let Some(pid) = owner {
                            self.threads_known.loop_queue_pids.insert(pid);
                        }
                    }
                }
                self.budget.inbound_conn_s += round.inbound_conns as f64 * dt;
                self.budget.send_queue_s += round.send_queue * dt;
                let gaps = round.gap_awaiting.into_iter().map(|(e, s)| (e, s, 1.0));
                let rounds = round.awaiting.into_iter().map(|(e, v)| (e, v, dt));
                for (endpoint, v, dt) in rounds.chain(gaps) {
                    let (kind, name) = self.names.resolve(endpoint);
                    self.budget
                        .downstream
                        .entry(endpoint.to_string())
                        .or_insert_with(|| DependencyTime {
                            kind,
                            name,
                            awaiting_s: 0.0,
                        })
                        .awaiting_s += v * dt;
                }
                if sockets.churns() {
                    note(
                        &mut self.notes,
                        "inbound connections are short-lived (a request or a few each): every round walks the whole socket table, which costs more CPU".to_string(),
                    );
                    if sockets.others_listen() {
                        note(
                            &mut self.notes,
                            "request rate and mean latency are bounds, not measurements: connections that open and close between samples are not seen, and other processes listen in this network namespace, so its accepted-connection count is not the service's alone (shares are unaffected)".to_string(),
                        );
                    }
                }
                self.progress.inbound = round.inbound_conns;
                self.progress.outbound = round.outbound_conns;
            }
            Err(e) => {
                tracing::warn!(error = %e, "socket sampling failed");
                self.count("sockets", e.kind());
            }
        }
        self.sockets = Some(sockets);
    }

    /// Connections accepted in the service's network namespace since the previous call (`None`
    /// the first time, when not `wanted`, or when unreadable).
    fn accepted_since_last(&mut self, wanted: bool) -> Option<f64> {
        if !wanted {
            self.passive_opens = None;
            return None;
        }
        let pid = self.targets.iter().find(|t| t.alive)?.pid;
        let path = self.cfg.proc_root.join(pid.to_string()).join("net/snmp");
        let now = std::fs::read(path)
            .ok()
            .and_then(|b| crate::proc_files::parse_tcp_counter(&b, "PassiveOpens"))?;
        let before = self.passive_opens.replace(now)?;
        Some(now.saturating_sub(before) as f64)
    }

    /// The slow work: process liveness, threads, fd tables, counters. Returns what this
    /// discovery's socket round visits. A full dump when the fd scan found a socket inode it had
    /// not seen at the last dump (a new connection or listener), an fd table could not be read
    /// (new connections are then unseen), or every tenth discovery (a socket created before a
    /// dump and connected after it). A stable set of keep-alive connections thus costs exact
    /// lookups only; the dump walks the kernel's whole TCP hash table (about 5 ms here, the
    /// largest cost at 200 connections). The last round of a window visits every connection.
    fn discover(&mut self, now: Instant) -> Visit {
        let mut errors: Vec<(&'static str, &'static str)> = Vec::new();
        let periodic = self.discoveries % 10 == 0;
        // The inode -> owner map is rebuilt only when an fd table was listed or a process left.
        let mut fds_changed = false;
        for t in self.targets.iter_mut() {
            if !t.alive {
                continue;
            }
            let dir = self.cfg.proc_root.join(t.pid.to_string());
            // Same pid, different start time: the process exited and the pid was reused.
            let stat = std::fs::read(dir.join("stat"))
                .ok()
                .and_then(|b| parse_stat(&b).ok());
            let threads = match stat {
                Some(s) if s.starttime == t.starttime => {
                    let ticks = s.utime + s.stime;
                    t.base_ticks.get_or_insert(ticks);
                    t.ticks = ticks;
                    s.num_threads as usize
                }
                _ => {
                    t.alive = false;
                    fds_changed = true;
                    note(
                        &mut self.notes,
                        format!(
                            "pid {} exited after {:.1}s of sampling; the report covers what was gathered",
                            t.pid, self.budget.window_s
                        ),
                    );
                    continue;
                }
            };
            // The task directory is listed only when the thread count moved (a thread exited
            // and another started in between is found at the periodic full pass).
            if (periodic || threads != t.threads.thread_count()) && !t.threads.refresh() {
                t.alive = false;
                fds_changed = true;
                continue;
            }
            // Listing 10,000 fds costs 30 ms (the kernel instantiates an entry per fd): it is
            // skipped while the table's mark has not moved (same number of open fds, no TCP
            // connection opened in the network namespace), except at the periodic full pass.
            let mark = fd_table_mark(&dir).filter(|_| !t.fds_denied);
            let unchanged = !periodic && mark.is_some() && mark == t.fds_mark;
            if !t.fds_denied && !unchanged {
                fds_changed = true;
                // Every tenth discovery re-reads every link: an fd whose socket was closed and
                // reused while a dup kept the old inode open is not missed for long.
                let sockets = self.sockets.as_ref().filter(|_| !periodic);
                let known = |inode: u64| sockets.is_some_and(|s| s.open_since_dump(inode));
                match scan_fds(
                    &dir,
                    &mut t.fds,
                    &mut t.epoll_fds,
                    &mut self.fd_scratch,
                    &known,
                ) {
                    Ok(()) => {
                        t.fds_read = true;
                        t.fds_mark = mark;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        t.fds_denied = true;
                        errors.push(("fds", "permission_denied"));
                        let lacking =
                            crate::caps::lacking(crate::caps::effective(), crate::caps::PROC_FD);
                        let text = if t.fds_read {
                            // It changed credentials or made itself non-dumpable.
                            format!(
                                "pid {}: /proc/{}/fd became unreadable after {:.1}s of sampling ({lacking}): connections it opens from now on are not seen; grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH to follow it",
                                t.pid, t.pid, self.budget.window_s
                            )
                        } else {
                            format!(
                                "pid {}: cannot read /proc/{}/fd ({lacking}): run as the same user as the service, or grant CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH; without it no request or dependency time is attributed",
                                t.pid, t.pid
                            )
                        };
                        tracing::warn!("{text}");
                        note(&mut self.notes, text);
                    }
                    Err(_) => errors.push(("fds", "io")),
                }
            }
        }
        if fds_changed {
            self.inode_owner.clear();
            for t in self.targets.iter().filter(|t| t.alive) {
                for (&fd, &inode) in &t.fds {
                    self.inode_owner.insert(inode, (t.pid, fd));
                }
            }
        }
        // Only an agent that scrapes the service has connections to it; its fd table holds a
        // file per watched thread, too many to read for nothing at every discovery.
        let scrapes = self.cfg.gc.metrics_url.is_some() || self.cfg.gc.expvar_url.is_some();
        if let Some(s) = self.sockets.as_mut().filter(|_| scrapes) {
            s.set_agent_sockets(own_socket_inodes());
        }
        self.discoveries += 1;
        let blind = self.targets.iter().any(|t| t.alive && t.fds_denied);
        let new = fds_changed
            && self
                .inode_owner
                .keys()
                .any(|i| !self.inodes_at_dump.contains(i));
        let all = std::mem::take(&mut self.visit_all);
        let visit = if periodic || blind || new {
            self.inodes_at_dump.clear();
            self.inodes_at_dump.extend(self.inode_owner.keys());
            Visit::Dump
        } else if all {
            Visit::All
        } else {
            Visit::Sampled
        };
        let owner = &self.inode_owner;
        self.threads_known
            .readers
            .retain(|inode, _| owner.contains_key(inode));
        for e in errors {
            self.count(e.0, e.1);
        }
        self.read_counters(now, false);
        visit
    }

    /// Schedstat, process CPU, cgroup throttling and GC: cumulative counters turned into budget
    /// totals (assigned, not added, so reading them more often changes nothing).
    fn read_counters(&mut self, _now: Instant, last: bool) {
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

        // Processes sharing a cgroup share its capacity and its throttling: count each once.
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
                        note(
                            &mut self.notes,
                            format!(
                                "pid {}: {} reports GC counts only; the GC share is unknown, not zero",
                                t.pid, r.source
                            ),
                        );
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

    /// The budget so far, with a final read of the slow counters.
    pub fn finish(&mut self, now: Instant) -> Budget {
        // The last round is a discovery that visits every connection (by lookups, or a full dump
        // when the fd scan found new sockets), so the requests on connections that sampling
        // skipped lately (idle ones, looked up with probability p) are counted to the end.
        self.last_discovery = None;
        self.visit_all = true;
        self.step(now);
        self.read_counters(now, true);
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
            note(
                &mut self.notes,
                "thread states unreadable (/proc/PID/task/TID/syscall needs CAP_SYS_PTRACE, or the same uid with kernel.yama.ptrace_scope=0): ties within a kernel tick on event loops left unresolved, lock waits not corroborated".to_string(),
            );
        }
        if let Some(text) = self.sampling_error(b.request_s, b.window_s) {
            note(&mut self.notes, text);
        }
        if let Some((idle, p)) = self.idle_sampling {
            note(
                &mut self.notes,
                format!(
                    "{idle} idle connections: about 1 in {:.0} looked up per round; each is counted over the rounds it was skipped at its next visit, from its exact exchange count and the kernel's timestamps (request counts stay exact)",
                    (1.0 / p).round()
                ),
            );
        }
        b.notes = self.notes.clone();
        b
    }

    /// Mean in flight is a time sample: its standard error from the spread between rounds,
    /// said when it is more than 3% of the mean (a short window on a service whose connections
    /// alternate between busy and idle), so that nobody reads a sampling wobble as a change.
    fn sampling_error(&self, request_s: f64, window_s: f64) -> Option<String> {
        let (n, [s0, s1, s2, sx, sdt]) = self.rounds;
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

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The budget so far without ending the session: the slow counters are read now (as at a
    /// discovery) and the notes attached. What the long-running `run` exports at each interval.
    pub fn snapshot(&mut self, now: Instant) -> Budget {
        self.read_counters(now, false);
        let mut b = self.budget.clone();
        b.notes = self.notes.clone();
        if self.targets.iter().any(|t| t.threads.syscall_denied) {
            b.notes.push("thread states unreadable (/proc/PID/task/TID/syscall needs CAP_SYS_PTRACE, or the same uid with kernel.yama.ptrace_scope=0): ties within a kernel tick on event loops left unresolved, lock waits not corroborated".to_string());
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
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        self.targets
            .iter()
            .filter(|t| t.alive)
            .filter_map(|t| {
                let path = self.cfg.proc_root.join(t.pid.to_string()).join("statm");
                let text = std::fs::read_to_string(path).ok()?;
                text.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .sum::<u64>()
            * page
    }
}

/// Maps the process's socket fds to inodes. Rebuilt each time (fd numbers are reused), but an fd
/// last seen on a socket that was still open at the last dump (`known`) keeps its inode without
/// a readlink: a closed socket's fd is re-read, and a reused fd number whose old socket stayed
/// open through a dup is caught by the periodic full re-read. On a server with 10,000
/// connections, that readlink per fd per discovery was a sixth of the agent's CPU.
///
/// Built aside (in `next`) and swapped in whole: a table refused mid-window keeps the
/// connections known so far (their sockets are still looked up by inode), rather than
/// forgetting them.
/// The agent's own sockets (its scrapes of the service's metrics endpoints, its exports): the
/// service's end of such a connection is the agent's traffic, not a client's request.
fn own_socket_inodes() -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return std::collections::HashSet::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| parse_socket_link(t.as_os_str().as_encoded_bytes()))
        .collect()
}

/// What can be learnt of an fd table without listing it: its number of open fds (the size
/// `stat` gives `/proc/PID/fd` since Linux 6.2; `None` before), its owner and the TCP
/// connections opened in the process's network namespace (`ActiveOpens + PassiveOpens`). A new
/// connection moves the last; a new epoll instance or a socket passed in moves the first, unless
/// another fd closed in the same interval, which the periodic full pass catches. The owner moves
/// when the process changes credentials or makes itself non-dumpable (its /proc files become
/// root's): the table is listed again, and a refusal is said when it happens, not at the next
/// new connection.
fn fd_table_mark(proc_pid: &Path) -> Option<FdMark> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(proc_pid.join("fd")).ok()?;
    if meta.len() == 0 {
        return None;
    }
    let snmp = std::fs::read(proc_pid.join("net/snmp")).ok()?;
    let opens = crate::proc_files::parse_tcp_counter(&snmp, "ActiveOpens")?
        + crate::proc_files::parse_tcp_counter(&snmp, "PassiveOpens")?;
    Some(FdMark {
        open: meta.len(),
        owner: (meta.uid(), meta.gid()),
        tcp_opens: opens,
    })
}

/// See [`fd_table_mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FdMark {
    open: u64,
    owner: (u32, u32),
    tcp_opens: u64,
}

/// `readlinkat(dir, name)`: std has only the path-based `read_link`, whose walk from `/` to
/// `/proc/PID/fd/N` was half the cost of reading 10,000 links. Targets longer than the buffer
/// come back truncated, which is harmless here: only socket and epoll links are parsed, and
/// both are short.
fn readlink_at<'b>(
    dir: &std::fs::File,
    name: &[u8],
    buf: &'b mut [u8; 64],
) -> std::io::Result<&'b [u8]> {
    use std::os::fd::AsRawFd;
    let mut cname = [0u8; 24];
    if name.len() >= cname.len() || name.contains(&0) {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    cname[..name.len()].copy_from_slice(name);
    // SAFETY: `cname` is NUL-terminated (zeroed beyond `name`, which has no NUL), `buf` is
    // writable for its length, and `dir` is an open descriptor for the call's duration.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            cname.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(&buf[..n as usize])
}

fn scan_fds(
    proc_pid: &Path,
    out: &mut HashMap<i32, u64>,
    epolls: &mut Vec<i32>,
    next: &mut HashMap<i32, u64>,
    known: &dyn Fn(u64) -> bool,
) -> std::io::Result<()> {
    next.clear();
    let mut loops = Vec::new();
    let fd_dir = proc_pid.join("fd");
    let dir = std::fs::File::open(&fd_dir)?;
    let mut link_buf = [0u8; 64];
    for entry in std::fs::read_dir(&fd_dir)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        let Some(fd) = std::str::from_utf8(name)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(&inode) = out.get(&fd) {
            if known(inode) {
                next.insert(fd, inode);
                continue;
            }
        }
        let link = match readlink_at(&dir, name, &mut link_buf) {
            Ok(t) => t,
            // The directory is listable with CAP_DAC_READ_SEARCH alone, but each link needs
            // ptrace access (CAP_SYS_PTRACE): refused, not closed.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Err(e),
            Err(_) => continue, // closed since readdir
        };
        if let Some(inode) = parse_socket_link(link) {
            next.insert(fd, inode);
        } else if is_epoll_link(link) {
            loops.push(fd);
        }
    }
    std::mem::swap(out, next);
    *epolls = loops;
    Ok(())
}

/// What thread sampling has learnt, kept across rounds.
#[derive(Default)]
struct ThreadKnowledge {
    /// Inbound socket inode -> the thread last seen blocked reading it. Thread-per-connection
    /// servers keep a connection on one thread for its life, so a tie on that connection is
    /// settled by reading one thread's state instead of every thread's.
    readers: HashMap<u64, (u32, u32)>,
    /// Processes whose threads were readable at the last full sample.
    known_pids: HashSet<u32>,
    /// Processes seen with a thread waiting in epoll/select at any full sample: idle connections
    /// need no reader there.
    event_loop_pids: HashSet<u32>,
    /// Processes whose unread requests were counted as waiting for an event loop.
    loop_queue_pids: HashSet<u32>,
    /// Processes seen with a thread blocked reading one of their sockets (sticky).
    reader_pids: HashSet<u32>,
}

/// A process's epoll interest: fd -> event mask over all its instances, and whether it registers
/// its connections for reading at all.
type Interest = (HashMap<i32, u32>, bool);

/// Thread states sampled at most once per round, on the first tie that needs them.
struct Oracle<'a> {
    targets: &'a mut [Target],
    owner: &'a HashMap<u64, (u32, i32)>,
    memory: &'a mut ThreadKnowledge,
    sampled: bool,
    reading: HashSet<(u32, i32)>,
    futex_blocked: usize,
    scratch: Vec<(u32, Option<Blocked>)>,
    fds: Vec<i32>,
    /// Per process, read at most once a round: fd -> epoll event mask over all its instances,
    /// or `None` when it has none or they cannot be read.
    interest: HashMap<u32, Option<Interest>>,
    proc_root: &'a Path,
    /// This round's discovery has just read every thread's schedstat.
    schedstat_fresh: bool,
}

impl Oracle<'_> {
    /// The fds a blocked thread is waiting to read, if any.
    fn read_fds(pid: u32, state: Option<Blocked>, out: &mut Vec<i32>) {
        out.clear();
        match state {
            Some(Blocked::Reading { fd }) => out.push(fd),
            Some(Blocked::Polling { pollfds, nfds }) => {
                read_pollfds(pid, pollfds, nfds, out);
            }
            _ => {}
        }
    }

    fn sample(&mut self) {
        self.sampled = true;
        self.memory.known_pids.clear();
        // Sticky: an event loop that happens to be running at one sample is still an event loop,
        // and its idle connections still have no thread reading them.
        for t in self.targets.iter_mut().filter(|t| t.alive) {
            // An event loop's ties are settled by its epoll interest, never by which socket a
            // thread blocks on: the descriptor sets its threads poll are not read (a copy from
            // the process's memory per polling thread).
            let event_loop = self.memory.event_loop_pids.contains(&t.pid);
            t.threads
                .sample_states(&mut self.scratch, self.schedstat_fresh);
            if t.threads.syscall_denied {
                continue;
            }
            self.memory.known_pids.insert(t.pid);
            let still = t.threads.still_threads();
            for &(tid, state) in &self.scratch {
                match state {
                    // A futex wait is contention only for a thread that runs: one parked since
                    // the previous sample (an idle pool or helper thread) waits for work.
                    Some(Blocked::Futex) if !still.contains(&tid) => self.futex_blocked += 1,
                    Some(Blocked::Epoll) => {
                        self.memory.event_loop_pids.insert(t.pid);
                    }
                    // poll() on many descriptors is an event loop too.
                    Some(Blocked::Polling { nfds, .. }) if nfds > 2 => {
                        self.memory.event_loop_pids.insert(t.pid);
                    }
                    _ => {}
                }
                if event_loop {
                    continue;
                }
                Self::read_fds(t.pid, state, &mut self.fds);
                for &fd in &self.fds {
                    self.reading.insert((t.pid, fd));
                    if let Some(&inode) = t.fds.get(&fd) {
                        self.memory.readers.insert(inode, (t.pid, tid));
                        self.memory.reader_pids.insert(t.pid);
                    }
                }
            }
        }
    }

    /// The union of a process's epoll interest lists, read once a round.
    /// The second value: whether the process registers its connections for reading at all.
    fn interest(&mut self, pid: u32) -> Option<&Interest> {
        const EPOLLIN: u32 = 0x1;
        if !self.interest.contains_key(&pid) {
            let mut all: Option<Interest> = None;
            if let Some(t) = self.targets.iter().find(|t| t.pid == pid) {
                let mut lines = Vec::new();
                for &epfd in &t.epoll_fds {
                    let path = self
                        .proc_root
                        .join(pid.to_string())
                        .join("fdinfo")
                        .join(epfd.to_string());
                    let Ok(buf) = std::fs::read(path) else {
                        continue;
                    };
                    parse_epoll_fdinfo(&buf, &mut lines);
                    let (map, sockets) = all.get_or_insert_with(|| (HashMap::new(), false));
                    for &(fd, events) in &lines {
                        *map.entry(fd).or_default() |= events;
                        *sockets |= events & EPOLLIN != 0 && t.fds.contains_key(&fd);
                    }
                }
            }
            self.interest.insert(pid, all);
        }
        self.interest.get(&pid).and_then(Option::as_ref)
    }

    /// Settles an inbound tie from the one thread known to serve the connection, if any.
    fn ask_reader(&mut self, inode: u64, pid: u32, fd: i32) -> Option<Reader> {
        let &(rpid, tid) = self.memory.readers.get(&inode)?;
        if rpid != pid
            || !self.memory.known_pids.contains(&pid)
            || self.memory.event_loop_pids.contains(&pid)
        {
            return None;
        }
        let t = self.targets.iter_mut().find(|t| t.pid == pid)?;
        let state = t.threads.sample_one(tid)?;
        Self::read_fds(pid, state, &mut self.fds);
        Some(if self.fds.contains(&fd) {
            Reader::Blocked
        } else {
            Reader::Unread
        })
    }
}

impl ThreadOracle for Oracle<'_> {
    fn reader(&mut self, inode: u64, inbound: bool) -> Reader {
        let Some(&(pid, fd)) = self.owner.get(&inode) else {
            return Reader::Unknown;
        };
        // An event loop (known from an earlier sample) never blocks on one socket: its thread
        // states cannot settle a tie, so they are not read for it (that is the agent's cost).
        // Only its epoll interest lists can.
        if self.memory.event_loop_pids.contains(&pid) {
            return if inbound {
                self.interest_reader(pid, fd)
            } else {
                Reader::Unknown
            };
        }
        if inbound && !self.sampled {
            if let Some(r) = self.ask_reader(inode, pid, fd) {
                return r;
            }
        }
        if !self.sampled {
            self.sample();
        }
        if !self.memory.known_pids.contains(&pid) {
            Reader::Unknown
        } else if self.reading.contains(&(pid, fd)) {
            Reader::Blocked
        } else if inbound && self.memory.event_loop_pids.contains(&pid) {
            self.interest_reader(pid, fd)
        } else if self.memory.event_loop_pids.contains(&pid)
            || !self.memory.reader_pids.contains(&pid)
        {
            // "No thread reads it" proves a request in flight only in a process whose threads
            // are known to block reading their connections (thread per connection). A busy event
            // loop may never be caught in epoll, and never blocks on one socket.
            Reader::Unknown
        } else {
            Reader::Unread
        }
    }
}

impl Oracle<'_> {
    /// An event loop registers the connections it waits on in epoll. A dispatcher that hands a
    /// request to a worker pool (JDK HttpServer, and any EPOLLONESHOT server) takes the
    /// connection out, or disarms it, until the response is written: a connection missing from
    /// a process that does register its connections is being served. Loops that keep every
    /// connection armed (Node, Go, tokio, Netty) say nothing here.
    fn interest_reader(&mut self, pid: u32, fd: i32) -> Reader {
        const EPOLLIN: u32 = 0x1;
        let Some((map, registers_connections)) = self.interest(pid) else {
            return Reader::Unknown;
        };
        match map.get(&fd) {
            Some(events) if events & EPOLLIN != 0 => Reader::Unknown,
            _ if *registers_connections => Reader::Unread,
            _ => Reader::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(dir: &Path, fd: i32, target: &str) {
        let path = dir.join("fd").join(fd.to_string());
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(target, path).expect("test fixture");
    }

    #[test]
    fn an_fd_on_a_socket_still_open_is_not_read_again_and_a_closed_one_is() {
        let dir = std::env::temp_dir().join(format!("scalewise-scan-fds-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("fd")).expect("test fixture");
        link(&dir, 3, "socket:[100]");
        link(&dir, 4, "socket:[200]");
        link(&dir, 5, "anon_inode:[eventpoll]");
        link(&dir, 6, "/var/log/app.log");
        let (mut fds, mut epolls, mut scratch) = (HashMap::new(), Vec::new(), HashMap::new());
        scan_fds(&dir, &mut fds, &mut epolls, &mut scratch, &|_| false).expect("test fixture");
        assert_eq!(fds, HashMap::from_iter([(3, 100), (4, 200)]));
        assert_eq!(epolls, vec![5]);

        // Both fd numbers now hold new sockets; only 100 was open at the last dump (so fd 3 is
        // taken to be unchanged until the periodic full read), 200 was closed: fd 4 is re-read.
        link(&dir, 3, "socket:[300]");
        link(&dir, 4, "socket:[400]");
        std::fs::remove_file(dir.join("fd").join("6")).expect("test fixture");
        let open = |inode: u64| inode == 100;
        scan_fds(&dir, &mut fds, &mut epolls, &mut scratch, &open).expect("test fixture");
        assert_eq!(fds, HashMap::from_iter([(3, 100), (4, 400)]));
        // The full read.
        scan_fds(&dir, &mut fds, &mut epolls, &mut scratch, &|_| false).expect("test fixture");
        assert_eq!(fds, HashMap::from_iter([(3, 300), (4, 400)]));
        // A closed fd disappears whatever its socket.
        std::fs::remove_file(dir.join("fd").join("3")).expect("test fixture");
        scan_fds(&dir, &mut fds, &mut epolls, &mut scratch, &|_| true).expect("test fixture");
        assert_eq!(fds, HashMap::from_iter([(4, 400)]));
        std::fs::remove_dir_all(&dir).expect("test fixture");
    }

    #[test]
    fn the_fd_table_mark_moves_when_a_connection_opens() {
        let me = Path::new("/proc/self");
        let open = std::fs::metadata(me.join("fd"))
            .expect("/proc/self/fd")
            .len();
        let before = fd_table_mark(me);
        if open == 0 {
            // Before Linux 6.2 the directory's size is not its fd count: always listed.
            assert_eq!(before, None);
            return;
        }
        let before = before.expect("a mark on Linux 6.2 and later");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let after = fd_table_mark(me).expect("mark");
        // Opens only grow (tests running beside this one can only add to them).
        assert!(
            after.tcp_opens >= before.tcp_opens + 2,
            "{before:?} -> {after:?}"
        );
        assert_eq!(after.owner, before.owner);
    }
}
