//! Requests in flight and time awaiting each dependency, from the service's TCP connections.
//!
//! Each round dumps the TCP sockets (see [`crate::sockdiag`]) and decides, per connection,
//! whether a request is outstanding on it at this instant (inbound: the peer waits for our
//! response; outbound: we wait for the dependency's). In order ([`decide`]):
//! 1. unread bytes: inbound, a request queued for the service; outbound, a response it has not
//!    read yet (its own delay);
//! 2. bytes written and not yet sent: the peer does not have the whole message
//!    (a response held by Nagle's algorithm until the client's delayed ACK is request time);
//! 3. the peer spoke last by `tcp_info`'s timestamps;
//! 4. the connection's learnt exchange shape ([`super::shape`]): exact segment counters, which
//!    settle ties that timestamps (kernel-tick resolution) cannot, including requests far shorter
//!    than a tick, part-sent responses and event loops;
//! 5. we spoke last by timestamps;
//! 6. a tie: nothing moved since a round whose state was known (it carries), a first request,
//!    a thread blocked reading that socket or, in a process without event loops, none reading it,
//!    or nothing moved for a second (idle);
//! 7. otherwise the sample is *unresolved*: it takes the in-flight rate of the service's resolved
//!    samples ([`Fill`]), is counted, and lowers the confidence. Never a flat half.
//!
//! Summed over rounds and weighted by the time between them, these give mean in-flight requests
//! (`R`) and request-seconds per dependency.

mod decide;
mod gaps;
mod lookups;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::shape::{Known, Shape};
use crate::sockdiag::{
    SockDiag, SockDiagError, TcpInfo, TcpSocket, UnixSocket, TCP_ESTABLISHED, TCP_LISTEN,
    TIME_WAIT_MS,
};
pub use decide::{decide, last_data, Decision, Fill, How, LastData, Reader, ThreadOracle};
use decide::{known, NoThreads};
use gaps::{gap_busy, last_exchange_ms};
use lookups::{is_idle, stratum};
pub use lookups::{DEFAULT_MAX_LOOKUPS, MIN_IDLE_LOOKUPS};

struct Conn {
    inbound: bool,
    sock: TcpSocket,
    info: TcpInfo,
    decision: Decision,
    round: u64,
    shape: Shape,
    /// Data segments it had sent when first seen: an outbound connection that has sent nothing
    /// since is a spare (a pool's, a worker's control connection), never a worker's fetch.
    first_segs_out: u32,
}

/// What one round found, to be weighted by the time since the previous round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Round {
    pub in_flight: f64,
    /// Requests that arrived since the previous round (inbound data segments).
    pub new_requests: f64,
    /// Outstanding requests per dependency endpoint.
    pub awaiting: Vec<(SocketAddr, f64)>,
    pub samples: u64,
    /// Samples nothing could resolve; their value was estimated (see [`Fill`]).
    pub unresolved: u64,
    /// Inbound requests whose bytes sat unread (waiting for the service to read them), by
    /// socket inode (0 for connections not yet accepted).
    pub queued: Vec<(u64, f64)>,
    /// Inbound requests whose response was written but not yet all sent or acknowledged.
    pub send_queue: f64,
    /// Inbound requests decided by the learnt exchange shape.
    pub by_shape: u64,
    /// Request-seconds of connections that sampling had skipped, over their whole gap (added to
    /// the budget as they are, not weighted by the round's interval).
    pub gap_s: f64,
    /// The same for outbound connections, per dependency endpoint.
    pub gap_awaiting: HashMap<SocketAddr, f64>,
    pub inbound_conns: usize,
    pub outbound_conns: usize,
    /// Per dependency endpoint: its connections this round ([`Outbound`]).
    pub outbound_by_endpoint: HashMap<SocketAddr, Outbound>,
    /// Whether this round walked the whole socket table.
    pub full_dump: bool,
}

/// One dependency endpoint's connections in one round.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Outbound {
    /// Connections visited, whatever their state (a pool's size; sampled rounds at thousands of
    /// connections leave some out).
    pub open: usize,
    /// Connections decided at this instant (not over a gap) that have sent something since first
    /// seen (spare connections are left out). A worker's job source is read from these
    /// (`session::jobs`).
    pub active: usize,
    /// Requests the service sent on them since the previous visit (data segments out).
    pub sent: f64,
}

impl Round {
    /// Adds the outbound connections [`SocketSampler::visit_late`] decided after this round.
    pub fn add_late(&mut self, late: Round) {
        self.awaiting.extend(late.awaiting);
        self.gap_awaiting.extend(late.gap_awaiting);
        self.samples += late.samples;
        self.unresolved += late.unresolved;
        self.outbound_conns += late.outbound_conns;
        for (e, o) in late.outbound_by_endpoint {
            let per = self.outbound_by_endpoint.entry(e).or_default();
            per.open += o.open;
            per.active += o.active;
            per.sent += o.sent;
        }
    }
}

type Key = (SocketAddr, SocketAddr);
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
type FastIndexSet<K> = indexmap::IndexSet<K, foldhash::fast::FixedState>;

/// What a round visits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    /// Connections not known idle, and a sample of the idle ones.
    Sampled,
    /// Every known connection, by lookups (the last round of a window: counts exact to the end).
    All,
    /// A full dump: every TCP socket of the namespace (new connections, listeners).
    Dump,
}

/// Finds the service's connections with a full dump (a walk of the kernel's whole TCP hash table,
/// milliseconds on a large host) only when it must, and follows known connections with exact
/// lookups (microseconds each) in between.
pub struct SocketSampler {
    diag: SockDiag,
    socks: Vec<TcpSocket>,
    /// The buffer of [`SocketSampler::closed_by_service`]'s dumps.
    time_wait: Vec<TcpSocket>,
    /// Endpoints the service's outbound connections have gone to, and this round's sockets to
    /// them that no fd table held yet (see [`SocketSampler::visit_late`]).
    dependency_endpoints: HashSet<SocketAddr>,
    pending: Vec<TcpSocket>,
    known: Vec<TcpSocket>,
    found: Vec<Option<TcpSocket>>,
    listen_ports: HashSet<u16>,
    conns: FastMap<Key, Conn>,
    /// The keys of `conns`: known idle by [`stratum`], and the others; indexed, so a round picks
    /// its sample of idle connections without visiting the others.
    idle: [FastIndexSet<Key>; 2],
    busy: FastIndexSet<Key>,
    /// Inbound connections among `idle`.
    idle_inbound: usize,
    /// Per stratum: visits to connections that were idle at their previous visit, and how many
    /// of those found them busy (decayed): how likely each stratum is to be busy.
    strata: [(f64, f64); 2],
    round: u64,
    /// Short-lived inbound connections (one request each) are invisible to lookups of the
    /// connections known at the last dump: when they churn, every round is a full dump.
    churn: Churn,
    /// Short-lived outbound connections (a connection per call to a dependency) are invisible
    /// until an fd scan finds them: when they churn, the session lists the fd tables every
    /// round and every round is a full dump.
    outbound_churn: Churn,
    /// A listening socket in this network namespace belongs to another process: namespace-wide
    /// counters (accepted connections) are then not the service's alone.
    foreign_listeners: bool,
    /// Other processes' listening sockets at the last full dump, by port (a dependency on this
    /// host is named after the process behind it).
    others_listening: HashMap<u16, u64>,
    /// Other processes' accepted connections at the last full dump (for which round), and how
    /// many new ones the dumps of consecutive rounds have seen since the session last asked
    /// ([`SocketSampler::take_others_accepted`]).
    others_conns: (HashSet<Key>, u64),
    others_accepted: usize,
    fill_inbound: Fill,
    fill_outbound: Fill,
    /// Lookups per round (connections not known idle are always looked up; idle ones share
    /// what is left, at least [`MIN_IDLE_LOOKUPS`]); see [`SocketSampler::choose_lookups`].
    max_lookups: usize,
    /// Per direction (inbound, outbound): the sum and count of exchange durations seen (ms),
    /// for exchanges a gap hides (see [`gap_busy`]).
    exchange_ms: [(f64, f64); 2],
    /// Inbound and outbound connections skipped in this round.
    skipped: (usize, usize),
    /// Idle connections and the probability each was looked up with, in the last round.
    idle_sampled: (usize, f64),
    /// Inodes of the service's sockets open at the last full dump and not seen closed since:
    /// an fd still mapped to one needs no new readlink (see `session::fds::scan_fds`).
    open_at_dump: HashSet<u64>,
    /// The agent's own socket inodes, and the local addresses they had at the last full dump:
    /// an inbound connection from one of those is the agent scraping the service, left out.
    agent_inodes: HashSet<u64>,
    agent_addrs: HashSet<SocketAddr>,
}

impl SocketSampler {
    pub fn new() -> Result<SocketSampler, SockDiagError> {
        Ok(SocketSampler {
            diag: SockDiag::open()?,
            socks: Vec::with_capacity(1024),
            time_wait: Vec::new(),
            dependency_endpoints: HashSet::new(),
            pending: Vec::new(),
            known: Vec::new(),
            found: Vec::new(),
            listen_ports: HashSet::new(),
            conns: FastMap::default(),
            idle: Default::default(),
            busy: FastIndexSet::default(),
            idle_inbound: 0,
            strata: [(0.0, 0.0); 2],
            round: 0,
            churn: Churn::default(),
            outbound_churn: Churn::default(),
            foreign_listeners: false,
            others_listening: HashMap::new(),
            others_conns: (HashSet::new(), 0),
            others_accepted: 0,
            fill_inbound: Fill::default(),
            fill_outbound: Fill::default(),
            max_lookups: DEFAULT_MAX_LOOKUPS,
            exchange_ms: [(0.0, 0.0); 2],
            skipped: (0, 0),
            idle_sampled: (0, 1.0),
            open_at_dump: HashSet::new(),
            agent_inodes: HashSet::new(),
            agent_addrs: HashSet::new(),
        })
    }

    /// Connections known (both directions).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Looks up at most `n` connections a round beyond those not known idle (see
    /// [`SocketSampler::choose_lookups`]).
    pub fn limit_lookups(&mut self, n: usize) {
        self.max_lookups = n;
    }

    /// Whether a listening socket of the service has been seen: its inbound connections are
    /// then its requests.
    pub fn sees_listeners(&self) -> bool {
        !self.listen_ports.is_empty()
    }

    /// Whether inbound connections are short-lived (a request or a few each): every round is
    /// then a full dump, and connections that open and close between rounds are not seen.
    pub fn churns(&self) -> bool {
        self.churn.on
    }

    /// Outbound connections are short-lived: a connection per call to a dependency.
    pub fn outbound_churns(&self) -> bool {
        self.outbound_churn.on
    }

    /// Whether another process listens in this network namespace: namespace-wide counters
    /// (accepted connections) are then not the service's alone.
    pub fn others_listen(&self) -> bool {
        self.foreign_listeners
    }

    /// New connections to other processes' listeners seen by the full dumps of consecutive
    /// rounds since the last call: a floor on what else the namespace's accepted-connection
    /// count holds (connections that live between two rounds are not seen).
    pub fn take_others_accepted(&mut self) -> usize {
        std::mem::take(&mut self.others_accepted)
    }

    /// The idle connections of the last round and the probability each was looked up with,
    /// when sampling skipped some (`None` when every one was looked up).
    pub fn idle_sample(&self) -> Option<(usize, f64)> {
        let (idle, p) = self.idle_sampled;
        (p < 1.0).then_some((idle, p))
    }

    /// Whether a socket was open at the last full dump and not seen closed since: an fd still
    /// mapped to it needs no new readlink (see `session::fds::scan_fds`).
    /// Inbound connections the service closed first within the last `since`: sockets in
    /// TIME_WAIT on one of its listening ports that entered it that recently (the kernel keeps
    /// them [`TIME_WAIT_MS`] and says how long each has left). A server that answers one
    /// request per connection and closes it (prefork servers, `Connection: close`) leaves one
    /// each, where lookups and dumps see only the connections open at a round. A client that
    /// closes first leaves nothing here (its TIME_WAIT is on its own host), nor does a 4-tuple
    /// the kernel recycles early for a client reconnecting from the same port.
    pub fn closed_by_service(
        &mut self,
        since: std::time::Duration,
    ) -> Result<usize, SockDiagError> {
        let mut tw = std::mem::take(&mut self.time_wait);
        let result = self.diag.dump_time_wait(&mut tw);
        let since_ms = since.as_millis().min(u128::from(TIME_WAIT_MS)) as u32;
        let n = tw
            .iter()
            .filter(|s| {
                self.listen_ports.contains(&s.local.port())
                    && TIME_WAIT_MS.saturating_sub(s.expires_ms) < since_ms
            })
            .count();
        tw.clear();
        self.time_wait = tw;
        result.map(|()| n)
    }

    pub fn open_since_dump(&self, inode: u64) -> bool {
        self.open_at_dump.contains(&inode)
    }

    /// The inode of another process's socket listening on `port` in the namespace, as of the
    /// last full dump.
    pub fn listener_on(&self, port: u16) -> Option<u64> {
        self.others_listening
            .get(&port)
            .copied()
            .filter(|&i| i != 0)
    }

    /// The unix-domain socket with this inode in the service's namespace, with its name and
    /// peer (`None`: not a unix socket, or gone).
    pub fn unix_socket(&mut self, inode: u64) -> Result<Option<UnixSocket>, SockDiagError> {
        self.diag.unix_lookup(inode)
    }

    /// The agent's own socket inodes: an inbound connection from one of their local addresses
    /// (as of the next full dump) is the agent scraping the service, left out.
    pub fn set_agent_sockets(&mut self, inodes: HashSet<u64>) {
        self.agent_inodes = inodes;
    }

    /// Records a connection's new state, keeping the idle and busy indexes in step and
    /// learning how often each idle stratum turns out busy.
    fn put(&mut self, key: Key, conn: Conn) {
        let idle = is_idle(&conn);
        let (inbound, h) = (conn.inbound, stratum(&conn));
        if let Some(old) = self.conns.insert(key, conn) {
            if is_idle(&old) {
                let was = stratum(&old);
                self.idle[was].swap_remove(&key);
                self.idle_inbound -= usize::from(old.inbound);
                let seen = &mut self.strata[was];
                if seen.0 >= 4096.0 {
                    *seen = (seen.0 / 2.0, seen.1 / 2.0);
                }
                seen.0 += 1.0;
                seen.1 += f64::from(u8::from(!idle));
            } else {
                self.busy.swap_remove(&key);
            }
        }
        if idle {
            self.idle[h].insert(key);
            self.idle_inbound += usize::from(inbound);
        } else {
            self.busy.insert(key);
        }
    }

    /// Forgets a closed connection. Returns whether it was inbound.
    fn forget(&mut self, key: &Key) -> Option<bool> {
        let c = self.conns.remove(key)?;
        if is_idle(&c) {
            self.idle[stratum(&c)].swap_remove(key);
            self.idle_inbound -= usize::from(c.inbound);
        } else {
            self.busy.swap_remove(key);
        }
        // Its fd number may now hold a new socket: the next fd scan reads it again.
        self.open_at_dump.remove(&c.sock.inode);
        Some(c.inbound)
    }

    /// One round. `owned(inode)` says whether a socket belongs to the service's processes;
    /// `refresh` marks a round of the session's refresh (churn is re-decided over its interval);
    /// `visit` what to look at (connections that churn and the first round always take a full
    /// dump).
    pub fn sample(
        &mut self,
        owned: &dyn Fn(u64) -> bool,
        oracle: &mut dyn ThreadOracle,
        refresh: bool,
        visit: Visit,
    ) -> Result<Round, SockDiagError> {
        let full = visit == Visit::Dump || self.churn.on || self.round == 0;
        if full {
            self.dump(owned)?;
        } else {
            self.look_up(visit == Visit::All)?;
        }
        self.round += 1;
        let mut tally = Tally {
            out: Round {
                full_dump: full,
                ..Round::default()
            },
            awaiting: HashMap::new(),
            unresolved_inbound: 0.0,
            unresolved_outbound: HashMap::new(),
        };
        self.pending.clear();
        let socks = std::mem::take(&mut self.socks);
        for s in &socks {
            self.visit(s, owned, oracle, full, &mut tally);
        }
        self.socks = socks;
        let out = self.fill_unresolved(tally, full);
        self.forget_closed(full);
        self.churn.decide(refresh, out.inbound_conns);
        self.outbound_churn.decide(refresh, out.outbound_conns);
        Ok(out)
    }

    /// Whether this round's dump found connections to the service's dependencies that no fd
    /// table held when it was listed: the session lists the tables again and calls
    /// [`SocketSampler::visit_late`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// This round's pending sockets, now that the fd tables were listed after the dump: those
    /// the service holds are decided (without thread states) and counted, as a round of their
    /// own to add to the round's. A connection per call lives a few milliseconds, about as long
    /// as a dump on a large host; counted only when open at the listing *before* the dump, such
    /// connections read 0.78 of request time where they took 0.90.
    pub fn visit_late(&mut self, owned: &dyn Fn(u64) -> bool) -> Round {
        let pending = std::mem::take(&mut self.pending);
        let mut tally = Tally {
            out: Round::default(),
            awaiting: HashMap::new(),
            unresolved_inbound: 0.0,
            unresolved_outbound: HashMap::new(),
        };
        for s in pending.iter().filter(|s| owned(s.inode)) {
            self.visit(s, owned, &mut NoThreads, true, &mut tally);
        }
        self.fill_unresolved(tally, true)
    }

    /// A full dump: every TCP socket of the namespace; the service's listening ports, whether
    /// other processes listen, and the local addresses of the agent's own sockets.
    fn dump(&mut self, owned: &dyn Fn(u64) -> bool) -> Result<(), SockDiagError> {
        self.diag.dump(&mut self.socks)?;
        self.foreign_listeners = false;
        self.others_listening.clear();
        self.open_at_dump.clear();
        self.agent_addrs.clear();
        for s in &self.socks {
            if s.inode != 0 && self.agent_inodes.contains(&s.inode) {
                self.agent_addrs.insert(s.local);
            }
            if s.state == TCP_LISTEN {
                if owned(s.inode) {
                    self.listen_ports.insert(s.local.port());
                } else {
                    self.foreign_listeners = true;
                    if self.others_listening.len() < 4096 {
                        self.others_listening.insert(s.local.port(), s.inode);
                    }
                }
            }
        }
        // Only read while inbound connections churn (the session's floor needs it then): on
        // a busy host the other listeners' connections are most of the table.
        if self.churn.on {
            self.count_others_accepted();
        } else {
            self.others_conns = (HashSet::new(), 0);
        }
        Ok(())
    }

    /// See [`SocketSampler::take_others_accepted`].
    fn count_others_accepted(&mut self) {
        let (before, at) = std::mem::take(&mut self.others_conns);
        let mut now = HashSet::with_capacity(before.len());
        for s in &self.socks {
            let port = s.local.port();
            if s.state == TCP_ESTABLISHED
                && !self.listen_ports.contains(&port)
                && self.others_listening.contains_key(&port)
                && now.len() < 65_536
            {
                now.insert((s.local, s.remote));
            }
        }
        if at + 1 == self.round {
            self.others_accepted += now.iter().filter(|k| !before.contains(*k)).count();
        }
        self.others_conns = (now, self.round);
    }

    /// Exact lookups of the connections chosen for this round (all of them when `all`).
    fn look_up(&mut self, all: bool) -> Result<(), SockDiagError> {
        self.choose_lookups(all);
        self.diag.lookup(&self.known, &mut self.found)?;
        self.socks.clear();
        self.socks.extend(self.found.iter().flatten().cloned());
        Ok(())
    }

    /// One socket of this round: left out unless it is one of the service's connections, else
    /// decided, counted in `tally` and recorded.
    fn visit(
        &mut self,
        s: &TcpSocket,
        owned: &dyn Fn(u64) -> bool,
        oracle: &mut dyn ThreadOracle,
        full: bool,
        tally: &mut Tally,
    ) {
        if s.state == TCP_LISTEN {
            return;
        }
        let Some(info) = s.info else { return };
        // Inbound by port: accepted sockets of our listener are ours even before the next fd
        // scan has seen them, and unaccepted ones (inode 0) have no owner yet. No other
        // socket of this network namespace can have our listening port as its local port.
        let inbound = self.listen_ports.contains(&s.local.port());
        let ours = inbound || (s.inode != 0 && owned(s.inode));
        if !ours && self.outbound_churn.on && full && s.state == TCP_ESTABLISHED && s.inode != 0 {
            // Opened since the fd tables were listed, maybe by the service: looked at again once
            // they have been listed after this dump (`visit_late`).
            if self.dependency_endpoints.contains(&s.remote) && self.pending.len() < 4096 {
                self.pending.push(s.clone());
            }
            return;
        }
        if !ours || (inbound && self.agent_addrs.contains(&s.remote)) {
            return;
        }
        // New connections appear only in dumps: lookup rounds add no endpoint, so they skip
        // the insert.
        if !inbound && full && self.dependency_endpoints.len() < 4096 {
            self.dependency_endpoints.insert(s.remote);
        }
        if full && s.inode != 0 {
            self.open_at_dump.insert(s.inode);
        }
        if inbound && s.inode == 0 && s.state != TCP_ESTABLISHED {
            return;
        }
        let key = (s.local, s.remote);
        let first_segs_out = self
            .conns
            .get(&key)
            .map_or(info.data_segs_out, |c| c.first_segs_out);
        let (d, shape, gap) = self.judge(key, s, &info, inbound, oracle);
        tally.out.samples += 1;
        let tie = last_data(&info) == LastData::Tie;
        if inbound {
            self.fill_inbound.learn(&d, tie);
            let new_requests = match self.conns.get(&key) {
                Some(c) => info.data_segs_in.saturating_sub(c.info.data_segs_in) as f64,
                // A connection first seen after the first round was opened inside the window.
                None if self.round != 1 => info.data_segs_in as f64,
                None => 0.0,
            };
            tally.inbound(s.inode, &d, gap, new_requests);
        } else {
            self.fill_outbound.learn(&d, tie);
            let sent = match self.conns.get(&key) {
                Some(c) => info.data_segs_out.saturating_sub(c.info.data_segs_out) as f64,
                None if self.round != 1 => info.data_segs_out as f64,
                None => 0.0,
            };
            let active = first_segs_out < info.data_segs_out || sent > 0.0;
            tally.outbound(s.remote, &d, gap, sent, active);
        }
        self.put(
            key,
            Conn {
                inbound,
                sock: s.clone(),
                info,
                decision: d,
                round: self.round,
                shape,
                first_segs_out,
            },
        );
    }

    /// Decides one connection, learning its exchange shape and the mean exchange duration on
    /// the way. Returns the decision, the shape to keep, and the gap's request-seconds when
    /// sampling had skipped the connection.
    fn judge(
        &mut self,
        key: Key,
        s: &TcpSocket,
        info: &TcpInfo,
        inbound: bool,
        oracle: &mut dyn ThreadOracle,
    ) -> (Decision, Shape, Option<f64>) {
        let known_conn = self.conns.get(&key).filter(|c| c.inbound == inbound);
        let prev = known_conn.map(|c| (&c.info, c.decision));
        let mut shape = known_conn.map(|c| c.shape).unwrap_or_default();
        let (asked, answered) = if inbound {
            (info.data_segs_in, info.data_segs_out)
        } else {
            (info.data_segs_out, info.data_segs_in)
        };
        shape.observe(asked, answered, Known::Nothing);
        // A connection sampling skipped for a round or more is counted over the whole gap,
        // from its exchanges since and their durations (see [`gap_busy`]); one looked up
        // every round, by its state at this instant. A gap's count needs no thread states
        // (a full thread sample per round for idle connections was a quarter of the cost
        // at 10,000 connections).
        let gapped = known_conn.filter(|c| c.round + 1 < self.round);
        let mut nothing = NoThreads;
        let d = decide(
            inbound,
            s,
            info,
            prev,
            if gapped.is_some() {
                &mut nothing
            } else {
                &mut *oracle
            },
            shape.predict(asked, answered),
        );
        shape.observe(asked, answered, known(&d, inbound));
        tracing::trace!(inbound, how = ?d.how, value = d.value, asked, answered, "decision");
        // Exchange durations are learnt from every visit that sees one (the mean stands in
        // for those a gap hides), before the gap is counted.
        let mean = &mut self.exchange_ms[usize::from(!inbound)];
        let last = known_conn.and_then(|c| last_exchange_ms(inbound, &c.info, info, &d));
        if let Some(ms) = last {
            if mean.1 >= 1e6 {
                *mean = (mean.0 / 2.0, mean.1 / 2.0);
            }
            *mean = (mean.0 + ms, mean.1 + 1.0);
        }
        let mean_ms = if mean.1 > 0.0 { mean.0 / mean.1 } else { 0.0 };
        let gap = gapped.map(|c| gap_busy(inbound, &c.info, info, &d, mean_ms, last));
        (d, shape, gap)
    }

    /// The round's totals: unresolved samples take the in-flight rate of this service's
    /// resolved ones, and connections skipped this round count as open.
    fn fill_unresolved(&self, tally: Tally, full: bool) -> Round {
        let Tally {
            mut out,
            mut awaiting,
            unresolved_inbound,
            unresolved_outbound,
        } = tally;
        out.in_flight += unresolved_inbound * self.fill_inbound.estimate().unwrap_or(0.0);
        let outbound_rate = self.fill_outbound.estimate().unwrap_or(0.0);
        for (endpoint, n) in unresolved_outbound {
            *awaiting.entry(endpoint).or_default() += n * outbound_rate;
        }
        // Connections skipped this round are still open (`choose_lookups` kept them).
        if !full {
            out.inbound_conns += self.skipped.0;
            out.outbound_conns += self.skipped.1;
        }
        out.awaiting = awaiting.into_iter().collect();
        out
    }

    /// Connections not refreshed this round are closed: among all after a dump, among those
    /// looked up otherwise (the skipped ones are still open).
    fn forget_closed(&mut self, full: bool) {
        let round = self.round;
        let stale: Vec<Key> = if full {
            self.conns
                .iter()
                .filter(|(_, c)| c.round != round)
                .map(|(k, _)| *k)
                .collect()
        } else {
            self.known
                .iter()
                .map(|s| (s.local, s.remote))
                .filter(|k| self.conns.get(k).is_some_and(|c| c.round != round))
                .collect()
        };
        for key in stale {
            match self.forget(&key) {
                Some(true) => self.churn.closed += 1,
                Some(false) => self.outbound_churn.closed += 1,
                None => {}
            }
        }
    }
}

/// Connections of one direction closing fast enough to be invisible to lookups of known ones.
#[derive(Default)]
struct Churn {
    /// Connections that closed since the last refresh, and how many were open then.
    closed: usize,
    at_refresh: usize,
    on: bool,
}

impl Churn {
    /// Switches on as soon as connections are seen to vanish between rounds; a round of the
    /// session's refresh re-decides from what it saw over the whole refresh interval: at least
    /// a quarter of the connections (and more than a couple) closed within it.
    fn decide(&mut self, refresh: bool, open: usize) {
        let churning = self.closed > 2 && self.closed * 4 >= self.at_refresh.max(open);
        if refresh {
            self.on = churning;
            self.closed = 0;
            self.at_refresh = open;
        } else if churning {
            self.on = true;
        }
    }
}

/// What a round has counted so far, socket by socket.
struct Tally {
    out: Round,
    /// Outstanding requests per dependency endpoint, from resolved samples.
    awaiting: HashMap<SocketAddr, f64>,
    unresolved_inbound: f64,
    unresolved_outbound: HashMap<SocketAddr, f64>,
}

impl Tally {
    /// An inbound connection: `gap` its request-seconds over a gap sampling left, if any.
    fn inbound(&mut self, inode: u64, d: &Decision, gap: Option<f64>, new_requests: f64) {
        let out = &mut self.out;
        out.inbound_conns += 1;
        match (d.how, gap) {
            (_, Some(busy_s)) => out.gap_s += busy_s,
            (How::Unresolved, None) => {
                self.unresolved_inbound += 1.0;
                out.unresolved += 1;
            }
            (How::Queued, None) => out.queued.push((inode, d.value)),
            (How::SendQueue, None) => out.send_queue += d.value,
            (How::Shape, None) => out.by_shape += 1,
            _ => {}
        }
        if gap.is_none() {
            out.in_flight += d.value;
        }
        out.new_requests += new_requests;
    }

    /// An outbound connection to `endpoint`, on which the service sent `sent` requests since
    /// its previous visit; `active`: it has sent something since it was first seen.
    fn outbound(
        &mut self,
        endpoint: SocketAddr,
        d: &Decision,
        gap: Option<f64>,
        sent: f64,
        active: bool,
    ) {
        let out = &mut self.out;
        out.outbound_conns += 1;
        let per = out.outbound_by_endpoint.entry(endpoint).or_default();
        per.open += 1;
        per.active += usize::from(gap.is_none() && active);
        per.sent += sent;
        if let Some(busy_s) = gap {
            *out.gap_awaiting.entry(endpoint).or_default() += busy_s;
        } else if d.resolved() {
            *self.awaiting.entry(endpoint).or_default() += d.value;
        } else {
            *self.unresolved_outbound.entry(endpoint).or_default() += 1.0;
            out.unresolved += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;

    /// A server that answers and closes first leaves one TIME_WAIT socket on its listening
    /// port per connection; the count is of those that entered it within the interval asked.
    #[test]
    fn connections_the_service_closed_first_are_counted_from_time_wait() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut s = SocketSampler::new().expect("sock_diag");
        s.listen_ports.insert(port);
        for _ in 0..3 {
            let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let (mut served, _) = listener.accept().expect("accept");
            served.write_all(b"bye").expect("write");
            drop(served);
            let mut buf = [0u8; 8];
            while client.read(&mut buf).expect("read") > 0 {}
        }
        // The client's close completes the server's side into TIME_WAIT.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            s.closed_by_service(Duration::from_secs(5)).expect("dump"),
            3
        );
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            s.closed_by_service(Duration::from_millis(20))
                .expect("dump"),
            0
        );
    }
}
