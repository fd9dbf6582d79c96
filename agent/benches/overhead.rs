//! Agent overhead: CPU and peak RSS of `scalewise-agent diagnose` watching a busy service with
//! 500 threads and 200 connections, at the default sampling rates, as measured by the OS
//! (`wait4` rusage of the agent process), not by the agent.
//!
//! Run: `cargo bench -p scalewise-agent --bench overhead` (after `cargo build --release`).
//! Env: `OVERHEAD_SECONDS` (default 30), `OVERHEAD_THREADS` (500), `OVERHEAD_CONNS` (200),
//! `OVERHEAD_THINK_MS` (client pause between requests, 200), `OVERHEAD_ACTIVE` (connections that
//! use that pause; the others are idle keep-alive connections sending a request every
//! `OVERHEAD_IDLE_MS`, default 10000; default: all active). With many connections the service
//! serves them from `OVERHEAD_THREADS` threads polling their sockets, as event loops do, so the
//! thread count stays what it says.
//! `OVERHEAD_SERVICE=jvm`: instead, the setup, one JVM (`benches/jvm/Pairs.java`,
//! compiled with `javac` at start) holding both ends of `OVERHEAD_CONNS / 2` connections, a
//! server thread per connection and the clients' threads in the same process, padded with idle
//! threads to `OVERHEAD_THREADS`.
//! `OVERHEAD_MAX_LOOKUPS` (the agent's `--max-lookups`), `OVERHEAD_VERBOSE` (also print the
//! agent's request figures and evidence).
//! `OVERHEAD_MODE` (`diagnose`, or `run`: the long-running agent exporting every 10 s to a
//! minimal OTLP/HTTP sink in this process, stopped by SIGTERM after the window, last export
//! included).
//!
//! The same executable plays three roles, chosen by `SW_BENCH_ROLE`: the bench itself, the
//! watched service (thread per connection plus idle pool threads) and its client (a separate
//! process, so its sockets are not the service's).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn env_u(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The watched service: `threads` threads; each connection answers after 2 ms. Up to
/// `threads / 2` connections get a thread each (thread per connection); beyond that, connections
/// are spread over `threads / 2` poller threads (nonblocking sockets, `poll`), like event loops.
fn service(threads: u64, conns: u64) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("{}", listener.local_addr().expect("addr").port());
    let _ = std::io::stdout().flush();
    let per_conn = conns <= threads / 2;
    let pollers = if per_conn { 0 } else { (threads / 2).max(1) };
    let idle = threads.saturating_sub(if per_conn { conns } else { pollers } + 1);
    let pair = std::sync::Arc::new((std::sync::Mutex::new(()), std::sync::Condvar::new()));
    for _ in 0..idle {
        let pair = pair.clone();
        std::thread::spawn(move || {
            let (m, c) = &*pair;
            let mut g = m.lock().expect("lock");
            loop {
                g = c.wait(g).expect("wait");
            }
        });
    }
    let mut queues = Vec::new();
    for _ in 0..pollers {
        let (tx, rx) = std::sync::mpsc::channel::<TcpStream>();
        queues.push(tx);
        std::thread::spawn(move || poller(rx));
    }
    for (i, stream) in listener.incoming().enumerate() {
        let Ok(mut s) = stream else { continue };
        if !per_conn {
            let _ = s.set_nonblocking(true);
            let _ = queues[i % queues.len()].send(s);
            continue;
        }
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
                if s.write_all(b"pong").is_err() {
                    break;
                }
            }
        });
    }
}

/// Serves many nonblocking connections from one thread with `poll`.
fn poller(rx: std::sync::mpsc::Receiver<TcpStream>) {
    use std::os::fd::AsRawFd;
    let mut socks: Vec<TcpStream> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        while let Ok(s) = rx.try_recv() {
            socks.push(s);
        }
        fds.clear();
        fds.extend(socks.iter().map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n <= 0 {
            continue;
        }
        let mut closed = Vec::new();
        for (i, p) in fds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            match socks[i].read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(_) => {
                    std::thread::sleep(Duration::from_millis(2));
                    let _ = socks[i].write_all(b"pong");
                }
                Err(_) => {}
            }
        }
        for i in closed.into_iter().rev() {
            socks.swap_remove(i);
        }
    }
}

/// The client: `conns` connections; the first `active` pause `think_ms` between requests, the
/// others `idle_ms` (keep-alive connections that are mostly idle).
fn client(port: u16, conns: u64, active: u64, think_ms: u64, idle_ms: u64) {
    let mut handles = Vec::new();
    for i in 0..conns {
        let pause = if i < active { think_ms } else { idle_ms };
        handles.push(
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                        return;
                    };
                    // Spread the idle ones' requests over their period.
                    std::thread::sleep(Duration::from_millis(i * 7919 % pause.max(1)));
                    let mut buf = [0u8; 4];
                    loop {
                        if s.write_all(b"ping").is_err() || s.read_exact(&mut buf).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(pause));
                    }
                })
                .expect("client thread"),
        );
    }
    for h in handles {
        let _ = h.join();
    }
}

/// A minimal HTTP sink standing in for the collector: reads each request (Content-Length
/// bodies, keep-alive) and answers 200. Counts requests.
fn sink(counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind sink");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(s) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                let mut w = match s.try_clone() {
                    Ok(w) => w,
                    Err(_) => return,
                };
                let mut r = std::io::BufReader::new(s);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.to_ascii_lowercase();
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn main() {
    let threads = env_u("OVERHEAD_THREADS", 500);
    let conns = env_u("OVERHEAD_CONNS", 200);
    match std::env::var("SW_BENCH_ROLE").as_deref() {
        Ok("service") => return service(threads, conns),
        Ok("client") => {
            let port = env_u("SW_BENCH_PORT", 0) as u16;
            let active = env_u("OVERHEAD_ACTIVE", conns).min(conns);
            return client(
                port,
                conns,
                active,
                env_u("OVERHEAD_THINK_MS", 200),
                env_u("OVERHEAD_IDLE_MS", 10_000),
            );
        }
        _ => {}
    }
    // Under `cargo bench`, libtest-style flags arrive; only the plain run measures.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds = env_u("OVERHEAD_SECONDS", 30);
    let me = std::env::current_exe().expect("current exe");
    let agent = me
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("scalewise-agent"))
        .expect("target dir");
    assert!(
        agent.exists(),
        "{} not found: run `cargo build --release -p scalewise-agent` first",
        agent.display()
    );
    // OVERHEAD_SERVICE=jvm: the setup, one JVM holding both ends of the connections.
    let jvm = std::env::var("OVERHEAD_SERVICE").as_deref() == Ok("jvm");
    let mut svc = if jvm {
        let classes =
            std::env::temp_dir().join(format!("scalewise-bench-jvm-{}", std::process::id()));
        std::fs::create_dir_all(&classes).expect("class dir");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/jvm/Pairs.java");
        let ok = Command::new("javac")
            .args(["-d".as_ref(), classes.as_os_str(), src.as_ref()])
            .status()
            .expect("javac (apt install default-jdk-headless)");
        assert!(ok.success(), "javac failed");
        Command::new("java")
            .args(["-Xms64m", "-Xmx64m", "-cp"])
            .arg(&classes)
            .args([
                "Pairs".to_string(),
                threads.to_string(),
                (conns / 2).to_string(),
                env_u("OVERHEAD_THINK_MS", 200).to_string(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn java")
    } else {
        Command::new(&me)
            .env("SW_BENCH_ROLE", "service")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn service")
    };
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = svc.stdout.take().expect("stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("port line");
    }
    let port: u16 = line.trim().parse().expect("port");
    let mut cli = (!jvm).then(|| {
        Command::new(&me)
            .env("SW_BENCH_ROLE", "client")
            .env("SW_BENCH_PORT", port.to_string())
            .spawn()
            .expect("spawn client")
    });
    // Measure the service with all its connections open, not its ramp-up (10,000 connects take
    // seconds, and a window that starts amid them pays for dumps the steady state never does).
    let ready = Instant::now();
    while std::fs::read_dir(format!("/proc/{}/fd", svc.id()))
        .map(|d| (d.count() as u64) < conns)
        .unwrap_or(false)
        && ready.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let n_threads = std::fs::read_dir(format!("/proc/{}/task", svc.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    let run_mode = std::env::var("OVERHEAD_MODE").as_deref() == Ok("run");
    let exports = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let interval_ms = std::env::var("OVERHEAD_INTERVAL_MS").unwrap_or_else(|_| "200".into());
    let max_lookups = std::env::var("OVERHEAD_MAX_LOOKUPS")
        .unwrap_or_else(|_| scalewise_agent::sampler::sockets::DEFAULT_MAX_LOOKUPS.to_string());
    let mut cmd = Command::new(&agent);
    if run_mode {
        let sink_port = sink(exports.clone());
        cmd.args([
            "run",
            "--pid",
            &svc.id().to_string(),
            "--collector",
            &format!("http://127.0.0.1:{sink_port}"),
            "--export-interval",
            "10",
            "--sample-interval-ms",
            &interval_ms,
            "--max-lookups",
            &max_lookups,
            "--log",
            "warn",
        ]);
    } else {
        cmd.args([
            "diagnose",
            "--pid",
            &svc.id().to_string(),
            "--duration",
            &seconds.to_string(),
            "--format",
            "json",
            "--quiet",
            "--sample-interval-ms",
            &interval_ms,
            "--max-lookups",
            &max_lookups,
        ]);
    }
    let start = Instant::now();
    // Reaped by wait4 below, which is how its rusage is read.
    #[allow(clippy::zombie_processes)]
    let child = cmd.stdout(Stdio::piped()).spawn().expect("spawn agent");
    let pid = child.id() as libc::pid_t;
    if run_mode {
        std::thread::sleep(Duration::from_secs(seconds));
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let mut status = 0;
    // SAFETY: rusage is plain data filled in by wait4 for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed().as_secs_f64();
    let _ = svc.kill();
    let _ = svc.wait();
    if let Some(cli) = cli.as_mut() {
        let _ = cli.kill();
        let _ = cli.wait();
    }
    assert_eq!(r, pid, "wait4 failed");
    let cpu = ru.ru_utime.tv_sec as f64
        + ru.ru_utime.tv_usec as f64 / 1e6
        + ru.ru_stime.tv_sec as f64
        + ru.ru_stime.tv_usec as f64 / 1e6;
    let mut json = String::new();
    if let Some(mut out) = child.stdout {
        let _ = out.read_to_string(&mut json);
    }
    let report: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
    let d = &report["services"][0];
    if run_mode {
        println!(
            "run mode: {} exports received by the sink",
            exports.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    println!(
        "overhead: service threads {n_threads}, connections {conns} ({} active), window {wall:.1}s: agent CPU {cpu:.3}s = {:.2}% of one core, peak RSS {:.1} MiB; service: {} req/s, {} in flight",
        env_u("OVERHEAD_ACTIVE", conns).min(conns),
        cpu / wall * 100.0,
        ru.ru_maxrss as f64 / 1024.0,
        d["requests"]["rate_per_s"],
        d["requests"]["mean_in_flight"]
    );
    if std::env::var_os("OVERHEAD_VERBOSE").is_some() {
        println!("requests: {}", d["requests"]);
        println!("evidence: {}", d["evidence"]);
    }
}
