//! Requests in flight and time awaiting each dependency, from the service's TCP connections.
//!
//! Each round dumps the TCP sockets (see [`crate::sockdiag`]) and decides, per connection,
//! whether a request is outstanding on it at this instant:
//! - inbound (accepted on one of the service's listening ports): the peer's request arrived after
//!   our last response (`last_data_recv` newer than `last_data_sent`), or its bytes sit unread;
//!   connections still in the accept queue with data count too (queueing is request time);
//! - outbound: our request went out after the last response came back.
//!
//! Summed over rounds and weighted by the time between them, these give mean in-flight requests
//! (`R`) and request-seconds per dependency. `tcp_info` times have kernel-tick resolution, so an
//! exchange inside one tick ties; ties are broken, in order, by: no data having moved since the
//! last round (the state cannot have changed), a thread of the service blocked reading that very
//! socket (it awaits the peer) or, in a process without event loops, no thread reading it (the
//! service owes the next move), one side having spoken and the other never (a first request on a
//! new connection), and otherwise counted as half and reported as ambiguous.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

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

/// The decision for one connection in one round: 1.0 outstanding, 0.0 not, 0.5 unknown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub value: f64,
    pub ambiguous: bool,
}

/// Decides whether a request is outstanding on one connection. `awaiting_peer` is the direction:
/// true for outbound (we wait for the peer's response), false for inbound (the peer waits for ours).
pub fn decide(
    inbound: bool,
    sock: &TcpSocket,
    info: &TcpInfo,
    prev: Option<(&TcpInfo, f64)>,
    oracle: &mut dyn ThreadOracle,
    counters: Option<f64>,
) -> Decision {
    let yes = Decision {
        value: 1.0,
        ambiguous: false,
    };
    let no = Decision {
        value: 0.0,
        ambiguous: false,
    };
    // Unread bytes are the strongest sign: inbound, a request waits for us; outbound, a
    // response has arrived and the service has not got round to it (its own delay, not the peer's).
    if sock.rqueue > 0 {
        return if inbound { yes } else { no };
    }
    let outstanding = |peer_spoke_last: bool| {
        if inbound == peer_spoke_last {
            yes
        } else {
            no
        }
    };
    match last_data(info) {
        LastData::Received => outstanding(true),
        LastData::Sent => outstanding(false),
        LastData::Tie => {
            if let Some((p, v)) = prev {
                if p.bytes_acked == info.bytes_acked
                    && p.bytes_received == info.bytes_received
                    && p.data_segs_in == info.data_segs_in
                    && p.data_segs_out == info.data_segs_out
                {
                    return Decision {
                        value: v,
                        ambiguous: false,
                    };
                }
            } else if info.last_data_sent_ms >= 1000 {
                // First sight of a connection quiet for a second or more: idle.
                return no;
            }
            // Direction counters: a connection on which one side has spoken and the other never
            // has carries its first request (a new connection ties with its own set-up).
            let (heard, spoke) = if inbound {
                (info.data_segs_in, info.data_segs_out)
            } else {
                (info.data_segs_out, info.data_segs_in)
            };
            if heard > 0 && spoke == 0 {
                return yes;
            }
            if sock.inode != 0 {
                match oracle.reader(sock.inode, inbound) {
                    Reader::Blocked => return outstanding(false),
                    Reader::Unread => return outstanding(true),
                    Reader::Unknown => {}
                }
            }
            // The connection's learnt segment balance (see `Balance`), when threads cannot tell.
            if let Some(value) = counters {
                return Decision {
                    value,
                    ambiguous: false,
                };
            }
            Decision {
                value: 0.5,
                ambiguous: true,
            }
        }
    }
}

/// Direction counters. Request/response protocols alternate one data segment each way (a query
/// out, a result in), so on a connection `segments we sent - segments the peer sent` is a
/// constant while nothing is outstanding, and one more while a request is. The constant is learnt
/// from rounds whose state is known for sure, trusted once seen twice, and settles ties that
/// thread states cannot (event loops). Protocols that do not alternate never confirm it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    offset: i64,
    confirmed: u8,
}

impl Balance {
    /// Segments "we" sent minus segments "they" sent, from the waiting side's point of view:
    /// outbound, our requests; inbound, the peer's.
    fn diff(inbound: bool, info: &TcpInfo) -> i64 {
        let (asked, answered) = if inbound {
            (info.data_segs_in, info.data_segs_out)
        } else {
            (info.data_segs_out, info.data_segs_in)
        };
        asked as i64 - answered as i64
    }

    /// Learns from a round whose state is known (`value` 0 or 1).
    pub fn learn(&mut self, inbound: bool, info: &TcpInfo, value: f64) {
        let offset = Self::diff(inbound, info) - value as i64;
        if offset == self.offset && self.confirmed > 0 {
            self.confirmed = self.confirmed.saturating_add(1);
        } else {
            *self = Balance {
                offset,
                confirmed: 1,
            };
        }
    }

    /// 1.0 or 0.0 once the offset has been confirmed, else `None`.
    pub fn predict(&self, inbound: bool, info: &TcpInfo) -> Option<f64> {
        (self.confirmed >= 2).then(|| match Self::diff(inbound, info) - self.offset {
            1 => Some(1.0),
            0 => Some(0.0),
            _ => None, // pipelining or a protocol that does not alternate: no opinion
        })?
    }
}

struct Conn {
    inbound: bool,
    sock: TcpSocket,
    info: TcpInfo,
    value: f64,
    round: u64,
    balance: Balance,
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
    pub ambiguous: u64,
    pub inbound_conns: usize,
    pub outbound_conns: usize,
    /// Whether this round walked the whole socket table.
    pub full_dump: bool,
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
    conns: HashMap<(SocketAddr, SocketAddr), Conn>,
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
}

impl SocketSampler {
    pub fn new() -> Result<SocketSampler, SockDiagError> {
        Ok(SocketSampler {
            diag: SockDiag::open()?,
            socks: Vec::with_capacity(1024),
            known: Vec::new(),
            found: Vec::new(),
            listen_ports: HashSet::new(),
            conns: HashMap::new(),
            round: 0,
            closed_inbound: 0,
            inbound_at_dump: 0,
            churn: false,
            foreign_listeners: false,
        })
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
            for s in &self.socks {
                if s.state == TCP_LISTEN {
                    if owned(s.inode) {
                        self.listen_ports.insert(s.local.port());
                    } else {
                        self.foreign_listeners = true;
                    }
                }
            }
        } else {
            self.known.clear();
            self.known
                .extend(self.conns.values().map(|c| c.sock.clone()));
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
            if !ours {
                continue;
            }
            if inbound && s.inode == 0 && s.state != TCP_ESTABLISHED {
                continue;
            }
            let key = (s.local, s.remote);
            let prev = self
                .conns
                .get(&key)
                .filter(|c| c.inbound == inbound)
                .map(|c| (&c.info, c.value));
            let mut balance = self
                .conns
                .get(&key)
                .filter(|c| c.inbound == inbound)
                .map(|c| c.balance)
                .unwrap_or_default();
            let d = decide(
                inbound,
                s,
                &info,
                prev,
                oracle,
                balance.predict(inbound, &info),
            );
            if !d.ambiguous && last_data(&info) != LastData::Tie {
                balance.learn(inbound, &info, d.value);
            }
            out.samples += 1;
            if d.ambiguous {
                out.ambiguous += 1;
            }
            if inbound {
                out.inbound_conns += 1;
                out.in_flight += d.value;
                out.new_requests += match self.conns.get(&key) {
                    Some(c) => info.data_segs_in.saturating_sub(c.info.data_segs_in) as f64,
                    // A connection first seen after the first round was opened inside the window.
                    None if !first_round => info.data_segs_in as f64,
                    None => 0.0,
                };
            } else {
                out.outbound_conns += 1;
                *awaiting.entry(s.remote).or_default() += d.value;
            }
            self.conns.insert(
                key,
                Conn {
                    inbound,
                    sock: s.clone(),
                    info,
                    value: d.value,
                    round: self.round,
                    balance,
                },
            );
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
            ..TcpInfo::default()
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
    fn segment_balance_is_learnt_and_confirmed_before_use() {
        let at = |out: u32, inn: u32| TcpInfo {
            data_segs_out: out,
            data_segs_in: inn,
            ..TcpInfo::default()
        };
        let mut b = Balance::default();
        // Outbound: the handshake left us 3 segments ahead; then queries and results alternate.
        b.learn(false, &at(4, 1), 1.0); // a query outstanding
        assert_eq!(
            b.predict(false, &at(5, 2)),
            None,
            "one sighting is not enough"
        );
        b.learn(false, &at(4, 2), 0.0); // answered
        assert_eq!(b.predict(false, &at(5, 2)), Some(1.0));
        assert_eq!(b.predict(false, &at(5, 3)), Some(0.0));
        assert_eq!(b.predict(false, &at(9, 3)), None, "pipelined: no opinion");
        // A protocol that does not alternate keeps resetting and never predicts.
        let mut c = Balance::default();
        c.learn(true, &at(0, 3), 1.0);
        c.learn(true, &at(0, 7), 1.0);
        assert_eq!(c.predict(true, &at(0, 8)), None);
    }

    #[test]
    fn unread_bytes_win() {
        let mut o = Knows(Reader::Unknown);
        let i = info(4, 20, 1);
        assert_eq!(decide(false, &sock(10), &i, None, &mut o, None).value, 0.0);
        assert_eq!(decide(true, &sock(10), &i, None, &mut o, None).value, 1.0);
    }

    #[test]
    fn ties_carry_then_ask_threads_then_count_half() {
        let tie = info(4, 4, 100);
        // No data moved since the previous round: the state carries.
        let prev = info(4, 4, 100);
        let d = decide(
            false,
            &sock(0),
            &tie,
            Some((&prev, 1.0)),
            &mut Knows(Reader::Unknown),
            None,
        );
        assert_eq!((d.value, d.ambiguous), (1.0, false));
        // Data moved: a thread blocked reading the socket means outbound awaits.
        let moved = info(0, 0, 50);
        let d = decide(
            false,
            &sock(0),
            &tie,
            Some((&moved, 0.0)),
            &mut Knows(Reader::Blocked),
            None,
        );
        assert_eq!(d.value, 1.0);
        let d = decide(
            true,
            &sock(0),
            &tie,
            Some((&moved, 1.0)),
            &mut Knows(Reader::Blocked),
            None,
        );
        assert_eq!(d.value, 0.0, "a thread reading an inbound socket is idle");
        // No thread reads it in a process without event loops: the service owes the next move.
        let d = decide(
            true,
            &sock(0),
            &tie,
            Some((&moved, 0.0)),
            &mut Knows(Reader::Unread),
            None,
        );
        assert_eq!(
            d.value, 1.0,
            "an unread inbound socket carries a request in flight"
        );
        let d = decide(
            false,
            &sock(0),
            &tie,
            Some((&moved, 1.0)),
            &mut Knows(Reader::Unread),
            None,
        );
        assert_eq!(d.value, 0.0, "an unread outbound socket awaits nothing");
        let d = decide(
            false,
            &sock(0),
            &tie,
            Some((&moved, 0.0)),
            &mut Knows(Reader::Unknown),
            None,
        );
        assert_eq!((d.value, d.ambiguous), (0.5, true));
        // First sight of a long-quiet connection: idle.
        let d = decide(
            false,
            &sock(0),
            &info(5000, 5000, 1),
            None,
            &mut Knows(Reader::Unknown),
            None,
        );
        assert_eq!(d.value, 0.0);
    }
}
