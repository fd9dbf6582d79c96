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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use super::shape::{Known, Shape};
use crate::sockdiag::{SockDiag, SockDiagError, TcpInfo, TcpSocket, TCP_ESTABLISHED, TCP_LISTEN};

/// Which of the two sides spoke last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastData {
    Sent,
    Received,
    Tie,
}

pub fn last_data(info: &TcpInfo) -> LastData {
    use std::cmp::Ordering::*;
    // The fields are "milliseconds ago": smaller is more recent.
    match info.last_data_sent_ms.cmp(&info.last_data_recv_ms) {
        Less => LastData::Sent,
        Greater => LastData::Received,
        Equal => LastData::Tie,
    }
}

/// What the service's threads say about one socket, for one round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// A thread is blocked reading this socket: the service waits for the peer to speak.
    Blocked,
    /// No thread reads it, and the process has no event-loop waits (epoll, select), so every
    /// connection the service waits on has a thread blocked on it: the service owes the next move.
    Unread,
    /// Cannot tell (event loop, thread states unreadable, socket not yet mapped).
    Unknown,
}

/// Answers, for one round, what the service's threads are doing with a socket.
pub trait ThreadOracle {
    fn reader(&mut self, inode: u64, inbound: bool) -> Reader;
}

/// Asks nothing: every socket's reader is unknown.
struct NoThreads;
impl ThreadOracle for NoThreads {
    fn reader(&mut self, _: u64, _: bool) -> Reader {
        Reader::Unknown
    }
}

/// How a decision was reached; the budget keeps some of these apart (queued, send queue) and the
/// evidence counts the unresolved ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// Inbound request bytes sit unread: the request waits for the service to read it.
    Queued,
    /// The response (inbound) or request (outbound) is written but not all sent.
    SendQueue,
    /// `tcp_info` timestamps ordered the last exchange.
    Ordered,
    /// The connection's learnt exchange shape (see [`super::shape`]).
    Shape,
    /// Nothing moved since the previous round, whose state was known.
    Carried,
    /// One side has spoken and the other never: a first request.
    FirstRequest,
    /// A thread blocked reading the socket.
    Threads,
    /// No thread reading it in a thread-per-connection process: an inference, not carried to
    /// later rounds.
    NoReader,
    /// A tie on a connection quiet for a second or more in both directions.
    Quiet,
    /// Nothing could tell; the value is filled in from the resolved samples of the service.
    Unresolved,
}

/// The decision for one connection in one round: 1.0 outstanding, 0.0 not.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub value: f64,
    pub how: How,
}

impl Decision {
    pub fn resolved(&self) -> bool {
        self.how != How::Unresolved
    }
}

/// Decides whether a request is outstanding on one connection. `inbound`: the peer waits for our
/// response; outbound: we wait for the peer's. `shape` is the connection's learnt prediction.
pub fn decide(
    inbound: bool,
    sock: &TcpSocket,
    info: &TcpInfo,
    prev: Option<(&TcpInfo, Decision)>,
    oracle: &mut dyn ThreadOracle,
    shape: Option<f64>,
) -> Decision {
    let is = |value: f64, how: How| Decision { value, how };
    // Unread bytes are the strongest sign: inbound, a request waits for us; outbound, a
    // response has arrived and the service has not got round to it (its own delay, not the peer's).
    if sock.rqueue > 0 {
        return if inbound {
            is(1.0, How::Queued)
        } else {
            is(0.0, How::Queued)
        };
    }
    // Written but not yet sent (Nagle's algorithm waiting for an ACK, a full window): the peer
    // does not have the whole message. Inbound, its client still waits; outbound, our request has
    // not fully left. Sent but unacknowledged bytes do not count: a peer in interactive mode
    // delays its ACK to piggyback it on its next message, long after it read ours.
    if info.notsent_bytes > 0 {
        return is(1.0, How::SendQueue);
    }
    let peer_spoke_last = match last_data(info) {
        LastData::Received => Some(true),
        LastData::Sent => Some(false),
        LastData::Tie => None,
    };
    // The peer spoke last: inbound, a request is being served; outbound, the response is in.
    if peer_spoke_last == Some(true) {
        return is(if inbound { 1.0 } else { 0.0 }, How::Ordered);
    }
    // Counts beat timestamps: they are exact at this instant and see part-sent responses.
    if let Some(v) = shape {
        return is(v, How::Shape);
    }
    if peer_spoke_last == Some(false) {
        return is(if inbound { 0.0 } else { 1.0 }, How::Ordered);
    }
    // A tie within one kernel tick.
    if let Some((p, d)) = prev {
        let moved = p.bytes_acked != info.bytes_acked
            || p.bytes_received != info.bytes_received
            || p.data_segs_in != info.data_segs_in
            || p.data_segs_out != info.data_segs_out;
        if !moved && d.resolved() && d.how != How::NoReader {
            return is(d.value, How::Carried);
        }
    }
    // Direction counters: a connection on which one side has spoken and the other never
    // carries its first request (a new connection ties with its own set-up).
    let (asked, answered) = if inbound {
        (info.data_segs_in, info.data_segs_out)
    } else {
        (info.data_segs_out, info.data_segs_in)
    };
    if asked > 0 && answered == 0 {
        return is(1.0, How::FirstRequest);
    }
    if sock.inode != 0 {
        match oracle.reader(sock.inode, inbound) {
            // A thread reading the socket waits for the peer.
            Reader::Blocked => return is(if inbound { 0.0 } else { 1.0 }, How::Threads),
            Reader::Unread => return is(if inbound { 1.0 } else { 0.0 }, How::NoReader),
            Reader::Unknown => {}
        }
    }
    // Quiet for a second or more in both directions (a tie, nothing carried): the exchange that
    // tied ended long ago. Whether first seen now or never resolved since, a connection nothing
    // has moved on for a second is an idle keep-alive (the agent's own scrape of the service's
    // metrics, a load balancer's spare connection), not a request: requests that outlast a
    // second on a connection with no learnt shape are far rarer than idle connections.
    if is_quiet(info) {
        return is(0.0, How::Quiet);
    }
    is(0.0, How::Unresolved)
}

/// Nothing sent or received for a second.
fn is_quiet(info: &TcpInfo) -> bool {
    info.last_data_sent_ms >= QUIET_MS && info.last_data_recv_ms >= QUIET_MS
}
const QUIET_MS: u32 = 1000;

/// What is known for sure, for the shape learner, from a decision: only what the kernel says
/// outright (unread request bytes, a first request) and a thread seen blocked reading the socket.
/// An inference ("no thread reads it") is not strong enough to drop a candidate shape.
fn known(d: &Decision, inbound: bool) -> Known {
    match (d.how, d.value > 0.5, inbound) {
        (How::Queued | How::FirstRequest, true, _) => Known::Outstanding,
        // A thread blocked reading: inbound, it waits for the next request; outbound, for the
        // response to ours.
        (How::Threads, false, true) => Known::Idle,
        (How::Threads, true, false) => Known::Outstanding,
        _ => Known::Nothing,
    }
}

/// Unresolved samples are given the in-flight rate of the resolved ties of the same direction
/// (the same service, the same moment in its life), never a flat half: on a service whose idle
/// keep-alive connections outnumber its busy ones a half is wildly wrong. Until enough ties have
/// been resolved, the rate of every resolved sample of that direction stands in.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fill {
    ties: f64,
    ties_in_flight: f64,
    all: f64,
    all_in_flight: f64,
}

impl Fill {
    const ENOUGH: f64 = 20.0;

    fn learn(&mut self, d: &Decision, tie: bool) {
        if !d.resolved() {
            return;
        }
        self.all += 1.0;
        self.all_in_flight += d.value;
        if tie {
            self.ties += 1.0;
            self.ties_in_flight += d.value;
        }
    }

    /// The estimate for one unresolved sample, or `None` when nothing has been resolved yet.
    pub fn estimate(&self) -> Option<f64> {
        if self.ties >= Self::ENOUGH {
            Some(self.ties_in_flight / self.ties)
        } else if self.all > 0.0 {
            Some(self.all_in_flight / self.all)
        } else {
            None
        }
    }
}

/// Requests since the last visit (`old`): inbound, the peer's; outbound, ours (data segment
/// counters, exact).
fn exchanges(inbound: bool, old: &TcpInfo, new: &TcpInfo) -> u32 {
    if inbound {
        new.data_segs_in.saturating_sub(old.data_segs_in)
    } else {
        new.data_segs_out.saturating_sub(old.data_segs_out)
    }
}

/// The last request's age and its answer's age (ms): inbound, what the peer sent and what we
/// sent back; outbound, the reverse.
fn ask_and_answer_ms(inbound: bool, info: &TcpInfo) -> (u32, u32) {
    if inbound {
        (info.last_data_recv_ms, info.last_data_sent_ms)
    } else {
        (info.last_data_sent_ms, info.last_data_recv_ms)
    }
}

/// The duration of the last exchange (ms) when the connection is idle now with exchanges since
/// the last visit: from the last request segment to the last segment of its answer, by the
/// kernel's timestamps (tick resolution, so a sub-tick exchange reads 0 or one tick, right on
/// average).
fn last_exchange_ms(inbound: bool, old: &TcpInfo, new: &TcpInfo, d: &Decision) -> Option<f64> {
    let idle = d.resolved() && d.value < 0.5;
    (idle && exchanges(inbound, old, new) > 0).then(|| {
        let (asked, answered) = ask_and_answer_ms(inbound, new);
        f64::from(asked.saturating_sub(answered))
    })
}

/// Request-seconds on a connection over a gap of rounds that sampling skipped, from what its
/// `tcp_info` says now and said at the last visit (`old`), with `d` the decision now and `last`
/// the last exchange's duration ([`last_exchange_ms`]). The gap's exchanges are exact. Idle
/// now: the gap held `k` exchanges of about the last one's duration. Busy now: the current
/// one's elapsed time plus `k − 1` earlier ones at the mean duration `mean_ms` (learnt from idle
/// connections). Unresolved: `k` at the mean. Either way, every exchange of the gap is counted
/// once, instead of a sampled instant standing for connections not looked at.
fn gap_busy(
    inbound: bool,
    old: &TcpInfo,
    new: &TcpInfo,
    d: &Decision,
    mean_ms: f64,
    last: Option<f64>,
) -> f64 {
    let k = f64::from(exchanges(inbound, old, new));
    let ms = if !d.resolved() {
        k * mean_ms
    } else if d.value >= 0.5 {
        f64::from(ask_and_answer_ms(inbound, new).0) + (k - 1.0).max(0.0) * mean_ms
    } else {
        k * last.unwrap_or(0.0)
    };
    ms / 1000.0
}

/// Whether a connection's last state was a known idle one (sampled, not visited every round).
fn is_idle(c: &Conn) -> bool {
    c.decision.resolved() && c.decision.value == 0.0
}

/// The sampling stratum of a known-idle connection: 0, it exchanged something within the last
/// second (a busy keep-alive connection between requests); 1, quiet for longer (a spare
/// connection). The two differ by orders of magnitude in how likely they are to be busy at the
/// next round, so each gets its own share of the lookups.
fn stratum(c: &Conn) -> usize {
    usize::from(is_quiet(&c.info))
}

struct Conn {
    inbound: bool,
    sock: TcpSocket,
    info: TcpInfo,
    decision: Decision,
    round: u64,
    shape: Shape,
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
    /// Whether this round walked the whole socket table.
    pub full_dump: bool,
}

/// A number in [0, 1) from a seed and a round: a fresh, reproducible coin per round
/// (splitmix64's finaliser).
fn unit_hash(seed: u64, round: u64) -> f64 {
    let mut z = seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

type Key = (SocketAddr, SocketAddr);
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
type FastIndexSet<K> = indexmap::IndexSet<K, foldhash::fast::FixedState>;

/// Lookups per round by default: about 0.1% of a core at five rounds a second (a lookup costs
/// about 3 us, most of it the kernel's netlink reply), whatever the number of connections. It
/// holds the agent to half a percent of a core at 200 busy connections; more buys precision.
pub const DEFAULT_MAX_LOOKUPS: usize = 64;
/// Idle connections looked up per round at least, however many are busy.
pub const MIN_IDLE_LOOKUPS: usize = 32;

/// Splits `budget` lookups between the two idle strata of `sizes` connections in proportion to
/// size times the standard deviation of the busy indicator, estimated from `seen` ((visits,
/// busy) per stratum, with half a busy visit as prior). Each stratum gets at least an eighth of
/// the budget (all of it when smaller): a stratum's rate can change, and the floor keeps
/// learning it. What one stratum cannot use goes to the other.
fn neyman(budget: usize, sizes: [usize; 2], seen: [(f64, f64); 2]) -> [usize; 2] {
    let floor = (budget / 8).max(1);
    let sd = |h: usize| {
        let q = (seen[h].1 + 0.5) / (seen[h].0 + 1.0);
        (q * (1.0 - q)).sqrt()
    };
    let a = [sizes[0] as f64 * sd(0), sizes[1] as f64 * sd(1)];
    let share = budget as f64 * a[0] / (a[0] + a[1]).max(f64::MIN_POSITIVE);
    let within = |k: usize, n: usize| k.max(floor.min(n)).min(n);
    let first = within(share.round() as usize, sizes[0]);
    let second = within(budget.saturating_sub(first), sizes[1]);
    [within(budget.saturating_sub(second), sizes[0]), second]
}

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
    known: Vec<TcpSocket>,
    found: Vec<Option<TcpSocket>>,
    pub listen_ports: HashSet<u16>,
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
    /// Inbound connections that closed since the last full dump, and how many there were then.
    closed_inbound: usize,
    inbound_at_dump: usize,
    /// Short-lived inbound connections (one request each) are invisible to lookups of the
    /// connections known at the last dump: when they churn, every round is a full dump.
    pub churn: bool,
    /// A listening socket in this network namespace belongs to another process: namespace-wide
    /// counters (accepted connections) are then not the service's alone.
    pub foreign_listeners: bool,
    fill_inbound: Fill,
    fill_outbound: Fill,
    /// Lookups per round (connections not known idle are always looked up; idle ones share
    /// what is left, at least [`MIN_IDLE_LOOKUPS`]); see [`SocketSampler::choose_lookups`].
    pub max_lookups: usize,
    /// Per direction (inbound, outbound): the sum and count of exchange durations seen (ms),
    /// for exchanges a gap hides (see [`gap_busy`]).
    exchange_ms: [(f64, f64); 2],
    /// Inbound and outbound connections skipped in this round.
    skipped: (usize, usize),
    /// Idle connections and the probability each was looked up with, in the last round.
    pub idle_sampled: (usize, f64),
    /// Inodes of the service's sockets open at the last full dump and not seen closed since:
    /// an fd still mapped to one needs no new readlink (see `session::scan_fds`).
    pub open_at_dump: HashSet<u64>,
    /// The agent's own socket inodes, and the local addresses they had at the last full dump:
    /// an inbound connection from one of those is the agent scraping the service, left out.
    pub agent_inodes: HashSet<u64>,
    agent_addrs: HashSet<SocketAddr>,
}

impl SocketSampler {
    pub fn new() -> Result<SocketSampler, SockDiagError> {
        Ok(SocketSampler {
            diag: SockDiag::open()?,
            socks: Vec::with_capacity(1024),
            known: Vec::new(),
            found: Vec::new(),
            listen_ports: HashSet::new(),
            conns: FastMap::default(),
            idle: Default::default(),
            busy: FastIndexSet::default(),
            idle_inbound: 0,
            strata: [(0.0, 0.0); 2],
            round: 0,
            closed_inbound: 0,
            inbound_at_dump: 0,
            churn: false,
            foreign_listeners: false,
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

    /// Chooses the connections to look up this round. Every connection whose last state was
    /// not a known idle one is looked up; known-idle ones (keep-alive connections waiting for
    /// their next request, idle pool connections) share the rest of the round's lookups. Each
    /// stratum (see [`stratum`]) gets a share in proportion to its size times the standard
    /// deviation of its busy indicator (Neyman allocation), so the cost follows a budget rather
    /// than the number of connections. A connection skipped for rounds is counted over the whole
    /// gap at its next visit (see [`gap_busy`]): request counts stay exact (cumulative segment
    /// counters) and request time is the gap's exchanges times their duration (all connections
    /// are visited at the end of a window).
    ///
    /// The sample is systematic: every `1/p_h`-th connection of the stratum from a random start,
    /// so each is taken with probability `p_h` exactly and the round costs what it looks up, not
    /// a walk of every known connection.
    fn choose_lookups(&mut self, all: bool) {
        self.known.clear();
        let conns = &self.conns;
        let sock = |key: &Key| conns.get(key).map(|c| c.sock.clone());
        self.known.extend(self.busy.iter().filter_map(sock));
        let sizes = [self.idle[0].len(), self.idle[1].len()];
        let idle = sizes[0] + sizes[1];
        let budget = self
            .max_lookups
            .saturating_sub(self.busy.len())
            .max(MIN_IDLE_LOOKUPS);
        if all || idle <= budget {
            for set in &self.idle {
                self.known.extend(set.iter().filter_map(sock));
            }
            self.skipped = (0, 0);
            self.idle_sampled = (idle, 1.0);
            return;
        }
        let take = neyman(budget, sizes, self.strata);
        let mut taken_inbound = 0;
        for h in 0..2 {
            let (n, k) = (sizes[h], take[h]);
            if k == 0 {
                continue;
            }
            let step = n as f64 / k as f64;
            let start = unit_hash(0x5eed + h as u64, self.round + 1) * step;
            for j in 0..k {
                let at = ((start + j as f64 * step) as usize).min(n - 1);
                let Some(c) = self.idle[h].get_index(at).and_then(|key| conns.get(key)) else {
                    continue;
                };
                taken_inbound += usize::from(c.inbound);
                self.known.push(c.sock.clone());
            }
        }
        let taken = take[0] + take[1];
        self.idle_sampled = (idle, taken as f64 / idle as f64);
        self.skipped = (
            self.idle_inbound.saturating_sub(taken_inbound),
            (idle - self.idle_inbound).saturating_sub(taken - taken_inbound),
        );
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
    /// `discover` marks a discovery (churn is re-decided over the interval); `visit` what to
    /// look at (connections that churn and the first round always take a full dump).
    pub fn sample(
        &mut self,
        owned: &dyn Fn(u64) -> bool,
        oracle: &mut dyn ThreadOracle,
        discover: bool,
        visit: Visit,
    ) -> Result<Round, SockDiagError> {
        let full = visit == Visit::Dump || self.churn || self.round == 0;
        if full {
            self.diag.dump(&mut self.socks)?;
            self.foreign_listeners = false;
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
                    }
                }
            }
        } else {
            self.choose_lookups(visit == Visit::All);
            self.diag.lookup(&self.known, &mut self.found)?;
            self.socks.clear();
            self.socks.extend(self.found.iter().flatten().cloned());
        }
        self.round += 1;
        let first_round = self.round == 1;
        let mut out = Round {
            full_dump: full,
            ..Round::default()
        };
        let mut awaiting: HashMap<SocketAddr, f64> = HashMap::new();
        let mut unresolved_inbound = 0.0f64;
        let mut unresolved_outbound: HashMap<SocketAddr, f64> = HashMap::new();
        let socks = std::mem::take(&mut self.socks);
        for s in &socks {
            if s.state == TCP_LISTEN {
                continue;
            }
            let Some(info) = s.info else { continue };
            // Inbound by port: accepted sockets of our listener are ours even before the next fd
            // scan has seen them, and unaccepted ones (inode 0) have no owner yet. No other
            // socket of this network namespace can have our listening port as its local port.
            let inbound = self.listen_ports.contains(&s.local.port());
            let ours = inbound || (s.inode != 0 && owned(s.inode));
            if !ours || (inbound && self.agent_addrs.contains(&s.remote)) {
                continue;
            }
            if full && s.inode != 0 {
                self.open_at_dump.insert(s.inode);
            }
            if inbound && s.inode == 0 && s.state != TCP_ESTABLISHED {
                continue;
            }
            let key = (s.local, s.remote);
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
                &info,
                prev,
                if gapped.is_some() {
                    &mut nothing
                } else {
                    &mut *oracle
                },
                shape.predict(asked, answered),
            );
            shape.observe(asked, answered, known(&d, inbound));
            let tie = last_data(&info) == LastData::Tie;
            tracing::trace!(inbound, how = ?d.how, value = d.value, asked, answered, "decision");
            out.samples += 1;
            // Exchange durations are learnt from every visit that sees one (the mean stands in
            // for those a gap hides), before the gap is counted.
            let mean = &mut self.exchange_ms[usize::from(!inbound)];
            let last = known_conn.and_then(|c| last_exchange_ms(inbound, &c.info, &info, &d));
            if let Some(ms) = last {
                if mean.1 >= 1e6 {
                    *mean = (mean.0 / 2.0, mean.1 / 2.0);
                }
                *mean = (mean.0 + ms, mean.1 + 1.0);
            }
            let mean_ms = if mean.1 > 0.0 { mean.0 / mean.1 } else { 0.0 };
            let gap = gapped.map(|c| gap_busy(inbound, &c.info, &info, &d, mean_ms, last));
            if inbound {
                self.fill_inbound.learn(&d, tie);
                out.inbound_conns += 1;
                match (d.how, gap) {
                    (_, Some(busy_s)) => out.gap_s += busy_s,
                    (How::Unresolved, None) => {
                        unresolved_inbound += 1.0;
                        out.unresolved += 1;
                    }
                    (How::Queued, None) => out.queued.push((s.inode, d.value)),
                    (How::SendQueue, None) => out.send_queue += d.value,
                    (How::Shape, None) => out.by_shape += 1,
                    _ => {}
                }
                if gap.is_none() {
                    out.in_flight += d.value;
                }
                out.new_requests += match self.conns.get(&key) {
                    Some(c) => info.data_segs_in.saturating_sub(c.info.data_segs_in) as f64,
                    // A connection first seen after the first round was opened inside the window.
                    None if !first_round => info.data_segs_in as f64,
                    None => 0.0,
                };
            } else {
                self.fill_outbound.learn(&d, tie);
                out.outbound_conns += 1;
                if let Some(busy_s) = gap {
                    *out.gap_awaiting.entry(s.remote).or_default() += busy_s;
                } else if d.resolved() {
                    *awaiting.entry(s.remote).or_default() += d.value;
                } else {
                    *unresolved_outbound.entry(s.remote).or_default() += 1.0;
                    out.unresolved += 1;
                }
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
                },
            );
        }
        self.socks = socks;
        // Unresolved samples take the in-flight rate of this service's resolved ones.
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
        // Connections not refreshed this round are closed: among all after a dump, among those
        // looked up otherwise (the skipped ones are still open).
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
            if self.forget(&key) == Some(true) {
                self.closed_inbound += 1;
            }
        }
        // Switch to dumps as soon as connections are seen to vanish between rounds; the
        // discovery interval re-decides from what it saw over the whole interval.
        let basis = self.inbound_at_dump.max(out.inbound_conns);
        if !self.churn && self.closed_inbound > 2 && self.closed_inbound * 4 >= basis {
            self.churn = true;
        }
        if discover {
            // Churn: at least a quarter of the inbound connections (and more than a couple)
            // closed within one discovery interval.
            self.churn = self.closed_inbound > 2
                && self.closed_inbound * 4 >= self.inbound_at_dump.max(out.inbound_conns);
            self.closed_inbound = 0;
            self.inbound_at_dump = out.inbound_conns;
        }
        out.awaiting = awaiting.into_iter().collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Knows(Reader);
    impl ThreadOracle for Knows {
        fn reader(&mut self, _: u64, _: bool) -> Reader {
            self.0
        }
    }

    fn sock(rqueue: u32) -> TcpSocket {
        TcpSocket {
            family: libc::AF_INET as u8,
            state: TCP_ESTABLISHED,
            local: "127.0.0.1:40000".parse().expect("addr"),
            remote: "127.0.0.1:5432".parse().expect("addr"),
            inode: 9,
            uid: 0,
            rqueue,
            wqueue: 0,
            info: None,
        }
    }

    fn info(sent: u32, recv: u32, bytes: u64) -> TcpInfo {
        TcpInfo {
            last_data_sent_ms: sent,
            last_data_recv_ms: recv,
            bytes_acked: bytes,
            bytes_received: bytes,
            data_segs_in: 3,
            data_segs_out: 3,
            ..TcpInfo::default()
        }
    }

    #[test]
    fn a_gap_counts_its_exchanges_at_their_duration() {
        let idle = Decision {
            value: 0.0,
            how: How::Ordered,
        };
        let at = |segs: u32, recv: u32, sent: u32| TcpInfo {
            data_segs_in: segs,
            data_segs_out: segs,
            last_data_recv_ms: recv,
            last_data_sent_ms: sent,
            ..TcpInfo::default()
        };
        // Five requests since the last visit, the last one answered 8 ms after it arrived.
        let (old, new) = (at(10, 900, 900), at(15, 30, 22));
        let last = last_exchange_ms(true, &old, &new, &idle);
        assert_eq!(last, Some(8.0));
        let s = gap_busy(true, &old, &new, &idle, 0.0, last);
        assert!((s - 0.040).abs() < 1e-9, "{s}");
        // Busy now for 12 ms, after two earlier requests of the mean's 8 ms.
        let busy = Decision {
            value: 1.0,
            how: How::Ordered,
        };
        let (old, new) = (at(15, 30, 22), at(18, 12, 40));
        assert_eq!(last_exchange_ms(true, &old, &new, &busy), None);
        let s = gap_busy(true, &old, &new, &busy, 8.0, None);
        assert!((s - 0.028).abs() < 1e-9, "{s}");
        // Nothing happened: nothing counted, nothing learnt.
        let (old, new) = (at(18, 12, 40), at(18, 300, 300));
        assert_eq!(last_exchange_ms(true, &old, &new, &idle), None);
        assert_eq!(gap_busy(true, &old, &new, &idle, 8.0, None), 0.0);
        // Outbound: our request went out 20 ms ago, its answer came 5 ms ago.
        let (old, new) = (at(1, 900, 900), at(2, 5, 20));
        let last = last_exchange_ms(false, &old, &new, &idle);
        let s = gap_busy(false, &old, &new, &idle, 0.0, last);
        assert!((s - 0.015).abs() < 1e-9, "{s}");
    }

    #[test]
    fn neyman_gives_lookups_where_the_busy_connections_are() {
        // Nothing learnt yet: in proportion to size.
        assert_eq!(neyman(100, [100, 900], [(0.0, 0.0); 2]), [12, 88]);
        // Recently active connections are busy at 5% of visits, quiet ones at 0.05%: the 300
        // active get far more than their 3% of the budget.
        let take = neyman(100, [300, 9_700], [(1000.0, 50.0), (1000.0, 0.5)]);
        assert!((15..=20).contains(&take[0]), "{take:?}");
        assert_eq!(take[0] + take[1], 100);
        // The quiet stratum keeps its floor however rarely it is busy.
        let take = neyman(96, [5_000, 5_000], [(4000.0, 400.0), (4000.0, 0.0)]);
        assert_eq!(take[1], 12, "{take:?}");
        // A stratum smaller than its share takes all of itself; the rest goes to the other.
        assert_eq!(neyman(100, [5, 1_000], [(10.0, 5.0), (10.0, 0.0)]), [5, 95]);
        assert_eq!(neyman(100, [1_000, 5], [(10.0, 5.0), (10.0, 0.0)]), [95, 5]);
    }

    #[test]
    fn idle_connections_are_sampled_at_their_stratum_rate_and_all_at_the_end() {
        let mut sampler = SocketSampler::new().expect("a NETLINK_SOCK_DIAG socket");
        sampler.max_lookups = 64;
        let idle = Decision {
            value: 0.0,
            how: How::Quiet,
        };
        // 40 busy connections, 200 recently active idle ones and 2,000 quiet ones.
        for i in 0..2_240u32 {
            let mut s = sock(0);
            s.local = SocketAddr::new([127, 0, 0, 1].into(), 10_000 + (i % 50_000) as u16);
            s.remote = SocketAddr::new([127, 0, 1, (i / 200) as u8].into(), 80);
            let ago = if i < 240 { 10 } else { 5_000 };
            let conn = Conn {
                inbound: true,
                sock: s.clone(),
                info: info(ago, ago, 1),
                decision: if i < 40 { known_state(1.0) } else { idle },
                round: 0,
                shape: Shape::default(),
            };
            sampler.put((s.local, s.remote), conn);
        }
        assert_eq!(sampler.busy.len(), 40);
        assert_eq!([sampler.idle[0].len(), sampler.idle[1].len()], [200, 2_000]);
        let mut visits: HashMap<Key, u32> = HashMap::new();
        let rounds: u64 = 2_000;
        let take = neyman(MIN_IDLE_LOOKUPS, [200, 2_000], sampler.strata);
        for r in 0..rounds {
            sampler.round = r;
            sampler.choose_lookups(false);
            assert_eq!(sampler.known.len(), 40 + take[0] + take[1]);
            assert_eq!(sampler.skipped.0 + sampler.known.len(), 2_240);
            for s in &sampler.known {
                *visits.entry((s.local, s.remote)).or_default() += 1;
            }
        }
        // Every connection is looked up at its stratum's rate (systematic sampling from a random
        // start: exactly p each, so no connection is never seen).
        for (key, n) in &visits {
            let c = &sampler.conns[key];
            let rate = f64::from(*n) / rounds as f64;
            let want = if is_idle(c) {
                let h = stratum(c);
                take[h] as f64 / [200.0, 2_000.0][h]
            } else {
                1.0
            };
            assert!((rate - want).abs() < 0.05, "{rate} against {want}");
        }
        assert_eq!(visits.len(), 2_240, "some connection never looked up");
        let all = sampler.conns.len();
        sampler.choose_lookups(true);
        assert_eq!(sampler.known.len(), all);
    }

    fn known_state(value: f64) -> Decision {
        Decision {
            value,
            how: How::Ordered,
        }
    }

    #[test]
    fn ordering_decides_both_directions() {
        let mut o = Knows(Reader::Unknown);
        // We sent 4 ms ago, last heard 20 ms ago: outbound awaits, inbound (peer waits) does not.
        let i = info(4, 20, 1);
        assert_eq!(decide(false, &sock(0), &i, None, &mut o, None).value, 1.0);
        assert_eq!(decide(true, &sock(0), &i, None, &mut o, None).value, 0.0);
        let i = info(20, 4, 1);
        assert_eq!(decide(false, &sock(0), &i, None, &mut o, None).value, 0.0);
        assert_eq!(decide(true, &sock(0), &i, None, &mut o, None).value, 1.0);
    }

    #[test]
    fn unread_bytes_win() {
        let mut o = Knows(Reader::Unknown);
        let i = info(4, 20, 1);
        assert_eq!(decide(false, &sock(10), &i, None, &mut o, None).value, 0.0);
        let d = decide(true, &sock(10), &i, None, &mut o, None);
        assert_eq!((d.value, d.how), (1.0, How::Queued));
    }

    #[test]
    fn a_response_held_in_the_send_queue_is_still_in_flight() {
        let mut o = Knows(Reader::Unknown);
        // Headers sent last (timestamps say "answered"), body held by Nagle.
        let mut i = info(4, 20, 1);
        i.notsent_bytes = 512;
        let d = decide(true, &sock(0), &i, None, &mut o, None);
        assert_eq!((d.value, d.how), (1.0, How::SendQueue));
    }

    #[test]
    fn the_learnt_shape_settles_a_tie_and_a_part_sent_response() {
        let mut o = Knows(Reader::Unknown);
        let tie = info(4, 4, 100);
        let d = decide(true, &sock(0), &tie, None, &mut o, Some(1.0));
        assert_eq!((d.value, d.how), (1.0, How::Shape));
        // Timestamps say we spoke last, but the shape says the response is part-sent.
        let d = decide(true, &sock(0), &info(4, 20, 1), None, &mut o, Some(1.0));
        assert_eq!((d.value, d.how), (1.0, How::Shape));
        // The peer speaking last is in flight whatever the shape says.
        let d = decide(true, &sock(0), &info(20, 4, 1), None, &mut o, Some(0.0));
        assert_eq!(d.value, 1.0);
    }

    #[test]
    fn ties_carry_only_a_known_state_then_ask_threads_then_stay_unresolved() {
        let tie = info(4, 4, 100);
        let prev = info(4, 4, 100);
        let d = decide(
            false,
            &sock(0),
            &tie,
            Some((&prev, known_state(1.0))),
            &mut Knows(Reader::Unknown),
            None,
        );
        assert_eq!((d.value, d.how), (1.0, How::Carried));
        // An unresolved state never carries: an idle keep-alive connection whose last exchange
        // fell in one tick must not stay "half in flight" for as long as it is idle.
        let unresolved = Decision {
            value: 0.0,
            how: How::Unresolved,
        };
        let d = decide(
            true,
            &sock(0),
            &tie,
            Some((&prev, unresolved)),
            &mut Knows(Reader::Unknown),
            None,
        );
        assert_eq!(d.how, How::Unresolved);
        // ... until it has been quiet for a second: then it is idle.
        let quiet = info(1200, 1200, 100);
        let d = decide(
            true,
            &sock(0),
            &quiet,
            Some((&quiet, unresolved)),
            &mut Knows(Reader::Unknown),
            None,
        );
        assert_eq!((d.value, d.how), (0.0, How::Quiet));
        // Data moved: a thread blocked reading the socket means outbound awaits.
        let moved = info(0, 0, 50);
        let d = decide(
            false,
            &sock(0),
            &tie,
            Some((&moved, known_state(0.0))),
            &mut Knows(Reader::Blocked),
            None,
        );
        assert_eq!(d.value, 1.0);
        let d = decide(
            true,
            &sock(0),
            &tie,
            Some((&moved, known_state(1.0))),
            &mut Knows(Reader::Blocked),
            None,
        );
        assert_eq!(d.value, 0.0, "a thread reading an inbound socket is idle");
        let d = decide(
            true,
            &sock(0),
            &tie,
            Some((&moved, known_state(0.0))),
            &mut Knows(Reader::Unread),
            None,
        );
        assert_eq!(d.value, 1.0, "an unread inbound socket carries a request");
        let d = decide(
            false,
            &sock(0),
            &tie,
            Some((&moved, known_state(0.0))),
            &mut Knows(Reader::Unknown),
            None,
        );
        assert_eq!(d.how, How::Unresolved);
        // First sight of a long-quiet connection: idle.
        let d = decide(
            false,
            &sock(0),
            &info(5000, 5000, 1),
            None,
            &mut Knows(Reader::Unknown),
            None,
        );
        assert_eq!((d.value, d.how), (0.0, How::Quiet));
    }

    #[test]
    fn unresolved_samples_take_the_rate_of_resolved_ties_not_a_half() {
        let mut f = Fill::default();
        assert_eq!(f.estimate(), None);
        let idle = Decision {
            value: 0.0,
            how: How::Shape,
        };
        let busy = Decision {
            value: 1.0,
            how: How::Ordered,
        };
        f.learn(&busy, false);
        assert_eq!(
            f.estimate(),
            Some(1.0),
            "before enough ties, every resolved sample"
        );
        for _ in 0..99 {
            f.learn(&idle, true);
        }
        f.learn(&busy, true);
        assert!((f.estimate().expect("estimate") - 0.01).abs() < 1e-9);
    }
}
