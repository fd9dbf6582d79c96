//! Per-thread CPU time, run-queue delay and blocking state of one process.
//!
//! `schedstat` gives exact nanoseconds on CPU and waiting on a run queue; the files are opened once
//! per thread and re-read at offset 0 (about 1 us each). `syscall` says what a blocked thread is
//! blocked in (a socket read, poll, a futex, epoll) and is sampled less often, on demand. Threads
//! appearing and exiting are the normal life of a process: an exited thread's last counters stay
//! in the totals, and the process's own `stat` covers what exited between two reads.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::proc_files::{parse_schedstat, parse_syscall, Schedstat, SyscallState};

/// Threads of managed runtimes that run the garbage collector. Their CPU is kept apart: a
/// concurrent collector's work is not on any request's path, and a stop-the-world pause is
/// counted as a pause, not as the collector's CPU.
pub fn is_gc_thread(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "GC Thread",
        "G1 ",
        "VM Thread",
        "ZWorker",
        "ZDriver",
        "ZDirector",
        "Shenandoah",
        "GC task",
        ".NET Server GC",
        ".NET BGC",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// JIT compiler threads of managed runtimes: busy at warm-up, never on a request's path.
pub fn is_jit_thread(name: &str) -> bool {
    [
        "C1 CompilerThre",
        "C2 CompilerThre",
        "JVMCI",
        "Sweeper thread",
        ".NET Tiered",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

struct Thread {
    schedstat: Option<File>,
    syscall: Option<File>,
    name: String,
    gc: bool,
    base: Schedstat,
    last: Schedstat,
    /// The last syscall sample and the CPU time at which it was taken: a thread that has not
    /// run since cannot be in another state, so its sample is reused without a read.
    state: Option<(u64, Option<Blocked>)>,
    /// Seen waiting in epoll/select: an event-loop thread, which reads the connections itself.
    event_loop: bool,
    /// The reading at the previous `read_schedstat`, for per-interval busy time.
    mark: Schedstat,
}

/// Counters summed over the process's threads since the table was created.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThreadTotals {
    pub app_cpu_ns: u64,
    pub gc_cpu_ns: u64,
    pub app_delay_ns: u64,
    /// CPU and run-queue delay of event-loop threads (a subset of the application's).
    pub loop_cpu_ns: u64,
    pub loop_delay_ns: u64,
    /// The thread with the most CPU + run-queue time, and that time.
    pub busiest: Option<(String, u64)>,
    /// That thread's CPU and run-queue delay.
    pub busiest_cpu_ns: u64,
    pub busiest_delay_ns: u64,
    /// The thread with the most CPU + run-queue time since the previous `read_schedstat`, and
    /// that time: summed over reads, the wire's `scalewise.thread.busiest.time`.
    pub busiest_interval: Option<(String, u64)>,
    pub live_threads: usize,
}

/// A blocked thread's state, as far as the agent cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// Waiting for data on file descriptor `fd` (read, recv).
    Reading {
        fd: i32,
    },
    /// In poll/ppoll: the fds are in the caller's memory at `pollfds` (`nfds` entries).
    Polling {
        pollfds: u64,
        nfds: u64,
    },
    /// Waiting in epoll: an event loop between events.
    Epoll,
    /// On a futex: a lock, a condition variable, a parked pool thread.
    Futex,
    Sleeping,
    Accepting,
    Other,
}

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: &[i64] = &[0, 19, 17, 45, 47, 299];
    pub const POLL: &[i64] = &[7, 271];
    pub const EPOLL: &[i64] = &[232, 281, 441, 23, 270, 426];
    pub const FUTEX: &[i64] = &[202, 449];
    pub const SLEEP: &[i64] = &[35, 230];
    pub const ACCEPT: &[i64] = &[43, 288];
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: &[i64] = &[63, 65, 67, 207, 212, 243];
    pub const POLL: &[i64] = &[73];
    pub const EPOLL: &[i64] = &[22, 441, 72, 426];
    pub const FUTEX: &[i64] = &[98, 449];
    pub const SLEEP: &[i64] = &[101, 115];
    pub const ACCEPT: &[i64] = &[202, 242];
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod nr {
    pub const READ: &[i64] = &[];
    pub const POLL: &[i64] = &[];
    pub const EPOLL: &[i64] = &[];
    pub const FUTEX: &[i64] = &[];
    pub const SLEEP: &[i64] = &[];
    pub const ACCEPT: &[i64] = &[];
}

/// Classifies a `syscall` sample; `None` means on CPU or runnable.
pub fn classify(state: SyscallState) -> Option<Blocked> {
    match state {
        SyscallState::Running => None,
        SyscallState::BlockedNoSyscall => Some(Blocked::Other),
        SyscallState::InSyscall { nr: n, args } => Some(if nr::READ.contains(&n) {
            Blocked::Reading { fd: args[0] as i32 }
        } else if nr::POLL.contains(&n) {
            Blocked::Polling {
                pollfds: args[0],
                nfds: args[1],
            }
        } else if nr::EPOLL.contains(&n) {
            Blocked::Epoll
        } else if nr::FUTEX.contains(&n) {
            Blocked::Futex
        } else if nr::SLEEP.contains(&n) {
            Blocked::Sleeping
        } else if nr::ACCEPT.contains(&n) {
            Blocked::Accepting
        } else {
            Blocked::Other
        }),
    }
}

/// Errors are counted by kind and never stop sampling.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ThreadErrors {
    pub permission_denied: u64,
    pub malformed: u64,
}

pub struct ThreadTable {
    task_dir: PathBuf,
    threads: HashMap<u32, Thread>,
    exited: ThreadTotals,
    buf: Vec<u8>,
    started: bool,
    still: Vec<u32>,
    /// `syscall` needs ptrace access (CAP_SYS_PTRACE or same uid without Yama restrictions).
    pub syscall_denied: bool,
    pub errors: ThreadErrors,
}

fn read_at0(f: &File, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.resize(256, 0);
    f.read_at(buf, 0)
}

impl ThreadTable {
    pub fn new(proc_root: &std::path::Path, pid: u32) -> ThreadTable {
        ThreadTable {
            task_dir: proc_root.join(pid.to_string()).join("task"),
            threads: HashMap::new(),
            exited: ThreadTotals::default(),
            buf: Vec::with_capacity(256),
            started: false,
            still: Vec::new(),
            syscall_denied: false,
            errors: ThreadErrors::default(),
        }
    }

    /// Picks up new threads. Returns false when the process is gone.
    pub fn refresh(&mut self) -> bool {
        let Ok(dir) = std::fs::read_dir(&self.task_dir) else {
            return false;
        };
        for entry in dir.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if self.threads.contains_key(&tid) {
                continue;
            }
            let path = entry.path();
            let name = std::fs::read(path.join("comm"))
                .map(|b| String::from_utf8_lossy(&b).trim_end().to_string())
                .unwrap_or_default();
            let schedstat = match File::open(path.join("schedstat")) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    self.errors.permission_denied += 1;
                    None
                }
                Err(_) => continue, // exited between readdir and open
            };
            // Threads present when sampling starts count from their current values; threads born
            // later count from zero, since all their time falls inside the window.
            let mut base = Schedstat::default();
            if !self.started {
                if let Some(f) = &schedstat {
                    if let Ok(n) = read_at0(f, &mut self.buf) {
                        base = parse_schedstat(&self.buf[..n]).unwrap_or_default();
                    }
                }
            }
            let gc = is_gc_thread(&name);
            self.threads.insert(
                tid,
                Thread {
                    schedstat,
                    syscall: None,
                    name,
                    gc,
                    base,
                    last: base,
                    mark: base,
                    state: None,
                    event_loop: false,
                },
            );
        }
        self.started = true;
        true
    }

    /// Re-reads every thread's schedstat and returns the totals since the table was created.
    pub fn read_schedstat(&mut self) -> ThreadTotals {
        let mut gone = Vec::new();
        for (tid, t) in self.threads.iter_mut() {
            let Some(f) = &t.schedstat else { continue };
            match read_at0(f, &mut self.buf) {
                Ok(n) if n > 0 => match parse_schedstat(&self.buf[..n]) {
                    // Counters only grow; a smaller value is a new thread that reused the tid.
                    Ok(s) if s.on_cpu_ns >= t.last.on_cpu_ns => t.last = s,
                    Ok(_) => gone.push(*tid),
                    Err(_) => self.errors.malformed += 1,
                },
                _ => gone.push(*tid), // ESRCH: the thread exited; its last reading stands
            }
        }
        for tid in gone {
            if let Some(t) = self.threads.remove(&tid) {
                let cpu = t.last.on_cpu_ns.saturating_sub(t.base.on_cpu_ns);
                if t.gc {
                    self.exited.gc_cpu_ns += cpu;
                } else {
                    let delay = t.last.run_delay_ns.saturating_sub(t.base.run_delay_ns);
                    self.exited.app_cpu_ns += cpu;
                    self.exited.app_delay_ns += delay;
                    if t.event_loop {
                        self.exited.loop_cpu_ns += cpu;
                        self.exited.loop_delay_ns += delay;
                    }
                }
            }
        }
        let mut totals = self.exited.clone();
        totals.busiest_interval = None;
        for t in self.threads.values_mut() {
            let cpu = t.last.on_cpu_ns.saturating_sub(t.base.on_cpu_ns);
            let delay = t.last.run_delay_ns.saturating_sub(t.base.run_delay_ns);
            if t.gc {
                totals.gc_cpu_ns += cpu;
            } else {
                totals.app_cpu_ns += cpu;
                totals.app_delay_ns += delay;
                if t.event_loop {
                    totals.loop_cpu_ns += cpu;
                    totals.loop_delay_ns += delay;
                }
            }
            // The busiest thread stands for a saturated event loop or lone worker; runtime
            // threads (GC, a JIT compiler busy during warm-up) would only mislead.
            if !t.gc
                && !is_jit_thread(&t.name)
                && totals
                    .busiest
                    .as_ref()
                    .map_or(true, |(_, b)| cpu + delay > *b)
            {
                totals.busiest = Some((t.name.clone(), cpu + delay));
                totals.busiest_cpu_ns = cpu;
                totals.busiest_delay_ns = delay;
            }
            let busy_now = (t.last.on_cpu_ns + t.last.run_delay_ns)
                .saturating_sub(t.mark.on_cpu_ns + t.mark.run_delay_ns);
            t.mark = t.last;
            if !t.gc
                && !is_jit_thread(&t.name)
                && totals
                    .busiest_interval
                    .as_ref()
                    .map_or(true, |(_, b)| busy_now > *b)
            {
                totals.busiest_interval = Some((t.name.clone(), busy_now));
            }
        }
        totals.live_threads = self.threads.len();
        totals
    }

    /// Samples what every application thread is blocked in. `out` gets (tid, state) with `None`
    /// for a thread on CPU or runnable. Does nothing once access has been denied.
    /// `schedstat_fresh`: [`Self::read_schedstat`] has just read every thread (this round).
    pub fn sample_states(&mut self, out: &mut Vec<(u32, Option<Blocked>)>, schedstat_fresh: bool) {
        out.clear();
        self.still.clear();
        if self.syscall_denied {
            return;
        }
        for (tid, t) in self.threads.iter_mut() {
            if t.gc {
                continue;
            }
            if t.syscall.is_none() {
                match File::open(self.task_dir.join(tid.to_string()).join("syscall")) {
                    Ok(f) => t.syscall = Some(f),
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        self.syscall_denied = true;
                        self.errors.permission_denied += 1;
                        out.clear();
                        return;
                    }
                    Err(_) => continue,
                }
            }
            // schedstat is a third of the price of syscall: read it first (or take this round's
            // reading), and skip the syscall read for a thread that has not been on a CPU since
            // its last sample.
            let ran_ns = if schedstat_fresh && t.schedstat.is_some() {
                Some(t.last.on_cpu_ns)
            } else {
                t.schedstat
                    .as_ref()
                    .and_then(|f| read_at0(f, &mut self.buf).ok())
                    .and_then(|n| parse_schedstat(&self.buf[..n]).ok())
                    .map(|s| s.on_cpu_ns)
            };
            if let (Some(ns), Some((at, state))) = (ran_ns, t.state) {
                if ns == at && state.is_some() {
                    self.still.push(*tid);
                    out.push((*tid, state));
                    continue;
                }
            }
            let Some(f) = &t.syscall else { continue };
            match read_at0(f, &mut self.buf) {
                Ok(n) if n > 0 => match parse_syscall(&self.buf[..n]) {
                    Ok(s) => {
                        let state = classify(s);
                        if state == Some(Blocked::Epoll) {
                            t.event_loop = true;
                        }
                        if let Some(ns) = ran_ns {
                            t.state = Some((ns, state));
                        }
                        out.push((*tid, state));
                    }
                    Err(_) => self.errors.malformed += 1,
                },
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    // Opening can succeed where reading is refused (the ptrace check is on read).
                    self.syscall_denied = true;
                    self.errors.permission_denied += 1;
                    out.clear();
                    return;
                }
                _ => {}
            }
        }
    }

    /// Threads of the last [`Self::sample_states`] that were blocked and have not run since the
    /// sample before: parked (an idle pool thread, a helper waiting for work), not contending.
    pub fn still_threads(&self) -> &[u32] {
        &self.still
    }

    /// Samples one thread's state (its syscall file, no gating). `None` if it cannot be read.
    pub fn sample_one(&mut self, tid: u32) -> Option<Option<Blocked>> {
        if self.syscall_denied {
            return None;
        }
        let t = self.threads.get(&tid)?;
        let f = t.syscall.as_ref()?;
        let n = read_at0(f, &mut self.buf).ok().filter(|&n| n > 0)?;
        parse_syscall(&self.buf[..n]).ok().map(classify)
    }

    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }
}

/// Reads the fds in a blocked poll's `pollfd` array from the target's memory (needs the same
/// ptrace access as `syscall`). At most 64 entries: a larger poll set is an event loop, which
/// the socket signal handles.
pub fn read_pollfds(pid: u32, addr: u64, nfds: u64, out: &mut Vec<i32>) -> bool {
    out.clear();
    let n = nfds.min(64) as usize;
    if n == 0 || addr == 0 {
        return false;
    }
    let mut raw = [0u8; 64 * 8];
    let local = libc::iovec {
        iov_base: raw.as_mut_ptr().cast(),
        iov_len: n * 8,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: n * 8,
    };
    // SAFETY: the local iovec points into `raw`, sized for n entries; the remote address is only
    // dereferenced by the kernel, which checks it against the target's address space.
    let got = unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) };
    if got != (n * 8) as isize {
        return false;
    }
    for chunk in raw[..n * 8].chunks_exact(8) {
        let fd = i32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let events = i16::from_ne_bytes([chunk[4], chunk[5]]);
        if fd >= 0 && events & libc::POLLIN != 0 {
            out.push(fd);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /proc: threads appear, exit, and write garbage; totals stay right and nothing stops.
    #[test]
    fn fake_proc_threads_come_go_and_misbehave() {
        let root = std::env::temp_dir().join(format!("sw-fakeproc-{}", std::process::id()));
        let task = root.join("77/task");
        let write = |tid: u32, comm: &str, sched: &str| {
            let d = task.join(tid.to_string());
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("comm"), comm).expect("comm");
            std::fs::write(d.join("schedstat"), sched).expect("schedstat");
            std::fs::write(d.join("syscall"), "running\n").expect("syscall");
        };
        write(77, "java\n", "1000 50 3\n");
        write(78, "GC Thread#0\n", "500 0 1\n");
        write(79, ") R 1 (\n", "2000 100 5\n");
        let mut t = ThreadTable::new(&root, 77);
        assert!(t.refresh());
        // Baselines are taken at first sight: nothing has happened yet.
        assert_eq!(t.read_schedstat().app_cpu_ns, 0);
        write(77, "java\n", "4000 150 9\n");
        write(78, "GC Thread#0\n", "1500 0 2\n");
        write(79, ") R 1 (\n", "garbage\n");
        write(80, "worker\n", "700 10 1\n"); // born after the start: counts from zero
        assert!(t.refresh());
        let totals = t.read_schedstat();
        assert_eq!(totals.app_cpu_ns, 3000 + 700, "{totals:?}");
        assert_eq!(totals.gc_cpu_ns, 1000);
        assert_eq!(totals.app_delay_ns, 100 + 10);
        assert_eq!(t.errors.malformed, 1);
        // A thread exits (a dead thread's kept-open schedstat reads nothing): its last reading
        // stays in the totals.
        std::fs::write(task.join("80/schedstat"), "").expect("exit");
        let after = t.read_schedstat();
        assert_eq!(after.app_cpu_ns, 3700);
        assert_eq!(after.live_threads, 3);
        let mut states = Vec::new();
        t.sample_states(&mut states, false);
        assert!(states.iter().all(|(_, s)| s.is_none()), "{states:?}");
        // The whole process goes away.
        std::fs::remove_dir_all(&root).expect("rm");
        assert!(!t.refresh());
    }

    /// The busiest thread of each interval between reads, not of the whole window: two threads
    /// taking turns at being saturated add up (the wire's `scalewise.thread.busiest.time`).
    #[test]
    fn busiest_thread_per_interval() {
        let root = std::env::temp_dir().join(format!("sw-busiest-{}", std::process::id()));
        let task = root.join("90/task");
        let write = |tid: u32, sched: &str| {
            let d = task.join(tid.to_string());
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("comm"), format!("w{tid}\n")).expect("comm");
            std::fs::write(d.join("schedstat"), sched).expect("schedstat");
        };
        write(90, "0 0 0\n");
        write(91, "0 0 0\n");
        let mut t = ThreadTable::new(&root, 90);
        assert!(t.refresh());
        assert_eq!(t.read_schedstat().busiest_interval.map(|b| b.1), Some(0));
        write(90, "900 100 1\n");
        write(91, "200 0 1\n");
        let first = t.read_schedstat();
        assert_eq!(first.busiest_interval, Some(("w90".to_string(), 1000)));
        write(90, "1000 100 2\n");
        write(91, "1100 100 2\n");
        let second = t.read_schedstat();
        assert_eq!(second.busiest_interval, Some(("w91".to_string(), 1000)));
        // The whole-window busiest is 1200 ns; the per-interval sum is 2000 ns.
        assert_eq!(second.busiest.map(|b| b.1), Some(1200));
        std::fs::remove_dir_all(&root).expect("rm");
    }

    #[test]
    fn gc_thread_names() {
        for n in [
            "GC Thread#0",
            "G1 Conc#0",
            "G1 Refine#0",
            "VM Thread",
            "ZWorker#1",
        ] {
            assert!(is_gc_thread(n), "{n}");
        }
        for n in [
            "main",
            "http-nio-8080",
            "C2 CompilerThread0",
            "tokio-runtime-w",
        ] {
            assert!(!is_gc_thread(n), "{n}");
        }
        assert!(is_jit_thread("C2 CompilerThre"));
        assert!(!is_jit_thread("main"));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn classifies_blocking_syscalls() {
        let s = |nr, a0, a1| SyscallState::InSyscall {
            nr,
            args: [a0, a1, 0, 0, 0, 0],
        };
        assert_eq!(classify(SyscallState::Running), None);
        assert_eq!(classify(s(0, 7, 0)), Some(Blocked::Reading { fd: 7 }));
        assert_eq!(classify(s(45, 9, 0)), Some(Blocked::Reading { fd: 9 }));
        assert_eq!(
            classify(s(7, 0x1000, 2)),
            Some(Blocked::Polling {
                pollfds: 0x1000,
                nfds: 2
            })
        );
        assert_eq!(classify(s(202, 0, 0)), Some(Blocked::Futex));
        assert_eq!(classify(s(232, 0, 0)), Some(Blocked::Epoll));
        assert_eq!(classify(s(999, 0, 0)), Some(Blocked::Other));
    }

    #[test]
    fn reads_own_threads_and_sees_a_blocked_socket_read() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let reader = std::thread::Builder::new()
            .name("sw-test-reader".into())
            .spawn(move || {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let mut b = [0u8; 1];
                let _ = s.read(&mut b);
            })
            .expect("spawn");
        let (mut server, _) = listener.accept().expect("accept");
        let mut table = ThreadTable::new(std::path::Path::new("/proc"), std::process::id());
        assert!(table.refresh());
        assert!(table.thread_count() >= 2);
        let mut states = Vec::new();
        let mut seen = false;
        for _ in 0..200 {
            table.sample_states(&mut states, false);
            if table.syscall_denied {
                break; // no ptrace access in this environment: nothing more to check
            }
            seen = states
                .iter()
                .any(|(_, s)| matches!(s, Some(Blocked::Reading { .. })));
            if seen {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(seen || table.syscall_denied);
        let t = table.read_schedstat();
        assert!(t.app_cpu_ns > 0 || t.live_threads > 0);
        std::io::Write::write_all(&mut server, b"x").expect("write");
        reader.join().expect("join");
    }
}
