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
    if info.last_data_sent_ms >= 1000 && info.last_data_recv_ms >= 1000 {
        return is(0.0, How::Quiet);
    }
    is(0.0, How::Unresolved)
}

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

struct Conn {
    /// A fixed hash of the connection's addresses: its sampling coin's seed.
    id: u64,
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
    /// Variance of `in_flight` from sampling idle connections (Horvitz-Thompson).
    pub in_flight_var: f64,
    pub inbound_conns: usize,
    pub outbound_conns: usize,
    /// Whether this round walked the whole socket table.
    pub full_dump: bool,
}

/// A number in [0, 1) from a connection's fixed id and a round: a fresh, reproducible coin per
/// round (splitmix64's finaliser: a few instructions, visited for every known connection).
fn unit_hash(id: u64, round: u64) -> f64 {
    let mut z = id ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

type Key = (SocketAddr, SocketAddr);
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

fn conn_id(key: &Key) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5ca1_ab1e).hash_one(key)
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
    /// Idle connections looked up per round at most; the rest are sampled (see
    /// [`SocketSampler::choose_lookups`]).
    pub idle_lookups: usize,
    weights: FastMap<Key, f64>,
    /// Inbound and outbound connections skipped in this round.
    skipped: (usize, usize),
    /// Idle connections and the probability each was looked up with, in the last round.
    pub idle_sampled: (usize, f64),
    /// Inodes of the service's sockets open at the last full dump: an fd still mapped to one
    /// needs no new readlink (see `session::scan_fds`).
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
            round: 0,
            closed_inbound: 0,
            inbound_at_dump: 0,
            churn: false,
            foreign_listeners: false,
            fill_inbound: Fill::default(),
            fill_outbound: Fill::default(),
            idle_lookups: 256,
            weights: FastMap::default(),
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
    /// their next request, idle pool connections) are looked up with probability
    /// `p = idle_lookups / idle`, and each one looked up stands for `1/p` of them: the estimate of
    /// requests in flight stays unbiased (Horvitz-Thompson), its variance is reported, and the
    /// cost follows activity rather than the number of connections. Request counts stay exact:
    /// they come from cumulative segment counters, read whenever a connection is visited.
    fn choose_lookups(&mut self) {
        let next = self.round + 1;
        let idle = self
            .conns
            .values()
            .filter(|c| c.decision.resolved() && c.decision.value == 0.0)
            .count();
        let p = if idle > self.idle_lookups {
            self.idle_lookups as f64 / idle as f64
        } else {
            1.0
        };
        self.idle_sampled = (idle, p);
        self.known.clear();
        self.weights.clear();
        self.skipped = (0, 0);
        for (key, c) in self.conns.iter_mut() {
            let is_idle = c.decision.resolved() && c.decision.value == 0.0;
            if is_idle && p < 1.0 {
                if unit_hash(c.id, next) >= p {
                    c.round = next; // skipped this round, still open
                    if c.inbound {
                        self.skipped.0 += 1;
                    } else {
                        self.skipped.1 += 1;
                    }
                    continue;
                }
                self.weights.insert(*key, 1.0 / p);
            }
            self.known.push(c.sock.clone());
        }
    }

    /// One round. `owned(inode)` says whether a socket belongs to the service's processes;
    /// `discover` asks for a full dump (new connections, listeners) whatever the churn.
    pub fn sample(
        &mut self,
        owned: &dyn Fn(u64) -> bool,
        oracle: &mut dyn ThreadOracle,
        discover: bool,
    ) -> Result<Round, SockDiagError> {
        let full = discover || self.churn || self.round == 0;
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
            self.choose_lookups();
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
        for s in &self.socks {
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
            // Idle connections looked up with probability p stand for 1/p of their kind.
            let weight = if full {
                1.0
            } else {
                self.weights.get(&key).copied().unwrap_or(1.0)
            };
            let known_conn = self.conns.get(&key).filter(|c| c.inbound == inbound);
            let id = known_conn.map_or_else(|| conn_id(&key), |c| c.id);
            let prev = known_conn.map(|c| (&c.info, c.decision));
            let mut shape = known_conn.map(|c| c.shape).unwrap_or_default();
            let (asked, answered) = if inbound {
                (info.data_segs_in, info.data_segs_out)
            } else {
                (info.data_segs_out, info.data_segs_in)
            };
            shape.observe(asked, answered, Known::Nothing);
            let d = decide(
                inbound,
                s,
                &info,
                prev,
                oracle,
                shape.predict(asked, answered),
            );
            shape.observe(asked, answered, known(&d, inbound));
            let tie = last_data(&info) == LastData::Tie;
            tracing::trace!(inbound, how = ?d.how, value = d.value, asked, answered, "decision");
            out.samples += 1;
            if inbound {
                self.fill_inbound.learn(&d, tie);
                out.inbound_conns += 1;
                match d.how {
                    How::Unresolved => {
                        unresolved_inbound += weight;
                        out.unresolved += 1;
                    }
                    How::Queued => out.queued.push((s.inode, d.value * weight)),
                    How::SendQueue => out.send_queue += d.value * weight,
                    How::Shape => out.by_shape += 1,
                    _ => {}
                }
                out.in_flight += d.value * weight;
                out.in_flight_var += (weight - 1.0) * weight * d.value * d.value;
                out.new_requests += match self.conns.get(&key) {
                    Some(c) => info.data_segs_in.saturating_sub(c.info.data_segs_in) as f64,
                    // A connection first seen after the first round was opened inside the window.
                    None if !first_round => info.data_segs_in as f64,
                    None => 0.0,
                };
            } else {
                self.fill_outbound.learn(&d, tie);
                out.outbound_conns += 1;
                if d.resolved() {
                    *awaiting.entry(s.remote).or_default() += d.value * weight;
                } else {
                    *unresolved_outbound.entry(s.remote).or_default() += weight;
                    out.unresolved += 1;
                }
            }
            self.conns.insert(
                key,
                Conn {
                    id,
                    inbound,
                    sock: s.clone(),
                    info,
                    decision: d,
                    round: self.round,
                    shape,
                },
            );
        }
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
        let round = self.round;
        let mut closed = 0;
        self.conns.retain(|_, c| {
            let keep = c.round == round;
            if !keep && c.inbound {
                closed += 1;
            }
            keep
        });
        self.closed_inbound += closed;
        // Switch to dumps as soon as connections are seen to vanish between rounds; the
        // discovery interval re-decides from what it saw over the whole interval.
        let basis = self.inbound_at_dump.max(out.inbound_conns);
        if !self.churn && self.closed_inbound > 2 && self.closed_inbound * 4 >= basis {
            self.churn = true;
        }
        if full && discover {
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
