//! How one connection is judged in one round: the signals in order ([`decide`]), what is known
//! for sure for the shape learner ([`known`]), and what stands in for unresolved samples ([`Fill`]).

use crate::sampler::shape::Known;
use crate::sockdiag::{TcpInfo, TcpSocket};

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
pub(super) struct NoThreads;
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
    /// The connection's learnt exchange shape (see [`crate::sampler::shape`]).
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
pub(super) fn is_quiet(info: &TcpInfo) -> bool {
    info.last_data_sent_ms >= QUIET_MS && info.last_data_recv_ms >= QUIET_MS
}
const QUIET_MS: u32 = 1000;

/// What is known for sure, for the shape learner, from a decision: only what the kernel says
/// outright (unread request bytes, a first request) and a thread seen blocked reading the socket.
/// An inference ("no thread reads it") is not strong enough to drop a candidate shape.
pub(super) fn known(d: &Decision, inbound: bool) -> Known {
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

    pub(super) fn learn(&mut self, d: &Decision, tie: bool) {
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

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
