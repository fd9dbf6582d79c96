//! One socket round turned into budget time: requests in flight, queued and awaiting each
//! dependency, new requests, and the lock-wait thread sample at its own pace.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use scalewise_core::{DependencyTime, RequestSource};

use super::jobs;
use super::notes;
use super::oracle::Oracle;
use super::Session;
use crate::deps::DependencyNames;
use crate::peer::kind_of_local_server;
use crate::sampler::sockets::{Round, SocketSampler, Visit};

impl Session {
    /// The round's socket sample, the thread states it asked for (or that are due), and what
    /// both add to the budget. `refresh`: this round follows a refresh.
    pub(super) fn socket_round(&mut self, now: Instant, dt: f64, refresh: bool, visit: Visit) {
        let Some(mut sockets) = self.sockets.take() else {
            return;
        };
        let owner = &self.inode_owner;
        let owned = |inode: u64| inode != 0 && owner.contains_key(&inode);
        let mut oracle = Oracle::new(
            &mut self.targets,
            owner,
            &mut self.threads_known,
            &self.cfg.proc_root,
            refresh,
        );
        let result = sockets.sample(&owned, &mut oracle, refresh, visit);
        // Lock-wait corroboration at its own pace, reusing a sample a tie already paid for.
        // Due after its interval, or half of it in a refresh round, which has just read every
        // thread's schedstat: the sample then reads only the syscall files of threads that ran.
        // Once a dependency over a unix socket is known, every round: thread states are its
        // only measure.
        let states_due = self.unix.found
            || self.last_thread_states.map_or(true, |t| {
                let since = now.saturating_duration_since(t);
                since >= self.cfg.thread_state_interval
                    || (refresh && since >= self.cfg.thread_state_interval / 2)
            });
        let mut blocked_on = Vec::new();
        let mut interval = 0.0;
        if states_due || oracle.sampled() {
            let futex_blocked = oracle.futex_blocked();
            interval = self
                .last_thread_states
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
            self.budget.blocked_lock_s += futex_blocked as f64 * interval;
            self.last_thread_states = Some(now);
            blocked_on = oracle.blocked_on().to_vec();
        }
        if !blocked_on.is_empty() {
            self.add_unix_waits(&mut sockets, &blocked_on, interval);
        }
        // Connections to its dependencies that the service opened after its fd tables were
        // listed and before the dump: listed again, they are counted in this round.
        let result = result.map(|mut round| {
            if sockets.has_pending() {
                if self.refresh_targets(false, true) {
                    self.rebuild_owners();
                }
                let owner = &self.inode_owner;
                round.add_late(sockets.visit_late(&|i| i != 0 && owner.contains_key(&i)));
            }
            round
        });
        match result {
            Ok(round) => self.add_round(&mut sockets, round, dt),
            Err(e) => {
                tracing::warn!(error = %e, "socket sampling failed");
                self.count("sockets", e.kind());
            }
        }
        self.count_time_wait(&mut sockets, now, refresh);
        self.sockets = Some(sockets);
    }

    /// Requests on inbound connections that opened and closed between rounds: at each refresh
    /// while they churn, those the service closed first are counted from the TIME_WAIT sockets
    /// they left since the previous count (since the window's first round for the first), and
    /// what the rounds saw over the same time is raised to that count. Each such connection
    /// carried a request (a server closes a connection first after answering on it).
    fn count_time_wait(&mut self, sockets: &mut SocketSampler, now: Instant, refresh: bool) {
        let Some(since) = self.time_wait_counted else {
            self.time_wait_counted = Some(now);
            return;
        };
        if !refresh || !sockets.churns() {
            return;
        }
        match sockets.closed_by_service(now.saturating_duration_since(since)) {
            Ok(closed) => {
                let unseen = closed as f64 - self.requests_since_time_wait;
                if unseen > 0.0 {
                    self.budget.requests += unseen;
                }
                self.time_wait_counted = Some(now);
                self.requests_since_time_wait = 0.0;
            }
            Err(e) => self.count("time_wait", e.kind()),
        }
    }

    /// What one socket round adds to the budget, weighted by the time since the previous one.
    fn add_round(&mut self, sockets: &mut SocketSampler, round: Round, dt: f64) {
        if sockets.sees_listeners() {
            self.budget.request_source = RequestSource::Sockets;
        }
        tracing::trace!(
            full = round.full_dump,
            churn = sockets.churns(),
            in_flight = round.in_flight,
            inbound = round.inbound_conns,
            outbound = round.outbound_conns,
            awaiting = round.awaiting.iter().map(|(_, v)| v).sum::<f64>(),
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
        self.in_flight_sample.add(dt, round.in_flight);
        if let Some(sample) = sockets.idle_sample() {
            self.idle_sampling = Some(sample);
        }
        // Connections that open and close between two rounds are never seen; when they
        // churn, the namespace's count of accepted connections, less those other listeners
        // were seen to accept, is a floor on new requests.
        let others = sockets.take_others_accepted();
        let mut new_requests = round.new_requests;
        if let Some(accepted) = self.accepted_since_last(sockets.churns(), others) {
            new_requests = new_requests.max(accepted);
        }
        self.budget.requests += new_requests;
        self.requests_since_time_wait += new_requests;
        self.budget.socket_samples += round.samples;
        self.budget.ambiguous_samples += round.unresolved;
        self.add_queued(&round.queued, dt);
        self.budget.inbound_conn_s += round.inbound_conns as f64 * dt;
        self.budget.send_queue_s += round.send_queue * dt;
        // A worker's job sources: their quiet connections are jobs running (`session::jobs`).
        let mut sources = Vec::new();
        for (&endpoint, outbound) in &round.outbound_by_endpoint {
            let is = match self.jobs.source(endpoint) {
                Some(is) => is,
                None => {
                    // Resolved once: a dependency's entry keeps what the peer lookup found.
                    let key = endpoint.to_string();
                    let (kind, name) = match self.budget.downstream.get(&key) {
                        Some(d) => (d.kind.clone(), None),
                        None => resolve(&self.names, &self.cfg.proc_root, sockets, endpoint),
                    };
                    let is = self.jobs.decide(endpoint, &kind);
                    if !is {
                        self.budget.downstream.entry(key).or_insert(DependencyTime {
                            kind,
                            name,
                            ..DependencyTime::default()
                        });
                    }
                    is
                }
            };
            if is {
                sources.push(endpoint);
            } else if let Some(d) = self.budget.downstream.get_mut(&endpoint.to_string()) {
                d.connection_s += outbound.open as f64 * dt;
            }
        }
        let jobs = jobs::job_round(&sources, &round.outbound_by_endpoint, &round.awaiting);
        let worker = !sources.is_empty() && self.jobs.worker(new_requests, jobs.fetched);
        if worker {
            self.budget.request_s += jobs.in_flight * dt;
            self.budget.requests += jobs.fetched;
            self.in_flight_sample.add(dt, jobs.in_flight);
            self.budget.request_source = RequestSource::Sockets;
            for &e in &sources {
                self.jobs.note(e);
            }
            self.notes.add(notes::worker(&self.jobs.named));
        }
        let gaps = round.gap_awaiting.into_iter().map(|(e, s)| (e, s, 1.0));
        let rounds = round.awaiting.into_iter().map(|(e, v)| (e, v, dt));
        for (endpoint, v, dt) in rounds.chain(gaps) {
            // The wait for the next job is idle, not time on a dependency.
            if worker && sources.contains(&endpoint) {
                continue;
            }
            let (names, proc_root) = (&self.names, self.cfg.proc_root.as_path());
            self.budget
                .downstream
                .entry(endpoint.to_string())
                .or_insert_with(|| {
                    let (kind, name) = resolve(names, proc_root, sockets, endpoint);
                    DependencyTime {
                        kind,
                        name,
                        ..DependencyTime::default()
                    }
                })
                .awaiting_s += v * dt;
        }
        if sockets.churns() {
            self.notes.add(notes::CHURN.to_string());
            if !self.accepted.attributable() {
                self.notes.add(notes::CHURN_BOUNDS.to_string());
            }
        }
        self.progress.inbound = round.inbound_conns;
        self.progress.outbound = round.outbound_conns;
    }

    /// Time awaiting dependencies over unix-domain sockets: each thread blocked reading one
    /// stands for one request outstanding on it since the previous thread sample.
    fn add_unix_waits(&mut self, sockets: &mut SocketSampler, blocked_on: &[u64], interval: f64) {
        // The service's TCP sockets are the socket sampler's.
        let untracked: Vec<u64> = blocked_on
            .iter()
            .copied()
            .filter(|&i| !sockets.open_since_dump(i))
            .collect();
        let waiting = self.unix.waiting(&untracked, sockets, &self.cfg.proc_root);
        for (endpoint, kind, threads) in waiting {
            self.budget
                .downstream
                .entry(endpoint)
                .or_insert_with(|| DependencyTime {
                    kind: kind.to_string(),
                    ..DependencyTime::default()
                })
                .awaiting_s += threads as f64 * interval;
        }
    }

    /// Requests whose bytes sit unread, by socket inode: queued time, and the part of it that
    /// waits for an event loop.
    fn add_queued(&mut self, queued: &[(u64, f64)], dt: f64) {
        for &(inode, v) in queued {
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
    }

    /// Connections the service accepted since the previous call: the namespace's count
    /// (`PassiveOpens`) less `others`, those other listeners were seen to accept. `None` the
    /// first time, when not `wanted`, when unreadable, or while the other listeners accept
    /// too many for the difference to be the service's (their short-lived connections are
    /// seen only in part).
    fn accepted_since_last(&mut self, wanted: bool, others: usize) -> Option<f64> {
        if !wanted {
            self.accepted.last = None;
            return None;
        }
        let pid = self.targets.iter().find(|t| t.alive)?.pid;
        let path = self.cfg.proc_root.join(pid.to_string()).join("net/snmp");
        let now = std::fs::read(path)
            .ok()
            .and_then(|b| crate::proc_files::parse_tcp_counter(&b, "PassiveOpens"))?;
        let before = self.accepted.last.replace(now)?;
        let all = now.saturating_sub(before) as f64;
        self.accepted.all += all;
        self.accepted.others += others as f64;
        self.accepted
            .attributable()
            .then(|| (all - others as f64).max(0.0))
    }
}

/// The namespace's accepted connections while the service's churn: the counter at the last
/// read, and totals of all accepted and of those seen accepted by other listeners.
#[derive(Default)]
pub(super) struct Accepted {
    last: Option<u64>,
    all: f64,
    others: f64,
}

impl Accepted {
    /// Whether the namespace's count is the service's: other listeners were seen to accept
    /// under 5% of it (none in a pod of its own; a host's services on long-lived connections).
    /// Connections to another churning listener are seen only in part, so a larger share
    /// means the rest of its accepts are in the count too.
    pub(super) fn attributable(&self) -> bool {
        self.others <= 0.05 * self.all
    }
}

/// A dependency's kind and user-given name: from `--dependency` and well-known ports, and on
/// this host from the process listening there (`peer`).
fn resolve(
    names: &DependencyNames,
    proc_root: &Path,
    sockets: &SocketSampler,
    endpoint: SocketAddr,
) -> (String, Option<String>) {
    let (kind, name) = names.resolve(endpoint);
    let kind = match kind.as_str() {
        "unknown" if endpoint.ip().is_loopback() => sockets
            .listener_on(endpoint.port())
            .and_then(|inode| kind_of_local_server(proc_root, inode))
            .map_or(kind, str::to_string),
        _ => kind,
    };
    (kind, name)
}
