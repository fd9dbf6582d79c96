//! The thread oracle: what the service's threads say about a socket whose timestamps tie,
//! from thread states sampled at most once a round, the readers learnt across rounds, and
//! event loops' epoll interest lists.

use std::path::Path;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use super::Target;
use crate::proc_files::parse_epoll_fdinfo;
use crate::sampler::sockets::{Reader, ThreadOracle};
use crate::sampler::threads::{read_pollfds, Blocked};

/// `EPOLLIN` in an epoll interest mask.
const EPOLLIN: u32 = 0x1;

/// What thread sampling has learnt, kept across rounds.
#[derive(Default)]
pub(super) struct ThreadKnowledge {
    /// Inbound socket inode -> the thread last seen blocked reading it. Thread-per-connection
    /// servers keep a connection on one thread for its life, so a tie on that connection is
    /// settled by reading one thread's state instead of every thread's.
    pub(super) readers: HashMap<u64, (u32, u32)>,
    /// Processes whose threads were readable at the last full sample.
    known_pids: HashSet<u32>,
    /// Processes seen with a thread waiting in epoll/select at any full sample: idle connections
    /// need no reader there.
    pub(super) event_loop_pids: HashSet<u32>,
    /// Processes whose unread requests were counted as waiting for an event loop.
    pub(super) loop_queue_pids: HashSet<u32>,
    /// Processes seen with a thread blocked reading one of their sockets (sticky).
    pub(super) reader_pids: HashSet<u32>,
}

/// A process's epoll interest: fd -> event mask over all its instances, and whether it registers
/// its connections for reading at all.
type Interest = (HashMap<i32, u32>, bool);

/// Thread states sampled at most once per round, on the first tie that needs them.
pub(super) struct Oracle<'a> {
    targets: &'a mut [Target],
    owner: &'a HashMap<u64, (u32, i32)>,
    memory: &'a mut ThreadKnowledge,
    sampled: bool,
    reading: HashSet<(u32, i32)>,
    /// Socket inodes threads were seen blocked reading at this round's full sample, once per
    /// thread (outside event loops).
    blocked_on: Vec<u64>,
    futex_blocked: usize,
    scratch: Vec<(u32, Option<Blocked>)>,
    fds: Vec<i32>,
    /// Per process, read at most once a round: fd -> epoll event mask over all its instances,
    /// or `None` when it has none or they cannot be read.
    interest: HashMap<u32, Option<Interest>>,
    proc_root: &'a Path,
    /// This round's refresh has just read every thread's schedstat.
    schedstat_fresh: bool,
}

impl<'a> Oracle<'a> {
    /// For one round: `owner` maps the service's socket inodes to (pid, fd), `memory` is what
    /// earlier rounds learnt, `schedstat_fresh` says a refresh has just read every thread's
    /// schedstat.
    pub(super) fn new(
        targets: &'a mut [Target],
        owner: &'a HashMap<u64, (u32, i32)>,
        memory: &'a mut ThreadKnowledge,
        proc_root: &'a Path,
        schedstat_fresh: bool,
    ) -> Self {
        Oracle {
            targets,
            owner,
            memory,
            sampled: false,
            reading: HashSet::new(),
            blocked_on: Vec::new(),
            futex_blocked: 0,
            scratch: Vec::new(),
            fds: Vec::new(),
            interest: HashMap::new(),
            proc_root,
            schedstat_fresh,
        }
    }

    /// Whether a tie has had every thread's state sampled this round.
    pub(super) fn sampled(&self) -> bool {
        self.sampled
    }

    /// The socket inodes threads were blocked reading at this round's full sample (one entry
    /// per blocked thread), if one was taken.
    pub(super) fn blocked_on(&self) -> &[u64] {
        &self.blocked_on
    }

    /// Threads seen waiting on a futex while running (contention), sampling every thread's
    /// state first unless a tie already has this round.
    pub(super) fn futex_blocked(&mut self) -> usize {
        if !self.sampled {
            self.sample();
        }
        self.futex_blocked
    }
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
                        self.blocked_on.push(inode);
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
