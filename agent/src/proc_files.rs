//! Pure parsers for the `/proc` files the samplers read.
//!
//! Written by hand rather than with the `procfs` crate because the hot files (`schedstat`,
//! `syscall`) are read through file descriptors kept open and re-read at offset 0 into a reused
//! buffer (about 1 us a read instead of 7-8 us for open+read+close), and the crate's readers open
//! the file each time. Every function here takes bytes, never a path, so tests and fuzz targets
//! drive them directly. Everything in these files is controlled, directly or not, by the monitored
//! process (a thread names itself, `comm` can be `) R 1 (`): nothing here trusts a length, a field
//! count or UTF-8.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("empty file")]
    Empty,
    #[error("missing field {0}")]
    Missing(&'static str),
    #[error("field {field} is not a number: {value:?}")]
    NotANumber { field: &'static str, value: String },
}

fn num<T: std::str::FromStr>(field: &'static str, s: Option<&str>) -> Result<T, ParseError> {
    let s = s.ok_or(ParseError::Missing(field))?;
    s.parse().map_err(|_| ParseError::NotANumber {
        field,
        value: s.chars().take(32).collect(),
    })
}

/// `/proc/PID/task/TID/schedstat`: time on CPU and waiting on a run queue, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Schedstat {
    pub on_cpu_ns: u64,
    pub run_delay_ns: u64,
    pub timeslices: u64,
}

pub fn parse_schedstat(buf: &[u8]) -> Result<Schedstat, ParseError> {
    let text = std::str::from_utf8(buf).map_err(|_| ParseError::NotANumber {
        field: "schedstat",
        value: String::new(),
    })?;
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let mut it = text.split_ascii_whitespace();
    Ok(Schedstat {
        on_cpu_ns: num("on_cpu_ns", it.next())?,
        run_delay_ns: num("run_delay_ns", it.next())?,
        timeslices: num("timeslices", it.next())?,
    })
}

/// The parts of `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) the agent uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// Raw `comm` bytes, lossily decoded: thread names are for humans and evidence only.
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// User and system CPU time in clock ticks (`USER_HZ`), all threads including exited ones.
    pub utime: u64,
    pub stime: u64,
    pub num_threads: u32,
    /// Start time in clock ticks since boot: with the pid, it identifies a process across pid reuse.
    pub starttime: u64,
}

/// Parses `stat`. `comm` may contain spaces and parentheses, so the fields start after the *last*
/// `)` in the file; the kernel guarantees nothing after `comm` can contain one.
pub fn parse_stat(buf: &[u8]) -> Result<Stat, ParseError> {
    if buf.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ParseError::Empty);
    }
    let open = buf
        .iter()
        .position(|&b| b == b'(')
        .ok_or(ParseError::Missing("comm"))?;
    let close = buf
        .iter()
        .rposition(|&b| b == b')')
        .filter(|&c| c > open)
        .ok_or(ParseError::Missing("comm"))?;
    let pid_text = String::from_utf8_lossy(&buf[..open]);
    let comm = String::from_utf8_lossy(&buf[open + 1..close]).into_owned();
    let rest = String::from_utf8_lossy(&buf[close + 1..]);
    // Fields after comm, numbered as in proc(5) starting at 3 (state).
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| f.get(n - 3).copied();
    let state = field(3)
        .and_then(|s| s.chars().next())
        .ok_or(ParseError::Missing("state"))?;
    Ok(Stat {
        pid: num("pid", Some(pid_text.trim()))?,
        comm,
        state,
        ppid: num("ppid", field(4))?,
        utime: num("utime", field(14))?,
        stime: num("stime", field(15))?,
        num_threads: num("num_threads", field(20))?,
        starttime: num("starttime", field(22))?,
    })
}

/// What a thread was doing when sampled, from `/proc/PID/task/TID/syscall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallState {
    /// On a CPU or runnable.
    Running,
    /// Blocked outside a system call (page fault, stopped): nr -1.
    BlockedNoSyscall,
    /// Blocked in system call `nr` with its six arguments.
    InSyscall { nr: i64, args: [u64; 6] },
}

pub fn parse_syscall(buf: &[u8]) -> Result<SyscallState, ParseError> {
    let text = String::from_utf8_lossy(buf);
    let mut it = text.split_ascii_whitespace();
    let first = it.next().ok_or(ParseError::Empty)?;
    if first == "running" {
        return Ok(SyscallState::Running);
    }
    let nr: i64 = num("nr", Some(first))?;
    if nr < 0 {
        return Ok(SyscallState::BlockedNoSyscall);
    }
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        let s = it.next().ok_or(ParseError::Missing("syscall argument"))?;
        let hex = s.strip_prefix("0x").unwrap_or(s);
        *a = u64::from_str_radix(hex, 16).map_err(|_| ParseError::NotANumber {
            field: ["arg0", "arg1", "arg2", "arg3", "arg4", "arg5"][i],
            value: s.chars().take(32).collect(),
        })?;
    }
    Ok(SyscallState::InSyscall { nr, args })
}

/// The parts of `/proc/PID/status` the agent uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// The pid in each nested PID namespace, outermost first; the last is the process's own view.
    pub nspids: Vec<u32>,
}

pub fn parse_status(buf: &[u8]) -> Result<Status, ParseError> {
    let text = String::from_utf8_lossy(buf);
    let mut status = Status::default();
    let mut saw_uid = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Uid:") {
            let mut it = rest.split_ascii_whitespace();
            for u in status.uids.iter_mut() {
                *u = num("Uid", it.next())?;
            }
            saw_uid = true;
        } else if let Some(rest) = line.strip_prefix("NSpid:") {
            status.nspids = rest
                .split_ascii_whitespace()
                .map(|s| num("NSpid", Some(s)))
                .collect::<Result<_, _>>()?;
        }
    }
    if !saw_uid {
        return Err(ParseError::Missing("Uid"));
    }
    Ok(status)
}

/// Parses a `socket:[INODE]` link target from `/proc/PID/fd/N`.
pub fn parse_socket_link(target: &[u8]) -> Option<u64> {
    let inner = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

/// The interest list of an epoll instance, from `/proc/PID/fdinfo/EPFD`: `(fd, events)` per
/// line `tfd: <fd> events: <hex mask> ...`. Malformed lines are skipped.
pub fn parse_epoll_fdinfo(buf: &[u8], out: &mut Vec<(i32, u32)>) {
    out.clear();
    for line in buf.split(|&b| b == b'\n') {
        let Some(rest) = line.strip_prefix(b"tfd:") else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(rest) else {
            continue;
        };
        let mut words = text.split_ascii_whitespace();
        let fd = words.next().and_then(|w| w.parse::<i32>().ok());
        let events = match (words.next(), words.next()) {
            (Some("events:"), Some(mask)) => u32::from_str_radix(mask, 16).ok(),
            _ => None,
        };
        if let (Some(fd), Some(events)) = (fd, events) {
            out.push((fd, events));
        }
    }
}

/// Whether an fd link is an epoll instance.
pub fn is_epoll_link(target: &[u8]) -> bool {
    target == b"anon_inode:[eventpoll]"
}

/// A `Tcp:` counter from `/proc/PID/net/snmp` (the process's network namespace), counted by the
/// kernel whether or not anyone sampled: `PassiveOpens` (connections accepted since boot),
/// `ActiveOpens` (connections initiated).
pub fn parse_tcp_counter(buf: &[u8], name: &str) -> Option<u64> {
    let text = String::from_utf8_lossy(buf);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let i = names.split_ascii_whitespace().position(|n| n == name)?;
    values.split_ascii_whitespace().nth(i)?.parse().ok()
}

#[cfg(test)]
#[path = "proc_files_tests.rs"]
mod tests;
